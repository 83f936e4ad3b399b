-- Operator checks (`pgsnap check`, `verify`, `status`, `explain`): read-only diagnostics.

-- Targets in `populating`, since when, and which session is populating them now (the live
-- claim in pgsnap.target_state; NULL: nobody, the run died or was cancelled). `since` is NULL
-- when no start was recorded (set populating with triggers disabled); last_populated_at, the
-- end of the previous run, is then the best lower bound.
CREATE OR REPLACE FUNCTION pgsnap.populating_targets()
RETURNS TABLE (target_id bigint, since timestamptz, last_populated_at timestamptz, populated_by integer)
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT t.id, t.populating_since, t.last_populated_at,
           CASE WHEN pgsnap._claim_alive(s.run_pid, s.run_backend_start, s.run_started_at) THEN s.run_pid END
      FROM public.targets t
      LEFT JOIN pgsnap.target_state s ON s.target_id = t.id
     WHERE t.population_status = 'populating'
     ORDER BY t.id;
END;
COMMENT ON FUNCTION pgsnap.populating_targets() IS
    'Targets in populating: since (recorded start, NULL if unknown), last_populated_at, and the pid populating it now (NULL: nobody).';

-- Innermost-assignment counts per band: a target holds one row per me_file, in the band the
-- rule picks, so counting rows per band counts each me_file once, in its innermost band. Exact
-- at every commit (it is the table, read through the (target_band_id, me_file_id) index):
-- no counter row for concurrent writers to queue on.
CREATE OR REPLACE FUNCTION pgsnap.band_counts(p_target_id bigint)
RETURNS TABLE (target_band_id bigint, tier integer, population bigint)
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT b.id, b.tier,
           (SELECT count(*) FROM public.target_populations tp WHERE tp.target_band_id = b.id)
      FROM public.target_bands b
     WHERE b.target_id = p_target_id
     ORDER BY b.tier, b.id;
END;
COMMENT ON FUNCTION pgsnap.band_counts(bigint) IS
    'Per band of the target: tier and population (each me_file counted once, in its innermost band); exact.';

-- target_bands.population_count (the original's column) refreshed from band_counts, written
-- only where it differs: after every populate, and by the scheduled job for every maintained
-- target (NULL: all of them).
CREATE OR REPLACE FUNCTION pgsnap._refresh_population_counts(p_target_ids bigint[])
RETURNS void
LANGUAGE sql
BEGIN ATOMIC
    UPDATE public.target_bands b
       SET population_count = c.population
      FROM public.targets t
     CROSS JOIN LATERAL pgsnap.band_counts(t.id) c
     WHERE (t.id = ANY (p_target_ids)
            OR (p_target_ids IS NULL AND t.population_status IN ('populating', 'populated')))
       AND b.id = c.target_band_id AND b.population_count IS DISTINCT FROM c.population;
END;

-- Recompute one target from scratch with the one rule (pgsnap.memberships) and the one
-- builder (pgsnap.snapshots), and diff it against its rows. A not_populated target is not
-- maintained: its expected population is empty.
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

-- Why is this me_file in this band of the target, or in none? One row per band and group
-- (a band without groups: one row, group NULL), bands by tier, read from the live catalogue:
-- whether the group is satisfied and through which tags; whether the band is; the band the
-- rule picks and why; the snapshot it would carry and whether the stored row agrees.
CREATE OR REPLACE FUNCTION pgsnap.explain(p_me_file_id bigint, p_target_id bigint)
RETURNS TABLE (tier integer, target_band_id bigint, band_title text, is_bullseye boolean, n_groups integer,
               trait_group_id bigint, group_title text, group_satisfied boolean, via jsonb,
               band_satisfied boolean, picked boolean, reason text,
               snapshot jsonb, stored_band bigint, stored_snapshot jsonb, agrees boolean, target_state text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM public.targets t WHERE t.id = p_target_id) THEN
        RAISE EXCEPTION 'target % does not exist', coalesce(p_target_id::text, 'NULL')
            USING ERRCODE = 'no_data_found';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM public.me_files f WHERE f.id = p_me_file_id) THEN
        RAISE EXCEPTION 'me_file % does not exist', coalesce(p_me_file_id::text, 'NULL')
            USING ERRCODE = 'no_data_found';
    END IF;
    RETURN QUERY
    WITH bands AS (
        SELECT c.target_band_id, c.tier, c.n_groups, c.is_bullseye, c.matchable, b.title
          FROM pgsnap.catalogue_bands c
          JOIN public.target_bands b ON b.id = c.target_band_id
         WHERE c.target_id = p_target_id
    ),
    groups AS (
        SELECT bg.target_band_id, g.id AS trait_group_id, g.title,
               (SELECT jsonb_agg(jsonb_build_array(t.trait_id, tr.trait_name, t.tag_value) ORDER BY t.trait_id)
                  FROM public.me_file_tags t
                  JOIN public.trait_group_traits gt ON gt.trait_id = t.trait_id AND gt.trait_group_id = g.id
                  JOIN public.traits tr ON tr.id = t.trait_id
                 WHERE t.me_file_id = p_me_file_id) AS via
          FROM public.target_band_trait_groups bg
          JOIN public.trait_groups g ON g.id = bg.trait_group_id
         WHERE bg.target_band_id IN (SELECT x.target_band_id FROM bands x)
    ),
    satisfied AS (
        SELECT b.target_band_id,
               b.matchable AND NOT EXISTS (SELECT 1 FROM groups g
                                            WHERE g.target_band_id = b.target_band_id AND g.via IS NULL) AS ok
          FROM bands b
    ),
    pick AS (
        SELECT b.* FROM bands b JOIN satisfied s USING (target_band_id) WHERE s.ok ORDER BY b.tier LIMIT 1
    ),
    stored AS (
        SELECT tp.target_band_id, tp.matching_tags_snapshot FROM public.target_populations tp
         WHERE tp.target_id = p_target_id AND tp.me_file_id = p_me_file_id
    ),
    would AS (
        SELECT p.target_band_id, pgsnap.build_snapshot(p_me_file_id, p.target_band_id) AS snapshot FROM pick p
    ),
    state AS (
        SELECT t.population_status
               || CASE WHEN s.stale_since IS NOT NULL
                       THEN format(', stale since %s (%s: %s)',
                                   to_char(s.stale_since AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' UTC',
                                   s.stale_kind, s.stale_reason)
                       ELSE '' END AS text
          FROM public.targets t LEFT JOIN pgsnap.target_state s ON s.target_id = t.id
         WHERE t.id = p_target_id
    )
    SELECT b.tier, b.target_band_id, b.title, b.is_bullseye, b.n_groups,
           g.trait_group_id, g.title, g.via IS NOT NULL, g.via,
           s.ok, b.target_band_id IS NOT DISTINCT FROM p.target_band_id,
           CASE
               WHEN b.n_groups = 0 THEN 'matches nobody: the band has no trait groups'
               WHEN NOT b.matchable THEN 'matches nobody: a trait group of the band has no traits'
               WHEN NOT s.ok THEN 'not satisfied: no tag in '
                    || (SELECT string_agg('group ' || x.trait_group_id, ', ' ORDER BY x.trait_group_id)
                          FROM groups x WHERE x.target_band_id = b.target_band_id AND x.via IS NULL)
               WHEN b.target_band_id = p.target_band_id THEN
                   'picked: satisfied, and first by the rule (' || b.n_groups
                   || CASE WHEN b.n_groups = 1 THEN ' group' ELSE ' groups' END
                   || CASE WHEN b.is_bullseye THEN ', bullseye' ELSE '' END || ', band id ' || b.target_band_id || ')'
               ELSE format('satisfied, but band %s comes first: %s', p.target_band_id,
                           CASE WHEN p.n_groups > b.n_groups THEN format('%s groups against %s', p.n_groups, b.n_groups)
                                WHEN p.is_bullseye AND NOT b.is_bullseye THEN 'same groups, and it is the bullseye'
                                ELSE format('same groups and bullseye flag, lower id') END)
           END,
           w.snapshot, st.target_band_id, st.matching_tags_snapshot,
           (w.target_band_id IS NOT DISTINCT FROM st.target_band_id
            AND w.snapshot IS NOT DISTINCT FROM st.matching_tags_snapshot),
           (SELECT x.text FROM state x)
      FROM bands b
      JOIN satisfied s ON s.target_band_id = b.target_band_id
      LEFT JOIN groups g ON g.target_band_id = b.target_band_id
      LEFT JOIN pick p ON true
      LEFT JOIN would w ON true
      LEFT JOIN stored st ON true
     ORDER BY b.tier, g.trait_group_id;
END;
$$;
COMMENT ON FUNCTION pgsnap.explain(bigint, bigint) IS
    'Why a me_file is in a band of a target, or in none: per band and group, satisfied or not and through which '
    'tags, the band the rule picks and why, the snapshot it would carry, and whether the stored row agrees.';

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
            '       count(*) FILTER (WHERE NOT (x.matching_tags_snapshot IS NULL OR pgsnap.snapshot_shape_ok(x.matching_tags_snapshot)))'
            '  FROM public.%I x', v_table)
          INTO v_total, v_nulls, v_bad;
        check_name := 'null_snapshots:' || v_table;
        violations := v_nulls;
        detail := format('%s NULL of %s %s', v_nulls, v_total, CASE WHEN v_total = 1 THEN 'row' ELSE 'rows' END);
        RETURN NEXT;
        check_name := 'snapshot_shape:' || v_table;
        violations := v_bad;
        IF v_bad = 0 THEN
            detail := 'every snapshot is {"tags": [[...], ...]}';
        ELSE
            EXECUTE format(
                'SELECT string_agg(y.id::text, '', '' ORDER BY y.id) FROM (SELECT x.id FROM public.%I x'
                ' WHERE NOT (x.matching_tags_snapshot IS NULL OR pgsnap.snapshot_shape_ok(x.matching_tags_snapshot))'
                ' ORDER BY x.id LIMIT 5) y', v_table)
              INTO v_ids;
            detail := format('not {"tags": [[...], ...]}: id %s%s', v_ids, CASE WHEN v_bad > 5 THEN ', ...' ELSE '' END);
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

    -- targets a catalogue edit left stale for longer than the threshold
    check_name := 'stale_targets';
    SELECT coalesce((SELECT s.value FROM pgsnap.settings s WHERE s.key = 'stale_after'), '1 hour')
      INTO v_setting;
    v_threshold := v_setting::interval;
    SELECT count(*),
           string_agg(format('target %s since %s (%s: %s)', st.target_id,
                             to_char(st.stale_since AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' UTC',
                             st.kind, st.reason), ', ' ORDER BY st.stale_since, st.target_id) FILTER (WHERE st.k <= 5)
      INTO violations, detail
      FROM (SELECT s.*, row_number() OVER (ORDER BY s.stale_since, s.target_id) AS k
              FROM pgsnap.stale_targets() s
             WHERE s.stale_since < now() - v_threshold) st;
    SELECT count(*) INTO v_bad FROM pgsnap.stale_targets();
    detail := CASE WHEN violations = 0
                   THEN format('none stale for more than %s (%s stale now, re-populated by the scheduled job)',
                               v_setting, v_bad)
                   ELSE format('stale for more than %s: ', v_setting) || detail
                        || CASE WHEN violations > 5 THEN ', ...' ELSE '' END END;
    RETURN NEXT;

    -- the compiled catalogue (pgsnap.band_traits) equals the live one
    check_name := 'compiled_catalogue';
    SELECT count(*), string_agg(DISTINCT 'target ' || d.target_id, ', ')
      INTO violations, detail
      FROM ((SELECT * FROM pgsnap.catalogue_band_traits EXCEPT SELECT * FROM pgsnap.band_traits)
            UNION ALL
            (SELECT * FROM pgsnap.band_traits EXCEPT SELECT * FROM pgsnap.catalogue_band_traits)) d;
    detail := CASE WHEN violations = 0 THEN 'pgsnap.band_traits matches the catalogue'
                   ELSE format('%s rows differ (%s): run SELECT pgsnap._compile(NULL)', violations, detail) END;
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
    'not_populated_rows, stuck_populating, stale_targets, compiled_catalogue, last_backfill_failed) with its '
    'violation count and a detail.';
