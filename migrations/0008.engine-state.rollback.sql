-- Back to the state before the engine's own tables. The engine's sql/ objects depend on them:
-- they go first, with the triggers that call them (re-run `pgsnap migrate` to restore them).
DROP TRIGGER IF EXISTS me_file_tags_sync_insert ON me_file_tags;
DROP TRIGGER IF EXISTS me_file_tags_sync_update ON me_file_tags;
DROP TRIGGER IF EXISTS me_file_tags_sync_delete ON me_file_tags;
DROP TRIGGER IF EXISTS me_files_sync_insert ON me_files;
DO $$
DECLARE
    v_routines text[];
    v_routine  text;
BEGIN
    -- names first: a CASCADE drop takes the routines that depend on it, whose oids then name nothing
    SELECT array_agg(p.oid::regprocedure::text) INTO v_routines
      FROM pg_proc p
     WHERE p.pronamespace = 'pgsnap'::regnamespace AND p.prokind IN ('f', 'p');
    FOREACH v_routine IN ARRAY coalesce(v_routines, '{}') LOOP
        EXECUTE format('DROP ROUTINE IF EXISTS %s CASCADE', v_routine);
    END LOOP;
END;
$$;
DROP VIEW IF EXISTS pgsnap.catalogue_bands, pgsnap.catalogue_band_traits;
ALTER TABLE target_bands DROP COLUMN population_count, DROP COLUMN definition_hash, DROP COLUMN tier;
ALTER TABLE target_populations DROP COLUMN inputs_hash;
ALTER TABLE pgsnap.backfill_runs DROP COLUMN backend_start;
DROP TABLE pgsnap.target_state;
DROP TABLE pgsnap.band_traits;
