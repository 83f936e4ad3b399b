-- band_traits by (trait, target): the sync looks up the bands of one me_file's tags in the
-- targets a change affects, a few entries per tag (pgsnap._sync_rows; 0012 moves it). The primary
-- key (trait_id, target_band_id) finds a trait's bands in every target, to be filtered one by one.
-- band_traits is pgsnap's compiled catalogue (a few rows per band), written only by catalogue
-- edits: building the index holds off those edits for milliseconds; tag writes go on.
-- pgsnap: lock pgsnap.band_traits
-- depends: 0008.engine-state

CREATE INDEX band_traits_trait_id_target_id_idx ON pgsnap.band_traits (trait_id, target_id);
