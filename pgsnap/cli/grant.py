"""CLI: grant — the application role's privileges (sql/90_grants.sql, docs/operations.md).

`pgsnap grant --app-role NAME` runs `pgsnap.grant_app_role(NAME)` as the connecting role (the owner
of pgsnap's objects, or a superuser). Idempotent: the role ends with exactly the documented
privileges whatever it held before. Refusals come from the SQL as one line, exit 1
(`error: 42704: role "x" does not exist`).
"""

import click

from pgsnap.cli.app import App, pass_app


@click.command()
@click.option("--app-role", "role", required=True, metavar="NAME",
              help="The application's role (must exist, must not be a superuser or an owner).")
@pass_app
def grant(app: App, role: str) -> None:
    """Give the application role exactly what the application uses, nothing else."""
    conn = app.connect()
    conn.execute("SELECT pgsnap.grant_app_role(%s)", [role])
    click.echo(f'role "{role}" has the application privileges (and no others on pgsnap\'s objects)')

