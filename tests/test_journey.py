"""The NOT NULL journey (docs/operations.md, "Migrate a legacy database") on pgsnap's real
migrations: a legacy database taken to the enforced state by one `pgsnap migrate`; the refusal
while NULLs remain; lock contention on `offers`; `--no-backfill`."""

import threading

import psycopg
import pytest

from pgsnap import deploy, resources
from tests import helpers as h
from tests.legacy_data import (
    EVENT_COPY,
    OLD_COPY,
    SNAPSHOT_TABLES,
    STALE,
    alone_ids,
    applied,
    attnotnull,
    enforcement_ids,
    expected_snapshots,
    journey_order,
    migration_ids,
    null_counts,
    runs,
    seed_legacy_journey,
    snapshot_constraints,
    snapshots,
)

IDS = migration_ids()
BASELINE = "0001.baseline-schema"
ENFORCE_TP = "0005.enforce-target-populations-snapshot"
ENFORCE_OFFERS = "0006.enforce-offers-snapshot"
ENFORCE_EVENTS = "0007.enforce-ad-events-snapshot"
JOURNEY = journey_order()  # what one `pgsnap migrate` applies to an empty database, in order
ENFORCING = [m for m in JOURNEY if m in enforcement_ids()]  # the enforcement steps, last
PLAIN = [m for m in JOURNEY[1:] if m not in ENFORCING]  # the plain migrations after the baseline
FIRST_STEP = [m for m in PLAIN if m not in alone_ids()]  # one transaction; then each alone


def sql_files() -> int:
    """sql/ is deployed whole on every migrate: how many files (read when the test runs)."""
    return len(list(resources.sql_dir().glob("*.sql")))

STOPPED = f"stopped before {ENFORCE_TP} (--no-backfill): run `pgsnap backfill`, then `pgsnap migrate`\n"
ENFORCED_CONSTRAINTS = {f"{t}_snapshot_shape": True for t in SNAPSHOT_TABLES}
MID_JOURNEY_CONSTRAINTS = {**{f"{t}_snapshot_shape": False for t in SNAPSHOT_TABLES},
                           **{f"{t}_snapshot_not_null": False for t in SNAPSHOT_TABLES}}


def applying(ids: list[str]) -> str:
    return "".join(f"applying {mid}\n" for mid in ids)


def test_the_migration_ids_this_file_relies_on():
    assert IDS[:7] == [BASELINE, "0002.pgsnap-schema", "0003.scheduler", "0004.snapshot-checks",
                       ENFORCE_TP, ENFORCE_OFFERS, ENFORCE_EVENTS]
    assert ENFORCING[:3] == [ENFORCE_TP, ENFORCE_OFFERS, ENFORCE_EVENTS]
    assert JOURNEY == [BASELINE, *PLAIN, *ENFORCING] and PLAIN[:3] == IDS[1:4]


def stage_legacy(cli, dsn) -> dict:
    """`pgsnap migrate --to 0001.baseline-schema`, then the legacy rows."""
    result = cli("migrate", "--to", BASELINE, dsn=dsn)
    assert (result.exit_code, result.stdout, result.stderr) == (0, f"applying {BASELINE}\n", "")
    with psycopg.connect(dsn, autocommit=True) as c:
        return seed_legacy_journey(c)


def assert_enforced(dsn):
    assert applied(dsn) == JOURNEY
    with psycopg.connect(dsn) as c:
        assert null_counts(c) == dict.fromkeys(SNAPSHOT_TABLES, 0)
        assert attnotnull(c) == dict.fromkeys(SNAPSHOT_TABLES, True)
        assert snapshot_constraints(c) == ENFORCED_CONSTRAINTS  # no *_snapshot_not_null left


def test_legacy_journey_one_migrate_reaches_the_enforced_state(cli, empty_db_dsn):
    legacy = stage_legacy(cli, empty_db_dsn)
    result = cli("migrate", dsn=empty_db_dsn)
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout == (
        applying(PLAIN) + "backfilling NULL snapshots\n" + applying(ENFORCING)
        + "backfilled target_populations 3, offers 6, ad_events 10\n"
        f"deployed {sql_files()} sql/ files\n"
    )
    assert_enforced(empty_db_dsn)
    with psycopg.connect(empty_db_dsn) as c:
        assert runs(c) == [("succeeded", 1, 3, 6, 10, None)]  # the journey's backfill is a recorded run
        # 0002 kept M1's row in the band the rule picks (B1: most groups), dropped the B3 one
        assert h.rows(c, "SELECT id, target_band_id, me_file_id FROM target_populations ORDER BY id") == [
            (1, h.B1, h.M1), (3, h.B2, h.M2), (4, h.B3, h.M3), (5, h.B2, h.M5)]
        expected = expected_snapshots(c, legacy)
        for table in SNAPSHOT_TABLES:
            assert snapshots(c, table) == expected[table], table
        # spelled out, the rules that matter most
        built = lambda m, b: h.build_snapshot(c, m, b)  # noqa: E731
        tp, offers, events = (snapshots(c, t) for t in SNAPSHOT_TABLES)
        assert tp[1] == built(h.M1, h.B1)
        assert tp[3] == STALE  # a filled population is never overwritten
        assert tp[5] == built(h.M5, h.B2) == h.snapshot(
            [h.SEX, "Sex (Biological)", 1, [[h.FEMALE, "Female", 2]]],
            [h.HOME_ZIP, "Home Zip Code", 1, [[h.ZIP_02140, "02140", 2140]]])  # {} rebuilt; blank -> name
        assert offers[2] == STALE  # the population was filled long before (the original never repaired it)
        assert offers[4] == built(h.M1, h.B3)  # its population is gone: built
        assert offers[6] == OLD_COPY
        assert events[2] == events[6] == events[9] == STALE
        assert events[5] == OLD_COPY and events[8] == EVENT_COPY
        assert events[10] == h.EMPTY_SNAPSHOT
    # a second migrate has nothing to do
    again = cli("migrate", dsn=empty_db_dsn)
    assert (again.exit_code, again.stdout) == (
        0, f"nothing to apply: the database is up to date\ndeployed {sql_files()} sql/ files\n")


def test_empty_database_one_migrate_reaches_the_enforced_state(cli, empty_db_dsn):
    result = cli("migrate", dsn=empty_db_dsn)
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout == (applying([BASELINE, *PLAIN]) + "backfilling NULL snapshots\n"
                             + applying(ENFORCING) + f"deployed {sql_files()} sql/ files\n")
    assert_enforced(empty_db_dsn)


def test_no_backfill_stops_before_enforcement(cli, empty_db_dsn):
    stage_legacy(cli, empty_db_dsn)
    result = cli("migrate", "--no-backfill", dsn=empty_db_dsn)
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout == applying(PLAIN) + f"{STOPPED}deployed {sql_files()} sql/ files\n"
    assert applied(empty_db_dsn) == [BASELINE, *PLAIN]
    with psycopg.connect(empty_db_dsn) as c:
        assert null_counts(c) == {"target_populations": 3, "offers": 6, "ad_events": 10}  # nothing filled
        assert attnotnull(c) == dict.fromkeys(SNAPSHOT_TABLES, False)
        assert snapshot_constraints(c) == MID_JOURNEY_CONSTRAINTS
        # new NULLs are refused at once, legacy ones tolerated
        with pytest.raises(psycopg.errors.CheckViolation) as refused:
            c.execute("UPDATE target_populations SET matching_tags_snapshot = NULL WHERE id = 3")
        assert refused.value.diag.message_primary == (
            'new row for relation "target_populations" violates check constraint '
            '"target_populations_snapshot_not_null"')
    # run again: it stops at the same place, fills nothing, and leaves sql/ (unchanged) alone
    again = cli("migrate", "--no-backfill", dsn=empty_db_dsn)
    assert (again.exit_code, again.stdout) == (0, STOPPED)
    # `pgsnap backfill`, then `pgsnap migrate`, as the message says
    filled = cli("backfill", dsn=empty_db_dsn)
    assert (filled.exit_code, filled.stdout) == (
        0, "backfill run 1 succeeded: 1 batches; filled target_populations 3, offers 6, ad_events 10\n")
    done = cli("migrate", dsn=empty_db_dsn)
    assert (done.exit_code, done.stdout) == (
        0, "backfilling NULL snapshots\n" + applying(ENFORCING) + f"deployed {sql_files()} sql/ files\n")
    assert_enforced(empty_db_dsn)


def test_refusal_while_nulls_remain_applies_no_enforcement(cli, empty_db_dsn):
    """NULL rows the backfill cannot take (another session holds them) -> migrate refuses with the
    counts and the command; the fillable rows are filled; no enforcement step is applied."""
    stage_legacy(cli, empty_db_dsn)
    assert cli("migrate", "--no-backfill", dsn=empty_db_dsn).exit_code == 0
    holder = psycopg.connect(empty_db_dsn, autocommit=False)
    try:
        # population 4 (NULL), offer 1 (NULL) and so its ad_event 1 stay out of the backfill's reach
        holder.execute("SELECT 1 FROM target_populations WHERE id = 4 FOR UPDATE")
        holder.execute("SELECT 1 FROM offers WHERE id = 1 FOR UPDATE")
        result = cli("migrate", dsn=empty_db_dsn)
        assert result.exit_code == 1
        assert result.stderr == (
            "error: cannot enforce NOT NULL: 3 NULL snapshots remain "
            "(target_populations 1, offers 1, ad_events 1); run `pgsnap backfill`, then `pgsnap migrate`\n")
        assert result.stdout == "backfilling NULL snapshots\n"
        assert applied(empty_db_dsn) == [BASELINE, *PLAIN]
        with psycopg.connect(empty_db_dsn) as c:
            assert attnotnull(c) == dict.fromkeys(SNAPSHOT_TABLES, False)
            assert snapshot_constraints(c) == MID_JOURNEY_CONSTRAINTS
            assert h.rows(c, "SELECT 'tp', id FROM target_populations WHERE matching_tags_snapshot IS NULL"
                             " UNION ALL SELECT 'offers', id FROM offers"
                             " WHERE matching_tags_snapshot IS NULL"
                             " UNION ALL SELECT 'ad_events', id FROM ad_events"
                             " WHERE matching_tags_snapshot IS NULL ORDER BY 1, 2"
                             ) == [("ad_events", 1), ("offers", 1), ("tp", 4)]
    finally:
        holder.close()
    result = cli("migrate", dsn=empty_db_dsn)
    assert (result.exit_code, result.stderr) == (0, "")
    assert_enforced(empty_db_dsn)


def test_refusal_while_another_backfill_run_is_active(cli, empty_db_dsn):
    """A safety-net run is busy (held inside its first batch): the journey's backfill skips, so
    enforcement refuses with every NULL still counted; no enforcement step is applied."""
    stage_legacy(cli, empty_db_dsn)
    assert cli("migrate", "--no-backfill", dsn=empty_db_dsn).exit_code == 0
    with psycopg.connect(empty_db_dsn, autocommit=True) as c:
        h.execute(c, """
            CREATE FUNCTION public.test_hold() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN PERFORM pg_advisory_xact_lock_shared(4242); RETURN NEW; END $$;
            CREATE TRIGGER test_hold BEFORE UPDATE ON target_populations
               FOR EACH ROW EXECUTE FUNCTION public.test_hold()""")
        h.execute(c, "SELECT pg_advisory_lock(4242)")
        other = psycopg.connect(empty_db_dsn, autocommit=True)
        busy = threading.Thread(target=lambda: other.execute("CALL pgsnap.backfill_missing_snapshots()"))
        busy.start()
        try:
            h.wait_until(lambda: h.rows(c, "SELECT 1 FROM pg_stat_activity WHERE pid = %s"
                                           " AND wait_event = 'advisory'", (other.info.backend_pid,)),
                         what="the other run to be busy")
            result = cli("migrate", dsn=empty_db_dsn)
            assert (result.exit_code, result.stdout, result.stderr) == (
                1, "backfilling NULL snapshots\n",
                "error: cannot enforce NOT NULL: 19 NULL snapshots remain (target_populations 3, "
                "offers 6, ad_events 10); run `pgsnap backfill`, then `pgsnap migrate`\n")
            assert applied(empty_db_dsn) == [BASELINE, *PLAIN]
            assert attnotnull(c) == dict.fromkeys(SNAPSHOT_TABLES, False)
            assert snapshot_constraints(c) == MID_JOURNEY_CONSTRAINTS
            assert runs(c) == [("running", 0, 0, 0, 0, None), ("skipped", 0, 0, 0, 0, None)]
        finally:
            h.execute(c, "SELECT pg_advisory_unlock(4242)")
            busy.join(60)
            other.close()
        h.execute(c, "DROP TRIGGER test_hold ON target_populations")
        assert runs(c)[0] == ("succeeded", 1, 3, 6, 10, None)  # the other run did the work
    result = cli("migrate", dsn=empty_db_dsn)
    assert (result.exit_code, result.stderr) == (0, "")
    assert_enforced(empty_db_dsn)


def _blocked_migrate_message(blocker, dsn, tables):
    with psycopg.connect(dsn) as c:
        xact_start = c.execute("SELECT xact_start FROM pg_stat_activity WHERE pid = %s",
                               [blocker.info.backend_pid]).fetchone()[0]
    return (
        f"error: could not lock {tables} after 3 attempts (lock_timeout 100ms); blocked by pid "
        f"{blocker.info.backend_pid} (blocker, idle in transaction, since {xact_start:%Y-%m-%d %H:%M:%S%z}: "
        f"{blocker_query(blocker)}); nothing was changed by this step; "
        "re-run `pgsnap migrate` when it is gone\n")


def blocker_query(blocker) -> str:
    with psycopg.connect(blocker.info.dsn) as c:
        return c.execute("SELECT query FROM pg_stat_activity WHERE pid = %s",
                         [blocker.info.backend_pid]).fetchone()[0]


def retries(what: str, n: int) -> str:
    """The lines a lock-guarded step prints before each retry (backoff 0.2s, doubling)."""
    return "".join(f"could not {what} within lock_timeout 100ms; "
                   f"retry {i} of {n} in {0.2 * 2 ** (i - 1):g}s\n" for i in range(1, n + 1))


def test_lock_contention_on_offers_gives_up_naming_table_and_blocker_then_a_rerun_finishes(cli, empty_db_dsn):
    legacy = stage_legacy(cli, empty_db_dsn)
    assert cli("migrate", "--no-backfill", dsn=empty_db_dsn).exit_code == 0
    blocker = psycopg.connect(empty_db_dsn, autocommit=False, application_name="blocker")
    try:
        blocker.execute("LOCK TABLE offers IN ACCESS SHARE MODE")
        result = cli("migrate", "--lock-timeout", "100ms", "--lock-retries", "2", dsn=empty_db_dsn)
        assert result.exit_code == 3
        assert result.stderr == _blocked_migrate_message(blocker, empty_db_dsn, "table offers")
        # three attempts, two retries: bounded, no endless wait
        assert result.stdout == (
            f"backfilling NULL snapshots\napplying {ENFORCE_TP}\napplying {ENFORCE_OFFERS}\n"
            + retries("lock table offers", 2))
        # consistent: target_populations enforced, offers untouched by its failed step, ad_events after it
        assert applied(empty_db_dsn) == [BASELINE, *PLAIN, ENFORCE_TP]
        with psycopg.connect(empty_db_dsn) as c:
            assert attnotnull(c) == {"target_populations": True, "offers": False, "ad_events": False}
            assert snapshot_constraints(c) == {
                "target_populations_snapshot_shape": True,
                "offers_snapshot_shape": False, "offers_snapshot_not_null": False,  # VALIDATE rolled back
                "ad_events_snapshot_shape": False, "ad_events_snapshot_not_null": False}
            assert null_counts(c) == dict.fromkeys(SNAPSHOT_TABLES, 0)  # the backfill did its part
    finally:
        blocker.commit()
        blocker.close()
    rerun = cli("migrate", "--lock-timeout", "100ms", "--lock-retries", "2", dsn=empty_db_dsn)
    assert (rerun.exit_code, rerun.stderr) == (0, "")
    assert rerun.stdout == (
        "backfilling NULL snapshots\n" + applying(ENFORCING[1:]) + f"deployed {sql_files()} sql/ files\n")
    assert_enforced(empty_db_dsn)
    with psycopg.connect(empty_db_dsn) as c:
        expected = expected_snapshots(c, legacy)
        for table in SNAPSHOT_TABLES:
            assert snapshots(c, table) == expected[table], table


def test_lock_contention_retries_until_the_blocker_commits(cli, empty_db_dsn):
    """The blocker commits only once migrate has said it retries; migrate then finishes."""
    stage_legacy(cli, empty_db_dsn)
    assert cli("migrate", "--no-backfill", dsn=empty_db_dsn).exit_code == 0
    blocker = psycopg.connect(empty_db_dsn, autocommit=False)
    blocker.execute("LOCK TABLE offers IN ACCESS SHARE MODE")
    said: list[str] = []
    outcome: list = []

    def run():
        try:
            outcome.append(deploy.migrate(empty_db_dsn, lock_timeout="100ms", lock_retries=50,
                                          backoff_cap=0.2, log=said.append))
        except Exception as exc:  # reported by the assertion below
            outcome.append(exc)

    migrator = threading.Thread(target=run)
    migrator.start()
    try:
        h.wait_until(lambda: any("retry 1 of 50" in line for line in said), what="a retry")
    finally:
        blocker.commit()
        blocker.close()
        migrator.join(120)
    assert not migrator.is_alive()
    (result,) = outcome
    assert result.applied == ENFORCING
    assert said[:3] == ["backfilling NULL snapshots", f"applying {ENFORCE_TP}", f"applying {ENFORCE_OFFERS}"]
    assert said[3] == "could not lock table offers within lock_timeout 100ms; retry 1 of 50 in 0.2s"
    assert said[-1] == f"applying {ENFORCING[-1]}"
    assert_enforced(empty_db_dsn)


@pytest.mark.parametrize("table", ["offers", "target_populations"])
def test_lock_contention_from_a_legacy_database_names_the_table(cli, empty_db_dsn, table):
    """From a legacy database the plain migrations with a transaction are one step (0002 locks
    target_bands and target_populations, 0004 all three snapshot tables, and so on): under
    --lock-timeout, with retries, naming the tables and the blocker; nothing of the step is
    applied."""
    stage_legacy(cli, empty_db_dsn)
    blocker = psycopg.connect(empty_db_dsn, autocommit=False, application_name="blocker")
    blocker.execute(f"LOCK TABLE {table} IN ACCESS SHARE MODE")
    try:
        result = cli("migrate", "--lock-timeout", "100ms", "--lock-retries", "2", dsn=empty_db_dsn)
        migrations = {m.id: m for m in deploy.read_migrations()}
        locked = dict.fromkeys(t for mid in FIRST_STEP if (mk := deploy.marker_of(migrations[mid]))
                               for t in mk.tables)
        tables = "tables " + ", ".join(locked)
        assert (result.exit_code, result.stderr) == (
            3, _blocked_migrate_message(blocker, empty_db_dsn, tables))
        assert result.stdout == applying(FIRST_STEP) + retries(f"lock {tables}", 2)
        assert applied(empty_db_dsn) == [BASELINE]
    finally:
        blocker.commit()
        blocker.close()
    result = cli("migrate", dsn=empty_db_dsn)
    assert (result.exit_code, result.stderr) == (0, "")
    assert_enforced(empty_db_dsn)
