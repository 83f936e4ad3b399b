"""CLI: migrate (and --plan), rollback, adopt, migrations — the schema's state.

pgsnap/deploy.py applies and rolls back, pgsnap/plan.py plans, pgsnap/adopt.py adopts;
this module asks, prints and sets the exit code.
"""

import sys
from datetime import UTC

import click

from pgsnap import adopt as adoption
from pgsnap import deploy, plan
from pgsnap.cli.app import App, pass_app
from pgsnap.cli.output import echo_json, finish, iso, json_option, plural, table
from pgsnap.errors import Exit, PgsnapError
from pgsnap.progress import progress


@click.command()
@click.option("--to", metavar="ID", help="stop after this migration (e.g. 0001.baseline-schema)")
@click.option("--no-backfill", is_flag=True,
              help="stop before the NOT NULL enforcement instead of backfilling first")
@click.option("--lock-timeout", default="2s", show_default=True, metavar="DURATION",
              help="lock_timeout of each step")
@click.option("--lock-retries", default=5, show_default=True, type=click.IntRange(0),
              help="retries of a step that timed out on a lock (exponential backoff)")
@click.option("--batch-size", type=click.IntRange(1), help="rows per backfill batch")
@click.option("--plan", "show_plan", is_flag=True, help="say what would be done; write nothing")
@json_option
@pass_app
def migrate(app: App, to, no_backfill, lock_timeout, lock_retries, batch_size, show_plan, as_json) -> None:
    """Apply pending migrations (backfilling before NOT NULL is enforced), with sql/."""
    deploy.validate_lock_timeout(lock_timeout)
    if to is not None:
        deploy.known_id(deploy.read_migrations(), to)
    if show_plan:
        found = plan.plan(app.dsn, to=to)
        echo_json(found) if as_json else echo_plan(found)
        return
    with progress(label="backfilling snapshots") as bar:
        result = deploy.migrate(
            app.dsn, to=to, backfill=not no_backfill, lock_timeout=lock_timeout, lock_retries=lock_retries,
            on_progress=bar.update, backfill_batch_size=batch_size,
            log=None if as_json else click.echo,
        )
    if as_json:
        echo_json({"applied": result.applied, "backfilled": result.backfilled, "stopped": result.stopped,
                   "sql_files": result.sql_files})
        return
    if any(result.backfilled.values()):
        click.echo("backfilled " + ", ".join(f"{t} {n}" for t, n in result.backfilled.items()))
    if result.stopped:
        click.echo(result.stopped)
    elif not result.applied:
        click.echo("nothing to apply: the database is up to date" + (f" (up to {to})" if to else ""))
    if result.sql_files:
        click.echo(f"deployed {result.sql_files} sql/ files")


def echo_plan(found: dict) -> None:
    click.echo(f"migrate plan for {found['database']}: {found['applied']} applied, "
               f"{plural(found['pending'], 'migration')} to apply")
    backfill = found["backfill"]
    for n, step in enumerate(found["steps"], 1):
        first = step["migrations"][0]
        if backfill and first["id"] == backfill["before"]:
            echo_backfill(backfill)
        kind = "enforcement step" if first["enforcement"] else "step"
        sql = {"deployed": "with sql/", "none": "sql/ after it"}.get(
            step["sql"], "with sql/, refused if sql/ needs the rest of the step")
        transaction = "one transaction" if first["transactional"] else "no transaction (transactional: false)"
        click.echo(f"{kind} {n} ({transaction}, {sql}):")
        rows = []
        for m in step["migrations"]:
            locks = ("; ".join(f"{lock['mode']} on {lock['table']}" for lock in m["locks"])
                     or "no lock on existing tables")
            rows.append((m["id"], locks + "".join(f"; not analysed: {u}" for u in m["unread"])))
        click.echo("\n".join(table(rows, indent="  ")))
    if not found["steps"]:
        click.echo("nothing to apply: the database is up to date")
    sql = found["sql"]
    change = ("not deployed yet" if sql["deployed_checksum"] is None else
              "would change" if sql["changes"] else "unchanged")
    click.echo(f"sql/: {sql['files']} files, {change} (checksum {sql['checksum'][:12]})")


def echo_backfill(backfill: dict) -> None:
    exact = "" if backfill["exact"] else " (at least: sources are known once pgsnap's functions are deployed)"
    click.echo(f"backfill before {backfill['before']}: {plural(backfill['total'], 'NULL snapshot')}{exact}")
    rows = []
    for t, entry in backfill["tables"].items():
        sources = entry["sources"]
        rows.append((t, entry["nulls"], ", ".join(f"{n} {s}" for s, n in sources.items()) if sources else ""))
    click.echo("\n".join(table(rows, indent="  ")))
    estimate = backfill["estimate"]
    if "unavailable" in estimate:
        click.echo(f"  estimate: unavailable ({estimate['unavailable']})")
    elif "sample_rows" in estimate:
        seconds = f"{estimate['seconds']:g}s" if estimate["seconds"] >= 0.1 else "under 0.1s"
        click.echo(f"  estimate: {seconds} (a sample batch of {estimate['sample_rows']} rows "
                   f"took {estimate['sample_seconds']:g}s, rolled back)")


@click.command()
@click.option("--to", metavar="ID", help="roll back everything applied after this migration")
@click.option("--all", "all_", is_flag=True, help="roll back every migration")
@click.option("--yes", is_flag=True, help="do not ask (required without a terminal)")
@click.option("--include-baseline", is_flag=True,
              help="allow rolling back the baseline, which drops the application's tables (with --yes)")
@pass_app
def rollback(app: App, to, all_, yes, include_baseline) -> None:
    """Roll back the latest migration (or down to --to ID, or --all), after showing the plan."""
    if to and all_:
        raise click.UsageError("use either --to or --all, not both")
    if to is not None:
        deploy.known_id(deploy.read_migrations(), to)
    found = deploy.rollback_plan(app.dsn, to=to, all_=all_)
    if not found.migrations:
        click.echo("nothing to roll back")
        return
    click.echo(f"rollback plan: undo {plural(len(found.migrations), 'migration')}, latest first")
    for mid in found.migrations:
        click.echo(f"  {mid}")
    if found.includes_baseline:
        click.echo(f"rolling back {found.baseline} DROPS the application's tables and their rows:")
        click.echo("\n".join(table([(t, plural(n, "row")) for t, n in found.dropped.items()], indent="  ")))
        if not (yes and include_baseline):
            raise PgsnapError(f"refusing to roll back {found.baseline} without --yes and --include-baseline",
                              Exit.CANNOT_RUN)
    elif not yes:
        if not sys.stdin.isatty():
            raise PgsnapError("rollback asks for confirmation and there is no terminal to ask on: "
                              "re-run with --yes", Exit.CANNOT_RUN)
        if not click.confirm(f"Roll back {plural(len(found.migrations), 'migration')}?", default=False):
            raise PgsnapError("not confirmed: nothing was rolled back", Exit.FINDING)
    deploy.rollback(app.dsn, to=to, all_=all_, expected=found.migrations, log=click.echo)


@click.command()
@json_option
@pass_app
def adopt(app: App, as_json: bool) -> None:
    """Record the baseline as applied on a database that already holds the application's
    tables, if they match it (every difference is listed otherwise)."""
    result = adoption.adopt(app.dsn)
    if as_json:
        echo_json({"baseline": result.baseline, "already": result.already, "compatible": result.compatible,
                   "differences": result.differences, "recorded": result.recorded})
    elif result.already:
        click.echo(f"nothing to adopt: {result.baseline} is already recorded")
    elif result.recorded:
        click.echo(f"the application's {result.tables} tables match {result.baseline}: recorded it as "
                   "applied; `pgsnap migrate` continues from there")
    else:
        for difference in result.differences:
            click.echo(difference)
        click.echo(f"not adopted: {plural(len(result.differences), 'difference')} from {result.baseline}; "
                   "nothing was recorded")
    finish(0 if result.compatible or result.already else Exit.FINDING)


@click.command()
@json_option
@pass_app
def migrations(app: App, as_json: bool) -> None:
    """List migrations: applied (with time, UTC) or pending."""
    rows = deploy.status(app.connect(check=False))
    known = {m.id for m in deploy.read_migrations()}
    if as_json:
        echo_json([{"id": mid, "applied_at": iso(at.replace(tzinfo=UTC)) if at else None,
                    "known": mid in known} for mid, at in rows])
        return
    width = max([len("ID"), *(len(mid) for mid, _ in rows)])
    click.echo(f"{'ID':<{width}}  APPLIED AT (UTC)")
    for mid, applied_at in rows:
        state = f"{applied_at:%Y-%m-%d %H:%M:%S}" if applied_at else "pending"
        if mid not in known:
            state += " (unknown to this pgsnap)"
        click.echo(f"{mid:<{width}}  {state}")
