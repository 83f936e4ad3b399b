"""Deploying pgsnap: yoyo migrations (state) and the idempotent `sql/` files (behaviour).

Migration markers (in a migration's leading comment block, before the first statement):

* `-- pgsnap: enforce <table>` — a NOT NULL enforcement step. Before the first pending one,
  `migrate` deploys `sql/`, runs the batched backfill outside any migration transaction and
  refuses to go on while NULL snapshots remain. It is applied like a `lock` migration.
* `-- pgsnap: lock <table> [<table> ...]` — a step that takes strong locks on those tables: applied
  under a short `lock_timeout`, retried with exponential backoff, and reported with the sessions
  blocking it.
"""

import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote, urlencode

import psycopg
from yoyo import exceptions as yoyo_exceptions
from yoyo import get_backend
from yoyo import read_migrations as yoyo_read_migrations
from yoyo.migrations import Migration, MigrationList

from pgsnap import backfill as safety_net
from pgsnap import home
from pgsnap.db import connect, parse_dsn
from pgsnap.errors import PgsnapError

SNAPSHOT_TABLES = safety_net.TABLES  # the three tables that carry a snapshot
MIGRATION_TABLE = "_yoyo_migration"  # yoyo's default; read directly by status/check_current

_MARKER = re.compile(r"^\s*--\s*pgsnap:\s*(enforce|lock)\s+([\w.]+(?:[\s,]+[\w.]+)*)\s*$", re.IGNORECASE)
_URL_SAFE = re.compile(r"^[A-Za-z0-9_.-]+$")
_INTERVAL = re.compile(r"^\d+(\.\d+)?\s*(us|ms|s|min|h|d)?$")

T = TypeVar("T")
Progress = Callable[[int, int], None]  # (snapshots filled so far, NULL snapshots at the start)
Log = Callable[[str], None]


# -- locations ---------------------------------------------------------------------------------
def migrations_dir() -> Path:
    return home() / "migrations"


def sql_dir() -> Path:
    return home() / "sql"


def read_migrations(directory: Path | None = None) -> MigrationList:
    """All migrations in file-name order (`*.rollback.sql` are their undo halves, not migrations)."""
    return yoyo_read_migrations(str(directory or migrations_dir()))


@dataclass(frozen=True)
class Marker:
    kind: str  # "enforce" or "lock"
    tables: tuple[str, ...]

    @property
    def what(self) -> str:
        return ("table " if len(self.tables) == 1 else "tables ") + ", ".join(self.tables)


def marker_of(migration: Migration) -> Marker | None:
    """The `-- pgsnap: enforce|lock <table>...` line of the leading comment block, if any."""
    with open(migration.path, encoding="utf-8") as f:
        for line in f:
            if line.strip() and not line.lstrip().startswith("--"):
                break  # first statement: the leading block is over
            match = _MARKER.match(line)
            if match:
                return Marker(match.group(1).lower(), tuple(re.split(r"[\s,]+", match.group(2))))
    return None


def rollback_path(migration: Migration) -> Path:
    return Path(os.path.splitext(migration.path)[0] + ".rollback.sql")


# -- yoyo plumbing -----------------------------------------------------------------------------
def yoyo_url(dsn: str, extra_options: str | None = None) -> str:
    """A `postgresql+psycopg://` URL for yoyo carrying every libpq keyword of the DSN.

    Simple user/password/host/port/dbname go in the usual URL places; anything yoyo's URL parser
    would mangle (socket paths, host lists, IPv6, odd database names) and all other keywords go
    in the query string, which yoyo passes to psycopg.connect() as keyword arguments.
    """
    params = parse_dsn(dsn)
    if extra_options:
        params["options"] = f"{params['options']} {extra_options}" if params.get("options") else extra_options
    netloc = path = ""
    user = params.pop("user", None)
    if user is not None:
        password = params.pop("password", None)
        netloc = quote(user, safe="") + (":" + quote(password, safe="") if password is not None else "") + "@"
    host, port = params.get("host"), params.get("port")
    if host and _URL_SAFE.match(host) and (port is None or port.isdigit()):
        netloc += params.pop("host") + (":" + params.pop("port") if port else "")
    if params.get("dbname") and _URL_SAFE.match(params["dbname"]):
        path = "/" + params.pop("dbname")
    query = ("?" + urlencode(params)) if params else ""
    return f"postgresql+psycopg://{netloc}{path}{query}"


@contextmanager
def _backend(url: str):
    backend = get_backend(url)
    try:
        yield backend
    finally:
        backend.connection.close()


@contextmanager
def _migration_lock(backend, wait: float) -> Iterator[None]:
    """yoyo's lock row: a concurrent migrator waits here, then finds nothing left to do."""
    try:
        with backend.lock(timeout=wait):
            yield
    except yoyo_exceptions.LockTimeout:
        row = backend.execute("SELECT pid FROM yoyo_lock").fetchone()
        holder = f"process {row[0]}" if row else "another process"
        raise PgsnapError(
            f"the migration lock is held by {holder} (another `pgsnap migrate`?) after waiting {wait:g}s; "
            "if none is running any more, remove the stale lock: DELETE FROM yoyo_lock",
            exit_code=3,
        ) from None


def _is_lock_timeout(exc: BaseException | None) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, psycopg.errors.LockNotAvailable):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _db_error(exc: psycopg.Error) -> str:
    primary = exc.diag.message_primary if exc.diag else None
    return f"{exc.sqlstate}: {primary}" if exc.sqlstate and primary else str(exc).strip().splitlines()[0]


# -- what is applied ---------------------------------------------------------------------------
def applied_migrations(conn: psycopg.Connection) -> dict[str, datetime]:
    """Applied migration ids (UTC, naive, as yoyo stores them) in the order they were applied."""
    if conn.execute("SELECT to_regclass(%s)", [MIGRATION_TABLE]).fetchone()[0] is None:
        return {}
    rows = conn.execute(
        f"SELECT migration_id, applied_at_utc FROM {MIGRATION_TABLE} ORDER BY applied_at_utc, migration_id"
    ).fetchall()
    return dict(rows)


def status(dsn: str) -> list[tuple[str, datetime | None]]:
    """(id, applied_at or None) for every migration this pgsnap knows, in order; then any applied
    ids it does not know (a newer pgsnap's), in the order they were applied."""
    with connect(dsn) as conn:
        applied = applied_migrations(conn)
    known = [m.id for m in read_migrations()]
    return [(mid, applied.get(mid)) for mid in known] + [
        (mid, at) for mid, at in applied.items() if mid not in known
    ]


def check_current(conn_or_dsn: psycopg.Connection | str, allow_behind: bool = False) -> None:
    """Refuse to work on a database this pgsnap does not match (exit 2).

    `allow_behind` is for commands that must work mid-journey (e.g. `backfill` before the
    enforcement step); a database that is ahead is always refused.
    """
    if isinstance(conn_or_dsn, str):
        with connect(conn_or_dsn) as conn:
            return check_current(conn, allow_behind)
    applied = applied_migrations(conn_or_dsn)
    known = [m.id for m in read_migrations()]
    unknown = [mid for mid in applied if mid not in known]
    if unknown:
        raise PgsnapError(
            f"database is ahead of this pgsnap: it has migration {unknown[0]} unknown to this version; "
            "upgrade pgsnap", exit_code=2)
    if not allow_behind and any(mid not in applied for mid in known):
        raise PgsnapError("database is behind this pgsnap: run `pgsnap migrate`", exit_code=2)


# -- sql/ ----------------------------------------------------------------------------------------
def has_pgsnap_schema(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT to_regnamespace('pgsnap') IS NOT NULL").fetchone()[0]


def deploy_sql(conn: psycopg.Connection, directory: Path | None = None,
               lock_timeout: str | None = None) -> list[Path]:
    """Execute every `sql/*.sql` in name order, in ONE transaction; returns the files deployed.

    The files are idempotent (CREATE OR REPLACE), so this runs on every migrate. Nothing happens
    before a migration has created schema `pgsnap`. check_function_bodies is off so a function
    may reference one defined in a later file.
    """
    if not has_pgsnap_schema(conn):
        return []
    files = sorted((directory or sql_dir()).glob("*.sql"))
    with conn.transaction():
        conn.execute("SET LOCAL check_function_bodies = off")
        if lock_timeout:
            conn.execute("SELECT set_config('lock_timeout', %s, true)", [lock_timeout])
        for path in files:
            try:
                conn.execute(path.read_text(encoding="utf-8"))  # whole file: no params, multi-statement
            except psycopg.Error as exc:
                if _is_lock_timeout(exc):
                    raise
                raise PgsnapError(
                    f"deploying sql/{path.name} failed: {_db_error(exc)}; nothing was deployed") from None
    return files


# -- backfill and the NULL check -------------------------------------------------------------------
def snapshot_health(conn: psycopg.Connection) -> dict[str, int]:
    rows = conn.execute("SELECT table_name, null_snapshots FROM pgsnap.snapshot_health()").fetchall()
    return {name: int(count) for name, count in rows}


def require_no_null_snapshots(conn: psycopg.Connection) -> None:
    counts = snapshot_health(conn)
    remaining = sum(counts.values())
    if remaining:
        detail = ", ".join(f"{name} {counts.get(name, 0)}" for name in SNAPSHOT_TABLES)
        raise PgsnapError(
            f"cannot enforce NOT NULL: {remaining} NULL snapshots remain ({detail}); "
            "run `pgsnap backfill`, then `pgsnap migrate`")


# -- lock-guarded steps --------------------------------------------------------------------------
@dataclass
class LockPolicy:
    timeout: str = "2s"
    retries: int = 5
    backoff_base: float = 0.2
    backoff_cap: float = 5.0

    def run(self, step: Callable[[], T], conn: psycopg.Connection, tables: tuple[str, ...], what: str) -> T:
        """Run `step` (which must roll itself back on failure); retry it on lock timeouts."""
        attempts = self.retries + 1
        for n in range(attempts):
            try:
                return step()
            except Exception as exc:
                if not _is_lock_timeout(exc):
                    raise
                if n + 1 < attempts:
                    time.sleep(min(self.backoff_base * 2**n, self.backoff_cap))
        raise PgsnapError(
            f"could not {what} after {attempts} attempts (lock_timeout {self.timeout}); "
            f"{_describe_blockers(conn, tables)}; nothing was changed by this step; "
            "re-run `pgsnap migrate` when it is gone", exit_code=3)


def _describe_blockers(conn: psycopg.Connection, tables: tuple[str, ...]) -> str:
    """Sessions holding locks on `tables` (or, without any, on any table of this database)."""
    rows = conn.execute(
        """
        SELECT DISTINCT ON (a.pid) a.pid, coalesce(nullif(a.application_name, ''), '-'),
               a.state, a.xact_start, coalesce(a.query, '')
          FROM pg_locks l
          JOIN pg_stat_activity a ON a.pid = l.pid
         WHERE l.locktype = 'relation' AND l.granted AND l.pid <> pg_backend_pid()
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND (cardinality(%(tables)s::text[]) = 0 AND a.xact_start IS NOT NULL
                OR l.relation IN (SELECT to_regclass(t) FROM unnest(%(tables)s::text[]) t))
         ORDER BY a.pid
        """,
        {"tables": list(tables)},
    ).fetchall()
    if not rows:
        return "the blocking session has gone since"
    rows.sort(key=lambda r: (r[3] is None, r[3] or datetime.min))
    described = [
        f"pid {pid} ({app}, {state}, since {xact_start:%Y-%m-%d %H:%M:%S%z}: {' '.join(query.split())[:80]})"
        if xact_start else f"pid {pid} ({app}, {state}: {' '.join(query.split())[:80]})"
        for pid, app, state, xact_start, query in rows
    ]
    return "blocked by " + "; ".join(described)


# -- migrate / rollback ------------------------------------------------------------------------------
@dataclass
class MigrateResult:
    applied: list[str] = field(default_factory=list)
    backfilled: dict[str, int] = field(default_factory=dict)
    stopped: str | None = None  # set when --no-backfill stopped before an enforcement step
    sql_files: int = 0  # sql/ files deployed at the end (0: no pgsnap schema yet)


def _validate_interval(value: str) -> str:
    if not _INTERVAL.match(value.strip()):
        raise PgsnapError(f"invalid lock timeout {value!r}: use e.g. 2s, 500ms, 1min", exit_code=2)
    return value.strip()


def _known_id(ids: list[str], mid: str) -> str:
    if mid not in ids:
        raise PgsnapError(f"unknown migration {mid}: known migrations are {', '.join(ids) or 'none'}",
                          exit_code=2)
    return mid


def migrate(
    dsn: str,
    to: str | None = None,
    backfill: bool = True,
    lock_timeout: str = "2s",
    lock_retries: int = 5,
    on_progress: Progress | None = None,
    backfill_batch_size: int = 500,
    *,
    log: Log | None = None,
    backoff_base: float = 0.2,
    backoff_cap: float = 5.0,
    lock_wait: float = 600,
) -> MigrateResult:
    """Apply pending migrations in order (up to and including `to`), then deploy `sql/`."""
    say = log or (lambda _msg: None)
    policy = LockPolicy(_validate_interval(lock_timeout), lock_retries, backoff_base, backoff_cap)
    migrations = read_migrations()
    ids = [m.id for m in migrations]
    wanted = set(ids[: ids.index(_known_id(ids, to)) + 1]) if to else set(ids)
    url = yoyo_url(dsn)
    result = MigrateResult()
    with connect(dsn) as conn, _backend(url) as backend, _migration_lock(backend, lock_wait):
        check_current(conn, allow_behind=True)  # an older pgsnap must not touch a newer schema
        pending = enforcement_last([m for m in backend.to_apply(migrations) if m.id in wanted])
        prepared = False
        for m in pending:
            marker = marker_of(m)
            if marker and marker.kind == "enforce" and not prepared:
                policy.run(lambda: deploy_sql(conn, lock_timeout=policy.timeout), conn, (), "deploy sql/")
                if not backfill:
                    result.stopped = (f"stopped before {m.id} (--no-backfill): run `pgsnap backfill`, "
                                      "then `pgsnap migrate`")
                    break
                say("backfilling NULL snapshots")
                # a recorded run of the safety net, to the end
                before = snapshot_health(conn)
                conn.execute("CALL pgsnap.backfill_missing_snapshots(%s)", [backfill_batch_size])
                after = snapshot_health(conn)
                result.backfilled = {t: before.get(t, 0) - after.get(t, 0) for t in SNAPSHOT_TABLES}
                require_no_null_snapshots(conn)
                prepared = True
            say(f"applying {m.id}")
            if marker:  # yoyo applies it on a new connection of this URL: lock_timeout goes in the URL
                guarded = yoyo_url(dsn, f"-c lock_timeout={policy.timeout}")
                policy.run(lambda m=m, url=guarded: _apply(url, m), conn, marker.tables,
                           f"lock {marker.what}")
            else:
                _apply(backend, m)
            result.applied.append(m.id)
        files = policy.run(lambda: deploy_sql(conn, lock_timeout=policy.timeout), conn, (), "deploy sql/")
        result.sql_files = len(files)
    return result


def enforcement_last(pending: list[Migration]) -> list[Migration]:
    """Pending migrations with the enforcement steps moved after every other one their
    dependencies allow (the backfill runs just before the first enforcement step)."""
    enforce = {m.id for m in pending if (marker_of(m) or Marker("", ())).kind == "enforce"}

    def needs_enforce(m: Migration, seen=()) -> bool:
        deps = [d for d in m.depends if d.id in {p.id for p in pending}]
        return any(d.id in enforce or needs_enforce(d) for d in deps)

    first = [m for m in pending if m.id not in enforce and not needs_enforce(m)]
    return first + [m for m in pending if m not in first]


def _apply(backend_or_url, migration: Migration) -> None:
    """Apply one migration (yoyo runs it on a fresh connection of the backend's URL)."""
    try:
        if isinstance(backend_or_url, str):
            with _backend(backend_or_url) as backend:
                backend.apply_one(migration)
        else:
            backend_or_url.apply_one(migration)
    except yoyo_exceptions.BadMigration as exc:
        raise PgsnapError(f"bad migration {migration.id}: {exc}") from None
    except psycopg.Error as exc:
        if _is_lock_timeout(exc):
            raise
        raise PgsnapError(f"migration {migration.id} failed: {_db_error(exc)}") from None


def rollback(dsn: str, to: str | None = None, all_: bool = False, *, log: Log | None = None,
             lock_wait: float = 600) -> list[str]:
    """Roll back the latest applied migration, everything applied after `to`, or everything."""
    say = log or (lambda _msg: None)
    migrations = read_migrations()
    ids = [m.id for m in migrations]
    if to is not None:
        _known_id(ids, to)
    with connect(dsn) as conn, _backend(yoyo_url(dsn)) as backend, _migration_lock(backend, lock_wait):
        check_current(conn, allow_behind=True)
        applied = list(backend.to_rollback(migrations))  # latest first
        if all_:
            targets = applied
        elif to is not None:
            targets = [m for m in applied if ids.index(m.id) > ids.index(to)]
        else:
            targets = applied[:1]
        unsafe = [m.id for m in targets if not rollback_path(m).exists()]
        if unsafe:
            raise PgsnapError(f"cannot roll back {unsafe[0]}: it has no {unsafe[0]}.rollback.sql "
                              "(not safely reversible); nothing was rolled back")
        done = []
        for m in targets:
            say(f"rolling back {m.id}")
            try:
                backend.rollback_one(m)
            except psycopg.Error as exc:
                raise PgsnapError(f"rolling back {m.id} failed: {_db_error(exc)}") from None
            done.append(m.id)
    return done
