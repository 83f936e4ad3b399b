"""CLI: check, status, verify — what an operator looks at (design.md section 7).

* `pgsnap check [--json]` runs `pgsnap.check_invariants()`: exit 0 healthy, 1 any violation,
  2 cannot check (cannot connect, database behind/ahead of this pgsnap, the check failed).
* `pgsnap status` shows targets by status, NULL snapshots, the last backfill runs, the schedule
  with next run times, and pending migrations; it works on a database that is behind.
* `pgsnap verify TARGET_ID` recomputes a target with `pgsnap.verify_target` and lists every
  difference: exit 0 none, 1 some, 2 cannot verify (e.g. no such target).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime

import click
import psycopg

from pgsnap import db, deploy
from pgsnap.cli import App, describe_db_error, pass_app
from pgsnap.errors import PgsnapError

STATUSES = ("populated", "populating", "not_populated")
PROBLEMS = ("missing", "extra", "wrong_band", "stale_snapshot", "null_snapshot", "duplicate")


def _table(rows: list[tuple], indent: str = "") -> list[str]:
    """Left-aligned columns, two spaces apart (first row: the header)."""
    cells = [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in cells]


def _utc(at: datetime | None) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if at else "-"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# -- check ---------------------------------------------------------------------------------------
def run_checks(conn: psycopg.Connection) -> list[tuple[str, int, str]]:
    """(check_name, violations, detail) for every invariant, in the SQL's order."""
    rows = conn.execute("SELECT check_name, violations, detail FROM pgsnap.check_invariants()").fetchall()
    return [(name, int(n), detail) for name, n, detail in rows]


def check_report(checks: list[tuple[str, int, str]]) -> dict:
    failing = [name for name, n, _ in checks if n]
    return {
        "healthy": not failing,
        "violations": sum(n for _, n, _ in checks),
        "failing": failing,
        "checks": [{"check": name, "violations": n, "detail": detail} for name, n, detail in checks],
    }


def check_verdict(report: dict) -> str:
    if report["healthy"]:
        return "check: healthy"
    return (f"check: {_plural(report['violations'], 'violation')} "
            f"({', '.join(report['failing'])})")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="The report as one JSON object on stdout.")
@pass_app
def check(app: App, as_json: bool) -> None:
    """NULL snapshots and invariants; exit 0 healthy, 1 violation, 2 cannot check."""
    conn = app.connect()  # behind or ahead: PgsnapError exit 2
    try:
        checks = run_checks(conn)
    except psycopg.Error as exc:
        raise PgsnapError(f"cannot check: {describe_db_error(exc)}", exit_code=2) from None
    report = check_report(checks)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        lines = _table([("check", "violations", "detail")]
                       + [(name, n, detail) for name, n, detail in checks])
        click.echo("\n".join(lines))
        click.echo(check_verdict(report))
    if not report["healthy"]:
        click.get_current_context().exit(1)


# -- verify --------------------------------------------------------------------------------------
def describe_difference(me_file_id: int, problem: str, expected: int | None, actual: int | None) -> str:
    return (f"me_file {me_file_id}: {problem} expected {'-' if expected is None else expected}"
            f" actual {'-' if actual is None else actual}")


@click.command()
@click.argument("target_id", type=int)
@pass_app
def verify(app: App, target_id: int) -> None:
    """Recompute a target from scratch and list every difference; exit 1 if any."""
    conn = app.connect()
    try:
        status = conn.execute("SELECT population_status FROM public.targets WHERE id = %s",
                              [target_id]).fetchone()
        if status is None:
            raise PgsnapError(f"target {target_id} does not exist", exit_code=2)
        diffs = conn.execute(
            "SELECT me_file_id, problem, expected_band, actual_band FROM pgsnap.verify_target(%s)",
            [target_id]).fetchall()
        rows = conn.execute("SELECT count(*) FROM public.target_populations WHERE target_id = %s",
                            [target_id]).fetchone()[0]
    except psycopg.Error as exc:
        raise PgsnapError(f"cannot verify target {target_id}: {describe_db_error(exc)}",
                          exit_code=2) from None
    for diff in diffs:
        click.echo(describe_difference(*diff))
    head = f"target {target_id} ({status[0]}, {_plural(rows, 'row')})"
    if not diffs:
        click.echo(f"{head}: no differences")
        return
    counts = Counter(problem for _, problem, _, _ in diffs)
    by_kind = ", ".join(f"{counts[p]} {p}" for p in (*PROBLEMS, *sorted(set(counts) - set(PROBLEMS)))
                        if counts[p])
    click.echo(f"{head}: {_plural(len(diffs), 'difference')} ({by_kind})")
    click.get_current_context().exit(1)


# -- status --------------------------------------------------------------------------------------
def _section(title: str, body: Callable[[], list[str]]) -> None:
    """Print a titled section; a failure becomes one `unavailable:` line, not the end of status."""
    click.echo(title)
    try:
        lines = body()
    except psycopg.Error as exc:
        lines = [f"unavailable: {describe_db_error(exc)}"]
    except PgsnapError as exc:
        lines = [f"unavailable: {exc}"]
    for line in lines:
        click.echo("  " + line)
    click.echo()


def _targets(conn: psycopg.Connection) -> list[str]:
    counts = dict(conn.execute(
        "SELECT population_status, count(*) FROM public.targets GROUP BY 1").fetchall())
    lines = _table([(s, counts.pop(s, 0)) for s in STATUSES] + sorted(counts.items()))
    if conn.execute("SELECT to_regprocedure('pgsnap.populating_targets()') IS NOT NULL").fetchone()[0]:
        for target_id, since, last, pid in conn.execute(
                "SELECT target_id, since, last_populated_at, populated_by FROM pgsnap.populating_targets()"):
            started = (f"since {_utc(since)} UTC" if since
                       else f"since an unknown time (last populated {_utc(last)})")
            who = f"pid {pid} is populating it" if pid else "nobody is populating it"
            lines.append(f"target {target_id} populating {started}; {who}")
    return lines


NOT_INSTALLED = "pgsnap is not installed in this database yet: run `pgsnap migrate`"
# the seed's three queries, for a legacy database without pgsnap.snapshot_health()
LEGACY_HEALTH = " UNION ALL ".join(
    f"SELECT '{t}', count(*) FILTER (WHERE matching_tags_snapshot IS NULL), count(*) FROM public.{t}"
    for t in deploy.SNAPSHOT_TABLES)


def _exists(conn: psycopg.Connection, regclass: str) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", [regclass]).fetchone()[0]


def _snapshots(conn: psycopg.Connection) -> list[str]:
    if conn.execute("SELECT to_regprocedure('pgsnap.snapshot_health()') IS NOT NULL").fetchone()[0]:
        rows = conn.execute(
            "SELECT table_name, null_snapshots, total_rows FROM pgsnap.snapshot_health()").fetchall()
    else:
        rows = conn.execute(LEGACY_HEALTH).fetchall()
    order = {t: i for i, t in enumerate(deploy.SNAPSHOT_TABLES)}
    rows.sort(key=lambda r: (order.get(r[0], len(order)), r[0]))
    return _table([("table", "NULL", "rows"), *rows])


def _backfill_runs(conn: psycopg.Connection) -> list[str]:
    if not _exists(conn, "pgsnap.backfill_runs"):
        return [NOT_INSTALLED]
    runs = conn.execute(
        "SELECT id, started_at, finished_at, status, batches, target_populations, offers, ad_events,"
        "       error FROM pgsnap.backfill_runs ORDER BY started_at DESC, id DESC LIMIT 5").fetchall()
    if not runs:
        return ["no backfill run yet"]
    return _table([("id", "started (UTC)", "finished (UTC)", "status", "batches",
                    "target_populations", "offers", "ad_events", "error")]
                  + [(r[0], _utc(r[1]), _utc(r[2]), *r[3:8], db.first_line(r[8]) if r[8] else None)
                     for r in runs])


def _schedule(app: App, conn: psycopg.Connection) -> list[str]:
    # the schedule/next-run logic of `pgsnap schedule list` and `next`
    from pgsnap import cron, scheduler
    from pgsnap.cmd_schedule import list_jobs, runners

    if not _exists(conn, "pgsnap.jobs"):
        return [NOT_INSTALLED]
    with runners(conn, app.dsn) as r:
        jobs = list_jobs(r)
        cron_problem = r.cron_problem if r.cron is None else None
    now = scheduler.utcnow()
    lines = []
    if jobs:
        rows = [("runner", "jobid", "name", "schedule", "active", "last run (UTC)", "status",
                 "next run (UTC)")]
        for j in jobs:
            try:
                upcoming = _utc(cron.next_runs(j.schedule, now, 1)[0]) if j.active else "inactive"
            except cron.CronError as exc:
                upcoming = f"none ({exc.reason})"
            rows.append((j.runner, j.jobid, j.jobname, j.schedule, "yes" if j.active else "no",
                         _utc(j.last_start), j.last_status, upcoming))
        lines += _table(rows)
    else:
        lines.append("no jobs: the safety-net backfill is not scheduled; run `pgsnap schedule install`")
    if any(j.runner == "pgsnap" and j.active for j in jobs):
        pid = scheduler.leader_pid(conn)
        lines.append(f"pgsnap scheduler: leader pid {pid}" if pid else
                     "pgsnap scheduler: not running; its jobs run only under `pgsnap schedule run`")
    if cron_problem:
        lines.append(f"pg_cron: not used ({cron_problem})")
    return lines


def _migrations(app: App, conn: psycopg.Connection) -> list[str]:
    rows = deploy.status(app.dsn)
    known = {m.id for m in deploy.read_migrations()}
    applied = [mid for mid, at in rows if at is not None]
    pending = [mid for mid, at in rows if at is None]
    unknown = [mid for mid in applied if mid not in known]
    lines = [f"{len(applied)} applied, {len(pending)} pending"]
    lines += [f"pending: {mid}" for mid in pending]
    if pending:
        lines.append("run `pgsnap migrate`")
    lines += [f"applied but unknown to this pgsnap: {mid} (upgrade pgsnap)" for mid in unknown]
    # yoyo's lock row: a `pgsnap migrate` is running, or one died and left it (stale)
    if _exists(conn, "yoyo_lock"):
        for pid, ctime in conn.execute("SELECT pid, ctime FROM yoyo_lock ORDER BY ctime"):
            lines.append(f"migration lock held by process {pid} since "
                         f"{ctime:%Y-%m-%d %H:%M:%S} UTC; if no `pgsnap migrate` is running, "
                         "it is stale: DELETE FROM yoyo_lock")
    return lines


@click.command()
@pass_app
def status(app: App) -> None:
    """Targets by status, NULL snapshots, backfill runs, schedule, pending migrations."""
    conn = app.connect(check=False)  # status also describes a database that is behind
    click.echo(f"pgsnap status of {db.target(app.dsn)} at {_utc(datetime.now(UTC))} UTC")
    click.echo()
    _section("targets", lambda: _targets(conn))
    _section("snapshots", lambda: _snapshots(conn))
    _section("backfill runs (latest 5)", lambda: _backfill_runs(conn))
    _section("schedule", lambda: _schedule(app, conn))
    _section("migrations", lambda: _migrations(app, conn))


commands = [check, status, verify]
