-- pgsnap base: lock keys and the target_id of population rows.
-- Every function pins search_path and names its objects by schema.

CREATE OR REPLACE FUNCTION pgsnap.lock_key(p_name text)
RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT pg_catalog.hashtextextended('pgsnap:' || p_name, 0) $$;
COMMENT ON FUNCTION pgsnap.lock_key(text) IS
    'Advisory lock key of a named pgsnap lock (backfill, populate:<id>, target:<id>).';

-- Inserts that leave target_id out (the legacy column list) get it from the band;
-- the composite foreign key keeps an explicit value honest.
CREATE OR REPLACE FUNCTION pgsnap._population_target_id()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    SELECT b.target_id INTO NEW.target_id
      FROM public.target_bands b WHERE b.id = NEW.target_band_id;
    RETURN NEW;
END;
$$;

CREATE OR REPLACE TRIGGER target_populations_target_id
    BEFORE INSERT OR UPDATE OF target_band_id ON public.target_populations
    FOR EACH ROW
    WHEN (NEW.target_id IS NULL)
    EXECUTE FUNCTION pgsnap._population_target_id();
