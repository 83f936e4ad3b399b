-- Bulk population of one target (docs/rules.md, "Populate"; the calling contract is in
-- docs/operations.md, "Calling the procedures").
--
-- A run claims the target (pgsnap.target_state: no session-level lock, so nothing outlives an
-- error or a cancel), sets it `populating`, then walks the me_files in batches of consecutive
-- ids. Each batch is two statements run under the batch's me_file slots (shared: a sync of one
-- of those me_files waits for the batch, and the batch never computes from tags a committed
-- sync has already replaced):
--   1. the diff: the rule's rows for the batch (memberships) against the target's rows, rows
--      whose band and inputs_hash are unchanged left out, unless the target's catalogue
--      changed since its rows were built;
--   2. the write: snapshots built for the rows that need one, then delete / move / refresh /
--      insert, touching only rows that differ. A snapshot is a function of the band and of the
--      (trait, shown value) pairs inputs_hash fingerprints, so one is built per distinct
--      (band, inputs_hash) of the batch, for its lowest me_file, and serves every row of the
--      pair: a band's rows mostly share a few hundred or thousand answers.
-- Both run through EXECUTE: each batch is planned for its own range, and no plan is shared
-- with the per-me_file sync. A target whose bands are all defined, distinct, and match those of
-- a populated twin is copied from the twin's rows instead (same statements, other diff).

-- The me_files a statement could not lock (an application transaction held them) are retried
-- once the batch has committed, waiting for them without holding any slot.

-- Starts a run of p_target_id: busy_pid is set when another live run holds the target (then
-- nothing was changed). Unknown target: P0002.
CREATE OR REPLACE FUNCTION pgsnap._populate_start(
    p_target_id bigint,
    OUT busy_pid integer, OUT status text, OUT claimed_at timestamptz, OUT stale_token xid8,
    OUT catalogue_hash bigint, OUT rebuild boolean,
    OUT source_target_id bigint, OUT source_bands bigint[], OUT bands bigint[])
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_state         pgsnap.target_state;
    v_was_populated boolean;
BEGIN
    IF p_target_id IS NULL OR NOT EXISTS (SELECT 1 FROM public.targets t WHERE t.id = p_target_id) THEN
        RAISE EXCEPTION 'target % does not exist', coalesce(p_target_id::text, 'NULL')
            USING ERRCODE = 'no_data_found';
    END IF;
    INSERT INTO pgsnap.target_state (target_id) VALUES (p_target_id) ON CONFLICT (target_id) DO NOTHING;
    SELECT s.* INTO v_state FROM pgsnap.target_state s WHERE s.target_id = p_target_id FOR UPDATE;
    IF v_state.run_pid IS DISTINCT FROM pg_backend_pid()
       AND pgsnap._claim_alive(v_state.run_pid, v_state.run_backend_start, v_state.run_started_at) THEN
        busy_pid := v_state.run_pid;
        RETURN;
    END IF;

    -- launch_campaign reads the status under the shared form of this lock
    PERFORM pg_advisory_xact_lock(pgsnap.lock_key('target:' || p_target_id));
    SELECT t.population_status = 'populated' INTO v_was_populated FROM public.targets t WHERE t.id = p_target_id;
    UPDATE public.targets t
       SET population_status = CASE WHEN EXISTS (SELECT 1 FROM public.target_bands b WHERE b.target_id = t.id)
                                    THEN 'populating' ELSE 'not_populated' END
     WHERE t.id = p_target_id
    RETURNING t.population_status INTO status;
    claimed_at := clock_timestamp();

    IF status = 'not_populated' THEN   -- no bands: no rows (they went with the bands), nothing stale
        UPDATE pgsnap.target_state s
           SET run_pid = NULL, run_backend_start = NULL, run_started_at = NULL,
               stale_since = NULL, stale_kind = NULL, stale_reason = NULL, stale_token = NULL
         WHERE s.target_id = p_target_id;
        RETURN;
    END IF;

    catalogue_hash := pgsnap._snapshot_catalogue_hash(p_target_id);
    rebuild := v_state.catalogue_hash IS DISTINCT FROM catalogue_hash;
    stale_token := v_state.stale_token;
    UPDATE pgsnap.target_state s
       SET run_pid = pg_backend_pid(), run_backend_start = pgsnap._backend_start(),
           run_started_at = claimed_at, changed_by = pg_current_xact_id()
     WHERE s.target_id = p_target_id;
    -- only a target never populated is copied: re-populating one is re-deriving it from the
    -- rule, which also repairs rows its twin may share a fault with
    IF NOT v_was_populated THEN
        SELECT w.source_target_id, w.source_bands, w.bands INTO source_target_id, source_bands, bands
          FROM pgsnap._populate_twin(p_target_id) w;
    END IF;
END;
$$;
COMMENT ON FUNCTION pgsnap._populate_start(bigint) IS
    'Internal: claim a target for a populate run (or say who holds it), set populating, find a twin to copy.';

-- A maintained twin to copy p_target_id from: every band of the target has a definition, all
-- distinct, and a populated, fresh target (not stale, rows built from today's catalogue) has
-- bands with the same definitions at the same tiers. Definitions are recomputed from the live
-- groups (pgsnap.catalogue_bands); the stored hashes only shortlist candidates.
CREATE OR REPLACE FUNCTION pgsnap._populate_twin(
    p_target_id bigint, OUT source_target_id bigint, OUT source_bands bigint[], OUT bands bigint[])
LANGUAGE sql STABLE
BEGIN ATOMIC
    WITH mine AS (
        SELECT c.target_band_id, c.definition_hash, c.tier FROM pgsnap.catalogue_bands c
         WHERE c.target_id = p_target_id
    ),
    usable AS (
        SELECT count(*) > 0 AND count(m.definition_hash) = count(*)
               AND count(DISTINCT m.definition_hash) = count(*) AS ok,
               count(*) AS n
          FROM mine m
    ),
    shortlist AS (
        SELECT t.id
          FROM public.targets t
          JOIN pgsnap.target_state s ON s.target_id = t.id
         WHERE t.id <> p_target_id
           AND t.population_status = 'populated'
           AND s.stale_since IS NULL AND s.run_pid IS NULL
           AND (SELECT count(*) FROM public.target_bands b WHERE b.target_id = t.id) = (SELECT u.n FROM usable u)
           AND NOT EXISTS (SELECT 1 FROM mine m
                            WHERE NOT EXISTS (SELECT 1 FROM public.target_bands b
                                               WHERE b.target_id = t.id AND b.definition_hash = m.definition_hash))
    ),
    verified AS (
        SELECT sl.id,
               array_agg(o.target_band_id ORDER BY m.tier) AS source_bands,
               array_agg(m.target_band_id ORDER BY m.tier) AS bands
          FROM shortlist sl
          JOIN pgsnap.catalogue_bands o ON o.target_id = sl.id
          JOIN mine m ON m.definition_hash = o.definition_hash AND m.tier = o.tier
          JOIN pgsnap.target_state s ON s.target_id = sl.id
         WHERE s.catalogue_hash = pgsnap._snapshot_catalogue_hash(sl.id)
         GROUP BY sl.id
        HAVING count(*) = (SELECT u.n FROM usable u)
    )
    SELECT v.id, v.source_bands, v.bands
      FROM verified v, usable u
     WHERE u.ok
     ORDER BY v.id
     LIMIT 1;
END;

-- One batch: the target's rows for me_files p_from..p_to made equal to the rule (or to the
-- twin's rows). Returns what it wrote and the me_files it had to leave for a retry.
CREATE OR REPLACE FUNCTION pgsnap._populate_batch(
    p_target_id bigint, p_from bigint, p_to bigint, p_rebuild boolean,
    p_source_target_id bigint, p_source_bands bigint[], p_bands bigint[],
    OUT inserted bigint, OUT moved bigint, OUT refreshed bigint, OUT deleted bigint, OUT skipped bigint[],
    OUT built bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_ids     bigint[];   -- the diff, zipped: existing row (NULL: new), me_file, new band
    v_files   bigint[];   -- (NULL: delete), old band, inputs_hash, given snapshot (copy)
    v_bands   bigint[];
    v_old     bigint[];
    v_hashes  bigint[];
    v_given   jsonb[];
    v_nfiles  bigint[];   -- the snapshots to build: one me_file per (band, inputs_hash), zipped
    v_nbands  bigint[];
    v_nhashes bigint[];
BEGIN
    inserted := 0; moved := 0; refreshed := 0; deleted := 0; built := 0;
    PERFORM pg_advisory_xact_lock_shared(pgsnap._slot_space(), s) FROM pgsnap._slots(p_from, p_to) AS s;

    IF p_source_target_id IS NULL THEN
        EXECUTE $q$
            WITH desired AS (
                SELECT m.target_band_id, m.me_file_id, m.inputs_hash
                  FROM pgsnap.memberships(ARRAY[$1]::bigint[]) m
                 WHERE m.me_file_id BETWEEN $2 AND $3
            ),
            current AS (
                SELECT tp.id, tp.target_band_id, tp.me_file_id, tp.inputs_hash
                  FROM public.target_populations tp
                 WHERE tp.target_id = $1 AND tp.me_file_id BETWEEN $2 AND $3
            ),
            diff AS (
                SELECT c.id, coalesce(d.me_file_id, c.me_file_id) AS me_file_id, d.target_band_id AS band,
                       c.target_band_id AS old_band, d.inputs_hash AS hash
                  FROM desired d
                  FULL JOIN current c ON c.me_file_id = d.me_file_id
                 WHERE d.me_file_id IS NULL OR c.id IS NULL OR c.target_band_id <> d.target_band_id
                    OR c.inputs_hash IS DISTINCT FROM d.inputs_hash OR $4
            ),
            shared AS (   -- one me_file per (band, inputs_hash): its snapshot serves them all
                SELECT DISTINCT ON (x.band, x.hash) x.me_file_id, x.band, x.hash
                  FROM diff x
                 WHERE x.band IS NOT NULL
                 ORDER BY x.band, x.hash, x.me_file_id
            )
            SELECT array_agg(x.id), array_agg(x.me_file_id), array_agg(x.band), array_agg(x.old_band),
                   array_agg(x.hash),
                   (SELECT array_agg(o.me_file_id) FROM shared o), (SELECT array_agg(o.band) FROM shared o),
                   (SELECT array_agg(o.hash) FROM shared o)
              FROM diff x
        $q$
        INTO v_ids, v_files, v_bands, v_old, v_hashes, v_nfiles, v_nbands, v_nhashes
        USING p_target_id, p_from, p_to, p_rebuild;
    ELSE
        EXECUTE $q$
            WITH map AS (
                SELECT * FROM unnest($5::bigint[], $6::bigint[]) AS m(source_band, band)
            ),
            desired AS (
                SELECT m.band AS target_band_id, tp.me_file_id, tp.inputs_hash, tp.matching_tags_snapshot AS snapshot
                  FROM public.target_populations tp
                  JOIN map m ON m.source_band = tp.target_band_id
                 WHERE tp.target_id = $4 AND tp.me_file_id BETWEEN $2 AND $3
            ),
            current AS (
                SELECT tp.id, tp.target_band_id, tp.me_file_id, tp.inputs_hash, tp.matching_tags_snapshot AS snapshot
                  FROM public.target_populations tp
                 WHERE tp.target_id = $1 AND tp.me_file_id BETWEEN $2 AND $3
            ),
            diff AS (
                SELECT c.id, coalesce(d.me_file_id, c.me_file_id) AS me_file_id, d.target_band_id AS band,
                       c.target_band_id AS old_band, d.inputs_hash AS hash, d.snapshot
                  FROM desired d
                  FULL JOIN current c ON c.me_file_id = d.me_file_id
                 WHERE d.me_file_id IS NULL OR c.id IS NULL OR c.target_band_id <> d.target_band_id
                    OR c.inputs_hash IS DISTINCT FROM d.inputs_hash OR c.snapshot IS DISTINCT FROM d.snapshot
            )
            SELECT array_agg(x.id), array_agg(x.me_file_id), array_agg(x.band), array_agg(x.old_band),
                   array_agg(x.hash), array_agg(x.snapshot)
              FROM diff x
        $q$
        INTO v_ids, v_files, v_bands, v_old, v_hashes, v_given
        USING p_target_id, p_from, p_to, p_source_target_id, p_source_bands, p_bands;
    END IF;
    IF v_files IS NULL THEN
        RETURN;   -- nothing differs
    END IF;
    built := coalesce(cardinality(v_nfiles), 0)::bigint;

    EXECUTE $q$
        WITH d AS (
            SELECT * FROM unnest($2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[], $7::jsonb[])
                   AS d(id, me_file_id, band, old_band, hash, given)
        ),
        built AS (
            SELECT r.band, r.hash, s.snapshot
              FROM pgsnap.snapshots($8, $9) s
              JOIN unnest($8::bigint[], $9::bigint[], $10::bigint[]) AS r(me_file_id, band, hash)
                ON r.me_file_id = s.me_file_id AND r.band = s.target_band_id
        ),
        x AS (
            SELECT d.*, coalesce(d.given, b.snapshot) AS snapshot
              FROM d
              LEFT JOIN built b ON b.band = d.band AND b.hash = d.hash
        ),
        locked_rows AS (   -- the rows to change; one another transaction holds is left for the retry
            SELECT tp.id FROM public.target_populations tp
             WHERE tp.id = ANY ($2)
               FOR UPDATE SKIP LOCKED
        ),
        arriving AS (      -- me_files of new rows: the foreign key's lock, taken now, skipping held ones
            SELECT f.id FROM public.me_files f
             WHERE f.id IN (SELECT x.me_file_id FROM x WHERE x.id IS NULL AND x.band IS NOT NULL)
               FOR KEY SHARE SKIP LOCKED
        ),
        gone AS (
            DELETE FROM public.target_populations tp
             USING x, locked_rows r
             WHERE tp.id = x.id AND r.id = x.id AND x.band IS NULL
            RETURNING tp.id
        ),
        changed AS (
            UPDATE public.target_populations tp
               SET target_band_id = x.band, matching_tags_snapshot = x.snapshot, inputs_hash = x.hash,
                   updated_at = now()
              FROM x
              JOIN locked_rows r ON r.id = x.id
             WHERE tp.id = x.id AND x.band IS NOT NULL
               AND (tp.target_band_id <> x.band OR tp.matching_tags_snapshot IS DISTINCT FROM x.snapshot
                    OR tp.inputs_hash IS DISTINCT FROM x.hash)
            RETURNING x.old_band <> x.band AS is_move
        ),
        added AS (
            INSERT INTO public.target_populations
                   (target_id, target_band_id, me_file_id, matching_tags_snapshot, inputs_hash)
            SELECT $1, x.band, x.me_file_id, x.snapshot, x.hash
              FROM x
              JOIN arriving a ON a.id = x.me_file_id
             WHERE x.id IS NULL AND x.band IS NOT NULL
            RETURNING me_file_id
        )
        SELECT (SELECT count(*) FROM added),
               (SELECT count(*) FILTER (WHERE c.is_move) FROM changed c),
               (SELECT count(*) FILTER (WHERE NOT c.is_move) FROM changed c),
               (SELECT count(*) FROM gone),
               ARRAY(SELECT x.me_file_id FROM x
                      WHERE x.id IS NULL AND x.band IS NOT NULL AND x.me_file_id NOT IN (SELECT a.id FROM arriving a)
                     UNION
                     SELECT x.me_file_id FROM x
                      WHERE x.id IS NOT NULL AND x.id NOT IN (SELECT r.id FROM locked_rows r))
    $q$
    INTO inserted, moved, refreshed, deleted, skipped
    USING p_target_id, v_ids, v_files, v_bands, v_old, v_hashes, v_given, v_nfiles, v_nbands, v_nhashes;

    IF inserted + moved + refreshed + deleted > 0 THEN
        -- a REPEATABLE READ sync that started before this batch must not write over it
        UPDATE pgsnap.target_state s SET changed_by = pg_current_xact_id() WHERE s.target_id = p_target_id;
    END IF;
    IF cardinality(skipped) = 0 THEN
        skipped := NULL;
    END IF;
END;
$$;
COMMENT ON FUNCTION pgsnap._populate_batch(bigint, bigint, bigint, boolean, bigint, bigint[], bigint[]) IS
    'Internal: one populate batch (me_file ids p_from..p_to); counts written, me_files left for a retry, '
    'snapshots built.';

-- Before retrying me_files a batch could not lock: wait for the transactions holding them
-- (their foreign-key lock, as an insert takes it), holding no slot meanwhile.
CREATE OR REPLACE FUNCTION pgsnap._populate_wait_for(p_me_file_ids bigint[])
RETURNS void
LANGUAGE sql
BEGIN ATOMIC
    SELECT count(*) FROM (SELECT f.id FROM public.me_files f WHERE f.id = ANY (p_me_file_ids) FOR KEY SHARE) x;
END;

-- Ends a run: status populated, band counts, staleness the run has seen cleared, the
-- catalogue its rows were built from recorded, the claim released; ANALYZE when the run
-- changed a tenth of the table or more (cached plans of every session are then re-made).
-- Returns the target's rows.
CREATE OR REPLACE FUNCTION pgsnap._populate_finish(
    p_target_id bigint, p_claimed_at timestamptz, p_stale_token xid8, p_catalogue_hash bigint,
    p_changed bigint, p_left bigint[])
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_rows bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(pgsnap.lock_key('target:' || p_target_id));
    UPDATE public.targets SET population_status = 'populated', last_populated_at = now()
     WHERE id = p_target_id;
    PERFORM pgsnap._refresh_population_counts(ARRAY[p_target_id]);
    UPDATE pgsnap.target_state s
       SET run_pid = NULL, run_backend_start = NULL, run_started_at = NULL,
           catalogue_hash = p_catalogue_hash,
           stale_since  = CASE WHEN s.stale_token IS NOT DISTINCT FROM p_stale_token THEN NULL ELSE s.stale_since END,
           stale_kind   = CASE WHEN s.stale_token IS NOT DISTINCT FROM p_stale_token THEN NULL ELSE s.stale_kind END,
           stale_reason = CASE WHEN s.stale_token IS NOT DISTINCT FROM p_stale_token THEN NULL ELSE s.stale_reason END,
           stale_token  = CASE WHEN s.stale_token IS NOT DISTINCT FROM p_stale_token THEN NULL ELSE s.stale_token END
     WHERE s.target_id = p_target_id AND s.run_started_at IS NOT DISTINCT FROM p_claimed_at;
    IF p_left IS NOT NULL THEN   -- rows still held by others after the retries: the next run redoes them
        PERFORM pgsnap._mark_stale(ARRAY[p_target_id], 'membership',
            'populate could not lock me_file ' || array_to_string(p_left[1:5], ', ')
            || CASE WHEN cardinality(p_left) > 5 THEN ', ...' ELSE '' END);
    END IF;
    SELECT count(*) INTO v_rows FROM public.target_populations tp WHERE tp.target_id = p_target_id;
    IF p_changed > 0 AND p_changed * 10 >= greatest(
           (SELECT c.reltuples FROM pg_catalog.pg_class c WHERE c.oid = 'public.target_populations'::regclass), 1) THEN
        -- the columns the sync's and populate's statements filter and join on: a fraction of
        -- the cost of sampling the snapshots too
        ANALYZE public.target_populations (target_id, target_band_id, me_file_id);
    END IF;
    RETURN v_rows;
END;
$$;
COMMENT ON FUNCTION pgsnap._populate_finish(bigint, timestamptz, xid8, bigint, bigint, bigint[]) IS
    'Internal: end a populate run (status, counts, staleness, claim, ANALYZE when much changed).';

-- The summary of a run, as the final notice's DETAIL and the function's result.
CREATE OR REPLACE FUNCTION pgsnap._populate_summary(
    p_target_id bigint, p_status text, p_source_target_id bigint, p_batches integer,
    p_inserted bigint, p_moved bigint, p_refreshed bigint, p_deleted bigint, p_rows bigint, p_seconds numeric,
    p_built bigint)
RETURNS jsonb
LANGUAGE sql IMMUTABLE
BEGIN ATOMIC
    SELECT jsonb_build_object(
        'event', 'done', 'job', 'populate', 'target_id', p_target_id, 'status', p_status,
        'method', CASE WHEN p_status = 'not_populated' THEN NULL
                       WHEN p_source_target_id IS NULL THEN 'scanned' ELSE 'copied' END,
        'source_target_id', p_source_target_id, 'batches', p_batches,
        'inserted', p_inserted, 'moved', p_moved, 'refreshed', p_refreshed, 'deleted', p_deleted,
        'unchanged', greatest(p_rows - p_inserted - p_moved - p_refreshed, 0), 'rows', p_rows,
        'snapshots_built', p_built, 'seconds', round(p_seconds, 3));
END;

CREATE OR REPLACE FUNCTION pgsnap._populate_summary_text(p_summary jsonb)
RETURNS text
LANGUAGE sql IMMUTABLE
BEGIN ATOMIC
    SELECT CASE WHEN p_summary ->> 'status' = 'not_populated'
                THEN format('pgsnap: target %s has no bands; status not_populated', p_summary ->> 'target_id')
                ELSE format('pgsnap: target %s populated (%s): %s batches, %s inserted, %s moved, %s refreshed, '
                            '%s deleted, %s unchanged',
                            p_summary ->> 'target_id',
                            CASE WHEN p_summary ->> 'method' = 'copied'
                                 THEN 'copied from target ' || (p_summary ->> 'source_target_id') ELSE 'scanned' END,
                            p_summary ->> 'batches', p_summary ->> 'inserted', p_summary ->> 'moved',
                            p_summary ->> 'refreshed', p_summary ->> 'deleted', p_summary ->> 'unchanged') END;
END;

-- The procedure: commits per batch. Its first statement is COMMIT: called inside a transaction
-- block (BEGIN ... CALL, or CALL ...; SELECT ... sent as one message) it fails at once with
-- 2D000 "invalid transaction termination" before any work or lock. Callers who want the work
-- inside their own transaction use pgsnap.populate_target_in_transaction(id).
-- No SET search_path (PostgreSQL forbids it on a procedure that commits): every statement is
-- schema-qualified, and search_path is pinned transaction-locally after each COMMIT.
CREATE OR REPLACE PROCEDURE pgsnap.populate_target(p_target_id bigint, p_batch_size integer DEFAULT 10000)
LANGUAGE plpgsql
AS $$
DECLARE
    v_run      record;
    v_t0       timestamptz;
    v_waited   boolean := false;
    v_total    bigint;
    v_lo       bigint;
    v_hi       bigint;
    v_next     bigint;
    v_batch    record;
    v_left     bigint[];
    v_held     bigint[];     -- me_files still held by others after the retries
    v_retry    integer;
    v_batches  integer := 0;
    v_ins      bigint := 0;
    v_mov      bigint := 0;
    v_ref      bigint := 0;
    v_del      bigint := 0;
    v_built    bigint := 0;
    v_rows     bigint;
    v_summary  jsonb;
BEGIN
    COMMIT;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    v_t0 := pg_catalog.clock_timestamp();
    IF p_batch_size IS NULL OR p_batch_size < 1 THEN
        RAISE EXCEPTION 'batch size must be a positive integer, got %', coalesce(p_batch_size::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    LOOP
        v_run := pgsnap._populate_start(p_target_id);
        EXIT WHEN v_run.busy_pid IS NULL;
        IF NOT v_waited THEN
            RAISE NOTICE 'pgsnap: target % is being populated by pid %; waiting for it', p_target_id, v_run.busy_pid;
            v_waited := true;
        END IF;
        COMMIT;
        PERFORM pg_catalog.pg_sleep(0.2);
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    END LOOP;
    COMMIT;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);

    IF v_run.status = 'not_populated' THEN
        v_summary := pgsnap._populate_summary(p_target_id, 'not_populated', NULL, 0, 0, 0, 0, 0, 0,
                                              extract(epoch FROM clock_timestamp() - v_t0), 0);
        PERFORM pgsnap._notice(pgsnap._populate_summary_text(v_summary), v_summary);
        RETURN;
    END IF;

    SELECT count(*), min(f.id) INTO v_total, v_lo FROM public.me_files f;
    v_total := (v_total + p_batch_size - 1) / p_batch_size;
    WHILE v_lo IS NOT NULL LOOP
        -- p_batch_size consecutive me_files; the last batch is open-ended (registrations)
        SELECT f.id INTO v_hi FROM public.me_files f WHERE f.id >= v_lo ORDER BY f.id OFFSET p_batch_size - 1 LIMIT 1;
        SELECT min(f.id) INTO v_next FROM public.me_files f WHERE f.id > v_hi;
        IF v_next IS NULL THEN
            v_hi := 9223372036854775807;
        END IF;
        v_batch := pgsnap._populate_batch(p_target_id, v_lo, v_hi, v_run.rebuild,
                                          v_run.source_target_id, v_run.source_bands, v_run.bands);
        COMMIT;
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
        v_left := v_batch.skipped;
        v_retry := 0;
        WHILE v_left IS NOT NULL AND v_retry < 3 LOOP   -- me_files an application transaction held
            v_retry := v_retry + 1;
            PERFORM pgsnap._populate_wait_for(v_left);
            v_ins := v_ins + v_batch.inserted; v_mov := v_mov + v_batch.moved;
            v_ref := v_ref + v_batch.refreshed; v_del := v_del + v_batch.deleted;
            v_built := v_built + v_batch.built;
            v_batch := pgsnap._populate_batch(p_target_id, (SELECT min(x) FROM unnest(v_left) x),
                                              (SELECT max(x) FROM unnest(v_left) x), v_run.rebuild,
                                              v_run.source_target_id, v_run.source_bands, v_run.bands);
            COMMIT;
            PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
            v_left := v_batch.skipped;
        END LOOP;
        v_held := v_held || v_left;
        v_ins := v_ins + v_batch.inserted; v_mov := v_mov + v_batch.moved;
        v_ref := v_ref + v_batch.refreshed; v_del := v_del + v_batch.deleted;
        v_built := v_built + v_batch.built;
        v_batches := v_batches + 1;
        PERFORM pgsnap._notice(
            format('pgsnap: target %s batch %s/%s', p_target_id, v_batches, greatest(v_total, v_batches)),
            jsonb_build_object('event', 'batch', 'job', 'populate', 'target_id', p_target_id,
                               'batch', v_batches, 'batches', greatest(v_total, v_batches),
                               'inserted', v_ins, 'moved', v_mov, 'refreshed', v_ref, 'deleted', v_del));
        v_lo := v_next;
    END LOOP;

    v_rows := pgsnap._populate_finish(p_target_id, v_run.claimed_at, v_run.stale_token, v_run.catalogue_hash,
                                      v_ins + v_mov + v_ref + v_del, v_held);
    v_summary := pgsnap._populate_summary(p_target_id, 'populated', v_run.source_target_id, v_batches,
                                          v_ins, v_mov, v_ref, v_del, v_rows,
                                          extract(epoch FROM clock_timestamp() - v_t0), v_built);
    PERFORM pgsnap._notice(pgsnap._populate_summary_text(v_summary), v_summary);
    COMMIT;
END;
$$;
COMMENT ON PROCEDURE pgsnap.populate_target(bigint, integer) IS
    'Bring a target''s rows to the membership rule, snapshots built in the same statements; commits per batch '
    'of p_batch_size me_files. Fails at once inside a transaction block: use populate_target_in_transaction.';

-- The same work inside the caller's transaction (a function cannot commit): one statement
-- over every me_file. The caller's transaction keeps the slots it takes, so application
-- writes of any me_file wait for its commit. Returns the run's summary.
CREATE OR REPLACE FUNCTION pgsnap.populate_target_in_transaction(p_target_id bigint)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_run     record;
    v_t0      timestamptz := clock_timestamp();
    v_batch   record;
    v_pending bigint[];
    v_rows    bigint;
    v_summary jsonb;
BEGIN
    LOOP
        v_run := pgsnap._populate_start(p_target_id);
        EXIT WHEN v_run.busy_pid IS NULL;
        PERFORM pg_sleep(0.2);
    END LOOP;
    IF v_run.status = 'not_populated' THEN
        v_summary := pgsnap._populate_summary(p_target_id, 'not_populated', NULL, 0, 0, 0, 0, 0, 0,
                                              extract(epoch FROM clock_timestamp() - v_t0), 0);
        PERFORM pgsnap._notice(pgsnap._populate_summary_text(v_summary), v_summary);
        RETURN v_summary;
    END IF;
    -- new rows' me_files, locked (waiting) before any slot is held: an application transaction
    -- holding one commits first, and its own sync never waits for this transaction
    SELECT array_agg(m.me_file_id) INTO v_pending
      FROM pgsnap.memberships(ARRAY[p_target_id]) m
     WHERE NOT EXISTS (SELECT 1 FROM public.target_populations tp
                        WHERE tp.target_id = p_target_id AND tp.me_file_id = m.me_file_id);
    PERFORM pgsnap._populate_wait_for(v_pending);
    v_batch := pgsnap._populate_batch(p_target_id, -9223372036854775808, 9223372036854775807, v_run.rebuild,
                                      v_run.source_target_id, v_run.source_bands, v_run.bands);
    IF v_batch.skipped IS NOT NULL THEN
        RAISE EXCEPTION 'target %: me_file % is locked by another transaction', p_target_id, v_batch.skipped[1]
            USING ERRCODE = 'lock_not_available', HINT = 'Retry the transaction.';
    END IF;
    v_rows := pgsnap._populate_finish(p_target_id, v_run.claimed_at, v_run.stale_token, v_run.catalogue_hash,
                                      v_batch.inserted + v_batch.moved + v_batch.refreshed + v_batch.deleted, NULL);
    v_summary := pgsnap._populate_summary(p_target_id, 'populated', v_run.source_target_id, 1,
                                          v_batch.inserted, v_batch.moved, v_batch.refreshed, v_batch.deleted,
                                          v_rows, extract(epoch FROM clock_timestamp() - v_t0), v_batch.built);
    PERFORM pgsnap._notice(pgsnap._populate_summary_text(v_summary), v_summary);
    RETURN v_summary;
END;
$$;
COMMENT ON FUNCTION pgsnap.populate_target_in_transaction(bigint) IS
    'populate_target inside the caller''s transaction (cannot commit; application writes wait for its commit); '
    'returns the run''s summary as jsonb.';

-- Targets a catalogue edit left stale, oldest first.
CREATE OR REPLACE FUNCTION pgsnap.stale_targets()
RETURNS TABLE (target_id bigint, stale_since timestamptz, kind text, reason text)
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT s.target_id, s.stale_since, s.stale_kind, s.stale_reason
      FROM pgsnap.target_state s
      JOIN public.targets t ON t.id = s.target_id
     WHERE s.stale_since IS NOT NULL AND t.population_status IN ('populating', 'populated')
     ORDER BY s.stale_since, s.target_id;
END;
COMMENT ON FUNCTION pgsnap.stale_targets() IS
    'Targets a catalogue edit left to re-populate: since when, membership or snapshot, why.';

-- The scheduled job for stale targets: re-populate up to p_max_targets of them, oldest first
-- (incrementally: only rows whose band or snapshot changed are rewritten).
CREATE OR REPLACE PROCEDURE pgsnap.repopulate_stale_targets(p_max_targets integer DEFAULT 10)
LANGUAGE plpgsql
AS $$
DECLARE
    v_targets bigint[];
    v_target  bigint;
BEGIN
    COMMIT;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    IF p_max_targets IS NULL OR p_max_targets < 1 THEN
        RAISE EXCEPTION 'max targets must be a positive integer, got %', coalesce(p_max_targets::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_targets := ARRAY(SELECT s.target_id FROM pgsnap.stale_targets() s LIMIT p_max_targets);
    COMMIT;
    FOREACH v_target IN ARRAY v_targets LOOP
        CALL pgsnap.populate_target(v_target);
    END LOOP;
END;
$$;
COMMENT ON PROCEDURE pgsnap.repopulate_stale_targets(integer) IS
    'The scheduled job for catalogue edits: re-populate up to p_max_targets stale targets, oldest first.';

-- When did a target start populating? A BEFORE trigger stamps targets.populating_since whenever
-- the status becomes 'populating' (a re-run restarts the clock) and clears it when the target
-- leaves that status, whoever changes it: `pgsnap check` tells a run in progress from one that
-- died.
CREATE OR REPLACE FUNCTION pgsnap._track_populating()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    NEW.populating_since := CASE WHEN NEW.population_status = 'populating' THEN now() END;
    RETURN NEW;
END;
$$;
COMMENT ON FUNCTION pgsnap._track_populating() IS
    'Internal: keeps targets.populating_since equal to when the target last entered populating.';

CREATE OR REPLACE TRIGGER targets_track_populating
    BEFORE INSERT OR UPDATE OF population_status ON public.targets
    FOR EACH ROW
    EXECUTE FUNCTION pgsnap._track_populating();
