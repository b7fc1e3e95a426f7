"""Tests for twistkv.node.replica: the local replica and the durable hint store."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from twistkv.core.record import Record, Version, encode_record
from twistkv.core.versioning import HybridLogicalClock, pack_hlc
from twistkv.node.durability import GroupCommitter
from twistkv.node.keyspace import LocalKeyspace
from twistkv.node.replica import DATA_PREFIX, HintRejected, HintStore, ReplicaStore
from twistkv.storage.errors import StorageError
from twistkv.storage.memory import MemoryStore


def now_ms(clock: Clock) -> int:
    return int(clock.seconds() * 1000)


@pytest.fixture
def replica(store: MemoryStore, committer: GroupCommitter, clock: Clock) -> ReplicaStore:
    return ReplicaStore(store, committer, lambda: now_ms(clock), tombstone_grace_ms=60_000)


@pytest.fixture
def hints(store: MemoryStore, committer: GroupCommitter, clock: Clock) -> HintStore:
    return HintStore(store, committer, lambda: now_ms(clock), max_count=3, max_bytes=10_000,
                     max_age_ms=5_000)


def version(value: bytes, node: str, counter: int, hlc: int = 1, **kw: object) -> Version:
    return Version(value, ((node, counter),), hlc, node, **kw)  # type: ignore[arg-type]


def fired(deferred: object) -> list[object]:
    results: list[object] = []
    deferred.addBoth(results.append)  # type: ignore[attr-defined]
    return results


# -- ReplicaStore ---------------------------------------------------------------------------


def test_data_written_by_the_single_node_keyspace_reads_back_and_vice_versa(
    store: MemoryStore, committer: GroupCommitter, clock: Clock, replica: ReplicaStore
) -> None:
    """Same prefix, same encoding: a single node's data directory opens as a cluster replica,
    and what the replica stores the single-node keyspace reads."""
    local = LocalKeyspace(store, committer, "n1", HybridLogicalClock(), lambda: now_ms(clock))
    local.set(b"old", b"from single node")
    record = replica.read(b"old")
    assert record is not None and record.versions[0].value == b"from single node"
    replica.apply(b"new", [version(b"from cluster", "n2", 5)])
    got = local.get(b"new")
    assert got is not None and got.value == b"from cluster"


def test_apply_is_visible_at_once_and_acknowledged_once_durable(
    replica: ReplicaStore, clock: Clock
) -> None:
    """The merged record is readable immediately; the wait fires only after the fsync."""
    wait = replica.apply(b"k", [version(b"v", "a", 1)])
    assert replica.read(b"k") == Record((version(b"v", "a", 1),))
    assert wait is not None
    results = fired(wait)
    assert results == []
    clock.advance(0)
    assert results == [None]


def test_duplicate_apply_changes_nothing_but_still_waits_for_the_commit(
    replica: ReplicaStore, store: MemoryStore, clock: Clock
) -> None:
    """A duplicate is not written again, and is not acknowledged before the original's sync."""
    replica.apply(b"k", [version(b"v", "a", 1)])
    syncs = store.syncs  # type: ignore[attr-defined]
    wait = replica.apply(b"k", [version(b"v", "a", 1)])
    assert replica.stats.unchanged == 1 and replica.stats.applied == 1
    results = fired(wait)
    assert results == []
    clock.advance(0)
    assert results == [None]
    assert store.syncs == syncs + 1  # type: ignore[attr-defined]


def test_concurrent_versions_become_siblings_and_a_descendant_replaces_them(
    replica: ReplicaStore,
) -> None:
    """Replica merge follows the vector clocks."""
    a = version(b"a", "a", 1, hlc=1)
    b = version(b"b", "b", 1, hlc=2)
    replica.apply(b"k", [a])
    replica.apply(b"k", [b])
    record = replica.read(b"k")
    assert record is not None and set(record.versions) == {a, b}
    resolved = Version(b"c", (("a", 1), ("b", 1), ("c", 1)), 3, "c")
    replica.apply(b"k", [resolved])
    assert replica.read(b"k") == Record((resolved,))
    assert replica.stats.records == 1


def test_apply_stores_the_callers_encoding_only_when_it_is_the_merged_record(
    replica: ReplicaStore, store: MemoryStore
) -> None:
    """A coordinator's own encoding of the incoming version is stored as is when that version
    supersedes what is stored; when siblings remain, the merged record is encoded afresh."""
    a = version(b"a", "a", 1, hlc=1)
    marker = encode_record(Record((a,)))
    replica.apply(b"k", [a], encoded=marker)
    assert store.get(DATA_PREFIX + b"k") is marker
    b = version(b"b", "b", 1, hlc=2)
    replica.apply(b"k", [b], encoded=encode_record(Record((b,))))
    record = replica.read(b"k")
    assert record is not None and set(record.versions) == {a, b}
    assert store.get(DATA_PREFIX + b"k") == encode_record(Record(record.versions))


def test_load_counts_records_and_finds_the_newest_hlc(
    store: MemoryStore, committer: GroupCommitter, clock: Clock, replica: ReplicaStore
) -> None:
    """After a restart the HLC is reseeded above every stored timestamp."""
    replica.apply(b"a", [version(b"1", "a", 1, hlc=50)])
    replica.apply(b"b", [version(b"2", "b", 1, hlc=70), version(b"3", "c", 1, hlc=60)])
    reopened = ReplicaStore(store, committer, lambda: now_ms(clock))
    assert reopened.load() == 70
    assert reopened.stats.records == 2


def test_iterate_yields_records_in_key_order_within_bounds(replica: ReplicaStore) -> None:
    """Anti-entropy and listings see keys in order, bounded by [start, stop)."""
    for key in (b"c", b"a", b"b", b"d"):
        replica.apply(key, [version(key, "a", 1)])
    assert [k for k, _ in replica.iterate()] == [b"a", b"b", b"c", b"d"]
    assert [k for k, _ in replica.iterate(b"b", b"d")] == [b"b", b"c"]


def test_garbage_collection_removes_old_tombstones_in_bounded_steps(
    replica: ReplicaStore, clock: Clock
) -> None:
    """Tombstones past the grace go, younger ones and live values stay; each step examines
    at most `limit` records and the cursor wraps around."""
    now = now_ms(clock)
    old = pack_hlc(now - 120_000, 0)
    young = pack_hlc(now - 1_000, 0)
    for i in range(5):
        replica.apply(b"dead%d" % i, [version(b"", "a", 1, hlc=old, tombstone=True)])
    replica.apply(b"young", [version(b"", "a", 1, hlc=young, tombstone=True)])
    replica.apply(b"live", [version(b"v", "a", 1, hlc=old)])
    removed = [replica.collect_garbage(limit=3) for _ in range(3)]
    assert removed == [3, 2, 0]
    assert replica.stats.gc_passes == 1
    assert [k for k, _ in replica.iterate()] == [b"live", b"young"]
    assert replica.stats.records == 2 and replica.stats.collected == 5
    clock.advance(60)
    while replica.stats.gc_passes < 2:
        replica.collect_garbage(limit=3)
    assert [k for k, _ in replica.iterate()] == [b"live"]


def test_apply_after_a_storage_failure_raises(
    replica: ReplicaStore, committer: GroupCommitter
) -> None:
    """A replica that cannot persist refuses instead of acknowledging (the peer gets a NACK)."""
    committer.stop()
    with pytest.raises(StorageError):
        replica.apply(b"k", [version(b"v", "a", 1)])


# -- HintStore ------------------------------------------------------------------------------


def test_hints_are_durable_before_acknowledged_and_listed_per_owner_oldest_first(
    hints: HintStore, clock: Clock
) -> None:
    """A stand-in acks a hint only after the fsync; owners' hints are kept apart."""
    wait = hints.add("n3", b"k1", [version(b"1", "a", 1)])
    assert wait is not None
    results = fired(wait)
    clock.advance(0)
    assert results == [None]
    hints.add("n2", b"k2", [version(b"2", "a", 2)])
    hints.add("n3", b"k3", [version(b"3", "a", 3)])
    assert hints.targets() == ["n2", "n3"]
    assert [h.key for h in hints.pending_for("n3")] == [b"k1", b"k3"]
    assert [h.key for h in hints.pending_for("n3", limit=1)] == [b"k1"]
    assert hints.stats.stored == 3 and hints.stats.per_target == {"n2": 1, "n3": 2}


def test_a_second_hint_for_the_same_key_merges_and_survives_removal_of_the_first(
    hints: HintStore,
) -> None:
    """Hot keys cost one hint; a delivery of the old hint in flight cannot delete the new
    writes merged in meanwhile."""
    hints.add("n3", b"k", [version(b"1", "a", 1, hlc=1)])
    (first,) = hints.pending_for("n3")
    hints.add("n3", b"k", [version(b"2", "b", 1, hlc=2)])
    (merged,) = hints.pending_for("n3")
    assert merged.seq != first.seq
    assert {v.value for v in merged.record.versions} == {b"1", b"2"}
    assert hints.stats.merged == 1 and len(hints) == 1
    hints.remove(first)
    assert hints.pending_for("n3") == [merged]
    hints.remove(merged)
    assert hints.pending_for("n3") == [] and hints.targets() == []
    assert hints.stats.delivered == 1 and hints.stats.bytes == 0


def test_count_cap_drops_the_oldest_hints_and_counts_them(hints: HintStore) -> None:
    """When full, the oldest hints go first: the newest are likelier to be the only copy."""
    for i in range(5):
        hints.add("n3", b"k%d" % i, [version(b"v", "a", i + 1)])
    assert [h.key for h in hints.pending_for("n3")] == [b"k2", b"k3", b"k4"]
    assert hints.stats.dropped_full == 2 and hints.stats.stored == 3


def test_byte_cap_drops_oldest_and_an_oversized_hint_is_rejected(
    store: MemoryStore, committer: GroupCommitter, clock: Clock
) -> None:
    """The byte budget holds; a hint larger than the whole budget is refused, storing nothing."""
    small = HintStore(store, committer, lambda: now_ms(clock), max_bytes=400)
    for i in range(4):
        small.add("n3", b"k%d" % i, [version(b"x" * 100, "a", i + 1)])
    assert small.stats.bytes <= 400
    assert small.stats.dropped_full >= 1
    assert [h.key for h in small.pending_for("n3")][-1] == b"k3"
    with pytest.raises(HintRejected):
        small.add("n3", b"big", [version(b"x" * 1000, "a", 9)])
    assert small.stats.rejected == 1
    assert b"big" not in [h.key for h in small.pending_for("n3")]


def test_hints_older_than_the_age_cap_expire(hints: HintStore, clock: Clock) -> None:
    """An owner down for longer than the cap loses its hints (counted); newer ones stay."""
    hints.add("n3", b"old", [version(b"v", "a", 1)])
    clock.advance(4)
    hints.add("n3", b"new", [version(b"v", "a", 2)])
    clock.advance(1)
    assert hints.expire() == 1
    assert [h.key for h in hints.pending_for("n3")] == [b"new"]
    assert hints.stats.dropped_expired == 1


def test_hints_survive_a_restart(
    store: MemoryStore, committer: GroupCommitter, clock: Clock, hints: HintStore
) -> None:
    """A restarted stand-in rebuilds its index from the store and keeps numbering after it."""
    hints.add("n3", b"a", [version(b"1", "a", 1, hlc=40)])
    hints.add("n2", b"b", [version(b"2", "a", 2, hlc=90)])
    before = max(h.seq for h in hints.pending_for("n2") + hints.pending_for("n3"))
    reopened = HintStore(store, committer, lambda: now_ms(clock), max_count=3)
    assert reopened.load() == 90
    assert reopened.targets() == ["n2", "n3"]
    assert reopened.stats.stored == 2 and reopened.stats.bytes == hints.stats.bytes
    reopened.add("n3", b"a", [version(b"3", "b", 1, hlc=91)])
    (merged,) = reopened.pending_for("n3")
    assert merged.seq > before
    assert len(merged.record.versions) == 2


def test_layout_constants_match_the_single_node_keyspace() -> None:
    """The replica must keep reading what LocalKeyspace writes: same prefix, same sentinel."""
    from twistkv.node import cluster, keyspace, replica

    assert replica.DATA_PREFIX == keyspace.DATA_PREFIX
    assert cluster.KEEP_TTL == keyspace.KEEP_TTL


def test_concurrent_counters_merge_on_apply_and_in_hints(
    replica: ReplicaStore, hints: HintStore
) -> None:
    """A replica (and a stand-in's hint) receiving two concurrent increments of one counter
    keeps both, and a read counts both; a duplicate changes nothing; the next increment
    supersedes both, leaving one version."""
    from twistkv.core.record import live_value
    from twistkv.core.replication import increment_version

    a = increment_version(None, "n1/x", 2, "n1", 10, 0)
    b = increment_version(None, "n2/y", 3, "n2", 20, 0)
    replica.apply(b"k", (a,))
    replica.apply(b"k", (b,))
    record = replica.read(b"k")
    assert record is not None and set(record.versions) == {a, b}
    assert live_value(record, 0).value == b"5"  # type: ignore[union-attr]
    replica.apply(b"k", (a, b))
    assert replica.stats.unchanged == 1
    after = increment_version(record, "n1/x", 1, "n1", 30, 0)
    replica.apply(b"k", (after,))
    assert replica.read(b"k") == Record((after,)) and after.value == b"6"
    hints.add("n3", b"k", (a,))
    hints.add("n3", b"k", (b,))
    (hint,) = hints.pending_for("n3")
    assert live_value(hint.record, 0).value == b"5"  # type: ignore[union-attr]


def test_replace_stores_the_bytes_as_given_and_counts_them(
    replica: ReplicaStore, clock: Clock
) -> None:
    """replace() is apply() without the merge, for a caller that read raw() and knows its
    record supersedes it: the bytes are stored as is, counted, and acknowledged once durable."""
    first = encode_record(Record((version(b"one", "n1", 1),)))
    assert replica.raw(b"k") is None
    wait = replica.replace(b"k", first, None)
    results = fired(wait)
    assert results == [] and replica.raw(b"k") == first
    clock.advance(0)
    assert results == [None]
    second = encode_record(Record((version(b"two", "n1", 2, hlc=2),)))
    replica.replace(b"k", second, replica.raw(b"k"))
    assert replica.read(b"k") == Record((version(b"two", "n1", 2, hlc=2),))
    assert (replica.stats.records, replica.stats.applied) == (1, 2)
