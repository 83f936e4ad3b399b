"""The DBA's commands around migrate: `migrate --plan` (writes nothing), `rollback` (shows its
plan, asks, refuses the baseline without both flags) and `adopt` (takes over a database
whose application schema was made without pgsnap)."""

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from pgsnap import deploy, resources
from scripts.dump_schema import dump_schema
from tests.helpers import APP_TABLES, db_state, execute, value
from tests.legacy_data import alone_ids, applied, enforcement_ids, journey_order, seed_legacy_journey

JOURNEY = journey_order()  # what one `pgsnap migrate` applies to an empty database, in order
BASELINE = JOURNEY[0]
ENFORCING = [m for m in JOURNEY if m in enforcement_ids()]
PLAIN = [m for m in JOURNEY[1:] if m not in ENFORCING]
ALONE = alone_ids()  # steps of their own, without a transaction
SUE = "SHARE UPDATE EXCLUSIVE"
SRE = "SHARE ROW EXCLUSIVE"
AE = "ACCESS EXCLUSIVE"
REPO = Path(__file__).resolve().parent.parent


def state(dsn: str) -> tuple[str, dict]:
    """The whole schema (pg_dump) and every row of public and pgsnap, yoyo's tables included."""
    with psycopg.connect(dsn) as c:
        return dump_schema(dsn), db_state(c)


def legacy(cli, dsn: str) -> str:
    assert cli("migrate", "--to", BASELINE, dsn=dsn).exit_code == 0
    with psycopg.connect(dsn, autocommit=True) as c:
        seed_legacy_journey(c)
    return dsn


# -- migrate --plan --------------------------------------------------------------------------------
def step(*migrations: tuple[str, list[tuple[str, str]]], enforcement: bool = False, sql: str = "deployed",
         transactional: bool = True):
    return {"migrations": [{"id": mid, "enforcement": enforcement, "transactional": transactional,
                            "locks": [{"table": t, "mode": m} for t, m in locks], "unread": []}
                           for mid, locks in migrations], "sql": sql}


# the locks each migration takes on tables that exist before it (read from its statements)
LOCKS = {
    "0002.pgsnap-schema": [("targets", AE), ("target_bands", AE), ("target_populations", AE)],
    "0003.scheduler": [],
    "0004.snapshot-checks": [("target_populations", AE), ("offers", AE), ("ad_events", AE)],
    "0008.engine-state": [("targets", SRE), ("target_populations", AE), ("target_bands", AE)],
    "0009.snapshot-shape": [("target_populations", AE), ("offers", AE), ("ad_events", AE)],
    "0011.trait-lookup": [],   # its table is created by 0008, in the same plan
    "0012.band-lookup": [],
    "0013.tag-value-lookup": [("me_file_tags", SUE)],
    "0005.enforce-target-populations-snapshot": [("target_populations", AE)],
    "0006.enforce-offers-snapshot": [("offers", AE)],
    "0007.enforce-ad-events-snapshot": [("ad_events", AE)],
    "0010.enforce-snapshot-shape": [("target_populations", SUE), ("offers", SUE), ("ad_events", SUE)],
}
ENFORCEMENT_STEPS = [step((mid, LOCKS[mid]), enforcement=True) for mid in ENFORCING]


def sql_plan(deployed: bool) -> dict:
    checksum = deploy.sql_checksum(resources.sql_files())
    return {"files": len(resources.sql_files()), "checksum": checksum,
            "deployed_checksum": checksum if deployed else None, "changes": not deployed}


def plan(cli, dsn: str) -> dict:
    before = state(dsn)
    result = cli("migrate", "--plan", "--json", dsn=dsn)
    assert (result.exit_code, result.stderr) == (0, "")
    assert state(dsn) == before  # nothing written
    return json.loads(result.stdout)


def test_plan_on_an_empty_database(cli, empty_db_dsn, pg_server):
    dbname = psycopg.conninfo.conninfo_to_dict(empty_db_dsn)["dbname"]
    assert plan(cli, empty_db_dsn) == {
        "database": f"{pg_server.host}:{pg_server.port}/{dbname}",
        "applied": 0, "pending": len(JOURNEY),
        # every table is created by the plan itself: nothing existing is locked
        "steps": [step(*((mid, []) for mid in [BASELINE, *PLAIN] if mid not in ALONE)),
                  *(step((mid, []), sql="none", transactional=False) for mid in ALONE),
                  *(step((mid, []), enforcement=True) for mid in ENFORCING)],
        "backfill": {"before": ENFORCING[0], "total": 0, "exact": True, "estimate": {"seconds": 0.0},
                     "tables": {t: {"nulls": 0, "sources": None} for t in ("target_populations", "offers",
                                                                            "ad_events")}},
        "sql": sql_plan(deployed=False),
    }


def test_plan_on_a_legacy_database(cli, empty_db_dsn):
    legacy(cli, empty_db_dsn)
    found = plan(cli, empty_db_dsn)
    assert list(LOCKS) == JOURNEY[1:]
    assert found["steps"] == [step(*((mid, LOCKS[mid]) for mid in PLAIN if mid not in ALONE)),
                              *(step((mid, LOCKS[mid]), sql="none", transactional=False) for mid in ALONE),
                              *ENFORCEMENT_STEPS]
    assert found["backfill"] == {
        "before": ENFORCING[0], "total": 17, "exact": False,
        "tables": {"target_populations": {"nulls": 3, "sources": None},
                   "offers": {"nulls": 5, "sources": None}, "ad_events": {"nulls": 9, "sources": None}},
        "estimate": {"unavailable": "pgsnap's functions are not deployed yet: run `pgsnap migrate "
                                    "--no-backfill`, then `pgsnap migrate --plan` again"}}
    assert (found["applied"], found["pending"], found["sql"]) == (
        1, len(JOURNEY) - 1, sql_plan(deployed=False))
    text = cli("migrate", "--plan", dsn=empty_db_dsn)
    assert text.stdout.splitlines()[:5] == [
        f"migrate plan for {found['database']}: 1 applied, {len(JOURNEY) - 1} migrations to apply",
        "step 1 (one transaction, with sql/):",
        f"  0002.pgsnap-schema    {AE} on targets; {AE} on target_bands; {AE} on target_populations",
        "  0003.scheduler        no lock on existing tables",
        f"  0004.snapshot-checks  {AE} on target_populations; {AE} on offers; {AE} on ad_events",
    ]


def test_plan_mid_journey_counts_by_source_and_times_a_rolled_back_sample(cli, empty_db_dsn):
    legacy(cli, empty_db_dsn)
    assert cli("migrate", "--no-backfill", dsn=empty_db_dsn).exit_code == 0
    found = plan(cli, empty_db_dsn)
    estimate = found["backfill"].pop("estimate")
    assert found == {
        "database": found["database"], "applied": 1 + len(PLAIN), "pending": len(ENFORCING),
        "steps": ENFORCEMENT_STEPS,
        "backfill": {"before": ENFORCING[0], "total": 19, "exact": True, "tables": {
            "target_populations": {"nulls": 3, "sources": {"built": 3}},
            "offers": {"nulls": 6, "sources": {"built": 2, "population": 4}},
            "ad_events": {"nulls": 10, "sources": {"built": 2, "offer": 7, "population": 1}}}},
        "sql": sql_plan(deployed=True)}
    assert estimate["sample_rows"] == 19  # one sample batch filled everything, then was rolled back
    assert estimate["seconds"] >= 0 and estimate["sample_seconds"] >= 0


def test_plan_on_an_up_to_date_database(cli, db_dsn):
    found = plan(cli, db_dsn)
    assert (found["applied"], found["pending"], found["steps"], found["backfill"], found["sql"]) == (
        len(JOURNEY), 0, [], None, sql_plan(deployed=True))
    assert cli("migrate", "--plan").stdout.splitlines()[1:] == [
        "nothing to apply: the database is up to date",
        f"sql/: {len(resources.sql_files())} files, unchanged (checksum {found['sql']['checksum'][:12]})"]


def test_plan_says_when_sql_would_change(cli, conn):
    execute(conn, "UPDATE pgsnap.settings SET value = 'an older one' WHERE key = 'sql_checksum'")
    assert cli("migrate", "--plan").stdout.splitlines()[-1].startswith(
        f"sql/: {len(resources.sql_files())} files, would change (checksum ")


# -- rollback --------------------------------------------------------------------------------------
PLAN_LATEST = f"rollback plan: undo 1 migration, latest first\n  {JOURNEY[-1]}\n"


def test_rollback_without_a_terminal_needs_yes(cli, empty_db_dsn):
    assert cli("migrate", dsn=empty_db_dsn).exit_code == 0
    before = state(empty_db_dsn)
    refused = cli("rollback", dsn=empty_db_dsn)
    assert (refused.exit_code, refused.stdout, refused.stderr) == (
        2, PLAN_LATEST, "error: rollback asks for confirmation and there is no terminal to ask on: "
                        "re-run with --yes\n")
    assert state(empty_db_dsn) == before
    done = cli("rollback", "--yes", dsn=empty_db_dsn)
    assert (done.exit_code, done.stdout, done.stderr) == (
        0, PLAN_LATEST + f"rolling back {JOURNEY[-1]}\n", "")
    assert applied(empty_db_dsn) == JOURNEY[:-1]


def test_rollback_past_the_baseline_needs_yes_and_include_baseline(cli, empty_db_dsn):
    legacy(cli, empty_db_dsn)
    before = state(empty_db_dsn)
    plan_text = (f"rollback plan: undo 1 migration, latest first\n  {BASELINE}\n"
                 f"rolling back {BASELINE} DROPS the application's tables and their rows:\n")
    for args in (["--yes"], ["--include-baseline"], ["--all"], ["--all", "--yes"]):
        refused = cli("rollback", *args, dsn=empty_db_dsn)
        assert refused.exit_code == 2, args
        assert refused.stdout.startswith(plan_text), args
        assert refused.stdout.splitlines()[3:6] == ["  traits                    14 rows",
                                                    "  trait_groups              6 rows",
                                                    "  trait_group_traits        7 rows"]
        assert len(refused.stdout.splitlines()) == 3 + len(APP_TABLES)
        assert refused.stderr == (f"error: refusing to roll back {BASELINE} without --yes and "
                                  "--include-baseline\n")
        assert state(empty_db_dsn) == before
    done = cli("rollback", "--yes", "--include-baseline", dsn=empty_db_dsn)
    assert (done.exit_code, done.stderr) == (0, "")
    assert done.stdout.splitlines()[-1] == f"rolling back {BASELINE}"
    assert applied(empty_db_dsn) == []
    with psycopg.connect(empty_db_dsn) as c:
        assert value(c, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
                        " AND tablename NOT LIKE '%%yoyo%%'") == 0


def on_terminal(args: list[str], answer: bytes) -> tuple[int, str]:
    """Run pgsnap with a pseudo-terminal as stdin/stdout/stderr; answer its question."""
    main, side = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "PGSNAP_HOME"}
    proc = subprocess.Popen([sys.executable, "-m", "pgsnap", *args], stdin=side, stdout=side, stderr=side,
                            env=env, cwd=REPO, close_fds=True)
    os.close(side)
    seen = b""
    try:
        while b"[y/N]: " not in seen:
            chunk = os.read(main, 4096)
            assert chunk, seen
            seen += chunk
        os.write(main, answer + b"\n")
        while True:
            try:
                chunk = os.read(main, 4096)
            except OSError:  # EIO: the other side is closed
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(main)
        code = proc.wait(60)
    return code, seen.decode().replace("\r\n", "\n")


def test_rollback_on_a_terminal_asks(empty_db_dsn, cli):
    assert cli("migrate", dsn=empty_db_dsn).exit_code == 0
    before = state(empty_db_dsn)
    code, out = on_terminal(["--dsn", empty_db_dsn, "rollback"], b"n")
    assert (code, out) == (1, PLAN_LATEST + "Roll back 1 migration? [y/N]: n\n"
                              "error: not confirmed: nothing was rolled back\n")
    assert state(empty_db_dsn) == before
    code, out = on_terminal(["--dsn", empty_db_dsn, "rollback"], b"y")
    assert (code, out) == (0, PLAN_LATEST + f"Roll back 1 migration? [y/N]: y\nrolling back {JOURNEY[-1]}\n")
    assert applied(empty_db_dsn) == JOURNEY[:-1]


# -- adopt -----------------------------------------------------------------------------------------
@pytest.fixture
def app_made(empty_db_dsn) -> str:
    """A database whose application created the baseline schema itself (no yoyo record), with
    the legacy rows."""
    with psycopg.connect(empty_db_dsn, autocommit=True) as c:
        c.execute((REPO / "migrations" / f"{BASELINE}.sql").read_text())
        seed_legacy_journey(c)
    return empty_db_dsn


HINT = (f"error: the database already holds the application's tables (traits, trait_groups, "
        f"trait_group_traits, ...) but pgsnap has no record of {BASELINE}: run `pgsnap adopt` to compare "
        "them with it and record it\n")


def test_migrate_without_adopting_gives_a_one_line_hint(cli, app_made):
    before = state(app_made)
    for args in (["migrate"], ["migrate", "--plan"]):
        result = cli(*args, dsn=app_made)
        assert (result.exit_code, result.stdout, result.stderr) == (2, "", HINT), args
    assert state(app_made) == before


def test_adopt_a_compatible_database_then_migrate_completes_the_journey(cli, app_made):
    result = cli("adopt", dsn=app_made)
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout == (f"the application's 13 tables match {BASELINE}: recorded it as applied; "
                             "`pgsnap migrate` continues from there\n")
    assert applied(app_made) == [BASELINE]
    with psycopg.connect(app_made) as c:
        assert value(c, "SELECT operation FROM _yoyo_log") == "mark"
    again = cli("adopt", "--json", dsn=app_made)
    assert json.loads(again.stdout) == {"baseline": BASELINE, "already": True, "compatible": True,
                                        "differences": [], "recorded": False}
    journey = cli("migrate", dsn=app_made)
    assert (journey.exit_code, journey.stderr) == (0, "")
    assert journey.stdout.splitlines()[-2] == "backfilled target_populations 3, offers 6, ad_events 10"
    assert applied(app_made) == JOURNEY


@pytest.mark.parametrize(("damage", "differences"), [
    ("ALTER TABLE traits DROP COLUMN display_order", ["column traits.display_order is missing"]),
    ("ALTER TABLE targets ALTER COLUMN title TYPE varchar(200)",
     ["column targets.title is character varying(200), expected text"]),
    ("ALTER TABLE offers ALTER COLUMN offer_amt DROP NOT NULL",
     ["column offers.offer_amt is nullable, expected NOT NULL"]),
    ("ALTER TABLE bids DROP CONSTRAINT bids_campaign_id_target_band_id_key; DROP TABLE ad_events",
     ["constraint bids_campaign_id_target_band_id_key on bids is missing "
      "(expected UNIQUE (campaign_id, target_band_id))", "table ad_events is missing"]),
], ids=["missing column", "other type", "nullable", "missing constraint and table"])
def test_adopt_refuses_a_different_schema_naming_each_difference(cli, app_made, damage, differences):
    with psycopg.connect(app_made, autocommit=True) as c:
        c.execute(damage)
    before = state(app_made)
    result = cli("adopt", dsn=app_made)
    assert (result.exit_code, result.stderr) == (1, "")
    n = len(differences)
    assert result.stdout == "".join(f"{d}\n" for d in differences) + (
        f"not adopted: {n} difference{'s' * (n > 1)} from {BASELINE}; nothing was recorded\n")
    assert json.loads(cli("adopt", "--json", dsn=app_made).stdout) == {
        "baseline": BASELINE, "already": False, "compatible": False, "differences": differences,
        "recorded": False}
    assert state(app_made) == before


def test_adopt_an_empty_database_says_migrate_instead(cli, empty_db_dsn):
    result = cli("adopt", dsn=empty_db_dsn)
    assert (result.exit_code, result.stdout, result.stderr) == (
        2, "", f"error: none of the application's tables exists: nothing to adopt; `pgsnap migrate` "
               f"creates them ({BASELINE})\n")
