-- The snapshot builder (design.md section 3, shape of domain.md section 5), defined once.
-- Set-based: one call builds the snapshots of many (me_file, band) pairs;
-- build_snapshot() is the one-pair view of the same function.

CREATE OR REPLACE FUNCTION pgsnap.snapshots(p_me_file_ids bigint[], p_band_ids bigint[])
RETURNS TABLE (me_file_id bigint, target_band_id bigint, snapshot jsonb)
LANGUAGE plpgsql STABLE PARALLEL SAFE
-- callers are mostly one me_file or one batch: plan their joins for few rows
ROWS 50
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- PL/pgSQL, not SQL: its plan is cached per session instead of re-planned per call
    RETURN QUERY

    WITH pairs AS (
        SELECT DISTINCT u.me_file_id, u.band_id
          FROM unnest(p_me_file_ids, p_band_ids) AS u(me_file_id, band_id)
    ),
    band_traits AS MATERIALIZED (   -- the band's traits that sit under an existing parent
        SELECT DISTINCT bg.target_band_id AS band_id, c.id AS trait_id, c.trait_name,
               c.display_order, c.parent_trait_id
          FROM public.target_band_trait_groups bg
          JOIN public.trait_group_traits gt ON gt.trait_group_id = bg.trait_group_id
          JOIN public.traits c ON c.id = gt.trait_id
         WHERE bg.target_band_id IN (SELECT p.band_id FROM pairs p)
           AND c.parent_trait_id IS NOT NULL
    ),
    pair_tags AS MATERIALIZED (     -- walk from the me_files' own tags (few), not the band's traits (many)
        SELECT p.me_file_id, p.band_id, t.trait_id, t.tag_value
          FROM pairs p
          JOIN public.me_file_tags t ON t.me_file_id = p.me_file_id
    ),
    children AS (           -- one entry per parent: its matching children in order
        SELECT t.me_file_id, t.band_id, bt.parent_trait_id,
               jsonb_agg(jsonb_build_array(bt.trait_id,
                                           coalesce(nullif(t.tag_value, ''), bt.trait_name),
                                           bt.display_order)
                         ORDER BY bt.display_order, bt.trait_id) AS entries
          FROM pair_tags t
          JOIN band_traits bt ON bt.band_id = t.band_id AND bt.trait_id = t.trait_id
         GROUP BY t.me_file_id, t.band_id, bt.parent_trait_id
    ),
    parents AS (
        SELECT c.me_file_id, c.band_id, pt.id, pt.trait_name, pt.display_order, c.entries
          FROM children c
          JOIN public.traits pt ON pt.id = c.parent_trait_id
    )
    SELECT p.me_file_id, p.band_id,
           jsonb_build_object('tags', coalesce(
               jsonb_agg(jsonb_build_array(pa.id, pa.trait_name, pa.display_order, pa.entries)
                         ORDER BY pa.display_order, pa.id) FILTER (WHERE pa.id IS NOT NULL),
               '[]'::jsonb))
      FROM pairs p
      LEFT JOIN parents pa ON pa.me_file_id = p.me_file_id AND pa.band_id = p.band_id
     GROUP BY p.me_file_id, p.band_id;
END;
$$;
COMMENT ON FUNCTION pgsnap.snapshots(bigint[], bigint[]) IS
    'Snapshots of the (me_file, band) pairs zipped from the two arrays; the one builder.';

CREATE OR REPLACE FUNCTION pgsnap.build_snapshot(p_me_file_id bigint, p_target_band_id bigint)
RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT s.snapshot
      FROM pgsnap.snapshots(ARRAY[p_me_file_id], ARRAY[p_target_band_id]) s
$$;
COMMENT ON FUNCTION pgsnap.build_snapshot(bigint, bigint) IS
    'matching_tags_snapshot of a me_file in a band: {"tags": [[parent_id, name, order, [[trait_id, value, order], ...]], ...]}; never NULL.';
