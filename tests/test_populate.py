"""CALL pgsnap.populate_target and `pgsnap populate` (docs/sql-api.md, docs/rules.md "Populate").

Whole row sets after populate (Examples 1 and 3 of tests/helpers.py), re-runs that
write nothing, tag changes repaired by the next run (moves, refreshes,
deletes, inserts), statuses, batching, a backend killed mid-run, concurrent
runs, runs inside a caller's transaction, bad input, and the CLI.

Tag changes between two runs are made with the sync triggers disabled, so
the second populate is what repairs the rows.
"""

from __future__ import annotations

import json
import re
import threading

import psycopg
import pytest

from tests.helpers import (
    ADVISORY,
    B1,
    B2,
    B3,
    B9,
    FEMALE,
    G10,
    G20,
    G30,
    G40,
    G41,
    G50,
    GATES,
    HIKING,
    ITALIAN,
    M1,
    M2,
    M3,
    M4,
    M5,
    MALE,
    T1,
    T2,
    THAI,
    VIP,
    ZIP_02140,
    ZIP_10028,
    Model,
    Runner,
    add_group,
    add_target,
    add_trait,
    copy_rows,
    db_now,
    execute,
    gated,
    populate,
    populations,
    row_versions,
    row_versions_by_me_file,
    rows,
    seed_example_catalogue,
    seed_worked_example,
    set_target_status,
    snapshot,
    sync_triggers_disabled,
    tag,
    tags,
    target_status,
    untag,
    value,
    wait_until_blocked,
)

M7 = 7
FEMALE_ONLY = snapshot([1, "Sex (Biological)", 1, [[3, "Female", 2]]])
FEMALE_BOSTON = snapshot([1, "Sex (Biological)", 1, [[3, "Female", 2]]],
                         [4, "Home Zip Code", 1, [[101, "02140", 2140]]])
EXAMPLE_1_ROWS = {
    M1: (B1, snapshot([1, "Sex (Biological)", 1, [[3, "Female", 2]]],
                      [4, "Home Zip Code", 1, [[101, "02140", 2140]]],
                      [50, "Hobbies", 3, [[52, "Hiking", 1], [53, "Chess", 3]]])),
    M2: (B2, FEMALE_BOSTON),
    M3: (B3, FEMALE_ONLY),
}


def assert_model(conn, target):
    """The rows of `target` are exactly what the reference model says."""
    assert populations(conn, target) == Model.load(conn).populations(target)


def recomputed(conn, target, every=1):
    """From-scratch recomputation through the SQL API, me_file by me_file
    (every `every`-th me_file id only, for big seeds)."""
    return {
        me_file: (band, snap)
        for me_file, band, snap in rows(
            conn,
            "SELECT x.id, x.band, pgsnap.build_snapshot(x.id, x.band)"
            " FROM (SELECT m.id, pgsnap.band_for(m.id, %s) AS band FROM me_files m"
            "       WHERE m.id %% %s = 0) x"
            " WHERE x.band IS NOT NULL",
            (target, every),
        )
    }


# --------------------------------------------------------------------------
# Examples 1 and 3 as whole row sets


def test_example1_rows(conn):
    seed_worked_example(conn)
    populate(conn, T1)
    assert populations(conn, T1) == EXAMPLE_1_ROWS
    assert value(conn, "SELECT count(*) FROM target_populations") == 3


def test_example3_rows(conn):
    seed_example_catalogue(conn)
    add_target(conn, T2, bands=[(B9, [G40, G41, G50], True)])
    tags(conn, M5, {ITALIAN: "Italian", THAI: "Thai", VIP: "yes", ZIP_10028: None})
    populate(conn, T2)
    assert populations(conn, T2) == {
        M5: (B9, snapshot([200, "Cuisine", 7, [[201, "Italian", 4], [202, "Thai", 9]]]))
    }


def test_rows_carry_their_target_id(conn):
    seed_worked_example(conn)
    populate(conn, T1)
    assert rows(conn, "SELECT DISTINCT target_id FROM target_populations") == [(T1,)]


# --------------------------------------------------------------------------
# status


def test_status_goes_from_not_populated_to_populated(conn):
    seed_worked_example(conn)
    assert target_status(conn, T1) == ("not_populated", None)
    before = value(conn, "SELECT date_trunc('second', clock_timestamp())")
    populate(conn, T1)
    status, last = target_status(conn, T1)
    assert status == "populated"
    assert before <= last <= db_now(conn)


def test_target_without_bands_becomes_not_populated(conn):
    add_target(conn, 5)
    set_target_status(conn, 5, "populated")
    populate(conn, 5)
    assert target_status(conn, 5)[0] == "not_populated"


def test_target_without_bands_leaves_other_rows_untouched(conn):
    seed_worked_example(conn)
    populate(conn, T1)
    before = row_versions(conn)
    add_target(conn, 5)
    populate(conn, 5)
    assert row_versions(conn) == before
    assert target_status(conn, T1)[0] == "populated"


def test_target_with_bands_but_no_members_is_populated_and_empty(conn):
    seed_example_catalogue(conn)
    add_target(conn, T1, bands=[(B1, [G10], True)])
    populate(conn, T1)
    assert populations(conn, T1) == {}
    assert target_status(conn, T1)[0] == "populated"


# --------------------------------------------------------------------------
# re-runs


def test_rerun_without_changes_writes_no_row(conn):
    seed_worked_example(conn)
    populate(conn, T1)
    before, (_, last_before) = row_versions(conn), target_status(conn, T1)
    populate(conn, T1)
    assert row_versions(conn) == before  # same ids, xmin, snapshots, created/updated_at
    status, last_after = target_status(conn, T1)
    assert status == "populated"
    assert last_after >= last_before


def change_example_behind_populate(conn):
    """Example 1 plus M7 (Female only, B3), populated; then, with sync off:
    M1 drops Hiking (refresh in B1), M2 adds Hiking (move B2 → B1),
    M3 drops Female (leaves T1), M4 adds Female (enters B2), M7 unchanged."""
    seed_worked_example(conn)
    tags(conn, M7, {FEMALE: "Female"})
    populate(conn, T1)
    before = row_versions_by_me_file(conn, T1)
    with sync_triggers_disabled(conn):
        untag(conn, M1, HIKING)
        tag(conn, M2, HIKING, "Hiking")
        untag(conn, M3, FEMALE)
        tag(conn, M4, FEMALE, "Female")
    return before


CHANGED_ROWS = {
    M1: (B1, snapshot([1, "Sex (Biological)", 1, [[3, "Female", 2]]],
                      [4, "Home Zip Code", 1, [[101, "02140", 2140]]],
                      [50, "Hobbies", 3, [[53, "Chess", 3]]])),
    M2: (B1, snapshot([1, "Sex (Biological)", 1, [[3, "Female", 2]]],
                      [4, "Home Zip Code", 1, [[101, "02140", 2140]]],
                      [50, "Hobbies", 3, [[52, "Hiking", 1]]])),
    M4: (B2, FEMALE_BOSTON),
    M7: (B3, FEMALE_ONLY),
}


def test_stale_rows_stay_stale_until_populate_runs(conn):
    change_example_behind_populate(conn)
    assert populations(conn, T1) == {**EXAMPLE_1_ROWS, M7: (B3, FEMALE_ONLY)}


def test_rerun_after_tag_changes_gives_the_new_row_set(conn):
    change_example_behind_populate(conn)
    populate(conn, T1)
    assert populations(conn, T1) == CHANGED_ROWS
    assert target_status(conn, T1)[0] == "populated"


def test_rerun_after_tag_changes_leaves_unaffected_row_unwritten(conn):
    before = change_example_behind_populate(conn)
    populate(conn, T1)
    assert row_versions_by_me_file(conn, T1)[M7] == before[M7]


def test_rerun_refreshes_snapshot_within_the_same_band(conn):
    """Freshness (docs/rules.md): unlike the original application, the snapshot
    follows the tags; the row keeps its id and created_at."""
    before = change_example_behind_populate(conn)
    populate(conn, T1)
    after = row_versions_by_me_file(conn, T1)[M1]
    assert (after.target_band_id, after.snapshot) == CHANGED_ROWS[M1]
    assert (after.id, after.created_at) == (before[M1].id, before[M1].created_at)
    assert after.updated_at > before[M1].updated_at


def test_rerun_moves_me_file_to_its_new_band(conn):
    change_example_behind_populate(conn)
    populate(conn, T1)
    assert [(b,) for _, b, _ in rows(
        conn, "SELECT me_file_id, target_band_id, 0 FROM target_populations WHERE me_file_id = %s",
        (M2,))] == [(B1,)]
    assert populations(conn, T1)[M2] == CHANGED_ROWS[M2]


def test_band_move_updates_the_row_in_place(conn):
    """pgsnap's move is an UPDATE of the one (target, me_file) row."""
    before = change_example_behind_populate(conn)
    populate(conn, T1)
    after = row_versions_by_me_file(conn, T1)[M2]
    assert after.id == before[M2].id
    assert after.updated_at > before[M2].updated_at


def test_rerun_deletes_rows_that_no_longer_qualify(conn):
    change_example_behind_populate(conn)
    populate(conn, T1)
    assert value(conn, "SELECT count(*) FROM target_populations WHERE me_file_id = %s", (M3,)) == 0


def test_rerun_inserts_new_members(conn):
    before = change_example_behind_populate(conn)
    populate(conn, T1)
    assert M4 not in before
    assert populations(conn, T1)[M4] == (B2, FEMALE_BOSTON)


def test_rerun_after_trait_rename_refreshes_parent_name(conn):
    """A renamed parent changes the snapshot: populate rewrites it to the
    current build_snapshot (stored copies are not rewritten by the rename)."""
    seed_worked_example(conn)
    populate(conn, T1)
    execute(conn, "UPDATE traits SET trait_name = 'Gender' WHERE id = 1")
    assert populations(conn, T1) == EXAMPLE_1_ROWS
    populate(conn, T1)
    assert populations(conn, T1) == recomputed(conn, T1)
    assert populations(conn, T1)[M3] == (B3, snapshot([1, "Gender", 1, [[3, "Female", 2]]]))


def test_populate_only_touches_its_own_target(conn):
    seed_worked_example(conn)
    add_target(conn, T2, bands=[(21, [G10], True)])
    populate(conn, T1)
    populate(conn, T2)
    other = row_versions_by_me_file(conn, T2)
    with sync_triggers_disabled(conn):
        untag(conn, M3, FEMALE)
    populate(conn, T1)
    assert row_versions_by_me_file(conn, T2) == other
    assert M3 not in populations(conn, T1)


# --------------------------------------------------------------------------
# batching

HOBBY_TRAITS = (51, 52, 53)


def seed_twenty(conn, n=20):
    """Example 1's catalogue and T1, with `n` me_files of varied tags."""
    seed_example_catalogue(conn)
    add_target(conn, T1, bands=[(B1, [10, 20, 30], True), (B2, [10, 20]), (B3, [10])])
    for m in range(1, n + 1):
        tags(conn, m, {
            (MALE if m % 2 else FEMALE): None if m % 5 == 0 else "x",
            (ZIP_02140 if m % 3 else ZIP_10028): f"z{m}",
            HOBBY_TRAITS[m % 3]: "" if m % 4 == 0 else "h",
        })


def test_batch_size_3_gives_the_same_rows_as_500(conn):
    seed_twenty(conn)
    populate(conn, T1, batch_size=3)
    small = populations(conn, T1)
    assert small == Model.load(conn).populations(T1)
    assert len(small) > 5
    execute(conn, "DELETE FROM target_populations")
    set_target_status(conn, T1, "not_populated")
    populate(conn, T1, batch_size=500)
    assert populations(conn, T1) == small


def test_batch_size_1_rerun_repairs_changes_across_batches(conn):
    seed_twenty(conn)
    populate(conn, T1, batch_size=1)
    with sync_triggers_disabled(conn):
        for m in range(1, 21, 3):
            untag(conn, m, 2 + m % 2)  # drop the sex tag: leaves T1
        for m in range(2, 21, 4):
            execute(conn, "UPDATE me_file_tags SET tag_value = 'changed' WHERE me_file_id = %s", (m,))
        tags(conn, 21, {FEMALE: "Female"})
    populate(conn, T1, batch_size=1)
    assert_model(conn, T1)


# --------------------------------------------------------------------------
# killed mid-run, concurrent runs

ZIPS = range(101, 111)


def seed_bulk(conn, n):
    """n me_files over a nested 3-band target T1 (B1 ⊃ B2 ⊃ B3), ~3 tags each."""
    add_trait(conn, 1, "Sex (Biological)", order=1)
    add_trait(conn, 2, "Male", parent=1, order=1)
    add_trait(conn, 3, "Female", parent=1, order=2)
    add_trait(conn, 4, "Home Zip Code", order=1)
    for z in ZIPS:
        add_trait(conn, z, f"0{z + 2039}", parent=4, order=z)
    add_trait(conn, 50, "Hobbies", order=3)
    for h in HOBBY_TRAITS:
        add_trait(conn, h, f"hobby {h}", parent=50, order=h % 3)
    add_group(conn, 10, [3])
    add_group(conn, 20, [101, 102, 103, 104, 105])
    add_group(conn, 30, [52, 53])
    add_target(conn, T1, bands=[(B1, [10, 20, 30], True), (B2, [10, 20]), (B3, [10])])
    copy_rows(conn, "me_files", ["id"], ((m,) for m in range(1, n + 1)))
    copy_rows(
        conn,
        "me_file_tags",
        ["me_file_id", "trait_id", "tag_value"],
        (
            row
            for m in range(1, n + 1)
            for row in ((m, 2 + m % 2, None), (m, ZIPS[m % 10], f"z{m % 10}"),
                        (m, HOBBY_TRAITS[m % 3], "" if m % 7 == 0 else "h"))
        ),
    )


def test_killed_populate_leaves_populating_and_rerun_completes(conn, new_conn):
    seed_bulk(conn, 3000)
    execute(conn, GATES)   # the batch writing me_file 1501 waits on a lock the test holds
    execute(conn, "INSERT INTO public.test_gate VALUES (1501, 'victim', 7)")
    execute(conn, "SELECT pg_advisory_lock(7)")
    victim = gated(new_conn, "victim")
    victim_pid = victim.info.backend_pid
    killed = Runner(populate, victim, T1, 50)
    killed.start()
    wait_until_blocked(conn, victim_pid, "the batch of me_file 1501", ADVISORY)
    assert value(conn, "SELECT pg_terminate_backend(%s)", (victim_pid,)) is True
    with pytest.raises(psycopg.OperationalError):
        killed.finish()
    execute(conn, "SELECT pg_advisory_unlock(7)")

    expected = Model.load(conn).populations(T1)
    partial = populations(conn, T1)  # also asserts no duplicate me_file
    assert target_status(conn, T1)[0] == "populating"
    assert 0 < len(partial) < len(expected)
    assert all(expected.get(m) == row for m, row in partial.items()), "a committed row is wrong"

    populate(conn, T1, batch_size=50)
    final = populations(conn, T1)
    assert final == expected
    assert {m: row for m, row in final.items() if m % 10 == 0} == recomputed(conn, T1, every=10)
    assert value(conn, "SELECT count(*) FROM target_populations") == len(expected)
    assert value(
        conn, "SELECT count(*) FROM target_populations WHERE matching_tags_snapshot IS NULL"
    ) == 0
    assert target_status(conn, T1)[0] == "populated"


def test_concurrent_populates_of_one_target_end_like_one_run(conn, new_conn):
    seed_bulk(conn, 600)
    workers = [new_conn() for _ in range(2)]
    start = threading.Barrier(2)
    errors = []

    def run(c):
        start.wait()
        try:
            populate(c, T1, batch_size=20)
        except psycopg.Error as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert populations(conn, T1) == Model.load(conn).populations(T1)
    assert value(conn, "SELECT count(*) FROM target_populations") == len(populations(conn, T1))
    assert target_status(conn, T1)[0] == "populated"


FAIL_ON_ME_FILE_3 = """
CREATE FUNCTION public.test_fail_on_3() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN IF NEW.me_file_id = 3 THEN RAISE EXCEPTION 'test: refusing me_file 3'; END IF;
   RETURN NEW; END $$;
CREATE TRIGGER test_fail_on_3 BEFORE INSERT ON target_populations
    FOR EACH ROW EXECUTE FUNCTION public.test_fail_on_3();
"""


def test_run_that_failed_mid_run_does_not_block_other_sessions(conn, new_conn):
    """A populate that errors after committing a batch (its connection stays
    open, e.g. in an application pool) must not keep the target locked:
    another session's populate completes it."""
    seed_worked_example(conn)
    execute(conn, FAIL_ON_ME_FILE_3)
    failing = new_conn()
    with pytest.raises(psycopg.Error, match="refusing me_file 3"):
        populate(failing, T1, batch_size=1)
    assert target_status(conn, T1)[0] == "populating"
    execute(conn, "DROP TRIGGER test_fail_on_3 ON target_populations")
    execute(conn, "SET lock_timeout = '3s'")
    populate(conn, T1)
    assert populations(conn, T1) == EXAMPLE_1_ROWS
    assert target_status(conn, T1)[0] == "populated"


def test_run_that_failed_mid_run_is_completed_by_the_same_session(conn):
    seed_worked_example(conn)
    execute(conn, FAIL_ON_ME_FILE_3)
    with pytest.raises(psycopg.Error, match="refusing me_file 3"):
        populate(conn, T1, batch_size=1)
    execute(conn, "DROP TRIGGER test_fail_on_3 ON target_populations")
    populate(conn, T1)
    assert populations(conn, T1) == EXAMPLE_1_ROWS
    assert target_status(conn, T1)[0] == "populated"


# --------------------------------------------------------------------------
# inside a caller's transaction


def caller_view(caller):
    """What the caller's own transaction sees (schema-qualified names)."""
    return (
        value(caller, "SELECT count(*) FROM public.target_populations"),
        value(caller, "SELECT population_status FROM public.targets WHERE id = %s", (T1,)),
    )


def in_transaction(caller, target):
    return value(caller, "SELECT pgsnap.populate_target_in_transaction(%s)", (target,))


def test_populate_in_transaction_rolled_back_leaves_nothing(conn, new_conn):
    seed_worked_example(conn)
    caller = new_conn(autocommit=False)
    in_transaction(caller, T1)
    assert caller_view(caller) == (3, "populated")  # visible to the caller's transaction
    caller.rollback()
    assert populations(conn, T1) == {}
    assert target_status(conn, T1) == ("not_populated", None)


def test_populate_in_transaction_committed_persists(conn, new_conn):
    seed_worked_example(conn)
    caller = new_conn(autocommit=False)
    in_transaction(caller, T1)
    assert populations(conn, T1) == {}  # nothing visible before COMMIT
    caller.commit()
    assert populations(conn, T1) == EXAMPLE_1_ROWS
    assert target_status(conn, T1)[0] == "populated"


def test_populate_in_transaction_keeps_the_callers_search_path(conn, new_conn):
    """The caller's transaction goes on after the call with its own settings."""
    seed_worked_example(conn)
    caller = new_conn(autocommit=False)
    search_path = value(caller, "SELECT current_setting('search_path')")
    in_transaction(caller, T1)
    assert value(caller, "SELECT current_setting('search_path')") == search_path
    assert value(caller, "SELECT count(*) FROM target_populations") == 3
    caller.commit()


def test_populate_commits_per_batch_in_autocommit(conn, new_conn):
    """Batches before a failing one stay committed; the target stays populating."""
    seed_worked_example(conn)
    execute(conn, FAIL_ON_ME_FILE_3)
    caller = new_conn()
    with pytest.raises(psycopg.Error, match="refusing me_file 3"):
        populate(caller, T1, batch_size=1)
    assert populations(conn, T1) == {M1: EXAMPLE_1_ROWS[M1], M2: EXAMPLE_1_ROWS[M2]}
    assert target_status(conn, T1) == ("populating", None)


def test_populate_with_bound_parameters_commits_per_batch_too(conn, new_conn):
    """The extended protocol (psycopg with parameters, Postgrex, JDBC) opens the transaction
    just before the CALL; the procedure commits per batch all the same."""
    seed_worked_example(conn)
    execute(conn, FAIL_ON_ME_FILE_3)
    caller = new_conn()
    with pytest.raises(psycopg.Error, match="refusing me_file 3"):
        populate(caller, T1, batch_size=1, bind=True)
    assert populations(conn, T1) == {M1: EXAMPLE_1_ROWS[M1], M2: EXAMPLE_1_ROWS[M2]}
    assert target_status(conn, T1) == ("populating", None)


# --------------------------------------------------------------------------
# bad input: clear errors, nothing written


def public_state(conn):
    return (
        rows(conn, "SELECT * FROM targets ORDER BY id"),
        sorted(row_versions(conn).items()),
    )


def test_unknown_target_raises_an_error_naming_the_id(conn):
    seed_worked_example(conn)
    populate(conn, T1)
    before = public_state(conn)
    with pytest.raises(psycopg.Error) as caught:
        populate(conn, 999)
    assert caught.value.diag.message_primary == "target 999 does not exist"
    assert public_state(conn) == before


def test_unknown_target_with_default_batch_size_names_the_id(conn):
    with pytest.raises(psycopg.Error, match="target 424242 does not exist"):
        execute(conn, "CALL pgsnap.populate_target(424242)")
    assert rows(conn, "SELECT * FROM targets") == []


@pytest.mark.parametrize("batch_size", [0, -1, -500])
def test_non_positive_batch_size_is_rejected(conn, batch_size):
    seed_worked_example(conn)
    with pytest.raises(psycopg.errors.InvalidParameterValue) as caught:
        populate(conn, T1, batch_size=batch_size)
    assert caught.value.diag.message_primary == (
        f"batch size must be a positive integer, got {batch_size}"
    )
    assert target_status(conn, T1) == ("not_populated", None)
    assert row_versions(conn) == {}


def test_null_batch_size_is_rejected(conn):
    seed_worked_example(conn)
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        execute(conn, "CALL pgsnap.populate_target(%s::bigint, NULL)", (T1,))
    assert target_status(conn, T1) == ("not_populated", None)


def test_bad_batch_size_on_populated_target_changes_nothing(conn):
    seed_worked_example(conn)
    populate(conn, T1)
    before = public_state(conn)
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        populate(conn, T1, batch_size=0)
    assert public_state(conn) == before


# --------------------------------------------------------------------------
# CLI: pgsnap populate

# the contract's keys, plus the run's final status and its number of batches
SUMMARY_KEYS = {"target_id", "inserted", "moved", "deleted", "refreshed", "unchanged", "seconds",
                "status", "batches"}


def json_summaries(output):
    """One JSON object per target, one per line: the procedure's final NOTICE (its DETAIL)."""
    objects = [json.loads(line) for line in output.splitlines() if line.strip()]
    for obj in objects:
        assert SUMMARY_KEYS <= set(obj) and (obj["event"], obj["job"]) == ("done", "populate")
        assert isinstance(obj["seconds"], (int, float)) and obj["seconds"] >= 0
    return objects


def counts(obj):
    return {k: obj[k] for k in ("inserted", "moved", "deleted", "refreshed", "unchanged")}


def test_cli_populate_two_targets_prints_one_summary_each(conn, cli):
    seed_worked_example(conn)
    add_target(conn, T2, bands=[(21, [G10], True)])
    result = cli("populate", str(T1), str(T2))
    assert result.exit_code == 0, result.output
    assert result.stderr == ""  # no progress bar outside a terminal
    lines = result.stdout.splitlines()
    assert len(lines) == 2, result.stdout
    for line, target in zip(lines, (T1, T2), strict=True):
        assert re.fullmatch(
            rf"target {target}: 3 inserted, 0 moved, 0 deleted, 0 refreshed, 0 unchanged"
            r" \(1 batches, \d+\.\d\ds, scanned\)",
            line,
        ), line
    assert populations(conn, T1) == EXAMPLE_1_ROWS
    assert sorted(populations(conn, T2)) == [M1, M2, M3]


def test_cli_populate_says_whether_it_copied_a_twin_or_scanned(conn, cli):
    """A never-populated target whose bands match a populated target's is copied from it; a
    re-populate scans. The text says which, and --json has the event's method and source."""
    seed_worked_example(conn)
    add_target(conn, T2, bands=[(21, [G10, G20, G30], True), (22, [G10, G20]), (23, [G10])])  # T1's
    result = cli("populate", T1, T2)
    assert (result.exit_code, result.stderr) == (0, ""), result.output
    assert [re.sub(r"\d+\.\d\ds", "S", line) for line in result.stdout.splitlines()] == [
        "target 1: 3 inserted, 0 moved, 0 deleted, 0 refreshed, 0 unchanged (1 batches, S, scanned)",
        "target 2: 3 inserted, 0 moved, 0 deleted, 0 refreshed, 0 unchanged"
        " (1 batches, S, copied from target 1)",
    ]
    add_target(conn, 3, bands=[(31, [G10, G20, G30], True), (32, [G10, G20]), (33, [G10])])
    result = cli("populate", "--json", 3, T2)
    assert (result.exit_code, result.stderr) == (0, ""), result.output
    assert [(s["target_id"], s["method"], s["source_target_id"], s["inserted"], s["unchanged"])
            for s in json_summaries(result.stdout)] == [(3, "copied", T1, 3, 0), (T2, "scanned", None, 0, 3)]
    assert {m: b for m, (b, _) in populations(conn, 3).items()} == {M1: 31, M2: 32, M3: 33}


def test_cli_populate_target_without_bands_says_so(conn, cli):
    add_target(conn, 5)
    result = cli("populate", "5")
    assert (result.exit_code, result.stdout) == (0, "target 5: no bands, status not_populated\n")
    assert target_status(conn, 5)[0] == "not_populated"


def test_cli_populate_json_first_run(conn, cli):
    seed_worked_example(conn)
    add_target(conn, T2, bands=[(21, [G10], True)])
    result = cli("populate", "--json", str(T1), str(T2))
    assert result.exit_code == 0, result.output
    summaries = json_summaries(result.stdout)
    assert [s["target_id"] for s in summaries] == [T1, T2]
    zero = dict(inserted=0, moved=0, deleted=0, refreshed=0, unchanged=0)
    assert [counts(s) for s in summaries] == [{**zero, "inserted": 3}, {**zero, "inserted": 3}]
    assert [(s["status"], s["batches"]) for s in summaries] == [("populated", 1), ("populated", 1)]


def test_cli_populate_json_counts_every_kind_of_change(conn, cli):
    change_example_behind_populate(conn)
    result = cli("populate", str(T1), "--json", "--batch-size", "2")
    assert result.exit_code == 0, result.output
    (summary,) = json_summaries(result.stdout)
    assert summary["target_id"] == T1
    assert counts(summary) == dict(inserted=1, moved=1, deleted=1, refreshed=1, unchanged=1)
    assert summary["batches"] == 3  # candidates M1, M2, M3, M4, M7 in batches of 2
    assert populations(conn, T1) == CHANGED_ROWS


def test_cli_populate_json_rerun_is_all_unchanged(conn, cli):
    seed_worked_example(conn)
    populate(conn, T1)
    before = row_versions(conn)
    result = cli("populate", "--json", str(T1))
    assert result.exit_code == 0, result.output
    (summary,) = json_summaries(result.stdout)
    assert counts(summary) == dict(inserted=0, moved=0, deleted=0, refreshed=0, unchanged=3)
    assert row_versions(conn) == before


def test_cli_populate_all(conn, cli):
    seed_worked_example(conn)
    add_target(conn, T2, bands=[(21, [G10], True)])
    add_target(conn, 3)  # no bands
    result = cli("populate", "--all", "--json")
    assert result.exit_code == 0, result.output
    summaries = json_summaries(result.stdout)
    assert sorted(s["target_id"] for s in summaries) == [T1, T2, 3]
    by_target = {s["target_id"]: counts(s) for s in summaries}
    assert by_target[T1]["inserted"] == 3
    assert by_target[T2]["inserted"] == 3
    assert by_target[3] == dict(inserted=0, moved=0, deleted=0, refreshed=0, unchanged=0)
    assert [s["target_id"] for s in summaries] == [T1, T2, 3]  # id order
    assert [target_status(conn, t)[0] for t in (T1, T2, 3)] == [
        "populated", "populated", "not_populated"]
    assert populations(conn, T1) == EXAMPLE_1_ROWS


def test_cli_populate_unknown_target_is_one_line_error(conn, cli):
    seed_worked_example(conn)
    result = cli("populate", "999")
    assert (result.exit_code, result.stdout) == (2, "")  # not found
    assert result.stderr == "error: P0002: target 999 does not exist\n"
    assert row_versions(conn) == {}


def test_cli_populate_bad_batch_size_is_a_usage_error(conn, cli):
    seed_worked_example(conn)
    result = cli("populate", str(T1), "--batch-size", "0")
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == ("error: Invalid value for '--batch-size': 0 is not in the range x>=1 "
                             "(see `pgsnap populate --help`)\n")
    assert row_versions(conn) == {}
    assert target_status(conn, T1) == ("not_populated", None)


def test_cli_populate_needs_ids_or_all(conn, cli):
    for args in ((), ("--all", "1")):
        result = cli("populate", *args)
        assert (result.exit_code, result.stderr) == (
            2, "error: give TARGET_ID..., --all or --stale (one of them)\n")
