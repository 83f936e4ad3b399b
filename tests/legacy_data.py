"""Legacy (pre-pgsnap) rows for the NOT NULL tests: test_backfill, test_journey, test_launch.

A legacy database is one at `0001.baseline-schema`: snapshot columns are nullable and nothing
fills them. Rows are inserted there with explicit ids, then `deploy.migrate(dsn, backfill=False)`
takes the database to the middle of the journey (0004's NOT VALID checks added, `sql/` deployed,
no enforcement yet): the state in which the backfill has work to do.

The expected value of every snapshot follows the backfill rules of docs/rules.md ("Offers and
ad_events", "Backfill"), computed here from `pgsnap.build_snapshot` and the rows themselves
(`expected_snapshots`).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from pgsnap import deploy
from tests.helpers import execute, rows, value

SNAPSHOT_TABLES = ("target_populations", "offers", "ad_events")
MISSING = object()  # "no snapshot argument": SQL NULL


def jsonb(snapshot: Any = MISSING) -> Jsonb | None:
    """MISSING -> SQL NULL; anything else (even None, i.e. JSON null) -> a jsonb value."""
    return None if snapshot is MISSING else Jsonb(snapshot)


# -- rows --------------------------------------------------------------------------------------
def add_population(conn, id: int, band: int, me_file: int, snapshot: Any = MISSING,
                   updated_at: str | None = None) -> int:
    execute(conn,
            "INSERT INTO target_populations (id, target_band_id, me_file_id, matching_tags_snapshot,"
            " created_at, updated_at)"
            " VALUES (%s, %s, %s, %s, coalesce(%s::timestamptz, now()), coalesce(%s::timestamptz, now()))",
            (id, band, me_file, jsonb(snapshot), updated_at, updated_at))
    return id


def add_campaign(conn, id: int, target: int, title: str | None = None) -> int:
    execute(conn, "INSERT INTO campaigns (id, target_id, title) VALUES (%s, %s, %s)",
            (id, target, title or f"campaign {id}"))
    return id


def add_bid(conn, campaign: int, band: int, amount: str) -> None:
    execute(conn, "INSERT INTO bids (campaign_id, target_band_id, offer_amt) VALUES (%s, %s, %s)",
            (campaign, band, amount))


def add_offer(conn, id: int, campaign: int, me_file: int, band: int, snapshot: Any = MISSING,
              amount: str = "1.00") -> int:
    execute(conn,
            "INSERT INTO offers (id, campaign_id, me_file_id, target_band_id, offer_amt,"
            " matching_tags_snapshot) VALUES (%s, %s, %s, %s, %s, %s)",
            (id, campaign, me_file, band, amount, jsonb(snapshot)))
    return id


def add_ad_event(conn, id: int, offer: int | None, me_file: int | None, band: int | None,
                 snapshot: Any = MISSING, campaign: int | None = None, event_type: str = "banner_tap") -> int:
    execute(conn,
            "INSERT INTO ad_events (id, offer_id, campaign_id, me_file_id, target_band_id, event_type,"
            " matching_tags_snapshot) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (id, offer, campaign, me_file, band, event_type, jsonb(snapshot)))
    return id


def set_populated(conn, target: int, at: str = "2025-12-01 00:00:00+00") -> None:
    """A legacy target that the original application had populated."""
    execute(conn, "UPDATE targets SET population_status = 'populated', last_populated_at = %s WHERE id = %s",
            (at, target))


# -- reading back ------------------------------------------------------------------------------
def snapshots(conn, table: str) -> dict[int, Any]:
    """{id: matching_tags_snapshot} of every row of `table`."""
    return dict(rows(conn, f"SELECT id, matching_tags_snapshot FROM {table}"))


def row_xmins(conn, table: str) -> dict[int, str]:
    """{id: xmin}: a row that was not written keeps its xmin."""
    return dict(rows(conn, f"SELECT id, xmin::text FROM {table}"))


def null_counts(conn) -> dict[str, int]:
    return {name: int(n) for name, n, _total in rows(conn, "SELECT * FROM pgsnap.snapshot_health()")}


def runs(conn) -> list[tuple]:
    """(status, batches, target_populations, offers, ad_events, error) of every backfill run, in order."""
    return rows(conn, "SELECT status, batches, target_populations, offers, ad_events, error"
                      " FROM pgsnap.backfill_runs ORDER BY id")


def expected_snapshots(conn, legacy: dict[str, dict[int, Any]]) -> dict[str, dict[int, Any]]:
    """What the backfill rules say every row of the three tables holds afterwards.

    `legacy` is {table: {id: snapshot or None}} as read *after* 0004 (malformed ones already NULL).
    population: kept when non-NULL, else built; offer: kept, else its population's (final) value,
    else built; ad_event: kept, else its offer's (final), else its population's (final), else built.
    """
    def built(me_file, band):
        return value(conn, "SELECT pgsnap.build_snapshot(%s::bigint, %s::bigint)", (me_file, band))

    pops = {pid: (band, me_file) for pid, band, me_file in
            rows(conn, "SELECT id, target_band_id, me_file_id FROM target_populations")}
    tp = {pid: legacy["target_populations"][pid] if legacy["target_populations"][pid] is not None
          else built(me_file, band) for pid, (band, me_file) in pops.items()}
    by_pair = {(me_file, band): tp[pid] for pid, (band, me_file) in pops.items()}

    offers = {}
    for oid, me_file, band in rows(conn, "SELECT id, me_file_id, target_band_id FROM offers"):
        snap = legacy["offers"][oid]
        if snap is None:
            snap = by_pair.get((me_file, band))
        offers[oid] = snap if snap is not None else built(me_file, band)

    events = {}
    for eid, offer, me_file, band in rows(conn, "SELECT id, offer_id, me_file_id, target_band_id"
                                                " FROM ad_events"):
        snap = legacy["ad_events"][eid]
        if snap is None and offer is not None:
            snap = offers.get(offer)
        if snap is None:
            snap = by_pair.get((me_file, band))
        events[eid] = snap if snap is not None else built(me_file, band)
    return {"target_populations": tp, "offers": offers, "ad_events": events}


def attnotnull(conn) -> dict[str, bool]:
    return dict(rows(conn,
                     "SELECT c.relname, a.attnotnull FROM pg_attribute a"
                     " JOIN pg_class c ON c.oid = a.attrelid WHERE c.relname = ANY(%s)"
                     " AND c.relnamespace = 'public'::regnamespace"
                     " AND a.attname = 'matching_tags_snapshot'", (list(SNAPSHOT_TABLES),)))


def snapshot_constraints(conn) -> dict[str, bool]:
    """{constraint name: convalidated} of the snapshot CHECKs on the three tables."""
    return dict(rows(conn,
                     "SELECT conname, convalidated FROM pg_constraint"
                     " WHERE conrelid = ANY(%s::regclass[]) AND contype = 'c'"
                     " AND conname LIKE '%%snapshot%%'",
                     ([f"public.{t}" for t in SNAPSHOT_TABLES],)))


def applied(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as c:
        return list(deploy.applied_migrations(c))


def migration_ids() -> list[str]:
    return [m.id for m in deploy.read_migrations()]


def journey_order() -> list[str]:
    """Every migration in the order `pgsnap migrate` applies them to an empty database: the plain
    ones first, then the enforcement steps."""
    return [m.id for m in deploy.execution_order(list(deploy.read_migrations()), set())]


def enforcement_ids() -> list[str]:
    return [m.id for m in deploy.read_migrations() if deploy.is_enforcement(m)]


def alone_ids() -> list[str]:
    """Migrations that run without a transaction (`-- transactional: false`): each is a step of
    its own, with no sql/ deploy."""
    migrations = deploy.read_migrations()
    for m in migrations:
        m.load()
    return [m.id for m in migrations if not m.use_transactions]


# -- the legacy journey's data set -------------------------------------------------------------
# Worked example of docs/rules.md (tests.helpers): T1 = B1 {G10,G20,G30} bullseye, B2 {G10,G20},
# B3 {G10}; M1 -> B1, M2 -> B2, M3 -> B3, M4 (male) in no band; M5 like M2 with a blank zip value.
STALE = {"tags": [[1, "Sex (Biological)", 1, [[3, "Female (as it was)", 2]]]]}  # filled long ago
OLD_COPY = {"tags": [[4, "Home Zip Code", 1, [[101, "02140", 2140]]]]}  # an offer's own copy
EVENT_COPY = {"tags": [[50, "Hobbies", 3, [[52, "Hiking", 1]]]]}  # an ad_event's own copy
C1, C2 = 1, 2


def seed_legacy_journey(conn) -> dict[str, dict[int, Any]]:
    """Every kind of legacy row of the NOT NULL journey, at 0001.baseline-schema.

    Returns {table: {id: snapshot or None}} as it will read after 0004 (malformed -> NULL).
    """
    from tests import helpers as h

    h.seed_worked_example(conn)
    h.tags(conn, h.M5, {h.FEMALE: "Female", h.ZIP_02140: ""})
    set_populated(conn, h.T1)
    # populations
    add_population(conn, 1, h.B1, h.M1)                        # NULL -> built
    add_population(conn, 2, h.B3, h.M1)                        # M1 twice in T1: 0002 keeps B1 (most groups)
    add_population(conn, 3, h.B2, h.M2, STALE, updated_at="2025-12-01 00:00:00+00")  # filled long ago: kept
    add_population(conn, 4, h.B3, h.M3)                        # NULL -> built
    add_population(conn, 5, h.B2, h.M5, {})                    # malformed -> NULL (0004) -> rebuilt
    # campaigns and bids
    add_campaign(conn, C1, h.T1)
    add_campaign(conn, C2, h.T1)
    for band, amount in ((h.B1, "1.50"), (h.B2, "0.75"), (h.B3, "0.25")):
        add_bid(conn, C1, band, amount)
    # offers
    add_offer(conn, 1, C1, h.M1, h.B1)             # NULL, population NULL -> the population's, built
    # offer 2: the original's backfill never repaired an offer whose population was filled later
    add_offer(conn, 2, C1, h.M2, h.B2)             # NULL, population filled long ago -> STALE
    add_offer(conn, 3, C1, h.M3, h.B3, {})         # malformed -> NULL -> its population's, built
    add_offer(conn, 4, C2, h.M1, h.B3)             # NULL, population removed by 0002 -> built
    add_offer(conn, 5, C2, h.M4, h.B2)             # NULL, population never existed -> built
    add_offer(conn, 6, C2, h.M2, h.B2, OLD_COPY)   # its own copy: kept
    add_offer(conn, 7, C2, h.M5, h.B2)             # NULL, population malformed -> rebuilt population's
    # ad_events
    add_ad_event(conn, 1, 1, h.M1, h.B1)           # under offer 1 -> offer's
    add_ad_event(conn, 2, 2, h.M2, h.B2)           # under offer 2 -> offer's (STALE)
    add_ad_event(conn, 3, 3, h.M3, h.B3)           # under the malformed offer -> offer's
    add_ad_event(conn, 4, 4, h.M1, h.B3)           # under the population-less offer -> offer's (built)
    add_ad_event(conn, 5, 6, h.M2, h.B2)           # under the offer with its own copy -> OLD_COPY
    add_ad_event(conn, 6, None, h.M2, h.B2)        # offer deleted, population STALE -> STALE
    add_ad_event(conn, 7, None, h.M4, h.B1)        # no offer, no population -> built
    add_ad_event(conn, 8, 1, h.M1, h.B1, EVENT_COPY)  # its own copy: kept
    add_ad_event(conn, 9, 2, h.M2, h.B2, "x")      # malformed -> NULL -> offer's (STALE)
    add_ad_event(conn, 10, None, None, None)       # nothing to go on: built from nothing, {"tags": []}
    add_ad_event(conn, 11, 5, h.M4, h.B2)          # under offer 5 -> offer's (built)
    return {
        "target_populations": {1: None, 3: STALE, 4: None, 5: None},
        "offers": {1: None, 2: None, 3: None, 4: None, 5: None, 6: OLD_COPY, 7: None},
        "ad_events": {1: None, 2: None, 3: None, 4: None, 5: None, 6: None, 7: None, 8: EVENT_COPY,
                      9: None, 10: None, 11: None},
    }


def legacy_database(dsn: str, seed=seed_legacy_journey) -> dict[str, dict[int, Any]]:
    """0001 + `seed(conn)` + `migrate(backfill=False)`: mid-journey, legacy NULLs waiting."""
    deploy.migrate(dsn, to="0001.baseline-schema")
    with psycopg.connect(dsn, autocommit=True) as c:
        legacy = seed(c)
    result = deploy.migrate(dsn, backfill=False)
    assert result.stopped, result
    return legacy
