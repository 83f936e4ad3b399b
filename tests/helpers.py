"""Small readable helpers to build pgsnap test data and read results back.

Everything here speaks plain SQL against the application tables
(migrations/0001.baseline-schema.sql), with explicit ids, so a test reads like its scenario:

    add_trait(conn, 1, "Sex (Biological)", order=1)
    add_trait(conn, 3, "Female", parent=1, order=2)
    add_group(conn, 10, [3])
    add_target(conn, 1, bands=[(1, [10], True)])
    tag(conn, me_file=1, trait=3, value="Female")
    populate(conn, 1)
    assert populations(conn, 1) == {1: (1, snapshot(...))}

The second half is a **reference model**: the membership rule and the snapshot
of docs/rules.md re-stated in pure Python, independent of the SQL. It
reads the raw tables (`Model.load(conn)`) and says what every population row
should be.

Helpers work with any row factory on the connection: they open their own
tuple-row cursors.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg import sql
from psycopg.rows import tuple_row

# Every table of the application schema (migrations/0001.baseline-schema.sql), children first.
APP_TABLES = (
    "ad_events",
    "offers",
    "bids",
    "campaigns",
    "target_populations",
    "me_file_tags",
    "me_files",
    "target_band_trait_groups",
    "target_bands",
    "targets",
    "trait_group_traits",
    "trait_groups",
    "traits",
)

EMPTY_SNAPSHOT = {"tags": []}


# --------------------------------------------------------------------------
# low-level access


def rows(conn, query: str, params: Sequence[Any] | dict | None = None) -> list[tuple]:
    """All rows of `query` as tuples, whatever the connection's row factory."""
    with conn.cursor(row_factory=tuple_row) as cur:
        cur.execute(query, params)
        return cur.fetchall() if cur.description else []


def value(conn, query: str, params: Sequence[Any] | dict | None = None) -> Any:
    """The single value of a one-row, one-column query."""
    result = rows(conn, query, params)
    assert len(result) == 1, f"expected one row, got {result!r}"
    return result[0][0]


def execute(conn, query: str, params: Sequence[Any] | dict | None = None) -> None:
    with conn.cursor(row_factory=tuple_row) as cur:
        cur.execute(query, params)


def db_state(conn, schemas=("public", "pgsnap")) -> dict[str, list[str]]:
    """Every row of every table of `schemas` (yoyo's tables included), as sorted JSON texts."""
    tables = rows(conn, "SELECT format('%%I.%%I', n.nspname, c.relname) FROM pg_catalog.pg_class c"
                          " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
                          " WHERE c.relkind IN ('r', 'p') AND n.nspname = ANY (%s) ORDER BY 1",
                    (list(schemas),))
    return {t: sorted(r[0] for r in rows(conn, f"SELECT pg_catalog.to_jsonb(x)::text FROM {t} x"))
            for (t,) in tables}


def wait_until(predicate: Callable[[], object], timeout: float = 30.0, what: str = "") -> None:
    """Poll `predicate` (an observable state: a row, a lock, a log line) until it holds. The
    timeout only turns a hang into a failure; nothing relies on how long it takes."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.02)


# --------------------------------------------------------------------------
# catalogue


def add_trait(conn, id: int, name: str, parent: int | None = None, order: int = 0) -> int:
    execute(
        conn,
        "INSERT INTO traits (id, trait_name, parent_trait_id, display_order)"
        " VALUES (%s, %s, %s, %s)",
        (id, name, parent, order),
    )
    return id


def rename_trait(conn, id: int, name: str) -> None:
    execute(conn, "UPDATE traits SET trait_name = %s WHERE id = %s", (name, id))


def add_group(conn, id: int, traits: Iterable[int] = (), title: str | None = None) -> int:
    execute(
        conn,
        "INSERT INTO trait_groups (id, title) VALUES (%s, %s)",
        (id, title or f"group {id}"),
    )
    for trait_id in traits:
        add_group_trait(conn, id, trait_id)
    return id


def add_group_trait(conn, group: int, trait: int) -> None:
    execute(
        conn,
        "INSERT INTO trait_group_traits (trait_group_id, trait_id) VALUES (%s, %s)",
        (group, trait),
    )


def add_target(conn, id: int, bands: Iterable[tuple] = (), title: str | None = None) -> int:
    """A target and its bands: `bands=[(band_id, [group ids], is_bullseye), ...]`.

    `is_bullseye` may be left out (`(band_id, [group ids])` is a ring).
    """
    execute(conn, "INSERT INTO targets (id, title) VALUES (%s, %s)", (id, title or f"target {id}"))
    for band in bands:
        band_id, groups, *rest = band
        add_band(conn, band_id, id, groups, is_bullseye=bool(rest and rest[0]))
    return id


def add_band(
    conn, id: int, target: int, groups: Iterable[int] = (), is_bullseye: bool = False,
    title: str | None = None,
) -> int:
    execute(
        conn,
        "INSERT INTO target_bands (id, target_id, title, is_bullseye) VALUES (%s, %s, %s, %s)",
        (id, target, title or f"band {id}", is_bullseye),
    )
    for group_id in groups:
        add_band_group(conn, id, group_id)
    return id


def add_band_group(conn, band: int, group: int) -> None:
    execute(
        conn,
        "INSERT INTO target_band_trait_groups (target_band_id, trait_group_id) VALUES (%s, %s)",
        (band, group),
    )


def remove_band_group(conn, band: int, group: int) -> None:
    execute(
        conn,
        "DELETE FROM target_band_trait_groups WHERE target_band_id = %s AND trait_group_id = %s",
        (band, group),
    )


# --------------------------------------------------------------------------
# me_files and tags


def add_me_file(conn, id: int, name: str | None = None) -> int:
    execute(
        conn,
        "INSERT INTO me_files (id, display_name) VALUES (%s, %s) ON CONFLICT (id) DO NOTHING",
        (id, name),
    )
    return id


def tag(conn, me_file: int, trait: int, value: str | None = None) -> None:
    """Give `me_file` (created if missing) a tag on `trait` with `value`."""
    add_me_file(conn, me_file)
    execute(
        conn,
        "INSERT INTO me_file_tags (me_file_id, trait_id, tag_value) VALUES (%s, %s, %s)",
        (me_file, trait, value),
    )


def tags(conn, me_file: int, values: dict[int, str | None]) -> None:
    """Several tags at once: `tags(conn, 1, {3: "Female", 101: "02140"})`."""
    add_me_file(conn, me_file)
    for trait, tag_value in values.items():
        tag(conn, me_file, trait, tag_value)


def set_tag_value(conn, me_file: int, trait: int, value: str | None) -> None:
    execute(
        conn,
        "UPDATE me_file_tags SET tag_value = %s, updated_at = now()"
        " WHERE me_file_id = %s AND trait_id = %s",
        (value, me_file, trait),
    )


def untag(conn, me_file: int, trait: int) -> None:
    execute(
        conn,
        "DELETE FROM me_file_tags WHERE me_file_id = %s AND trait_id = %s",
        (me_file, trait),
    )


def copy_rows(conn, table: str, columns: Sequence[str], data: Iterable[Sequence[Any]]) -> None:
    """Bulk-load rows with COPY (thousands of me_files or tags in a blink)."""
    with conn.cursor(row_factory=tuple_row) as cur:
        with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in data:
                copy.write_row(row)


@contextlib.contextmanager
def sync_triggers_disabled(conn) -> Iterator[None]:
    """Tag and me_file writes inside the block do not sync populations.

    So a test can make populations stale on purpose and watch
    `populate_target` repair them. Needs the table owner (the test role).
    """
    for table in ("me_file_tags", "me_files"):
        execute(conn, f"ALTER TABLE {table} DISABLE TRIGGER USER")
    try:
        yield
    finally:
        for table in ("me_file_tags", "me_files"):
            execute(conn, f"ALTER TABLE {table} ENABLE TRIGGER USER")


def truncate_app_tables(conn) -> None:
    execute(conn, f"TRUNCATE {', '.join(APP_TABLES)} RESTART IDENTITY CASCADE")


# --------------------------------------------------------------------------
# the SQL API (docs/sql-api.md)


def populate(conn, target: int, batch_size: int | None = None, *, bind: bool = False) -> None:
    """CALL pgsnap.populate_target with the contract's named arguments.

    By default the values are written into the statement as literals, so it
    travels as a simple query, the way psql or a DBA sends it. `bind=True`
    sends them as bound parameters (psycopg's usual extended-protocol call).
    """
    args = [("p_target_id", target, "bigint")]
    if batch_size is not None:
        args.append(("p_batch_size", batch_size, "int"))
    if bind:
        placeholders = ", ".join(f"{name} => %s::{type_}" for name, _, type_ in args)
        execute(conn, f"CALL pgsnap.populate_target({placeholders})", [v for _, v, _ in args])
    else:
        call = sql.SQL("CALL pgsnap.populate_target({})").format(
            sql.SQL(", ").join(
                sql.SQL("{} => {}::{}").format(sql.Identifier(name), sql.Literal(v), sql.SQL(type_))
                for name, v, type_ in args
            )
        )
        execute(conn, call)


def band_for(conn, me_file: int, target: int) -> int | None:
    return value(conn, "SELECT pgsnap.band_for(%s::bigint, %s::bigint)", (me_file, target))


def build_snapshot(conn, me_file: int, band: int) -> Any:
    return value(conn, "SELECT pgsnap.build_snapshot(%s::bigint, %s::bigint)", (me_file, band))


# --------------------------------------------------------------------------
# reading results


def snapshot(*parents: list) -> dict:
    """`snapshot([1, "Sex", 1, [[3, "Female", 2]]], ...)` → `{"tags": [...]}`."""
    return {"tags": list(parents)}


def population_rows(conn, target: int) -> list[tuple[int, int, Any]]:
    """(me_file_id, target_band_id, snapshot) of every row of `target`, sorted.

    The target is found through the band (the denormalised
    `target_populations.target_id` is deliberately not used).
    """
    return rows(
        conn,
        "SELECT p.me_file_id, p.target_band_id, p.matching_tags_snapshot"
        " FROM target_populations p JOIN target_bands b ON b.id = p.target_band_id"
        " WHERE b.target_id = %s ORDER BY p.me_file_id, p.target_band_id",
        (target,),
    )


def populations(conn, target: int) -> dict[int, tuple[int, Any]]:
    """{me_file_id: (band_id, snapshot)} for `target`; fails on a duplicate me_file."""
    result: dict[int, tuple[int, Any]] = {}
    for me_file, band, snap in population_rows(conn, target):
        assert me_file not in result, (
            f"me_file {me_file} has two rows in target {target}: "
            f"bands {result[me_file][0]} and {band}"
        )
        result[me_file] = (band, snap)
    return result


@dataclass(frozen=True)
class RowVersion:
    id: int
    xmin: str
    target_band_id: int
    me_file_id: int
    snapshot: Any
    created_at: Any
    updated_at: Any


def row_versions(conn) -> dict[int, RowVersion]:
    """Every target_populations row by id, with its xmin (physical version)."""
    return {
        r[0]: RowVersion(*r)
        for r in rows(
            conn,
            "SELECT id, xmin::text, target_band_id, me_file_id, matching_tags_snapshot,"
            " created_at, updated_at FROM target_populations",
        )
    }


def row_versions_by_me_file(conn, target: int) -> dict[int, RowVersion]:
    """{me_file_id: RowVersion} for the rows of `target`."""
    band_ids = {r[0] for r in rows(conn, "SELECT id FROM target_bands WHERE target_id = %s", (target,))}
    result = {}
    for version in row_versions(conn).values():
        if version.target_band_id in band_ids:
            assert version.me_file_id not in result, f"duplicate me_file {version.me_file_id}"
            result[version.me_file_id] = version
    return result


def target_status(conn, target: int) -> tuple[str, Any]:
    """(population_status, last_populated_at) of `target`."""
    (result,) = rows(
        conn,
        "SELECT population_status, last_populated_at FROM targets WHERE id = %s",
        (target,),
    )
    return result


def set_target_status(conn, target: int, status: str, last_populated_at: Any = None) -> None:
    execute(
        conn,
        "UPDATE targets SET population_status = %s, last_populated_at = %s WHERE id = %s",
        (status, last_populated_at, target),
    )


def db_now(conn) -> Any:
    return value(conn, "SELECT clock_timestamp()")


# --------------------------------------------------------------------------
# the worked example of docs/rules.md, and the extra traits and groups other tests use
#
# The tests name three scenarios on this catalogue:
# * Example 1: the worked example of docs/rules.md (seed_worked_example: T1, M1..M4);
# * Example 2: three tag changes on Example 1, each kept up to date by sync: (a) M2 adds Hiking,
#   (b) M1 replaces its Hobbies answers with Chess alone, (c) M3 deletes Female
#   (tests/test_sync.py);
# * Example 3: target T2 with the single band B9 {G40, G41, G50} and me_file M5 tagged Italian,
#   Thai, VIP and 10028 (a NULL tag_value): a band whose groups share one parent, and a
#   parentless trait (tests/test_snapshot.py).

# ids used by seed_worked_example
T1, B1, B2, B3 = 1, 1, 2, 3
T2, B9 = 2, 9
M1, M2, M3, M4, M5 = 1, 2, 3, 4, 5

SEX, MALE, FEMALE = 1, 2, 3
HOME_ZIP, ZIP_02140, ZIP_10028 = 4, 101, 102
HOBBIES, COOKING, HIKING, CHESS = 50, 51, 52, 53
CUISINE, ITALIAN, THAI = 200, 201, 202
VIP = 60
G10, G20, G30, G40, G41, G50 = 10, 20, 30, 40, 41, 50


def seed_example_catalogue(conn) -> None:
    """The traits and trait groups of the worked example (docs/rules.md), plus Cuisine, VIP,
    G40, G41 and G50."""
    for trait_id, name, parent, order in [
        (SEX, "Sex (Biological)", None, 1),
        (MALE, "Male", SEX, 1),
        (FEMALE, "Female", SEX, 2),
        (HOME_ZIP, "Home Zip Code", None, 1),
        (ZIP_02140, "02140", HOME_ZIP, 2140),
        (ZIP_10028, "10028", HOME_ZIP, 10028),
        (HOBBIES, "Hobbies", None, 3),
        (COOKING, "Cooking", HOBBIES, 2),
        (HIKING, "Hiking", HOBBIES, 1),
        (CHESS, "Chess", HOBBIES, 3),
        (CUISINE, "Cuisine", None, 7),
        (ITALIAN, "Italian", CUISINE, 4),
        (THAI, "Thai", CUISINE, 9),
        (VIP, "VIP", None, 5),
    ]:
        add_trait(conn, trait_id, name, parent=parent, order=order)
    add_group(conn, G10, [FEMALE], "Women")
    add_group(conn, G20, [ZIP_02140], "Boston zip")
    add_group(conn, G30, [HIKING, CHESS], "Outdoorsy")
    add_group(conn, G40, [ITALIAN])
    add_group(conn, G41, [THAI])
    add_group(conn, G50, [VIP])


def seed_example_t1(conn) -> None:
    """Target T1: B1 bullseye {G10, G20, G30}, B2 ring {G10, G20}, B3 ring {G10}."""
    add_target(conn, T1, bands=[(B1, [G10, G20, G30], True), (B2, [G10, G20]), (B3, [G10])])


def seed_example_me_files(conn) -> None:
    """M1..M4 of the worked example (docs/rules.md)."""
    tags(conn, M1, {FEMALE: "Female", ZIP_02140: "02140", HIKING: "Hiking", CHESS: "Chess",
                    COOKING: "Cooking"})
    tags(conn, M2, {FEMALE: "Female", ZIP_02140: "02140"})
    tags(conn, M3, {FEMALE: "Female", ZIP_10028: "10028", HIKING: "Hiking"})
    tags(conn, M4, {MALE: "Male", ZIP_02140: "02140"})


def seed_worked_example(conn) -> None:
    """Catalogue, target T1 and me_files M1..M4 (the worked example of docs/rules.md)."""
    seed_example_catalogue(conn)
    seed_example_t1(conn)
    seed_example_me_files(conn)


# --------------------------------------------------------------------------
# reference model (docs/rules.md, in pure Python)


@dataclass(frozen=True)
class Trait:
    id: int
    name: str
    parent: int | None
    order: int


@dataclass(frozen=True)
class Band:
    id: int
    target: int
    groups: frozenset[int]
    is_bullseye: bool


@dataclass
class Model:
    """The membership rule and the snapshot, computed from the raw tables.

    * a me_file satisfies a group when it holds a tag on one of the group's
      traits (exact id, tag_value irrelevant); an empty group never;
    * it satisfies a band when it satisfies every group; a band with no groups
      is satisfied by nobody;
    * its band in a target is the satisfied band with the most groups, ties to
      the bullseye, then to the lowest band id;
    * the snapshot keeps the me_file's tags whose trait is in one of the band's
      groups and has a parent; parents by (display_order, id), children by
      (display_order, trait id); a NULL or '' tag_value shows the trait name.
    """

    traits: dict[int, Trait] = field(default_factory=dict)
    group_traits: dict[int, frozenset[int]] = field(default_factory=dict)
    bands: dict[int, Band] = field(default_factory=dict)
    targets: set[int] = field(default_factory=set)
    me_files: set[int] = field(default_factory=set)
    tags: dict[int, dict[int, str | None]] = field(default_factory=dict)

    @classmethod
    def load(cls, conn) -> Model:
        model = cls()
        for id_, name, parent, order in rows(
            conn, "SELECT id, trait_name, parent_trait_id, display_order FROM traits"
        ):
            model.traits[id_] = Trait(id_, name, parent, order)
        members: dict[int, set[int]] = {g: set() for (g,) in rows(conn, "SELECT id FROM trait_groups")}
        for group, trait in rows(conn, "SELECT trait_group_id, trait_id FROM trait_group_traits"):
            members[group].add(trait)
        model.group_traits = {g: frozenset(t) for g, t in members.items()}
        band_groups: dict[int, set[int]] = {}
        for band, group in rows(
            conn, "SELECT target_band_id, trait_group_id FROM target_band_trait_groups"
        ):
            band_groups.setdefault(band, set()).add(group)
        for id_, target, bullseye in rows(conn, "SELECT id, target_id, is_bullseye FROM target_bands"):
            model.bands[id_] = Band(id_, target, frozenset(band_groups.get(id_, ())), bullseye)
        model.targets = {t for (t,) in rows(conn, "SELECT id FROM targets")}
        model.me_files = {m for (m,) in rows(conn, "SELECT id FROM me_files")}
        for me_file, trait, tag_value in rows(
            conn, "SELECT me_file_id, trait_id, tag_value FROM me_file_tags"
        ):
            model.tags.setdefault(me_file, {})[trait] = tag_value
        return model

    # membership

    def satisfies_group(self, me_file: int, group: int) -> bool:
        held = self.tags.get(me_file, {})
        return any(trait in held for trait in self.group_traits.get(group, ()))

    def satisfies_band(self, me_file: int, band: int) -> bool:
        groups = self.bands[band].groups
        return bool(groups) and all(self.satisfies_group(me_file, g) for g in groups)

    def bands_of(self, target: int) -> list[Band]:
        return sorted((b for b in self.bands.values() if b.target == target), key=lambda b: b.id)

    def band_for(self, me_file: int, target: int) -> int | None:
        satisfied = [b for b in self.bands_of(target) if self.satisfies_band(me_file, b.id)]
        if not satisfied:
            return None
        best = min(satisfied, key=lambda b: (-len(b.groups), not b.is_bullseye, b.id))
        return best.id

    # snapshot

    def snapshot(self, me_file: int, band: int) -> dict:
        band_traits: set[int] = set()
        for group in self.bands[band].groups:
            band_traits |= self.group_traits.get(group, frozenset())
        children: dict[int, list[list]] = {}
        for trait_id, tag_value in self.tags.get(me_file, {}).items():
            if trait_id not in band_traits:
                continue
            trait = self.traits[trait_id]
            if trait.parent is None or trait.parent not in self.traits:
                continue
            shown = trait.name if tag_value is None or tag_value == "" else tag_value
            children.setdefault(trait.parent, []).append([trait_id, shown, trait.order])
        entries = []
        for parent_id in sorted(children, key=lambda p: (self.traits[p].order, p)):
            parent = self.traits[parent_id]
            kids = sorted(children[parent_id], key=lambda c: (c[2], c[0]))
            entries.append([parent_id, parent.name, parent.order, kids])
        return {"tags": entries}

    # whole targets

    def populations(self, target: int) -> dict[int, tuple[int, dict]]:
        """What `populations(conn, target)` must return after populate."""
        result = {}
        for me_file in sorted(self.me_files):
            band = self.band_for(me_file, target)
            if band is not None:
                result[me_file] = (band, self.snapshot(me_file, band))
        return result

    def status_after_populate(self, target: int) -> str:
        return "populated" if self.bands_of(target) else "not_populated"


# --------------------------------------------------------------------------
# concurrency: observing and pacing other sessions

RECOMPUTE_DIFF = """
WITH members AS MATERIALIZED (
    SELECT m.target_id, m.target_band_id, m.me_file_id
      FROM pgsnap.memberships(%(targets)s::bigint[]) m
), expected AS (
    SELECT m.target_id, m.target_band_id, m.me_file_id,
           pgsnap.build_snapshot(m.me_file_id, m.target_band_id) AS snapshot
      FROM members m
), actual AS (
    SELECT b.target_id, p.target_band_id, p.me_file_id, p.matching_tags_snapshot AS snapshot
      FROM target_populations p
      JOIN target_bands b ON b.id = p.target_band_id
     WHERE b.target_id = ANY (%(targets)s::bigint[])
)
SELECT 'missing' AS problem, x.* FROM (SELECT * FROM expected EXCEPT ALL SELECT * FROM actual) x
UNION ALL
SELECT 'unexpected', y.* FROM (SELECT * FROM actual EXCEPT ALL SELECT * FROM expected) y
ORDER BY 3, 4, 1
LIMIT 20
"""

DUPLICATES = """
SELECT b.target_id, p.me_file_id, array_agg(p.target_band_id ORDER BY p.target_band_id)
  FROM target_populations p JOIN target_bands b ON b.id = p.target_band_id
 GROUP BY b.target_id, p.me_file_id HAVING count(*) > 1
"""


def assert_targets_exact(conn, targets: list[int]) -> None:
    """The rows of `targets` are exactly the from-scratch recomputation
    (pgsnap.memberships + pgsnap.build_snapshot for every member), no (target,
    me_file) has two rows, no snapshot is NULL, and the sync queue is empty."""
    assert rows(conn, RECOMPUTE_DIFF, {"targets": targets}) == []
    assert rows(conn, DUPLICATES) == []
    assert value(conn, "SELECT count(*) FROM target_populations WHERE matching_tags_snapshot IS NULL") == 0
    assert value(conn, "SELECT count(*) FROM pgsnap.sync_queue") == 0
    assert value(conn, "SELECT count(*) FROM pgsnap.sync_pending") == 0


ROW_LOCK = ("transactionid", "tuple")  # waiting for another transaction's row lock
ADVISORY = ("advisory",)


def wait_until_blocked(conn, pid: int, what: str, events: tuple[str, ...] = ROW_LOCK + ADVISORY,
                       timeout: float = 20.0) -> str:
    """Wait until backend `pid` waits on a heavyweight lock of one of `events`
    (pg_stat_activity.wait_event); returns the event."""
    deadline = time.monotonic() + timeout
    while True:
        state = rows(conn, "SELECT wait_event_type, wait_event FROM pg_stat_activity WHERE pid = %s",
                     (pid,))
        if state and state[0][0] == "Lock" and state[0][1] in events:
            return state[0][1]
        assert time.monotonic() < deadline, f"{what} never blocked on {events}: {state}"
        time.sleep(0.005)


class Runner(threading.Thread):
    """Runs `fn(*args)` in a thread, keeping its exception for the test to check."""

    def __init__(self, fn, *args):
        super().__init__(daemon=True)
        self.fn, self.args, self.error, self.result = fn, args, None, None

    def run(self):
        try:
            self.result = self.fn(*self.args)
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def finish(self, timeout: float = 60.0):
        self.join(timeout)
        assert not self.is_alive(), f"{self.fn.__name__} did not finish"
        if self.error is not None:
            raise self.error
        return self.result


GATES = """
CREATE TABLE public.test_gate (me_file_id bigint, app text, lock_key bigint);
GRANT SELECT ON public.test_gate TO PUBLIC;  -- the sync writes as pgsnap_definer
CREATE FUNCTION public.test_gate() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE k bigint;
BEGIN
    FOR k IN SELECT g.lock_key FROM public.test_gate g
              WHERE g.me_file_id = NEW.me_file_id AND g.app = current_setting('application_name') LOOP
        PERFORM pg_advisory_xact_lock_shared(k);  -- waits while the test holds k
    END LOOP;
    RETURN NEW;
END $$;
CREATE TRIGGER test_gate BEFORE INSERT OR UPDATE ON public.target_populations
    FOR EACH ROW EXECUTE FUNCTION public.test_gate();
"""

def gated(new_conn, app: str):
    c = new_conn()
    execute(c, "SELECT set_config('application_name', %s, false)", (app,))
    return c


