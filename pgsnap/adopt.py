"""`pgsnap adopt`: take over a database whose application schema was made without pgsnap.

The baseline migration (`0001.baseline-schema`) is built in a scratch schema inside a
transaction that is rolled back, and the application's tables in `public` are compared with
it: every table, every column (type, NOT NULL) and every named constraint (its definition),
the names later migrations rely on. Extra tables, columns and constraints are fine. Only when
nothing differs is the baseline recorded as applied (yoyo's `mark`), so `migrate` continues
from there.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import psycopg
from psycopg import sql
from yoyo.migrations import read_sql_migration

from pgsnap import deploy
from pgsnap.db import connect
from pgsnap.errors import Exit, PgsnapError

COLUMNS = """
    SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull
      FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
     WHERE c.relnamespace = %s::regnamespace AND c.relkind IN ('r', 'p')
       AND a.attnum > 0 AND NOT a.attisdropped"""
CONSTRAINTS = """
    SELECT c.relname, k.conname, pg_get_constraintdef(k.oid)
      FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
     WHERE c.relnamespace = %s::regnamespace"""


@dataclass
class Adoption:
    baseline: str
    tables: int = 0
    differences: list[str] = field(default_factory=list)
    recorded: bool = False
    already: bool = False  # the baseline was recorded before

    @property
    def compatible(self) -> bool:
        return not self.differences


def _describe(conn: psycopg.Connection, schema: str, tables: list[str]) -> tuple[dict, dict]:
    conn.execute("SET LOCAL search_path = ''")  # every name in a definition comes qualified
    columns = {(t, c): (typ, notnull) for t, c, typ, notnull in conn.execute(COLUMNS, [schema])
               if t in tables}
    constraints = {(t, name): definition.replace(f"{schema}.", "")
                   for t, name, definition in conn.execute(CONSTRAINTS, [schema]) if t in tables}
    return columns, constraints


def compare(conn: psycopg.Connection, baseline) -> tuple[list[str], list[str]]:
    """(the baseline's tables, every difference of `public` from it); writes nothing."""
    tables = deploy.baseline_tables(baseline)
    scratch = f"pgsnap_adopt_{secrets.token_hex(4)}"
    with conn.transaction(force_rollback=True):
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(scratch)))
        conn.execute(sql.SQL("SET LOCAL search_path = {}").format(sql.Identifier(scratch)))
        for statement in read_sql_migration(baseline.path)[2]:
            conn.execute(statement)
        want_columns, want_constraints = _describe(conn, scratch, tables)
        have_columns, have_constraints = _describe(conn, "public", tables)
        present = {t for (t,) in conn.execute("SELECT relname FROM pg_class"
                                              " WHERE relnamespace = 'public'::regnamespace"
                                              " AND relkind IN ('r', 'p')")}
    differences = []
    for table in tables:
        if table not in present:
            differences.append(f"table {table} is missing")
            continue
        for (t, column), (typ, notnull) in want_columns.items():
            if t != table:
                continue
            have = have_columns.get((t, column))
            if have is None:
                differences.append(f"column {t}.{column} is missing")
            elif have[0] != typ:
                differences.append(f"column {t}.{column} is {have[0]}, expected {typ}")
            elif have[1] != notnull:
                differences.append(f"column {t}.{column} is {'NOT NULL' if have[1] else 'nullable'}, "
                                   f"expected {'NOT NULL' if notnull else 'nullable'}")
        for (t, name), definition in want_constraints.items():
            if t != table:
                continue
            have_def = have_constraints.get((t, name))
            if have_def is None:
                differences.append(f"constraint {name} on {t} is missing (expected {definition})")
            elif have_def != definition:
                differences.append(f"constraint {name} on {t} is {have_def}, expected {definition}")
    return tables, differences


def adopt(dsn: str, *, lock_wait: float = 600) -> Adoption:
    baseline = deploy.read_migrations()[0]
    result = Adoption(baseline.id)
    with connect(dsn) as conn:
        deploy.check_current(conn, allow_behind=True)
        if baseline.id in deploy.applied_migrations(conn):
            result.already = True
            return result
        tables, result.differences = compare(conn, baseline)
        result.tables = len(tables)
        if sum(d.startswith("table ") for d in result.differences) == len(tables):
            raise PgsnapError("none of the application's tables exists: nothing to adopt; "
                              f"`pgsnap migrate` creates them ({baseline.id})", Exit.CANNOT_RUN)
        if not result.compatible:
            return result
        with deploy.migration_backend(dsn) as backend, deploy.migration_lock(backend, lock_wait):
            if baseline.id not in deploy.applied_migrations(conn):  # not adopted meanwhile
                backend.ensure_internal_schema_updated()
                with backend.transaction():
                    backend.mark_one(baseline)  # logged as a `mark` in _yoyo_log
        result.recorded = True
    return result
