"""The jobs of `pgsnap schedule`: on pg_cron, or on pgsnap's scheduler.

One job definition, two runners. With the pg_cron extension the job lives in
`cron.job` (in pg_cron's database, `cron.database_name`, pointed at this one
with `cron.schedule_in_database` when they differ); without it, in
`pgsnap.jobs`, run by `pgsnap schedule run`. Expressions are checked by
`pgsnap.schedule.cron` either way, and a name lives in one runner at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg.conninfo import make_conninfo

from pgsnap import db
from pgsnap.errors import Exit, PgsnapError
from pgsnap.schedule import cron


@dataclass(frozen=True)
class JobSpec:
    """A job `pgsnap schedule install` registers: its default name and schedule, its command."""

    name: str
    schedule: str
    command: str


# the safety net for NULL snapshots, and the re-population of targets a catalogue edit made stale
BACKFILL = JobSpec("pgsnap-backfill", "0 * * * *", "CALL pgsnap.backfill_missing_snapshots()")
STALE = JobSpec("pgsnap-stale", "*/5 * * * *", "CALL pgsnap.repopulate_stale_targets()")

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


def parse_schedule(expr: str, runner: str = "auto") -> cron.Schedule:
    """Validate an expression offline (before connecting); PgsnapError exit 2 if bad."""
    try:
        parsed = cron.parse(expr)
    except cron.CronError as exc:
        raise PgsnapError(str(exc), Exit.CANNOT_RUN) from None
    if parsed.reboot and runner == "pgsnap":
        raise PgsnapError(REBOOT_REFUSED.format(expr=parsed.expr), Exit.CANNOT_RUN)
    return parsed


REBOOT_REFUSED = '"{expr}" runs only when pg_cron starts; the pgsnap scheduler has no such event'


def job_dict(job: JobInfo) -> dict:
    return {"runner": job.runner, "jobid": job.jobid, "name": job.jobname, "schedule": job.schedule,
            "command": job.command, "active": job.active, "last_start": job.last_start,
            "last_status": job.last_status, "last_message": job.last_message}


def install(r: Runners, name: str, parsed: cron.Schedule, runner: str,
            command: str) -> tuple[str, int, list[tuple[str, int]]]:
    """Create or update job `name`, and remove it from the other runner.

    Returns (runner, jobid, [(runner, jobid) removed]). Idempotent.
    """
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
            raise PgsnapError(REBOOT_REFUSED.format(expr=parsed.expr), Exit.CANNOT_RUN)
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
