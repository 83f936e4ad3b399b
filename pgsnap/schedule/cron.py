"""pg_cron 1.4 schedule expressions: a strict validator and UTC next-run times.

The grammar is the one pg_cron 1.4.2 parses (its Vixie-cron ``entry.c``):

* five fields separated by blanks: minute (0-59), hour (0-23), day-of-month
  (1-31), month (1-12 or jan-dec), day-of-week (0-7 or sun-sat; 0 and 7 are
  both Sunday); names are case-insensitive;
* each field is a comma list of ``*``, ``N``, ``A-B``, ``*/S`` or ``A-B/S``
  (``N/S`` is refused by pg_cron, as are steps of 0);
* or one of ``@hourly @daily @midnight @weekly @monthly @yearly @annually``
  and ``@reboot`` / ``@restart`` (lower case only).

pg_cron also *accepts* some input it then silently mangles; pgsnap rejects it:
a sixth field or trailing text (ignored by pg_cron), junk after a number such
as ``1#2`` or ``5$`` (the junk is dropped), reversed ranges such as ``5-1``
(an empty set: the job never runs), days that never occur such as
``0 0 31 2 *`` (never runs), numbers too large for a C ``int``, and text after
an ``@`` keyword.

Day matching follows Vixie cron and pg_cron: when the day-of-month or the
day-of-week field starts with ``*``, a day must match both fields; otherwise
(both restricted) it must match either. Evaluation is in UTC (pg_cron 1.4 has
no ``cron.timezone``). Next-run times come from ``cronsim``, which shares these
semantics, fed only expressions this module accepted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from cronsim import CronSim

__all__ = ["CronError", "Schedule", "next_runs", "parse", "validate"]

MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun",
               "jul", "aug", "sep", "oct", "nov", "dec")
DOW_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # leap Feb

MACROS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
REBOOT = ("@reboot", "@restart")


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()


FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day-of-month", 1, 31),
    _Field("month", 1, 12, MONTH_NAMES),
    _Field("day-of-week", 0, 7, DOW_NAMES),
)

_ITEM = re.compile(r"(\*|[A-Za-z0-9]+)(?:-([A-Za-z0-9]+))?(?:/([A-Za-z0-9]*))?")
_UNSUPPORTED = {
    "L": '"L" (last day) is not supported by pg_cron',
    "W": '"W" (nearest weekday) is not supported by pg_cron',
    "#": '"#" (nth weekday of the month) is not supported by pg_cron',
    "?": '"?" is not supported by pg_cron; use "*"',
    "$": '"$" (last day of the month) needs pg_cron 1.6; this is pg_cron 1.4',
}


class CronError(ValueError):
    """An expression pg_cron 1.4 would refuse, or would silently mangle."""

    def __init__(self, expr: str, reason: str):
        super().__init__(f'invalid cron expression "{expr}": {reason}')
        self.expr = expr
        self.reason = reason


@dataclass(frozen=True)
class Schedule:
    """A validated expression: the sets it fires on, in UTC."""

    expr: str
    minutes: frozenset[int] = frozenset()
    hours: frozenset[int] = frozenset()
    days: frozenset[int] = frozenset()
    months: frozenset[int] = frozenset()
    weekdays: frozenset[int] = frozenset()  # 0-6, Sunday = 0
    day_and: bool = True  # dom or dow field starts with "*": both must match
    reboot: bool = False  # @reboot: runs when pg_cron starts, never on a clock
    five_fields: str = ""  # what cronsim evaluates


def _number(expr: str, field: _Field, token: str, text: str) -> int:
    if token.isascii() and token.isdigit():
        value = int(token)
    elif token.lower() in field.names:
        value = field.names.index(token.lower()) + field.low
    elif re.fullmatch(r"[0-9]*[LW]|LW", token.upper()):
        raise CronError(expr, _UNSUPPORTED[token[-1].upper()])
    elif field.names:
        raise CronError(expr, f'{field.name} "{text}": "{token}" is neither a '
                              f"number nor a name ({', '.join(field.names)})")
    else:
        raise CronError(expr, f'{field.name} "{text}": "{token}" is not a number')
    if not field.low <= value <= field.high:
        raise CronError(expr, f"{field.name} {token} out of range "
                              f"{field.low}-{field.high}")
    return value


def _parse_field(expr: str, field: _Field, text: str) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        m = _ITEM.fullmatch(item)
        if not m:
            bad = next((c for c in item if c in _UNSUPPORTED), None)
            if bad:
                raise CronError(expr, _UNSUPPORTED[bad])
            if item == "":
                why = "empty list item"
            else:
                why = f'"{item}" is not *, N, A-B, */S or A-B/S'
            raise CronError(expr, f'{field.name} "{text}": {why}')
        start, end, step = m.groups()
        if step == "":
            raise CronError(expr, f'{field.name} "{text}": missing step after "/"')
        if step is not None and not (step.isascii() and step.isdigit()
                                     and int(step) > 0):
            raise CronError(expr, f'{field.name} "{text}": step "{step}" '
                                  "must be a whole number of at least 1")
        if start == "*":
            if end is not None:
                raise CronError(expr, f'{field.name} "{text}": "*-" is not a range')
            low, high = field.low, field.high
        else:
            low = _number(expr, field, start, text)
            if end is None and step is not None:
                raise CronError(expr, f'{field.name} "{text}": a step needs a '
                                      f'range: write {start}-{field.high}/{step} '
                                      f"or */{step}")
            high = low if end is None else _number(expr, field, end, text)
            if high < low:
                raise CronError(expr, f'{field.name} "{text}": range {start}-{end} '
                                      "is reversed (pg_cron would never run it)")
        values.update(range(low, high + 1, int(step or 1)))
    return frozenset(values)


def parse(expr: str) -> Schedule:
    """Validate `expr` against pg_cron 1.4's grammar; raise CronError if bad."""
    if not isinstance(expr, str):
        raise CronError(str(expr), "not a string")
    text = expr.strip()
    if not text:
        raise CronError(expr, "empty")
    if re.search(r"[^ \t\S]", text):
        raise CronError(expr, "fields must be separated by spaces or tabs only")
    if text.startswith("#"):
        raise CronError(expr, "a comment, not a schedule")
    if text.startswith("@"):
        if text in REBOOT:
            return Schedule(expr=text, reboot=True)
        if text in MACROS:
            five = MACROS[text]
        elif text.split()[0] in MACROS or text.split()[0] in REBOOT:
            raise CronError(expr, f'text after "{text.split()[0]}" '
                                  "(pg_cron would ignore it)")
        else:
            raise CronError(expr, f'unknown keyword "{text.split()[0]}"; pg_cron 1.4 '
                                  "knows " + " ".join([*MACROS, *REBOOT]) +
                                  " (lower case)")
    else:
        five = text
    parts = five.split()
    if len(parts) == 2 and re.fullmatch(r"\d+ *seconds?", text, re.IGNORECASE):
        raise CronError(expr, 'interval schedules ("N seconds") need pg_cron 1.5')
    if len(parts) != 5:
        extra = (" (pg_cron would silently ignore the sixth; there are no "
                 "seconds or years)" if len(parts) > 5 else "")
        raise CronError(expr, f"{len(parts)} field{'s' * (len(parts) > 1)}; "
                              "pg_cron takes exactly 5: "
                              f"minute hour day-of-month month day-of-week{extra}")
    minutes, hours, days, months, dows = (
        _parse_field(expr, field, part) for field, part in zip(FIELDS, parts, strict=True))
    day_and = parts[2].startswith("*") or parts[4].startswith("*")
    if day_and and not any(d <= DAYS_IN_MONTH[m - 1] for m in months for d in days):
        month_list = ", ".join(MONTH_NAMES[m - 1].title() for m in sorted(months))
        raise CronError(expr, f'day-of-month "{parts[2]}" never occurs in '
                              f"{month_list} (pg_cron would never run it)")
    return Schedule(
        expr=text, minutes=minutes, hours=hours, days=days, months=months,
        weekdays=frozenset(d % 7 for d in dows), day_and=day_and,
        five_fields=" ".join(parts))


def validate(expr: str) -> str:
    """Return `expr` stripped if pg_cron 1.4 accepts it as written, else raise."""
    return parse(expr).expr


def _utc(at: datetime) -> datetime:
    if at.tzinfo is None:
        raise ValueError("naive datetime: pass an aware one (UTC)")
    return at.astimezone(UTC)


def next_runs(expr: str | Schedule, after: datetime, n: int = 1) -> list[datetime]:
    """The next `n` slots strictly after `after`, as aware UTC datetimes."""
    schedule = expr if isinstance(expr, Schedule) else parse(expr)
    if schedule.reboot:
        raise CronError(schedule.expr, f'"{schedule.expr}" runs when pg_cron starts; '
                                       "it has no clock time, and the pgsnap "
                                       "scheduler does not run it")
    it = CronSim(schedule.five_fields, _utc(after))
    return [next(it) for _ in range(n)]
