"""CALLs of pgsnap's batch procedures, with progress from their NOTICEs.

Each batch job has one loop, in SQL: `pgsnap.populate_target`, `pgsnap.backfill_missing_snapshots`
and `pgsnap.repopulate_stale_targets` commit per batch and RAISE a NOTICE per batch and a final
one, each with a DETAIL that is one JSON object with an "event" key (`batch` or `done`; see
docs/sql-api.md). Python only CALLs them on an autocommit connection, hands every event to a
callback (the progress bar) and returns the final events.

Ctrl-C: psycopg cancels the running statement and waits for it to end (the procedure records
its run as failed), then KeyboardInterrupt reaches here; it leaves as PgsnapError exit 130,
naming the run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from pgsnap.errors import Exit, PgsnapError
from pgsnap.health import SNAPSHOT_TABLES

Event = dict[str, Any]
OnEvent = Callable[[Event], None]


def parse_event(detail: str | None) -> Event | None:
    """The JSON object of a pgsnap NOTICE's DETAIL, or None for any other notice."""
    if not detail:
        return None
    try:
        event = json.loads(detail)
    except ValueError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


def call(conn: psycopg.Connection, procedure: str, args: dict[str, Any],
         on_event: OnEvent | None = None) -> list[Event]:
    """`CALL pgsnap.<procedure>(name => value, ...)` (only the arguments given: the procedure's
    defaults stay its own); returns every event, in order."""
    if not conn.autocommit:
        raise ValueError("pgsnap's procedures commit per batch: call them on an autocommit connection")
    events: list[Event] = []

    def handler(diag: psycopg.errors.Diagnostic) -> None:
        event = parse_event(diag.message_detail)
        if event is not None:
            events.append(event)
            if on_event is not None:
                on_event(event)

    statement = sql.SQL("CALL pgsnap.{}({})").format(
        sql.Identifier(procedure),
        sql.SQL(", ").join(sql.SQL("{} => {}").format(sql.Identifier(k), sql.Placeholder(k)) for k in args))
    conn.add_notice_handler(handler)
    try:
        conn.execute(statement, args)
    except KeyboardInterrupt:
        run = next((f" (run {e['run_id']})" for e in reversed(events) if "run_id" in e), "")
        batch = next((e["batch"] for e in reversed(events) if e.get("event") == "batch"), 0)
        raise PgsnapError(f"interrupted: {procedure}{run} was cancelled after {batch} committed "
                          "batches; they stay, and a re-run goes on from there", Exit.INTERRUPTED) from None
    finally:
        conn.remove_notice_handler(handler)
    return events


def done_events(events: list[Event]) -> list[Event]:
    return [e for e in events if e.get("event") == "done"]


def _one_done(procedure: str, events: list[Event]) -> Event:
    done = done_events(events)
    if not done:
        raise PgsnapError(f"{procedure} reported no summary: the database's sql/ is not this pgsnap's; "
                          "run `pgsnap migrate`")
    return done[-1]


def populate(conn: psycopg.Connection, target_id: int, batch_size: int | None = None,
             on_event: OnEvent | None = None) -> Event:
    """`CALL pgsnap.populate_target`; its final (`done`) event."""
    args: dict[str, Any] = {"p_target_id": target_id}
    if batch_size is not None:
        args["p_batch_size"] = batch_size
    return _one_done("populate_target", call(conn, "populate_target", args, on_event))


def backfill(conn: psycopg.Connection, batch_size: int | None = None, max_batches: int | None = None,
             on_event: OnEvent | None = None) -> Event:
    """`CALL pgsnap.backfill_missing_snapshots`; its final (`done`) event."""
    args: dict[str, Any] = {}
    if batch_size is not None:
        args["p_batch_size"] = batch_size
    if max_batches is not None:
        args["p_max_batches"] = max_batches
    return _one_done("backfill_missing_snapshots", call(conn, "backfill_missing_snapshots", args, on_event))


def populate_summary(event: Event) -> str:
    """One line for a populate `done` event; it ends with how the rows were found: `scanned`
    (the rule over the me_files) or `copied from target N` (a twin's rows)."""
    target = f"target {event['target_id']}"
    if event.get("status") == "not_populated":
        return f"{target}: no bands, status not_populated"
    method = event.get("method")
    how = (f", copied from target {event['source_target_id']}" if method == "copied" else
           f", {method}" if method else "")
    return (f"{target}: {event['inserted']} inserted, {event['moved']} moved, {event['deleted']} deleted, "
            f"{event['refreshed']} refreshed, {event['unchanged']} unchanged "
            f"({event['batches']} batches, {event['seconds']:.2f}s{how})")


def backfill_summary(event: Event) -> str:
    """One line for a backfill `done` event."""
    if event.get("status") == "skipped":
        return f"backfill run {event['run_id']} skipped: another run is active"
    counts = ", ".join(f"{t} {event[t]}" for t in SNAPSHOT_TABLES)
    error = f"; {event['error']}" if event.get("error") else ""
    return (f"backfill run {event['run_id']} {event['status']}: {event['batches']} batches; "
            f"filled {counts}{error}")
