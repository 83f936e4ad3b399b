"""The safety-net backfill (docs/rules.md, "Backfill"; docs/operations.md): pgsnap.backfill_batch,
CALL pgsnap.backfill_missing_snapshots, pgsnap.backfill_band, pgsnap.backfill_plan and
`pgsnap backfill`, on databases where NULLs can exist: legacy rows inserted at 0001, then
`migrate(backfill=False)` (mid-journey: NOT VALID checks, sql/ deployed, no enforcement).

Rules: population -> built; offer -> its population's current snapshot (however long ago it was
filled: defect 2), else built; ad_event -> its offer's, else its population's, else built; a
non-NULL value is never written; rows of a deleted band go with it and are never re-found
(defects 3 and 15).

The defects are the original application's, numbered as the test names use them: 2, its backfill
never repaired NULL offers and ad_events whose population was already filled; 3, it re-found the
NULL populations of deleted bands every hour; 15, its per-band backfill, an upsert by id, could
resurrect a deleted row."""

import threading
import time
from contextlib import contextmanager

import psycopg
import pytest
from psycopg import errors

from pgsnap import deploy
from tests import helpers as h
from tests.legacy_data import (
    C1,
    OLD_COPY,
    SNAPSHOT_TABLES,
    STALE,
    add_ad_event,
    add_bid,
    add_campaign,
    add_offer,
    add_population,
    expected_snapshots,
    legacy_database,
    null_counts,
    row_xmins,
    runs,
    set_populated,
    snapshot_constraints,
    snapshots,
)

JOURNEY_NULLS = {"target_populations": 3, "offers": 6, "ad_events": 10}
ZEROS = dict.fromkeys(SNAPSHOT_TABLES, 0)
INTERRUPTED = "interrupted: its session ended before the run finished"
POPULATION_ROWS = "SELECT id, target_band_id, me_file_id FROM target_populations ORDER BY id"


def connect(dsn, autocommit=True, **kw):
    return psycopg.connect(dsn, autocommit=autocommit, **kw)


@pytest.fixture
def journey(empty_db_dsn):
    """Mid-journey database with every kind of legacy row (tests.legacy_data.seed_legacy_journey)."""
    legacy = legacy_database(empty_db_dsn)
    with connect(empty_db_dsn) as c:
        assert null_counts(c) == JOURNEY_NULLS
        yield c, legacy


def seed_bulk(n):
    """me_files 1..n, all women, odd ones with a Boston zip: odd -> B2, even -> B3 (T1 of the worked
    example); population, offer (campaign C1) and ad_event with id = me_file id, all NULL."""
    def seed(conn):
        h.seed_example_catalogue(conn)
        h.seed_example_t1(conn)
        set_populated(conn, h.T1)
        h.execute(conn, "INSERT INTO me_files (id) SELECT g FROM generate_series(1, %s) g", (n,))
        h.execute(conn, "INSERT INTO me_file_tags (me_file_id, trait_id, tag_value)"
                        " SELECT g, %s, 'Female' FROM generate_series(1, %s) g", (h.FEMALE, n))
        h.execute(conn, "INSERT INTO me_file_tags (me_file_id, trait_id, tag_value)"
                        " SELECT g, %s, '02140' FROM generate_series(1, %s, 2) g", (h.ZIP_02140, n))
        add_campaign(conn, C1, h.T1)
        add_bid(conn, C1, h.B2, "0.75")
        add_bid(conn, C1, h.B3, "0.25")
        band = f"CASE WHEN g %% 2 = 1 THEN {h.B2} ELSE {h.B3} END"
        h.execute(conn, f"INSERT INTO target_populations (id, target_band_id, me_file_id)"
                        f" SELECT g, {band}, g FROM generate_series(1, %s) g", (n,))
        h.execute(conn, f"INSERT INTO offers (id, campaign_id, me_file_id, target_band_id, offer_amt)"
                        f" SELECT g, {C1}, g, {band}, 1 FROM generate_series(1, %s) g", (n,))
        h.execute(conn, f"INSERT INTO ad_events (id, offer_id, campaign_id, me_file_id, target_band_id,"
                        f" event_type) SELECT g, g, {C1}, g, {band}, 'banner_tap'"
                        f" FROM generate_series(1, %s) g", (n,))
        return {t: dict.fromkeys(range(1, n + 1)) for t in SNAPSHOT_TABLES}
    return seed


def bulk_database(dsn, n):
    legacy = legacy_database(dsn, seed_bulk(n))
    with connect(dsn) as c:
        assert null_counts(c) == dict.fromkeys(SNAPSHOT_TABLES, n)
    return legacy


def assert_filled_by_the_rules(conn, legacy):
    assert null_counts(conn) == ZEROS
    expected = expected_snapshots(conn, legacy)
    for table in SNAPSHOT_TABLES:
        assert snapshots(conn, table) == expected[table], table


def drain(conn, batch_size=500):
    """backfill_batch until all zeros; the list of its results."""
    results = []
    while True:
        results.append(h.rows(conn, "SELECT * FROM pgsnap.backfill_batch(%s)", (batch_size,))[0])
        if results[-1] == (0, 0, 0):
            return results


def wait_for(condition, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


@contextmanager
def run_held(conn, dsn, call, me_file_id, lock_key):
    """`call` in a session of its own, held (a test trigger on target_populations) when it writes
    me_file_id's row, until the block ends; then it runs to its end."""
    h.execute(conn, h.GATES)
    h.execute(conn, "INSERT INTO public.test_gate VALUES (%s, 'held run', %s)", (me_file_id, lock_key))
    h.execute(conn, "SELECT pg_advisory_lock(%s)", (lock_key,))
    run_conn = connect(dsn)
    h.execute(run_conn, "SET application_name = 'held run'")
    runner = h.Runner(h.execute, run_conn, call)
    runner.start()
    try:
        h.wait_until_blocked(conn, run_conn.info.backend_pid, f"the run to write me_file {me_file_id}",
                             h.ADVISORY)
        yield
    finally:
        h.execute(conn, "SELECT pg_advisory_unlock(%s)", (lock_key,))
        runner.finish()
        run_conn.close()


# -- the rules ---------------------------------------------------------------------------------
def test_scheduled_call_fills_every_null_by_the_rules_and_records_the_run(journey):
    conn, legacy = journey
    kept = {t: {i: x for i, x in row_xmins(conn, t).items() if legacy[t].get(i) is not None}
            for t in SNAPSHOT_TABLES}
    h.execute(conn, "CALL pgsnap.backfill_missing_snapshots()")
    assert_filled_by_the_rules(conn, legacy)
    assert runs(conn) == [("succeeded", 1, 3, 6, 10, None)]
    for table in SNAPSHOT_TABLES:  # non-NULL rows were not even rewritten
        now = row_xmins(conn, table)
        assert {i: now[i] for i in kept[table]} == kept[table], table
    assert h.value(conn, "SELECT finished_at >= started_at FROM pgsnap.backfill_runs") is True


def test_null_population_is_built(journey):
    conn, _ = journey
    drain(conn)
    tp = snapshots(conn, "target_populations")
    assert tp[1] == h.build_snapshot(conn, h.M1, h.B1) == h.snapshot(
        [h.SEX, "Sex (Biological)", 1, [[h.FEMALE, "Female", 2]]],
        [h.HOME_ZIP, "Home Zip Code", 1, [[h.ZIP_02140, "02140", 2140]]],
        [h.HOBBIES, "Hobbies", 3, [[h.HIKING, "Hiking", 1], [h.CHESS, "Chess", 3]]])
    assert tp[4] == h.build_snapshot(conn, h.M3, h.B3)
    assert h.value(conn, "SELECT updated_at > created_at FROM target_populations WHERE id = 1") is True


def test_null_offer_takes_the_population_filled_long_ago_defect_2(journey):
    conn, _ = journey
    updated = h.value(conn, "SELECT updated_at FROM target_populations WHERE id = 3")
    drain(conn)
    offers, events = snapshots(conn, "offers"), snapshots(conn, "ad_events")
    assert offers[2] == STALE != h.build_snapshot(conn, h.M2, h.B2)  # the population's, not rebuilt
    assert events[2] == events[6] == events[9] == STALE
    assert snapshots(conn, "target_populations")[3] == STALE
    assert h.value(conn, "SELECT updated_at FROM target_populations WHERE id = 3") == updated


def test_null_offer_without_population_is_built(journey):
    conn, _ = journey
    drain(conn)
    offers = snapshots(conn, "offers")
    assert offers[4] == h.build_snapshot(conn, h.M1, h.B3)  # population removed by 0002
    assert offers[5] == h.build_snapshot(conn, h.M4, h.B2) == h.snapshot(  # never had one
        [h.HOME_ZIP, "Home Zip Code", 1, [[h.ZIP_02140, "02140", 2140]]])


def test_null_ad_event_takes_offer_else_population_else_built(journey):
    conn, _ = journey
    drain(conn)
    offers, events = snapshots(conn, "offers"), snapshots(conn, "ad_events")
    pairs = ((1, 1), (2, 2), (3, 3), (4, 4), (5, 6), (11, 5))  # (ad_event, its offer)
    assert [events[e] == offers[o] for e, o in pairs] == [True] * len(pairs)
    assert events[5] == OLD_COPY  # its offer's own copy, not the population's STALE
    assert events[6] == STALE  # no offer: the population's
    assert events[7] == h.build_snapshot(conn, h.M4, h.B1)  # neither: built
    assert events[10] == h.EMPTY_SNAPSHOT  # nothing at all to go on


def test_ad_events_wait_for_their_null_offer(journey, empty_db_dsn):
    """Offers first: an ad_event whose offer is still NULL is not filled from elsewhere meanwhile."""
    conn, legacy = journey
    with connect(empty_db_dsn, autocommit=False) as holder:
        holder.execute("SELECT 1 FROM offers WHERE id = 2 FOR UPDATE")  # out of the backfill's reach
        drain(conn)
        assert null_counts(conn) == {"target_populations": 0, "offers": 1, "ad_events": 2}
        assert h.rows(conn, "SELECT id FROM ad_events WHERE matching_tags_snapshot IS NULL"
                            " ORDER BY id") == [(2,), (9,)]
    drain(conn)
    assert_filled_by_the_rules(conn, legacy)


def test_an_ad_event_is_filled_only_once_its_offer_is(journey):
    """Offers first, batch by batch (batches of 1: offers are still being filled while ad_events
    are): after every batch, no filled ad_event points at an offer still NULL."""
    conn, legacy = journey
    early = []
    while True:
        result = h.rows(conn, "SELECT * FROM pgsnap.backfill_batch(1)")[0]
        early += h.rows(conn, "SELECT a.id FROM ad_events a JOIN offers o ON o.id = a.offer_id"
                              " WHERE a.matching_tags_snapshot IS NOT NULL"
                              "   AND o.matching_tags_snapshot IS NULL")
        if result == (0, 0, 0):
            break
    assert early == []
    assert_filled_by_the_rules(conn, legacy)


def test_batches_walk_each_table_from_its_keyset_position(empty_db_dsn):
    """The procedure's batches (pgsnap._backfill_batch) start past the last id each table's
    previous batch claimed: filled rows are never walked again in the same pass, and a pass
    ends where nothing is left past the positions."""
    bulk_database(empty_db_dsn, 5)
    with connect(empty_db_dsn) as conn:
        step = "SELECT target_populations, offers, ad_events, after FROM pgsnap._backfill_batch(2, %s)"
        assert h.rows(conn, step, (None,)) == [(2, 2, 2, [2, 2, 2])]
        assert h.rows(conn, step, ([2, 2, 2],)) == [(2, 2, 2, [4, 4, 4])]
        assert h.rows(conn, step, ([4, 4, 4],)) == [(1, 1, 1, [5, 5, 5])]
        assert h.rows(conn, step, ([5, 5, 5],)) == [(0, 0, 0, [5, 5, 5])]   # the end of the pass
        assert h.rows(conn, step, (None,)) == [(0, 0, 0, [None, None, None])]   # and nothing before


def test_a_run_refinds_in_its_next_pass_the_rows_it_skipped(empty_db_dsn):
    """Offer 3 is held by another session while the run's first pass goes by: the offer and the
    ad_event waiting on it are skipped, the rest filled. Released before the pass ends, both
    are filled by the run's second pass from the start, the ad_event from its offer."""
    legacy = bulk_database(empty_db_dsn, 30)
    with connect(empty_db_dsn) as conn, connect(empty_db_dsn, autocommit=False) as holder:
        holder.execute("SELECT 1 FROM offers WHERE id = 3 FOR UPDATE")
        with run_held(conn, empty_db_dsn, "CALL pgsnap.backfill_missing_snapshots(10)", 21, 8):  # 3rd batch
            assert h.rows(conn, "SELECT id FROM offers WHERE matching_tags_snapshot IS NULL AND id < 21"
                                " UNION ALL SELECT -id FROM ad_events WHERE matching_tags_snapshot IS NULL"
                                " AND id < 21 ORDER BY 1") == [(-3,), (3,)]
            holder.rollback()
        assert runs(conn) == [("succeeded", 4, 30, 30, 30, None)]
        assert_filled_by_the_rules(conn, legacy)


def test_a_held_offer_holds_back_only_its_own_ad_events(empty_db_dsn):
    """Ad_events listed against their offers' order (ad_event g belongs to offer 31 - g), offer 3
    held by another session for the whole run: the first pass passes over the ad_events whose
    offer it has not reached yet, the second pass (which can claim no offer) fills them; only
    offer 3 and its ad_event 28 are left, and the next run fills those."""
    def seed(conn):
        legacy = seed_bulk(30)(conn)
        h.execute(conn, "UPDATE ad_events a SET offer_id = o.id, me_file_id = o.me_file_id,"
                        " target_band_id = o.target_band_id FROM offers o WHERE o.id = 31 - a.id")
        return legacy
    legacy = legacy_database(empty_db_dsn, seed)
    left = ("SELECT 'offers', id FROM offers WHERE matching_tags_snapshot IS NULL UNION ALL"
            " SELECT 'ad_events', id FROM ad_events WHERE matching_tags_snapshot IS NULL ORDER BY 1, 2")
    with connect(empty_db_dsn) as conn, connect(empty_db_dsn, autocommit=False) as holder:
        holder.execute("SELECT 1 FROM offers WHERE id = 3 FOR UPDATE")
        h.execute(conn, "CALL pgsnap.backfill_missing_snapshots(10)")
        assert h.rows(conn, left) == [("ad_events", 28), ("offers", 3)]
        holder.rollback()
        h.execute(conn, "CALL pgsnap.backfill_missing_snapshots(10)")
        assert h.rows(conn, left) == []
        assert runs(conn) == [("succeeded", 5, 30, 29, 29, None), ("succeeded", 1, 0, 1, 1, None)]
        assert_filled_by_the_rules(conn, legacy)


def test_batches_are_bounded_and_end_with_all_zeros(journey):
    conn, legacy = journey
    results = drain(conn, batch_size=2)
    assert results[-1] == (0, 0, 0)
    assert all(max(r) <= 2 for r in results)
    assert len(results) > 2
    assert tuple(map(sum, zip(*results, strict=True))) == (3, 6, 10)
    assert_filled_by_the_rules(conn, legacy)
    assert drain(conn) == [(0, 0, 0)]


def test_backfill_batch_is_all_zeros_on_an_enforced_database(conn):
    before = runs(conn)  # the template's own migrate left its (empty) journey run
    h.seed_worked_example(conn)
    h.populate(conn, h.T1)
    assert h.rows(conn, "SELECT * FROM pgsnap.backfill_batch()") == [(0, 0, 0)]
    assert h.rows(conn, "SELECT target_populations, offers, ad_events"
                        " FROM pgsnap.backfill_batch(1)") == [(0, 0, 0)]
    h.execute(conn, "CALL pgsnap.backfill_missing_snapshots()")
    assert runs(conn) == before + [("succeeded", 0, 0, 0, 0, None)]


def test_call_inside_a_transaction_fails_at_once_and_backfill_batch_serves_one(journey, empty_db_dsn):
    """CALL commits per batch: inside a caller's transaction it fails before any work; a caller
    who wants one transaction loops backfill_batch() in it."""
    conn, legacy = journey
    with connect(empty_db_dsn, autocommit=False) as c:
        with pytest.raises(errors.InvalidTransactionTermination):
            c.execute("CALL pgsnap.backfill_missing_snapshots(1)")
        c.rollback()
        assert drain(c, 1)[-1] == (0, 0, 0)
        assert null_counts(c) == ZEROS
        c.rollback()
    assert null_counts(conn) == JOURNEY_NULLS and runs(conn) == []
    with connect(empty_db_dsn, autocommit=False) as c:
        drain(c, 1)
        c.commit()
    assert_filled_by_the_rules(conn, legacy)


# -- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize("call, shown", [
    ("SELECT * FROM pgsnap.backfill_batch(0)", "0"),
    ("SELECT * FROM pgsnap.backfill_batch(-5)", "-5"),
    ("SELECT * FROM pgsnap.backfill_batch(NULL)", "NULL"),
    ("SELECT pgsnap.backfill_band(1, 0)", "0"),
    ("SELECT pgsnap.backfill_band(1, NULL)", "NULL"),
    ("CALL pgsnap.backfill_missing_snapshots(0)", "0"),
    ("CALL pgsnap.backfill_missing_snapshots(NULL)", "NULL"),
])
def test_bad_batch_size_is_refused(conn, call, shown):
    before = runs(conn)
    h.seed_worked_example(conn)
    with pytest.raises(errors.InvalidParameterValue) as refused:
        h.execute(conn, call)
    assert refused.value.sqlstate == "22023"
    assert refused.value.diag.message_primary == f"batch size must be a positive integer, got {shown}"
    assert runs(conn) == before  # refused before a run is recorded


@pytest.mark.parametrize("max_batches", ["0", "-1"])
def test_bad_max_batches_is_refused(conn, max_batches):
    before = runs(conn)
    with pytest.raises(errors.InvalidParameterValue) as refused:
        h.execute(conn, f"CALL pgsnap.backfill_missing_snapshots(10, {max_batches})")
    assert refused.value.diag.message_primary == (
        f"max batches must be a positive integer or NULL, got {max_batches}")
    assert runs(conn) == before


def test_cli_bad_sizes(cli):
    for args, message in [
        (("--batch-size", "0"), "Invalid value for '--batch-size': 0 is not in the range x>=1"),
        (("--batch-size", "-3"), "Invalid value for '--batch-size': -3 is not in the range x>=1"),
        (("--max-batches", "0"), "Invalid value for '--max-batches': 0 is not in the range x>=1"),
        (("--band", "1", "--batch-size", "0"),
         "Invalid value for '--batch-size': 0 is not in the range x>=1"),
    ]:
        result = cli("backfill", *args)
        assert (result.exit_code, result.stdout, result.stderr) == (
            2, "", f"error: {message} (see `pgsnap backfill --help`)\n"), args


# -- concurrency -------------------------------------------------------------------------------
def test_a_second_run_skips_while_one_is_active(journey, empty_db_dsn, cli):
    """The first run is held in its second batch (a test trigger on target_populations waits on a
    lock the test holds): another CALL, the CLI and a third CALL each skip at once, recorded."""
    conn, legacy = journey
    second = h.value(conn, "SELECT me_file_id FROM target_populations WHERE matching_tags_snapshot IS NULL"
                           " ORDER BY id OFFSET 1 LIMIT 1")
    with run_held(conn, empty_db_dsn, "CALL pgsnap.backfill_missing_snapshots(1)", second, 7):
        assert runs(conn) == [("running", 1, 1, 1, 1, None)]  # one batch committed
        notices = []
        conn.add_notice_handler(lambda d: notices.append((d.message_primary, d.message_detail)))
        h.execute(conn, "CALL pgsnap.backfill_missing_snapshots()")  # returns: nothing to wait for
        skipped = cli("backfill", dsn=empty_db_dsn)
        assert skipped.exit_code == 0
        h.execute(conn, "CALL pgsnap.backfill_missing_snapshots()")
        assert [m for m, _ in notices] == ["pgsnap backfill: another run is active; skipped"] * 2
        # the skippers wrote none
        assert null_counts(conn) == {"target_populations": 2, "offers": 5, "ad_events": 9}
    recorded = runs(conn)
    assert recorded[0][0] == "succeeded" and recorded[0][2:] == (3, 6, 10, None)
    assert [r[0] for r in recorded[1:]] == ["skipped"] * 3
    assert all(r[1:] == (0, 0, 0, 0, None) for r in recorded[1:])
    assert_filled_by_the_rules(conn, legacy)


N_KILL = 3000
BATCHES_DONE = "SELECT 1 FROM pgsnap.backfill_runs WHERE batches >= 3"


def test_killed_run_then_rerun_fills_every_row_once_and_marks_the_killed_run_failed(empty_db_dsn):
    """`CALL pgsnap.backfill_missing_snapshots(10)` is stopped between two batches (another session
    holds its run row), a second CALL skips meanwhile, then the first is terminated mid-batch."""
    legacy = bulk_database(empty_db_dsn, N_KILL)
    victim = connect(empty_db_dsn)
    victim_pid = victim.info.backend_pid
    outcome = {}

    def run():
        try:
            victim.execute("CALL pgsnap.backfill_missing_snapshots(10)")
        except psycopg.Error as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=run)
    with connect(empty_db_dsn) as conn, connect(empty_db_dsn, autocommit=False) as holder:
        worker.start()
        try:
            wait_for(lambda: h.rows(conn, BATCHES_DONE), what="3 batches")
            run_id = h.value(conn, "SELECT id FROM pgsnap.backfill_runs")
            holder.execute("SELECT 1 FROM pgsnap.backfill_runs WHERE id = %s FOR UPDATE", (run_id,))
            wait_for(lambda: h.value(conn, "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                                     (victim_pid,)) == "Lock", what="the run to wait")
            # a concurrent run skips at once
            h.execute(conn, "CALL pgsnap.backfill_missing_snapshots(10)")
            assert h.rows(conn, "SELECT status FROM pgsnap.backfill_runs ORDER BY id") == [
                ("running",), ("skipped",)]
            assert h.value(conn, "SELECT pg_terminate_backend(%s)", (victim_pid,)) is True
            worker.join(30)
        finally:
            holder.rollback()
            victim.close()
        assert isinstance(outcome.get("error"), psycopg.OperationalError)
        status, k, tp, offers, events, error = runs(conn)[0]
        assert (status, error) == ("running", None)  # nobody has noticed yet
        assert k >= 3 and (tp, offers, events) == (10 * k, 10 * k, 10 * k)
        # the committed batches are in, the batch in flight was rolled back whole
        assert null_counts(conn) == dict.fromkeys(SNAPSHOT_TABLES, N_KILL - 10 * k)
        filled_then = {t: {i for i, s in snapshots(conn, t).items() if s is not None}
                       for t in SNAPSHOT_TABLES}
        xmins_then = {t: {i: x for i, x in row_xmins(conn, t).items() if i in filled_then[t]}
                      for t in SNAPSHOT_TABLES}

        h.execute(conn, "CALL pgsnap.backfill_missing_snapshots(10)")
        recorded = runs(conn)
        assert recorded[0] == ("failed", k, 10 * k, 10 * k, 10 * k, INTERRUPTED)
        assert recorded[1][0] == "skipped"
        rest = N_KILL - 10 * k
        assert recorded[2] == ("succeeded", rest // 10, rest, rest, rest, None)
        assert h.value(conn, "SELECT finished_at IS NOT NULL FROM pgsnap.backfill_runs"
                             " WHERE id = %s", (run_id,))
        # every row filled exactly once: the two runs' counts add up, earlier rows were not rewritten
        assert [r[2:5] for r in recorded] == [(10 * k,) * 3, (0, 0, 0), (rest,) * 3]
        assert 10 * k + rest == N_KILL
        for table in SNAPSHOT_TABLES:
            now = row_xmins(conn, table)
            assert {i: now[i] for i in filled_then[table]} == xmins_then[table], table
        assert_filled_by_the_rules(conn, legacy)




def test_cancelled_run_leaves_no_lock_behind(empty_db_dsn):
    """A CALL cancelled mid-run (statement_timeout, Ctrl+C) in a session that lives on must not keep
    the backfill lock: later runs from other sessions run instead of skipping forever."""
    legacy = bulk_database(empty_db_dsn, N_KILL)
    victim = connect(empty_db_dsn)
    victim_pid = victim.info.backend_pid
    outcome = {}

    def run():
        try:
            victim.execute("CALL pgsnap.backfill_missing_snapshots(10)")
        except psycopg.Error as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=run)
    with connect(empty_db_dsn) as conn, connect(empty_db_dsn, autocommit=False) as holder:
        try:
            worker.start()
            wait_for(lambda: h.rows(conn, BATCHES_DONE), what="3 batches")
            holder.execute("SELECT 1 FROM pgsnap.backfill_runs FOR UPDATE")
            wait_for(lambda: h.value(conn, "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                                     (victim_pid,)) == "Lock", what="the run to wait")
            assert h.value(conn, "SELECT pg_cancel_backend(%s)", (victim_pid,)) is True
            holder.rollback()  # the cancelled run records itself as failed once it may
            worker.join(30)
            assert isinstance(outcome.get("error"), errors.QueryCanceled)
            # the cancelled session is alive and idle; another session's run must do the work
            h.execute(conn, "CALL pgsnap.backfill_missing_snapshots(10)")
            assert [r[0] for r in runs(conn)] == ["failed", "succeeded"], runs(conn)
            assert_filled_by_the_rules(conn, legacy)
        finally:
            victim.close()


# -- per band, deleted bands ---------------------------------------------------------------------
def test_backfill_band_touches_only_its_band(empty_db_dsn, cli):
    bulk_database(empty_db_dsn, 7)  # B2: 1, 3, 5, 7; B3: 2, 4, 6
    with connect(empty_db_dsn) as conn:
        before = {t: row_xmins(conn, t) for t in SNAPSHOT_TABLES}
        assert h.value(conn, "SELECT pgsnap.backfill_band(%s, 1)", (h.B2,)) == 4
        tp = snapshots(conn, "target_populations")
        assert {i for i, s in tp.items() if s is not None} == {1, 3, 5, 7}
        assert all(tp[i] == h.build_snapshot(conn, i, h.B2) for i in (1, 3, 5, 7))
        after = row_xmins(conn, "target_populations")
        assert {i: after[i] for i in (2, 4, 6)} == {i: before["target_populations"][i] for i in (2, 4, 6)}
        assert row_xmins(conn, "offers") == before["offers"]  # legacy mode: no propagation
        assert row_xmins(conn, "ad_events") == before["ad_events"]
        assert null_counts(conn) == {"target_populations": 3, "offers": 7, "ad_events": 7}
        assert h.value(conn, "SELECT pgsnap.backfill_band(%s)", (h.B2,)) == 0  # nothing left there
    dry = cli("backfill", "--band", h.B3, "--dry-run", dsn=empty_db_dsn)
    assert (dry.exit_code, dry.stdout) == (0, "target_populations  built  3\n")
    done = cli("backfill", "--band", h.B3, "--batch-size", "2", dsn=empty_db_dsn)
    assert (done.exit_code, done.stdout, done.stderr) == (
        0, f"band {h.B3}: 3 target_populations filled\n", "")
    with connect(empty_db_dsn) as conn:
        assert null_counts(conn) == {"target_populations": 0, "offers": 7, "ad_events": 7}


def test_backfill_band_of_unknown_band(conn, cli):
    with pytest.raises(errors.NoDataFound) as refused:
        h.execute(conn, "SELECT pgsnap.backfill_band(999)")
    assert refused.value.diag.message_primary == "target band 999 does not exist"
    result = cli("backfill", "--band", "999")
    assert (result.exit_code, result.stdout, result.stderr) == (
        2, "", "error: target band 999 does not exist\n")


def _deleted_band_seed(conn):
    h.seed_worked_example(conn)
    set_populated(conn, h.T1)
    add_population(conn, 1, h.B1, h.M1)
    add_population(conn, 3, h.B3, h.M3)
    h.tags(conn, 6, {h.FEMALE: "Female"})
    add_population(conn, 4, h.B3, 6)  # another woman
    add_campaign(conn, C1, h.T1)
    add_bid(conn, C1, h.B3, "0.25")  # bids go with their band
    return {}


def test_rows_of_a_deleted_band_go_with_it_and_are_never_refound(empty_db_dsn):
    legacy_database(empty_db_dsn, _deleted_band_seed)
    with connect(empty_db_dsn) as conn:
        h.execute(conn, "DELETE FROM target_bands WHERE id = %s", (h.B3,))
        assert h.rows(conn, "SELECT id FROM target_populations ORDER BY id") == [(1,)]
        assert null_counts(conn) == {"target_populations": 1, "offers": 0, "ad_events": 0}
        for _ in range(3):  # hourly, forever
            h.execute(conn, "CALL pgsnap.backfill_missing_snapshots()")
        assert runs(conn) == [("succeeded", 1, 1, 0, 0, None)] + [("succeeded", 0, 0, 0, 0, None)] * 2
        assert h.rows(conn, POPULATION_ROWS) == [(1, h.B1, h.M1)]
        with pytest.raises(errors.NoDataFound):
            h.execute(conn, "SELECT pgsnap.backfill_band(%s)", (h.B3,))


def test_band_deleted_while_backfill_band_holds_its_rows_is_not_resurrected_defect_15(empty_db_dsn):
    legacy_database(empty_db_dsn, _deleted_band_seed)
    with connect(empty_db_dsn) as conn, connect(empty_db_dsn, autocommit=False) as filler:
        assert h.value(filler, "SELECT pgsnap.backfill_band(%s)", (h.B3,)) == 2  # rows claimed and written
        deleter = threading.Thread(target=h.execute,
                                   args=(conn, "DELETE FROM target_bands WHERE id = %s", (h.B3,)))
        deleter.start()
        wait_for(lambda: h.rows(filler, "SELECT 1 FROM pg_stat_activity"
                                        " WHERE pid = %s AND wait_event_type = 'Lock'",
                                (conn.info.backend_pid,)), what="the delete to wait")
        filler.commit()
        deleter.join(30)
        assert h.rows(conn, POPULATION_ROWS) == [(1, h.B1, h.M1)]


def test_backfill_skips_rows_of_a_band_being_deleted_and_never_refinds_them(empty_db_dsn):
    legacy_database(empty_db_dsn, _deleted_band_seed)
    with connect(empty_db_dsn) as conn, connect(empty_db_dsn, autocommit=False) as deleter:
        deleter.execute("DELETE FROM target_bands WHERE id = %s", (h.B3,))  # not committed: rows locked
        assert h.value(conn, "SELECT pgsnap.backfill_band(%s)", (h.B3,)) == 0  # skipped, not waited for
        assert drain(conn) == [(1, 0, 0), (0, 0, 0)]
        deleter.commit()
        assert drain(conn) == [(0, 0, 0)]
        assert h.rows(conn, "SELECT id FROM target_populations") == [(1,)]


# -- CLI ------------------------------------------------------------------------------------------
DRY_RUN = (
    "ad_events           built       2\n"
    "ad_events           offer       7\n"
    "ad_events           population  1\n"
    "offers              built       2\n"
    "offers              population  4\n"
    "target_populations  built       3\n"
)


def test_dry_run_prints_per_table_and_source_and_writes_nothing(journey, empty_db_dsn, cli):
    conn, legacy = journey
    before = {t: row_xmins(conn, t) for t in SNAPSHOT_TABLES}
    result = cli("backfill", "--dry-run", dsn=empty_db_dsn)
    assert (result.exit_code, result.stdout, result.stderr) == (0, DRY_RUN, "")
    assert {t: row_xmins(conn, t) for t in SNAPSHOT_TABLES} == before
    assert null_counts(conn) == JOURNEY_NULLS and runs(conn) == []
    # the plan is what a run then does
    plan = h.rows(conn, "SELECT table_name, source, rows FROM pgsnap.backfill_plan()")
    h.execute(conn, "CALL pgsnap.backfill_missing_snapshots()")
    assert runs(conn)[0][2:5] == tuple(sum(n for table, _, n in plan if table == t) for t in SNAPSHOT_TABLES)
    assert_filled_by_the_rules(conn, legacy)
    nothing = cli("backfill", "--dry-run", dsn=empty_db_dsn)
    assert (nothing.exit_code, nothing.stdout) == (0, "nothing to fill\n")


def test_cli_backfill_runs_resumably_in_bounded_batches(journey, empty_db_dsn, cli):
    conn, legacy = journey
    first = cli("backfill", "--batch-size", "1", "--max-batches", "1", dsn=empty_db_dsn)
    assert (first.exit_code, first.stdout, first.stderr) == (
        0, "backfill run 1 stopped: 1 batches; filled target_populations 1, offers 1, ad_events 1\n", "")
    assert null_counts(conn) == {"target_populations": 2, "offers": 5, "ad_events": 9}
    rest = cli("backfill", dsn=empty_db_dsn)
    assert (rest.exit_code, rest.stdout) == (
        0, "backfill run 2 succeeded: 1 batches; filled target_populations 2, offers 5, ad_events 9\n")
    assert_filled_by_the_rules(conn, legacy)
    again = cli("backfill", dsn=empty_db_dsn)
    assert again.stdout == (
        "backfill run 3 succeeded: 0 batches; filled target_populations 0, offers 0, ad_events 0\n")
    assert runs(conn) == [("stopped", 1, 1, 1, 1, None), ("succeeded", 1, 2, 5, 9, None),
                          ("succeeded", 0, 0, 0, 0, None)]


def test_cli_backfill_works_on_an_enforced_database(conn, cli):
    result = cli("backfill")
    run_id = h.value(conn, "SELECT max(id) FROM pgsnap.backfill_runs")
    assert (result.exit_code, result.stdout) == (
        0, f"backfill run {run_id} succeeded: 0 batches;"
           " filled target_populations 0, offers 0, ad_events 0\n")
    assert cli("backfill", "--dry-run").stdout == "nothing to fill\n"


def test_legacy_offer_and_event_rows_the_original_never_repaired(empty_db_dsn):
    """Populations filled after offers copied their NULL (the original's race between its
    snapshot jobs and its offer creation); the original's hourly backfill only looked at NULL
    populations and never came back for these."""
    def seed_filled(conn):
        h.seed_worked_example(conn)
        set_populated(conn, h.T1)
        add_campaign(conn, C1, h.T1)
        for pid, band, me_file in ((1, h.B1, h.M1), (2, h.B2, h.M2), (3, h.B3, h.M3)):
            add_population(conn, pid, band, me_file, STALE, updated_at="2025-11-06 00:00:00+00")
            add_offer(conn, pid, C1, me_file, band)
            add_ad_event(conn, pid, pid, me_file, band)
        return {}

    legacy_database(empty_db_dsn, seed_filled)
    with connect(empty_db_dsn) as conn:
        assert null_counts(conn) == {"target_populations": 0, "offers": 3, "ad_events": 3}
        h.execute(conn, "CALL pgsnap.backfill_missing_snapshots()")
        assert null_counts(conn) == ZEROS
        assert set(map(str, snapshots(conn, "offers").values())) == {str(STALE)}
        assert set(map(str, snapshots(conn, "ad_events").values())) == {str(STALE)}
        assert runs(conn) == [("succeeded", 1, 0, 3, 3, None)]


# -- the original's flat format ------------------------------------------------------------------
FLAT = {"tags": [{"trait_id": 3, "trait_name": "Female", "parent_trait_id": 1}],
        "snapshot_at": "2025-11-01T00:00:00Z"}


def seed_flat(conn):
    """T1 as the original left it: rows whose snapshot is in its old flat format, at all three levels."""
    h.seed_worked_example(conn)
    set_populated(conn, h.T1)
    add_population(conn, 1, h.B1, h.M1, FLAT)
    add_population(conn, 2, h.B2, h.M2, h.snapshot([1, "Sex (Biological)", 1, [[3, "Female", 2]]],
                                                   [4, "Home Zip Code", 1, [[101, "02140", 2140]]]))
    add_campaign(conn, C1, h.T1)
    add_offer(conn, 1, C1, h.M1, h.B1, FLAT)
    add_ad_event(conn, 1, 1, h.M1, h.B1, FLAT)
    return {"target_populations": {1: FLAT, 2: None}, "offers": {1: FLAT}, "ad_events": {1: FLAT}}


def shape_violations(conn):
    return dict(h.rows(conn, "SELECT check_name, violations FROM pgsnap.check_invariants()"
                             " WHERE check_name LIKE 'snapshot_shape:%'"))


def test_the_originals_flat_format_is_rebuilt_by_the_journey_and_refused_after(empty_db_dsn):
    legacy_database(empty_db_dsn, seed_flat)
    with connect(empty_db_dsn) as conn:
        assert shape_violations(conn) == {"snapshot_shape:target_populations": 1, "snapshot_shape:offers": 1,
                                          "snapshot_shape:ad_events": 1}
        assert h.rows(conn, "SELECT * FROM pgsnap.backfill_plan() ORDER BY 1, 2") == [
            ("ad_events", "offer", 1), ("offers", "population", 1), ("target_populations", "built", 1)]
        assert snapshot_constraints(conn) == {
            "target_populations_snapshot_not_null": False, "target_populations_snapshot_shape": False,
            "offers_snapshot_not_null": False, "offers_snapshot_shape": False,
            "ad_events_snapshot_not_null": False, "ad_events_snapshot_shape": False}
    deploy.migrate(empty_db_dsn)
    with connect(empty_db_dsn) as conn:
        m1_b1 = h.build_snapshot(conn, h.M1, h.B1)
        assert m1_b1 == h.snapshot([1, "Sex (Biological)", 1, [[3, "Female", 2]]],
                                   [4, "Home Zip Code", 1, [[101, "02140", 2140]]],
                                   [50, "Hobbies", 3, [[52, "Hiking", 1], [53, "Chess", 3]]])
        assert snapshots(conn, "target_populations")[1] == m1_b1
        assert snapshots(conn, "offers") == {1: m1_b1}
        assert snapshots(conn, "ad_events") == {1: m1_b1}
        assert shape_violations(conn) == dict.fromkeys(shape_violations(conn), 0)
        assert snapshot_constraints(conn) == {"target_populations_snapshot_shape": True,
                                              "offers_snapshot_shape": True, "ad_events_snapshot_shape": True}
        with pytest.raises(errors.CheckViolation) as refused:
            add_offer(conn, 2, C1, h.M2, h.B2, FLAT)
        assert refused.value.diag.constraint_name == "offers_snapshot_shape"
