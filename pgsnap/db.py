"""The one place that opens connections and turns libpq failures into one-line errors."""

import getpass
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from pgsnap.errors import PgsnapError


def parse_dsn(dsn: str) -> dict[str, str]:
    """libpq keywords of a DSN (key=value string or URL); a malformed one is a usage error."""
    try:
        return conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise PgsnapError(f"invalid DSN: {first_line(str(exc))}", exit_code=2) from None


def target(dsn: str) -> str:
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
    where = target(dsn)  # also rejects an unparsable DSN before libpq sees it
    try:
        return psycopg.connect(dsn, autocommit=autocommit, **kw)
    except psycopg.OperationalError as exc:
        raise PgsnapError(f"cannot connect to {where}: {connect_reason(exc)}", exit_code=2) from None


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


def first_line(text: str) -> str:
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), text.strip())


def execute_with_notices(
    conn: psycopg.Connection,
    query: Any,
    params: Sequence[Any] | dict[str, Any] | None = None,
    on_notice: Callable[[str], None] | None = None,
) -> list[tuple]:
    """Run a query or `CALL` forwarding each server NOTICE/INFO text to `on_notice`.

    Returns the rows, if the statement produced any. Procedures report their batch progress
    with RAISE NOTICE; this lets the CLI show it while the CALL runs.
    """

    def handler(diag: psycopg.errors.Diagnostic) -> None:
        if on_notice is not None and diag.message_primary:
            on_notice(diag.message_primary)

    conn.add_notice_handler(handler)
    try:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []
    finally:
        conn.remove_notice_handler(handler)


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry and no USER variable: libpq would fail the same way
        return "?"
