"""Test harness: one PostgreSQL 15 server per session, one fully migrated template database, and a
fresh clone of it for every test (pytest-postgresql's noproc + client factories).

Fixtures (use exactly these names):

* `pg_server` (session) — the server: `.host`, `.port`, `.user`, `.dsn(dbname)`, `.cron_dbname`,
  `.has_pg_cron`, `.create_database(name)`. An EmbeddedCluster started for the session (runs as
  the `postgres` OS user when we are root), or the existing server of env PGSNAP_TEST_DSN.
* `db_dsn` — DSN of a fresh database cloned from a template built once per session with
  `pgsnap.deploy.migrate` (every migration applied, `sql/` deployed). Dropped after the test.
* `conn` — `psycopg.connect(db_dsn, autocommit=True)`, closed after the test.
* `new_conn` — factory `new_conn(autocommit=True)` of extra connections to db_dsn (concurrency
  tests); all closed after the test.
* `empty_db_dsn` — DSN of a brand-new empty database (migration tests). Dropped after the test.
* `cli` — `cli(*args, dsn=None, input=None, env=None)` runs the click app in-process with
  `--dsn db_dsn` (or `--dsn <dsn>`; `dsn=False` passes no --dsn) and returns click's `Result`:
  `.exit_code`, `.stdout`, `.stderr` (separate streams), `.output`. Unexpected exceptions propagate.

pg_cron jobs only run when scheduled from `pg_server.cron_dbname` (not from a cloned database).
"""

import os
import uuid
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from psycopg.conninfo import make_conninfo
from pytest_postgresql import factories
from pytest_postgresql.janitor import DatabaseJanitor

from pgsnap import deploy
from pgsnap.cli import main
from pgsnap.demo.cluster import EmbeddedCluster, ExternalServer

# the pid keeps parallel runs against one PGSNAP_TEST_DSN server apart
TEST_DBNAME = f"pgsnap_test_{os.getpid()}"
# the project the template is built from, whatever a test later sets PGSNAP_HOME to
PROJECT_HOME = str(Path(__file__).resolve().parent.parent)


@pytest.fixture(scope="session")
def pg_server():
    external = os.environ.get("PGSNAP_TEST_DSN")
    with ExternalServer(external) if external else EmbeddedCluster() as server:
        yield server


@pytest.fixture(scope="session")
def _pg_base(pg_server):
    """pg_server as pytest-postgresql's `depends_on` expects it."""
    return _Base(pg_server)


class _Base:
    def __init__(self, server):
        self.host, self.port, self.user = server.host, server.port, server.user
        self.password = getattr(server, "password", None)
        self.options = ""
        self.maintenance_dbname = "postgres"
        self.template_dbname = None


def _load_template(host, port, user, dbname, password=None, **_):
    """Build the template: every migration + sql/. migrate() closes all its connections, so
    nothing stays connected to the template (a connected template cannot be cloned)."""
    dsn = make_conninfo(host=host, port=port, user=user, dbname=dbname, password=password)
    with _env(PGSNAP_HOME=PROJECT_HOME):  # the template may be first needed under a test's monkeypatch
        deploy.migrate(dsn)


@contextmanager
def _env(**values):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


_pg_template = factories.postgresql_noproc(dbname=TEST_DBNAME, depends_on="_pg_base", load=[_load_template])
_pg_clone = factories.postgresql("_pg_template")


@pytest.fixture
def db_dsn(pg_server, _pg_clone):
    dbname = _pg_clone.info.dbname
    _pg_clone.close()  # the clone exists; tests open their own connections
    return pg_server.dsn(dbname)


@pytest.fixture
def conn(db_dsn):
    with psycopg.connect(db_dsn, autocommit=True) as connection:
        yield connection


@pytest.fixture
def new_conn(db_dsn):
    opened = []

    def factory(autocommit: bool = True) -> psycopg.Connection:
        connection = psycopg.connect(db_dsn, autocommit=autocommit)
        opened.append(connection)
        return connection

    yield factory
    for connection in opened:
        connection.close()


@pytest.fixture
def empty_db_dsn(pg_server):
    name = f"pgsnap_empty_{uuid.uuid4().hex[:12]}"
    janitor = DatabaseJanitor(user=pg_server.user, host=pg_server.host, port=pg_server.port,
                              password=getattr(pg_server, "password", None), dbname=name)
    with janitor:  # creates it, then drops it (terminating leftover sessions) after the test
        yield pg_server.dsn(name)


@pytest.fixture
def cli(request):
    runner = CliRunner()

    def run(*args: str, dsn=None, input=None, env=None):
        if dsn is None:
            dsn = request.getfixturevalue("db_dsn")
        argv = ([] if dsn is False else ["--dsn", dsn]) + [str(a) for a in args]
        return runner.invoke(main, argv, input=input, env=env, catch_exceptions=False, prog_name="pgsnap")

    return run

