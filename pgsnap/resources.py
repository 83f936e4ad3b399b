"""Where pgsnap's SQL comes from: `migrations/` (state) and `sql/` (behaviour).

Both live at the top of the repository and ship inside the package as `pgsnap.migrations` and
`pgsnap.sql` (setup.cfg maps them), so an installed pgsnap finds them through
`importlib.resources`, from any directory. `PGSNAP_HOME` (a directory holding `migrations/` and
`sql/`) overrides that, for tests. A pgsnap that finds no migration refuses to work (exit 2)
rather than report a database "up to date".
"""

import os
from importlib import resources
from pathlib import Path

from pgsnap.errors import Exit, PgsnapError


def _shipped(name: str) -> Path:
    """`pgsnap/<name>` of an installed package; in an editable install of a checkout (where
    setuptools cannot map a data-only sub-package), `<name>/` at the top of the checkout."""
    installed = Path(str(resources.files("pgsnap"))) / name
    return installed if installed.is_dir() else Path(__file__).resolve().parent.parent / name


def home_override() -> Path | None:
    value = os.environ.get("PGSNAP_HOME")
    return Path(value).resolve() if value else None


def migrations_dir() -> Path:
    home = home_override()
    return home / "migrations" if home else _shipped("migrations")


def sql_dir() -> Path:
    home = home_override()
    return home / "sql" if home else _shipped("sql")


def migration_files() -> Path:
    """The migrations directory; PgsnapError (exit 2) when it holds no migration."""
    directory = migrations_dir()
    if not any(p.suffix == ".sql" and not p.name.endswith(".rollback.sql")
               for p in (directory.iterdir() if directory.is_dir() else ())):
        where = f"PGSNAP_HOME={home_override()}" if home_override() else "this pgsnap installation"
        raise PgsnapError(f"no migrations found in {directory} ({where}): pgsnap is not installed "
                          "correctly", Exit.CANNOT_RUN)
    return directory


def sql_files() -> list[Path]:
    """`sql/*.sql` in file-name order (the order they are deployed in)."""
    return sorted(sql_dir().glob("*.sql"))
