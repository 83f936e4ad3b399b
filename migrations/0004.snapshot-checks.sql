-- Step 1 of the NOT NULL journey (docs/operations.md, "The NOT NULL journey"):
-- new NULL snapshots are rejected at once, legacy rows are tolerated until the backfill has run.
-- Snapshots that are not {"tags": [...]} (e.g. {} or the old flat format's
-- string) carry no trustworthy record: they become NULL so the backfill
-- rebuilds them, then a NOT VALID shape CHECK keeps them out for good.
-- pgsnap: lock target_populations, offers, ad_events
-- depends: 0003.scheduler

UPDATE target_populations SET matching_tags_snapshot = NULL
 WHERE matching_tags_snapshot IS NOT NULL
   AND NOT (jsonb_typeof(matching_tags_snapshot) = 'object'
            AND jsonb_typeof(matching_tags_snapshot -> 'tags') IS NOT DISTINCT FROM 'array');
UPDATE offers SET matching_tags_snapshot = NULL
 WHERE matching_tags_snapshot IS NOT NULL
   AND NOT (jsonb_typeof(matching_tags_snapshot) = 'object'
            AND jsonb_typeof(matching_tags_snapshot -> 'tags') IS NOT DISTINCT FROM 'array');
UPDATE ad_events SET matching_tags_snapshot = NULL
 WHERE matching_tags_snapshot IS NOT NULL
   AND NOT (jsonb_typeof(matching_tags_snapshot) = 'object'
            AND jsonb_typeof(matching_tags_snapshot -> 'tags') IS NOT DISTINCT FROM 'array');

ALTER TABLE target_populations
    ADD CONSTRAINT target_populations_snapshot_not_null
        CHECK (matching_tags_snapshot IS NOT NULL) NOT VALID,
    ADD CONSTRAINT target_populations_snapshot_shape
        CHECK (matching_tags_snapshot IS NULL
               OR (jsonb_typeof(matching_tags_snapshot) = 'object'
                   AND jsonb_typeof(matching_tags_snapshot -> 'tags') IS NOT DISTINCT FROM 'array')) NOT VALID;
ALTER TABLE offers
    ADD CONSTRAINT offers_snapshot_not_null
        CHECK (matching_tags_snapshot IS NOT NULL) NOT VALID,
    ADD CONSTRAINT offers_snapshot_shape
        CHECK (matching_tags_snapshot IS NULL
               OR (jsonb_typeof(matching_tags_snapshot) = 'object'
                   AND jsonb_typeof(matching_tags_snapshot -> 'tags') IS NOT DISTINCT FROM 'array')) NOT VALID;
ALTER TABLE ad_events
    ADD CONSTRAINT ad_events_snapshot_not_null
        CHECK (matching_tags_snapshot IS NOT NULL) NOT VALID,
    ADD CONSTRAINT ad_events_snapshot_shape
        CHECK (matching_tags_snapshot IS NULL
               OR (jsonb_typeof(matching_tags_snapshot) = 'object'
                   AND jsonb_typeof(matching_tags_snapshot -> 'tags') IS NOT DISTINCT FROM 'array')) NOT VALID;
