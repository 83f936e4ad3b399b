"""The three tables that carry a snapshot, and the one query counting their NULL snapshots."""

import psycopg
from psycopg import sql

# parents before children: the order the backfill fills them in, and the order reports use
SNAPSHOT_TABLES = ("target_populations", "offers", "ad_events")

# a database without pgsnap (the legacy schema) has no pgsnap.snapshot_health(): the same
# counts in plain SQL
_LEGACY_HEALTH = sql.SQL(" UNION ALL ").join(
    sql.SQL("SELECT {name}, count(*) FILTER (WHERE matching_tags_snapshot IS NULL), count(*)"
            " FROM public.{table}").format(name=sql.Literal(t), table=sql.Identifier(t))
    for t in SNAPSHOT_TABLES)


def snapshot_health(conn: psycopg.Connection) -> dict[str, tuple[int, int]]:
    """{table: (NULL snapshots, rows)} in SNAPSHOT_TABLES order, on any schema version (zeros on
    a database without the application's tables)."""
    if conn.execute("SELECT to_regprocedure('pgsnap.snapshot_health()') IS NOT NULL").fetchone()[0]:
        rows = conn.execute(
            "SELECT table_name, null_snapshots, total_rows FROM pgsnap.snapshot_health()").fetchall()
    elif conn.execute("SELECT to_regclass('public.target_populations') IS NULL").fetchone()[0]:
        rows = []
    else:
        rows = conn.execute(_LEGACY_HEALTH).fetchall()
    found = {name: (int(nulls), int(total)) for name, nulls, total in rows}
    return {t: found.get(t, (0, 0)) for t in SNAPSHOT_TABLES}
