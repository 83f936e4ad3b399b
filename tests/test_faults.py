"""Fault injection: the backend is terminated (`pg_terminate_backend`) in the
middle of sync-heavy tag writes, a backfill, a launch and a migrate; each time a re-run completes
with no duplicate, no NULL, no lost row, and statuses and run records that tell the truth.

populate killed mid-run is covered by tests/test_populate.py
(`test_killed_populate_leaves_populating_and_rerun_completes`): committed batches stay, the target
stays `populating`, and a re-run ends `populated` with exactly the model's rows.

Each victim is frozen at the chosen point by a test trigger that calls pg_sleep only in the
victim's session (its application_name); the test waits until the victim sleeps there, then
terminates it: no timing decides where the kill lands.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from pgsnap import deploy
from tests import helpers as h
from tests.legacy_data import (
    SNAPSHOT_TABLES,
    add_bid,
    add_campaign,
    attnotnull,
    expected_snapshots,
    legacy_database,
    migration_ids,
    null_counts,
    runs,
    seed_legacy_journey,
    snapshots,
)

REPO = Path(__file__).resolve().parent.parent
VICTIM = "pgsnap-fault-victim"
INTERRUPTED = "interrupted: its session ended before the run finished"
ZEROS = dict.fromkeys(SNAPSHOT_TABLES, 0)


def sleep_trigger(conn, table: str, timing: str, condition: str = "true") -> None:
    """A trigger on `table` that sleeps (until terminated) in the victim's session when `condition`."""
    level = "ROW" if "ROW" in timing else "STATEMENT"
    h.execute(conn, f"""
        CREATE FUNCTION public.fault_sleep_{table}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF current_setting('application_name') LIKE '{VICTIM}%' AND ({condition}) THEN
                PERFORM pg_sleep(300);
            END IF;
            RETURN CASE WHEN TG_LEVEL = 'ROW' THEN NEW END;
        END $$;
        CREATE TRIGGER fault_sleep {timing.replace(" ROW", "")} ON public.{table}
            FOR EACH {level} EXECUTE FUNCTION public.fault_sleep_{table}()""")


def sleeping_pid(conn, application_name: str = VICTIM) -> int | None:
    """The pid of the victim's backend once it sleeps in the test trigger."""
    found = h.rows(conn, "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
                         " AND wait_event = 'PgSleep'", (application_name,))
    return found[0][0] if found else None


def wait_for(condition, timeout: float = 120.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)
    return result


def kill(conn, pid: int) -> None:
    assert h.value(conn, "SELECT pg_terminate_backend(%s, 30000)", (pid,)) is True


class Victim:
    """Runs `work(conn)` in a thread on its own connection named VICTIM; records how it ended."""

    def __init__(self, dsn: str, work, autocommit: bool = True):
        self.conn = psycopg.connect(dsn, autocommit=autocommit, application_name=VICTIM)
        self.pid = self.conn.info.backend_pid
        self.error: BaseException | None = None
        self.finished = False
        self.thread = threading.Thread(target=self._run, args=(work,))
        self.thread.start()

    def _run(self, work) -> None:
        try:
            work(self.conn)
            self.finished = True
        except psycopg.Error as exc:
            self.error = exc

    def join(self) -> None:
        self.thread.join(60)
        self.conn.close()
        assert not self.finished, "the victim finished before it was killed"
        assert isinstance(self.error, psycopg.OperationalError), self.error


def invariants(conn) -> dict[str, int]:
    return {name: int(n) for name, n, _ in h.rows(conn, "SELECT * FROM pgsnap.check_invariants()")}


# -- sync-heavy tag writes ------------------------------------------------------------------------
N_TAGS = 1500


def rewrite_tags(conn) -> None:
    """One big transaction: every zip tag deleted and the zip given to the other half, hobbies
    deleted and re-inserted as they were (the delete-then-insert rewrite of an application)."""
    with conn.transaction():
        h.execute(conn, "DELETE FROM me_file_tags WHERE trait_id IN (%s, %s)", (h.ZIP_02140, h.HIKING))
        h.execute(conn, "INSERT INTO me_file_tags (me_file_id, trait_id, tag_value)"
                        " SELECT g, %s, '02140' FROM generate_series(2, %s, 2) g", (h.ZIP_02140, N_TAGS))
        h.execute(conn, "INSERT INTO me_file_tags (me_file_id, trait_id, tag_value)"
                        " SELECT g, %s, 'Hiking' FROM generate_series(3, %s, 3) g", (h.HIKING, N_TAGS))


def test_tag_rewrite_killed_in_its_commit_time_sync_leaves_everything_as_before(conn, db_dsn, new_conn):
    h.seed_example_catalogue(conn)
    h.seed_example_t1(conn)
    h.populate(conn, h.T1)
    h.execute(conn, "INSERT INTO me_files (id) SELECT g FROM generate_series(1, %s) g", (N_TAGS,))
    h.copy_rows(conn, "me_file_tags", ["me_file_id", "trait_id", "tag_value"], [
        *((m, h.FEMALE, "Female") for m in range(1, N_TAGS + 1)),
        *((m, h.ZIP_02140, "02140") for m in range(1, N_TAGS + 1, 2)),
        *((m, h.HIKING, "Hiking") for m in range(3, N_TAGS + 1, 3))])
    before = h.populations(conn, h.T1)
    assert before == h.Model.load(conn).populations(h.T1) and len(before) == N_TAGS
    tags_before = h.rows(conn, "SELECT id, me_file_id, trait_id, tag_value FROM me_file_tags ORDER BY id")
    versions = h.row_versions(conn)
    # the commit-time drain writes target_populations in one statement: it sleeps right after it
    sleep_trigger(conn, "target_populations", "AFTER INSERT OR UPDATE OR DELETE")

    victim = Victim(db_dsn, rewrite_tags, autocommit=False)
    pid = wait_for(lambda: sleeping_pid(conn), what="the victim to sleep in its sync")
    assert pid == victim.pid
    assert h.value(conn, "SELECT query FROM pg_stat_activity WHERE pid = %s", (pid,)) == "COMMIT"
    kill(conn, pid)
    victim.join()

    # the transaction is gone whole: tags, populations (not a row rewritten), the sync queue
    assert h.rows(conn, "SELECT id, me_file_id, trait_id, tag_value FROM me_file_tags ORDER BY id") == (
        tags_before)
    assert h.row_versions(conn) == versions
    assert h.rows(conn, "SELECT (SELECT count(*) FROM pgsnap.sync_queue),"
                        " (SELECT count(*) FROM pgsnap.sync_pending)") == [(0, 0)]
    assert set(invariants(conn).values()) == {0}

    # the application retries: every me_file moves to its new band, once
    rewrite_tags(new_conn(autocommit=False))
    after = h.populations(conn, h.T1)  # fails on a duplicate me_file
    assert after == h.Model.load(conn).populations(h.T1) and len(after) == N_TAGS
    assert all(after[m][0] != before[m][0] for m in after)
    assert h.value(conn, "SELECT count(*) FROM target_populations") == N_TAGS
    assert h.value(conn, "SELECT count(*) FROM target_populations WHERE matching_tags_snapshot IS NULL") == 0
    assert h.target_status(conn, h.T1)[0] == "populated"
    assert set(invariants(conn).values()) == {0}


# -- backfill ---------------------------------------------------------------------------------------
@pytest.fixture
def journey(empty_db_dsn):
    """Mid-journey database with every kind of legacy NULL (tests.legacy_data.seed_legacy_journey)."""
    legacy = legacy_database(empty_db_dsn)
    with psycopg.connect(empty_db_dsn, autocommit=True) as c:
        yield empty_db_dsn, c, legacy


def test_backfill_killed_mid_way_is_recorded_failed_by_the_next_run(journey, cli):
    dsn, conn, legacy = journey
    nulls = null_counts(conn)
    assert all(nulls.values())
    rows_before = {t: len(snapshots(conn, t)) for t in SNAPSHOT_TABLES}
    # the third batch sleeps after filling its populations (two batches committed before it)
    sleep_trigger(conn, "target_populations", "AFTER UPDATE",
                  "(SELECT r.batches FROM pgsnap.backfill_runs r WHERE r.status = 'running') >= 2")

    victim = Victim(dsn, lambda c: c.execute("CALL pgsnap.backfill_missing_snapshots(1)"))
    pid = wait_for(lambda: sleeping_pid(conn), what="the third batch")
    kill(conn, pid)
    victim.join()

    # what the record says is what happened: two batches, their rows; the batch in flight is gone
    (run,) = runs(conn)
    filled = {t: nulls[t] - n for t, n in null_counts(conn).items()}
    assert run == ("running", 2, *filled.values(), None)
    assert sum(filled.values()) > 0
    # nobody has run since: the check (`pgsnap check` once the journey is over) sees it is orphaned
    ((violations, detail),) = h.rows(conn, "SELECT violations, detail FROM pgsnap.check_invariants()"
                                           " WHERE check_name = 'last_backfill_failed'")
    assert violations == 1
    assert re.fullmatch(rf"run 1 started at .* UTC is still marked running but its session \(pid {pid}\) "
                        "is gone", detail), detail

    # the next run (the CLI's driver, as an operator would) says so, then finishes the job
    result = cli("backfill", "--batch-size", "1", dsn=dsn)
    assert (result.exit_code, result.stderr) == (0, "")
    rest = {t: nulls[t] - filled[t] for t in SNAPSHOT_TABLES}
    assert result.stdout.endswith(
        "filled " + ", ".join(f"{t} {n}" for t, n in rest.items()) + "\n")
    failed, succeeded = runs(conn)
    assert failed == ("failed", 2, *filled.values(), INTERRUPTED)
    assert succeeded[0] == "succeeded" and succeeded[2:] == (*rest.values(), None)
    assert null_counts(conn) == ZEROS
    assert {t: len(snapshots(conn, t)) for t in SNAPSHOT_TABLES} == rows_before
    expected = expected_snapshots(conn, legacy)
    assert {t: snapshots(conn, t) for t in SNAPSHOT_TABLES} == expected
    assert set(invariants(conn).values()) == {0}


# -- launch -----------------------------------------------------------------------------------------
N_LAUNCH = 2000


def test_launch_killed_mid_insert_creates_no_offer_and_rerun_creates_each_once(conn, db_dsn, cli):
    h.seed_example_catalogue(conn)
    h.seed_example_t1(conn)
    h.execute(conn, "INSERT INTO me_files (id) SELECT g FROM generate_series(1, %s) g", (N_LAUNCH,))
    h.copy_rows(conn, "me_file_tags", ["me_file_id", "trait_id", "tag_value"], [
        *((m, h.FEMALE, "Female") for m in range(1, N_LAUNCH + 1)),
        *((m, h.ZIP_02140, "02140") for m in range(1, N_LAUNCH + 1, 2))])
    h.populate(conn, h.T1)
    add_campaign(conn, 1, h.T1)
    for band, amount in ((h.B1, "1.50"), (h.B2, "0.75"), (h.B3, "0.25")):
        add_bid(conn, 1, band, amount)
    # half the offers are in when the insert sleeps
    sleep_trigger(conn, "offers", "BEFORE INSERT ROW", f"NEW.me_file_id = {N_LAUNCH // 2}")

    victim = Victim(db_dsn, lambda c: c.execute("SELECT pgsnap.launch_campaign(1)"))
    pid = wait_for(lambda: sleeping_pid(conn), what="the launch to reach the middle")
    assert h.value(conn, "SELECT query FROM pg_stat_activity WHERE pid = %s", (pid,)) == (
        "SELECT pgsnap.launch_campaign(1)")
    kill(conn, pid)
    victim.join()
    assert h.rows(conn, "SELECT count(*), (SELECT launched_at FROM campaigns WHERE id = 1)"
                        " FROM offers") == [(0, None)]

    result = cli("launch", "1")
    assert (result.exit_code, result.stdout, result.stderr) == (
        0, f"campaign 1: {N_LAUNCH} offers created\n", "")
    assert cli("launch", "1").stdout == "campaign 1: 0 offers created\n"
    # one offer per population, its band's amount, its population's snapshot
    assert h.rows(conn, """
        SELECT count(*), count(DISTINCT o.me_file_id), count(o.matching_tags_snapshot),
               count(*) FILTER (WHERE o.target_band_id = p.target_band_id AND o.offer_amt = b.offer_amt
                                  AND o.matching_tags_snapshot = p.matching_tags_snapshot)
          FROM offers o
          JOIN target_populations p ON p.me_file_id = o.me_file_id AND p.target_id = 1
          JOIN bids b ON b.campaign_id = o.campaign_id AND b.target_band_id = o.target_band_id""") == [
        (N_LAUNCH, N_LAUNCH, N_LAUNCH, N_LAUNCH)]
    assert h.value(conn, "SELECT launched_at IS NOT NULL FROM campaigns WHERE id = 1") is True


# -- migrate ----------------------------------------------------------------------------------------
MIGRATOR = f"{VICTIM}-migrate"


def test_migrate_killed_in_its_backfill_resumes_once_the_stale_lock_is_removed(empty_db_dsn, cli,
                                                                                monkeypatch):
    """`pgsnap migrate` killed (the process, then its backends) while it backfills before the NOT
    NULL steps. yoyo's lock is a table row: it stays behind, and the next migrate waits for it and
    then says how to remove it (exit 3); once removed, migrate backfills the rest and enforces."""
    deploy.migrate(empty_db_dsn, to="0001.baseline-schema")
    with psycopg.connect(empty_db_dsn, autocommit=True) as c:
        legacy = seed_legacy_journey(c)  # rows as they read after 0002 and 0004
        rows_before = {t: len(legacy[t]) for t in SNAPSHOT_TABLES}
        # the third backfill_batch call sleeps after its population update (no migration step does)
        h.execute(c, "CREATE SEQUENCE public.fault_batches")
        sleep_trigger(c, "target_populations", "AFTER UPDATE",
                      "pg_catalog.current_query() LIKE '%backfill%'"
                      " AND nextval('public.fault_batches') >= 3")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgsnap", "--dsn", f"{empty_db_dsn} application_name={MIGRATOR}",
         "migrate", "--batch-size", "1"],
        env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        try:
            sleeper = wait_for(lambda: sleeping_pid(conn, MIGRATOR) or proc.poll() is not None,
                               what="the backfill")
            assert proc.poll() is None, proc.communicate()
        finally:
            proc.kill()
            proc.communicate()
        # the process is gone; so is its session in the middle of a batch (an idle one, yoyo's,
        # ends by itself when it sees the connection closed)
        kill(conn, sleeper)
        h.execute(conn, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                  (MIGRATOR,))
        wait_for(lambda: h.value(conn, "SELECT count(*) = 0 FROM pg_stat_activity"
                                       " WHERE application_name = %s", (MIGRATOR,)),
                 what="the migrator's sessions to end")

        ids = migration_ids()
        # every step but the enforcement ones, which wait for the backfill
        assert sorted(deploy.applied_migrations(conn)) == [
            m.id for m in deploy.read_migrations()
            if (deploy.marker_of(m) or deploy.Marker("", ())).kind != "enforce"]
        assert attnotnull(conn) == dict.fromkeys(SNAPSHOT_TABLES, False)
        assert h.rows(conn, "SELECT pid FROM yoyo_lock") == [(proc.pid,)]
        nulls = null_counts(conn)
        assert 0 < sum(nulls.values()) < sum(
            1 for t in SNAPSHOT_TABLES for s in legacy[t].values() if s is None)  # two batches are in

        # the next migrate finds the lock left behind (waiting 1s here instead of 10 minutes)
        monkeypatch.setattr(deploy, "migrate", functools.partial(deploy.migrate, lock_wait=1))
        blocked = cli("migrate", dsn=empty_db_dsn)
        assert (blocked.exit_code, blocked.stdout) == (3, "")
        assert blocked.stderr == (
            f"error: the migration lock is held by process {proc.pid} (another `pgsnap migrate`?) "
            "after waiting 1s; if none is running any more, remove the stale lock: DELETE FROM yoyo_lock\n")
        assert null_counts(conn) == nulls

        # the operator removes it as told; migrate backfills the rest and enforces
        h.execute(conn, "DELETE FROM yoyo_lock")
        done = cli("migrate", dsn=empty_db_dsn)
        assert (done.exit_code, done.stderr) == (0, "")
        assert "backfilled " + ", ".join(f"{t} {n}" for t, n in nulls.items()) in done.stdout
        assert sorted(deploy.applied_migrations(conn)) == ids
        assert attnotnull(conn) == dict.fromkeys(SNAPSHOT_TABLES, True)
        assert h.rows(conn, "SELECT count(*) FROM yoyo_lock") == [(0,)]
        assert null_counts(conn) == ZEROS
        assert {t: len(snapshots(conn, t)) for t in SNAPSHOT_TABLES} == rows_before
        assert {t: snapshots(conn, t) for t in SNAPSHOT_TABLES} == expected_snapshots(conn, legacy)
        assert h.target_status(conn, h.T1)[0] == "populated"
    assert cli("check", dsn=empty_db_dsn).exit_code == 0
