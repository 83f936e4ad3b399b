CREATE UNIQUE INDEX band_traits_plain_key ON pgsnap.band_traits (trait_id, target_band_id);
ALTER TABLE pgsnap.band_traits DROP CONSTRAINT band_traits_pkey,
    ADD CONSTRAINT band_traits_pkey PRIMARY KEY USING INDEX band_traits_plain_key;
CREATE INDEX band_traits_trait_id_target_id_idx ON pgsnap.band_traits (trait_id, target_id);
