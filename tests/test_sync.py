"""Inline sync: tag writes and registrations keep populations up to date.

The rules are in docs/rules.md, "Freshness: what is maintained": statement
triggers on `me_file_tags` and `me_files` queue the changed (me_file, trait)
pairs and one deferred trigger per transaction brings those me_files up to
date at COMMIT, in the *maintained* targets (status populating or populated)
whose bands reference a changed trait. Populations stay fresh (a snapshot that
changes is rewritten in place), rows that do not change are not written at
all, and sync does not depend on campaigns.

Covers the three cases of Example 2 (tests/helpers.py) as whole JSON values,
sync's scope (the maintained targets, whatever their campaigns), one sync per
me_file per transaction on its final tags, registration, deletion,
transactions (rollback, savepoints, delete-then-insert), the explicit
`pgsnap.sync_me_file`, `pgsnap sync` on the command line, and one statement
changing the tags of 5,000 me_files. Sync racing populate is in
test_sync_concurrency.py.

Population rows are compared whole: (band, snapshot) per me_file, and where a
row must not be written, its physical version (xmin) as well.
"""

from __future__ import annotations

import psycopg
import pytest

from tests.helpers import (
    B1,
    B2,
    B3,
    CHESS,
    COOKING,
    FEMALE,
    G10,
    G20,
    G30,
    G40,
    HIKING,
    HOBBIES,
    ITALIAN,
    M1,
    M2,
    M3,
    M4,
    MALE,
    T1,
    T2,
    VIP,
    ZIP_02140,
    ZIP_10028,
    Model,
    add_me_file,
    add_target,
    copy_rows,
    execute,
    populate,
    populations,
    row_versions,
    row_versions_by_me_file,
    rows,
    seed_example_catalogue,
    seed_worked_example,
    set_tag_value,
    set_target_status,
    snapshot,
    sync_triggers_disabled,
    tag,
    tags,
    untag,
    value,
)

T3 = 3
B21, B31 = 21, 31
M5, M10, M11 = 5, 10, 11

# snapshot parts of the worked example (parent entries)
SEX_FEMALE = [1, "Sex (Biological)", 1, [[3, "Female", 2]]]
ZIP_BOSTON = [4, "Home Zip Code", 1, [[101, "02140", 2140]]]
HIKE, CHESS_ = [52, "Hiking", 1], [53, "Chess", 3]


def hobbies(*children):
    return [50, "Hobbies", 3, list(children)]


FEMALE_ONLY = snapshot(SEX_FEMALE)
FEMALE_BOSTON = snapshot(SEX_FEMALE, ZIP_BOSTON)

# Example 1 (the worked example of docs/rules.md): what T1 holds after populate
EXAMPLE_1_ROWS = {
    M1: (B1, snapshot(SEX_FEMALE, ZIP_BOSTON, hobbies(HIKE, CHESS_))),
    M2: (B2, FEMALE_BOSTON),
    M3: (B3, FEMALE_ONLY),
}


# --------------------------------------------------------------------------
# helpers of this file

RECOMPUTE_DIFF = """
WITH maintained AS (
    SELECT coalesce(array_agg(t.id), '{}') AS ids FROM targets t
     WHERE t.population_status IN ('populating', 'populated')
), members AS MATERIALIZED (
    SELECT m.target_id, m.target_band_id, m.me_file_id
      FROM maintained, pgsnap.memberships(maintained.ids) m
), expected AS (
    SELECT m.target_id, m.target_band_id, m.me_file_id,
           pgsnap.build_snapshot(m.me_file_id, m.target_band_id) AS snapshot
      FROM members m
), actual AS (
    SELECT b.target_id, p.target_band_id, p.me_file_id, p.matching_tags_snapshot AS snapshot
      FROM maintained, target_populations p
      JOIN target_bands b ON b.id = p.target_band_id
     WHERE b.target_id = ANY (maintained.ids)
)
SELECT 'missing' AS problem, x.* FROM (SELECT * FROM expected EXCEPT ALL SELECT * FROM actual) x
UNION ALL
SELECT 'unexpected', y.* FROM (SELECT * FROM actual EXCEPT ALL SELECT * FROM expected) y
ORDER BY 3, 4, 1
"""


def recompute_diff(conn) -> list[tuple]:
    """Rows of the maintained targets that differ from a from-scratch recomputation
    (pgsnap.memberships + pgsnap.build_snapshot for every pair): (problem, target,
    band, me_file, snapshot) for each; [] when everything is right."""
    if value(conn, "SELECT count(*) FROM target_populations") > 1000:
        execute(conn, "ANALYZE")  # big tables: cached plans fit for thousands of calls
    return rows(conn, RECOMPUTE_DIFF)


def queue_left(conn) -> tuple[int, int]:
    """(sync_queue rows, sync_pending rows) left behind by committed transactions."""
    return (value(conn, "SELECT count(*) FROM pgsnap.sync_queue"),
            value(conn, "SELECT count(*) FROM pgsnap.sync_pending"))


def assert_in_sync(conn) -> None:
    """Every maintained target equals its recomputation, and the queue is empty."""
    assert recompute_diff(conn) == []
    assert queue_left(conn) == (0, 0)


def sync_me_file(conn, me_file) -> int:
    return value(conn, "SELECT pgsnap.sync_me_file(%s::bigint)", (me_file,))


def populated_example(conn):
    """Example 1 (the worked example), T1 populated; returns T1's row versions by me_file."""
    seed_worked_example(conn)
    populate(conn, T1)
    assert populations(conn, T1) == EXAMPLE_1_ROWS
    return row_versions_by_me_file(conn, T1)


# Counts every write to target_populations: one row per written row, one per
# statement (a sync's statement runs one DELETE, one UPDATE and one INSERT). The sync writes
# as pgsnap_definer: the audit table is open to it.
AUDIT = """
CREATE TABLE public.test_tp_audit (
    seq bigint GENERATED ALWAYS AS IDENTITY, level text, op text, row_id bigint, xact xid8
);
GRANT INSERT ON public.test_tp_audit TO PUBLIC;
CREATE FUNCTION public.test_tp_audit_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.test_tp_audit (level, op, row_id, xact)
    VALUES ('row', TG_OP, CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END, pg_current_xact_id());
    RETURN NULL;
END $$;
CREATE FUNCTION public.test_tp_audit_statement() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.test_tp_audit (level, op, xact) VALUES ('statement', TG_OP, pg_current_xact_id());
    RETURN NULL;
END $$;
CREATE TRIGGER test_tp_audit_row AFTER INSERT OR UPDATE OR DELETE ON public.target_populations
    FOR EACH ROW EXECUTE FUNCTION public.test_tp_audit_row();
CREATE TRIGGER test_tp_audit_statement AFTER INSERT OR UPDATE OR DELETE ON public.target_populations
    FOR EACH STATEMENT EXECUTE FUNCTION public.test_tp_audit_statement();
"""


# the statements one sync runs on target_populations (sorted)
ONE_RECONCILE = ["DELETE", "INSERT", "UPDATE"]


def install_audit(conn) -> None:
    execute(conn, AUDIT)


def audit(conn) -> dict[str, list]:
    """{'row': [(op, row_id), ...], 'statement': [op, ...]} written since install/reset."""
    logged = rows(conn, "SELECT level, op, row_id FROM public.test_tp_audit ORDER BY seq")
    return {
        "row": [(op, row_id) for level, op, row_id in logged if level == "row"],
        "statement": [op for level, op, _ in logged if level == "statement"],
    }


def reset_audit(conn) -> None:
    execute(conn, "TRUNCATE public.test_tp_audit")


# --------------------------------------------------------------------------
# Example 2 (tests/helpers.py): a tag added, answers replaced, a last tag deleted, as whole rows


def test_example2a_tag_added_moves_me_file_inward(conn):
    """Example 2(a): M2 adds 52 "Hiking" → B1 with a fresh snapshot.
    pgsnap's move rewrites the one (T1, M2) row in place."""
    before = populated_example(conn)
    tag(conn, M2, HIKING, "Hiking")
    assert populations(conn, T1) == {
        **EXAMPLE_1_ROWS,
        M2: (B1, {"tags": [[1, "Sex (Biological)", 1, [[3, "Female", 2]]],
                           [4, "Home Zip Code", 1, [[101, "02140", 2140]]],
                           [50, "Hobbies", 3, [[52, "Hiking", 1]]]]}),
    }
    after = row_versions_by_me_file(conn, T1)
    assert (after[M2].id, after[M2].created_at) == (before[M2].id, before[M2].created_at)
    assert after[M2].updated_at > before[M2].updated_at
    assert {m: after[m] for m in (M1, M3)} == {m: before[m] for m in (M1, M3)}
    assert_in_sync(conn)


def test_example2b_answers_replaced_within_the_band_refresh_the_snapshot(conn):
    """Example 2(b): M1 replaces its Hobbies answers with only 53 "Chess"
    (delete every Hobbies tag, insert the new one, one transaction, as the app does).
    Still B1; unlike the original the snapshot is rewritten (no stale Hiking), in place."""
    before = populated_example(conn)
    with conn.transaction():
        execute(conn, "DELETE FROM me_file_tags t USING traits c"
                      " WHERE t.me_file_id = %s AND c.id = t.trait_id AND c.parent_trait_id = %s",
                (M1, HOBBIES))
        tag(conn, M1, CHESS, "Chess")
    assert populations(conn, T1) == {
        **EXAMPLE_1_ROWS,
        M1: (B1, {"tags": [[1, "Sex (Biological)", 1, [[3, "Female", 2]]],
                           [4, "Home Zip Code", 1, [[101, "02140", 2140]]],
                           [50, "Hobbies", 3, [[53, "Chess", 3]]]]}),
    }
    after = row_versions_by_me_file(conn, T1)
    assert (after[M1].id, after[M1].created_at) == (before[M1].id, before[M1].created_at)
    assert after[M1].updated_at > before[M1].updated_at
    assert {m: after[m] for m in (M2, M3)} == {m: before[m] for m in (M2, M3)}
    assert_in_sync(conn)


def test_example2c_last_matching_tag_deleted_deletes_the_row(conn):
    """Example 2(c): M3 deletes 3 "Female" → in no band of T1 → row gone."""
    before = populated_example(conn)
    untag(conn, M3, FEMALE)
    assert populations(conn, T1) == {M1: EXAMPLE_1_ROWS[M1], M2: EXAMPLE_1_ROWS[M2]}
    assert value(conn, "SELECT count(*) FROM target_populations WHERE me_file_id = %s", (M3,)) == 0
    after = row_versions_by_me_file(conn, T1)
    assert after == {m: before[m] for m in (M1, M2)}
    assert_in_sync(conn)


def test_example2_three_changes_in_sequence(conn):
    """(a), (b), (c) one after the other: T1 as whole rows after each step."""
    populated_example(conn)
    m2_b1 = (B1, snapshot(SEX_FEMALE, ZIP_BOSTON, hobbies(HIKE)))
    m1_chess = (B1, snapshot(SEX_FEMALE, ZIP_BOSTON, hobbies(CHESS_)))
    tag(conn, M2, HIKING, "Hiking")
    assert populations(conn, T1) == {M1: EXAMPLE_1_ROWS[M1], M2: m2_b1, M3: (B3, FEMALE_ONLY)}
    with conn.transaction():
        for trait in (COOKING, HIKING, CHESS):
            untag(conn, M1, trait)
        tag(conn, M1, CHESS, "Chess")
    assert populations(conn, T1) == {M1: m1_chess, M2: m2_b1, M3: (B3, FEMALE_ONLY)}
    untag(conn, M3, FEMALE)
    assert populations(conn, T1) == {M1: m1_chess, M2: m2_b1}
    assert_in_sync(conn)


def test_tag_deleted_moves_me_file_outward(conn):
    """M1 loses its zip: B1 → B3, fresh snapshot, same row."""
    before = populated_example(conn)
    untag(conn, M1, ZIP_02140)
    assert populations(conn, T1) == {**EXAMPLE_1_ROWS, M1: (B3, FEMALE_ONLY)}
    after = row_versions_by_me_file(conn, T1)
    assert (after[M1].id, after[M1].created_at) == (before[M1].id, before[M1].created_at)
    assert after[M1].updated_at > before[M1].updated_at
    assert_in_sync(conn)


def test_tag_deleted_moves_me_file_one_band_outward(conn):
    """M1 loses both Outdoorsy tags: B1 → B2."""
    populated_example(conn)
    with conn.transaction():
        untag(conn, M1, HIKING)
        untag(conn, M1, CHESS)
    assert populations(conn, T1) == {**EXAMPLE_1_ROWS, M1: (B2, FEMALE_BOSTON)}
    assert_in_sync(conn)


def test_tag_added_brings_a_non_member_in(conn):
    """M4 (Male, 02140) adds Female → enters B2 (new row)."""
    populated_example(conn)
    tag(conn, M4, FEMALE, "Female")
    assert populations(conn, T1) == {**EXAMPLE_1_ROWS, M4: (B2, FEMALE_BOSTON)}
    assert_in_sync(conn)


def test_zip_typed_differently_refreshes_the_snapshot_in_place(conn):
    """tag_value "02140" retyped as "2140": same band, same id and created_at, new
    updated_at and the new value in the snapshot; the other rows are not written."""
    before = populated_example(conn)
    set_tag_value(conn, M2, ZIP_02140, "2140")
    assert populations(conn, T1) == {
        **EXAMPLE_1_ROWS,
        M2: (B2, {"tags": [[1, "Sex (Biological)", 1, [[3, "Female", 2]]],
                           [4, "Home Zip Code", 1, [[101, "2140", 2140]]]]}),
    }
    after = row_versions_by_me_file(conn, T1)
    assert (after[M2].id, after[M2].created_at) == (before[M2].id, before[M2].created_at)
    assert after[M2].updated_at > before[M2].updated_at
    assert after[M2].xmin != before[M2].xmin
    assert {m: after[m] for m in (M1, M3)} == {m: before[m] for m in (M1, M3)}

    set_tag_value(conn, M2, ZIP_02140, "02140")  # corrected back
    assert populations(conn, T1) == EXAMPLE_1_ROWS
    assert row_versions_by_me_file(conn, T1)[M2].id == before[M2].id
    assert_in_sync(conn)


def test_blank_tag_value_showing_the_same_text_writes_nothing(conn):
    """A NULL or '' tag_value shows the trait's name (docs/rules.md): "02140"
    → NULL → '' leaves the snapshot identical, so the row is never rewritten."""
    before = populated_example(conn)
    set_tag_value(conn, M2, ZIP_02140, None)
    assert row_versions_by_me_file(conn, T1) == before
    set_tag_value(conn, M2, ZIP_02140, "")
    assert row_versions_by_me_file(conn, T1) == before
    assert_in_sync(conn)


def test_tag_value_change_outside_the_band_writes_nothing(conn):
    """M3's zip 10028 is not in B3's groups: retyping it changes no snapshot."""
    before = populated_example(conn)
    set_tag_value(conn, M3, ZIP_10028, "10028-1234")
    assert row_versions_by_me_file(conn, T1) == before
    assert_in_sync(conn)


def test_updated_at_only_change_queues_nothing(conn):
    """An UPDATE that leaves me_file, trait and value alone is not a change."""
    before = populated_example(conn)
    install_audit(conn)
    execute(conn, "UPDATE me_file_tags SET updated_at = now() + interval '1 day'")
    assert row_versions_by_me_file(conn, T1) == before
    assert audit(conn) == {"row": [], "statement": []}
    assert queue_left(conn) == (0, 0)


def test_trait_used_by_no_band_changes_nothing(conn):
    """Cooking (51) and VIP (60) are in no band of any target: adding, retyping,
    moving and deleting them writes no row version and runs no population write."""
    seed_worked_example(conn)
    add_target(conn, T2, bands=[(B21, [G10, G20], True)])
    populate(conn, T1)
    populate(conn, T2)
    before = row_versions(conn)
    install_audit(conn)
    tag(conn, M2, COOKING, "Cooking")
    tag(conn, M3, VIP, "yes")
    set_tag_value(conn, M1, COOKING, "Baking, really")
    execute(conn, "UPDATE me_file_tags SET me_file_id = %s WHERE me_file_id = %s AND trait_id = %s",
            (M4, M3, VIP))
    untag(conn, M1, COOKING)
    with conn.transaction():
        untag(conn, M2, COOKING)
        tag(conn, M2, COOKING, "Cooking again")
    assert row_versions(conn) == before  # every row: same id, xmin, snapshot, timestamps
    assert audit(conn) == {"row": [], "statement": []}
    assert populations(conn, T1) == EXAMPLE_1_ROWS
    assert_in_sync(conn)


def test_change_in_one_target_leaves_other_targets_rows_unwritten(conn):
    """M1 is in T1 (via Hiking) and T2 (band {G40} Italian). Dropping Hiking refreshes
    its T1 row only; its T2 row keeps its xmin (T2 references no changed trait)."""
    seed_worked_example(conn)
    add_target(conn, T2, bands=[(B21, [G40], True)])
    tag(conn, M1, ITALIAN, "Italian")
    populate(conn, T1)
    populate(conn, T2)
    before_t2 = row_versions_by_me_file(conn, T2)
    assert list(before_t2) == [M1]
    untag(conn, M1, HIKING)
    assert populations(conn, T1) == {
        **EXAMPLE_1_ROWS, M1: (B1, snapshot(SEX_FEMALE, ZIP_BOSTON, hobbies(CHESS_)))}
    assert row_versions_by_me_file(conn, T2) == before_t2
    assert_in_sync(conn)


def test_tag_moved_to_another_me_file_updates_both(conn):
    """UPDATE ... SET me_file_id: M3 loses Female (leaves T1), M4 gains it (enters B2)."""
    populated_example(conn)
    execute(conn, "UPDATE me_file_tags SET me_file_id = %s WHERE me_file_id = %s AND trait_id = %s",
            (M4, M3, FEMALE))
    assert populations(conn, T1) == {M1: EXAMPLE_1_ROWS[M1], M2: EXAMPLE_1_ROWS[M2],
                                     M4: (B2, FEMALE_BOSTON)}
    assert_in_sync(conn)


def test_trait_id_updated_moves_me_file(conn):
    """UPDATE ... SET trait_id: M2's zip 02140 → 10028 leaves B2 for B3."""
    before = populated_example(conn)
    execute(conn, "UPDATE me_file_tags SET trait_id = %s, tag_value = '10028'"
                  " WHERE me_file_id = %s AND trait_id = %s", (ZIP_10028, M2, ZIP_02140))
    assert populations(conn, T1) == {**EXAMPLE_1_ROWS, M2: (B3, FEMALE_ONLY)}
    assert row_versions_by_me_file(conn, T1)[M2].id == before[M2].id
    assert_in_sync(conn)


def test_upsert_of_a_tag_refreshes_the_snapshot(conn):
    """INSERT ... ON CONFLICT DO UPDATE (an application upsert) is seen as an update."""
    before = populated_example(conn)
    execute(conn, "INSERT INTO me_file_tags (me_file_id, trait_id, tag_value) VALUES (%s, %s, 'Chess!')"
                  " ON CONFLICT (me_file_id, trait_id) DO UPDATE SET tag_value = excluded.tag_value",
            (M1, CHESS))
    assert populations(conn, T1) == {
        **EXAMPLE_1_ROWS,
        M1: (B1, snapshot(SEX_FEMALE, ZIP_BOSTON, hobbies(HIKE, [53, "Chess!", 3])))}
    assert row_versions_by_me_file(conn, T1)[M1].id == before[M1].id
    assert_in_sync(conn)


def test_merge_into_tags_is_synced(conn):
    """MERGE (PostgreSQL 15) fires the same statement triggers: update, insert, delete."""
    populated_example(conn)
    execute(conn, """
        MERGE INTO me_file_tags t
        USING (VALUES (2::bigint, 52::bigint, 'Hiking'), (1, 53, 'CHESS')) AS v(m, trait, val)
           ON t.me_file_id = v.m AND t.trait_id = v.trait
         WHEN MATCHED THEN UPDATE SET tag_value = v.val
         WHEN NOT MATCHED THEN INSERT (me_file_id, trait_id, tag_value) VALUES (v.m, v.trait, v.val)""")
    assert populations(conn, T1) == {
        M1: (B1, snapshot(SEX_FEMALE, ZIP_BOSTON, hobbies(HIKE, [53, "CHESS", 3]))),
        M2: (B1, snapshot(SEX_FEMALE, ZIP_BOSTON, hobbies(HIKE))),
        M3: EXAMPLE_1_ROWS[M3],
    }
    execute(conn, "MERGE INTO me_file_tags t USING (VALUES (3::bigint, 3::bigint)) AS v(m, trait)"
                  " ON t.me_file_id = v.m AND t.trait_id = v.trait WHEN MATCHED THEN DELETE")
    assert sorted(populations(conn, T1)) == [M1, M2]
    assert_in_sync(conn)


def test_copy_into_tags_is_synced(conn):
    populated_example(conn)
    copy_rows(conn, "me_file_tags", ["me_file_id", "trait_id", "tag_value"],
              [(M4, FEMALE, "Female"), (M3, ZIP_02140, None)])
    assert populations(conn, T1) == {  # M3's NULL zip value shows the trait's name
        **EXAMPLE_1_ROWS,
        M3: (B1, snapshot(SEX_FEMALE, ZIP_BOSTON, hobbies(HIKE))),
        M4: (B2, FEMALE_BOSTON),
    }
    assert_in_sync(conn)


# --------------------------------------------------------------------------
# campaigns and statuses: the scope is the maintained targets


def test_target_without_active_campaign_keeps_its_rows(conn):
    """Sync does not depend on campaigns: T1 has only a deactivated campaign, T2 none at all.
    A tag change of M2 syncs M2 in both and deletes nobody's rows."""
    seed_worked_example(conn)
    add_target(conn, T2, bands=[(B21, [G10], True)])
    execute(conn, "INSERT INTO campaigns (target_id, title, launched_at, deactivated_at)"
                  " VALUES (%s, 'old campaign', now() - interval '2 days', now() - interval '1 day')", (T1,))
    populate(conn, T1)
    populate(conn, T2)
    tag(conn, M2, HIKING, "Hiking")
    assert populations(conn, T1) == {
        **EXAMPLE_1_ROWS, M2: (B1, snapshot(SEX_FEMALE, ZIP_BOSTON, hobbies(HIKE)))}
    assert populations(conn, T2) == {M1: (B21, FEMALE_ONLY), M2: (B21, FEMALE_ONLY),
                                     M3: (B21, FEMALE_ONLY)}
    assert sync_me_file(conn, M2) == 0
    assert sync_me_file(conn, M1) == 0
    assert_in_sync(conn)


def test_not_populated_target_never_gains_rows(conn):
    """T1 never populated: tag changes, a registration and an explicit sync leave it empty."""
    seed_worked_example(conn)
    tag(conn, M2, HIKING, "Hiking")
    tag(conn, M4, FEMALE, "Female")
    with conn.transaction():
        add_me_file(conn, M10)
        tags(conn, M10, {FEMALE: "Female", ZIP_02140: "02140"})
    assert [sync_me_file(conn, m) for m in (M1, M2, M3, M4, M10)] == [0, 0, 0, 0, 0]
    assert value(conn, "SELECT count(*) FROM target_populations") == 0
    assert queue_left(conn) == (0, 0)


def test_not_populated_target_is_left_alone_next_to_a_populated_one(conn):
    """T1 populated, T2 (same groups) not: only T1 follows the change."""
    seed_worked_example(conn)
    add_target(conn, T2, bands=[(B21, [G10, G20], True)])
    populate(conn, T1)
    tag(conn, M4, FEMALE, "Female")
    assert populations(conn, T1) == {**EXAMPLE_1_ROWS, M4: (B2, FEMALE_BOSTON)}
    assert populations(conn, T2) == {}
    assert_in_sync(conn)


def test_target_set_back_to_not_populated_is_not_synced(conn):
    """Sync leaves a not_populated target alone (its rows too)."""
    before = populated_example(conn)
    set_target_status(conn, T1, "not_populated")
    untag(conn, M3, FEMALE)
    tag(conn, M2, HIKING, "Hiking")
    assert row_versions_by_me_file(conn, T1) == before
    assert sync_me_file(conn, M3) == 0


def test_populating_target_gains_rows(conn):
    """A target whose populate is under way (status populating) is maintained."""
    seed_worked_example(conn)
    set_target_status(conn, T1, "populating")
    tag(conn, M2, HIKING, "Hiking")
    assert populations(conn, T1) == {M2: (B1, snapshot(SEX_FEMALE, ZIP_BOSTON, hobbies(HIKE)))}
    tag(conn, M4, FEMALE, "Female")
    assert populations(conn, T1) == {M2: (B1, snapshot(SEX_FEMALE, ZIP_BOSTON, hobbies(HIKE))),
                                     M4: (B2, FEMALE_BOSTON)}
    untag(conn, M2, FEMALE)
    assert populations(conn, T1) == {M4: (B2, FEMALE_BOSTON)}


def test_target_without_bands_is_ignored(conn):
    """A maintained target with no bands references no trait: nothing to do, no error."""
    populated_example(conn)
    add_target(conn, T2)
    set_target_status(conn, T2, "populated")
    tag(conn, M4, FEMALE, "Female")
    assert populations(conn, T1) == {**EXAMPLE_1_ROWS, M4: (B2, FEMALE_BOSTON)}
    assert sync_me_file(conn, M4) == 0


# --------------------------------------------------------------------------
# once per me_file per transaction, on the final state of its tags


def test_three_tag_statements_in_one_transaction_write_the_row_once(conn):
    """Debounce: three statements touching M2 in one transaction →
    one _reconcile at COMMIT, one new version of M2's row, on the final tags."""
    before = populated_example(conn)
    install_audit(conn)
    with conn.transaction():
        tag(conn, M2, HIKING, "Hiking")
        set_tag_value(conn, M2, ZIP_02140, "2140")
        tag(conn, M2, CHESS, "Chess")
    assert populations(conn, T1) == {
        **EXAMPLE_1_ROWS,
        M2: (B1, snapshot(SEX_FEMALE, [4, "Home Zip Code", 1, [[101, "2140", 2140]]],
                          hobbies(HIKE, CHESS_)))}
    logged = audit(conn)
    assert logged["row"] == [("UPDATE", before[M2].id)]
    assert sorted(logged["statement"]) == ONE_RECONCILE
    after = row_versions_by_me_file(conn, T1)
    assert after[M2].xmin != before[M2].xmin
    assert {m: after[m] for m in (M1, M3)} == {m: before[m] for m in (M1, M3)}
    assert_in_sync(conn)


def test_many_statements_over_several_me_files_sync_once_set_based(conn):
    """Nine statements over four me_files in one transaction: one set-based pass."""
    before = populated_example(conn)
    install_audit(conn)
    with conn.transaction():
        tag(conn, M2, HIKING, "Hiking")
        untag(conn, M3, FEMALE)
        tag(conn, M4, FEMALE, "Female")
        set_tag_value(conn, M1, CHESS, "chess")
        tag(conn, M3, MALE, "Male")
        untag(conn, M4, MALE)
        set_tag_value(conn, M1, CHESS, "Chess")  # back: M1's row ends unchanged
        set_tag_value(conn, M2, ZIP_02140, "02140!")
        set_tag_value(conn, M2, ZIP_02140, "02140")
    assert populations(conn, T1) == {
        M1: EXAMPLE_1_ROWS[M1],
        M2: (B1, snapshot(SEX_FEMALE, ZIP_BOSTON, hobbies(HIKE))),
        M4: (B2, FEMALE_BOSTON),
    }
    logged = audit(conn)
    assert sorted(logged["statement"]) == ONE_RECONCILE
    m4_id = row_versions_by_me_file(conn, T1)[M4].id
    assert sorted(logged["row"]) == sorted([("DELETE", before[M3].id), ("UPDATE", before[M2].id),
                                            ("INSERT", m4_id)])
    assert row_versions_by_me_file(conn, T1)[M1] == before[M1]
    assert_in_sync(conn)


def test_delete_then_insert_of_the_same_tags_leaves_rows_untouched(conn):
    """A rewrite of a me_file's tags inside one transaction keeps
    the population rows (id, created_at, updated_at and xmin: no new version)."""
    seed_worked_example(conn)
    add_target(conn, T2, bands=[(B21, [G10, G30], True)])
    populate(conn, T1)
    populate(conn, T2)
    before = row_versions(conn)
    install_audit(conn)
    for me_file in (M1, M2, M3):
        held = rows(conn, "SELECT trait_id, tag_value FROM me_file_tags WHERE me_file_id = %s"
                          " ORDER BY trait_id DESC", (me_file,))
        with conn.transaction():
            execute(conn, "DELETE FROM me_file_tags WHERE me_file_id = %s", (me_file,))
            for trait, tag_value in held:
                tag(conn, me_file, trait, tag_value)
    assert row_versions(conn) == before
    logged = audit(conn)
    assert logged["row"] == []
    assert sorted(logged["statement"]) == sorted(ONE_RECONCILE * 3)  # one pass per transaction
    assert_in_sync(conn)


def test_delete_then_insert_of_one_parent_keeps_rows(conn):
    """The app's replace of one parent's answers (Hobbies) with the same answers."""
    before = populated_example(conn)
    with conn.transaction():
        execute(conn, "DELETE FROM me_file_tags WHERE me_file_id = %s AND trait_id IN (51, 52, 53)",
                (M1,))
        tags(conn, M1, {CHESS: "Chess", COOKING: "Cooking", HIKING: "Hiking"})
    assert row_versions_by_me_file(conn, T1) == before
    assert_in_sync(conn)


def test_nothing_is_visible_before_commit_and_rollback_leaves_nothing(conn, new_conn):
    """The work happens at COMMIT: a rolled-back transaction changes no row and
    leaves no queue entry behind."""
    before = populated_example(conn)
    writer = new_conn(autocommit=False)
    tag(writer, M2, HIKING, "Hiking")
    untag(writer, M3, FEMALE)
    assert row_versions_by_me_file(conn, T1) == before
    writer.rollback()
    assert row_versions_by_me_file(conn, T1) == before
    assert_in_sync(conn)


def test_changes_of_a_rolled_back_savepoint_are_not_synced(conn):
    """Savepoints: the change before the savepoint and the one after the rollback
    to it are synced; the rolled-back one is not."""
    populated_example(conn)
    with conn.transaction():
        tag(conn, M4, FEMALE, "Female")
        with pytest.raises(psycopg.errors.RaiseException):
            with conn.transaction():  # savepoint
                untag(conn, M1, FEMALE)
                execute(conn, "DO $$ BEGIN RAISE EXCEPTION 'undo'; END $$")
        tag(conn, M2, HIKING, "Hiking")
    assert populations(conn, T1) == {
        **EXAMPLE_1_ROWS,
        M2: (B1, snapshot(SEX_FEMALE, ZIP_BOSTON, hobbies(HIKE))),
        M4: (B2, FEMALE_BOSTON),
    }
    assert_in_sync(conn)


def test_savepoint_rolled_back_with_the_first_change_still_syncs_later_ones(conn):
    """The first queued change of the transaction is rolled back with its savepoint;
    a later change in the same transaction is still synced at COMMIT."""
    populated_example(conn)
    with conn.transaction():
        with pytest.raises(psycopg.errors.RaiseException):
            with conn.transaction():
                untag(conn, M1, FEMALE)
                execute(conn, "DO $$ BEGIN RAISE EXCEPTION 'undo'; END $$")
        tag(conn, M4, FEMALE, "Female")
    assert populations(conn, T1) == {**EXAMPLE_1_ROWS, M4: (B2, FEMALE_BOSTON)}
    assert_in_sync(conn)


def test_constraints_set_immediate_syncs_each_statement(conn):
    """SET CONSTRAINTS ALL IMMEDIATE runs the drain after each statement; a second
    change later in the same transaction is still synced."""
    populated_example(conn)
    with conn.transaction():
        execute(conn, "SET CONSTRAINTS ALL IMMEDIATE")
        tag(conn, M2, HIKING, "Hiking")
        assert populations(conn, T1)[M2] == (B1, snapshot(SEX_FEMALE, ZIP_BOSTON, hobbies(HIKE)))
        untag(conn, M2, ZIP_02140)
    assert populations(conn, T1) == {**EXAMPLE_1_ROWS, M2: (B3, FEMALE_ONLY)}
    assert_in_sync(conn)


# --------------------------------------------------------------------------
# registration and deletion of me_files


def test_registration_with_tags_has_populations_at_commit(conn, new_conn):
    """A new me_file and its tags in one transaction: rows in every maintained target
    when it commits, nothing visible from another connection before."""
    seed_worked_example(conn)
    add_target(conn, T2, bands=[(B21, [G10], True)])
    populate(conn, T1)
    populate(conn, T2)
    before = row_versions(conn)
    app = new_conn(autocommit=False)
    execute(app, "INSERT INTO me_files (id, display_name) VALUES (%s, 'new member')", (M10,))
    execute(app, "INSERT INTO me_file_tags (me_file_id, trait_id, tag_value)"
                 " VALUES (%s, %s, 'Female'), (%s, %s, '02140'), (%s, %s, 'Chess')",
            (M10, FEMALE, M10, ZIP_02140, M10, CHESS))
    assert row_versions(conn) == before
    assert value(conn, "SELECT count(*) FROM target_populations WHERE me_file_id = %s", (M10,)) == 0
    app.commit()
    assert populations(conn, T1) == {
        **EXAMPLE_1_ROWS, M10: (B1, snapshot(SEX_FEMALE, ZIP_BOSTON, hobbies(CHESS_)))}
    assert populations(conn, T2) == {M1: (B21, FEMALE_ONLY), M2: (B21, FEMALE_ONLY),
                                     M3: (B21, FEMALE_ONLY), M10: (B21, FEMALE_ONLY)}
    assert {i: v for i, v in row_versions(conn).items() if i in before} == before
    assert_in_sync(conn)


def test_registration_without_tags_creates_no_row(conn):
    before = populated_example(conn)
    add_me_file(conn, M10)
    assert row_versions_by_me_file(conn, T1) == before
    tag(conn, M10, FEMALE, "Female")  # later, in its own transaction
    assert populations(conn, T1) == {**EXAMPLE_1_ROWS, M10: (B3, FEMALE_ONLY)}
    assert_in_sync(conn)


def test_bulk_registration_in_one_transaction(conn):
    """200 me_files and their tags inserted set-based in one transaction."""
    populated_example(conn)
    with conn.transaction():
        execute(conn, "INSERT INTO me_files (id) SELECT g FROM generate_series(100, 299) g")
        execute(conn, """
            INSERT INTO me_file_tags (me_file_id, trait_id, tag_value)
            SELECT g, CASE WHEN g % 2 = 0 THEN 3 ELSE 2 END, NULL FROM generate_series(100, 299) g
            UNION ALL
            SELECT g, CASE WHEN g % 3 = 0 THEN 102 ELSE 101 END, 'z' || g FROM generate_series(100, 299) g
            UNION ALL
            SELECT g, 52 + g % 2, '' FROM generate_series(100, 299) g WHERE g % 5 <> 0""")
    expected = Model.load(conn).populations(T1)
    assert populations(conn, T1) == expected
    assert len(expected) == 103  # M1..M3 + the 100 Female me_files
    assert_in_sync(conn)


def test_deleted_me_file_takes_its_populations_along(conn):
    seed_worked_example(conn)
    add_target(conn, T2, bands=[(B21, [G10], True)])
    populate(conn, T1)
    populate(conn, T2)
    before = row_versions(conn)
    execute(conn, "DELETE FROM me_files WHERE id = %s", (M1,))
    assert populations(conn, T1) == {M2: EXAMPLE_1_ROWS[M2], M3: EXAMPLE_1_ROWS[M3]}
    assert populations(conn, T2) == {M2: (B21, FEMALE_ONLY), M3: (B21, FEMALE_ONLY)}
    assert row_versions(conn) == {i: v for i, v in before.items() if v.me_file_id != M1}
    assert_in_sync(conn)


def test_me_file_changed_then_deleted_in_one_transaction(conn):
    """Its queued changes must not resurrect or trip over the deleted me_file."""
    before = populated_example(conn)
    with conn.transaction():
        tag(conn, M2, HIKING, "Hiking")
        untag(conn, M1, HIKING)
        execute(conn, "DELETE FROM me_files WHERE id = %s", (M2,))
    assert populations(conn, T1) == {
        M1: (B1, snapshot(SEX_FEMALE, ZIP_BOSTON, hobbies(CHESS_))), M3: EXAMPLE_1_ROWS[M3]}
    assert row_versions_by_me_file(conn, T1)[M3] == before[M3]
    assert_in_sync(conn)


def test_me_file_registered_and_deleted_in_one_transaction(conn):
    before = populated_example(conn)
    with conn.transaction():
        tags(conn, M10, {FEMALE: "Female"})
        execute(conn, "DELETE FROM me_files WHERE id = %s", (M10,))
    assert row_versions_by_me_file(conn, T1) == before
    assert_in_sync(conn)


# --------------------------------------------------------------------------
# pgsnap.sync_me_file


def stale_example(conn):
    """Example 1 in T1 and T2 (band 21 {G10}), both populated; T3 (band 31 {G10})
    not populated. Then, with the triggers off: M2 adds Hiking, M1 drops Female,
    M4 adds Female, M3's Female is retyped "F"."""
    seed_worked_example(conn)
    add_target(conn, T2, bands=[(B21, [G10], True)])
    add_target(conn, T3, bands=[(B31, [G10], True)])
    populate(conn, T1)
    populate(conn, T2)
    add_me_file(conn, M5)
    stale = row_versions(conn)
    with sync_triggers_disabled(conn):
        tag(conn, M2, HIKING, "Hiking")
        untag(conn, M1, FEMALE)
        tag(conn, M4, FEMALE, "Female")
        set_tag_value(conn, M3, FEMALE, "F")
    assert row_versions(conn) == stale
    return stale


FRESH_T1 = {
    M2: (B1, snapshot(SEX_FEMALE, ZIP_BOSTON, hobbies(HIKE))),
    M3: (B3, snapshot([1, "Sex (Biological)", 1, [[3, "F", 2]]])),
    M4: (B2, FEMALE_BOSTON),
}
FRESH_T2 = {
    M2: (B21, FEMALE_ONLY),
    M3: (B21, snapshot([1, "Sex (Biological)", 1, [[3, "F", 2]]])),
    M4: (B21, FEMALE_ONLY),
}


def test_sync_me_file_returns_the_rows_changed(conn):
    """M2: moved in T1, unchanged in T2 → 1. M1: deleted from T1 and T2 → 2.
    M4: inserted into T1 and T2 → 2. M3: refreshed in T1 and T2 → 2. M5: no tags → 0.
    A second call finds nothing to do; the not_populated T3 stays empty."""
    stale = stale_example(conn)
    assert [sync_me_file(conn, m) for m in (M2, M1, M4, M3, M5)] == [1, 2, 2, 2, 0]
    assert populations(conn, T1) == FRESH_T1
    assert populations(conn, T2) == FRESH_T2
    assert populations(conn, T3) == {}
    assert [sync_me_file(conn, m) for m in (M1, M2, M3, M4, M5)] == [0, 0, 0, 0, 0]
    after = row_versions(conn)
    m2_t2 = next(v for v in stale.values() if (v.me_file_id, v.target_band_id) == (M2, B21))
    assert after[m2_t2.id] == m2_t2  # unchanged row not written
    m2_t1 = next(v for v in stale.values() if (v.me_file_id, v.target_band_id) == (M2, B2))
    assert after[m2_t1.id].target_band_id == B1  # moved in place
    assert_in_sync(conn)


def test_sync_me_file_agrees_with_a_fresh_populate(conn):
    stale_example(conn)
    for me_file in (M1, M2, M3, M4):
        sync_me_file(conn, me_file)
    synced_by_hand = (populations(conn, T1), populations(conn, T2))
    execute(conn, "TRUNCATE target_populations")
    for target in (T1, T2):
        populate(conn, target)
    assert (populations(conn, T1), populations(conn, T2)) == synced_by_hand


def test_sync_me_file_unknown_id_is_an_error(conn):
    seed_worked_example(conn)
    populate(conn, T1)
    before = row_versions(conn)
    with pytest.raises(psycopg.errors.NoDataFound) as caught:
        sync_me_file(conn, 999)
    assert caught.value.sqlstate == "P0002"
    assert caught.value.diag.message_primary == "me_file 999 does not exist"
    with pytest.raises(psycopg.errors.NoDataFound) as caught:
        sync_me_file(conn, None)
    assert caught.value.diag.message_primary == "me_file NULL does not exist"
    assert row_versions(conn) == before


def test_sync_me_file_inside_a_transaction_is_rolled_back_with_it(conn, new_conn):
    stale = stale_example(conn)
    caller = new_conn(autocommit=False)
    assert sync_me_file(caller, M1) == 2
    assert value(caller, "SELECT count(*) FROM target_populations WHERE me_file_id = %s", (M1,)) == 0
    caller.rollback()
    assert row_versions(conn) == stale


# --------------------------------------------------------------------------
# CLI: pgsnap sync ME_FILE_ID...


def test_cli_sync_prints_one_line_per_me_file(conn, cli):
    stale_example(conn)
    result = cli("sync", M2, M1, M5)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "me_file 2: 1 population rows changed",
        "me_file 1: 2 population rows changed",
        "me_file 5: 0 population rows changed",
    ]
    assert result.stderr == ""
    assert populations(conn, T1)[M2] == FRESH_T1[M2]
    assert M1 not in populations(conn, T2)


def test_cli_sync_again_changes_nothing(conn, cli):
    populated_example(conn)
    result = cli("sync", M1, M2, M3, M4)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [f"me_file {m}: 0 population rows changed"
                                          for m in (M1, M2, M3, M4)]


def test_cli_sync_unknown_me_file_is_one_line_error(conn, cli):
    populated_example(conn)
    result = cli("sync", 999)
    assert result.exit_code == 2  # not found
    assert result.stdout == ""
    assert result.stderr == "error: P0002: me_file 999 does not exist\n"


def test_cli_sync_stops_at_the_first_unknown_me_file(conn, cli):
    """Me_files before the unknown one are synced (and reported), none after it."""
    stale = stale_example(conn)
    result = cli("sync", M2, 999, M1)
    assert result.exit_code == 2  # not found
    assert result.stdout == "me_file 2: 1 population rows changed\n"
    assert result.stderr == "error: P0002: me_file 999 does not exist\n"
    assert populations(conn, T1)[M2] == FRESH_T1[M2]
    m1_rows = {i for i, v in stale.items() if v.me_file_id == M1}
    assert {i: row_versions(conn)[i] for i in m1_rows} == {i: stale[i] for i in m1_rows}


def test_cli_sync_without_ids_is_a_usage_error(conn, cli):
    result = cli("sync")
    assert result.exit_code == 2
    assert "Missing argument" in result.stderr


# --------------------------------------------------------------------------
# one statement changing the tags of 5,000 me_files

N_BULK = 6000


def seed_bulk(conn):
    """Example catalogue; T1 (B1 ⊃ B2 ⊃ B3), T2 (band 21 {G30}) populated; T3 (band 31
    {G10}) not. Me_file m: Female if m % 3 else Male; zip 02140 if m % 2 else 10028;
    Cooking for m <= 5000, Hiking above (never both)."""
    seed_example_catalogue(conn)
    add_target(conn, T1, bands=[(B1, [G10, G20, G30], True), (B2, [G10, G20]), (B3, [G10])])
    add_target(conn, T2, bands=[(B21, [G30], True)])
    add_target(conn, T3, bands=[(B31, [G10], True)])
    with conn.transaction():
        execute(conn, "INSERT INTO me_files (id) SELECT g FROM generate_series(1, %s) g", (N_BULK,))
        execute(conn, """
            INSERT INTO me_file_tags (me_file_id, trait_id, tag_value)
            SELECT g, CASE WHEN g %% 3 = 0 THEN 2 ELSE 3 END,
                   CASE WHEN g %% 3 = 0 THEN 'Male' ELSE 'Female' END
              FROM generate_series(1, %(n)s) g
            UNION ALL
            SELECT g, CASE WHEN g %% 2 = 1 THEN 101 ELSE 102 END,
                   CASE WHEN g %% 2 = 1 THEN '02140' ELSE '10028' END
              FROM generate_series(1, %(n)s) g
            UNION ALL
            SELECT g, CASE WHEN g <= 5000 THEN 51 ELSE 52 END,
                   CASE WHEN g <= 5000 THEN 'Cooking' ELSE 'Hiking' END
              FROM generate_series(1, %(n)s) g""", {"n": N_BULK})
    populate(conn, T1)
    populate(conn, T2)
    assert_in_sync(conn)


def population_summary(conn) -> dict:
    return dict(rows(conn, "SELECT target_band_id, count(*) FROM target_populations GROUP BY 1"))


def test_one_update_of_5000_me_files_tags(conn):
    """One UPDATE turns Cooking into Hiking (m % 4 <> 0) or Chess (m % 4 = 0) for
    me_files 1..5000, with a new value for some: Female+02140 ones move B2 → B1,
    every one enters T2, Hiking holders above 5000 are untouched. The whole table
    equals the recomputation; the work is one set-based pass."""
    seed_bulk(conn)
    before = row_versions(conn)
    assert population_summary(conn) == {B1: 333, B2: 1667, B3: 2000, B21: 1000}
    install_audit(conn)
    execute(conn, """
        UPDATE me_file_tags
           SET trait_id = CASE WHEN me_file_id % 4 = 0 THEN 53 ELSE 52 END,
               tag_value = CASE WHEN me_file_id % 10 = 0 THEN NULL
                                WHEN me_file_id % 4 = 0 THEN 'Chess' ELSE 'Hiking' END
         WHERE trait_id = 51""")
    assert value(conn, "SELECT count(DISTINCT me_file_id) FROM me_file_tags WHERE trait_id IN (52, 53)"
                       " AND me_file_id <= 5000") == 5000
    assert_in_sync(conn)
    assert population_summary(conn) == {B1: 2000, B3: 2000, B21: N_BULK}
    model = Model.load(conn)
    assert (populations(conn, T1), populations(conn, T2)) == (model.populations(T1), model.populations(T2))
    logged = audit(conn)
    assert sorted(logged["statement"]) == ONE_RECONCILE
    ops = [op for op, _ in logged["row"]]
    assert (ops.count("UPDATE"), ops.count("INSERT"), ops.count("DELETE")) == (1667, 5000, 0)
    # B3 rows (10028) do not show the hobby: not written
    b3_before = {i: v for i, v in before.items() if v.target_band_id == B3}
    after = row_versions(conn)
    assert {i: after[i] for i in b3_before} == b3_before
    assert value(conn, "SELECT count(*) FROM target_populations WHERE target_id = %s", (T3,)) == 0


def test_one_insert_select_and_one_delete_over_5000_me_files(conn):
    """INSERT ... SELECT of 5,000 Chess tags, then one DELETE of 5,000 sex tags."""
    seed_bulk(conn)
    execute(conn, "INSERT INTO me_file_tags (me_file_id, trait_id, tag_value)"
                  " SELECT g, 53, 'Chess' FROM generate_series(1001, 6000) g")
    assert_in_sync(conn)
    assert population_summary(conn) == {B1: 1667, B2: 333, B3: 2000, B21: 5000}
    execute(conn, "DELETE FROM me_file_tags WHERE trait_id IN (2, 3) AND me_file_id > 1000")
    assert_in_sync(conn)
    assert population_summary(conn) == {B2: 333, B3: 334, B21: 5000}
    assert populations(conn, T1) == Model.load(conn).populations(T1)
