-- band_traits' primary key (trait_id, target_band_id) carries every other column, so the sync's
-- lookups of a me_file's tags read the index alone: each tag's bands in the affected targets
-- (the rule), then each snapshot entry by (trait, band) (pgsnap._sync_rows). It replaces the
-- (trait_id, target_id) index of 0011: with two indexes led by trait_id the planner picked the
-- smaller one and read the table for every band it visited. pgsnap's compiled catalogue is
-- written only by catalogue edits: the locks last milliseconds, and tag writes go on.
-- pgsnap: lock pgsnap.band_traits
-- depends: 0011.trait-lookup

CREATE UNIQUE INDEX band_traits_covering_key ON pgsnap.band_traits (trait_id, target_band_id)
    INCLUDE (target_id, tier, bits, full_mask, in_snapshot, trait_name, trait_order, parent_trait_id,
             parent_name, parent_order);
ALTER TABLE pgsnap.band_traits DROP CONSTRAINT band_traits_pkey,
    ADD CONSTRAINT band_traits_pkey PRIMARY KEY USING INDEX band_traits_covering_key;
DROP INDEX pgsnap.band_traits_trait_id_target_id_idx;
