"""bench/: the peer reproduces the original algorithm, and `python -m bench --scale tiny` runs.

No timing is asserted anywhere: figures are measured in bench/, never judged in tests.
"""

import json
import subprocess
import sys
from pathlib import Path

import psycopg

from bench import peer, scenarios
from pgsnap import deploy
from pgsnap.demo import datagen
from tests.helpers import (
    B1,
    B2,
    B3,
    CHESS,
    CUISINE,
    FEMALE,
    G40,
    G41,
    G50,
    HIKING,
    HOBBIES,
    HOME_ZIP,
    ITALIAN,
    M1,
    M2,
    M3,
    SEX,
    THAI,
    VIP,
    ZIP_02140,
    ZIP_10028,
    add_target,
    populate,
    population_rows,
    rows,
    seed_worked_example,
    snapshot,
    sync_triggers_disabled,
    tags,
    target_status,
    value,
)

ROOT = Path(__file__).resolve().parent.parent


def test_peer_places_and_snapshots_the_worked_example(conn):
    """Example 1 (the worked example of docs/rules.md): bottom-up placement and the three
    snapshots."""
    seed_worked_example(conn)
    result = peer.populate_target(conn, 1)
    assert (result.status, result.inserted, result.deleted, result.batches) == ("ok", 3, 0, 1)
    assert population_rows(conn, 1) == [
        (M1, B1, snapshot([SEX, "Sex (Biological)", 1, [[FEMALE, "Female", 2]]],
                          [HOME_ZIP, "Home Zip Code", 1, [[ZIP_02140, "02140", 2140]]],
                          [HOBBIES, "Hobbies", 3, [[HIKING, "Hiking", 1], [CHESS, "Chess", 3]]])),
        (M2, B2, snapshot([SEX, "Sex (Biological)", 1, [[FEMALE, "Female", 2]]],
                          [HOME_ZIP, "Home Zip Code", 1, [[ZIP_02140, "02140", 2140]]])),
        (M3, B3, snapshot([SEX, "Sex (Biological)", 1, [[FEMALE, "Female", 2]]])),
    ]
    assert target_status(conn, 1)[0] == "populated"


def test_peer_merges_parents_drops_parentless_and_names_blank_values(conn):
    """Example 3 (tests/helpers.py) with the original's later fix: a blank tag_value shows the
    trait's name."""
    seed_worked_example(conn)
    add_target(conn, 2, bands=[(9, [G40, G41, G50], True)])
    tags(conn, 5, {ITALIAN: "", THAI: None, VIP: "yes", ZIP_10028: None})
    peer.populate_target(conn, 2)
    assert population_rows(conn, 2) == [
        (5, 9, snapshot([CUISINE, "Cuisine", 7, [[ITALIAN, "Italian", 4], [THAI, "Thai", 9]]]))]


def test_peer_refresh_deletes_leavers_and_keeps_stayers(conn):
    seed_worked_example(conn)
    peer.populate_target(conn, 1)
    before = rows(conn, "SELECT id FROM target_populations WHERE me_file_id = %s", [M1])
    with sync_triggers_disabled(conn):  # leave the change to the peer
        conn.execute("DELETE FROM me_file_tags WHERE me_file_id = %s AND trait_id = %s", [M3, FEMALE])
    result = peer.populate_target(conn, 1)
    assert (result.inserted, result.deleted) == (0, 1)
    assert [r[0] for r in population_rows(conn, 1)] == [M1, M2]
    assert rows(conn, "SELECT id FROM target_populations WHERE me_file_id = %s", [M1]) == before


def test_peer_equals_populate_target_on_generated_data(conn):
    ds = datagen.generate(conn, me_files=1500, targets=4, seed=3)
    for target_id in ds.target_ids:
        populate(conn, target_id)
    expected = {t: population_rows(conn, t) for t in ds.target_ids}
    scenarios.delete_populations(conn, ds.target_ids)
    for target_id in ds.target_ids:
        peer.populate_target(conn, target_id, batch_size=100)
    assert {t: population_rows(conn, t) for t in ds.target_ids} == expected
    assert sum(len(v) for v in expected.values()) > 500
    # the blank-value rule was exercised: a zip tag with a NULL or '' value is in some snapshot
    assert value(conn, """
        SELECT count(*) FROM target_populations tp
          JOIN me_file_tags t ON t.me_file_id = tp.me_file_id AND coalesce(t.tag_value, '') = ''
         WHERE tp.matching_tags_snapshot::text LIKE '%[' || t.trait_id || ', "%'""") > 0


def test_scenario_without_its_sql_is_unavailable(empty_db_dsn):
    deploy.migrate(empty_db_dsn, to="0001.baseline-schema")
    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        ctx = scenarios.Context(dsn=empty_db_dsn, conn=conn, scale=scenarios.SCALES["tiny"], seed=1,
                                log=lambda _m: None, main=[1])
        for name, fn in (("a_floor", scenarios.a_floor), ("a_checked", scenarios.a_checked),
                         ("b_populate", scenarios.b_populate),
                         ("f_backfill", scenarios.f_backfill)):
            assert scenarios.run_scenario(ctx, name, fn)["status"] == "unavailable"


def test_bench_tiny_reports_every_figure(pg_server, tmp_path):
    out = tmp_path / "tiny.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--scale", "tiny", "--dsn", pg_server.dsn("postgres"),
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    figures = report["figures"]
    assert set(figures) == set(scenarios.FIGURES)
    for name, figure in figures.items():
        assert figure["status"] == "ok", (name, figure)
        assert figure["peak_rss_mb"] > 0
    for name in ("a_floor", "a_checked", "b_populate", "c_peer"):
        assert figures[name]["seconds"] > 0 and figures[name]["rows"] > 0, name
    a, checked = figures["a_floor"], figures["a_checked"]
    assert (checked["rows"], checked["foreign_keys"], checked["checks"]) == (a["rows"], 2, 1)
    assert figures["c_peer"]["equal_to_pgsnap"]["equal"] is True
    assert figures["c_peer"]["peer_peak_rss_mb"] > 0   # measured in the peer's own process
    assert figures["d_noop_refresh"]["rows_written"] == 0
    assert figures["d_noop_refresh"]["rows_with_new_xmin"] == 0
    runs = figures["e_sync_latency"]["runs"]
    assert runs["100"]["maintained_targets"] == 100 and runs["1000"]["maintained_targets"] == 1000
    for key in ("100", "1000", "triggers_disabled"):
        assert runs[key]["n"] > 0 and runs[key]["p50_ms"] > 0 and runs[key]["p95_ms"] > 0
    f = figures["f_backfill"]
    assert all(f["filled"][t] > 0 for t in ("target_populations", "offers", "ad_events"))
    assert sum(f["null_after"].values()) == 0 and f["fresh_rows"] > 0
    assert (figures["copy_vs_scan"]["copied"], figures["copy_vs_scan"]["verify_differences"]) == (True, 0)
    g = figures["g_rename"]
    assert (g["written_equals_changed"], g["still_stale"]) == (True, 0) and g["rows_written"] > 0
    assert figures["counts_churn"]["count_mismatches"] == 0
    assert figures["e_wide_targets"]["targets_using_it"] == 3
    assert set(figures["h_throughput"]["runs"]) == {"1", "8"}
    assert all(v is not None for v in report["ratios"].values()), report["ratios"]
    assert report["peak_rss_mb"] > 0
    assert {"nproc", "cpu", "postgres"} <= set(report["machine"])
    assert "(b) pgsnap.populate_target" in proc.stdout
    assert f"(b)/(a) can be no lower than (a')/(a) = {report['ratios']['a_checked_over_a']}:" in proc.stdout
    # the benchmark database was dropped afterwards
    with psycopg.connect(pg_server.dsn("postgres"), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname LIKE 'pgsnap_bench_tiny_%'"
                            ).fetchone()[0] == 0


def test_table_writes_counts_this_sessions_writes_at_once(conn):
    """(d)'s "rows written" must see writes made a statement earlier on the same connection."""
    before = scenarios.table_writes(conn, "me_files")
    conn.execute("INSERT INTO me_files (display_name) SELECT 'w' FROM generate_series(1, 3)")
    conn.execute("UPDATE me_files SET display_name = 'v' WHERE display_name = 'w'")
    assert scenarios.table_writes(conn, "me_files") - before == 6
