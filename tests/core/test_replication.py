"""Tests for twistkv.core.replication: merge laws, write clocks, tombstone collection, targets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twistkv.core.counter import CounterOverflow, NotAnInteger, PNCounter
from twistkv.core.quorum import ConsistencyLevel, Replica
from twistkv.core.record import (
    Record,
    Version,
    decode_record,
    encode_record,
    join_counters,
    live_value,
    single_writer_block,
)
from twistkv.core.replication import (
    collectable,
    context_clock,
    encode_sole_writer,
    encode_sole_writer_run,
    increment_version,
    merge_versions,
    new_version,
    next_stand_in,
    plan_write_targets,
    reconcile_versions,
    replica_is_stale,
    required_replies,
    sole_writer_clock,
    sole_writer_clocks,
    sole_writer_value,
    supersedes_sole_writer,
    supersedes_sole_writer_run,
    version_clock,
)
from twistkv.core.versioning import Ordering, VectorClock, pack_hlc

NODES = ("a", "b", "c")
# Small counters over few nodes make dominated, equal and concurrent pairs all common.
clock_pairs = st.dictionaries(st.sampled_from(NODES), st.integers(1, 3), max_size=3).map(
    lambda counters: tuple(sorted(counters.items()))
)
versions = st.builds(
    Version,
    value=st.sampled_from([b"", b"x", b"y"]),
    clock=clock_pairs,
    hlc=st.integers(0, 5),
    node=st.sampled_from(NODES),
    expires_at_ms=st.sampled_from([0, 10]),
    tombstone=st.booleans(),
    counter=st.none(),
)
version_lists = st.lists(versions, max_size=6)


def clocks_of(record: Record) -> set[VectorClock]:
    return {version_clock(v) for v in record.versions}


@given(version_lists, version_lists)
def test_merge_is_commutative(a: list[Version], b: list[Version]) -> None:
    """Receiving two batches in either order stores the identical record, byte for byte:
    even equal clocks with different content are resolved by a total order, not arrival."""
    assert merge_versions(merge_versions(None, a), b) == merge_versions(merge_versions(None, b), a)


@given(version_lists, version_lists, version_lists)
def test_merge_is_associative(a: list[Version], b: list[Version], c: list[Version]) -> None:
    """Merging batch by batch equals merging everything at once (replicas that batch
    differently converge)."""
    stepwise = merge_versions(merge_versions(merge_versions(None, a), b), c)
    assert stepwise == merge_versions(None, a + b + c)


@given(version_lists)
def test_merge_is_idempotent(a: list[Version]) -> None:
    """A duplicate delivery (retry, hint plus direct write, read repair) changes nothing."""
    once = merge_versions(None, a)
    assert merge_versions(once, a) == once
    assert merge_versions(once, once.versions) == once


@given(version_lists)
def test_merge_never_loses_a_version_that_nothing_supersedes(a: list[Version]) -> None:
    """Every input is kept or superseded by a kept version; kept versions are pairwise
    non-dominated and have distinct clocks (siblings)."""
    merged = merge_versions(None, a)
    kept = [version_clock(v) for v in merged.versions]
    for version in a:
        clock = version_clock(version)
        assert any(k.descends(clock) for k in kept)
        if not any(version_clock(o).compare(clock) is Ordering.AFTER for o in a):
            assert clock in kept
    assert len(set(kept)) == len(kept)
    for x in kept:
        for y in kept:
            assert x == y or x.compare(y) is Ordering.CONCURRENT


@given(version_lists)
def test_merge_orders_newest_first(a: list[Version]) -> None:
    """Element 0 is the last-writer winner, matching Record.winner()."""
    merged = merge_versions(None, a)
    if merged.versions:
        assert merged.versions[0] == merged.winner()


def test_descending_write_replaces_and_concurrent_write_becomes_sibling() -> None:
    """The basic Dynamo cases, spelled out."""
    v1 = Version(b"1", (("a", 1),), 1, "a")
    v2 = Version(b"2", (("a", 2),), 2, "a")
    other = Version(b"o", (("b", 1),), 3, "b")
    assert merge_versions(Record((v1,)), [v2]).versions == (v2,)
    assert merge_versions(Record((v2,)), [v1]).versions == (v2,)
    assert set(merge_versions(Record((v2,)), [other]).versions) == {v2, other}


@given(st.lists(versions, max_size=4), st.sampled_from(NODES), st.integers(1, 1000))
def test_new_version_supersedes_its_whole_context(
    seen: list[Version], node: str, hlc: int
) -> None:
    """A write whose context is everything read supersedes every sibling read: merging it in
    leaves it alone."""
    context = context_clock(seen)
    written = new_version(context, b"new", node, hlc)
    assert version_clock(written).compare(context) is Ordering.AFTER
    assert merge_versions(Record(tuple(seen)), [written]).versions == (written,)


def test_new_version_counter_is_the_hlc_so_writes_never_share_a_clock() -> None:
    """Two blind writes by one node with an empty context (a coordinator that holds no copy)
    still get different, ordered clocks: the counter comes from the strictly increasing HLC,
    not from the (absent) local history."""
    first = new_version(VectorClock(), b"1", "a", pack_hlc(1000, 0))
    second = new_version(VectorClock(), b"2", "a", pack_hlc(1000, 1))
    assert first.clock != second.clock
    assert merge_versions(Record((first,)), [second]).versions == (second,)
    # A context already ahead of the HLC (clock trouble) still advances.
    ahead = new_version(VectorClock.from_pairs([("a", 10**12)]), b"3", "a", 5)
    assert dict(ahead.clock)["a"] == 10**12 + 1


def test_blind_writes_from_two_nodes_become_siblings_lww_picks_the_later() -> None:
    """The documented consequence of blind SETs: concurrent, so both kept; the plain-GET
    winner is the later HLC."""
    base = new_version(VectorClock(), b"base", "a", pack_hlc(1000, 0))
    from_b = new_version(VectorClock(), b"b", "b", pack_hlc(2000, 0))
    merged = merge_versions(Record((base,)), [from_b])
    assert len(merged.versions) == 2
    assert merged.winner() == from_b


def test_tombstone_drops_value_and_expiry() -> None:
    """A tombstone carries no value: nothing to leak and nothing to expire."""
    tomb = new_version(VectorClock(), b"ignored", "a", 7, expires_at_ms=99, tombstone=True)
    assert tomb.tombstone and tomb.value == b"" and tomb.expires_at_ms == 0


def test_collectable_needs_every_version_dead_for_the_grace_period() -> None:
    """Tombstones and expired values are collected after the grace, and only whole records."""
    grace = 1000
    tomb = Version(b"", (("a", 1),), pack_hlc(5000, 0), "a", tombstone=True)
    expired = Version(b"v", (("b", 1),), pack_hlc(1, 0), "b", expires_at_ms=5500)
    live = Version(b"v", (("c", 1),), pack_hlc(1, 0), "c")
    assert not collectable(Record((tomb,)), 5999, grace)
    assert collectable(Record((tomb,)), 6000, grace)
    assert not collectable(Record((tomb, expired)), 6000, grace)  # expired only 500 ms ago
    assert collectable(Record((tomb, expired)), 6500, grace)
    # A live sibling keeps the record, or dropping the tombstone would resurrect it.
    assert not collectable(Record((tomb, live)), 10**9, grace)
    assert collectable(Record(()), 0, grace)


def test_replica_is_stale_compares_clock_sets() -> None:
    """Read repair targets replicas missing a reconciled version or holding a superseded one."""
    v1 = Version(b"1", (("a", 1),), 1, "a")
    v2 = Version(b"2", (("a", 2),), 2, "a")
    sib = Version(b"s", (("b", 1),), 3, "b")
    reconciled = reconcile_versions([v1, v2, sib])
    assert replica_is_stale([], reconciled)
    assert replica_is_stale([v1], reconciled)
    assert replica_is_stale([v2], reconciled)
    assert not replica_is_stale([sib, v2], reconciled)


def test_required_replies_defaults_levels_and_small_clusters() -> None:
    """Defaults apply as configured and are capped by the replicas that exist; levels are
    computed over the replicas that exist."""
    assert required_replies(None, 3, 2) == 2
    assert required_replies(None, 1, 2) == 1
    assert required_replies(ConsistencyLevel.ALL, 3, 2) == 3
    assert required_replies(ConsistencyLevel.QUORUM, 5, 2) == 3
    assert required_replies(ConsistencyLevel.QUORUM, 2, 2) == 2
    assert required_replies(ConsistencyLevel.ONE, 3, 2) == 1


def test_plan_write_targets_replaces_down_owners_with_live_fallbacks() -> None:
    """Live owners are their own target; a down owner gets the nearest live fallback as a
    hinted stand-in; with none left the slot stays on the owner."""
    down = {"b", "x"}
    plan = plan_write_targets(("a", "b", "c"), ("x", "y"), lambda n: n not in down)
    assert plan == [Replica("a"), Replica("y", hinted_for="b"), Replica("c")]
    plan = plan_write_targets(("a", "b", "c"), (), lambda n: n != "b")
    assert plan == [Replica("a"), Replica("b"), Replica("c")]
    both = plan_write_targets(("a", "b"), ("x",), lambda n: n not in {"a", "b"})
    assert both == [Replica("x", hinted_for="a"), Replica("b")]


def test_next_stand_in_skips_used_dead_and_the_owner() -> None:
    """Failover never reuses a node already in the write and never picks the owner itself."""
    assert next_stand_in("b", ("x", "y", "z"), {"x"}, lambda n: n != "y") == "z"
    assert next_stand_in("b", ("b",), (), lambda n: True) is None


def _general_merge(stored: Record | None, incoming: list[Version]) -> Record:
    """merge_versions without its fast paths: the quadratic reconcile over VectorClocks."""
    from twistkv.core.replication import _Clocked, _identity
    from twistkv.core.versioning import reconcile

    current = stored.versions if stored is not None else ()
    ordered = sorted((*current, *incoming), key=_identity, reverse=True)
    kept = reconcile(
        _Clocked(VectorClock.from_pairs(v.clock), v.hlc, v.node, v) for v in ordered
    )
    return Record(tuple(c.version for c in kept))


@given(st.lists(versions, max_size=1), st.lists(versions, min_size=1, max_size=2))
def test_merge_fast_paths_agree_with_the_general_reconcile(
    stored: list[Version], incoming: list[Version]
) -> None:
    """The one-stored/one-incoming and all-equal-clocks shortcuts give the same record as the
    full reconcile, for dominated, equal and concurrent clocks alike."""
    record = Record(tuple(stored)) if stored else None
    assert merge_versions(record, incoming) == _general_merge(record, incoming)
    same_clock = [v._replace(clock=incoming[0].clock) for v in incoming + stored]
    assert reconcile_versions(same_clock) == list(_general_merge(None, same_clock).versions)


def test_merge_fast_path_still_refuses_corrupt_clocks() -> None:
    """A clock not in canonical form goes through VectorClock.from_pairs, which validates."""
    import pytest

    stored = Record((Version(b"x", (("a", 1),), 1, "a"),))
    for clock in ((("a", -1),), (("a", 2), ("a", 3))):
        with pytest.raises(ValueError):
            merge_versions(stored, [Version(b"y", clock, 2, "a")])
    unsorted = Version(b"y", (("b", 1), ("a", 2)), 2, "a")
    assert merge_versions(stored, [unsorted]).versions == (unsorted,)


# -- counters (PN-counter versions) ------------------------------------------------------------

REPLICAS = 3
#: One step of a replica history: increment at a replica, plain SET, DEL, or one replica
#: sending its whole record to another (replica write, repair, hint, stream all merge alike).
history_ops = st.lists(
    st.one_of(
        st.tuples(st.just("incr"), st.integers(0, REPLICAS - 1), st.integers(-5, 5)),
        st.tuples(st.just("set"), st.integers(0, REPLICAS - 1), st.sampled_from([b"7", b"x"])),
        st.tuples(st.just("del"), st.integers(0, REPLICAS - 1), st.just(0)),
        st.tuples(st.just("sync"), st.integers(0, REPLICAS - 1), st.integers(0, REPLICAS - 1)),
    ),
    max_size=14,
)


def run_history(ops: list[tuple[str, int, object]]) -> tuple[list[Record | None], list[Version]]:
    """Play ``ops`` on REPLICAS replicas the way nodes do (each mints from its own record and
    stores the merge); returns the final records and every version that ever existed."""
    records: list[Record | None] = [None] * REPLICAS
    universe: list[Version] = []
    for tick, (kind, replica, arg) in enumerate(ops, start=1):
        node = f"r{replica}"
        record = records[replica]
        current = record.versions if record is not None else ()
        if kind == "incr":
            assert isinstance(arg, int)
            try:
                minted = increment_version(record, f"{node}/e", arg, node, tick, 0)
            except NotAnInteger:
                continue
        elif kind in ("set", "del"):
            value = arg if isinstance(arg, bytes) else b""
            minted = new_version(context_clock(current), value, node, tick,
                                 tombstone=kind == "del")
        else:
            assert isinstance(arg, int)
            records[arg] = merge_versions(records[arg], current)
            universe.extend(records[arg].versions)
            continue
        records[replica] = merge_versions(record, [minted])
        universe.append(minted)
        universe.extend(records[replica].versions)
    return records, universe


def _sync_all(records: list[Record | None]) -> list[Record]:
    everything = [v for r in records if r is not None for v in r.versions]
    return [merge_versions(r, everything) for r in records]


@given(history_ops, st.data())
def test_counter_merge_laws_hold_over_real_histories(
    ops: list[tuple[str, int, object]], data: st.DataObject
) -> None:
    """Over versions a replica history can produce (increments, SETs, DELs, merges), merging
    is commutative, associative and idempotent, and so is the value a read shows: replicas
    that receive the same versions in any order, grouping or repetition agree."""
    _, universe = run_history(ops)
    if not universe:
        return
    pick = st.lists(st.sampled_from(universe), max_size=5)
    a, b, c = data.draw(pick), data.draw(pick), data.draw(pick)
    ab = merge_versions(merge_versions(None, a), b)
    assert ab == merge_versions(merge_versions(None, b), a)
    assert merge_versions(ab, c) == merge_versions(None, a + b + c)
    assert merge_versions(ab, a + b) == ab
    assert live_value(merge_versions(ab, c), 0) == live_value(merge_versions(None, c + b + a), 0)


@given(history_ops)
def test_replicas_converge_and_increments_on_one_lineage_all_count(
    ops: list[tuple[str, int, object]]
) -> None:
    """After every replica has every other's record, all hold the same record; and when the
    history has no SET or DEL, the value a read shows is the sum of every increment applied:
    concurrent increments at different replicas are neither lost nor counted twice, and the
    next increment collapses the concurrent counter versions into one."""
    records, _ = run_history(ops)
    synced = _sync_all(records)
    assert all(r == synced[0] for r in synced)
    if all(kind in ("incr", "sync") for kind, _, _ in ops) and synced[0].versions:
        total = sum(arg for kind, _, arg in ops if kind == "incr")  # type: ignore[misc]
        live = live_value(synced[0], 0)
        assert live is not None and live.value == str(total).encode()
        after = increment_version(synced[0], "r9/e", 1, "r9", len(ops) + 1, 0)
        assert merge_versions(synced[0], [after]).versions == (after,)
        assert after.value == str(total + 1).encode()


def test_increment_on_a_plain_integer_uses_it_as_the_base() -> None:
    """INCR on SET k 10 gives 11; two replicas that both start from that same "10" make
    counters of one lineage, so their merge counts both increments (12), and the version
    descends the plain value, replacing it."""
    plain = Version(b"10", (("n1", 5),), 5, "n1")
    one = increment_version(Record((plain,)), "a/1", 1, "n1", 6, 0)
    two = increment_version(Record((plain,)), "b/1", 1, "n2", 7, 0)
    assert one.value == b"11" and one.counter == PNCounter(10, 5, "n1", (("a/1", 1, 0),))
    assert version_clock(one).descends(version_clock(plain))
    record = merge_versions(Record((one, plain)), [two])
    assert set(record.versions) == {one, two}  # concurrent: both kept, as siblings
    merged = live_value(record, 0)
    assert merged is not None and merged.value == b"12"
    assert version_clock(merged).descends(version_clock(one))
    assert version_clock(merged).descends(version_clock(two))


def test_a_counter_and_a_concurrent_set_stay_siblings() -> None:
    """A SET concurrent with an increment is not merged into the counter: both stay, and a
    plain read picks the last writer, as for any concurrent writes."""
    counter = increment_version(None, "a/1", 3, "n1", 10, 0)
    plain = new_version(VectorClock(), b"100", "n2", 11)
    record = merge_versions(Record((counter,)), [plain])
    assert set(record.versions) == {counter, plain}
    assert record.winner() == plain


def test_a_set_that_saw_the_counter_resets_it_and_the_next_incr_starts_from_it() -> None:
    """SET k 5 with the counter in its context replaces it (Redis: SET resets); INCR then
    starts a new lineage based on 5."""
    counter = increment_version(None, "a/1", 3, "n1", 10, 0)
    reset = new_version(version_clock(counter), b"5", "n2", 11)
    record = merge_versions(Record((counter,)), [reset])
    assert record.versions == (reset,)
    again = increment_version(record, "a/1", 1, "n1", 12, 0)
    assert again.value == b"6"
    assert again.counter is not None and again.counter.entries == (("a/1", 1, 0),)


def test_counters_of_different_lineages_stay_siblings() -> None:
    """Increments on two different bases are not merged pointwise (the bases conflict):
    they stay siblings, like the concurrent SETs they started from."""
    base_a = Version(b"10", (("n1", 5),), 5, "n1")
    base_b = Version(b"20", (("n2", 6),), 6, "n2")
    one = increment_version(Record((base_a,)), "a/1", 1, "n1", 7, 0)
    two = increment_version(Record((base_b,)), "b/1", 1, "n2", 8, 0)
    record = merge_versions(Record((one,)), [two])
    assert sorted(v.value for v in record.versions) == [b"11", b"21"]


def test_deleted_or_missing_keys_start_at_zero_on_a_shared_lineage() -> None:
    """INCR on a missing key starts at 0 (lineage with no origin) at every replica, so
    increments two replicas start concurrently merge; after a DEL the new lineage is named
    after the tombstone, which every replica that saw it shares."""
    a = increment_version(None, "a/1", 2, "n1", 1, 0)
    b = increment_version(None, "b/1", 3, "n2", 2, 0)
    both = merge_versions(Record((a,)), [b])
    merged = live_value(both, 0)
    assert merged is not None and merged.value == b"5"
    tomb = new_version(context_clock(both.versions), b"", "n3", 3, tombstone=True)
    after_a = increment_version(Record((tomb,)), "a/1", 1, "n1", 4, 0)
    after_b = increment_version(Record((tomb,)), "b/1", 1, "n2", 5, 0)
    again = live_value(merge_versions(Record((after_a,)), [after_b]), 0)
    assert again is not None and again.value == b"2"
    assert again.counter is not None and again.counter.origin_hlc == 3


def test_increment_keeps_the_ttl_and_an_expired_counter_never_comes_back() -> None:
    """INCR keeps the live value's expiry; once it expired, INCR starts from 0 with no TTL,
    and the expired counter (still held by a replica) does not merge into the new one."""
    plain = Version(b"1", (("n1", 5),), 5, "n1", expires_at_ms=1000)
    kept = increment_version(Record((plain,)), "a/1", 1, "n1", 6, now_ms=500)
    assert (kept.value, kept.expires_at_ms) == (b"2", 1000)
    fresh = increment_version(None, "b/1", 1, "n2", 7, now_ms=2000)
    record = merge_versions(Record((kept,)), [fresh])
    live = live_value(record, 2000)
    assert live is not None and live.value == b"1"
    restarted = increment_version(Record((kept,)), "a/1", 1, "n1", 8, now_ms=2000)
    assert (restarted.value, restarted.expires_at_ms) == (b"1", 0)


def test_increment_refuses_non_integers_and_overflow() -> None:
    """Like Redis: a non-integer value and a result outside int64 are refused."""
    with pytest.raises(NotAnInteger):
        increment_version(Record((Version(b"abc", (("n1", 1),), 1, "n1"),)), "a/1", 1, "n1",
                          2, 0)
    top = Version(b"9223372036854775807", (("n1", 1),), 1, "n1")
    with pytest.raises(CounterOverflow):
        increment_version(Record((top,)), "a/1", 1, "n1", 2, 0)
    assert increment_version(Record((top,)), "a/1", -1, "n1", 2, 0).value == (
        b"9223372036854775806")


def test_join_counters_takes_the_newest_stamp_and_merges_clocks() -> None:
    """The joined version's clock descends each input and its (hlc, node) is the newest
    input's, so it is also the last-writer winner over them."""
    a = increment_version(None, "a/1", 1, "n1", 10, 0)
    b = increment_version(None, "b/1", 1, "n2", 20, 0)
    joined = join_counters([a, b])
    assert (joined.hlc, joined.node, joined.value) == (20, "n2", b"2")
    assert joined.clock == (("n1", 10), ("n2", 20))
    assert join_counters([b, a]) == joined


def test_read_reconcile_keeps_concurrent_counters_and_repair_spreads_both() -> None:
    """The quorum read keeps two replicas' concurrent counters (the plain read counts both),
    and a replica holding only one is stale, so read repair sends it the other."""
    a = increment_version(None, "a/1", 1, "n1", 10, 0)
    b = increment_version(None, "b/1", 1, "n2", 20, 0)
    reconciled = reconcile_versions([a, b])
    assert set(reconciled) == {a, b}
    live = live_value(Record(tuple(reconciled)), 0)
    assert live is not None and live.value == b"2"
    assert replica_is_stale([a], reconciled)
    assert not replica_is_stale(reconciled, reconciled)


def test_a_set_that_saw_one_counter_drops_its_increments_and_keeps_the_concurrent_one() -> None:
    """The history the lossy alternative (joining counters inside the merge) gets wrong: a
    SET that saw counter A but not the concurrent counter B resets A only; whatever order the
    three versions arrive in, A is gone and B stays, as a sibling of the SET."""
    a = increment_version(None, "a/1", 5, "n1", 10, 0)
    b = increment_version(None, "b/1", 1, "n2", 11, 0)
    reset = new_version(version_clock(a), b"7", "n1", 12)
    for order in ([a, b, reset], [reset, a, b], [b, reset, a]):
        record = None
        for version in order:
            record = merge_versions(record, [version])
        assert record is not None and set(record.versions) == {b, reset}


# -- records of one writer, on their bytes --------------------------------------------------

# Records as they arrive: mostly one version clocked by its writer alone, plus every other shape.
sole_versions = st.builds(
    lambda node, counter, hlc, value, expires, tombstone: Version(
        b"" if tombstone else value, ((node, counter),), hlc, node, 0 if tombstone else expires,
        tombstone),
    st.sampled_from(NODES), st.integers(1, 4), st.integers(0, 5),
    st.sampled_from([b"", b"x", b"yy"]), st.sampled_from([0, 10]), st.booleans(),
)
any_records = st.one_of(
    st.lists(sole_versions, min_size=1, max_size=1),
    st.lists(versions, min_size=1, max_size=3),
).map(lambda vs: encode_record(Record(tuple(vs))))


@given(st.one_of(st.none(), any_records), any_records)
def test_sole_writer_shortcut_only_says_yes_when_the_merge_is_the_incoming_record(
    stored: bytes | None, incoming: bytes
) -> None:
    """Whenever supersedes_sole_writer says yes, merging the decoded records gives exactly the
    incoming record, whose bytes are what encode_record stores: skipping the merge is safe."""
    if supersedes_sole_writer(stored, incoming):
        incoming_record = decode_record(incoming)
        merged = merge_versions(None if stored is None else decode_record(stored),
                                incoming_record.versions)
        assert merged == incoming_record
        assert encode_record(merged) == incoming


@given(st.one_of(st.none(), st.binary(max_size=80), any_records),
       st.one_of(st.binary(max_size=80), any_records), st.integers(0, 79), st.integers(0, 255))
def test_sole_writer_checks_never_raise_on_damaged_bytes(
    stored: bytes | None, incoming: bytes, at: int, byte: int
) -> None:
    """Garbage and records with one byte changed are answered (a bool, a clock or None), never
    an exception: the replica calls these on bytes a peer sent before anything decodes them."""
    if incoming and at < len(incoming):
        incoming = incoming[:at] + bytes((byte,)) + incoming[at + 1:]
    assert supersedes_sole_writer(stored, incoming) in (True, False)
    clock = sole_writer_clock(incoming, single_writer_block("a"))
    assert clock is None or (isinstance(clock, tuple) and clock[1] >= 1)


@given(any_records, st.integers(0, 20))
def test_sole_writer_value_is_what_a_read_of_the_decoded_record_answers(
    raw: bytes, now_ms: int
) -> None:
    """Whenever sole_writer_value reads a record on its bytes, the value it gives is what
    live_value answers on the decoded record at any time (None when deleted or expired);
    it reads every one-version plain or tombstone record of a sole writer."""
    plain = sole_writer_value(raw)
    record = decode_record(raw)
    only = record.versions[0]
    sole = (len(record.versions) == 1 and only.counter is None and len(only.clock) == 1
            and only.clock[0][0] == only.node and only.clock[0][1] >= 1)
    assert (plain is not None) == sole
    if plain is not None:
        value, expires, tombstone = plain
        live = live_value(record, now_ms)
        shown = None if tombstone or (expires and expires <= now_ms) else value
        assert shown == (None if live is None else live.value)


@given(st.one_of(st.binary(max_size=80), any_records), st.integers(0, 79), st.integers(0, 255))
def test_sole_writer_value_never_raises_on_damaged_bytes(raw: bytes, at: int, byte: int) -> None:
    """Damaged bytes give a value only if they still decode to one sole-writer version with
    that value; otherwise None (the reader then decodes, and reports the damage)."""
    if raw and at < len(raw):
        raw = raw[:at] + bytes((byte,)) + raw[at + 1:]
    plain = sole_writer_value(raw)
    if plain is not None:
        (version,) = decode_record(raw).versions
        assert (version.value, version.expires_at_ms, version.tombstone) == plain


def test_sole_writer_shortcut_covers_the_usual_replica_write() -> None:
    """A newer write of the key's only writer, or a new key, is recognised; an older one, one
    of another writer, a counter, two siblings or a broken record are left to the merge."""
    block = single_writer_block("a")
    old = encode_sole_writer(block, b"v1", 5, 0, 5, False)
    new = encode_sole_writer(block, b"v2", 6, 0, 6, False)
    tomb = encode_sole_writer(block, b"", 7, 0, 7, True)
    assert supersedes_sole_writer(None, new)
    assert supersedes_sole_writer(old, new) and supersedes_sole_writer(new, tomb)
    assert not supersedes_sole_writer(new, old) and not supersedes_sole_writer(new, new)
    other = encode_sole_writer(single_writer_block("b"), b"v", 9, 0, 9, False)
    assert not supersedes_sole_writer(old, other)
    counter = encode_record(Record((Version(b"1", (("a", 9),), 9, "a",
                                            counter=PNCounter(0, 1, "a", (("a", 1, 0),))),)))
    assert not supersedes_sole_writer(None, counter) and not supersedes_sole_writer(counter, new)
    siblings = encode_record(Record((Version(b"x", (("a", 9),), 9, "a"),
                                     Version(b"y", (("b", 9),), 9, "b"))))
    assert not supersedes_sole_writer(None, siblings) and not supersedes_sole_writer(siblings,
                                                                                     new)
    assert not supersedes_sole_writer(None, new[:-1]) and not supersedes_sole_writer(None, b"")
    bad_name = new.replace(b"\x01a\x00\x01\x01a", b"\x01\xff\x00\x01\x01\xff")
    assert not supersedes_sole_writer(None, bad_name)


@given(sole_versions)
def test_encode_sole_writer_is_encode_record(version: Version) -> None:
    """The byte-level encoder produces exactly encode_record's bytes, and reads back."""
    ((node, counter),) = version.clock
    raw = encode_sole_writer(single_writer_block(node), version.value, version.hlc,
                             version.expires_at_ms, counter, version.tombstone)
    assert raw == encode_record(Record((version,)))
    assert sole_writer_clock(raw, single_writer_block(node)) == (version.hlc, counter)


@given(st.lists(st.tuples(st.one_of(st.none(), st.binary(max_size=60), any_records),
                          st.sampled_from([b"", b"x", b"yy"])), max_size=8),
       st.integers(1, 8))
def test_a_run_is_minted_as_each_write_alone(
    stored_and_values: list[tuple[bytes | None, bytes]], first_hlc: int
) -> None:
    """sole_writer_clocks is sole_writer_clock record by record, and encode_sole_writer_run
    gives each write encode_sole_writer's record, stamped first_hlc + its position, over
    what was stored: None over another writer's record, else a version whose clock
    descends the stored one's (counters at or past the stamp included)."""
    block = single_writer_block("a")
    raws = [raw for raw, _ in stored_and_values]
    values = [value for _, value in stored_and_values]
    clocks = sole_writer_clocks(raws, block)
    assert clocks == [None if raw is None else sole_writer_clock(raw, block) for raw in raws]
    minted = encode_sole_writer_run(block, values, first_hlc, raws, clocks)
    assert len(minted) == len(raws)
    for index, (raw, value, clock, entry) in enumerate(
            zip(raws, values, clocks, minted, strict=True)):
        if raw is not None and clock is None:
            assert entry is None
            continue
        assert entry is not None
        record, superseded = entry
        assert superseded is raw
        ts = first_hlc + index
        counter = ts if clock is None or clock[1] < ts else clock[1] + 1
        assert record == encode_sole_writer(block, value, ts, 0, counter, False)
        assert supersedes_sole_writer(raw, record)


@given(st.lists(st.tuples(st.one_of(st.none(), st.binary(max_size=60), any_records),
                          st.one_of(st.binary(max_size=60), any_records)), max_size=8))
def test_a_batch_is_checked_as_each_record_alone(pairs: list[tuple[bytes | None, bytes]]) -> None:
    """supersedes_sole_writer_run answers what supersedes_sole_writer answers pair by pair,
    for records of several writers and lengths, damaged ones and garbage among them (its
    per-block memo and layout must not leak from one record to the next)."""
    stored = [old for old, _ in pairs]
    incoming = [new for _, new in pairs]
    assert supersedes_sole_writer_run(stored, incoming) == [
        supersedes_sole_writer(old, new) for old, new in pairs]


def test_a_batch_check_keeps_each_writers_verdict_apart() -> None:
    """Writers of one batch are judged apart: one named in bad UTF-8, one whose clock names
    another node, one with a longer name (another record layout), and a stored record of
    another writer; each answer is supersedes_sole_writer's."""
    good, other, longer = (single_writer_block(name) for name in ("a", "b", "node-22"))
    new = encode_sole_writer(good, b"v", 6, 0, 6, False)
    bad_name = new.replace(b"\x01a\x00\x01\x01a", b"\x01\xff\x00\x01\x01\xff")
    foreign_clock = new.replace(b"\x01a\x00\x01\x01a", b"\x01a\x00\x01\x01b")
    long_new = encode_sole_writer(longer, b"v", 6, 0, 6, False)
    long_old = encode_sole_writer(longer, b"o", 5, 0, 5, False)
    old_other = encode_sole_writer(other, b"o", 5, 0, 5, False)
    stored = [None, None, None, None, long_old, old_other, long_old, new]
    incoming = [new, bad_name, foreign_clock, new, long_new, new, new, long_new]
    verdicts = supersedes_sole_writer_run(stored, incoming)
    assert verdicts == [supersedes_sole_writer(old, raw)
                        for old, raw in zip(stored, incoming, strict=True)]
    assert verdicts == [True, False, False, True, True, False, False, False]
