"""One loop per job: `pgsnap populate`, `pgsnap backfill`, migrate's backfill and the scheduler
CALL the procedures and follow them by their NOTICEs (pgsnap/procedures.py): progress bars fed
by the batch events, summaries from the final event, Ctrl-C cancels the statement and the run
is recorded."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from pgsnap import procedures
from pgsnap.cli import populate as populate_cli
from pgsnap.errors import PgsnapError
from tests.helpers import (
    B1,
    B2,
    B3,
    M1,
    M2,
    M3,
    SEX,
    T1,
    execute,
    populations,
    rename_trait,
    rows,
    seed_worked_example,
    value,
    wait_until,
)

REPO = Path(__file__).resolve().parent.parent


class Recorder:
    """Stands in for pgsnap.progress.progress: records every update a command makes."""

    def __init__(self):
        self.updates: list[tuple] = []

    @contextmanager
    def __call__(self, total=None, label="", stream=None):
        recorder = self

        class Bar:
            def update(self, done, total=None):
                recorder.updates.append((label, done, total))

        yield Bar()


def events_of(conn, statement: str, params=()) -> list[dict]:
    events: list[dict] = []
    conn.add_notice_handler(lambda d: (e := procedures.parse_event(d.message_detail)) and events.append(e))
    execute(conn, statement, params)
    return events


def test_populate_progress_is_the_procedures_batch_events(cli, conn, new_conn, monkeypatch):
    seed_worked_example(conn)
    recorder = Recorder()
    monkeypatch.setattr(populate_cli, "progress", recorder)
    result = cli("populate", T1, "--batch-size", "1", "--json")
    assert (result.exit_code, result.stderr) == (0, "")
    (summary,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert {k: summary[k] for k in ("event", "job", "target_id", "status", "inserted", "moved", "deleted",
                                    "refreshed", "unchanged")} == {
        "event": "done", "job": "populate", "target_id": T1, "status": "populated", "inserted": 3,
        "moved": 0, "deleted": 0, "refreshed": 0, "unchanged": 0}
    assert populations(conn, T1).keys() == {M1, M2, M3}
    # the same run, CALLed by hand: the same batch events the bar was fed
    execute(conn, "DELETE FROM target_populations")
    events = events_of(new_conn(), "CALL pgsnap.populate_target(%s, 1)", (T1,))
    batches = [(f"target {T1}", e["batch"], e["batches"]) for e in events if e["event"] == "batch"]
    assert recorder.updates == batches and len(batches) == summary["batches"] >= 3


def test_backfill_progress_and_summary(cli, conn, monkeypatch):
    from pgsnap.cli import backfill as backfill_cli

    seed_worked_example(conn)
    execute(conn, "CALL pgsnap.populate_target(%s)", (T1,))
    execute(conn, "ALTER TABLE target_populations ALTER COLUMN matching_tags_snapshot DROP NOT NULL")
    execute(conn, "UPDATE target_populations SET matching_tags_snapshot = NULL")
    recorder = Recorder()
    monkeypatch.setattr(backfill_cli, "progress", recorder)
    result = cli("backfill", "--batch-size", "1", "--json")
    assert (result.exit_code, result.stderr) == (0, "")
    summary = json.loads(result.stdout)
    run_id = value(conn, "SELECT max(id) FROM pgsnap.backfill_runs")
    assert summary == {"event": "done", "job": "backfill", "run_id": run_id, "status": "succeeded",
                       "batches": 3, "target_populations": 3, "offers": 0, "ad_events": 0, "error": None}
    assert recorder.updates == [("backfill", 1, 3), ("backfill", 2, 3), ("backfill", 3, 3)]
    text = cli("backfill")
    assert text.stdout == (f"backfill run {run_id + 1} succeeded: 0 batches; filled target_populations 0, "
                           "offers 0, ad_events 0\n")


def on_terminal(args: list[str]) -> tuple[int, str]:
    """Run pgsnap with a pseudo-terminal as stdout/stderr; everything it wrote."""
    main, side = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "PGSNAP_HOME"}
    proc = subprocess.Popen([sys.executable, "-m", "pgsnap", *args], stdin=subprocess.DEVNULL, stdout=side,
                            stderr=side, env=env, cwd=REPO, close_fds=True)
    os.close(side)
    seen = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # EIO: the other side is closed
            break
        if not chunk:
            break
        seen += chunk
    os.close(main)
    return proc.wait(60), seen.decode()


def test_a_terminal_shows_the_bar(db_dsn, conn):
    seed_worked_example(conn)
    code, out = on_terminal(["--dsn", db_dsn, "populate", str(T1), "--batch-size", "1"])
    assert code == 0, out
    last = out.rstrip().splitlines()[-1]
    assert last.startswith(f"target {T1}: 3 inserted, 0 moved, 0 deleted")
    batches = int(last.split("(")[1].split()[0])
    assert f"target {T1}  [" in out and f"  {batches}/{batches}" in out  # click's bar, on the terminal


# -- Ctrl-C ----------------------------------------------------------------------------------------
@contextmanager
def held_at(conn, table: str, when: str) -> Iterator[None]:
    """Rows of `table` matching `when` wait (BEFORE INSERT OR UPDATE) for advisory lock 4242,
    which this block holds."""
    execute(conn, f"""
        CREATE FUNCTION public.test_hold() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_advisory_xact_lock_shared(4242); RETURN NEW; END $$;
        CREATE TRIGGER test_hold BEFORE INSERT OR UPDATE ON {table}
           FOR EACH ROW WHEN ({when}) EXECUTE FUNCTION public.test_hold()""")
    execute(conn, "SELECT pg_advisory_lock(4242)")
    try:
        yield
    finally:
        execute(conn, "SELECT pg_advisory_unlock(4242)")
        execute(conn, f"DROP TRIGGER test_hold ON {table}")


def interrupt_when_held(conn, args: list[str], dsn: str) -> tuple[int, str, str]:
    """Run `pgsnap ARGS`, wait for its session to wait on the lock, send SIGINT (Ctrl-C)."""
    env = {k: v for k, v in os.environ.items() if k != "PGSNAP_HOME"}
    # as at a terminal: a runner started in the background (`cmd &` without job control) hands
    # its children SIGINT ignored, and Python then never raises KeyboardInterrupt
    proc = subprocess.Popen([sys.executable, "-m", "pgsnap", "--dsn", dsn, *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wait_until(lambda: rows(conn, "SELECT 1 FROM pg_stat_activity WHERE application_name LIKE 'pgsnap %%'"
                                      " AND wait_event = 'advisory'"), what="pgsnap to be held")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out, err


def test_ctrl_c_cancels_the_backfill_and_the_run_is_recorded(conn, db_dsn):
    seed_worked_example(conn)
    execute(conn, "CALL pgsnap.populate_target(%s)", (T1,))
    execute(conn, "ALTER TABLE target_populations ALTER COLUMN matching_tags_snapshot DROP NOT NULL")
    execute(conn, "UPDATE target_populations SET matching_tags_snapshot = NULL")
    with held_at(conn, "target_populations", f"NEW.me_file_id = {M3}"):
        code, out, err = interrupt_when_held(conn, ["backfill", "--batch-size", "1"], db_dsn)
    run_id, status, batches, filled, error = rows(
        conn, "SELECT id, status, batches, target_populations, error FROM pgsnap.backfill_runs"
              " ORDER BY id DESC LIMIT 1")[0]
    assert (code, out) == (130, "")
    assert err == (f"error: interrupted: backfill_missing_snapshots (run {run_id}) was cancelled after 2 "
                   "committed batches; they stay, and a re-run goes on from there\n")
    assert (status, batches, filled, error) == ("failed", 2, 2, "canceling statement due to user request")
    assert value(conn, "SELECT count(*) FROM target_populations WHERE matching_tags_snapshot IS NULL") == 1
    assert rows(conn, "SELECT pid FROM pg_stat_activity WHERE state = 'active'"
                      " AND query LIKE 'CALL pgsnap.%%'") == []  # the statement was cancelled


def test_ctrl_c_cancels_a_populate_and_a_rerun_completes_it(cli, conn, db_dsn):
    seed_worked_example(conn)
    with held_at(conn, "target_populations", f"NEW.me_file_id = {M3}"):
        code, out, err = interrupt_when_held(conn, ["populate", str(T1), "--batch-size", "1"], db_dsn)
    assert (code, out) == (130, "")
    assert err.startswith("error: interrupted: populate_target was cancelled after ")
    assert err.endswith(" committed batches; they stay, and a re-run goes on from there\n")
    assert value(conn, "SELECT populated_by FROM pgsnap.populating_targets()"
                       " WHERE target_id = %s", (T1,)) is None
    result = cli("populate", T1)
    assert (result.exit_code, result.stderr) == (0, "")
    assert {m: band for m, (band, _snapshot) in populations(conn, T1).items()} == {M1: B1, M2: B2, M3: B3}


# -- populate --stale and the stale job ---------------------------------------------------------------
def test_populate_stale_repopulates_what_a_catalogue_edit_left_stale(cli, conn):
    seed_worked_example(conn)
    execute(conn, "CALL pgsnap.populate_target(%s)", (T1,))
    assert cli("populate", "--stale").stdout == "no stale targets\n"
    rename_trait(conn, SEX, "Sex")  # a parent's name: in every snapshot of T1
    assert rows(conn, "SELECT target_id, kind FROM pgsnap.stale_targets()") == [(T1, "snapshot")]
    result = cli("populate", "--stale", "--json")
    assert (result.exit_code, result.stderr) == (0, "")
    (summary,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert (summary["target_id"], summary["refreshed"], summary["status"]) == (T1, 3, "populated")
    assert rows(conn, "SELECT * FROM pgsnap.stale_targets()") == []
    assert {snap["tags"][0][1] for _band, snap in populations(conn, T1).values()} == {"Sex"}


def test_the_stale_job_reports_what_it_repopulated(cli, conn):
    seed_worked_example(conn)
    execute(conn, "CALL pgsnap.populate_target(%s)", (T1,))
    assert cli("schedule", "install", "--runner", "pgsnap").exit_code == 0
    rename_trait(conn, SEX, "Sex")  # a parent's name: in every snapshot of T1
    result = cli("schedule", "run", "--once", "pgsnap-stale")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"pgsnap-stale: succeeded (target {T1}: 0 inserted, 0 moved, 0 deleted, "
                                    "3 refreshed, 0 unchanged (")
    assert rows(conn, "SELECT * FROM pgsnap.stale_targets()") == []


@pytest.mark.parametrize("event", [None, "", "not json", "[1, 2]", '{"no": "event"}'])
def test_other_notices_are_not_events(event):
    assert procedures.parse_event(event) is None


def test_procedures_need_an_autocommit_connection(db_dsn):
    with psycopg.connect(db_dsn) as conn, pytest.raises(ValueError, match="autocommit"):
        procedures.backfill(conn)


def test_a_call_without_a_final_event_says_sql_is_not_this_pgsnaps(conn):
    execute(conn, "CREATE PROCEDURE pgsnap.quiet() LANGUAGE sql AS $$ SELECT 1 $$")
    assert procedures.call(conn, "quiet", {}) == []
    with pytest.raises(PgsnapError, match="quiet reported no summary: the database's sql/ is not"):
        procedures._one_done("quiet", [])

