"""Where the connection string comes from.

`--dsn`, else `PGSNAP_DSN`, else nothing (libpq then reads the standard `PG*` variables). The
psql-style flags override the matching keyword of that DSN, as psql's own flags do:
`-h/--host`, `-p/--port`, `-U/--username`, and `-d/--dbname` (a conninfo string or URI there
is merged in whole, as psql does with `-d`). Whatever stays unset libpq takes from `PG*`.
`fallback_application_name` names the command (`pgsnap check`): libpq uses it only when
neither the DSN nor `PGAPPNAME` sets `application_name`.
"""

import os

import psycopg
from psycopg.conninfo import make_conninfo

from pgsnap.db import parse_dsn
from pgsnap.errors import Exit, PgsnapError


def _is_conninfo(value: str) -> bool:
    return "=" in value or value.startswith(("postgresql://", "postgres://"))


def resolve_dsn(dsn: str | None = None, *, host: str | None = None, port: str | None = None,
                user: str | None = None, dbname: str | None = None,
                application_name: str | None = None) -> str:
    base = dsn if dsn is not None else os.environ.get("PGSNAP_DSN", "")
    parse_dsn(base)  # a malformed DSN is refused here, naming the problem
    if dbname is not None and _is_conninfo(dbname):
        base = _merge(base, **parse_dsn(dbname))
        dbname = None
    overrides = {"host": host, "port": port, "user": user, "dbname": dbname,
                 "fallback_application_name": application_name}
    return _merge(base, **{k: v for k, v in overrides.items() if v is not None})


def _merge(base: str, **params: str) -> str:
    if not params:
        return base
    try:
        return make_conninfo(base, **params)
    except psycopg.ProgrammingError as exc:
        raise PgsnapError(f"invalid connection option: {exc}", Exit.CANNOT_RUN) from None
