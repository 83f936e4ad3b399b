"""CLI: backfill — the safety net by hand, with progress, a dry run and the legacy per-band mode."""

import click

from pgsnap import backfill as bf
from pgsnap.cli.app import pass_app
from pgsnap.errors import Exit, PgsnapError
from pgsnap.progress import progress


@click.command()
@click.option("--band", "band_id", type=int, help="Only NULL populations of this band (legacy mode).")
@click.option("--batch-size", type=click.IntRange(min=1), help="Rows per batch.")
@click.option("--max-batches", type=click.IntRange(min=1), help="Stop after this many batches (resumable).")
@click.option("--dry-run", is_flag=True, help="Say what would be filled and from where; write nothing.")
@pass_app
def backfill(app, band_id, batch_size, max_batches, dry_run):
    """Fill NULL matching_tags_snapshot values, parents before children."""
    batch_size = batch_size or 500
    conn = app.connect(allow_behind=True)  # must work mid-journey, before enforcement
    if conn.execute("SELECT to_regprocedure('pgsnap.backfill_batch(integer)') IS NULL").fetchone()[0]:
        raise PgsnapError("database is behind this pgsnap: run `pgsnap migrate`", Exit.CANNOT_RUN)
    if band_id is not None:
        if not conn.execute("SELECT 1 FROM public.target_bands WHERE id = %s", [band_id]).fetchone():
            raise PgsnapError(f"target band {band_id} does not exist", Exit.CANNOT_RUN)
        if dry_run:
            n = conn.execute("SELECT count(*) FROM public.target_populations"
                             " WHERE target_band_id = %s AND matching_tags_snapshot IS NULL",
                             [band_id]).fetchone()[0]
            click.echo(f"target_populations  built  {n}")
            return
        n = conn.execute("SELECT pgsnap.backfill_band(%s, %s)", [band_id, batch_size]).fetchone()[0]
        click.echo(f"band {band_id}: {n} target_populations filled")
        return
    if dry_run:
        rows = bf.plan(conn)
        if not rows:
            click.echo("nothing to fill")
        for table, source, n in rows:
            click.echo(f"{table:<19} {source:<11} {n}")
        return
    with progress(label="backfill") as bar:
        result = bf.run(conn, batch_size, max_batches, on_progress=lambda d, t: bar.update(d, t))
    click.echo(result.summary())


commands = [backfill]
