"""The committed schema dump (schema/pgsnap.schema.sql) is what a fresh `pgsnap migrate` builds.

Every schema change (a migration, a function in sql/) must reach review as a diff of that file:
when this fails, run `make schema` and commit the result.
"""

import pytest

from scripts.dump_schema import REFRESH, SCHEMA_FILE, diff, dump_schema, migrated_dump, normalise


def test_fresh_migrate_reproduces_the_committed_schema_dump(empty_db_dsn):
    fresh = migrated_dump(empty_db_dsn)
    committed = SCHEMA_FILE.read_text(encoding="utf-8") if SCHEMA_FILE.exists() else ""

    if fresh != committed:
        pytest.fail(
            f"\n{diff(committed, fresh)}\n"
            f"{SCHEMA_FILE.name} is stale: the schema a fresh `pgsnap migrate` builds differs from the "
            f"committed dump (diff above). If the change is intended, run `{REFRESH}` and commit "
            f"{SCHEMA_FILE.relative_to(SCHEMA_FILE.parent.parent)}.", pytrace=False)


def test_redeploying_sql_leaves_the_dump_unchanged(empty_db_dsn):
    """`pgsnap migrate` re-deploys sql/ on every run: the second run must change nothing."""
    first = migrated_dump(empty_db_dsn)
    assert migrated_dump(empty_db_dsn) == first
    assert dump_schema(empty_db_dsn) == first


def test_normalise_drops_what_varies_between_dumps_and_pg_dump_builds():
    raw = "\n".join([
        "--",
        "-- PostgreSQL database dump",
        "--",
        "",
        "\\restrict mX40d5FPiAI5UJcJWl31k1uj3pUgmLGcNPfDOLxX5jJlBF0UeGspFndM4oSsY2g",
        "",
        "-- Dumped from database version 15.18 (Debian 15.18-0+deb12u1)",
        "-- Dumped by pg_dump version 15.18 (Debian 15.18-0+deb12u1)",
        "",
        "SET statement_timeout = 0;",
        "SELECT pg_catalog.set_config('search_path', '', false);",
        "SET check_function_bodies = false;",
        "",
        "--",
        "-- Name: pgsnap; Type: SCHEMA; Schema: -; Owner: -",
        "--",
        "",
        "CREATE SCHEMA pgsnap;   ",
        "",
        "",
        "SET default_tablespace = '';",
        "",
        "--",
        "-- Name: t; Type: TABLE; Schema: pgsnap; Owner: -",
        "--",
        "",
        "CREATE TABLE pgsnap.t (",
        "    id bigint",
        ");",
        "",
        "",
        "--",
        "-- PostgreSQL database dump complete",
        "--",
        "",
        "\\unrestrict mX40d5FPiAI5UJcJWl31k1uj3pUgmLGcNPfDOLxX5jJlBF0UeGspFndM4oSsY2g",
        "",
    ])

    body = normalise(raw).split("\n\n", 1)[1]  # after the generated-file header

    assert body == "\n".join([
        "--",
        "-- Name: pgsnap; Type: SCHEMA; Schema: -; Owner: -",
        "--",
        "",
        "CREATE SCHEMA pgsnap;",
        "",
        "--",
        "-- Name: t; Type: TABLE; Schema: pgsnap; Owner: -",
        "--",
        "",
        "CREATE TABLE pgsnap.t (",
        "    id bigint",
        ");",
        "",
    ])
