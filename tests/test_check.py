"""`pgsnap check`, `verify`, `status`, `metrics` and their SQL (sql/80_checks.sql, sql/85_metrics.sql).

Every invariant is broken on purpose, as the superuser the tests run as (dropping a
constraint in the test database, direct UPDATEs, run-log rows), and `check` must exit 1
naming it. `verify` differences are made by writing to target_populations directly, or by
changing tags with the sync triggers disabled.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from pgsnap import deploy
from pgsnap.schedule import cron, scheduler
from tests.helpers import (
    B1,
    B2,
    B3,
    B9,
    G10,
    G20,
    HIKING,
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
    rows,
    seed_worked_example,
    set_tag_value,
    set_target_status,
    sync_triggers_disabled,
    untag,
    value,
    wait_until,
)

SHAPE_OK = 'every snapshot is {"tags": [[...], ...]}'
TABLES = ("target_populations", "offers", "ad_events")


def utc(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") + " UTC"


@pytest.fixture
def healthy(conn):
    """The worked example: T1 populated (M1 in B1, M2 in B2, M3 in B3), T2 not populated,
    a launched campaign (3 offers), one ad_event, one successful backfill run.
    Returns the backfill run's id and finish time."""
    seed_worked_example(conn)
    add_target(conn, T2, bands=[(B9, [G10], True)])
    populate(conn, T1)
    execute(conn, "INSERT INTO campaigns (id, target_id, title) VALUES (1, %s, 'c1')", (T1,))
    execute(conn, "INSERT INTO bids (campaign_id, target_band_id, offer_amt)"
                  " VALUES (1, %s, 1.00), (1, %s, 0.50), (1, %s, 0.25)", (B1, B2, B3))
    assert value(conn, "SELECT pgsnap.launch_campaign(1)") == 3
    execute(conn, "INSERT INTO ad_events (offer_id, campaign_id, me_file_id, target_band_id, event_type)"
                  " SELECT id, campaign_id, me_file_id, target_band_id, 'shown' FROM offers"
                  " WHERE me_file_id = %s", (M1,))
    execute(conn, "CALL pgsnap.backfill_missing_snapshots()")
    return rows(conn, "SELECT id, finished_at FROM pgsnap.backfill_runs ORDER BY id DESC LIMIT 1")[0]


def healthy_checks(run_id: int, finished: datetime) -> list[dict]:
    return [
        {"check": "null_snapshots:target_populations", "violations": 0, "detail": "0 NULL of 3 rows"},
        {"check": "snapshot_shape:target_populations", "violations": 0, "detail": SHAPE_OK},
        {"check": "null_snapshots:offers", "violations": 0, "detail": "0 NULL of 3 rows"},
        {"check": "snapshot_shape:offers", "violations": 0, "detail": SHAPE_OK},
        {"check": "null_snapshots:ad_events", "violations": 0, "detail": "0 NULL of 1 row"},
        {"check": "snapshot_shape:ad_events", "violations": 0, "detail": SHAPE_OK},
        {"check": "duplicate_populations", "violations": 0, "detail": "one row per (target, me_file)"},
        {"check": "not_populated_rows", "violations": 0, "detail": "no rows in not_populated targets"},
        {"check": "stuck_populating", "violations": 0, "detail": "none populating for more than 1 hour"},
        {"check": "stale_targets", "violations": 0,
         "detail": "none stale for more than 1 hour (0 stale now, re-populated by the scheduled job)"},
        {"check": "compiled_catalogue", "violations": 0,
         "detail": "pgsnap.band_traits matches the catalogue"},
        {"check": "last_backfill_failed", "violations": 0,
         "detail": f"run {run_id} succeeded at {utc(finished)}"},
    ]


def check_detail(report: dict, name: str) -> str:
    return next(c["detail"] for c in report["checks"] if c["check"] == name)


def check_json(cli) -> tuple[int, dict]:
    result = cli("check", "--json")
    assert result.stderr == ""
    return result.exit_code, json.loads(result.stdout)


def assert_violation(cli, healthy, name: str, violations: int, detail: str,
                     other_details: dict[str, str] | None = None) -> None:
    """`check` exits 1; exactly `name` fails, with that count and detail; the rest is healthy
    (with `other_details` changed, e.g. a row count)."""
    code, report = check_json(cli)
    assert code == 1
    expected = healthy_checks(*healthy)
    for entry in expected:
        if entry["check"] == name:
            entry.update(violations=violations, detail=detail)
        elif entry["check"] in (other_details or {}):
            entry["detail"] = other_details[entry["check"]]
    assert report == {"healthy": False, "violations": violations, "failing": [name], "checks": expected}
    text = cli("check")
    assert text.exit_code == 1
    word = "violation" if violations == 1 else "violations"
    assert text.stdout.splitlines()[-1] == f"check: {violations} {word} ({name})"
    line = next(ln for ln in text.stdout.splitlines() if ln.startswith(name + " "))
    assert line.split()[1] == str(violations) and line.endswith(detail)


# -- check: healthy --------------------------------------------------------------------------------
def test_check_healthy_json(cli, healthy):
    code, report = check_json(cli)
    assert code == 0
    assert report == {"healthy": True, "violations": 0, "failing": [], "checks": healthy_checks(*healthy)}


def test_check_healthy_text(cli, healthy):
    run_id, finished = healthy
    result = cli("check")
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "check                              violations  detail\n"
        "null_snapshots:target_populations  0           0 NULL of 3 rows\n"
        f"snapshot_shape:target_populations  0           {SHAPE_OK}\n"
        "null_snapshots:offers              0           0 NULL of 3 rows\n"
        f"snapshot_shape:offers              0           {SHAPE_OK}\n"
        "null_snapshots:ad_events           0           0 NULL of 1 row\n"
        f"snapshot_shape:ad_events           0           {SHAPE_OK}\n"
        "duplicate_populations              0           one row per (target, me_file)\n"
        "not_populated_rows                 0           no rows in not_populated targets\n"
        "stuck_populating                   0           none populating for more than 1 hour\n"
        "stale_targets                      0           none stale for more than 1 hour (0 stale now,"
        " re-populated by the scheduled job)\n"
        "compiled_catalogue                 0           pgsnap.band_traits matches the catalogue\n"
        f"last_backfill_failed               0           run {run_id} succeeded at {utc(finished)}\n"
        "check: healthy\n"
    )


def test_check_on_an_empty_database_is_healthy(cli, conn):
    execute(conn, "DELETE FROM pgsnap.backfill_runs")  # the template's migrate recorded one
    code, report = check_json(cli)
    assert code == 0
    assert [(c["check"], c["violations"], c["detail"]) for c in report["checks"]][-1] == (
        "last_backfill_failed", 0, "no backfill run yet")
    assert check_detail(report, "null_snapshots:target_populations") == "0 NULL of 0 rows"


def test_check_invariants_sql_has_one_row_per_check(conn, healthy):
    assert rows(conn, "SELECT check_name, violations FROM pgsnap.check_invariants()") == [
        (c["check"], 0) for c in healthy_checks(*healthy)]


# -- check: each invariant broken on purpose -------------------------------------------------------
@pytest.mark.parametrize("table", TABLES)
def test_check_counts_null_snapshots(cli, conn, healthy, table):
    execute(conn, f"ALTER TABLE {table} ALTER COLUMN matching_tags_snapshot DROP NOT NULL")
    execute(conn, f"UPDATE {table} SET matching_tags_snapshot = NULL"
                  f" WHERE id = (SELECT min(id) FROM {table})")
    total = value(conn, f"SELECT count(*) FROM {table}")
    assert_violation(cli, healthy, f"null_snapshots:{table}", 1,
                     f"1 NULL of {total} {'row' if total == 1 else 'rows'}")


@pytest.mark.parametrize("table", TABLES)
def test_check_finds_snapshots_of_the_wrong_shape(cli, conn, healthy, table):
    execute(conn, f"ALTER TABLE {table} DROP CONSTRAINT {table}_snapshot_shape")
    ids = [r[0] for r in rows(conn, f"SELECT id FROM {table} ORDER BY id")]
    bad = ['{"tags": {}}', '[]', '"tags"']
    for row_id, snap in zip(ids, bad, strict=False):
        execute(conn, f"UPDATE {table} SET matching_tags_snapshot = %s::jsonb WHERE id = %s", (snap, row_id))
    n = min(len(ids), len(bad))
    assert_violation(cli, healthy, f"snapshot_shape:{table}", n,
                     "not {\"tags\": [[...], ...]}: id " + ", ".join(str(i) for i in ids[:n]))


def test_check_finds_two_rows_for_one_target_and_me_file(cli, conn, healthy):
    drop_unique(conn)
    execute(conn, "INSERT INTO target_populations (target_band_id, me_file_id, matching_tags_snapshot)"
                  " VALUES (%s, %s, '{\"tags\": []}')", (B3, M1))
    assert_violation(cli, healthy, "duplicate_populations", 1, f"target {T1} me_file {M1} (2 rows)",
                     {"null_snapshots:target_populations": "0 NULL of 4 rows"})


def test_check_finds_rows_in_a_not_populated_target(cli, conn, healthy):
    set_target_status(conn, T1, "not_populated")
    assert_violation(cli, healthy, "not_populated_rows", 3, f"target {T1} (3 rows)")


def test_check_populating_is_fine_until_the_threshold(cli, conn, healthy):
    with conn.transaction():  # populating_since is the now() of the transaction that set the status
        set_target_status(conn, T1, "populating")
        assert value(conn, "SELECT populating_since = now() FROM targets WHERE id = 1") is True
    assert check_json(cli) == (0, {"healthy": True, "violations": 0, "failing": [],
                                   "checks": healthy_checks(*healthy)})


def test_check_finds_a_target_stuck_populating(cli, conn, healthy):
    set_target_status(conn, T1, "populating")
    since = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    execute(conn, "UPDATE targets SET populating_since = %s WHERE id = 1", (since,))
    assert_violation(cli, healthy, "stuck_populating", 1,
                     f"populating for more than 1 hour: target {T1} since {utc(since)}"
                     " (nobody is populating it)")


def test_check_stuck_threshold_is_the_setting(cli, conn, healthy):
    execute(conn, "UPDATE pgsnap.settings SET value = '0 seconds' WHERE key = 'populating_stuck_after'")
    set_target_status(conn, T1, "populating")
    since = value(conn, "SELECT populating_since FROM targets WHERE id = 1")
    code, report = check_json(cli)
    assert code == 1 and report["failing"] == ["stuck_populating"]
    assert check_detail(report, "stuck_populating") == (
        f"populating for more than 0 seconds: target {T1} since {utc(since)} (nobody is populating it)")


@contextmanager
def populate_held(conn, new_conn, target: int) -> Iterator[int]:
    """`CALL pgsnap.populate_target(target, 1)` in another session, held inside the batch that
    inserts M2 (a trigger waits for an advisory lock this block holds); yields its pid."""
    execute(conn, "DELETE FROM target_populations WHERE target_id = %s", (target,))
    execute(conn, f"""
        CREATE FUNCTION public.test_hold() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_advisory_xact_lock_shared(4242); RETURN NEW; END $$;
        CREATE TRIGGER test_hold BEFORE INSERT ON target_populations
           FOR EACH ROW WHEN (NEW.me_file_id = {M2}) EXECUTE FUNCTION public.test_hold()""")
    execute(conn, "SELECT pg_advisory_lock(4242)")
    worker = new_conn()
    call = threading.Thread(target=lambda: execute(worker, "CALL pgsnap.populate_target(%s, 1)", (target,)))
    call.start()
    try:
        wait_until(lambda: rows(conn, "SELECT 1 FROM pg_stat_activity WHERE pid = %s"
                                      " AND wait_event = 'advisory'", (worker.info.backend_pid,)),
                   what="the populate to reach M2")
        yield worker.info.backend_pid
    finally:
        execute(conn, "SELECT pg_advisory_unlock(4242)")
        call.join(60)
        execute(conn, "DROP TRIGGER test_hold ON target_populations")


def test_check_names_the_session_still_populating(cli, conn, new_conn, healthy):
    execute(conn, "UPDATE pgsnap.settings SET value = '0 seconds' WHERE key = 'populating_stuck_after'")
    with populate_held(conn, new_conn, T1) as pid:
        since = value(conn, "SELECT populating_since FROM targets WHERE id = %s", (T1,))
        code, report = check_json(cli)
        stuck = next(c for c in report["checks"] if c["check"] == "stuck_populating")
    assert (code, stuck) == (1, {
        "check": "stuck_populating", "violations": 1,
        "detail": f"populating for more than 0 seconds: target {T1} since {utc(since)}"
                  f" (pid {pid} still populating it)"})


def test_populating_start_is_recorded_and_cleared_by_populate(conn, new_conn, healthy):
    last = value(conn, "SELECT last_populated_at FROM targets WHERE id = %s", (T1,))
    with populate_held(conn, new_conn, T1) as pid:
        since = value(conn, "SELECT populating_since FROM targets WHERE id = %s", (T1,))
        assert rows(conn, "SELECT * FROM pgsnap.populating_targets()") == [(T1, since, last, pid)]
        assert since is not None and since > last
    assert rows(conn, "SELECT * FROM pgsnap.populating_targets()") == []
    assert value(conn, "SELECT populating_since FROM targets WHERE id = %s", (T1,)) is None
    assert value(conn, "SELECT population_status FROM targets WHERE id = %s", (T1,)) == "populated"


def test_check_without_a_recorded_start_falls_back_to_last_populated_at(cli, conn, healthy):
    set_target_status(conn, T1, "populating", last_populated_at=datetime(2026, 1, 1, tzinfo=UTC))
    execute(conn, "UPDATE targets SET populating_since = NULL WHERE id = 1")
    assert_violation(cli, healthy, "stuck_populating", 1,
                     f"populating for more than 1 hour: target {T1} since an unknown time"
                     " (nobody is populating it)")


def test_check_finds_a_failed_last_backfill_run(cli, conn, healthy):
    run_id = value(conn, "INSERT INTO pgsnap.backfill_runs (status, finished_at, error)"
                         " VALUES ('failed', '2026-01-02 03:04:05+00', 'boom: out of disk') RETURNING id")
    detail = f"run {run_id} failed at 2026-01-02 03:04:05 UTC: boom: out of disk"
    # started now, so it is the latest; a skipped run after it does not hide it
    execute(conn, "INSERT INTO pgsnap.backfill_runs (status, finished_at) VALUES ('skipped', now())")
    assert_violation(cli, healthy, "last_backfill_failed", 1, detail)
    execute(conn, "CALL pgsnap.backfill_missing_snapshots()")  # a later run succeeds: healthy again
    code, report = check_json(cli)
    assert code == 0
    assert check_detail(report, "last_backfill_failed").startswith(f"run {run_id + 2} succeeded at ")


def test_check_finds_a_backfill_run_whose_session_is_gone(cli, conn, healthy):
    started = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC) + timedelta(days=3650)  # the latest
    run_id = value(conn, "INSERT INTO pgsnap.backfill_runs (pid, started_at, status)"
                         " VALUES (2147483647, %s, 'running') RETURNING id", (started,))
    assert_violation(cli, healthy, "last_backfill_failed", 1,
                     f"run {run_id} started at {utc(started)} is still marked running"
                     " but its session (pid 2147483647) is gone")


def test_check_a_running_backfill_is_fine(cli, conn, healthy):
    run_id = value(conn, "INSERT INTO pgsnap.backfill_runs (status, started_at) VALUES ('running', now())"
                         " RETURNING id")  # this test's own session: alive
    code, report = check_json(cli)
    assert code == 0
    assert check_detail(report, "last_backfill_failed").startswith(f"run {run_id} running at ")


def test_check_reports_every_failing_check(cli, conn, healthy):
    set_target_status(conn, T1, "not_populated")
    execute(conn, "INSERT INTO pgsnap.backfill_runs (status, finished_at, error)"
                  " VALUES ('failed', now(), 'x')")
    result = cli("check")
    assert result.exit_code == 1
    assert result.stdout.splitlines()[-1] == "check: 4 violations (not_populated_rows, last_backfill_failed)"


# -- check: cannot check ---------------------------------------------------------------------------
def test_check_cannot_connect_exits_2(cli):
    result = cli("check", dsn="host=127.0.0.1 port=1 dbname=nowhere connect_timeout=3")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith("error: cannot connect to 127.0.0.1:1/nowhere: ")


def test_check_when_the_check_itself_fails_exits_2(cli, conn):
    execute(conn, "DROP FUNCTION pgsnap.check_invariants()")
    message = "cannot check: 42883: function pgsnap.check_invariants() does not exist"
    result = cli("check", "--json")
    assert (result.exit_code, json.loads(result.stdout), result.stderr) == (
        2, {"error": message, "exit_code": 2}, f"error: {message}\n")
    result = cli("check")
    assert (result.exit_code, result.stdout, result.stderr) == (2, "", f"error: {message}\n")


def test_behind_database_cannot_be_checked_but_has_a_status(cli, empty_db_dsn):
    deploy.migrate(empty_db_dsn, backfill=False)  # the enforcement steps pending
    result = cli("check", dsn=empty_db_dsn)
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == "error: database is behind this pgsnap: run `pgsnap migrate`\n"
    result = cli("verify", "1", dsn=empty_db_dsn)
    assert result.exit_code == 2
    status = cli("status", dsn=empty_db_dsn)
    assert status.exit_code == 0, status.output
    ids = [m.id for m in deploy.read_migrations()]
    with psycopg.connect(empty_db_dsn) as c:
        pending = [mid for mid in ids if mid not in deploy.applied_migrations(c)]
    assert pending and all(deploy.is_enforcement(m) for m in deploy.read_migrations() if m.id in pending)
    assert section(status.stdout, "migrations") == [
        f"{len(ids) - len(pending)} applied, {len(pending)} pending",
        *(f"pending: {mid}" for mid in pending),
        "run `pgsnap migrate`",
    ]
    assert section(status.stdout, "targets")[:3] == [
        "populated      0", "populating     0", "not_populated  0"]


# -- verify --------------------------------------------------------------------------------------
def verify(cli, target=T1) -> tuple[int, list[str]]:
    result = cli("verify", target)
    assert result.stderr == ""
    return result.exit_code, result.stdout.splitlines()


def drop_unique(conn) -> None:
    execute(conn, "ALTER TABLE target_populations"
                  " DROP CONSTRAINT target_populations_target_id_me_file_id_key")


def test_verify_healthy_target(cli, conn, healthy):
    assert verify(cli) == (0, [f"target {T1} (populated, 3 rows): no differences"])
    assert verify(cli, T2) == (0, [f"target {T2} (not_populated, 0 rows): no differences"])
    assert rows(conn, "SELECT * FROM pgsnap.verify_target(%s)", (T1,)) == []


BREAK = {
    "missing": (
        lambda conn: execute(conn, "DELETE FROM target_populations WHERE me_file_id = %s", (M2,)),
        [f"me_file {M2}: missing expected {B2} actual -"], 2),
    "extra": (
        lambda conn: execute(conn, "INSERT INTO target_populations (target_band_id, me_file_id,"
                                   " matching_tags_snapshot) VALUES (%s, %s, '{\"tags\": []}')", (B3, M4)),
        [f"me_file {M4}: extra expected - actual {B3}"], 4),
    "wrong_band": (
        lambda conn: execute(conn, "UPDATE target_populations SET target_band_id = %s WHERE me_file_id = %s",
                             (B2, M1)),
        [f"me_file {M1}: wrong_band expected {B1} actual {B2}"], 3),
    "stale_snapshot": (
        lambda conn: execute(conn, "UPDATE target_populations SET matching_tags_snapshot = '{\"tags\": []}'"
                                   " WHERE me_file_id = %s", (M3,)),
        [f"me_file {M3}: stale_snapshot expected {B3} actual {B3}"], 3),
    "null_snapshot": (
        lambda conn: (execute(conn, "ALTER TABLE target_populations ALTER COLUMN matching_tags_snapshot"
                                    " DROP NOT NULL"),
                      execute(conn, "UPDATE target_populations SET matching_tags_snapshot = NULL"
                                    " WHERE me_file_id = %s", (M3,))),
        [f"me_file {M3}: null_snapshot expected {B3} actual {B3}"], 3),
    "duplicate": (
        lambda conn: (drop_unique(conn),
                      execute(conn, "INSERT INTO target_populations (target_band_id, me_file_id,"
                                    " matching_tags_snapshot) VALUES (%s, %s, '{\"tags\": []}')", (B3, M1))),
        [f"me_file {M1}: duplicate expected {B1} actual {B3}"], 4),
}


@pytest.mark.parametrize("problem", list(BREAK))
def test_verify_finds_each_kind_of_difference(cli, conn, healthy, problem):
    damage, lines, n_rows = BREAK[problem]
    damage(conn)
    assert verify(cli) == (1, [*lines, f"target {T1} (populated, {n_rows} rows): 1 difference (1 {problem})"])
    ((me_file, kind, expected, actual),) = rows(conn, "SELECT * FROM pgsnap.verify_target(%s)", (T1,))
    assert kind == problem
    assert lines == [f"me_file {me_file}: {kind} expected {expected or '-'} actual {actual or '-'}"]


def test_verify_finds_changes_the_sync_did_not_make(cli, conn, healthy):
    with sync_triggers_disabled(conn):
        set_tag_value(conn, M1, HIKING, "Trekking")  # M1 stays in B1, its snapshot changes
        untag(conn, M2, ZIP_02140)                   # M2 falls from B2 to B3
    assert verify(cli) == (1, [
        f"me_file {M1}: stale_snapshot expected {B1} actual {B1}",
        f"me_file {M2}: wrong_band expected {B3} actual {B2}",
        f"target {T1} (populated, 3 rows): 2 differences (1 wrong_band, 1 stale_snapshot)",
    ])
    populate(conn, T1)
    assert verify(cli) == (0, [f"target {T1} (populated, 3 rows): no differences"])


def test_verify_lists_every_difference_in_me_file_order(cli, conn, healthy):
    drop_unique(conn)
    for problem in ("missing", "wrong_band", "extra"):
        BREAK[problem][0](conn)
    execute(conn, "INSERT INTO target_populations (target_band_id, me_file_id, matching_tags_snapshot)"
                  " VALUES (%s, %s, '{\"tags\": []}')", (B2, M3))
    assert verify(cli) == (1, [
        f"me_file {M1}: wrong_band expected {B1} actual {B2}",
        f"me_file {M2}: missing expected {B2} actual -",
        f"me_file {M3}: duplicate expected {B3} actual {B2}",
        f"me_file {M4}: extra expected - actual {B3}",
        f"target {T1} (populated, 4 rows): 4 differences (1 missing, 1 extra, 1 wrong_band, 1 duplicate)",
    ])


def test_verify_a_not_populated_target_expects_no_rows(cli, conn, healthy):
    set_target_status(conn, T1, "not_populated")
    assert verify(cli) == (1, [
        f"me_file {M1}: extra expected - actual {B1}",
        f"me_file {M2}: extra expected - actual {B2}",
        f"me_file {M3}: extra expected - actual {B3}",
        f"target {T1} (not_populated, 3 rows): 3 differences (3 extra)",
    ])


def test_verify_unknown_target(cli, conn):
    result = cli("verify", "99")
    assert (result.exit_code, result.stdout, result.stderr) == (
        2, "", "error: P0002: target 99 does not exist\n")
    with pytest.raises(psycopg.errors.NoDataFound) as raised:
        conn.execute("SELECT * FROM pgsnap.verify_target(99)")
    assert raised.value.diag.message_primary == "target 99 does not exist"


# -- status --------------------------------------------------------------------------------------
def section(stdout: str, title: str) -> list[str]:
    """The lines of one status section, without their two-space indent."""
    lines = stdout.splitlines()
    start = lines.index(title) + 1
    end = lines.index("", start)
    assert all(ln.startswith("  ") for ln in lines[start:end])
    return [ln[2:] for ln in lines[start:end]]


def test_status_shows_every_section(cli, conn, healthy):
    run_id, finished = healthy
    installed = cli("schedule", "install", "--runner", "pgsnap")
    assert installed.exit_code == 0, installed.output
    jobid = value(conn, "SELECT jobid FROM pgsnap.jobs WHERE jobname = 'pgsnap-backfill'")
    set_target_status(conn, T2, "populating")
    since = value(conn, "SELECT populating_since FROM targets WHERE id = 2")
    result = cli("status")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert re.match(r"pgsnap status of 127\.0\.0\.1:\d+/\S+ at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\n\n", out)
    assert [ln for ln in out.splitlines() if ln and not ln.startswith(" ")][1:] == [
        "targets", "stale targets", "band counts (maintained targets)", "snapshots",
        "backfill runs (latest 5)", "schedule", "migrations"]
    assert section(out, "targets") == [
        "populated      1",
        "populating     1",
        "not_populated  0",
        f"target {T2} populating since {utc(since)}; nobody is populating it",
    ]
    assert section(out, "snapshots") == [
        "table               NULL  rows",
        "target_populations  0     3",
        "offers              0     3",
        "ad_events           0     1",
    ]
    runs = section(out, "backfill runs (latest 5)")
    assert runs[0].split() == ["id", "started", "(UTC)", "finished", "(UTC)", "status", "batches",
                               "target_populations", "offers", "ad_events", "error"]
    assert runs[1].split()[0] == str(run_id) and runs[1].split()[3:6] == [
        finished.astimezone(UTC).strftime("%Y-%m-%d"), finished.astimezone(UTC).strftime("%H:%M:%S"),
        "succeeded"]
    assert runs[1].split()[6:] == ["0", "0", "0", "0", "-"]
    schedule = section(out, "schedule")
    assert schedule[0].split() == ["runner", "jobid", "name", "schedule", "active", "last", "run", "(UTC)",
                                   "status", "next", "run", "(UTC)"]
    job = schedule[1].split()
    assert job[:10] == ["pgsnap", str(jobid), "pgsnap-backfill", "0", "*", "*", "*", "*", "yes", "-"]
    assert job[10] == "-"
    # the next run is the first slot after the time in the header (one clock for both)
    printed = datetime.strptime(out.split(" at ", 1)[1][:19], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    assert " ".join(job[11:13]) == f"{cron.next_runs('0 * * * *', printed)[0]:%Y-%m-%d %H:%M:%S}"
    assert "pgsnap scheduler: not running; its jobs run only under `pgsnap schedule run`" in schedule
    n = len(deploy.read_migrations())
    assert section(out, "migrations") == [f"{n} applied, 0 pending"]


def test_status_without_jobs_or_runs(cli, conn):
    execute(conn, "DELETE FROM pgsnap.backfill_runs")  # the template's migrate recorded one
    result = cli("status")
    assert result.exit_code == 0, result.output
    assert section(result.stdout, "backfill runs (latest 5)") == ["no backfill run yet"]
    assert section(result.stdout, "schedule")[0] == (
        "no jobs: the safety-net backfill is not scheduled; run `pgsnap schedule install`")


def test_status_shows_the_latest_five_runs_newest_first(cli, conn):
    first = value(conn, "SELECT coalesce(max(id), 0) + 1 FROM pgsnap.backfill_runs")
    execute(conn, "DELETE FROM pgsnap.backfill_runs")  # the template's migrate recorded one
    for i in range(7):
        execute(conn, "INSERT INTO pgsnap.backfill_runs (started_at, finished_at, status, error)"
                      " VALUES (%s, %s, %s, %s)",
                (datetime(2026, 1, 1, i, tzinfo=UTC), datetime(2026, 1, 1, i, 5, tzinfo=UTC),
                 "failed" if i == 5 else "succeeded", "boom\nsecond line" if i == 5 else None))
    runs = section(cli("status").stdout, "backfill runs (latest 5)")
    assert [int(r.split()[0]) - first + 1 for r in runs[1:]] == [7, 6, 5, 4, 3]
    assert runs[2].split()[5:] == ["failed", "0", "0", "0", "0", "boom"]


def test_status_names_a_held_migration_lock(cli, conn):
    execute(conn, "INSERT INTO yoyo_lock (locked, ctime, pid) VALUES (1, '2026-01-02 03:04:05', 4242)")
    assert section(cli("status").stdout, "migrations")[1:] == [
        "migration lock held by process 4242 since 2026-01-02 03:04:05 UTC; if no `pgsnap migrate`"
        " is running, it is stale: DELETE FROM yoyo_lock"]


def test_status_shows_stale_targets_with_their_age_and_band_counts(cli, conn, healthy, monkeypatch):
    assert section(cli("status").stdout, "stale targets") == [
        "none: every maintained target follows the catalogue"]
    set_target_status(conn, T2, "populating")
    add_group_trait(conn, G20, ZIP_10028)  # T1 stale: M3 now belongs in B1
    execute(conn, "UPDATE pgsnap.target_state SET stale_since = '2026-01-02 03:04:05+00'"
                  " WHERE target_id = %s", (T1,))
    monkeypatch.setattr(scheduler, "utcnow", lambda: datetime(2026, 1, 2, 5, 9, 8, tzinfo=UTC))
    result = cli("status")
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout.splitlines()[0].endswith(" at 2026-01-02 05:09:08 UTC")
    assert section(result.stdout, "stale targets") == [
        "target  stale since (UTC)    age     kind        reason",
        f"{T1}       2026-01-02 03:04:05  2h 05m  membership  traits of trait group 20 changed",
        "re-populate them now: `pgsnap populate --stale` (the pgsnap-stale job does it when scheduled)",
    ]
    assert section(result.stdout, "band counts (maintained targets)") == [
        "target  status      tier  band  population",
        f"{T1}       populated   0     {B1}     1",
        f"{T1}       populated   1     {B2}     1",
        f"{T1}       populated   2     {B3}     1",
        f"{T2}       populating  0     {B9}     0",
    ]
    report = json.loads(cli("status", "--json").stdout)
    assert report["stale_targets"] == [
        {"target_id": T1, "stale_since": "2026-01-02T03:04:05Z", "age_seconds": 2 * 3600 + 5 * 60 + 3,
         "kind": "membership", "reason": "traits of trait group 20 changed"}]
    assert report["band_counts"] == [
        {"target_id": T1, "status": "populated", "bands": [
            {"target_band_id": B1, "tier": 0, "population": 1},
            {"target_band_id": B2, "tier": 1, "population": 1},
            {"target_band_id": B3, "tier": 2, "population": 1}]},
        {"target_id": T2, "status": "populating", "bands": [
            {"target_band_id": B9, "tier": 0, "population": 0}]},
    ]
    assert cli("populate", "--stale").exit_code == 0
    out = cli("status").stdout
    assert section(out, "stale targets") == ["none: every maintained target follows the catalogue"]
    assert section(out, "band counts (maintained targets)")[1:4] == [
        f"{T1}       populated   0     {B1}     2",   # M3 joined the bullseye
        f"{T1}       populated   1     {B2}     1",
        f"{T1}       populated   2     {B3}     0",
    ]


def test_status_band_counts_of_no_maintained_target_and_of_one_without_bands(cli, conn):
    assert section(cli("status").stdout, "band counts (maintained targets)") == [
        "no maintained target (populating or populated)"]
    add_target(conn, 7)
    set_target_status(conn, 7, "populated")
    assert section(cli("status").stdout, "band counts (maintained targets)") == [
        "target  status     tier  band  population",
        "7       populated  -     -     -",
    ]
    assert json.loads(cli("status", "--json").stdout)["band_counts"] == [
        {"target_id": 7, "status": "populated", "bands": []}]


# -- metrics ---------------------------------------------------------------------------------------
def scrape(cli) -> dict[tuple[str, tuple], float]:
    """`pgsnap metrics` parsed by prometheus_client, as {(name, labels): value}; the OpenMetrics
    parser must accept the same text."""
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
    from prometheus_client.parser import text_string_to_metric_families

    result = cli("metrics")
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout.endswith("\n# EOF\n")
    families = list(text_string_to_metric_families(result.stdout))
    assert all(f.type == "gauge" and f.documentation for f in families)
    assert [f.name for f in openmetrics(result.stdout)] == [f.name for f in families]
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def by_label(samples: dict, name: str) -> dict[str, float]:
    """{the one label's value: sample value} of one metric."""
    return {labels[0][1]: v for (n, labels), v in samples.items() if n == name}


ZERO_NULLS = {"target_populations": 0, "offers": 0, "ad_events": 0}


def test_metrics_of_a_healthy_database(cli, conn, healthy):
    samples = scrape(cli)
    assert by_label(samples, "pgsnap_null_snapshots") == ZERO_NULLS
    assert by_label(samples, "pgsnap_rows") == {"target_populations": 3, "offers": 3, "ad_events": 1}
    assert by_label(samples, "pgsnap_targets") == {"populated": 1, "populating": 0, "not_populated": 1}
    assert samples[("pgsnap_targets_stuck", ())] == 0
    assert by_label(samples, "pgsnap_check_violations") == {c["check"]: 0 for c in healthy_checks(*healthy)}
    assert by_label(samples, "pgsnap_backfill_last_run") == {
        "running": 0, "succeeded": 1, "failed": 0, "skipped": 0, "stopped": 0}
    age = samples[("pgsnap_backfill_last_success_age_seconds", ())]
    assert 0 <= age <= value(conn, "SELECT extract(epoch FROM now() - %s)", (healthy[1],))
    assert len(samples) == 3 + 3 + 3 + 1 + len(healthy_checks(*healthy)) + 1 + 5


def test_metrics_follow_the_database(cli, conn, healthy):
    execute(conn, "ALTER TABLE offers ALTER COLUMN matching_tags_snapshot DROP NOT NULL")
    execute(conn, "UPDATE offers SET matching_tags_snapshot = NULL WHERE id = (SELECT min(id) FROM offers)")
    set_target_status(conn, T2, "populating")
    execute(conn, "UPDATE targets SET populating_since = '2026-01-02T03:04:05Z' WHERE id = %s", (T2,))
    execute(conn, "DELETE FROM pgsnap.backfill_runs")
    execute(conn, "INSERT INTO pgsnap.backfill_runs (status, finished_at, error)"
                  " VALUES ('failed', now(), 'x')")
    samples = scrape(cli)
    assert by_label(samples, "pgsnap_null_snapshots") == {**ZERO_NULLS, "offers": 1}
    assert by_label(samples, "pgsnap_targets") == {"populated": 1, "populating": 1, "not_populated": 0}
    assert samples[("pgsnap_targets_stuck", ())] == 1
    assert {k: v for k, v in by_label(samples, "pgsnap_check_violations").items() if v} == {
        "null_snapshots:offers": 1, "stuck_populating": 1, "last_backfill_failed": 1}
    assert by_label(samples, "pgsnap_backfill_last_run") == {
        "running": 0, "succeeded": 0, "failed": 1, "skipped": 0, "stopped": 0}
    assert ("pgsnap_backfill_last_success_age_seconds", ()) not in samples  # no successful run left


def test_metrics_label_values_are_escaped():
    from prometheus_client.parser import text_string_to_metric_families

    from pgsnap.cli.report import metrics_text

    text = metrics_text([("pgsnap_check_violations", "help", {"check": 'a "b"\\c\nd'}, 2.5)])
    (family,) = text_string_to_metric_families(text)
    assert [(s.labels, s.value) for s in family.samples] == [({"check": 'a "b"\\c\nd'}, 2.5)]
