"""`pgsnap schedule`: the safety-net backfill on pg_cron, or on pgsnap's scheduler.

One job definition, two runners. With the pg_cron extension the job lives in
`cron.job` (in pg_cron's database, `cron.database_name`, pointed at this one
with `cron.schedule_in_database` when they differ); without it, in
`pgsnap.jobs`, run by `pgsnap schedule run`. Expressions are checked by
`pgsnap.cron` either way, and a name lives in one runner at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import click
import psycopg
from psycopg.conninfo import make_conninfo

from pgsnap import cron, db, scheduler
from pgsnap.cli import App, pass_app
from pgsnap.errors import PgsnapError

DEFAULT_NAME = "pgsnap-backfill"
DEFAULT_SCHEDULE = "0 * * * *"
BACKFILL_COMMAND = "CALL pgsnap.backfill_missing_snapshots()"

CRON_JOBS = """
    SELECT j.jobid, j.jobname, j.schedule, j.command, j.active,
           r.start_time, r.status, r.return_message
      FROM cron.job j
      LEFT JOIN LATERAL (SELECT start_time, status, return_message
                           FROM cron.job_run_details d WHERE d.jobid = j.jobid
                          ORDER BY runid DESC LIMIT 1) r ON true
     WHERE j.database = %s ORDER BY j.jobid"""
PGSNAP_JOBS = """
    SELECT j.jobid, j.jobname, j.schedule, j.command, j.active,
           r.start_time, r.status, r.return_message
      FROM pgsnap.jobs j
      LEFT JOIN LATERAL (SELECT start_time, status, return_message
                           FROM pgsnap.job_run_details d WHERE d.jobid = j.jobid
                          ORDER BY runid DESC LIMIT 1) r ON true
     ORDER BY j.jobid"""


@dataclass(frozen=True)
class JobInfo:
    runner: str  # "pg_cron" or "pgsnap"
    jobid: int
    jobname: str | None
    schedule: str
    command: str
    active: bool
    last_start: datetime | None
    last_status: str | None
    last_message: str | None


@dataclass
class Runners:
    """The app database's connection, and pg_cron's (None without pg_cron)."""

    conn: psycopg.Connection
    dbname: str
    cron: psycopg.Connection | None
    cron_dbname: str | None  # set when pg_cron is preloaded, even if unusable
    cron_problem: str | None = None  # why pg_cron cannot be used


@contextmanager
def runners(conn: psycopg.Connection, dsn: str) -> Iterator[Runners]:
    """Find pg_cron: preloaded (cron.database_name set) and created in that database."""
    dbname, cron_db = conn.execute(
        "SELECT current_database(), "
        "nullif(current_setting('cron.database_name', true), '')").fetchone()
    r = Runners(conn, dbname, None, cron_db)
    if cron_db is None:
        r.cron_problem = "pg_cron is not loaded (shared_preload_libraries)"
        yield r
        return
    own = None
    try:
        if cron_db != dbname:
            own = db.connect(make_conninfo(dsn, dbname=cron_db))
        cconn = own or conn
        if cconn.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_cron'").fetchone():
            r.cron = cconn
        else:
            r.cron_problem = f"the pg_cron extension is not created in database {cron_db}"
    except PgsnapError as exc:
        r.cron_problem = f"pg_cron's database: {exc}"
    try:
        yield r
    finally:
        if own is not None:
            own.close()


def list_jobs(r: Runners) -> list[JobInfo]:
    """Jobs for this database from both runners, each with its last run."""
    jobs = []
    if r.cron is not None:
        jobs += [JobInfo("pg_cron", *row)
                 for row in r.cron.execute(CRON_JOBS, (r.dbname,)).fetchall()]
    jobs += [JobInfo("pgsnap", *row) for row in r.conn.execute(PGSNAP_JOBS).fetchall()]
    return jobs


def install(r: Runners, name: str, schedule: str, runner: str = "auto",
            command: str = BACKFILL_COMMAND) -> tuple[str, int, list[tuple[str, int]]]:
    """Create or update job `name`, and remove it from the other runner.

    Returns (runner, jobid, [(runner, jobid) removed]). Idempotent.
    """
    try:
        parsed = cron.parse(schedule)
    except cron.CronError as exc:
        raise PgsnapError(str(exc), exit_code=2) from None
    if runner == "auto":
        runner = "pg_cron" if r.cron is not None else "pgsnap"
    if runner == "pg_cron":
        if r.cron is None:
            raise PgsnapError(f"cannot use pg_cron: {r.cron_problem}")
        row = r.cron.execute(
            "SELECT database FROM cron.job WHERE jobname = %s AND username = current_user",
            (name,)).fetchone()
        if row and row[0] != r.dbname:
            raise PgsnapError(f'pg_cron job "{name}" already runs in database {row[0]}; '
                              "remove it there or choose another --name")
        if r.cron is r.conn:
            sql = "SELECT cron.schedule(%s, %s, %s)"
            args: tuple = (name, parsed.expr, command)
        else:
            sql = "SELECT cron.schedule_in_database(%s, %s, %s, %s)"
            args = (name, parsed.expr, command, r.dbname)
        jobid = r.cron.execute(sql, args).fetchone()[0]
        removed = remove(r, name, runners=("pgsnap",))
    else:
        if parsed.reboot:
            raise PgsnapError(f'"{parsed.expr}" runs only when pg_cron starts; '
                              "the pgsnap scheduler has no such event", exit_code=2)
        jobid = r.conn.execute(
            "INSERT INTO pgsnap.jobs (jobname, schedule, command) VALUES (%s, %s, %s) "
            "ON CONFLICT (jobname) DO UPDATE SET schedule = EXCLUDED.schedule, "
            "command = EXCLUDED.command, active = true RETURNING jobid",
            (name, parsed.expr, command)).fetchone()[0]
        removed = remove(r, name, runners=("pg_cron",))
    return runner, jobid, removed


def remove(r: Runners, name: str,
           runners: tuple[str, ...] = ("pg_cron", "pgsnap")) -> list[tuple[str, int]]:
    """Remove job `name` of this database from the given runners; returns what went."""
    removed = []
    if "pg_cron" in runners and r.cron is not None:
        for (jobid,) in r.cron.execute(
                "SELECT jobid FROM cron.job WHERE jobname = %s AND database = %s",
                (name, r.dbname)).fetchall():
            r.cron.execute("SELECT cron.unschedule(%s::bigint)", (jobid,))
            removed.append(("pg_cron", jobid))
    if "pgsnap" in runners:
        removed += [("pgsnap", jobid) for (jobid,) in r.conn.execute(
            "DELETE FROM pgsnap.jobs WHERE jobname = %s RETURNING jobid", (name,))]
    return removed


def _when(at: datetime | None) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if at else "-"


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


@click.group("schedule")
def schedule() -> None:
    """Schedule the safety-net backfill (pg_cron, or `pgsnap schedule run`)."""


@schedule.command("install")
@click.option("--schedule", "expr", default=DEFAULT_SCHEDULE, show_default=True,
              help="pg_cron 1.4 expression, UTC.")
@click.option("--name", default=DEFAULT_NAME, show_default=True)
@click.option("--runner", type=click.Choice(["auto", "pg_cron", "pgsnap"]),
              default="auto", show_default=True,
              help="auto: pg_cron when the extension is installed, else pgsnap's "
                   "scheduler.")
@pass_app
def install_cmd(app: App, expr: str, name: str, runner: str) -> None:
    """Register the backfill job (idempotent by name)."""
    with runners(app.connect(), app.dsn) as r:
        used, jobid, removed = install(r, name, expr, runner)
        if used == "pg_cron":
            where = "" if r.cron is r.conn else f" (from database {r.cron_dbname})"
            click.echo(f'pg_cron job {jobid} "{name}" runs "{BACKFILL_COMMAND}" at '
                       f'"{expr.strip()}" UTC in database {r.dbname}{where}')
        else:
            why = f" ({r.cron_problem})" if runner == "auto" else ""
            click.echo(f'pgsnap job {jobid} "{name}" runs "{BACKFILL_COMMAND}" at '
                       f'"{expr.strip()}" UTC once `pgsnap schedule run` runs{why}')
        for other, other_id in removed:
            click.echo(f'removed {other} job {other_id} "{name}" (a job lives in one runner)')


@schedule.command("remove")
@click.option("--name", default=DEFAULT_NAME, show_default=True)
@pass_app
def remove_cmd(app: App, name: str) -> None:
    """Remove the job from pg_cron and from pgsnap's scheduler."""
    with runners(app.connect(), app.dsn) as r:
        removed = remove(r, name)
    for runner, jobid in removed:
        click.echo(f'removed {runner} job {jobid} "{name}"')
    if not removed:
        click.echo(f'no job named "{name}"')


@schedule.command("list")
@pass_app
def list_cmd(app: App) -> None:
    """Jobs of this database with their last run."""
    with runners(app.connect(), app.dsn) as r:
        jobs = list_jobs(r)
        if r.cron is None and r.cron_dbname is not None:
            click.echo(f"note: {r.cron_problem}", err=True)
    if not jobs:
        click.echo("no jobs; add one with `pgsnap schedule install`")
        return
    rows = [("runner", "jobid", "name", "schedule", "active", "last run (UTC)",
             "status", "message")]
    rows += [(j.runner, str(j.jobid), j.jobname or "-", j.schedule,
              "yes" if j.active else "no", _when(j.last_start), j.last_status or "-",
              db.first_line(j.last_message or "-")) for j in jobs]
    click.echo(_table(rows))


@schedule.command("next")
@click.option("--count", default=5, show_default=True, type=click.IntRange(1, 1000))
@click.option("--name", default=None, help="Only this job.")
@pass_app
def next_cmd(app: App, count: int, name: str | None) -> None:
    """Next run times (UTC) of each job, by pg_cron 1.4's rules."""
    with runners(app.connect(), app.dsn) as r:
        jobs = [j for j in list_jobs(r) if name is None or j.jobname == name]
    if not jobs:
        raise PgsnapError(f'no job named "{name}"' if name else "no jobs")
    now = scheduler.utcnow()
    for j in jobs:
        click.echo(f'{j.jobname} ({j.runner}, "{j.schedule}"'
                   f'{"" if j.active else ", inactive"}):')
        try:
            for at in cron.next_runs(j.schedule, now, count):
                click.echo(f"  {_when(at)}")
        except cron.CronError as exc:
            click.echo(f"  no next run: {exc.reason}")


@schedule.command("run")
@click.option("--once", "once", metavar="JOB", default=None,
              help="Run this job now, in the foreground, and exit.")
@click.option("--tick", default=1.0, show_default=True, type=click.FloatRange(0.01),
              help="Seconds between checks.")
@click.option("--stop-timeout", default=60.0, show_default=True,
              type=click.FloatRange(0),
              help="On SIGTERM, seconds a non-backfill run gets before it is cancelled.")
@pass_app
def run_cmd(app: App, once: str | None, tick: float, stop_timeout: float) -> None:
    """Run pgsnap's scheduler in the foreground (or one job with --once)."""
    conn = app.connect()
    if once is None:
        conn.close()
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s "
                            "%(name)s: %(message)s")
        code = scheduler.run_scheduler(app.dsn, tick=tick, stop_timeout=stop_timeout)
        click.get_current_context().exit(code)
    job = scheduler.find_job(conn, once)
    if job is None:
        with runners(conn, app.dsn) as r:
            found = [j for j in list_jobs(r) if j.jobname == once]
        if not found:
            raise PgsnapError(f'no job named "{once}"')
        job = scheduler.Job(None, once, found[0].schedule, found[0].command, r.dbname, "")
    run = scheduler.run_once(app.dsn, job)
    click.echo(f"{once}: {run.status}" + (f" ({run.message})" if run.message else ""))
    if run.status == "failed":
        click.get_current_context().exit(1)


commands = [schedule]
