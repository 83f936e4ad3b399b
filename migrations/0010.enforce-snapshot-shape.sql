-- Enforcement step of the stricter shape: validate the checks of 0009 (SHARE UPDATE EXCLUSIVE:
-- reads and writes go on). `pgsnap migrate` runs the backfill first, which rebuilds every
-- snapshot in another shape, and applies this under a short lock_timeout with retries.
-- pgsnap: enforce target_populations, offers, ad_events
-- depends: 0007.enforce-ad-events-snapshot 0009.snapshot-shape

ALTER TABLE target_populations VALIDATE CONSTRAINT target_populations_snapshot_shape;
ALTER TABLE offers VALIDATE CONSTRAINT offers_snapshot_shape;
ALTER TABLE ad_events VALIDATE CONSTRAINT ad_events_snapshot_shape;
