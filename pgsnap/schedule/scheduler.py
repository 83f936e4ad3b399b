"""The pgsnap scheduler: pg_cron's job model for hosts without pg_cron.

`run_scheduler` is a foreground process (for systemd) that runs the active jobs
of `pgsnap.jobs` at the slots of their pg_cron 1.4 expressions, in UTC, and
records every run in `pgsnap.job_run_details`.

* One active scheduler per database: the leader holds the session advisory
  lock `pgsnap.lock_key('scheduler')`; others wait as standbys, polling the
  lock every tick, and take over when the leader's session ends.
* Skip if running: a slot that arrives while the job's previous run is still
  going is recorded as `skipped` (pg_cron would queue it). A backfill that
  finds another backfill active (pg_cron's, a CLI one) says so in its final
  NOTICE; that run is recorded as `skipped` too (likewise `stopped`).
* No replay: a job becomes due at the first slot after its last recorded
  start (or after the scheduler took over, for a job that never ran). After
  any downtime, missed slots therefore collapse into at most one run, started
  as soon as a scheduler leads; then the job follows its schedule.
* SIGTERM/SIGINT: no new runs; a running backfill is asked to stop after its
  current batch (`pgsnap.backfill_runs.stop_requested`); other commands get
  `stop_timeout` seconds and are then cancelled; each run is recorded
  (`stopped`, `succeeded` or `failed`) and the process exits 0.
* A run left `running` by a scheduler that died is marked `failed` once its
  backend is gone (until then the job counts as running).
* History older than the `job_history_retention` setting is deleted hourly.
* `@reboot` jobs are pg_cron-only: this scheduler logs and ignores them.
* Jobs run in the database that holds `pgsnap.jobs`, through the scheduler's
  own DSN; `nodename`, `nodeport`, `database` and `username` only keep
  cron.job's shape.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import psycopg

from pgsnap import db, procedures
from pgsnap.errors import PgsnapError, first_line
from pgsnap.schedule import cron

log = logging.getLogger("pgsnap.scheduler")

Clock = Callable[[], datetime]

LEADER_LOCK = "SELECT pg_try_advisory_lock(pgsnap.lock_key('scheduler'))"
LEADER_UNLOCK = "SELECT pg_advisory_unlock(pgsnap.lock_key('scheduler'))"
# the session holding the leader's lock (pg_locks splits a bigint advisory key in two halves)
LEADER_PID = """
    SELECT l.pid FROM pg_locks l
     WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
       AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
       AND ((l.classid::bigint << 32) | l.objid::bigint) = pgsnap.lock_key('scheduler')
     ORDER BY l.pid LIMIT 1"""
ACTIVE_JOBS = """
    SELECT jobid, jobname, schedule, command, current_database(), current_user
      FROM pgsnap.jobs WHERE active ORDER BY jobid"""
JOB_BY_NAME = """
    SELECT jobid, jobname, schedule, command, current_database(), current_user
      FROM pgsnap.jobs WHERE jobname = %s"""
LAST_START = "SELECT max(start_time) FROM pgsnap.job_run_details WHERE jobid = %s"
RUNNING = """
    SELECT runid FROM pgsnap.job_run_details
     WHERE jobid = %s AND status = 'running' ORDER BY runid LIMIT 1"""
INSERT_RUN = """
    INSERT INTO pgsnap.job_run_details
           (jobid, job_pid, database, username, command, status, return_message,
            start_time, end_time)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING runid"""
FINISH_RUN = """
    UPDATE pgsnap.job_run_details
       SET status = %s, return_message = %s, end_time = %s
     WHERE runid = %s"""
# Runs whose scheduler died: their backend is gone, their outcome unknown.
ORPHANS = """
    UPDATE pgsnap.job_run_details d
       SET status = 'failed', end_time = %s,
           return_message = 'the scheduler that started this run stopped before '
                            'it finished; outcome unknown'
     WHERE status = 'running' AND runid <> ALL(%s)
       AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = d.job_pid)"""
PRUNE = """
    DELETE FROM pgsnap.job_run_details
     WHERE status <> 'running'
       AND end_time < %s - (SELECT value::interval FROM pgsnap.settings
                             WHERE key = 'job_history_retention')"""
REQUEST_BACKFILL_STOP = """
    UPDATE pgsnap.backfill_runs SET stop_requested = true
     WHERE status = 'running' AND pid = ANY(%s) AND NOT stop_requested"""


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Job:
    jobid: int | None
    jobname: str
    schedule: str
    command: str
    database: str
    username: str


@dataclass
class Run:
    """One execution of a job's command on its own autocommit connection."""

    job: Job
    conn: psycopg.Connection
    clock: Clock = utcnow
    pid: int = 0
    runid: int = 0
    ended: datetime | None = None
    status: str = "running"
    message: str = ""
    cancelled: bool = False
    thread: threading.Thread | None = None
    events: list[procedures.Event] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.pid = self.conn.info.backend_pid

    def execute(self) -> None:
        """Run the command; set status/message. Never raises."""
        def collect(diag: psycopg.errors.Diagnostic) -> None:
            event = procedures.parse_event(diag.message_detail)
            if event is not None:
                self.events.append(event)

        self.conn.add_notice_handler(collect)
        try:
            cur = self.conn.execute(self.job.command)
            tag = cur.statusmessage
            while cur.nextset():
                tag = cur.statusmessage
            self.status, self.message = "succeeded", tag or ""
            self._outcome()
        except psycopg.Error as exc:
            if self.cancelled and isinstance(exc, psycopg.errors.QueryCanceled):
                self.status, self.message = "stopped", "cancelled: the scheduler stopped"
            else:
                self.status, self.message = "failed", first_line(str(exc))
        except Exception as exc:  # a run must always be recorded
            self.status, self.message = "failed", f"{type(exc).__name__}: {exc}"
        self.ended = self.clock()

    def _outcome(self) -> None:
        """A pgsnap procedure says how its run went in its final NOTICE: a backfill that was
        skipped or stopped succeeds as a CALL but is recorded as such."""
        done = procedures.done_events(self.events)
        backfills = [e for e in done if e.get("job") == "backfill"]
        if backfills:
            self.message = procedures.backfill_summary(backfills[-1])
            if backfills[-1]["status"] in ("stopped", "failed", "skipped"):
                self.status = backfills[-1]["status"]
        elif done:
            self.message = "; ".join(procedures.populate_summary(e) for e in done
                                     if e.get("job") == "populate")


def _job(row: tuple) -> Job:
    return Job(*row)


def leader_pid(conn: psycopg.Connection) -> int | None:
    """Backend pid of the leading scheduler's session in this database, or None."""
    row = conn.execute(LEADER_PID).fetchone()
    return row[0] if row else None


def find_job(conn: psycopg.Connection, jobname: str) -> Job | None:
    row = conn.execute(JOB_BY_NAME, (jobname,)).fetchone()
    return _job(row) if row else None


def prune_history(conn: psycopg.Connection, now: datetime) -> int:
    """Delete finished runs older than the `job_history_retention` setting."""
    return conn.execute(PRUNE, (now,)).rowcount


def run_once(dsn: str, job: Job, clock: Clock = utcnow) -> Run:
    """Run `job` now, in the foreground, and record it (runid) when it has a jobid."""
    with db.connect(dsn) as conn:
        run = Run(job, db.connect(dsn), clock)
        try:
            if job.jobid is not None:
                run.runid = conn.execute(INSERT_RUN, (
                    job.jobid, run.pid, job.database, job.username, job.command,
                    "running", None, clock(), None)).fetchone()[0]
            run.execute()
            if job.jobid is not None:
                conn.execute(FINISH_RUN, (run.status, run.message, run.ended, run.runid))
        finally:
            run.conn.close()
    return run


class Scheduler:
    """One scheduler process; `run()` blocks until `stop()` (or a signal)."""

    def __init__(self, dsn: str, *, clock: Clock = utcnow, tick: float = 1.0,
                 stop_timeout: float = 60.0, prune_every: timedelta = timedelta(hours=1)):
        self.dsn = dsn
        self.clock = clock
        self.tick = tick
        self.stop_timeout = stop_timeout
        self.prune_every = prune_every
        self.role = "starting"  # then "standby", "leader", "stopped"
        self.steps = 0  # scheduling passes done as leader
        self._stop = threading.Event()
        self._runs: dict[int, Run] = {}  # jobid -> the run this leader started
        self._due: dict[int, tuple[str, datetime]] = {}  # jobid -> (schedule, slot)
        self._refused: set[tuple[int, str]] = set()
        self._next_prune: datetime | None = None

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> int:
        try:
            with db.connect(self.dsn) as conn:
                self.conn = conn
                if self._wait_for_leadership():
                    self._lead()
        except psycopg.OperationalError as exc:
            # A leader's lock went with its session: another scheduler may lead now.
            raise PgsnapError("scheduler lost its database connection: "
                              f"{db.connect_reason(exc)}") from None
        finally:
            self.role = "stopped"
        log.info("stopped")
        return 0

    def _lead(self) -> None:
        self.role = "leader"
        log.info("leader: scheduling the jobs of pgsnap.jobs")
        try:
            while not self._stop.is_set():
                self._step()
                self._stop.wait(self._pause())
            self._shutdown()
            self.conn.execute(LEADER_UNLOCK)
        finally:
            for run in self._runs.values():  # only after a failure
                run.conn.cancel_safe()
                run.conn.close()

    def _wait_for_leadership(self) -> bool:
        while not self._stop.is_set():
            if self.conn.execute(LEADER_LOCK).fetchone()[0]:
                return True
            if self.role != "standby":
                self.role = "standby"
                log.info("standby: another scheduler leads this database")
            self._stop.wait(self.tick)
        return False

    def _step(self) -> None:
        now = self.clock()
        self._reap(now)
        self.conn.execute(ORPHANS, (now, [r.runid for r in self._runs.values()]))
        jobs = [_job(row) for row in self.conn.execute(ACTIVE_JOBS).fetchall()]
        for gone in self._due.keys() - {job.jobid for job in jobs}:
            del self._due[gone]  # removed or deactivated
        for job in jobs:
            slot = self._slot(job, now)
            if slot is not None and slot <= now:
                self._fire(job, now)
                self._due[job.jobid] = (job.schedule, cron.next_runs(job.schedule, now)[0])
        if self._next_prune is None or now >= self._next_prune:
            pruned = prune_history(self.conn, now)
            if pruned:
                log.info("pruned %d runs from pgsnap.job_run_details", pruned)
            self._next_prune = now + self.prune_every
        self.steps += 1

    def _pause(self) -> float:
        """Seconds to the next check: a tick, or less when a slot comes sooner."""
        soonest = min((slot for _, slot in self._due.values()), default=None)
        if soonest is None:
            return self.tick
        return min(self.tick, max(0.0, (soonest - self.clock()).total_seconds()))

    def _slot(self, job: Job, now: datetime) -> datetime | None:
        """The job's due slot: first slot after its last start, or after `now`."""
        due = self._due.get(job.jobid)
        if due and due[0] == job.schedule:
            return due[1]
        try:
            last = self.conn.execute(LAST_START, (job.jobid,)).fetchone()[0]
            slot = cron.next_runs(job.schedule, last or now)[0]
        except cron.CronError as exc:
            if (job.jobid, job.schedule) not in self._refused:
                self._refused.add((job.jobid, job.schedule))
                log.error("job %s ignored: %s", job.jobname, exc)
            return None
        self._due[job.jobid] = (job.schedule, slot)
        return slot

    def _fire(self, job: Job, now: datetime) -> None:
        running = self.conn.execute(RUNNING, (job.jobid,)).fetchone()
        if running:
            msg = f"skipped: the previous run (runid {running[0]}) is still running"
            self.conn.execute(INSERT_RUN, (job.jobid, None, job.database, job.username,
                                           job.command, "skipped", msg, now, now))
            log.warning("job %s %s", job.jobname, msg)
            return
        try:
            run = Run(job, db.connect(self.dsn), self.clock)
        except PgsnapError as exc:
            self.conn.execute(INSERT_RUN, (job.jobid, None, job.database, job.username,
                                           job.command, "failed", str(exc), now, now))
            log.error("job %s failed: %s", job.jobname, exc)
            return
        run.runid = self.conn.execute(INSERT_RUN, (
            job.jobid, run.pid, job.database, job.username, job.command,
            "running", None, now, None)).fetchone()[0]
        run.thread = threading.Thread(target=run.execute, daemon=True,
                                      name=f"pgsnap-job-{job.jobname}")
        self._runs[job.jobid] = run
        log.info("job %s started (runid %d)", job.jobname, run.runid)
        run.thread.start()

    def _reap(self, now: datetime) -> None:
        for jobid, run in list(self._runs.items()):
            if run.thread and not run.thread.is_alive():
                self.conn.execute(FINISH_RUN, (run.status, run.message, run.ended or now,
                                               run.runid))
                run.conn.close()
                del self._runs[jobid]
                log.info("job %s %s (runid %d): %s", run.job.jobname, run.status,
                         run.runid, run.message)

    def _shutdown(self) -> None:
        if self._runs:
            log.info("stopping: waiting for %d run(s)", len(self._runs))
        deadline = time.monotonic() + self.stop_timeout
        while self._runs and time.monotonic() < deadline:
            self.conn.execute(REQUEST_BACKFILL_STOP,
                              ([r.pid for r in self._runs.values()],))
            self._reap(self.clock())
            time.sleep(min(0.2, self.tick))
        for run in self._runs.values():
            log.warning("job %s: cancelling after %gs", run.job.jobname, self.stop_timeout)
            run.cancelled = True
            run.conn.cancel_safe()
        for run in self._runs.values():
            if run.thread:
                run.thread.join(30)
        self._reap(self.clock())


def run_scheduler(dsn: str, *, clock: Clock = utcnow, tick: float = 1.0,
                  stop_timeout: float = 60.0, handle_signals: bool = True) -> int:
    """Run the foreground scheduler until SIGTERM/SIGINT; return the exit code."""
    scheduler = Scheduler(dsn, clock=clock, tick=tick, stop_timeout=stop_timeout)
    if handle_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: scheduler.stop())
    return scheduler.run()
