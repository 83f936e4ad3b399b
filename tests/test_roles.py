"""The application role (sql/90_grants.sql, `pgsnap grant`, docs/operations.md "Roles and grants").

A real non-superuser role, granted by `pgsnap grant --app-role`, does everything the application
does (registers me_files, writes tags, creates offers and ad_events, launches campaigns, calls the
contract functions) and nothing else: every other write, every trigger switch and every operator
routine is refused, and a refused statement writes nothing. The grant itself is exact (the role's
privileges are compared whole with the model), idempotent, converging, and survives a redeploy.
"""

from __future__ import annotations

import uuid

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pgsnap import deploy, resources
from tests import helpers as h
from tests.legacy_data import add_bid, add_campaign

PASSWORD = "app-secret"
C1, C2 = 1, 2

READ = ("traits", "trait_groups", "trait_group_traits", "targets", "target_bands",
        "target_band_trait_groups", "campaigns", "bids", "target_populations")
WRITE = ("me_files", "me_file_tags", "offers", "ad_events")
CONTRACT = ("build_snapshot(bigint,bigint)", "band_for(bigint,bigint)", "sync_me_file(bigint)",
            "launch_campaign(bigint)", "snapshot_health()")
HELPERS = ("memberships(bigint[])", "snapshots(bigint[],bigint[])", "lock_key(text)",
           "inherited_snapshot(bigint,bigint,bigint,boolean)", "snapshot_shape_ok(jsonb)",
           "_launch_blocker(bigint)")

# The model, whole: every privilege the application role holds on any object of the database.
MODEL = (
    {("schema pgsnap", "USAGE")}
    | {(f"table public.{t}", "SELECT") for t in READ}
    | {(f"table public.{t}", p) for t in WRITE for p in ("SELECT", "INSERT", "UPDATE", "DELETE")}
    | {("column public.campaigns.launched_at", "UPDATE")}
    | {(f"function pgsnap.{f}", "EXECUTE") for f in CONTRACT + HELPERS}
    | {("table pgsnap.band_traits", "SELECT")}
)

PRIVILEGES = """
    SELECT 'schema ' || n.nspname, a.privilege_type
      FROM pg_namespace n, aclexplode(n.nspacl) a WHERE a.grantee = %(role)s::regrole
    UNION ALL
    SELECT 'table ' || n.nspname || '.' || c.relname, a.privilege_type
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(c.relacl) a
     WHERE a.grantee = %(role)s::regrole
    UNION ALL
    SELECT 'column ' || n.nspname || '.' || c.relname || '.' || att.attname, a.privilege_type
      FROM pg_attribute att JOIN pg_class c ON c.oid = att.attrelid
      JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(att.attacl) a
     WHERE a.grantee = %(role)s::regrole
    UNION ALL
    SELECT 'function ' || p.oid::regprocedure::text, a.privilege_type
      FROM pg_proc p, aclexplode(p.proacl) a WHERE a.grantee = %(role)s::regrole
"""


def privileges(conn, role: str) -> set[tuple[str, str]]:
    """Every (object, privilege) granted to `role` itself in this database."""
    quoted = sql.Identifier(role).as_string(conn)
    return set(h.rows(conn, PRIVILEGES, {"role": quoted}))


def create_role(conn, name: str, options: str = "LOGIN") -> str:
    h.execute(conn, sql.SQL("CREATE ROLE {} " + options + " PASSWORD {}").format(
        sql.Identifier(name), sql.Literal(PASSWORD)))
    return name


def drop_role(conn, name: str) -> None:
    h.execute(conn, sql.SQL("DROP OWNED BY {0}; DROP ROLE {0}").format(sql.Identifier(name)))


@pytest.fixture
def roles(conn):
    """`roles(prefix, options)` creates a uniquely named role; all are dropped after the test."""
    made = []

    def make(prefix: str = "pgsnap_app", options: str = "LOGIN") -> str:
        made.append(create_role(conn, f"{prefix}_{uuid.uuid4().hex[:8]}", options))
        return made[-1]

    yield make
    for name in reversed(made):
        drop_role(conn, name)


@pytest.fixture
def app_role(roles):
    return roles()


@pytest.fixture
def as_role(db_dsn):
    """`as_role(name)`: an autocommit connection logged in as that role (closed after the test)."""
    opened = []

    def connect(role: str) -> psycopg.Connection:
        opened.append(psycopg.connect(make_conninfo(db_dsn, user=role, password=PASSWORD), autocommit=True))
        return opened[-1]

    yield connect
    for c in opened:
        c.close()


@pytest.fixture
def world(conn):
    """Worked example, T1 populated (M1 -> B1, M2 -> B2, M3 -> B3); C1 bids on every band of T1."""
    h.seed_worked_example(conn)
    h.populate(conn, h.T1)
    add_campaign(conn, C1, h.T1)
    add_campaign(conn, C2, h.T1)
    for band, amount in ((h.B1, "1.50"), (h.B2, "0.75"), (h.B3, "0.25")):
        add_bid(conn, C1, band, amount)
    for table in WRITE:  # the seed used explicit ids; the application takes them from the sequences
        h.execute(conn, "SELECT setval(pg_get_serial_sequence(%s, 'id'), 1000)", (table,))
    return conn


@pytest.fixture
def app(world, app_role, as_role, cli):
    """The application's connection, as a role granted by `pgsnap grant`."""
    result = cli("grant", "--app-role", app_role)
    assert (result.exit_code, result.stderr) == (0, ""), result.output
    return as_role(app_role)


# -- the application at work --------------------------------------------------------------------
def test_app_role_registers_tags_offers_events_and_launches(world, app, app_role):
    conn = world
    assert h.rows(app, "SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user") == [
        (app_role, False)]

    # registration with its tags, in one transaction, ids from the identity columns
    with app.transaction():
        ada = h.value(app, "INSERT INTO me_files (display_name) VALUES ('Ada') RETURNING id")
        h.execute(app, "INSERT INTO me_file_tags (me_file_id, trait_id, tag_value) VALUES (%s, %s, 'Female'),"
                       " (%s, %s, '02140')", (ada, h.FEMALE, ada, h.ZIP_02140))
    female = [h.SEX, "Sex (Biological)", 1, [[h.FEMALE, "Female", 2]]]
    assert h.populations(conn, h.T1)[ada] == (h.B2, h.snapshot(
        female, [h.HOME_ZIP, "Home Zip Code", 1, [[h.ZIP_02140, "02140", 2140]]]))
    # a tag edited by the application: its population follows through the triggers
    h.execute(app, "UPDATE me_file_tags SET tag_value = '02140-4307' WHERE me_file_id = %s AND trait_id = %s",
              (ada, h.ZIP_02140))
    assert h.populations(conn, h.T1) == h.Model.load(conn).populations(h.T1)
    assert h.populations(conn, h.T1)[ada][1]["tags"][1][3] == [[h.ZIP_02140, "02140-4307", 2140]]

    # the contract functions it calls
    assert h.value(app, "SELECT pgsnap.band_for(%s, %s)", (ada, h.T1)) == h.B2
    assert h.value(app, "SELECT pgsnap.build_snapshot(%s, %s)", (ada, h.B2)) == (
        h.populations(conn, h.T1)[ada][1])
    assert h.value(app, "SELECT pgsnap.sync_me_file(%s)", (ada,)) == 0
    assert h.rows(app, "SELECT * FROM pgsnap.snapshot_health()") == [
        ("target_populations", 0, 4), ("offers", 0, 0), ("ad_events", 0, 0)]

    # an offer and an ad_event without snapshots inherit them
    offer = h.value(app, "INSERT INTO offers (campaign_id, me_file_id, target_band_id, offer_amt)"
                         " VALUES (%s, %s, %s, 2.00) RETURNING id", (C2, ada, h.B2))
    event = h.value(app, "INSERT INTO ad_events"
                         " (offer_id, campaign_id, me_file_id, target_band_id, event_type)"
                         " VALUES (%s, %s, %s, %s, 'banner_tap') RETURNING id", (offer, C2, ada, h.B2))
    ada_snapshot = h.populations(conn, h.T1)[ada][1]
    for table, row in (("offers", offer), ("ad_events", event)):
        snap = h.value(conn, f"SELECT matching_tags_snapshot FROM {table} WHERE id = %s", (row,))
        assert snap == ada_snapshot, table
    h.execute(app, "UPDATE offers SET is_current = true WHERE id = %s", (offer,))

    # launch: one offer per population with a bid, launched_at set; twice creates nothing more
    assert h.value(app, "SELECT pgsnap.launch_campaign(%s)", (C1,)) == 4
    assert h.value(app, "SELECT pgsnap.launch_campaign(%s)", (C1,)) == 0
    assert h.rows(conn, "SELECT o.me_file_id, o.target_band_id, o.offer_amt::text,"
                        " o.matching_tags_snapshot = p.matching_tags_snapshot"
                        " FROM offers o JOIN target_populations p USING (me_file_id, target_band_id)"
                        " WHERE o.campaign_id = %s ORDER BY 1", (C1,)) == [
        (h.M1, h.B1, "1.50", True), (h.M2, h.B2, "0.75", True), (h.M3, h.B3, "0.25", True),
        (ada, h.B2, "0.75", True)]
    assert h.value(conn, "SELECT launched_at IS NOT NULL FROM campaigns WHERE id = %s", (C1,)) is True

    # a registration deleted by the application takes its populations along (cascade as the owner)
    bob = h.value(app, "INSERT INTO me_files (display_name) VALUES ('Bob') RETURNING id")
    h.execute(app, "INSERT INTO me_file_tags (me_file_id, trait_id) VALUES (%s, %s)", (bob, h.FEMALE))
    assert h.populations(conn, h.T1)[bob][0] == h.B3
    h.execute(app, "DELETE FROM me_files WHERE id = %s", (bob,))
    assert bob not in h.populations(conn, h.T1)
    assert h.populations(conn, h.T1) == h.Model.load(conn).populations(h.T1)


# -- and nothing else ---------------------------------------------------------------------------
DENIED_TP = ("42501", "permission denied for table target_populations")
REFUSED = [
    # no direct writes to target_populations
    ("INSERT INTO target_populations (target_band_id, me_file_id, matching_tags_snapshot)"
     " VALUES (3, 4, '{\"tags\": []}')", *DENIED_TP),
    ("UPDATE target_populations SET matching_tags_snapshot = '{\"tags\": []}'", *DENIED_TP),
    ("DELETE FROM target_populations", *DENIED_TP),
    ("TRUNCATE target_populations", *DENIED_TP),
    ("TRUNCATE me_file_tags", "42501", "permission denied for table me_file_tags"),
    # no NULL or malformed snapshot
    ("UPDATE offers SET matching_tags_snapshot = NULL", "23502",
     'null value in column "matching_tags_snapshot" of relation "offers" violates not-null constraint'),
    ("UPDATE ad_events SET matching_tags_snapshot = NULL", "23502",
     'null value in column "matching_tags_snapshot" of relation "ad_events" violates not-null constraint'),
    ("UPDATE offers SET matching_tags_snapshot = '{}'", "23514",
     'new row for relation "offers" violates check constraint "offers_snapshot_shape"'),
    ("INSERT INTO ad_events (offer_id, event_type, matching_tags_snapshot) VALUES (1, 'x', '[]')", "23514",
     'new row for relation "ad_events" violates check constraint "ad_events_snapshot_shape"'),
    # no way around the triggers and constraints
    ("ALTER TABLE me_file_tags DISABLE TRIGGER USER", "42501", "must be owner of table me_file_tags"),
    ("ALTER TABLE offers DISABLE TRIGGER offers_inherit_snapshot", "42501", "must be owner of table offers"),
    ("ALTER TABLE target_populations DISABLE TRIGGER ALL", "42501",
     "must be owner of table target_populations"),
    ("ALTER TABLE offers DROP CONSTRAINT offers_snapshot_shape", "42501", "must be owner of table offers"),
    ("DROP TRIGGER me_file_tags_sync_insert ON me_file_tags", "42501",
     "must be owner of relation me_file_tags"),
    ("CREATE TRIGGER t BEFORE INSERT ON me_file_tags FOR EACH ROW EXECUTE FUNCTION pgsnap._sync_drain()",
     "42501", "permission denied for table me_file_tags"),
    ("SET session_replication_role = replica", "42501",
     'permission denied to set parameter "session_replication_role"'),
    # the catalogue, targets' statuses, campaigns beyond launched_at
    ("UPDATE targets SET population_status = 'not_populated'", "42501",
     "permission denied for table targets"),
    ("UPDATE campaigns SET title = 'x'", "42501", "permission denied for table campaigns"),
    ("INSERT INTO traits (trait_name) VALUES ('x')", "42501", "permission denied for table traits"),
    ("DELETE FROM bids", "42501", "permission denied for table bids"),
    # operator routines, internals, pgsnap's own tables
    ("CALL pgsnap.populate_target(1)", "42501", "permission denied for procedure populate_target"),
    ("CALL pgsnap.backfill_missing_snapshots()", "42501",
     "permission denied for procedure backfill_missing_snapshots"),
    ("SELECT * FROM pgsnap.backfill_batch()", "42501", "permission denied for function backfill_batch"),
    ("SELECT pgsnap.backfill_band(1)", "42501", "permission denied for function backfill_band"),
    ("SELECT * FROM pgsnap._sync(ARRAY[1], NULL, true)", "42501",
     "permission denied for function _sync"),
    ("SELECT * FROM pgsnap.check_invariants()", "42501", "permission denied for function check_invariants"),
    ("SELECT pgsnap.grant_app_role(current_user)", "42501", "permission denied for function grant_app_role"),
    ("INSERT INTO pgsnap.sync_queue VALUES (pg_current_xact_id(), 1, NULL)", "42501",
     "permission denied for table sync_queue"),
    ("UPDATE pgsnap.backfill_runs SET status = 'succeeded'", "42501",
     "permission denied for table backfill_runs"),
    ("CREATE TABLE pgsnap.x (a int)", "42501", "permission denied for schema pgsnap"),
    ("CREATE FUNCTION public.now() RETURNS timestamptz LANGUAGE sql AS 'SELECT now()'", "42501",
     "permission denied for schema public"),
]


@pytest.mark.parametrize(("statement", "sqlstate", "message"), REFUSED, ids=[r[0][:60] for r in REFUSED])
def test_app_role_is_refused(world, app, statement, sqlstate, message):
    h.execute(world, "INSERT INTO offers (campaign_id, me_file_id, target_band_id, offer_amt)"
                     " VALUES (%s, %s, %s, 1)", (C1, h.M1, h.B1))  # rows for the updates to hit
    h.execute(world, "INSERT INTO ad_events (offer_id, event_type) SELECT id, 'x' FROM offers")
    before = h.db_state(world)
    with pytest.raises(psycopg.Error) as refused:
        h.execute(app, statement)
    assert (refused.value.sqlstate, refused.value.diag.message_primary) == (sqlstate, message)
    assert h.db_state(world) == before


# -- the grant ----------------------------------------------------------------------------------
def test_grant_gives_exactly_the_model_and_is_idempotent(world, app_role, cli):
    assert privileges(world, app_role) == set()
    for _ in range(2):
        result = cli("grant", "--app-role", app_role)
        assert (result.exit_code, result.stdout, result.stderr) == (
            0, f'role "{app_role}" has the application privileges (and no others on pgsnap\'s objects)\n', "")
        assert privileges(world, app_role) == MODEL


def test_grant_takes_away_what_the_role_held_beyond_the_model(world, app_role, cli):
    role = sql.Identifier(app_role)
    h.execute(world, sql.SQL(
        "GRANT INSERT, UPDATE ON target_populations TO {0};"
        " GRANT TRUNCATE, TRIGGER, REFERENCES ON me_files TO {0};"
        " GRANT UPDATE (title) ON campaigns TO {0};"
        " GRANT ALL ON pgsnap.settings, pgsnap.sync_queue TO {0};"
        " GRANT CREATE ON SCHEMA pgsnap TO {0};"
        " GRANT EXECUTE ON PROCEDURE pgsnap.populate_target(bigint, integer) TO {0};"
        " GRANT EXECUTE ON FUNCTION pgsnap._sync(bigint[], bigint[], boolean) TO {0}").format(role))
    assert cli("grant", "--app-role", app_role).exit_code == 0
    assert privileges(world, app_role) == MODEL


def test_role_name_is_quoted_as_an_identifier(world, roles, as_role, cli):
    name = roles('Pgsnap "App"; DROP TABLE traits; --')
    assert cli("grant", "--app-role", name).exit_code == 0
    assert privileges(world, name) == MODEL
    assert h.value(as_role(name), "SELECT pgsnap.band_for(%s, %s)", (h.M1, h.T1)) == h.B1
    assert h.value(world, "SELECT count(*) FROM traits") == 14


def test_redeploy_keeps_the_grants_and_closes_new_routines_to_public(world, app, app_role, roles, tmp_path):
    for path in resources.sql_dir().glob("*.sql"):
        (tmp_path / path.name).write_text(path.read_text())
    (tmp_path / "55_new.sql").write_text(
        "CREATE OR REPLACE FUNCTION pgsnap.brand_new() RETURNS int LANGUAGE sql"
        " SET search_path = pg_catalog, pg_temp AS 'SELECT 1';")
    deploy.deploy_sql(world, directory=tmp_path)
    assert privileges(world, app_role) == MODEL
    assert h.value(app, "SELECT pgsnap.launch_campaign(%s)", (C1,)) == 3
    nobody = roles("pgsnap_nobody")
    assert h.rows(world, "SELECT p.oid::regprocedure::text FROM pg_proc p"
                         " WHERE p.pronamespace = 'pgsnap'::regnamespace"
                         "   AND has_function_privilege(%s, p.oid, 'EXECUTE') ORDER BY 1", (nobody,)) == []
    assert h.value(world, "SELECT count(*) FROM pg_proc WHERE oid = 'pgsnap.brand_new()'::regprocedure") == 1


def test_public_runs_no_pgsnap_routine(conn, roles):
    nobody = roles("pgsnap_nobody")
    routines = h.rows(conn, "SELECT p.oid::regprocedure::text, has_function_privilege(%s, p.oid, 'EXECUTE')"
                            " FROM pg_proc p WHERE p.pronamespace = 'pgsnap'::regnamespace ORDER BY 1",
                      (nobody,))
    assert len(routines) > 30
    assert [name for name, allowed in routines if allowed] == []


def test_grant_to_an_unknown_role_names_it_and_grants_nothing(world, cli):
    before = h.db_state(world)
    result = cli("grant", "--app-role", "no_such_role")
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == 'error: 42704: role "no_such_role" does not exist\n'
    assert h.db_state(world) == before


KINDS = ["superuser", "CREATEROLE", "BYPASSRLS", "member of the tables' owner", "owner of the database",
         "owner of schema public", "member of the database owner", "through PUBLIC"]


@pytest.mark.parametrize("kind", KINDS)
def test_grant_refuses_a_role_it_cannot_restrict(world, roles, cli, kind):
    """Roles that could undo pgsnap's guarantees (or that nothing restricts) are refused."""
    table_owner = h.value(world, "SELECT tableowner FROM pg_tables WHERE tablename = 'target_populations'")
    owner_role = roles("pgsnap_owner", "NOLOGIN")
    if kind == "superuser":
        role = roles("pgsnap_super", "LOGIN SUPERUSER")
        expected = f'role "{role}" is a superuser: no privilege restricts it; use a role without SUPERUSER'
    elif kind == "CREATEROLE":
        role = roles("pgsnap_creator", "LOGIN CREATEROLE")
        expected = (f'role "{role}" has CREATEROLE: it could make itself a member of the tables\' owner; '
                    "use a role without CREATEROLE")
    elif kind == "BYPASSRLS":
        role = roles("pgsnap_bypass", "LOGIN BYPASSRLS")
        expected = f'role "{role}" has BYPASSRLS; use a role without BYPASSRLS'
    elif kind == "member of the tables' owner":
        h.execute(world, sql.SQL("ALTER TABLE public.offers OWNER TO {}").format(sql.Identifier(owner_role)))
        role = roles("pgsnap_member", f"LOGIN IN ROLE {sql.Identifier(owner_role).as_string(world)}")
        expected = (f'role "{role}" owns pgsnap\'s tables (it is or belongs to {owner_role}): '
                    "the application role must own nothing")
    elif kind in ("owner of the database", "member of the database owner"):
        role = roles()
        owner = role if kind == "owner of the database" else owner_role
        if kind == "member of the database owner":
            h.execute(world, sql.SQL("GRANT {} TO {}").format(sql.Identifier(owner_role),
                                                              sql.Identifier(role)))
        h.execute(world, sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
            sql.Identifier(h.value(world, "SELECT current_database()")), sql.Identifier(owner)))
        expected = (f'role "{role}" owns the database (it is or belongs to {owner}): '
                    "the application role must own nothing")
    elif kind == "owner of schema public":
        role = roles()
        h.execute(world, sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(role)))
        expected = (f'role "{role}" owns schema public (it is or belongs to {role}): '
                    "the application role must own nothing")
    else:
        role = roles()
        h.execute(world, "GRANT TRUNCATE ON me_file_tags TO PUBLIC")
        expected = (f'role "{role}" would still hold TRUNCATE on public.me_file_tags '
                    "(granted to PUBLIC or to a role it belongs to)")
    try:
        before = privileges(world, role)   # an owner's own, if any
        result = cli("grant", "--app-role", role)
        assert (result.exit_code, result.stdout, result.stderr) == (1, "", f"error: 0LP01: {expected}\n")
        assert privileges(world, role) == before
    finally:   # ownership back, so that the roles can be dropped
        owner = sql.Identifier(table_owner)
        h.execute(world, sql.SQL("ALTER TABLE public.offers OWNER TO {0}; ALTER SCHEMA public OWNER TO {1};"
                                 " ALTER DATABASE {2} OWNER TO {0}").format(
            owner, sql.Identifier("pg_database_owner"),
            sql.Identifier(h.value(world, "SELECT current_database()"))))


def test_only_the_owner_or_a_superuser_may_grant(world, roles, as_role):
    admin = roles("pgsnap_admin")
    app = roles()
    h.execute(world, sql.SQL("GRANT USAGE ON SCHEMA pgsnap TO {0};"
                             " GRANT EXECUTE ON FUNCTION pgsnap.grant_app_role(name) TO {0}").format(
        sql.Identifier(admin)))
    owner = h.value(world, "SELECT tableowner FROM pg_tables WHERE tablename = 'target_populations'")
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
        h.execute(as_role(admin), "SELECT pgsnap.grant_app_role(%s)", (app,))
    assert refused.value.diag.message_primary == (
        f"only {owner} (the owner of pgsnap's tables) or a superuser may grant, not {admin}")
    assert privileges(world, app) == set()


# -- the SECURITY DEFINER routines' owner ---------------------------------------------------------
DEFINERS = {"_group_traits_changed()", "_band_groups_changed()", "_bands_changed()", "_catalogue_truncated()",
            "_launch_blocker(bigint)", "_sync_drain()", "_sync_enqueue_tags()", "_traits_changed()",
            "sync_me_file(bigint)"}


def test_security_definer_routines_run_as_a_role_without_power(conn):
    owners = h.rows(conn, """
        SELECT regexp_replace(p.oid::regprocedure::text, '^pgsnap\\.', ''), r.rolname, r.rolsuper,
               r.rolcreaterole, r.rolbypassrls, r.rolcanlogin
          FROM pg_proc p JOIN pg_roles r ON r.oid = p.proowner
         WHERE p.pronamespace = 'pgsnap'::regnamespace AND p.prosecdef""")
    assert {fn for fn, *_ in owners} == DEFINERS
    assert {tuple(o[1:]) for o in owners} == {("pgsnap_definer", False, False, False, False)}


@pytest.mark.parametrize("statement, message", [
    ("DROP TABLE public.target_populations", "must be owner of table target_populations"),
    ("ALTER TABLE public.me_file_tags DISABLE TRIGGER me_file_tags_sync_insert",
     "must be owner of table me_file_tags"),
    ("CREATE TABLE pgsnap.planted (x int)", "permission denied for schema pgsnap"),
    ("CREATE TABLE public.planted (x int)", "permission denied for schema public"),
    ("UPDATE public.offers SET offer_amt = 0", "permission denied for table offers"),
    ("CREATE ROLE planted", "permission denied to create role"),
])
def test_the_definer_role_holds_nothing_beyond_what_its_routines_use(conn, statement, message):
    with conn.transaction():
        h.execute(conn, "SET LOCAL ROLE pgsnap_definer")
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
            with conn.transaction():
                h.execute(conn, statement)
    assert refused.value.diag.message_primary == message
