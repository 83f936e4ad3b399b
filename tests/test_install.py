"""An installed pgsnap works from anywhere: a wheel built from this checkout, installed into a
fresh venv outside it, migrates, populates and checks a database from another directory; a
pgsnap that finds no migrations refuses every command (exit 2) instead of calling a database
"up to date"."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.helpers import B1, B2, B3, M1, M2, M3, T1, rows, seed_worked_example

REPO = Path(__file__).resolve().parent.parent


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """`bin/` of a fresh venv holding only the wheel built from this checkout (and its
    dependencies)."""
    root = tmp_path_factory.mktemp("install")
    # a copy of the sources: setuptools' build/ directory in the checkout may hold files since removed
    source = root / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache"))
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(root / "dist"),
                 str(source)], cwd=root)
    assert built.returncode == 0, built.stderr
    (wheel,) = (root / "dist").glob("pgsnap-*.whl")
    venv = root / "venv"
    created = run([sys.executable, "-m", "venv", str(venv)], cwd=root)
    assert created.returncode == 0, created.stderr
    pip = run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)], cwd=root)
    assert pip.returncode == 0, pip.stderr
    return venv / "bin"


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything pointing at this checkout."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PGSNAP_HOME", "PYTHONPATH", "PGSNAP_DSN", "VIRTUAL_ENV")}
    return {**env, **extra}


def test_the_wheel_ships_the_sql_and_runs_from_another_directory(installed, empty_db_dsn, tmp_path):
    pgsnap = str(installed / "pgsnap")
    where = run([str(installed / "python"), "-c", "from pgsnap import resources as r;"
                 " print(r.migrations_dir()); print(r.sql_dir())"], cwd=tmp_path, env=clean_env())
    site = installed.parent / "lib"
    assert [Path(p).relative_to(site).parts[1:] for p in where.stdout.split()] == [
        ("site-packages", "pgsnap", "migrations"), ("site-packages", "pgsnap", "sql")]
    shipped = sorted(p.name for p in (REPO / "migrations").glob("*.sql"))
    assert sorted(p.name for p in Path(where.stdout.split()[0]).glob("*.sql")) == shipped

    migrated = run([pgsnap, "--dsn", empty_db_dsn, "migrate"], cwd=tmp_path, env=clean_env())
    assert (migrated.returncode, migrated.stderr) == (0, "")
    ids = [p.name.removesuffix(".sql") for p in (REPO / "migrations").glob("*.sql")
           if not p.name.endswith(".rollback.sql")]
    assert {ln.removeprefix("applying ") for ln in migrated.stdout.splitlines()
            if ln.startswith("applying ")} == set(ids)

    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        seed_worked_example(conn)
    populated = run([pgsnap, "--dsn", empty_db_dsn, "populate", "--all"], cwd=tmp_path, env=clean_env())
    assert (populated.returncode, populated.stderr) == (0, "")
    with psycopg.connect(empty_db_dsn) as conn:
        assert rows(conn, "SELECT target_band_id, me_file_id FROM target_populations"
                          " WHERE target_id = %s ORDER BY me_file_id", (T1,)) == [
            (B1, M1), (B2, M2), (B3, M3)]

    checked = run([pgsnap, "--dsn", empty_db_dsn, "check"], cwd=tmp_path, env=clean_env())
    assert (checked.returncode, checked.stdout.splitlines()[-1], checked.stderr) == (0, "check: healthy", "")


NO_MIGRATIONS = "error: no migrations found in {home}/migrations (PGSNAP_HOME={home}): " \
                "pgsnap is not installed correctly\n"


@pytest.mark.parametrize("args", [["migrate"], ["migrations"], ["status"], ["check"], ["check", "--json"],
                                  ["rollback"], ["populate", "--all"], ["schedule", "list"]], ids=" ".join)
def test_without_migrations_every_command_fails_loudly(cli, conn, tmp_path, args):
    (tmp_path / "migrations").mkdir()
    result = cli(*args, env={"PGSNAP_HOME": str(tmp_path)})
    message = NO_MIGRATIONS.format(home=tmp_path)
    assert (result.exit_code, result.stderr) == (2, message)
    assert result.stdout == ("" if "--json" not in args else
                             '{"error": "' + message[len("error: "):-1] + '", "exit_code": 2}\n')
