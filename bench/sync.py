"""The application's side: what a tag write costs once pgsnap maintains targets.

* (e) single tag change latency with 100 and 1,000 maintained targets, then with the
  ``me_file_tags`` triggers disabled; on the connection that has just populated the main
  targets; and with 3 wide targets (every me_file with a sex tag is in one of their bands)
  that all use the changed trait, measured on the connection that populated them;
* (h) tag-write throughput with 1 and 8 concurrent writers, triggers on and off;
* counts: 8 writers moving me_files in and out of the same band, sync p95 with a reader
  polling ``pgsnap.band_counts`` and without, and the counts compared with ``count(*)``.
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

import psycopg

from bench.common import WARMUP, Context, Unavailable, ratio, require

#: trait writes per statement pair: the INSERT of a tag, then its DELETE
INSERT_TAG = "INSERT INTO me_file_tags (me_file_id, trait_id, tag_value) VALUES (%s, %s, %s)"
DELETE_TAG = "DELETE FROM me_file_tags WHERE me_file_id = %s AND trait_id = %s"

#: three wide targets: Ring 2 = {sex}, Ring 1 = + {9 of the 10 age ranges}, bullseye = + {the
#: wide trait (a cuisine no other target uses), one hobby}; the skipped age range and the
#: hobby differ, so no two are twins (each is scanned, not copied)
WIDE_TARGETS = """
WITH spec AS (
    SELECT k, nextval(pg_get_serial_sequence('targets', 'id')) AS target_id FROM generate_series(0, 2) k
), targets_in AS (
    INSERT INTO targets (id, title) SELECT target_id, 'Wide ' || k FROM spec RETURNING id
), groups AS (
    SELECT s.k, s.target_id, g.g, nextval(pg_get_serial_sequence('trait_groups', 'id')) AS group_id
      FROM spec s CROSS JOIN generate_series(1, 3) g
), groups_in AS (
    INSERT INTO trait_groups (id, title)
    SELECT group_id, 'Wide ' || k || ' group ' || g FROM groups RETURNING id
), group_traits AS (
    INSERT INTO trait_group_traits (trait_group_id, trait_id)
    SELECT g.group_id, t.id
      FROM groups g
      JOIN traits p ON p.parent_trait_id IS NULL
                   AND p.trait_name = CASE g.g WHEN 1 THEN 'Sex (Biological)' WHEN 2 THEN 'Age'
                                                   ELSE 'Hobbies' END
                   OR g.g = 3 AND p.id = (SELECT c.parent_trait_id FROM traits c WHERE c.id = %(wide)s)
      JOIN traits t ON t.parent_trait_id = p.id
     WHERE (g.g = 1)
        OR (g.g = 2 AND t.id <> (SELECT a.id FROM traits a WHERE a.parent_trait_id = p.id
                                  ORDER BY a.id OFFSET g.k LIMIT 1))
        OR (g.g = 3 AND (t.id = %(wide)s
                         OR t.id = (SELECT h.id FROM traits h
                                     WHERE h.parent_trait_id = p.id AND p.trait_name = 'Hobbies'
                                     ORDER BY h.id OFFSET g.k LIMIT 1)))
    RETURNING 1
), bands AS (
    SELECT s.k, s.target_id, b.b, nextval(pg_get_serial_sequence('target_bands', 'id')) AS band_id
      FROM spec s CROSS JOIN generate_series(1, 3) b
), bands_in AS (
    INSERT INTO target_bands (id, target_id, title, is_bullseye)
    SELECT band_id, target_id, CASE b WHEN 1 THEN 'Bullseye' ELSE 'Ring ' || (b - 1) END, b = 1
      FROM bands ORDER BY band_id RETURNING id
)
SELECT s.target_id, b.band_id, g.group_id
  FROM spec s
  JOIN bands b ON b.target_id = s.target_id
  JOIN groups g ON g.target_id = s.target_id AND g.g <= 4 - b.b
 ORDER BY s.target_id, b.band_id, g.group_id
"""


# -- helpers -------------------------------------------------------------------------------------
def triggers_present(c: psycopg.Connection) -> None:
    if not c.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'me_file_tags'::regclass"
                     " AND NOT tgisinternal").fetchone()[0]:
        raise Unavailable("no triggers on me_file_tags")


def me_files_without(c: psycopg.Connection, trait_id: int, n: int, skip: int = 0) -> list[int]:
    """n me_files (spread over the id range) without a tag on trait_id."""
    return [r[0] for r in c.execute(
        "SELECT m.id FROM me_files m WHERE NOT EXISTS (SELECT 1 FROM me_file_tags t"
        " WHERE t.me_file_id = m.id AND t.trait_id = %s) ORDER BY hashint8(m.id), m.id OFFSET %s LIMIT %s",
        [trait_id, skip, n])]


def trait_name(c: psycopg.Connection, trait_id: int) -> str:
    return c.execute("SELECT trait_name FROM traits WHERE id = %s", [trait_id]).fetchone()[0]


def quantiles(timings: list[float]) -> dict[str, Any]:
    if not timings:
        return {"n": 0, "p50_ms": None, "p95_ms": None}
    q = statistics.quantiles(timings, n=100, method="inclusive") if len(timings) > 1 else [timings[0]] * 99
    return {"n": len(timings), "p50_ms": round(statistics.median(timings), 3),
            "p95_ms": round(q[94], 3), "mean_ms": round(statistics.fmean(timings), 3),
            "max_ms": round(max(timings), 3)}


def tag_changes(c: psycopg.Connection, me_files: list[int], trait_id: int, name: str,
                warmup: int = WARMUP) -> list[float]:
    """One INSERT then one DELETE of the tag per me_file, each its own transaction (autocommit);
    milliseconds of each statement after the first `warmup` me_files."""
    timings = []
    for i, me_file_id in enumerate(me_files):
        for statement, params in ((INSERT_TAG, [me_file_id, trait_id, name]),
                                  (DELETE_TAG, [me_file_id, trait_id])):
            t0 = time.perf_counter()
            c.execute(statement, params)
            if i >= warmup:
                timings.append((time.perf_counter() - t0) * 1000)
    return timings


class triggers_disabled:
    """ALTER TABLE me_file_tags DISABLE TRIGGER USER for the block (the benchmark's database only)."""

    def __init__(self, c: psycopg.Connection):
        self.c = c

    def __enter__(self):
        self.c.execute("ALTER TABLE me_file_tags DISABLE TRIGGER USER")

    def __exit__(self, *exc):
        self.c.execute("ALTER TABLE me_file_tags ENABLE TRIGGER USER")


def maintained(c: psycopg.Connection) -> int:
    return c.execute("SELECT count(*) FROM targets"
                     " WHERE population_status IN ('populating', 'populated')").fetchone()[0]


def referencing_pct(c: psycopg.Connection, trait_id: int) -> float:
    return float(c.execute(
        """SELECT round(100.0 * count(DISTINCT bt.target_id) / nullif((SELECT count(*) FROM targets
                         WHERE population_status IN ('populating', 'populated')), 0), 2)
             FROM pgsnap.band_traits bt JOIN targets t ON t.id = bt.target_id
            WHERE bt.trait_id = %s AND t.population_status IN ('populating', 'populated')""",
        [trait_id]).fetchone()[0] or 0)


MAINTAIN = """
CREATE OR REPLACE FUNCTION bench.maintain(p_target_ids bigint[]) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_cands bigint[];
    v_files bigint[];
    v_bands bigint[];
    v_rows  bigint;
BEGIN
    -- setup only: a member holds a tag of every group all its target's bands share, so when
    -- each target has such a group, only those me_files can be members (the rule decides)
    CREATE TEMP TABLE IF NOT EXISTS bench_common (target_id bigint, trait_group_id bigint) ON COMMIT DROP;
    TRUNCATE bench_common;
    INSERT INTO bench_common
    SELECT b.target_id, bg.trait_group_id FROM public.target_bands b
      JOIN public.target_band_trait_groups bg ON bg.target_band_id = b.id
     WHERE b.target_id = ANY (p_target_ids)
     GROUP BY b.target_id, bg.trait_group_id
    HAVING count(*) = (SELECT count(*) FROM public.target_bands x WHERE x.target_id = b.target_id);
    IF (SELECT count(DISTINCT target_id) FROM bench_common) = cardinality(p_target_ids) THEN
        SELECT array_agg(DISTINCT t.me_file_id) INTO v_cands
          FROM bench_common c
          JOIN public.trait_group_traits gt ON gt.trait_group_id = c.trait_group_id
          JOIN public.me_file_tags t ON t.trait_id = gt.trait_id;
    END IF;
    -- EXECUTE: planned with the arrays' real sizes, as populate's statements are
    EXECUTE 'SELECT array_agg(m.me_file_id), array_agg(m.target_band_id) FROM pgsnap.memberships($1) m
              WHERE $2 IS NULL OR m.me_file_id = ANY ($2)'
      INTO v_files, v_bands USING p_target_ids, v_cands;
    EXECUTE 'INSERT INTO public.target_populations
                    (target_id, target_band_id, me_file_id, matching_tags_snapshot, inputs_hash)
             SELECT m.target_id, m.target_band_id, m.me_file_id, s.snapshot, m.inputs_hash
               FROM pgsnap.memberships($1) m
               JOIN pgsnap.snapshots($2, $3) s USING (me_file_id, target_band_id)
              WHERE $4 IS NULL OR m.me_file_id = ANY ($4)'
      USING p_target_ids, v_files, v_bands, v_cands;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    UPDATE public.targets SET population_status = 'populated', last_populated_at = now()
     WHERE id = ANY (p_target_ids);
    INSERT INTO pgsnap.target_state (target_id, catalogue_hash)
    SELECT t, pgsnap._snapshot_catalogue_hash(t) FROM unnest(p_target_ids) t
        ON CONFLICT (target_id) DO UPDATE SET catalogue_hash = EXCLUDED.catalogue_hash;
    RETURN v_rows;
END;
$$"""


def maintain(c: psycopg.Connection, target_ids: list[int], chunk: int = 50) -> float:
    """Bring narrow targets to the state populate_target leaves them in, set-based: the rule's
    rows (pgsnap.memberships) with the builder's snapshots (pgsnap.snapshots), status
    populated. The same functions populate uses, in a few big statements: 1,000 CALLs would
    dominate the run. Returns seconds."""
    c.execute("CREATE SCHEMA IF NOT EXISTS bench")
    c.execute(MAINTAIN)
    start = time.perf_counter()
    for i in range(0, len(target_ids), chunk):
        c.execute("SELECT bench.maintain(%s)", [target_ids[i:i + chunk]])
    return time.perf_counter() - start


def verify_sample(c: psycopg.Connection, target_ids: list[int], n: int = 3) -> int:
    """Differences pgsnap.verify_target finds in the first and last few targets set up."""
    sample = sorted(set(target_ids[:n] + target_ids[-n:]))
    return c.execute("SELECT count(*) FROM unnest(%s::bigint[]) t CROSS JOIN LATERAL pgsnap.verify_target(t)",
                     [sample]).fetchone()[0]


# -- (e) -----------------------------------------------------------------------------------------
def e_sync_latency(ctx: Context) -> dict[str, Any]:
    require(ctx.conn, "pgsnap.memberships(bigint[])", "pgsnap.snapshots(bigint[],bigint[])")
    c = ctx.conn
    triggers_present(c)
    probe = ctx.dataset.probe_trait_id
    name = trait_name(c, probe)
    me_files = me_files_without(c, probe, ctx.scale.sync_statements // 2 + WARMUP)
    out: dict[str, Any] = {"probe_trait": name, "statements": 2 * (len(me_files) - WARMUP),
                           "warmup_statements": 2 * WARMUP, "runs": {}}
    populated = 0
    for want in ctx.scale.maintained:
        batch = ctx.narrow[populated: populated + max(want - maintained(c), 0)]
        ctx.log(f"e_sync_latency: bringing {len(batch)} more targets to populated ...")
        t_pop = maintain(c, batch)
        c.execute("VACUUM (ANALYZE) target_populations")  # no autovacuum run amid the timings
        populated += len(batch)
        out["runs"][str(want)] = {
            **quantiles(tag_changes(c, me_files, probe, name)),
            "maintained_targets": maintained(c), "referencing_probe_pct": referencing_pct(c, probe),
            "setup_s": round(t_pop, 3), "narrow_populated": len(batch),
            "setup_verify_differences": verify_sample(c, batch) if batch else 0,
        }
    with triggers_disabled(c):
        out["runs"]["triggers_disabled"] = quantiles(tag_changes(c, me_files, probe, name))
    low, high = (out["runs"][str(m)]["p95_ms"]
                 for m in (min(ctx.scale.maintained), max(ctx.scale.maintained)))
    out["ratio_p95_high_vs_low"] = ratio(high, low)
    return out


def e_same_connection(ctx: Context) -> dict[str, Any]:
    """Tag changes on the connection that has just populated the main targets (its cached plans
    were made while the table was filling), of the trait most main targets show."""
    c = ctx.conn
    triggers_present(c)
    if ctx.results.get("b_populate", {}).get("status") != "ok":
        raise Unavailable("needs (b)")
    trait_id, targets = c.execute(
        "SELECT trait_id, count(DISTINCT target_id) FROM pgsnap.band_traits WHERE target_id = ANY(%s)"
        " AND in_snapshot GROUP BY trait_id ORDER BY 2 DESC, 1 LIMIT 1", [ctx.main]).fetchone()
    name = trait_name(c, trait_id)
    me_files = me_files_without(c, trait_id, ctx.scale.sync_statements // 2 + WARMUP)
    # warm-up 0: the first statements are the ones a stale cached plan would hurt
    return {"trait": name, "main_targets_using_it": targets,
            **quantiles(tag_changes(c, me_files, trait_id, name, warmup=0))}


def e_wide_targets(ctx: Context) -> dict[str, Any]:
    """3 wide targets that all use one trait nobody else uses, populated on a new connection,
    then tag changes of that trait on that same connection."""
    c = ctx.conn
    triggers_present(c)
    found = c.execute(
        """SELECT t.id FROM traits t JOIN traits p ON p.id = t.parent_trait_id AND p.trait_name = 'Cuisine'
            WHERE NOT EXISTS (SELECT 1 FROM trait_group_traits gt WHERE gt.trait_id = t.id)
            ORDER BY t.id LIMIT 1""").fetchone()
    if found is None:
        raise Unavailable("every cuisine is used by some target")
    ctx.wide_trait = found[0]
    rows = c.execute(WIDE_TARGETS, {"wide": ctx.wide_trait}).fetchall()
    with c.transaction():
        for _target, band, group in rows:
            c.execute("INSERT INTO target_band_trait_groups (target_band_id, trait_group_id) VALUES (%s, %s)",
                      [band, group])
    ctx.wide = sorted({r[0] for r in rows})
    name = trait_name(c, ctx.wide_trait)
    with psycopg.connect(ctx.dsn, autocommit=True) as wide_conn:
        t0 = time.perf_counter()
        for target_id in ctx.wide:
            wide_conn.execute("CALL pgsnap.populate_target(%s)", [target_id])
        populate_s = time.perf_counter() - t0
        per_target = dict(wide_conn.execute(
            "SELECT target_id, count(*) FROM target_populations WHERE target_id = ANY(%s) GROUP BY 1",
            [ctx.wide]).fetchall())
        me_files = me_files_without(wide_conn, ctx.wide_trait, ctx.scale.sync_statements // 2 + WARMUP)
        timings = tag_changes(wide_conn, me_files, ctx.wide_trait, name, warmup=0)
    return {"targets": ctx.wide, "rows_per_target": {str(k): v for k, v in sorted(per_target.items())},
            "populate_s": round(populate_s, 3), "trait": name,
            "targets_using_it": referencing_count(c, ctx.wide_trait), **quantiles(timings)}


def referencing_count(c: psycopg.Connection, trait_id: int) -> int:
    return c.execute("SELECT count(DISTINCT target_id) FROM pgsnap.band_traits WHERE trait_id = %s",
                     [trait_id]).fetchone()[0]


# -- concurrent writers --------------------------------------------------------------------------
READER_PAUSE = 0.01  # s between band_counts reads: 100 reads/s, far above any dashboard's rate
def concurrent_writes(dsn: str, writers: int, me_files: list[int], trait_id: int, name: str,
                      reader: bool = False) -> dict[str, Any]:
    """`writers` sessions, each inserting then deleting the tag for its own share of me_files
    (autocommit single-row statements), started together. Optionally a reader polling
    pgsnap.band_counts of the wide targets meanwhile, 100 times a second. Throughput and latency quantiles."""
    shares = [me_files[i::writers] for i in range(writers)]
    timings: list[list[float]] = [[] for _ in range(writers)]
    errors: list[BaseException] = []
    start = threading.Barrier(writers + 1 + (1 if reader else 0))
    done = threading.Event()
    reads = [0]

    def write(i: int) -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                tag_changes(conn, shares[i][:2], trait_id, name, warmup=2)   # connect and plan first
                start.wait()
                timings[i] = tag_changes(conn, shares[i][2:], trait_id, name, warmup=0)
        except BaseException as exc:  # reported below, never swallowed
            errors.append(exc)
            start.abort()

    def read() -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                start.wait()
                target = trait_target(conn)
                while not done.wait(READER_PAUSE):  # a busy dashboard, not a spinning core
                    conn.execute("SELECT * FROM pgsnap.band_counts(%s)", [target])
                    reads[0] += 1
        except BaseException as exc:
            errors.append(exc)

    def trait_target(conn: psycopg.Connection) -> int:
        return conn.execute("SELECT min(target_id) FROM pgsnap.band_traits WHERE trait_id = %s",
                            [trait_id]).fetchone()[0]

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    if reader:
        threads.append(threading.Thread(target=read))
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads[:writers]:
        t.join()
    seconds = time.perf_counter() - t0
    done.set()
    for t in threads[writers:]:
        t.join()
    if errors:
        raise errors[0]
    flat = [x for t in timings for x in t]
    return {"writers": writers, "statements": len(flat), "seconds": round(seconds, 3),
            "statements_per_s": round(len(flat) / seconds, 1), "band_counts_reads": reads[0],
            **quantiles(flat)}


def h_throughput(ctx: Context) -> dict[str, Any]:
    """Tag writes per second of the trait every wide target uses (and no other), 1 and 8
    writers, triggers on and off."""
    if not ctx.wide:
        raise Unavailable("needs the wide targets of (e)")
    c = ctx.conn
    probe = ctx.wide_trait
    name = trait_name(c, probe)
    out: dict[str, Any] = {"trait": name, "runs": {}}
    for writers in (1, 8):
        me_files = me_files_without(c, probe, writers * (ctx.scale.writes_per_writer // 2 + 2))
        on = concurrent_writes(ctx.dsn, writers, me_files, probe, name)
        with triggers_disabled(c):
            off = concurrent_writes(ctx.dsn, writers, me_files, probe, name)
        out["runs"][str(writers)] = {"triggers_on": on, "triggers_off": off,
                                     "on_over_off": ratio(on["statements_per_s"], off["statements_per_s"])}
    return out


def counts_churn(ctx: Context) -> dict[str, Any]:
    """8 writers moving me_files between the Ring 1 and the bullseye of the wide targets; sync
    p95 with a reader polling pgsnap.band_counts and without; the counts equal count(*) after."""
    if not ctx.wide:
        raise Unavailable("needs the wide targets of (e)")
    c = ctx.conn
    probe = ctx.wide_trait
    name = trait_name(c, probe)
    me_files = me_files_without(c, probe, 8 * (ctx.scale.writes_per_writer // 2 + 2))
    off = concurrent_writes(ctx.dsn, 8, me_files, probe, name)
    on = concurrent_writes(ctx.dsn, 8, me_files, probe, name, reader=True)
    # in the middle of churn the counts are what a transaction sees; at rest, compare them all
    mismatches = c.execute(
        """SELECT count(*) FROM (
               SELECT b.target_band_id, b.population FROM unnest(%s::bigint[]) t
                 CROSS JOIN LATERAL pgsnap.band_counts(t) b
               EXCEPT
               SELECT b.id, (SELECT count(*) FROM target_populations tp WHERE tp.target_band_id = b.id)
                 FROM target_bands b WHERE b.target_id = ANY(%s)) d""", [ctx.wide, ctx.wide]).fetchone()[0]
    bands = c.execute("SELECT count(*) FROM target_bands WHERE target_id = ANY(%s)", [ctx.wide]).fetchone()[0]
    t0 = time.perf_counter()
    c.execute("SELECT * FROM pgsnap.band_counts(%s)", [ctx.wide[0]]).fetchall()
    read_ms = (time.perf_counter() - t0) * 1000
    return {"trait": name, "without_reader": off, "with_reader": on,
            "p95_with_over_without": ratio(on["p95_ms"], off["p95_ms"]),
            "bands_checked": bands, "count_mismatches": mismatches, "band_counts_ms": round(read_ms, 3)}
