-- The membership rule (design.md section 3), defined once.
-- A me_file satisfies a trait group when it holds one of the group's traits;
-- a band when it satisfies every group of the band (a band without groups, or
-- with a group without traits, is satisfied by nobody). Its band in a target is
-- the satisfied band with the most groups, then is_bullseye, then lowest id.

CREATE OR REPLACE FUNCTION pgsnap.memberships(p_target_ids bigint[], p_me_file_ids bigint[] DEFAULT NULL)
RETURNS TABLE (target_id bigint, target_band_id bigint, me_file_id bigint)
LANGUAGE plpgsql STABLE PARALLEL SAFE
-- callers are mostly one me_file or one batch: plan their joins for few rows
ROWS 50
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- PL/pgSQL, not SQL: its plan is cached per session instead of re-planned per call
    RETURN QUERY

    WITH band_groups AS (
        SELECT b.target_id, b.id AS band_id, b.is_bullseye, bg.trait_group_id,
               count(*) OVER (PARTITION BY b.id) AS n_groups
          FROM public.target_bands b
          JOIN public.target_band_trait_groups bg ON bg.target_band_id = b.id
         WHERE b.target_id = ANY (p_target_ids)
    ),
    -- Two shapes, one rule: a generic plan keeps both and skips the idle one
    -- at run time (a given me_file list is walked from its tags; no list means
    -- the whole target, walked from the groups' traits).
    group_members AS (
        SELECT gt.trait_group_id, t.me_file_id
          FROM unnest(p_me_file_ids) AS f(id)
          JOIN public.me_file_tags t ON t.me_file_id = f.id
          JOIN public.trait_group_traits gt ON gt.trait_id = t.trait_id
         WHERE gt.trait_group_id IN (SELECT bg.trait_group_id FROM band_groups bg)
        UNION
        SELECT gt.trait_group_id, t.me_file_id
          FROM public.trait_group_traits gt
          JOIN public.me_file_tags t ON t.trait_id = gt.trait_id
         WHERE p_me_file_ids IS NULL
           AND gt.trait_group_id IN (SELECT bg.trait_group_id FROM band_groups bg)
    ),
    satisfied AS (
        SELECT bg.target_id, bg.band_id, bg.is_bullseye, bg.n_groups, gm.me_file_id
          FROM band_groups bg
          JOIN group_members gm ON gm.trait_group_id = bg.trait_group_id
         GROUP BY bg.target_id, bg.band_id, bg.is_bullseye, bg.n_groups, gm.me_file_id
        HAVING count(*) = bg.n_groups
    )
    SELECT DISTINCT ON (s.target_id, s.me_file_id) s.target_id, s.band_id, s.me_file_id
      FROM satisfied s
     ORDER BY s.target_id, s.me_file_id, s.n_groups DESC, s.is_bullseye DESC, s.band_id;
END;
$$;
COMMENT ON FUNCTION pgsnap.memberships(bigint[], bigint[]) IS
    'The one membership rule: (target, band, me_file) for the given targets, restricted to the given me_files (NULL: all).';

CREATE OR REPLACE FUNCTION pgsnap.band_for(p_me_file_id bigint, p_target_id bigint)
RETURNS bigint
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT m.target_band_id
      FROM pgsnap.memberships(ARRAY[p_target_id], ARRAY[p_me_file_id]) m
$$;
COMMENT ON FUNCTION pgsnap.band_for(bigint, bigint) IS
    'The me_file''s band in that target under the membership rule, or NULL.';
