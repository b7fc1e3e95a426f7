"""Tests for twistkv.core.replication: merge laws, write clocks, tombstone collection, targets."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from twistkv.core.quorum import ConsistencyLevel, Replica
from twistkv.core.record import Record, Version
from twistkv.core.replication import (
    collectable,
    context_clock,
    merge_versions,
    new_version,
    next_stand_in,
    plan_write_targets,
    reconcile_versions,
    replica_is_stale,
    required_replies,
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
