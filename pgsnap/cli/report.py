"""CLI: check, verify, metrics — what an operator looks at (status: pgsnap/cli/status.py).

* `pgsnap check` prints `pgsnap.check_invariants()`: exit 0 healthy, 1 any violation, 2 cannot
  check (cannot connect, database behind or ahead of this pgsnap, the check itself failed).
* `pgsnap verify TARGET_ID` lists every difference `pgsnap.verify_target` finds: exit 0 none,
  1 some, 2 no such target.
* `pgsnap metrics` prints `pgsnap.metrics()` in the Prometheus text format (OpenMetrics'
  `# EOF` included), for a node_exporter textfile collector or any scraper.

check and verify have `--json`: the same data as one JSON object on stdout.
"""

from __future__ import annotations

from collections import Counter

import click
import psycopg

from pgsnap.cli.app import App, pass_app
from pgsnap.cli.output import echo_json, finish, json_option, plural, table
from pgsnap.errors import Exit, PgsnapError, from_db_error

PROBLEMS = ("missing", "extra", "wrong_band", "stale_snapshot", "null_snapshot", "duplicate")


# -- check ---------------------------------------------------------------------------------------
def check_report(conn: psycopg.Connection) -> dict:
    try:
        rows = conn.execute("SELECT check_name, violations, detail FROM pgsnap.check_invariants()").fetchall()
    except psycopg.Error as exc:
        raise from_db_error(exc, "cannot check: ") from None  # whatever its SQLSTATE: exit 2
    checks = [{"check": name, "violations": int(n), "detail": detail} for name, n, detail in rows]
    failing = [c["check"] for c in checks if c["violations"]]
    return {"healthy": not failing, "violations": sum(c["violations"] for c in checks),
            "failing": failing, "checks": checks}


@click.command()
@json_option
@pass_app
def check(app: App, as_json: bool) -> None:
    """NULL snapshots and invariants; exit 0 healthy, 1 violation, 2 cannot check."""
    conn = app.connect()
    try:
        report = check_report(conn)
    except PgsnapError as exc:
        raise PgsnapError(str(exc), Exit.CANNOT_RUN) from None
    if as_json:
        echo_json(report)
    else:
        rows = [(c["check"], c["violations"], c["detail"]) for c in report["checks"]]
        click.echo("\n".join(table([("check", "violations", "detail"), *rows])))
        click.echo("check: healthy" if report["healthy"] else
                   f"check: {plural(report['violations'], 'violation')} ({', '.join(report['failing'])})")
    finish(0 if report["healthy"] else Exit.FINDING)


# -- metrics ---------------------------------------------------------------------------------------
def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def metrics_text(samples: list[tuple[str, str, dict, float]]) -> str:
    lines: list[str] = []
    current = None
    for metric, help_text, labels, value in samples:
        if metric != current:
            lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} gauge"]
            current = metric
        text = ",".join(f'{k}="{_label_value(str(v))}"' for k, v in labels.items())
        lines.append(f"{metric}{{{text}}} {_number(value)}" if text else f"{metric} {_number(value)}")
    return "\n".join([*lines, "# EOF"]) + "\n"


@click.command()
@pass_app
def metrics(app: App) -> None:
    """pgsnap's state in the Prometheus text format (for node_exporter's textfile collector)."""
    samples = app.connect().execute("SELECT metric, help, labels, value FROM pgsnap.metrics()").fetchall()
    click.echo(metrics_text(samples), nl=False)


# -- verify --------------------------------------------------------------------------------------
@click.command()
@click.argument("target_id", type=int)
@json_option
@pass_app
def verify(app: App, target_id: int, as_json: bool) -> None:
    """Recompute a target from scratch and list every difference; exit 1 if any."""
    conn = app.connect()
    diffs = conn.execute(
        "SELECT me_file_id, problem, expected_band, actual_band FROM pgsnap.verify_target(%s)",
        [target_id]).fetchall()  # an unknown target: P0002, exit 2
    status, rows = conn.execute(
        "SELECT t.population_status, (SELECT count(*) FROM public.target_populations p"
        "                              WHERE p.target_id = t.id)"
        "  FROM public.targets t WHERE t.id = %s", [target_id]).fetchone()
    counts = Counter(problem for _, problem, _, _ in diffs)
    kinds = [p for p in (*PROBLEMS, *sorted(set(counts) - set(PROBLEMS))) if counts[p]]
    if as_json:
        echo_json({"target_id": target_id, "status": status, "rows": rows,
                   "differences": [{"me_file_id": m, "problem": p, "expected_band": e, "actual_band": a}
                                   for m, p, e, a in diffs],
                   "counts": {k: counts[k] for k in kinds}})
    else:
        for me_file_id, problem, expected, actual in diffs:
            click.echo(f"me_file {me_file_id}: {problem} expected {'-' if expected is None else expected}"
                       f" actual {'-' if actual is None else actual}")
        head = f"target {target_id} ({status}, {plural(rows, 'row')})"
        click.echo(f"{head}: no differences" if not diffs else
                   f"{head}: {plural(len(diffs), 'difference')} "
                   f"({', '.join(f'{counts[k]} {k}' for k in kinds)})")
    finish(Exit.FINDING if diffs else 0)
