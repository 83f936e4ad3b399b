-- The first shape check again (not validated: rolling back scans nothing).
ALTER TABLE target_populations
    DROP CONSTRAINT target_populations_snapshot_shape,
    ADD CONSTRAINT target_populations_snapshot_shape
        CHECK (matching_tags_snapshot IS NULL
               OR (jsonb_typeof(matching_tags_snapshot) = 'object'
                   AND jsonb_typeof(matching_tags_snapshot -> 'tags') IS NOT DISTINCT FROM 'array')) NOT VALID;
ALTER TABLE offers
    DROP CONSTRAINT offers_snapshot_shape,
    ADD CONSTRAINT offers_snapshot_shape
        CHECK (matching_tags_snapshot IS NULL
               OR (jsonb_typeof(matching_tags_snapshot) = 'object'
                   AND jsonb_typeof(matching_tags_snapshot -> 'tags') IS NOT DISTINCT FROM 'array')) NOT VALID;
ALTER TABLE ad_events
    DROP CONSTRAINT ad_events_snapshot_shape,
    ADD CONSTRAINT ad_events_snapshot_shape
        CHECK (matching_tags_snapshot IS NULL
               OR (jsonb_typeof(matching_tags_snapshot) = 'object'
                   AND jsonb_typeof(matching_tags_snapshot -> 'tags') IS NOT DISTINCT FROM 'array')) NOT VALID;
