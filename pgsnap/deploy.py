"""Deploying pgsnap: yoyo migrations (state) and the idempotent `sql/` files (behaviour).

Migration markers (in a migration's leading comment block, before the first statement):

* `-- pgsnap: enforce <table>` — a NOT NULL enforcement step. Before the first pending one,
  `migrate` runs the batched backfill outside any migration transaction and refuses to go on
  while NULL snapshots remain.
* `-- pgsnap: lock <table> [<table> ...]` — a step that takes strong locks on those tables
  (named in the report of the sessions blocking it).

How `migrate` applies the pending migrations:

* Order: dependency order, with every enforcement migration as late as its dependencies allow
  (a legacy database gets 0001-0004 and any later plain migration, then the backfill, then the
  enforcement steps).
* One transaction per step: each run of consecutive plain migrations is applied together with
  the `sql/` deploy and their yoyo records (`_yoyo_migration`, `_yoyo_log`) in ONE transaction;
  each enforcement migration likewise with a redeploy of `sql/`. The application never sees a
  migration without the behaviour it needs, and a crash leaves the old state or the new one,
  recorded consistently. `-- transactional: false` migrations (yoyo's directive) cannot take
  part: each is applied alone, then recorded.
* Every step runs under `lock_timeout` (set with set_config) and is retried with exponential
  backoff when it times out; the error names the blocking sessions.
* `--to ID` applies the migrations up to ID in file order. When that stops inside a step,
  `sql/` may not be deployable yet: it is then left out, and the result says so.
* The deployed `sql/` is recorded by checksum (`pgsnap.settings` key `sql_checksum`).
"""

import contextlib
import hashlib
import io
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
from psycopg import sql
from yoyo import exceptions as yoyo_exceptions
from yoyo import get_backend
from yoyo import read_migrations as yoyo_read_migrations
from yoyo.migrations import Migration, MigrationList

from pgsnap import procedures, resources
from pgsnap.db import connect, parse_dsn
from pgsnap.errors import Exit, PgsnapError, describe_db_error
from pgsnap.health import SNAPSHOT_TABLES, snapshot_health

MIGRATION_TABLE = "_yoyo_migration"  # yoyo's default; read directly by status/check_current
CHECKSUM_KEY = "sql_checksum"

_MARKER = re.compile(r"^\s*--\s*pgsnap:\s*(enforce|lock)\s+([\w.]+(?:[\s,]+[\w.]+)*)\s*$", re.IGNORECASE)
_URL_SAFE = re.compile(r"^[A-Za-z0-9_.-]+$")
_INTERVAL = re.compile(r"^\d+(\.\d+)?\s*(us|ms|s|min|h|d)?$")

T = TypeVar("T")
Progress = Callable[[int, int], None]  # (snapshots filled so far, NULL snapshots at the start)
Log = Callable[[str], None]


# -- migrations ----------------------------------------------------------------------------------
def read_migrations(directory: Path | None = None) -> MigrationList:
    """All migrations in file-name order (`*.rollback.sql` are their undo halves, not migrations);
    PgsnapError (exit 2) when this pgsnap ships none."""
    return yoyo_read_migrations(str(directory or resources.migration_files()))


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


def is_enforcement(migration: Migration) -> bool:
    marker = marker_of(migration)
    return marker is not None and marker.kind == "enforce"


def rollback_path(migration: Migration) -> Path:
    return Path(os.path.splitext(migration.path)[0] + ".rollback.sql")


def known_id(migrations: MigrationList, mid: str) -> str:
    ids = [m.id for m in migrations]
    if mid not in ids:
        raise PgsnapError(f"unknown migration {mid}: known migrations are {', '.join(ids) or 'none'}",
                          Exit.CANNOT_RUN)
    return mid


CREATE_TABLE = re.compile(r'CREATE (?:UNLOGGED |TEMP |TEMPORARY )?TABLE (?:IF NOT EXISTS )?'
                           r'((?:"[^"]+"|\w+)(?:\.(?:"[^"]+"|\w+))?)', re.IGNORECASE)


def baseline_tables(migration: Migration) -> list[str]:
    """The tables a migration creates (for the baseline: the application's tables)."""
    with open(migration.path, encoding="utf-8") as f:
        return [name.replace('"', "").removeprefix("public.") for name in CREATE_TABLE.findall(f.read())]


def refuse_unadopted(conn: psycopg.Connection, applied: dict[str, datetime] | set[str]) -> None:
    """A database that holds the application's tables without pgsnap's record of the baseline
    must be adopted first (`pgsnap adopt`), not migrated over."""
    baseline = read_migrations()[0]
    if baseline.id in applied:
        return
    existing = [t for (t,) in conn.execute(
        "SELECT t FROM unnest(%s::text[]) WITH ORDINALITY AS x(t, n)"
        " WHERE to_regclass('public.' || quote_ident(t)) IS NOT NULL ORDER BY n",
        [baseline_tables(baseline)])]
    if existing:
        raise PgsnapError(f"the database already holds the application's tables ({', '.join(existing[:3])}"
                          f"{', ...' if len(existing) > 3 else ''}) but pgsnap has no record of "
                          f"{baseline.id}: run `pgsnap adopt` to compare them with it and record it",
                          Exit.CANNOT_RUN)


def execution_order(pending: list[Migration], applied: set[str]) -> list[Migration]:
    """`pending` in dependency order, each enforcement migration as late as dependencies allow."""
    done, order, rest = set(applied), [], list(pending)
    while rest:
        ready = [m for m in rest if all(d.id in done for d in m.depends)]
        if not ready:
            missing = sorted({d.id for m in rest for d in m.depends} - done - {m.id for m in rest})
            raise PgsnapError(f"cannot apply {rest[0].id}: it depends on {', '.join(missing)}, "
                              "which is neither applied nor selected", Exit.CANNOT_RUN)
        chosen = next((m for m in ready if not is_enforcement(m)), ready[0])
        order.append(chosen)
        done.add(chosen.id)
        rest.remove(chosen)
    return order


def wanted_ids(migrations: MigrationList, to: str | None) -> set[str]:
    """The migrations `--to ID` selects: ID and everything `migrate` applies before it (in its
    order: every plain migration before the enforcement steps); all of them without `--to`."""
    if to is None:
        return {m.id for m in migrations}
    known_id(migrations, to)
    order = [m.id for m in execution_order(list(migrations), set())]
    return set(order[: order.index(to) + 1])


def steps_of(order: list[Migration]) -> list[list[Migration]]:
    """Runs of consecutive plain migrations; each enforcement or non-transactional one alone."""
    def alone(m: Migration) -> bool:
        return is_enforcement(m) or not m.use_transactions

    steps: list[list[Migration]] = []
    for m in order:
        m.load()
        if alone(m) or not steps or alone(steps[-1][0]):
            steps.append([m])
        else:
            steps[-1].append(m)
    return steps


# -- yoyo plumbing -----------------------------------------------------------------------------
def yoyo_url(dsn: str) -> str:
    """A `postgresql+psycopg://` URL for yoyo carrying every libpq keyword of the DSN.

    Simple user/password/host/port/dbname go in the usual URL places; anything yoyo's URL parser
    would mangle (socket paths, host lists, IPv6, odd database names) and all other keywords go
    in the query string, which yoyo passes to psycopg.connect() as keyword arguments.
    """
    params = parse_dsn(dsn)
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
def migration_backend(dsn: str):
    try:
        backend = get_backend(yoyo_url(dsn))
    except psycopg.OperationalError:
        connect(dsn).close()  # the same failure, as pgsnap reports it (exit 2)
        raise
    try:
        yield backend
    finally:
        backend.connection.close()


@contextmanager
def migration_lock(backend, wait: float) -> Iterator[None]:
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
            Exit.LOCK,
        ) from None


def _is_lock_timeout(exc: BaseException | None) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, psycopg.errors.LockNotAvailable):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


# -- what is applied ---------------------------------------------------------------------------
def applied_migrations(conn: psycopg.Connection) -> dict[str, datetime]:
    """Applied migration ids (UTC, naive, as yoyo stores them) in the order they were applied."""
    if conn.execute("SELECT to_regclass(%s)", [MIGRATION_TABLE]).fetchone()[0] is None:
        return {}
    rows = conn.execute(sql.SQL("SELECT migration_id, applied_at_utc FROM {}"
                                " ORDER BY applied_at_utc, migration_id")
                        .format(sql.Identifier(MIGRATION_TABLE))).fetchall()
    return dict(rows)


def status(conn: psycopg.Connection) -> list[tuple[str, datetime | None]]:
    """(id, applied_at or None) for every migration this pgsnap knows, in order; then any applied
    ids it does not know (a newer pgsnap's), in the order they were applied."""
    applied = applied_migrations(conn)
    known = [m.id for m in read_migrations()]
    return [(mid, applied.get(mid)) for mid in known] + [
        (mid, at) for mid, at in applied.items() if mid not in known
    ]


def check_current(conn: psycopg.Connection, allow_behind: bool = False) -> None:
    """Refuse to work on a database this pgsnap does not match (exit 2).

    `allow_behind` is for commands that must work mid-journey (e.g. `backfill` before the
    enforcement step); a database that is ahead is always refused.
    """
    applied = applied_migrations(conn)
    known = [m.id for m in read_migrations()]
    unknown = [mid for mid in applied if mid not in known]
    if unknown:
        raise PgsnapError(
            f"database is ahead of this pgsnap: it has migration {unknown[0]} unknown to this version; "
            "upgrade pgsnap", Exit.CANNOT_RUN)
    if not allow_behind and any(mid not in applied for mid in known):
        raise PgsnapError("database is behind this pgsnap: run `pgsnap migrate`", Exit.CANNOT_RUN)


# -- sql/ ----------------------------------------------------------------------------------------
def has_pgsnap_schema(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT to_regnamespace('pgsnap') IS NOT NULL").fetchone()[0]


def sql_checksum(files: list[Path]) -> str:
    """sha256 over the file names and contents, in deploy order."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def deployed_checksum(conn: psycopg.Connection) -> str | None:
    """The checksum recorded by the last deploy (None: never deployed, or no pgsnap schema)."""
    if conn.execute("SELECT to_regclass('pgsnap.settings') IS NULL").fetchone()[0]:
        return None
    row = conn.execute("SELECT value FROM pgsnap.settings WHERE key = %s", [CHECKSUM_KEY]).fetchone()
    return row[0] if row else None


def sql_is_current(conn: psycopg.Connection) -> bool:
    """Whether the deployed sql/ is this pgsnap's (by checksum)."""
    return deployed_checksum(conn) == sql_checksum(resources.sql_files())


def deploy_sql(conn: psycopg.Connection, directory: Path | None = None,
               lock_timeout: str | None = None) -> list[Path]:
    """Execute every `sql/*.sql` in name order, in ONE transaction (a savepoint when the
    connection is inside one already), and record their checksum; returns the files deployed.

    The files are idempotent (CREATE OR REPLACE), so this runs on every migrate. Nothing happens
    before a migration has created schema `pgsnap`. check_function_bodies is off so a function
    may reference one defined in a later file.
    """
    if not has_pgsnap_schema(conn):
        return []
    files = sorted(directory.glob("*.sql")) if directory else resources.sql_files()
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
                raise PgsnapError(f"deploying sql/{path.name} failed: {describe_db_error(exc)}; "
                                  "nothing was deployed") from None
        if conn.execute("SELECT to_regclass('pgsnap.settings') IS NOT NULL").fetchone()[0]:
            conn.execute("INSERT INTO pgsnap.settings (key, value) VALUES (%s, %s)"
                         " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                         [CHECKSUM_KEY, sql_checksum(files)])
    return files


# -- backfill and the NULL check -------------------------------------------------------------------
def require_no_null_snapshots(conn: psycopg.Connection) -> None:
    counts = {table: nulls for table, (nulls, _rows) in snapshot_health(conn).items()}
    remaining = sum(counts.values())
    if remaining:
        detail = ", ".join(f"{name} {n}" for name, n in counts.items())
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
    say: Log = lambda _msg: None  # noqa: E731

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
                    pause = min(self.backoff_base * 2**n, self.backoff_cap)
                    self.say(f"could not {what} within lock_timeout {self.timeout}; "
                             f"retry {n + 1} of {self.retries} in {pause:g}s")
                    time.sleep(pause)
        raise PgsnapError(
            f"could not {what} after {attempts} attempts (lock_timeout {self.timeout}); "
            f"{_describe_blockers(conn, tables)}; nothing was changed by this step; "
            "re-run `pgsnap migrate` when it is gone", Exit.LOCK)


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


# -- migrate ----------------------------------------------------------------------------------------
@dataclass
class MigrateResult:
    applied: list[str] = field(default_factory=list)
    backfilled: dict[str, int] = field(default_factory=dict)
    stopped: str | None = None  # set when --no-backfill stopped before an enforcement step
    sql_files: int = 0  # sql/ files deployed (0: not deployed, e.g. no pgsnap schema yet)


def validate_lock_timeout(value: str) -> str:
    """Offline: a number and an optional unit PostgreSQL understands (`2s`, `500 ms`, `1min`)."""
    if not _INTERVAL.match(value.strip()):
        raise PgsnapError(f"invalid lock timeout {value!r}: use e.g. 2s, 500ms, 1min", Exit.CANNOT_RUN)
    return value.strip()


def _check_lock_timeout_on_server(conn: psycopg.Connection, value: str) -> None:
    try:
        with conn.transaction(force_rollback=True):
            conn.execute("SELECT set_config('lock_timeout', %s, true)", [value])
    except psycopg.errors.InvalidParameterValue as exc:
        raise PgsnapError(f"invalid lock timeout {value!r}: {exc.diag.message_primary}",
                          Exit.CANNOT_RUN) from None


def _step_tables(step: list[Migration]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(t for m in step if (mk := marker_of(m)) for t in mk.tables))


def _steps(backend, migration: Migration, direction: str) -> None:
    """yoyo's process_steps, without the result tables yoyo prints for statements that return rows
    (a migration's `SELECT 1` must not end up in pgsnap's output)."""
    with contextlib.redirect_stdout(io.StringIO()):
        migration.process_steps(backend, direction)


def _apply_migration(backend, migration: Migration) -> None:
    try:
        _steps(backend, migration, "apply")
    except yoyo_exceptions.BadMigration as exc:
        raise PgsnapError(f"bad migration {migration.id}: {exc}") from None
    except psycopg.Error as exc:
        if _is_lock_timeout(exc):
            raise
        raise PgsnapError(f"migration {migration.id} failed: {describe_db_error(exc)}") from None


def _record(backend, step: list[Migration]) -> None:
    """yoyo's records of an applied step: `_yoyo_migration` rows and `_yoyo_log` entries."""
    for m in step:
        backend.mark_one(m, log=False)
        backend.log_migration(m, "apply")


def _unrecord(backend, m: Migration) -> None:
    """The reverse of `_record` for a rolled-back migration: its row goes, a log entry stays."""
    backend.unmark_one(m, log=False)
    backend.log_migration(m, "rollback")


def _apply_step(backend, step: list[Migration], timeout: str, end: str | None = None) -> int:
    """One step in one transaction: its migrations, `sql/` and the records; returns the sql/
    files deployed. `end`: the migration the whole step would end with, when `--to` stops
    inside it; if sql/ cannot be deployed without the rest of the step, nothing is applied
    (the application would otherwise run without the behaviour the migrations need)."""
    conn = backend.connection
    if not step[0].use_transactions:  # yoyo runs it outside any transaction; record it after
        _apply_migration(backend, step[0])
        with backend.transaction():
            _record(backend, step)
        return 0
    with backend.transaction():
        conn.execute("SELECT set_config('lock_timeout', %s, true)", [timeout])
        for m in step:
            _apply_migration(backend, m)
        try:
            files = deploy_sql(conn)
        except PgsnapError as exc:
            if end is None:
                raise
            why = str(exc).removesuffix("; nothing was deployed")
            raise PgsnapError(f"--to {step[-1].id} stops inside a step whose sql/ needs the rest of it, "
                              f"up to {end} ({why}); nothing was applied: use --to {end}",
                              Exit.CANNOT_RUN) from None
        _record(backend, step)
    return len(files)


def migrate(
    dsn: str,
    to: str | None = None,
    backfill: bool = True,
    lock_timeout: str = "2s",
    lock_retries: int = 5,
    on_progress: Progress | None = None,
    backfill_batch_size: int | None = None,
    *,
    log: Log | None = None,
    backoff_base: float = 0.2,
    backoff_cap: float = 5.0,
    lock_wait: float = 600,
) -> MigrateResult:
    """Apply pending migrations (up to and including `to`), each step with `sql/`, in one
    transaction each; backfill before the first enforcement step."""
    say = log or (lambda _msg: None)
    # everything that can be checked before touching the database
    policy = LockPolicy(validate_lock_timeout(lock_timeout), lock_retries, backoff_base, backoff_cap, say)
    if lock_retries < 0:
        raise PgsnapError(f"lock retries must be 0 or more, got {lock_retries}", Exit.CANNOT_RUN)
    if backfill_batch_size is not None and backfill_batch_size < 1:
        raise PgsnapError(f"batch size must be a positive integer, got {backfill_batch_size}",
                          Exit.CANNOT_RUN)
    migrations = read_migrations()
    wanted = wanted_ids(migrations, to)
    result = MigrateResult()
    with connect(dsn) as conn:
        _check_lock_timeout_on_server(conn, policy.timeout)
        check_current(conn, allow_behind=True)  # an older pgsnap must not touch a newer schema
        refuse_unadopted(conn, applied_migrations(conn))  # before yoyo creates its tables
        with migration_backend(dsn) as backend, migration_lock(backend, lock_wait):
            check_current(conn, allow_behind=True)  # again: another migrate may have run meanwhile
            applied = set(applied_migrations(conn))
            pending = list(backend.to_apply(migrations))
            full = steps_of(execution_order(pending, applied))
            prepared = False  # the backfill ran (or was not needed) before the first enforcement
            for whole in full:
                step = [m for m in whole if m.id in wanted]
                if not step:
                    continue
                if is_enforcement(step[0]) and not prepared:
                    if not result.sql_files and not sql_is_current(conn):  # the backfill needs current sql/
                        files = policy.run(lambda: deploy_sql(conn, lock_timeout=policy.timeout), conn, (),
                                           "deploy sql/")
                        result.sql_files = len(files)
                    if not backfill:
                        result.stopped = (f"stopped before {step[0].id} (--no-backfill): run "
                                          "`pgsnap backfill`, then `pgsnap migrate`")
                        break
                    say("backfilling NULL snapshots")
                    # a recorded run of the safety net, to the end
                    def progress(event: procedures.Event) -> None:
                        if on_progress is not None and event["event"] == "batch":
                            on_progress(event["done"], event["total"])

                    done = procedures.backfill(conn, backfill_batch_size, on_event=progress)
                    result.backfilled = {t: int(done[t]) for t in SNAPSHOT_TABLES}
                    require_no_null_snapshots(conn)
                    prepared = True
                for m in step:
                    say(f"applying {m.id}")
                end = whole[-1].id if len(step) < len(whole) else None
                tables = _step_tables(step)
                what = f"lock {Marker('lock', tables).what}" if tables else f"apply {step[0].id}"
                files = policy.run(lambda s=step, e=end: _apply_step(backend, s, policy.timeout, e),
                                   conn, tables, what)
                result.applied += [m.id for m in step]
                result.sql_files = files or result.sql_files
            # nothing applied, or a last step without a transaction (it deploys no sql/)
            if not result.stopped and (not result.applied or not sql_is_current(conn)):
                files = policy.run(lambda: deploy_sql(conn, lock_timeout=policy.timeout), conn, (),
                                   "deploy sql/")
                result.sql_files = len(files)
    return result


# -- rollback ----------------------------------------------------------------------------------------
@dataclass
class RollbackPlan:
    migrations: list[str]  # latest first
    baseline: str
    dropped: dict[str, int] = field(default_factory=dict)  # rolling back the baseline: table -> rows

    @property
    def includes_baseline(self) -> bool:
        return self.baseline in self.migrations


def applied_latest_first(migrations: MigrationList, applied: dict[str, datetime]) -> list[Migration]:
    """The applied migrations in the order a rollback undoes them: the reverse of the order they
    were applied in (which respected their dependencies)."""
    by_id = {m.id: m for m in migrations}
    return [by_id[mid] for mid in reversed(list(applied)) if mid in by_id]


def _rollback_targets(migrations: MigrationList, applied: list[Migration], to: str | None,
                      all_: bool) -> list[Migration]:
    ids = [m.id for m in migrations]
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
    return targets


def rollback_plan(dsn: str, to: str | None = None, all_: bool = False) -> RollbackPlan:
    """What `rollback` would undo (latest first) and, for the baseline, the rows it drops."""
    migrations = read_migrations()
    if to is not None:
        known_id(migrations, to)
    with connect(dsn) as conn:
        check_current(conn, allow_behind=True)
        targets = _rollback_targets(migrations, applied_latest_first(migrations, applied_migrations(conn)),
                                    to, all_)
        plan = RollbackPlan([m.id for m in targets], migrations[0].id)
        if plan.includes_baseline:
            for table in baseline_tables(migrations[0]):
                if conn.execute("SELECT to_regclass(%s) IS NOT NULL", [f"public.{table}"]).fetchone()[0]:
                    plan.dropped[table] = conn.execute(sql.SQL("SELECT count(*) FROM public.{}").format(
                        sql.Identifier(table))).fetchone()[0]
    return plan


def rollback(dsn: str, to: str | None = None, all_: bool = False, *, expected: list[str] | None = None,
             log: Log | None = None, lock_wait: float = 600) -> list[str]:
    """Roll back the latest applied migration, everything applied after `to`, or everything;
    each migration and its unrecording in one transaction. `expected`: the ids a plan showed;
    anything else (another session migrated meanwhile) is refused."""
    say = log or (lambda _msg: None)
    migrations = read_migrations()
    if to is not None:
        known_id(migrations, to)
    with connect(dsn) as conn, migration_backend(dsn) as backend, migration_lock(backend, lock_wait):
        check_current(conn, allow_behind=True)
        targets = _rollback_targets(migrations, applied_latest_first(migrations, applied_migrations(conn)),
                                    to, all_)
        if expected is not None and [m.id for m in targets] != expected:
            raise PgsnapError("the migrations changed since the plan was shown (another `pgsnap migrate` "
                              "or `rollback`?); nothing was rolled back: run it again")
        done = []
        for m in targets:
            say(f"rolling back {m.id}")
            try:
                if m.use_transactions:
                    with backend.transaction():
                        _steps(backend, m, "rollback")
                        _unrecord(backend, m)
                else:  # yoyo runs it outside any transaction; unrecord it after
                    _steps(backend, m, "rollback")
                    with backend.transaction():
                        _unrecord(backend, m)
            except psycopg.Error as exc:
                raise PgsnapError(f"rolling back {m.id} failed: {describe_db_error(exc)}") from None
            done.append(m.id)
    return done
