"""`pgsnap migrate --plan`: what `migrate` would do, without writing anything.

* the pending migrations in the order and steps `migrate` would apply them (pgsnap/deploy.py),
  each with the locks its statements take on existing tables (read from the statements: see
  STATEMENT_LOCKS) and whether it is an enforcement step;
* the NULL snapshots the journey would backfill, per table and source (`pgsnap.backfill_plan()`,
  or plain counts on a database without pgsnap yet), with an estimate from one timed sample
  batch run in a transaction that is rolled back;
* whether `sql/` would change: its checksum against the one recorded by the last deploy.
"""

from __future__ import annotations

import re
import time

import psycopg
import sqlparse
from yoyo.migrations import Migration, read_sql_migration

from pgsnap import deploy, resources
from pgsnap.db import connect, routine_exists, server_label
from pgsnap.errors import describe_db_error
from pgsnap.health import SNAPSHOT_TABLES, snapshot_health

# PostgreSQL's table lock modes, weakest first
MODES = ("ACCESS SHARE", "ROW SHARE", "ROW EXCLUSIVE", "SHARE UPDATE EXCLUSIVE", "SHARE",
         "SHARE ROW EXCLUSIVE", "EXCLUSIVE", "ACCESS EXCLUSIVE")
_NAME = r'((?:"[^"]+"|\w+)(?:\.(?:"[^"]+"|\w+))?)'
# (pattern on the statement without comments, mode on the named table); the first match wins
STATEMENT_LOCKS = [
    (rf"ALTER TABLE (?:IF EXISTS )?(?:ONLY )?{_NAME}\s+VALIDATE CONSTRAINT \w+\s*;?$",
     "SHARE UPDATE EXCLUSIVE"),
    (rf"ALTER TABLE (?:IF EXISTS )?(?:ONLY )?{_NAME}", "ACCESS EXCLUSIVE"),
    (rf"CREATE (?:UNIQUE )?INDEX CONCURRENTLY .*? ON (?:ONLY )?{_NAME}", "SHARE UPDATE EXCLUSIVE"),
    (rf"CREATE (?:UNIQUE )?INDEX .*? ON (?:ONLY )?{_NAME}", "SHARE"),
    (rf"(?:UPDATE|DELETE FROM|INSERT INTO) (?:ONLY )?{_NAME}", "ROW EXCLUSIVE"),
    (rf"(?:DROP TABLE|TRUNCATE)(?: TABLE)? (?:IF EXISTS )?{_NAME}", "ACCESS EXCLUSIVE"),
    (rf"CREATE (?:OR REPLACE )?(?:CONSTRAINT )?TRIGGER .*? ON {_NAME}", "SHARE ROW EXCLUSIVE"),
]
_LOCK = re.compile(rf"LOCK (?:TABLE )?(?:ONLY )?{_NAME}.*? IN ([A-Z ]+?) MODE", re.IGNORECASE | re.DOTALL)
_REFERENCES = re.compile(rf"\bREFERENCES {_NAME}", re.IGNORECASE)
SAMPLE_BATCH = 200


def _table(name: str) -> str:
    name = name.replace('"', "")
    return name.removeprefix("public.")


def statements(migration: Migration) -> list[str]:
    _directives, _comment, found = read_sql_migration(migration.path)
    return [sqlparse.format(s, strip_comments=True).strip() for s in found]


def locks_of(migration: Migration, created: set[str]) -> tuple[dict[str, str], list[str]]:
    """{table: strongest mode} its statements take on tables that exist before it (tables it or
    an earlier pending migration creates are in `created`, and grow with its own), and the
    statements whose locks cannot be read (DO blocks)."""
    found: dict[str, str] = {}
    unread: list[str] = []

    def take(table: str, mode: str) -> None:
        table = _table(table)
        if table not in created and (table not in found or MODES.index(mode) > MODES.index(found[table])):
            found[table] = mode

    for statement in statements(migration):
        if (m := deploy.CREATE_TABLE.match(statement)) is not None:
            created.add(_table(m.group(1)))
        elif (m := _LOCK.match(statement)) is not None:
            take(m.group(1), " ".join(m.group(2).upper().split()))
        elif re.match(r"DO\b", statement, re.IGNORECASE):
            unread.append(statement.splitlines()[0])
        else:
            for pattern, mode in STATEMENT_LOCKS:
                if (m := re.match(pattern, statement, re.IGNORECASE | re.DOTALL)) is not None:
                    take(m.group(1), mode)
                    break
        for ref in _REFERENCES.findall(statement):
            take(ref, "SHARE ROW EXCLUSIVE")
    return found, unread


def _backfill(conn: psycopg.Connection) -> dict:
    """The NULL snapshots a backfill would fill now, per table and source, and an estimate."""
    installed = routine_exists(conn, "pgsnap.backfill_plan()")
    tables: dict[str, dict] = {}
    if installed:
        for table, source, n in conn.execute("SELECT table_name, source, rows FROM pgsnap.backfill_plan()"
                                             " ORDER BY 1, 2"):
            entry = tables.setdefault(table, {"nulls": 0, "sources": {}})
            entry["nulls"] += int(n)
            if n:
                entry["sources"][source] = int(n)
        found = {t: tables.get(t, {"nulls": 0, "sources": {}}) for t in SNAPSHOT_TABLES}
    else:
        found = {t: {"nulls": nulls, "sources": None} for t, (nulls, _rows) in snapshot_health(conn).items()}
    total = sum(v["nulls"] for v in found.values())
    return {"tables": found, "total": total, "exact": installed or not total,
            "estimate": _estimate(conn, total, installed)}


def _estimate(conn: psycopg.Connection, total: int, installed: bool) -> dict:
    if not total:
        return {"seconds": 0.0}
    if not installed:
        return {"unavailable": "pgsnap's functions are not deployed yet: run `pgsnap migrate --no-backfill`, "
                               "then `pgsnap migrate --plan` again"}
    try:
        with conn.transaction(force_rollback=True):  # a real batch, rolled back: nothing is written
            conn.execute("SET LOCAL lock_timeout = '1s'")
            started = time.perf_counter()
            filled = sum(conn.execute("SELECT * FROM pgsnap.backfill_batch(%s)", [SAMPLE_BATCH]).fetchone())
            seconds = time.perf_counter() - started
    except psycopg.Error as exc:
        return {"unavailable": f"the sample batch failed: {describe_db_error(exc)}"}
    if not filled:
        return {"unavailable": "the sample batch filled nothing (rows locked by other sessions?)"}
    return {"seconds": round(total * seconds / filled, 1), "sample_rows": int(filled),
            "sample_seconds": round(seconds, 3)}


def plan(dsn: str, to: str | None = None) -> dict:
    migrations = deploy.read_migrations()
    wanted = deploy.wanted_ids(migrations, to)
    with connect(dsn) as conn:
        deploy.check_current(conn, allow_behind=True)
        applied = deploy.applied_migrations(conn)
        deploy.refuse_unadopted(conn, applied)
        pending = [m for m in migrations if m.id not in applied]
        order = deploy.execution_order(pending, set(applied))
        created: set[str] = set()
        steps, backfill_before = [], None
        for whole in deploy.steps_of(order):
            step = [m for m in whole if m.id in wanted]
            if not step:
                continue
            if deploy.is_enforcement(step[0]) and backfill_before is None:
                backfill_before = step[0].id
            entries = []
            for m in step:
                locks, unread = locks_of(m, created)
                entries.append({"id": m.id, "enforcement": deploy.is_enforcement(m),
                                "transactional": bool(m.use_transactions),
                                "locks": [{"table": t, "mode": mode} for t, mode in locks.items()],
                                "unread": unread})
            # a step without a transaction deploys no sql/: migrate deploys it after the last step
            sql = ("none" if not step[0].use_transactions else
                   "deployed" if len(step) == len(whole) else "if it can be without the rest")
            steps.append({"migrations": entries, "sql": sql})
        files = resources.sql_files()
        checksum, deployed = deploy.sql_checksum(files), deploy.deployed_checksum(conn)
        backfill = _backfill(conn) if backfill_before else None
        if backfill is not None:
            backfill["before"] = backfill_before
    return {"database": server_label(dsn), "applied": len(applied),
            "pending": sum(len(s["migrations"]) for s in steps), "steps": steps, "backfill": backfill,
            "sql": {"files": len(files), "checksum": checksum, "deployed_checksum": deployed,
                    "changes": checksum != deployed}}
