-- The snapshot builder (docs/rules.md, "Snapshot"), defined once: set-based, one call builds
-- the snapshots of many (me_file, band) pairs; build_snapshot() is its one-pair view.
-- {"tags": [[parent_id, parent_name, parent_order, [[trait_id, value, order], ...]], ...]}
-- from the me_file's tags whose trait belongs to one of the band's groups and has a parent;
-- parents by display_order then id, children likewise; a blank value shows the trait's name.
--
-- Written as JSON text in one ordered pass and cast to jsonb once: each tag contributes its
-- child entry, preceded by its parent's opening when it is the first of its parent (a window
-- over the same order). One sort instead of two nested aggregations; to_json quotes the
-- strings. pgsnap.band_traits carries every name and order shown, so no other table is read.
--
-- Each tag's entry is found by the primary key (trait, band). The tags and their bands form one
-- relation first (OFFSET 0 keeps it whole), because the planner costs a lookup driven by two
-- relations as if run once: for the sync's single pair it preferred reading the trait's bands
-- in every target and filtering them, a hundred rows or more per tag for a common trait.

CREATE OR REPLACE FUNCTION pgsnap.snapshots(p_me_file_ids bigint[], p_band_ids bigint[])
RETURNS TABLE (me_file_id bigint, target_band_id bigint, snapshot jsonb)
LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    WITH pairs AS (
        SELECT DISTINCT u.me_file_id, u.band_id
          FROM unnest(p_me_file_ids, p_band_ids) AS u(me_file_id, band_id)
    ),
    shown AS (   -- one row per tag shown: its text, and where it sorts
        SELECT pt.me_file_id, pt.band_id, m.parent_order, m.parent_trait_id, m.trait_order, m.trait_id,
               CASE WHEN lag(m.parent_trait_id) OVER w IS NOT DISTINCT FROM m.parent_trait_id THEN ','
                    ELSE CASE WHEN lag(m.parent_trait_id) OVER w IS NULL THEN '[' ELSE ']],[' END
                         || m.parent_trait_id || ',' || to_json(m.parent_name) || ',' || m.parent_order || ',['
               END
               || '[' || m.trait_id || ',' || to_json(coalesce(nullif(pt.tag_value, ''), m.trait_name))
               || ',' || m.trait_order || ']' AS piece
          FROM (SELECT p.me_file_id, p.band_id, t.trait_id, t.tag_value
                  FROM pairs p
                  JOIN public.me_file_tags t ON t.me_file_id = p.me_file_id
                OFFSET 0) pt   -- see above
          JOIN pgsnap.band_traits m ON m.trait_id = pt.trait_id AND m.target_band_id = pt.band_id
         WHERE m.in_snapshot
        WINDOW w AS (PARTITION BY pt.me_file_id, pt.band_id
                     ORDER BY m.parent_order, m.parent_trait_id, m.trait_order, m.trait_id)
    )
    SELECT p.me_file_id, p.band_id,
           ('{"tags":[' || coalesce(string_agg(x.piece, '' ORDER BY x.parent_order, x.parent_trait_id,
                                                           x.trait_order, x.trait_id) || ']]', '')
            || ']}')::jsonb
      FROM pairs p
      LEFT JOIN shown x ON x.me_file_id = p.me_file_id AND x.band_id = p.band_id
     GROUP BY p.me_file_id, p.band_id;
END;
COMMENT ON FUNCTION pgsnap.snapshots(bigint[], bigint[]) IS
    'Snapshots of the (me_file, band) pairs zipped from the two arrays; the one builder.';

CREATE OR REPLACE FUNCTION pgsnap.build_snapshot(p_me_file_id bigint, p_target_band_id bigint)
RETURNS jsonb
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT s.snapshot FROM pgsnap.snapshots(ARRAY[p_me_file_id], ARRAY[p_target_band_id]) s;
END;
COMMENT ON FUNCTION pgsnap.build_snapshot(bigint, bigint) IS
    'matching_tags_snapshot of a me_file in a band: {"tags": [[parent_id, name, order, [[trait_id, value, order], ...]], ...]}; never NULL.';

-- The catalogue's part of a target's snapshots, as one number: the names, orders and
-- parents of every trait its bands show. A populate compares it with the one its rows were
-- built from: when equal, an unchanged inputs_hash means an unchanged snapshot.
CREATE OR REPLACE FUNCTION pgsnap._snapshot_catalogue_hash(p_target_id bigint)
RETURNS bigint
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT coalesce(bit_xor(hashtextextended(
               concat_ws(E'\x1f', x.trait_id, x.trait_name, x.trait_order, x.parent_trait_id, x.parent_name,
                         x.parent_order),
               1)), 0)   -- seed 1: the snapshot format's version
      FROM (SELECT DISTINCT bt.trait_id, bt.trait_name, bt.trait_order, bt.parent_trait_id, bt.parent_name,
                            bt.parent_order
              FROM pgsnap.band_traits bt
             WHERE bt.target_id = p_target_id AND bt.in_snapshot) x;
END;
