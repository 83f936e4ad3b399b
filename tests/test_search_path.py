"""search_path safety: no pgsnap function changes behaviour when the caller's
search_path puts a hostile schema first.

Schema `evil` holds tables named like the application's (full of decoy rows) and functions,
aggregates and operators shadowing the pg_catalog ones pgsnap uses: with the same signature (they
win when `evil` comes before pg_catalog) and with a more exact one (`array_agg(bigint)`,
`jsonb_agg(jsonb)`, `count(bigint)`, ... win even when pg_catalog is implicitly first). The calling
session also has temporary tables shadowing the application's (pg_temp is searched first for
tables unless the path says otherwise). Every contract function and procedure (and the operator
ones, and the triggers) is called with `search_path = evil, public` and `evil, pg_catalog, public`
and must give exactly what it gives with a normal path: the same results and the same rows in
every table, and nothing written into `evil` or the temporary tables.

The database is mid-journey (tests.legacy_data: legacy NULLs, a stale population, malformed rows
turned NULL), so the backfill, populate and sync all have work to do.
"""

from __future__ import annotations

import json
import os
import uuid

import psycopg
import pytest
from psycopg import sql

from tests import helpers as h
from tests.legacy_data import add_campaign, legacy_database

APP_TABLES = h.APP_TABLES
HOSTILE_PATHS = ["evil, public", "evil, pg_catalog, public"]

EVIL = """
CREATE SCHEMA evil;
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['traits', 'trait_groups', 'trait_group_traits', 'targets', 'target_bands',
                             'target_band_trait_groups', 'me_files', 'me_file_tags', 'target_populations',
                             'campaigns', 'bids', 'offers', 'ad_events'] LOOP
        EXECUTE format('CREATE TABLE evil.%I (LIKE public.%I)', t, t);
        EXECUTE format('INSERT INTO evil.%I SELECT * FROM public.%I', t, t);
    END LOOP;
    FOREACH t IN ARRAY ARRAY['settings', 'backfill_runs', 'sync_queue', 'sync_pending'] LOOP
        EXECUTE format('CREATE TABLE evil.%I (LIKE pgsnap.%I)', t, t);
    END LOOP;
END;
$$;
-- decoys: if pgsnap read these, memberships, snapshots, statuses and amounts would all change
UPDATE evil.traits SET trait_name = 'EVIL ' || trait_name, display_order = -display_order;
INSERT INTO evil.me_file_tags (id, me_file_id, trait_id, tag_value, created_at, updated_at)
SELECT 100000 + row_number() OVER (), f.id, t.id, 'EVIL', now(), now()
  FROM public.me_files f CROSS JOIN public.traits t;
INSERT INTO evil.trait_group_traits SELECT g.id, t.id FROM public.trait_groups g CROSS JOIN public.traits t;
INSERT INTO evil.target_band_trait_groups
SELECT b.id, g.id FROM public.target_bands b CROSS JOIN public.trait_groups g;
UPDATE evil.target_populations SET matching_tags_snapshot = '{"tags": [["evil"]]}';
UPDATE evil.offers SET matching_tags_snapshot = '{"tags": [["evil"]]}';
UPDATE evil.ad_events SET matching_tags_snapshot = '{"tags": [["evil"]]}';
UPDATE evil.targets SET population_status = 'populated';
UPDATE evil.bids SET offer_amt = 666;
INSERT INTO evil.settings VALUES ('populating_stuck_after', '1 second'),
                                 ('job_history_retention', '1 second');

-- functions with pg_catalog's exact signatures (they win when evil precedes pg_catalog)
CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE sql
    AS $$ SELECT '1999-12-31 23:59:59+00'::timestamptz $$;
CREATE FUNCTION evil.clock_timestamp() RETURNS timestamptz LANGUAGE sql AS $$ SELECT evil.now() $$;
CREATE FUNCTION evil.statement_timestamp() RETURNS timestamptz LANGUAGE sql AS $$ SELECT evil.now() $$;
CREATE FUNCTION evil.pg_backend_pid() RETURNS integer LANGUAGE sql AS $$ SELECT -1 $$;
CREATE FUNCTION evil.hashtextextended(text, bigint) RETURNS bigint LANGUAGE sql AS $$ SELECT 666::bigint $$;
CREATE FUNCTION evil.set_config(text, text, boolean) RETURNS text LANGUAGE sql AS $$ SELECT $2 $$;
CREATE FUNCTION evil.current_setting(text) RETURNS text LANGUAGE sql AS $$ SELECT 'evil' $$;
CREATE FUNCTION evil.pg_try_advisory_lock(bigint) RETURNS boolean LANGUAGE sql AS $$ SELECT true $$;
CREATE FUNCTION evil.pg_advisory_unlock(bigint) RETURNS boolean LANGUAGE sql AS $$ SELECT true $$;
CREATE FUNCTION evil.pg_advisory_xact_lock(bigint) RETURNS void LANGUAGE sql AS $$ SELECT $$;
CREATE FUNCTION evil.pg_current_xact_id() RETURNS xid8 LANGUAGE sql AS $$ SELECT '1'::xid8 $$;
CREATE FUNCTION evil.jsonb_typeof(jsonb) RETURNS text LANGUAGE sql AS $$ SELECT 'object' $$;
CREATE FUNCTION evil.format(text, text) RETURNS text LANGUAGE sql AS $$ SELECT 'evil' $$;
CREATE FUNCTION evil.to_char(timestamptz, text) RETURNS text LANGUAGE sql AS $$ SELECT 'evil' $$;
-- functions more exact than pg_catalog's polymorphic or variadic ones (they win even after it)
CREATE FUNCTION evil.unnest(bigint[]) RETURNS SETOF bigint LANGUAGE sql AS $$ SELECT 666::bigint $$;
CREATE FUNCTION evil.cardinality(bigint[]) RETURNS integer LANGUAGE sql AS $$ SELECT 0 $$;
CREATE FUNCTION evil.array_position(bigint[], bigint) RETURNS integer LANGUAGE sql AS $$ SELECT 1 $$;
CREATE FUNCTION evil.array_fill(bigint, integer[]) RETURNS bigint[] LANGUAGE sql
    AS $$ SELECT ARRAY[666::bigint] $$;
CREATE FUNCTION evil.jsonb_build_object(text, jsonb) RETURNS jsonb LANGUAGE sql
    AS $$ SELECT '{"tags": [["evil"]]}'::jsonb $$;
CREATE FUNCTION evil.jsonb_build_array(bigint, text, integer) RETURNS jsonb LANGUAGE sql
    AS $$ SELECT '["evil"]'::jsonb $$;
CREATE FUNCTION evil.jsonb_build_array(bigint, text, integer, jsonb) RETURNS jsonb LANGUAGE sql
    AS $$ SELECT '["evil"]'::jsonb $$;
-- aggregates
CREATE FUNCTION evil.n0(bigint) RETURNS bigint LANGUAGE sql AS $$ SELECT 666::bigint $$;
CREATE FUNCTION evil.n1(bigint, bigint) RETURNS bigint LANGUAGE sql AS $$ SELECT 666::bigint $$;
CREATE FUNCTION evil.j1(jsonb, jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT '"evil"'::jsonb $$;
CREATE FUNCTION evil.a1(bigint[], bigint) RETURNS bigint[] LANGUAGE sql AS $$ SELECT ARRAY[666::bigint] $$;
CREATE FUNCTION evil.s2(text, text, text) RETURNS text LANGUAGE sql AS $$ SELECT 'evil' $$;
CREATE AGGREGATE evil.count(*) (SFUNC = evil.n0, STYPE = bigint, INITCOND = '666');
CREATE AGGREGATE evil.count(bigint) (SFUNC = evil.n1, STYPE = bigint, INITCOND = '666');
CREATE AGGREGATE evil.sum(bigint) (SFUNC = evil.n1, STYPE = bigint, INITCOND = '666');
CREATE AGGREGATE evil.jsonb_agg(jsonb) (SFUNC = evil.j1, STYPE = jsonb, INITCOND = '"evil"');
CREATE AGGREGATE evil.array_agg(bigint) (SFUNC = evil.a1, STYPE = bigint[], INITCOND = '{666}');
CREATE AGGREGATE evil.string_agg(text, text) (SFUNC = evil.s2, STYPE = text, INITCOND = 'evil');
-- operators
CREATE FUNCTION evil.yes(bigint, bigint) RETURNS boolean LANGUAGE sql AS $$ SELECT true $$;
CREATE FUNCTION evil.no(bigint, bigint) RETURNS boolean LANGUAGE sql AS $$ SELECT false $$;
CREATE FUNCTION evil.yes(text, text) RETURNS boolean LANGUAGE sql AS $$ SELECT true $$;
CREATE FUNCTION evil.yes(jsonb, jsonb) RETURNS boolean LANGUAGE sql AS $$ SELECT true $$;
CREATE FUNCTION evil.cat(text, bigint) RETURNS text LANGUAGE sql AS $$ SELECT 'evil' $$;
CREATE FUNCTION evil.arrow(jsonb, text) RETURNS jsonb LANGUAGE sql AS $$ SELECT '[]'::jsonb $$;
CREATE OPERATOR evil.= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = evil.yes);
CREATE OPERATOR evil.<> (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = evil.no);
CREATE OPERATOR evil.< (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = evil.no);
CREATE OPERATOR evil.>= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = evil.yes);
CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.yes);
CREATE OPERATOR evil.= (LEFTARG = jsonb, RIGHTARG = jsonb, FUNCTION = evil.yes);
CREATE OPERATOR evil.|| (LEFTARG = text, RIGHTARG = bigint, FUNCTION = evil.cat);
CREATE OPERATOR evil.-> (LEFTARG = jsonb, RIGHTARG = text, FUNCTION = evil.arrow);
"""
TEMP_SHADOWS = ("traits", "trait_group_traits", "targets", "target_bands", "target_band_trait_groups",
                "me_files", "me_file_tags", "target_populations", "campaigns", "bids", "offers", "ad_events")
C3 = 3  # a campaign on T1 with no offers yet (tests.legacy_data has C1 and C2)


# -- databases ------------------------------------------------------------------------------------
def _admin(pg_server):
    return psycopg.connect(pg_server.dsn("postgres"), autocommit=True)


@pytest.fixture(scope="module")
def hostile_template(pg_server):
    """A mid-journey database with every kind of legacy row, a not populated T2, and schema evil."""
    name = f"pgsnap_hostile_{os.getpid()}"
    with _admin(pg_server) as c:
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        dsn = pg_server.dsn(name)
        legacy_database(dsn)
        with psycopg.connect(dsn, autocommit=True) as c:
            # the seed gave explicit ids; the application's next ones follow them
            for (table,) in h.rows(c, "SELECT table_name FROM information_schema.columns"
                                      " WHERE table_schema = 'public' AND column_name = 'id'"
                                      " AND is_identity = 'YES'"):
                h.execute(c, f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                             f" (SELECT coalesce(max(id), 0) + 1 FROM {table}), false)")
            h.add_target(c, h.T2, bands=[(h.B9, [h.G10, h.G30])])  # not populated: sync leaves it alone
            add_campaign(c, C3, h.T1)
            h.execute(c, EVIL)
        yield name
    finally:
        with _admin(pg_server) as c:
            c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def hostile_dsn(pg_server, hostile_template):
    name = f"pgsnap_hostile_{uuid.uuid4().hex[:12]}"
    with _admin(pg_server) as c:
        c.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name),
                                                                   sql.Identifier(hostile_template)))
    yield pg_server.dsn(name)
    with _admin(pg_server) as c:
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def with_temp_shadows(conn: psycopg.Connection) -> psycopg.Connection:
    """Give the session temporary tables named like the application's, holding the decoys."""
    for t in TEMP_SHADOWS:
        h.execute(conn, f"CREATE TEMP TABLE {t} (LIKE evil.{t});"
                        f" INSERT INTO pg_temp.{t} SELECT * FROM evil.{t}")
    return conn


# -- reading a run's outcome ----------------------------------------------------------------------
VOLATILE = {"created_at", "updated_at", "launched_at", "last_populated_at", "populating_since", "started_at",
            "finished_at", "pid", "synced_by", "backend_start", "changed_by", "stale_token", "stale_since",
            "run_pid", "run_backend_start", "run_started_at"}


def state(conn) -> dict[str, list]:
    """Every table of public, pgsnap, evil and this session's temporary schema, with the columns
    that hold clock times, pids or transaction ids reduced to "set or not"."""
    temp = h.value(conn, "SELECT (SELECT nspname FROM pg_catalog.pg_namespace"
                         "         WHERE oid = pg_catalog.pg_my_temp_schema())")
    result = {}
    for table, texts in h.db_state(conn, ("public", "pgsnap", "evil", *([temp] if temp else []))).items():
        found = []
        for text in texts:
            row = json.loads(text)
            for key in VOLATILE & row.keys():
                row[key] = row[key] is not None
            found.append(row)
        result[table.replace(temp, "pg_temp") if temp else table] = sorted(found, key=json.dumps)
    return result


def sequences(conn) -> list[tuple[str, int, bool]]:
    names = [n for (n,) in h.rows(conn, "SELECT format('%I.%I', schemaname, sequencename)"
                                        " FROM pg_catalog.pg_sequences"
                                        " WHERE schemaname IN ('public', 'pgsnap') ORDER BY 1")]
    return [(n, *h.rows(conn, f"SELECT last_value, is_called FROM {n}")[0]) for n in names]


def restore_sequences(conn, saved) -> None:
    """Sequences ignore ROLLBACK: put them back so every run hands out the same ids."""
    for name, last_value, is_called in saved:
        h.execute(conn, "SELECT pg_catalog.setval(%s::regclass, %s, %s)", (name, last_value, is_called))


def run(conn, statements: list[str], path: str | None) -> tuple[list, dict, str]:
    """Run `statements` in one transaction under `path` (None: the server default), read the
    results, the state and the search_path the caller is left with, then roll it all back."""
    saved = sequences(conn)
    results = []
    with conn.transaction(force_rollback=True):
        if path is not None:
            h.execute(conn, f"SET LOCAL search_path = {path}")
        for statement in statements:
            try:
                with conn.transaction():
                    results.append(h.rows(conn, statement))
            except psycopg.Error as exc:
                results.append(("ERROR", exc.sqlstate, exc.diag.message_primary))
        left_with = h.value(conn, "SELECT pg_catalog.current_setting('search_path')")
        h.execute(conn, "SET LOCAL search_path = pg_catalog, public")
        after = state(conn)
    restore_sequences(conn, saved)
    return results, after, left_with


# -- the calls ------------------------------------------------------------------------------------
CALLS = {
    "build_snapshot": ["SELECT m.id, b.id, pgsnap.build_snapshot(m.id, b.id)"
                       " FROM public.me_files m CROSS JOIN public.target_bands b ORDER BY m.id, b.id",
                       "SELECT pgsnap.build_snapshot(NULL, NULL)"],
    "band_for": ["SELECT m.id, t.id, pgsnap.band_for(m.id, t.id)"
                 " FROM public.me_files m CROSS JOIN public.targets t ORDER BY m.id, t.id"],
    "memberships": ["SELECT * FROM pgsnap.memberships(ARRAY[1, 2]::bigint[]) ORDER BY 1, 2, 3"],
    "populate_target_in_transaction": ["SELECT pgsnap.populate_target_in_transaction(1) - 'seconds'",
                                       "SELECT pgsnap.populate_target_in_transaction(2) - 'seconds'"],
    "sync_me_file": ["SELECT m.id, pgsnap.sync_me_file(m.id) FROM public.me_files m ORDER BY m.id"],
    "launch_campaign": ["SELECT pgsnap.launch_campaign(1)", "SELECT pgsnap.launch_campaign(3)",
                        "SELECT pgsnap.launch_campaign(2)"],
    "backfill_batch": ["SELECT * FROM pgsnap.backfill_batch(2)", "SELECT * FROM pgsnap.backfill_batch(1)",
                       "SELECT * FROM pgsnap.backfill_batch()"],
    "backfill_band": ["SELECT b.id, pgsnap.backfill_band(b.id, 1) FROM public.target_bands b ORDER BY b.id"],
    "snapshot_health": ["SELECT * FROM pgsnap.snapshot_health()"],
    "backfill_plan": ["SELECT * FROM pgsnap.backfill_plan() ORDER BY 1, 2"],
    "check_invariants": ["SELECT * FROM pgsnap.check_invariants()"],
    "verify_target": ["SELECT * FROM pgsnap.verify_target(1)", "SELECT * FROM pgsnap.verify_target(2)"],
    "populating_targets": ["UPDATE public.targets SET population_status = 'populating' WHERE id = 1",
                           "SELECT target_id, since IS NOT NULL, populated_by"
                           " FROM pgsnap.populating_targets()"],
    "errors": ["SELECT pgsnap.populate_target_in_transaction(999)", "SELECT pgsnap.launch_campaign(999)",
               "SELECT * FROM pgsnap.backfill_batch(0)", "SELECT pgsnap.sync_me_file(999)"],
    # the triggers: tag writes and a registration (synced at the deferred drain, forced here),
    # offers and ad_events inheriting their snapshot, target_id filled in
    "sync_triggers": ["INSERT INTO public.me_files (id, display_name) VALUES (6, 'new')",
                      "INSERT INTO public.me_file_tags (me_file_id, trait_id, tag_value)"
                      " VALUES (6, 3, 'Female'), (6, 101, ''), (4, 3, 'Female')",
                      "UPDATE public.me_file_tags SET tag_value = 'Hiking!'"
                      " WHERE me_file_id = 1 AND trait_id = 52",
                      "DELETE FROM public.me_file_tags WHERE me_file_id = 3 AND trait_id = 52",
                      "SET CONSTRAINTS ALL IMMEDIATE"],
    "inherit_triggers": ["INSERT INTO public.offers (campaign_id, me_file_id, target_band_id, offer_amt)"
                         " VALUES (3, 2, 2, 1.25)",
                         "INSERT INTO public.ad_events (offer_id, event_type)"
                         " SELECT o.id, 'banner_tap' FROM public.offers o WHERE o.campaign_id = 3",
                         "INSERT INTO public.offers (campaign_id, me_file_id, target_band_id, offer_amt)"
                         " VALUES (3, 4, 1, 1.25)"],
    "population_target_id": ["INSERT INTO public.target_populations"
                             " (target_band_id, me_file_id, matching_tags_snapshot)"
                             " VALUES (9, 1, '{\"tags\": []}')",
                             "SELECT target_id FROM public.target_populations WHERE target_band_id = 9"],
}


EXPECTED_ERRORS = {
    "errors": [("ERROR", "P0002", "target 999 does not exist"),
               ("ERROR", "P0002", "campaign 999 does not exist"),
               ("ERROR", "22023", "batch size must be a positive integer, got 0"),
               ("ERROR", "P0002", "me_file 999 does not exist")],
    "inherit_triggers": [("ERROR", "23502", "offer for me_file 4 in band 1 has no snapshot: no target "
                                            "population holds that me_file in that band")],
}


@pytest.mark.parametrize("path", HOSTILE_PATHS)
@pytest.mark.parametrize("call", list(CALLS))
def test_hostile_search_path_changes_nothing(hostile_dsn, call, path):
    statements = CALLS[call]
    with psycopg.connect(hostile_dsn, autocommit=True) as plain:
        before = state(plain)
        expected, expected_state, _ = run(plain, statements, None)
    assert any(expected) or expected_state != before, "the call does nothing: the case proves nothing"
    errors = [r for r in expected if isinstance(r, tuple)]
    assert errors == EXPECTED_ERRORS.get(call, [])
    with with_temp_shadows(psycopg.connect(hostile_dsn, autocommit=True)) as hostile:
        untouched = state(hostile)
        results, after, left_with = run(hostile, statements, path)
        assert results == expected
        assert {t: r for t, r in after.items() if not t.startswith("pg_temp.")} == expected_state
        assert {t: r for t, r in after.items() if t.startswith(("evil.", "pg_temp."))} == {
            t: r for t, r in untouched.items() if t.startswith(("evil.", "pg_temp."))}
        assert left_with == path  # the caller's search_path is the caller's again


def untouched_without_temp(snapshot: dict) -> dict:
    return {t: r for t, r in snapshot.items() if not t.startswith("pg_temp.")}


# procedures commit: a top-level CALL each, compared with the same CALLs on a twin database
PROCEDURES = {
    "populate_target": ["CALL pgsnap.populate_target(1, 2)", "CALL pgsnap.populate_target(2)"],
    "backfill_missing_snapshots": ["CALL pgsnap.backfill_missing_snapshots(2)"],
    "repopulate_stale_targets": ["UPDATE public.traits SET trait_name = 'Sex' WHERE id = 1",
                                 "CALL pgsnap.repopulate_stale_targets()"],
}


@pytest.fixture
def twin_dsn(pg_server, hostile_template):
    name = f"pgsnap_twin_{uuid.uuid4().hex[:12]}"
    with _admin(pg_server) as c:
        c.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name),
                                                                   sql.Identifier(hostile_template)))
    yield pg_server.dsn(name)
    with _admin(pg_server) as c:
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.mark.parametrize("path", HOSTILE_PATHS)
@pytest.mark.parametrize("call", list(PROCEDURES))
def test_procedures_committing_per_batch_under_a_hostile_search_path(hostile_dsn, twin_dsn, call, path):
    """A top-level CALL commits per batch and re-pins its path after every COMMIT: under a hostile
    path it leaves exactly what it leaves under the default one (on a twin of the database)."""
    with psycopg.connect(twin_dsn, autocommit=True) as plain:
        for statement in PROCEDURES[call]:
            h.execute(plain, statement)
        expected_state = untouched_without_temp(state(plain))
    with with_temp_shadows(psycopg.connect(hostile_dsn, autocommit=True)) as hostile:
        untouched = state(hostile)
        h.execute(hostile, f"SET search_path = {path}")
        for statement in PROCEDURES[call]:
            h.execute(hostile, statement)
        assert h.value(hostile, "SELECT pg_catalog.current_setting('search_path')") == path
        h.execute(hostile, "SET search_path = pg_catalog, public")
        after = state(hostile)
    assert untouched_without_temp(after) == expected_state
    assert {t: r for t, r in after.items() if t.startswith(("evil.", "pg_temp."))} == {
        t: r for t, r in untouched.items() if t.startswith(("evil.", "pg_temp."))}
    if call == "backfill_missing_snapshots":
        assert [r["status"] for r in after["pgsnap.backfill_runs"]] == ["succeeded"]
        assert all(r["batches"] > 1 for r in after["pgsnap.backfill_runs"])


def test_every_function_pins_its_search_path(conn):
    """PL/pgSQL functions pin `pg_catalog, pg_temp` in their definition; SQL functions have a
    standard body, parsed (bound to objects) when created; procedures cannot carry a SET clause
    (they COMMIT), so they commit first and pin it right after, and again after every COMMIT."""
    routines = h.rows(conn, "SELECT p.proname, p.prokind, l.lanname, p.proconfig, p.prosqlbody IS NOT NULL,"
                            " p.prosrc FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang"
                            " WHERE p.pronamespace = 'pgsnap'::regnamespace ORDER BY 1")
    unpinned = [name for name, kind, lang, config, atomic, _ in routines
                if kind == "f" and not ((config or [None])[0] == "search_path=pg_catalog, pg_temp"
                                        or (lang == "sql" and atomic and config is None))]
    assert unpinned == []
    # the other settings functions carry: the sync's statements keep their generic plans, and
    # its own rows are read by index lookups from the me_file's tags (the small rules' statement
    # changes four of them for itself; the SET clauses put back what the session had)
    assert {name: config[1:] for name, kind, _, config, _, _ in routines if kind == "f" and config
            and config[1:]} == {
        "_sync": ["plan_cache_mode=force_generic_plan"],
        "_sync_rows": ["plan_cache_mode=force_generic_plan", "enable_hashjoin=off",
                       "enable_mergejoin=off", "enable_bitmapscan=off", "enable_material=off",
                       "enable_nestloop=on", "enable_seqscan=on"]}
    first = "COMMIT;\n    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);"
    procedures = {name: src for name, kind, _, _, _, src in routines if kind == "p"}
    assert sorted(procedures) == ["backfill_missing_snapshots", "populate_target",
                                  "repopulate_stale_targets"]
    for name, src in procedures.items():
        body = src.split("\nBEGIN\n", 1)[1]
        assert body.lstrip().startswith(first), name


@pytest.mark.parametrize("statement", ["SELECT pgsnap.populate_target_in_transaction(1)",
                                       "SELECT * FROM pgsnap.backfill_batch()"])
def test_caller_gets_its_search_path_back(hostile_dsn, statement):
    """The function entry points run inside the caller's transaction; afterwards the caller's
    own unqualified names still resolve as before."""
    with psycopg.connect(hostile_dsn) as c:  # not autocommit: the call runs in our transaction
        h.execute(c, statement)
        assert h.value(c, "SELECT pg_catalog.current_setting('search_path')") == '"$user", public'
        assert h.value(c, "SELECT count(*) FROM targets") == 2
