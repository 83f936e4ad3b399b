-- The catalogue as the membership rule sees it (docs/rules.md, "Membership" and "Catalogue
-- changes"): bands, their groups, the groups' traits.
--
-- Two views read the live catalogue; pgsnap.band_traits holds the second one compiled, for
-- the rule to read with one index lookup per tag. Statement triggers on the catalogue tables
-- recompile the affected targets in the editing transaction (a few hundred rows at most) and
-- mark those targets stale; re-populating them is the scheduled job's work, never the
-- editor's. `pgsnap check` compares the compiled rows with the views.

-- Per band: how many groups, whether anybody can satisfy it (it has groups, each with a
-- trait), its definition (the set of its groups, each the set of its trait ids; none when it
-- can match nobody) and its tier: its rank in the rule's order (most groups, then bullseye,
-- then lowest id), bands that can match nobody last.
CREATE OR REPLACE VIEW pgsnap.catalogue_bands AS
WITH groups AS (
    SELECT bg.target_band_id, bg.trait_group_id,
           (SELECT string_agg(gt.trait_id::text, ',' ORDER BY gt.trait_id)
              FROM public.trait_group_traits gt
             WHERE gt.trait_group_id = bg.trait_group_id) AS trait_list
      FROM public.target_band_trait_groups bg
),
bands AS (
    SELECT b.id AS target_band_id, b.target_id, b.is_bullseye,
           count(g.trait_group_id)::integer AS n_groups,
           count(g.trait_group_id) > 0 AND count(g.trait_group_id) = count(g.trait_list) AS matchable,
           string_agg(DISTINCT g.trait_list, ';' ORDER BY g.trait_list) AS definition
      FROM public.target_bands b
      LEFT JOIN groups g ON g.target_band_id = b.id
     GROUP BY b.id, b.target_id, b.is_bullseye
)
SELECT bands.target_id, bands.target_band_id, bands.is_bullseye, bands.n_groups, bands.matchable,
       CASE WHEN bands.matchable THEN md5(bands.definition) END AS definition_hash,
       (row_number() OVER (PARTITION BY bands.target_id
                           ORDER BY bands.matchable DESC, bands.n_groups DESC, bands.is_bullseye DESC,
                                    bands.target_band_id) - 1)::integer AS tier
  FROM bands;
COMMENT ON VIEW pgsnap.catalogue_bands IS
    'Per band, from the live catalogue: groups, whether it can match anybody, definition hash, tier.';

-- Per (band, trait of one of its groups): the groups holding the trait as bits (one per group,
-- by group id), the band's full mask, whether the trait's tags appear in snapshots (it has a
-- parent), and what a snapshot shows of the trait and its parent. A band with an empty group
-- keeps its other groups' traits (its snapshots list them) but can never be satisfied: no
-- trait sets the empty group's bit.
CREATE OR REPLACE VIEW pgsnap.catalogue_band_traits AS
WITH ranked AS (
    SELECT bg.target_band_id, bg.trait_group_id,
           (row_number() OVER (PARTITION BY bg.target_band_id ORDER BY bg.trait_group_id) - 1)::integer AS k
      FROM public.target_band_trait_groups bg
)
SELECT gt.trait_id, b.target_band_id, b.target_id, b.tier,
       bit_or((repeat('0', r.k) || '1' || repeat('0', b.n_groups - r.k - 1))::varbit) AS bits,
       repeat('1', b.n_groups)::varbit AS full_mask,
       t.parent_trait_id IS NOT NULL AS in_snapshot, t.trait_name, t.display_order AS trait_order,
       t.parent_trait_id, p.trait_name AS parent_name, p.display_order AS parent_order
  FROM pgsnap.catalogue_bands b
  JOIN ranked r ON r.target_band_id = b.target_band_id
  JOIN public.trait_group_traits gt ON gt.trait_group_id = r.trait_group_id
  JOIN public.traits t ON t.id = gt.trait_id
  LEFT JOIN public.traits p ON p.id = t.parent_trait_id
 GROUP BY gt.trait_id, b.target_band_id, b.target_id, b.tier, b.n_groups, t.id, p.id;
COMMENT ON VIEW pgsnap.catalogue_band_traits IS
    'The rule''s view of the live catalogue, one row per band and trait; pgsnap.band_traits is it compiled.';

-- Recompile the given targets (NULL: every target): pgsnap.band_traits, and the tier and
-- definition hash of their bands, written only where they differ.
CREATE OR REPLACE FUNCTION pgsnap._compile(p_target_ids bigint[])
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- catalogue edits are rare: one compiler at a time, in commit order
    PERFORM pg_advisory_xact_lock(pgsnap.lock_key('compile'));

    WITH desired AS (
        SELECT c.* FROM pgsnap.catalogue_band_traits c
         WHERE p_target_ids IS NULL OR c.target_id = ANY (p_target_ids)
    ),
    gone AS (
        DELETE FROM pgsnap.band_traits bt
         WHERE (p_target_ids IS NULL OR bt.target_id = ANY (p_target_ids))
           AND NOT EXISTS (SELECT 1 FROM desired d
                            WHERE d.trait_id = bt.trait_id AND d.target_band_id = bt.target_band_id)
        RETURNING 1
    )
    INSERT INTO pgsnap.band_traits AS bt
    SELECT d.* FROM desired d
    ON CONFLICT (trait_id, target_band_id) DO UPDATE
       SET target_id = EXCLUDED.target_id, tier = EXCLUDED.tier, bits = EXCLUDED.bits,
           full_mask = EXCLUDED.full_mask, in_snapshot = EXCLUDED.in_snapshot, trait_name = EXCLUDED.trait_name,
           trait_order = EXCLUDED.trait_order, parent_trait_id = EXCLUDED.parent_trait_id,
           parent_name = EXCLUDED.parent_name, parent_order = EXCLUDED.parent_order
     WHERE bt IS DISTINCT FROM EXCLUDED;

    UPDATE public.target_bands b
       SET tier = c.tier, definition_hash = c.definition_hash
      FROM pgsnap.catalogue_bands c
     WHERE c.target_band_id = b.id
       AND (p_target_ids IS NULL OR b.target_id = ANY (p_target_ids))
       AND (b.tier, b.definition_hash) IS DISTINCT FROM (c.tier, c.definition_hash);
END;
$$;
COMMENT ON FUNCTION pgsnap._compile(bigint[]) IS
    'Internal: recompile pgsnap.band_traits and target_bands.tier/definition_hash of these targets (NULL: all).';

-- Mark maintained targets as needing re-population after a catalogue edit: `membership`
-- (who belongs where may have changed; launch_campaign waits for the re-population) or
-- `snapshot` (names, orders or parents: only snapshots). The oldest mark's time and reason are
-- kept (a membership edit's reason replaces a snapshot edit's), the strongest kind wins, the
-- token names the latest editing transaction.
CREATE OR REPLACE FUNCTION pgsnap._mark_stale(p_target_ids bigint[], p_kind text, p_reason text)
RETURNS void
LANGUAGE sql
BEGIN ATOMIC
    INSERT INTO pgsnap.target_state AS s (target_id, stale_since, stale_kind, stale_reason, stale_token)
    SELECT t.id, now(), p_kind, p_reason, pg_current_xact_id()
      FROM public.targets t
     WHERE t.id = ANY (p_target_ids)
       AND t.population_status IN ('populating', 'populated')
    ON CONFLICT (target_id) DO UPDATE
       SET stale_since = coalesce(s.stale_since, EXCLUDED.stale_since),
           stale_kind = CASE WHEN s.stale_since IS NOT NULL AND s.stale_kind = 'membership'
                             THEN 'membership' ELSE EXCLUDED.stale_kind END,
           stale_reason = CASE WHEN s.stale_since IS NULL
                                    OR (s.stale_kind = 'snapshot' AND EXCLUDED.stale_kind = 'membership')
                               THEN EXCLUDED.stale_reason ELSE s.stale_reason END,
           stale_token = EXCLUDED.stale_token;
END;

-- The catalogue triggers: statement triggers naming the targets whose bands the statement
-- touched (one function per table: each reads the transition tables its table has).
-- SECURITY DEFINER: whoever may edit the catalogue makes pgsnap recompile and mark, without
-- rights on pgsnap's tables.
CREATE OR REPLACE FUNCTION pgsnap._catalogue_edited(p_target_ids bigint[], p_what text, p_ids bigint[])
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_target_ids IS NOT NULL THEN
        PERFORM pgsnap._compile(p_target_ids);
        PERFORM pgsnap._mark_stale(p_target_ids, 'membership',
            format(p_what, array_to_string(ARRAY(SELECT DISTINCT x FROM unnest(p_ids) x ORDER BY 1), ', ')));
    END IF;
END;
$$;

-- trait_group_traits: the bands using the groups whose traits changed
CREATE OR REPLACE FUNCTION pgsnap._group_traits_changed()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_new bigint[];
    v_old bigint[];
BEGIN
    IF TG_OP <> 'DELETE' THEN SELECT array_agg(DISTINCT x.trait_group_id) INTO v_new FROM new_rows x; END IF;
    IF TG_OP <> 'INSERT' THEN SELECT array_agg(DISTINCT x.trait_group_id) INTO v_old FROM old_rows x; END IF;
    PERFORM pgsnap._catalogue_edited(
        (SELECT array_agg(DISTINCT b.target_id)
           FROM public.target_band_trait_groups bg
           JOIN public.target_bands b ON b.id = bg.target_band_id
          WHERE bg.trait_group_id = ANY (v_new || v_old)),
        'traits of trait group %s changed', v_new || v_old);
    RETURN NULL;
END;
$$;

-- target_band_trait_groups: the bands whose groups changed
CREATE OR REPLACE FUNCTION pgsnap._band_groups_changed()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_new bigint[];
    v_old bigint[];
BEGIN
    IF TG_OP <> 'DELETE' THEN SELECT array_agg(DISTINCT x.target_band_id) INTO v_new FROM new_rows x; END IF;
    IF TG_OP <> 'INSERT' THEN SELECT array_agg(DISTINCT x.target_band_id) INTO v_old FROM old_rows x; END IF;
    PERFORM pgsnap._catalogue_edited(
        (SELECT array_agg(DISTINCT b.target_id) FROM public.target_bands b WHERE b.id = ANY (v_new || v_old)),
        'trait groups of band %s changed', v_new || v_old);
    RETURN NULL;
END;
$$;

-- target_bands: added, removed, or changed in what the rule reads (the bullseye flag, the
-- target; not the title, nor the tier, definition hash and count pgsnap writes itself)
CREATE OR REPLACE FUNCTION pgsnap._bands_changed()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_bands   bigint[];
    v_targets bigint[];
BEGIN
    IF TG_OP = 'UPDATE' THEN
        SELECT array_agg(DISTINCT n.id), array_agg(DISTINCT t.target_id)
          INTO v_bands, v_targets
          FROM new_rows n
          JOIN old_rows o ON o.id = n.id
         CROSS JOIN LATERAL (VALUES (n.target_id), (o.target_id)) AS t(target_id)
         WHERE (o.is_bullseye, o.target_id) IS DISTINCT FROM (n.is_bullseye, n.target_id);
    ELSIF TG_OP = 'INSERT' THEN
        SELECT array_agg(DISTINCT x.id), array_agg(DISTINCT x.target_id) INTO v_bands, v_targets FROM new_rows x;
    ELSE
        SELECT array_agg(DISTINCT x.id), array_agg(DISTINCT x.target_id) INTO v_bands, v_targets FROM old_rows x;
    END IF;
    PERFORM pgsnap._catalogue_edited(v_targets,
        CASE TG_OP WHEN 'INSERT' THEN 'band %s added' WHEN 'DELETE' THEN 'band %s removed' ELSE 'band %s changed' END,
        v_bands);
    RETURN NULL;
END;
$$;

-- Renamed, reordered or re-parented traits change snapshots only (membership ignores
-- parents): the targets whose bands use the trait, or a child of it, are marked `snapshot`.
CREATE OR REPLACE FUNCTION pgsnap._traits_changed()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_targets bigint[];
    v_what    text;
BEGIN
    WITH changed AS (
        SELECT n.id
          FROM new_rows n JOIN old_rows o ON o.id = n.id
         WHERE (o.trait_name, o.display_order, o.parent_trait_id)
               IS DISTINCT FROM (n.trait_name, n.display_order, n.parent_trait_id)
    ),
    affected AS (   -- the changed trait as a band trait, or as the parent of band traits
        SELECT bt.target_id, c.id FROM changed c JOIN pgsnap.band_traits bt ON bt.trait_id = c.id
        UNION
        SELECT bt.target_id, c.id FROM changed c JOIN pgsnap.band_traits bt ON bt.parent_trait_id = c.id
    )
    SELECT array_agg(DISTINCT a.target_id), string_agg(DISTINCT a.id::text, ', ')
      INTO v_targets, v_what
      FROM affected a;
    IF v_targets IS NOT NULL THEN   -- band_traits holds the names, orders and parents snapshots show
        PERFORM pgsnap._compile(v_targets);
        PERFORM pgsnap._mark_stale(v_targets, 'snapshot', 'trait ' || v_what || ' renamed, reordered or re-parented');
    END IF;
    RETURN NULL;
END;
$$;

DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT * FROM (VALUES
            ('trait_group_traits', 'INSERT', 'NEW TABLE AS new_rows', '_group_traits_changed'),
            ('trait_group_traits', 'UPDATE', 'OLD TABLE AS old_rows NEW TABLE AS new_rows', '_group_traits_changed'),
            ('trait_group_traits', 'DELETE', 'OLD TABLE AS old_rows', '_group_traits_changed'),
            ('target_band_trait_groups', 'INSERT', 'NEW TABLE AS new_rows', '_band_groups_changed'),
            ('target_band_trait_groups', 'UPDATE', 'OLD TABLE AS old_rows NEW TABLE AS new_rows', '_band_groups_changed'),
            ('target_band_trait_groups', 'DELETE', 'OLD TABLE AS old_rows', '_band_groups_changed'),
            ('target_bands', 'INSERT', 'NEW TABLE AS new_rows', '_bands_changed'),
            ('target_bands', 'UPDATE', 'OLD TABLE AS old_rows NEW TABLE AS new_rows', '_bands_changed'),
            ('target_bands', 'DELETE', 'OLD TABLE AS old_rows', '_bands_changed'),
            ('traits', 'UPDATE', 'OLD TABLE AS old_rows NEW TABLE AS new_rows', '_traits_changed'))
            AS v(tbl, op, refs, fn) LOOP
        -- fixed names only: nothing here comes from input
        EXECUTE format('CREATE OR REPLACE TRIGGER %I AFTER %s ON public.%I REFERENCING %s'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION pgsnap.%I()',
                       r.tbl || '_catalogue_' || lower(r.op), r.op, r.tbl, r.refs, r.fn);
    END LOOP;
END;
$$;

-- TRUNCATE fires no row or statement DELETE trigger: recompile everything (the catalogue has
-- no rows to speak of then) and mark every maintained target.
CREATE OR REPLACE FUNCTION pgsnap._catalogue_truncated()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM pgsnap._catalogue_edited(
        (SELECT array_agg(t.id) FROM public.targets t WHERE t.population_status IN ('populating', 'populated')),
        TG_TABLE_NAME || ' truncated%s', NULL);
    PERFORM pgsnap._compile(NULL);
    RETURN NULL;
END;
$$;

DO $$
DECLARE
    v_table text;
BEGIN
    FOREACH v_table IN ARRAY ARRAY['traits', 'trait_groups', 'trait_group_traits', 'targets', 'target_bands',
                                   'target_band_trait_groups'] LOOP
        -- fixed names only: nothing here comes from input
        EXECUTE format('CREATE OR REPLACE TRIGGER %I AFTER TRUNCATE ON public.%I'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION pgsnap._catalogue_truncated()',
                       v_table || '_catalogue_truncate', v_table);
    END LOOP;
END;
$$;

-- Every deploy recompiles everything: cheap, and it repairs a catalogue edited while the
-- triggers were disabled.
SELECT pgsnap._compile(NULL);
