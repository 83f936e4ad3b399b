"""pgsnap.datagen: deterministic, realistic data for the demo, the benchmark and tests."""

import re
from decimal import Decimal

import psycopg
import pytest

from pgsnap import deploy
from pgsnap.demo import datagen
from tests.helpers import rows, truncate_app_tables, value


@pytest.fixture
def legacy_conn(empty_db_dsn):
    """A database in the legacy state (baseline schema only, no pgsnap objects)."""
    deploy.migrate(empty_db_dsn, to="0001.baseline-schema")
    with psycopg.connect(empty_db_dsn, autocommit=True) as connection:
        yield connection


def _generate_all(conn, seed):
    ds = datagen.generate(conn, me_files=600, targets=4, seed=seed, narrow_targets=40)
    datagen.generate_legacy_rows(conn, ds.target_ids[-2:], seed=seed)
    return ds


def test_same_seed_gives_identical_rows(legacy_conn):
    first = _generate_all(legacy_conn, seed=7)
    digest = datagen.rows_digest(legacy_conn)
    truncate_app_tables(legacy_conn)
    second = _generate_all(legacy_conn, seed=7)
    assert datagen.rows_digest(legacy_conn) == digest
    assert second.as_dict() == first.as_dict()
    truncate_app_tables(legacy_conn)
    _generate_all(legacy_conn, seed=8)
    assert datagen.rows_digest(legacy_conn) != digest


def test_counts_and_roughly_eight_tags_per_me_file(legacy_conn):
    ds = datagen.generate(legacy_conn, me_files=2000, targets=5, seed=1, narrow_targets=20)
    assert ds.counts["me_files"] == 2000
    assert ds.counts["targets"] == 25 and len(ds.target_ids) == 5 and len(ds.narrow_target_ids) == 20
    assert ds.counts["target_bands"] == 75 and ds.counts["campaigns"] == 5 and ds.counts["bids"] == 15
    assert 7.5 <= ds.counts["me_file_tags"] / 2000 <= 9
    # every me_file that answered anything has exactly one sex, one age and one zip
    per_parent = rows(legacy_conn, """
        SELECT p.trait_name, count(DISTINCT t.me_file_id), count(*)
          FROM me_file_tags t JOIN traits c ON c.id = t.trait_id JOIN traits p ON p.id = c.parent_trait_id
         WHERE p.trait_name IN ('Sex (Biological)', 'Age', 'Home Zip Code')
         GROUP BY p.trait_name""")
    answered = value(legacy_conn, "SELECT count(DISTINCT me_file_id) FROM me_file_tags")
    assert 1950 <= answered < 2000  # 0.5 % never answered anything
    assert sorted((name, n, m) for name, n, m in per_parent) == [
        ("Age", answered, answered), ("Home Zip Code", answered, answered),
        ("Sex (Biological)", answered, answered)]


def test_catalogue_has_zip_codes_with_leading_zeros(legacy_conn):
    datagen.generate(legacy_conn, me_files=2000, targets=2, seed=1)
    zips = [r[0] for r in rows(legacy_conn, """
        SELECT c.trait_name FROM traits c JOIN traits p ON p.id = c.parent_trait_id
         WHERE p.trait_name = 'Home Zip Code' ORDER BY c.id""")]
    assert len(zips) == len(set(zips)) == 1000
    assert all(re.fullmatch(r"\d{5}", z) for z in zips)
    assert "02140" in zips and sum(z.startswith("0") for z in zips) >= 50
    # zip tags carry the zip string itself, except a few NULL or empty ones
    values = rows(legacy_conn, """
        SELECT count(*) FILTER (WHERE t.tag_value = c.trait_name),
               count(*) FILTER (WHERE t.tag_value IS NULL),
               count(*) FILTER (WHERE t.tag_value = ''),
               count(*) FILTER (WHERE t.tag_value LIKE '0%')
          FROM me_file_tags t JOIN traits c ON c.id = t.trait_id JOIN traits p ON p.id = c.parent_trait_id
         WHERE p.trait_name = 'Home Zip Code'""")[0]
    matching, nulls, empty, leading_zero = values
    assert nulls > 0 and empty > 0 and leading_zero > 0
    answered = value(legacy_conn, "SELECT count(DISTINCT me_file_id) FROM me_file_tags")
    assert matching + nulls + empty == answered
    # parentless traits exist and are tagged
    assert value(legacy_conn, """
        SELECT count(*) FROM me_file_tags t JOIN traits c ON c.id = t.trait_id
         WHERE c.parent_trait_id IS NULL""") > 0


def test_bands_are_nested_with_bullseye_first(legacy_conn):
    ds = datagen.generate(legacy_conn, me_files=100, targets=6, seed=3, narrow_targets=6)
    for target_id in ds.target_ids + ds.narrow_target_ids:
        bands = rows(legacy_conn, """
            SELECT b.id, b.is_bullseye, array_agg(bg.trait_group_id ORDER BY bg.trait_group_id)
              FROM target_bands b JOIN target_band_trait_groups bg ON bg.target_band_id = b.id
             WHERE b.target_id = %s GROUP BY b.id ORDER BY b.id""", [target_id])
        assert [len(groups) for _, _, groups in bands] == [3, 2, 1]
        assert [bullseye for _, bullseye, _ in bands] == [True, False, False]
        bullseye, ring1, ring2 = (set(groups) for _, _, groups in bands)
        assert ring2 < ring1 < bullseye
    # no group without traits
    assert value(legacy_conn, """
        SELECT count(*) FROM trait_groups g
         WHERE NOT EXISTS (SELECT 1 FROM trait_group_traits gt WHERE gt.trait_group_id = g.id)""") == 0


def test_bids_fall_by_a_cent_per_band_with_a_floor(legacy_conn):
    ds = datagen.generate(legacy_conn, me_files=10, targets=40, seed=5)
    seen_floor = False
    for target_id in ds.target_ids:
        amounts = [r[0] for r in rows(legacy_conn, """
            SELECT bd.offer_amt FROM bids bd JOIN campaigns c ON c.id = bd.campaign_id
             WHERE c.target_id = %s ORDER BY bd.target_band_id""", [target_id])]
        assert len(amounts) == 3
        assert Decimal("0.11") <= amounts[0] <= Decimal("1.00")
        for higher, lower in zip(amounts, amounts[1:], strict=False):
            assert lower == max(Decimal("0.10"), higher - Decimal("0.01"))
        seen_floor |= amounts[-1] == Decimal("0.10")
    assert seen_floor


def test_narrow_targets_reference_each_hobby_one_time_in_twenty(legacy_conn):
    ds = datagen.generate(legacy_conn, me_files=10, targets=0, seed=1, narrow_targets=200)
    share = value(legacy_conn, """
        SELECT count(DISTINCT b.target_id) FROM target_bands b
          JOIN target_band_trait_groups bg ON bg.target_band_id = b.id
          JOIN trait_group_traits gt ON gt.trait_group_id = bg.trait_group_id
         WHERE gt.trait_id = %s AND b.target_id = ANY(%s)""", [ds.probe_trait_id, ds.narrow_target_ids])
    assert share == 10  # 5 % of 200


def test_generate_reuses_the_catalogue(legacy_conn):
    datagen.generate(legacy_conn, me_files=10, targets=1, seed=1)
    traits = value(legacy_conn, "SELECT count(*) FROM traits")
    more = datagen.generate(legacy_conn, me_files=10, targets=1, seed=1)
    assert value(legacy_conn, "SELECT count(*) FROM traits") == traits
    assert more.counts["me_files"] == 20 and more.counts["targets"] == 2
    # numbering goes on: the second batch is new people and a new target, not copies
    assert value(legacy_conn, "SELECT count(DISTINCT display_name) FROM me_files") == 20
    assert value(legacy_conn, "SELECT count(DISTINCT title) FROM targets") == 2


def test_legacy_rows_have_nulls_at_every_level(legacy_conn):
    ds = datagen.generate(legacy_conn, me_files=2000, targets=3, seed=1)
    legacy = datagen.generate_legacy_rows(legacy_conn, ds.target_ids[:2], seed=1)
    totals = legacy["totals"]
    for table in ("target_populations", "offers", "ad_events"):
        assert 0 < totals[table]["null"] < totals[table]["rows"], table
    assert set(legacy["offers_by_kind"]) == {"population_null", "population_filled", "population_gone",
                                             "copied"}
    assert {"member", "member_null", "wrong_band", "wrong_band_null", "stale", "stale_null"} == set(
        legacy["populations_by_kind"])
    # ad_events under every kind of offer, including offers deleted since
    kinds = rows(legacy_conn, """
        SELECT DISTINCT CASE WHEN e.offer_id IS NULL THEN 'offer deleted'
                             WHEN o.matching_tags_snapshot IS NOT NULL THEN 'copied'
                             WHEN tp.id IS NULL THEN 'population gone'
                             WHEN tp.matching_tags_snapshot IS NULL THEN 'population null'
                             ELSE 'population filled' END
          FROM ad_events e
          LEFT JOIN offers o ON o.id = e.offer_id
          LEFT JOIN target_populations tp
                 ON tp.me_file_id = o.me_file_id AND tp.target_band_id = o.target_band_id""")
    assert {k for (k,) in kinds} == {"offer deleted", "copied", "population gone", "population null",
                                     "population filled"}
    # one population per me_file per target, as the enforced schema will demand
    assert value(legacy_conn, """
        SELECT count(*) FROM (SELECT b.target_id, tp.me_file_id FROM target_populations tp
                                JOIN target_bands b ON b.id = tp.target_band_id
                               GROUP BY 1, 2 HAVING count(*) > 1) d""") == 0
    # the other target was left alone
    assert value(legacy_conn, """
        SELECT count(*) FROM target_populations tp JOIN target_bands b ON b.id = tp.target_band_id
         WHERE b.target_id = %s""", [ds.target_ids[2]]) == 0


def test_legacy_rows_then_migrate_reaches_the_enforced_state(legacy_conn, empty_db_dsn):
    ds = datagen.generate(legacy_conn, me_files=500, targets=2, seed=1)
    datagen.generate_legacy_rows(legacy_conn, ds.target_ids, seed=1)
    deploy.migrate(empty_db_dsn)
    assert value(legacy_conn, """
        SELECT count(*) FROM target_populations WHERE matching_tags_snapshot IS NULL""") == 0
    assert value(legacy_conn, "SELECT count(*) FROM offers WHERE matching_tags_snapshot IS NULL") == 0
