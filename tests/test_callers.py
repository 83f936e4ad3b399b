"""The engine under every caller (docs/operations.md, "Calling the procedures"):

* application transactions at READ COMMITTED, REPEATABLE READ and SERIALIZABLE racing a
  populate end equal to the rule (a serialization failure the application retries is fine,
  a stale row is not);
* populate_target commits per batch outside a transaction block whatever the protocol (plain
  CALL, bound parameters) and fails at once, leaving nothing, inside one (BEGIN ... CALL ...
  COMMIT as one message or as separate statements, CALL ...; SELECT 1); the function
  populate_target_in_transaction does the work inside the caller's transaction;
* a cancelled or timed-out run leaves no lock behind: another session populates the target
  at once;
* an application holding its me_file's row lock, or deleting a me_file, during a populate
  neither deadlocks nor aborts it;
* a sync that changes nothing writes nothing;
* a sync takes a bounded number of locks whatever the number of targets, and the suite runs
  on a server with PostgreSQL's default max_locks_per_transaction.

Concurrent sessions are paced by observable states (a test trigger that waits on an advisory
lock the test holds, pg_stat_activity's wait events), never by sleeping.
"""

from __future__ import annotations

import time

import psycopg
import pytest

from tests.helpers import (
    ADVISORY,
    CHESS,
    FEMALE,
    GATES,
    M2,
    M3,
    M4,
    ROW_LOCK,
    T1,
    ZIP_02140,
    Model,
    Runner,
    add_target,
    assert_targets_exact,
    execute,
    gated,
    populate,
    populations,
    row_versions,
    rows,
    seed_example_catalogue,
    seed_example_t1,
    seed_worked_example,
    tag,
    tags,
    target_status,
    value,
    wait_until_blocked,
)

LEVELS = [psycopg.IsolationLevel.READ_COMMITTED, psycopg.IsolationLevel.REPEATABLE_READ,
          psycopg.IsolationLevel.SERIALIZABLE]
M6 = 6


def verify(conn, target):
    return rows(conn, "SELECT * FROM pgsnap.verify_target(%s)", (target,))


def advisory_locks(conn, pid):
    return value(conn, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = %s", (pid,))


def claim(conn, target):
    return rows(conn, "SELECT run_pid FROM pgsnap.target_state WHERE target_id = %s", (target,))


def commit_or_retry(app, redo):
    """Commit the application's transaction; on a serialization failure roll back and redo the
    work in a new transaction, as an application does. Returns 'committed' or 'retried'."""
    try:
        app.commit()
        return "committed"
    except psycopg.errors.SerializationFailure:
        app.rollback()
        redo(app)
        app.commit()
        return "retried"


# -- isolation levels ---------------------------------------------------------------------------
@pytest.mark.parametrize("level", LEVELS, ids=lambda lv: lv.name)
def test_tag_removed_while_a_populate_runs_leaves_no_stale_row(conn, new_conn, level):
    """T1 is not populated; the application takes its snapshot and removes M2's Female tag (its
    only way into T1); a populate of T1 runs and commits meanwhile; the application commits."""
    seed_worked_example(conn)
    app = new_conn(autocommit=False)
    app.isolation_level = level
    value(app, "SELECT count(*) FROM me_files")  # the snapshot starts here

    def remove_female(c):
        execute(c, "DELETE FROM me_file_tags WHERE me_file_id = %s AND trait_id = %s", (M2, FEMALE))

    remove_female(app)
    populate(conn, T1)
    assert M2 in populations(conn, T1)  # computed before the application committed
    outcome = commit_or_retry(app, remove_female)
    assert outcome == ("committed" if level == psycopg.IsolationLevel.READ_COMMITTED else "retried")
    assert M2 not in populations(conn, T1)
    assert populations(conn, T1) == Model.load(conn).populations(T1)
    assert verify(conn, T1) == []


@pytest.mark.parametrize("level", LEVELS, ids=lambda lv: lv.name)
def test_registration_while_a_populate_runs_is_not_missing(conn, new_conn, level):
    seed_worked_example(conn)
    app = new_conn(autocommit=False)
    app.isolation_level = level
    value(app, "SELECT count(*) FROM me_files")

    def register(c):
        execute(c, "INSERT INTO me_files (id) VALUES (%s)", (M6,))
        tags(c, M6, {FEMALE: "Female", ZIP_02140: "02140"})

    register(app)
    populate(conn, T1)
    outcome = commit_or_retry(app, register)
    assert outcome == ("committed" if level == psycopg.IsolationLevel.READ_COMMITTED else "retried")
    assert populations(conn, T1)[M6][0] == 2  # B2: Women, Boston zip
    assert populations(conn, T1) == Model.load(conn).populations(T1)
    assert verify(conn, T1) == []


# -- protocols and transaction blocks ------------------------------------------------------------
# me_files 1024 ids apart: each batch of one me_file has its own lock slot
SPACED = {1: "02140", 1025: None, 2049: "02140", 3073: None}


def seed_spaced(conn):
    seed_example_catalogue(conn)
    seed_example_t1(conn)
    for me_file, zip_ in SPACED.items():
        execute(conn, "INSERT INTO me_files (id) VALUES (%s)", (me_file,))
        tag(conn, me_file, FEMALE, "Female")
        if zip_:
            tag(conn, me_file, ZIP_02140, zip_)
    execute(conn, GATES)


CALLS = {
    "plain CALL": lambda c: execute(c, "CALL pgsnap.populate_target(1, 1)"),
    "bound parameters": lambda c: execute(c, "CALL pgsnap.populate_target(%s::bigint, %s::int)", (1, 1)),
}


@pytest.mark.parametrize("call", list(CALLS), ids=list(CALLS))
def test_outside_a_block_every_batch_commits_and_writers_wait_for_one_batch_at_most(conn, new_conn, call):
    seed_spaced(conn)
    execute(conn, "INSERT INTO public.test_gate VALUES (2049, 'populate', 7)")
    execute(conn, "SELECT pg_advisory_lock(7)")
    populator_conn = gated(new_conn, "populate")
    populator = Runner(CALLS[call], populator_conn)
    populator.start()
    wait_until_blocked(conn, populator_conn.info.backend_pid, "the third batch", ADVISORY)
    # the first two batches are committed and visible; the target is maintained
    assert target_status(conn, T1)[0] == "populating"
    assert sorted(populations(conn, T1)) == [1, 1025]
    # an application write of a me_file outside the held batch commits at once
    writer = new_conn()
    execute(writer, "SET lock_timeout = '5s'")
    tag(writer, 1025, ZIP_02140, "02140")
    assert populations(conn, T1)[1025][0] == 2
    execute(conn, "SELECT pg_advisory_unlock(7)")
    populator.finish()
    assert target_status(conn, T1)[0] == "populated"
    assert sorted(populations(conn, T1)) == [1, 1025, 2049, 3073]
    assert populations(conn, T1) == Model.load(conn).populations(T1)
    assert verify(conn, T1) == []


BLOCKS = {
    "BEGIN; CALL; COMMIT as one message":
        lambda c: execute(c, "BEGIN; CALL pgsnap.populate_target(1, 1); COMMIT;"),
    "CALL; SELECT 1 as one message":
        lambda c: execute(c, "CALL pgsnap.populate_target(1, 1); SELECT 1;"),
    "separate statements in a transaction":
        lambda c: (execute(c, "BEGIN"), execute(c, "CALL pgsnap.populate_target(1, 1)")),
}


@pytest.mark.parametrize("call", list(BLOCKS), ids=list(BLOCKS))
def test_inside_a_block_the_call_fails_at_once_and_leaves_nothing(conn, new_conn, call):
    seed_spaced(conn)
    caller = new_conn()
    with pytest.raises(psycopg.errors.InvalidTransactionTermination) as failed:
        BLOCKS[call](caller)
    assert failed.value.sqlstate == "2D000"
    assert failed.value.diag.message_primary == "invalid transaction termination"
    assert "populate_target" in failed.value.diag.context
    execute(caller, "ROLLBACK")
    assert target_status(conn, T1) == ("not_populated", None)
    assert populations(conn, T1) == {}
    assert claim(conn, T1) == []
    assert advisory_locks(conn, caller.info.backend_pid) == 0
    populate(caller, T1)   # the next run works
    assert sorted(populations(conn, T1)) == sorted(SPACED)


def test_backfill_inside_a_block_fails_at_once_and_records_nothing(conn, new_conn):
    caller = new_conn()
    before = rows(conn, "SELECT id, status FROM pgsnap.backfill_runs ORDER BY id")
    with pytest.raises(psycopg.errors.InvalidTransactionTermination):
        execute(caller, "BEGIN; CALL pgsnap.backfill_missing_snapshots(); COMMIT;")
    execute(caller, "ROLLBACK")
    assert rows(conn, "SELECT id, status FROM pgsnap.backfill_runs ORDER BY id") == before


def test_function_entry_point_works_inside_the_callers_transaction(conn, new_conn):
    seed_worked_example(conn)
    caller = new_conn(autocommit=False)
    summary = value(caller, "SELECT pgsnap.populate_target_in_transaction(%s)", (T1,))
    assert {k: v for k, v in summary.items() if k != "seconds"} == {
        "event": "done", "job": "populate", "target_id": T1, "status": "populated", "method": "scanned",
        "source_target_id": None, "batches": 1, "inserted": 3, "moved": 0, "refreshed": 0, "deleted": 0,
        "unchanged": 0, "rows": 3, "snapshots_built": 3}
    assert populations(conn, T1) == {} and target_status(conn, T1)[0] == "not_populated"  # not yet
    caller.rollback()
    assert populations(conn, T1) == {} and claim(conn, T1) == []
    value(caller, "SELECT pgsnap.populate_target_in_transaction(%s)", (T1,))
    caller.commit()
    assert populations(conn, T1) == Model.load(conn).populations(T1)
    assert target_status(conn, T1)[0] == "populated"


def test_tag_change_during_an_in_transaction_populate_syncs_after_its_commit(conn, new_conn):
    """The caller's transaction holds the slots until COMMIT: a tag change waits, then syncs on
    the committed population."""
    seed_worked_example(conn)
    caller = new_conn(autocommit=False)
    value(caller, "SELECT pgsnap.populate_target_in_transaction(%s)", (T1,))
    tagger = new_conn()
    tagging = Runner(tag, tagger, M2, CHESS, "Chess")
    tagging.start()
    wait_until_blocked(conn, tagger.info.backend_pid, "the sync of M2", ADVISORY)
    caller.commit()
    tagging.finish()
    assert populations(conn, T1)[M2][0] == 1   # B1 now: Women, Boston zip, Outdoorsy
    assert populations(conn, T1) == Model.load(conn).populations(T1)
    assert_targets_exact(conn, [T1])


# -- cancellations and timeouts -----------------------------------------------------------------
def start_held_populate(conn, new_conn, key=7):
    """A populate of T1 in batches of one, held at me_file 2049 (its third batch)."""
    seed_spaced(conn)
    execute(conn, "INSERT INTO public.test_gate VALUES (2049, 'populate', %s)", (key,))
    execute(conn, "SELECT pg_advisory_lock(%s)", (key,))
    populator_conn = gated(new_conn, "populate")
    populator = Runner(execute, populator_conn, "CALL pgsnap.populate_target(1, 1)")
    populator.start()
    wait_until_blocked(conn, populator_conn.info.backend_pid, "the third batch", ADVISORY)
    return populator_conn, populator


def test_a_cancelled_run_leaves_no_lock_and_another_session_populates_at_once(conn, new_conn):
    populator_conn, populator = start_held_populate(conn, new_conn)
    value(conn, "SELECT pg_cancel_backend(%s)", (populator_conn.info.backend_pid,))
    with pytest.raises(psycopg.errors.QueryCanceled):
        populator.finish()
    execute(conn, "SELECT pg_advisory_unlock(7)")
    assert advisory_locks(conn, populator_conn.info.backend_pid) == 0
    assert target_status(conn, T1)[0] == "populating"   # still maintained; check reports it
    other = new_conn()
    execute(other, "SET lock_timeout = '5s'")
    populate(other, T1)
    assert target_status(conn, T1)[0] == "populated"
    assert verify(conn, T1) == []
    populate(populator_conn, T1)   # and the cancelled session itself can run it again
    assert claim(conn, T1) == [(None,)]


def test_a_timed_out_run_leaves_no_lock(conn, new_conn):
    seed_spaced(conn)
    execute(conn, "INSERT INTO public.test_gate VALUES (2049, 'populate', 7)")
    execute(conn, "SELECT pg_advisory_lock(7)")
    populator_conn = gated(new_conn, "populate")
    execute(populator_conn, "SET statement_timeout = '300ms'")
    with pytest.raises(psycopg.errors.QueryCanceled) as timed_out:
        execute(populator_conn, "CALL pgsnap.populate_target(1, 1)")
    assert timed_out.value.diag.message_primary == "canceling statement due to statement timeout"
    execute(conn, "SELECT pg_advisory_unlock(7)")
    assert advisory_locks(conn, populator_conn.info.backend_pid) == 0
    populate(new_conn(), T1)
    assert verify(conn, T1) == []


def test_a_run_waiting_for_another_is_cancelled_cleanly(conn, new_conn):
    populator_conn, populator = start_held_populate(conn, new_conn)
    waiter_conn = new_conn()
    notices = []
    waiter_conn.add_notice_handler(lambda d: notices.append(d.message_primary))
    waiter = Runner(execute, waiter_conn, "CALL pgsnap.populate_target(1, 1)")
    waiter.start()
    wait_for = f"pgsnap: target 1 is being populated by pid {populator_conn.info.backend_pid}; waiting for it"
    wait_until(lambda: wait_for in notices, "the second run to wait")
    value(conn, "SELECT pg_cancel_backend(%s)", (waiter_conn.info.backend_pid,))
    with pytest.raises(psycopg.errors.QueryCanceled):
        waiter.finish()
    assert advisory_locks(conn, waiter_conn.info.backend_pid) == 0
    execute(conn, "SELECT pg_advisory_unlock(7)")
    populator.finish()
    assert claim(conn, T1) == [(None,)]
    assert verify(conn, T1) == []


def wait_until(condition, what, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen"
        time.sleep(0.01)


# -- application row locks and deletions --------------------------------------------------------
def test_application_holding_its_me_file_row_does_not_deadlock_a_populate(conn, new_conn):
    """App: SELECT ... FOR UPDATE on M2's me_files row, a tag update, still open; a populate of
    T1 leaves M2 for later and waits for it without holding any slot; the app's commit (and its
    sync of M2) goes through; so does the populate."""
    seed_worked_example(conn)
    app = new_conn(autocommit=False)
    execute(app, "SELECT id FROM me_files WHERE id = %s FOR UPDATE", (M2,))
    execute(app, "UPDATE me_file_tags SET tag_value = 'F' WHERE me_file_id = %s AND trait_id = %s",
            (M2, FEMALE))
    populator_conn = new_conn()
    populator = Runner(populate, populator_conn, T1)
    populator.start()
    wait_until_blocked(conn, populator_conn.info.backend_pid, "the populate waiting for M2", ROW_LOCK)
    assert advisory_locks(conn, populator_conn.info.backend_pid) == 0
    app.commit()
    populator.finish()
    assert populations(conn, T1)[M2][1]["tags"][0] == [1, "Sex (Biological)", 1, [[3, "F", 2]]]
    assert populations(conn, T1) == Model.load(conn).populations(T1)
    assert verify(conn, T1) == []


def test_me_file_deleted_in_a_later_batch_during_a_populate(conn, new_conn):
    populator_conn, populator = start_held_populate(conn, new_conn)
    execute(conn, "DELETE FROM me_files WHERE id = 3073")
    execute(conn, "SELECT pg_advisory_unlock(7)")
    populator.finish()
    assert sorted(populations(conn, T1)) == [1, 1025, 2049]
    assert target_status(conn, T1)[0] == "populated"
    assert verify(conn, T1) == []


def test_me_file_deleted_in_the_batch_being_written(conn, new_conn):
    """The batch holds 2049's foreign-key lock: the delete waits for the batch, then removes the
    me_file and its new row."""
    populator_conn, populator = start_held_populate(conn, new_conn)
    deleter_conn = new_conn()
    deleting = Runner(execute, deleter_conn, "DELETE FROM me_files WHERE id = 2049")
    deleting.start()
    wait_until_blocked(conn, deleter_conn.info.backend_pid, "the delete of 2049", ROW_LOCK)
    execute(conn, "SELECT pg_advisory_unlock(7)")
    populator.finish()
    deleting.finish()
    assert sorted(populations(conn, T1)) == [1, 1025, 3073]
    assert verify(conn, T1) == []


# -- a sync that changes nothing writes nothing -------------------------------------------------
WRITES = """
SELECT (SELECT count(*) FROM pgsnap.me_file_syncs), (SELECT count(*) FROM pgsnap.sync_queue),
       (SELECT count(*) FROM pgsnap.sync_pending),
       (SELECT array_agg(xmin::text ORDER BY target_id) FROM pgsnap.target_state)
"""


@pytest.mark.parametrize("change", ["rewrite M2's tags", "M4 adds Chess", "sync_me_file(M3)"])
def test_a_sync_that_changes_nothing_writes_nothing(conn, change):
    seed_worked_example(conn)
    populate(conn, T1)
    before = (row_versions(conn), rows(conn, WRITES))
    if change == "rewrite M2's tags":
        with conn.transaction():
            execute(conn, "DELETE FROM me_file_tags WHERE me_file_id = %s", (M2,))
            tags(conn, M2, {FEMALE: "Female", ZIP_02140: "02140"})
    elif change == "M4 adds Chess":   # Outdoorsy alone takes nobody into a band
        tag(conn, M4, CHESS, "Chess")
    else:
        assert value(conn, "SELECT pgsnap.sync_me_file(%s)", (M3,)) == 0
    assert (row_versions(conn), rows(conn, WRITES)) == before
    assert rows(conn, WRITES)[0][:3] == (0, 0, 0)


# -- lock volume ----------------------------------------------------------------------------------
def test_the_suite_runs_on_the_default_lock_table(conn):
    assert value(conn, "SHOW max_locks_per_transaction") == "64"


def test_a_registration_takes_one_lock_whatever_the_number_of_targets(conn, new_conn):
    seed_example_catalogue(conn)
    for target in range(100, 400):
        add_target(conn, target, bands=[(target, [10])])   # Women
        execute(conn, "UPDATE targets SET population_status = 'populated' WHERE id = %s", (target,))
    registrar = new_conn(autocommit=False)
    execute(registrar, "INSERT INTO me_files (id) VALUES (%s)", (M6,))
    tag(registrar, M6, FEMALE, "Female")
    execute(registrar, "SET CONSTRAINTS ALL IMMEDIATE")   # the commit-time sync, now
    assert advisory_locks(registrar, registrar.info.backend_pid) == 1
    registrar.commit()
    assert value(conn, "SELECT count(*) FROM target_populations WHERE me_file_id = %s", (M6,)) == 300


def test_concurrent_registrations_into_hundreds_of_targets_succeed(conn, new_conn):
    seed_example_catalogue(conn)
    for target in range(100, 400):
        add_target(conn, target, bands=[(target, [10])])
        execute(conn, "UPDATE targets SET population_status = 'populated' WHERE id = %s", (target,))

    def register(c, me_file):
        with c.transaction():
            execute(c, "INSERT INTO me_files (id) VALUES (%s)", (me_file,))
            tag(c, me_file, FEMALE, "Female")

    runners = [Runner(register, new_conn(), 1000 + i) for i in range(12)]
    for r in runners:
        r.start()
    for r in runners:
        r.finish()
    assert value(conn, "SELECT count(*) FROM target_populations") == 12 * 300


def test_a_populate_batch_takes_at_most_64_locks(conn, new_conn):
    populator_conn, populator = start_held_populate(conn, new_conn)
    assert advisory_locks(conn, populator_conn.info.backend_pid) <= 64
    execute(conn, "SELECT pg_advisory_unlock(7)")
    populator.finish()
