"""The benchmark scenarios (design.md section 8), each a small function over one dataset.

Order of a run (one database, one generated dataset):

* setup: legacy schema (``--to 0001.baseline-schema``), ``datagen.generate``, legacy rows with
  NULL snapshots in the *legacy* targets, ``migrate(backfill=False)`` (pgsnap deployed, NOT
  NULL not yet enforced);
* (f) backfill of the legacy NULLs at all three levels (``CALL
  pgsnap.backfill_missing_snapshots()``), then fresh population of the same targets;
* finish the migration (NOT NULL enforced), ANALYZE;
* (a) the floor: ``pgsnap.memberships`` rows inserted into a same-shaped table without
  snapshots; (b) ``CALL pgsnap.populate_target``; (d) the same again (no-op refresh, rows
  written counted from ``pg_stat_user_tables``); (c) the peer into the same emptied table, then
  its rows and snapshots compared with (b)'s;
* (e) single tag change latency with 100 and 1,000 maintained targets (the narrow targets
  are brought to their populated state set-based, see ``maintain``), then with the
  ``me_file_tags`` triggers disabled.

A scenario whose SQL objects do not exist is reported ``unavailable``; one that raises is
reported ``failed`` with the error, and the run goes on.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from bench import peer
from pgsnap import deploy
from pgsnap.demo import datagen

#: every figure a run reports, in order (the test checks the JSON has each)
FIGURES = ("a_floor", "b_populate", "c_peer", "d_noop_refresh", "e_sync_latency",
           "f_backfill")


@dataclass(frozen=True)
class Scale:
    name: str
    me_files: int
    targets: int = 10           # main targets: (a)-(d)
    legacy_targets: int = 2     # targets holding the legacy rows: (f)
    maintained: tuple[int, ...] = (100, 1000)   # (e): maintained targets per measurement
    sync_statements: int = 300  # (e): single-row statements per measurement


SCALES = {
    "tiny": Scale("tiny", 2_000, sync_statements=100),
    "small": Scale("small", 20_000),
    "medium": Scale("medium", 200_000),
    "large": Scale("large", 1_000_000),
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
def a_floor(ctx: Context) -> dict[str, Any]:
    """Membership rows without snapshots into a table shaped like target_populations."""
    require(ctx.conn, "pgsnap.memberships(bigint[])")
    c = ctx.conn
    c.execute("CREATE SCHEMA IF NOT EXISTS bench")
    c.execute("DROP TABLE IF EXISTS bench.floor")
    c.execute("CREATE TABLE bench.floor (LIKE public.target_populations"
              " INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING INDEXES)")
    c.execute("ALTER TABLE bench.floor DROP COLUMN matching_tags_snapshot")
    insert = ("INSERT INTO bench.floor (target_id, target_band_id, me_file_id)"
              " SELECT target_id, target_band_id, me_file_id FROM pgsnap.memberships(%s)")
    t0 = time.perf_counter()
    rows = 0
    for target_id in ctx.main:
        rows += c.execute(insert, [[target_id]]).rowcount
    seconds = time.perf_counter() - t0
    return {"seconds": round(seconds, 3), "rows": rows, "rows_per_s": rate(rows, seconds),
            "indexes": c.execute("SELECT count(*) FROM pg_indexes WHERE schemaname = 'bench'"
                                 " AND tablename = 'floor'").fetchone()[0]}


def b_populate(ctx: Context) -> dict[str, Any]:
    require(ctx.conn, "pgsnap.populate_target(bigint,integer)")
    seconds = call_populate(ctx.conn, ctx.main)
    rows = population_rows(ctx.conn, ctx.main)
    return {"seconds": round(seconds, 3), "rows": rows, "rows_per_s": rate(rows, seconds)}


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
    """The original's algorithm on the same data, same table and indexes, from empty."""
    c = ctx.conn
    compare = ctx.results.get("b_populate", {}).get("status") == "ok"
    if compare:
        c.execute("DROP TABLE IF EXISTS bench.pgsnap_rows")
        c.execute("CREATE SCHEMA IF NOT EXISTS bench")
        c.execute("CREATE TABLE bench.pgsnap_rows AS SELECT tp.target_band_id, tp.me_file_id,"
                  " tp.matching_tags_snapshot FROM target_populations tp JOIN target_bands b"
                  " ON b.id = tp.target_band_id WHERE b.target_id = ANY(%s)", [ctx.main])
    delete_populations(c, ctx.main)
    runs = []
    t0 = time.perf_counter()
    with psycopg.connect(ctx.dsn, autocommit=True) as peer_conn:
        for target_id in ctx.main:
            runs.append(peer.populate_target(peer_conn, target_id))
    seconds = time.perf_counter() - t0
    rows = population_rows(c, ctx.main)
    out: dict[str, Any] = {
        "seconds": round(seconds, 3), "rows": rows, "rows_per_s": rate(rows, seconds),
        "inserted": sum(r.inserted for r in runs), "batches": sum(r.batches for r in runs),
        "queries": sum(r.queries for r in runs),
    }
    if compare:
        pgsnap_rows, peer_rows, mismatches = c.execute(
            """SELECT (SELECT count(*) FROM bench.pgsnap_rows), count(p.me_file_id),
                      count(*) FILTER (WHERE s.matching_tags_snapshot
                                             IS DISTINCT FROM p.matching_tags_snapshot)
                 FROM bench.pgsnap_rows s
                 FULL JOIN (SELECT tp.target_band_id, tp.me_file_id, tp.matching_tags_snapshot
                              FROM target_populations tp JOIN target_bands b ON b.id = tp.target_band_id
                             WHERE b.target_id = ANY(%s)) p
                   USING (target_band_id, me_file_id)""", [ctx.main]).fetchone()
        out["equal_to_pgsnap"] = {"pgsnap_rows": pgsnap_rows, "peer_rows": peer_rows,
                                  "mismatches": mismatches,
                                  "equal": mismatches == 0 and pgsnap_rows == peer_rows}
    return out


# -- (e) sync latency ----------------------------------------------------------------------------
def e_sync_latency(ctx: Context) -> dict[str, Any]:
    require(ctx.conn, "pgsnap.memberships(bigint[])", "pgsnap.snapshots(bigint[],bigint[])")
    c = ctx.conn
    if not c.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'me_file_tags'::regclass"
                     " AND NOT tgisinternal").fetchone()[0]:
        raise Unavailable("no triggers on me_file_tags")
    probe = ctx.dataset.probe_trait_id
    probe_name = c.execute("SELECT trait_name FROM traits WHERE id = %s", [probe]).fetchone()[0]
    me_files = [r[0] for r in c.execute(
        "SELECT m.id FROM me_files m WHERE NOT EXISTS (SELECT 1 FROM me_file_tags t"
        " WHERE t.me_file_id = m.id AND t.trait_id = %s) ORDER BY hashint8(m.id), m.id LIMIT %s",
        [probe, ctx.scale.sync_statements // 2 + WARMUP])]
    out: dict[str, Any] = {"probe_trait": probe_name, "statements": 2 * (len(me_files) - WARMUP),
                           "warmup_statements": 2 * WARMUP, "runs": {}}
    populated = 0
    for maintained in ctx.scale.maintained:
        want = maintained - _maintained(c)
        batch = ctx.narrow[populated: populated + max(want, 0)]
        ctx.log(f"e_sync_latency: bringing {len(batch)} more targets to populated ...")
        t_pop = maintain(c, batch)
        c.execute("VACUUM (ANALYZE) target_populations")  # no autovacuum run amid the timings
        populated += len(batch)
        out["runs"][str(maintained)] = {
            **_tag_changes(c, me_files, probe, probe_name),
            "maintained_targets": _maintained(c),
            "referencing_probe_pct": _referencing_pct(c, probe),
            "setup_s": round(t_pop, 3), "narrow_populated": len(batch),
        }
    c.execute("ALTER TABLE me_file_tags DISABLE TRIGGER USER")
    try:
        out["runs"]["triggers_disabled"] = _tag_changes(c, me_files, probe, probe_name)
    finally:
        c.execute("ALTER TABLE me_file_tags ENABLE TRIGGER USER")
    low, high = (out["runs"][str(m)]["p95_ms"] for m in (min(ctx.scale.maintained),
                                                         max(ctx.scale.maintained)))
    out["ratio_p95_high_vs_low"] = ratio(high, low)
    return out


def maintain(c: psycopg.Connection, target_ids: list[int], chunk: int = 50) -> float:
    """Bring targets to the state populate_target leaves them in, set-based: the rule's rows
    (pgsnap.memberships) with the builder's snapshots, status populated. The same functions
    populate uses, in a few big statements: setting up 1,000 maintained targets through 1,000
    CALLs would dominate the run at medium scale. Returns seconds."""
    insert = """
        WITH m AS (SELECT * FROM pgsnap.memberships(%(ids)s))
        INSERT INTO target_populations
               (target_id, target_band_id, me_file_id, matching_tags_snapshot, inputs_hash)
        SELECT m.target_id, m.target_band_id, m.me_file_id, s.snapshot, m.inputs_hash
          FROM m
          JOIN pgsnap.snapshots((SELECT array_agg(me_file_id) FROM m),
                                (SELECT array_agg(target_band_id) FROM m)) s
         USING (me_file_id, target_band_id)"""
    start = time.perf_counter()
    for i in range(0, len(target_ids), chunk):
        ids = target_ids[i:i + chunk]
        with c.transaction():
            c.execute(insert, {"ids": ids})
            c.execute("UPDATE targets SET population_status = 'populated', last_populated_at = now()"
                      " WHERE id = ANY(%s)", [ids])
            c.execute("INSERT INTO pgsnap.target_state (target_id, catalogue_hash)"
                      " SELECT t, pgsnap._snapshot_catalogue_hash(t) FROM unnest(%s::bigint[]) t"
                      " ON CONFLICT (target_id) DO UPDATE SET catalogue_hash = excluded.catalogue_hash", [ids])
    return time.perf_counter() - start


def _tag_changes(c: psycopg.Connection, me_files: list[int], probe: int, name: str) -> dict[str, Any]:
    """One INSERT then one DELETE of the probe tag per me_file, each its own transaction; the
    first WARMUP me_files' statements are not counted (plan caches of a fresh session)."""
    timings = []
    for i, me_file_id in enumerate(me_files):
        for statement, params in (
            ("INSERT INTO me_file_tags (me_file_id, trait_id, tag_value) VALUES (%s, %s, %s)",
             [me_file_id, probe, name]),
            ("DELETE FROM me_file_tags WHERE me_file_id = %s AND trait_id = %s", [me_file_id, probe]),
        ):
            t0 = time.perf_counter()
            c.execute(statement, params)
            if i >= WARMUP:
                timings.append((time.perf_counter() - t0) * 1000)
    if not timings:
        return {"n": 0, "p50_ms": None, "p95_ms": None}
    q = statistics.quantiles(timings, n=100, method="inclusive")
    return {"n": len(timings), "p50_ms": round(statistics.median(timings), 3),
            "p95_ms": round(q[94], 3), "mean_ms": round(statistics.fmean(timings), 3),
            "max_ms": round(max(timings), 3)}


def _maintained(c: psycopg.Connection) -> int:
    return c.execute("SELECT count(*) FROM targets"
                     " WHERE population_status IN ('populating', 'populated')").fetchone()[0]


def _referencing_pct(c: psycopg.Connection, trait_id: int) -> float:
    return float(c.execute(
        """SELECT round(100.0 * count(DISTINCT b.target_id) / nullif((SELECT count(*) FROM targets
                         WHERE population_status IN ('populating', 'populated')), 0), 2)
             FROM trait_group_traits gt
             JOIN target_band_trait_groups bg ON bg.trait_group_id = gt.trait_group_id
             JOIN target_bands b ON b.id = bg.target_band_id
             JOIN targets t ON t.id = b.target_id
            WHERE gt.trait_id = %s AND t.population_status IN ('populating', 'populated')""",
        [trait_id]).fetchone()[0] or 0)


# -- the run -------------------------------------------------------------------------------------
def run_scenario(ctx: Context, name: str, fn: Callable[[Context], dict[str, Any]]) -> dict[str, Any]:
    ctx.log(f"{name} ...")
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
        for name, fn in (("a_floor", a_floor), ("b_populate", b_populate),
                         ("d_noop_refresh", d_noop_refresh), ("c_peer", c_peer),
                         ("e_sync_latency", e_sync_latency)):
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

    e = (r.get("e_sync_latency") or {})
    f = (r.get("f_backfill") or {})
    return {
        "b_over_a": ratio(secs("b_populate"), secs("a_floor")),
        "c_over_b": ratio(secs("c_peer"), secs("b_populate")),
        "d_over_b": ratio(secs("d_noop_refresh"), secs("b_populate")),
        "e_p95_1000_over_100": e.get("ratio_p95_high_vs_low") if e.get("status") == "ok" else None,
        "f_over_fresh": f.get("ratio_per_row_vs_fresh") if f.get("status") == "ok" else None,
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
