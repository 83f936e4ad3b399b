"""Where the connection string comes from."""

import os


def resolve_dsn(cli_dsn: str | None) -> str:
    """`--dsn`, then env PGSNAP_DSN, then "" (libpq then reads the standard PG* variables)."""
    if cli_dsn is not None:
        return cli_dsn
    return os.environ.get("PGSNAP_DSN", "")
