"""The CLI's contract (docs/operations.md, "Errors and exit statuses"): one exit-code table for
every command, `--json` output (a JSON error object on failure too), psql's connection flags,
and `application_name` on every session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from pgsnap.demo.cluster import free_port
from tests.helpers import (
    B1,
    B2,
    B3,
    B9,
    G10,
    T1,
    T2,
    add_target,
    execute,
    populate,
    rows,
    seed_worked_example,
    set_target_status,
    wait_until,
)

REPO = Path(__file__).resolve().parent.parent
ROLE = "pgsnap_cli_test_app"


@pytest.fixture
def seeded(conn):
    """The worked example: T1 populated with a campaign (1) bidding on its bands, T2 not
    populated with a campaign (2); an application role to grant to."""
    seed_worked_example(conn)
    add_target(conn, T2, bands=[(B9, [G10], True)])
    populate(conn, T1)
    execute(conn, "INSERT INTO campaigns (id, target_id, title) VALUES (1, %s, 'c1'), (2, %s, 'c2')",
            (T1, T2))
    execute(conn, "INSERT INTO bids (campaign_id, target_band_id, offer_amt)"
                  " VALUES (1, %s, 1.00), (1, %s, 0.50), (1, %s, 0.25)", (B1, B2, B3))
    execute(conn, f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}')"
                  f" THEN CREATE ROLE {ROLE}; END IF; END $$")
    return conn


def add_job(name: str, command: str) -> Callable:
    return lambda conn: execute(conn, "INSERT INTO pgsnap.jobs (jobname, schedule, command)"
                                      " VALUES (%s, '@daily', %s)", (name, command))


def rows_in_not_populated_target(conn) -> None:
    set_target_status(conn, T1, "not_populated")


def nothing(conn) -> None:
    pass


# (arguments, what to break or add first, exit code): every command appears with 0, and with
# each other code it can give
EXIT_TABLE = [
    # 0: done, healthy, nothing to report
    (["migrate"], nothing, 0),
    (["migrate", "--plan"], nothing, 0),
    (["migrations"], nothing, 0),
    (["adopt"], nothing, 0),
    (["rollback", "--yes"], nothing, 0),
    (["populate", "1"], nothing, 0),
    (["populate", "--all"], nothing, 0),
    (["sync", "1"], nothing, 0),
    (["launch", "1"], nothing, 0),
    (["backfill"], nothing, 0),
    (["backfill", "--dry-run"], nothing, 0),
    (["backfill", "--band", "1"], nothing, 0),
    (["check"], nothing, 0),
    (["status"], nothing, 0),
    (["verify", "1"], nothing, 0),
    (["explain", "1", "1"], nothing, 0),
    (["metrics"], nothing, 0),
    (["schedule", "install", "--runner", "pgsnap"], nothing, 0),
    (["schedule", "list"], nothing, 0),
    (["schedule", "next"], nothing, 0),
    (["schedule", "remove"], nothing, 0),
    (["schedule", "run", "--once", "answer"], add_job("answer", "SELECT 42"), 0),
    (["grant", "--app-role", ROLE], nothing, 0),
    # 1: a finding, or work that failed
    (["check"], rows_in_not_populated_target, 1),
    (["verify", "1"], rows_in_not_populated_target, 1),
    (["explain", "1", "1"], rows_in_not_populated_target, 1),
    (["launch", "2"], nothing, 1),
    (["schedule", "run", "--once", "broken"], add_job("broken", "SELECT 1/0"), 1),
    # 2: cannot run (usage, not found, behind/ahead are in test_bad_input)
    (["populate"], nothing, 2),
    (["populate", "999"], nothing, 2),
    (["sync", "999"], nothing, 2),
    (["launch", "999"], nothing, 2),
    (["verify", "999"], nothing, 2),
    (["explain", "1", "999"], nothing, 2),
    (["explain", "999", "1"], nothing, 2),
    (["backfill", "--band", "999"], nothing, 2),
    (["grant", "--app-role", "no_such_role"], nothing, 2),
    (["schedule", "next", "--name", "nope"], nothing, 2),
    (["schedule", "run", "--once", "nope"], nothing, 2),
    (["schedule", "install", "--schedule", "61 * * * *"], nothing, 2),
    (["migrate", "--to", "9999.nope"], nothing, 2),
    (["migrate", "--lock-timeout", "soon"], nothing, 2),
    (["rollback"], nothing, 2),  # no terminal to ask on, no --yes
    (["rollback", "--to", "9999.nope"], nothing, 2),
    (["check", "--bogus"], nothing, 2),
    (["demo", "--me-files", "0"], nothing, 2),
]


@pytest.mark.parametrize(("args", "setup", "code"), EXIT_TABLE,
                         ids=[f"{' '.join(a)}-{c}" for a, _, c in EXIT_TABLE])
def test_every_command_follows_the_exit_code_table(cli, seeded, args, setup, code):
    setup(seeded)
    result = cli(*args)
    assert result.exit_code == code, result.output
    if code == 2 or args[0] == "launch" and code:  # an error: one line
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    else:  # a result, a finding or a failed run: reported on stdout
        assert result.stderr == ""


def test_a_lock_not_obtained_in_time_exits_3(cli, seeded, new_conn):
    holder = new_conn(autocommit=False)
    execute(holder, "LOCK TABLE targets IN ACCESS EXCLUSIVE MODE")  # sql/ puts triggers on it
    result = cli("migrate", "--lock-timeout", "10ms", "--lock-retries", "0")
    holder.rollback()
    assert (result.exit_code, result.stderr.count("\n")) == (3, 1)
    assert result.stderr.startswith(
        "error: could not deploy sql/ after 1 attempts (lock_timeout 10ms); blocked by pid ")


# -- --json ----------------------------------------------------------------------------------------
JSON_COMMANDS = [["check", "--json"], ["status", "--json"], ["verify", "1", "--json"],
                 ["explain", "1", "1", "--json"],
                 ["migrations", "--json"], ["migrate", "--plan", "--json"], ["migrate", "--json"],
                 ["adopt", "--json"], ["schedule", "list", "--json"], ["schedule", "next", "--json"],
                 ["populate", "1", "--json"], ["backfill", "--json"], ["backfill", "--dry-run", "--json"],
                 ["backfill", "--band", "1", "--json"]]


@pytest.mark.parametrize("args", JSON_COMMANDS, ids=" ".join)
def test_json_output_parses_on_success_and_on_failure(cli, seeded, args):
    result = cli(*args)
    assert (result.exit_code, result.stderr) == (0, "")
    assert isinstance(json.loads(result.stdout), dict | list)
    port = free_port()  # nothing listens there
    failed = cli(*args, dsn=f"host=127.0.0.1 port={port} dbname=nowhere user=postgres")
    message = f"cannot connect to 127.0.0.1:{port}/nowhere: connection refused"
    assert (failed.exit_code, json.loads(failed.stdout), failed.stderr) == (
        2, {"error": message, "exit_code": 2}, f"error: {message}\n")


def test_json_outputs_say_what_the_text_says(cli, seeded):
    status = json.loads(cli("status", "--json").stdout)
    assert status["targets"] == {"counts": {"populated": 1, "populating": 0, "not_populated": 1},
                                 "populating": []}
    assert status["stale_targets"] == []
    assert status["band_counts"] == [{"target_id": T1, "status": "populated", "bands": [
        {"target_band_id": B1, "tier": 0, "population": 1},
        {"target_band_id": B2, "tier": 1, "population": 1},
        {"target_band_id": B3, "tier": 2, "population": 1}]}]
    assert status["snapshots"] == {"target_populations": {"null": 0, "rows": 3},
                                   "offers": {"null": 0, "rows": 0}, "ad_events": {"null": 0, "rows": 0}}
    assert status["migrations"]["pending"] == [] and status["migrations"]["lock"] is None
    verify = json.loads(cli("verify", "1", "--json").stdout)
    assert verify == {"target_id": 1, "status": "populated", "rows": 3, "differences": [], "counts": {}}
    rows_in_not_populated_target(seeded)
    verify = json.loads(cli("verify", "1", "--json").stdout)
    assert verify["counts"] == {"extra": 3} and verify["differences"][0] == {
        "me_file_id": 1, "problem": "extra", "expected_band": None, "actual_band": B1}
    assert cli("schedule", "install", "--runner", "pgsnap").exit_code == 0
    (job, _stale) = json.loads(cli("schedule", "list", "--json").stdout)
    assert {k: job[k] for k in ("runner", "name", "schedule", "active", "last_start")} == {
        "runner": "pgsnap", "name": "pgsnap-backfill", "schedule": "0 * * * *", "active": True,
        "last_start": None}
    (upcoming,) = json.loads(
        cli("schedule", "next", "--json", "--count", "2", "--name", "pgsnap-backfill").stdout)
    assert [t[14:] for t in upcoming["next_runs"]] == ["00:00Z", "00:00Z"]  # on the hour
    migrations = json.loads(cli("migrations", "--json").stdout)
    assert [m["id"] for m in migrations if m["applied_at"] is None] == []


# -- connection flags ----------------------------------------------------------------------------------
WHO = "SELECT format('%s %s %s', current_database(), current_user, inet_server_port())"
NO_PG_ENV = {"PGSNAP_DSN": None, "PGHOST": None, "PGPORT": None, "PGDATABASE": None, "PGUSER": None,
             "PGAPPNAME": None}


@pytest.fixture
def server(pg_server, db_dsn, probe_command):
    """(host, port, user, this test's database)."""
    return pg_server.host, str(pg_server.port), pg_server.user, conninfo_to_dict(db_dsn)["dbname"]


def test_psql_flags_alone(cli, server):
    host, port, user, dbname = server
    result = cli("-h", host, "-p", port, "-U", user, "-d", dbname, "probe", "--sql", WHO,
                 dsn=False, env=NO_PG_ENV)
    assert (result.exit_code, result.stdout) == (0, f"{dbname} {user} {port}\n")
    long = cli("--host", host, "--port", port, "--username", user, "--dbname", dbname, "probe", "--sql", WHO,
               dsn=False, env=NO_PG_ENV)
    assert long.stdout == result.stdout


@pytest.mark.parametrize("flag", ["-h", "-p", "-U", "-d"])
def test_each_flag_overrides_that_part_of_the_dsn(cli, server, flag):
    host, port, user, dbname = server
    right = {"-h": host, "-p": port, "-U": user, "-d": dbname}
    wrong = {"-h": "/nonexistent", "-p": "1", "-U": "nobody_at_all", "-d": "postgres"}
    dsn = f"host={host} port={port} user={user} dbname={dbname}".replace(right[flag], wrong[flag], 1) \
        if flag != "-d" else f"host={host} port={port} user={user} dbname=postgres"
    result = cli(flag, right[flag], "probe", "--sql", WHO, dsn=dsn, env=NO_PG_ENV)
    assert (result.exit_code, result.stdout) == (0, f"{dbname} {user} {port}\n")


def test_flags_combine_with_the_pg_variables(cli, server):
    host, port, user, dbname = server
    env = {**NO_PG_ENV, "PGHOST": host, "PGPORT": port, "PGUSER": user, "PGDATABASE": "no_such_db"}
    assert cli("probe", "--sql", WHO, dsn=False, env=env).stderr == (
        f'error: cannot connect to {host}:{port}/no_such_db: database "no_such_db" does not exist\n')
    assert cli("-d", dbname, "probe", "--sql", WHO, dsn=False, env=env).stdout == f"{dbname} {user} {port}\n"
    conninfo = f"dbname={dbname} application_name=via-d"
    assert cli("-d", conninfo, "probe", "--sql", "SELECT current_database() || ' ' ||"
               " current_setting('application_name')", dsn=False, env=env).stdout == f"{dbname} via-d\n"


def test_dash_h_is_never_help(cli, server):
    host, port, _user, _dbname = server
    refused = cli("-h", "127.0.0.1", "-p", str(free_port()), "check", dsn=False, env=NO_PG_ENV)
    assert (refused.exit_code, refused.stdout) == (2, "")
    assert refused.stderr.startswith("error: cannot connect to 127.0.0.1:")
    missing = cli("-h", dsn=False)
    assert (missing.exit_code, missing.stdout, missing.stderr) == (
        2, "", "error: Option '-h' requires an argument (see `pgsnap --help`)\n")
    after = cli("check", "-h", host, dsn=False)
    assert (after.exit_code, after.stdout, after.stderr) == (
        2, "", "error: No such option '-h' (see `pgsnap check --help`)\n")
    assert cli("--help", dsn=False).stdout.startswith("Usage: pgsnap [OPTIONS] COMMAND [ARGS]...")


# -- application_name --------------------------------------------------------------------------------
APP = "SELECT current_setting('application_name')"


def test_every_session_is_named_after_its_command(cli, db_dsn, probe_command):
    assert cli("probe", "--sql", APP).stdout == "pgsnap probe\n"
    assert cli("probe", "--sql", APP, dsn=db_dsn + " application_name=mine").stdout == "mine\n"
    assert cli("probe", "--sql", APP, env={"PGAPPNAME": "from-env"}).stdout == "from-env\n"


def test_migrate_sessions_show_as_pgsnap_migrate_while_they_wait(db_dsn, new_conn):
    """A migrate blocked by a lock is `pgsnap migrate` in pg_stat_activity (its yoyo connection
    included)."""
    holder = new_conn(autocommit=False)
    execute(holder, "LOCK TABLE targets IN ACCESS EXCLUSIVE MODE")
    env = {k: v for k, v in os.environ.items() if k not in ("PGSNAP_HOME", "PGAPPNAME")}
    proc = subprocess.Popen([sys.executable, "-m", "pgsnap", "--dsn", db_dsn, "migrate",
                             "--lock-timeout", "60s"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    watcher = new_conn()
    try:
        wait_until(lambda: rows(watcher, "SELECT 1 FROM pg_stat_activity"
                                         " WHERE application_name = 'pgsnap migrate'"
                                         " AND wait_event_type = 'Lock'"), what="migrate to wait on the lock")
        names = rows(watcher, "SELECT application_name FROM pg_stat_activity"
                              " WHERE datname = current_database() AND pid NOT IN (pg_backend_pid(), %s)"
                              " ORDER BY 1", (holder.info.backend_pid,))
        assert names == [("pgsnap migrate",), ("pgsnap migrate",)]  # pgsnap's own, and yoyo's
    finally:
        holder.rollback()
        out, err = proc.communicate(timeout=120)
    assert (proc.returncode, err) == (0, "")
