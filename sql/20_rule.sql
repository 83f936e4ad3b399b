-- The membership rule (docs/rules.md, "Membership"), defined once.
-- A me_file satisfies a trait group when it holds one of the group's traits; a band when it
-- satisfies every group of the band (a band without groups, or with a group without traits,
-- is satisfied by nobody). Its band in a target is the satisfied band with the most groups,
-- then is_bullseye, then lowest id: the lowest tier.
--
-- One pass over the tags of the targets' traits: each tag sets the bits of the band's groups
-- holding its trait; a band is satisfied when its bits are all set. The same pass yields the
-- row's inputs_hash: a fingerprint of the (trait, shown value) pairs its snapshot is built from, so
-- a re-populate rebuilds only the snapshots whose inputs changed.
--
-- Callers filter the result by me_file_id (a range for a populate batch, a list for a sync):
-- the filter reaches the tag scan, and each calling statement gets a plan of its own.

CREATE OR REPLACE FUNCTION pgsnap.memberships(p_target_ids bigint[])
RETURNS TABLE (target_id bigint, target_band_id bigint, me_file_id bigint, inputs_hash bigint)
LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT DISTINCT ON (s.target_id, s.me_file_id) s.target_id, s.target_band_id, s.me_file_id, s.inputs_hash
      FROM (SELECT m.target_id, m.target_band_id, m.tier, t.me_file_id,
                   coalesce(bit_xor(hashtextextended(coalesce(nullif(t.tag_value, ''), m.trait_name), t.trait_id))
                                FILTER (WHERE m.in_snapshot), 0) AS inputs_hash
              FROM public.me_file_tags t
              JOIN pgsnap.band_traits m ON m.trait_id = t.trait_id
             WHERE m.target_id = ANY (p_target_ids)
             GROUP BY m.target_id, m.target_band_id, m.tier, t.me_file_id
            HAVING bit_or(m.bits) = bit_or(m.full_mask)) s
     ORDER BY s.target_id, s.me_file_id, s.tier;
END;
COMMENT ON FUNCTION pgsnap.memberships(bigint[]) IS
    'The one membership rule: (target, band, me_file, inputs_hash) for the given targets; filter by me_file_id.';

CREATE OR REPLACE FUNCTION pgsnap.band_for(p_me_file_id bigint, p_target_id bigint)
RETURNS bigint
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT m.target_band_id FROM pgsnap.memberships(ARRAY[p_target_id]) m WHERE m.me_file_id = p_me_file_id;
END;
COMMENT ON FUNCTION pgsnap.band_for(bigint, bigint) IS
    'The me_file''s band in that target under the membership rule, or NULL.';
