"""Propagation triggers and snapshot constraints (docs/rules.md, "Offers and ad_events"):
offers take their population's snapshot, ad_events their offer's, an explicit snapshot is kept,
malformed shapes and NULLs are refused on all three tables, with their exact messages."""

import psycopg
import pytest
from psycopg import errors
from psycopg.types.json import Jsonb

from tests import helpers as h
from tests.legacy_data import (
    SNAPSHOT_TABLES,
    add_ad_event,
    add_campaign,
    add_offer,
    add_population,
    legacy_database,
    snapshots,
)

C1, C2 = 1, 2
OWN = {"tags": [[h.HOBBIES, "Hobbies", 3, [[h.CHESS, "Chess (own copy)", 3]]]]}  # a valid, explicit snapshot
NO_POPULATION = ("offer for me_file {m} in band {b} has no snapshot: "
                 "no target population holds that me_file in that band")


@pytest.fixture
def world(conn):
    """Worked example, T1 populated (M1 -> B1, M2 -> B2, M3 -> B3; M4 in no band), campaigns C1, C2."""
    h.seed_worked_example(conn)
    h.populate(conn, h.T1)
    add_campaign(conn, C1, h.T1)
    add_campaign(conn, C2, h.T1)
    assert {m: b for m, (b, _) in h.populations(conn, h.T1).items()} == {h.M1: h.B1, h.M2: h.B2, h.M3: h.B3}
    return conn


def population_snapshot(conn, me_file, band):
    return h.value(conn, "SELECT matching_tags_snapshot FROM target_populations"
                         " WHERE me_file_id = %s AND target_band_id = %s", (me_file, band))


def offer_snapshot(conn, offer):
    return h.value(conn, "SELECT matching_tags_snapshot FROM offers WHERE id = %s", (offer,))


def event_snapshot(conn, event):
    return h.value(conn, "SELECT matching_tags_snapshot FROM ad_events WHERE id = %s", (event,))


# -- offers ------------------------------------------------------------------------------------
def test_offer_without_snapshot_takes_its_populations(world):
    conn = world
    add_offer(conn, 1, C1, h.M1, h.B1)  # column given as NULL
    h.execute(conn, "INSERT INTO offers (id, campaign_id, me_file_id, target_band_id, offer_amt)"
                    " VALUES (2, %s, %s, %s, 1.00)", (C1, h.M2, h.B2))  # column left out
    assert offer_snapshot(conn, 1) == population_snapshot(conn, h.M1, h.B1)
    assert offer_snapshot(conn, 1) == h.build_snapshot(conn, h.M1, h.B1)
    assert offer_snapshot(conn, 2) == population_snapshot(conn, h.M2, h.B2)
    assert offer_snapshot(conn, 1) != offer_snapshot(conn, 2)


def test_bulk_offer_insert_takes_each_rows_population(world):
    conn = world
    h.execute(conn, "INSERT INTO offers (campaign_id, me_file_id, target_band_id, offer_amt)"
                    " SELECT %s, me_file_id, target_band_id, 2.00 FROM target_populations", (C2,))
    assert h.rows(conn, "SELECT count(*) FROM offers o"
                        " JOIN target_populations p USING (me_file_id, target_band_id)"
                        " WHERE o.matching_tags_snapshot = p.matching_tags_snapshot") == [(3,)]


@pytest.mark.parametrize("me_file, band", [(h.M4, h.B1), (h.M1, h.B2)], ids=["no-population", "other-band"])
def test_offer_without_population_is_rejected_naming_me_file_and_band(world, me_file, band):
    conn = world
    with pytest.raises(errors.NotNullViolation) as refused:
        add_offer(conn, 1, C1, me_file, band)
    assert refused.value.sqlstate == "23502"
    assert refused.value.diag.message_primary == NO_POPULATION.format(m=me_file, b=band)
    assert refused.value.diag.message_hint == (
        "Populate the target first, or pass matching_tags_snapshot explicitly.")
    assert h.rows(conn, "SELECT count(*) FROM offers") == [(0,)]


def test_offer_with_explicit_snapshot_is_kept_as_given(world):
    conn = world
    add_offer(conn, 1, C1, h.M1, h.B1, OWN)  # differs from the population's
    add_offer(conn, 2, C1, h.M4, h.B1, h.EMPTY_SNAPSHOT)  # no population needed when given
    assert offer_snapshot(conn, 1) == OWN != population_snapshot(conn, h.M1, h.B1)
    assert offer_snapshot(conn, 2) == h.EMPTY_SNAPSHOT


def test_offer_keeps_its_copy_when_the_population_changes(world):
    """Freshness (docs/rules.md): populations follow the tags, offers keep the copy taken."""
    conn = world
    add_offer(conn, 1, C1, h.M1, h.B1)
    taken = offer_snapshot(conn, 1)
    h.set_tag_value(conn, h.M1, h.CHESS, "Chess (grandmaster)")
    assert population_snapshot(conn, h.M1, h.B1) != taken
    assert offer_snapshot(conn, 1) == taken


# -- ad_events ---------------------------------------------------------------------------------
def test_ad_event_without_snapshot_takes_its_offers(world):
    conn = world
    add_offer(conn, 1, C1, h.M1, h.B1)
    add_offer(conn, 2, C1, h.M2, h.B2, OWN)  # the offer's own copy, not the population's
    add_ad_event(conn, 1, 1, h.M1, h.B1)
    h.execute(conn, "INSERT INTO ad_events (id, offer_id, me_file_id, target_band_id, event_type)"
                    " VALUES (2, 2, %s, %s, 'jump')", (h.M2, h.B2))  # column left out
    assert event_snapshot(conn, 1) == offer_snapshot(conn, 1) == population_snapshot(conn, h.M1, h.B1)
    assert event_snapshot(conn, 2) == OWN != population_snapshot(conn, h.M2, h.B2)


def test_ad_event_with_explicit_snapshot_is_kept_as_given(world):
    conn = world
    add_offer(conn, 1, C1, h.M1, h.B1)
    add_ad_event(conn, 1, 1, h.M1, h.B1, OWN)
    add_ad_event(conn, 2, None, None, None, h.EMPTY_SNAPSHOT)  # no offer needed when given
    assert event_snapshot(conn, 1) == OWN
    assert event_snapshot(conn, 2) == h.EMPTY_SNAPSHOT


def test_ad_event_without_an_offer_takes_the_populations(world):
    """No offer: the next source, the one the backfill would use."""
    conn = world
    add_ad_event(conn, 1, None, h.M1, h.B1)
    assert event_snapshot(conn, 1) == population_snapshot(conn, h.M1, h.B1)


def test_ad_event_without_offer_or_population_is_built(world):
    conn = world
    add_ad_event(conn, 1, None, h.M4, h.B1)   # M4 is in no band of T1
    assert event_snapshot(conn, 1) == h.snapshot(
        [h.HOME_ZIP, "Home Zip Code", 1, [[h.ZIP_02140, "02140", 2140]]])
    assert event_snapshot(conn, 1) == h.build_snapshot(conn, h.M4, h.B1)


def test_ad_event_under_a_legacy_offer_without_snapshot_gets_what_the_offer_will(world):
    """During the NOT NULL journey a legacy offer may still be NULL: its ad_events take the
    population's snapshot, the one the backfill then gives the offer."""
    conn = world
    h.execute(conn, "ALTER TABLE offers DISABLE TRIGGER offers_inherit_snapshot")
    h.execute(conn, "ALTER TABLE offers ALTER COLUMN matching_tags_snapshot DROP NOT NULL")
    add_offer(conn, 1, C1, h.M2, h.B2)
    h.execute(conn, "ALTER TABLE offers ENABLE TRIGGER offers_inherit_snapshot")
    assert offer_snapshot(conn, 1) is None
    add_ad_event(conn, 1, 1, h.M2, h.B2)
    assert event_snapshot(conn, 1) == population_snapshot(conn, h.M2, h.B2)
    h.execute(conn, "CALL pgsnap.backfill_missing_snapshots()")
    assert offer_snapshot(conn, 1) == event_snapshot(conn, 1)


@pytest.mark.parametrize("offer, me_file, band, shown", [
    (None, None, None,
     "no offer NULL with one, and no me_file and band to build it from (me_file NULL, band NULL)"),
    (999, h.M1, 999,
     "no offer 999 with one, and no me_file and band to build it from (me_file 1, band 999)"),
])
def test_ad_event_with_nothing_to_take_a_snapshot_from_is_rejected(world, offer, me_file, band, shown):
    conn = world
    with pytest.raises(errors.NotNullViolation) as refused:
        add_ad_event(conn, 1, offer, me_file, band)
    assert refused.value.sqlstate == "23502"
    assert refused.value.diag.message_primary == f"ad_event has no snapshot: {shown}"
    assert refused.value.diag.message_hint == (
        "Create ad_events from an offer, or pass matching_tags_snapshot explicitly.")


# -- shapes and NULLs on all three tables -------------------------------------------------------
MALFORMED = {"{}": {}, "[]": [], '{"tags": {}}': {"tags": {}}, "json null": None, '"x"': "x",
             '{"tags": "x"}': {"tags": "x"}, '{"tags": null}': {"tags": None}}


def insert_row(conn, table, snapshot):
    """One row of `table` with the given (jsonb) snapshot, valid in every other respect."""
    if table == "target_populations":
        add_population(conn, 100, h.B3, h.M4, snapshot)
    elif table == "offers":
        add_offer(conn, 100, C2, h.M1, h.B1, snapshot)
    else:
        add_ad_event(conn, 100, None, h.M1, h.B1, snapshot)


@pytest.mark.parametrize("table", SNAPSHOT_TABLES)
@pytest.mark.parametrize("shape", list(MALFORMED))
def test_malformed_snapshot_is_rejected_on_insert(world, table, shape):
    conn = world
    with pytest.raises(errors.CheckViolation) as refused:
        insert_row(conn, table, MALFORMED[shape])
    assert refused.value.sqlstate == "23514"
    assert refused.value.diag.message_primary == (
        f'new row for relation "{table}" violates check constraint "{table}_snapshot_shape"')
    assert refused.value.diag.constraint_name == f"{table}_snapshot_shape"


@pytest.mark.parametrize("table", SNAPSHOT_TABLES)
@pytest.mark.parametrize("shape", list(MALFORMED))
def test_malformed_snapshot_is_rejected_on_update(world, table, shape):
    conn = world
    insert_row(conn, table, h.EMPTY_SNAPSHOT)
    with pytest.raises(errors.CheckViolation) as refused:
        h.execute(conn, f"UPDATE {table} SET matching_tags_snapshot = %s WHERE id = 100",
                  (Jsonb(MALFORMED[shape]),))
    assert refused.value.diag.message_primary == (
        f'new row for relation "{table}" violates check constraint "{table}_snapshot_shape"')
    assert snapshots(conn, table)[100] == h.EMPTY_SNAPSHOT


@pytest.mark.parametrize("table", SNAPSHOT_TABLES)
@pytest.mark.parametrize("good", [h.EMPTY_SNAPSHOT, OWN, {"tags": [], "extra": 1}],
                         ids=["empty", "own", "extra-key"])
def test_well_formed_snapshots_are_accepted(world, table, good):
    conn = world
    insert_row(conn, table, good)
    assert snapshots(conn, table)[100] == good


@pytest.mark.parametrize("table", SNAPSHOT_TABLES)
def test_update_to_null_is_rejected(world, table):
    conn = world
    insert_row(conn, table, h.EMPTY_SNAPSHOT)
    with pytest.raises(errors.NotNullViolation) as refused:
        h.execute(conn, f"UPDATE {table} SET matching_tags_snapshot = NULL WHERE id = 100")
    assert refused.value.sqlstate == "23502"
    assert refused.value.diag.message_primary == (
        f'null value in column "matching_tags_snapshot" of relation "{table}" violates not-null constraint')
    assert snapshots(conn, table)[100] == h.EMPTY_SNAPSHOT


def test_population_insert_without_snapshot_is_rejected(world):
    conn = world
    with pytest.raises(errors.NotNullViolation) as refused:
        add_population(conn, 100, h.B3, h.M4)
    assert refused.value.diag.message_primary == (
        'null value in column "matching_tags_snapshot" of relation "target_populations"'
        " violates not-null constraint")


# -- mid-journey: the NOT VALID checks already refuse new NULLs ----------------------------------
def _mid_journey_seed(conn):
    h.seed_worked_example(conn)
    add_population(conn, 1, h.B1, h.M1)                    # legacy NULL
    add_population(conn, 2, h.B2, h.M2, h.EMPTY_SNAPSHOT)
    add_campaign(conn, C1, h.T1)
    add_offer(conn, 1, C1, h.M2, h.B2, h.EMPTY_SNAPSHOT)
    add_ad_event(conn, 1, 1, h.M2, h.B2, h.EMPTY_SNAPSHOT)
    return {}


@pytest.fixture
def mid_journey(empty_db_dsn):
    legacy_database(empty_db_dsn, _mid_journey_seed)
    with psycopg.connect(empty_db_dsn, autocommit=True) as c:
        yield c


def test_mid_journey_update_to_null_is_rejected_by_the_not_valid_check(mid_journey):
    conn = mid_journey
    for table, row in (("target_populations", 2), ("offers", 1), ("ad_events", 1)):
        with pytest.raises(errors.CheckViolation) as refused:
            h.execute(conn, f"UPDATE {table} SET matching_tags_snapshot = NULL WHERE id = %s", (row,))
        assert refused.value.diag.message_primary == (
            f'new row for relation "{table}" violates check constraint "{table}_snapshot_not_null"')


def test_mid_journey_new_nulls_are_rejected_legacy_ones_tolerated(mid_journey):
    conn = mid_journey
    with pytest.raises(errors.CheckViolation) as refused:
        add_population(conn, 3, h.B3, h.M3)
    assert refused.value.diag.message_primary == (
        'new row for relation "target_populations" violates check constraint'
        ' "target_populations_snapshot_not_null"')
    # the legacy NULL row is still there, and can be filled
    h.execute(conn, "UPDATE target_populations SET matching_tags_snapshot = pgsnap.build_snapshot(me_file_id,"
                    " target_band_id) WHERE id = 1")
    assert snapshots(conn, "target_populations")[1] == h.build_snapshot(conn, h.M1, h.B1)


def test_mid_journey_offer_of_a_legacy_null_population_gets_the_built_snapshot(mid_journey):
    """A population not yet backfilled has no snapshot to copy: the offer gets what the backfill
    would give both of them (build_snapshot), never a NULL."""
    conn = mid_journey
    add_offer(conn, 2, C1, h.M1, h.B1)
    assert snapshots(conn, "offers")[2] == h.build_snapshot(conn, h.M1, h.B1)
