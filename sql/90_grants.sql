-- Privileges (docs/operations.md, "Roles and grants").
--
-- Three kinds of caller:
--   * the owner of pgsnap's objects (the role that runs `pgsnap migrate`) and superusers run
--     everything: populate, backfill, check, the schedule;
--   * the application role, set up by pgsnap.grant_app_role below (`pgsnap grant --app-role`),
--     gets exactly what the application uses;
--   * PUBLIC gets nothing in schema pgsnap.
-- This file runs last, in the same transaction as every other sql/ file, on every deploy: a
-- routine added by a deploy (PostgreSQL creates it EXECUTE to PUBLIC) is closed again before
-- the deploy commits, so no session ever sees it open. CREATE OR REPLACE keeps a routine's
-- grants, so the application role keeps its own across deploys; a routine dropped and
-- recreated (new signature) loses them: re-run `pgsnap grant` after an upgrade (idempotent).

CREATE OR REPLACE FUNCTION pgsnap.grant_app_role(p_role name)
RETURNS void
LANGUAGE plpgsql
SECURITY INVOKER   -- run by the owner or a superuser: it grants with the caller's own rights
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- what the application reads, and what it writes (docs/operations.md, "What the application role gets")
    v_read   regclass[] := ARRAY['public.traits', 'public.trait_groups', 'public.trait_group_traits',
                                 'public.targets', 'public.target_bands', 'public.target_band_trait_groups',
                                 'public.campaigns', 'public.bids', 'public.target_populations']::regclass[];
    v_write  regclass[] := ARRAY['public.me_files', 'public.me_file_tags',
                                 'public.offers', 'public.ad_events']::regclass[];
    v_owners oid[];
    v_owner  oid;
    v_extra  text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.rolname = p_role) THEN
        RAISE EXCEPTION 'role "%" does not exist', p_role
            USING ERRCODE = 'undefined_object',
                  HINT = 'Create it first, e.g. CREATE ROLE app LOGIN PASSWORD ''...''.';
    END IF;

    -- roles no privilege can restrict, or that could undo pgsnap's guarantees: a superuser;
    -- CREATEROLE (it can grant itself membership in the tables' owner); BYPASSRLS; the
    -- database's owner, who owns schema public on PostgreSQL 15 and can rename it, plant
    -- look-alike tables and drop the application's; or a member of any of those owners
    SELECT CASE WHEN r.rolsuper THEN 'is a superuser: no privilege restricts it; use a role without SUPERUSER'
                WHEN r.rolcreaterole
                THEN 'has CREATEROLE: it could make itself a member of the tables'' owner; use a role without CREATEROLE'
                WHEN r.rolbypassrls THEN 'has BYPASSRLS; use a role without BYPASSRLS'
                WHEN pg_catalog.pg_has_role(p_role, d.datdba, 'MEMBER')
                THEN format('owns the database (it is or belongs to %s): the application role must own nothing',
                            d.datdba::regrole)
                WHEN pg_catalog.pg_has_role(p_role, n.nspowner, 'MEMBER') AND n.nspowner <> 'pg_database_owner'::regrole
                THEN format('owns schema public (it is or belongs to %s): the application role must own nothing',
                            n.nspowner::regrole)
           END
      INTO v_extra
      FROM pg_catalog.pg_roles r, pg_catalog.pg_database d, pg_catalog.pg_namespace n
     WHERE r.rolname = p_role AND d.datname = pg_catalog.current_database() AND n.nspname = 'public';
    IF v_extra IS NOT NULL THEN
        RAISE EXCEPTION 'role "%" %', p_role, v_extra
            USING ERRCODE = 'invalid_grant_operation';
    END IF;
    v_extra := NULL;

    SELECT array_agg(DISTINCT o.owner) INTO v_owners
      FROM (SELECT c.relowner AS owner FROM pg_catalog.pg_class c WHERE c.oid = ANY (v_read || v_write)
            UNION
            SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.relnamespace = 'pgsnap'::regnamespace
            UNION
            SELECT n.nspowner FROM pg_catalog.pg_namespace n WHERE n.nspname = 'pgsnap') o;
    FOREACH v_owner IN ARRAY v_owners LOOP
        -- GRANT by a role without the grant option is only a warning: refuse instead
        IF NOT pg_catalog.pg_has_role(current_user, v_owner, 'USAGE') THEN
            RAISE EXCEPTION 'only % (the owner of pgsnap''s tables) or a superuser may grant, not %',
                v_owner::regrole, current_user
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        -- an owner, or a member of one, may ALTER TABLE ... DISABLE TRIGGER: never the application
        IF pg_catalog.pg_has_role(p_role, v_owner, 'MEMBER') THEN
            RAISE EXCEPTION 'role "%" owns pgsnap''s tables (it is or belongs to %): the application role must own nothing',
                p_role, v_owner::regrole
                USING ERRCODE = 'invalid_grant_operation';
        END IF;
    END LOOP;

    -- Converge: whatever the role held on these objects goes, then exactly the model is granted
    -- (GRANT and REVOKE are transactional: the application never sees a state in between).
    -- The role name is the only variable part of these statements, quoted by %I.
    EXECUTE format('REVOKE ALL ON TABLE public.traits, public.trait_groups, public.trait_group_traits,'
                   ' public.targets, public.target_bands, public.target_band_trait_groups, public.campaigns,'
                   ' public.bids, public.target_populations, public.me_files, public.me_file_tags,'
                   ' public.offers, public.ad_events FROM %I', p_role);
    EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA pgsnap FROM %I', p_role);
    EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA pgsnap FROM %I', p_role);
    EXECUTE format('REVOKE ALL ON ALL ROUTINES IN SCHEMA pgsnap FROM %I', p_role);
    EXECUTE format('REVOKE ALL ON SCHEMA pgsnap FROM %I', p_role);

    EXECUTE format('GRANT USAGE ON SCHEMA pgsnap TO %I', p_role);
    -- reads: the catalogue, and the populations that offers are made from
    EXECUTE format('GRANT SELECT ON TABLE public.traits, public.trait_groups, public.trait_group_traits,'
                   ' public.targets, public.target_bands, public.target_band_trait_groups, public.campaigns,'
                   ' public.bids, public.target_populations TO %I', p_role);
    -- writes: registrations, tags, offers, ad_events. Their ids are identity columns, whose
    -- sequences need no USAGE grant. target_populations is written only by pgsnap: by the
    -- SECURITY DEFINER sync triggers and sync_me_file, and by populate/backfill run as the owner.
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE public.me_files, public.me_file_tags,'
                   ' public.offers, public.ad_events TO %I', p_role);
    -- launch_campaign stays SECURITY INVOKER: everything it writes the application may write
    -- itself (offers, with a snapshot it may read), so running it as the caller gives the
    -- application no power it lacks, and keeps the owner's rights out of a function that takes
    -- its input from the application. Besides offers it sets campaigns.launched_at (and locks the
    -- campaign row FOR NO KEY UPDATE, which needs UPDATE on some column): that one column is
    -- granted, not the table (titles, targets and deactivation stay the catalogue's).
    EXECUTE format('GRANT UPDATE (launched_at) ON TABLE public.campaigns TO %I', p_role);
    -- the contract functions the application calls ...
    EXECUTE format('GRANT EXECUTE ON FUNCTION pgsnap.build_snapshot(bigint, bigint), pgsnap.band_for(bigint, bigint),'
                   ' pgsnap.sync_me_file(bigint), pgsnap.launch_campaign(bigint), pgsnap.snapshot_health()'
                   ' TO %I', p_role);
    -- ... and the read-only helpers those invoker functions and the offer and ad_event triggers
    -- call in turn (the one membership rule, the one snapshot builder, where an inherited
    -- snapshot comes from, the snapshot shape, the launch gate, the lock key).
    -- Not granted: populate_target and the backfill (procedures that COMMIT per batch cannot be
    -- SECURITY DEFINER, and as invoker they would need writes on target_populations: they are
    -- operator jobs run by the owner through the CLI, pg_cron or pgsnap's scheduler), nor the
    -- checks, the run log, the settings, the sync queue or any _internal routine.
    EXECUTE format('GRANT EXECUTE ON FUNCTION pgsnap.memberships(bigint[]), pgsnap.snapshots(bigint[], bigint[]),'
                   ' pgsnap.inherited_snapshot(bigint, bigint, bigint, boolean), pgsnap.snapshot_shape_ok(jsonb),'
                   ' pgsnap._launch_blocker(bigint), pgsnap.lock_key(text) TO %I', p_role);
    -- the compiled catalogue those functions read (the catalogue, compiled: nothing secret)
    EXECUTE format('GRANT SELECT ON TABLE pgsnap.band_traits TO %I', p_role);

    -- What the role still holds beyond the model comes from PUBLIC or from a role it belongs to,
    -- which this function does not touch: refuse rather than leave a weaker role than documented.
    SELECT string_agg(format('%s on %s', p.priv, t.tbl), ', ' ORDER BY t.tbl::text, p.priv)
      INTO v_extra
      FROM unnest(v_read || v_write) AS t(tbl)
     CROSS JOIN unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER']) AS p(priv)
     WHERE pg_catalog.has_table_privilege(p_role, t.tbl, p.priv)
       AND NOT (p.priv = 'SELECT'
                OR (t.tbl = ANY (v_write) AND p.priv IN ('INSERT', 'UPDATE', 'DELETE')));
    IF v_extra IS NOT NULL THEN
        RAISE EXCEPTION 'role "%" would still hold % (granted to PUBLIC or to a role it belongs to)', p_role, v_extra
            USING ERRCODE = 'invalid_grant_operation',
                  HINT = 'Revoke those privileges from PUBLIC or from that role, then grant again.';
    END IF;
END;
$$;
COMMENT ON FUNCTION pgsnap.grant_app_role(name) IS
    'Give the application role exactly what the application uses (read the catalogue and populations; write me_files, '
    'me_file_tags, offers, ad_events; launched_at; execute build_snapshot, band_for, sync_me_file, launch_campaign, '
    'snapshot_health), after revoking whatever else it held on them. Refuses a role that could undo pgsnap''s '
    'guarantees (superuser, CREATEROLE, BYPASSRLS, owner of the database, schema public or any table). Run by the '
    'owner or a superuser; idempotent.';

-- PUBLIC runs nothing of pgsnap's (PostgreSQL grants EXECUTE on every new routine to PUBLIC).
-- Trigger functions need no EXECUTE to fire: the tag, offer and ad_event triggers keep working
-- for every role allowed to write those tables.
REVOKE ALL ON ALL ROUTINES IN SCHEMA pgsnap FROM PUBLIC;

-- The SECURITY DEFINER routines (the sync and catalogue triggers, sync_me_file, the launch
-- gate) run as pgsnap_definer, a NOLOGIN role holding exactly what they use, not as the role
-- that deployed pgsnap (often a superuser): a hole found in one of them can then reach no
-- further than those privileges. Creating the role needs a superuser (or CREATEROLE); a
-- deploy by a role without either leaves the routines owned by that role (which is no
-- superuser then). Roles are cluster-wide: every database using pgsnap shares this one, each
-- granting it privileges on its own objects.
DO $$
DECLARE
    v_can boolean := (SELECT x.rolsuper FROM pg_catalog.pg_roles x WHERE x.rolname = current_user);
    v_fn  record;
BEGIN
    IF NOT v_can THEN
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles x WHERE x.rolname = 'pgsnap_definer') THEN
        CREATE ROLE pgsnap_definer NOLOGIN;
    END IF;
    COMMENT ON ROLE pgsnap_definer IS 'Owner of pgsnap''s SECURITY DEFINER routines; holds just what they use.';
    GRANT USAGE ON SCHEMA pgsnap, public TO pgsnap_definer;
    GRANT SELECT ON TABLE public.traits, public.trait_groups, public.trait_group_traits, public.targets,
        public.target_bands, public.target_band_trait_groups, public.me_files, public.me_file_tags
        TO pgsnap_definer;
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE public.target_populations TO pgsnap_definer;
    GRANT UPDATE (tier, definition_hash) ON TABLE public.target_bands TO pgsnap_definer;
    -- row locks (FOR SHARE) on tags need UPDATE on some column: the sync under REPEATABLE READ
    -- locks the tags it read, to fail on a concurrent change rather than go stale
    GRANT UPDATE (updated_at) ON TABLE public.me_file_tags TO pgsnap_definer;
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE pgsnap.sync_queue, pgsnap.sync_pending, pgsnap.me_file_syncs,
        pgsnap.target_state, pgsnap.band_traits TO pgsnap_definer;
    GRANT SELECT ON TABLE pgsnap.catalogue_bands, pgsnap.catalogue_band_traits TO pgsnap_definer;
    GRANT EXECUTE ON FUNCTION pgsnap._sync(bigint[], bigint[], boolean),
        pgsnap._sync_rows(bigint[], bigint[]),
        pgsnap._sync_check_snapshot(bigint[], bigint[]), pgsnap.memberships(bigint[]),
        pgsnap.snapshots(bigint[], bigint[]), pgsnap._slot(bigint), pgsnap._slot_space(),
        pgsnap._compile(bigint[]), pgsnap._mark_stale(bigint[], text, text), pgsnap.lock_key(text),
        pgsnap._catalogue_edited(bigint[], text, bigint[])
        TO pgsnap_definer;
    -- ALTER ... OWNER needs CREATE on the schema for the new owner: lent for the statement
    GRANT CREATE ON SCHEMA pgsnap TO pgsnap_definer;
    FOR v_fn IN SELECT p.oid::regprocedure AS fn FROM pg_catalog.pg_proc p
                 WHERE p.pronamespace = 'pgsnap'::regnamespace AND p.prosecdef
                   AND p.proowner <> 'pgsnap_definer'::regrole LOOP
        EXECUTE format('ALTER FUNCTION %s OWNER TO pgsnap_definer', v_fn.fn);
    END LOOP;
    REVOKE CREATE ON SCHEMA pgsnap FROM pgsnap_definer;
END;
$$;
-- (the loop above names functions by their regprocedure, never by input)
