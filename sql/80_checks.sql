-- Operator checks (design.md section 7: `pgsnap check`, `verify`, `status`).
-- Read-only diagnostics, except the small bookkeeping trigger that records
-- when a target entered `populating` (there is no column for it: see below).

-- When did a target start populating? A BEFORE trigger stamps
-- targets.populating_since whenever the status becomes 'populating' (a re-run
-- restarts the clock) and clears it when the target leaves that status,
-- whoever changes it: no extra write, no extra table.
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

-- Targets in `populating`, since when, and which session (if any) is
-- populating them now (it holds the session advisory lock populate:<id>).
-- `since` is NULL when no start was recorded (set populating before this
-- file was deployed, or with triggers disabled); then last_populated_at, the
-- end of the previous run, is the best lower bound we have.
CREATE OR REPLACE FUNCTION pgsnap.populating_targets()
RETURNS TABLE (target_id bigint, since timestamptz, last_populated_at timestamptz, populated_by integer)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT t.id,
           t.populating_since,
           t.last_populated_at,
           pgsnap._lock_holder(pgsnap.lock_key('populate:' || t.id))
      FROM public.targets t
     WHERE t.population_status = 'populating'
     ORDER BY t.id
$$;
COMMENT ON FUNCTION pgsnap.populating_targets() IS
    'Targets in populating: since (recorded start, NULL if unknown), last_populated_at, and the pid populating it now (NULL: nobody).';

-- Recompute one target from scratch with the one rule (pgsnap.memberships)
-- and the one builder (pgsnap.snapshots), and diff it against its rows.
-- A not_populated target is not maintained: its expected population is empty.
CREATE OR REPLACE FUNCTION pgsnap.verify_target(p_target_id bigint)
RETURNS TABLE (me_file_id bigint, problem text, expected_band bigint, actual_band bigint)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_status text;
    v_files  bigint[];
    v_bands  bigint[];
BEGIN
    SELECT t.population_status INTO v_status FROM public.targets t WHERE t.id = p_target_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'target % does not exist', coalesce(p_target_id::text, 'NULL')
            USING ERRCODE = 'no_data_found';
    END IF;
    IF v_status <> 'not_populated' THEN
        -- one pass: both arrays in the same order, as pgsnap.snapshots zips them
        SELECT array_agg(m.me_file_id), array_agg(m.target_band_id)
          INTO v_files, v_bands
          FROM pgsnap.memberships(ARRAY[p_target_id]) m;
    END IF;

    RETURN QUERY
    WITH expected AS (
        SELECT s.me_file_id AS mf, s.target_band_id AS band, s.snapshot AS snap
          FROM pgsnap.snapshots(v_files, v_bands) s
    ),
    actual AS (
        SELECT tp.id, tp.me_file_id AS mf, tp.target_band_id AS band, tp.matching_tags_snapshot AS snap
          FROM public.target_populations tp
         WHERE tp.target_id = p_target_id
    ),
    -- several rows for one me_file (only if the unique constraint is gone):
    -- the one in the expected band is compared, the others are duplicates
    compared AS (
        SELECT a.mf, a.band, a.snap, e.band AS exp_band, e.snap AS exp_snap,
               row_number() OVER (PARTITION BY a.mf
                                  ORDER BY a.band IS NOT DISTINCT FROM e.band DESC, a.id) AS rn
          FROM actual a
          LEFT JOIN expected e ON e.mf = a.mf
    ),
    problems AS (
        SELECT e.mf, 'missing'::text AS problem, e.band AS exp_band, NULL::bigint AS act_band
          FROM expected e
         WHERE NOT EXISTS (SELECT 1 FROM actual a WHERE a.mf = e.mf)
        UNION ALL
        SELECT c.mf,
               CASE WHEN c.exp_band IS NULL THEN 'extra'
                    WHEN c.rn > 1 THEN 'duplicate'
                    WHEN c.band <> c.exp_band THEN 'wrong_band'
                    WHEN c.snap IS NULL THEN 'null_snapshot'
                    ELSE 'stale_snapshot' END,
               c.exp_band, c.band
          FROM compared c
         WHERE c.exp_band IS NULL OR c.rn > 1 OR c.band <> c.exp_band
            OR c.snap IS DISTINCT FROM c.exp_snap
    )
    SELECT p.mf, p.problem, p.exp_band, p.act_band
      FROM problems p
     ORDER BY p.mf, p.problem, p.act_band;
END;
$$;
COMMENT ON FUNCTION pgsnap.verify_target(bigint) IS
    'Recompute a target from scratch (memberships + snapshots) and list every difference: missing, extra, '
    'wrong_band, stale_snapshot, null_snapshot, duplicate. A not_populated target must have no rows.';

-- The shape CHECK of migration 0004 as a predicate: NULL (counted apart) or
-- an object whose "tags" is an array. Finds rows written with the check off.
CREATE OR REPLACE FUNCTION pgsnap._snapshot_shape_ok(p_snapshot jsonb)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT p_snapshot IS NULL
        OR (jsonb_typeof(p_snapshot) = 'object'
            AND jsonb_typeof(p_snapshot -> 'tags') IS NOT DISTINCT FROM 'array')
$$;

-- The invariants `pgsnap check` reports: one row per check, always present
-- (violations 0 when fine). Each snapshot table is scanned once.
CREATE OR REPLACE FUNCTION pgsnap.check_invariants()
RETURNS TABLE (check_name text, violations bigint, detail text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_table     text;
    v_total     bigint;
    v_nulls     bigint;
    v_bad       bigint;
    v_ids       text;
    v_threshold interval;
    v_setting   text;
    v_run       record;
BEGIN
    -- NULL snapshots and snapshot shape, per table
    FOREACH v_table IN ARRAY ARRAY['target_populations', 'offers', 'ad_events'] LOOP
        EXECUTE format(
            'SELECT count(*), count(*) FILTER (WHERE x.matching_tags_snapshot IS NULL),'
            '       count(*) FILTER (WHERE NOT pgsnap._snapshot_shape_ok(x.matching_tags_snapshot))'
            '  FROM public.%I x', v_table)
          INTO v_total, v_nulls, v_bad;
        check_name := 'null_snapshots:' || v_table;
        violations := v_nulls;
        detail := format('%s NULL of %s %s', v_nulls, v_total, CASE WHEN v_total = 1 THEN 'row' ELSE 'rows' END);
        RETURN NEXT;
        check_name := 'snapshot_shape:' || v_table;
        violations := v_bad;
        IF v_bad = 0 THEN
            detail := 'every snapshot is {"tags": [...]}';
        ELSE
            EXECUTE format(
                'SELECT string_agg(y.id::text, '', '' ORDER BY y.id) FROM (SELECT x.id FROM public.%I x'
                ' WHERE NOT pgsnap._snapshot_shape_ok(x.matching_tags_snapshot)'
                ' ORDER BY x.id LIMIT 5) y', v_table)
              INTO v_ids;
            detail := format('not {"tags": [...]}: id %s%s', v_ids, CASE WHEN v_bad > 5 THEN ', ...' ELSE '' END);
        END IF;
        RETURN NEXT;
    END LOOP;

    -- one row per (target, me_file)
    check_name := 'duplicate_populations';
    SELECT count(*), string_agg(format('target %s me_file %s (%s rows)', d.target_id, d.me_file_id, d.n), ', '
                                ORDER BY d.target_id, d.me_file_id) FILTER (WHERE d.k <= 5)
      INTO violations, detail
      FROM (SELECT tp.target_id, tp.me_file_id, count(*) AS n,
                   row_number() OVER (ORDER BY tp.target_id, tp.me_file_id) AS k
              FROM public.target_populations tp
             GROUP BY tp.target_id, tp.me_file_id
            HAVING count(*) > 1) d;
    detail := CASE WHEN violations = 0 THEN 'one row per (target, me_file)'
                   ELSE detail || CASE WHEN violations > 5 THEN ', ...' ELSE '' END END;
    RETURN NEXT;

    -- no rows in not_populated targets
    check_name := 'not_populated_rows';
    SELECT coalesce(sum(r.n), 0), count(*),
           string_agg(format('target %s (%s %s)', r.target_id, r.n, CASE WHEN r.n = 1 THEN 'row' ELSE 'rows' END),
                      ', ' ORDER BY r.target_id)
               FILTER (WHERE r.k <= 5)
      INTO violations, v_bad, detail
      FROM (SELECT tp.target_id, count(*) AS n, row_number() OVER (ORDER BY tp.target_id) AS k
              FROM public.targets t
              JOIN public.target_populations tp ON tp.target_id = t.id
             WHERE t.population_status = 'not_populated'
             GROUP BY tp.target_id) r;
    detail := CASE WHEN violations = 0 THEN 'no rows in not_populated targets'
                   ELSE detail || CASE WHEN v_bad > 5 THEN ', ...' ELSE '' END END;
    RETURN NEXT;

    -- no target populating for longer than the threshold
    check_name := 'stuck_populating';
    SELECT coalesce((SELECT s.value FROM pgsnap.settings s WHERE s.key = 'populating_stuck_after'), '1 hour')
      INTO v_setting;
    v_threshold := v_setting::interval;
    SELECT count(*),
           string_agg(format('target %s since %s (%s)', p.target_id,
                             coalesce(to_char(p.since AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' UTC',
                                      'an unknown time'),
                             coalesce('pid ' || p.populated_by || ' still populating it',
                                      'nobody is populating it')),
                      ', ' ORDER BY p.target_id) FILTER (WHERE p.k <= 5)
      INTO violations, detail
      FROM (SELECT pt.*, row_number() OVER (ORDER BY pt.target_id) AS k
              FROM pgsnap.populating_targets() pt
             WHERE coalesce(pt.since, pt.last_populated_at, '-infinity') < now() - v_threshold) p;
    detail := CASE WHEN violations = 0 THEN format('none populating for more than %s', v_setting)
                   ELSE format('populating for more than %s: ', v_setting) || detail
                        || CASE WHEN violations > 5 THEN ', ...' ELSE '' END END;
    RETURN NEXT;

    -- the latest backfill run (skipped ones aside) did not fail
    check_name := 'last_backfill_failed';
    SELECT r.id, r.status, r.pid, r.started_at, r.finished_at, r.error,
           r.status = 'running'
           AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a
                            WHERE a.pid = r.pid AND a.backend_start <= r.started_at) AS orphan
      INTO v_run
      FROM pgsnap.backfill_runs r
     WHERE r.status <> 'skipped'
     ORDER BY r.started_at DESC, r.id DESC
     LIMIT 1;
    IF NOT FOUND THEN
        violations := 0;
        detail := 'no backfill run yet';
    ELSIF v_run.status = 'failed' THEN
        violations := 1;
        detail := format('run %s failed at %s: %s', v_run.id,
                         to_char(coalesce(v_run.finished_at, v_run.started_at) AT TIME ZONE 'UTC',
                                 'YYYY-MM-DD HH24:MI:SS') || ' UTC',
                         coalesce(v_run.error, 'no error recorded'));
    ELSIF v_run.orphan THEN
        violations := 1;
        detail := format('run %s started at %s is still marked running but its session (pid %s) is gone',
                         v_run.id, to_char(v_run.started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' UTC',
                         v_run.pid);
    ELSE
        violations := 0;
        detail := format('run %s %s at %s', v_run.id, v_run.status,
                         to_char(coalesce(v_run.finished_at, v_run.started_at) AT TIME ZONE 'UTC',
                                 'YYYY-MM-DD HH24:MI:SS') || ' UTC');
    END IF;
    RETURN NEXT;
END;
$$;
COMMENT ON FUNCTION pgsnap.check_invariants() IS
    'pgsnap check: one row per invariant (null_snapshots:<table>, snapshot_shape:<table>, duplicate_populations, '
    'not_populated_rows, stuck_populating, last_backfill_failed) with its violation count and a detail.';
