-- Monitoring: pgsnap's state as metric samples, one row each. `pgsnap metrics` prints them
-- in the Prometheus/OpenMetrics text format; postgres_exporter users query them directly
-- (docs/operations.md, "Monitor"). Read-only. Like `pgsnap check`, it scans the three
-- snapshot tables (snapshot_health and check_invariants), so scrape it every few minutes,
-- not every few seconds, on large tables.
CREATE OR REPLACE FUNCTION pgsnap.metrics()
RETURNS TABLE (metric text, help text, labels jsonb, value double precision)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH health AS (
        SELECT h.table_name, h.null_snapshots, h.total_rows FROM pgsnap.snapshot_health() h
    ), checks AS (
        SELECT c.check_name, c.violations, row_number() OVER () AS k FROM pgsnap.check_invariants() c
    ), statuses(status, k) AS (
        VALUES ('populated', 1), ('populating', 2), ('not_populated', 3)
    ), run_statuses(status, k) AS (
        VALUES ('running', 1), ('succeeded', 2), ('failed', 3), ('skipped', 4), ('stopped', 5)
    ), last_run AS (
        SELECT r.status FROM pgsnap.backfill_runs r ORDER BY r.started_at DESC, r.id DESC LIMIT 1
    ), samples AS (
        SELECT 1 AS g, array_position(ARRAY['target_populations', 'offers', 'ad_events'], h.table_name) AS k,
               'pgsnap_null_snapshots' AS metric,
               'Rows whose matching_tags_snapshot is NULL, per table.' AS help,
               jsonb_build_object('table', h.table_name) AS labels, h.null_snapshots::float8 AS value
          FROM health h
        UNION ALL
        SELECT 2, array_position(ARRAY['target_populations', 'offers', 'ad_events'], h.table_name),
               'pgsnap_rows', 'Rows per snapshot table.',
               jsonb_build_object('table', h.table_name), h.total_rows::float8
          FROM health h
        UNION ALL
        SELECT 3, s.k, 'pgsnap_targets', 'Targets per population_status.',
               jsonb_build_object('status', s.status),
               (SELECT count(*) FROM public.targets t WHERE t.population_status = s.status)::float8
          FROM statuses s
        UNION ALL
        SELECT 4, 1, 'pgsnap_targets_stuck',
               'Targets populating for longer than the populating_stuck_after setting.',
               '{}'::jsonb, c.violations::float8
          FROM checks c WHERE c.check_name = 'stuck_populating'
        UNION ALL
        SELECT 5, c.k, 'pgsnap_check_violations', 'Violations per pgsnap check (pgsnap.check_invariants).',
               jsonb_build_object('check', c.check_name), c.violations::float8
          FROM checks c
        UNION ALL
        SELECT 6, 1, 'pgsnap_backfill_last_success_age_seconds',
               'Seconds since the last successful backfill run finished (absent: none yet).',
               '{}'::jsonb, extract(epoch FROM now() - max(r.finished_at))::float8
          FROM pgsnap.backfill_runs r WHERE r.status = 'succeeded'
        HAVING count(*) > 0
        UNION ALL
        SELECT 7, s.k, 'pgsnap_backfill_last_run',
               'Status of the latest backfill run: 1 for its status, 0 for the others.',
               jsonb_build_object('status', s.status),
               CASE WHEN s.status = (SELECT l.status FROM last_run l) THEN 1 ELSE 0 END
          FROM run_statuses s
    )
    SELECT x.metric, x.help, x.labels, x.value FROM samples x ORDER BY x.g, x.k
$$;
COMMENT ON FUNCTION pgsnap.metrics() IS
    'Monitoring samples (metric, help, labels, value): NULL snapshots and rows per table, targets per status, '
    'stuck targets, check violations, backfill age and last status. Read-only.';
