"""``python -m bench --scale tiny|small|medium|large [--out FILE] [--dsn DSN] [--seed N]``.

Runs on a private throwaway cluster unless ``--dsn`` names a server, where it creates (and
afterwards drops) its own database. Prints the table on stdout, progress on stderr, and writes
the full result as JSON (default ``bench/results/<scale>.json``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click
import psycopg
from psycopg import sql

from bench.scenarios import SCALES, run
from pgsnap.demo.cluster import EmbeddedCluster, ExternalServer
from pgsnap.errors import PgsnapError

RESULTS = Path(__file__).resolve().parent / "results"


@click.command()
@click.option("--scale", type=click.Choice(list(SCALES)), default="small", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="JSON result file [default: bench/results/<scale>.json]")
@click.option("--dsn", help="an existing server (any database on it) instead of the embedded cluster")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--keep-db", is_flag=True, help="with --dsn: leave the benchmark database behind")
def main(scale: str, out: Path | None, dsn: str | None, seed: int, keep_db: bool) -> None:
    """Measure pgsnap against the floor and the original's algorithm on one dataset."""
    def log(message: str) -> None:
        click.echo(f"[{time.strftime('%H:%M:%S')}] {message}", err=True)

    out = out or RESULTS / f"{scale}.json"
    try:
        with ExternalServer(dsn) if dsn else EmbeddedCluster() as server:
            dbname = f"pgsnap_bench_{scale}_{os.getpid()}"
            db_dsn = server.create_database(dbname)
            try:
                report = run(db_dsn, SCALES[scale], seed=seed, log=log)
            finally:
                if dsn and not keep_db:
                    _drop_database(server.dsn("postgres"), dbname)
    except PgsnapError as exc:
        raise click.ClickException(exc.message) from None
    except psycopg.Error as exc:
        first = next((ln for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        raise click.ClickException(f"database error: {first}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    click.echo(format_table(report))
    click.echo(f"\nwritten to {out}")


def _drop_database(maintenance_dsn: str, dbname: str) -> None:
    try:
        with psycopg.connect(maintenance_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))
    except psycopg.Error as exc:  # never hide the run's own outcome behind the clean-up's
        click.echo(f"warning: could not drop database {dbname}: {str(exc).strip().splitlines()[0]}",
                   err=True)


def format_table(report: dict) -> str:
    """The human summary: one line per figure, then the ratios and the machine."""
    f, r = report["figures"], report["ratios"]

    def line(label, fig, rows_key="rows", ratio=None, time_key="seconds"):
        if not fig or fig.get("status") != "ok":
            status = (fig or {}).get("status", "missing")
            detail = (fig or {}).get("reason") or (fig or {}).get("error") or ""
            return f"{label:<34} {status}: {detail}"[:120]
        seconds, rows = fig.get(time_key), fig.get(rows_key)
        per_s = f"{rows / seconds:>10,.0f}" if rows and seconds else f"{'-':>10}"
        ratio_s = f"{ratio:>8.2f}" if ratio is not None else f"{'':>8}"
        return f"{label:<34} {seconds:>9.2f} {rows if rows is not None else '-':>10} {per_s} {ratio_s}"

    out = [f"pgsnap bench, scale {report['scale']['name']} "
           f"({report['scale']['me_files']:,} me_files, {report['setup']['dataset']['me_file_tags']:,} tags, "
           f"{report['scale']['targets']} targets x 3 nested bands), seed {report['seed']}",
           "",
           f"{'figure':<34} {'time s':>9} {'rows':>10} {'rows/s':>10} {'ratio':>8}",
           line("(a) floor: memberships, no snapshot", f["a_floor"], ratio=1.0),
           line("(b) pgsnap.populate_target", f["b_populate"], ratio=r["b_over_a"]),
           line("(c) peer (original, Python)", f["c_peer"], ratio=r["c_over_b"]),
           line("(d) no-op refresh (rows written)", f["d_noop_refresh"], rows_key="rows_written",
                ratio=r["d_over_b"]),
           line("(f) backfill legacy NULLs", f["f_backfill"], ratio=r["f_over_fresh"]),
           line("(f) fresh populate, same targets", f["f_backfill"], rows_key="fresh_rows",
                time_key="fresh_seconds")]
    ratio_key = {"b_over_a": "(b)/(a)", "c_over_b": "(c)/(b)", "d_over_b": "(d)/(b)",
                 "f_over_fresh": "(f)/fresh per row"}
    c = f["c_peer"] or {}
    if c.get("equal_to_pgsnap"):
        eq = c["equal_to_pgsnap"]
        out.append(f"{'(b) vs (c) rows and snapshots':<34} {'equal' if eq['equal'] else 'DIFFERENT'} "
                   f"({eq['pgsnap_rows']} vs {eq['peer_rows']} rows, {eq['mismatches']} mismatches)")
    e = f["e_sync_latency"] or {}
    out.append("")
    if e.get("status") == "ok":
        out.append(f"(e) single tag change ({e['statements']} statements each, probe trait "
                   f"{e['probe_trait']!r})       p50 ms    p95 ms")
        for key, run_ in e["runs"].items():
            label = (f"{run_.get('maintained_targets', key)} maintained targets "
                     f"({run_.get('referencing_probe_pct', 0):.1f}% reference it)"
                     if key != "triggers_disabled" else "triggers disabled")
            out.append(f"    {label:<52} {run_['p50_ms']:>9.3f} {run_['p95_ms']:>9.3f}")
        out.append(f"    p95 ratio 1000 vs 100: {r['e_p95_1000_over_100']}")
    else:
        out.append(line("(e) sync latency", e))
    out.append("")
    out.append("ratios: " + ", ".join(f"{ratio_key.get(k, k)} = {v}" for k, v in r.items()
                                      if k in ratio_key))
    m = report["machine"]
    out.append(f"peak RSS (Python): {report['peak_rss_mb']} MB; elapsed {report['elapsed_s']} s")
    out.append(f"machine: {m['nproc']} cores, {m['cpu']}, {m['mem_gb']} GB, PostgreSQL {m['postgres']}; "
               f"load average {m['loadavg_start'][0]} at start, {m.get('loadavg_end', ['?'])[0]} at end")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
