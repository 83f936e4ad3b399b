"""How commands print: aligned tables, UTC times, JSON on stdout, and the final verdict."""

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import click

json_option = click.option("--json", "as_json", is_flag=True, help="The result as JSON on stdout.")


def table(rows: Sequence[Sequence[Any]], indent: str = "") -> list[str]:
    """Left-aligned columns, two spaces apart (first row: the header); None prints as `-`."""
    cells = [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in cells]


def utc(at: datetime | None) -> str:
    """`YYYY-MM-DD HH:MM:SS` in UTC, or `-`."""
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if at else "-"


def iso(at: datetime | None) -> str | None:
    """ISO 8601 in UTC for JSON output (`2026-01-02T03:04:05Z`), or None."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if at else None


def jsonable(value: Any) -> Any:
    """`value` with every datetime in it (nested in dicts and lists) as `iso()`."""
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    return value


def age(seconds: float) -> str:
    """A duration, to the two largest units: `45s`, `12m 03s`, `2h 05m`, `3d 04h` (never negative)."""
    days, rest = divmod(max(0, int(seconds)), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


def finish(code: int) -> None:
    """End the command with this exit code (0: return normally)."""
    if code:
        click.get_current_context().exit(code)
