DROP INDEX IF EXISTS pgsnap.band_traits_trait_id_target_id_idx;
