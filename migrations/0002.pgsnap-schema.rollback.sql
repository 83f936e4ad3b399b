-- Back to the legacy schema: populations keep their rows; pgsnap's objects go
-- first (with them the triggers deployed from sql/, which use target_id).
DROP SCHEMA pgsnap CASCADE;
ALTER TABLE target_populations
    DROP CONSTRAINT target_populations_target_id_me_file_id_key,
    DROP CONSTRAINT target_populations_band_target_fkey,
    ADD CONSTRAINT target_populations_target_band_id_fkey
        FOREIGN KEY (target_band_id) REFERENCES target_bands (id) ON DELETE CASCADE;
ALTER TABLE target_populations DROP COLUMN target_id;
ALTER TABLE target_bands DROP CONSTRAINT target_bands_id_target_id_key;
ALTER TABLE targets DROP COLUMN populating_since;
