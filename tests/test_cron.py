"""pgsnap.cron against the real pg_cron 1.4.2, and next-run times by hand."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta, timezone

import psycopg
import pytest

from pgsnap.schedule import cron

# pg_cron accepts these, and so does pgsnap.
ACCEPTED = [
    "* * * * *",
    "0 * * * *",
    "59 23 31 12 7",
    "0 0 * * 7",            # 7 is Sunday, like 0
    "0 0 * * 0-7",
    "0 0 * * 5-7",
    "0 0 * * sun-7",
    "0 0 * * 0,7",
    "*/15 * * * *",
    "0-30/10 * * * *",
    "*/100 * * * *",        # a step beyond the range: minute 0 only
    "1,2,3 * * * *",
    "1-5,10-15/2,30 * * * *",
    "*,5 * * * *",          # "*" then 5: every minute
    "05 * * * *",
    " 0  *\t* * *  ",       # blanks and tabs between and around fields
    "0 0 * jan *",
    "0 0 * JAN *",          # names are case-insensitive
    "0 0 * Jan-Mar *",
    "0 0 * jan-dec/3 *",
    "0 0 * * mon",
    "0 0 * * MON-FRI",
    "0 0 * * sun,sat",
    "0 0 1-31/2 * *",
    "0 0 * * */2",
    "0 0 29 2 *",           # leap day: every four years
    "0 0 31 2 1",           # dom and dow both set: Mondays in February
    "0 0 */30 2 *",         # days 1 and 31 of February: the 1st
    "@hourly",
    "@daily",
    "@midnight",
    "@weekly",
    "@monthly",
    "@yearly",
    "@annually",
    "@reboot",              # pg_cron only (runs when pg_cron starts)
    "@restart",
]

# pg_cron refuses these, and so does pgsnap.
REJECTED = [
    "60 * * * *",
    "61 * * * *",
    "* 24 * * *",
    "* * 0 * *",
    "* * 32 * *",
    "* * * 0 *",
    "* * * 13 *",
    "* * * * 8",
    "5/10 * * * *",         # a step needs "*" or a range
    "*/0 * * * *",
    "*/ * * * *",
    "-5 * * * *",
    "5- * * * *",
    "1, * * * *",
    ",1 * * * *",
    "0 0 * january *",
    "0 0 * * monday",
    "* jan * * *",          # names only in month and day-of-week
    "@HOURLY",              # keywords are lower case
    "@every 5m",
    "@",
    "0 0 0 * * * *",
    "0 * * *",
    "0",
    "",
    "0 0 L * *",
    "0 0 * * 5L",
    "0 0 15W * *",
    "0 0 ? * *",
    "0 0 $ * *",            # pg_cron 1.6
    "30 seconds",           # pg_cron 1.5
    "0\n* * * *",
    "# 0 * * * *",
]

# pg_cron accepts these but silently runs something else (or never runs):
# pgsnap rejects them.
MANGLED = [
    "0 * * * * *",          # sixth field ignored
    "0 * * * * 2030",       # sixth field ignored
    "1#2 * * * *",          # "#2" dropped
    "0 0 * * 1#2",          # "#2" dropped: every Monday
    "0 0 1$ * *",           # "$" dropped
    "1.5 * * * *",          # ".5" dropped
    "*5 * * * *",           # "5" dropped
    "1-5-7 * * * *",        # "-7" dropped
    "*/5/2 * * * *",        # "/2" dropped
    "*-5 * * * *",          # "-5" dropped
    "5-1 * * * *",          # reversed range: empty, never runs
    "0 0 31 2 *",           # never runs
    "0 0 30 2 *",           # never runs
    "0 0 31 4,6,9,11 *",    # never runs
    "4294967296 * * * *",   # overflows to minute 0
    "@hourly extra",        # text after the keyword ignored
]


@pytest.fixture(scope="module")
def cron_conn(pg_server):
    if not pg_server.has_pg_cron:
        pytest.skip("the test server has no pg_cron")
    with psycopg.connect(pg_server.dsn(pg_server.cron_dbname), autocommit=True) as conn:
        yield conn


def pg_cron_accepts(conn, expr: str) -> bool:
    try:
        (jobid,) = conn.execute(
            "SELECT cron.schedule('pgsnap-test-grammar', %s, 'SELECT 1')", (expr,)
        ).fetchone()
    except psycopg.errors.InvalidParameterValue:
        return False
    conn.execute("SELECT cron.unschedule(%s::bigint)", (jobid,))
    return True


def pgsnap_accepts(expr: str) -> bool:
    try:
        cron.parse(expr)
    except cron.CronError:
        return False
    return True


def test_the_table_is_big_enough():
    assert len(ACCEPTED) + len(REJECTED) + len(MANGLED) >= 40


def test_pg_cron_is_1_4(cron_conn):
    version = cron_conn.execute(
        "SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'").fetchone()[0]
    assert version.startswith("1.4")


@pytest.mark.parametrize("expr", ACCEPTED)
def test_accepted_by_pg_cron_and_pgsnap(cron_conn, expr):
    assert (pg_cron_accepts(cron_conn, expr), pgsnap_accepts(expr)) == (True, True)


@pytest.mark.parametrize("expr", REJECTED)
def test_rejected_by_pg_cron_and_pgsnap(cron_conn, expr):
    assert (pg_cron_accepts(cron_conn, expr), pgsnap_accepts(expr)) == (False, False)


@pytest.mark.parametrize("expr", MANGLED)
def test_silently_mangled_by_pg_cron_rejected_by_pgsnap(cron_conn, expr):
    assert (pg_cron_accepts(cron_conn, expr), pgsnap_accepts(expr)) == (True, False)


@pytest.mark.parametrize(("expr", "reason"), [
    ("61 * * * *", "minute 61 out of range 0-59"),
    ("* * * * 8", "day-of-week 8 out of range 0-7"),
    ("0 * * * * *", "6 fields; pg_cron takes exactly 5: minute hour day-of-month "
                    "month day-of-week (pg_cron would silently ignore the sixth; "
                    "there are no seconds or years)"),
    ("0 0 * * 1#2", '"#" (nth weekday of the month) is not supported by pg_cron'),
    ("0 0 31 2 *", 'day-of-month "31" never occurs in Feb (pg_cron would never run it)'),
    ("0 0 31 4,6 *",
     'day-of-month "31" never occurs in Apr, Jun (pg_cron would never run it)'),
    ("5-1 * * * *", 'minute "5-1": range 5-1 is reversed (pg_cron would never run it)'),
    ("5/10 * * * *", 'minute "5/10": a step needs a range: write 5-59/10 or */10'),
    ("0 0 $ * *", '"$" (last day of the month) needs pg_cron 1.6; this is pg_cron 1.4'),
    ("0 0 L * *", '"L" (last day) is not supported by pg_cron'),
    ("@hourly extra", 'text after "@hourly" (pg_cron would ignore it)'),
    ("30 seconds", 'interval schedules ("N seconds") need pg_cron 1.5'),
    ("", "empty"),
])
def test_error_says_what_is_wrong(expr, reason):
    with pytest.raises(cron.CronError) as info:
        cron.parse(expr)
    assert str(info.value) == f'invalid cron expression "{expr}": {reason}'
    assert info.value.reason == reason
    assert isinstance(info.value, ValueError)


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(("expr", "after", "expected"), [
    ("@hourly", at(2025, 3, 10, 10, 15),
     [at(2025, 3, 10, 11), at(2025, 3, 10, 12), at(2025, 3, 10, 13)]),
    ("@hourly", at(2025, 12, 31, 23, 0),  # strictly after; over the year end
     [at(2026, 1, 1, 0), at(2026, 1, 1, 1)]),
    ("*/15 * * * *", at(2025, 12, 31, 23, 50),
     [at(2026, 1, 1, 0, 0), at(2026, 1, 1, 0, 15)]),
    ("0 0 31 * *", at(2025, 1, 31),  # skips the months without a 31st
     [at(2025, 3, 31), at(2025, 5, 31), at(2025, 7, 31), at(2025, 8, 31)]),
    ("30 6 28-31 2 *", at(2027, 2, 27),  # February's end, then the leap year's
     [at(2027, 2, 28, 6, 30), at(2028, 2, 28, 6, 30), at(2028, 2, 29, 6, 30),
      at(2029, 2, 28, 6, 30)]),
    ("0 0 29 2 *", at(2025, 1, 1), [at(2028, 2, 29), at(2032, 2, 29)]),
    ("0 0 13 * 5", at(2025, 7, 1),  # both restricted: the 13th OR a Friday
     [at(2025, 7, 4), at(2025, 7, 11), at(2025, 7, 13), at(2025, 7, 18),
      at(2025, 7, 25), at(2025, 8, 1)]),
    ("0 0 */10 * 5", at(2025, 6, 1),  # dom starts with "*": days 1,11,21,31 AND Friday
     [at(2025, 7, 11), at(2025, 8, 1), at(2025, 10, 31), at(2025, 11, 21)]),
    ("0 0 * * 7", at(2025, 3, 1), [at(2025, 3, 2), at(2025, 3, 9)]),  # Sundays
    ("@weekly", at(2025, 3, 1), [at(2025, 3, 2), at(2025, 3, 9)]),
    ("@monthly", at(2025, 1, 31, 12), [at(2025, 2, 1), at(2025, 3, 1)]),
    ("@yearly", at(2025, 6, 1), [at(2026, 1, 1), at(2027, 1, 1)]),
    ("59 23 31 12 *", at(2025, 12, 31, 23, 59), [at(2026, 12, 31, 23, 59)]),
    ("0 9 * jan-mar/2 mon-fri", at(2025, 1, 30),  # January and March, weekdays
     [at(2025, 1, 30, 9), at(2025, 1, 31, 9), at(2025, 3, 3, 9)]),
])
def test_next_runs(expr, after, expected):
    assert cron.next_runs(expr, after, len(expected)) == expected


def test_next_runs_converts_to_utc():
    paris_summer = timezone(timedelta(hours=2))
    after = datetime(2025, 7, 1, 1, 30, tzinfo=paris_summer)  # 2025-06-30 23:30 UTC
    assert cron.next_runs("0 0 * * *", after, 1) == [at(2025, 7, 1)]
    assert cron.next_runs("0 0 * * *", after, 1)[0].tzinfo == UTC


def test_next_runs_refuses_reboot_and_naive_datetimes():
    for expr in ("@reboot", "@restart"):
        with pytest.raises(cron.CronError, match=f'"{expr}" runs when pg_cron starts'):
            cron.next_runs(expr, at(2025, 1, 1))
    with pytest.raises(ValueError, match="naive datetime"):
        cron.next_runs("@hourly", datetime(2025, 1, 1))


# -- cronsim against a brute-force reading of the parsed sets --------------------------


def brute_next(s: cron.Schedule, after: datetime) -> datetime:
    """Vixie cron's rule, day by day: the oracle for cronsim."""
    start = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
    day = start.date()
    while day < date(start.year + 30, 1, 1):
        dom, dow = day.day in s.days, day.isoweekday() % 7 in s.weekdays
        if day.month in s.months and ((dom and dow) if s.day_and else (dom or dow)):
            for h in sorted(s.hours):
                for m in sorted(s.minutes):
                    t = datetime(day.year, day.month, day.day, h, m, tzinfo=UTC)
                    if t >= start:
                        return t
        day += timedelta(days=1)
    raise AssertionError(f"{s.expr} never runs")


def random_field(rng: random.Random, low: int, high: int, names=()) -> str:
    def value() -> str:
        n = rng.randint(low, high)
        if names and rng.random() < 0.3 and n - low < len(names):
            return rng.choice([str.lower, str.upper, str.title])(names[n - low])
        return str(n)

    def item() -> str:
        kind = rng.choice(["*", "n", "range", "*/s", "range/s"])
        if kind == "*":
            return "*"
        if kind == "n":
            return value()
        a, b = sorted(rng.sample(range(low, high + 1), 2))
        rng_text = f"{a}-{b}"
        if kind == "range":
            return rng_text
        step = rng.randint(1, high - low + 2)
        return f"*/{step}" if kind == "*/s" else f"{rng_text}/{step}"

    return ",".join(item() for _ in range(rng.choice([1, 1, 1, 2, 3])))


def test_cronsim_agrees_with_the_parsed_sets():
    rng = random.Random(20250101)
    checked = 0
    while checked < 400:
        expr = " ".join([
            random_field(rng, 0, 59), random_field(rng, 0, 23),
            random_field(rng, 1, 31), random_field(rng, 1, 12, cron.MONTH_NAMES),
            random_field(rng, 0, 7, cron.DOW_NAMES)])
        try:
            s = cron.parse(expr)
        except cron.CronError as exc:
            assert "never occurs" in exc.reason, exc
            continue
        after = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(
            minutes=rng.randrange(4 * 365 * 24 * 60))
        expected, got = [], cron.next_runs(s, after, 3)
        for _ in range(3):
            after = brute_next(s, after)
            expected.append(after)
        assert got == expected, expr
        checked += 1
