"""pgsnap.deploy on a miniature project (tests/fixtures/home): the NOT NULL journey's backfill,
refusal, --no-backfill stop, lock_timeout retries and blockers, rollbacks and sql/ deployment."""

import re
import threading
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from yoyo.connections import parse_uri

from pgsnap import deploy, resources
from pgsnap.errors import PgsnapError
from tests.helpers import wait_until

FIXTURE_HOME = Path(__file__).resolve().parent / "fixtures" / "home"
IDS = ["0001.things", "0002.pgsnap-schema", "0003.enforce-things", "0004.things-note"]


@pytest.fixture
def home(monkeypatch):
    monkeypatch.setenv("PGSNAP_HOME", str(FIXTURE_HOME))
    return FIXTURE_HOME


def stage(dsn, legacy_ids=()) -> str:
    """Migrate up to just before the enforcement step, with legacy NULL rows inserted first
    (once 0002's NOT VALID check exists, new NULLs are refused)."""
    deploy.migrate(dsn, to="0001.things")
    with psycopg.connect(dsn) as c:
        c.cursor().executemany("INSERT INTO things (id) VALUES (%s)", [(i,) for i in legacy_ids])
    deploy.migrate(dsn, to="0002.pgsnap-schema")
    return dsn


@pytest.fixture
def staged(home, empty_db_dsn):
    return stage(empty_db_dsn)


def applied(dsn) -> list[str]:
    with psycopg.connect(dsn) as c:
        return list(deploy.applied_migrations(c))


def snap_nullable(dsn) -> str:
    with psycopg.connect(dsn) as c:
        return c.execute("SELECT is_nullable FROM information_schema.columns"
                         " WHERE table_name = 'things' AND column_name = 'snap'").fetchone()[0]


def test_locations_follow_pgsnap_home(home):
    assert resources.migrations_dir() == FIXTURE_HOME / "migrations"
    assert resources.sql_dir() == FIXTURE_HOME / "sql"
    assert [m.id for m in deploy.read_migrations()] == IDS


def test_markers_are_read_from_the_leading_comment_block(home):
    markers = {m.id: deploy.marker_of(m) for m in deploy.read_migrations()}
    assert markers == {IDS[0]: None, IDS[1]: None, IDS[2]: deploy.Marker("enforce", ("things",)),
                       IDS[3]: None}


@pytest.mark.parametrize("line, marker", [
    ("-- pgsnap: enforce offers", deploy.Marker("enforce", ("offers",))),
    ("--pgsnap: LOCK offers, ad_events public.bids",
     deploy.Marker("lock", ("offers", "ad_events", "public.bids"))),
    ("-- pgsnap: the engine", None),
    ("-- pgsnap: enforce", None),
])
def test_marker_syntax(tmp_path, line, marker):
    path = tmp_path / "0001.m.sql"
    path.write_text(f"-- a comment\n{line}\n-- depends:\nSELECT 1;\n-- pgsnap: lock late\n")
    (migration,) = deploy.read_migrations(tmp_path)
    assert deploy.marker_of(migration) == marker


def test_migrate_backfills_in_batches_then_enforces(home, empty_db_dsn):
    staged = stage(empty_db_dsn, range(1, 1201))
    seen = []
    result = deploy.migrate(staged, backfill_batch_size=500,
                            on_progress=lambda done, total: seen.append((done, total)))
    assert seen == [(500, 1200), (1000, 1200), (1200, 1200)]
    assert result.backfilled == {"target_populations": 1200, "offers": 0, "ad_events": 0}
    assert result.applied == IDS[2:]
    assert result.stopped is None
    assert result.sql_files == 1
    assert applied(staged) == IDS
    assert snap_nullable(staged) == "NO"


def test_enforcement_refuses_while_nulls_remain_and_keeps_earlier_work(home, empty_db_dsn, cli):
    staged = stage(empty_db_dsn, [-2, -1, 1, 2, 3])  # negative ids cannot be backfilled
    result = cli("migrate", dsn=staged)
    assert (result.exit_code, result.stderr) == (
        1,
        "error: cannot enforce NOT NULL: 2 NULL snapshots remain "
        "(target_populations 2, offers 0, ad_events 0); run `pgsnap backfill`, then `pgsnap migrate`\n",
    )
    assert applied(staged) == IDS[:2]
    assert snap_nullable(staged) == "YES"
    with psycopg.connect(staged) as c:  # the batches that could be filled were committed
        assert c.execute("SELECT id FROM things WHERE snap IS NULL ORDER BY id").fetchall() == [(-2,), (-1,)]
        c.execute("UPDATE things SET snap = '{\"tags\": []}' WHERE id < 0")
    result = cli("migrate", dsn=staged)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "backfilling NULL snapshots\napplying 0003.enforce-things\n" \
                            "applying 0004.things-note\ndeployed 1 sql/ files\n"
    assert applied(staged) == IDS


def test_no_backfill_stops_before_the_first_enforcement(home, empty_db_dsn, cli):
    result = cli("migrate", "--no-backfill", dsn=empty_db_dsn)
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout == (
        "applying 0001.things\napplying 0002.pgsnap-schema\n"
        "stopped before 0003.enforce-things (--no-backfill): run `pgsnap backfill`, then `pgsnap migrate`\n"
        "deployed 1 sql/ files\n"
    )
    assert applied(empty_db_dsn) == IDS[:2]
    with psycopg.connect(empty_db_dsn) as c:  # sql/ was deployed so that `pgsnap backfill` can run
        assert c.execute("SELECT to_regproc('pgsnap.backfill_missing_snapshots') IS NOT NULL").fetchone()[0]


def test_enforcement_under_lock_gives_up_naming_the_blocker(staged):
    blocker = psycopg.connect(staged, autocommit=False, application_name="blocker")
    try:
        blocker.execute("SELECT count(*) FROM things")  # ACCESS SHARE, held: SET NOT NULL must wait
        with psycopg.connect(staged) as c:
            xact_start = c.execute("SELECT xact_start FROM pg_stat_activity WHERE pid = %s",
                                   [blocker.info.backend_pid]).fetchone()[0]
        with pytest.raises(PgsnapError) as failure:
            deploy.migrate(staged, lock_timeout="50ms", lock_retries=2, backoff_base=0.01)
        assert failure.value.exit_code == 3
        assert str(failure.value) == (
            "could not lock table things after 3 attempts (lock_timeout 50ms); blocked by pid "
            f"{blocker.info.backend_pid} (blocker, idle in transaction, "
            f"since {xact_start:%Y-%m-%d %H:%M:%S%z}: "
            "SELECT count(*) FROM things); nothing was changed by this step; "
            "re-run `pgsnap migrate` when it is gone"
        )
        assert applied(staged) == IDS[:2]
        assert snap_nullable(staged) == "YES"
        with psycopg.connect(staged) as c:  # the enforcement's first step was rolled back too
            assert c.execute("SELECT convalidated FROM pg_constraint WHERE conname = 'things_snap_not_null'"
                             ).fetchone() == (False,)
    finally:
        blocker.close()
    assert deploy.migrate(staged).applied == IDS[2:]


def test_enforcement_retries_until_the_blocker_is_gone(staged):
    """The blocker rolls back only once migrate has said it retries; migrate then finishes."""
    blocker = psycopg.connect(staged, autocommit=False)
    blocker.execute("SELECT count(*) FROM things")
    said: list[str] = []
    outcome: list = []
    migrator = threading.Thread(target=lambda: outcome.append(deploy.migrate(
        staged, lock_timeout="100ms", lock_retries=50, backoff_base=0.05, backoff_cap=0.2, log=said.append)))
    migrator.start()
    try:
        wait_until(lambda: "could not lock table things within lock_timeout 100ms; retry 1 of 50 in 0.05s"
                   in said, what="a retry")
    finally:
        blocker.rollback()
        blocker.close()
        migrator.join(120)
    (result,) = outcome
    assert result.applied == IDS[2:]
    assert said[:2] == ["backfilling NULL snapshots", "applying 0003.enforce-things"]
    assert said[-1] == "applying 0004.things-note"
    assert snap_nullable(staged) == "NO"


def test_cli_lock_failure_exits_3(staged, cli):
    with psycopg.connect(staged, autocommit=False) as blocker:
        blocker.execute("SELECT count(*) FROM things")
        result = cli("migrate", "--lock-timeout", "20ms", "--lock-retries", "0", dsn=staged)
    assert result.exit_code == 3
    assert re.fullmatch(r"error: could not lock table things after 1 attempts \(lock_timeout 20ms\); "
                        r"blocked by pid \d+ .*; nothing was changed by this step; "
                        r"re-run `pgsnap migrate` when it is gone\n", result.stderr)


def test_a_second_migrator_waits_for_the_lock_and_a_stale_lock_is_reported(staged):
    with psycopg.connect(staged) as c:
        c.execute("INSERT INTO yoyo_lock (locked, ctime, pid) VALUES (1, now(), 999999)")
    with pytest.raises(PgsnapError) as failure:
        deploy.migrate(staged, lock_wait=0.3)
    assert failure.value.exit_code == 3
    assert str(failure.value) == (
        "the migration lock is held by process 999999 (another `pgsnap migrate`?) after waiting 0.3s; "
        "if none is running any more, remove the stale lock: DELETE FROM yoyo_lock"
    )
    assert applied(staged) == IDS[:2]


def test_rollback_latest_then_down_to_an_id(home, empty_db_dsn, cli):
    deploy.migrate(empty_db_dsn, to="0003.enforce-things")
    assert deploy.rollback(empty_db_dsn) == ["0003.enforce-things"]
    assert applied(empty_db_dsn) == IDS[:2]
    assert snap_nullable(empty_db_dsn) == "YES"
    result = cli("rollback", "--to", "0001.things", "--yes", dsn=empty_db_dsn)
    assert (result.exit_code, result.stdout) == (
        0, "rollback plan: undo 1 migration, latest first\n  0002.pgsnap-schema\n"
           "rolling back 0002.pgsnap-schema\n")
    assert applied(empty_db_dsn) == IDS[:1]
    assert cli("rollback", "--to", "0001.things", dsn=empty_db_dsn).stdout == "nothing to roll back\n"


def test_rollback_refuses_a_migration_without_rollback_file(home, empty_db_dsn, cli):
    deploy.migrate(empty_db_dsn)
    result = cli("rollback", "--all", dsn=empty_db_dsn)
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == (
        "error: cannot roll back 0004.things-note: it has no 0004.things-note.rollback.sql"
        " (not safely reversible); nothing was rolled back\n"
    )
    assert applied(empty_db_dsn) == IDS


# -- sql/ deployment ---------------------------------------------------------------------------------
PLPGSQL_FILE = """\
-- a $$ body with semicolons inside, and a function calling one defined in a later file
CREATE OR REPLACE FUNCTION pgsnap.answer() RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    v int := 40;  -- ; not the end
BEGIN
    RETURN v + pgsnap.two();
END
$$;

CREATE OR REPLACE FUNCTION pgsnap.early() RETURNS int LANGUAGE sql AS $$ SELECT pgsnap.two() $$;

DO $$
BEGIN
    IF to_regclass('pgsnap.deploys') IS NULL THEN
        CREATE TABLE pgsnap.deploys (n int PRIMARY KEY);
    END IF;
    INSERT INTO pgsnap.deploys VALUES (1) ON CONFLICT DO NOTHING;
END
$$;
"""
LATER_FILE = "CREATE OR REPLACE FUNCTION pgsnap.two() RETURNS int LANGUAGE sql AS $$ SELECT 2 $$;\n"


def catalog_state(conn):
    return (
        conn.execute("SELECT proname, prosrc, oid FROM pg_proc WHERE pronamespace = 'pgsnap'::regnamespace"
                     " ORDER BY 1").fetchall(),
        conn.execute("SELECT n FROM pgsnap.deploys").fetchall(),
        conn.execute("SELECT pgsnap.answer(), pgsnap.early()").fetchone(),
    )


@pytest.fixture
def sql_files(tmp_path):
    (tmp_path / "10_answer.sql").write_text(PLPGSQL_FILE)
    (tmp_path / "20_two.sql").write_text(LATER_FILE)
    return tmp_path


def test_deploy_sql_runs_dollar_bodies_and_do_blocks_and_twice_changes_nothing(empty_db_dsn, sql_files):
    with psycopg.connect(empty_db_dsn, autocommit=True) as c:
        c.execute("CREATE SCHEMA pgsnap")
        assert [p.name for p in deploy.deploy_sql(c, sql_files)] == ["10_answer.sql", "20_two.sql"]
        first = catalog_state(c)
        assert first[1:] == ([(1,)], (42, 2))
        deploy.deploy_sql(c, sql_files)
        assert catalog_state(c) == first


def test_deploy_sql_follows_pgsnap_home(empty_db_dsn, sql_files, monkeypatch, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "sql").symlink_to(sql_files)
    monkeypatch.setenv("PGSNAP_HOME", str(home))
    with psycopg.connect(empty_db_dsn, autocommit=True) as c:
        c.execute("CREATE SCHEMA pgsnap")
        assert len(deploy.deploy_sql(c)) == 2
        assert c.execute("SELECT pgsnap.answer()").fetchone() == (42,)


def test_deploy_sql_is_one_transaction(empty_db_dsn, sql_files):
    (sql_files / "30_broken.sql").write_text("CREATE OR REPLACE FUNCTION pgsnap.broken( RETURNS int;\n")
    with psycopg.connect(empty_db_dsn, autocommit=True) as c:
        c.execute("CREATE SCHEMA pgsnap")
        with pytest.raises(PgsnapError) as failure:
            deploy.deploy_sql(c, sql_files)
        assert str(failure.value) == ('deploying sql/30_broken.sql failed: 42601: syntax error at or near '
                                      '";"; nothing was deployed')
        assert c.execute("SELECT count(*) FROM pg_proc"
                         " WHERE pronamespace = 'pgsnap'::regnamespace").fetchone() == (0,)


def test_deploy_sql_waits_for_the_pgsnap_schema(empty_db_dsn, sql_files):
    with psycopg.connect(empty_db_dsn, autocommit=True) as c:
        assert deploy.deploy_sql(c, sql_files) == []
        assert not deploy.has_pgsnap_schema(c)


# -- yoyo URLs ------------------------------------------------------------------------------------
def yoyo_connect_kwargs(url: str) -> dict[str, str]:
    """What yoyo's psycopg backend passes to psycopg.connect() for this URL (minus autocommit)."""
    uri = parse_uri(url)
    kwargs = {"dbname": uri.database, **uri.args}
    for key, value in (("user", uri.username), ("password", uri.password), ("port", uri.port),
                       ("host", uri.hostname)):
        if value is not None:
            kwargs[key] = str(value)
    return {k: v for k, v in kwargs.items() if v}


@pytest.mark.parametrize("dsn", [
    "host=127.0.0.1 port=5432 dbname=app user=postgres",
    "host=db.example port=6543 dbname=app user=al password='p@ss:w/rd #1' sslmode=require",
    "host=/var/run/postgresql dbname='my db' user=x options='-c search_path=app,public'",
    "host=h1,h2 port=5432,5433 dbname=app target_session_attrs=read-write",
    "postgresql://u:secret@[::1]:5433/db?application_name=pgsnap",
    "dbname=onlydb",
    "",
])
def test_yoyo_url_carries_every_libpq_keyword(dsn):
    url = deploy.yoyo_url(dsn)
    assert url.startswith("postgresql+psycopg://")
    assert yoyo_connect_kwargs(url) == conninfo_to_dict(dsn)
