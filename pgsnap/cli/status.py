"""CLI: status — what is going on, section by section.

`pgsnap status` shows targets by status, the targets a catalogue edit left stale (since when, how
long), the band counts of every maintained target, NULL snapshots, the latest backfill runs, the
schedule with next run times and the migrations; it also describes a database that is behind or ahead,
section by section (a section that cannot be read says why). `--json`: the same data as one
JSON object on stdout.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import click
import psycopg

from pgsnap import db, deploy
from pgsnap.cli.app import App, pass_app
from pgsnap.cli.output import age, echo_json, iso, json_option, jsonable, table, utc
from pgsnap.errors import PgsnapError, describe_db_error, first_line
from pgsnap.health import snapshot_health
from pgsnap.schedule import cron, jobs, scheduler
from pgsnap.schedule.jobs import STALE

STATUSES = ("populated", "populating", "not_populated")
NOT_INSTALLED = "pgsnap is not installed in this database yet: run `pgsnap migrate`"


def _targets(conn: psycopg.Connection, app: App, now: datetime) -> dict:
    counts = dict(conn.execute(
        "SELECT population_status, count(*) FROM public.targets GROUP BY 1").fetchall())
    populating = []
    if db.routine_exists(conn, "pgsnap.populating_targets()"):
        populating = [{"target_id": t, "since": s, "last_populated_at": last, "populated_by": pid}
                      for t, s, last, pid in conn.execute(
                          "SELECT target_id, since, last_populated_at, populated_by"
                          "  FROM pgsnap.populating_targets()")]
    return {"counts": {**{s: counts.pop(s, 0) for s in STATUSES}, **dict(sorted(counts.items()))},
            "populating": populating}


def _targets_text(data: dict) -> list[str]:
    lines = table(list(data["counts"].items()))
    for t in data["populating"]:
        started = (f"since {utc(t['since'])} UTC" if t["since"]
                   else f"since an unknown time (last populated {utc(t['last_populated_at'])})")
        who = f"pid {t['populated_by']} is populating it" if t["populated_by"] else "nobody is populating it"
        lines.append(f"target {t['target_id']} populating {started}; {who}")
    return lines


def _require(conn: psycopg.Connection, routine: str) -> None:
    if not db.routine_exists(conn, routine):
        raise PgsnapError(NOT_INSTALLED)


def _stale_targets(conn: psycopg.Connection, app: App, now: datetime) -> list[dict]:
    """pgsnap.stale_targets(), oldest first; the age is measured on the header's clock."""
    _require(conn, "pgsnap.stale_targets()")
    return [{"target_id": t, "stale_since": since, "age_seconds": max(0, int((now - since).total_seconds())),
             "kind": kind, "reason": reason}
            for t, since, kind, reason in conn.execute(
                "SELECT target_id, stale_since, kind, reason FROM pgsnap.stale_targets()")]


def _stale_targets_text(stale: list[dict]) -> list[str]:
    if not stale:
        return ["none: every maintained target follows the catalogue"]
    return [*table([("target", "stale since (UTC)", "age", "kind", "reason")]
                   + [(s["target_id"], utc(s["stale_since"]), age(s["age_seconds"]), s["kind"], s["reason"])
                      for s in stale]),
            f"re-populate them now: `pgsnap populate --stale` (the {STALE.name} job does it when scheduled)"]


BAND_COUNTS = ("SELECT t.id, t.population_status, c.target_band_id, c.tier, c.population"
               "  FROM public.targets t"
               "  LEFT JOIN LATERAL pgsnap.band_counts(t.id) c ON true"
               " WHERE t.population_status IN ('populating', 'populated')"
               " ORDER BY t.id, c.tier, c.target_band_id")


def _band_counts(conn: psycopg.Connection, app: App, now: datetime) -> list[dict]:
    """pgsnap.band_counts() of every maintained target (populating or populated), by target id."""
    _require(conn, "pgsnap.band_counts(bigint)")
    targets: dict[int, dict] = {}
    for target_id, status, band_id, tier, population in conn.execute(BAND_COUNTS):
        target = targets.setdefault(target_id, {"target_id": target_id, "status": status, "bands": []})
        if band_id is not None:
            target["bands"].append({"target_band_id": band_id, "tier": tier, "population": population})
    return list(targets.values())


def _band_counts_text(targets: list[dict]) -> list[str]:
    if not targets:
        return ["no maintained target (populating or populated)"]
    return table([("target", "status", "tier", "band", "population")]
                 + [(t["target_id"], t["status"], b["tier"], b["target_band_id"], b["population"])
                    for t in targets for b in t["bands"] or [{"tier": None, "target_band_id": None,
                                                               "population": None}]])


def _snapshots(conn: psycopg.Connection, app: App, now: datetime) -> dict:
    return {t: {"null": nulls, "rows": total} for t, (nulls, total) in snapshot_health(conn).items()}


def _snapshots_text(data: dict) -> list[str]:
    return table([("table", "NULL", "rows"), *((t, v["null"], v["rows"]) for t, v in data.items())])


RUN_COLUMNS = ("id", "started_at", "finished_at", "status", "batches", "target_populations", "offers",
               "ad_events", "error")


def _backfill_runs(conn: psycopg.Connection, app: App, now: datetime) -> list[dict]:
    if not db.relation_exists(conn, "pgsnap.backfill_runs"):
        raise PgsnapError(NOT_INSTALLED)
    runs = conn.execute(
        "SELECT id, started_at, finished_at, status, batches, target_populations, offers, ad_events,"
        "       error FROM pgsnap.backfill_runs ORDER BY started_at DESC, id DESC LIMIT 5").fetchall()
    return [dict(zip(RUN_COLUMNS, run, strict=True)) for run in runs]


def _backfill_runs_text(runs: list[dict]) -> list[str]:
    if not runs:
        return ["no backfill run yet"]
    return table([("id", "started (UTC)", "finished (UTC)", "status", "batches", "target_populations",
                   "offers", "ad_events", "error")]
                 + [(r["id"], utc(r["started_at"]), utc(r["finished_at"]), r["status"], r["batches"],
                     r["target_populations"], r["offers"], r["ad_events"],
                     first_line(r["error"]) if r["error"] else None) for r in runs])


def _schedule(conn: psycopg.Connection, app: App, now: datetime) -> dict:
    if not db.relation_exists(conn, "pgsnap.jobs"):
        raise PgsnapError(NOT_INSTALLED)
    with jobs.runners(conn, app.dsn) as r:
        found = jobs.list_jobs(r)
        cron_problem = r.cron_problem if r.cron is None else None
    listed = []
    for j in found:
        entry = jobs.job_dict(j)
        try:
            entry["next_run"] = cron.next_runs(j.schedule, now, 1)[0] if j.active else None
        except cron.CronError as exc:
            entry["next_run"], entry["no_next_run"] = None, exc.reason
        listed.append(entry)
    leader = scheduler.leader_pid(conn) if any(j.runner == "pgsnap" and j.active for j in found) else None
    return {"jobs": listed, "pgsnap_jobs": any(j.runner == "pgsnap" and j.active for j in found),
            "scheduler_pid": leader, "pg_cron_problem": cron_problem}


def _schedule_text(data: dict) -> list[str]:
    lines = []
    if data["jobs"]:
        rows = [("runner", "jobid", "name", "schedule", "active", "last run (UTC)", "status",
                 "next run (UTC)")]
        for j in data["jobs"]:
            upcoming = (utc(j["next_run"]) if j["next_run"] else
                        f"none ({j['no_next_run']})" if "no_next_run" in j else "inactive")
            rows.append((j["runner"], j["jobid"], j["name"], j["schedule"], "yes" if j["active"] else "no",
                         utc(j["last_start"]), j["last_status"], upcoming))
        lines += table(rows)
    else:
        lines.append("no jobs: the safety-net backfill is not scheduled; run `pgsnap schedule install`")
    if data["pgsnap_jobs"]:
        lines.append(f"pgsnap scheduler: leader pid {data['scheduler_pid']}" if data["scheduler_pid"] else
                     "pgsnap scheduler: not running; its jobs run only under `pgsnap schedule run`")
    if data["pg_cron_problem"]:
        lines.append(f"pg_cron: not used ({data['pg_cron_problem']})")
    return lines


def _migrations(conn: psycopg.Connection, app: App, now: datetime) -> dict:
    rows = deploy.status(conn)
    known = {m.id for m in deploy.read_migrations()}
    lock = None
    # yoyo_lock: a `pgsnap migrate` is running, or one died and left it (stale)
    if db.relation_exists(conn, "yoyo_lock"):
        row = conn.execute("SELECT pid, ctime FROM yoyo_lock ORDER BY ctime LIMIT 1").fetchone()
        lock = {"pid": row[0], "since": row[1].replace(tzinfo=UTC)} if row else None
    return {"applied": [mid for mid, at in rows if at is not None],
            "pending": [mid for mid, at in rows if at is None],
            "unknown": [mid for mid, at in rows if at is not None and mid not in known],
            "lock": lock}


def _migrations_text(data: dict) -> list[str]:
    lines = [f"{len(data['applied'])} applied, {len(data['pending'])} pending"]
    lines += [f"pending: {mid}" for mid in data["pending"]]
    if data["pending"]:
        lines.append("run `pgsnap migrate`")
    lines += [f"applied but unknown to this pgsnap: {mid} (upgrade pgsnap)" for mid in data["unknown"]]
    if data["lock"]:
        lock = data["lock"]
        lines.append(f"migration lock held by process {lock['pid']} since {utc(lock['since'])} UTC;"
                     " if no `pgsnap migrate` is running, it is stale: DELETE FROM yoyo_lock")
    return lines


Reader = Callable[[psycopg.Connection, App, datetime], Any]
SECTIONS: list[tuple[str, str, Reader, Callable[[Any], list[str]]]] = [
    ("targets", "targets", _targets, _targets_text),
    ("stale_targets", "stale targets", _stale_targets, _stale_targets_text),
    ("band_counts", "band counts (maintained targets)", _band_counts, _band_counts_text),
    ("snapshots", "snapshots", _snapshots, _snapshots_text),
    ("backfill_runs", "backfill runs (latest 5)", _backfill_runs, _backfill_runs_text),
    ("schedule", "schedule", _schedule, _schedule_text),
    ("migrations", "migrations", _migrations, _migrations_text),
]


@click.command()
@json_option
@pass_app
def status(app: App, as_json: bool) -> None:
    """Targets by status, stale targets, band counts, NULL snapshots, backfill runs, schedule, migrations."""
    conn = app.connect(check=False)  # status also describes a database that is behind or ahead
    now = scheduler.utcnow()  # one clock for the header and the next runs
    report: dict[str, Any] = {"server": db.server_label(app.dsn), "at": iso(now)}
    if not as_json:
        click.echo(f"pgsnap status of {report['server']} at {utc(now)} UTC\n")
    for key, title, read, render in SECTIONS:
        try:
            data = read(conn, app, now)
            report[key], lines = jsonable(data), render(data)
        except (psycopg.Error, PgsnapError) as exc:
            why = describe_db_error(exc) if isinstance(exc, psycopg.Error) else str(exc)
            report[key], lines = {"unavailable": why}, [f"unavailable: {why}"]
        if not as_json:
            click.echo(title)
            click.echo("".join(f"  {line}\n" for line in lines))
    if as_json:
        echo_json(report)
