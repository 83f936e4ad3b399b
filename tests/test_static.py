"""Static checks of the SQL, run by `make test` and therefore by CI.

* plpgsql_check over every PL/pgSQL function and procedure of schema pgsnap, with every warning
  class on: no error and no warning outside the commented allow-list below;
* PostgreSQL's own validator over every `LANGUAGE sql` function of schema pgsnap (`pgsnap
  migrate` deploys sql/ with check_function_bodies off, so nothing else parses their bodies);
* every pgsnap function pins its search_path;
* squawk over migrations/*.sql, with the exceptions explained in .squawk.toml
  (scripts/squawk_lint.py; `make lint` runs the same).

docs/static-checks.md explains the checks and the accepted warnings.
"""

from dataclasses import dataclass

import pytest
from psycopg import sql

from scripts import squawk_lint

# -- plpgsql_check -------------------------------------------------------------------------------
# (function, message, detail) -> why it is acceptable. An entry covers every occurrence in that
# function; one that matches nothing any more fails the test (delete it).
PERF_CAST = "target type is different type than source type"
ALLOWED_WARNINGS = {
    ("pgsnap._notice(text,jsonb)", "routine is marked as VOLATILE, should be IMMUTABLE", None):
        "It sends a NOTICE: a side effect the planner must not fold away or skip.",
    ("pgsnap.sync_me_file(bigint)", PERF_CAST, 'cast "bigint" value to "integer" type'):
        "The contract returns int (docs/sql-api.md) while pgsnap._sync counts in bigint: the "
        "count is at most one row per target for one me_file, far below 2^31; one cast per call.",
    ("pgsnap.populate_target(bigint,integer)", PERF_CAST, 'cast "integer" value to "bigint" type'):
        "DECLARE v_ins/v_mov/v_ref/v_del bigint := 0: the literal is cast once per call.",
    ("pgsnap.backfill_band(bigint,integer)", PERF_CAST, 'cast "integer" value to "bigint" type'):
        "DECLARE v_total bigint := 0: the literal is cast once per call.",
    ("pgsnap.check_invariants()", PERF_CAST, 'cast "numeric" value to "bigint" type'):
        "not_populated_rows: coalesce(sum(bigint), 0) is numeric and lands in the bigint "
        "`violations` column: one cast per `pgsnap check`, and a row count always fits.",
}

CHECK_OPTIONS = dict(fatal_errors=False, other_warnings=True, performance_warnings=True,
                     extra_warnings=True, security_warnings=True, compatibility_warnings=True)


@dataclass(frozen=True)
class Problem:
    function: str
    relation: str | None
    lineno: int | None
    statement: str | None
    level: str
    sqlstate: str | None
    message: str
    detail: str | None
    query: str | None

    def __str__(self) -> str:
        on = f" (trigger on {self.relation})" if self.relation else ""
        where = f" line {self.lineno} {self.statement}" if self.lineno else ""
        text = f"{self.function}{on}{where}: {self.level} {self.sqlstate}: {self.message}"
        if self.detail:
            text += f" [{self.detail}]"
        if self.query:
            text += f"\n        in: {' '.join(self.query.split())[:160]}"
        return text


def _plpgsql_routines(conn):
    """(oid, signature, is trigger) of every PL/pgSQL function and procedure in schema pgsnap."""
    return conn.execute(
        """
        SELECT p.oid, p.oid::regprocedure::text, p.prorettype = 'pg_catalog.trigger'::regtype
          FROM pg_catalog.pg_proc p
          JOIN pg_catalog.pg_language l ON l.oid = p.prolang
         WHERE p.pronamespace = 'pgsnap'::regnamespace AND l.lanname = 'plpgsql'
         ORDER BY 2
        """).fetchall()


def _trigger_contexts(conn, oid):
    """One (relation, NEW TABLE name, OLD TABLE name) per relation whose triggers call `oid`:
    plpgsql_check needs the relation for NEW/OLD and the names of the transition tables (the
    union over that relation's triggers, since the function is checked through every branch)."""
    return conn.execute(
        """
        SELECT t.tgrelid::regclass::text, max(t.tgnewtable), max(t.tgoldtable)
          FROM pg_catalog.pg_trigger t
         WHERE t.tgfoid = %s
         GROUP BY t.tgrelid
         ORDER BY 1
        """, [oid]).fetchall()


def _plpgsql_check(conn, oid, signature, relation=None, newtable=None, oldtable=None):
    rows = conn.execute(
        sql.SQL("""
        SELECT lineno, statement, level, sqlstate, message, detail, query
          FROM plpgsql_check.plpgsql_check_function_tb(
                   %(oid)s::regprocedure, relid => coalesce(%(rel)s::regclass, 0),
                   newtable => %(new)s, oldtable => %(old)s, {options})
        """).format(options=sql.SQL(", ").join(
            sql.SQL("{} => {}").format(sql.Identifier(k), sql.Literal(v)) for k, v in CHECK_OPTIONS.items())),
        {"oid": oid, "rel": relation, "new": newtable, "old": oldtable},
    ).fetchall()
    return [Problem(signature, relation, *row) for row in rows]


def _install_plpgsql_check(conn):
    """The extension, in its own schema of this throwaway database."""
    available = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_available_extensions WHERE name = 'plpgsql_check')"
    ).fetchone()[0]
    if not available:
        pytest.fail("plpgsql_check is not installed on the test server: apt-get install "
                    "postgresql-15-plpgsql-check (`make setup` does it)", pytrace=False)
    conn.execute("CREATE SCHEMA plpgsql_check")
    conn.execute("CREATE EXTENSION plpgsql_check SCHEMA plpgsql_check")


@pytest.fixture
def checked(conn):
    """Every problem plpgsql_check reports over schema pgsnap, and the routines it looked at."""
    _install_plpgsql_check(conn)
    routines = _plpgsql_routines(conn)
    problems = []
    for oid, signature, is_trigger in routines:
        if not is_trigger:
            problems += _plpgsql_check(conn, oid, signature)
            continue
        contexts = _trigger_contexts(conn, oid)
        if not contexts:
            problems.append(Problem(signature, None, None, None, "error", None,
                                    "trigger function attached to no trigger (dead code?)", None, None))
        for relation, newtable, oldtable in contexts:
            problems += _plpgsql_check(conn, oid, signature, relation, newtable, oldtable)
    return routines, problems


def test_plpgsql_check_finds_no_error_and_no_unexplained_warning(checked):
    routines, problems = checked
    names = {signature for _, signature, _ in routines}
    # not vacuous: the engine's core and its trigger functions were all looked at
    assert {"pgsnap._sync(bigint[],bigint[],boolean)", "pgsnap._sync_enqueue_tags()",
            "pgsnap._populate_batch(bigint,bigint,bigint,boolean,bigint,bigint[],bigint[])",
            "pgsnap.populate_target(bigint,integer)", "pgsnap.launch_campaign(bigint)"} <= names

    unexplained = [p for p in problems
                   if p.level not in ("warning", "warning extra", "performance", "security", "compatibility")
                   or (p.function, p.message, p.detail) not in ALLOWED_WARNINGS]
    used = {(p.function, p.message, p.detail) for p in problems}
    stale = [key for key in ALLOWED_WARNINGS if key not in used]

    report = [f"  {p}" for p in unexplained]
    report += [f"  stale allow-list entry (fixed? delete it): {k}" for k in stale]
    assert not report, ("plpgsql_check over schema pgsnap:\n" + "\n".join(report)
                        + "\nFix the function, or add a commented entry to ALLOWED_WARNINGS in "
                          "tests/test_static.py and docs/static-checks.md.")


def test_plpgsql_check_sees_an_error_when_there_is_one(conn):
    """The harness itself: a function reading a column that does not exist is reported."""
    conn.execute("SET check_function_bodies = off")
    conn.execute("""
        CREATE FUNCTION pgsnap._static_check_probe() RETURNS bigint LANGUAGE plpgsql AS $$
        BEGIN RETURN (SELECT m.no_such_column FROM public.me_files m LIMIT 1); END $$""")
    _install_plpgsql_check(conn)
    oid = conn.execute("SELECT 'pgsnap._static_check_probe()'::regprocedure::oid").fetchone()[0]

    problems = _plpgsql_check(conn, oid, "pgsnap._static_check_probe()")

    assert [(p.level, p.sqlstate, p.message) for p in problems if p.level == "error"] == [
        ("error", "42703", "column m.no_such_column does not exist")]


# -- SQL-language functions: PostgreSQL's own validator ----------------------------------------------
def test_every_sql_function_body_parses_and_resolves(conn):
    """sql/ is deployed with check_function_bodies off (files may reference later files), so
    re-run the validator now that everything exists: every table, column and function a
    `LANGUAGE sql` body names must resolve."""
    conn.execute("SET check_function_bodies = on")
    functions = conn.execute(
        """
        SELECT p.oid, p.oid::regprocedure::text
          FROM pg_catalog.pg_proc p
          JOIN pg_catalog.pg_language l ON l.oid = p.prolang
         WHERE p.pronamespace = 'pgsnap'::regnamespace AND l.lanname = 'sql'
         ORDER BY 2
        """).fetchall()
    assert "pgsnap.band_for(bigint,bigint)" in {name for _, name in functions}

    failures = []
    for oid, name in functions:
        try:
            with conn.transaction():
                conn.execute("SELECT pg_catalog.fmgr_sql_validator(%s)", [oid])
        except Exception as exc:  # collect them all, then report
            failures.append(f"  {name}: {str(exc).strip().splitlines()[0]}")
    assert not failures, "LANGUAGE sql functions that do not validate:\n" + "\n".join(failures)


def test_every_pgsnap_function_pins_its_search_path(conn):
    """PL/pgSQL functions carry `SET search_path = pg_catalog, pg_temp` (pg_temp last, so no
    temporary object can shadow anything). SQL functions have a standard body (BEGIN ATOMIC):
    PostgreSQL parses it when the function is created and binds every name to an object, so no
    search_path applies to it later, and the planner can inline it. Procedures are the other
    exception: PostgreSQL forbids transaction control under a SET clause, so they pin theirs
    inside the body (see sql/40_populate.sql)."""
    rows = conn.execute(
        """
        SELECT p.oid::regprocedure::text, p.prosecdef,
               (SELECT c FROM unnest(p.proconfig) AS c WHERE c LIKE 'search_path=%%'),
               l.lanname = 'sql' AND p.prosqlbody IS NOT NULL
          FROM pg_catalog.pg_proc p
          JOIN pg_catalog.pg_language l ON l.oid = p.prolang
         WHERE p.pronamespace = 'pgsnap'::regnamespace AND p.prokind = 'f'
         ORDER BY 1
        """).fetchall()
    assert rows
    assert any(bound for *_, bound in rows) and any(setting for _, _, setting, _ in rows)
    unpinned = [f"  {name}{' (SECURITY DEFINER)' if definer else ''}: {setting or 'no SET search_path'}"
                for name, definer, setting, bound in rows
                if not bound and (not setting or not setting.replace(" ", "").endswith(",pg_temp"))]
    assert not unpinned, ("pgsnap functions without a pinned search_path ending in pg_temp, nor a"
                          " standard SQL body:\n" + "\n".join(unpinned))

    definer_procedures = conn.execute(
        """
        SELECT p.oid::regprocedure::text FROM pg_catalog.pg_proc p
         WHERE p.pronamespace = 'pgsnap'::regnamespace AND p.prokind = 'p' AND p.prosecdef
        """).fetchall()
    assert definer_procedures == [], "SECURITY DEFINER procedures cannot pin their search_path"


# -- squawk ----------------------------------------------------------------------------------------
def test_squawk_finds_nothing_unexplained_in_the_migrations():
    report = squawk_lint.lint()

    assert report.findings, "squawk reported nothing at all: is it linting the migrations?"
    lines = [f"  {f}" for f in report.unexplained] + [
        f"  stale exception in .squawk.toml (matches no finding; delete it): {a}" for a in report.stale]
    assert not lines, ("squawk over migrations/*.sql:\n" + "\n".join(lines)
                       + "\nFix the migration, or explain the finding with a [[pgsnap_allow]] entry "
                         "in .squawk.toml.")
