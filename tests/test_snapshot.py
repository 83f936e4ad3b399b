"""pgsnap.build_snapshot and the snapshots populate writes (docs/rules.md, "The snapshot").

Examples 1 and 3 (tests/helpers.py; Example 1 is the worked example of docs/rules.md) as whole
JSON values, and the snapshot's edge cases under pgsnap's rules: a NULL or '' tag_value shows
the child trait's name; parents are ordered by (display_order, id), children by
(display_order, trait id).
"""

from __future__ import annotations

import psycopg
import pytest

from tests.helpers import (
    B1,
    B2,
    B3,
    B9,
    CHESS,
    COOKING,
    EMPTY_SNAPSHOT,
    G30,
    G40,
    G41,
    G50,
    HIKING,
    HOBBIES,
    ITALIAN,
    M1,
    M2,
    M3,
    M4,
    T1,
    T2,
    THAI,
    VIP,
    ZIP_02140,
    ZIP_10028,
    add_group,
    add_target,
    add_trait,
    build_snapshot,
    populate,
    populations,
    rename_trait,
    rows,
    seed_example_catalogue,
    seed_worked_example,
    snapshot,
    tag,
    tags,
    value,
)

M5 = 5

# The expected snapshots of the worked example (docs/rules.md), verbatim.
M1_B1 = {"tags": [[1, "Sex (Biological)", 1, [[3, "Female", 2]]],
                  [4, "Home Zip Code", 1, [[101, "02140", 2140]]],
                  [50, "Hobbies", 3, [[52, "Hiking", 1], [53, "Chess", 3]]]]}
M2_B2 = {"tags": [[1, "Sex (Biological)", 1, [[3, "Female", 2]]],
                  [4, "Home Zip Code", 1, [[101, "02140", 2140]]]]}
M3_B3 = {"tags": [[1, "Sex (Biological)", 1, [[3, "Female", 2]]]]}
# Example 3
M5_B9 = {"tags": [[200, "Cuisine", 7, [[201, "Italian", 4], [202, "Thai", 9]]]]}


def seed_example_3(conn, groups=(G40, G41, G50)):
    """Target T2 with the single band B9 and me_file M5 of Example 3."""
    add_target(conn, T2, bands=[(B9, list(groups), True)])
    tags(conn, M5, {ITALIAN: "Italian", THAI: "Thai", VIP: "yes", ZIP_10028: None})


# --------------------------------------------------------------------------
# Example 1: the worked example of docs/rules.md


def test_example1_m1_bullseye_snapshot(conn):
    seed_worked_example(conn)
    assert build_snapshot(conn, M1, B1) == M1_B1


def test_example1_m2_ring_snapshot(conn):
    seed_worked_example(conn)
    assert build_snapshot(conn, M2, B2) == M2_B2


def test_example1_m3_outer_ring_snapshot_excludes_zip_and_hiking(conn):
    seed_worked_example(conn)
    assert build_snapshot(conn, M3, B3) == M3_B3


def test_example1_populated_snapshots_equal_build_snapshot(conn):
    seed_worked_example(conn)
    populate(conn, T1)
    assert populations(conn, T1) == {M1: (B1, M1_B1), M2: (B2, M2_B2), M3: (B3, M3_B3)}


def test_example1_snapshot_jsonb_text_rendering(conn):
    """Maintenance tools pattern-match on PostgreSQL's jsonb rendering of the snapshot."""
    seed_worked_example(conn)
    populate(conn, T1)
    text = value(
        conn,
        "SELECT matching_tags_snapshot::text FROM target_populations"
        " WHERE me_file_id = %s AND target_band_id = %s",
        (M2, B2),
    )
    assert text == (
        '{"tags": [[1, "Sex (Biological)", 1, [[3, "Female", 2]]],'
        ' [4, "Home Zip Code", 1, [[101, "02140", 2140]]]]}'
    )


def test_build_snapshot_does_not_require_membership(conn):
    """M4 is in no band of T1; its snapshot for B1 still lists its matching zip."""
    seed_worked_example(conn)
    assert build_snapshot(conn, M4, B1) == snapshot([4, "Home Zip Code", 1, [[101, "02140", 2140]]])


# --------------------------------------------------------------------------
# Example 3: groups under one parent, a parentless trait, a NULL tag_value


def test_example3_groups_under_one_parent_merge_into_one_entry(conn):
    seed_example_catalogue(conn)
    seed_example_3(conn)
    assert build_snapshot(conn, M5, B9) == M5_B9


def test_example3_populated_row(conn):
    seed_example_catalogue(conn)
    seed_example_3(conn)
    populate(conn, T2)
    assert populations(conn, T2) == {M5: (B9, M5_B9)}


def test_example3_band_of_parentless_trait_gives_empty_snapshot(conn):
    """B9 = {G50} (VIP, no parent): M5 matches, its snapshot is {"tags": []}."""
    seed_example_catalogue(conn)
    seed_example_3(conn, groups=[G50])
    assert build_snapshot(conn, M5, B9) == EMPTY_SNAPSHOT
    populate(conn, T2)
    assert populations(conn, T2) == {M5: (B9, EMPTY_SNAPSHOT)}


def test_example3_null_tag_value_shows_trait_name(conn):
    """A band with G20' = {102}; M5's tag 102 has a NULL value → "10028"."""
    seed_example_catalogue(conn)
    add_group(conn, 21, [ZIP_10028])
    seed_example_3(conn, groups=[21])
    expected = snapshot([4, "Home Zip Code", 1, [[102, "10028", 10028]]])
    assert build_snapshot(conn, M5, B9) == expected
    populate(conn, T2)
    assert populations(conn, T2) == {M5: (B9, expected)}


def test_parentless_trait_counts_for_membership_but_never_appears(conn):
    """VIP (no parent) is what places M5 in B9 {G40, G50}; it is not in the snapshot."""
    seed_example_catalogue(conn)
    seed_example_3(conn, groups=[G40, G50])
    populate(conn, T2)
    assert populations(conn, T2) == {
        M5: (B9, snapshot([200, "Cuisine", 7, [[201, "Italian", 4]]]))
    }


# --------------------------------------------------------------------------
# tag_value (docs/rules.md, "The snapshot")


def one_zip_band(conn, zip_trait=ZIP_02140):
    seed_example_catalogue(conn)
    add_group(conn, 22, [zip_trait])
    add_target(conn, T1, bands=[(B1, [22], True)])


def test_tag_value_null_shows_trait_name(conn):
    one_zip_band(conn)
    tag(conn, M1, ZIP_02140, None)
    expected = snapshot([4, "Home Zip Code", 1, [[101, "02140", 2140]]])
    assert build_snapshot(conn, M1, B1) == expected
    populate(conn, T1)
    assert populations(conn, T1) == {M1: (B1, expected)}


def test_tag_value_blank_shows_trait_name(conn):
    one_zip_band(conn)
    tag(conn, M1, ZIP_02140, "")
    expected = snapshot([4, "Home Zip Code", 1, [[101, "02140", 2140]]])
    assert build_snapshot(conn, M1, B1) == expected
    populate(conn, T1)
    assert populations(conn, T1) == {M1: (B1, expected)}


def test_tag_value_whitespace_is_not_blank(conn):
    """Only NULL or an empty string fall back to the trait name."""
    one_zip_band(conn)
    tag(conn, M1, ZIP_02140, " ")
    assert build_snapshot(conn, M1, B1) == snapshot([4, "Home Zip Code", 1, [[101, " ", 2140]]])


def test_tag_value_is_taken_from_the_tag_not_the_trait(conn):
    one_zip_band(conn)
    tag(conn, M1, ZIP_02140, "02140-1234")
    assert build_snapshot(conn, M1, B1) == snapshot(
        [4, "Home Zip Code", 1, [[101, "02140-1234", 2140]]]
    )


def test_zip_tag_value_keeps_its_leading_zero_as_a_string(conn):
    one_zip_band(conn)
    tag(conn, M1, ZIP_02140, "02140")
    populate(conn, T1)
    child = value(
        conn,
        "SELECT matching_tags_snapshot #> '{tags,0,3,0,1}' FROM target_populations"
        " WHERE me_file_id = %s",
        (M1,),
    )
    assert child == "02140"


def test_renaming_child_trait_keeps_tag_value_in_snapshot(conn):
    one_zip_band(conn)
    tag(conn, M1, ZIP_02140, "02140")
    populate(conn, T1)
    rename_trait(conn, ZIP_02140, "Cambridge")
    expected = snapshot([4, "Home Zip Code", 1, [[101, "02140", 2140]]])
    assert build_snapshot(conn, M1, B1) == expected
    populate(conn, T1)
    assert populations(conn, T1) == {M1: (B1, expected)}


def test_null_tag_value_follows_the_trait_name_at_build_time(conn):
    one_zip_band(conn)
    tag(conn, M1, ZIP_02140, None)
    rename_trait(conn, ZIP_02140, "02140 (Cambridge)")
    assert build_snapshot(conn, M1, B1) == snapshot(
        [4, "Home Zip Code", 1, [[101, "02140 (Cambridge)", 2140]]]
    )


def test_names_and_values_are_json_escaped(conn):
    add_trait(conn, 1, 'Say "hi"\\ é ☃', order=1)
    add_trait(conn, 2, "child", parent=1, order=1)
    add_group(conn, 10, [2])
    add_target(conn, T1, bands=[(B1, [10], True)])
    tag(conn, M1, 2, 'a "quoted" \\ value\nnext line')
    expected = snapshot([1, 'Say "hi"\\ é ☃', 1, [[2, 'a "quoted" \\ value\nnext line', 1]]])
    assert build_snapshot(conn, M1, B1) == expected
    populate(conn, T1)
    assert populations(conn, T1) == {M1: (B1, expected)}


# --------------------------------------------------------------------------
# filters: which tags go into the snapshot


def test_tags_of_same_parent_outside_the_band_are_excluded(conn):
    """Cooking is a Hobbies child but not in G30 {Hiking, Chess}."""
    seed_example_catalogue(conn)
    add_target(conn, T1, bands=[(B1, [G30], True)])
    tags(conn, M1, {COOKING: "Cooking", CHESS: "Chess"})
    assert build_snapshot(conn, M1, B1) == snapshot([50, "Hobbies", 3, [[53, "Chess", 3]]])


def test_all_matching_tags_are_kept_not_one_per_group(conn):
    seed_example_catalogue(conn)
    add_target(conn, T1, bands=[(B1, [G30], True)])
    tags(conn, M1, {CHESS: "Chess", HIKING: "Hiking"})
    assert build_snapshot(conn, M1, B1) == snapshot(
        [50, "Hobbies", 3, [[52, "Hiking", 1], [53, "Chess", 3]]]
    )


def test_parent_trait_row_cannot_be_missing(conn):
    """Children of a missing parent cannot happen in pgsnap: traits.parent_trait_id
    is a foreign key, so the parent row always exists."""
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        add_trait(conn, 2, "orphan", parent=999)


def test_parent_trait_cannot_be_deleted_while_it_has_children(conn):
    add_trait(conn, 1, "parent")
    add_trait(conn, 2, "child", parent=1)
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        rows(conn, "DELETE FROM traits WHERE id = 1")


def test_tag_on_a_parent_trait_itself_never_appears(conn):
    """A parent (NULL parent_trait_id) in a group counts but is not shown."""
    seed_example_catalogue(conn)
    add_group(conn, 23, [HOBBIES, HIKING])
    add_target(conn, T1, bands=[(B1, [23], True)])
    tags(conn, M1, {HOBBIES: "yes"})
    tags(conn, M2, {HOBBIES: "yes", HIKING: "Hiking"})
    populate(conn, T1)
    assert populations(conn, T1) == {
        M1: (B1, EMPTY_SNAPSHOT),
        M2: (B1, snapshot([50, "Hobbies", 3, [[52, "Hiking", 1]]])),
    }


def test_grandchild_is_listed_under_its_immediate_parent(conn):
    """Only one level counts: a trait's own parent_trait_id names its entry."""
    add_trait(conn, 1, "Region", order=1)
    add_trait(conn, 2, "New England", parent=1, order=1)
    add_trait(conn, 3, "Massachusetts", parent=2, order=4)
    add_group(conn, 10, [3])
    add_target(conn, T1, bands=[(B1, [10], True)])
    tag(conn, M1, 3, "MA")
    assert build_snapshot(conn, M1, B1) == snapshot([2, "New England", 1, [[3, "MA", 4]]])


# --------------------------------------------------------------------------
# ordering


def test_parents_with_equal_display_order_are_ordered_by_id(conn):
    """Parents 1 and 4 of the worked example share display_order 1; created 4 first."""
    add_trait(conn, 4, "Home Zip Code", order=1)
    add_trait(conn, 1, "Sex (Biological)", order=1)
    add_trait(conn, 101, "02140", parent=4, order=2140)
    add_trait(conn, 3, "Female", parent=1, order=2)
    add_group(conn, 10, [101, 3])
    add_target(conn, T1, bands=[(B1, [10], True)])
    tags(conn, M1, {101: "02140", 3: "Female"})
    assert build_snapshot(conn, M1, B1) == snapshot(
        [1, "Sex (Biological)", 1, [[3, "Female", 2]]],
        [4, "Home Zip Code", 1, [[101, "02140", 2140]]],
    )


def test_parents_are_ordered_by_display_order_before_id(conn):
    add_trait(conn, 1, "late", order=9)
    add_trait(conn, 2, "early", order=-3)
    add_trait(conn, 11, "a", parent=1)
    add_trait(conn, 12, "b", parent=2)
    add_group(conn, 10, [11, 12])
    add_target(conn, T1, bands=[(B1, [10], True)])
    tags(conn, M1, {11: "x", 12: "y"})
    assert build_snapshot(conn, M1, B1) == snapshot(
        [2, "early", -3, [[12, "y", 0]]],
        [1, "late", 9, [[11, "x", 0]]],
    )


def test_children_with_equal_display_order_are_ordered_by_trait_id(conn):
    add_trait(conn, 1, "Hobbies", order=1)
    for trait_id in (30, 10, 20):
        add_trait(conn, trait_id, f"h{trait_id}", parent=1, order=5)
    add_group(conn, 10, [30, 10, 20])
    add_target(conn, T1, bands=[(B1, [10], True)])
    for trait_id in (30, 10, 20):  # tag rows written out of id order
        tag(conn, M1, trait_id, f"v{trait_id}")
    assert build_snapshot(conn, M1, B1) == snapshot(
        [1, "Hobbies", 1, [[10, "v10", 5], [20, "v20", 5], [30, "v30", 5]]]
    )


def test_children_are_ordered_by_display_order_before_trait_id(conn):
    seed_example_catalogue(conn)
    add_target(conn, T1, bands=[(B1, [G30], True)])
    tags(conn, M1, {CHESS: "Chess", HIKING: "Hiking"})
    # Hiking (52) has display_order 1, Chess (53) 3
    rows(conn, "UPDATE traits SET display_order = 7 WHERE id = %s", (HIKING,))
    assert build_snapshot(conn, M1, B1) == snapshot(
        [50, "Hobbies", 3, [[53, "Chess", 3], [52, "Hiking", 7]]]
    )


# --------------------------------------------------------------------------
# empty, never NULL


def test_snapshot_of_me_file_without_tags_is_empty(conn):
    seed_worked_example(conn)
    rows(conn, "INSERT INTO me_files (id) VALUES (77)")
    assert build_snapshot(conn, 77, B1) == EMPTY_SNAPSHOT


def test_snapshot_for_band_without_groups_is_empty(conn):
    seed_worked_example(conn)
    add_target(conn, 5, bands=[(50, [])])
    assert build_snapshot(conn, M1, 50) == EMPTY_SNAPSHOT


def test_snapshot_for_band_whose_group_has_no_traits_is_empty(conn):
    seed_worked_example(conn)
    add_group(conn, 99, [])
    add_target(conn, 5, bands=[(50, [99])])
    assert build_snapshot(conn, M1, 50) == EMPTY_SNAPSHOT


def test_populate_never_writes_null_snapshots(conn):
    seed_worked_example(conn)
    seed_example_3(conn, groups=[G50])
    populate(conn, T1)
    populate(conn, T2)
    assert value(conn, "SELECT count(*) FROM target_populations") == 4
    assert value(
        conn, "SELECT count(*) FROM target_populations WHERE matching_tags_snapshot IS NULL"
    ) == 0
    assert value(
        conn,
        "SELECT count(*) FROM target_populations WHERE matching_tags_snapshot = %s::jsonb",
        ('{"tags": []}',),
    ) == 1


def test_population_snapshot_cannot_be_null(conn):
    """NOT NULL enforced by PostgreSQL on populations (docs/rules.md, "What the database enforces")."""
    seed_worked_example(conn)
    with pytest.raises(psycopg.errors.IntegrityError):
        rows(
            conn,
            "INSERT INTO target_populations (target_band_id, me_file_id, matching_tags_snapshot)"
            " VALUES (%s, %s, NULL)",
            (B3, M1),
        )


@pytest.mark.parametrize("bad", ['{}', '{"tags": {}}', '[]', '{"tags": null}', '"tags"'])
def test_population_snapshot_shape_is_checked(conn, bad):
    """A CHECK that the value is an object whose tags is an array (docs/rules.md, "The snapshot")."""
    seed_worked_example(conn)
    with pytest.raises(psycopg.errors.CheckViolation):
        rows(
            conn,
            "INSERT INTO target_populations (target_band_id, me_file_id, matching_tags_snapshot)"
            " VALUES (%s, %s, %s::jsonb)",
            (B3, M1, bad),
        )


def test_build_snapshot_is_stable_across_calls(conn):
    seed_worked_example(conn)
    first = rows(conn, "SELECT pgsnap.build_snapshot(%s, %s)::text", (M1, B1))
    again = rows(conn, "SELECT pgsnap.build_snapshot(%s, %s)::text", (M1, B1))
    assert first == again
