"""Realistic, deterministic data for the demo, the benchmark and tests, generated in SQL.

Everything is set-based (``generate_series`` + joins) and every random choice is a hash of
``(seed, salt, ordinal)`` via ``hashint8extended``: the same seed gives the same rows whatever
the execution order, and ids come from the tables' own identity sequences (so later inserts
that rely on the defaults keep working).

The catalogue (fixed, seed-independent):

* ``Sex (Biological)`` (display_order 1): Male, Female;
* ``Age`` (2): ten ranges;
* ``Home Zip Code`` (1, the same as Sex so that parents tie and are ordered by id): 1,000
  children whose ``trait_name`` is a 5-digit zip with leading zeros kept (``'02140'`` among them),
  display_order = the zip's numeric value;
* ``Hobbies`` (3): 20 children, display orders out of id order and tied in pairs;
* ``Cuisine`` (7): 15 children;
* two parentless traits, ``VIP Member`` and ``Newsletter Opt-in``.

Target styles:

* ``main`` (campaigns, the benchmark's population targets): ring 2 = {sex or an age span},
  ring 1 = + {100-400 zips}, bullseye = + {2-4 hobbies | 2-3 cuisines | the two parentless
  traits}; about 45 % of me_files fall in some band.
* ``narrow`` (the sync-latency targets): ring 2 = {2 zips}, ring 1 = + {3 age ranges},
  bullseye = + {one hobby}, the hobby cycling so that each hobby is referenced by 1 in 20
  narrow targets (see ``Dataset.probe_trait_id``).

Bands are created bullseye first (lowest id), then Ring 1, Ring 2, and are strictly nested.
Each main target gets one campaign with a bid per band: bullseye $0.11-$1.00, each next band
$0.01 less, floor $0.10.

Me_files carry about 8 tags: one sex, one age, one zip whose ``tag_value`` is the zip string,
hobbies (p = 0.15 each), cuisines (p = 0.13 each), the parentless traits (10 % / 30 %); 0.5 %
of me_files have no tag at all; 1 % of zip tags have a NULL and 0.5 % an empty ``tag_value``,
0.2 % of the others a NULL one.

``generate_legacy_rows`` writes what a database looks like *before* pgsnap (snapshots NULL at
all three levels) using plain SQL only: it must run on the legacy schema, where no ``pgsnap``
object exists.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from pgsnap.health import SNAPSHOT_TABLES, snapshot_health

DEFAULT_ME_FILES = 50_000
DEFAULT_TARGETS = 10

#: a fixed point in time so that generated timestamps are deterministic too
EPOCH = "2025-01-01 00:00:00+00"

# --------------------------------------------------------------------------------------
# SQL. Helpers live in pg_temp (dropped with the session), so nothing is left behind.
# --------------------------------------------------------------------------------------

_HELPERS = """
CREATE OR REPLACE FUNCTION pg_temp.dg_u(p_seed bigint, p_salt bigint, p_i bigint)
RETURNS float8 LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$$ SELECT (hashint8extended(p_i, p_seed * 1000003 + p_salt) & 2147483647)::float8 / 2147483648 $$;

CREATE OR REPLACE FUNCTION pg_temp.dg_pick(p_seed bigint, p_salt bigint, p_i bigint, p_n int)
RETURNS int LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$$ SELECT floor(pg_temp.dg_u(p_seed, p_salt, p_i) * p_n)::int $$;
"""

_CATALOGUE_SPEC = """
DROP TABLE IF EXISTS pg_temp.dg_spec;
CREATE TEMP TABLE dg_spec AS
WITH parents(kind, k, name, display_order) AS (
    VALUES ('sex', 0, 'Sex (Biological)', 1), ('age', 0, 'Age', 2),
           ('zip', 0, 'Home Zip Code', 1), ('hobby', 0, 'Hobbies', 3),
           ('cuisine', 0, 'Cuisine', 7),
           ('vip', 0, 'VIP Member', 5), ('optin', 0, 'Newsletter Opt-in', 6)
), children(kind, k, name, display_order) AS (
    SELECT 'sex', k, name, k FROM unnest(ARRAY['Male', 'Female']) WITH ORDINALITY AS x(name, k)
    UNION ALL
    SELECT 'age', k, name, k FROM unnest(ARRAY['18-20', '21-24', '25-29', '30-34', '35-39',
        '40-44', '45-49', '50-54', '55-64', '65+']) WITH ORDINALITY AS x(name, k)
    UNION ALL
    -- 1,000 distinct zips spread over 00000-99999 (j -> 2140 + 38197 j is a bijection mod
    -- 10^5), numbered in numeric order so that a range of k is a range of zips
    SELECT 'zip', row_number() OVER (ORDER BY z), lpad(z::text, 5, '0'), z
    FROM generate_series(0, 999) AS j, LATERAL (SELECT (2140 + j * 38197) % 100000) AS x(z)
    UNION ALL
    SELECT 'hobby', k, name, ((k * 7) % 20) / 2 + 1 FROM unnest(ARRAY['Baking', 'Birding',
        'Board Games', 'Camping', 'Chess', 'Climbing', 'Cooking', 'Cycling', 'Fishing',
        'Gardening', 'Golf', 'Hiking', 'Knitting', 'Painting', 'Photography', 'Reading',
        'Running', 'Skiing', 'Travel', 'Yoga']) WITH ORDINALITY AS x(name, k)
    UNION ALL
    SELECT 'cuisine', k, name, k FROM unnest(ARRAY['American', 'BBQ', 'Chinese', 'French',
        'Greek', 'Indian', 'Italian', 'Japanese', 'Korean', 'Mediterranean', 'Mexican',
        'Middle Eastern', 'Spanish', 'Thai', 'Vietnamese']) WITH ORDINALITY AS x(name, k)
)
SELECT kind, k::int, name, display_order::int FROM parents
UNION ALL
SELECT kind, k::int, name, display_order::int FROM children;
"""

# ids drawn in a fixed order from the identity sequence: parents first, then children
_CATALOGUE_INSERT = """
DROP TABLE IF EXISTS pg_temp.dg_new_traits;
CREATE TEMP TABLE dg_new_traits AS
SELECT s.*, nextval(pg_get_serial_sequence('traits', 'id')) AS id
FROM (SELECT * FROM dg_spec ORDER BY k > 0, array_position(
          ARRAY['sex', 'age', 'zip', 'hobby', 'cuisine', 'vip', 'optin'], kind), k) AS s;

INSERT INTO traits (id, trait_name, parent_trait_id, display_order)
SELECT c.id, c.name, p.id, c.display_order
FROM dg_new_traits AS c
LEFT JOIN dg_new_traits AS p ON p.kind = c.kind AND p.k = 0 AND c.k > 0
WHERE c.kind NOT IN ('vip', 'optin') OR c.k = 0
ORDER BY c.id;
"""

# the catalogue as this module knows it: (kind, k, id, name); k = 0 is the parent
_CATALOGUE_LOAD = """
DROP TABLE IF EXISTS pg_temp.dg_trait;
CREATE TEMP TABLE dg_trait AS
WITH p AS (
    SELECT DISTINCT ON (s.kind) s.kind, t.id, t.trait_name
    FROM dg_spec AS s
    JOIN traits AS t ON t.trait_name = s.name AND t.parent_trait_id IS NULL
    WHERE s.k = 0
    ORDER BY s.kind, t.id
)
SELECT p.kind, 0 AS k, p.id, p.trait_name AS name FROM p
UNION ALL
SELECT s.kind, s.k, c.id, c.trait_name
FROM dg_spec AS s
JOIN p ON p.kind = s.kind
JOIN traits AS c ON c.parent_trait_id = p.id AND c.trait_name = s.name
WHERE s.k > 0;
CREATE UNIQUE INDEX ON dg_trait (kind, k);
ANALYZE dg_trait;
"""

# one row per (target, group, trait); g = 1 outer group, 2 middle, 3 inner
_GROUP_SPEC = {
    "main": """
    SELECT t.n, 1 AS g, CASE WHEN s.style = 0 THEN (CASE s.sex WHEN 2 THEN 'Women' ELSE 'Men' END)
                             ELSE 'Ages ' || min(tr.name) OVER w || ' to ' || max(tr.name) OVER w
                        END AS title, tr.id AS trait_id
    FROM dg_tgt AS t
    CROSS JOIN LATERAL (SELECT pg_temp.dg_pick(%(seed)s, 201, t.n, 3) AS style,
                               1 + pg_temp.dg_pick(%(seed)s, 202, t.n, 2) AS sex,
                               1 + pg_temp.dg_pick(%(seed)s, 203, t.n, 6) AS age_from) AS s
    JOIN dg_trait AS tr ON (s.style = 0 AND tr.kind = 'sex' AND tr.k = s.sex)
                        OR (s.style > 0 AND tr.kind = 'age'
                            AND tr.k BETWEEN s.age_from AND s.age_from + 2 * s.style)
    WINDOW w AS (PARTITION BY t.n)
    UNION ALL
    SELECT t.n, 2, 'Zips ' || min(tr.name) OVER (PARTITION BY t.n) || ' +' || s.size, tr.id
    FROM dg_tgt AS t
    CROSS JOIN LATERAL (SELECT 100 + pg_temp.dg_pick(%(seed)s, 204, t.n, 301) AS size,
                               pg_temp.dg_pick(%(seed)s, 205, t.n, 1000) AS start) AS s
    CROSS JOIN generate_series(0, s.size - 1) AS j
    JOIN dg_trait AS tr ON tr.kind = 'zip' AND tr.k = (s.start + j) %% 1000 + 1
    UNION ALL
    SELECT t.n, 3, CASE s.style WHEN 0 THEN 'Members' WHEN 1 THEN 'Hobbyists' ELSE 'Foodies' END,
           tr.id
    FROM dg_tgt AS t
    CROSS JOIN LATERAL (SELECT (pg_temp.dg_pick(%(seed)s, 206, t.n, 5) + 1) / 2 AS style,
                               pg_temp.dg_pick(%(seed)s, 207, t.n, 20) AS start,
                               2 + pg_temp.dg_pick(%(seed)s, 208, t.n, 3) AS size) AS s
    CROSS JOIN generate_series(0, 3) AS j
    JOIN dg_trait AS tr
      ON (s.style = 0 AND j < 2 AND tr.kind = CASE j WHEN 0 THEN 'vip' ELSE 'optin' END AND tr.k = 0)
      OR (s.style = 1 AND j < s.size AND tr.kind = 'hobby' AND tr.k = (s.start + 7 * j) %% 20 + 1)
      OR (s.style = 2 AND j < s.size - 1 AND tr.kind = 'cuisine'
          AND tr.k = (s.start + 4 * j) %% 15 + 1)
    """,
    "narrow": """
    SELECT t.n, 1 AS g, 'Zips ' || min(tr.name) OVER (PARTITION BY t.n) || ' +1' AS title,
           tr.id AS trait_id
    FROM dg_tgt AS t
    CROSS JOIN LATERAL (SELECT pg_temp.dg_pick(%(seed)s, 301, t.n, 1000) AS start) AS s
    CROSS JOIN generate_series(0, 1) AS j
    JOIN dg_trait AS tr ON tr.kind = 'zip' AND tr.k = (s.start + 500 * j) %% 1000 + 1
    UNION ALL
    SELECT t.n, 2, 'Ages ' || min(tr.name) OVER w || ' to ' || max(tr.name) OVER w, tr.id
    FROM dg_tgt AS t
    CROSS JOIN LATERAL (SELECT 1 + pg_temp.dg_pick(%(seed)s, 302, t.n, 8) AS age_from) AS s
    JOIN dg_trait AS tr ON tr.kind = 'age' AND tr.k BETWEEN s.age_from AND s.age_from + 2
    WINDOW w AS (PARTITION BY t.n)
    UNION ALL
    SELECT t.n, 3, tr.name || ' fans', tr.id
    FROM dg_tgt AS t
    JOIN dg_trait AS tr ON tr.kind = 'hobby' AND tr.k = (t.n - 1) %% 20 + 1
    """,
}

_TARGETS = """
DROP TABLE IF EXISTS pg_temp.dg_tgt;
CREATE TEMP TABLE dg_tgt AS
SELECT n, nextval(pg_get_serial_sequence('targets', 'id')) AS id
FROM generate_series(%(first)s, %(first)s + %(n)s - 1) AS n;

DROP TABLE IF EXISTS pg_temp.dg_gtrait;
CREATE TEMP TABLE dg_gtrait AS {group_spec};

DROP TABLE IF EXISTS pg_temp.dg_grp;
CREATE TEMP TABLE dg_grp AS
SELECT s.*, nextval(pg_get_serial_sequence('trait_groups', 'id')) AS id
FROM (SELECT DISTINCT n, g, title FROM dg_gtrait ORDER BY n, g) AS s;

-- band b: 1 = bullseye (groups 1-3), 2 = Ring 1 (groups 1-2), 3 = Ring 2 (group 1)
DROP TABLE IF EXISTS pg_temp.dg_band;
CREATE TEMP TABLE dg_band AS
SELECT s.*, nextval(pg_get_serial_sequence('target_bands', 'id')) AS id
FROM (SELECT n, b FROM dg_tgt CROSS JOIN generate_series(1, 3) AS b ORDER BY n, b) AS s;

INSERT INTO targets (id, title)
SELECT t.id, %(prefix)s || ' ' || lpad(t.n::text, 4, '0') || ': '
       || string_agg(g.title, ' / ' ORDER BY g.g)
FROM dg_tgt AS t JOIN dg_grp AS g USING (n)
GROUP BY t.id, t.n ORDER BY t.id;

INSERT INTO trait_groups (id, title)
SELECT id, title FROM dg_grp ORDER BY id;

INSERT INTO trait_group_traits (trait_group_id, trait_id)
SELECT DISTINCT g.id, gt.trait_id FROM dg_gtrait AS gt JOIN dg_grp AS g USING (n, g);

INSERT INTO target_bands (id, target_id, title, is_bullseye)
SELECT b.id, t.id, CASE b.b WHEN 1 THEN 'Bullseye' ELSE 'Ring ' || (b.b - 1) END, b.b = 1
FROM dg_band AS b JOIN dg_tgt AS t USING (n) ORDER BY b.id;

INSERT INTO target_band_trait_groups (target_band_id, trait_group_id)
SELECT b.id, g.id FROM dg_band AS b JOIN dg_grp AS g ON g.n = b.n AND g.g <= 4 - b.b;
"""

_CAMPAIGNS = """
DROP TABLE IF EXISTS pg_temp.dg_camp;
CREATE TEMP TABLE dg_camp AS
SELECT s.*, nextval(pg_get_serial_sequence('campaigns', 'id')) AS id
FROM (SELECT t.id AS target_id, t.title FROM targets AS t
      WHERE t.id = ANY(%(targets)s) ORDER BY t.id) AS s;

INSERT INTO campaigns (id, target_id, title)
SELECT id, target_id, 'Campaign ' || split_part(title, ':', 1) FROM dg_camp ORDER BY id;

-- bullseye (lowest band id) highest; each next band $0.01 less, floor $0.10
INSERT INTO bids (campaign_id, target_band_id, offer_amt)
SELECT c.id, b.id,
       greatest(0.10, (11 + pg_temp.dg_pick(%(seed)s, 401, c.target_id, 90)) / 100.0
                      - 0.01 * (row_number() OVER (PARTITION BY c.id ORDER BY b.id) - 1))
FROM dg_camp AS c JOIN target_bands AS b ON b.target_id = c.target_id
ORDER BY c.id, b.id;
"""

_ME_FILES = """
DROP TABLE IF EXISTS pg_temp.dg_me;
CREATE TEMP TABLE dg_me AS
SELECT i, nextval(pg_get_serial_sequence('me_files', 'id')) AS id
FROM generate_series(%(first)s, %(last)s) AS i;

INSERT INTO me_files (id, display_name, created_at)
SELECT id, 'member-' || lpad(i::text, 7, '0'),
       timestamptz %(epoch)s + make_interval(secs => pg_temp.dg_u(%(seed)s, 1, i) * 8.0e7)
FROM dg_me ORDER BY id;

INSERT INTO me_file_tags (me_file_id, trait_id, tag_value, created_at, updated_at)
SELECT m.id, tr.id,
       CASE WHEN tr.kind = 'zip' AND pg_temp.dg_u(%(seed)s, 31, m.i) < 0.010 THEN NULL
            WHEN tr.kind = 'zip' AND pg_temp.dg_u(%(seed)s, 31, m.i) < 0.015 THEN ''
            WHEN tr.kind <> 'zip' AND pg_temp.dg_u(%(seed)s, 32, m.i * 64 + x.slot) < 0.002 THEN NULL
            WHEN tr.k = 0 THEN 'yes'
            ELSE tr.name END,
       ts, ts
FROM dg_me AS m
CROSS JOIN LATERAL (
    SELECT timestamptz %(epoch)s + make_interval(secs => pg_temp.dg_u(%(seed)s, 2, m.i) * 9.0e7)
) AS c(ts)
CROSS JOIN LATERAL (
    -- slot: 1 sex, 2 age, 3 zip, 10+k hobby k, 40+k cuisine k, 60 vip, 61 opt-in
    VALUES ('sex', 1 + pg_temp.dg_pick(%(seed)s, 11, m.i, 2), 1),
           ('age', 1 + pg_temp.dg_pick(%(seed)s, 12, m.i, 10), 2),
           ('zip', 1 + pg_temp.dg_pick(%(seed)s, 13, m.i, 1000), 3)
    UNION ALL
    SELECT 'hobby', k, 10 + k FROM generate_series(1, 20) AS k
    WHERE pg_temp.dg_u(%(seed)s, 100 + k, m.i) < 0.15
    UNION ALL
    SELECT 'cuisine', k, 40 + k FROM generate_series(1, 15) AS k
    WHERE pg_temp.dg_u(%(seed)s, 200 + k, m.i) < 0.13
    UNION ALL
    SELECT 'vip', 0, 60 WHERE pg_temp.dg_u(%(seed)s, 14, m.i) < 0.10
    UNION ALL
    SELECT 'optin', 0, 61 WHERE pg_temp.dg_u(%(seed)s, 15, m.i) < 0.30
) AS x(kind, k, slot)
JOIN dg_trait AS tr ON tr.kind = x.kind AND tr.k = x.k
WHERE pg_temp.dg_u(%(seed)s, 10, m.i) >= 0.005   -- 0.5 %% never answered anything
ORDER BY m.id, x.slot;
"""

# --- the legacy state (plain SQL: no pgsnap object exists yet) -------------------------

# Where the legacy application had put each me_file. Deliberately NOT pgsnap's rule (that is
# defined once, in sql/10_membership.sql, and does not exist yet on a legacy schema): anyone
# holding a trait of a target's groups sat in the band of the lowest id among the bands whose
# groups they touched. Legacy rows are imperfect on purpose; populate puts them right.
_LEGACY_RULE = """
DROP TABLE IF EXISTS pg_temp.dg_rule;
CREATE TEMP TABLE dg_rule AS
SELECT DISTINCT ON (b.target_id, t.me_file_id) b.target_id, b.id AS band_id, t.me_file_id
FROM target_bands AS b
JOIN target_band_trait_groups AS bg ON bg.target_band_id = b.id
JOIN trait_group_traits AS gt ON gt.trait_group_id = bg.trait_group_id
JOIN me_file_tags AS t ON t.trait_id = gt.trait_id
WHERE b.target_id = ANY(%(targets)s)
ORDER BY b.target_id, t.me_file_id, b.id;
"""

# Legacy populations: the placed rows, 5 % of them in another band of the target, plus 2 %
# of the others as stale rows in the outer ring; 60 % with a NULL snapshot, the rest with an
# empty one (`{"tags": []}`, what the original stored when it found nothing): stale values
# that populate refreshes, while the backfill only ever fills the NULLs.
_LEGACY_POPULATIONS = """
DROP TABLE IF EXISTS pg_temp.dg_legacy_pop;
CREATE TEMP TABLE dg_legacy_pop AS
WITH bands AS (
    SELECT target_id, array_agg(id ORDER BY id) AS ids FROM target_bands
    WHERE target_id = ANY(%(targets)s) GROUP BY target_id
), picked AS (
    SELECT r.target_id, r.me_file_id,
           CASE WHEN pg_temp.dg_u(%(seed)s, 501, r.me_file_id * 100003 + r.target_id) < 0.05
                THEN b.ids[1 + (array_position(b.ids, r.band_id)
                                + pg_temp.dg_pick(%(seed)s, 502, r.me_file_id, cardinality(b.ids) - 1))
                               %% cardinality(b.ids)]
                ELSE r.band_id END AS band_id,
           CASE WHEN pg_temp.dg_u(%(seed)s, 501, r.me_file_id * 100003 + r.target_id) < 0.05
                THEN 'wrong_band' ELSE 'member' END AS kind
    FROM dg_rule AS r JOIN bands AS b USING (target_id)
    UNION ALL
    SELECT b.target_id, m.id, b.ids[cardinality(b.ids)], 'stale'
    FROM bands AS b CROSS JOIN me_files AS m
    WHERE pg_temp.dg_u(%(seed)s, 503, m.id * 100003 + b.target_id) < 0.02
      AND NOT EXISTS (SELECT 1 FROM dg_rule AS r WHERE r.target_id = b.target_id AND r.me_file_id = m.id)
)
SELECT p.*, pg_temp.dg_u(%(seed)s, 504, p.me_file_id * 100003 + p.target_id) >= 0.6 AS with_snapshot
FROM picked AS p;

INSERT INTO target_populations (target_band_id, me_file_id, matching_tags_snapshot, created_at, updated_at)
SELECT p.band_id, p.me_file_id,
       CASE WHEN p.with_snapshot THEN jsonb '{"tags": []}' END,
       timestamptz %(epoch)s, timestamptz %(epoch)s
FROM dg_legacy_pop AS p
ORDER BY p.target_id, p.me_file_id;
"""

# The targets count as populated (they have rows). Offers of each target's first campaign:
# one per population whose band has a bid (NULL when the population is NULL, the race; 50 %
# NULL when it is not, the 2025-11 wipe), plus orphan offers whose population no longer
# exists (NULL). ad_events copy their offer's snapshot; a few belong to an offer that was
# deleted since (offer_id NULL).
_LEGACY_OFFERS = """
UPDATE targets SET population_status = 'populated', last_populated_at = timestamptz %(epoch)s
WHERE id = ANY(%(targets)s);

UPDATE campaigns SET launched_at = timestamptz %(epoch)s
WHERE target_id = ANY(%(targets)s) AND launched_at IS NULL;

DROP TABLE IF EXISTS pg_temp.dg_legacy_offer;
CREATE TEMP TABLE dg_legacy_offer AS
WITH camp AS (
    SELECT DISTINCT ON (target_id) id, target_id FROM campaigns
    WHERE target_id = ANY(%(targets)s) ORDER BY target_id, id
), src AS (
    SELECT c.id AS campaign_id, tp.me_file_id, tp.target_band_id, bd.offer_amt,
           CASE WHEN tp.matching_tags_snapshot IS NULL THEN 'population_null'
                WHEN pg_temp.dg_u(%(seed)s, 601, tp.id) < 0.5 THEN 'population_filled'
                ELSE 'copied' END AS kind,
           tp.matching_tags_snapshot
    FROM camp AS c
    JOIN target_bands AS b ON b.target_id = c.target_id
    JOIN bids AS bd ON bd.campaign_id = c.id AND bd.target_band_id = b.id
    JOIN target_populations AS tp ON tp.target_band_id = b.id
    UNION ALL
    SELECT c.id, m.id, ob.id, bd.offer_amt, 'population_gone', NULL
    FROM camp AS c
    CROSS JOIN LATERAL (SELECT id FROM target_bands WHERE target_id = c.target_id
                        ORDER BY id DESC LIMIT 1) AS ob
    JOIN bids AS bd ON bd.campaign_id = c.id AND bd.target_band_id = ob.id
    JOIN me_files AS m ON pg_temp.dg_u(%(seed)s, 602, m.id * 100003 + c.id) < 0.01
    WHERE NOT EXISTS (SELECT 1 FROM target_populations AS tp
                      JOIN target_bands AS tb ON tb.id = tp.target_band_id
                      WHERE tb.target_id = c.target_id AND tp.me_file_id = m.id)
)
SELECT s.*, nextval(pg_get_serial_sequence('offers', 'id')) AS id
FROM (SELECT * FROM src ORDER BY campaign_id, me_file_id) AS s;

INSERT INTO offers (id, campaign_id, me_file_id, target_band_id, offer_amt, is_current,
                    matching_tags_snapshot, created_at, updated_at)
SELECT id, campaign_id, me_file_id, target_band_id, offer_amt,
       pg_temp.dg_u(%(seed)s, 603, id) < 0.3,
       CASE WHEN kind = 'copied' THEN matching_tags_snapshot END,
       timestamptz %(epoch)s, timestamptz %(epoch)s
FROM dg_legacy_offer ORDER BY id;

INSERT INTO ad_events (offer_id, campaign_id, me_file_id, target_band_id, event_type, amount,
                       matching_tags_snapshot, created_at)
SELECT CASE WHEN e.deleted THEN NULL ELSE o.id END, o.campaign_id, o.me_file_id,
       o.target_band_id, (ARRAY['banner_tap', 'jump', 'completed'])[e.n],
       CASE WHEN e.n = 3 THEN o.offer_amt ELSE 0 END,
       CASE WHEN o.kind = 'copied' AND NOT e.deleted THEN o.matching_tags_snapshot END,
       timestamptz %(epoch)s + make_interval(mins => e.n)
FROM dg_legacy_offer AS o
CROSS JOIN LATERAL (
    SELECT n, pg_temp.dg_u(%(seed)s, 605, o.id) < 0.04 AS deleted
    FROM generate_series(1, 1 + pg_temp.dg_pick(%(seed)s, 606, o.id, 3)) AS n
) AS e
WHERE pg_temp.dg_u(%(seed)s, 604, o.id) < 0.25
ORDER BY o.id, e.n;
"""

_COUNTED_TABLES = ("traits", "trait_groups", "targets", "target_bands", "campaigns", "bids",
                   "me_files", "me_file_tags")


@dataclass
class Dataset:
    """What ``generate`` made: row counts and the ids a caller needs."""

    seed: int
    counts: dict[str, int] = field(default_factory=dict)
    target_ids: list[int] = field(default_factory=list)
    narrow_target_ids: list[int] = field(default_factory=list)
    #: the hobby that exactly 1 in 20 narrow targets reference (the sync bench changes it)
    probe_trait_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def generate(
    conn: psycopg.Connection,
    me_files: int = DEFAULT_ME_FILES,
    targets: int = DEFAULT_TARGETS,
    seed: int = 1,
    *,
    narrow_targets: int = 0,
    analyze: bool = True,
    fast_load: bool | None = None,
) -> Dataset:
    """Catalogue (reused when present), ``targets`` main targets with campaigns and bids,
    ``narrow_targets`` sync-latency targets, and ``me_files`` me_files with their tags.

    All targets are created ``not_populated``. Runs in one transaction.

    ``fast_load`` skips the per-row foreign-key checks (``session_replication_role =
    replica``, for this transaction only): the rows are built from the referenced ids, and the
    checks are more than half of the load time. The default (None) does so only where it is
    harmless and allowed: a superuser on the legacy schema, where the only triggers are the
    foreign keys'. With pgsnap deployed its triggers must run, so it is off there.
    """
    with conn.transaction():
        conn.execute("SET LOCAL work_mem = '256MB'")
        if fast_load is None:
            fast_load = conn.execute(
                "SELECT to_regnamespace('pgsnap') IS NULL"
                " AND (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)").fetchone()[0]
        if fast_load:
            conn.execute("SET LOCAL session_replication_role = replica")
        _prepare(conn)
        ensure_catalogue(conn)
        main_ids = create_targets(conn, targets, seed, style="main")
        create_campaigns(conn, main_ids, seed)
        narrow_ids = create_targets(conn, narrow_targets, seed, style="narrow")
        create_me_files(conn, me_files, seed)
        probe = conn.execute(
            "SELECT id FROM pg_temp.dg_trait WHERE kind = 'hobby' AND k = 1").fetchone()
    if analyze:
        _analyze(conn)
    return Dataset(seed=seed, counts=table_counts(conn), target_ids=main_ids,
                   narrow_target_ids=narrow_ids, probe_trait_id=probe[0] if probe else None)


def ensure_catalogue(conn: psycopg.Connection) -> int:
    """Create the trait catalogue unless it exists; returns the number of traits created."""
    _prepare(conn)
    _run(conn, _CATALOGUE_SPEC)
    _run(conn, _CATALOGUE_LOAD)
    (have,) = conn.execute("SELECT count(*) FROM pg_temp.dg_trait").fetchone()
    (want,) = conn.execute(
        "SELECT count(*) FROM pg_temp.dg_spec WHERE kind NOT IN ('vip', 'optin') OR k = 0"
    ).fetchone()
    if have == want:
        return 0
    if have:
        raise ValueError(f"a partial datagen catalogue exists ({have} of {want} traits)")
    _run(conn, _CATALOGUE_INSERT)
    _run(conn, _CATALOGUE_LOAD)
    return want


def create_targets(conn: psycopg.Connection, n: int, seed: int, style: str = "main") -> list[int]:
    """``n`` targets of a style (``main`` or ``narrow``), each with 3 nested bands."""
    if n <= 0:
        return []
    _prepare(conn)
    prefix = {"main": "Target", "narrow": "Narrow"}[style]
    # numbering goes on from the targets of this style already there
    (first,) = conn.execute("SELECT count(*) + 1 FROM targets WHERE title LIKE %s",
                            [prefix + " %"]).fetchone()
    _run(conn, _TARGETS.format(group_spec=_GROUP_SPEC[style]),
         {"seed": seed, "n": n, "prefix": prefix, "first": first})
    return [r[0] for r in conn.execute("SELECT id FROM pg_temp.dg_tgt ORDER BY id")]


def create_campaigns(conn: psycopg.Connection, target_ids: list[int], seed: int) -> int:
    """One campaign per target with one bid per band; returns campaigns created."""
    if not target_ids:
        return 0
    _prepare(conn)
    _run(conn, _CAMPAIGNS, {"seed": seed, "targets": list(target_ids)})
    return len(target_ids)


def create_me_files(conn: psycopg.Connection, n: int, seed: int, first: int | None = None) -> int:
    """Me_files number ``first`` .. ``first + n - 1`` (the number, not the id, drives the
    choices; by default numbering goes on after the existing me_files) with their tags;
    returns me_files created."""
    if n <= 0:
        return 0
    _prepare(conn)
    if first is None:
        (first,) = conn.execute("SELECT count(*) + 1 FROM me_files").fetchone()
    _run(conn, _ME_FILES, {"seed": seed, "first": first, "last": first + n - 1, "epoch": EPOCH})
    return n


def generate_legacy_rows(
    conn: psycopg.Connection, target_ids: list[int], seed: int = 1, *, analyze: bool = True
) -> dict[str, Any]:
    """The pre-pgsnap state for ``target_ids`` (legacy schema only): populations (rule rows,
    some in a wrong band, some stale; most snapshots NULL), launched offers (NULL where the
    population was NULL, half NULL where it was filled, NULL for orphans) and ad_events
    copying their offer (a few orphaned). Returns totals and NULL counts per table and kind.
    """
    if not target_ids:
        return {}
    params = {"seed": seed, "targets": list(target_ids), "epoch": EPOCH}
    with conn.transaction():
        conn.execute("SET LOCAL work_mem = '256MB'")
        _prepare(conn)
        _run(conn, _LEGACY_RULE, params)
        _run(conn, _LEGACY_POPULATIONS, params)
        _run(conn, _LEGACY_OFFERS, params)
        populations = dict(conn.execute(
            "SELECT kind || CASE WHEN with_snapshot THEN '' ELSE '_null' END, count(*)"
            " FROM pg_temp.dg_legacy_pop GROUP BY 1 ORDER BY 1").fetchall())
        offers = dict(conn.execute(
            "SELECT kind, count(*) FROM pg_temp.dg_legacy_offer GROUP BY 1 ORDER BY 1").fetchall())
    if analyze:
        _analyze(conn, (*SNAPSHOT_TABLES, "campaigns"))
    totals = {name: {"rows": rows, "null": nulls}
              for name, (nulls, rows) in snapshot_health(conn).items()}
    return {"totals": totals, "populations_by_kind": populations, "offers_by_kind": offers}


def table_counts(conn: psycopg.Connection) -> dict[str, int]:
    query = sql.SQL(" UNION ALL ").join(
        sql.SQL("SELECT {}, count(*) FROM {}").format(sql.Literal(t), sql.Identifier(t))
        for t in _COUNTED_TABLES)
    return dict(conn.execute(query).fetchall())


def rows_digest(conn: psycopg.Connection) -> str:
    """md5 over every generated table's rows in id order: equal digests = identical data."""
    parts = []
    for table, order in (("traits", "id"), ("trait_groups", "id"),
                         ("trait_group_traits", "trait_group_id, trait_id"), ("targets", "id"),
                         ("target_bands", "id"),
                         ("target_band_trait_groups", "target_band_id, trait_group_id"),
                         ("campaigns", "id"), ("bids", "id"), ("me_files", "id"),
                         ("me_file_tags", "id"), ("target_populations", "id"), ("offers", "id"),
                         ("ad_events", "id")):
        parts.append(f"(SELECT md5(coalesce(string_agg(x::text, '|' ORDER BY {order}), ''))"
                     f" FROM {table} AS x)")
    return conn.execute("SELECT md5(" + " || ".join(parts) + ")").fetchone()[0]


def _prepare(conn: psycopg.Connection) -> None:
    """The pg_temp helpers, and the catalogue map when this session has not loaded it yet."""
    _run(conn, _HELPERS)
    if conn.execute("SELECT to_regclass('pg_temp.dg_trait') IS NULL").fetchone()[0]:
        _run(conn, _CATALOGUE_SPEC)
        _run(conn, _CATALOGUE_LOAD)


def _analyze(conn: psycopg.Connection, tables: tuple[str, ...] = _COUNTED_TABLES
             + ("trait_group_traits", "target_band_trait_groups")) -> None:
    for table in tables:
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))


def _run(conn: psycopg.Connection, script: str, params: dict[str, Any] | None = None) -> None:
    """Execute a script one statement at a time, binding parameters client-side (they
    appear inside CREATE TABLE AS and after type names, where server-side ones cannot)."""
    cur = psycopg.ClientCursor(conn)
    for statement in _split(script):
        cur.execute(statement, params if "%(" in statement else None)


def _split(script: str) -> list[str]:
    statements, current, in_dollar = [], [], False
    for line in script.splitlines():
        in_dollar ^= line.count("$$") % 2 == 1
        current.append(line)
        if not in_dollar and line.rstrip().endswith(";"):
            statements.append("\n".join(current).strip())
            current = []
    tail = "\n".join(current).strip()
    if tail:
        statements.append(tail)
    return [s for s in statements if s and not all(
        ln.strip().startswith("--") or not ln.strip() for ln in s.splitlines())]
