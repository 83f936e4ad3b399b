"""The `pgsnap` command line (click).

Adding a command
----------------
Write it in a module of its own, `pgsnap/cmd_<area>.py`, and list it in `commands`:

    import click
    from pgsnap.cli import pass_app

    @click.command()
    @click.argument("target_ids", nargs=-1, type=int)
    @pass_app
    def populate(app, target_ids):
        conn = app.connect()  # autocommit; refuses (exit 2) a database behind/ahead of this pgsnap
        ...

    commands = [populate]

Every `pgsnap/cmd_*.py` is imported when the CLI first looks its commands up, and each command
in its `commands` list is added to `main`; nothing in this file needs editing. Conventions:

* `app.connect(check=True, allow_behind=False)` opens a connection that is closed when the command
  ends. `check=False` skips the version check; `allow_behind=True` accepts a database with
  pending migrations (for `backfill`, which must run mid-journey) but never one that is ahead.
* Expected failures: raise `PgsnapError(message, exit_code)`; the CLI prints `error: <message>`
  on stderr and exits with that code. A `psycopg.Error` escaping a command becomes
  `error: <sqlstate>: <primary message>`, exit 1. Never a traceback. Usage errors exit 2.
* Results go to stdout; long work reports through `pgsnap.progress.progress` (a bar on a
  terminal, silent in pipes).
"""

import importlib
import pkgutil
import time

import click
import psycopg

import pgsnap
from pgsnap import db, deploy
from pgsnap.config import resolve_dsn
from pgsnap.errors import PgsnapError
from pgsnap.progress import progress


class App:
    """The object every command receives (`@pass_app`): the DSN and a checked connect()."""

    def __init__(self, dsn: str):
        self.dsn = dsn

    def connect(self, check: bool = True, allow_behind: bool = False, autocommit: bool = True
                ) -> psycopg.Connection:
        conn = db.connect(self.dsn, autocommit=autocommit)
        click.get_current_context().call_on_close(conn.close)
        if check:
            deploy.check_current(conn, allow_behind=allow_behind)
        return conn


pass_app = click.make_pass_decorator(App)


class CliError(click.ClickException):
    """How PgsnapError and psycopg.Error leave the CLI: one line on stderr, an exit code."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def describe_db_error(exc: psycopg.Error) -> str:
    primary = exc.diag.message_primary if exc.diag else None
    if exc.sqlstate and primary:
        return f"{exc.sqlstate}: {primary}"
    return db.first_line(str(exc)) or type(exc).__name__


class PgsnapGroup(click.Group):
    """Loads `pgsnap/cmd_*.py` commands lazily and turns expected failures into one-line errors."""

    _plugins_loaded = False

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for module in sorted(m.name for m in pkgutil.iter_modules(pgsnap.__path__)):
            if module.startswith("cmd_"):
                for command in importlib.import_module(f"pgsnap.{module}").commands:
                    self.add_command(command)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load_plugins()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self._load_plugins()
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except PgsnapError as exc:
            raise CliError(str(exc), exc.exit_code) from None
        except psycopg.Error as exc:
            raise CliError(describe_db_error(exc), 1) from None


@click.group(cls=PgsnapGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--dsn", metavar="DSN",
              help="libpq connection string or URL (default: $PGSNAP_DSN, then the PG* variables)")
@click.version_option(pgsnap.__version__, prog_name="pgsnap")
@click.pass_context
def main(ctx: click.Context, dsn: str | None) -> None:
    """pgsnap: matching-tags snapshots kept by PostgreSQL itself."""
    ctx.obj = App(resolve_dsn(dsn))


# -- migrations --------------------------------------------------------------------------------
@main.command()
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


@main.command()
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


@main.command()
@pass_app
def migrations(app: App) -> None:
    """List migrations: applied (with time, UTC) or pending."""
    echo_migrations(deploy.status(app.dsn))


def echo_migrations(rows) -> None:
    known = {m.id for m in deploy.read_migrations()}
    width = max([len("ID"), *(len(mid) for mid, _ in rows)])
    click.echo(f"{'ID':<{width}}  APPLIED AT (UTC)")
    for mid, applied_at in rows:
        state = f"{applied_at:%Y-%m-%d %H:%M:%S}" if applied_at else "pending"
        if mid not in known:
            state += " (unknown to this pgsnap)"
        click.echo(f"{mid:<{width}}  {state}")


# -- demo ----------------------------------------------------------------------------------------
@main.command()
@click.option("--me-files", type=click.IntRange(1), default=None, help="how many me_files to generate")
@click.option("--seed", type=int, default=None, help="random seed of the generated data")
@click.option("--keep", is_flag=True, help="keep the throwaway cluster running until Ctrl+C")
@click.option("--dsn", "demo_dsn", metavar="DSN",
              help="run on this (empty) database instead of a private throwaway cluster")
def demo(me_files, seed, keep, demo_dsn) -> None:
    """Run the whole pgsnap story on generated data, in a private throwaway PostgreSQL."""
    if demo_dsn is not None:
        _run_story(demo_dsn, me_files, seed)
        return
    from pgsnap.cluster import EmbeddedCluster

    click.echo("starting a throwaway PostgreSQL 15 cluster ...", err=True)
    with EmbeddedCluster() as pg:
        _run_story(pg.dsn(), me_files, seed)
        if keep:
            click.echo(f"the cluster keeps running: psql \"{pg.dsn()}\"; press Ctrl+C to stop it", err=True)
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    click.echo("throwaway cluster stopped and removed", err=True)


def _run_story(dsn: str, me_files: int | None, seed: int | None) -> None:
    """`pgsnap.demo.run(dsn, me_files=, seed=)` tells the story; until it exists: migrate and show."""
    try:
        story = importlib.import_module("pgsnap.demo")
    except ModuleNotFoundError as exc:
        if exc.name != "pgsnap.demo":
            raise
        story = None
    if story is not None:
        story.run(dsn, me_files=me_files, seed=seed)
        return
    deploy.migrate(dsn, log=click.echo)
    with db.connect(dsn) as conn:
        tables = conn.execute(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables"
            " WHERE table_schema IN ('public', 'pgsnap') AND table_name NOT LIKE '%yoyo%'"
            " ORDER BY table_schema DESC, table_name"
        ).fetchall()
    click.echo("tables: " + ", ".join(t for (t,) in tables))
    echo_migrations(deploy.status(dsn))
