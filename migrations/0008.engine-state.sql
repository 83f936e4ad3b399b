-- The engine's own state (behaviour lives in sql/, docs/rules.md states the rules):
--   * pgsnap.band_traits: the catalogue compiled for the membership rule, one row per
--     (band, trait), rebuilt by triggers whenever bands, their groups or the groups' traits change;
--   * pgsnap.target_state: per target, the populate run in progress (a claim, not a lock),
--     the catalogue its rows were built from, and whether a catalogue edit left it stale;
--   * target_populations.inputs_hash: a fingerprint of the tag values a row's snapshot was
--     built from, so a re-populate builds only the snapshots whose inputs changed;
--   * target_bands.tier, definition_hash, population_count (kept by the engine).
-- Not an enforcement step: `pgsnap migrate` applies it before any NOT NULL enforcement.
-- pgsnap: lock target_bands, target_populations
-- depends: 0004.snapshot-checks

CREATE TABLE pgsnap.band_traits (
    trait_id       bigint  NOT NULL,
    target_band_id bigint  NOT NULL,
    target_id      bigint  NOT NULL,
    tier           integer NOT NULL,   -- the band's rank in the rule's order (0: preferred)
    bits           varbit  NOT NULL,   -- one bit per group of the band: set where the group holds the trait
    full_mask      varbit  NOT NULL,   -- every group of the band: all ones
    in_snapshot    boolean NOT NULL,   -- the trait has a parent, so its tags appear in snapshots
    trait_name     text    NOT NULL,   -- what a snapshot shows for a blank tag value
    -- the rest of what a snapshot shows of the trait and its parent, so the builder reads no
    -- other table
    trait_order     integer NOT NULL,
    parent_trait_id bigint,
    parent_name     text,
    parent_order    integer,
    PRIMARY KEY (trait_id, target_band_id)
);
CREATE INDEX band_traits_target_id_idx ON pgsnap.band_traits (target_id, target_band_id);
COMMENT ON TABLE pgsnap.band_traits IS
    'The catalogue compiled for the membership rule (one row per band and trait); rebuilt by triggers, '
    'checked against the live catalogue by pgsnap check.';

CREATE TABLE pgsnap.target_state (
    target_id          bigint PRIMARY KEY REFERENCES public.targets (id) ON DELETE CASCADE,
    run_pid            integer,       -- the session populating the target now (a claim)
    run_backend_start  timestamptz,
    run_started_at     timestamptz,
    catalogue_hash     bigint,        -- snapshot-relevant catalogue of the last completed run
    stale_since        timestamptz,   -- a catalogue edit left rows to re-populate
    stale_kind         text CHECK (stale_kind IN ('membership', 'snapshot')),
    stale_reason       text,
    stale_token        xid8,          -- the editing transaction: a run clears only what it saw
    changed_by         xid8           -- last transaction that wrote the target in bulk
);
COMMENT ON TABLE pgsnap.target_state IS
    'Per target: the populate run in progress, the catalogue its rows were built from, staleness.';

ALTER TABLE pgsnap.backfill_runs ADD COLUMN backend_start timestamptz;

ALTER TABLE target_populations ADD COLUMN inputs_hash bigint;
ALTER TABLE target_bands
    ADD COLUMN tier integer,
    ADD COLUMN definition_hash text,
    ADD COLUMN population_count bigint NOT NULL DEFAULT 0;
