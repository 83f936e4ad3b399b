"""Drive `pgsnap.populate_target` from Python, batch by batch, with progress.

The SQL does all the work; this only runs the same three steps as the procedure
(`_populate_begin`, `_reconcile` per batch, `_populate_finish`) so that each batch
commits on its own and the CLI can show a bar while it goes.
"""

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import psycopg


@dataclass
class PopulateResult:
    target_id: int
    status: str
    batches: int = 0
    inserted: int = 0
    moved: int = 0
    refreshed: int = 0
    deleted: int = 0
    unchanged: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        if self.status == "not_populated":
            return f"target {self.target_id}: no bands, status not_populated"
        return (f"target {self.target_id}: {self.inserted} inserted, {self.moved} moved, "
                f"{self.deleted} deleted, {self.refreshed} refreshed, {self.unchanged} unchanged "
                f"({self.batches} batches, {self.seconds:.2f}s)")


def populate(conn: psycopg.Connection, target_id: int, batch_size: int = 500,
             on_batch: Callable[[int, int], None] | None = None) -> PopulateResult:
    """Populate one target on an autocommit connection; `on_batch(done, total)` after each batch."""
    started = time.monotonic()
    status = conn.execute("SELECT pgsnap._populate_begin(%s, %s)", [target_id, batch_size]).fetchone()[0]
    result = PopulateResult(target_id, status)
    if status == "not_populated":
        return result
    try:
        batches = [row[0] for row in conn.execute(
            "SELECT b FROM pgsnap._populate_batches(%s, %s) AS b", [target_id, batch_size])]
        for i, me_file_ids in enumerate(batches, 1):
            ins, mov, ref, dele = conn.execute(
                "SELECT inserted, moved, refreshed, deleted"
                "  FROM pgsnap._reconcile(ARRAY[%s]::bigint[], %s::bigint[], false)",
                [target_id, me_file_ids]).fetchone()
            result.inserted += ins
            result.moved += mov
            result.refreshed += ref
            result.deleted += dele
            result.batches = i
            if on_batch:
                on_batch(i, len(batches))
    except BaseException:
        # the run lock is session-level: a connection that lives on must not keep it
        if not conn.closed and not conn.broken:
            conn.rollback()
            conn.execute("SELECT pg_advisory_unlock(pgsnap.lock_key('populate:' || %s::bigint))",
                         [target_id])
        raise
    rows = conn.execute("SELECT pgsnap._populate_finish(%s)", [target_id]).fetchone()[0]
    result.status = "populated"
    result.unchanged = rows - result.inserted - result.moved - result.refreshed
    result.seconds = round(time.monotonic() - started, 3)
    return result
