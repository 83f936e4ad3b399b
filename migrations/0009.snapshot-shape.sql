-- A stricter shape for matching_tags_snapshot: every element of "tags" must be an array
-- (a parent entry [id, name, order, [children]]). The original's flat format
-- ({"tags": [{"trait_id": ...}], ...}) passed the first check; from here on new rows in it are
-- rejected, and the backfill rebuilds the legacy ones before 0010 validates the check.
-- NULL stays allowed here: the NOT NULL checks of 0004..0007 say whether it may be NULL.
-- pgsnap: lock target_populations, offers, ad_events
-- depends: 0008.engine-state

ALTER TABLE target_populations
    DROP CONSTRAINT target_populations_snapshot_shape,
    ADD CONSTRAINT target_populations_snapshot_shape
        CHECK (matching_tags_snapshot IS NULL
               OR (jsonb_typeof(matching_tags_snapshot) = 'object'
                   AND jsonb_typeof(matching_tags_snapshot -> 'tags') IS NOT DISTINCT FROM 'array'
                   AND NOT ((matching_tags_snapshot -> 'tags') @? 'strict $[*] ? (@.type() != "array")'))) NOT VALID;
ALTER TABLE offers
    DROP CONSTRAINT offers_snapshot_shape,
    ADD CONSTRAINT offers_snapshot_shape
        CHECK (matching_tags_snapshot IS NULL
               OR (jsonb_typeof(matching_tags_snapshot) = 'object'
                   AND jsonb_typeof(matching_tags_snapshot -> 'tags') IS NOT DISTINCT FROM 'array'
                   AND NOT ((matching_tags_snapshot -> 'tags') @? 'strict $[*] ? (@.type() != "array")'))) NOT VALID;
ALTER TABLE ad_events
    DROP CONSTRAINT ad_events_snapshot_shape,
    ADD CONSTRAINT ad_events_snapshot_shape
        CHECK (matching_tags_snapshot IS NULL
               OR (jsonb_typeof(matching_tags_snapshot) = 'object'
                   AND jsonb_typeof(matching_tags_snapshot -> 'tags') IS NOT DISTINCT FROM 'array'
                   AND NOT ((matching_tags_snapshot -> 'tags') @? 'strict $[*] ? (@.type() != "array")'))) NOT VALID;
