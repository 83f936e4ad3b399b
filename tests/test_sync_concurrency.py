"""Inline sync racing populate and other writers (docs/rules.md, "Sync" and "Populate").

The original could leave a me_file in two bands of one target, or lose a row,
when its per-me_file sync ran while a bulk refresh of the target was under
way. pgsnap serialises the two per me_file (sync locks the me_files row
FOR NO KEY UPDATE at COMMIT, a populate batch FOR SHARE) and per target status
change (advisory locks), and the database allows one row per (target,
me_file).

* a random race, repeated with three seeds: `CALL pgsnap.populate_target(t,
  200)` on a 20,000-me_file target while four connections apply a few hundred
  random tag inserts, updates, deletes, answer rewrites and registrations,
  each in its own short transaction; afterwards every row equals a
  from-scratch recomputation, no me_file has two rows in a target, no
  snapshot is NULL and no deadlock or serialization failure happened;
* the two interleavings of the race forced step by step with gates (a test
  trigger on target_populations that waits on an advisory lock the test
  holds), and a populate inside a caller's transaction;
* concurrent writers of one me_file;
* regressions: sync adds no deadlock between ordinary application
  transactions (it locks me_files with advisory slots, not row locks), and a
  REPEATABLE READ writer whose snapshot is outdated fails with 40001 instead
  of writing a row computed from stale tags (pgsnap.me_file_syncs).
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field

import psycopg
import pytest

from tests.helpers import (
    ADVISORY,
    B1,
    B3,
    FEMALE,
    GATES,
    HIKING,
    M1,
    M2,
    M3,
    T1,
    ZIP_02140,
    Model,
    Runner,
    assert_targets_exact,
    execute,
    gated,
    populate,
    populations,
    seed_worked_example,
    snapshot,
    sync_triggers_disabled,
    tag,
    target_status,
    value,
    wait_until_blocked,
)

# --------------------------------------------------------------------------
# sync racing populate at random: populate of a 20,000-me_file target under tag traffic

N_ME_FILES = 20_000
ZIPS = list(range(101, 121))          # 20 zips; group 20 holds the first ten
HOBBY_LIST = list(range(51, 59))      # 8 hobbies; group 30 holds 51-54
ALL_CHILDREN = [2, 3, *ZIPS, *HOBBY_LIST]
TR1, TR2 = 1, 2
BANDS_T1 = (11, 12, 13)               # bullseye {sex, zip, hobby}, ring {sex, zip}, ring {sex}
BANDS_T2 = (21, 22)                   # bullseye {hobbies 55-56, hobbies 57-58}, ring {55-56}

RACE_DATA = """
INSERT INTO traits (id, trait_name, parent_trait_id, display_order) VALUES
    (1, 'Sex (Biological)', NULL, 1), (2, 'Male', 1, 1), (3, 'Female', 1, 2),
    (4, 'Home Zip Code', NULL, 1), (50, 'Hobbies', NULL, 3);
INSERT INTO traits (id, trait_name, parent_trait_id, display_order)
SELECT z, lpad((z * 977 %% 100000)::text, 5, '0'), 4, z * 977 %% 100000 FROM generate_series(101, 120) z;
INSERT INTO traits (id, trait_name, parent_trait_id, display_order)
SELECT h, 'hobby ' || h, 50, (h * 5) %% 4 FROM generate_series(51, 58) h;
INSERT INTO trait_groups (id, title) VALUES (10, 'anyone'), (20, 'ten zips'), (30, 'hobbies A'),
    (40, 'hobbies B'), (41, 'hobbies C');
INSERT INTO trait_group_traits (trait_group_id, trait_id)
SELECT 10, t FROM generate_series(2, 3) t UNION ALL
SELECT 20, t FROM generate_series(101, 110) t UNION ALL
SELECT 30, t FROM generate_series(51, 54) t UNION ALL
SELECT 40, t FROM generate_series(55, 56) t UNION ALL
SELECT 41, t FROM generate_series(57, 58) t;
INSERT INTO targets (id, title) VALUES (1, 'race target'), (2, 'other target');
INSERT INTO target_bands (id, target_id, title, is_bullseye) VALUES
    (11, 1, 'bullseye', true), (12, 1, 'ring 1', false), (13, 1, 'ring 2', false),
    (21, 2, 'bullseye', true), (22, 2, 'ring', false);
INSERT INTO target_band_trait_groups (target_band_id, trait_group_id) VALUES
    (11, 10), (11, 20), (11, 30), (12, 10), (12, 20), (13, 10), (21, 40), (21, 41), (22, 40);
INSERT INTO me_files (id, display_name) SELECT m, 'member ' || m FROM generate_series(1, %(n)s) m;
-- 97 %% hold a sex tag (everyone with one is in T1), 95 %% a zip, each hobby 25 %%;
-- some values NULL or '' (the trait's name stands in)
INSERT INTO me_file_tags (me_file_id, trait_id, tag_value)
SELECT m, x.trait_id,
       CASE abs(hashint8extended(m * 64 + x.trait_id, %(seed)s)) %% 20 WHEN 0 THEN NULL WHEN 1 THEN ''
            ELSE 'v' || m END
  FROM generate_series(1, %(n)s) m
 CROSS JOIN LATERAL (
    SELECT 2 + abs(hashint8extended(m, %(seed)s * 10 + 1)) %% 2 AS trait_id
     WHERE abs(hashint8extended(m, %(seed)s * 10 + 2)) %% 100 >= 3
    UNION ALL
    SELECT 101 + abs(hashint8extended(m, %(seed)s * 10 + 3)) %% 20
     WHERE abs(hashint8extended(m, %(seed)s * 10 + 4)) %% 100 >= 5
    UNION ALL
    SELECT h FROM generate_series(51, 58) h
     WHERE abs(hashint8extended(m * 8 + h, %(seed)s * 10 + 5)) %% 4 = 0
 ) x;
"""


@dataclass
class Tally:
    ops: dict[str, int] = field(default_factory=dict)
    during_populate: int = 0
    retried: list[str] = field(default_factory=list)   # deadlocks / serialization failures
    errors: list[str] = field(default_factory=list)


class Worker(threading.Thread):
    """Random tag traffic from one connection, one short transaction per operation.

    Me_files are owned by one worker (id % workers) except a small hot set that
    every worker hits, where only operations that cannot collide on the unique
    (me_file_id, trait_id) are used (upsert-free insert ON CONFLICT DO NOTHING,
    delete, value change), so every failure left is a locking one.
    """

    HOT = list(range(1, 11))

    def __init__(self, conn, index: int, workers: int, seed: int, start: threading.Barrier,
                 populate_done: threading.Event, min_ops: int, max_ops: int):
        super().__init__(daemon=True)
        self.conn, self.index, self.workers = conn, index, workers
        self.rng = random.Random(seed * 1000 + index)
        self.start_barrier, self.populate_done = start, populate_done
        self.min_ops, self.max_ops = min_ops, max_ops
        self.tally = Tally()
        self.next_new_me_file = 1_000_000 + index * 10_000

    def run(self):
        try:
            self.start_barrier.wait()
            done = 0
            while done < self.max_ops and (done < self.min_ops or not self.populate_done.is_set()):
                hot = self.rng.random() < 0.1
                me_file = self.rng.choice(self.HOT) if hot else self.own_me_file()
                kinds = ["insert", "delete", "value"] + ([] if hot else ["retrait", "rewrite", "register"])
                weights = [3, 3, 2] + ([] if hot else [2, 1, 0.3])
                kind = self.rng.choices(kinds, weights)[0]
                running = not self.populate_done.is_set()
                self.apply(kind, me_file)
                if running and not self.populate_done.is_set():
                    self.tally.during_populate += 1
                self.tally.ops[kind] = self.tally.ops.get(kind, 0) + 1
                done += 1
        except BaseException as exc:  # reported by the test
            self.tally.errors.append(repr(exc))

    def own_me_file(self) -> int:
        while True:
            m = self.rng.randrange(11, N_ME_FILES + 1)
            if m % self.workers == self.index:
                return m

    def apply(self, kind: str, me_file: int) -> None:
        """One operation in its own transaction; deadlocks and serialization failures
        are recorded and retried (the design intends none)."""
        statements = self.statements(kind, me_file)
        for attempt in range(5):
            try:
                with self.conn.transaction():
                    for sql_text, params in statements:
                        execute(self.conn, sql_text, params)
                return
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure) as exc:
                self.tally.retried.append(f"{kind} on me_file {me_file}, attempt {attempt}: {exc!r}")
                time.sleep(0.01 * (attempt + 1))
        raise AssertionError(f"{kind} on me_file {me_file} failed 5 times")

    def statements(self, kind: str, me_file: int) -> list[tuple[str, tuple]]:
        r = self.rng
        if kind == "insert":
            return [("INSERT INTO me_file_tags (me_file_id, trait_id, tag_value) VALUES (%s, %s, %s)"
                     " ON CONFLICT (me_file_id, trait_id) DO NOTHING",
                     (me_file, r.choice(ALL_CHILDREN), r.choice([None, "", f"new {r.random():.4f}"])))]
        if kind == "delete":
            return [("DELETE FROM me_file_tags WHERE id = (SELECT id FROM me_file_tags"
                     " WHERE me_file_id = %s ORDER BY trait_id OFFSET %s LIMIT 1)",
                     (me_file, r.randrange(3)))]
        if kind == "value":
            return [("UPDATE me_file_tags SET tag_value = %s, updated_at = now() WHERE id = (SELECT id"
                     " FROM me_file_tags WHERE me_file_id = %s ORDER BY trait_id OFFSET %s LIMIT 1)",
                     (r.choice([None, "", f"typed {r.random():.4f}"]), me_file, r.randrange(3)))]
        if kind == "retrait":  # a zip or hobby answer changed to another one (owned me_file)
            family = ZIPS if r.random() < 0.5 else HOBBY_LIST
            old, new = r.sample(family, 2)
            return [("UPDATE me_file_tags SET trait_id = %s, tag_value = %s"
                     " WHERE me_file_id = %s AND trait_id = %s"
                     "   AND NOT EXISTS (SELECT 1 FROM me_file_tags WHERE me_file_id = %s AND trait_id = %s)",
                     (new, f"was {old}", me_file, old, me_file, new))]
        if kind == "rewrite":  # the app's replace of one parent's answers: delete all, insert new
            chosen = r.sample(HOBBY_LIST, r.randrange(0, 3))
            return [("DELETE FROM me_file_tags WHERE me_file_id = %s AND trait_id BETWEEN 51 AND 58",
                     (me_file,))] + [
                ("INSERT INTO me_file_tags (me_file_id, trait_id, tag_value) VALUES (%s, %s, %s)",
                 (me_file, h, f"hobby {h}")) for h in chosen]
        if kind == "register":  # a new member with its first answers, one transaction
            new_id = self.next_new_me_file
            self.next_new_me_file += 1
            answers = [r.choice([2, 3]), r.choice(ZIPS), *r.sample(HOBBY_LIST, 2)]
            return [("INSERT INTO me_files (id, display_name) VALUES (%s, 'new member')", (new_id,))] + [
                ("INSERT INTO me_file_tags (me_file_id, trait_id, tag_value) VALUES (%s, %s, 'yes')",
                 (new_id, t)) for t in answers]
        raise ValueError(kind)


@pytest.mark.parametrize("seed", [11, 22, 33])
def test_sync_racing_populate_leaves_no_difference(conn, new_conn, seed):
    """populate_target(T, 200) on 20,000 me_files while 4 connections write
    tags; afterwards both targets equal their recomputation (and the Python reference
    model), one row per (target, me_file), no NULL snapshot, no deadlock."""
    with sync_triggers_disabled(conn), psycopg.ClientCursor(conn) as cur:  # no target maintained yet
        cur.execute(RACE_DATA, {"n": N_ME_FILES, "seed": seed})
    populate(conn, TR2)  # a second maintained target the traffic also touches
    execute(conn, "ANALYZE")
    assert target_status(conn, TR1)[0] == "not_populated"

    workers_n = 4
    start = threading.Barrier(workers_n + 1)
    populate_done = threading.Event()
    populate_conn = new_conn()
    timing = {}

    def run_populate():
        start.wait()
        timing["start"] = time.monotonic()
        try:
            execute(populate_conn, f"CALL pgsnap.populate_target({TR1}, 200)")
        finally:
            timing["end"] = time.monotonic()
            populate_done.set()

    populator = Runner(run_populate)
    workers = [Worker(new_conn(), i, workers_n, seed, start, populate_done, min_ops=75, max_ops=150)
               for i in range(workers_n)]
    populator.start()
    for w in workers:
        w.start()
    populator.finish(timeout=120)
    for w in workers:
        w.join(120)
        assert not w.is_alive()

    tallies = [w.tally for w in workers]
    assert [t.errors for t in tallies] == [[]] * workers_n
    assert [t.retried for t in tallies] == [[]] * workers_n, "deadlock or serialization failure"
    total = sum(sum(t.ops.values()) for t in tallies)
    during = sum(t.during_populate for t in tallies)
    print(f"seed {seed}: populate {timing['end'] - timing['start']:.2f} s; {total} operations, "
          f"{during} while populate ran: {[t.ops for t in tallies]}")
    assert total >= 300
    assert during >= 20, f"only {during} of {total} operations ran while populate did"
    assert target_status(conn, TR1)[0] == "populated"

    execute(conn, "ANALYZE")
    assert_targets_exact(conn, [TR1, TR2])
    assert populations(conn, TR1) == Model.load(conn).populations(TR1)  # the Python reference too
    # the race target really is a 20,000-me_file target
    assert value(conn, "SELECT count(*) FROM target_populations WHERE target_id = %s", (TR1,)) > 19_000


# --------------------------------------------------------------------------
# the race step by step: gates on target_populations writes

M2_IN_B1 = (B1, snapshot([1, "Sex (Biological)", 1, [[3, "Female", 2]]],
                         [4, "Home Zip Code", 1, [[101, "02140", 2140]]],
                         [50, "Hobbies", 3, [[52, "Hiking", 1]]]))


def test_tag_change_committed_during_a_populate_batch_is_not_lost(conn, new_conn):
    """Populate's batch {M1, M2} has read M2's tags and is held while writing M2's row;
    M2 then adds Hiking and commits: its sync waits for the batch (M2's row lock),
    then moves M2 to B1. One row for M2, the fresh one."""
    seed_worked_example(conn)
    execute(conn, GATES)
    execute(conn, "INSERT INTO public.test_gate VALUES (%s, 'populate', 1)", (M2,))
    execute(conn, "SELECT pg_advisory_lock(1)")
    populator_conn = gated(new_conn, "populate")
    populator = Runner(populate, populator_conn, T1, 2)
    populator.start()
    wait_until_blocked(conn, populator_conn.info.backend_pid, "populate at M2", ADVISORY)

    tagger = new_conn()
    tagging = Runner(tag, tagger, M2, HIKING, "Hiking")
    tagging.start()
    # M2's row lock, held by the batch
    wait_until_blocked(conn, tagger.info.backend_pid, "the sync of M2", ADVISORY)
    assert target_status(conn, T1)[0] == "populating"

    execute(conn, "SELECT pg_advisory_unlock(1)")
    populator.finish()
    tagging.finish()
    assert populations(conn, T1) == {
        M1: (B1, snapshot([1, "Sex (Biological)", 1, [[3, "Female", 2]]],
                          [4, "Home Zip Code", 1, [[101, "02140", 2140]]],
                          [50, "Hobbies", 3, [[52, "Hiking", 1], [53, "Chess", 3]]])),
        M2: M2_IN_B1,
        M3: (B3, snapshot([1, "Sex (Biological)", 1, [[3, "Female", 2]]])),
    }
    assert populations(conn, T1) == Model.load(conn).populations(T1)
    assert target_status(conn, T1)[0] == "populated"
    assert_targets_exact(conn, [T1])


def test_populate_batch_waits_for_an_in_flight_sync(conn, new_conn):
    """Populate is held in batch {M1, M2}; M3 (batch {M3, M4}) gains 02140 and its sync
    is held while inserting M3's row; populate's next batch then waits for M3's lock
    and, once the sync commits, finds the row it would have written."""
    seed_worked_example(conn)
    execute(conn, GATES)
    execute(conn, "INSERT INTO public.test_gate VALUES (%s, 'populate', 1), (%s, 'tagger', 2)", (M1, M3))
    execute(conn, "SELECT pg_advisory_lock(1), pg_advisory_lock(2)")
    populator_conn = gated(new_conn, "populate")
    populator = Runner(populate, populator_conn, T1, 2)
    populator.start()
    wait_until_blocked(conn, populator_conn.info.backend_pid, "populate at M1", ADVISORY)

    tagger = gated(new_conn, "tagger")
    tagging = Runner(tag, tagger, M3, ZIP_02140, "02140")
    tagging.start()
    wait_until_blocked(conn, tagger.info.backend_pid, "the sync of M3", ADVISORY)

    execute(conn, "SELECT pg_advisory_unlock(1)")  # batch 1 commits, batch 2 waits for M3
    wait_until_blocked(conn, populator_conn.info.backend_pid, "populate at M3", ADVISORY)
    execute(conn, "SELECT pg_advisory_unlock(2)")
    tagging.finish()
    populator.finish()
    m3 = (B1, snapshot([1, "Sex (Biological)", 1, [[3, "Female", 2]]],
                       [4, "Home Zip Code", 1, [[101, "02140", 2140]]],
                       [50, "Hobbies", 3, [[52, "Hiking", 1]]]))
    assert populations(conn, T1)[M3] == m3
    assert populations(conn, T1) == Model.load(conn).populations(T1)
    assert value(conn, "SELECT count(*) FROM target_populations WHERE me_file_id = %s", (M3,)) == 1
    assert_targets_exact(conn, [T1])


def test_repopulate_waits_for_an_in_flight_sync(conn, new_conn):
    """A sync of a populated target is held mid-write; a populate of that target started
    meanwhile marks it populating, then its batch waits for the sync (M2's slot) and computes
    from the committed tags."""
    seed_worked_example(conn)
    populate(conn, T1)
    execute(conn, GATES)
    execute(conn, "INSERT INTO public.test_gate VALUES (%s, 'tagger', 2)", (M2,))
    execute(conn, "SELECT pg_advisory_lock(2)")
    tagger = gated(new_conn, "tagger")
    tagging = Runner(tag, tagger, M2, HIKING, "Hiking")
    tagging.start()
    wait_until_blocked(conn, tagger.info.backend_pid, "the sync of M2", ADVISORY)
    populator_conn = new_conn()
    populator = Runner(populate, populator_conn, T1, 1)
    populator.start()
    wait_until_blocked(conn, populator_conn.info.backend_pid, "the batch of M1 and M2", ADVISORY)
    assert target_status(conn, T1)[0] == "populating"
    execute(conn, "SELECT pg_advisory_unlock(2)")
    tagging.finish()
    populator.finish()
    assert populations(conn, T1)[M2] == M2_IN_B1
    assert populations(conn, T1) == Model.load(conn).populations(T1)
    assert_targets_exact(conn, [T1])


def rewrite_under_me_file_lock(c, rng):
    """The app's replace of M2's Hobbies answers, serialised on the me_files row."""
    with c.transaction():
        execute(c, "SELECT 1 FROM me_files WHERE id = %s FOR NO KEY UPDATE", (M2,))
        execute(c, "DELETE FROM me_file_tags WHERE me_file_id = %s AND trait_id IN (51, 52, 53)", (M2,))
        for hobby in rng.sample([51, 52, 53], rng.randrange(0, 3)):
            execute(c, "INSERT INTO me_file_tags (me_file_id, trait_id, tag_value) VALUES (%s, %s, %s)",
                    (M2, hobby, f"h{rng.randrange(3)}"))


def single_row_statement(c, rng):
    """One upsert or one delete of one of M2's hobby tags (autocommit)."""
    hobby = rng.choice([51, 52, 53])
    if rng.random() < 0.5:
        execute(c, "DELETE FROM me_file_tags WHERE me_file_id = %s AND trait_id = %s", (M2, hobby))
    else:
        execute(c, "INSERT INTO me_file_tags (me_file_id, trait_id, tag_value) VALUES (%s, %s, %s)"
                   " ON CONFLICT (me_file_id, trait_id) DO UPDATE SET tag_value = excluded.tag_value",
                (M2, hobby, f"h{rng.randrange(3)}"))


@pytest.mark.parametrize("write", [rewrite_under_me_file_lock, single_row_statement])
def test_concurrent_writers_of_one_me_file(conn, new_conn, write):
    """Three connections change M2's hobbies 40 times each, in patterns that cannot
    deadlock by themselves (an unserialised multi-statement rewrite can, with or
    without pgsnap): sync adds no deadlock and the rows end right."""
    seed_worked_example(conn)
    populate(conn, T1)
    start = threading.Barrier(3)

    def writer(c, seed):
        rng = random.Random(seed)
        start.wait()
        for _ in range(40):
            write(c, rng)

    runners = [Runner(writer, new_conn(), s) for s in range(3)]
    for r in runners:
        r.start()
    for r in runners:
        r.finish(120)
    assert populations(conn, T1) == Model.load(conn).populations(T1)
    assert_targets_exact(conn, [T1])


# --------------------------------------------------------------------------
# deadlocks between application transactions (findings; see the report)
#
# Sync locks the me_files row at COMMIT while the committing transaction still
# holds its tag row locks. A transaction that holds the me_files row and then
# needs one of those tag rows (deleting the me_file, whose cascade deletes its
# tags; or updating the profile, then a tag) used to simply wait; now the two
# wait for each other.


def delete_me_file(c):
    execute(c, "DELETE FROM me_files WHERE id = %s", (M2,))


def profile_then_tag(c):
    execute(c, "UPDATE me_files SET display_name = 'renamed' WHERE id = %s", (M2,))
    execute(c, "UPDATE me_file_tags SET tag_value = 'Woman' WHERE me_file_id = %s AND trait_id = %s",
            (M2, FEMALE))


def race_with_open_tag_update(conn, new_conn, other):
    """Transaction A updates M2's Female tag and stays open; B runs `other` (which
    blocks on A); then A commits. Returns the errors of A and B (None: committed)."""
    a, b = new_conn(autocommit=False), new_conn(autocommit=False)
    execute(a, "UPDATE me_file_tags SET tag_value = 'F' WHERE me_file_id = %s AND trait_id = %s",
            (M2, FEMALE))

    def run_b():
        try:
            other(b)
            b.commit()
        except psycopg.Error as exc:
            b.rollback()
            return exc
        return None

    runner = Runner(run_b)
    runner.start()
    wait_until_blocked(conn, b.info.backend_pid, other.__name__)
    try:
        a.commit()
        a_error = None
    except psycopg.Error as exc:
        a_error = exc
    return a_error, runner.finish()


@pytest.mark.parametrize("other", [delete_me_file, profile_then_tag])
def test_without_sync_these_transactions_just_wait(conn, new_conn, other):
    """Control: with the sync triggers off, both transactions commit."""
    seed_worked_example(conn)
    with sync_triggers_disabled(conn):
        assert race_with_open_tag_update(conn, new_conn, other) == (None, None)


@pytest.mark.parametrize("other", [delete_me_file, profile_then_tag])
def test_sync_adds_no_deadlock_between_application_transactions(conn, new_conn, other):
    seed_worked_example(conn)
    populate(conn, T1)
    a_error, b_error = race_with_open_tag_update(conn, new_conn, other)
    assert not isinstance(a_error, psycopg.errors.DeadlockDetected)
    assert not isinstance(b_error, psycopg.errors.DeadlockDetected), b_error
    assert (a_error, b_error) == (None, None)
    assert populations(conn, T1) == Model.load(conn).populations(T1)



# --------------------------------------------------------------------------
# isolation levels: the commit-time sync reads the tags through the
# committing transaction's snapshot
#
# Band {Female, 02140}; M7 holds Female only (no row). A adds 02140 while B,
# concurrently, removes Female and commits first. The tags end as {02140}: M7
# belongs nowhere. Under READ COMMITTED A's sync reads fresh tags. Under
# REPEATABLE READ it still sees Female and inserts a row whose snapshot lists a
# tag M7 no longer has (finding; see the report). Under SERIALIZABLE on both
# sides, SSI makes A fail with a serialization failure and its retry is right.

M7 = 7


def seed_two_group_band(conn):
    execute(conn, """
        INSERT INTO traits (id, trait_name, parent_trait_id, display_order) VALUES
            (1, 'Sex (Biological)', NULL, 1), (3, 'Female', 1, 2),
            (4, 'Home Zip Code', NULL, 1), (101, '02140', 4, 2140);
        INSERT INTO trait_groups (id, title) VALUES (10, 'Women'), (20, 'Boston zip');
        INSERT INTO trait_group_traits VALUES (10, 3), (20, 101);
        INSERT INTO targets (id, title) VALUES (1, 'T1');
        INSERT INTO target_bands (id, target_id, title, is_bullseye) VALUES (2, 1, 'B', true);
        INSERT INTO target_band_trait_groups VALUES (2, 10), (2, 20);
        INSERT INTO me_files (id) VALUES (7);
        INSERT INTO me_file_tags (me_file_id, trait_id, tag_value) VALUES (7, 3, 'Female')""")
    populate(conn, T1)
    assert populations(conn, T1) == {}


def add_zip_while_female_is_removed(conn, new_conn, a_level, b_level):
    """Returns the errors of B's and A's commits (None: committed)."""
    a, b = new_conn(autocommit=False), new_conn(autocommit=False)
    a.isolation_level, b.isolation_level = a_level, b_level
    value(a, "SELECT count(*) FROM me_file_tags")  # A's snapshot starts here
    tag(a, M7, ZIP_02140, "02140")
    execute(b, "DELETE FROM me_file_tags WHERE me_file_id = %s AND trait_id = %s", (M7, FEMALE))
    errors = []
    for c in (b, a):
        try:
            c.commit()
            errors.append(None)
        except psycopg.Error as exc:
            c.rollback()
            errors.append(exc)
    return errors


def test_read_committed_writers_sync_on_current_tags(conn, new_conn):
    seed_two_group_band(conn)
    rc = psycopg.IsolationLevel.READ_COMMITTED
    assert add_zip_while_female_is_removed(conn, new_conn, rc, rc) == [None, None]
    assert populations(conn, T1) == {}
    assert_targets_exact(conn, [T1])


def test_serializable_writers_fail_and_retry_rather_than_go_stale(conn, new_conn):
    seed_two_group_band(conn)
    ser = psycopg.IsolationLevel.SERIALIZABLE
    b_error, a_error = add_zip_while_female_is_removed(conn, new_conn, ser, ser)
    assert b_error is None
    assert isinstance(a_error, psycopg.errors.SerializationFailure)
    tag(conn, M7, ZIP_02140, "02140")  # A's retry
    assert populations(conn, T1) == {}
    assert_targets_exact(conn, [T1])


def test_repeatable_read_writer_is_not_synced_on_stale_tags(conn, new_conn):
    seed_two_group_band(conn)
    rr, rc = psycopg.IsolationLevel.REPEATABLE_READ, psycopg.IsolationLevel.READ_COMMITTED
    errors = add_zip_while_female_is_removed(conn, new_conn, rr, rc)
    # acceptable: a serialization failure for A (the app retries), or a right row set
    if isinstance(errors[1], psycopg.errors.SerializationFailure):
        tag(conn, M7, ZIP_02140, "02140")
    else:
        assert errors == [None, None]
    assert populations(conn, T1) == {}
    assert_targets_exact(conn, [T1])
