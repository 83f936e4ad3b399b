"""How `pgsnap migrate` applies migrations: enforcement steps last, each step (its migrations,
the `sql/` deploy and the yoyo records) in one transaction, the application working at every
intermediate state, options refused before anything is applied."""

import shutil
from pathlib import Path

import psycopg
import pytest

from pgsnap import deploy, resources
from scripts.dump_schema import dump_schema
from tests.helpers import db_state, execute, rows, seed_worked_example, value
from tests.legacy_data import alone_ids, applied, enforcement_ids, journey_order, seed_legacy_journey

JOURNEY = journey_order()  # what one `pgsnap migrate` applies to an empty database, in order
BASELINE = JOURNEY[0]
ENFORCING = [m for m in JOURNEY if m in enforcement_ids()]
PLAIN = [m for m in JOURNEY[1:] if m not in ENFORCING]
FIRST_STEP = [m for m in PLAIN if m not in alone_ids()]  # one transaction; then each alone
FIXTURE_HOME = Path(__file__).resolve().parent / "fixtures" / "home"


def state(dsn: str, skip: tuple[str, ...] = ()) -> tuple[str, dict]:
    """The whole schema (pg_dump) and every row of public and pgsnap, yoyo's tables included."""
    with psycopg.connect(dsn) as c:
        return dump_schema(dsn), {t: r for t, r in db_state(c).items() if t not in skip}


class Crash(Exception):
    pass


def crash_before_records(monkeypatch) -> None:
    """From now on, a "crash" between a step's statements (its migrations and sql/, executed)
    and its records."""
    def crash(backend, step):
        raise Crash(f"crashed after the statements of {[m.id for m in step]}")

    monkeypatch.setattr(deploy, "_record", crash)


def legacy(dsn: str) -> str:
    deploy.migrate(dsn, to=BASELINE)
    with psycopg.connect(dsn, autocommit=True) as c:
        seed_legacy_journey(c)
    return dsn


def test_a_crash_before_the_records_leaves_the_legacy_database_exactly_as_it_was(empty_db_dsn, monkeypatch):
    legacy(empty_db_dsn)
    before = state(empty_db_dsn)
    crash_before_records(monkeypatch)
    with pytest.raises(Crash) as crashed:
        deploy.migrate(empty_db_dsn)
    assert str(crashed.value) == f"crashed after the statements of {FIRST_STEP}"
    assert state(empty_db_dsn) == before
    monkeypatch.undo()
    assert deploy.migrate(empty_db_dsn).applied == JOURNEY[1:]  # nothing half-applied stands in the way


def test_a_crash_in_an_enforcement_step_leaves_it_unapplied(empty_db_dsn, monkeypatch):
    legacy(empty_db_dsn)
    deploy.migrate(empty_db_dsn, backfill=False)
    deploy.migrate(empty_db_dsn, to=ENFORCING[0])  # backfill, then the first enforcement step
    before = state(empty_db_dsn, skip=("pgsnap.backfill_runs",))

    crash_before_records(monkeypatch)
    with pytest.raises(Crash, match=ENFORCING[1]):
        deploy.migrate(empty_db_dsn)
    assert state(empty_db_dsn, skip=("pgsnap.backfill_runs",)) == before  # the backfill's run aside
    assert applied(empty_db_dsn) == [BASELINE, *PLAIN, ENFORCING[0]]


def test_enforcement_steps_come_after_every_plain_migration_they_do_not_depend_on(tmp_path, monkeypatch,
                                                                                  empty_db_dsn, cli):
    """A plain migration numbered after the enforcement step (0005, depending on 0002 only)
    is applied with the first step, before the backfill and the enforcement."""
    home = tmp_path / "home"
    shutil.copytree(FIXTURE_HOME, home)
    (home / "migrations" / "0005.things-extra.sql").write_text(
        "-- depends: 0002.pgsnap-schema\nALTER TABLE things ADD COLUMN extra text;\n")
    (home / "sql" / "20_extra.sql").write_text(
        "CREATE OR REPLACE VIEW pgsnap.extras AS SELECT id, extra FROM public.things;\n")
    monkeypatch.setenv("PGSNAP_HOME", str(home))
    result = cli("migrate", dsn=empty_db_dsn)
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout == (
        "applying 0001.things\napplying 0002.pgsnap-schema\napplying 0005.things-extra\n"
        "backfilling NULL snapshots\napplying 0003.enforce-things\napplying 0004.things-note\n"
        "deployed 2 sql/ files\n")
    assert applied(empty_db_dsn) == ["0001.things", "0002.pgsnap-schema", "0005.things-extra",
                                     "0003.enforce-things", "0004.things-note"]


def test_to_inside_a_step_whose_sql_needs_the_rest_of_it_applies_nothing(tmp_path, monkeypatch,
                                                                           empty_db_dsn, cli):
    """sql/ deployed without the rest of the step would fail: the application would run with
    migrations but without their behaviour. migrate refuses, applying nothing, and names the
    step's end."""
    home = tmp_path / "home"
    shutil.copytree(FIXTURE_HOME, home)
    (home / "migrations" / "0005.things-extra.sql").write_text(
        "-- depends: 0002.pgsnap-schema\nALTER TABLE things ADD COLUMN extra text;\n")
    (home / "sql" / "20_extra.sql").write_text(
        "CREATE OR REPLACE VIEW pgsnap.extras AS SELECT id, extra FROM public.things;\n")
    monkeypatch.setenv("PGSNAP_HOME", str(home))
    result = cli("migrate", "--to", "0002.pgsnap-schema", dsn=empty_db_dsn)
    assert (result.exit_code, result.stderr) == (2, (
        "error: --to 0002.pgsnap-schema stops inside a step whose sql/ needs the rest of it, up to "
        '0005.things-extra (deploying sql/20_extra.sql failed: 42703: column "extra" does not exist); '
        "nothing was applied: use --to 0005.things-extra\n"))
    assert result.stdout == "applying 0001.things\napplying 0002.pgsnap-schema\n"
    assert applied(empty_db_dsn) == []
    with psycopg.connect(empty_db_dsn) as c:
        assert rows(c, "SELECT to_regclass('things'), to_regnamespace('pgsnap')") == [(None, None)]
    # --to 0001 ends inside the step too, but sql/ has nothing to do there yet: it is applied
    assert cli("migrate", "--to", "0001.things", dsn=empty_db_dsn).exit_code == 0
    result = cli("migrate", "--to", "0005.things-extra", dsn=empty_db_dsn)
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout == "applying 0002.pgsnap-schema\napplying 0005.things-extra\ndeployed 2 sql/ files\n"
    with psycopg.connect(empty_db_dsn) as c:
        assert deploy.deployed_checksum(c) == deploy.sql_checksum(sorted((home / "sql").glob("*.sql")))


def app_writes(conn, n: int) -> list[tuple]:
    """What the legacy application does: a population row without target_id (and with a
    snapshot), then an offer without a snapshot. Returns the rows written."""
    execute(conn, "INSERT INTO me_files (id) VALUES (%s)", (100 + n,))
    execute(conn, "INSERT INTO target_populations (target_band_id, me_file_id, matching_tags_snapshot)"
                  " VALUES (1, %s, '{\"tags\": []}')", (100 + n,))
    execute(conn, "INSERT INTO offers (campaign_id, me_file_id, target_band_id, offer_amt)"
                  " VALUES (1, %s, 1, 1.00)", (100 + n,))
    return rows(conn, "SELECT o.me_file_id, o.matching_tags_snapshot FROM offers o WHERE o.me_file_id = %s",
                (100 + n,))


def test_the_application_keeps_working_at_every_intermediate_state(empty_db_dsn, cli):
    """`migrate --to` each migration in turn: every state it leaves (or refuses to leave) takes the
    legacy application's writes."""
    deploy.migrate(empty_db_dsn, to=BASELINE)
    with psycopg.connect(empty_db_dsn, autocommit=True) as c:
        seed_worked_example(c)
        execute(c, "INSERT INTO campaigns (id, target_id, title) VALUES (1, 1, 'c')")
        assert app_writes(c, 0) == [(100, None)]  # legacy: no snapshot for the offer
    reached = [BASELINE]
    for n, mid in enumerate(JOURNEY[1:], 1):
        result = cli("migrate", "--to", mid, dsn=empty_db_dsn)
        if result.exit_code == 0:
            reached.append(mid)
        else:  # a state inside a step whose sql/ needs the rest of it is never reached
            assert (result.exit_code, result.stderr.split(" stops inside a step")[0]) == (
                2, f"error: --to {mid}")
        assert (applied(empty_db_dsn), result.stderr if result.exit_code == 0 else "") == (
            JOURNEY[: JOURNEY.index(reached[-1]) + 1], ""), mid
        with psycopg.connect(empty_db_dsn, autocommit=True) as c:
            snapshot = None if reached[-1] == BASELINE else {"tags": []}  # sql/ from the first step on
            assert app_writes(c, n) == [(100 + n, snapshot)], mid
            if reached[-1] != BASELINE:
                assert value(c, "SELECT target_id FROM target_populations WHERE me_file_id = %s",
                             (100 + n,)) == 1
    assert reached[-1] == JOURNEY[-1] and set(PLAIN[-1:] + ENFORCING) <= set(reached)  # every step's end


def test_lock_timeout_with_a_space_works_and_a_bad_one_is_refused_before_anything(empty_db_dsn, cli):
    before = state(empty_db_dsn)
    for bad, why in [("2 parsecs", "invalid lock timeout '2 parsecs': use e.g. 2s, 500ms, 1min"),
                     ("99999999999999 d", "invalid lock timeout '99999999999999 d': "
                                          'invalid value for parameter "lock_timeout": "99999999999999 d"')]:
        result = cli("migrate", "--lock-timeout", bad, dsn=empty_db_dsn)
        assert (result.exit_code, result.stdout, result.stderr) == (2, "", f"error: {why}\n")
        assert state(empty_db_dsn) == before
    result = cli("migrate", "--lock-timeout", "2 s", dsn=empty_db_dsn)
    assert (result.exit_code, result.stderr) == (0, "")
    assert applied(empty_db_dsn) == JOURNEY


# -- a migration without a transaction (0013.tag-value-lookup: CREATE INDEX CONCURRENTLY) ----------
TAG_VALUE_LOOKUP = "0013.tag-value-lookup"
TRAIT_INDEX = "me_file_tags_trait_id_me_file_id_idx"


def trait_indexes(dsn: str) -> list[tuple]:
    """(name, definition, valid) of me_file_tags' indexes led by trait_id."""
    with psycopg.connect(dsn) as c:
        return rows(c, "SELECT c.relname, pg_get_indexdef(i.indexrelid), i.indisvalid FROM pg_index i"
                       " JOIN pg_class c ON c.oid = i.indexrelid"
                       " WHERE i.indrelid = 'public.me_file_tags'::regclass AND c.relname LIKE %s ORDER BY 1",
                    ("me_file_tags_trait_id%",))


def index(include: str = "") -> tuple:
    definition = f"CREATE INDEX {TRAIT_INDEX} ON public.me_file_tags USING btree (trait_id, me_file_id)"
    return (TRAIT_INDEX, definition + include, True)


def test_a_run_after_a_failed_concurrent_build_starts_over_and_sql_follows(empty_db_dsn):
    """0013 runs statement by statement outside a transaction, and so does its rollback, which
    restores the index without tag_value. After a build that failed (its INVALID index left under
    the new name), migrate drops the leftover and builds again; the index replaces the old one
    under the old name; sql/, which that step cannot deploy, is deployed after it when stale."""
    before = "0012.band-lookup"
    assert deploy.migrate(empty_db_dsn).applied == JOURNEY
    assert trait_indexes(empty_db_dsn) == [index(" INCLUDE (tag_value)")]
    assert deploy.rollback(empty_db_dsn, to=before) == [TAG_VALUE_LOOKUP]
    assert TAG_VALUE_LOOKUP not in applied(empty_db_dsn) and trait_indexes(empty_db_dsn) == [index()]
    with psycopg.connect(empty_db_dsn, autocommit=True) as c:
        execute(c, "CREATE INDEX me_file_tags_trait_id_me_file_id_value_idx ON me_file_tags (trait_id)")
        execute(c, "UPDATE pg_index SET indisvalid = false"
                   " WHERE indexrelid = 'me_file_tags_trait_id_me_file_id_value_idx'::regclass")
        execute(c, "UPDATE pgsnap.settings SET value = 'stale' WHERE key = 'sql_checksum'")
    result = deploy.migrate(empty_db_dsn)
    assert (result.applied, result.sql_files) == ([TAG_VALUE_LOOKUP], len(resources.sql_files()))
    assert trait_indexes(empty_db_dsn) == [index(" INCLUDE (tag_value)")]
    with psycopg.connect(empty_db_dsn) as c:
        assert deploy.deployed_checksum(c) == deploy.sql_checksum(resources.sql_files())
    assert deploy.rollback(empty_db_dsn, to=before) == [TAG_VALUE_LOOKUP]
    result = deploy.migrate(empty_db_dsn)   # sql/ is current: nothing to deploy after the step
    assert (result.applied, result.sql_files) == ([TAG_VALUE_LOOKUP], 0)
    assert trait_indexes(empty_db_dsn) == [index(" INCLUDE (tag_value)")]
