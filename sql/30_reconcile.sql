-- The one write path for target_populations, shared by populate, sync and
-- the per-me_file triggers: make the rows of the given targets x me_files
-- equal what the rule and the builder say, touching only rows that differ.

CREATE OR REPLACE FUNCTION pgsnap._reconcile(
    p_target_ids bigint[],
    p_me_file_ids bigint[],
    p_exclusive boolean,
    OUT inserted bigint, OUT moved bigint, OUT refreshed bigint, OUT deleted bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_bands   bigint[];
    v_files   bigint[];
BEGIN
    -- Serialise with other writers of these me_files: sync takes the lock
    -- exclusively, populate shares it, and the statements below run on a fresh
    -- snapshot taken after the lock, so (under READ COMMITTED) they see every
    -- committed tag change. Advisory locks, not me_files row locks: a sync
    -- runs at COMMIT while its transaction still holds tag rows, and a row
    -- lock on me_files there would deadlock with an application transaction
    -- that locked the me_file first. Ids share 1024 lock slots, so a
    -- statement touching thousands of me_files takes at most 1024 locks.
    IF p_exclusive THEN
        PERFORM pg_advisory_xact_lock(pgsnap.lock_key('me_file:' || s.slot))
           FROM (SELECT DISTINCT f.id % 1024 AS slot FROM unnest(p_me_file_ids) AS f(id)) s
          ORDER BY s.slot;
        -- Leave a trace per me_file: a REPEATABLE READ or SERIALIZABLE writer
        -- whose snapshot predates another sync of the same me_file then fails
        -- here with a serialization error (40001) instead of writing a
        -- population computed from tags that are no longer current.
        INSERT INTO pgsnap.me_file_syncs AS s (me_file_id, synced_by)
        SELECT f.id, pg_current_xact_id()
          FROM public.me_files f WHERE f.id = ANY (p_me_file_ids)
         ORDER BY f.id
        ON CONFLICT (me_file_id) DO UPDATE SET synced_by = EXCLUDED.synced_by;
    ELSE
        PERFORM pg_advisory_xact_lock_shared(pgsnap.lock_key('me_file:' || s.slot))
           FROM (SELECT DISTINCT f.id % 1024 AS slot FROM unnest(p_me_file_ids) AS f(id)) s
          ORDER BY s.slot;
    END IF;

    SELECT array_agg(m.target_band_id), array_agg(m.me_file_id)
      INTO v_bands, v_files
      FROM pgsnap.memberships(p_target_ids, p_me_file_ids) m;

    -- Plans here are generic (row estimates know nothing of the batch), so
    -- every join below is linear whatever the planner picks: the diff is one
    -- FULL JOIN (hash or merge only) and the writes find their rows by id.
    WITH desired AS (
        SELECT b.target_id, s.target_band_id AS band_id, s.me_file_id, s.snapshot
          FROM pgsnap.snapshots(v_files, v_bands) s
          JOIN public.target_bands b ON b.id = s.target_band_id
    ),
    current AS (
        SELECT tp.id, tp.target_id, tp.target_band_id, tp.me_file_id, tp.matching_tags_snapshot
          FROM public.target_populations tp
         WHERE tp.target_id = ANY (p_target_ids)
           AND tp.me_file_id = ANY (p_me_file_ids)
    ),
    diff AS (
        SELECT c.id, d.target_id, d.me_file_id, c.target_band_id AS old_band, d.band_id AS new_band,
               c.matching_tags_snapshot AS old_snapshot, d.snapshot AS new_snapshot
          FROM desired d
          FULL JOIN current c ON c.target_id = d.target_id AND c.me_file_id = d.me_file_id
    ),
    gone AS (
        DELETE FROM public.target_populations tp
         USING diff x
         WHERE tp.id = x.id AND x.new_band IS NULL
        RETURNING 1
    ),
    changed AS (
        UPDATE public.target_populations tp
           SET target_band_id = x.new_band,
               matching_tags_snapshot = x.new_snapshot,
               updated_at = now()
          FROM diff x
         WHERE tp.id = x.id AND x.new_band IS NOT NULL
           AND (x.old_band <> x.new_band OR x.old_snapshot IS DISTINCT FROM x.new_snapshot)
        RETURNING x.old_band <> x.new_band AS is_move
    ),
    added AS (
        INSERT INTO public.target_populations (target_id, target_band_id, me_file_id, matching_tags_snapshot)
        SELECT x.target_id, x.new_band, x.me_file_id, x.new_snapshot
          FROM diff x
         WHERE x.id IS NULL
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM added),
           (SELECT count(*) FILTER (WHERE is_move) FROM changed),
           (SELECT count(*) FILTER (WHERE NOT is_move) FROM changed),
           (SELECT count(*) FROM gone)
      INTO inserted, moved, refreshed, deleted;
END;
$$;
COMMENT ON FUNCTION pgsnap._reconcile(bigint[], bigint[], boolean) IS
    'Internal: bring the population rows of targets x me_files to the rule; returns rows inserted, moved, refreshed, deleted.';
