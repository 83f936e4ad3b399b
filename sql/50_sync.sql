-- Per-me_file sync (design.md section 4): tag writes and registrations bring
-- the me_file's populations up to date in their own transaction.
--
-- Row triggers would sync a me_file once per tag and would see a
-- delete-then-insert rewrite half done, so statement triggers only queue the
-- (me_file, trait) pairs, and one deferred constraint trigger per transaction
-- drains the queue at COMMIT: the work runs once per me_file per transaction,
-- set-based, on the final state of its tags.
-- The trigger functions and sync_me_file are SECURITY DEFINER: the application
-- role writes tags but may not write target_populations (or the queue) itself.

-- Recompute the given me_files in the maintained targets that reference one of
-- the given traits (NULL among them: every maintained target).
CREATE OR REPLACE FUNCTION pgsnap._sync(p_me_file_ids bigint[], p_trait_ids bigint[])
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_targets bigint[];
    v_counts  record;
BEGIN
    IF p_me_file_ids IS NULL OR cardinality(p_me_file_ids) = 0 THEN
        RETURN 0;
    END IF;
    IF p_trait_ids IS NULL OR array_position(p_trait_ids, NULL) IS NOT NULL THEN
        SELECT array_agg(t.id ORDER BY t.id) INTO v_targets FROM public.targets t;
    ELSE
        SELECT array_agg(DISTINCT b.target_id ORDER BY b.target_id) INTO v_targets
          FROM public.trait_group_traits gt
          JOIN public.target_band_trait_groups bg ON bg.trait_group_id = gt.trait_group_id
          JOIN public.target_bands b ON b.id = bg.target_band_id
         WHERE gt.trait_id = ANY (p_trait_ids);
    END IF;
    IF v_targets IS NULL THEN
        RETURN 0;
    END IF;
    -- Shared with the status change of populate (see _populate_begin); statuses
    -- are read in the next statement, after any such change has committed.
    PERFORM pg_advisory_xact_lock_shared(pgsnap.lock_key('target:' || x))
       FROM unnest(v_targets) AS x ORDER BY x;
    SELECT array_agg(t.id ORDER BY t.id) INTO v_targets
      FROM public.targets t
     WHERE t.id = ANY (v_targets)
       AND t.population_status IN ('populating', 'populated');
    IF v_targets IS NULL THEN
        RETURN 0;
    END IF;
    v_counts := pgsnap._reconcile(v_targets, p_me_file_ids, true);
    RETURN v_counts.inserted + v_counts.moved + v_counts.refreshed + v_counts.deleted;
END;
$$;

CREATE OR REPLACE FUNCTION pgsnap.sync_me_file(p_me_file_id bigint)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM public.me_files f WHERE f.id = p_me_file_id) THEN
        RAISE EXCEPTION 'me_file % does not exist', coalesce(p_me_file_id::text, 'NULL')
            USING ERRCODE = 'no_data_found';
    END IF;
    RETURN pgsnap._sync(ARRAY[p_me_file_id], NULL);
END;
$$;
COMMENT ON FUNCTION pgsnap.sync_me_file(bigint) IS
    'Recompute the me_file''s band and snapshot in every maintained target (populating or populated); returns rows changed.';

-- Drains this transaction's queue; fired once per transaction at COMMIT.
CREATE OR REPLACE FUNCTION pgsnap._sync_drain()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_files  bigint[];
    v_traits bigint[];
BEGIN
    DELETE FROM pgsnap.sync_pending p WHERE p.xact = pg_current_xact_id();
    WITH q AS (
        DELETE FROM pgsnap.sync_queue q WHERE q.xact = pg_current_xact_id()
        RETURNING q.me_file_id, q.trait_id
    )
    SELECT array_agg(DISTINCT q.me_file_id), array_agg(DISTINCT q.trait_id)
      INTO v_files, v_traits
      FROM q;
    -- me_files deleted in this transaction have no rows left to fix
    DELETE FROM pgsnap.me_file_syncs s
     WHERE s.me_file_id = ANY (v_files)
       AND NOT EXISTS (SELECT 1 FROM public.me_files f WHERE f.id = s.me_file_id);
    SELECT array_agg(f.id) INTO v_files FROM public.me_files f WHERE f.id = ANY (v_files);
    PERFORM pgsnap._sync(v_files, v_traits);
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION pgsnap._sync_enqueue_tags()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO pgsnap.sync_queue (xact, me_file_id, trait_id)
        SELECT DISTINCT pg_current_xact_id(), n.me_file_id, n.trait_id FROM new_rows n
        ON CONFLICT DO NOTHING;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO pgsnap.sync_queue (xact, me_file_id, trait_id)
        SELECT DISTINCT pg_current_xact_id(), o.me_file_id, o.trait_id FROM old_rows o
        ON CONFLICT DO NOTHING;
    ELSE
        -- only changes that can matter: which me_file, which trait, which value
        INSERT INTO pgsnap.sync_queue (xact, me_file_id, trait_id)
        SELECT DISTINCT pg_current_xact_id(), x.me_file_id, x.trait_id
          FROM old_rows o
          JOIN new_rows n ON n.id = o.id
         CROSS JOIN LATERAL (VALUES (o.me_file_id, o.trait_id), (n.me_file_id, n.trait_id))
               AS x(me_file_id, trait_id)
         WHERE (o.me_file_id, o.trait_id, o.tag_value)
               IS DISTINCT FROM (n.me_file_id, n.trait_id, n.tag_value)
        ON CONFLICT DO NOTHING;
    END IF;
    IF FOUND THEN
        INSERT INTO pgsnap.sync_pending (xact) VALUES (pg_current_xact_id())
        ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION pgsnap._sync_enqueue_me_files()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO pgsnap.sync_queue (xact, me_file_id, trait_id)
    SELECT pg_current_xact_id(), n.id, NULL FROM new_rows n
    ON CONFLICT DO NOTHING;
    IF FOUND THEN
        INSERT INTO pgsnap.sync_pending (xact) VALUES (pg_current_xact_id())
        ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE TRIGGER me_file_tags_sync_insert
    AFTER INSERT ON public.me_file_tags
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pgsnap._sync_enqueue_tags();
CREATE OR REPLACE TRIGGER me_file_tags_sync_update
    AFTER UPDATE ON public.me_file_tags
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pgsnap._sync_enqueue_tags();
CREATE OR REPLACE TRIGGER me_file_tags_sync_delete
    AFTER DELETE ON public.me_file_tags
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pgsnap._sync_enqueue_tags();
CREATE OR REPLACE TRIGGER me_files_sync_insert
    AFTER INSERT ON public.me_files
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pgsnap._sync_enqueue_me_files();

-- CREATE OR REPLACE TRIGGER does not exist for constraint triggers.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger
                    WHERE tgname = 'sync_pending_drain'
                      AND tgrelid = 'pgsnap.sync_pending'::regclass) THEN
        CREATE CONSTRAINT TRIGGER sync_pending_drain
            AFTER INSERT ON pgsnap.sync_pending
            DEFERRABLE INITIALLY DEFERRED
            FOR EACH ROW EXECUTE FUNCTION pgsnap._sync_drain();
    END IF;
END;
$$;
