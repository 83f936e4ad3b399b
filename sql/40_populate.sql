-- Bulk population of one target (design.md section 4, populate_target).
-- The procedure and the Python driver (pgsnap/populate.py) run the same three
-- steps: _populate_begin, then _reconcile per batch of candidate me_files,
-- then _populate_finish.

CREATE OR REPLACE FUNCTION pgsnap._check_batch_size(p_batch_size integer)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_batch_size IS NULL OR p_batch_size < 1 THEN
        RAISE EXCEPTION 'batch size must be a positive integer, got %', coalesce(p_batch_size::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END;
$$;

-- Whole-run exclusion per target: a second populate of the same target waits.
-- The lock is session-level (batches commit in between); a session that
-- failed mid-run still holds it, so its next run drops it first.
CREATE OR REPLACE FUNCTION pgsnap._populate_begin(p_target_id bigint, p_batch_size integer)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_key    bigint := pgsnap.lock_key('populate:' || p_target_id);
    v_status text;
BEGIN
    PERFORM pgsnap._check_batch_size(p_batch_size);
    IF NOT EXISTS (SELECT 1 FROM public.targets t WHERE t.id = p_target_id) THEN
        RAISE EXCEPTION 'target % does not exist', coalesce(p_target_id::text, 'NULL')
            USING ERRCODE = 'no_data_found';
    END IF;
    PERFORM pgsnap._release_own_lock(v_key);
    IF NOT pg_try_advisory_lock(v_key) THEN
        RAISE NOTICE 'pgsnap: target % is being populated by another session; waiting for it', p_target_id;
        PERFORM pg_advisory_lock(v_key);
    END IF;

    -- Sync reads target statuses under the shared form of this lock, so no tag
    -- change can slip between "status read by sync" and "tags read by populate".
    PERFORM pg_advisory_xact_lock(pgsnap.lock_key('target:' || p_target_id));
    UPDATE public.targets t
       SET population_status = CASE WHEN EXISTS (SELECT 1 FROM public.target_bands b
                                                   WHERE b.target_id = t.id)
                                    THEN 'populating' ELSE 'not_populated' END
     WHERE t.id = p_target_id
    RETURNING t.population_status INTO v_status;
    IF v_status = 'not_populated' THEN
        PERFORM pg_advisory_unlock(v_key);
    END IF;
    RETURN v_status;
END;
$$;

-- Candidate me_files in batches: the target's members by the rule, walked
-- once for the whole target (cheap: from the groups' traits), plus everyone
-- with a row in the target (who may have to leave). Each batch is then
-- recomputed under its me_file locks by _reconcile, so a tag change that
-- commits after this list was made is never overwritten with stale data;
-- a me_file that joins later is added by its own sync (the target is
-- already 'populating', which sync maintains).
CREATE OR REPLACE FUNCTION pgsnap._populate_batches(p_target_id bigint, p_batch_size integer)
RETURNS SETOF bigint[]
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH candidates AS (
        SELECT m.me_file_id FROM pgsnap.memberships(ARRAY[p_target_id]) m
        UNION
        SELECT tp.me_file_id FROM public.target_populations tp WHERE tp.target_id = p_target_id
    ),
    numbered AS (
        SELECT c.me_file_id, (row_number() OVER (ORDER BY c.me_file_id) - 1) / p_batch_size AS batch
          FROM candidates c
    )
    SELECT array_agg(n.me_file_id ORDER BY n.me_file_id)
      FROM numbered n
     GROUP BY n.batch
     ORDER BY n.batch
$$;

CREATE OR REPLACE FUNCTION pgsnap._populate_finish(p_target_id bigint)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_rows bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(pgsnap.lock_key('target:' || p_target_id));
    UPDATE public.targets
       SET population_status = 'populated', last_populated_at = now()
     WHERE id = p_target_id;
    PERFORM pg_advisory_unlock(pgsnap.lock_key('populate:' || p_target_id));
    SELECT count(*) INTO v_rows FROM public.target_populations tp WHERE tp.target_id = p_target_id;
    RETURN v_rows;
END;
$$;

-- No SET search_path here: PostgreSQL forbids transaction control in a
-- procedure that has one. The body only calls pinned functions; it pins its own
-- expressions with a transaction-local search_path, set after every COMMIT when
-- it owns the transactions, and restored before returning when it does not.
CREATE OR REPLACE PROCEDURE pgsnap.populate_target(p_target_id bigint, p_batch_size integer DEFAULT 500)
LANGUAGE plpgsql
AS $$
DECLARE
    -- true for a top-level CALL sent as a simple query in autocommit: only then
    -- may we COMMIT per batch (with bound parameters the transaction starts
    -- before the CALL, which looks the same as a caller's open transaction)
    v_own_xact boolean := pg_catalog.now() OPERATOR(pg_catalog.=) pg_catalog.statement_timestamp();
    v_caller_path text := pg_catalog.current_setting('search_path');
    v_key      bigint := pgsnap.lock_key('populate:' OPERATOR(pg_catalog.||) p_target_id);
    v_batch    bigint[];
    v_batches  integer := 0;
    v_counts   record;
    v_ins      bigint := 0;
    v_mov      bigint := 0;
    v_ref      bigint := 0;
    v_del      bigint := 0;
    v_rows     bigint;
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    IF pgsnap._populate_begin(p_target_id, p_batch_size) = 'not_populated' THEN
        RAISE NOTICE 'pgsnap: target % has no bands; status not_populated', p_target_id;
        PERFORM pg_catalog.set_config('search_path', v_caller_path, true);
        RETURN;
    END IF;
    IF v_own_xact THEN
        COMMIT;
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    END IF;
    FOR v_batch IN SELECT b FROM pgsnap._populate_batches(p_target_id, p_batch_size) AS b LOOP
        BEGIN
            v_counts := pgsnap._reconcile(ARRAY[p_target_id], v_batch, false);
        EXCEPTION WHEN OTHERS OR query_canceled THEN
            -- the run lock is session-level: a pooled session must not keep it
            PERFORM pg_advisory_unlock(v_key);
            RAISE;
        END;
        v_ins := v_ins + v_counts.inserted;
        v_mov := v_mov + v_counts.moved;
        v_ref := v_ref + v_counts.refreshed;
        v_del := v_del + v_counts.deleted;
        v_batches := v_batches + 1;
        IF v_own_xact THEN
            COMMIT;
            PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
        END IF;
    END LOOP;
    v_rows := pgsnap._populate_finish(p_target_id);
    RAISE NOTICE 'pgsnap: target % populated: % batches, % inserted, % moved, % refreshed, % deleted, % unchanged',
        p_target_id, v_batches, v_ins, v_mov, v_ref, v_del, v_rows - v_ins - v_mov - v_ref;
    IF NOT v_own_xact THEN
        PERFORM pg_catalog.set_config('search_path', v_caller_path, true);
    END IF;
END;
$$;
COMMENT ON PROCEDURE pgsnap.populate_target(bigint, integer) IS
    'Bring a target''s population to the membership rule, snapshots built in the same statements; commits per batch under autocommit.';
