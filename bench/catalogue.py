"""Catalogue changes and twins: what a re-populate rewrites after a rename, and copying a twin.

* (g) rename a trait the main targets show, re-populate them (the job's path): rows rewritten
  must equal rows whose snapshot changed;
* copy vs. scan: a clone of a main target (its own group rows, the same traits) is populated
  by copying; the scan is that main target's own populate in (b).
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import Context, Unavailable, call_populate, ratio, require, table_writes


def g_rename(ctx: Context) -> dict[str, Any]:
    require(ctx.conn, "pgsnap.stale_targets()")
    c = ctx.conn
    if ctx.results.get("b_populate", {}).get("status") != "ok":
        raise Unavailable("needs (b)")
    # of the shown traits at most 3 main targets use, the most tagged: a rename that rewrites
    # a part of a part of the rows
    trait_id, old_name = c.execute(
        """SELECT bt.trait_id, min(bt.trait_name) FROM pgsnap.band_traits bt
            WHERE bt.target_id = ANY(%s) AND bt.in_snapshot
            GROUP BY bt.trait_id HAVING count(DISTINCT bt.target_id) <= 3
            ORDER BY (SELECT count(*) FROM me_file_tags t WHERE t.trait_id = bt.trait_id) DESC, bt.trait_id
            LIMIT 1""", [ctx.main]).fetchone()
    c.execute("DROP TABLE IF EXISTS bench.before_rename")
    c.execute("CREATE TABLE bench.before_rename AS SELECT id, matching_tags_snapshot FROM target_populations"
              " WHERE target_id = ANY(%s)", [ctx.main])
    c.execute("UPDATE traits SET trait_name = trait_name || ' (renamed)' WHERE id = %s", [trait_id])
    stale = [r[0] for r in c.execute(
        "SELECT target_id FROM pgsnap.stale_targets() WHERE target_id = ANY(%s)", [ctx.main])]
    before = table_writes(c, "target_populations")
    seconds = call_populate(c, stale)
    written = table_writes(c, "target_populations") - before
    changed = c.execute(
        """SELECT count(*) FROM target_populations tp JOIN bench.before_rename b USING (id)
            WHERE tp.matching_tags_snapshot IS DISTINCT FROM b.matching_tags_snapshot""").fetchone()[0]
    rows = c.execute("SELECT count(*) FROM target_populations WHERE target_id = ANY(%s)",
                     [stale]).fetchone()[0]
    still_stale = c.execute("SELECT count(*) FROM pgsnap.stale_targets() WHERE target_id = ANY(%s)",
                            [ctx.main]).fetchone()[0]
    return {"trait": old_name, "stale_targets": len(stale), "seconds": round(seconds, 3),
            "rows": rows, "rows_written": written, "rows_with_changed_snapshot": changed,
            "written_equals_changed": written == changed, "still_stale": still_stale}


CLONE = """
WITH src AS (
    SELECT bg.target_band_id, bg.trait_group_id FROM target_band_trait_groups bg
      JOIN target_bands b ON b.id = bg.target_band_id WHERE b.target_id = %(source)s
), new_target AS (
    INSERT INTO targets (title) SELECT 'Clone of ' || title FROM targets WHERE id = %(source)s RETURNING id
), groups AS (
    SELECT g.trait_group_id, nextval(pg_get_serial_sequence('trait_groups', 'id')) AS new_id
      FROM (SELECT DISTINCT trait_group_id FROM src) g
), groups_in AS (
    INSERT INTO trait_groups (id, title)
    SELECT g.new_id, 'Clone of ' || tg.title FROM groups g JOIN trait_groups tg ON tg.id = g.trait_group_id
    RETURNING id
), traits_in AS (
    INSERT INTO trait_group_traits (trait_group_id, trait_id)
    SELECT g.new_id, gt.trait_id
      FROM groups g JOIN trait_group_traits gt ON gt.trait_group_id = g.trait_group_id
    RETURNING 1
), bands AS (
    SELECT b.id AS band_id, nextval(pg_get_serial_sequence('target_bands', 'id')) AS new_id
      FROM target_bands b WHERE b.target_id = %(source)s
), bands_in AS (
    INSERT INTO target_bands (id, target_id, title, is_bullseye)
    SELECT n.new_id, (SELECT id FROM new_target), b.title, b.is_bullseye
      FROM bands n JOIN target_bands b ON b.id = n.band_id
    RETURNING id
)
SELECT (SELECT id FROM new_target), n.new_id, g.new_id
  FROM src s JOIN bands n ON n.band_id = s.target_band_id JOIN groups g ON g.trait_group_id = s.trait_group_id
"""


def copy_vs_scan(ctx: Context) -> dict[str, Any]:
    require(ctx.conn, "pgsnap.populate_target(bigint,integer)")
    c = ctx.conn
    if ctx.results.get("b_populate", {}).get("status") != "ok":
        raise Unavailable("needs (b)")
    source = ctx.main[0]
    links = c.execute(CLONE, {"source": source}).fetchall()
    with c.transaction():
        for _target, band, group in links:
            c.execute("INSERT INTO target_band_trait_groups (target_band_id, trait_group_id) VALUES (%s, %s)",
                      [band, group])
    clone = links[0][0]
    notices: list[str] = []

    def keep(diag) -> None:
        notices.append(diag.message_primary or "")

    c.add_notice_handler(keep)
    try:
        t0 = time.perf_counter()
        c.execute("CALL pgsnap.populate_target(%s)", [clone])
        seconds = time.perf_counter() - t0
    finally:
        c.remove_notice_handler(keep)
    summary = next((n for n in reversed(notices) if n.startswith(f"pgsnap: target {clone} ")), "")
    rows = c.execute("SELECT count(*) FROM target_populations WHERE target_id = %s", [clone]).fetchone()[0]
    differences = c.execute("SELECT count(*) FROM pgsnap.verify_target(%s)", [clone]).fetchone()[0]
    scan_s = ctx.populate_seconds.get(source)
    return {"source": source, "clone": clone, "seconds": round(seconds, 3), "rows": rows, "summary": summary,
            "copied": f"(copied from target {source})" in summary, "verify_differences": differences,
            "scan_seconds": scan_s, "copy_over_scan": ratio(seconds, scan_s)}
