-- Offers and ad_events take their snapshot when created (docs/rules.md, "Offers and
-- ad_events"), and launch_campaign creates offers from a populated target.

-- Where a row's snapshot comes from, defined once for the insert triggers, backfill_batch and
-- backfill_plan: an ad_event's offer's (a legacy offer without one: what the backfill will give
-- that offer); else the population's for (me_file, band) (a legacy population without one: what
-- the backfill will give it, built); else built for (me_file, band) ({"tags": []} when nothing
-- matches). A value not in snapshot shape counts as none. The insert triggers refuse what the
-- backfill must accept of legacy rows: a new offer needs a population, a new ad_event an
-- offer, a population or at least an existing band.
-- A set-returning function (one row) so that callers' statements inline it.
CREATE OR REPLACE FUNCTION pgsnap.inherited_snapshot(
    p_offer_id bigint, p_me_file_id bigint, p_target_band_id bigint, p_build boolean DEFAULT true)
RETURNS TABLE (source text, snapshot jsonb)
LANGUAGE sql STABLE
BEGIN ATOMIC
    WITH offer AS (
        SELECT o.me_file_id, o.target_band_id,
               CASE WHEN pgsnap.snapshot_shape_ok(o.matching_tags_snapshot) THEN o.matching_tags_snapshot END AS s
          FROM public.offers o
         WHERE o.id = p_offer_id
    ),
    subject AS (   -- whose population and tags count: the offer's, else the row's own
        SELECT coalesce((SELECT o.me_file_id FROM offer o), p_me_file_id) AS me_file_id,
               CASE WHEN EXISTS (SELECT 1 FROM offer) THEN (SELECT o.target_band_id FROM offer o)
                    ELSE p_target_band_id END AS band_id
    ),
    population AS (
        SELECT CASE WHEN pgsnap.snapshot_shape_ok(tp.matching_tags_snapshot) THEN tp.matching_tags_snapshot END AS s
          FROM public.target_populations tp, subject x
         WHERE tp.me_file_id = x.me_file_id AND tp.target_band_id = x.band_id
    )
    SELECT CASE WHEN EXISTS (SELECT 1 FROM offer) THEN 'offer'
                WHEN EXISTS (SELECT 1 FROM population) THEN 'population'
                ELSE 'built' END,
           coalesce((SELECT o.s FROM offer o), (SELECT p.s FROM population p),
                    CASE WHEN p_build THEN (SELECT pgsnap.build_snapshot(x.me_file_id, x.band_id) FROM subject x) END);
END;
COMMENT ON FUNCTION pgsnap.inherited_snapshot(bigint, bigint, bigint, boolean) IS
    'The snapshot a new or legacy offer/ad_event takes, and its source: offer, population or built.';

CREATE OR REPLACE FUNCTION pgsnap._offer_snapshot()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_source text;
BEGIN
    SELECT i.source, i.snapshot INTO v_source, NEW.matching_tags_snapshot
      FROM pgsnap.inherited_snapshot(NULL, NEW.me_file_id, NEW.target_band_id) i;
    IF v_source IS DISTINCT FROM 'population' THEN
        RAISE EXCEPTION 'offer for me_file % in band % has no snapshot: no target population holds that me_file in that band',
            NEW.me_file_id, NEW.target_band_id
            USING ERRCODE = 'not_null_violation',
                  HINT = 'Populate the target first, or pass matching_tags_snapshot explicitly.';
    END IF;
    RETURN NEW;
END;
$$;

CREATE OR REPLACE FUNCTION pgsnap._ad_event_snapshot()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_source text;
BEGIN
    SELECT i.source, i.snapshot INTO v_source, NEW.matching_tags_snapshot
      FROM pgsnap.inherited_snapshot(NEW.offer_id, NEW.me_file_id, NEW.target_band_id) i;
    IF v_source = 'built' AND (NEW.me_file_id IS NULL OR NOT EXISTS (SELECT 1 FROM public.target_bands b
                                                                     WHERE b.id = NEW.target_band_id)) THEN
        RAISE EXCEPTION 'ad_event has no snapshot: no offer % with one, and no me_file and band to build it from (me_file %, band %)',
            coalesce(NEW.offer_id::text, 'NULL'), coalesce(NEW.me_file_id::text, 'NULL'),
            coalesce(NEW.target_band_id::text, 'NULL')
            USING ERRCODE = 'not_null_violation',
                  HINT = 'Create ad_events from an offer, or pass matching_tags_snapshot explicitly.';
    END IF;
    RETURN NEW;
END;
$$;

CREATE OR REPLACE TRIGGER offers_inherit_snapshot
    BEFORE INSERT ON public.offers
    FOR EACH ROW WHEN (NEW.matching_tags_snapshot IS NULL)
    EXECUTE FUNCTION pgsnap._offer_snapshot();
CREATE OR REPLACE TRIGGER ad_events_inherit_snapshot
    BEFORE INSERT ON public.ad_events
    FOR EACH ROW WHEN (NEW.matching_tags_snapshot IS NULL)
    EXECUTE FUNCTION pgsnap._ad_event_snapshot();

-- Why offers may not be made from a target now (NULL: they may): not populated, or a catalogue
-- edit changed who belongs where and the target is not re-populated yet. SECURITY DEFINER:
-- the application reads it without reading pgsnap's tables.
CREATE OR REPLACE FUNCTION pgsnap._launch_blocker(p_target_id bigint)
RETURNS text
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN t.population_status <> 'populated' THEN format('is %s, not populated', t.population_status)
                WHEN s.stale_kind = 'membership'
                THEN format('is stale since %s (%s): re-populate it first',
                            to_char(s.stale_since AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' UTC', s.stale_reason)
           END
      FROM public.targets t
      LEFT JOIN pgsnap.target_state s ON s.target_id = t.id
     WHERE t.id = p_target_id
$$;

CREATE OR REPLACE FUNCTION pgsnap.launch_campaign(p_campaign_id bigint)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_target  bigint;
    v_blocker text;
    v_count   bigint;
BEGIN
    SELECT c.target_id INTO v_target
      FROM public.campaigns c WHERE c.id = p_campaign_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'campaign % does not exist', coalesce(p_campaign_id::text, 'NULL')
            USING ERRCODE = 'no_data_found';
    END IF;
    -- the gate that closes the original race: no offers from a half-built population
    PERFORM pg_advisory_xact_lock_shared(pgsnap.lock_key('target:' || v_target));
    v_blocker := pgsnap._launch_blocker(v_target);
    IF v_blocker IS NOT NULL THEN
        RAISE EXCEPTION 'campaign %: target % %', p_campaign_id, v_target, v_blocker
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = format('Run: pgsnap populate %s', v_target);
    END IF;

    INSERT INTO public.offers (campaign_id, me_file_id, target_band_id, offer_amt, matching_tags_snapshot)
    -- the snapshot is copied; a legacy one (NULL, or not in snapshot shape) is filled by
    -- offers_inherit_snapshot
    SELECT p_campaign_id, tp.me_file_id, tp.target_band_id, b.offer_amt,
           CASE WHEN pgsnap.snapshot_shape_ok(tp.matching_tags_snapshot) THEN tp.matching_tags_snapshot END
      FROM public.target_populations tp
      JOIN public.bids b ON b.target_band_id = tp.target_band_id AND b.campaign_id = p_campaign_id
     WHERE tp.target_id = v_target
     ORDER BY tp.me_file_id
    ON CONFLICT (campaign_id, me_file_id) DO NOTHING;
    GET DIAGNOSTICS v_count = ROW_COUNT;

    UPDATE public.campaigns SET launched_at = coalesce(launched_at, now()) WHERE id = p_campaign_id;
    RETURN v_count;
END;
$$;
COMMENT ON FUNCTION pgsnap.launch_campaign(bigint) IS
    'One pending offer per population of the campaign''s target whose band has a bid (snapshot copied); refuses '
    'unless the target is populated and not stale after a membership-changing catalogue edit; idempotent.';
