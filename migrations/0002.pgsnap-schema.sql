-- pgsnap's own schema, and one population row per (target, me_file) enforced by
-- the database: target_populations gains target_id (kept equal to its band's
-- target by a composite foreign key) and a unique (target_id, me_file_id).
-- pgsnap: lock target_bands, target_populations
-- depends: 0001.baseline-schema

CREATE SCHEMA pgsnap;
COMMENT ON SCHEMA pgsnap IS 'pgsnap: matching_tags_snapshot engine (functions, run log, settings)';

CREATE TABLE pgsnap.settings (
    key   text PRIMARY KEY,
    value text NOT NULL
);
INSERT INTO pgsnap.settings (key, value) VALUES
    ('populating_stuck_after', '1 hour');

-- One row per backfill run (CLI, pg_cron or the Python scheduler).
CREATE TABLE pgsnap.backfill_runs (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pid                integer NOT NULL DEFAULT pg_backend_pid(),
    started_at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at        timestamptz,
    status             text NOT NULL DEFAULT 'running'
        CHECK (status IN ('running', 'succeeded', 'failed', 'skipped', 'stopped')),
    batches            integer NOT NULL DEFAULT 0,
    target_populations bigint  NOT NULL DEFAULT 0,
    offers             bigint  NOT NULL DEFAULT 0,
    ad_events          bigint  NOT NULL DEFAULT 0,
    error              text,
    stop_requested     boolean NOT NULL DEFAULT false
);
CREATE INDEX backfill_runs_started_at_idx ON pgsnap.backfill_runs (started_at);

-- Tag changes waiting for their transaction's commit-time sync (see sql/50_sync.sql).
-- Rows live only inside the transaction that wrote them, so UNLOGGED is enough.
CREATE UNLOGGED TABLE pgsnap.sync_queue (
    xact       xid8   NOT NULL,
    me_file_id bigint NOT NULL,
    trait_id   bigint,            -- NULL: re-evaluate every maintained target
    CONSTRAINT sync_queue_key UNIQUE NULLS NOT DISTINCT (xact, me_file_id, trait_id)
);
CREATE UNLOGGED TABLE pgsnap.sync_pending (
    xact xid8 PRIMARY KEY
);
-- The last transaction that synced each me_file: rewriting it makes two
-- syncs of one me_file conflict, so a REPEATABLE READ writer working from an
-- outdated snapshot gets a serialization failure rather than a stale row.
-- No foreign key on purpose: its KEY SHARE lock on me_files, taken at COMMIT,
-- would deadlock with a transaction deleting that me_file; the sync of a
-- deleted me_file removes its row instead.
CREATE TABLE pgsnap.me_file_syncs (
    me_file_id bigint PRIMARY KEY,
    synced_by  xid8 NOT NULL
);

-- When the target entered 'populating' (kept by a trigger, sql/80_checks.sql),
-- so `pgsnap check` can tell a run in progress from one that died.
ALTER TABLE targets ADD COLUMN populating_since timestamptz;

-- target_populations.target_id, filled for legacy rows here and by a trigger
-- for inserts that leave it out.
ALTER TABLE target_bands ADD CONSTRAINT target_bands_id_target_id_key UNIQUE (id, target_id);
ALTER TABLE target_populations ADD COLUMN target_id bigint;
UPDATE target_populations tp SET target_id = b.target_id
  FROM target_bands b WHERE b.id = tp.target_band_id;

-- Legacy databases may hold a me_file in two bands of one target: keep the row
-- the membership rule would pick (most groups, then bullseye, then lowest band id).
DELETE FROM target_populations tp
 USING (
    SELECT p.id,
           row_number() OVER (
               PARTITION BY p.target_id, p.me_file_id
               ORDER BY (SELECT count(*) FROM target_band_trait_groups g
                          WHERE g.target_band_id = p.target_band_id) DESC,
                        b.is_bullseye DESC, b.id, p.id) AS rn
      FROM target_populations p
      JOIN target_bands b ON b.id = p.target_band_id
 ) ranked
 WHERE ranked.id = tp.id AND ranked.rn > 1;

ALTER TABLE target_populations ALTER COLUMN target_id SET NOT NULL;
ALTER TABLE target_populations
    DROP CONSTRAINT target_populations_target_band_id_fkey,
    ADD CONSTRAINT target_populations_band_target_fkey
        FOREIGN KEY (target_band_id, target_id) REFERENCES target_bands (id, target_id)
        ON DELETE CASCADE ON UPDATE CASCADE,
    ADD CONSTRAINT target_populations_target_id_me_file_id_key UNIQUE (target_id, me_file_id);
