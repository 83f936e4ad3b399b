"""Drive the safety-net backfill from Python: the same run bookkeeping as
`CALL pgsnap.backfill_missing_snapshots()`, one committed batch at a time, with progress."""

from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg

from pgsnap.errors import PgsnapError

TABLES = ("target_populations", "offers", "ad_events")  # the three tables that carry a snapshot


@dataclass
class BackfillResult:
    run_id: int | None            # None: another run was active, this one was skipped
    status: str
    batches: int = 0
    filled: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))

    def summary(self) -> str:
        if self.run_id is None:
            return "backfill skipped: another run is active"
        counts = ", ".join(f"{t} {n}" for t, n in self.filled.items())
        return f"backfill run {self.run_id} {self.status}: {self.batches} batches; filled {counts}"


def remaining(conn: psycopg.Connection) -> int:
    """NULL snapshots left in the three tables (cheap: partial NULL indexes)."""
    return conn.execute("SELECT coalesce(sum(rows), 0)::bigint FROM pgsnap.backfill_plan()").fetchone()[0]


def plan(conn: psycopg.Connection) -> list[tuple[str, str, int]]:
    """Dry run: (table, source, rows) that a backfill would fill; writes nothing."""
    return conn.execute("SELECT table_name, source, rows FROM pgsnap.backfill_plan()"
                        " WHERE rows > 0 ORDER BY 1, 2").fetchall()


def run(conn: psycopg.Connection, batch_size: int = 500, max_batches: int | None = None,
        on_progress: Callable[[int, int], None] | None = None) -> BackfillResult:
    """Fill NULL snapshots batch by batch on an autocommit connection (each batch commits)."""
    if not conn.autocommit:
        raise ValueError("backfill needs an autocommit connection: one transaction per batch")
    conn.execute("SELECT pgsnap._check_batch_size(%s)", [batch_size])
    if max_batches is not None and max_batches < 1:
        raise PgsnapError(f"max batches must be a positive integer, got {max_batches}", exit_code=2)
    total = remaining(conn)
    run_id = conn.execute("SELECT pgsnap._backfill_run_start()").fetchone()[0]
    result = BackfillResult(run_id, "skipped" if run_id is None else "running")
    if run_id is None:
        return result
    done = 0
    try:
        while max_batches is None or result.batches < max_batches:
            counts = conn.execute("SELECT * FROM pgsnap.backfill_batch(%s)", [batch_size]).fetchone()
            if not any(counts):
                break
            stop = conn.execute("SELECT pgsnap._backfill_run_step(%s, %s, %s, %s)",
                                [run_id, *counts]).fetchone()[0]
            result.batches += 1
            for table, n in zip(TABLES, counts, strict=True):
                result.filled[table] += n
            done += sum(counts)
            if on_progress:
                on_progress(done, max(total, done))
            if stop:
                result.status = "stopped"
                break
    except BaseException as exc:
        result.status = "failed"
        if not conn.closed and not conn.broken:
            conn.execute("SELECT pgsnap._backfill_run_finish(%s, 'failed', %s)",
                         [run_id, str(exc).splitlines()[0] if str(exc) else type(exc).__name__])
        raise
    if result.status == "running":
        result.status = "succeeded"
    conn.execute("SELECT pgsnap._backfill_run_finish(%s, %s)", [run_id, result.status])
    return result
