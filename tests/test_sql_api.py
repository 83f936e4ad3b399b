"""docs/sql-api.md is generated from the routines' COMMENT ON: it is what a fresh database says.
When this fails, run `make sql-api` and commit the result."""

import pytest

from scripts.sql_api import API_FILE, REFRESH, diff, generate
from tests.helpers import rows


def test_the_sql_api_reference_is_current(empty_db_dsn):
    fresh = generate(empty_db_dsn)
    committed = API_FILE.read_text(encoding="utf-8") if API_FILE.exists() else ""
    if fresh != committed:
        pytest.fail(f"\n{diff(committed, fresh)}\n{API_FILE.name} is stale: run `{REFRESH}` and commit it.",
                    pytrace=False)


def test_every_public_routine_and_view_has_a_comment(conn):
    assert rows(conn, """
        SELECT p.oid::regprocedure::text FROM pg_proc p
         WHERE p.pronamespace = 'pgsnap'::regnamespace AND p.proname !~ '^_'
           AND obj_description(p.oid, 'pg_proc') IS NULL
        UNION ALL
        SELECT c.oid::regclass::text FROM pg_class c
         WHERE c.relnamespace = 'pgsnap'::regnamespace AND c.relkind = 'v'
           AND obj_description(c.oid, 'pg_class') IS NULL""") == []
