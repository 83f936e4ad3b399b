"""CLI: populate, sync, launch — thin calls into the SQL API."""

import json

import click

from pgsnap.cli.app import App, pass_app
from pgsnap.errors import Exit, PgsnapError
from pgsnap.populate import populate as populate_target
from pgsnap.progress import progress


@click.command()
@click.argument("target_ids", nargs=-1, type=int)
@click.option("--all", "all_targets", is_flag=True, help="Every target, in id order.")
@click.option("--batch-size", type=click.IntRange(min=1), help="me_files per batch.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per target on stdout.")
@pass_app
def populate(app: App, target_ids, all_targets, batch_size, as_json):
    """Bring targets' populations (bands and snapshots) to the membership rule."""
    if bool(target_ids) == all_targets:
        raise PgsnapError("give TARGET_ID... or --all (not both)", Exit.CANNOT_RUN)
    conn = app.connect()
    if all_targets:
        target_ids = [r[0] for r in conn.execute("SELECT id FROM public.targets ORDER BY id")]
    for target_id in target_ids:
        with progress(label=f"target {target_id}") as bar:
            result = populate_target(conn, target_id, batch_size or 500,
                                     on_batch=lambda done, total: bar.update(done, total))
        click.echo(json.dumps(result.as_dict()) if as_json else result.summary())


@click.command()
@click.argument("me_file_ids", nargs=-1, type=int, required=True)
@pass_app
def sync(app: App, me_file_ids):
    """Recompute me_files' bands and snapshots in every maintained target."""
    conn = app.connect()
    for me_file_id in me_file_ids:
        changed = conn.execute("SELECT pgsnap.sync_me_file(%s)", [me_file_id]).fetchone()[0]
        click.echo(f"me_file {me_file_id}: {changed} population rows changed")


@click.command()
@click.argument("campaign_id", type=int)
@pass_app
def launch(app: App, campaign_id):
    """Create the campaign's offers from its populated target (idempotent)."""
    conn = app.connect()
    created = conn.execute("SELECT pgsnap.launch_campaign(%s)", [campaign_id]).fetchone()[0]
    click.echo(f"campaign {campaign_id}: {created} offers created")
