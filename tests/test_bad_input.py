"""The bad-input matrix (docs/operations.md, "Errors and exit statuses").

For every CLI command and contract function: unknown ids, zero/negative/NULL batch sizes and
max-batches, invalid cron expressions, malformed explicit snapshots, invalid DSNs, a database
behind or ahead of this pgsnap. Each case asserts the exact message and exit status (CLI) or
SQLSTATE (SQL), and that every table of schemas public and pgsnap is unchanged afterwards.
"""

from __future__ import annotations

import getpass
import json

import psycopg
import pytest

from pgsnap import deploy
from tests import helpers as h
from tests.legacy_data import add_bid, add_campaign

C1, C2 = 1, 2
BASELINE = "0001.baseline-schema"
FUTURE = "9999.from-the-future"
BEHIND = "error: database is behind this pgsnap: run `pgsnap migrate`\n"
AHEAD = (f"error: database is ahead of this pgsnap: it has migration {FUTURE} unknown to this version; "
         "upgrade pgsnap\n")


@pytest.fixture
def world(conn):
    """Worked example: T1 populated, T2 (band B9) not; C1 on T1 bids on B1 and has an offer and an
    ad_event; C2 on T2."""
    h.seed_worked_example(conn)
    h.populate(conn, h.T1)
    h.add_target(conn, h.T2, bands=[(h.B9, [h.G10])])
    add_campaign(conn, C1, h.T1)
    add_campaign(conn, C2, h.T2)
    add_bid(conn, C1, h.B1, "1.50")
    h.execute(conn, "INSERT INTO offers (campaign_id, me_file_id, target_band_id, offer_amt)"
                    " VALUES (%s, %s, %s, 1)", (C1, h.M1, h.B1))
    h.execute(conn, "INSERT INTO ad_events (offer_id, event_type) SELECT id, 'banner_tap' FROM offers")
    return conn


# -- contract functions -------------------------------------------------------------------------
def batch(value):
    return ("22023", f"batch size must be a positive integer, got {value}")


SQL_ERRORS = [
    # unknown ids
    ("CALL pgsnap.populate_target(999)", "P0002", "target 999 does not exist"),
    ("CALL pgsnap.populate_target(NULL)", "P0002", "target NULL does not exist"),
    ("SELECT pgsnap.sync_me_file(999)", "P0002", "me_file 999 does not exist"),
    ("SELECT pgsnap.sync_me_file(NULL)", "P0002", "me_file NULL does not exist"),
    ("SELECT pgsnap.launch_campaign(999)", "P0002", "campaign 999 does not exist"),
    ("SELECT pgsnap.launch_campaign(NULL)", "P0002", "campaign NULL does not exist"),
    ("SELECT pgsnap.backfill_band(999)", "P0002", "target band 999 does not exist"),
    ("SELECT pgsnap.backfill_band(NULL)", "P0002", "target band NULL does not exist"),
    ("SELECT pgsnap.grant_app_role('no_such_role')", "42704", 'role "no_such_role" does not exist'),
    # a known id in the wrong state
    ("SELECT pgsnap.launch_campaign(2)", "55000", "campaign 2: target 2 is not_populated, not populated"),
    # zero, negative and NULL batch sizes and max-batches
    ("CALL pgsnap.populate_target(1, 0)", *batch(0)),
    ("CALL pgsnap.populate_target(1, -5)", *batch(-5)),
    ("CALL pgsnap.populate_target(1, NULL)", *batch("NULL")),
    ("CALL pgsnap.populate_target(999, 0)", *batch(0)),
    ("SELECT * FROM pgsnap.backfill_batch(0)", *batch(0)),
    ("SELECT * FROM pgsnap.backfill_batch(-1)", *batch(-1)),
    ("SELECT * FROM pgsnap.backfill_batch(NULL)", *batch("NULL")),
    ("CALL pgsnap.backfill_missing_snapshots(0)", *batch(0)),
    ("CALL pgsnap.backfill_missing_snapshots(-10)", *batch(-10)),
    ("CALL pgsnap.backfill_missing_snapshots(10, 0)", "22023",
     "max batches must be a positive integer or NULL, got 0"),
    ("CALL pgsnap.backfill_missing_snapshots(10, -1)", "22023",
     "max batches must be a positive integer or NULL, got -1"),
    ("SELECT pgsnap.backfill_band(1, 0)", *batch(0)),
    ("SELECT pgsnap.backfill_band(1, -1)", *batch(-1)),
    # snapshots that are NULL or have no source
    ("INSERT INTO target_populations (target_band_id, me_file_id, matching_tags_snapshot)"
     " VALUES (3, 4, NULL)", "23502",
     'null value in column "matching_tags_snapshot" of relation "target_populations" '
     "violates not-null constraint"),
    ("INSERT INTO offers (campaign_id, me_file_id, target_band_id, offer_amt) VALUES (1, 4, 1, 1)", "23502",
     "offer for me_file 4 in band 1 has no snapshot: no target population holds that me_file in that band"),
    ("INSERT INTO offers (campaign_id, me_file_id, target_band_id, offer_amt) VALUES (1, 999, 1, 1)", "23502",
     "offer for me_file 999 in band 1 has no snapshot: no target population holds that me_file in that band"),
    ("INSERT INTO ad_events (offer_id, event_type) VALUES (NULL, 'x')", "23502",
     "ad_event has no snapshot: no offer NULL with one, and no me_file and band to build it from "
     "(me_file NULL, band NULL)"),
    ("INSERT INTO ad_events (offer_id, event_type) VALUES (999, 'x')", "23502",
     "ad_event has no snapshot: no offer 999 with one, and no me_file and band to build it from "
     "(me_file NULL, band NULL)"),
    *[(f"UPDATE {t} SET matching_tags_snapshot = NULL", "23502",
       f'null value in column "matching_tags_snapshot" of relation "{t}" violates not-null constraint')
      for t in ("target_populations", "offers", "ad_events")],
    *[(f"UPDATE {t} SET matching_tags_snapshot = '{{\"tags\": {{}}}}'", "23514",
       f'new row for relation "{t}" violates check constraint "{t}_snapshot_shape"')
      for t in ("target_populations", "offers", "ad_events")],
]


@pytest.mark.parametrize(("statement", "sqlstate", "message"), SQL_ERRORS, ids=[c[0] for c in SQL_ERRORS])
def test_contract_function_refuses_bad_input(world, statement, sqlstate, message):
    before = h.db_state(world)
    with pytest.raises(psycopg.Error) as refused:
        h.execute(world, statement)
    assert (refused.value.sqlstate, refused.value.diag.message_primary) == (sqlstate, message)
    assert h.db_state(world) == before


LOOKUPS = [  # pure lookups: an unknown id is "nothing qualifies", not an error (docs/sql-api.md)
    ("SELECT pgsnap.build_snapshot(999, 1)", {"tags": []}),
    ("SELECT pgsnap.build_snapshot(1, 999)", {"tags": []}),
    ("SELECT pgsnap.build_snapshot(NULL, NULL)", {"tags": []}),
    ("SELECT pgsnap.band_for(999, 1)", None),
    ("SELECT pgsnap.band_for(1, 999)", None),
    ("SELECT pgsnap.band_for(1, NULL)", None),
]


@pytest.mark.parametrize(("statement", "expected"), LOOKUPS, ids=[c[0] for c in LOOKUPS])
def test_lookup_of_unknown_ids_finds_nothing(world, statement, expected):
    before = h.db_state(world)
    assert h.value(world, statement) == expected
    assert h.db_state(world) == before


MALFORMED = ['{}', '[]', '"tags"', 'null', '42',
             '{"tags": {}}', '{"tags": null}', '{"tags": "x"}', '{"TAGS": []}']
INSERTS = {
    "target_populations": "INSERT INTO target_populations"
                          " (target_band_id, me_file_id, matching_tags_snapshot) VALUES (3, 4, %s::jsonb)",
    "offers": "INSERT INTO offers"
              " (campaign_id, me_file_id, target_band_id, offer_amt, matching_tags_snapshot)"
              " VALUES (1, 2, 2, 1, %s::jsonb)",
    "ad_events": "INSERT INTO ad_events (offer_id, event_type, matching_tags_snapshot)"
                 " VALUES (NULL, 'x', %s::jsonb)",
}


@pytest.mark.parametrize("snapshot", MALFORMED)
@pytest.mark.parametrize("table", list(INSERTS))
def test_malformed_explicit_snapshot_is_refused(world, table, snapshot):
    before = h.db_state(world)
    with pytest.raises(psycopg.errors.CheckViolation) as refused:
        h.execute(world, INSERTS[table], (snapshot,))
    assert (refused.value.sqlstate, refused.value.diag.message_primary) == (
        "23514", f'new row for relation "{table}" violates check constraint "{table}_snapshot_shape"')
    assert h.db_state(world) == before


# -- CLI commands ---------------------------------------------------------------------------------
def known_migrations() -> str:
    return ", ".join(m.id for m in deploy.read_migrations())


def usage(command: str, message: str) -> str:
    return f"error: {message} (see `pgsnap {command} --help`)"


CLI_ERRORS = [
    # unknown ids: not found, exit 2 (the SQL's P0002 and 42704, or pgsnap's own lookup)
    (["populate", "999"], 2, "error: P0002: target 999 does not exist"),
    (["sync", "999"], 2, "error: P0002: me_file 999 does not exist"),
    (["launch", "999"], 2, "error: P0002: campaign 999 does not exist"),
    (["verify", "999"], 2, "error: P0002: target 999 does not exist"),
    (["backfill", "--band", "999"], 2, "error: target band 999 does not exist"),
    (["backfill", "--band", "999", "--dry-run"], 2, "error: target band 999 does not exist"),
    (["grant", "--app-role", "no_such_role"], 2, 'error: 42704: role "no_such_role" does not exist'),
    (["schedule", "run", "--once", "no-such-job"], 2, 'error: no job named "no-such-job"'),
    (["schedule", "next", "--name", "no-such-job"], 2, 'error: no job named "no-such-job"'),
    (["migrate", "--to", "9999.nope"], 2, f"error: unknown migration 9999.nope: known migrations are "
                                          f"{known_migrations()}"),
    (["rollback", "--to", "9999.nope"], 2, f"error: unknown migration 9999.nope: known migrations are "
                                           f"{known_migrations()}"),
    # work the database refuses: exit 1
    (["launch", "2"], 1, "error: 55000: campaign 2: target 2 is not_populated, not populated"),
    # zero and negative sizes: refused before connecting
    (["populate", "1", "--batch-size", "0"], 2,
     usage("populate", "Invalid value for '--batch-size': 0 is not in the range x>=1")),
    (["populate", "--all", "--batch-size", "-1"], 2,
     usage("populate", "Invalid value for '--batch-size': -1 is not in the range x>=1")),
    (["backfill", "--batch-size", "0"], 2,
     usage("backfill", "Invalid value for '--batch-size': 0 is not in the range x>=1")),
    (["backfill", "--batch-size", "-5"], 2,
     usage("backfill", "Invalid value for '--batch-size': -5 is not in the range x>=1")),
    (["backfill", "--max-batches", "0"], 2,
     usage("backfill", "Invalid value for '--max-batches': 0 is not in the range x>=1")),
    (["backfill", "--max-batches", "-1"], 2,
     usage("backfill", "Invalid value for '--max-batches': -1 is not in the range x>=1")),
    (["backfill", "--band", "1", "--batch-size", "0"], 2,
     usage("backfill", "Invalid value for '--batch-size': 0 is not in the range x>=1")),
    # other bad arguments
    (["populate"], 2, "error: give TARGET_ID..., --all or --stale (one of them)"),
    (["populate", "1", "--all"], 2, "error: give TARGET_ID..., --all or --stale (one of them)"),
    (["migrate", "--lock-timeout", "soon"], 2,
     "error: invalid lock timeout 'soon': use e.g. 2s, 500ms, 1min"),
    # invalid cron expressions (pg_cron 1.4's grammar, and what it would silently mangle)
    (["schedule", "install", "--schedule", "61 * * * *"], 2,
     'error: invalid cron expression "61 * * * *": minute 61 out of range 0-59'),
    (["schedule", "install", "--schedule", "* * * * * *"], 2,
     'error: invalid cron expression "* * * * * *": 6 fields; pg_cron takes exactly 5: minute hour '
     "day-of-month month day-of-week (pg_cron would silently ignore the sixth; "
     "there are no seconds or years)"),
    (["schedule", "install", "--schedule", "0 0 31 2 *"], 2,
     'error: invalid cron expression "0 0 31 2 *": day-of-month "31" never occurs in Feb '
     "(pg_cron would never run it)"),
    (["schedule", "install", "--schedule", "*/0 * * * *"], 2,
     'error: invalid cron expression "*/0 * * * *": minute "*/0": step "0" must be a whole number '
     "of at least 1"),
    (["schedule", "install", "--schedule", "@every 5m"], 2,
     'error: invalid cron expression "@every 5m": unknown keyword "@every"; pg_cron 1.4 knows @hourly @daily '
     "@midnight @weekly @monthly @yearly @annually @reboot @restart (lower case)"),
    (["schedule", "install", "--schedule", ""], 2, 'error: invalid cron expression "": empty'),
    (["schedule", "install", "--runner", "pgsnap", "--schedule", "@reboot"], 2,
     'error: "@reboot" runs only when pg_cron starts; the pgsnap scheduler has no such event'),
]


def cron_jobs(pg_server) -> list[tuple]:
    if not pg_server.has_pg_cron:
        return []
    with psycopg.connect(pg_server.dsn(pg_server.cron_dbname)) as c:
        return h.rows(c, "SELECT jobid, jobname, schedule, command, database FROM cron.job ORDER BY jobid")


@pytest.mark.parametrize(("args", "exit_code", "message"), CLI_ERRORS,
                         ids=[" ".join(c[0]) for c in CLI_ERRORS])
def test_cli_refuses_bad_input_in_one_line(world, cli, pg_server, args, exit_code, message):
    before, jobs = h.db_state(world), cron_jobs(pg_server)
    result = cli(*args)
    assert (result.exit_code, result.stdout, result.stderr) == (exit_code, "", message + "\n")
    assert h.db_state(world) == before
    assert cron_jobs(pg_server) == jobs


USAGE_ERRORS = [  # click's own usage errors: one line, exit 2, pointing at the command's help
    (["migrate", "--batch-size", "0"], "migrate",
     "Invalid value for '--batch-size': 0 is not in the range x>=1"),
    (["migrate", "--lock-retries", "-1"], "migrate",
     "Invalid value for '--lock-retries': -1 is not in the range x>=0"),
    (["schedule", "next", "--count", "0"], "schedule next",
     "Invalid value for '--count': 0 is not in the range 1<=x<=1000"),
    (["schedule", "run", "--tick", "0"], "schedule run",
     "Invalid value for '--tick': 0.0 is not in the range x>=0.01"),
    (["demo", "--me-files", "0"], "demo", "Invalid value for '--me-files': 0 is not in the range x>=1"),
    (["sync", "abc"], "sync", "Invalid value for 'ME_FILE_IDS...': 'abc' is not a valid integer"),
    (["launch"], "launch", "Missing argument 'CAMPAIGN_ID'"),
    (["grant"], "grant", "Missing option '--app-role'"),
]


@pytest.mark.parametrize(("args", "command", "error"), USAGE_ERRORS,
                         ids=[" ".join(c[0]) for c in USAGE_ERRORS])
def test_usage_errors_exit_2(world, cli, args, command, error):
    before = h.db_state(world)
    result = cli(*args)
    assert (result.exit_code, result.stdout, result.stderr) == (2, "", usage(command, error) + "\n")
    assert h.db_state(world) == before


# -- invalid DSN ---------------------------------------------------------------------------------
EVERY_COMMAND = [
    ["migrate"], ["rollback"], ["migrations"], ["populate", "1"], ["populate", "--all"], ["sync", "1"],
    ["launch", "1"], ["backfill"], ["backfill", "--dry-run"], ["backfill", "--band", "1"], ["check"],
    ["check", "--json"], ["verify", "1"], ["status"], ["schedule", "install"], ["schedule", "remove"],
    ["schedule", "list"], ["schedule", "next"], ["schedule", "run"],
    ["schedule", "run", "--once", "pgsnap-backfill"],
    ["grant", "--app-role", "app"],
]
NO_PG_ENV = {"PGSNAP_DSN": None, "PGHOST": None, "PGPORT": None, "PGDATABASE": None, "PGUSER": None}


def bad_dsn_message(dsn: str) -> str:
    if dsn == "not a dsn==":
        return 'error: invalid DSN: missing "=" after "not" in connection info string\n'
    return (f"error: cannot connect to /nonexistent:x/{getpass.getuser()}: "
            'invalid integer value "x" for connection option "port"\n')


@pytest.mark.parametrize("dsn", ["host=/nonexistent port=x", "not a dsn=="])
@pytest.mark.parametrize("args", EVERY_COMMAND, ids=" ".join)
def test_invalid_dsn_is_one_line_exit_2(cli, dsn, args):
    result = cli(*args, dsn=dsn, env=NO_PG_ENV)
    message = bad_dsn_message(dsn)
    stdout = (json.dumps({"error": message[len("error: "):-1], "exit_code": 2}) + "\n"
              if "--json" in args else "")
    assert (result.exit_code, result.stdout, result.stderr) == (2, stdout, message)


@pytest.mark.parametrize("dsn", ["host=/nonexistent port=x", "not a dsn=="])
def test_invalid_dsn_from_the_environment(cli, dsn):
    result = cli("check", dsn=False, env={**NO_PG_ENV, "PGSNAP_DSN": dsn})
    assert (result.exit_code, result.stdout, result.stderr) == (2, "", bad_dsn_message(dsn))


# -- a database behind or ahead of this pgsnap ----------------------------------------------------
CHECKED = [
    ["populate", "1"], ["populate", "--all"], ["sync", "1"], ["launch", "1"], ["verify", "1"], ["check"],
    ["schedule", "install"], ["schedule", "remove"], ["schedule", "list"], ["schedule", "next"],
    ["schedule", "run", "--once", "pgsnap-backfill"], ["grant", "--app-role", "app"],
]
# backfill accepts a database behind (it must run mid-journey, before the NOT NULL steps); on one
# without pgsnap at all it should say so the same way
BACKFILL = [["backfill"], ["backfill", "--dry-run"], ["backfill", "--band", "1"]]


@pytest.fixture
def behind(empty_db_dsn, cli):
    """A legacy database: only 0001.baseline-schema applied, with rows."""
    result = cli("migrate", "--to", BASELINE, dsn=empty_db_dsn)
    assert result.exit_code == 0, result.output
    with psycopg.connect(empty_db_dsn, autocommit=True) as c:
        h.seed_worked_example(c)
        h.execute(c, "INSERT INTO target_populations (target_band_id, me_file_id) VALUES (1, 1)")
    return empty_db_dsn


@pytest.mark.parametrize("args", CHECKED + BACKFILL, ids=lambda a: " ".join(a))
def test_database_behind_is_refused_exit_2(behind, cli, args):
    with psycopg.connect(behind) as c:
        before = h.db_state(c)
    result = cli(*args, dsn=behind)
    assert (result.exit_code, result.stdout, result.stderr) == (2, "", BEHIND)
    with psycopg.connect(behind) as c:
        assert h.db_state(c) == before


def test_database_behind_is_described_not_refused_by_status_and_migrations(behind, cli):
    status = cli("status", dsn=behind)
    assert (status.exit_code, status.stderr) == (0, "")
    not_installed = "  unavailable: pgsnap is not installed in this database yet: run `pgsnap migrate`\n\n"
    for title in ("stale targets", "band counts (maintained targets)"):
        assert f"{title}\n{not_installed}" in status.stdout
    later = [m.id for m in deploy.read_migrations()[1:]]
    assert status.stdout.endswith(f"  1 applied, {len(later)} pending\n" + "".join(
        f"  pending: {mid}\n" for mid in later) + "  run `pgsnap migrate`\n\n")
    listed = cli("migrations", dsn=behind)
    assert (listed.exit_code, listed.stderr) == (0, "")
    assert [line.split()[-1] for line in listed.stdout.splitlines()[2:]] == ["pending"] * len(later)


@pytest.fixture
def ahead(world):
    h.execute(world, "INSERT INTO _yoyo_migration (migration_hash, migration_id, applied_at_utc)"
                     " VALUES ('x', %s, now())", (FUTURE,))
    return world


AHEAD_REFUSED = [["migrate"], ["rollback"], ["backfill"], ["backfill", "--dry-run"], *CHECKED]


@pytest.mark.parametrize("args", AHEAD_REFUSED, ids=" ".join)
def test_database_ahead_is_refused_exit_2(ahead, cli, args):
    before = h.db_state(ahead)
    result = cli(*args)
    assert (result.exit_code, result.stdout, result.stderr) == (2, "", AHEAD)
    assert h.db_state(ahead) == before


def test_database_ahead_is_described_by_status_and_migrations(ahead, cli):
    status = cli("status")
    assert (status.exit_code, status.stderr) == (0, "")
    assert f"  applied but unknown to this pgsnap: {FUTURE} (upgrade pgsnap)\n" in status.stdout
    last = cli("migrations").stdout.splitlines()[-1]
    assert last.startswith(f"{FUTURE} ") and last.endswith(" (unknown to this pgsnap)")
