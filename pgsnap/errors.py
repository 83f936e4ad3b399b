"""Expected failures and the one exit-code table of the whole CLI.

    0    done; healthy; nothing to report
    1    a finding (`check` violations, `verify` differences, NULL snapshots left before the
         enforcement) or work that failed (a database error, a failed job run)
    2    cannot run: bad usage or option value, cannot connect, not found (a target, band,
         job, role or migration id), database behind or ahead of this pgsnap, no migrations
    3    a lock was not obtained in time (a migration step, the migration lock)
    130  interrupted (Ctrl-C): the statement was cancelled, the run recorded as such
"""

from enum import IntEnum

import psycopg


class Exit(IntEnum):
    OK = 0
    FINDING = 1
    CANNOT_RUN = 2
    LOCK = 3
    INTERRUPTED = 130


# SQLSTATEs that say "cannot run" or "lock" rather than "the work failed"
_SQLSTATE_EXIT = {
    "P0002": Exit.CANNOT_RUN,  # no_data_found: pgsnap's "target 9999 does not exist"
    "42704": Exit.CANNOT_RUN,  # undefined_object: e.g. role "x" does not exist
    "22023": Exit.CANNOT_RUN,  # invalid_parameter_value: e.g. a batch size the SQL refuses
    "55P03": Exit.LOCK,        # lock_not_available
}


class PgsnapError(Exception):
    """An expected failure with a message meant for the operator, and its exit code."""

    def __init__(self, message: str, exit_code: int = Exit.FINDING):
        super().__init__(message)
        self.exit_code = int(exit_code)

    @property
    def message(self) -> str:
        return str(self)


def first_line(text: str) -> str:
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), text.strip())


def describe_db_error(exc: psycopg.Error) -> str:
    """`SQLSTATE: primary message`, e.g. `P0002: target 9999 does not exist`."""
    primary = exc.diag.message_primary if exc.diag else None
    if exc.sqlstate and primary:
        return f"{exc.sqlstate}: {primary}"
    return first_line(str(exc)) or type(exc).__name__


def exit_code_of(exc: psycopg.Error) -> int:
    return int(_SQLSTATE_EXIT.get(exc.sqlstate or "", Exit.FINDING))


def from_db_error(exc: psycopg.Error, prefix: str = "") -> PgsnapError:
    """The PgsnapError a database error becomes (message and exit code from the table above)."""
    return PgsnapError(prefix + describe_db_error(exc), exit_code_of(exc))
