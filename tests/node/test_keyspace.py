"""Tests for twistkv.node.keyspace: versioned records, expiry and counting."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from twistkv.core.versioning import HybridLogicalClock
from twistkv.node.durability import GroupCommitter
from twistkv.node.keyspace import KEEP_TTL, LocalKeyspace, Seen
from twistkv.storage.memory import MemoryStore


def test_set_get_and_versions_descend(keyspace: LocalKeyspace, clock: Clock) -> None:
    """Each write replaces the previous version with one whose clock descends it."""
    keyspace.set(b"k", b"v1")
    first = keyspace.get(b"k")
    keyspace.set(b"k", b"v2")
    second = keyspace.get(b"k")
    assert first is not None and second is not None
    assert second.value == b"v2"
    assert dict(second.clock)["n1"] > dict(first.clock)["n1"]
    assert second.hlc > first.hlc
    record = keyspace.record(b"k")
    assert record is not None and len(record.versions) == 1


def test_write_waits_for_group_commit(keyspace: LocalKeyspace, clock: Clock) -> None:
    """With fsync always a write is visible at once but its wait fires only after the sync."""
    wait = keyspace.set(b"k", b"v")
    assert keyspace.get(b"k") is not None
    assert wait is not None
    fired: list[object] = []
    wait.addCallback(fired.append)
    assert fired == []
    clock.advance(0)
    assert fired == [None]


def test_expiry_hides_then_sweeps(keyspace: LocalKeyspace, clock: Clock) -> None:
    """A key is invisible from its expiry on, and the sweep removes it and fixes the count."""
    now = keyspace.now_ms()
    keyspace.set(b"short", b"v", now + 1000)
    keyspace.set(b"forever", b"v")
    assert keyspace.key_count() == 2
    clock.advance(1.0)
    assert keyspace.get(b"short") is None
    assert keyspace.expire_due() == 1
    assert keyspace.key_count() == 1
    assert keyspace.record(b"short") is None
    assert keyspace.expired_keys == 1


def test_overwrite_cancels_pending_expiry(keyspace: LocalKeyspace, clock: Clock) -> None:
    """A stale expiry-heap entry does not delete a key rewritten without TTL."""
    keyspace.set(b"k", b"v", keyspace.now_ms() + 10)
    keyspace.set(b"k", b"v2")
    clock.advance(1)
    assert keyspace.expire_due() == 0
    version = keyspace.get(b"k")
    assert version is not None and version.value == b"v2"


def test_read_for_update_is_get_and_its_writes_are_the_plain_ones(
        keyspace: LocalKeyspace, clock: Clock) -> None:
    """A lone node's read for a read-modify-write command is L{get}, with no context (the
    command's write follows in the same step), and the writes that take it back act as
    without it: set keeps the TTL read, set_expiry changes it, delete removes the key; a
    read lent to a write of another key is refused, writing nothing."""

    def settled(result: object) -> object:
        if not isinstance(result, Deferred):
            return result
        fired: list[object] = []
        result.addBoth(fired.append)
        clock.advance(0)
        (value,) = fired
        return value

    expires = keyspace.now_ms() + 5000
    keyspace.set(b"k", b"a", expires)
    seen = keyspace.read_for_update(b"k")
    assert seen == Seen(b"k", keyspace.get(b"k")) and seen.context is None
    assert keyspace.read_for_update(b"missing") == Seen(b"missing", None)
    for write in (lambda: keyspace.set(b"other", b"x", seen=seen),
                  lambda: keyspace.set_expiry(b"other", 0, seen=seen),
                  lambda: keyspace.delete([b"other"], seen=seen),
                  lambda: keyspace.delete([b"k", b"other"], seen=seen)):
        with pytest.raises(ValueError, match="key that was read"):
            write()
    assert keyspace.get(b"other") is None
    settled(keyspace.set(b"k", b"ab", KEEP_TTL, seen=seen))
    version = keyspace.get(b"k")
    assert version is not None and version.value == b"ab" and version.expires_at_ms == expires
    assert settled(keyspace.set_expiry(b"k", 0, seen=keyspace.read_for_update(b"k"))) is True
    version = keyspace.get(b"k")
    assert version is not None and version.expires_at_ms == 0
    assert settled(keyspace.delete([b"k"], seen=keyspace.read_for_update(b"k"))) == 1
    assert keyspace.get(b"k") is None


def test_keep_ttl(keyspace: LocalKeyspace) -> None:
    """KEEP_TTL keeps the current expiry; a plain set clears it."""
    expires = keyspace.now_ms() + 5000
    keyspace.set(b"k", b"a", expires)
    keyspace.set(b"k", b"b", KEEP_TTL)
    version = keyspace.get(b"k")
    assert version is not None and version.expires_at_ms == expires
    keyspace.set(b"k", b"c")
    version = keyspace.get(b"k")
    assert version is not None and version.expires_at_ms == 0


def test_delete_counts_only_live_keys(keyspace: LocalKeyspace, clock: Clock) -> None:
    """delete() reports keys that held a live value, ignoring duplicates and missing keys."""
    keyspace.set(b"a", b"1")
    keyspace.set(b"b", b"2", keyspace.now_ms() + 1)
    clock.advance(1)
    removed = keyspace.delete([b"a", b"a", b"b", b"missing"])
    results: list[object] = []
    assert isinstance(removed, Deferred)
    removed.addCallback(results.append)
    clock.advance(0)
    assert results == [1]
    assert keyspace.key_count() == 0


def test_scan_resumes_and_bounds_work(keyspace: LocalKeyspace) -> None:
    """scan() examines at most COUNT keys per call and resumes after the last one seen."""
    for i in range(25):
        keyspace.set(b"key:%02d" % i, b"v")
    seen: list[bytes] = []
    after = None
    calls = 0
    while True:
        keys, after = keyspace.scan(after, 10)
        calls += 1
        assert len(keys) <= 10
        seen.extend(keys)
        if after is None:
            break
    assert seen == sorted(b"key:%02d" % i for i in range(25))
    assert calls == 3


def test_load_restores_count_expiry_and_hlc(
    store: MemoryStore, committer: GroupCommitter, clock: Clock
) -> None:
    """A keyspace reopened over the same store knows its key count, expiries and newest HLC."""
    now = lambda: int(clock.seconds() * 1000)  # noqa: E731
    first = LocalKeyspace(store, committer, "n1", HybridLogicalClock(), now)
    first.load()
    first.set(b"a", b"1")
    first.set(b"b", b"2", now() + 1000)
    newest = first.get(b"a")
    assert newest is not None
    clock.advance(0)
    # Reopen with a wall clock that stepped back an hour.
    reopened = LocalKeyspace(
        store, committer, "n1", HybridLogicalClock(), lambda: now() - 3_600_000
    )
    reopened.load()
    assert reopened.key_count() == 2
    reopened.set(b"c", b"3")
    written = reopened.get(b"c")
    assert written is not None and written.hlc > newest.hlc
    assert reopened.keys_with_expiry() == 1


def test_incr_by_stores_a_pn_counter_the_cluster_can_merge(keyspace: LocalKeyspace) -> None:
    """A lone node stores INCR results as a PN-counter under its own actor id, continuing a
    plain integer as the base; the record merges with a cluster actor's concurrent increment
    of the same lineage into the sum, so nothing is lost once the node joins a cluster."""
    from twistkv.core.record import Record, live_value
    from twistkv.core.replication import increment_version, merge_versions

    keyspace.set(b"c", b"10")
    before = keyspace.record(b"c")
    assert keyspace.incr_by(b"c", 5) is not None
    current = keyspace.get(b"c")
    assert current is not None and current.value == b"15"
    assert current.counter is not None
    assert current.counter.base == 10 and current.counter.entries == ((keyspace.actor, 5, 0),)
    assert keyspace.actor.startswith("n1/")
    other = increment_version(before, "n2/x", 2, "n2", 2**60, 0)
    stored = keyspace.record(b"c")
    assert stored is not None
    merged = merge_versions(stored, [other])
    assert live_value(merged, 0).value == b"17"  # type: ignore[union-attr]
    assert merge_versions(Record((other,)), stored.versions) == merged


def test_incr_by_refuses_without_writing_and_keeps_the_ttl(
    keyspace: LocalKeyspace, clock: Clock
) -> None:
    """A non-integer value or an overflow raises CounterError and leaves the key alone; an
    INCR keeps the key's expiry and counts a new key once."""

    from twistkv.core.counter import CounterError

    keyspace.set(b"s", b"abc")
    with pytest.raises(CounterError, match="not an integer"):
        keyspace.incr_by(b"s", 1)
    keyspace.set(b"big", b"9223372036854775807")
    with pytest.raises(CounterError, match="overflow"):
        keyspace.incr_by(b"big", 1)
    assert keyspace.get(b"big").value == b"9223372036854775807"  # type: ignore[union-attr]
    expires = int(clock.seconds() * 1000) + 5000
    keyspace.set(b"t", b"1", expires)
    keyspace.incr_by(b"t", 1)
    assert keyspace.get(b"t").expires_at_ms == expires  # type: ignore[union-attr]
    count = keyspace.key_count()
    keyspace.incr_by(b"new", -3)
    assert keyspace.key_count() == count + 1
    assert keyspace.get(b"new").value == b"-3"  # type: ignore[union-attr]


def test_set_run_is_the_same_as_setting_one_by_one(
    keyspace: LocalKeyspace, store: MemoryStore, clock: Clock
) -> None:
    """A run of plain SETs (a key written twice, a new key, a key holding another node's
    versions) ends with the values, key count and version ancestry that SETs one at a time
    give, in one commit whose wait fires after the group's sync."""
    from twistkv.core.record import Record, Version, encode_record

    keyspace.set(b"old", b"v0")
    foreign = Version(b"theirs", (("n2", 7),), 7, "n2")
    store.write([(b"dold2", encode_record(Record((foreign,))))])
    keyspace.load()
    commits = keyspace._committer.stats.commits  # type: ignore[attr-defined]
    wait = keyspace.set_run([(b"a", b"1"), (b"old", b"2"), (b"a", b"3"), (b"old2", b"4"), (b"b", b"5")])
    assert keyspace._committer.stats.commits == commits + 1  # type: ignore[attr-defined]
    assert isinstance(wait, Deferred)
    fired: list[object] = []
    wait.addCallback(fired.append)
    assert fired == []
    clock.advance(0)
    assert fired == [None]
    values = {k: v.value for k in (b"a", b"old", b"old2", b"b") if (v := keyspace.get(k))}
    assert values == {b"a": b"3", b"old": b"2", b"old2": b"4", b"b": b"5"}
    assert keyspace.key_count() == 4
    merged = keyspace.get(b"old2")
    assert merged is not None and dict(merged.clock)["n2"] == 7  # descends the other node's write
    a, b = keyspace.get(b"a"), keyspace.get(b"b")
    assert a is not None and b is not None and a.hlc < merged.hlc < b.hlc  # in run order


def test_get_values_reads_like_get(keyspace: LocalKeyspace, store: MemoryStore, clock: Clock) -> None:
    """get_values answers each key as get does: own plain values, another node's versions
    (the decoding path), missing and expired keys as None."""
    from twistkv.core.record import Record, Version, encode_record

    keyspace.set(b"plain", b"p")
    keyspace.set(b"soon", b"s", expires_at_ms=int(clock.seconds() * 1000) + 1000)
    siblings = (Version(b"x", (("n2", 1),), 5, "n2"), Version(b"y", (("n3", 1),), 9, "n3"))
    store.write([(b"dsiblings", encode_record(Record(siblings)))])
    keys = [b"plain", b"soon", b"siblings", b"missing"]
    expected = [None if (v := keyspace.get(k)) is None else v.value for k in keys]
    assert keyspace.get_values(keys) == expected == [b"p", b"s", b"y", None]
    clock.advance(2)
    assert keyspace.get_values(keys) == [b"p", None, b"y", None]
