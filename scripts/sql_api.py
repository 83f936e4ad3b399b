#!/usr/bin/env python3
"""docs/sql-api.md, the SQL API reference, generated from the database itself (`make sql-api`;
tests/test_sql_api.py fails when it is stale).

A fresh database taken through `pgsnap migrate`; every public routine and view of schema pgsnap
(names without a leading underscore) with its signature, result and `COMMENT ON`. The comments
in sql/ are the one source of the reference: it cannot drift from the code.

    scripts/sql_api.py            rebuild docs/sql-api.md on a throwaway cluster
    scripts/sql_api.py --check    exit 1 with a unified diff when the file is stale
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `pgsnap` importable from the checkout
    sys.path.insert(0, str(ROOT))

from pgsnap import deploy  # noqa: E402
from pgsnap.demo.cluster import EmbeddedCluster  # noqa: E402

API_FILE = ROOT / "docs" / "sql-api.md"
REFRESH = "make sql-api"

# Sections, in order, and the routines each holds; anything else public lands in the last.
SECTIONS = {
    "Snapshots and membership": ["build_snapshot", "band_for", "snapshots", "memberships",
                                 "inherited_snapshot", "snapshot_shape_ok"],
    "Populate": ["populate_target", "populate_target_in_transaction", "stale_targets",
                 "repopulate_stale_targets"],
    "Sync": ["sync_me_file"],
    "Offers": ["launch_campaign"],
    "Backfill": ["backfill_missing_snapshots", "backfill_batch", "backfill_plan", "backfill_band",
                 "snapshot_health"],
    "Checks and reports": ["check_invariants", "verify_target", "explain", "band_counts",
                           "populating_targets", "metrics"],
    "Views": ["catalogue_bands", "catalogue_band_traits"],
    "Roles": ["grant_app_role"],
    "Other": [],
}

ROUTINES = """
SELECT p.proname, p.prokind, pg_catalog.pg_get_function_arguments(p.oid),
       pg_catalog.pg_get_function_result(p.oid), coalesce(d.description, '')
  FROM pg_catalog.pg_proc p
  LEFT JOIN pg_catalog.pg_description d ON d.objoid = p.oid AND d.classoid = 'pg_proc'::regclass
 WHERE p.pronamespace = 'pgsnap'::regnamespace AND p.proname !~ '^_'
 ORDER BY p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid)
"""
VIEWS = """
SELECT c.relname, coalesce(d.description, ''),
       (SELECT string_agg(a.attname || ' ' || pg_catalog.format_type(a.atttypid, a.atttypmod), ', '
                          ORDER BY a.attnum)
          FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped)
  FROM pg_catalog.pg_class c
  LEFT JOIN pg_catalog.pg_description d ON d.objoid = c.oid AND d.classoid = 'pg_class'::regclass
                                        AND d.objsubid = 0
 WHERE c.relnamespace = 'pgsnap'::regnamespace AND c.relkind = 'v'
 ORDER BY c.relname
"""

HEADER = f"""\
# pgsnap SQL API

Generated from the database by `scripts/sql_api.py` (`{REFRESH}`) from the routines' own
`COMMENT ON`; do not edit: tests/test_sql_api.py fails when it is stale. The rules these
routines follow are in [rules.md](rules.md); how and where to call the procedures (transaction
blocks, protocols, what waits for what) in [operations.md](operations.md#calling-the-procedures).
Everything lives in schema `pgsnap`; routines whose names start with `_` are internal.

Procedures that commit per batch (`CALL`) report progress as NOTICEs whose DETAIL is one JSON
object with an `"event"` key: `batch` after each committed batch, `done` at the end (the run's
summary).
"""


def render(conn: psycopg.Connection) -> str:
    found: dict[str, list[str]] = {}
    for name, kind, args, result, comment in conn.execute(ROUTINES):
        call = f"CALL pgsnap.{name}({args})" if kind == "p" else f"pgsnap.{name}({args}) → {result}"
        found.setdefault(name, []).append(f"### `{name}`\n\n```sql\n{call}\n```\n\n{comment}\n")
    for name, comment, columns in conn.execute(VIEWS):
        found.setdefault(name, []).append(f"### `{name}` (view)\n\n```\n{columns}\n```\n\n{comment}\n")
    listed = {n for names in SECTIONS.values() for n in names}
    out = [HEADER]
    for section, names in SECTIONS.items():
        names = names if section != "Other" else sorted(set(found) - listed)
        entries = [entry for n in names for entry in found.get(n, [])]
        if entries:
            out.append(f"## {section}\n")
            out.extend(entries)
    return "\n".join(out).rstrip() + "\n"


def generate(dsn: str | None = None) -> str:
    if dsn is not None:
        deploy.migrate(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            return render(conn)
    with EmbeddedCluster() as pg:
        return generate(pg.create_database("pgsnap_sql_api"))


def diff(old: str, new: str) -> str:
    return "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True),
                                        str(API_FILE.relative_to(ROOT)), "fresh"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--dsn", help="an empty database to migrate and read")
    args = parser.parse_args()
    fresh = generate(args.dsn)
    if args.check:
        old = API_FILE.read_text(encoding="utf-8") if API_FILE.exists() else ""
        if old != fresh:
            sys.stdout.write(diff(old, fresh))
            return 1
        return 0
    API_FILE.write_text(fresh, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
