-- pgsnap base: retired routines, lock keys, run claims, progress notices, and the target_id of
-- population rows. docs/rules.md states the rules; docs/sql-api.md lists the public routines.
--
-- Two kinds of routine live in sql/:
--   * SQL functions with a standard body (BEGIN ATOMIC): parsed once, when created, so their
--     references are bound to objects, not names, whatever the caller's search_path. The
--     planner inlines them into each calling statement, which then has a plan of its own: the
--     one membership rule and the one snapshot builder serve a single me_file and a whole
--     target without sharing a cached plan;
--   * PL/pgSQL routines: every one pins search_path (procedures that COMMIT cannot carry a SET
--     clause; they pin it transaction-locally instead) and names objects by schema.

-- Routines of earlier versions whose names or signatures changed (a routine dropped and
-- created again would lose the application role's grants: only retired ones are dropped).
DROP TRIGGER IF EXISTS me_files_sync_insert ON public.me_files;  -- registrations sync through their tags
DROP FUNCTION IF EXISTS pgsnap._reconcile(bigint[], bigint[], boolean);
DROP FUNCTION IF EXISTS pgsnap._populate_begin(bigint, integer);
DROP FUNCTION IF EXISTS pgsnap._populate_batches(bigint, integer);
DROP FUNCTION IF EXISTS pgsnap._populate_finish(bigint);
DROP FUNCTION IF EXISTS pgsnap._release_own_lock(bigint);
DROP FUNCTION IF EXISTS pgsnap._backfill_run_start();
DROP FUNCTION IF EXISTS pgsnap._backfill_run_step(bigint, bigint, bigint, bigint);
DROP FUNCTION IF EXISTS pgsnap._backfill_run_finish(bigint, text, text);
DROP FUNCTION IF EXISTS pgsnap._sync_enqueue_me_files();
DROP FUNCTION IF EXISTS pgsnap.memberships(bigint[], bigint[]);
DROP FUNCTION IF EXISTS pgsnap._snapshot_shape_ok(jsonb);
DROP FUNCTION IF EXISTS pgsnap._sync_desired(bigint[], bigint[]);
DROP FUNCTION IF EXISTS pgsnap._sync_memberships(bigint[], bigint[]);

CREATE OR REPLACE FUNCTION pgsnap.lock_key(p_name text)
RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT pg_catalog.hashtextextended('pgsnap:' || p_name, 0);
END;
COMMENT ON FUNCTION pgsnap.lock_key(text) IS
    'Advisory lock key of a named pgsnap lock (backfill, target:<id>, compile:<id>).';

-- me_files are serialised between writers (a populate batch shares, a sync excludes) by
-- advisory locks on 64 slots: ids in blocks of 1024, the blocks dealt round the slots. A
-- batch of consecutive ids takes few slots, a sync one per me_file, and no statement ever
-- takes more than 64 locks, whatever the number of targets or me_files (a default server
-- has room for 64 per connection).
CREATE OR REPLACE FUNCTION pgsnap._slot(p_me_file_id bigint)
RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT ((p_me_file_id >> 10) & 63)::integer;
END;

-- The slots of the ids from p_from to p_to, each once, in lock order (all 64 when the range
-- spans 64 blocks or more).
CREATE OR REPLACE FUNCTION pgsnap._slots(p_from bigint, p_to bigint)
RETURNS SETOF integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT DISTINCT (b & 63)::integer
      FROM generate_series(p_from >> 10, least(p_to >> 10, (p_from >> 10) + 63)) AS b
     ORDER BY 1;
END;

-- The advisory-lock namespace of the slots (classid of the two-key form).
CREATE OR REPLACE FUNCTION pgsnap._slot_space()
RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT 1885827950;  -- 'pgsn'
END;

-- The backend holding the session-level advisory lock `p_key` in this database, or NULL.
-- pg_locks shows a bigint key as classid (high 32 bits) and objid (low 32 bits).
CREATE OR REPLACE FUNCTION pgsnap._lock_holder(p_key bigint)
RETURNS integer
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT l.pid FROM pg_catalog.pg_locks l
     WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
       AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d
                          WHERE d.datname = pg_catalog.current_database())
       AND ((l.classid::bigint << 32) | l.objid::bigint) = p_key
     ORDER BY l.pid
     LIMIT 1;
END;

-- Is the run claimed by backend (pid, backend_start) at `p_claimed_at` still running? Runs
-- hold no session-level lock (a cancel or error could leave one behind in a pooled session):
-- a claim is alive while its session exists and is still executing the statement that made
-- it. A session whose state this role may not see counts as alive.
CREATE OR REPLACE FUNCTION pgsnap._claim_alive(p_pid integer, p_backend_start timestamptz,
                                               p_claimed_at timestamptz)
RETURNS boolean
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT p_pid IS NOT NULL
           AND EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a
                        WHERE a.pid = p_pid
                          AND a.backend_start IS NOT DISTINCT FROM p_backend_start
                          AND (a.state IS NULL
                               OR (a.state IN ('active', 'idle in transaction')
                                   AND a.query_start <= p_claimed_at)));
END;
COMMENT ON FUNCTION pgsnap._claim_alive(integer, timestamptz, timestamptz) IS
    'Internal: whether a run claimed by that backend at that time is still running.';

-- This backend's start, for claims.
CREATE OR REPLACE FUNCTION pgsnap._backend_start()
RETURNS timestamptz
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT a.backend_start FROM pg_catalog.pg_stat_activity a WHERE a.pid = pg_catalog.pg_backend_pid();
END;

-- A progress or summary notice: a human message, and a DETAIL holding one JSON object with
-- an "event" key that programs parse (the pgsnap CLI draws its progress bars from them).
CREATE OR REPLACE FUNCTION pgsnap._notice(p_message text, p_detail jsonb)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE NOTICE '%', p_message USING DETAIL = p_detail::text;
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

-- The shape every snapshot must have (the CHECK of migration 0009, as a predicate):
-- an object whose "tags" is an array of arrays. NULL is not a snapshot: false.
CREATE OR REPLACE FUNCTION pgsnap.snapshot_shape_ok(p_snapshot jsonb)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT coalesce(jsonb_typeof(p_snapshot) = 'object'
                    AND jsonb_typeof(p_snapshot -> 'tags') IS NOT DISTINCT FROM 'array'
                    AND NOT ((p_snapshot -> 'tags') @? 'strict $[*] ? (@.type() != "array")'), false);
END;
COMMENT ON FUNCTION pgsnap.snapshot_shape_ok(jsonb) IS
    'Whether a value has the snapshot shape {"tags": [[...], ...]} (false for NULL).';
