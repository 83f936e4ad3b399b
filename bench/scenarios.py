"""The benchmark's run: one database, one generated dataset, every figure in one process.

Order:

* setup: legacy schema (``--to 0001.baseline-schema``), ``datagen.generate``, legacy rows with
  NULL snapshots in the *legacy* targets, ``migrate(backfill=False)`` (pgsnap deployed, NOT
  NULL not yet enforced);
* (f) backfill of the legacy NULLs at all three levels (``CALL
  pgsnap.backfill_missing_snapshots()``), then fresh population of the same targets;
* finish the migration (NOT NULL enforced), ANALYZE;
* (a) the floor: ``pgsnap.memberships`` rows inserted into a same-shaped table without
  snapshots; (a') the same rows into a copy of target_populations with its CHECK and foreign
  keys, each with the empty snapshot: what any writer of the rows pays, the least (b) can take;
  (b) ``CALL pgsnap.populate_target`` of the same targets; (e) tag changes on
  the connection that ran (b); (d) (b) again (no-op refresh, rows written counted from
  ``pg_stat_user_tables``); copy vs. scan and (g) rename (``bench.catalogue``); (c) the
  original's algorithm (``bench.peer``, in a process of its own) into the emptied rows,
  compared with (b)'s;
* (e) sync latency with 100 and 1,000 maintained targets and with 3 wide targets, (h)
  throughput and the counts under churn (``bench.sync``).

Each scenario starts from a ``CHECKPOINT`` (not timed). A scenario whose SQL objects do not exist
is reported ``unavailable``; one that raises is reported ``failed`` with the error, and the run
goes on.
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import psycopg
from psycopg import sql

from bench import catalogue, peer, sync
from bench.common import (
    SCALES,
    Context,
    Scale,
    Unavailable,
    call_populate,
    delete_populations,
    peak_rss_mb,
    population_rows,
    rate,
    ratio,
    require,
    table_writes,
)
from pgsnap import deploy
from pgsnap.demo import datagen

__all__ = ["FIGURES", "SCALES", "Context", "run", "run_scenario", "table_writes"]

#: every figure a run reports, in order (the test checks the JSON has each)
FIGURES = ("a_floor", "a_checked", "b_populate", "e_same_connection", "d_noop_refresh", "g_rename",
           "copy_vs_scan", "c_peer", "e_sync_latency", "e_wide_targets", "h_throughput", "counts_churn",
           "f_backfill")


# -- setup ---------------------------------------------------------------------------------------
def setup(ctx: Context) -> dict[str, Any]:
    """Legacy schema, generated data, legacy NULL rows, pgsnap deployed without enforcement."""
    s = ctx.scale
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    deploy.migrate(ctx.dsn, to="0001.baseline-schema")
    out["migrate_baseline_s"] = round(time.perf_counter() - t0, 3)

    narrow = max(s.maintained) - s.targets - s.legacy_targets
    t0 = time.perf_counter()
    ds = datagen.generate(ctx.conn, me_files=s.me_files, targets=s.targets + s.legacy_targets,
                          seed=ctx.seed, narrow_targets=max(narrow, 0))
    out["generate_s"] = round(time.perf_counter() - t0, 3)
    ctx.dataset = ds
    ctx.main, ctx.legacy_ids = ds.target_ids[: s.targets], ds.target_ids[s.targets:]
    ctx.narrow = ds.narrow_target_ids
    out["dataset"] = ds.counts

    t0 = time.perf_counter()
    ctx.legacy = datagen.generate_legacy_rows(ctx.conn, ctx.legacy_ids, seed=ctx.seed)
    out["legacy_rows_s"] = round(time.perf_counter() - t0, 3)
    out["legacy"] = ctx.legacy["totals"]

    t0 = time.perf_counter()
    result = deploy.migrate(ctx.dsn, backfill=False)
    out["migrate_no_backfill_s"] = round(time.perf_counter() - t0, 3)
    out["migrate_stopped"] = result.stopped

    # a freshly loaded table invites autovacuum, which would then compete with the timings
    t0 = time.perf_counter()
    _vacuum(ctx.conn)
    out["vacuum_s"] = round(time.perf_counter() - t0, 3)
    return out


def _vacuum(conn: psycopg.Connection) -> None:
    for table in ("me_files", "me_file_tags", "target_populations", "offers", "ad_events"):
        conn.execute(f"VACUUM (ANALYZE) {table}")


def finish_migration(ctx: Context) -> dict[str, Any]:
    """The rest of the NOT NULL journey (its own backfill finds nothing when (f) ran)."""
    t0 = time.perf_counter()
    result = deploy.migrate(ctx.dsn)
    _vacuum(ctx.conn)
    return {"migrate_s": round(time.perf_counter() - t0, 3), "applied": result.applied,
            "backfilled": result.backfilled}


# -- (f) backfill of legacy NULL rows vs fresh population ---------------------------------------
def f_backfill(ctx: Context) -> dict[str, Any]:
    require(ctx.conn, "pgsnap.backfill_missing_snapshots(integer,integer)",
            "pgsnap.snapshot_health()", "pgsnap.populate_target(bigint,integer)")
    health = "SELECT table_name, null_snapshots FROM pgsnap.snapshot_health()"
    before = dict(ctx.conn.execute(health).fetchall())
    t0 = time.perf_counter()
    ctx.conn.execute("CALL pgsnap.backfill_missing_snapshots()")
    seconds = time.perf_counter() - t0
    after = dict(ctx.conn.execute(health).fetchall())
    filled = {name: int(before[name] - after.get(name, 0)) for name in before}
    rows = sum(filled.values())

    # fresh: the same targets populated from nothing by the normal path
    delete_populations(ctx.conn, ctx.legacy_ids)
    fresh_s = call_populate(ctx.conn, ctx.legacy_ids)
    fresh_rows = population_rows(ctx.conn, ctx.legacy_ids)
    per_row = ratio(seconds / rows if rows else None, fresh_s / fresh_rows if fresh_rows else None)
    return {
        "seconds": round(seconds, 3), "rows": rows, "rows_per_s": rate(rows, seconds),
        "null_before": before, "null_after": after, "filled": filled,
        "fresh_seconds": round(fresh_s, 3), "fresh_rows": fresh_rows,
        "fresh_rows_per_s": rate(fresh_rows, fresh_s),
        "ratio_per_row_vs_fresh": per_row,
        "ratio_time_vs_fresh": ratio(seconds, fresh_s),
        "note": "per-row ratio: backfill seconds per filled row (all three tables) over fresh "
                "populate seconds per population row of the same targets",
    }


# -- (a) floor, (b) populate, (d) no-op refresh, (c) peer ---------------------------------------
def copy_of_populations(c: psycopg.Connection, name: str, including: str) -> None:
    """bench.<name>, an empty table LIKE target_populations with what `including` names."""
    c.execute("CREATE SCHEMA IF NOT EXISTS bench")
    table = sql.Identifier("bench", name)
    c.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
    c.execute(sql.SQL("CREATE TABLE {} (LIKE public.target_populations {})")
              .format(table, sql.SQL(including)))


def insert_per_target(c: psycopg.Connection, insert: str, target_ids: list[int]) -> tuple[int, float]:
    """Runs `insert` (one %s: the target's id in an array) once per target: rows, seconds."""
    t0 = time.perf_counter()
    rows = sum(c.execute(insert, [[target_id]]).rowcount for target_id in target_ids)
    return rows, time.perf_counter() - t0


def a_floor(ctx: Context) -> dict[str, Any]:
    """Membership rows without snapshots into a table shaped like target_populations."""
    require(ctx.conn, "pgsnap.memberships(bigint[])")
    c = ctx.conn
    copy_of_populations(c, "floor", "INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING INDEXES")
    c.execute("ALTER TABLE bench.floor DROP COLUMN matching_tags_snapshot")
    insert = ("INSERT INTO bench.floor (target_id, target_band_id, me_file_id)"
              " SELECT target_id, target_band_id, me_file_id FROM pgsnap.memberships(%s)")
    rows, seconds = insert_per_target(c, insert, ctx.main)
    return {"seconds": round(seconds, 3), "rows": rows, "rows_per_s": rate(rows, seconds),
            "indexes": c.execute("SELECT count(*) FROM pg_indexes WHERE schemaname = 'bench'"
                                 " AND tablename = 'floor'").fetchone()[0]}


def a_checked(ctx: Context) -> dict[str, Any]:
    """(a)'s rows, each with the empty snapshot, into a copy of target_populations with its
    indexes, CHECK constraints and foreign keys: no snapshot is built and nothing is compared,
    so (b) can be no faster. The copy is dropped afterwards (its foreign keys would add checks
    to later scenarios' writes of me_files and bands)."""
    require(ctx.conn, "pgsnap.memberships(bigint[])")
    c = ctx.conn
    copy_of_populations(c, "checked", "INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING INDEXES"
                                      " INCLUDING CONSTRAINTS")
    try:
        keys = [r[0] for r in c.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conrelid = 'public.target_populations'::regclass AND contype = 'f' ORDER BY conname")]
        for definition in keys:   # catalogue text, not input
            c.execute(sql.SQL("ALTER TABLE bench.checked ADD {}").format(sql.SQL(definition)))
        insert = ("INSERT INTO bench.checked (target_id, target_band_id, me_file_id, matching_tags_snapshot,"
                  " inputs_hash)"
                  " SELECT target_id, target_band_id, me_file_id, '{\"tags\": []}', inputs_hash"
                  " FROM pgsnap.memberships(%s)")
        rows, seconds = insert_per_target(c, insert, ctx.main)
        checks = c.execute("SELECT count(*) FROM pg_constraint WHERE conrelid = 'bench.checked'::regclass"
                           " AND contype = 'c'").fetchone()[0]
    finally:
        c.execute("DROP TABLE bench.checked")
    return {"seconds": round(seconds, 3), "rows": rows, "rows_per_s": rate(rows, seconds),
            "foreign_keys": len(keys), "checks": checks}


def b_populate(ctx: Context) -> dict[str, Any]:
    require(ctx.conn, "pgsnap.populate_target(bigint,integer)")
    for target_id in ctx.main:
        ctx.populate_seconds[target_id] = round(call_populate(ctx.conn, [target_id]), 3)
    seconds = sum(ctx.populate_seconds.values())
    rows = population_rows(ctx.conn, ctx.main)
    return {"seconds": round(seconds, 3), "rows": rows, "rows_per_s": rate(rows, seconds),
            "per_target_s": {str(k): v for k, v in ctx.populate_seconds.items()}}


def d_noop_refresh(ctx: Context) -> dict[str, Any]:
    require(ctx.conn, "pgsnap.populate_target(bigint,integer)")
    if ctx.results.get("b_populate", {}).get("status") != "ok":
        raise Unavailable("needs (b)")
    before = table_writes(ctx.conn, "target_populations")
    xid = ctx.conn.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()[0]
    seconds = call_populate(ctx.conn, ctx.main)
    written = table_writes(ctx.conn, "target_populations") - before
    # cross-check without the statistics system: rows whose version is newer than the run
    rewritten = ctx.conn.execute(
        "SELECT count(*) FROM target_populations tp JOIN target_bands b ON b.id = tp.target_band_id"
        " WHERE b.target_id = ANY(%s) AND tp.xmin::text::bigint >= %s",
        [ctx.main, xid % 2**32]).fetchone()[0]
    return {"seconds": round(seconds, 3), "rows_written": written,
            "rows_with_new_xmin": rewritten,
            "rows": population_rows(ctx.conn, ctx.main)}


def c_peer(ctx: Context) -> dict[str, Any]:
    """The original's algorithm on the same data, same table and indexes, from empty; on the
    first `peer_targets` main targets (it is slow: at large scale, a few), compared per row."""
    c = ctx.conn
    targets = ctx.main[: ctx.scale.peer_targets]
    compare = ctx.results.get("b_populate", {}).get("status") == "ok"
    if compare:
        c.execute("DROP TABLE IF EXISTS bench.pgsnap_rows")
        c.execute("CREATE SCHEMA IF NOT EXISTS bench")
        c.execute("CREATE TABLE bench.pgsnap_rows AS SELECT tp.target_band_id, tp.me_file_id,"
                  " tp.matching_tags_snapshot FROM target_populations tp JOIN target_bands b"
                  " ON b.id = tp.target_band_id WHERE b.target_id = ANY(%s)", [targets])
    delete_populations(c, targets)
    # a process of its own (started before the clock): its memory is the peer's, not pgsnap's
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(int).result()
        t0 = time.perf_counter()
        runs, peer_rss = pool.submit(peer.populate_targets, ctx.dsn, targets).result()
        seconds = time.perf_counter() - t0
    rows = population_rows(c, targets)
    out: dict[str, Any] = {
        "seconds": round(seconds, 3), "rows": rows, "rows_per_s": rate(rows, seconds),
        "inserted": sum(r.inserted for r in runs), "batches": sum(r.batches for r in runs),
        "queries": sum(r.queries for r in runs), "targets": len(targets), "peer_peak_rss_mb": peer_rss,
    }
    if compare:   # pgsnap's time for the same targets in (b)
        b_seconds = sum(ctx.populate_seconds[t] for t in targets)
        out["pgsnap_seconds_same_targets"] = round(b_seconds, 3)
        out["over_pgsnap_same_targets"] = ratio(seconds, b_seconds)
    if compare:
        pgsnap_rows, peer_rows, mismatches = c.execute(
            """SELECT (SELECT count(*) FROM bench.pgsnap_rows), count(p.me_file_id),
                      count(*) FILTER (WHERE s.matching_tags_snapshot
                                             IS DISTINCT FROM p.matching_tags_snapshot)
                 FROM bench.pgsnap_rows s
                 FULL JOIN (SELECT tp.target_band_id, tp.me_file_id, tp.matching_tags_snapshot
                              FROM target_populations tp JOIN target_bands b ON b.id = tp.target_band_id
                             WHERE b.target_id = ANY(%s)) p
                   USING (target_band_id, me_file_id)""", [targets]).fetchone()
        out["equal_to_pgsnap"] = {"pgsnap_rows": pgsnap_rows, "peer_rows": peer_rows,
                                  "mismatches": mismatches,
                                  "equal": mismatches == 0 and pgsnap_rows == peer_rows}
    return out


# -- the run -------------------------------------------------------------------------------------
def run_scenario(ctx: Context, name: str, fn: Callable[[Context], dict[str, Any]]) -> dict[str, Any]:
    ctx.log(f"{name} ...")
    checkpoint(ctx.conn)
    t0 = time.perf_counter()
    try:
        result = {"status": "ok", **fn(ctx)}
    except Unavailable as exc:
        result = {"status": "unavailable", "reason": str(exc)}
    except Exception as exc:  # keep going: one broken scenario must not hide the others
        result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}".strip()}
    result["wall_s"] = round(time.perf_counter() - t0, 3)
    result["peak_rss_mb"] = peak_rss_mb()
    ctx.results[name] = result
    ctx.log(f"{name}: {result['status']} ({result['wall_s']} s)")
    return result


def checkpoint(conn: psycopg.Connection) -> None:
    """Every scenario starts from a checkpoint: the dirty pages and WAL of the ones before are not
    flushed during its timings (in one run a checkpoint set off by their WAL ran through (b)), and
    each pays its own full-page writes. Needs superuser or pg_checkpoint; without either, the run
    goes on as before."""
    try:
        conn.execute("CHECKPOINT")
    except psycopg.errors.InsufficientPrivilege:
        pass


def run(dsn: str, scale: Scale, seed: int = 1,
        log: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """Everything, in order, on the (empty) database `dsn`; returns the JSON-ready result."""
    started = time.time()
    with psycopg.connect(dsn, autocommit=True) as conn:
        ctx = Context(dsn=dsn, conn=conn, scale=scale, seed=seed, log=log)
        report: dict[str, Any] = {"scale": scale.__dict__, "seed": seed, "machine": machine(conn)}
        log(f"setup: {scale.me_files} me_files ...")
        report["setup"] = setup(ctx)
        run_scenario(ctx, "f_backfill", f_backfill)
        log("finishing the migration ...")
        report["setup"]["finish"] = finish_migration(ctx)
        for name, fn in (("a_floor", a_floor), ("a_checked", a_checked), ("b_populate", b_populate),
                         ("e_same_connection", sync.e_same_connection),
                         ("d_noop_refresh", d_noop_refresh), ("copy_vs_scan", catalogue.copy_vs_scan),
                         ("g_rename", catalogue.g_rename), ("c_peer", c_peer),
                         ("e_sync_latency", sync.e_sync_latency), ("e_wide_targets", sync.e_wide_targets),
                         ("h_throughput", sync.h_throughput), ("counts_churn", sync.counts_churn)):
            run_scenario(ctx, name, fn)
        report["figures"] = {name: ctx.results.get(name) for name in FIGURES}
        report["ratios"] = ratios(ctx.results)
        report["peak_rss_mb"] = peak_rss_mb()
        report["elapsed_s"] = round(time.time() - started, 1)
        # other work on the machine skews timings: say how busy it was
        report["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return report


def ratios(r: dict[str, Any]) -> dict[str, float | None]:
    def secs(name: str) -> float | None:
        fig = r.get(name) or {}
        return fig.get("seconds") if fig.get("status") == "ok" else None

    def ok(name: str) -> dict[str, Any]:
        fig = r.get(name) or {}
        return fig if fig.get("status") == "ok" else {}

    h = ok("h_throughput").get("runs", {})
    return {
        "b_over_a": ratio(secs("b_populate"), secs("a_floor")),
        "a_checked_over_a": ratio(secs("a_checked"), secs("a_floor")),
        "c_over_b": ok("c_peer").get("over_pgsnap_same_targets"),
        "d_over_b": ratio(secs("d_noop_refresh"), secs("b_populate")),
        "e_p95_1000_over_100": ok("e_sync_latency").get("ratio_p95_high_vs_low"),
        "f_over_fresh": ok("f_backfill").get("ratio_per_row_vs_fresh"),
        "h_on_over_off_1": h.get("1", {}).get("on_over_off"),
        "h_on_over_off_8": h.get("8", {}).get("on_over_off"),
        "counts_p95_with_over_without": ok("counts_churn").get("p95_with_over_without"),
        "copy_over_scan": ok("copy_vs_scan").get("copy_over_scan"),
    }


def machine(conn: psycopg.Connection) -> dict[str, Any]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    mem_gb = None
    try:
        with open("/proc/meminfo") as f:
            kb = next(int(ln.split()[1]) for ln in f if ln.startswith("MemTotal"))
            mem_gb = round(kb / 1024 / 1024, 1)
    except (OSError, StopIteration):
        pass
    settings = dict(conn.execute(
        "SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY(%s) ORDER BY name",
        [["shared_buffers", "work_mem", "max_parallel_workers_per_gather", "fsync",
          "synchronous_commit", "jit"]]).fetchall())
    return {"nproc": os.cpu_count(), "cpu": cpu, "mem_gb": mem_gb,
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
            "postgres": conn.execute("SHOW server_version").fetchone()[0],
            "python": platform.python_version(), "settings": settings}
