-- Per-me_file sync (docs/rules.md, "Sync"): tag writes bring the me_file's rows up to date in
-- their own transaction.
--
-- Row triggers would sync a me_file once per tag and would see a delete-then-insert rewrite
-- half done, so statement triggers only queue the (me_file, trait) pairs, and one deferred
-- constraint trigger per transaction drains the queue at COMMIT: the work runs once per
-- me_file per transaction, set-based, on the final state of its tags. Pairs whose trait no
-- band uses are not even queued. The queue tables are UNLOGGED and emptied by the same
-- transaction: a sync that changes nothing writes no WAL and leaves no row behind.
-- A registration needs nothing of its own: its tags are queued like any other.
--
-- The sync's statements are its own (planned for a few me_files: index lookups on
-- target_populations (target_id, me_file_id), me_file_tags (me_file_id) and band_traits' key
-- (trait_id, target_band_id), which carries every column), never shared with a populate batch.
-- The trigger functions and sync_me_file are SECURITY DEFINER: the application role writes tags
-- but may not write target_populations or the queue itself.

-- Under REPEATABLE READ or SERIALIZABLE the sync reads through the transaction's snapshot,
-- which may predate other writers of the same me_files. Fail with a serialization error
-- (40001: the application retries) rather than write rows computed from an outdated view when:
--   * another transaction changed or deleted these me_files' rows or tags (row locks);
--   * another sync inserted rows for them (pgsnap.me_file_syncs, probed by insert);
--   * a populate batch or a status change of one of the targets committed (target_state).
-- Under READ COMMITTED every statement sees the latest commits: nothing to check.
CREATE OR REPLACE FUNCTION pgsnap._sync_check_snapshot(p_me_file_ids bigint[], p_target_ids bigint[])
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM 1 FROM public.target_populations tp
     WHERE tp.target_id = ANY (p_target_ids) AND tp.me_file_id = ANY (p_me_file_ids)
       FOR SHARE;
    PERFORM 1 FROM public.me_file_tags t WHERE t.me_file_id = ANY (p_me_file_ids) FOR SHARE;
    INSERT INTO pgsnap.me_file_syncs (me_file_id, synced_by)
    SELECT f, pg_current_xact_id() FROM unnest(p_me_file_ids) AS f
    ON CONFLICT (me_file_id) DO NOTHING;
    INSERT INTO pgsnap.target_state (target_id)
    SELECT t.id FROM public.targets t WHERE t.id = ANY (p_target_ids)
    ON CONFLICT (target_id) DO NOTHING;
END;
$$;

-- The rule's rows of the me_files of one sync in these targets, each with its snapshot (the
-- rule's statement and the one builder, under planner settings of their own). Its inputs are
-- the me_files of one transaction, so each snapshot entry is looked up by (trait, band) from
-- band_traits' primary key. The bands the me_files' tags give are found
--   * for a few targets with small rules (at most c_few targets, together fewer than
--     c_small_rule band_traits rows, as targets of a few traits each): by reading those rows
--     whole, by target_id, and hashing the tags against them, in a statement of its own;
--   * otherwise, with the snapshots in one statement: each tag looked up by trait and its bands
--     in other targets filtered out, about a hundred rows for a common trait, but never more
--     the larger the affected rules.
-- Left free, the session's generic plan (made once, for arrays of unknown size) reads every
-- band_traits row of the affected targets and merge- or hash-joins them with the me_file's dozen
-- tags, or (without those) scans them against a materialized copy of the tags: thousands of rows
-- when the targets are large or many; the snapshots' lookups, joined the same way, would read
-- the whole table. Under the function's settings every join is a nested loop of index lookups,
-- linear in the tags whatever their number (a bulk tag load syncs thousands of me_files at
-- once): each row's snapshot is built on its own, for one pair. The small rules' statement runs
-- with nested loops and sequential scans off, so it can only hash the rule rows it read by
-- index. A cached plan is re-made inside its statement, so each is always planned under its own
-- settings; the function's SET clauses undo them on exit. Only these SELECTs run under them:
-- they fire no trigger and no foreign-key query.
CREATE OR REPLACE FUNCTION pgsnap._sync_rows(p_target_ids bigint[], p_me_file_ids bigint[])
RETURNS TABLE (target_id bigint, target_band_id bigint, me_file_id bigint, inputs_hash bigint, snapshot jsonb)
LANGUAGE plpgsql STABLE
ROWS 10
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET enable_hashjoin = off
SET enable_mergejoin = off
SET enable_bitmapscan = off
SET enable_material = off
SET enable_nestloop = on
SET enable_seqscan = on
AS $$
DECLARE
    c_small_rule constant integer := 128;   -- band_traits rows; by trait, a common tag costs ~100
    c_few       constant integer := 16;    -- targets; with more, the rows are read by trait unprobed
    v_targets bigint[];
    v_bands   bigint[];
    v_files   bigint[];
    v_hashes  bigint[];
BEGIN
    IF cardinality(p_target_ids) <= c_few
       AND (SELECT count(*) FROM (SELECT FROM pgsnap.band_traits bt WHERE bt.target_id = ANY (p_target_ids)
                                   LIMIT c_small_rule) x) < c_small_rule THEN
        PERFORM set_config('enable_nestloop', 'off', true), set_config('enable_seqscan', 'off', true),
                set_config('enable_hashjoin', 'on', true), set_config('enable_bitmapscan', 'on', true);
        SELECT array_agg(m.target_id), array_agg(m.target_band_id), array_agg(m.me_file_id), array_agg(m.inputs_hash)
          INTO v_targets, v_bands, v_files, v_hashes
          FROM pgsnap.memberships(p_target_ids) m
         WHERE m.me_file_id = ANY (p_me_file_ids);
        PERFORM set_config('enable_nestloop', 'on', true), set_config('enable_seqscan', 'on', true),
                set_config('enable_hashjoin', 'off', true), set_config('enable_bitmapscan', 'off', true);
        RETURN QUERY
        SELECT r.target_id, r.target_band_id, r.me_file_id, r.inputs_hash, s.snapshot
          FROM unnest(v_targets, v_bands, v_files, v_hashes) AS r(target_id, target_band_id, me_file_id, inputs_hash)
         CROSS JOIN LATERAL pgsnap.snapshots(ARRAY[r.me_file_id], ARRAY[r.target_band_id]) s;
    ELSE
        RETURN QUERY
        SELECT m.target_id, m.target_band_id, m.me_file_id, m.inputs_hash, s.snapshot
          FROM pgsnap.memberships(p_target_ids) m
         CROSS JOIN LATERAL pgsnap.snapshots(ARRAY[m.me_file_id], ARRAY[m.target_band_id]) s
         WHERE m.me_file_id = ANY (p_me_file_ids);
    END IF;
END;
$$;
COMMENT ON FUNCTION pgsnap._sync_rows(bigint[], bigint[]) IS
    'Internal: the rule''s rows of these me_files in these targets with their snapshots, read the cheaper way.';

-- Recompute the given me_files in the maintained targets whose bands use one of the given
-- traits (p_all: every target one of their tags or rows is in). Returns rows changed.
-- plan_cache_mode: its statements read a few rows by index whatever the arrays hold, so one
-- generic plan per session serves every call; left to itself the plan cache re-plans them
-- on every call (their generic cost looks higher than a custom plan's), and planning is most
-- of a sync's time. A generic plan is re-made when ANALYZE changes the tables' statistics.
CREATE OR REPLACE FUNCTION pgsnap._sync(p_me_file_ids bigint[], p_trait_ids bigint[], p_all boolean DEFAULT false)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_files   bigint[];
    v_targets bigint[];
    v_changed bigint;
BEGIN
    SELECT array_agg(f.id ORDER BY f.id) INTO v_files FROM public.me_files f WHERE f.id = ANY (p_me_file_ids);
    IF cardinality(v_files) IS DISTINCT FROM cardinality(p_me_file_ids) THEN
        -- deleted in this transaction: their rows went with them; so does their marker
        DELETE FROM pgsnap.me_file_syncs s
         WHERE s.me_file_id = ANY (p_me_file_ids) AND s.me_file_id <> ALL (coalesce(v_files, '{}'));
    END IF;
    IF v_files IS NULL THEN
        RETURN 0::bigint;
    END IF;
    -- exclusive with populate batches and other syncs of these me_files: the statements below
    -- then see every committed change to them
    PERFORM pg_advisory_xact_lock(pgsnap._slot_space(), s.slot)
       FROM (SELECT DISTINCT pgsnap._slot(f) AS slot FROM unnest(v_files) AS f) s
      ORDER BY s.slot;

    IF p_all THEN
        SELECT array_agg(DISTINCT x.target_id) INTO v_targets
          FROM (SELECT bt.target_id FROM public.me_file_tags t
                  JOIN pgsnap.band_traits bt ON bt.trait_id = t.trait_id
                 WHERE t.me_file_id = ANY (v_files)
                UNION
                SELECT tp.target_id FROM public.target_populations tp WHERE tp.me_file_id = ANY (v_files)) x;
    ELSE
        SELECT array_agg(DISTINCT bt.target_id) INTO v_targets
          FROM pgsnap.band_traits bt WHERE bt.trait_id = ANY (p_trait_ids);
    END IF;
    IF v_targets IS NULL THEN
        RETURN 0::bigint;
    END IF;
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        PERFORM pgsnap._sync_check_snapshot(v_files, v_targets);
    END IF;
    SELECT array_agg(t.id) INTO v_targets
      FROM public.targets t
     WHERE t.id = ANY (v_targets) AND t.population_status IN ('populating', 'populated');
    IF v_targets IS NULL THEN
        RETURN 0::bigint;
    END IF;

    WITH desired AS (
        SELECT d.target_id, d.target_band_id, d.me_file_id, d.inputs_hash, d.snapshot
          FROM pgsnap._sync_rows(v_targets, v_files) d
    ),
    current AS (
        -- one lookup of (target, me_files) per affected target, by that key's index: the rows of
        -- the me_files in other targets are never read. Flattened into a join, the generic plan
        -- read every row of the me_files (by me_file_id) and kept the affected targets' rows:
        -- more rows the more targets are maintained, each on a heap page of its own. OFFSET 0
        -- keeps the lookup one per target.
        SELECT c.*
          FROM unnest(v_targets) AS g(target_id)
         CROSS JOIN LATERAL (SELECT tp.id, tp.target_id, tp.target_band_id, tp.me_file_id, tp.matching_tags_snapshot,
                                    tp.inputs_hash
                               FROM public.target_populations tp
                              WHERE tp.target_id = g.target_id AND tp.me_file_id = ANY (v_files)
                             OFFSET 0) c
    ),
    diff AS (
        SELECT c.id, coalesce(d.target_id, c.target_id) AS target_id, coalesce(d.me_file_id, c.me_file_id) AS me_file_id,
               d.target_band_id AS band, d.snapshot, d.inputs_hash AS hash
          FROM desired d
          FULL JOIN current c ON c.target_id = d.target_id AND c.me_file_id = d.me_file_id
         WHERE d.me_file_id IS NULL OR c.id IS NULL OR c.target_band_id <> d.target_band_id
            OR c.matching_tags_snapshot IS DISTINCT FROM d.snapshot OR c.inputs_hash IS DISTINCT FROM d.inputs_hash
    ),
    gone AS (
        DELETE FROM public.target_populations tp USING diff x
         WHERE tp.id = x.id AND x.band IS NULL
        RETURNING 1
    ),
    changed AS (
        UPDATE public.target_populations tp
           SET target_band_id = x.band, matching_tags_snapshot = x.snapshot, inputs_hash = x.hash, updated_at = now()
          FROM diff x
         WHERE tp.id = x.id AND x.band IS NOT NULL
        RETURNING 1
    ),
    added AS (
        -- under REPEATABLE READ a row another transaction inserted meanwhile is a 40001
        INSERT INTO public.target_populations (target_id, target_band_id, me_file_id, matching_tags_snapshot, inputs_hash)
        SELECT x.target_id, x.band, x.me_file_id, x.snapshot, x.hash FROM diff x WHERE x.id IS NULL
        ON CONFLICT (target_id, me_file_id) DO NOTHING
        RETURNING me_file_id
    ),
    marked AS (
        -- rows this transaction inserted: a REPEATABLE READ sync of the same me_file that
        -- started earlier cannot see them, but fails on this marker instead
        INSERT INTO pgsnap.me_file_syncs AS s (me_file_id, synced_by)
        SELECT DISTINCT a.me_file_id, pg_current_xact_id() FROM added a
        ON CONFLICT (me_file_id) DO UPDATE SET synced_by = EXCLUDED.synced_by
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM gone) + (SELECT count(*) FROM changed) + (SELECT count(*) FROM added)
           + 0 * (SELECT count(*) FROM marked)
      INTO v_changed;
    RETURN v_changed;
END;
$$;
COMMENT ON FUNCTION pgsnap._sync(bigint[], bigint[], boolean) IS
    'Internal: recompute these me_files in the maintained targets using these traits (p_all: every target they touch).';

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
    RETURN pgsnap._sync(ARRAY[p_me_file_id], NULL, true);
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
         WHERE EXISTS (SELECT 1 FROM pgsnap.band_traits bt WHERE bt.trait_id = n.trait_id)
        ON CONFLICT DO NOTHING;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO pgsnap.sync_queue (xact, me_file_id, trait_id)
        SELECT DISTINCT pg_current_xact_id(), o.me_file_id, o.trait_id FROM old_rows o
         WHERE EXISTS (SELECT 1 FROM pgsnap.band_traits bt WHERE bt.trait_id = o.trait_id)
        ON CONFLICT DO NOTHING;
    ELSE
        -- only changes that can matter: which me_file, which trait, which value
        INSERT INTO pgsnap.sync_queue (xact, me_file_id, trait_id)
        SELECT DISTINCT pg_current_xact_id(), x.me_file_id, x.trait_id
          FROM old_rows o
          JOIN new_rows n ON n.id = o.id
         CROSS JOIN LATERAL (VALUES (o.me_file_id, o.trait_id), (n.me_file_id, n.trait_id))
               AS x(me_file_id, trait_id)
         WHERE (o.me_file_id, o.trait_id, o.tag_value) IS DISTINCT FROM (n.me_file_id, n.trait_id, n.tag_value)
           AND EXISTS (SELECT 1 FROM pgsnap.band_traits bt WHERE bt.trait_id = x.trait_id)
        ON CONFLICT DO NOTHING;
    END IF;
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
