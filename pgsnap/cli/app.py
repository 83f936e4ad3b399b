"""What every command receives (`@pass_app`): the connection settings and a checked connect()."""

from dataclasses import dataclass

import click
import psycopg

from pgsnap import db, deploy, resources
from pgsnap.config import resolve_dsn


@dataclass
class App:
    """The global options (`--dsn`, `-h`, `-p`, `-U`, `-d`), resolved per command."""

    dsn_option: str | None = None
    host: str | None = None
    port: str | None = None
    user: str | None = None
    dbname: str | None = None

    @property
    def dsn(self) -> str:
        """The DSN of this command, with `fallback_application_name=pgsnap <command>`.

        Every command needs it, so this is also where a pgsnap installed without its
        migrations fails (exit 2), before it touches any database."""
        resources.migration_files()
        ctx = click.get_current_context(silent=True)
        name = ctx.command_path if ctx is not None else "pgsnap"
        return resolve_dsn(self.dsn_option, host=self.host, port=self.port, user=self.user,
                           dbname=self.dbname, application_name=name)

    def connect(self, check: bool = True, allow_behind: bool = False, autocommit: bool = True
                ) -> psycopg.Connection:
        """An autocommit connection closed when the command ends. `check`: refuse (exit 2) a
        database behind or ahead of this pgsnap; `allow_behind`: accept one with pending
        migrations (commands that must work mid-journey) but never one that is ahead."""
        conn = db.connect(self.dsn, autocommit=autocommit)
        click.get_current_context().call_on_close(conn.close)
        if check:
            deploy.check_current(conn, allow_behind=allow_behind)
        return conn


pass_app = click.make_pass_decorator(App)
