-- The index without tag_value again, under its name; built CONCURRENTLY like the one it
-- replaces (statement by statement, the reverse of 0013's).
DROP INDEX CONCURRENTLY IF EXISTS public.me_file_tags_trait_id_me_file_id_plain_idx;
CREATE INDEX CONCURRENTLY me_file_tags_trait_id_me_file_id_plain_idx ON public.me_file_tags (trait_id, me_file_id);
DROP INDEX CONCURRENTLY IF EXISTS public.me_file_tags_trait_id_me_file_id_idx;
ALTER INDEX public.me_file_tags_trait_id_me_file_id_plain_idx RENAME TO me_file_tags_trait_id_me_file_id_idx;
