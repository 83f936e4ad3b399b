-- Drops the whole application schema (only safe on a throwaway or empty database).
DROP TABLE IF EXISTS ad_events, offers, bids, campaigns, target_populations,
    me_file_tags, me_files, target_band_trait_groups, target_bands, targets,
    trait_group_traits, trait_groups, traits;
