"""CLI: populate, sync, launch — thin calls into the SQL API (populate: pgsnap/procedures.py)."""

import json

import click

from pgsnap import procedures
from pgsnap.cli.app import App, pass_app
from pgsnap.errors import Exit, PgsnapError
from pgsnap.progress import progress


@click.command()
@click.argument("target_ids", nargs=-1, type=int)
@click.option("--all", "all_targets", is_flag=True, help="Every target, in id order.")
@click.option("--stale", is_flag=True, help="The targets pgsnap.stale_targets() lists (catalogue edits).")
@click.option("--batch-size", type=click.IntRange(min=1),
              help="me_files per batch (default: the procedure's).")
@click.option("--json", "as_json", is_flag=True,
              help="Each target's summary (the procedure's final event) as one JSON object per line.")
@pass_app
def populate(app: App, target_ids, all_targets, stale, batch_size, as_json):
    """Bring targets' populations (bands and snapshots) to the membership rule."""
    if (bool(target_ids) + all_targets + stale) != 1:
        raise PgsnapError("give TARGET_ID..., --all or --stale (one of them)", Exit.CANNOT_RUN)
    conn = app.connect()
    if all_targets:
        target_ids = [r[0] for r in conn.execute("SELECT id FROM public.targets ORDER BY id")]
    elif stale:
        target_ids = [r[0] for r in conn.execute(
            "SELECT DISTINCT target_id FROM pgsnap.stale_targets() ORDER BY 1")]
        if not target_ids and not as_json:
            click.echo("no stale targets")
    for target_id in target_ids:
        with progress(label=f"target {target_id}") as bar:
            summary = procedures.populate(
                conn, target_id, batch_size,
                on_event=lambda e: e["event"] == "batch" and bar.update(e["batch"], e["batches"]))
        click.echo(json.dumps(summary) if as_json else procedures.populate_summary(summary))


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
