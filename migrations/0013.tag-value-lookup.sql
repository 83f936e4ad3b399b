-- me_file_tags' (trait_id, me_file_id) index carries tag_value, so a populate batch reads the
-- tags of its target's traits index-only: each tag's value goes into the row's inputs_hash.
-- Without it the planner read every tag of the batch's me_files through
-- (me_file_id, trait_id), the one index that carried the value, and kept the target's: about
-- twice the work, and nearly all of a no-op re-populate's time.
-- Built CONCURRENTLY, so tag writes go on: outside a transaction, one statement at a time.
-- The new index replaces the old one under the old name. Run again after a failure, it
-- starts over: the first statement drops what a failed run left under the new name.
-- transactional: false
-- depends: 0012.band-lookup

DROP INDEX CONCURRENTLY IF EXISTS public.me_file_tags_trait_id_me_file_id_value_idx;
CREATE INDEX CONCURRENTLY me_file_tags_trait_id_me_file_id_value_idx
    ON public.me_file_tags (trait_id, me_file_id) INCLUDE (tag_value);
DROP INDEX CONCURRENTLY IF EXISTS public.me_file_tags_trait_id_me_file_id_idx;
ALTER INDEX public.me_file_tags_trait_id_me_file_id_value_idx RENAME TO me_file_tags_trait_id_me_file_id_idx;
