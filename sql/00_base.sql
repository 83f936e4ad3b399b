-- pgsnap base: lock keys and the target_id of population rows.
-- Every function pins search_path and names its objects by schema.

CREATE OR REPLACE FUNCTION pgsnap.lock_key(p_name text)
RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT pg_catalog.hashtextextended('pgsnap:' || p_name, 0) $$;
COMMENT ON FUNCTION pgsnap.lock_key(text) IS
    'Advisory lock key of a named pgsnap lock (backfill, populate:<id>, target:<id>).';

-- The backend holding the session-level advisory lock `p_key` in this
-- database, or NULL. pg_locks shows a bigint key as classid (high 32 bits)
-- and objid (low 32 bits).
CREATE OR REPLACE FUNCTION pgsnap._lock_holder(p_key bigint)
RETURNS integer
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT l.pid FROM pg_catalog.pg_locks l
     WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
       AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d
                          WHERE d.datname = pg_catalog.current_database())
       AND ((l.classid::bigint << 32) | l.objid::bigint) = p_key
     ORDER BY l.pid
     LIMIT 1
$$;

-- Drop every hold this session has on the session-level lock `p_key`: a run
-- of this session that failed or was cancelled mid-way may still hold it, and
-- pooled sessions live on.
CREATE OR REPLACE FUNCTION pgsnap._release_own_lock(p_key bigint)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    WHILE pgsnap._lock_holder(p_key) = pg_backend_pid() LOOP
        PERFORM pg_advisory_unlock(p_key);
    END LOOP;
END;
$$;

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
