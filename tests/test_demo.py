"""`pgsnap demo` (the README's main command) tells the whole story and ends healthy."""

import re

from pgsnap.demo import story
from pgsnap.health import SNAPSHOT_TABLES


def test_demo_with_2000_me_files_ends_healthy_with_zero_nulls(cli, empty_db_dsn):
    result = cli("demo", "--me-files", "2000", "--seed", "7", "--dsn", empty_db_dsn, dsn=False)
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert out.splitlines()[-1] == "check: healthy"
    nulls = {t: (int(before), int(after)) for t, before, after in
             re.findall(r"^  NULLs\s+(\w+)\s+before\s+(\d+)\s+after (\d+)$", out, re.M)}
    assert set(nulls) == set(SNAPSHOT_TABLES)
    assert all(before > 0 and after == 0 for before, after in nulls.values()), nulls
    assert re.search(r"^  populate   \d+ rows/s$", out, re.M)
    assert re.search(r"^  sync       p50 [\d.]+ ms, p95 [\d.]+ ms per tag change$", out, re.M)
    assert re.search(r'^    \{"tags": \[$', out, re.M)  # the sample snapshot


def test_demo_report_is_returned_as_data(empty_db_dsn):
    lines = []
    report = story.run(empty_db_dsn, me_files=300, seed=3, echo=lines.append)
    assert report["healthy"] is True and report["violations"] == {}
    nulls_after = {t: after for t, (after, _rows) in report["nulls_after"].items()}
    assert nulls_after == dict.fromkeys(SNAPSHOT_TABLES, 0)
    assert lines[-1] == "check: healthy"
