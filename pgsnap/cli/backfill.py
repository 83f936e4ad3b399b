"""CLI: backfill — the safety net by hand (pgsnap/procedures.py), a dry run, the per-band mode."""

import click

from pgsnap import db, procedures
from pgsnap.cli.app import App, pass_app
from pgsnap.cli.output import echo_json, json_option, table
from pgsnap.errors import Exit, PgsnapError
from pgsnap.progress import progress


@click.command()
@click.option("--band", "band_id", type=int, help="Only NULL populations of this band (legacy mode).")
@click.option("--batch-size", type=click.IntRange(min=1), help="Rows per batch (default: the procedure's).")
@click.option("--max-batches", type=click.IntRange(min=1), help="Stop after this many batches (resumable).")
@click.option("--dry-run", is_flag=True, help="Say what would be filled and from where; write nothing.")
@json_option
@pass_app
def backfill(app: App, band_id, batch_size, max_batches, dry_run, as_json):
    """Fill NULL matching_tags_snapshot values, parents before children."""
    conn = app.connect(allow_behind=True)  # must work mid-journey, before enforcement
    if not db.routine_exists(conn, "pgsnap.backfill_plan()"):
        raise PgsnapError("database is behind this pgsnap: run `pgsnap migrate`", Exit.CANNOT_RUN)
    if band_id is not None:
        _band(conn, band_id, batch_size, dry_run, as_json)
    elif dry_run:
        rows = conn.execute("SELECT table_name, source, rows FROM pgsnap.backfill_plan()"
                            " WHERE rows > 0 ORDER BY 1, 2").fetchall()
        if as_json:
            echo_json([{"table": t, "source": s, "rows": n} for t, s, n in rows])
        else:
            click.echo("\n".join(table(rows)) if rows else "nothing to fill")
    else:
        with progress(label="backfill") as bar:
            summary = procedures.backfill(
                conn, batch_size, max_batches,
                on_event=lambda e: e["event"] == "batch" and bar.update(e["done"], e["total"]))
        echo_json(summary) if as_json else click.echo(procedures.backfill_summary(summary))


def _band(conn, band_id: int, batch_size: int | None, dry_run: bool, as_json: bool) -> None:
    if not conn.execute("SELECT 1 FROM public.target_bands WHERE id = %s", [band_id]).fetchone():
        raise PgsnapError(f"target band {band_id} does not exist", Exit.CANNOT_RUN)
    if dry_run:
        n = conn.execute("SELECT count(*) FROM public.target_populations"
                         " WHERE target_band_id = %s AND matching_tags_snapshot IS NULL",
                         [band_id]).fetchone()[0]
        echo_json([{"table": "target_populations", "source": "built", "rows": n}]) if as_json else \
            click.echo(f"target_populations  built  {n}")
        return
    if batch_size is None:
        n = conn.execute("SELECT pgsnap.backfill_band(%s)", [band_id]).fetchone()[0]
    else:
        n = conn.execute("SELECT pgsnap.backfill_band(%s, %s)", [band_id, batch_size]).fetchone()[0]
    echo_json({"band": band_id, "target_populations": n}) if as_json else \
        click.echo(f"band {band_id}: {n} target_populations filled")
