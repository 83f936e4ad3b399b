"""`pgsnap explain ME_FILE_ID TARGET_ID` (pgsnap/cli/explain.py over pgsnap.explain): the whole
text and the whole `--json` object for the worked example's me_files (one in each band of T1,
one in none), and the exit codes: 0 when the stored row agrees, 1 when it does not (a row
tampered with the sync triggers disabled, a stale target), 2 for an unknown me_file or target.
"""

from __future__ import annotations

import json

import pytest

from tests.helpers import (
    B2,
    B3,
    B9,
    G10,
    G20,
    M1,
    M2,
    M3,
    M4,
    T1,
    T2,
    ZIP_02140,
    ZIP_10028,
    add_group_trait,
    add_target,
    execute,
    populate,
    seed_worked_example,
    set_target_status,
    sync_triggers_disabled,
    untag,
    value,
)


@pytest.fixture
def seeded(conn):
    """The worked example: T1 populated (M1 in B1, M2 in B2, M3 in B3, M4 in none), T2 not
    populated."""
    seed_worked_example(conn)
    add_target(conn, T2, bands=[(B9, [G10], True)])
    populate(conn, T1)
    return conn


def explain(cli, *args) -> tuple[int, str]:
    result = cli("explain", *args)
    assert result.stderr == ""
    return result.exit_code, result.stdout


def explain_json(cli, *args) -> tuple[int, dict]:
    code, out = explain(cli, *args, "--json")
    return code, json.loads(out)


# -- text ------------------------------------------------------------------------------------------
TEXT = {
    M1: """\
me_file 1 in target 1 "target 1": populated, not stale

tier 0  band 1 "band 1" (bullseye, 3 groups): picked: satisfied, and first by the rule (3 groups, bullseye, band id 1)
  group 10 "Women"       satisfied by trait 3 "Female" = "Female"
  group 20 "Boston zip"  satisfied by trait 101 "02140" = "02140"
  group 30 "Outdoorsy"   satisfied by trait 52 "Hiking" = "Hiking", trait 53 "Chess" = "Chess"
tier 1  band 2 "band 2" (2 groups): satisfied, but band 1 comes first: 3 groups against 2
  group 10 "Women"       satisfied by trait 3 "Female" = "Female"
  group 20 "Boston zip"  satisfied by trait 101 "02140" = "02140"
tier 2  band 3 "band 3" (1 group): satisfied, but band 1 comes first: 3 groups against 1
  group 10 "Women"       satisfied by trait 3 "Female" = "Female"

rule      band 1 "band 1"
snapshot  {"tags": [[1, "Sex (Biological)", 1, [[3, "Female", 2]]], [4, "Home Zip Code", 1, [[101, "02140", 2140]]], [50, "Hobbies", 3, [[52, "Hiking", 1], [53, "Chess", 3]]]]}
stored    band 1, the same snapshot: agrees
""",  # noqa: E501 (whole output lines)
    M2: """\
me_file 2 in target 1 "target 1": populated, not stale

tier 0  band 1 "band 1" (bullseye, 3 groups): not satisfied: no tag in group 30
  group 10 "Women"       satisfied by trait 3 "Female" = "Female"
  group 20 "Boston zip"  satisfied by trait 101 "02140" = "02140"
  group 30 "Outdoorsy"   not satisfied
tier 1  band 2 "band 2" (2 groups): picked: satisfied, and first by the rule (2 groups, band id 2)
  group 10 "Women"       satisfied by trait 3 "Female" = "Female"
  group 20 "Boston zip"  satisfied by trait 101 "02140" = "02140"
tier 2  band 3 "band 3" (1 group): satisfied, but band 2 comes first: 2 groups against 1
  group 10 "Women"       satisfied by trait 3 "Female" = "Female"

rule      band 2 "band 2"
snapshot  {"tags": [[1, "Sex (Biological)", 1, [[3, "Female", 2]]], [4, "Home Zip Code", 1, [[101, "02140", 2140]]]]}
stored    band 2, the same snapshot: agrees
""",  # noqa: E501 (whole output lines)
    M3: """\
me_file 3 in target 1 "target 1": populated, not stale

tier 0  band 1 "band 1" (bullseye, 3 groups): not satisfied: no tag in group 20
  group 10 "Women"       satisfied by trait 3 "Female" = "Female"
  group 20 "Boston zip"  not satisfied
  group 30 "Outdoorsy"   satisfied by trait 52 "Hiking" = "Hiking"
tier 1  band 2 "band 2" (2 groups): not satisfied: no tag in group 20
  group 10 "Women"       satisfied by trait 3 "Female" = "Female"
  group 20 "Boston zip"  not satisfied
tier 2  band 3 "band 3" (1 group): picked: satisfied, and first by the rule (1 group, band id 3)
  group 10 "Women"       satisfied by trait 3 "Female" = "Female"

rule      band 3 "band 3"
snapshot  {"tags": [[1, "Sex (Biological)", 1, [[3, "Female", 2]]]]}
stored    band 3, the same snapshot: agrees
""",
    M4: """\
me_file 4 in target 1 "target 1": populated, not stale

tier 0  band 1 "band 1" (bullseye, 3 groups): not satisfied: no tag in group 10, group 30
  group 10 "Women"       not satisfied
  group 20 "Boston zip"  satisfied by trait 101 "02140" = "02140"
  group 30 "Outdoorsy"   not satisfied
tier 1  band 2 "band 2" (2 groups): not satisfied: no tag in group 10
  group 10 "Women"       not satisfied
  group 20 "Boston zip"  satisfied by trait 101 "02140" = "02140"
tier 2  band 3 "band 3" (1 group): not satisfied: no tag in group 10
  group 10 "Women"       not satisfied

rule      no band: none of the target's bands is satisfied
snapshot  -
stored    no row: agrees
""",
}


@pytest.mark.parametrize("me_file", [M1, M2, M3, M4], ids=["M1 in B1", "M2 in B2", "M3 in B3", "M4 in none"])
def test_text_of_a_me_file_in_each_band_and_in_none(cli, seeded, me_file):
    assert explain(cli, me_file, T1) == (0, TEXT[me_file])


# -- --json ----------------------------------------------------------------------------------------
FEMALE_TAG = {"trait_id": 3, "trait_name": "Female", "tag_value": "Female"}
ZIP_TAG = {"trait_id": 101, "trait_name": "02140", "tag_value": "02140"}
SEX_PART = [1, "Sex (Biological)", 1, [[3, "Female", 2]]]
ZIP_PART = [4, "Home Zip Code", 1, [[101, "02140", 2140]]]
TARGET_1 = {"target_id": 1, "title": "target 1", "status": "populated", "stale": None}

JSON = {
    M1: {
        "me_file_id": 1,
        "target": TARGET_1,
        "bands": [
            {"tier": 0, "band_id": 1, "title": "band 1", "is_bullseye": True, "n_groups": 3,
             "satisfied": True, "picked": True,
             "reason": "picked: satisfied, and first by the rule (3 groups, bullseye, band id 1)",
             "groups": [
                 {"group_id": 10, "title": "Women", "satisfied": True, "via": [FEMALE_TAG]},
                 {"group_id": 20, "title": "Boston zip", "satisfied": True, "via": [ZIP_TAG]},
                 {"group_id": 30, "title": "Outdoorsy", "satisfied": True, "via": [
                     {"trait_id": 52, "trait_name": "Hiking", "tag_value": "Hiking"},
                     {"trait_id": 53, "trait_name": "Chess", "tag_value": "Chess"}]}]},
            {"tier": 1, "band_id": 2, "title": "band 2", "is_bullseye": False, "n_groups": 2,
             "satisfied": True, "picked": False,
             "reason": "satisfied, but band 1 comes first: 3 groups against 2",
             "groups": [
                 {"group_id": 10, "title": "Women", "satisfied": True, "via": [FEMALE_TAG]},
                 {"group_id": 20, "title": "Boston zip", "satisfied": True, "via": [ZIP_TAG]}]},
            {"tier": 2, "band_id": 3, "title": "band 3", "is_bullseye": False, "n_groups": 1,
             "satisfied": True, "picked": False,
             "reason": "satisfied, but band 1 comes first: 3 groups against 1",
             "groups": [{"group_id": 10, "title": "Women", "satisfied": True, "via": [FEMALE_TAG]}]},
        ],
        "rule": {"band_id": 1,
                 "reason": "picked: satisfied, and first by the rule (3 groups, bullseye, band id 1)",
                 "snapshot": {"tags": [SEX_PART, ZIP_PART, [50, "Hobbies", 3, [[52, "Hiking", 1],
                                                                                [53, "Chess", 3]]]]}},
        "stored": {"band_id": 1,
                   "snapshot": {"tags": [SEX_PART, ZIP_PART, [50, "Hobbies", 3, [[52, "Hiking", 1],
                                                                                  [53, "Chess", 3]]]]}},
        "agrees": True,
    },
    M2: {
        "me_file_id": 2,
        "target": TARGET_1,
        "bands": [
            {"tier": 0, "band_id": 1, "title": "band 1", "is_bullseye": True, "n_groups": 3,
             "satisfied": False, "picked": False, "reason": "not satisfied: no tag in group 30",
             "groups": [
                 {"group_id": 10, "title": "Women", "satisfied": True, "via": [FEMALE_TAG]},
                 {"group_id": 20, "title": "Boston zip", "satisfied": True, "via": [ZIP_TAG]},
                 {"group_id": 30, "title": "Outdoorsy", "satisfied": False, "via": []}]},
            {"tier": 1, "band_id": 2, "title": "band 2", "is_bullseye": False, "n_groups": 2,
             "satisfied": True, "picked": True,
             "reason": "picked: satisfied, and first by the rule (2 groups, band id 2)",
             "groups": [
                 {"group_id": 10, "title": "Women", "satisfied": True, "via": [FEMALE_TAG]},
                 {"group_id": 20, "title": "Boston zip", "satisfied": True, "via": [ZIP_TAG]}]},
            {"tier": 2, "band_id": 3, "title": "band 3", "is_bullseye": False, "n_groups": 1,
             "satisfied": True, "picked": False,
             "reason": "satisfied, but band 2 comes first: 2 groups against 1",
             "groups": [{"group_id": 10, "title": "Women", "satisfied": True, "via": [FEMALE_TAG]}]},
        ],
        "rule": {"band_id": 2, "reason": "picked: satisfied, and first by the rule (2 groups, band id 2)",
                 "snapshot": {"tags": [SEX_PART, ZIP_PART]}},
        "stored": {"band_id": 2, "snapshot": {"tags": [SEX_PART, ZIP_PART]}},
        "agrees": True,
    },
    M3: {
        "me_file_id": 3,
        "target": TARGET_1,
        "bands": [
            {"tier": 0, "band_id": 1, "title": "band 1", "is_bullseye": True, "n_groups": 3,
             "satisfied": False, "picked": False, "reason": "not satisfied: no tag in group 20",
             "groups": [
                 {"group_id": 10, "title": "Women", "satisfied": True, "via": [FEMALE_TAG]},
                 {"group_id": 20, "title": "Boston zip", "satisfied": False, "via": []},
                 {"group_id": 30, "title": "Outdoorsy", "satisfied": True, "via": [
                     {"trait_id": 52, "trait_name": "Hiking", "tag_value": "Hiking"}]}]},
            {"tier": 1, "band_id": 2, "title": "band 2", "is_bullseye": False, "n_groups": 2,
             "satisfied": False, "picked": False, "reason": "not satisfied: no tag in group 20",
             "groups": [
                 {"group_id": 10, "title": "Women", "satisfied": True, "via": [FEMALE_TAG]},
                 {"group_id": 20, "title": "Boston zip", "satisfied": False, "via": []}]},
            {"tier": 2, "band_id": 3, "title": "band 3", "is_bullseye": False, "n_groups": 1,
             "satisfied": True, "picked": True,
             "reason": "picked: satisfied, and first by the rule (1 group, band id 3)",
             "groups": [{"group_id": 10, "title": "Women", "satisfied": True, "via": [FEMALE_TAG]}]},
        ],
        "rule": {"band_id": 3, "reason": "picked: satisfied, and first by the rule (1 group, band id 3)",
                 "snapshot": {"tags": [SEX_PART]}},
        "stored": {"band_id": 3, "snapshot": {"tags": [SEX_PART]}},
        "agrees": True,
    },
    M4: {
        "me_file_id": 4,
        "target": TARGET_1,
        "bands": [
            {"tier": 0, "band_id": 1, "title": "band 1", "is_bullseye": True, "n_groups": 3,
             "satisfied": False, "picked": False, "reason": "not satisfied: no tag in group 10, group 30",
             "groups": [
                 {"group_id": 10, "title": "Women", "satisfied": False, "via": []},
                 {"group_id": 20, "title": "Boston zip", "satisfied": True, "via": [ZIP_TAG]},
                 {"group_id": 30, "title": "Outdoorsy", "satisfied": False, "via": []}]},
            {"tier": 1, "band_id": 2, "title": "band 2", "is_bullseye": False, "n_groups": 2,
             "satisfied": False, "picked": False, "reason": "not satisfied: no tag in group 10",
             "groups": [
                 {"group_id": 10, "title": "Women", "satisfied": False, "via": []},
                 {"group_id": 20, "title": "Boston zip", "satisfied": True, "via": [ZIP_TAG]}]},
            {"tier": 2, "band_id": 3, "title": "band 3", "is_bullseye": False, "n_groups": 1,
             "satisfied": False, "picked": False, "reason": "not satisfied: no tag in group 10",
             "groups": [{"group_id": 10, "title": "Women", "satisfied": False, "via": []}]},
        ],
        "rule": {"band_id": None, "reason": "no band: none of the target's bands is satisfied",
                 "snapshot": None},
        "stored": {"band_id": None, "snapshot": None},
        "agrees": True,
    },
}


@pytest.mark.parametrize("me_file", [M1, M2, M3, M4], ids=["M1 in B1", "M2 in B2", "M3 in B3", "M4 in none"])
def test_json_of_a_me_file_in_each_band_and_in_none(cli, seeded, me_file):
    assert explain_json(cli, me_file, T1) == (0, JSON[me_file])


# -- a stored row that disagrees: exit 1 --------------------------------------------------------------
def test_a_row_in_the_wrong_band_exits_1(cli, seeded):
    with sync_triggers_disabled(seeded):
        untag(seeded, M2, ZIP_02140)  # the rule now says B3; the row stays in B2
    code, out = explain(cli, M2, T1)
    assert code == 1
    assert out.split("\n\n")[2] == """\
rule      band 3 "band 3"
snapshot  {"tags": [[1, "Sex (Biological)", 1, [[3, "Female", 2]]]]}
stored    band 2 {"tags": [[1, "Sex (Biological)", 1, [[3, "Female", 2]]], [4, "Home Zip Code", 1, [[101, "02140", 2140]]]]}: disagrees: the rule says band 3
to fix    pgsnap sync 2 (this me_file), pgsnap verify 1 (the whole target)
"""  # noqa: E501 (whole output lines)
    code, report = explain_json(cli, M2, T1)
    assert (code, report["rule"]["band_id"], report["stored"], report["agrees"]) == (
        1, B3, {"band_id": B2, "snapshot": {"tags": [SEX_PART, ZIP_PART]}}, False)


def test_a_stale_snapshot_and_a_missing_row_exit_1(cli, seeded):
    execute(seeded, "UPDATE target_populations SET matching_tags_snapshot = '{\"tags\": []}'"
                    " WHERE me_file_id = %s", (M3,))
    assert explain(cli, M3, T1)[1].split("\n\n")[2] == """\
rule      band 3 "band 3"
snapshot  {"tags": [[1, "Sex (Biological)", 1, [[3, "Female", 2]]]]}
stored    band 3 {"tags": []}: disagrees: the snapshot differs
to fix    pgsnap sync 3 (this me_file), pgsnap verify 1 (the whole target)
"""
    execute(seeded, "DELETE FROM target_populations WHERE me_file_id = %s", (M1,))
    code, out = explain(cli, M1, T1)
    assert (code, out.split("\n\n")[2].splitlines()[2:]) == (1, [
        "stored    no row: disagrees: the row is missing",
        "to fix    pgsnap sync 1 (this me_file), pgsnap verify 1 (the whole target)"])


def test_a_row_in_a_not_populated_target_exits_1(cli, seeded):
    """A not_populated target is not maintained: a row there is the finding, not its absence."""
    assert explain(cli, M1, T2) == (0, """\
me_file 1 in target 2 "target 2": not_populated, not stale

tier 0  band 9 "band 9" (bullseye, 1 group): picked: satisfied, and first by the rule (1 group, bullseye, band id 9)
  group 10 "Women"  satisfied by trait 3 "Female" = "Female"

rule      band 9 "band 9"
snapshot  {"tags": [[1, "Sex (Biological)", 1, [[3, "Female", 2]]]]}
stored    no row (the target is not_populated: pgsnap keeps no rows for it; `pgsnap populate 2` would)
""")  # noqa: E501 (whole output lines)
    set_target_status(seeded, T1, "not_populated")
    code, out = explain(cli, M3, T1)
    assert (code, out.split("\n\n")[2].splitlines()[2:]) == (1, [
        'stored    band 3 {"tags": [[1, "Sex (Biological)", 1, [[3, "Female", 2]]]]}: the target is'
        " not_populated: pgsnap keeps no rows for it",
        "to fix    pgsnap populate 1"])


def test_a_target_without_bands(cli, seeded):
    add_target(seeded, 3)
    assert explain(cli, M1, 3) == (0, """\
me_file 1 in target 3 "target 3": not_populated, not stale

rule      no band: the target has no bands
snapshot  -
stored    no row (the target is not_populated: pgsnap keeps no rows for it; `pgsnap populate 3` would)
""")


# -- a stale target ----------------------------------------------------------------------------------
def test_a_stale_target_says_since_when_and_how_to_repair(cli, seeded):
    add_group_trait(seeded, G20, ZIP_10028)  # M3 now satisfies B1; its row waits in B3
    since = value(seeded, "SELECT to_char(stale_since AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')"
                          "  FROM pgsnap.stale_targets() WHERE target_id = %s", (T1,))
    code, out = explain(cli, M3, T1)
    assert code == 1
    assert out == f"""\
me_file 3 in target 1 "target 1": populated, stale since {since} UTC (membership: traits of trait group 20 changed)

tier 0  band 1 "band 1" (bullseye, 3 groups): picked: satisfied, and first by the rule (3 groups, bullseye, band id 1)
  group 10 "Women"       satisfied by trait 3 "Female" = "Female"
  group 20 "Boston zip"  satisfied by trait 102 "10028" = "10028"
  group 30 "Outdoorsy"   satisfied by trait 52 "Hiking" = "Hiking"
tier 1  band 2 "band 2" (2 groups): satisfied, but band 1 comes first: 3 groups against 2
  group 10 "Women"       satisfied by trait 3 "Female" = "Female"
  group 20 "Boston zip"  satisfied by trait 102 "10028" = "10028"
tier 2  band 3 "band 3" (1 group): satisfied, but band 1 comes first: 3 groups against 1
  group 10 "Women"       satisfied by trait 3 "Female" = "Female"

rule      band 1 "band 1"
snapshot  {{"tags": [[1, "Sex (Biological)", 1, [[3, "Female", 2]]], [4, "Home Zip Code", 1, [[102, "10028", 10028]]], [50, "Hobbies", 3, [[52, "Hiking", 1]]]]}}
stored    band 3 {{"tags": [[1, "Sex (Biological)", 1, [[3, "Female", 2]]]]}}: disagrees: the rule says band 1
to fix    pgsnap populate --stale (re-populates every stale target)
"""  # noqa: E501 (whole output lines)
    code, report = explain_json(cli, M3, T1)
    assert (code, report["target"], report["agrees"]) == (1, {
        "target_id": 1, "title": "target 1", "status": "populated",
        "stale": {"since": since.replace(" ", "T") + "Z", "kind": "membership",
                  "reason": "traits of trait group 20 changed"}}, False)
    assert cli("populate", "--stale").exit_code == 0
    code, out = explain(cli, M3, T1)
    assert (code, out.splitlines()[0], out.splitlines()[-1]) == (
        0, 'me_file 3 in target 1 "target 1": populated, not stale',
        "stored    band 1, the same snapshot: agrees")


# -- cannot run: exit 2 ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("args", "message"), [
    ((9, T1), "P0002: me_file 9 does not exist"),
    ((M1, 9), "P0002: target 9 does not exist"),
    ((9, 9), "P0002: target 9 does not exist"),
], ids=["unknown me_file", "unknown target", "both unknown"])
def test_unknown_me_file_or_target_exits_2_with_one_line(cli, seeded, args, message):
    result = cli("explain", *args)
    assert (result.exit_code, result.stdout, result.stderr) == (2, "", f"error: {message}\n")
    result = cli("explain", *args, "--json")
    assert (result.exit_code, json.loads(result.stdout), result.stderr) == (
        2, {"error": message, "exit_code": 2}, f"error: {message}\n")
