"""The `pgsnap` command line (click).

Each area has a module of its own in this package; `COMMANDS` below lists every command.
Adding one: write it with `@pass_app` (pgsnap/cli/app.py), list it here. Conventions:

* `app.connect(check=True, allow_behind=False)` opens an autocommit connection closed when the
  command ends (see App.connect); `app.dsn` is the command's DSN, for code that opens its own.
* Expected failures raise `PgsnapError(message, exit_code)`; a `psycopg.Error` escaping a
  command becomes `SQLSTATE: message`. Either way the CLI prints `error: <message>` on stderr,
  and, when the command was given `--json`, `{"error": ..., "exit_code": ...}` on stdout; the
  exit code comes from the one table in pgsnap/errors.py. Usage errors are one line too (exit 2).
  Never a traceback.
* Results go to stdout; long work reports through `pgsnap.progress` (a bar on a terminal,
  silent in pipes).
"""

import json
import sys

import click
import psycopg

import pgsnap
from pgsnap.cli import backfill, demo, explain, grant, migrations, populate, report, schedule, status
from pgsnap.cli.app import App
from pgsnap.errors import Exit, PgsnapError, describe_db_error, exit_code_of

COMMANDS = [
    migrations.migrate, migrations.rollback, migrations.migrations, migrations.adopt,
    populate.populate, populate.sync, populate.launch, backfill.backfill,
    report.check, status.status, report.verify, explain.explain, report.metrics,
    schedule.schedule, grant.grant, demo.demo,
]


class PgsnapGroup(click.Group):
    """Every failure leaves as one line on stderr (and a JSON object with `--json`)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        argv = list(sys.argv[1:] if args is None else args)
        try:
            code = super().main(argv, prog_name or "pgsnap", complete_var, standalone_mode=False, **extra)
            code = code if isinstance(code, int) else 0
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx else "pgsnap"
            code = _fail(f"{exc.format_message().rstrip('.')} (see `{where} --help`)", Exit.CANNOT_RUN, argv)
        except click.ClickException as exc:
            code = _fail(exc.format_message(), exc.exit_code, argv)
        except PgsnapError as exc:
            code = _fail(str(exc), exc.exit_code, argv)
        except psycopg.Error as exc:
            code = _fail(describe_db_error(exc), exit_code_of(exc), argv)
        except click.Abort:
            code = _fail("interrupted", Exit.INTERRUPTED, argv)
        if standalone_mode:
            sys.exit(code)
        return code


def _fail(message: str, code: int, argv: list[str]) -> int:
    if "--json" in argv:
        click.echo(json.dumps({"error": message, "exit_code": int(code)}))
    click.echo(f"error: {message}", err=True)
    return int(code)


@click.group(cls=PgsnapGroup, context_settings={"help_option_names": ["--help"]})
@click.option("--dsn", metavar="DSN",
              help="libpq connection string or URL (default: $PGSNAP_DSN, then the PG* variables)")
@click.option("-h", "--host", metavar="HOST", help="database server host or socket directory")
@click.option("-p", "--port", metavar="PORT", help="database server port")
@click.option("-U", "--username", "user", metavar="NAME", help="database user name")
@click.option("-d", "--dbname", metavar="DBNAME", help="database name (or a connection string, as psql)")
@click.version_option(pgsnap.__version__, prog_name="pgsnap")
@click.pass_context
def main(ctx: click.Context, dsn, host, port, user, dbname) -> None:
    """pgsnap: matching-tags snapshots kept by PostgreSQL itself.

    Connection options go before the command and combine as psql's do: -h/-p/-U/-d override
    that part of --dsn (or $PGSNAP_DSN); libpq takes the rest from the PG* variables.
    """
    ctx.obj = App(dsn, host, port, user, dbname)


for _command in COMMANDS:
    main.add_command(_command)
