"""A private throwaway PostgreSQL 15 cluster for `pgsnap demo`, the tests and the benchmark.

initdb, postgres and pg_ctl refuse to run as root, so when we are root they run as the `postgres`
OS user (via runuser) in a directory chowned to it; the Python process itself stays as it is.
Everything lives in one `mkdtemp` directory that is removed on exit, whatever happens.
"""

import atexit
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from pgsnap.errors import PgsnapError

DEFAULT_BINDIR = Path("/usr/lib/postgresql/15/bin")
SERVER_USER = "postgres"  # the OS user when root, and always the database superuser name

MISSING_BINARIES = (
    "PostgreSQL 15 server binaries not found: install postgresql-15 and postgresql-15-cron "
    "(apt-get install postgresql-15 postgresql-15-cron), or point PGSNAP_DSN at an existing server"
)

# Throwaway-cluster settings: durability off (speed), pg_cron preloaded with background workers
# (its default TCP connections would need passwords), room for many test databases. The lock
# table keeps PostgreSQL's default size: pgsnap must work on a default-configured server.
SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "max_worker_processes": "32",
}
CRON_SETTINGS = {
    "shared_preload_libraries": "pg_cron",
    "cron.use_background_workers": "on",
}


def find_bindir() -> Path:
    """Directory with initdb and pg_ctl: $PGSNAP_PG_BIN, the Debian PG 15 path, `pg_config --bindir`."""
    candidates = []
    if os.environ.get("PGSNAP_PG_BIN"):
        candidates.append(Path(os.environ["PGSNAP_PG_BIN"]))
    candidates.append(DEFAULT_BINDIR)
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip():
            candidates.append(Path(out.stdout.strip()))
    for bindir in candidates:
        if all(os.access(bindir / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            return bindir
    raise PgsnapError(MISSING_BINARIES, exit_code=2)


def pg_cron_available(bindir: Path) -> bool:
    """pg_cron's library and extension files are installed for this server."""
    pkglib, share = bindir.parent / "lib", None
    pg_config = bindir / "pg_config"
    if os.access(pg_config, os.X_OK):
        out = subprocess.run([pg_config, "--pkglibdir", "--sharedir"], capture_output=True, text=True)
        if out.returncode == 0 and len(out.stdout.split()) == 2:
            pkglib, share = (Path(p) for p in out.stdout.split())
    control_ok = share is None or (share / "extension" / "pg_cron.control").exists()
    return (pkglib / "pg_cron.so").exists() and control_ok


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_LIVE: set["EmbeddedCluster"] = set()  # started and not yet stopped, for the SIGTERM handler


def _trap_sigterm() -> None:
    """On SIGTERM, stop every live cluster, then die of SIGTERM as usual.

    Python's default dies on the spot (no atexit), leaving the server running. Raising an
    exception instead is no good either: code in between (a test runner, a gc callback) may
    swallow it. Only installed when the program has no SIGTERM handler of its own.
    """
    if (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL):
        signal.signal(signal.SIGTERM, _stop_all_and_die)


def _stop_all_and_die(signum, frame) -> None:
    for cluster in list(_LIVE):
        cluster.stop()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _quote_conf(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


class EmbeddedCluster:
    """`with EmbeddedCluster() as pg: psycopg.connect(pg.dsn())` — started, then stopped and deleted."""

    user = SERVER_USER
    host = "127.0.0.1"
    password = None

    def __init__(self, cron_dbname: str = "postgres", start_attempts: int = 3):
        self.cron_dbname = cron_dbname
        self.start_attempts = start_attempts
        self.port: int | None = None
        self.root: Path | None = None
        self.has_pg_cron = False
        self._bindir: Path | None = None
        self._as_root = os.geteuid() == 0
        self._proc: subprocess.Popen | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> "EmbeddedCluster":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def datadir(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    @property
    def logfile(self) -> Path:
        assert self.root is not None
        return self.root / "postgres.log"

    def start(self) -> "EmbeddedCluster":
        self._bindir = find_bindir()
        self.has_pg_cron = pg_cron_available(self._bindir)
        self.root = Path(tempfile.mkdtemp(prefix="pgsnap-"))
        atexit.register(self.stop)  # safety net if the caller never reaches stop()
        _LIVE.add(self)
        _trap_sigterm()
        try:
            if self._as_root:
                pw = self._server_account()
                os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self._run(
                "initdb", "-D", str(self.datadir), "-A", "trust", "-U", self.user,
                "--encoding", "UTF8", "--no-locale", "--no-sync",
            )
            with open(self.datadir / "postgresql.conf", "a") as conf:
                conf.write("\ninclude 'pgsnap.conf'\n")
            self._start_server()
            if self.has_pg_cron:
                if self.cron_dbname != "postgres":
                    self.create_database(self.cron_dbname)
                self.execute("CREATE EXTENSION IF NOT EXISTS pg_cron", dbname=self.cron_dbname)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_server(self) -> None:
        for attempt in range(1, self.start_attempts + 1):
            self.port = free_port()
            self._write_settings()
            if self._launch():
                return
            log = self._log_tail()
            # another process grabbed the free port between our probe and the bind: retry
            if "could not bind" not in log or attempt == self.start_attempts:
                raise PgsnapError(f"embedded PostgreSQL failed to start: {log}", exit_code=2)

    def _launch(self, timeout: float = 60.0) -> bool:
        """Run the postmaster as our own child and wait until it accepts connections.

        Not `pg_ctl start`: that daemonizes the postmaster, which is then orphaned to PID 1 and
        lingers as a zombie after stop until init reaps it. As our child (through runuser when
        root) it is reaped by us, so nothing is left once stop() returns.
        """
        with open(self.logfile, "ab") as log:
            self._proc = subprocess.Popen(
                self._command("postgres", "-D", str(self.datadir)),
                cwd=self.root, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl+C in the terminal reaches us (and stop()), not it
            )
        deadline = time.monotonic() + timeout
        pidfile = self.datadir / "postmaster.pid"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                return False
            try:
                # line 8 of postmaster.pid is the status pg_ctl -w waits for
                lines = pidfile.read_text().splitlines()
                if len(lines) >= 8 and lines[7].strip() == "ready":
                    return True
            except OSError:
                pass
            time.sleep(0.05)
        self._kill()
        raise PgsnapError(f"embedded PostgreSQL did not start within {timeout:.0f}s: {self._log_tail()}", 2)

    def _write_settings(self) -> None:
        settings = {**SETTINGS, "port": str(self.port), "unix_socket_directories": str(self.root)}
        if self.has_pg_cron:
            settings.update(CRON_SETTINGS, **{"cron.database_name": self.cron_dbname})
        path = self.datadir / "pgsnap.conf"
        path.write_text("".join(f"{k} = {_quote_conf(v)}\n" for k, v in settings.items()))
        if self._as_root:
            pw = self._server_account()
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def stop(self) -> None:
        """Stop the server (immediate mode) and delete everything; safe to call twice."""
        try:
            if self._proc is not None:
                self._run("pg_ctl", "stop", "-w", "-t", "60", "-m", "immediate", "-D", str(self.datadir),
                          check=False)
                try:
                    self._proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self._kill()
                self._proc = None
        finally:
            if self.root is not None:
                shutil.rmtree(self.root, ignore_errors=True)
                self.root = None
            atexit.unregister(self.stop)
            _LIVE.discard(self)

    def _kill(self) -> None:
        """Last resort: SIGQUIT the postmaster (immediate shutdown), then reap our child."""
        assert self._proc is not None
        try:
            pid = int((self.datadir / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGQUIT)
        except (OSError, ValueError, IndexError):
            self._proc.kill()
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    # -- connection details ------------------------------------------------------------------
    def dsn(self, dbname: str = "postgres") -> str:
        from psycopg.conninfo import make_conninfo

        return make_conninfo(host=self.host, port=self.port, user=self.user, dbname=dbname)

    def execute(self, query, dbname: str = "postgres") -> None:
        import psycopg

        with psycopg.connect(self.dsn(dbname), autocommit=True) as conn:
            conn.execute(query)

    def create_database(self, name: str) -> str:
        """Create an empty database and return its DSN."""
        from psycopg import sql

        self.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    # -- helpers ---------------------------------------------------------------------------
    def _server_account(self) -> pwd.struct_passwd:
        try:
            return pwd.getpwnam(SERVER_USER)
        except KeyError:
            raise PgsnapError(
                f"running as root, but there is no `{SERVER_USER}` OS user to run the embedded "
                "PostgreSQL (install postgresql-15, or run as a normal user)", exit_code=2) from None

    def _command(self, tool: str, *args: str) -> list[str]:
        assert self._bindir is not None
        cmd = [str(self._bindir / tool), *args]
        return ["runuser", "-u", SERVER_USER, "--", *cmd] if self._as_root else cmd

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            self._command(tool, *args), cwd=self.root, stdin=subprocess.DEVNULL, capture_output=True,
            text=True, start_new_session=True,
        )
        if check and result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise PgsnapError(f"{tool} failed: {detail[-1] if detail else f'exit {result.returncode}'}", 2)
        return result

    def _log_tail(self) -> str:
        try:
            lines = self.logfile.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(lines[-3:])


class ExternalServer:
    """An existing server described like an EmbeddedCluster (tests with PGSNAP_TEST_DSN, bench)."""

    def __init__(self, dsn: str):
        from psycopg.conninfo import conninfo_to_dict

        self._base = dsn
        params = conninfo_to_dict(dsn)
        self.host = params.get("host") or os.environ.get("PGHOST") or "localhost"
        self.port = int(params.get("port") or os.environ.get("PGPORT") or 5432)
        self.user = params.get("user") or os.environ.get("PGUSER") or pwd.getpwuid(os.getuid()).pw_name
        self.password = params.get("password") or os.environ.get("PGPASSWORD")
        import psycopg

        with psycopg.connect(self.dsn(params.get("dbname") or "postgres"), autocommit=True) as conn:
            preload = conn.execute("SELECT current_setting('shared_preload_libraries')").fetchone()[0]
            cron_db = conn.execute("SELECT current_setting('cron.database_name', true)").fetchone()[0]
        self.has_pg_cron = "pg_cron" in preload
        self.cron_dbname = cron_db or "postgres"

    def __enter__(self) -> "ExternalServer":
        return self

    def __exit__(self, *exc_info) -> None:
        pass

    def dsn(self, dbname: str = "postgres") -> str:
        from psycopg.conninfo import make_conninfo

        return make_conninfo(self._base, host=self.host, port=self.port, user=self.user, dbname=dbname)

    def create_database(self, name: str) -> str:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)
