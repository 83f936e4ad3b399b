"""pgsnap.launch_campaign and `pgsnap launch` (docs/sql-api.md, "Offers"): one offer per
population of the campaign's target whose band has a bid, amount from the bid, snapshot copied,
launched_at set; idempotent; refused unless the target is populated (the gate that keeps NULL
snapshots out of offers)."""

from decimal import Decimal

import psycopg
import pytest
from psycopg import errors

from tests import helpers as h
from tests.legacy_data import add_bid, add_campaign, add_population, legacy_database, set_populated, snapshots

C1, C2 = 1, 2


@pytest.fixture
def world(conn):
    """Worked example: T1 with B1 (bullseye), B2, B3; C1 bids on B1 and B3 only; not populated yet."""
    h.seed_worked_example(conn)
    add_campaign(conn, C1, h.T1)
    add_bid(conn, C1, h.B1, "1.50")
    add_bid(conn, C1, h.B3, "0.25")
    return conn


def launch(conn, campaign):
    return h.value(conn, "SELECT pgsnap.launch_campaign(%s)", (campaign,))


def offers(conn):
    """{me_file: (campaign, band, amount, is_current, snapshot)} of every offer."""
    return {m: rest for m, *rest in h.rows(
        conn, "SELECT me_file_id, campaign_id, target_band_id, offer_amt, is_current, matching_tags_snapshot"
              " FROM offers ORDER BY me_file_id")}


def launched_at(conn, campaign):
    return h.value(conn, "SELECT launched_at FROM campaigns WHERE id = %s", (campaign,))


def test_launch_refused_while_not_populated(world):
    conn = world
    with pytest.raises(errors.ObjectNotInPrerequisiteState) as refused:
        launch(conn, C1)
    assert refused.value.sqlstate == "55000"
    assert refused.value.diag.message_primary == (
        f"campaign {C1}: target {h.T1} is not_populated, not populated")
    assert refused.value.diag.message_hint == f"Run: pgsnap populate {h.T1}"
    assert offers(conn) == {}
    assert launched_at(conn, C1) is None


def test_launch_refused_while_populating(world, new_conn):
    """A populate held in its second batch (a test trigger waits on a lock the test holds):
    status `populating`, the first batch's row committed."""
    conn = world
    h.execute(conn, h.GATES)
    h.execute(conn, "INSERT INTO public.test_gate VALUES (%s, 'populate', 7)", (h.M2,))
    h.execute(conn, "SELECT pg_advisory_lock(7)")
    populator_conn = h.gated(new_conn, "populate")
    populator = h.Runner(h.populate, populator_conn, h.T1, 1)
    populator.start()
    h.wait_until_blocked(conn, populator_conn.info.backend_pid, "the second batch", h.ADVISORY)
    assert h.target_status(conn, h.T1)[0] == "populating"
    assert h.rows(conn, "SELECT count(*) FROM target_populations") == [(1,)]  # the first batch is in
    with pytest.raises(errors.ObjectNotInPrerequisiteState) as refused:
        launch(conn, C1)
    assert refused.value.diag.message_primary == (
        f"campaign {C1}: target {h.T1} is populating, not populated")
    assert offers(conn) == {}
    assert launched_at(conn, C1) is None
    h.execute(conn, "SELECT pg_advisory_unlock(7)")
    populator.finish()
    assert h.target_status(conn, h.T1)[0] == "populated"
    assert launch(conn, C1) == 2


def test_launch_after_populate_creates_offers_for_bands_with_bids(world):
    conn = world
    h.populate(conn, h.T1)
    before = h.db_now(conn)
    assert launch(conn, C1) == 2
    pops = h.populations(conn, h.T1)
    assert offers(conn) == {  # M2 sits in B2, which has no bid: no offer
        h.M1: [C1, h.B1, Decimal("1.50"), False, pops[h.M1][1]],
        h.M3: [C1, h.B3, Decimal("0.25"), False, pops[h.M3][1]],
    }
    assert pops[h.M1][1] == h.build_snapshot(conn, h.M1, h.B1)
    assert before <= launched_at(conn, C1) <= h.db_now(conn)


def test_second_launch_creates_nothing_and_keeps_launched_at(world):
    conn = world
    h.populate(conn, h.T1)
    assert launch(conn, C1) == 2
    first = h.rows(conn, "SELECT id, xmin::text, created_at FROM offers ORDER BY id")
    stamp = launched_at(conn, C1)
    assert launch(conn, C1) == 0
    assert h.rows(conn, "SELECT id, xmin::text, created_at FROM offers ORDER BY id") == first
    assert launched_at(conn, C1) == stamp


def test_relaunch_after_a_new_member_adds_only_that_offer(world):
    conn = world
    h.populate(conn, h.T1)
    assert launch(conn, C1) == 2
    h.tags(conn, 6, {h.FEMALE: "Female"})  # sync puts me_file 6 into B3 at once
    assert h.populations(conn, h.T1)[6][0] == h.B3
    assert launch(conn, C1) == 1
    assert offers(conn)[6] == [C1, h.B3, Decimal("0.25"), False, h.build_snapshot(conn, 6, h.B3)]


def test_launch_copies_only_its_own_targets_populations(world):
    """A second target whose band the campaign does not bid on, and a campaign on that target."""
    conn = world
    h.add_target(conn, 2, bands=[(9, [h.G10])])
    add_campaign(conn, C2, 2)
    add_bid(conn, C2, 9, "3.00")
    h.populate(conn, h.T1)
    h.populate(conn, 2)
    assert launch(conn, C1) == 2
    assert launch(conn, C2) == 3  # M1, M2, M3 are women
    assert h.rows(conn, "SELECT campaign_id, me_file_id, target_band_id FROM offers ORDER BY 1, 2") == [
        (C1, h.M1, h.B1), (C1, h.M3, h.B3), (C2, h.M1, 9), (C2, h.M2, 9), (C2, h.M3, 9)]
    assert h.rows(conn, "SELECT count(*) FROM offers o"
                        " JOIN target_populations p USING (me_file_id, target_band_id)"
                        " WHERE o.matching_tags_snapshot = p.matching_tags_snapshot") == [(5,)]


def test_launch_of_unknown_campaign_is_an_error(conn):
    with pytest.raises(errors.NoDataFound) as refused:
        launch(conn, 999)
    assert refused.value.sqlstate == "P0002"
    assert refused.value.diag.message_primary == "campaign 999 does not exist"


def test_launch_of_target_without_bands_is_refused(conn):
    h.add_target(conn, 5)
    add_campaign(conn, C1, 5)
    h.populate(conn, 5)  # no bands: not_populated
    with pytest.raises(errors.ObjectNotInPrerequisiteState) as refused:
        launch(conn, C1)
    assert refused.value.diag.message_primary == f"campaign {C1}: target 5 is not_populated, not populated"


def test_cli_launch(world, cli):
    conn = world
    refused = cli("launch", C1)
    assert (refused.exit_code, refused.stdout, refused.stderr) == (
        1, "", f"error: 55000: campaign {C1}: target {h.T1} is not_populated, not populated\n")
    h.populate(conn, h.T1)
    first = cli("launch", C1)
    assert (first.exit_code, first.stdout, first.stderr) == (0, f"campaign {C1}: 2 offers created\n", "")
    again = cli("launch", C1)
    assert (again.exit_code, again.stdout, again.stderr) == (0, f"campaign {C1}: 0 offers created\n", "")
    unknown = cli("launch", 999)
    assert (unknown.exit_code, unknown.stdout, unknown.stderr) == (
        2, "", "error: P0002: campaign 999 does not exist\n")
    bad = cli("launch", "abc")
    assert bad.exit_code == 2 and "'abc' is not a valid integer" in bad.stderr


def _legacy_launch_seed(conn):
    h.seed_worked_example(conn)
    set_populated(conn, h.T1)
    add_population(conn, 1, h.B1, h.M1)  # legacy NULL, not backfilled yet
    add_population(conn, 2, h.B3, h.M3, h.EMPTY_SNAPSHOT)  # filled, out of date
    add_campaign(conn, C1, h.T1)
    add_bid(conn, C1, h.B1, "1.50")
    add_bid(conn, C1, h.B3, "0.25")
    return {}


def test_launch_mid_journey_gives_a_legacy_null_population_what_the_backfill_would(empty_db_dsn):
    legacy_database(empty_db_dsn, _legacy_launch_seed)
    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        assert launch(conn, C1) == 2
        assert offers(conn)[h.M1][4] == h.build_snapshot(conn, h.M1, h.B1)
        assert offers(conn)[h.M3][4] == h.EMPTY_SNAPSHOT  # copied as it is
        h.value(conn, "SELECT count(*) FROM pgsnap.backfill_batch()")
        assert snapshots(conn, "target_populations")[1] == offers(conn)[h.M1][4]
