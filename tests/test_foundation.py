"""The real migrations, the CLI's error contract, configuration and progress output."""

import io
import os
import subprocess
import sys
from pathlib import Path

import psycopg

from pgsnap import deploy
from pgsnap.config import resolve_dsn
from pgsnap.demo.cluster import free_port
from pgsnap.progress import progress
from tests.legacy_data import journey_order

REPO = Path(__file__).resolve().parent.parent
BASELINE = "0001.baseline-schema"

# docs/sql-api.md: every table and column (data type, nullable) the contract names. Snapshot
# columns are checked for type only: the NOT NULL journey changes their nullability.
ID = ("bigint", "NO")
TS = ("timestamp with time zone", "NO")
MONEY = ("numeric", "NO")
SNAPSHOT = ("jsonb", None)
DESIGN_SCHEMA = {
    "traits": {"id": ID, "trait_name": ("text", "NO"), "parent_trait_id": ("bigint", "YES"),
               "display_order": ("integer", "NO"), "is_active": ("boolean", "NO")},
    "trait_groups": {"id": ID, "title": ("text", "NO"),
                     "deactivated_at": ("timestamp with time zone", "YES")},
    "trait_group_traits": {"trait_group_id": ID, "trait_id": ID},
    "targets": {"id": ID, "title": ("text", "NO"), "population_status": ("text", "NO"),
                "last_populated_at": ("timestamp with time zone", "YES")},
    "target_bands": {"id": ID, "target_id": ID, "title": ("text", "YES"), "is_bullseye": ("boolean", "NO")},
    "target_band_trait_groups": {"target_band_id": ID, "trait_group_id": ID},
    "me_files": {"id": ID, "display_name": ("text", "YES"), "created_at": TS},
    "me_file_tags": {"id": ID, "me_file_id": ID, "trait_id": ID, "tag_value": ("text", "YES"),
                     "created_at": TS, "updated_at": TS},
    "target_populations": {"id": ID, "target_band_id": ID, "me_file_id": ID,
                           "matching_tags_snapshot": SNAPSHOT, "created_at": TS, "updated_at": TS},
    "campaigns": {"id": ID, "target_id": ID, "title": ("text", "NO"),
                  "launched_at": ("timestamp with time zone", "YES"),
                  "deactivated_at": ("timestamp with time zone", "YES")},
    "bids": {"id": ID, "campaign_id": ID, "target_band_id": ID, "offer_amt": MONEY},
    "offers": {"id": ID, "campaign_id": ID, "me_file_id": ID, "target_band_id": ID, "offer_amt": MONEY,
               "is_current": ("boolean", "NO"), "matching_tags_snapshot": SNAPSHOT,
               "created_at": TS, "updated_at": TS},
    "ad_events": {"id": ID, "offer_id": ("bigint", "YES"), "campaign_id": ("bigint", "YES"),
                  "me_file_id": ("bigint", "YES"), "target_band_id": ("bigint", "YES"),
                  "event_type": ("text", "NO"), "amount": MONEY, "matching_tags_snapshot": SNAPSHOT,
                  "created_at": TS},
}


def public_columns(conn) -> dict[str, dict[str, tuple[str, str]]]:
    rows = conn.execute(
        "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns"
        " WHERE table_schema = 'public' AND table_name NOT LIKE '%yoyo%'"
    ).fetchall()
    found: dict[str, dict[str, tuple[str, str]]] = {}
    for table, column, data_type, nullable in rows:
        found.setdefault(table, {})[column] = (data_type, nullable)
    return found


def design_view(found):
    """The found schema restricted to what the contract names (later migrations may add columns)."""
    return {
        table: {col: (found.get(table, {}).get(col, (None, None))[0],
                      None if spec[1] is None else found.get(table, {}).get(col, (None, None))[1])
                for col, spec in columns.items()}
        for table, columns in DESIGN_SCHEMA.items()
    }


def applied_ids(dsn) -> list[str]:
    with psycopg.connect(dsn) as c:
        return list(deploy.applied_migrations(c))


def all_ids() -> list[str]:
    return [m.id for m in deploy.read_migrations()]


def journey() -> list[str]:
    """The order migrate applies them in (enforcement steps last)."""
    return journey_order()


# -- the real migrations ---------------------------------------------------------------------------
def test_migrate_on_empty_db_creates_every_design_table_and_column(empty_db_dsn):
    deploy.migrate(empty_db_dsn)
    with psycopg.connect(empty_db_dsn) as c:
        found = public_columns(c)
    assert design_view(found) == DESIGN_SCHEMA
    assert set(DESIGN_SCHEMA) <= set(found)
    assert applied_ids(empty_db_dsn) == journey()


def test_template_is_fully_migrated_and_current(conn):
    assert list(deploy.applied_migrations(conn)) == journey()
    deploy.check_current(conn)
    assert deploy.has_pgsnap_schema(conn)


def test_second_migrate_is_a_no_op(empty_db_dsn):
    deploy.migrate(empty_db_dsn)
    state = ("SELECT (SELECT array_agg((migration_id, applied_at_utc)::text ORDER BY 1)"
             "          FROM _yoyo_migration),"
             "       (SELECT count(*) FROM _yoyo_log)")
    with psycopg.connect(empty_db_dsn) as c:
        before = c.execute(state).fetchone()
    result = deploy.migrate(empty_db_dsn)
    assert result.applied == []
    with psycopg.connect(empty_db_dsn) as c:
        assert c.execute(state).fetchone() == before


def test_rollback_all_then_migrate_again(empty_db_dsn, cli):
    deploy.migrate(empty_db_dsn)
    result = cli("rollback", "--all", "--yes", "--include-baseline", dsn=empty_db_dsn)
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout.endswith("".join(f"rolling back {mid}\n" for mid in reversed(journey())))
    assert applied_ids(empty_db_dsn) == []
    with psycopg.connect(empty_db_dsn) as c:
        assert public_columns(c) == {}
        assert not deploy.has_pgsnap_schema(c)
    result = cli("migrate", dsn=empty_db_dsn)
    assert result.exit_code == 0, result.stderr
    assert applied_ids(empty_db_dsn) == journey()


def test_migrate_to_baseline_leaves_no_pgsnap_schema_and_later_migrate_completes(empty_db_dsn, cli):
    result = cli("migrate", "--to", BASELINE, dsn=empty_db_dsn)
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout == f"applying {BASELINE}\n"
    assert applied_ids(empty_db_dsn) == [BASELINE]
    with psycopg.connect(empty_db_dsn) as c:
        assert not deploy.has_pgsnap_schema(c)
        assert set(public_columns(c)) == set(DESIGN_SCHEMA)

    listing = cli("migrations", dsn=empty_db_dsn)
    lines = listing.stdout.splitlines()
    assert listing.exit_code == 0
    assert lines[0].split() == ["ID", "APPLIED", "AT", "(UTC)"]
    assert [line.split()[0] for line in lines[1:]] == all_ids()
    assert lines[1].split()[1][:2] == "20"  # a date
    assert [line.split()[1] for line in lines[2:]] == ["pending"] * (len(all_ids()) - 1)

    result = cli("migrate", dsn=empty_db_dsn)
    assert result.exit_code == 0, result.stderr
    assert applied_ids(empty_db_dsn) == journey()
    again = cli("migrate", "--to", BASELINE, dsn=empty_db_dsn)
    assert again.stdout.splitlines()[0] == f"nothing to apply: the database is up to date (up to {BASELINE})"


def test_migrate_to_unknown_id_lists_known_ids(empty_db_dsn, cli):
    result = cli("migrate", "--to", "9999.nope", dsn=empty_db_dsn)
    assert result.exit_code == 2
    known = ", ".join(all_ids())
    assert result.stderr == f"error: unknown migration 9999.nope: known migrations are {known}\n"
    assert applied_ids(empty_db_dsn) == []


def test_two_concurrent_migrate_processes_apply_each_migration_once(empty_db_dsn):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "pgsnap", "--dsn", empty_db_dsn, "migrate"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert all(err == "" for _, err in outs), outs
    with psycopg.connect(empty_db_dsn) as c:
        applied = c.execute(
            "SELECT migration_id, count(*) FROM _yoyo_migration GROUP BY 1 ORDER BY 1").fetchall()
        applies = c.execute(
            "SELECT migration_id, count(*) FROM _yoyo_log WHERE operation = 'apply' GROUP BY 1 ORDER BY 1"
        ).fetchall()
    assert applied == [(mid, 1) for mid in all_ids()]
    assert applies == [(mid, 1) for mid in all_ids()]
    # exactly one of the two applied anything; the other found nothing left to do
    stdouts = sorted((out for out, _ in outs), key=lambda out: not out.startswith("nothing"))
    assert stdouts[0].startswith("nothing to apply")
    assert [ln for ln in stdouts[1].splitlines() if ln.startswith("applying ")] == [
        f"applying {mid}" for mid in journey()
    ]


# -- the CLI's error contract -------------------------------------------------------------------
def test_unparsable_dsn_is_one_line_exit_2(cli):
    result = cli("migrations", dsn="not a dsn")
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == 'error: invalid DSN: missing "=" after "not" in connection info string\n'


def test_refused_connection_is_one_line_exit_2(cli):
    port = free_port()  # bound then closed: nothing listens there
    result = cli("migrate", dsn=f"host=127.0.0.1 port={port} dbname=nowhere user=postgres")
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == f"error: cannot connect to 127.0.0.1:{port}/nowhere: connection refused\n"


def test_missing_database_is_one_line_exit_2(cli, pg_server):
    result = cli("migrations", dsn=pg_server.dsn("no_such_db"))
    assert result.exit_code == 2
    assert result.stderr == (f"error: cannot connect to {pg_server.host}:{pg_server.port}/no_such_db: "
                             'database "no_such_db" does not exist\n')


def test_commands_refuse_a_database_that_is_behind(cli, empty_db_dsn, probe_command):
    behind = "error: database is behind this pgsnap: run `pgsnap migrate`\n"
    result = cli("probe", dsn=empty_db_dsn)
    assert (result.exit_code, result.stdout, result.stderr) == (2, "", behind)
    assert cli("migrate", "--to", BASELINE, dsn=empty_db_dsn).exit_code == 0
    assert cli("probe", dsn=empty_db_dsn).stderr == behind


def test_commands_and_migrate_refuse_a_database_that_is_ahead(cli, conn, probe_command):
    assert cli("probe").stdout == "1\n"
    conn.execute("INSERT INTO _yoyo_migration (migration_hash, migration_id, applied_at_utc)"
                 " VALUES ('x', '9999.from-the-future', now())")
    expected = ("error: database is ahead of this pgsnap: it has migration 9999.from-the-future unknown "
                "to this version; upgrade pgsnap\n")
    for args in (["probe"], ["migrate"], ["rollback"]):
        result = cli(*args)
        assert (result.exit_code, result.stderr) == (2, expected), args
    last = cli("migrations").stdout.splitlines()[-1]
    assert last.startswith("9999.from-the-future ") and last.endswith(" (unknown to this pgsnap)")


def test_database_errors_are_one_line_exit_1(cli, probe_command):
    result = cli("probe", "--sql", "SELECT 1/0")
    assert (result.exit_code, result.stdout, result.stderr) == (1, "", "error: 22012: division by zero\n")


def test_usage_errors_are_one_line_exit_2(cli):
    result = cli("migrate", "--bogus", dsn=False)
    assert (result.exit_code, result.stdout, result.stderr) == (
        2, "", "error: No such option '--bogus' (see `pgsnap migrate --help`)\n")
    result = cli("rollback", "--to", BASELINE, "--all", dsn=False)
    assert (result.exit_code, result.stdout, result.stderr) == (
        2, "", "error: use either --to or --all, not both (see `pgsnap rollback --help`)\n")


def test_bad_lock_timeout_is_a_usage_error(cli, empty_db_dsn):
    result = cli("migrate", "--lock-timeout", "2s -c statement_timeout=1", dsn=empty_db_dsn)
    assert result.exit_code == 2
    assert result.stderr == ("error: invalid lock timeout '2s -c statement_timeout=1': "
                             "use e.g. 2s, 500ms, 1min\n")


def test_demo_runs_in_a_throwaway_cluster(cli):
    result = cli("demo", "--me-files", "50", "--seed", "1", dsn=False)
    assert result.exit_code == 0, result.stderr
    assert result.stderr.splitlines()[-1] == "throwaway cluster stopped and removed"


# -- configuration and progress --------------------------------------------------------------------
def test_resolve_dsn_prefers_option_then_env_then_libpq_defaults(monkeypatch):
    monkeypatch.setenv("PGSNAP_DSN", "dbname=from_env")
    assert resolve_dsn("dbname=from_option") == "dbname=from_option"
    assert resolve_dsn(None) == "dbname=from_env"
    monkeypatch.delenv("PGSNAP_DSN")
    assert resolve_dsn(None) == ""


def test_pg_env_variables_are_used_when_no_dsn_is_given(cli, pg_server, db_dsn, monkeypatch):
    dbname = psycopg.conninfo.conninfo_to_dict(db_dsn)["dbname"]
    monkeypatch.delenv("PGSNAP_DSN", raising=False)
    env = {"PGHOST": pg_server.host, "PGPORT": str(pg_server.port), "PGUSER": pg_server.user,
           "PGDATABASE": dbname}
    result = cli("migrations", dsn=False, env=env)
    assert result.exit_code == 0, result.stderr
    assert "pending" not in result.stdout


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_is_silent_in_pipes_and_draws_a_bar_on_a_terminal():
    pipe, tty = io.StringIO(), _Tty()
    for stream in (pipe, tty):
        with progress(label="work", stream=stream) as p:
            p.update(10, 40)
            p.update(40)
        assert p.done == 40
    assert pipe.getvalue() == ""
    assert "work" in tty.getvalue() and "40/40" in tty.getvalue()
