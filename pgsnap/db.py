"""The one place that opens connections and turns libpq failures into one-line errors."""

import getpass
import os
import re
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from pgsnap.errors import Exit, PgsnapError, first_line


def parse_dsn(dsn: str) -> dict[str, str]:
    """libpq keywords of a DSN (key=value string or URL); a malformed one is a usage error."""
    try:
        return conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise PgsnapError(f"invalid DSN: {first_line(str(exc))}", Exit.CANNOT_RUN) from None


def server_label(dsn: str) -> str:
    """`host:port/dbname` as libpq will resolve it (DSN first, then PG* variables, then defaults)."""
    params = parse_dsn(dsn)
    env = os.environ
    host = params.get("host") or params.get("hostaddr") or env.get("PGHOST") or "local socket"
    port = params.get("port") or env.get("PGPORT") or "5432"
    user = params.get("user") or env.get("PGUSER") or _os_user()
    dbname = params.get("dbname") or env.get("PGDATABASE") or user
    return f"{host}:{port}/{dbname}"


def connect(dsn: str, autocommit: bool = True, **kw: Any) -> psycopg.Connection:
    """Open a connection; failures become PgsnapError exit 2 naming the server and the reason."""
    where = server_label(dsn)  # also rejects an unparsable DSN before libpq sees it
    try:
        return psycopg.connect(dsn, autocommit=autocommit, **kw)
    except psycopg.OperationalError as exc:
        raise PgsnapError(f"cannot connect to {where}: {connect_reason(exc)}", Exit.CANNOT_RUN) from None


def connect_reason(exc: BaseException) -> str:
    """The first meaningful line of libpq's message, e.g. `connection refused`."""
    line = first_line(str(exc))
    for prefix in ("connection failed: ", "connection is bad: "):
        line = line.removeprefix(prefix)
    # `connection to server at "h", port p failed: <reason>`: the reason is what matters
    line = line.rsplit(" failed: ", 1)[-1]
    line = re.sub(r"^(FATAL|ERROR):\s+", "", line)
    # strerror() texts are capitalised ("Connection refused"); PostgreSQL's are not
    if re.match(r"[A-Z][a-z]", line):
        line = line[0].lower() + line[1:]
    return line


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry and no USER variable: libpq would fail the same way
        return "?"


def routine_exists(conn: psycopg.Connection, signature: str) -> bool:
    """Whether a routine (`pgsnap.backfill_plan()`) is installed: a database behind this pgsnap lacks it."""
    return conn.execute("SELECT to_regprocedure(%s) IS NOT NULL", [signature]).fetchone()[0]


def relation_exists(conn: psycopg.Connection, name: str) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", [name]).fetchone()[0]
