-- NOT NULL journey, final steps for target_populations: validate the checks added NOT VALID
-- (SHARE UPDATE EXCLUSIVE: reads and writes go on), then SET NOT NULL, which
-- PostgreSQL proves from the validated check without a scan, then drop the
-- now redundant check. pgsnap migrate backfills every NULL before this runs
-- and applies it under a short lock_timeout with retries.
-- pgsnap: enforce target_populations
-- depends: 0004.snapshot-checks

ALTER TABLE target_populations VALIDATE CONSTRAINT target_populations_snapshot_not_null;
ALTER TABLE target_populations VALIDATE CONSTRAINT target_populations_snapshot_shape;
ALTER TABLE target_populations ALTER COLUMN matching_tags_snapshot SET NOT NULL;
ALTER TABLE target_populations DROP CONSTRAINT target_populations_snapshot_not_null;
