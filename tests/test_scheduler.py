"""`pgsnap schedule`: pg_cron for real, and pgsnap's own scheduler.

The pgsnap scheduler runs in a thread with a fake clock (`FakeClock`) where a
test moves time itself, or in a subprocess (to be killed or sent SIGTERM) whose
clock starts just before a slot and then runs at real speed. Nothing waits for
time to pass: a test waits for scheduling passes (`passes`), run records, log
lines, or a job's backend waiting on an advisory lock the test holds (`HELD`: a
job that runs exactly as long as the test wants).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from pgsnap import deploy
from pgsnap.errors import PgsnapError
from pgsnap.schedule.scheduler import Scheduler, leader_pid
from tests.helpers import (
    M1,
    T1,
    add_group,
    add_me_file,
    add_target,
    add_trait,
    execute,
    populate,
    rows,
    seed_worked_example,
    tag,
    value,
    wait_until,
)

REPO = Path(__file__).resolve().parent.parent


def at(*args: float) -> datetime:
    whole = [int(a) for a in args]
    return datetime(*whole, tzinfo=UTC) + timedelta(seconds=sum(args) - sum(whole))


class FakeClock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


HELD = "SELECT pg_advisory_lock(4242), pg_advisory_unlock(4242)"  # runs while the test holds 4242


@contextmanager
def holding(conn) -> Iterator[None]:
    """Hold advisory lock 4242 (a `HELD` job waits for it) for the block, or until `release`."""
    execute(conn, "SELECT pg_advisory_lock(4242)")
    try:
        yield
    finally:
        release(conn)


def release(conn) -> None:
    execute(conn, "SELECT pg_advisory_unlock_all()")


def held_run_waiting(conn, jobid: int) -> bool:
    """The job's running run has reached the lock and waits for it."""
    return bool(rows(conn, "SELECT 1 FROM pgsnap.job_run_details d"
                           " JOIN pg_stat_activity a ON a.pid = d.job_pid"
                           " WHERE d.jobid = %s AND d.status = 'running' AND a.wait_event = 'advisory'",
                     (jobid,)))


def passes(s: Scheduler, n: int = 2) -> None:
    """Wait for `n` more scheduling passes: at least one whole pass sees the clock as it is now."""
    start = s.steps
    wait_until(lambda: s.steps >= start + n, what=f"{n} scheduling passes")


@contextmanager
def scheduler(dsn: str, clock: FakeClock, **kw) -> Iterator[Scheduler]:
    """A Scheduler in a thread, ticking every 50 ms, once it has taken its first look
    (as leader) or become a standby; stopped (and checked) on exit."""
    s = Scheduler(dsn, clock=clock, tick=0.05, **kw)
    outcome: list = []
    thread = threading.Thread(target=lambda: outcome.append(s.run()), daemon=True)
    thread.start()
    try:
        wait_until(lambda: s.steps > 0 or s.role == "standby", what="the scheduler to start")
        yield s
    finally:
        s.stop()
        thread.join(30)
        assert not thread.is_alive(), "the scheduler did not stop"
        assert outcome == [0], "the scheduler thread failed (see the captured log)"


SUBPROCESS = """
import logging, sys, time
from datetime import datetime, timedelta
from pgsnap.schedule.scheduler import run_scheduler
logging.basicConfig(level=logging.INFO)
start, t0 = datetime.fromisoformat(sys.argv[2]), time.monotonic()
sys.exit(run_scheduler(sys.argv[1], tick=0.05, stop_timeout=float(sys.argv[3]),
                       clock=lambda: start + timedelta(seconds=time.monotonic() - t0)))
"""


def spawn_scheduler(dsn: str, clock_start: datetime, stop_timeout: float = 30.0
                    ) -> subprocess.Popen:
    """`run_scheduler` in its own process (signals handled), clock from `clock_start`."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, "-c", SUBPROCESS, dsn, clock_start.isoformat(), str(stop_timeout)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture
def procs():
    """Subprocesses a test starts; killed if still alive at the end."""
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait(10)


def add_job(conn, name: str, schedule: str, command: str) -> int:
    return value(conn, "INSERT INTO pgsnap.jobs (jobname, schedule, command) "
                       "VALUES (%s, %s, %s) RETURNING jobid", (name, schedule, command))


def runs(conn, jobid: int) -> list[tuple]:
    """(status, start_time, finished?, return_message) of each run, in order."""
    return rows(conn, "SELECT status, start_time, end_time IS NOT NULL, return_message "
                      "FROM pgsnap.job_run_details WHERE jobid = %s ORDER BY runid", (jobid,))


def statuses(conn, jobid: int) -> list[str]:
    return [r[0] for r in runs(conn, jobid)]


def finished(conn, jobid: int, n: int) -> bool:
    done = [s for s in statuses(conn, jobid) if s != "running"]
    return len(done) >= n


# -- the pgsnap scheduler ---------------------------------------------------------------


def test_leader_runs_a_due_job_once_and_records_it(db_dsn, conn):
    jobid = add_job(conn, "answer", "* * * * *", "SELECT 42")
    clock = FakeClock(at(2030, 1, 1, 11, 59, 58))
    with scheduler(db_dsn, clock) as s:
        wait_until(lambda: s.role == "leader")
        clock.now = at(2030, 1, 1, 11, 59, 59)
        passes(s)
        assert runs(conn, jobid) == []  # nothing before the first slot
        clock.now = at(2030, 1, 1, 12, 0, 0.5)
        wait_until(lambda: finished(conn, jobid, 1))
        passes(s)  # more passes in the same minute: no second run
    assert runs(conn, jobid) == [("succeeded", at(2030, 1, 1, 12, 0, 0.5), True, "SELECT 1")]
    assert value(conn, "SELECT job_pid IS NOT NULL AND command = 'SELECT 42' "
                       "FROM pgsnap.job_run_details") is True


def test_two_schedulers_exactly_one_runs_the_job(db_dsn, conn):
    jobid = add_job(conn, "answer", "* * * * *", "SELECT 42")
    clock = FakeClock(at(2030, 1, 1, 11, 59, 59))
    with scheduler(db_dsn, clock) as first:
        wait_until(lambda: first.role == "leader")
        with scheduler(db_dsn, clock) as second:
            wait_until(lambda: second.role == "standby")
            clock.now = at(2030, 1, 1, 12, 0, 0.5)
            wait_until(lambda: finished(conn, jobid, 1))
            clock.now = at(2030, 1, 1, 12, 1, 0.5)
            wait_until(lambda: finished(conn, jobid, 2))
            passes(first)
            assert (first.role, second.role) == ("leader", "standby")
    assert statuses(conn, jobid) == ["succeeded", "succeeded"]


def test_standby_takes_over_when_the_leader_is_killed_mid_run(db_dsn, conn, procs):
    jobid = add_job(conn, "held", "* * * * *", HELD)
    with holding(conn):
        leader = spawn_scheduler(db_dsn, at(2030, 1, 1, 11, 59, 59, 0.5))
        procs.append(leader)
        wait_until(lambda: held_run_waiting(conn, jobid), what="the leader's run")
        clock = FakeClock(at(2030, 1, 1, 12, 0, 30))
        standby_ctx = scheduler(db_dsn, clock)
        standby = standby_ctx.__enter__()
        wait_until(lambda: standby.role == "standby")
        leader.send_signal(signal.SIGKILL)
        leader.wait(10)
        wait_until(lambda: standby.role == "leader", what="the takeover")
        assert leader_pid(conn) is not None
        assert statuses(conn, jobid) == ["running"]  # its backend still waits
    try:
        # released: the orphaned backend ends its statement; then the run is marked failed
        wait_until(lambda: statuses(conn, jobid) == ["failed"], what="orphan cleanup")
        clock.now = at(2030, 1, 1, 12, 1, 0.5)
        wait_until(lambda: finished(conn, jobid, 2), what="the new leader's run")
    finally:
        standby_ctx.__exit__(None, None, None)
    (orphan, fresh) = runs(conn, jobid)
    assert orphan[0] == "failed" and orphan[3] == (
        "the scheduler that started this run stopped before it finished; outcome unknown")
    assert fresh == ("succeeded", at(2030, 1, 1, 12, 1, 0.5), True, "SELECT 1")
    assert leader_pid(conn) is None


def test_a_run_still_going_at_its_next_slot_is_skipped(db_dsn, conn):
    jobid = add_job(conn, "held", "* * * * *", HELD)
    clock = FakeClock(at(2030, 1, 1, 11, 59, 59))
    with scheduler(db_dsn, clock), holding(conn):
        clock.now = at(2030, 1, 1, 12, 0, 0.5)
        wait_until(lambda: held_run_waiting(conn, jobid))
        clock.now = at(2030, 1, 1, 12, 1, 0.5)
        wait_until(lambda: statuses(conn, jobid) == ["running", "skipped"])
        release(conn)
        wait_until(lambda: finished(conn, jobid, 2))
    (first_runid,) = rows(conn, "SELECT min(runid) FROM pgsnap.job_run_details")[0]
    assert runs(conn, jobid) == [
        ("succeeded", at(2030, 1, 1, 12, 0, 0.5), True, "SELECT 1"),
        ("skipped", at(2030, 1, 1, 12, 1, 0.5), True,
         f"skipped: the previous run (runid {first_runid}) is still running"),
    ]


def test_missed_slots_are_not_replayed(db_dsn, conn):
    """Down from 09:00 to 12:34: one catch-up run at once, then the schedule."""
    every10 = add_job(conn, "every-10", "*/10 * * * *", "SELECT 10")
    never_ran = add_job(conn, "never-ran", "*/10 * * * *", "SELECT 0")
    execute(conn, "INSERT INTO pgsnap.job_run_details (jobid, status, start_time, end_time) "
                  "VALUES (%s, 'succeeded', %s, %s)",
            (every10, at(2030, 1, 1, 9), at(2030, 1, 1, 9, 0, 1)))
    clock = FakeClock(at(2030, 1, 1, 12, 34))
    with scheduler(db_dsn, clock) as s:
        wait_until(lambda: finished(conn, every10, 2))
        clock.now = at(2030, 1, 1, 12, 39, 59)
        passes(s)
        assert len(runs(conn, every10)) == 2 and runs(conn, never_ran) == []
        clock.now = at(2030, 1, 1, 12, 40, 0.5)
        wait_until(lambda: finished(conn, every10, 3) and finished(conn, never_ran, 1))
        passes(s)
    assert [r[1] for r in runs(conn, every10)] == [
        at(2030, 1, 1, 9), at(2030, 1, 1, 12, 34), at(2030, 1, 1, 12, 40, 0.5)]
    assert [r[1] for r in runs(conn, never_ran)] == [at(2030, 1, 1, 12, 40, 0.5)]


def log_lines(proc: subprocess.Popen) -> list[str]:
    """The scheduler's log, read as it comes (a thread follows the pipe)."""
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()
    return lines


def test_sigterm_waits_for_the_run_records_it_and_exits_0(db_dsn, conn, procs):
    jobid = add_job(conn, "held", "* * * * *", HELD)
    with holding(conn):
        proc = spawn_scheduler(db_dsn, at(2030, 1, 1, 11, 59, 59, 0.7))
        procs.append(proc)
        log = log_lines(proc)
        wait_until(lambda: held_run_waiting(conn, jobid))
        proc.send_signal(signal.SIGTERM)
        wait_until(lambda: any("stopping: waiting for 1 run(s)" in line for line in log), what="the stop")
        assert proc.poll() is None  # it waits for the run
    assert proc.wait(30) == 0, "".join(log)
    assert [r[0] for r in runs(conn, jobid)] == ["succeeded"]
    assert runs(conn, jobid)[0][2:] == (True, "SELECT 1")
    assert leader_pid(conn) is None


def test_sigterm_cancels_other_commands_after_the_stop_timeout(db_dsn, conn, procs):
    jobid = add_job(conn, "held", "* * * * *", HELD)
    with holding(conn):  # never released while it runs: only the cancel can end it
        proc = spawn_scheduler(db_dsn, at(2030, 1, 1, 11, 59, 59, 0.7), stop_timeout=0.5)
        procs.append(proc)
        wait_until(lambda: held_run_waiting(conn, jobid))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, proc.stdout.read()
        assert [r[2:] for r in runs(conn, jobid)] == [(True, "cancelled: the scheduler stopped")]
        assert statuses(conn, jobid) == ["stopped"]
        assert value(conn, "SELECT count(*) FROM pg_stat_activity WHERE query = %s AND state = 'active'",
                     (HELD,)) == 0


@pytest.fixture
def legacy_dsn(empty_db_dsn):
    """A database mid-journey: 30 populations with NULL snapshots (ids 1-30), NOT NULL not
    enforced, and a trigger that holds the backfill at row 3 while the test holds lock 4242."""
    deploy.migrate(empty_db_dsn, to="0001.baseline-schema")
    with psycopg.connect(empty_db_dsn, autocommit=True) as c:
        add_trait(c, 1, "Parent")
        add_trait(c, 2, "Child", parent=1)
        add_group(c, 10, [2])
        add_target(c, 1, bands=[(1, [10], True)])
        for me_file in range(1, 31):
            add_me_file(c, me_file)
            tag(c, me_file, 2, "x")
            execute(c, "INSERT INTO target_populations (id, target_band_id, me_file_id) "
                       "VALUES (%s, 1, %s)", (me_file, me_file))
    deploy.migrate(empty_db_dsn, backfill=False)
    with psycopg.connect(empty_db_dsn, autocommit=True) as c:
        execute(c, """
            CREATE FUNCTION public.test_hold_row_3() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.id = 3 THEN PERFORM pg_advisory_xact_lock_shared(4242); END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER test_hold_row_3 BEFORE UPDATE ON target_populations
               FOR EACH ROW EXECUTE FUNCTION public.test_hold_row_3()""")
    return empty_db_dsn


def test_sigterm_stops_a_backfill_after_its_current_batch(legacy_dsn, procs):
    """Batches 1 and 2 are committed, batch 3 is held; SIGTERM asks the run to stop, then batch 3
    finishes and the run stops there."""
    with psycopg.connect(legacy_dsn, autocommit=True) as c:
        jobid = add_job(c, "pgsnap-backfill", "* * * * *",
                        "CALL pgsnap.backfill_missing_snapshots(p_batch_size => 1)")
        with holding(c):
            proc = spawn_scheduler(legacy_dsn, at(2030, 1, 1, 11, 59, 59, 0.7))
            procs.append(proc)
            wait_until(lambda: held_run_waiting(c, jobid), what="the backfill to reach row 3")
            assert value(c, "SELECT batches FROM pgsnap.backfill_runs") == 2
            proc.send_signal(signal.SIGTERM)
            wait_until(lambda: value(c, "SELECT stop_requested FROM pgsnap.backfill_runs"),
                       what="the stop request")
        assert proc.wait(30) == 0, proc.stdout.read()
        (status, batches, filled, stop_requested), = rows(
            c, "SELECT status, batches, target_populations, stop_requested "
               "FROM pgsnap.backfill_runs")
        assert (status, batches, filled, stop_requested) == ("stopped", 3, 3, True)
        assert rows(c, "SELECT id FROM target_populations WHERE matching_tags_snapshot IS NOT NULL"
                       " ORDER BY id") == [(1,), (2,), (3,)]
        assert [r[0::2] for r in runs(c, jobid)] == [("stopped", True)]
        run_id = value(c, "SELECT id FROM pgsnap.backfill_runs")
        assert runs(c, jobid)[0][3] == (
            f"backfill run {run_id} stopped: 3 batches; filled target_populations 3, offers 0, ad_events 0")
        assert value(c, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
                        "(SELECT oid FROM pg_database WHERE datname = current_database())") == 0


def test_backfill_that_finds_another_run_active_is_recorded_skipped(cli, conn, new_conn):
    """The procedure's final NOTICE says how its run went: skipped (another run is busy, held
    inside its first batch here), then succeeded."""
    assert cli("schedule", "install", "--runner", "pgsnap").exit_code == 0
    execute(conn, """
        CREATE FUNCTION public.test_hold() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_advisory_xact_lock_shared(4242); RETURN NEW; END $$;
        CREATE TRIGGER test_hold BEFORE UPDATE ON target_populations
           FOR EACH ROW EXECUTE FUNCTION public.test_hold()""")
    execute(conn, "ALTER TABLE target_populations ALTER COLUMN matching_tags_snapshot DROP NOT NULL")
    seed_worked_example(conn)
    populate(conn, T1)
    execute(conn, "UPDATE target_populations SET matching_tags_snapshot = NULL WHERE me_file_id = %s", (M1,))
    other = new_conn()
    with holding(conn):
        busy = threading.Thread(target=lambda: execute(other, "CALL pgsnap.backfill_missing_snapshots()"))
        busy.start()
        wait_until(lambda: rows(conn, "SELECT 1 FROM pg_stat_activity WHERE pid = %s"
                                      " AND wait_event = 'advisory'", (other.info.backend_pid,)),
                   what="the other run to be busy")
        result = cli("schedule", "run", "--once", "pgsnap-backfill")
    busy.join(60)
    busy_run, skipped_run = (r[0] for r in rows(conn, "SELECT id FROM pgsnap.backfill_runs ORDER BY id")[-2:])
    assert (result.exit_code, result.stdout) == (
        0, f"pgsnap-backfill: skipped (backfill run {skipped_run} skipped: another run is active)\n")
    result = cli("schedule", "run", "--once", "pgsnap-backfill")
    done = backfill_done(skipped_run + 1)
    assert (result.exit_code, result.stdout) == (0, f"pgsnap-backfill: succeeded ({done})\n")
    assert rows(conn, "SELECT status, return_message FROM pgsnap.job_run_details ORDER BY runid") == [
        ("skipped", f"backfill run {skipped_run} skipped: another run is active"), ("succeeded", done)]
    assert busy_run < skipped_run


def test_history_is_pruned_beyond_the_retention(db_dsn, conn):
    jobid = add_job(conn, "idle", "0 0 1 1 *", "SELECT 1")
    execute(conn, "UPDATE pgsnap.settings SET value = '2 days' "
                  "WHERE key = 'job_history_retention'")
    now = at(2030, 6, 10, 12)
    for status, end in [("succeeded", now - timedelta(days=3)),          # pruned
                        ("failed", now - timedelta(days=2, seconds=1)),  # pruned
                        ("skipped", now - timedelta(days=1)),            # kept
                        ("running", None)]:                              # kept
        execute(conn, "INSERT INTO pgsnap.job_run_details "
                      "(jobid, status, start_time, end_time, job_pid) "
                      "VALUES (%s, %s, %s, %s, pg_backend_pid())",
                (jobid, status, (end or now) - timedelta(minutes=1), end))
    with scheduler(db_dsn, FakeClock(now)) as s:
        wait_until(lambda: len(runs(conn, jobid)) == 2)
        assert s.role == "leader"
    assert statuses(conn, jobid) == ["skipped", "running"]


def test_a_job_with_an_invalid_expression_is_ignored(db_dsn, conn, caplog):
    bad = add_job(conn, "bad", "0 0 * * 1#2", "SELECT 1")
    good = add_job(conn, "good", "@hourly", "SELECT 2")
    clock = FakeClock(at(2030, 1, 1, 11, 59))
    with scheduler(db_dsn, clock):
        clock.now = at(2030, 1, 1, 12, 0, 1)
        wait_until(lambda: finished(conn, good, 1))
    assert (runs(conn, bad), statuses(conn, good)) == ([], ["succeeded"])
    assert ('job bad ignored: invalid cron expression "0 0 * * 1#2": "#" (nth weekday '
            "of the month) is not supported by pg_cron") in caplog.messages


def test_a_leader_that_loses_its_connection_stops_with_an_error(db_dsn, conn):
    s = Scheduler(db_dsn, clock=FakeClock(at(2030, 1, 1)), tick=0.05)
    errors: list[str] = []

    def lead() -> None:
        try:
            s.run()
        except PgsnapError as exc:
            errors.append(str(exc))

    thread = threading.Thread(target=lead, daemon=True)
    thread.start()
    wait_until(lambda: s.steps > 0)
    execute(conn, "SELECT pg_terminate_backend(%s)", (leader_pid(conn),))
    thread.join(10)
    assert (errors, s.role) == (["scheduler lost its database connection: terminating "
                                 "connection due to administrator command"], "stopped")


# -- the CLI with pgsnap's runner ---------------------------------------------------------


BACKFILL = "CALL pgsnap.backfill_missing_snapshots()"
STALE = "CALL pgsnap.repopulate_stale_targets()"


def backfill_done(run_id: int) -> str:
    return f"backfill run {run_id} succeeded: 0 batches; filled target_populations 0, offers 0, ad_events 0"


def utc_text(at: datetime) -> str:
    return f"{at.astimezone(UTC):%Y-%m-%d %H:%M:%S}"


def test_install_list_next_remove_with_the_pgsnap_runner(cli, conn):
    first = cli("schedule", "install", "--runner", "pgsnap")
    again = cli("schedule", "install", "--runner", "pgsnap", "--schedule", "*/30 6 * * *")
    backfill, stale = (r[0] for r in rows(conn, "SELECT jobid FROM pgsnap.jobs ORDER BY jobid"))
    assert (first.exit_code, again.exit_code) == (0, 0)
    assert again.stdout == (
        f'pgsnap job {backfill} "pgsnap-backfill" runs "{BACKFILL}" at "*/30 6 * * *" UTC '
        "once `pgsnap schedule run` runs\n"
        f'pgsnap job {stale} "pgsnap-stale" runs "{STALE}" at "*/5 * * * *" UTC '
        "once `pgsnap schedule run` runs\n")
    assert rows(conn, "SELECT jobname, schedule, command, active FROM pgsnap.jobs ORDER BY jobid") == [
        ("pgsnap-backfill", "*/30 6 * * *", BACKFILL, True), ("pgsnap-stale", "*/5 * * * *", STALE, True)]

    assert cli("schedule", "run", "--once", "pgsnap-backfill").exit_code == 0
    assert cli("schedule", "run", "--once", "pgsnap-stale").exit_code == 0
    (start_b, start_s) = (r[0] for r in rows(conn, "SELECT start_time FROM pgsnap.job_run_details"
                                                   " ORDER BY runid"))
    run_id = value(conn, "SELECT max(id) FROM pgsnap.backfill_runs")
    listed = cli("schedule", "list")
    assert listed.exit_code == 0
    cells = [[c.strip() for c in line.split("  ") if c.strip()] for line in listed.stdout.splitlines()[1:]]
    assert cells == [
        ["pgsnap", str(backfill), "pgsnap-backfill", "*/30 6 * * *", "yes", utc_text(start_b), "succeeded",
         backfill_done(run_id)],
        ["pgsnap", str(stale), "pgsnap-stale", "*/5 * * * *", "yes", utc_text(start_s), "succeeded",
         "CALL"]]  # nothing was stale: no target to re-populate

    before = datetime.now(UTC)
    nxt = cli("schedule", "next", "--count", "3", "--name", "pgsnap-backfill")
    after = datetime.now(UTC)

    def listing(now: datetime) -> str:
        today6 = now.replace(hour=6, minute=0, second=0, microsecond=0)
        slots = [today6 + timedelta(days=d, minutes=m) for d in (-1, 0, 1, 2) for m in (0, 30)]
        return ('pgsnap-backfill (pgsnap, "*/30 6 * * *"):\n'
                + "".join(f"  {s:%Y-%m-%d %H:%M:%S}\n" for s in [s for s in slots if s > now][:3]))

    # computed at some instant between `before` and `after` (both, unless a slot fell in between)
    assert nxt.stdout in (listing(before), listing(after))

    removed = cli("schedule", "remove")
    assert removed.stdout == (f'removed pgsnap job {backfill} "pgsnap-backfill"\n'
                              f'removed pgsnap job {stale} "pgsnap-stale"\n')
    assert value(conn, "SELECT count(*) FROM pgsnap.jobs") == 0
    assert cli("schedule", "remove").stdout == 'no job named "pgsnap-backfill"\nno job named "pgsnap-stale"\n'


@pytest.mark.parametrize(("args", "message"), [
    (["--schedule", "0 * * * * *"],
     'error: invalid cron expression "0 * * * * *": 6 fields; pg_cron takes exactly 5: '
     "minute hour day-of-month month day-of-week (pg_cron would silently ignore the "
     "sixth; there are no seconds or years)\n"),
    (["--schedule", "@reboot", "--runner", "pgsnap"],
     'error: "@reboot" runs only when pg_cron starts; the pgsnap scheduler has no such '
     "event\n"),
])
def test_install_refuses_what_the_runner_cannot_run(cli, conn, args, message):
    result = cli("schedule", "install", *args)
    assert (result.exit_code, result.stderr, result.stdout) == (2, message, "")
    assert value(conn, "SELECT count(*) FROM pgsnap.jobs") == 0


def test_run_once_reports_a_failure_with_exit_1(cli, conn):
    add_job(conn, "broken", "@daily", "SELECT 1/0")
    result = cli("schedule", "run", "--once", "broken")
    assert (result.exit_code, result.stdout) == (1, "broken: failed (division by zero)\n")
    assert rows(conn, "SELECT status, return_message FROM pgsnap.job_run_details") == [
        ("failed", "division by zero")]
    missing = cli("schedule", "run", "--once", "nope")
    assert (missing.exit_code, missing.stderr) == (2, 'error: no job named "nope"\n')


# -- pg_cron for real ------------------------------------------------------------------


@pytest.fixture
def cron_job(pg_server, db_dsn):
    """The name of a pg_cron job for this test's database, unscheduled afterwards."""
    if not pg_server.has_pg_cron:
        pytest.skip("the test server has no pg_cron")
    name = f"pgsnap-backfill-{psycopg.conninfo.conninfo_to_dict(db_dsn)['dbname']}"
    yield name
    with psycopg.connect(pg_server.dsn(pg_server.cron_dbname), autocommit=True) as c:
        c.execute("SELECT cron.unschedule(jobid) FROM cron.job WHERE jobname IN (%s, %s)",
                  (name, f"{name}-stale"))


def cron_rows(pg_server, query: str, params=()) -> list[tuple]:
    with psycopg.connect(pg_server.dsn(pg_server.cron_dbname), autocommit=True) as c:
        return c.execute(query, params).fetchall()


def test_pg_cron_install_twice_keeps_one_job_and_remove_removes_it(cli, pg_server, db_dsn,
                                                                    cron_job):
    dbname = psycopg.conninfo.conninfo_to_dict(db_dsn)["dbname"]
    names = ("--name", cron_job, "--stale-name", f"{cron_job}-stale")
    first = cli("schedule", "install", *names)
    second = cli("schedule", "install", *names, "--schedule", "@daily")
    (jobid, schedule, command, database), (stale_id, *stale) = cron_rows(
        pg_server, "SELECT jobid, schedule, command, database FROM cron.job "
                   "WHERE jobname IN (%s, %s) ORDER BY jobid", (cron_job, f"{cron_job}-stale"))
    assert (first.exit_code, second.exit_code) == (0, 0)
    where = f"database {dbname} (from database {pg_server.cron_dbname})"
    assert second.stdout == (f'pg_cron job {jobid} "{cron_job}" runs "{BACKFILL}" at "@daily" UTC'
                             f" in {where}\n"
                             f'pg_cron job {stale_id} "{cron_job}-stale" runs "{STALE}" at "*/5 * * * *" UTC'
                             f" in {where}\n")
    assert (schedule, command, database) == ("@daily", BACKFILL, dbname)
    assert stale == ["*/5 * * * *", STALE, dbname]
    removed = cli("schedule", "remove", *names)
    assert removed.stdout == (f'removed pg_cron job {jobid} "{cron_job}"\n'
                              f'removed pg_cron job {stale_id} "{cron_job}-stale"\n')
    assert cron_rows(pg_server, "SELECT jobid FROM cron.job WHERE jobname IN (%s, %s)",
                     (cron_job, f"{cron_job}-stale")) == []


def test_pg_cron_refuses_a_name_taken_in_another_database(cli, pg_server, cron_job):
    with psycopg.connect(pg_server.dsn(pg_server.cron_dbname), autocommit=True) as c:
        c.execute("SELECT cron.schedule(%s, '@daily', 'SELECT 1')", (cron_job,))
    result = cli("schedule", "install", "--name", cron_job, "--stale-name", f"{cron_job}-stale")
    assert (result.exit_code, result.stderr) == (1, (
        f'error: pg_cron job "{cron_job}" already runs in database '
        f"{pg_server.cron_dbname}; remove it there or choose another --name\n"))


@pytest.mark.slow
def test_pg_cron_runs_the_installed_job_within_75_seconds(cli, pg_server, cron_job):
    assert cli("schedule", "install", "--name", cron_job, "--stale-name", f"{cron_job}-stale",
               "--schedule", "* * * * *").exit_code == 0
    (jobid,) = cron_rows(pg_server, "SELECT jobid FROM cron.job WHERE jobname = %s",
                         (cron_job,))[0]

    def ran() -> list[tuple]:
        return cron_rows(pg_server, "SELECT status, return_message, start_time "
                                    "FROM cron.job_run_details WHERE jobid = %s "
                                    "AND status IN ('succeeded', 'failed')", (jobid,))
    wait_until(ran, timeout=75, what="pg_cron to run the job")
    (status, message, start), = ran()[:1]
    assert (status, message) == ("succeeded", "CALL")
    listed = cli("schedule", "list").stdout.splitlines()
    assert [c.strip() for c in listed[1].split("  ") if c.strip()] == [
        "pg_cron", str(jobid), cron_job, "* * * * *", "yes",
        f"{start.astimezone(UTC):%Y-%m-%d %H:%M:%S}", "succeeded", "CALL"]
