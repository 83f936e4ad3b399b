"""The membership rule of docs/rules.md ("Membership"), against pgsnap.band_for and populate.

Edge cases of membership under pgsnap's rules: one rule for every path, a
band with no groups matches nobody, equal-rank ties go to the bullseye then
to the lowest band id, non-nested bands use the satisfied band with the most
groups, one row per (target, me_file) enforced by the database.

The last test is property-based: random small catalogues, populate every
target, compare the table with the pure-Python model of tests/helpers.py.
"""

from __future__ import annotations

import os
import random

import psycopg
import pytest
from hypothesis import HealthCheck, event, given, seed, settings
from hypothesis import strategies as st

from tests.helpers import (
    B1,
    B2,
    B3,
    CHESS,
    COOKING,
    EMPTY_SNAPSHOT,
    FEMALE,
    G10,
    G30,
    HIKING,
    HOBBIES,
    M1,
    M2,
    M3,
    M4,
    MALE,
    T1,
    ZIP_02140,
    Model,
    add_band_group,
    add_group,
    add_group_trait,
    add_me_file,
    add_target,
    add_trait,
    band_for,
    execute,
    populate,
    populations,
    row_versions,
    rows,
    seed_example_catalogue,
    seed_worked_example,
    snapshot,
    sync_triggers_disabled,
    tag,
    tags,
    target_status,
    truncate_app_tables,
)

FEMALE_ONLY = snapshot([1, "Sex (Biological)", 1, [[3, "Female", 2]]])


# --------------------------------------------------------------------------
# groups: AND across, OR within


def test_and_across_groups_or_within_group(conn):
    """Band {G10={3}, G30={52,53}}: 3+53 is in, 52+53 is not."""
    seed_example_catalogue(conn)
    add_target(conn, T1, bands=[(B1, [G10, G30], True)])
    tags(conn, M1, {FEMALE: "Female", CHESS: "Chess"})
    tags(conn, M2, {HIKING: "Hiking", CHESS: "Chess"})
    assert band_for(conn, M1, T1) == B1
    assert band_for(conn, M2, T1) is None
    populate(conn, T1)
    assert populations(conn, T1) == {
        M1: (B1, snapshot([1, "Sex (Biological)", 1, [[3, "Female", 2]]],
                          [50, "Hobbies", 3, [[53, "Chess", 3]]])),
    }


def test_two_tags_from_one_group_never_satisfy_two_groups(conn):
    """Regression aa918f9d: band {Ga={x,y}, Gb={z}}, tags x and y → not in band."""
    add_trait(conn, 1, "P")
    for trait_id in (11, 12, 13):
        add_trait(conn, trait_id, f"t{trait_id}", parent=1)
    add_group(conn, 100, [11, 12])
    add_group(conn, 200, [13])
    add_target(conn, T1, bands=[(B1, [100, 200], True)])
    tags(conn, M1, {11: "x", 12: "y"})
    assert band_for(conn, M1, T1) is None
    populate(conn, T1)
    assert populations(conn, T1) == {}


def test_membership_is_by_exact_trait_id_without_parent_expansion(conn):
    """A tag on the parent 'Hobbies' does not satisfy G30 = {Hiking, Chess}."""
    seed_example_catalogue(conn)
    add_target(conn, T1, bands=[(B1, [G30], True)])
    tags(conn, M1, {HOBBIES: "Hiking", COOKING: "Cooking"})
    assert band_for(conn, M1, T1) is None


def test_tag_value_is_irrelevant_for_membership(conn):
    seed_example_catalogue(conn)
    add_target(conn, T1, bands=[(B1, [G10], True)])
    tags(conn, M1, {FEMALE: None})
    tags(conn, M2, {FEMALE: ""})
    tags(conn, M3, {FEMALE: "Male"})
    populate(conn, T1)
    assert populations(conn, T1) == {M1: (B1, FEMALE_ONLY), M2: (B1, FEMALE_ONLY),
                                     M3: (B1, snapshot([1, "Sex (Biological)", 1,
                                                        [[3, "Male", 2]]]))}


def test_inactive_traits_and_deactivated_groups_still_count(conn):
    seed_example_catalogue(conn)
    add_target(conn, T1, bands=[(B1, [G10], True)])
    tags(conn, M1, {FEMALE: "Female"})
    execute(conn, "UPDATE traits SET is_active = false")
    execute(conn, "UPDATE trait_groups SET deactivated_at = now()")
    assert band_for(conn, M1, T1) == B1
    populate(conn, T1)
    assert populations(conn, T1) == {M1: (B1, FEMALE_ONLY)}


# --------------------------------------------------------------------------
# one band per target


def test_innermost_band_wins_one_row_per_target(conn):
    """Example 1, M1: satisfies B3, B2 and B1 → only the bullseye row."""
    seed_worked_example(conn)
    assert band_for(conn, M1, T1) == B1
    populate(conn, T1)
    assert [(m, b) for m, b, _ in rows(
        conn, "SELECT me_file_id, target_band_id, 0 FROM target_populations WHERE me_file_id = %s",
        (M1,))] == [(M1, B1)]


def test_example1_band_for_every_me_file(conn):
    seed_worked_example(conn)
    assert [band_for(conn, m, T1) for m in (M1, M2, M3, M4)] == [B1, B2, B3, None]


def test_me_file_in_several_targets_has_one_row_in_each(conn):
    seed_worked_example(conn)
    add_target(conn, 2, bands=[(21, [G30], True)])
    add_target(conn, 3, bands=[(31, [G10]), (32, [G10, G30], True)])
    for target in (T1, 2, 3):
        populate(conn, target)
    hobbies = snapshot([50, "Hobbies", 3, [[52, "Hiking", 1], [53, "Chess", 3]]])
    assert populations(conn, 2) == {
        M1: (21, hobbies),
        M3: (21, snapshot([50, "Hobbies", 3, [[52, "Hiking", 1]]])),
    }
    assert populations(conn, 3) == {
        M1: (32, snapshot([1, "Sex (Biological)", 1, [[3, "Female", 2]]],
                          [50, "Hobbies", 3, [[52, "Hiking", 1], [53, "Chess", 3]]])),
        M2: (31, FEMALE_ONLY),
        M3: (32, snapshot([1, "Sex (Biological)", 1, [[3, "Female", 2]]],
                          [50, "Hobbies", 3, [[52, "Hiking", 1]]])),
    }
    assert sorted(populations(conn, T1)) == [M1, M2, M3]


# --------------------------------------------------------------------------
# degenerate bands and groups


def test_zero_group_band_matches_nobody(conn):
    """Deliberate difference: the original put every tagged me_file there."""
    seed_example_catalogue(conn)
    add_target(conn, T1, bands=[(B1, [G10], True), (B2, [])])
    tags(conn, M1, {FEMALE: "Female"})
    tags(conn, M2, {MALE: "Male"})
    assert band_for(conn, M2, T1) is None
    populate(conn, T1)
    assert populations(conn, T1) == {M1: (B1, FEMALE_ONLY)}
    assert target_status(conn, T1)[0] == "populated"


def test_target_with_only_a_zero_group_band_is_populated_and_empty(conn):
    seed_example_catalogue(conn)
    add_target(conn, T1, bands=[(B1, [], True)])
    tags(conn, M1, {FEMALE: "Female"})
    populate(conn, T1)
    assert populations(conn, T1) == {}
    assert target_status(conn, T1)[0] == "populated"


def test_group_with_zero_traits_is_never_satisfied(conn):
    seed_example_catalogue(conn)
    add_group(conn, 99, [])
    add_target(conn, T1, bands=[(B1, [99], True)])
    tags(conn, M1, {FEMALE: "Female"})
    assert band_for(conn, M1, T1) is None
    populate(conn, T1)
    assert populations(conn, T1) == {}


def test_group_with_zero_traits_in_outermost_band_empties_the_target(conn):
    """UI-nested bands all contain the outer ring's groups: every band fails,
    every existing row of the target is deleted, the target is populated."""
    seed_worked_example(conn)
    populate(conn, T1)
    assert len(populations(conn, T1)) == 3
    add_group(conn, 99, [])
    for band in (B1, B2, B3):
        add_band_group(conn, band, 99)
    populate(conn, T1)
    assert populations(conn, T1) == {}
    assert target_status(conn, T1)[0] == "populated"


def test_group_with_zero_traits_only_in_bullseye_keeps_me_files_in_rings(conn):
    seed_worked_example(conn)
    add_group(conn, 99, [])
    add_band_group(conn, B1, 99)
    populate(conn, T1)
    assert populations(conn, T1) == {
        M1: (B2, snapshot([1, "Sex (Biological)", 1, [[3, "Female", 2]]],
                          [4, "Home Zip Code", 1, [[101, "02140", 2140]]])),
        M2: (B2, snapshot([1, "Sex (Biological)", 1, [[3, "Female", 2]]],
                          [4, "Home Zip Code", 1, [[101, "02140", 2140]]])),
        M3: (B3, FEMALE_ONLY),
    }


def test_group_gaining_a_trait_becomes_satisfiable(conn):
    seed_example_catalogue(conn)
    add_group(conn, 99, [])
    add_target(conn, T1, bands=[(B1, [99], True)])
    tags(conn, M1, {FEMALE: "Female"})
    populate(conn, T1)
    assert populations(conn, T1) == {}
    add_group_trait(conn, 99, FEMALE)
    populate(conn, T1)
    assert populations(conn, T1) == {M1: (B1, FEMALE_ONLY)}


# --------------------------------------------------------------------------
# ranks, ties and non-nested bands (docs/rules.md, "Membership")


def equal_rank_target(conn, bullseye_band):
    """Bands 5 {G10} and 7 {G30}, both rank 1; `bullseye_band` is the bullseye."""
    seed_example_catalogue(conn)
    add_target(conn, T1, bands=[(5, [G10], bullseye_band == 5), (7, [G30], bullseye_band == 7)])
    tags(conn, M1, {FEMALE: "Female", CHESS: "Chess"})


def test_equal_rank_bands_tie_goes_to_bullseye(conn):
    equal_rank_target(conn, bullseye_band=7)
    assert band_for(conn, M1, T1) == 7
    populate(conn, T1)
    assert populations(conn, T1) == {M1: (7, snapshot([50, "Hobbies", 3, [[53, "Chess", 3]]]))}


def test_equal_rank_bands_without_bullseye_tie_goes_to_lowest_band_id(conn):
    equal_rank_target(conn, bullseye_band=None)
    assert band_for(conn, M1, T1) == 5
    populate(conn, T1)
    assert populations(conn, T1) == {M1: (5, FEMALE_ONLY)}


def test_equal_rank_bullseyes_tie_goes_to_lowest_band_id(conn):
    seed_example_catalogue(conn)
    add_target(conn, T1, bands=[(8, [G30], True), (6, [G10], True)])
    tags(conn, M1, {FEMALE: "Female", CHESS: "Chess"})
    assert band_for(conn, M1, T1) == 6


def test_more_groups_beat_the_bullseye_flag(conn):
    seed_example_catalogue(conn)
    add_target(conn, T1, bands=[(5, [G10], True), (7, [G10, G30])])
    tags(conn, M1, {FEMALE: "Female", CHESS: "Chess"})
    assert band_for(conn, M1, T1) == 7


def test_non_nested_bands_use_the_satisfied_band_with_most_groups(conn):
    """Ring {A}, bullseye {B, C}; me_file has B and C but not A → bullseye
    (the original's bottom-up populate found no band)."""
    add_trait(conn, 1, "P", order=1)
    for trait_id in (11, 12, 13):
        add_trait(conn, trait_id, f"t{trait_id}", parent=1, order=trait_id)
    add_group(conn, 100, [11])
    add_group(conn, 200, [12])
    add_group(conn, 300, [13])
    add_target(conn, T1, bands=[(B1, [200, 300], True), (B2, [100])])
    tags(conn, M1, {12: "b", 13: "c"})
    tags(conn, M2, {11: "a"})
    assert band_for(conn, M1, T1) == B1
    populate(conn, T1)
    assert populations(conn, T1) == {
        M1: (B1, snapshot([1, "P", 1, [[12, "b", 12], [13, "c", 13]]])),
        M2: (B2, snapshot([1, "P", 1, [[11, "a", 11]]])),
    }


def test_bands_sharing_a_group_across_targets(conn):
    seed_example_catalogue(conn)
    add_target(conn, 1, bands=[(1, [G10], True)])
    add_target(conn, 2, bands=[(2, [G10], True)])
    tags(conn, M1, {FEMALE: "Female"})
    populate(conn, 1)
    populate(conn, 2)
    assert populations(conn, 1) == {M1: (1, FEMALE_ONLY)}
    assert populations(conn, 2) == {M1: (2, FEMALE_ONLY)}


# --------------------------------------------------------------------------
# me_files and tags


def test_me_file_without_tags_is_in_no_band(conn):
    seed_worked_example(conn)
    add_me_file(conn, 77)
    assert band_for(conn, 77, T1) is None
    populate(conn, T1)
    assert 77 not in populations(conn, T1)


def test_band_for_unknown_me_file_is_null(conn):
    seed_worked_example(conn)
    assert band_for(conn, 12345, T1) is None


def test_duplicate_tag_rows_are_rejected(conn):
    """pgsnap has UNIQUE (me_file_id, trait_id) on me_file_tags instead of
    duplicate child entries."""
    seed_example_catalogue(conn)
    tag(conn, M1, FEMALE, "Female")
    with pytest.raises(psycopg.errors.UniqueViolation):
        tag(conn, M1, FEMALE, "Female again")


# --------------------------------------------------------------------------
# one row per (target, me_file), enforced by the database


def test_second_row_for_same_target_and_me_file_is_a_unique_violation(conn):
    seed_worked_example(conn)
    execute(
        conn,
        "INSERT INTO target_populations (target_band_id, me_file_id, matching_tags_snapshot)"
        " VALUES (%s, %s, %s::jsonb)",
        (B3, M1, '{"tags": []}'),
    )
    with pytest.raises(psycopg.errors.UniqueViolation):
        execute(
            conn,
            "INSERT INTO target_populations (target_band_id, me_file_id, matching_tags_snapshot)"
            " VALUES (%s, %s, %s::jsonb)",
            (B2, M1, '{"tags": []}'),
        )


def test_same_me_file_may_have_rows_in_two_targets(conn):
    seed_worked_example(conn)
    add_target(conn, 2, bands=[(21, [G10], True)])
    for band in (B3, 21):
        execute(
            conn,
            "INSERT INTO target_populations (target_band_id, me_file_id, matching_tags_snapshot)"
            " VALUES (%s, %s, %s::jsonb)",
            (band, M1, '{"tags": []}'),
        )
    assert len(row_versions(conn)) == 2


# --------------------------------------------------------------------------
# property: populate == the pure-Python model of docs/rules.md (tests/helpers.py)

TAG_VALUES = st.one_of(
    st.none(),
    st.just(""),
    st.text(alphabet='ab Z9"\\é', min_size=1, max_size=4),
)


@st.composite
def scenarios(draw):
    """A random small world: catalogue, targets, me_files, tags, and a tag rewrite. Biased toward
    what matters: most tags are on traits the bands use, most targets have two bands or more, bands
    of one target often have as many groups as another, and half the time one me_file holds every
    trait the bands use (equal-rank ties, decided by the bullseye flag, then the band id)."""
    n_traits = draw(st.integers(1, 9))
    trait_ids = list(range(1, n_traits + 1))
    traits = []
    for trait_id in trait_ids:
        parent = draw(st.none() | st.integers(1, trait_id - 1)) if trait_id > 1 else None
        traits.append((trait_id, f"trait {trait_id}", parent, draw(st.integers(-1, 2))))

    # worlds without groups or me_files have tests of their own: here every draw has some
    n_groups = draw(st.integers(1, 5))
    groups = {
        100 + g: draw(st.sets(st.sampled_from(trait_ids), min_size=draw(st.sampled_from([0, 1, 1, 1])),
                              max_size=3))
        for g in range(n_groups)
    }

    n_targets = draw(st.integers(1, 3))
    n_bands = [draw(st.sampled_from([2, 3, 2, 3, 1, 0])) for _ in range(n_targets)]   # mostly 2 or 3
    band_ids = draw(st.permutations(range(1, sum(n_bands) + 1)))  # ids not in creation order
    targets, position = {}, 0
    for target_id in range(1, n_targets + 1):
        bands = []
        for _ in range(n_bands[target_id - 1]):
            kind = draw(st.sampled_from([0, 1, 2, 3, 0, 1])) if bands else 3
            if kind == 0:     # the same groups as an earlier band: every member of one is in both
                band_groups = set(bands[draw(st.integers(0, len(bands) - 1))][1])
            elif kind == 1:   # as many groups as an earlier band
                size = len(bands[draw(st.integers(0, len(bands) - 1))][1])
                band_groups = set(draw(st.permutations(sorted(groups)))[:size]) if groups else set()
            else:
                band_groups = (
                    draw(st.sets(st.sampled_from(sorted(groups)), max_size=3)) if groups else set()
                )
            bands.append((band_ids[position], sorted(band_groups), draw(st.booleans())))
            position += 1
        targets[target_id] = bands

    used = sorted({t for bands in targets.values() for _, gs, _ in bands for g in gs for t in groups[g]})
    tag_traits = st.sampled_from(used) | st.sampled_from(used) | st.sampled_from(trait_ids) if used \
        else st.sampled_from(trait_ids)
    n_me_files = draw(st.integers(1, 6))
    me_file_tags = {
        m: draw(st.dictionaries(tag_traits, TAG_VALUES, max_size=5))
        for m in range(1, n_me_files + 1)
    }
    if used and me_file_tags and draw(st.booleans()):
        # one me_file holds every trait the bands use: it satisfies each band anybody can, so
        # the bands of a target that share the top rank tie on it
        me_file_tags[1] = {trait_id: draw(TAG_VALUES) for trait_id in used}
    rewritten = {  # replaced tag sets; n_me_files + 1 is a new me_file
        m: draw(st.dictionaries(tag_traits, TAG_VALUES, max_size=5))
        for m in draw(st.sets(st.integers(1, n_me_files + 1), max_size=3))
    }
    batch_size = draw(st.sampled_from([1, 2, 3, 500]))
    return traits, groups, targets, me_file_tags, rewritten, batch_size


def load_scenario(conn, traits, groups, targets, me_file_tags):
    # parents are set after every trait exists, so insertion order is free
    for trait_id, name, _parent, order in reversed(traits):
        add_trait(conn, trait_id, name, order=order)
    for trait_id, _name, parent, _order in traits:
        if parent is not None:
            execute(conn, "UPDATE traits SET parent_trait_id = %s WHERE id = %s", (parent, trait_id))
    for group_id, members in groups.items():
        add_group(conn, group_id, sorted(members, reverse=True))
    for target_id, bands in targets.items():
        add_target(conn, target_id, bands=bands)
    for me_file, values in me_file_tags.items():
        add_me_file(conn, me_file)
        for trait_id, tag_value in sorted(values.items(), reverse=True):
            tag(conn, me_file, trait_id, tag_value)


def assert_matches_model(conn, targets):
    model = Model.load(conn)
    for target_id in targets:
        assert populations(conn, target_id) == model.populations(target_id), f"target {target_id}"
        assert target_status(conn, target_id)[0] == model.status_after_populate(target_id)
    for me_file, target_id, band in rows(
        conn,
        "SELECT m.id, t.id, pgsnap.band_for(m.id, t.id) FROM me_files m CROSS JOIN targets t",
    ):
        assert band == model.band_for(me_file, target_id), f"band_for({me_file}, {target_id})"
    for me_file, band, snap in rows(
        conn,
        "SELECT m.id, b.id, pgsnap.build_snapshot(m.id, b.id)"
        " FROM me_files m CROSS JOIN target_bands b",
    ):
        assert snap == model.snapshot(me_file, band), f"build_snapshot({me_file}, {band})"
    return model


def cases(model, targets):
    """What an example exercised: rows at all, and ties between satisfied bands of equal rank
    decided by the bullseye flag or by the band id."""
    found = set()
    for target_id in targets:
        if model.populations(target_id):
            found.add("rows")
        for me_file in model.me_files:
            satisfied = [b for b in model.bands_of(target_id) if model.satisfies_band(me_file, b.id)]
            top = max((len(b.groups) for b in satisfied), default=None)
            tied = [b for b in satisfied if len(b.groups) == top]
            if len(tied) > 1:
                found.add("tie decided by the bullseye" if len({b.is_bullseye for b in tied}) > 1
                          else "tie decided by the band id")
    return found


# CI explores: a new seed every run (printed, to reproduce one), more examples than locally
SEED = int(os.environ.get("PGSNAP_HYPOTHESIS_SEED") or random.randrange(2**32))
EXAMPLES = 150 if os.environ.get("CI") else 100


def test_populate_matches_the_model_for_random_catalogues(conn):
    print(f"hypothesis seed {SEED}: rerun with PGSNAP_HYPOTHESIS_SEED={SEED}")
    reached = set()

    @seed(SEED)
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(scenario=scenarios())
    def check(scenario):
        traits, groups, targets, me_file_tags, rewritten, batch_size = scenario
        truncate_app_tables(conn)
        load_scenario(conn, traits, groups, targets, me_file_tags)

        for target_id in targets:
            populate(conn, target_id, batch_size)
        before_model = assert_matches_model(conn, targets)
        before = row_versions(conn)

        # rewrite some me_files' tags behind populate's back, then repair
        with sync_triggers_disabled(conn):
            for me_file, values in rewritten.items():
                add_me_file(conn, me_file)
                execute(conn, "DELETE FROM me_file_tags WHERE me_file_id = %s", (me_file,))
                for trait_id, tag_value in values.items():
                    tag(conn, me_file, trait_id, tag_value)
        for target_id in targets:
            populate(conn, target_id, batch_size)
        after_model = assert_matches_model(conn, targets)
        for case in cases(before_model, targets) | cases(after_model, targets):
            event(case)
            reached.add(case)

        # rows whose band and snapshot did not change were not written at all
        after = row_versions(conn)
        for target_id in targets:
            was, now = before_model.populations(target_id), after_model.populations(target_id)
            for me_file in was.keys() & now.keys():
                if was[me_file] == now[me_file]:
                    (old,) = [v for v in before.values() if v.me_file_id == me_file
                              and v.target_band_id == was[me_file][0]]
                    assert after.get(old.id) == old, f"me_file {me_file} target {target_id} rewritten"

    check()
    # the cases that matter were reached, or the strategies have drifted into trivia
    assert reached == {"rows", "tie decided by the bullseye", "tie decided by the band id"}, reached


def test_model_reproduces_example_1(conn):
    """The reference model itself agrees with the worked example of docs/rules.md."""
    seed_worked_example(conn)
    model = Model.load(conn)
    assert model.populations(T1) == {
        M1: (B1, snapshot([1, "Sex (Biological)", 1, [[3, "Female", 2]]],
                          [4, "Home Zip Code", 1, [[101, "02140", 2140]]],
                          [50, "Hobbies", 3, [[52, "Hiking", 1], [53, "Chess", 3]]])),
        M2: (B2, snapshot([1, "Sex (Biological)", 1, [[3, "Female", 2]]],
                          [4, "Home Zip Code", 1, [[101, "02140", 2140]]])),
        M3: (B3, FEMALE_ONLY),
    }
    assert model.snapshot(M4, B3) == EMPTY_SNAPSHOT
    assert ZIP_02140 in model.tags[M4]
