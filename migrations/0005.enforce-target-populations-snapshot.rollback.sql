ALTER TABLE target_populations ALTER COLUMN matching_tags_snapshot DROP NOT NULL;
ALTER TABLE target_populations ADD CONSTRAINT target_populations_snapshot_not_null
    CHECK (matching_tags_snapshot IS NOT NULL) NOT VALID;
