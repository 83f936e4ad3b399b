"""CLI: migrate, rollback, migrations — the schema's state (pgsnap/deploy.py does the work)."""

import click

from pgsnap import deploy
from pgsnap.cli.app import App, pass_app
from pgsnap.progress import progress


@click.command()
@click.option("--to", metavar="ID", help="stop after this migration (e.g. 0001.baseline-schema)")
@click.option("--no-backfill", is_flag=True,
              help="stop before the NOT NULL enforcement instead of backfilling first")
@click.option("--lock-timeout", default="2s", show_default=True, metavar="DURATION",
              help="lock_timeout of each lock-taking step")
@click.option("--lock-retries", default=5, show_default=True, type=click.IntRange(0),
              help="retries of a lock-taking step that timed out (exponential backoff)")
@click.option("--batch-size", default=500, show_default=True, type=click.IntRange(1),
              help="rows per backfill batch")
@pass_app
def migrate(app: App, to, no_backfill, lock_timeout, lock_retries, batch_size) -> None:
    """Apply pending migrations (backfilling before NOT NULL is enforced), then deploy sql/."""
    with progress(label="backfilling snapshots") as bar:
        result = deploy.migrate(
            app.dsn, to=to, backfill=not no_backfill, lock_timeout=lock_timeout, lock_retries=lock_retries,
            on_progress=bar.update, backfill_batch_size=batch_size, log=click.echo,
        )
    if any(result.backfilled.values()):
        click.echo("backfilled " + ", ".join(f"{t} {n}" for t, n in result.backfilled.items()))
    if result.stopped:
        click.echo(result.stopped)
    elif not result.applied:
        click.echo("nothing to apply: the database is up to date" + (f" (up to {to})" if to else ""))
    if result.sql_files:
        click.echo(f"deployed {result.sql_files} sql/ files")
    if result.sql_skipped:
        click.echo(f"sql/ not deployed at this point ({result.sql_skipped}); "
                   "`pgsnap migrate` without --to deploys it")


@click.command()
@click.option("--to", metavar="ID", help="roll back everything applied after this migration")
@click.option("--all", "all_", is_flag=True, help="roll back every migration")
@pass_app
def rollback(app: App, to, all_) -> None:
    """Roll back the latest migration (or down to --to ID, or --all)."""
    if to and all_:
        raise click.UsageError("use either --to or --all, not both")
    done = deploy.rollback(app.dsn, to=to, all_=all_, log=click.echo)
    if not done:
        click.echo("nothing to roll back")


@click.command()
@pass_app
def migrations(app: App) -> None:
    """List migrations: applied (with time, UTC) or pending."""
    rows = deploy.status(app.connect(check=False))
    known = {m.id for m in deploy.read_migrations()}
    width = max([len("ID"), *(len(mid) for mid, _ in rows)])
    click.echo(f"{'ID':<{width}}  APPLIED AT (UTC)")
    for mid, applied_at in rows:
        state = f"{applied_at:%Y-%m-%d %H:%M:%S}" if applied_at else "pending"
        if mid not in known:
            state += " (unknown to this pgsnap)"
        click.echo(f"{mid:<{width}}  {state}")
