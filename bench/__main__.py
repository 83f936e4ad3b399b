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
    """The human summary: one line per figure, then the ratios against their aims and the machine."""
    f, r = report["figures"], report["ratios"]

    def ok(name):
        fig = f.get(name) or {}
        return fig if fig.get("status") == "ok" else None

    def line(label, fig, rows_key="rows", ratio=None, time_key="seconds"):
        if not fig or fig.get("status") != "ok":
            status = (fig or {}).get("status", "missing")
            detail = (fig or {}).get("reason") or (fig or {}).get("error") or ""
            return f"{label:<40} {status}: {detail}"[:120]
        seconds, rows = fig.get(time_key), fig.get(rows_key)
        per_s = f"{rows / seconds:>10,.0f}" if rows and seconds else f"{'-':>10}"
        ratio_s = f"{ratio:>8.2f}" if ratio is not None else f"{'':>8}"
        return f"{label:<40} {seconds:>9.2f} {rows if rows is not None else '-':>10} {per_s} {ratio_s}"

    def latency(label, fig):
        if not fig:
            return f"    {label:<52} -"
        return f"    {label:<52} {fig['p50_ms']:>9.3f} {fig['p95_ms']:>9.3f}"

    s = report["scale"]
    out = [f"pgsnap bench, scale {s['name']} ({s['me_files']:,} me_files, "
           f"{report['setup']['dataset']['me_file_tags']:,} tags, {s['targets']} targets x 3 nested bands), "
           f"seed {report['seed']}",
           "",
           f"{'figure':<40} {'time s':>9} {'rows':>10} {'rows/s':>10} {'ratio':>8}",
           line("(a) floor: memberships, no snapshot", f["a_floor"], ratio=1.0),
           line("(a') the same, contract's checks", f["a_checked"], ratio=r["a_checked_over_a"]),
           line("(b) pgsnap.populate_target", f["b_populate"], ratio=r["b_over_a"]),
           line(f"(c) peer (original), {(f['c_peer'] or {}).get('targets', '?')} targets", f["c_peer"],
                ratio=r["c_over_b"]),
           line("(d) no-op refresh (rows written)", f["d_noop_refresh"], rows_key="rows_written",
                ratio=r["d_over_b"]),
           line("(f) backfill legacy NULLs", f["f_backfill"], ratio=r["f_over_fresh"]),
           line("(f) fresh populate, same targets", f["f_backfill"], rows_key="fresh_rows",
                time_key="fresh_seconds"),
           line("(g) re-populate after a rename (written)", f["g_rename"], rows_key="rows_written"),
           line("copy of a twin target", f["copy_vs_scan"], ratio=r["copy_over_scan"])]
    c = ok("c_peer")
    if c and c.get("equal_to_pgsnap"):
        eq = c["equal_to_pgsnap"]
        out.append(f"{'(b) vs (c) rows and snapshots':<40} {'equal' if eq['equal'] else 'DIFFERENT'} "
                   f"({eq['pgsnap_rows']} vs {eq['peer_rows']} rows, {eq['mismatches']} mismatches)")
    g = ok("g_rename")
    if g:
        out.append(f"{'(g) rows rewritten = snapshots changed':<40} {g['written_equals_changed']} "
                   f"({g['rows_written']} written, {g['rows_with_changed_snapshot']} changed, "
                   f"{g['stale_targets']} stale targets)")
    out += ["", f"(e) single tag change {'':<33} p50 ms    p95 ms"]
    e = ok("e_sync_latency")
    if e:
        for key, run_ in e["runs"].items():
            label = (f"{run_['maintained_targets']} maintained targets ({run_['referencing_probe_pct']:.1f}% "
                     f"use the trait)" if key != "triggers_disabled" else "triggers disabled")
            out.append(latency(label, run_))
    else:
        out.append(line("(e) sync latency", f["e_sync_latency"]))
    same, wide = ok("e_same_connection"), ok("e_wide_targets")
    out.append(latency("on the connection that ran (b)", same))
    fewest = min((wide or {}).get("rows_per_target", {"": 0}).values())
    out.append(latency(f"3 wide targets using it, {fewest:,}+ rows each", wide))
    h = ok("h_throughput")
    if h:
        out += ["", "(h) tag writes per second          triggers on   triggers off   on/off"]
        for writers, run_ in h["runs"].items():
            out.append(f"    {writers} writer(s) {'':<22} {run_['triggers_on']['statements_per_s']:>11,.0f} "
                       f"{run_['triggers_off']['statements_per_s']:>14,.0f} {run_['on_over_off']:>8.2f}")
    k = ok("counts_churn")
    if k:
        out += ["", f"counts: 8 writers on one band, p95 {k['without_reader']['p95_ms']:.3f} ms without a "
                    f"band_counts reader, {k['with_reader']['p95_ms']:.3f} ms with one "
                    f"({k['with_reader']['band_counts_reads']} reads); "
                    f"{k['count_mismatches']} of {k['bands_checked']} bands differ from count(*)"]
    out.append("")
    aims = [("(b)/(a)", "b_over_a", "<= 2.0"), ("(c)/(b)", "c_over_b", ">= 5"),
            ("(d)/(b)", "d_over_b", "<= 0.25"), ("(e) p95 1000/100", "e_p95_1000_over_100", "<= 1.5"),
            ("(f)/fresh per row", "f_over_fresh", "<= 1.2"),
            ("(h) on/off, 8 writers", "h_on_over_off_8", ">= 0.3"),
            ("counts p95 with/without reader", "counts_p95_with_over_without", "<= 1.2"),
            ("copy/scan", "copy_over_scan", "<= 0.25")]
    out.append("ratios (aim): " + "; ".join(f"{label} = {r.get(key)} ({aim})" for label, key, aim in aims))
    out.append(f"(b)/(a) can be no lower than (a')/(a) = {r.get('a_checked_over_a')}: the contract's checks "
               f"on the rows alone, with no snapshot built")
    m = report["machine"]
    peer_rss = (f["c_peer"] or {}).get("peer_peak_rss_mb")
    out.append(f"peak RSS (Python): {report['peak_rss_mb']} MB"
               + (f" (the peer, in a process of its own: {peer_rss} MB)" if peer_rss else "")
               + f"; elapsed {report['elapsed_s']} s")
    out.append(f"machine: {m['nproc']} cores, {m['cpu']}, {m['mem_gb']} GB, PostgreSQL {m['postgres']}; "
               f"load average {m['loadavg_start'][0]} at start, {m.get('loadavg_end', ['?'])[0]} at end")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
