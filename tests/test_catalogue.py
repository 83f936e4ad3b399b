"""The catalogue (docs/rules.md, "Catalogue changes", "Tiers, counts, definitions"):

* every kind of catalogue edit marks the maintained targets it affects as stale (membership or
  snapshot), launch_campaign waits for a membership edit's re-population, the scheduled job
  re-populates, and only the rows whose band or snapshot changed are rewritten;
* target_bands.tier follows the rule's order, whatever the bands and their groups;
* band counts count each me_file once, in its innermost band, exactly, at every commit;
* target_bands.definition_hash is the set of groups of trait-id sets;
* a target whose bands match a populated twin's is copied from it, never on the stored hash
  alone;
* pgsnap.explain says why a me_file is where it is.
"""

from __future__ import annotations

import psycopg
import pytest

from tests.helpers import (
    ADVISORY,
    B1,
    B2,
    B3,
    CHESS,
    CUISINE,
    FEMALE,
    G10,
    G20,
    G30,
    G40,
    G41,
    GATES,
    HIKING,
    ITALIAN,
    M1,
    M2,
    M3,
    M4,
    MALE,
    SEX,
    T1,
    ZIP_02140,
    ZIP_10028,
    Model,
    Runner,
    add_band,
    add_band_group,
    add_group,
    add_group_trait,
    add_target,
    execute,
    gated,
    populate,
    populations,
    remove_band_group,
    rename_trait,
    row_versions_by_me_file,
    rows,
    seed_worked_example,
    sync_triggers_disabled,
    tag,
    untag,
    value,
    wait_until_blocked,
)

C1 = 1


def stale(conn):
    return rows(conn, "SELECT target_id, kind, reason FROM pgsnap.stale_targets()")


def verify(conn, target):
    return rows(conn, "SELECT * FROM pgsnap.verify_target(%s)", (target,))


def launch(conn):
    return value(conn, "SELECT pgsnap.launch_campaign(%s)", (C1,))


def run_job(conn):
    execute(conn, "CALL pgsnap.repopulate_stale_targets()")


def tiers(conn, target):
    return dict(rows(conn, "SELECT id, tier FROM target_bands WHERE target_id = %s", (target,)))


def rewritten(before, after):
    """me_files whose row was written (new version, gone or new)."""
    return sorted(m for m in set(before) | set(after)
                  if m not in before or m not in after or before[m].xmin != after[m].xmin)


@pytest.fixture
def populated(conn):
    """The worked example, T1 populated (M1 -> B1, M2 -> B2, M3 -> B3, M4 nowhere), campaign C1."""
    seed_worked_example(conn)
    populate(conn, T1)
    execute(conn, "INSERT INTO campaigns (id, target_id, title) VALUES (%s, %s, 'Spring')", (C1, T1))
    execute(conn, "INSERT INTO bids (campaign_id, target_band_id, offer_amt) VALUES (%s, %s, 1), (%s, %s, 1),"
                  " (%s, %s, 1)", (C1, B1, C1, B2, C1, B3))
    assert {m: b for m, (b, _) in populations(conn, T1).items()} == {M1: B1, M2: B2, M3: B3}
    return conn


# -- catalogue edits ------------------------------------------------------------------------------
EDITS = {
    # name: (edit, stale kind, reason, me_files whose row changes, bands after)
    "trait added to a group": (
        lambda c: add_group_trait(c, G20, ZIP_10028), "membership", "traits of trait group 20 changed",
        [M3], {M1: B1, M2: B2, M3: B1}),
    "trait removed from a group": (
        lambda c: execute(c, "DELETE FROM trait_group_traits WHERE trait_group_id = %s AND trait_id = %s",
                          (G20, ZIP_02140)),
        "membership", "traits of trait group 20 changed", [M1, M2], {M1: B3, M2: B3, M3: B3}),
    "group added to a band": (
        lambda c: add_band_group(c, B3, G40), "membership", "trait groups of band 3 changed",
        [M3], {M1: B1, M2: B2}),
    "group removed from a band": (   # B1 = {Women, Boston zip} = B2: the bullseye wins the tie
        lambda c: remove_band_group(c, B1, G30), "membership", "trait groups of band 1 changed",
        [M1, M2], {M1: B1, M2: B1, M3: B3}),
    "band added": (                  # {Women} again, and the bullseye: M3 moves in
        lambda c: add_band(c, 4, T1, [G10], is_bullseye=True), "membership", "band 4 added",
        [M3], {M1: B1, M2: B2, M3: 4}),
    "band removed": (
        lambda c: execute(c, "DELETE FROM target_bands WHERE id = %s", (B2,)), "membership", "band 2 removed",
        [M2], {M1: B1, M2: B3, M3: B3}),
    "bullseye flag changed": (       # B1 was the only bullseye; no tie: nobody moves
        lambda c: execute(c, "UPDATE target_bands SET is_bullseye = false WHERE id = %s", (B1,)),
        "membership", "band 1 changed", [], {M1: B1, M2: B2, M3: B3}),
    "trait renamed": (               # the parent of every snapshot's first entry
        lambda c: rename_trait(c, SEX, "Sex"), "snapshot",
        "trait 1 renamed, reordered or re-parented", [M1, M2, M3], {M1: B1, M2: B2, M3: B3}),
    "trait reordered": (
        lambda c: execute(c, "UPDATE traits SET display_order = 0 WHERE id = %s", (CHESS,)), "snapshot",
        "trait 53 renamed, reordered or re-parented", [M1], {M1: B1, M2: B2, M3: B3}),
    "trait re-parented": (
        lambda c: execute(c, "UPDATE traits SET parent_trait_id = %s WHERE id = %s", (CUISINE, CHESS)),
        "snapshot", "trait 53 renamed, reordered or re-parented", [M1], {M1: B1, M2: B2, M3: B3}),
}


@pytest.mark.parametrize("edit", list(EDITS), ids=list(EDITS))
def test_catalogue_edit_marks_blocks_and_is_repopulated_incrementally(populated, edit):
    conn = populated
    change, kind, reason, changed, bands_after = EDITS[edit]
    before = row_versions_by_me_file(conn, T1)
    change(conn)
    assert stale(conn) == [(T1, kind, reason)]
    assert [p for p in rows(conn, "SELECT check_name, violations FROM pgsnap.check_invariants()")
            if p[0] == "stale_targets"] == [("stale_targets", 0)]   # not past the threshold yet
    if kind == "membership":
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as refused:
            launch(conn)
        assert refused.value.diag.message_primary.startswith(
            f"campaign {C1}: target {T1} is stale since ")
        assert refused.value.diag.message_primary.endswith(f"({reason}): re-populate it first")
    run_job(conn)
    assert stale(conn) == []
    assert verify(conn, T1) == []
    assert {m: b for m, (b, _) in populations(conn, T1).items()} == bands_after
    assert populations(conn, T1) == Model.load(conn).populations(T1)
    assert rewritten(before, row_versions_by_me_file(conn, T1)) == sorted(changed)
    assert launch(conn) == sum(1 for band in bands_after.values() if band in (B1, B2, B3))  # bids


def test_edits_of_untouched_catalogue_mark_nothing(populated):
    conn = populated
    add_group(conn, 99, [ITALIAN])                     # a group no band uses
    rename_trait(conn, MALE, "Man")                    # in no band of T1
    execute(conn, "UPDATE target_bands SET title = 'renamed' WHERE id = %s", (B1,))
    assert stale(conn) == []


def test_edits_of_a_not_populated_target_mark_nothing(conn):
    seed_worked_example(conn)
    add_group_trait(conn, G20, ZIP_10028)
    assert stale(conn) == []


def test_stale_past_the_threshold_is_a_check_violation(populated):
    conn = populated
    rename_trait(conn, FEMALE, "Woman")
    execute(conn, "INSERT INTO pgsnap.settings VALUES ('stale_after', '0 seconds')"
                  " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value")
    ((violations, detail),) = rows(conn, "SELECT violations, detail FROM pgsnap.check_invariants()"
                                         " WHERE check_name = 'stale_targets'")
    assert violations == 1
    assert detail.startswith("stale for more than 0 seconds: target 1 since ")
    assert detail.endswith(" UTC (snapshot: trait 3 renamed, reordered or re-parented)")


def test_a_run_that_started_before_an_edit_leaves_the_target_stale(populated, new_conn):
    """An edit committed during a run may not have been seen by all its batches."""
    conn = populated
    execute(conn, GATES)
    execute(conn, "INSERT INTO public.test_gate VALUES (%s, 'populate', 7)", (M3,))
    execute(conn, "SELECT pg_advisory_lock(7)")
    with sync_triggers_disabled(conn):                  # M3's row has to change: the gate holds it
        tag(conn, M3, ZIP_02140, "02140")
    populator_conn = gated(new_conn, "populate")
    populator = Runner(populate, populator_conn, T1)
    populator.start()
    wait_until_blocked(conn, populator_conn.info.backend_pid, "the batch writing M3", ADVISORY)
    rename_trait(conn, SEX, "Sex")
    execute(conn, "SELECT pg_advisory_unlock(7)")
    populator.finish()
    assert stale(conn) == [(T1, "snapshot", "trait 1 renamed, reordered or re-parented")]
    run_job(conn)
    assert stale(conn) == [] and verify(conn, T1) == []


# -- tiers ----------------------------------------------------------------------------------------
def test_tiers_of_nested_bands(populated):
    assert tiers(populated, T1) == {B1: 0, B2: 1, B3: 2}


def test_tiers_of_non_nested_and_equal_rank_bands(conn):
    seed_worked_example(conn)
    add_target(conn, 2, bands=[(20, [G40]), (21, [G41]), (22, [G10, G20]), (23, [G30], True)])
    # two groups first; among one-group bands the bullseye, then the lowest id
    assert tiers(conn, 2) == {22: 0, 23: 1, 20: 2, 21: 3}
    add_band_group(conn, 20, G30)          # 20 now has two groups too: lower id than 22
    assert tiers(conn, 2) == {20: 0, 22: 1, 23: 2, 21: 3}
    remove_band_group(conn, 20, G30)
    assert tiers(conn, 2) == {22: 0, 23: 1, 20: 2, 21: 3}


def test_bands_that_can_match_nobody_sort_last(conn):
    seed_worked_example(conn)
    add_group(conn, 98, [])                # a group without traits
    add_target(conn, 2, bands=[(30, [], True), (31, [98, G10, G20]), (32, [G10])])
    assert tiers(conn, 2) == {32: 0, 31: 1, 30: 2}   # 31 (3 groups, one empty) and 30 (none) last
    add_group_trait(conn, 98, FEMALE)      # 31 can match now: three groups, first
    assert tiers(conn, 2) == {31: 0, 32: 1, 30: 2}


# -- counts ---------------------------------------------------------------------------------------
def counts(conn, target):
    return rows(conn, "SELECT target_band_id, tier, population FROM pgsnap.band_counts(%s)", (target,))


def counted(conn, target):
    """The same from the rows themselves, and the stored population_count."""
    actual = dict(rows(conn, "SELECT target_band_id, count(*) FROM target_populations WHERE target_id = %s"
                             " GROUP BY 1", (target,)))
    return [(b, t, actual.get(b, 0)) for b, t in rows(conn, "SELECT id, tier FROM target_bands"
                                                           " WHERE target_id = %s ORDER BY tier", (target,))]


def stored_counts(conn, target):
    return rows(conn, "SELECT id, tier, population_count FROM target_bands"
                      " WHERE target_id = %s ORDER BY tier",
                (target,))


def test_counts_count_the_innermost_band_only_and_follow_every_change(populated):
    conn = populated
    assert counts(conn, T1) == [(B1, 0, 1), (B2, 1, 1), (B3, 2, 1)]   # M1 counted in B1 only
    assert stored_counts(conn, T1) == counts(conn, T1)
    tag(conn, M4, FEMALE, "Female")                       # joins B2
    assert counts(conn, T1) == [(B1, 0, 1), (B2, 1, 2), (B3, 2, 1)] == counted(conn, T1)
    tag(conn, M3, ZIP_02140, "02140")                     # moves B3 -> B1
    assert counts(conn, T1) == [(B1, 0, 2), (B2, 1, 2), (B3, 2, 0)] == counted(conn, T1)
    untag(conn, M2, FEMALE)                               # leaves
    assert counts(conn, T1) == [(B1, 0, 2), (B2, 1, 1), (B3, 2, 0)] == counted(conn, T1)
    execute(conn, "DELETE FROM me_files WHERE id = %s", (M1,))   # deleted
    assert counts(conn, T1) == [(B1, 0, 1), (B2, 1, 1), (B3, 2, 0)] == counted(conn, T1)
    remove_band_group(conn, B1, G30)                      # a band change: the rows follow on re-populate
    run_job(conn)
    assert counts(conn, T1) == counted(conn, T1)
    assert stored_counts(conn, T1) == counts(conn, T1)    # refreshed by the run


def test_counts_stay_exact_under_concurrent_writers_of_one_band(populated, new_conn):
    conn = populated
    execute(conn, "INSERT INTO me_files (id) SELECT g FROM generate_series(100, 179) g")

    def churn(c, first):
        for me_file in range(first, first + 10):
            tag(c, me_file, FEMALE, "Female")             # joins B3
            tag(c, me_file, ZIP_02140, "02140")           # moves to B2
            if me_file % 3 == 0:
                untag(c, me_file, FEMALE)                 # leaves

    writers = [Runner(churn, new_conn(), 100 + 10 * i) for i in range(8)]
    for w in writers:
        w.start()
    for w in writers:
        w.finish()
    assert counts(conn, T1) == counted(conn, T1)
    in_b2 = 1 + sum(1 for m in range(100, 180) if m % 3)   # M2, and every writer's me_file kept
    assert counts(conn, T1) == [(B1, 0, 1), (B2, 1, in_b2), (B3, 2, 1)]
    execute(conn, "CALL pgsnap.backfill_missing_snapshots()")   # the scheduled job refreshes them
    assert stored_counts(conn, T1) == counts(conn, T1)


# -- definitions ----------------------------------------------------------------------------------
def definition(conn, band):
    return value(conn, "SELECT definition_hash FROM target_bands WHERE id = %s", (band,))


def test_definition_hash_is_the_set_of_groups_of_trait_sets(conn):
    seed_worked_example(conn)
    add_group(conn, 91, [ZIP_02140])                       # the same traits as G20, another group row
    add_group(conn, 92, [FEMALE, ZIP_02140])
    add_target(conn, 2, bands=[
        (40, [G10, G20]),             # {{3}, {101}}
        (41, [91, G10]),              # the same, other group rows, other order
        (42, [G10, G20, 91]),         # a duplicate group: the same set of sets
        (43, [92]),                   # {{3, 101}}: not the same
        (44, []),                     # matches nobody: no definition
    ])
    add_group(conn, 97, [])
    add_band(conn, 45, 2, [G10, 97])  # a group without traits: no definition
    assert definition(conn, 40) == definition(conn, 41) == definition(conn, 42)
    assert definition(conn, 40) != definition(conn, 43)
    assert definition(conn, 44) is None and definition(conn, 45) is None
    assert len(definition(conn, 40)) == 32
    old = definition(conn, 43)
    add_group_trait(conn, 92, HIKING)                      # a group's traits change: so does its hash
    assert definition(conn, 43) != old and definition(conn, 40) == definition(conn, 41)


# -- populating a twin by copy ---------------------------------------------------------------------
def add_twin(conn, target, groups=None):
    """A copy of T1 with group rows of its own holding the same traits (or `groups`)."""
    base = target * 100
    g10, g20, g30 = groups or (base + 10, base + 20, base + 30)
    if groups is None:
        add_group(conn, g10, [FEMALE])
        add_group(conn, g20, [ZIP_02140])
        add_group(conn, g30, [CHESS, HIKING])
    add_target(conn, target, bands=[(base + 3, [g10]), (base + 1, [g30, g20, g10], True),
                                    (base + 2, [g20, g10])])
    return base


def summary(conn, target):
    notices = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary))
    populate(conn, target)
    return notices[-1]


def test_a_twin_is_copied_and_equals_a_scan(populated):
    conn = populated
    base = add_twin(conn, 2)
    assert summary(conn, 2) == ("pgsnap: target 2 populated (copied from target 1): 1 batches, 3 inserted, "
                                "0 moved, 0 refreshed, 0 deleted, 0 unchanged")
    copied = populations(conn, 2)
    assert {m: b for m, (b, _) in copied.items()} == {M1: base + 1, M2: base + 2, M3: base + 3}
    assert copied == Model.load(conn).populations(2)
    assert verify(conn, 2) == []
    execute(conn, "DELETE FROM target_populations WHERE target_id = 2")
    execute(conn, "UPDATE targets SET population_status = 'not_populated' WHERE id = 1")   # no twin now
    assert summary(conn, 2) == ("pgsnap: target 2 populated (scanned): 1 batches, 3 inserted, "
                                "0 moved, 0 refreshed, 0 deleted, 0 unchanged")
    assert populations(conn, 2) == copied


def test_re_populating_a_copied_target_scans_and_repairs_what_its_twin_shares(populated):
    conn = populated
    add_twin(conn, 2)
    assert summary(conn, 2).startswith("pgsnap: target 2 populated (copied from target 1)")
    with sync_triggers_disabled(conn):   # M4 (Male, 02140) gains Female unseen: both targets wrong
        tag(conn, M4, FEMALE, "Female")
    assert (verify(conn, 1), verify(conn, 2)) == ([(M4, "missing", B2, None)], [(M4, "missing", 202, None)])
    assert summary(conn, 2) == ("pgsnap: target 2 populated (scanned): 1 batches, 1 inserted, "
                                "0 moved, 0 refreshed, 0 deleted, 3 unchanged")
    assert verify(conn, 2) == []
    assert populations(conn, 2) == Model.load(conn).populations(2)


def test_a_partial_twin_is_scanned(populated):
    conn = populated
    add_group(conn, 210, [FEMALE])
    add_group(conn, 220, [ZIP_10028])        # not T1's zip
    add_group(conn, 230, [CHESS, HIKING])
    add_target(conn, 2, bands=[(203, [210]), (201, [230, 220, 210], True), (202, [220, 210])])
    assert summary(conn, 2).startswith("pgsnap: target 2 populated (scanned)")
    assert verify(conn, 2) == []


def test_a_source_with_a_tampered_stored_hash_is_not_trusted(populated):
    conn = populated
    add_group(conn, 210, [FEMALE])
    add_group(conn, 220, [ZIP_10028])
    add_group(conn, 230, [CHESS, HIKING])
    add_target(conn, 2, bands=[(203, [210]), (201, [230, 220, 210], True), (202, [220, 210])])
    # the stored hashes say T1 is a twin of target 2; the groups say otherwise
    execute(conn, "UPDATE target_bands t SET definition_hash = s.definition_hash FROM target_bands s"
                  " WHERE (t.id, s.id) IN ((201, %s), (202, %s), (203, %s))", (B1, B2, B3))
    assert summary(conn, 2).startswith("pgsnap: target 2 populated (scanned)")
    assert populations(conn, 2) == Model.load(conn).populations(2)
    assert verify(conn, 2) == []


def test_a_tag_change_racing_the_copy_leaves_both_targets_right(populated, new_conn):
    conn = populated
    add_twin(conn, 2)
    execute(conn, GATES)
    execute(conn, "INSERT INTO public.test_gate VALUES (%s, 'populate', 7)", (M2,))
    execute(conn, "SELECT pg_advisory_lock(7)")
    populator_conn = gated(new_conn, "populate")
    populator = Runner(populate, populator_conn, 2)
    populator.start()
    wait_until_blocked(conn, populator_conn.info.backend_pid, "the copy writing M2", ADVISORY)
    tagger = new_conn()
    tagging = Runner(tag, tagger, M2, HIKING, "Hiking")   # M2 joins the bullseye of both
    tagging.start()
    wait_until_blocked(conn, tagger.info.backend_pid, "the sync of M2", ADVISORY)
    execute(conn, "SELECT pg_advisory_unlock(7)")
    populator.finish()
    tagging.finish()
    assert verify(conn, T1) == [] and verify(conn, 2) == []
    assert populations(conn, 2) == Model.load(conn).populations(2)
    assert populations(conn, 2)[M2][0] == 201


# -- explain --------------------------------------------------------------------------------------
EXPLAIN = ("SELECT tier, target_band_id, trait_group_id, group_satisfied, via, band_satisfied, picked,"
           " reason,"
           " agrees FROM pgsnap.explain(%s, %s)")


def test_explain_me_file_in_the_bullseye(populated):
    conn = populated
    assert rows(conn, EXPLAIN, (M1, T1)) == [
        (0, B1, G10, True, [[FEMALE, "Female", "Female"]], True, True,
         "picked: satisfied, and first by the rule (3 groups, bullseye, band id 1)", True),
        (0, B1, G20, True, [[ZIP_02140, "02140", "02140"]], True, True,
         "picked: satisfied, and first by the rule (3 groups, bullseye, band id 1)", True),
        (0, B1, G30, True, [[HIKING, "Hiking", "Hiking"], [CHESS, "Chess", "Chess"]], True, True,
         "picked: satisfied, and first by the rule (3 groups, bullseye, band id 1)", True),
        (1, B2, G10, True, [[FEMALE, "Female", "Female"]], True, False,
         "satisfied, but band 1 comes first: 3 groups against 2", True),
        (1, B2, G20, True, [[ZIP_02140, "02140", "02140"]], True, False,
         "satisfied, but band 1 comes first: 3 groups against 2", True),
        (2, B3, G10, True, [[FEMALE, "Female", "Female"]], True, False,
         "satisfied, but band 1 comes first: 3 groups against 1", True),
    ]
    ((snapshot, stored_band, stored),) = rows(conn, "SELECT DISTINCT snapshot, stored_band, stored_snapshot"
                                                    " FROM pgsnap.explain(%s, %s)", (M1, T1))
    assert stored_band == B1 and snapshot == stored == populations(conn, T1)[M1][1]


@pytest.mark.parametrize("me_file, picked, reasons", [
    (M2, B2, {B1: "not satisfied: no tag in group 30",
              B2: "picked: satisfied, and first by the rule (2 groups, band id 2)",
              B3: "satisfied, but band 2 comes first: 2 groups against 1"}),
    (M3, B3, {B1: "not satisfied: no tag in group 20", B2: "not satisfied: no tag in group 20",
              B3: "picked: satisfied, and first by the rule (1 group, band id 3)"}),
    (M4, None, {B1: "not satisfied: no tag in group 10, group 30", B2: "not satisfied: no tag in group 10",
                B3: "not satisfied: no tag in group 10"}),
])
def test_explain_me_files_in_each_band_and_in_none(populated, me_file, picked, reasons):
    conn = populated
    found = rows(conn, "SELECT DISTINCT target_band_id, picked, reason, stored_band, agrees"
                       " FROM pgsnap.explain(%s, %s) ORDER BY 1", (me_file, T1))
    assert found == [(b, b == picked, reasons[b], picked, True) for b in (B1, B2, B3)]


def test_explain_shows_a_stored_row_that_disagrees(populated):
    conn = populated
    execute(conn, "UPDATE target_populations SET target_band_id = %s WHERE me_file_id = %s", (B3, M2))
    assert rows(conn, "SELECT DISTINCT stored_band, agrees FROM pgsnap.explain(%s, %s)",
                (M2, T1)) == [(B3, False)]


def test_explain_of_unknown_ids(conn):
    seed_worked_example(conn)
    with pytest.raises(psycopg.errors.NoDataFound, match="target 99 does not exist"):
        execute(conn, "SELECT * FROM pgsnap.explain(%s, 99)", (M1,))
    with pytest.raises(psycopg.errors.NoDataFound, match="me_file 99 does not exist"):
        execute(conn, "SELECT * FROM pgsnap.explain(99, %s)", (T1,))
