-- Offers and ad_events inherit their snapshot when created (design.md section 4),
-- and launch_campaign creates offers from a populated target.

CREATE OR REPLACE FUNCTION pgsnap._offer_snapshot()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- a legacy population not yet backfilled gives what the backfill will give it
    SELECT coalesce(tp.matching_tags_snapshot, pgsnap.build_snapshot(tp.me_file_id, tp.target_band_id))
      INTO NEW.matching_tags_snapshot
      FROM public.target_populations tp
     WHERE tp.me_file_id = NEW.me_file_id AND tp.target_band_id = NEW.target_band_id;
    IF NEW.matching_tags_snapshot IS NULL THEN
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
BEGIN
    SELECT o.matching_tags_snapshot INTO NEW.matching_tags_snapshot
      FROM public.offers o WHERE o.id = NEW.offer_id;
    IF NEW.matching_tags_snapshot IS NULL THEN
        RAISE EXCEPTION 'ad_event has no snapshot: offer % does not exist or has none', coalesce(NEW.offer_id::text, 'NULL')
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

CREATE OR REPLACE FUNCTION pgsnap.launch_campaign(p_campaign_id bigint)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_target bigint;
    v_status text;
    v_count  bigint;
BEGIN
    SELECT c.target_id INTO v_target
      FROM public.campaigns c WHERE c.id = p_campaign_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'campaign % does not exist', coalesce(p_campaign_id::text, 'NULL')
            USING ERRCODE = 'no_data_found';
    END IF;
    -- the gate that closes the original race: no offers from a half-built population
    PERFORM pg_advisory_xact_lock_shared(pgsnap.lock_key('target:' || v_target));
    SELECT t.population_status INTO v_status FROM public.targets t WHERE t.id = v_target;
    IF v_status <> 'populated' THEN
        RAISE EXCEPTION 'campaign %: target % is %, not populated', p_campaign_id, v_target, v_status
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = format('Run: pgsnap populate %s', v_target);
    END IF;

    INSERT INTO public.offers (campaign_id, me_file_id, target_band_id, offer_amt, matching_tags_snapshot)
    -- the snapshot is copied; a legacy NULL one is filled by offers_inherit_snapshot
    SELECT p_campaign_id, tp.me_file_id, tp.target_band_id, b.offer_amt, tp.matching_tags_snapshot
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
    'One pending offer per population of the campaign''s target whose band has a bid (snapshot copied); refuses unless the target is populated; idempotent.';
