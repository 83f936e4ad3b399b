-- The snapshot builder (docs/rules.md, "Snapshot"), defined once: set-based, one call builds
-- the snapshots of many (me_file, band) pairs; build_snapshot() is its one-pair view.
-- {"tags": [[parent_id, parent_name, parent_order, [[trait_id, value, order], ...]], ...]}
-- from the me_file's tags whose trait belongs to one of the band's groups and has a parent;
-- parents by display_order then id, children likewise; a blank value shows the trait's name.
--
-- The nested arrays are built as json (text, cheap to concatenate) and cast to jsonb once.

CREATE OR REPLACE FUNCTION pgsnap.snapshots(p_me_file_ids bigint[], p_band_ids bigint[])
RETURNS TABLE (me_file_id bigint, target_band_id bigint, snapshot jsonb)
LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    WITH pairs AS (
        SELECT DISTINCT u.me_file_id, u.band_id
          FROM unnest(p_me_file_ids, p_band_ids) AS u(me_file_id, band_id)
    ),
    parents AS (   -- per pair and parent: the children, in order
        SELECT p.me_file_id, p.band_id, c.parent_trait_id,
               json_agg(json_build_array(c.id, coalesce(nullif(t.tag_value, ''), c.trait_name), c.display_order)
                        ORDER BY c.display_order, c.id) AS children
          FROM pairs p
          JOIN public.me_file_tags t ON t.me_file_id = p.me_file_id
          JOIN pgsnap.band_traits m ON m.trait_id = t.trait_id AND m.target_band_id = p.band_id
          JOIN public.traits c ON c.id = t.trait_id
         WHERE m.in_snapshot
         GROUP BY p.me_file_id, p.band_id, c.parent_trait_id
    )
    SELECT p.me_file_id, p.band_id,
           json_build_object('tags', coalesce(
               json_agg(json_build_array(pt.id, pt.trait_name, pt.display_order, x.children)
                        ORDER BY pt.display_order, pt.id) FILTER (WHERE pt.id IS NOT NULL),
               '[]'::json))::jsonb
      FROM pairs p
      LEFT JOIN (parents x JOIN public.traits pt ON pt.id = x.parent_trait_id)
             ON x.me_file_id = p.me_file_id AND x.band_id = p.band_id
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
               concat_ws(E'\x1f', c.id, c.trait_name, c.display_order, pt.id, pt.trait_name, pt.display_order),
               1)), 0)   -- seed 1: the snapshot format's version
      FROM (SELECT DISTINCT bt.trait_id FROM pgsnap.band_traits bt
             WHERE bt.target_id = p_target_id AND bt.in_snapshot) x
      JOIN public.traits c ON c.id = x.trait_id
      JOIN public.traits pt ON pt.id = c.parent_trait_id;
END;
