ALTER TABLE offers ALTER COLUMN matching_tags_snapshot DROP NOT NULL;
ALTER TABLE offers ADD CONSTRAINT offers_snapshot_not_null
    CHECK (matching_tags_snapshot IS NOT NULL) NOT VALID;
