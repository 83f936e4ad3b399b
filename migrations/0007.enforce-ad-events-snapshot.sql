-- NOT NULL journey, final steps for ad_events: validate the checks added NOT VALID
-- (SHARE UPDATE EXCLUSIVE: reads and writes go on), then SET NOT NULL, which
-- PostgreSQL proves from the validated check without a scan, then drop the
-- now redundant check. pgsnap migrate backfills every NULL before this runs
-- and applies it under a short lock_timeout with retries.
-- pgsnap: enforce ad_events
-- depends: 0006.enforce-offers-snapshot

ALTER TABLE ad_events VALIDATE CONSTRAINT ad_events_snapshot_not_null;
ALTER TABLE ad_events VALIDATE CONSTRAINT ad_events_snapshot_shape;
ALTER TABLE ad_events ALTER COLUMN matching_tags_snapshot SET NOT NULL;
ALTER TABLE ad_events DROP CONSTRAINT ad_events_snapshot_not_null;
