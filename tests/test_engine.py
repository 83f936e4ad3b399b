"""The engine's economy (docs/rules.md, "Populate"): a populate builds only the snapshots whose
inputs changed and writes only the rows that differ; the sync's statements keep plans of their
own, fit for one me_file, even on the connection that has just populated large targets."""

from __future__ import annotations

import json

import pytest

from tests.helpers import (
    B2,
    CHESS,
    CUISINE,
    FEMALE,
    G10,
    G40,
    HIKING,
    HOBBIES,
    HOME_ZIP,
    ITALIAN,
    M1,
    M2,
    SEX,
    T1,
    ZIP_02140,
    Model,
    add_group,
    add_target,
    execute,
    populations,
    rename_trait,
    row_versions_by_me_file,
    seed_example_catalogue,
    seed_worked_example,
    snapshot,
    sync_triggers_disabled,
    tag,
    tags,
    value,
)


def run(conn, target, batch_size=None):
    """CALL populate_target; its summary (the final notice's DETAIL)."""
    details = []
    conn.add_notice_handler(lambda d: details.append(d.message_detail))
    args = f"{target}" + (f", {batch_size}" if batch_size else "")
    execute(conn, f"CALL pgsnap.populate_target({args})")
    summary = json.loads(details[-1])
    summary.pop("seconds")
    return summary


def rewritten(before, after):
    return sorted(m for m in set(before) | set(after)
                  if m not in before or m not in after or before[m].xmin != after[m].xmin)


def counts(summary):
    keys = ("inserted", "moved", "refreshed", "deleted", "unchanged", "snapshots_built")
    return tuple(summary[k] for k in keys)


def test_a_no_op_populate_builds_no_snapshot_and_writes_no_row(conn):
    seed_worked_example(conn)
    assert counts(run(conn, T1)) == (3, 0, 0, 0, 0, 3)
    before = row_versions_by_me_file(conn, T1)
    assert counts(run(conn, T1)) == (0, 0, 0, 0, 3, 0)
    assert row_versions_by_me_file(conn, T1) == before


@pytest.mark.parametrize("change, expected, changed", [
    ("a changed tag value", (0, 0, 1, 0, 2, 1), [M1]),
    ("a moved me_file", (0, 1, 0, 0, 2, 1), [M2]),
])
def test_a_change_rewrites_exactly_the_rows_it_affects(conn, change, expected, changed):
    seed_worked_example(conn)
    run(conn, T1)
    before = row_versions_by_me_file(conn, T1)
    with sync_triggers_disabled(conn):        # the change reaches the rows only through the populate
        if change == "a changed tag value":
            execute(conn, "UPDATE me_file_tags SET tag_value = 'Hiking (daily)' WHERE me_file_id = %s"
                          " AND trait_id = %s", (M1, HIKING))
        else:
            tag(conn, M2, CHESS, "Chess")       # Outdoorsy: M2 joins the bullseye
    assert counts(run(conn, T1)) == expected
    assert rewritten(before, row_versions_by_me_file(conn, T1)) == changed
    assert populations(conn, T1) == Model.load(conn).populations(T1)


def test_a_renamed_trait_rebuilds_every_snapshot_and_rewrites_those_that_changed(conn):
    seed_worked_example(conn)
    run(conn, T1)
    before = row_versions_by_me_file(conn, T1)
    rename_trait(conn, HOBBIES, "Pastimes")   # only M1's snapshot shows Hobbies
    assert counts(run(conn, T1)) == (0, 0, 1, 0, 2, 3)
    assert rewritten(before, row_versions_by_me_file(conn, T1)) == [M1]
    assert populations(conn, T1)[M1][1]["tags"][2][1] == "Pastimes"
    before = row_versions_by_me_file(conn, T1)
    assert counts(run(conn, T1)) == (0, 0, 0, 0, 3, 0)    # the catalogue its rows reflect is recorded
    assert row_versions_by_me_file(conn, T1) == before


def test_a_blank_value_showing_the_same_text_is_not_a_change(conn):
    """'02140' -> NULL shows the trait's name, "02140": the same snapshot, the same inputs."""
    seed_worked_example(conn)
    run(conn, T1)
    before = row_versions_by_me_file(conn, T1)
    with sync_triggers_disabled(conn):
        execute(conn, "UPDATE me_file_tags SET tag_value = NULL WHERE trait_id = %s", (ZIP_02140,))
    assert counts(run(conn, T1)) == (0, 0, 0, 0, 3, 0)
    assert row_versions_by_me_file(conn, T1) == before


def test_me_files_with_the_same_inputs_in_a_band_share_one_built_snapshot(conn):
    """A snapshot is a function of the band and the (trait, shown value) pairs its fingerprint
    covers: a populate builds one per distinct pair of them, for the first such me_file, and
    gives it to every row of the pair, fresh or rebuilt after a catalogue change."""
    seed_worked_example(conn)
    for me_file in (6, 7):
        tags(conn, me_file, {FEMALE: "Female", ZIP_02140: "02140"})   # M2's tags
    tags(conn, 8, {FEMALE: "Female", ZIP_02140: None})        # a blank value shows "02140": M2's too
    tags(conn, 9, {FEMALE: "F", ZIP_02140: "02140"})           # another value: a snapshot of its own
    assert counts(run(conn, T1)) == (7, 0, 0, 0, 0, 4)        # M1, M2 (and 6, 7, 8), M3, 9
    rows = populations(conn, T1)
    assert rows == Model.load(conn).populations(T1)
    assert rows[6] == rows[7] == rows[8] == rows[M2] != rows[9]
    assert rows[9] == (B2, snapshot([SEX, "Sex (Biological)", 1, [[FEMALE, "F", 2]]],
                                    [HOME_ZIP, "Home Zip Code", 1, [[ZIP_02140, "02140", 2140]]]))

    rename_trait(conn, SEX, "Sex")                  # every row shows it: all rebuilt, 4 builds
    assert counts(run(conn, T1)) == (0, 0, 7, 0, 0, 4)
    assert populations(conn, T1) == Model.load(conn).populations(T1)


def test_batches_of_any_size_give_the_same_rows(conn):
    seed_worked_example(conn)
    run(conn, T1, batch_size=1)
    one_by_one = populations(conn, T1)
    execute(conn, "DELETE FROM target_populations")
    run(conn, T1, batch_size=1000)
    assert populations(conn, T1) == one_by_one == Model.load(conn).populations(T1)


# -- the sync's plans ------------------------------------------------------------------------------
WIDE = 3          # targets
WIDE_ME_FILES = 20_000


def seed_wide(conn):
    """Three targets of 20,000 rows each, every one using Female (the trait the sync changes)."""
    seed_example_catalogue(conn)
    add_group(conn, 70, [FEMALE])
    for target in range(1, WIDE + 1):
        add_target(conn, 10 + target, bands=[(100 + target, [70])])
    execute(conn, "INSERT INTO me_files (id) SELECT g FROM generate_series(1, %s) g", (WIDE_ME_FILES,))
    execute(conn, "INSERT INTO me_file_tags (me_file_id, trait_id, tag_value)"
                  " SELECT g, %s, 'Female' FROM generate_series(1, %s) g", (FEMALE, WIDE_ME_FILES))


def sync_plans(conn, statement, analyze=False):
    """The plans of the statements a tag write runs (auto_explain, nested statements, LOG
    messages sent to this client); with `analyze`, each node's actual rows and loops."""
    plans = []
    handler = lambda d: plans.append(d.message_primary)  # noqa: E731
    conn.add_notice_handler(handler)
    try:
        execute(conn, "LOAD 'auto_explain'")
        execute(conn, "SET auto_explain.log_min_duration = 0")
        execute(conn, "SET auto_explain.log_nested_statements = on")
        execute(conn, "SET auto_explain.log_format = json")
        execute(conn, f"SET auto_explain.log_analyze = {'on' if analyze else 'off'}")
        execute(conn, "SET client_min_messages = log")
        execute(conn, statement)
        execute(conn, "SET auto_explain.log_min_duration = -1")
        execute(conn, "SET client_min_messages = notice")
    finally:
        conn.remove_notice_handler(handler)
    return [json.loads(p.split("plan:", 1)[1]) for p in plans if "plan:" in p]


def plan_nodes(node, parent=None):
    """Every node of a plan, depth first, each with its parent."""
    yield node, parent
    for child in node.get("Plans", []):
        yield from plan_nodes(child, node)


def scans(plan):
    """(node type, relation, index) of every node that reads or writes a relation."""
    return [(n["Node Type"], n["Relation Name"], n.get("Index Name"))
            for n, _ in plan_nodes(plan) if "Relation Name" in n]


def rows_read(plan, relation):
    """(node type, index, rows it returned over all its loops) of every read of `relation`."""
    return [(n["Node Type"], n.get("Index Name"), n["Actual Rows"] * n["Actual Loops"])
            for n, _ in plan_nodes(plan)
            if n.get("Relation Name") == relation and n["Node Type"] != "ModifyTable"]


def test_the_sync_after_a_large_populate_on_the_same_connection_reads_by_index(conn):
    seed_wide(conn)
    # plans this connection caches (custom plans five times, then a generic one) while the
    # table is still empty: a maintained target without rows, and syncs that find nothing ...
    execute(conn, "UPDATE targets SET population_status = 'populated' WHERE id = 11")
    for me_file in range(1, 8):
        execute(conn, "DELETE FROM me_file_tags WHERE me_file_id = %s AND trait_id = %s", (me_file, FEMALE))
    assert value(conn, "SELECT count(*) FROM target_populations") == 0
    for target in range(11, 11 + WIDE):
        run(conn, target)                          # ... then 60,000 rows, on the same connection
    assert value(conn, "SELECT count(*) FROM target_populations") == WIDE * (WIDE_ME_FILES - 7)
    plans = sync_plans(conn, f"DELETE FROM me_file_tags WHERE me_file_id = 77 AND trait_id = {FEMALE}")
    population_scans = [s for p in plans for s in scans(p["Plan"])
                        if s[1] == "target_populations" and s[0] != "ModifyTable"]
    assert population_scans, plans
    # the me_file's rows by (target_id, me_file_id), the rows to delete by id: never a
    # sequential scan of the 60,000 rows
    assert sorted(set(population_scans)) == [
        ("Index Scan", "target_populations", "target_populations_pkey"),
        ("Index Scan", "target_populations", "target_populations_target_id_me_file_id_key")], population_scans
    assert value(conn, "SELECT count(*) FROM target_populations WHERE me_file_id = 77") == 0


def test_the_sync_reads_only_the_rows_of_the_targets_it_affects(conn):
    """Me_file 77 is in four maintained targets; a change to its Italian tag affects one of them.
    The sync reads 77's row in that target alone, by (target_id, me_file_id), then rewrites it by
    id: never its rows in the three targets that do not use Italian (read by me_file_id, the
    generic plan's choice when the lookup was a join)."""
    seed_wide(conn)
    add_target(conn, 200, bands=[(200, [G10, G40])])               # Women who like Italian
    tag(conn, 77, ITALIAN, "Italian")
    for target in [*range(11, 11 + WIDE), 200]:
        run(conn, target)
    assert value(conn, "SELECT count(*) FROM target_populations WHERE me_file_id = 77") == WIDE + 1
    plans = sync_plans(conn, f"UPDATE me_file_tags SET tag_value = 'Italian food' WHERE me_file_id = 77"
                             f" AND trait_id = {ITALIAN}", analyze=True)
    reads = [r for p in plans for r in rows_read(p["Plan"], "target_populations")]
    assert reads == [
        ("Index Scan", "target_populations_target_id_me_file_id_key", 1),   # 77's row in target 200
        ("Index Scan", "target_populations_pkey", 0),                       # rows to delete: none
        ("Index Scan", "target_populations_pkey", 1),                       # the row to rewrite
    ], reads
    assert populations(conn, 200) == {77: (200, {"tags": [
        [SEX, "Sex (Biological)", 1, [[FEMALE, "Female", 2]]],
        [CUISINE, "Cuisine", 7, [[ITALIAN, "Italian food", 4]]]]})}


def band_traits_lookups(plan):
    """(index, index condition, filter, join filter above it) of every band_traits scan in a plan."""
    return [(n.get("Index Name"), n.get("Index Cond"), n.get("Filter"), parent.get("Join Filter"))
            for n, parent in plan_nodes(plan)
            if parent is not None and n.get("Relation Name") == "band_traits"]


# each tag of the me_file looked up by (trait, band) for the snapshot
SNAPSHOT_LOOKUP = ("band_traits_pkey", "((trait_id = t_1.trait_id) AND (target_band_id = p_1.band_id))",
                   "in_snapshot", None)


def test_the_sync_finds_bands_from_the_me_files_tags(conn):
    """The sync's own rows come from the changed me_file's tags, each looked up in band_traits
    by trait (its bands in the affected targets kept), then by (trait, band) for the snapshot:
    never a read of every band_traits row of the affected targets (here 1,203: each wide band's
    group holds 400 more traits besides Female)."""
    seed_wide(conn)
    execute(conn, "INSERT INTO traits (id, trait_name, parent_trait_id, display_order)"
                  " SELECT g, 'trait ' || g, %s, g FROM generate_series(1000, 1399) g", (SEX,))
    execute(conn, "INSERT INTO trait_group_traits (trait_group_id, trait_id)"
                  " SELECT 70, g FROM generate_series(1000, 1399) g")
    assert value(conn, "SELECT count(*) FROM pgsnap.band_traits WHERE target_id > 10") == WIDE * 401
    execute(conn, "ANALYZE pgsnap.band_traits")   # as autovacuum would after a catalogue edit
    for target in range(11, 11 + WIDE):
        run(conn, target)
    plans = sync_plans(conn, f"DELETE FROM me_file_tags WHERE me_file_id = 77 AND trait_id = {FEMALE}")
    desired = [p for p in plans if "pgsnap.memberships(p_target_ids)" in p["Query Text"]]
    assert len(desired) == 1, [p["Query Text"] for p in plans]
    assert band_traits_lookups(desired[0]["Plan"]) == [
        ("band_traits_pkey", "(trait_id = t.trait_id)", "(target_id = ANY ($1))", None),
        SNAPSHOT_LOOKUP]
    assert value(conn, "SELECT count(*) FROM target_populations WHERE me_file_id = 77") == 0


def seed_common_trait(conn):
    """seed_wide, and trait 1000 in the bands of 403 targets: the 3 wide ones (in group 70, with
    Female) and 400 more, each with one band of one group holding trait 1000 and one trait of
    its own (most traits are in one band, as in a real catalogue)."""
    seed_wide(conn)
    execute(conn, "INSERT INTO traits (id, trait_name, parent_trait_id, display_order)"
                  " VALUES (1000, 'trait 1000', %s, 1000)", (SEX,))
    execute(conn, "INSERT INTO traits (id, trait_name, parent_trait_id, display_order)"
                  " SELECT g, 'trait ' || g, %s, g FROM generate_series(2000, 2399) g", (SEX,))
    execute(conn, "INSERT INTO targets (id, title)"
                  " SELECT g, 'target ' || g FROM generate_series(1000, 1399) g")
    execute(conn, "INSERT INTO target_bands (id, target_id, title, is_bullseye)"
                  " SELECT g, g, 'band ' || g, false FROM generate_series(1000, 1399) g")
    execute(conn, "INSERT INTO trait_groups (id, title)"
                  " SELECT g, 'group ' || g FROM generate_series(1000, 1399) g")
    execute(conn, "INSERT INTO trait_group_traits (trait_group_id, trait_id)"
                  " SELECT g, t FROM generate_series(1000, 1399) g, LATERAL (VALUES (1000), (g + 1000)) v(t)")
    execute(conn, "INSERT INTO target_band_trait_groups (target_band_id, trait_group_id)"
                  " SELECT g, g FROM generate_series(1000, 1399) g")
    execute(conn, "INSERT INTO trait_group_traits (trait_group_id, trait_id) VALUES (70, 1000)")
    assert value(conn, "SELECT count(*) FROM pgsnap.band_traits WHERE trait_id = 1000") == 400 + WIDE


def test_the_sync_finds_each_snapshot_entry_by_trait_and_band(conn):
    """The snapshot of a synced row looks up each of the me_file's tags in band_traits by
    (trait, band): never every band of the trait, filtered afterwards (here the new trait is in
    the bands of 403 targets). Without the builder's OFFSET 0 the planner picks that filter."""
    seed_common_trait(conn)
    for target in range(11, 11 + WIDE):
        run(conn, target)
    execute(conn, "ANALYZE")   # as autovacuum would
    plans = sync_plans(conn, "INSERT INTO me_file_tags (me_file_id, trait_id, tag_value)"
                             " VALUES (77, 1000, 'x')", analyze=True)
    built = [p for p in plans if "pgsnap.snapshots(ARRAY[" in p["Query Text"]]
    assert len(built) == 1, [p["Query Text"] for p in plans]
    assert band_traits_lookups(built[0]["Plan"]) == [   # (the small rules' statement, below)
        ("band_traits_pkey", "((trait_id = t.trait_id) AND (target_band_id = p_1.band_id))", "in_snapshot",
         None)]
    assert rows_read(built[0]["Plan"], "band_traits") == [("Index Only Scan", "band_traits_pkey", 2 * WIDE)]
    shown = {"tags": [[SEX, "Sex (Biological)", 1, [[FEMALE, "Female", 2], [1000, "x", 1000]]]]}
    assert {(r[0], json.dumps(r[1])) for r in conn.execute(
        "SELECT target_id, matching_tags_snapshot FROM target_populations WHERE me_file_id = 77")} == {
        (target, json.dumps(shown)) for target in range(11, 11 + WIDE)}


def test_the_sync_reads_small_rules_whole_by_target(conn):
    """The wide targets' rules are two band_traits rows each (Female and trait 1000), and me_file
    77's trait 1000 is in 403 bands. A change to 77's Female tag reads the three targets' six
    rows by target_id and hashes 77's tags against them: never trait 1000's bands in the 400
    other targets, read by trait and filtered out (the way for large rules, above)."""
    seed_common_trait(conn)
    tag(conn, 77, 1000, "x")
    for target in range(11, 11 + WIDE):
        run(conn, target)
    execute(conn, "ANALYZE")   # as autovacuum would
    plans = sync_plans(conn, f"UPDATE me_file_tags SET tag_value = 'F' WHERE me_file_id = 77"
                             f" AND trait_id = {FEMALE}", analyze=True)
    rule = [p for p in plans if "array_agg(m.target_id)" in p["Query Text"]]
    assert len(rule) == 1, [p["Query Text"] for p in plans]
    assert rows_read(rule[0]["Plan"], "band_traits") == [("Bitmap Heap Scan", None, 2 * WIDE)]
    shown = {"tags": [[SEX, "Sex (Biological)", 1, [[FEMALE, "F", 2], [1000, "x", 1000]]]]}
    assert {(r[0], json.dumps(r[1])) for r in conn.execute(
        "SELECT target_id, matching_tags_snapshot FROM target_populations WHERE me_file_id = 77")} == {
        (target, json.dumps(shown)) for target in range(11, 11 + WIDE)}


# 20,000 me_files with 10 tags each, of 100 traits; a target of one of them
TRAITS, ME_FILES, TAGS = range(2000, 2100), 20_000, 10


def test_a_populate_batch_reads_its_targets_tags_by_trait_with_their_values(conn):
    """A populate batch reads the tags of its target's traits alone, each with the value its
    inputs_hash needs, from the trait index (migration 0013 put tag_value in it): never every
    tag of the batch's me_files through (me_file_id, trait_id), filtered afterwards (here ten
    times as many)."""
    seed_example_catalogue(conn)
    execute(conn, "INSERT INTO traits (id, trait_name, parent_trait_id, display_order)"
                  " SELECT g, 'trait ' || g, %s, g FROM generate_series(%s::integer, %s::integer) g",
            (HOBBIES, TRAITS[0], TRAITS[-1]))
    add_group(conn, 80, [TRAITS[0]])
    add_target(conn, 20, bands=[(200, [80])])
    execute(conn, "INSERT INTO me_files (id) SELECT g FROM generate_series(1, %s) g", (ME_FILES,))
    # me_file f holds traits 2000 + (7f + 13k) mod 100 for k < 10: ten distinct traits
    execute(conn, "INSERT INTO me_file_tags (me_file_id, trait_id, tag_value)"
                  " SELECT f, %s + (7 * f + 13 * k) %% 100, 'v' || f"
                  "   FROM generate_series(1, %s) f, generate_series(0, %s) k",
            (TRAITS[0], ME_FILES, TAGS - 1))
    # as autovacuum would after the load; the test cluster commits asynchronously, and VACUUM
    # marks a page all-visible only once the commits of its rows are flushed
    execute(conn, "CHECKPOINT")
    execute(conn, "VACUUM (ANALYZE) me_file_tags")
    plans = sync_plans(conn, "CALL pgsnap.populate_target(20)")
    batches = [p for p in plans if "FROM pgsnap.memberships(ARRAY[$1]::bigint[])" in p["Query Text"]]
    assert len(batches) == 2, [p["Query Text"] for p in plans]   # 20,000 me_files, 10,000 a batch
    assert {s for p in batches for s in scans(p["Plan"]) if s[1] == "me_file_tags"} == {
        ("Index Only Scan", "me_file_tags", "me_file_tags_trait_id_me_file_id_idx")}
    members = [f for f in range(1, ME_FILES + 1) if any((7 * f + 13 * k) % 100 == 0 for k in range(TAGS))]
    assert [r[0] for r in conn.execute(
        "SELECT me_file_id FROM target_populations WHERE target_id = 20 ORDER BY me_file_id")] == members


def test_a_large_populate_leaves_the_table_analysed(conn):
    seed_wide(conn)
    run(conn, 11)
    assert value(conn, "SELECT reltuples FROM pg_class"
                       " WHERE oid = 'target_populations'::regclass") == WIDE_ME_FILES
