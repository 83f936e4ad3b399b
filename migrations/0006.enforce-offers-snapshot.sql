-- NOT NULL journey, final steps for offers: validate the checks added NOT VALID
-- (SHARE UPDATE EXCLUSIVE: reads and writes go on), then SET NOT NULL, which
-- PostgreSQL proves from the validated check without a scan, then drop the
-- now redundant check. pgsnap migrate backfills every NULL before this runs
-- and applies it under a short lock_timeout with retries.
-- pgsnap: enforce offers
-- depends: 0005.enforce-target-populations-snapshot

ALTER TABLE offers VALIDATE CONSTRAINT offers_snapshot_not_null;
ALTER TABLE offers VALIDATE CONSTRAINT offers_snapshot_shape;
ALTER TABLE offers ALTER COLUMN matching_tags_snapshot SET NOT NULL;
ALTER TABLE offers DROP CONSTRAINT offers_snapshot_not_null;
