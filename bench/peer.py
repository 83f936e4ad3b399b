"""The peer: the original application's PopulateTargetWorker, re-implemented in Python.

A faithful port of Qlarius' ``PopulateTargetWorker`` (its population algorithm and its
snapshot construction), used by the benchmark as the application-side baseline. It does what
the Elixir worker did, query for query, with psycopg instead of Ecto/Postgrex, on an
autocommit connection (no surrounding transaction, as in the original):

0. ``Targets.trigger_population``: status ``populating``;
1. load the target (error if missing) and its bands with their groups and the groups' traits
   (three preload queries);
2. no bands: status ``not_populated``, return;
3. sort bands by rank (number of groups) ascending, stable;
4. load the existing (me_file, band) pairs of the target;
5. bottom-up candidates: per band, the group -> traits map (empty-group guard), then one
   ``SELECT DISTINCT me_file_id FROM me_file_tags`` with one EXISTS per group, each next band
   restricted to the previous band's candidates (``me_file_id = ANY(list)``); the last band a
   me_file survives into wins;
6. diff in Python (set differences);
7. deletes in ONE statement, an OR of (me_file_id = ? AND target_band_id = ?) terms;
8. per-band trait metadata (one parents query per band), then batches of 500 pairs (in set
   iteration order, as the Elixir MapSet): fetch every tag of the batch's me_files joined to
   its trait, build each snapshot in Python, one multi-row INSERT ... ON CONFLICT
   (target_band_id, me_file_id) DO NOTHING;
9. status ``populated`` + ``last_populated_at``, then the active campaigns of the target are
   looked up (the original broadcasts to them).

Where pgsnap (docs/rules.md) decides a detail the original left to chance, the peer
follows pgsnap so that the two produce byte-identical snapshots on nested bands:

* a NULL or empty ``tag_value`` shows the child trait's name (the original's later fix);
* children are ordered by display_order then trait id (the original: display_order, then
  whatever order the database returned), parents by display_order then id (as the original
  does for up to 32 parents).

Like the original, it does not enforce one row per target, keeps the old snapshot of an
unchanged pair, and with more than 32,767 deletions its single DELETE exceeds PostgreSQL's
65,535 bind-parameter limit (it fails, as the original would).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg
from psycopg.types.json import Jsonb

from bench.common import peak_rss_mb

BATCH_SIZE = 500


@dataclass
class Trait:
    id: int
    parent_trait_id: int | None


@dataclass
class Group:
    id: int
    traits: list[Trait] = field(default_factory=list)


@dataclass
class Band:
    id: int
    is_bullseye: bool
    groups: list[Group] = field(default_factory=list)


@dataclass
class PeerResult:
    target_id: int
    status: str
    candidates: int = 0
    inserted: int = 0
    deleted: int = 0
    batches: int = 0
    queries: int = 0


class _Counting:
    """Counts round trips, to report how chatty the application-side algorithm is."""

    def __init__(self, conn: psycopg.Connection):
        self.conn = conn
        self.queries = 0

    def execute(self, query, params=None):
        self.queries += 1
        return self.conn.execute(query, params)


def populate_targets(dsn: str, target_ids: list[int]) -> tuple[list[PeerResult], float]:
    """The bench's entry point, run in a process of its own: each target in turn on one autocommit
    connection, and this process's peak RSS in MB. The original held a whole target's
    candidates in memory, and so does the peer; its own process keeps that out of pgsnap's
    figure."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        runs = [populate_target(conn, target_id) for target_id in target_ids]
    return runs, peak_rss_mb()


def populate_target(conn: psycopg.Connection, target_id: int, batch_size: int = BATCH_SIZE) -> PeerResult:
    """Run the original algorithm for one target on ``conn`` (autocommit); see the module doc."""
    db = _Counting(conn)
    # Targets.trigger_population/1, before the job is enqueued
    db.execute("UPDATE targets SET population_status = 'populating' WHERE id = %s", [target_id])

    # 1. Repo.get!(Target, id) and Targets.get_bands_for_target (preload trait_groups: :traits)
    if db.execute("SELECT id, title, population_status FROM targets WHERE id = %s",
                  [target_id]).fetchone() is None:
        raise LookupError(f"target {target_id} does not exist")
    bands = _load_bands(db, target_id)

    # 2. no bands
    if not bands:
        db.execute("UPDATE targets SET population_status = 'not_populated' WHERE id = %s", [target_id])
        return PeerResult(target_id, "no_bands", queries=db.queries)

    # 3. rank ascending (Python's sort is stable, like Enum.sort_by)
    sorted_bands = sorted(bands, key=lambda b: len(b.groups))

    # 4. existing pairs
    existing = {
        (me_file_id, band_id)
        for me_file_id, band_id in db.execute(
            """SELECT tp.me_file_id, tp.target_band_id
                 FROM target_populations tp
                 JOIN target_bands tb ON tp.target_band_id = tb.id
                WHERE tb.target_id = %s""", [target_id])
    }

    # 5. bottom-up candidates
    populations: dict[int, int] = {}
    previous: list[int] | None = None
    for band in sorted_bands:
        group_ids = [g.id for g in band.groups]
        candidates = _candidates(db, group_ids, previous)
        for me_file_id in candidates:
            populations[me_file_id] = band.id
        previous = candidates

    # 6. diff
    new_pairs = set(populations.items())
    to_insert = list(new_pairs - existing)
    to_delete = list(existing - new_pairs)

    # 7. one DELETE for every stale pair
    deleted = 0
    if to_delete:
        where = " OR ".join(["(me_file_id = %s AND target_band_id = %s)"] * len(to_delete))
        deleted = db.execute(f"DELETE FROM target_populations WHERE {where}",
                             list(itertools.chain.from_iterable(to_delete))).rowcount

    # 8. metadata per band, then batches of 500 with a tag fetch and a Python snapshot each
    inserted = batches = 0
    if to_insert:
        metadata = {band.id: _trait_metadata(db, band) for band in bands}
        for start in range(0, len(to_insert), batch_size):
            inserted += _insert_batch(db, to_insert[start:start + batch_size], metadata)
            batches += 1

    # 9. status, then the campaigns to notify
    now = datetime.now(UTC).replace(microsecond=0)
    db.execute("UPDATE targets SET population_status = 'populated', last_populated_at = %s WHERE id = %s",
               [now, target_id])
    db.execute("SELECT id FROM campaigns WHERE target_id = %s AND deactivated_at IS NULL",
               [target_id]).fetchall()
    return PeerResult(target_id, "ok", candidates=len(populations), inserted=inserted,
                      deleted=deleted, batches=batches, queries=db.queries)


def _load_bands(db: _Counting, target_id: int) -> list[Band]:
    """The three queries of Ecto's nested many-to-many preload."""
    bands = [Band(id_, bool(bullseye)) for id_, bullseye in db.execute(
        "SELECT id, is_bullseye FROM target_bands WHERE target_id = %s", [target_id])]
    if not bands:
        return []
    by_id = {b.id: b for b in bands}
    groups: dict[int, list[Group]] = defaultdict(list)
    for band_id, group_id in db.execute(
            """SELECT bg.target_band_id, g.id
                 FROM trait_groups g
                 JOIN target_band_trait_groups bg ON bg.trait_group_id = g.id
                WHERE bg.target_band_id = ANY(%s)
                ORDER BY bg.target_band_id""", [list(by_id)]):
        group = Group(group_id)
        by_id[band_id].groups.append(group)
        groups[group_id].append(group)
    if groups:
        for group_id, trait_id, parent_id in db.execute(
                """SELECT gt.trait_group_id, t.id, t.parent_trait_id
                     FROM traits t
                     JOIN trait_group_traits gt ON gt.trait_id = t.id
                    WHERE gt.trait_group_id = ANY(%s)
                    ORDER BY gt.trait_group_id""", [list(groups)]):
            for group in groups[group_id]:
                group.traits.append(Trait(trait_id, parent_id))
    return bands


def _candidates(db: _Counting, group_ids: list[int], previous: list[int] | None) -> list[int]:
    """find_me_files_matching_all_trait_groups / filter_candidates_for_next_band."""
    by_group: dict[int, list[int]] = defaultdict(list)
    for group_id, trait_id in db.execute(
            "SELECT trait_group_id, trait_id FROM trait_group_traits WHERE trait_group_id = ANY(%s)",
            [group_ids]):
        by_group[group_id].append(trait_id)
    if len(by_group) != len(group_ids):  # some group has no traits: the band matches nobody
        return []
    conditions, params = [], []
    if previous is not None:
        conditions.append("mft.me_file_id = ANY(%s)")
        params.append(previous)
    for group_id in group_ids:
        conditions.append("EXISTS (SELECT 1 FROM me_file_tags mft2"
                          " WHERE mft2.me_file_id = mft.me_file_id AND mft2.trait_id = ANY(%s))")
        params.append(by_group[group_id])
    where = " AND ".join(conditions) or "true"
    return [r[0] for r in db.execute(
        f"SELECT DISTINCT mft.me_file_id FROM me_file_tags mft WHERE {where}", params)]


def _trait_metadata(db: _Counting, band: Band) -> dict[int, tuple[str, int, set[int]]]:
    """parent id -> (name, display_order, child trait ids of this band); parentless traits and
    traits whose parent row is missing are dropped."""
    traits = [t for g in band.groups for t in g.traits]
    parent_ids = list({t.parent_trait_id for t in traits if t.parent_trait_id is not None})
    parents = {id_: (name, order) for id_, name, order in db.execute(
        "SELECT id, trait_name, display_order FROM traits WHERE id = ANY(%s)", [parent_ids])}
    metadata: dict[int, tuple[str, int, set[int]]] = {}
    for trait in traits:
        parent = parents.get(trait.parent_trait_id)
        if parent is not None:
            metadata.setdefault(trait.parent_trait_id, (parent[0], parent[1], set()))[2].add(trait.id)
    return metadata


def _insert_batch(db: _Counting, batch: list[tuple[int, int]],
                  metadata: dict[int, dict[int, tuple[str, int, set[int]]]]) -> int:
    now = datetime.now(UTC).replace(microsecond=0)
    me_file_ids = list(dict.fromkeys(me_file_id for me_file_id, _ in batch))
    tags: dict[int, list[tuple]] = defaultdict(list)
    for row in db.execute(
            """SELECT mft.me_file_id, t.id, t.trait_name, t.display_order, t.parent_trait_id,
                      mft.tag_value
                 FROM me_file_tags mft
                 JOIN traits t ON mft.trait_id = t.id
                WHERE mft.me_file_id = ANY(%s)""", [me_file_ids]):
        tags[row[0]].append(row[1:])
    values, params = [], []
    for me_file_id, band_id in batch:
        snapshot = build_snapshot(tags.get(me_file_id, []), metadata.get(band_id, {}))
        values.append("(%s, %s, %s, %s, %s)")
        params += [me_file_id, band_id, Jsonb(snapshot), now, now]
    cur = db.execute(
        "INSERT INTO target_populations (me_file_id, target_band_id, matching_tags_snapshot,"
        " created_at, updated_at) VALUES " + ", ".join(values)
        + " ON CONFLICT (target_band_id, me_file_id) DO NOTHING", params)
    return cur.rowcount


def build_snapshot(tags: list[tuple], metadata: dict[int, tuple[str, int, set[int]]]) -> dict:
    """The original's snapshot construction over (trait_id, trait_name, display_order, parent_trait_id,
    tag_value)."""
    by_parent: dict[int, list[list]] = defaultdict(list)
    for trait_id, trait_name, display_order, parent_id, tag_value in tags:
        meta = metadata.get(parent_id)
        if meta is not None and trait_id in meta[2]:
            value = tag_value if tag_value not in (None, "") else trait_name
            by_parent[parent_id].append([trait_id, value, display_order])
    entries = []
    for parent_id in sorted(by_parent):  # Elixir map order (ascending id), then a stable sort
        children = sorted(by_parent[parent_id], key=lambda c: (c[2], c[0]))
        name, order, _ = metadata[parent_id]
        entries.append([parent_id, name, order, children])
    entries.sort(key=lambda e: e[2])
    return {"tags": entries}
