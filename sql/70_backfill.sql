-- The safety net (docs/rules.md, "Backfill"): fill every NULL snapshot, parents before
-- children, each from the source pgsnap.inherited_snapshot names:
--   population -> built; offer -> its population's snapshot, else built;
--   ad_event -> its offer's, else its population's, else built.
-- Rows are claimed FOR UPDATE SKIP LOCKED and written only while still NULL. While the
-- stricter shape check is not yet validated (the NOT NULL journey), the scheduled job also
-- rebuilds snapshots in any other shape (the original's flat format).

-- One batch past a keyset position per table (p_after: the last id each table's previous
-- batch claimed, NULL: from the start), and the new positions. Filled rows leave their entries
-- in the partial "IS NULL" indexes until VACUUM; a batch that always started from the lowest
-- id would walk every entry the run has already filled (quadratic in the backlog), so the
-- procedure passes each table's position on. Rows skipped on the way (held by another session,
-- an ad_event whose offer was still NULL) are found by the procedure's next pass from the start.
CREATE OR REPLACE FUNCTION pgsnap._backfill_batch(
    p_batch_size integer, p_after bigint[],
    OUT target_populations bigint, OUT offers bigint, OUT ad_events bigint, OUT after bigint[])
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c_start constant bigint := -9223372036854775808;   -- a position before every id
    v_ids   bigint[];
    v_files bigint[];
    v_bands bigint[];
    v_n     bigint;
    v_last  bigint;
    v_frontier bigint;
    v_claimed  bigint;
BEGIN
    IF p_batch_size IS NULL OR p_batch_size < 1 THEN
        RAISE EXCEPTION 'batch size must be a positive integer, got %', coalesce(p_batch_size::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    target_populations := 0; offers := 0; ad_events := 0;
    after := coalesce(p_after, ARRAY[NULL, NULL, NULL]::bigint[]);   -- each moves past what its table claims

    -- populations: built, set-based. The write runs through EXECUTE: planned for this batch's
    -- arrays (a cached generic plan guesses 10 pairs and joins band_traits by trait alone, ~7x
    -- slower per batch)
    SELECT array_agg(x.id), array_agg(x.me_file_id), array_agg(x.target_band_id)
      INTO v_ids, v_files, v_bands
      FROM (SELECT tp.id, tp.me_file_id, tp.target_band_id
              FROM public.target_populations tp
             WHERE tp.matching_tags_snapshot IS NULL AND tp.id > coalesce(after[1], c_start)
             ORDER BY tp.id LIMIT p_batch_size
               FOR UPDATE SKIP LOCKED) x;
    after[1] := coalesce((SELECT max(i) FROM unnest(v_ids) i), after[1]);
    IF v_ids IS NOT NULL THEN
        EXECUTE $q$
            UPDATE public.target_populations tp
               SET matching_tags_snapshot = s.snapshot, updated_at = now()
              FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS u(id, me_file_id, band_id)
              JOIN pgsnap.snapshots($2, $3) s
                ON s.me_file_id = u.me_file_id AND s.target_band_id = u.band_id
             WHERE tp.id = u.id AND tp.matching_tags_snapshot IS NULL
        $q$ USING v_ids, v_files, v_bands;
        GET DIAGNOSTICS v_n = ROW_COUNT;
        target_populations := v_n;
    END IF;

    -- offers
    WITH c AS MATERIALIZED (
        SELECT x.id, x.me_file_id, x.target_band_id FROM public.offers x
         WHERE x.matching_tags_snapshot IS NULL AND x.id > coalesce(after[2], c_start)
         ORDER BY x.id LIMIT p_batch_size
           FOR UPDATE SKIP LOCKED
    ),
    filled AS (
        UPDATE public.offers o
           SET matching_tags_snapshot = i.snapshot
          FROM c
         CROSS JOIN LATERAL pgsnap.inherited_snapshot(NULL, c.me_file_id, c.target_band_id) i
         WHERE o.id = c.id AND o.matching_tags_snapshot IS NULL AND i.snapshot IS NOT NULL
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM filled), (SELECT count(*) FROM c), (SELECT max(c.id) FROM c)
      INTO offers, v_claimed, v_last;
    after[2] := coalesce(v_last, after[2]);

    -- ad_events whose offer has its snapshot (offers first). The pass fills offers in id order,
    -- so while it has offers left to claim, an ad_event whose offer lies past the lowest NULL
    -- offer beyond the offers' position waits without a probe (probing every waiting ad_event
    -- re-read the backlog each batch); the others probe their offer, which may have been
    -- skipped (another session holds it). A batch that claimed less than a full batch of offers
    -- leaves none the pass could still fill: then every ad_event probes its own offer, and only
    -- those of held offers wait. One left waiting is found by the next pass.
    v_frontier := CASE WHEN v_claimed = p_batch_size
                       THEN (SELECT min(o.id) FROM public.offers o
                              WHERE o.matching_tags_snapshot IS NULL AND o.id > coalesce(after[2], c_start))
                  END;
    WITH c AS MATERIALIZED (
        SELECT x.id, x.offer_id, x.me_file_id, x.target_band_id FROM public.ad_events x
         WHERE x.matching_tags_snapshot IS NULL AND x.id > coalesce(after[3], c_start)
           AND (x.offer_id IS NULL OR v_frontier IS NULL OR x.offer_id < v_frontier)
           AND NOT EXISTS (SELECT 1 FROM public.offers o
                            WHERE o.id = x.offer_id AND o.matching_tags_snapshot IS NULL)
         ORDER BY x.id LIMIT p_batch_size
           FOR UPDATE SKIP LOCKED
    ),
    filled AS (
        UPDATE public.ad_events a
           SET matching_tags_snapshot = i.snapshot
          FROM c
         CROSS JOIN LATERAL pgsnap.inherited_snapshot(c.offer_id, c.me_file_id, c.target_band_id) i
         WHERE a.id = c.id AND a.matching_tags_snapshot IS NULL AND i.snapshot IS NOT NULL
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM filled), (SELECT max(c.id) FROM c) INTO ad_events, v_last;
    after[3] := coalesce(v_last, after[3]);
END;
$$;
COMMENT ON FUNCTION pgsnap._backfill_batch(integer, bigint[]) IS
    'Internal: one backfill batch past each table''s keyset position; rows filled per table and the new positions.';

CREATE OR REPLACE FUNCTION pgsnap.backfill_batch(p_batch_size integer DEFAULT 500)
RETURNS TABLE (target_populations bigint, offers bigint, ad_events bigint)
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT b.target_populations, b.offers, b.ad_events FROM pgsnap._backfill_batch(p_batch_size, NULL) b;
END;
COMMENT ON FUNCTION pgsnap.backfill_batch(integer) IS
    'Fill one bounded batch of NULL snapshots per table, parents first; all zeros: nothing is left.';

-- Whether the stricter shape check of a table is still to be validated (the journey): then
-- rows in another shape may exist, and the job rebuilds them.
CREATE OR REPLACE FUNCTION pgsnap._reshape_pending(p_table text)
RETURNS boolean
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT coalesce((SELECT NOT c.convalidated FROM pg_catalog.pg_constraint c
                      WHERE c.conrelid = ('public.' || p_table)::regclass
                        AND c.conname = p_table || '_snapshot_shape'), true);
END;

-- Rebuild the snapshots in another shape among the ids p_from..p_to of one table; rows written.
CREATE OR REPLACE FUNCTION pgsnap._reshape_batch(p_table text, p_from bigint, p_to bigint)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_ids   bigint[];
    v_files bigint[];
    v_bands bigint[];
    v_n     bigint := 0::bigint;
BEGIN
    IF p_table = 'target_populations' THEN
        SELECT array_agg(tp.id), array_agg(tp.me_file_id), array_agg(tp.target_band_id)
          INTO v_ids, v_files, v_bands
          FROM public.target_populations tp
         WHERE tp.id BETWEEN p_from AND p_to AND tp.matching_tags_snapshot IS NOT NULL
           AND NOT pgsnap.snapshot_shape_ok(tp.matching_tags_snapshot);
        IF v_ids IS NOT NULL THEN
            EXECUTE $q$   -- its own plan, as in backfill_batch
                UPDATE public.target_populations tp
                   SET matching_tags_snapshot = s.snapshot, inputs_hash = NULL, updated_at = now()
                  FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS u(id, me_file_id, band_id)
                  JOIN pgsnap.snapshots($2, $3) s
                    ON s.me_file_id = u.me_file_id AND s.target_band_id = u.band_id
                 WHERE tp.id = u.id AND NOT pgsnap.snapshot_shape_ok(tp.matching_tags_snapshot)
            $q$ USING v_ids, v_files, v_bands;
            GET DIAGNOSTICS v_n = ROW_COUNT;
        END IF;
    ELSIF p_table = 'offers' THEN
        UPDATE public.offers o
           SET matching_tags_snapshot = i.snapshot
          FROM (SELECT x.id, x.me_file_id, x.target_band_id FROM public.offers x
                 WHERE x.id BETWEEN p_from AND p_to AND x.matching_tags_snapshot IS NOT NULL
                   AND NOT pgsnap.snapshot_shape_ok(x.matching_tags_snapshot)) c
         CROSS JOIN LATERAL pgsnap.inherited_snapshot(NULL, c.me_file_id, c.target_band_id) i
         WHERE o.id = c.id AND i.snapshot IS NOT NULL;
        GET DIAGNOSTICS v_n = ROW_COUNT;
    ELSIF p_table = 'ad_events' THEN
        UPDATE public.ad_events a
           SET matching_tags_snapshot = i.snapshot
          FROM (SELECT x.id, x.offer_id, x.me_file_id, x.target_band_id FROM public.ad_events x
                 WHERE x.id BETWEEN p_from AND p_to AND x.matching_tags_snapshot IS NOT NULL
                   AND NOT pgsnap.snapshot_shape_ok(x.matching_tags_snapshot)) c
         CROSS JOIN LATERAL pgsnap.inherited_snapshot(c.offer_id, c.me_file_id, c.target_band_id) i
         WHERE a.id = c.id AND i.snapshot IS NOT NULL;
        GET DIAGNOSTICS v_n = ROW_COUNT;
    ELSE
        RAISE EXCEPTION 'unknown snapshot table %', p_table USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN v_n;
END;
$$;

-- What a backfill would do, by table and source; writes nothing. Rows in another shape count
-- while the stricter check is not validated (that count reads the whole table).
CREATE OR REPLACE FUNCTION pgsnap.backfill_plan()
RETURNS TABLE (table_name text, source text, rows bigint)
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT 'target_populations', 'built', count(*)
      FROM public.target_populations tp
     WHERE tp.matching_tags_snapshot IS NULL
        OR (pgsnap._reshape_pending('target_populations') AND NOT pgsnap.snapshot_shape_ok(tp.matching_tags_snapshot))
    UNION ALL
    SELECT 'offers', i.source, count(*)
      FROM public.offers o
     CROSS JOIN LATERAL pgsnap.inherited_snapshot(NULL, o.me_file_id, o.target_band_id, false) i
     WHERE o.matching_tags_snapshot IS NULL
        OR (pgsnap._reshape_pending('offers') AND NOT pgsnap.snapshot_shape_ok(o.matching_tags_snapshot))
     GROUP BY i.source
    UNION ALL
    SELECT 'ad_events', i.source, count(*)
      FROM public.ad_events a
     CROSS JOIN LATERAL pgsnap.inherited_snapshot(a.offer_id, a.me_file_id, a.target_band_id, false) i
     WHERE a.matching_tags_snapshot IS NULL
        OR (pgsnap._reshape_pending('ad_events') AND NOT pgsnap.snapshot_shape_ok(a.matching_tags_snapshot))
     GROUP BY i.source;
END;
COMMENT ON FUNCTION pgsnap.backfill_plan() IS
    'Dry run of the backfill: rows to fill (NULL, or in another shape before its check is validated) per table and source.';

CREATE OR REPLACE FUNCTION pgsnap.backfill_band(p_target_band_id bigint, p_batch_size integer DEFAULT 500)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_ids   bigint[];
    v_files bigint[];
    v_bands bigint[];
    v_n     bigint;
    v_total bigint := 0;
BEGIN
    IF p_batch_size IS NULL OR p_batch_size < 1 THEN
        RAISE EXCEPTION 'batch size must be a positive integer, got %', coalesce(p_batch_size::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM public.target_bands b WHERE b.id = p_target_band_id) THEN
        RAISE EXCEPTION 'target band % does not exist', coalesce(p_target_band_id::text, 'NULL')
            USING ERRCODE = 'no_data_found';
    END IF;
    LOOP
        SELECT array_agg(x.id), array_agg(x.me_file_id), array_agg(p_target_band_id) INTO v_ids, v_files, v_bands
          FROM (SELECT tp.id, tp.me_file_id FROM public.target_populations tp
                 WHERE tp.target_band_id = p_target_band_id AND tp.matching_tags_snapshot IS NULL
                 ORDER BY tp.id LIMIT p_batch_size
                   FOR UPDATE SKIP LOCKED) x;
        EXIT WHEN v_ids IS NULL;
        EXECUTE $q$   -- its own plan, as in backfill_batch
            UPDATE public.target_populations tp
               SET matching_tags_snapshot = s.snapshot, updated_at = now()
              FROM unnest($1::bigint[], $2::bigint[]) AS u(id, me_file_id)
              JOIN pgsnap.snapshots($2, $3) s ON s.me_file_id = u.me_file_id
             WHERE tp.id = u.id AND tp.matching_tags_snapshot IS NULL
        $q$ USING v_ids, v_files, v_bands;
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
BEGIN ATOMIC
    SELECT 'target_populations', count(*) FILTER (WHERE tp.matching_tags_snapshot IS NULL), count(*)
      FROM public.target_populations tp
    UNION ALL
    SELECT 'offers', count(*) FILTER (WHERE o.matching_tags_snapshot IS NULL), count(*)
      FROM public.offers o
    UNION ALL
    SELECT 'ad_events', count(*) FILTER (WHERE a.matching_tags_snapshot IS NULL), count(*)
      FROM public.ad_events a;
END;
COMMENT ON FUNCTION pgsnap.snapshot_health() IS
    'NULL snapshots and total rows per table (the seed''s three health queries).';

-- Starts a run: run_id NULL when another run is active (a `skipped` run is recorded). No
-- session-level lock: a run is alive while its session executes it (see _claim_alive); the
-- start itself is serialised by a transaction-level lock, and a start that finds it taken
-- skips too.
CREATE OR REPLACE FUNCTION pgsnap._backfill_start(OUT run_id bigint, OUT skipped_run_id bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT pg_try_advisory_xact_lock(pgsnap.lock_key('backfill'))
       OR EXISTS (SELECT 1 FROM pgsnap.backfill_runs r
                   WHERE r.status = 'running' AND pgsnap._claim_alive(r.pid, r.backend_start, r.started_at)) THEN
        INSERT INTO pgsnap.backfill_runs (status, finished_at, backend_start)
        VALUES ('skipped', clock_timestamp(), pgsnap._backend_start())
        RETURNING id INTO skipped_run_id;
        RETURN;
    END IF;
    UPDATE pgsnap.backfill_runs
       SET status = 'failed', finished_at = clock_timestamp(),
           error = 'interrupted: its session ended before the run finished'
     WHERE status = 'running';
    INSERT INTO pgsnap.backfill_runs (backend_start) VALUES (pgsnap._backend_start()) RETURNING id INTO run_id;
END;
$$;

CREATE OR REPLACE FUNCTION pgsnap._backfill_summary(p_run_id bigint)
RETURNS jsonb
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT jsonb_build_object('event', 'done', 'job', 'backfill', 'run_id', r.id, 'status', r.status,
                              'batches', r.batches, 'target_populations', r.target_populations,
                              'offers', r.offers, 'ad_events', r.ad_events, 'error', r.error)
      FROM pgsnap.backfill_runs r WHERE r.id = p_run_id;
END;

-- The scheduled safety net: batches until nothing is left (or p_max_batches), then,
-- during the journey, the rows in another shape, table by table in id ranges; COMMIT after
-- each batch; a run another session is executing makes this one `skipped`. Its first
-- statement is COMMIT, like populate_target's (inside a transaction block it fails at once);
-- a caller who wants one transaction loops pgsnap.backfill_batch() itself.
CREATE OR REPLACE PROCEDURE pgsnap.backfill_missing_snapshots(
    p_batch_size integer DEFAULT 500, p_max_batches integer DEFAULT NULL)
LANGUAGE plpgsql
AS $$
DECLARE
    v_start    record;
    v_run      bigint;
    v_total    bigint;
    v_done     bigint := 0::bigint;
    v_counts   record;
    v_batches  integer := 0;
    v_stop     boolean := false;
    v_error    text;
    v_state    text;
    v_tables   text[];
    v_table    text;
    v_from     bigint;
    v_max      bigint;
    v_n        bigint;
    v_summary  jsonb;
    v_after    bigint[] := ARRAY[NULL, NULL, NULL]::bigint[];   -- each table's keyset position
    v_pass     bigint := 0::bigint;   -- rows written since the pass began
BEGIN
    COMMIT;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    IF p_batch_size IS NULL OR p_batch_size < 1 THEN
        RAISE EXCEPTION 'batch size must be a positive integer, got %', coalesce(p_batch_size::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_max_batches IS NOT NULL AND p_max_batches < 1 THEN
        RAISE EXCEPTION 'max batches must be a positive integer or NULL, got %', p_max_batches
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_start := pgsnap._backfill_start();
    IF v_start.run_id IS NULL THEN
        v_summary := pgsnap._backfill_summary(v_start.skipped_run_id);
        PERFORM pgsnap._notice('pgsnap backfill: another run is active; skipped', v_summary);
        COMMIT;
        RETURN;
    END IF;
    v_run := v_start.run_id;
    v_tables := ARRAY(SELECT t FROM unnest(ARRAY['target_populations', 'offers', 'ad_events']) AS t
                       WHERE pgsnap._reshape_pending(t));
    SELECT coalesce(sum(p.rows), 0)::bigint INTO v_total FROM pgsnap.backfill_plan() p;
    COMMIT;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);

    -- every failure of a batch, a cancel included, ends the run on the record (the COMMIT
    -- stays outside: a block with EXCEPTION may not commit)
    LOOP
        BEGIN
            SELECT * INTO v_counts FROM pgsnap._backfill_batch(p_batch_size, v_after);
            IF v_counts.after IS NOT DISTINCT FROM v_after THEN
                -- the end of a pass: nothing left past the positions. Another pass from the
                -- start finds the rows skipped on the way, unless this one wrote nothing.
                EXIT WHEN v_pass = 0;
                v_after := ARRAY[NULL, NULL, NULL]::bigint[];
                v_pass := 0;
                CONTINUE;
            END IF;
            v_after := v_counts.after;
            v_pass := v_pass + v_counts.target_populations + v_counts.offers + v_counts.ad_events;
            UPDATE pgsnap.backfill_runs r
               SET batches = r.batches + 1,
                   target_populations = r.target_populations + v_counts.target_populations,
                   offers = r.offers + v_counts.offers, ad_events = r.ad_events + v_counts.ad_events
             WHERE r.id = v_run
            RETURNING r.stop_requested INTO v_stop;
        EXCEPTION WHEN OTHERS OR query_canceled THEN
            GET STACKED DIAGNOSTICS v_error = MESSAGE_TEXT, v_state = RETURNED_SQLSTATE;
        END;
        EXIT WHEN v_error IS NOT NULL;
        COMMIT;
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
        v_batches := v_batches + 1;
        v_done := v_done + v_counts.target_populations + v_counts.offers + v_counts.ad_events;
        PERFORM pgsnap._notice(format('pgsnap backfill: batch %s, %s of %s rows', v_batches, v_done, v_total),
            jsonb_build_object('event', 'batch', 'job', 'backfill', 'run_id', v_run, 'batch', v_batches,
                               'done', v_done, 'total', greatest(v_total, v_done))
            || (SELECT jsonb_build_object('target_populations', r.target_populations, 'offers', r.offers,
                                          'ad_events', r.ad_events)
                  FROM pgsnap.backfill_runs r WHERE r.id = v_run));
        EXIT WHEN v_stop OR v_batches >= p_max_batches;
    END LOOP;

    -- rows in another shape, while the journey has not validated the stricter check
    IF v_error IS NULL AND NOT v_stop AND (p_max_batches IS NULL OR v_batches < p_max_batches) THEN
        FOREACH v_table IN ARRAY v_tables LOOP
            EXECUTE format('SELECT min(id), max(id) FROM public.%I', v_table) INTO v_from, v_max;
            WHILE v_from <= v_max AND v_error IS NULL LOOP
                BEGIN
                    v_n := pgsnap._reshape_batch(v_table, v_from, v_from + p_batch_size * 20 - 1);
                    IF v_n > 0 THEN
                        EXECUTE format('UPDATE pgsnap.backfill_runs r SET %I = r.%I + $1 WHERE r.id = $2',
                                       v_table, v_table) USING v_n, v_run;
                    END IF;
                EXCEPTION WHEN OTHERS OR query_canceled THEN
                    GET STACKED DIAGNOSTICS v_error = MESSAGE_TEXT, v_state = RETURNED_SQLSTATE;
                END;
                COMMIT;
                PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
                v_from := v_from + p_batch_size * 20;
                v_done := v_done + coalesce(v_n, 0);
            END LOOP;
        END LOOP;
    END IF;

    IF v_error IS NULL THEN   -- the stored band counts, kept equal to the rows
        PERFORM pgsnap._refresh_population_counts(NULL);
    END IF;
    UPDATE pgsnap.backfill_runs r
       SET status = CASE WHEN v_error IS NOT NULL THEN 'failed' WHEN v_stop OR v_batches >= p_max_batches
                         THEN 'stopped' ELSE 'succeeded' END,
           error = v_error, finished_at = clock_timestamp()
     WHERE r.id = v_run;
    v_summary := pgsnap._backfill_summary(v_run);
    PERFORM pgsnap._notice(format('pgsnap backfill: run %s %s', v_run, v_summary ->> 'status'), v_summary);
    COMMIT;
    IF v_error IS NOT NULL THEN
        RAISE EXCEPTION 'pgsnap backfill failed: %', v_error USING ERRCODE = v_state;
    END IF;
END;
$$;
COMMENT ON PROCEDURE pgsnap.backfill_missing_snapshots(integer, integer) IS
    'The scheduled safety net: backfill_batch until nothing is left (or p_max_batches), COMMIT per batch, skip if '
    'another run is active, recorded in pgsnap.backfill_runs. Fails at once inside a transaction block.';
