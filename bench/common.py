"""What every benchmark scenario shares: the scales, the run's context, small measuring helpers."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from pgsnap.demo import datagen


@dataclass(frozen=True)
class Scale:
    name: str
    me_files: int
    targets: int = 10           # main targets: (a)-(d)
    legacy_targets: int = 2     # targets holding the legacy rows: (f)
    maintained: tuple[int, ...] = (100, 1000)   # (e): maintained targets per measurement
    sync_statements: int = 1000  # (e): single-row statements per measurement (p95: the 50 slowest)
    peer_targets: int = 10      # (c): main targets the (slow) peer populates
    writes_per_writer: int = 300  # (h), counts: tag writes per concurrent writer


SCALES = {
    "tiny": Scale("tiny", 2_000, sync_statements=100),
    "small": Scale("small", 20_000),
    "medium": Scale("medium", 200_000),
    "large": Scale("large", 1_000_000, peer_targets=3),
}


#: (e): me_files whose two statements run first, unmeasured, in each configuration
WARMUP = 5


class Unavailable(Exception):
    """A scenario's SQL objects do not exist (yet)."""


@dataclass
class Context:
    dsn: str
    conn: psycopg.Connection
    scale: Scale
    seed: int
    log: Callable[[str], None]
    dataset: datagen.Dataset | None = None
    legacy: dict[str, Any] = field(default_factory=dict)
    main: list[int] = field(default_factory=list)
    legacy_ids: list[int] = field(default_factory=list)
    narrow: list[int] = field(default_factory=list)
    wide: list[int] = field(default_factory=list)
    #: the trait only the wide targets use: (e) wide, (h) and the counts change it
    wide_trait: int | None = None
    #: seconds of each main target's populate in (b), by target id
    populate_seconds: dict[int, float] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)


# -- helpers -------------------------------------------------------------------------------------
def peak_rss_mb() -> float:
    """Peak resident set size of this Python process so far (ru_maxrss is in KiB on Linux)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def require(conn: psycopg.Connection, *signatures: str) -> None:
    missing = [s for s in signatures
               if conn.execute("SELECT to_regprocedure(%s) IS NULL", [s]).fetchone()[0]]
    if missing:
        raise Unavailable("missing " + ", ".join(missing))


def call_populate(conn: psycopg.Connection, target_ids: list[int]) -> float:
    """CALL pgsnap.populate_target for each target (autocommit: commits per batch); seconds."""
    start = time.perf_counter()
    for target_id in target_ids:
        conn.execute("CALL pgsnap.populate_target(%s)", [target_id])
    return time.perf_counter() - start


def population_rows(conn: psycopg.Connection, target_ids: list[int]) -> int:
    return conn.execute(
        "SELECT count(*) FROM target_populations tp JOIN target_bands b ON b.id = tp.target_band_id"
        " WHERE b.target_id = ANY(%s)", [target_ids]).fetchone()[0]


def table_writes(conn: psycopg.Connection, table: str) -> int:
    """Rows inserted + updated + deleted in `table` so far, as the statistics system counts them.

    pg_stat_force_next_flush() makes this backend publish its pending counters as soon as the
    statement ends, so the next statement reads figures that include our own work."""
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT pg_stat_clear_snapshot()")
    return conn.execute(
        "SELECT n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_user_tables WHERE relid = %s::regclass",
        [table]).fetchone()[0]


def rate(rows: int, seconds: float) -> float | None:
    return round(rows / seconds, 1) if seconds > 0 else None


def ratio(x: float | None, y: float | None) -> float | None:
    return round(x / y, 3) if x is not None and y else None


def delete_populations(conn: psycopg.Connection, target_ids: list[int]) -> None:
    conn.execute("DELETE FROM target_populations tp USING target_bands b"
                 " WHERE b.id = tp.target_band_id AND b.target_id = ANY(%s)", [target_ids])
    conn.execute("VACUUM (ANALYZE) target_populations")


