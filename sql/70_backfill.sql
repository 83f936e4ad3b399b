-- The safety net: fill every NULL snapshot, parents before children
-- (design.md section 4; better than the original, domain.md section 8.3):
--   population -> built; offer -> its population's snapshot, else built;
--   ad_event -> its offer's, else its population's, else built.
-- Rows are claimed FOR UPDATE SKIP LOCKED and written only while still NULL.

CREATE OR REPLACE FUNCTION pgsnap.backfill_batch(p_batch_size integer DEFAULT 500)
RETURNS TABLE (target_populations bigint, offers bigint, ad_events bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_ids   bigint[];
    v_files bigint[];
    v_bands bigint[];
    v_n     bigint;
BEGIN
    PERFORM pgsnap._check_batch_size(p_batch_size);
    target_populations := 0; offers := 0; ad_events := 0;

    -- populations
    SELECT array_agg(x.id), array_agg(x.me_file_id), array_agg(x.target_band_id)
      INTO v_ids, v_files, v_bands
      FROM (SELECT tp.id, tp.me_file_id, tp.target_band_id
              FROM public.target_populations tp
             WHERE tp.matching_tags_snapshot IS NULL
             ORDER BY tp.id LIMIT p_batch_size
               FOR UPDATE SKIP LOCKED) x;
    UPDATE public.target_populations tp
       SET matching_tags_snapshot = s.snapshot, updated_at = now()
      FROM unnest(v_ids, v_files, v_bands) AS u(id, me_file_id, band_id)
      JOIN pgsnap.snapshots(v_files, v_bands) s
        ON s.me_file_id = u.me_file_id AND s.target_band_id = u.band_id
     WHERE tp.id = u.id AND tp.matching_tags_snapshot IS NULL;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    target_populations := v_n;

    -- offers: the population's snapshot, however long ago it was filled
    SELECT array_agg(x.id) INTO v_ids
      FROM (SELECT o.id FROM public.offers o
             WHERE o.matching_tags_snapshot IS NULL
             ORDER BY o.id LIMIT p_batch_size
               FOR UPDATE SKIP LOCKED) x;
    UPDATE public.offers o
       SET matching_tags_snapshot = tp.matching_tags_snapshot
      FROM public.target_populations tp
     WHERE o.id = ANY (v_ids) AND o.matching_tags_snapshot IS NULL
       AND tp.me_file_id = o.me_file_id AND tp.target_band_id = o.target_band_id
       AND tp.matching_tags_snapshot IS NOT NULL;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    offers := v_n;
    -- ... otherwise built from the me_file's tags for that band
    SELECT array_agg(o.id), array_agg(o.me_file_id), array_agg(o.target_band_id)
      INTO v_ids, v_files, v_bands
      FROM public.offers o WHERE o.id = ANY (v_ids) AND o.matching_tags_snapshot IS NULL;
    UPDATE public.offers o
       SET matching_tags_snapshot = s.snapshot
      FROM unnest(v_ids, v_files, v_bands) AS u(id, me_file_id, band_id)
      JOIN pgsnap.snapshots(v_files, v_bands) s
        ON s.me_file_id IS NOT DISTINCT FROM u.me_file_id AND s.target_band_id IS NOT DISTINCT FROM u.band_id
     WHERE o.id = u.id AND o.matching_tags_snapshot IS NULL;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    offers := offers + v_n;

    -- ad_events: only those whose offer is filled already (offers first)
    SELECT array_agg(x.id) INTO v_ids
      FROM (SELECT a.id FROM public.ad_events a
             WHERE a.matching_tags_snapshot IS NULL
               AND NOT EXISTS (SELECT 1 FROM public.offers o
                                WHERE o.id = a.offer_id AND o.matching_tags_snapshot IS NULL)
             ORDER BY a.id LIMIT p_batch_size
               FOR UPDATE SKIP LOCKED) x;
    UPDATE public.ad_events a
       SET matching_tags_snapshot = o.matching_tags_snapshot
      FROM public.offers o
     WHERE a.id = ANY (v_ids) AND a.matching_tags_snapshot IS NULL
       AND o.id = a.offer_id AND o.matching_tags_snapshot IS NOT NULL;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    ad_events := v_n;
    UPDATE public.ad_events a
       SET matching_tags_snapshot = tp.matching_tags_snapshot
      FROM public.target_populations tp
     WHERE a.id = ANY (v_ids) AND a.matching_tags_snapshot IS NULL
       AND tp.me_file_id = a.me_file_id AND tp.target_band_id = a.target_band_id
       AND tp.matching_tags_snapshot IS NOT NULL;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    ad_events := ad_events + v_n;
    SELECT array_agg(a.id), array_agg(a.me_file_id), array_agg(a.target_band_id)
      INTO v_ids, v_files, v_bands
      FROM public.ad_events a WHERE a.id = ANY (v_ids) AND a.matching_tags_snapshot IS NULL;
    UPDATE public.ad_events a
       SET matching_tags_snapshot = s.snapshot
      FROM unnest(v_ids, v_files, v_bands) AS u(id, me_file_id, band_id)
      JOIN pgsnap.snapshots(v_files, v_bands) s
        ON s.me_file_id IS NOT DISTINCT FROM u.me_file_id AND s.target_band_id IS NOT DISTINCT FROM u.band_id
     WHERE a.id = u.id AND a.matching_tags_snapshot IS NULL;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    ad_events := ad_events + v_n;
    RETURN NEXT;
END;
$$;
COMMENT ON FUNCTION pgsnap.backfill_batch(integer) IS
    'Fill one bounded batch of NULL snapshots per table, parents first; all zeros: nothing is left.';

-- What a backfill would do, by table and source; writes nothing.
CREATE OR REPLACE FUNCTION pgsnap.backfill_plan()
RETURNS TABLE (table_name text, source text, rows bigint)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT 'target_populations', 'built', count(*)
      FROM public.target_populations tp WHERE tp.matching_tags_snapshot IS NULL
    UNION ALL
    SELECT 'offers', CASE WHEN tp.id IS NULL THEN 'built' ELSE 'population' END, count(*)
      FROM public.offers o
      LEFT JOIN public.target_populations tp
        ON tp.me_file_id = o.me_file_id AND tp.target_band_id = o.target_band_id
     WHERE o.matching_tags_snapshot IS NULL
     GROUP BY 2
    UNION ALL
    SELECT 'ad_events',
           CASE WHEN o.id IS NOT NULL THEN 'offer'
                WHEN tp.id IS NOT NULL THEN 'population' ELSE 'built' END, count(*)
      FROM public.ad_events a
      LEFT JOIN public.offers o ON o.id = a.offer_id
      LEFT JOIN public.target_populations tp
        ON tp.me_file_id = a.me_file_id AND tp.target_band_id = a.target_band_id
     WHERE a.matching_tags_snapshot IS NULL
     GROUP BY 2
$$;
COMMENT ON FUNCTION pgsnap.backfill_plan() IS
    'Dry run of the backfill: NULL rows per table and the source their snapshot would come from.';

CREATE OR REPLACE FUNCTION pgsnap.backfill_band(p_target_band_id bigint, p_batch_size integer DEFAULT 500)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_ids   bigint[];
    v_files bigint[];
    v_n     bigint;
    v_total bigint := 0;
BEGIN
    PERFORM pgsnap._check_batch_size(p_batch_size);
    IF NOT EXISTS (SELECT 1 FROM public.target_bands b WHERE b.id = p_target_band_id) THEN
        RAISE EXCEPTION 'target band % does not exist', coalesce(p_target_band_id::text, 'NULL')
            USING ERRCODE = 'no_data_found';
    END IF;
    LOOP
        SELECT array_agg(x.id), array_agg(x.me_file_id) INTO v_ids, v_files
          FROM (SELECT tp.id, tp.me_file_id FROM public.target_populations tp
                 WHERE tp.target_band_id = p_target_band_id AND tp.matching_tags_snapshot IS NULL
                 ORDER BY tp.id LIMIT p_batch_size
                   FOR UPDATE SKIP LOCKED) x;
        EXIT WHEN v_ids IS NULL;
        UPDATE public.target_populations tp
           SET matching_tags_snapshot = s.snapshot, updated_at = now()
          FROM unnest(v_ids, v_files) AS u(id, me_file_id)
          JOIN pgsnap.snapshots(v_files, array_fill(p_target_band_id, ARRAY[cardinality(v_files)])) s
            ON s.me_file_id = u.me_file_id
         WHERE tp.id = u.id AND tp.matching_tags_snapshot IS NULL;
        GET DIAGNOSTICS v_n = ROW_COUNT;
        v_total := v_total + v_n;
    END LOOP;
    RETURN v_total;
END;
$$;
COMMENT ON FUNCTION pgsnap.backfill_band(bigint, integer) IS
    'Legacy per-band backfill (the deprecated SnapshotBand worker''s job): fills the band''s NULL populations; rows filled.';

CREATE OR REPLACE FUNCTION pgsnap.snapshot_health()
RETURNS TABLE (table_name text, null_snapshots bigint, total_rows bigint)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT 'target_populations', count(*) FILTER (WHERE matching_tags_snapshot IS NULL), count(*)
      FROM public.target_populations
    UNION ALL
    SELECT 'offers', count(*) FILTER (WHERE matching_tags_snapshot IS NULL), count(*)
      FROM public.offers
    UNION ALL
    SELECT 'ad_events', count(*) FILTER (WHERE matching_tags_snapshot IS NULL), count(*)
      FROM public.ad_events
$$;
COMMENT ON FUNCTION pgsnap.snapshot_health() IS
    'NULL snapshots and total rows per table (the seed''s three health queries).';

-- Run bookkeeping shared by the procedure below and the Python driver.
-- Start: NULL when another run holds the lock (a 'skipped' run is recorded).
CREATE OR REPLACE FUNCTION pgsnap._backfill_run_start()
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_run bigint;
BEGIN
    -- a run of this session that was cancelled mid-way may still hold the
    -- session-level lock: drop it, or every other session would skip forever
    PERFORM pgsnap._release_own_lock(pgsnap.lock_key('backfill'));
    IF NOT pg_try_advisory_lock(pgsnap.lock_key('backfill')) THEN
        INSERT INTO pgsnap.backfill_runs (status, finished_at)
        VALUES ('skipped', clock_timestamp());
        RAISE NOTICE 'pgsnap backfill: another run is active; skipped';
        RETURN NULL;
    END IF;
    -- holding the lock, any other 'running' row belongs to a dead session
    UPDATE pgsnap.backfill_runs
       SET status = 'failed', finished_at = clock_timestamp(),
           error = 'interrupted: its session ended before the run finished'
     WHERE status = 'running';
    INSERT INTO pgsnap.backfill_runs DEFAULT VALUES RETURNING id INTO v_run;
    RETURN v_run;
END;
$$;

-- After each batch: add its counts; returns true when a stop was requested.
CREATE OR REPLACE FUNCTION pgsnap._backfill_run_step(p_run bigint, p_tp bigint, p_offers bigint, p_events bigint)
RETURNS boolean
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE pgsnap.backfill_runs r
       SET batches = r.batches + 1,
           target_populations = r.target_populations + p_tp,
           offers = r.offers + p_offers,
           ad_events = r.ad_events + p_events
     WHERE r.id = p_run
    RETURNING r.stop_requested
$$;

CREATE OR REPLACE FUNCTION pgsnap._backfill_run_finish(p_run bigint, p_status text, p_error text DEFAULT NULL)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE pgsnap.backfill_runs r
       SET status = p_status, error = p_error, finished_at = clock_timestamp()
     WHERE r.id = p_run;
    SELECT pg_advisory_unlock(pgsnap.lock_key('backfill'));
$$;

-- No SET search_path (transaction control, see populate_target).
CREATE OR REPLACE PROCEDURE pgsnap.backfill_missing_snapshots(
    p_batch_size integer DEFAULT 500, p_max_batches integer DEFAULT NULL)
LANGUAGE plpgsql
AS $$
DECLARE
    v_own_xact boolean := pg_catalog.now() OPERATOR(pg_catalog.=) pg_catalog.statement_timestamp();
    v_caller_path text := pg_catalog.current_setting('search_path');
    v_run      bigint;
    v_done     record;
    v_batches  integer := 0;
    v_stop     boolean := false;
    v_error    text;
    v_state    text;
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    PERFORM pgsnap._check_batch_size(p_batch_size);
    IF p_max_batches IS NOT NULL AND p_max_batches < 1 THEN
        RAISE EXCEPTION 'max batches must be a positive integer or NULL, got %', p_max_batches
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_run := pgsnap._backfill_run_start();
    IF v_run IS NULL THEN
        PERFORM pg_catalog.set_config('search_path', v_caller_path, true);
        RETURN;
    END IF;
    IF v_own_xact THEN
        COMMIT;
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    END IF;
    LOOP
        -- every failure of a batch, a cancel included, ends the run on the
        -- record (the COMMIT stays outside: a block with EXCEPTION may not commit)
        BEGIN
            SELECT * INTO v_done FROM pgsnap.backfill_batch(p_batch_size);
            EXIT WHEN v_done.target_populations = 0 AND v_done.offers = 0 AND v_done.ad_events = 0;
            v_stop := pgsnap._backfill_run_step(v_run, v_done.target_populations, v_done.offers,
                                                v_done.ad_events);
        EXCEPTION WHEN OTHERS OR query_canceled THEN
            GET STACKED DIAGNOSTICS v_error = MESSAGE_TEXT, v_state = RETURNED_SQLSTATE;
        END;
        EXIT WHEN v_error IS NOT NULL;
        v_batches := v_batches + 1;
        IF v_own_xact THEN
            COMMIT;
            PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
        END IF;
        EXIT WHEN v_stop OR v_batches >= p_max_batches;
    END LOOP;
    IF v_error IS NOT NULL THEN
        -- release the session lock first: recording the run may have to wait
        PERFORM pg_advisory_unlock(pgsnap.lock_key('backfill'));
    END IF;
    PERFORM pgsnap._backfill_run_finish(
        v_run,
        CASE WHEN v_error IS NOT NULL THEN 'failed' WHEN v_stop THEN 'stopped' ELSE 'succeeded' END,
        v_error);
    IF v_error IS NOT NULL THEN
        IF v_own_xact THEN
            COMMIT;
        END IF;
        RAISE EXCEPTION 'pgsnap backfill failed: %', v_error USING ERRCODE = v_state;
    END IF;
    IF NOT v_own_xact THEN
        PERFORM pg_catalog.set_config('search_path', v_caller_path, true);
    END IF;
END;
$$;
COMMENT ON PROCEDURE pgsnap.backfill_missing_snapshots(integer, integer) IS
    'The scheduled safety net: backfill_batch until nothing is left (or p_max_batches), COMMIT per batch, skip if another run is active, recorded in pgsnap.backfill_runs.';
