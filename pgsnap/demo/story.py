"""`pgsnap demo`: the whole story on generated data, from a legacy database to `check: healthy`.

Every step is a call into pgsnap's public surface (migrate, `CALL pgsnap.populate_target`,
launch_campaign, the triggers, `CALL pgsnap.backfill_missing_snapshots`, check_invariants);
this module only generates the data, times the steps and reports.
"""

import json
import random
import statistics
import time
from collections.abc import Callable

import click
import psycopg
from psycopg import sql

from pgsnap import db, deploy, procedures
from pgsnap.demo import datagen
from pgsnap.health import SNAPSHOT_TABLES, snapshot_health
from pgsnap.progress import progress

BASELINE = "0001.baseline-schema"


class Story:
    def __init__(self, echo: Callable[[str], None]):
        self.echo = echo
        self.steps: list[tuple[str, float]] = []

    def step(self, title: str):
        story = self

        class _Step:
            def __enter__(self):
                story.echo(f"== {title}")
                self.t0 = time.monotonic()

            def __exit__(self, exc_type, *_):
                if exc_type is None:
                    story.steps.append((title, time.monotonic() - self.t0))

        return _Step()


def tag_change_burst(conn: psycopg.Connection, n: int, seed: int) -> list[float]:
    """`n` single-statement tag changes (each its own transaction, sync at commit); latencies ms."""
    rng = random.Random(seed)
    me_files = [r[0] for r in conn.execute(
        "SELECT DISTINCT me_file_id FROM public.target_populations ORDER BY 1 LIMIT 2000")]
    zips = [r[0] for r in conn.execute(
        "SELECT c.id FROM public.traits c JOIN public.traits p ON p.id = c.parent_trait_id"
        " WHERE p.trait_name = 'Home Zip Code' ORDER BY c.id")]
    hobbies = [r[0] for r in conn.execute(
        "SELECT c.id FROM public.traits c JOIN public.traits p ON p.id = c.parent_trait_id"
        " WHERE p.trait_name = 'Hobbies' ORDER BY c.id")]
    latencies = []
    for _ in range(n):
        me_file = rng.choice(me_files)
        kind = rng.random()
        t0 = time.perf_counter()
        if kind < 0.4:      # moved house: the zip tag points at another zip
            conn.execute("UPDATE public.me_file_tags t SET trait_id = %s, tag_value = c.trait_name"
                         "  FROM public.traits c WHERE c.id = %s AND t.me_file_id = %s"
                         "   AND t.trait_id = ANY (%s) AND NOT EXISTS (SELECT 1 FROM public.me_file_tags x"
                         "   WHERE x.me_file_id = t.me_file_id AND x.trait_id = c.id)",
                         [z := rng.choice(zips), z, me_file, zips])
        elif kind < 0.7:    # a new hobby
            conn.execute("INSERT INTO public.me_file_tags (me_file_id, trait_id, tag_value)"
                         " SELECT %s, id, trait_name FROM public.traits WHERE id = %s"
                         " ON CONFLICT (me_file_id, trait_id) DO NOTHING",
                         [me_file, rng.choice(hobbies)])
        else:               # a hobby dropped
            conn.execute("DELETE FROM public.me_file_tags WHERE me_file_id = %s AND trait_id = %s",
                         [me_file, rng.choice(hobbies)])
        latencies.append((time.perf_counter() - t0) * 1000)
    return latencies


def run(dsn: str, me_files: int | None = None, seed: int | None = None,
        echo: Callable[[str], None] = click.echo) -> dict:
    """Tell the story on the (empty) database at `dsn`; returns the report as a dict."""
    me_files = me_files or datagen.DEFAULT_ME_FILES
    seed = 1 if seed is None else seed
    story = Story(echo)
    report: dict = {"me_files": me_files, "seed": seed}

    with story.step(f"legacy database: schema {BASELINE} and {me_files} generated me_files"):
        deploy.migrate(dsn, to=BASELINE)
        with db.connect(dsn) as conn:
            data = datagen.generate(conn, me_files=me_files, seed=seed)
            legacy = datagen.generate_legacy_rows(conn, data.target_ids[: max(1, len(data.target_ids) // 2)],
                                                  seed=seed)
            report["nulls_before"] = snapshot_health(conn)
    for t, (nulls, rows) in report["nulls_before"].items():
        echo(f"   {t:<19} {rows:>9} rows, {nulls:>8} NULL snapshots (legacy)")
    report["legacy"] = legacy

    with story.step("pgsnap migrate: NOT VALID checks, backfill, VALIDATE, SET NOT NULL"):
        with progress(label="backfill") as bar:
            result = deploy.migrate(dsn, on_progress=lambda done, total: bar.update(done, total))
        echo(f"   applied {len(result.applied)} migrations; backfilled "
             + ", ".join(f"{t} {n}" for t, n in result.backfilled.items()))

    with db.connect(dsn) as conn:
        with story.step(f"populate {len(data.target_ids)} targets (inline snapshots)"):
            t0, written = time.monotonic(), 0
            for target_id in data.target_ids:
                with progress(label=f"target {target_id}") as bar:
                    r = procedures.populate(conn, target_id, on_event=lambda e: (
                        e["event"] == "batch" and bar.update(e["batch"], e["batches"])))
                written += r["inserted"] + r["moved"] + r["refreshed"]
                echo(f"   {procedures.populate_summary(r)}")
            seconds = time.monotonic() - t0
            report["populate_rows_per_s"] = round(written / seconds) if seconds else None

        with story.step("launch every campaign (offers copy their population's snapshot)"):
            offers = sum(conn.execute("SELECT pgsnap.launch_campaign(id) FROM public.campaigns"
                                      " ORDER BY id").fetchall(), ())
            echo(f"   {sum(offers)} offers created")

        with story.step("record ad_events (each inherits its offer's snapshot)"):
            n = conn.execute("INSERT INTO public.ad_events (offer_id, campaign_id, me_file_id,"
                             " target_band_id, event_type, amount)"
                             " SELECT id, campaign_id, me_file_id, target_band_id, 'banner_tap', offer_amt"
                             "   FROM public.offers WHERE id % 7 = 0").rowcount
            echo(f"   {n} ad_events recorded")

        with story.step("500 tag changes through the triggers (sync at commit)"):
            lat = tag_change_burst(conn, 500, seed)
            q = statistics.quantiles(lat, n=100)
            report["sync_ms"] = {"p50": round(q[49], 2), "p95": round(q[94], 2)}
            echo(f"   sync latency per tag change: p50 {q[49]:.2f} ms, p95 {q[94]:.2f} ms")

        with story.step("the hourly backfill job, run once"):
            echo(f"   {procedures.backfill_summary(procedures.backfill(conn))}")

        with story.step("pgsnap check"):
            checks = conn.execute("SELECT check_name, violations FROM pgsnap.check_invariants()"
                                  " ORDER BY check_name").fetchall()
            bad = [(name, v) for name, v in checks if v]
            report["nulls_after"] = snapshot_health(conn)
            sample = conn.execute(
                "SELECT tp.target_id, tp.target_band_id, tp.me_file_id, tp.matching_tags_snapshot"
                "  FROM public.target_populations tp"
                " WHERE jsonb_array_length(tp.matching_tags_snapshot -> 'tags') >= 3"
                " ORDER BY tp.id LIMIT 1").fetchone()
            counts = {t: conn.execute(sql.SQL("SELECT count(*) FROM public.{}").format(
                sql.Identifier(t))).fetchone()[0] for t in ("me_files", "me_file_tags", *SNAPSHOT_TABLES)}

    echo("")
    echo("pgsnap demo report")
    shown = ("me_files", "me_file_tags", *SNAPSHOT_TABLES)
    echo("  rows       " + ", ".join(f"{t} {counts.get(t, 0)}" for t in shown))
    for t in SNAPSHOT_TABLES:
        before, after = report["nulls_before"][t][0], report["nulls_after"][t][0]
        echo(f"  NULLs      {t:<19} before {before:>8}   after {after}")
    echo(f"  populate   {report['populate_rows_per_s']} rows/s")
    echo(f"  sync       p50 {report['sync_ms']['p50']} ms, p95 {report['sync_ms']['p95']} ms per tag change")
    for title, seconds in story.steps:
        echo(f"  {seconds:7.2f}s  {title}")
    if sample:
        echo(f"  sample snapshot (target {sample[0]}, band {sample[1]}, me_file {sample[2]}):")
        echo('    {"tags": [')
        entries = sample[3]["tags"]
        for i, entry in enumerate(entries):
            echo(f"        {json.dumps(entry)}" + ("," if i < len(entries) - 1 else ""))
        echo("    ]}")
    report["violations"] = dict(bad)
    report["healthy"] = not bad
    echo("check: healthy" if not bad else "check: " + ", ".join(f"{n} {v}" for n, v in bad))
    return report
