"""The embedded throwaway cluster: starts, serves, and leaves no process and no directory behind,
as root (server run as the `postgres` OS user) and as a normal user."""

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest

import pgsnap
from pgsnap.demo import cluster
from pgsnap.demo.cluster import MISSING_BINARIES, EmbeddedCluster
from pgsnap.errors import PgsnapError

# Runs in a separate interpreter (possibly as another OS user): start, inspect, stop, report.
SCRIPT = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
from pgsnap.demo.cluster import EmbeddedCluster
import psycopg
with EmbeddedCluster() as pg:
    pid = int((pg.datadir / "postmaster.pid").read_text().split()[0])
    with psycopg.connect(pg.dsn()) as c:
        extensions = sorted(r[0] for r in c.execute("SELECT extname FROM pg_extension"))
        cron_db = c.execute("SELECT current_setting('cron.database_name', true)").fetchone()[0]
    report = dict(uid=os.geteuid(), root=str(pg.root), pid=pid, server_uid=os.stat(f"/proc/{pid}").st_uid,
                  has_pg_cron=pg.has_pg_cron, extensions=extensions, cron_db=cron_db)
print(json.dumps(report))
"""


def children() -> set[int]:
    """Live (or zombie) child processes of this test process."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid():
            found.add(int(stat.parent.name))
    return found


def assert_nothing_left(root: str | Path, pid: int) -> None:
    assert not Path(root).exists(), f"{root} left behind"
    assert not Path(f"/proc/{pid}").exists(), f"postmaster {pid} still exists"


def test_cluster_starts_serves_and_leaves_nothing():
    before = children()
    with EmbeddedCluster() as pg:
        root, pid = pg.root, int((pg.datadir / "postmaster.pid").read_text().split()[0])
        expected_uid = pwd.getpwnam("postgres").pw_uid if os.geteuid() == 0 else os.geteuid()
        assert os.stat(f"/proc/{pid}").st_uid == expected_uid
        assert pg.dsn("x") == f"host=127.0.0.1 port={pg.port} user=postgres dbname=x"
        dsn = pg.create_database("two words")
        with psycopg.connect(dsn) as c:
            assert c.execute("SELECT current_database(), current_user").fetchone() == ("two words",
                                                                                       "postgres")
        with psycopg.connect(pg.dsn()) as c:
            assert c.execute("SHOW fsync").fetchone() == ("off",)
            if pg.has_pg_cron:
                assert c.execute("SELECT extname FROM pg_extension WHERE extname = 'pg_cron'").fetchone()
    assert_nothing_left(root, pid)
    assert children() <= before


@pytest.mark.parametrize("interruption", [RuntimeError, KeyboardInterrupt])
def test_cluster_cleans_up_after_errors_and_interrupts(interruption):
    seen = {}
    with pytest.raises(interruption):
        with EmbeddedCluster() as pg:
            seen.update(root=pg.root, pid=int((pg.datadir / "postmaster.pid").read_text().split()[0]))
            raise interruption()
    assert_nothing_left(seen["root"], seen["pid"])


def test_session_server_has_pg_cron(pg_server):
    assert pg_server.has_pg_cron, "postgresql-15-cron is required (make setup installs it)"
    with psycopg.connect(pg_server.dsn(pg_server.cron_dbname)) as c:
        assert c.execute("SELECT count(*) FROM pg_extension WHERE extname = 'pg_cron'").fetchone() == (1,)
        assert c.execute("SHOW cron.use_background_workers").fetchone() == ("on",)


def test_missing_server_binaries_is_a_clear_error(monkeypatch, tmp_path, cli):
    monkeypatch.setattr(cluster, "DEFAULT_BINDIR", tmp_path)
    monkeypatch.delenv("PGSNAP_PG_BIN", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    before = set(Path(tempfile.gettempdir()).glob("pgsnap-*"))
    with pytest.raises(PgsnapError) as failure:
        EmbeddedCluster().start()
    assert (str(failure.value), failure.value.exit_code) == (MISSING_BINARIES, 2)
    result = cli("demo", dsn=False)
    assert (result.exit_code, result.stderr.splitlines()[-1]) == (2, f"error: {MISSING_BINARIES}")
    assert set(Path(tempfile.gettempdir()).glob("pgsnap-*")) <= before  # nothing was created


def _readable_copy(dest: Path) -> None:
    """pgsnap and psycopg copied where any OS user can read them (the venv may sit under /root)."""
    import psycopg_binary
    import typing_extensions

    for module in (pgsnap, psycopg, psycopg_binary, typing_extensions):
        src = Path(module.__file__)
        if src.name == "__init__.py":
            shutil.copytree(src.parent, dest / src.parent.name, ignore=shutil.ignore_patterns("__pycache__"))
            libs = src.parent.with_name(src.parent.name + ".libs")
            if libs.is_dir():
                shutil.copytree(libs, dest / libs.name)
        else:
            shutil.copy(src, dest / src.name)
    for path in [dest, *dest.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644 | (path.stat().st_mode & 0o111))


def _interpreter_for(user: str) -> str | None:
    """A Python of our minor version that `user` can run (pyenv's python under /root cannot be)."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3", shutil.which("python3")):
        if not candidate or not os.access(candidate, os.X_OK):
            continue
        probe = subprocess.run(["runuser", "-u", user, "--", candidate, "-c",
                                f"import sys; print(sys.version_info[:2] == {sys.version_info[:2]})"],
                               capture_output=True, text=True)
        if probe.stdout.strip() == "True":
            return candidate
    return None


def test_cluster_as_a_normal_user(tmp_path):
    if os.geteuid() != 0:
        cmd, user = [sys.executable, "-I", "-c", SCRIPT, str(Path(pgsnap.__file__).parent.parent)], None
    else:
        user = "nobody"
        python = _interpreter_for(user)
        if python is None:
            pytest.skip(f"no Python {sys.version_info[0]}.{sys.version_info[1]} that user {user} can run "
                        "(pyenv's interpreter lives under /root); install Debian's python3")
        copy = Path(tempfile.mkdtemp(prefix="pgsnap-test-"))
        try:
            _readable_copy(copy)
            cmd = ["runuser", "-u", user, "--", python, "-I", "-c", SCRIPT, str(copy)]
            result = subprocess.run(cmd, capture_output=True, text=True, cwd=copy,
                                    env={**os.environ, "TMPDIR": "/tmp"}, timeout=120)
        finally:
            shutil.rmtree(copy)
        return _check_normal_user_run(result, pwd.getpwnam(user).pw_uid)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    _check_normal_user_run(result, os.geteuid())


def _check_normal_user_run(result: subprocess.CompletedProcess, uid: int) -> None:
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["uid"], report["server_uid"]) == (uid, uid)
    assert report["has_pg_cron"] and "pg_cron" in report["extensions"] and report["cron_db"] == "postgres"
    assert_nothing_left(report["root"], report["pid"])


def test_sigterm_stops_the_cluster_and_removes_it():
    script = (
        "import sys, time\n"
        f"sys.path.insert(0, {str(Path(pgsnap.__file__).parent.parent)!r})\n"
        "from pgsnap.demo.cluster import EmbeddedCluster\n"
        "with EmbeddedCluster() as pg:\n"
        "    pid = (pg.datadir / 'postmaster.pid').read_text().split()[0]\n"
        "    print(pg.root, pid, flush=True)\n"
        "    time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    root, pid = proc.stdout.readline().split()
    proc.terminate()
    assert proc.wait(timeout=60) == -15  # still dies of SIGTERM, after stopping the server
    assert_nothing_left(root, int(pid))
