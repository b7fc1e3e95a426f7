"""Tests for twistkv.core.versioning: vector clock laws, HLC monotonicity, sibling reconciliation."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twistkv.core.versioning import (
    LOGICAL_BITS,
    ClockSkewError,
    HybridLogicalClock,
    Ordering,
    VectorClock,
    hlc_logical,
    hlc_physical_ms,
    lww_winner,
    pack_hlc,
    reconcile,
    stale,
)

# A small node set and small counters make comparable (non-concurrent) pairs common.
NODES = ("a", "b", "c", "d")
clocks = st.dictionaries(st.sampled_from(NODES), st.integers(0, 3)).map(
    lambda counters: VectorClock.from_pairs(counters.items())
)
MIRROR = {
    Ordering.BEFORE: Ordering.AFTER,
    Ordering.AFTER: Ordering.BEFORE,
    Ordering.EQUAL: Ordering.EQUAL,
    Ordering.CONCURRENT: Ordering.CONCURRENT,
}


def pointwise_le(a: VectorClock, b: VectorClock) -> bool:
    """The definition of happens-before-or-equal, spelled out entry by entry."""
    return all(a.counter(node) <= b.counter(node) for node in NODES)


@dataclass(frozen=True)
class StoredVersion:
    """A minimal record satisfying the Version protocol, as a store would keep it."""

    clock: VectorClock
    hlc: int
    node: str
    value: bytes = b""


versions = st.builds(
    StoredVersion, clock=clocks, hlc=st.integers(0, 4), node=st.sampled_from(NODES)
)


def identity(version: StoredVersion) -> tuple[object, ...]:
    """What tells two versions apart: two copies of one write are interchangeable."""
    return (version.clock, version.hlc, version.node)


# --- VectorClock ---------------------------------------------------------------------------


@given(st.dictionaries(st.text(max_size=4), st.integers(0, 10)), st.randoms())
def test_pairs_round_trip_sorted_without_zeros(
    counters: dict[str, int], rng: random.Random
) -> None:
    """from_pairs accepts any order, and pairs is sorted by node with zero entries dropped."""
    items = list(counters.items())
    rng.shuffle(items)
    clock = VectorClock.from_pairs(items)
    assert clock.pairs == tuple(sorted((n, c) for n, c in counters.items() if c > 0))
    assert VectorClock.from_pairs(clock.pairs) == clock
    assert hash(VectorClock.from_pairs(clock.pairs)) == hash(clock)
    assert list(clock) == list(clock.pairs)
    assert len(clock) == len(clock.pairs)


def test_zero_entries_do_not_distinguish_clocks() -> None:
    """An explicit zero equals absence, so such clocks are equal and share a dict slot."""
    assert VectorClock.from_pairs([("a", 0)]) == VectorClock()
    assert {VectorClock.from_pairs([("a", 0), ("b", 1)]): 1}[VectorClock.from_pairs([("b", 1)])]


@pytest.mark.parametrize(
    "pairs",
    [[("a", 1), ("a", 2)], [("a", -1)], [("a", 1.0)], [("a", True)], [(1, 1)]],
)
def test_corrupt_records_are_refused(pairs: list[tuple[object, object]]) -> None:
    """Repeated ids, negative or non-int counters and non-str ids raise ValueError."""
    with pytest.raises(ValueError):
        VectorClock.from_pairs(pairs)  # type: ignore[arg-type]


@given(clocks)
def test_compare_is_reflexive(a: VectorClock) -> None:
    """Every clock is EQUAL to itself and descends itself."""
    assert a.compare(a) is Ordering.EQUAL
    assert a.descends(a)


@given(clocks, clocks)
def test_compare_matches_the_pointwise_definition_and_mirrors(
    a: VectorClock, b: VectorClock
) -> None:
    """compare agrees with the entrywise definition, b.compare(a) mirrors a.compare(b), and
    descends means AFTER or EQUAL."""
    le, ge = pointwise_le(a, b), pointwise_le(b, a)
    expected = {
        (True, True): Ordering.EQUAL,
        (True, False): Ordering.BEFORE,
        (False, True): Ordering.AFTER,
        (False, False): Ordering.CONCURRENT,
    }[(le, ge)]
    assert a.compare(b) is expected
    assert b.compare(a) is MIRROR[expected]
    assert a.descends(b) == (expected in (Ordering.AFTER, Ordering.EQUAL))


@given(clocks, clocks)
def test_compare_is_antisymmetric(a: VectorClock, b: VectorClock) -> None:
    """Clocks that descend each other are equal, and only equal clocks compare EQUAL."""
    assert (a.descends(b) and b.descends(a)) == (a == b)
    assert (a.compare(b) is Ordering.EQUAL) == (a == b)


@given(clocks, clocks, clocks)
def test_compare_is_transitive(a: VectorClock, b: VectorClock, c: VectorClock) -> None:
    """If a is at or before b and b at or before c, then a is at or before c; strictly if
    either step is strict."""
    chain = (a, a.merge(b), a.merge(b).merge(c))
    for x, y, z in ((a, b, c), chain):
        if z.descends(y) and y.descends(x):
            assert z.descends(x)
            if Ordering.BEFORE in (x.compare(y), y.compare(z)):
                assert x.compare(z) is Ordering.BEFORE


@given(clocks, clocks, clocks)
def test_merge_is_a_least_upper_bound(a: VectorClock, b: VectorClock, c: VectorClock) -> None:
    """merge is commutative, associative and idempotent; it descends both inputs, and any
    clock that descends both descends the merge."""
    assert a.merge(b) == b.merge(a)
    assert a.merge(b).merge(c) == a.merge(b.merge(c))
    assert a.merge(a) == a
    joined = a.merge(b)
    assert joined.descends(a) and joined.descends(b)
    if c.descends(a) and c.descends(b):
        assert c.descends(joined)
    assert c.merge(a).merge(b).descends(joined)


@given(clocks, st.sampled_from(NODES + ("new",)))
def test_increment_strictly_advances_one_entry(a: VectorClock, node: str) -> None:
    """increment makes a clock strictly AFTER the original, by one in that node's entry only."""
    b = a.increment(node)
    assert b.compare(a) is Ordering.AFTER
    assert b.counter(node) == a.counter(node) + 1
    assert all(b.counter(n) == a.counter(n) for n in NODES + ("new",) if n != node)


def test_sibling_writes_are_concurrent() -> None:
    """Two coordinators writing on the same context produce concurrent clocks (siblings)."""
    base = VectorClock().increment("a")
    assert base.increment("a").compare(base.increment("b")) is Ordering.CONCURRENT


# --- HybridLogicalClock --------------------------------------------------------------------

walls = st.integers(0, 2**41)
events = st.lists(
    st.one_of(
        st.tuples(st.just("tick"), walls, st.just(0)),
        st.tuples(st.just("observe"), walls, st.integers(0, 2**57)),
    ),
    max_size=60,
)


@given(events)
def test_hlc_never_goes_backwards(script: list[tuple[str, int, int]]) -> None:
    """Under any wall-clock sequence, jumps back included, every timestamp is greater than the
    last; it is never below the wall clock; after observe it exceeds the remote timestamp."""
    clock = HybridLogicalClock(max_offset_ms=None)
    last = clock.last
    for kind, wall, remote in script:
        if kind == "tick":
            ts = clock.tick(wall)
        else:
            ts = clock.observe(remote, wall)
            assert ts > remote
        assert ts > last
        assert hlc_physical_ms(ts) >= wall
        assert clock.last == ts
        last = ts


def test_hlc_rides_out_a_wall_clock_step_back() -> None:
    """When the wall clock steps back, the physical part holds and the logical part counts."""
    clock = HybridLogicalClock()
    first = clock.tick(10_000)
    assert (hlc_physical_ms(first), hlc_logical(first)) == (10_000, 0)
    second = clock.tick(9_000)
    assert (hlc_physical_ms(second), hlc_logical(second)) == (10_000, 1)
    third = clock.tick(10_001)
    assert (hlc_physical_ms(third), hlc_logical(third)) == (10_001, 0)


def test_hlc_logical_overflow_carries_into_physical() -> None:
    """More than 65,535 events in one millisecond carry into the physical part, in order."""
    clock = HybridLogicalClock(last=pack_hlc(5, 2**LOGICAL_BITS - 1))
    ts = clock.tick(5)
    assert (hlc_physical_ms(ts), hlc_logical(ts)) == (6, 0)


def test_hlc_seed_survives_a_restart_with_an_earlier_wall_clock() -> None:
    """A clock seeded with the last persisted timestamp issues later ones, whatever the wall."""
    before_restart = pack_hlc(50_000, 7)
    assert HybridLogicalClock(last=before_restart).tick(40_000) > before_restart


def test_observe_takes_the_later_of_remote_and_local() -> None:
    """observe adopts a remote timestamp ahead of us (within the offset), and continues its
    logical counter."""
    clock = HybridLogicalClock(max_offset_ms=500)
    clock.tick(1_000)
    remote = pack_hlc(1_400, 3)
    ts = clock.observe(remote, 1_000)
    assert (hlc_physical_ms(ts), hlc_logical(ts)) == (1_400, 4)


def test_observe_refuses_a_remote_clock_too_far_ahead() -> None:
    """A remote timestamp beyond max_offset_ms raises ClockSkewError and changes nothing;
    with max_offset_ms=None it is adopted."""
    clock = HybridLogicalClock(max_offset_ms=500)
    before = clock.tick(1_000)
    with pytest.raises(ClockSkewError) as caught:
        clock.observe(pack_hlc(1_501, 0), 1_000)
    assert caught.value.max_offset_ms == 500
    assert clock.last == before
    assert clock.observe(pack_hlc(1_500, 0), 1_000) > pack_hlc(1_500, 0)
    lenient = HybridLogicalClock(max_offset_ms=None)
    assert lenient.observe(pack_hlc(10**9, 0), 1_000) > pack_hlc(10**9, 0)


@pytest.mark.parametrize(
    "call",
    [
        lambda: HybridLogicalClock(last=-1),
        lambda: HybridLogicalClock(max_offset_ms=-1),
        lambda: HybridLogicalClock().tick(-1),
        lambda: HybridLogicalClock().observe(-1, 0),
        lambda: pack_hlc(0, 2**LOGICAL_BITS),
        lambda: pack_hlc(-1, 0),
    ],
)
def test_hlc_refuses_out_of_range_inputs(call: object) -> None:
    """Negative times and logical counters that do not fit raise ValueError."""
    with pytest.raises(ValueError):
        call()  # type: ignore[operator]


@given(walls, st.integers(0, 2**LOGICAL_BITS - 1), walls, st.integers(0, 2**LOGICAL_BITS - 1))
def test_packed_timestamps_sort_like_their_parts(p1: int, l1: int, p2: int, l2: int) -> None:
    """Packing round-trips and int order equals (physical, logical) order."""
    a, b = pack_hlc(p1, l1), pack_hlc(p2, l2)
    assert (hlc_physical_ms(a), hlc_logical(a)) == (p1, l1)
    assert (a < b) == ((p1, l1) < (p2, l2))


# --- reconciliation -------------------------------------------------------------------------


@given(st.lists(versions, max_size=8), st.randoms())
def test_reconcile_keeps_an_order_independent_antichain_covering_every_input(
    inputs: list[StoredVersion], rng: random.Random
) -> None:
    """The result is drawn from the inputs, pairwise concurrent, covers every input (each is
    descended by a kept version), is the same for any input order, and is idempotent."""
    kept = reconcile(inputs)
    assert all(any(k is v for v in inputs) for k in kept)
    for i, x in enumerate(kept):
        for y in kept[i + 1 :]:
            assert x.clock.compare(y.clock) is Ordering.CONCURRENT
    for version in inputs:
        assert any(k.clock.descends(version.clock) for k in kept)
    shuffled = list(inputs)
    rng.shuffle(shuffled)
    assert [identity(v) for v in reconcile(shuffled)] == [identity(v) for v in kept]
    assert [identity(v) for v in reconcile(kept)] == [identity(v) for v in kept]


def test_reconcile_drops_superseded_and_duplicate_versions() -> None:
    """A descendant replaces its ancestor; equal clocks collapse to one; concurrent stay."""
    base = VectorClock().increment("a")
    old = StoredVersion(base, hlc=1, node="a", value=b"old")
    new = StoredVersion(base.increment("a"), hlc=2, node="a", value=b"new")
    echo = StoredVersion(base.increment("a"), hlc=2, node="a", value=b"new")
    sibling = StoredVersion(base.increment("b"), hlc=3, node="b", value=b"sib")
    assert reconcile([old, new, echo]) == [new]
    assert reconcile([old, sibling, new]) == [sibling, new]
    assert reconcile([]) == []


@given(st.lists(versions, min_size=1, max_size=8))
def test_lww_winner_is_the_newest_surviving_sibling(inputs: list[StoredVersion]) -> None:
    """The winner has the greatest (hlc, node) among non-superseded versions and is never
    superseded itself."""
    winner = lww_winner(inputs)
    assert not any(v.clock.compare(winner.clock) is Ordering.AFTER for v in inputs)
    survivors = reconcile(inputs)
    assert (winner.hlc, winner.node) == max((v.hlc, v.node) for v in survivors)


def test_lww_winner_ignores_a_superseded_version_with_a_later_hlc() -> None:
    """A descendant wins over its ancestor even when the ancestor's HLC is larger."""
    base = VectorClock().increment("a")
    ancestor = StoredVersion(base, hlc=900, node="a")
    descendant = StoredVersion(base.increment("b"), hlc=100, node="b")
    assert lww_winner([ancestor, descendant]) is descendant
    with pytest.raises(ValueError):
        lww_winner([])


@given(st.lists(st.lists(versions, max_size=4), min_size=1, max_size=4))
def test_stale_is_true_exactly_when_repair_would_change_the_replica(
    responses: list[list[StoredVersion]],
) -> None:
    """For replicas that each store a reconciled sibling set, stale says whether merging the
    read's reconciled set into a replica would change what it stores."""
    replicas = [reconcile(response) for response in responses]
    reconciled = reconcile(v for replica in replicas for v in replica)
    for replica in replicas:
        repaired = reconcile(replica + reconciled)
        would_change = {v.clock for v in repaired} != {v.clock for v in replica}
        assert stale(replica, reconciled) == would_change
        assert not stale(repaired, reconciled)


def test_stale_examples() -> None:
    """A replica missing a sibling, or holding a superseded one, is stale; a full one is not."""
    base = VectorClock().increment("a")
    left = StoredVersion(base.increment("a"), hlc=2, node="a")
    right = StoredVersion(base.increment("b"), hlc=3, node="b")
    ancestor = StoredVersion(base, hlc=1, node="a")
    reconciled = reconcile([left, right, ancestor])
    assert not stale([right, left], reconciled)
    assert stale([left], reconciled)
    assert stale([ancestor], reconciled)
    assert stale([], reconciled)
    assert not stale([], [])


@given(st.integers(min_value=0, max_value=2**40), st.lists(st.integers(min_value=0, max_value=2**40), max_size=5),
       st.integers(min_value=1, max_value=50))
def test_tick_many_reserves_what_as_many_ticks_would_return(
    seed: int, walls: list[int], count: int
) -> None:
    """tick_many(wall, n) returns the first of the n timestamps that n calls of tick(wall)
    return, and leaves the clock where those calls would: runs of writes stay ordered."""
    one_by_one = HybridLogicalClock(last=seed)
    at_once = HybridLogicalClock(last=seed)
    for wall in [*walls, walls[-1] if walls else 0]:
        expected = [one_by_one.tick(wall) for _ in range(count)]
        first = at_once.tick_many(wall, count)
        assert list(range(first, first + count)) == expected
        assert at_once.last == one_by_one.last


def test_tick_many_refuses_an_empty_reservation() -> None:
    """A count below one is a caller bug, reported rather than silently moving the clock."""
    clock = HybridLogicalClock(last=5)
    with pytest.raises(ValueError, match="at least 1"):
        clock.tick_many(10, 0)
    assert clock.last == 5
