ALTER TABLE ad_events ALTER COLUMN matching_tags_snapshot DROP NOT NULL;
ALTER TABLE ad_events ADD CONSTRAINT ad_events_snapshot_not_null
    CHECK (matching_tags_snapshot IS NOT NULL) NOT VALID;
