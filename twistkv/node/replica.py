"""A node's local replica and its durable hints, both in the node's one ordered store.

L{ReplicaStore} keeps the records this node replicates under the C{b"d"} prefix, in the same
key layout and record encoding as L{twistkv.node.keyspace.LocalKeyspace}, so a single node's
data directory opens unchanged as a cluster member (and the reverse). Writes arriving from
coordinators are merged with L{twistkv.core.replication.merge_versions} and acknowledged once
the group commit holding them is durable.

L{HintStore} keeps, under C{b"h"}, the writes this node accepted as a stand-in for an owner
that was down (sloppy quorum), until hinted handoff delivers them. Hints count towards a
write's quorum, so they are as durable as data: a stand-in acknowledges only after the commit.
They are bounded by count, bytes and age, because an owner may never come back: when full the
oldest hints are dropped first (and counted), since the newest ones are the writes most likely
to be the only copy of recent data, and anti-entropy covers what is dropped.

Both share the node's L{GroupCommitter}, so a replica write and a hint arriving in one reactor
turn share one fsync.

test-case-name: tests.node.test_replica
"""

from __future__ import annotations

import struct
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from twistkv.core.record import (
    CorruptRecordError,
    Record,
    Version,
    decode_record,
    encode_record,
)
from twistkv.core.replication import collectable, merge_versions

if TYPE_CHECKING:
    from twistkv.node.durability import GroupCommitter
    from twistkv.storage.interface import OrderedStore, WriteOp

__all__ = [
    "DATA_PREFIX",
    "HINT_PREFIX",
    "Hint",
    "HintRejected",
    "HintStats",
    "HintStore",
    "ReplicaStats",
    "ReplicaStore",
    "Wait",
]

_log = Logger()

#: Same namespace as LocalKeyspace (not imported from it: that module is a sibling adapter
#: under concurrent change, and the layout is a storage format, fixed by tests).
DATA_PREFIX = b"d"
_DATA_END = b"e"
HINT_PREFIX = b"h"
_HINT_END = b"i"

#: What a write returns: nothing to wait for, or a Deferred fired once durable.
Wait = Deferred[None] | None

_U64 = struct.Struct(">Q")
_HINT_VALUE_HEAD = struct.Struct(">QI")  # created_at_ms, key length


def _after(prefix: bytes) -> bytes:
    """The least byte string greater than every string starting with C{prefix}."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        raise ValueError("no upper bound for a prefix of 0xff bytes")
    return stripped[:-1] + bytes((stripped[-1] + 1,))


# -- the replica ----------------------------------------------------------------------------


@dataclass
class ReplicaStats:
    """Counters for metrics; all only grow except C{records}."""

    #: Records stored (tombstones included); exact, maintained from a startup scan.
    records: int = 0
    #: Writes merged into the store that changed it.
    applied: int = 0
    #: Writes whose versions the replica already had (duplicates, repairs of nothing).
    unchanged: int = 0
    #: Records removed by tombstone / expiry garbage collection.
    collected: int = 0
    #: Completed passes of the garbage collector over the whole replica.
    gc_passes: int = 0


class ReplicaStore:
    """This node's copy of the keys it replicates: merge on write, durable acknowledgement.

    @param now_ms: wall-clock milliseconds (expiry, tombstone age); the reactor's clock.
    @param tombstone_grace_ms: how long a deleted or expired record is kept before it may be
        collected; see L{twistkv.core.replication.collectable} for what it must exceed.
    """

    def __init__(
        self,
        store: OrderedStore,
        committer: GroupCommitter,
        now_ms: Callable[[], int],
        *,
        tombstone_grace_ms: int = 10 * 24 * 3600 * 1000,
    ) -> None:
        if tombstone_grace_ms < 0:
            raise ValueError("tombstone_grace_ms must not be negative")
        self._store = store
        self._committer = committer
        self.now_ms = now_ms
        self.tombstone_grace_ms = tombstone_grace_ms
        self.stats = ReplicaStats()
        self._gc_cursor: bytes | None = None
        #: The stored bytes last decoded by L{read} and their record: a coordinator reads a
        #: key to mint a version, then applies it at once, and the store hands back the very
        #: same bytes object (decoding is a pure function of the bytes, whatever the key).
        self._decoded: tuple[bytes | None, Record | None] = (None, None)

    def load(self) -> int:
        """Count the stored records; return the greatest HLC timestamp found (0 if none).

        The node seeds its hybrid logical clock from it, so that timestamps (and the vector
        clock entries derived from them) keep increasing across a restart even if the wall
        clock stepped back.
        """
        count = 0
        newest = 0
        for _, raw in self._store.iterate(DATA_PREFIX, _DATA_END):
            count += 1
            for version in decode_record(raw).versions:
                newest = max(newest, version.hlc)
        self.stats.records = count
        return newest

    # -- reads ---------------------------------------------------------------------------

    def read(self, key: bytes) -> Record | None:
        """The record stored for C{key} (deleted and expired versions included), or None."""
        raw = self._store.get(DATA_PREFIX + key)
        if raw is None:
            return None
        record = decode_record(raw)
        self._decoded = (raw, record)
        return record

    def raw(self, key: bytes) -> bytes | None:
        """The stored bytes of C{key}'s record, undecoded (for the write path's byte-level
        checks, L{twistkv.core.replication.supersedes_sole_writer}), or None."""
        return self._store.get(DATA_PREFIX + key)

    def raw_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """L{raw} for several keys in one store call (a peer's C{GET_BATCH})."""
        return self._store.get_many([DATA_PREFIX + key for key in keys])

    def iterate(
        self, start: bytes | None = None, stop: bytes | None = None
    ) -> Iterator[tuple[bytes, Record]]:
        """Yield C{(key, record)} for keys in [C{start}, C{stop}), in key order.

        For anti-entropy and listing. The iteration runs over the live store (see
        L{OrderedStore.iterate}): correct for merging replicas, whose writes commute.
        """
        low = DATA_PREFIX + (start or b"")
        high = _DATA_END if stop is None else DATA_PREFIX + stop
        for db_key, raw in self._store.iterate(low, high):
            yield db_key[len(DATA_PREFIX):], decode_record(raw)

    # -- writes --------------------------------------------------------------------------

    def apply(
        self, key: bytes, versions: Iterable[Version], *, encoded: bytes | None = None
    ) -> Wait:
        """Merge C{versions} into what is stored for C{key}; return what to wait for.

        The merged record is visible to the next read at once. The result fires once it is
        durable; when nothing changed it still waits for the commit that made the stored
        versions durable (an empty commit is a barrier), so a duplicate is never acknowledged
        ahead of the original's fsync.

        @param encoded: C{encode_record(Record(tuple(versions)))}: stored as is when the
            incoming versions supersede everything stored, the usual write. Bytes a peer sent
            qualify only when C{decode_record} accepted them and no version is a counter (the
            decoding is strict, so such bytes re-encode to themselves; a counter state has
            several encodings).
        @raise StorageError: the committer refused the write (failed or shutting down).
        """
        db_key = DATA_PREFIX + key
        raw = self._store.get(db_key)
        if raw is None:
            stored = None
        else:
            last_raw, stored = self._decoded
            if raw is not last_raw:
                stored = decode_record(raw)
        if encoded is not None:
            versions = tuple(versions)
        merged = merge_versions(stored, versions)
        if encoded is None or merged.versions != versions:
            encoded = encode_record(merged)
        if encoded == raw:
            self.stats.unchanged += 1
            return self._committer.commit([])
        wait = self._committer.commit([(db_key, encoded)])
        if raw is None:
            self.stats.records += 1
        self.stats.applied += 1
        return wait

    def replace(self, key: bytes, encoded: bytes, stored: bytes | None) -> Wait:
        """Store C{encoded} for C{key} as is: L{apply} for a caller that has just read the
        stored bytes (C{stored}, from L{raw}, with nothing run in between) and found that
        the merge of C{encoded} into them is C{encoded} itself (a record superseding them).

        @raise StorageError: the committer refused the write (failed or shutting down).
        """
        wait = self._committer.commit([(DATA_PREFIX + key, encoded)])
        stats = self.stats
        if stored is None:
            stats.records += 1
        stats.applied += 1
        return wait

    def replace_many(self, ops: Sequence[tuple[bytes, bytes]], new_records: int) -> Wait:
        """L{replace} for several keys in one commit (a C{PUT_BATCH}'s superseding records):
        one batch for the store and, under C{--fsync always}, one wait for all of them.

        @param ops: C{(key, encoded)}, each key once, each record superseding what L{raw}
            returned for its key.
        @param new_records: how many of the keys had no record stored (for the count).
        @raise StorageError: the committer refused the write (failed or shutting down).
        """
        wait = self._committer.commit([(DATA_PREFIX + key, encoded) for key, encoded in ops])
        stats = self.stats
        stats.records += new_records
        stats.applied += len(ops)
        return wait

    def collect_garbage(self, limit: int = 1000) -> int:
        """One bounded step of the tombstone sweep; returns how many records it removed.

        Examines at most C{limit} records from where the previous step stopped, removes those
        L{collectable} at the grace period, and wraps around at the end. Called from a timer:
        the bound keeps one step short for the reactor, and the timer's interval sets the rate.
        The removal is not waited for: losing it in a crash only delays it to the next pass.
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        now = self.now_ms()
        start = DATA_PREFIX if self._gc_cursor is None else DATA_PREFIX + self._gc_cursor + b"\x00"
        ops: list[WriteOp] = []
        examined = 0
        last: bytes | None = None
        for db_key, raw in self._store.iterate(start, _DATA_END):
            examined += 1
            last = db_key[len(DATA_PREFIX):]
            if collectable(decode_record(raw), now, self.tombstone_grace_ms):
                ops.append((db_key, None))
            if examined >= limit:
                break
        if examined < limit:
            self._gc_cursor = None
            self.stats.gc_passes += 1
        else:
            self._gc_cursor = last
        if ops:
            self._committer.commit(ops)
            self.stats.records -= len(ops)
            self.stats.collected += len(ops)
        return len(ops)


# -- hints ----------------------------------------------------------------------------------


class HintRejected(Exception):
    """A hint cannot be stored at all (larger than the whole hint budget)."""


@dataclass(frozen=True)
class Hint:
    """A write kept for an owner that was down, identified by C{(target, seq)}."""

    target: str
    seq: int
    key: bytes
    record: Record
    created_at_ms: int


@dataclass
class HintStats:
    """Hint counters for metrics; C{stored}, C{bytes} and C{per_target} are gauges."""

    stored: int = 0
    bytes: int = 0
    added: int = 0
    #: Hints merged into an existing hint for the same owner and key.
    merged: int = 0
    delivered: int = 0
    dropped_full: int = 0
    dropped_expired: int = 0
    rejected: int = 0
    per_target: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True, slots=True)
class _Entry:
    target: str
    key: bytes
    size: int
    created_at_ms: int


def _hint_db_key(target: str, seq: int) -> bytes:
    raw = target.encode("utf-8")
    if not 0 < len(raw) < 256:
        raise ValueError(f"node id must be 1..255 UTF-8 bytes: {target!r}")
    return HINT_PREFIX + bytes((len(raw),)) + raw + _U64.pack(seq)


def _target_prefix(target: str) -> bytes:
    raw = target.encode("utf-8")
    return HINT_PREFIX + bytes((len(raw),)) + raw


def _parse_hint_db_key(db_key: bytes) -> tuple[str, int]:
    length = db_key[1]
    target = db_key[2 : 2 + length].decode("utf-8")
    (seq,) = _U64.unpack_from(db_key, 2 + length)
    return target, seq


def _hint_value(created_at_ms: int, key: bytes, record: Record) -> bytes:
    return _HINT_VALUE_HEAD.pack(created_at_ms, len(key)) + key + encode_record(record)


def _parse_hint_value(raw: bytes) -> tuple[int, bytes, Record]:
    try:
        created, key_len = _HINT_VALUE_HEAD.unpack_from(raw, 0)
    except struct.error as error:
        raise CorruptRecordError(f"hint truncated: {error}") from None
    start = _HINT_VALUE_HEAD.size
    key = raw[start : start + key_len]
    if len(key) != key_len:
        raise CorruptRecordError("hint key truncated")
    return created, key, decode_record(raw[start + key_len :])


class HintStore:
    """Durable hints for owners that were down, bounded by count, bytes and age.

    Layout: C{b"h" + len(target) + target + seq(u64)} -> C{created_at_ms(u64) key_len(u32) key
    record}. Keys sort by owner, then by C{seq}, so one owner's hints are one range scan, oldest
    first. A second hint for the same owner and key is merged into the first (merging versions
    is idempotent and commutative), so a hot key costs one hint however often it is written
    while its owner is down; the merged hint takes a fresh C{seq}, so a delivery of the old one
    that is still in flight cannot remove the new writes with it.
    """

    def __init__(
        self,
        store: OrderedStore,
        committer: GroupCommitter,
        now_ms: Callable[[], int],
        *,
        max_count: int = 100_000,
        max_bytes: int = 256 * 1024 * 1024,
        max_age_ms: int = 3 * 3600 * 1000,
    ) -> None:
        if max_count < 1 or max_bytes < 1 or max_age_ms < 1:
            raise ValueError("hint caps must be positive")
        self._store = store
        self._committer = committer
        self.now_ms = now_ms
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.max_age_ms = max_age_ms
        self.stats = HintStats()
        #: seq -> entry, oldest (smallest seq) first.
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._by_key: dict[tuple[str, bytes], int] = {}
        self._next_seq = 1

    def load(self) -> int:
        """Index the stored hints (one scan at startup); return the greatest HLC found."""
        entries: list[tuple[int, _Entry]] = []
        newest = 0
        for db_key, raw in self._store.iterate(HINT_PREFIX, _HINT_END):
            target, seq = _parse_hint_db_key(db_key)
            created, key, record = _parse_hint_value(raw)
            for version in record.versions:
                newest = max(newest, version.hlc)
            entries.append((seq, _Entry(target, key, len(db_key) + len(raw), created)))
        entries.sort()
        self._entries = OrderedDict(entries)
        self._by_key = {(e.target, e.key): seq for seq, e in entries}
        self._next_seq = (entries[-1][0] + 1) if entries else 1
        stats = self.stats
        stats.stored = len(entries)
        stats.bytes = sum(e.size for _, e in entries)
        stats.per_target = Counter(e.target for _, e in entries)
        return newest

    # -- queries -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def targets(self) -> list[str]:
        """Owners with at least one pending hint, sorted."""
        return sorted(node for node, count in self.stats.per_target.items() if count > 0)

    def pending_for(self, target: str, limit: int | None = None) -> list[Hint]:
        """Up to C{limit} hints for C{target}, oldest first."""
        prefix = _target_prefix(target)
        hints: list[Hint] = []
        for db_key, raw in self._store.iterate(prefix, _after(prefix)):
            if limit is not None and len(hints) >= limit:
                break
            _, seq = _parse_hint_db_key(db_key)
            created, key, record = _parse_hint_value(raw)
            hints.append(Hint(target, seq, key, record, created))
        return hints

    # -- changes -------------------------------------------------------------------------

    def add(self, target: str, key: bytes, versions: Iterable[Version]) -> Wait:
        """Keep C{versions} of C{key} for C{target}; the result fires once durable.

        When the caps are exceeded the oldest hints are dropped first (counted in
        C{dropped_full}).

        @raise HintRejected: the hint alone exceeds the byte cap; nothing was stored.
        @raise StorageError: the committer refused the write.
        """
        ops: list[WriteOp] = []
        previous_seq = self._by_key.get((target, key))
        stored: Record | None = None
        if previous_seq is not None:
            raw = self._store.get(_hint_db_key(target, previous_seq))
            if raw is not None:
                stored = _parse_hint_value(raw)[2]
        record = merge_versions(stored, versions)
        seq = self._next_seq
        db_key = _hint_db_key(target, seq)
        now = self.now_ms()
        value = _hint_value(now, key, record)
        size = len(db_key) + len(value)
        if size > self.max_bytes:
            self.stats.rejected += 1
            raise HintRejected(
                f"hint for {target} of {size} bytes exceeds the hint cap of {self.max_bytes}"
            )
        ops.append((db_key, value))
        self._next_seq += 1
        removed: list[int] = []
        if previous_seq is not None:
            ops.append((_hint_db_key(target, previous_seq), None))
            removed.append(previous_seq)
        dropped = self._make_room(size, exclude=previous_seq)
        ops.extend((_hint_db_key(self._entries[s].target, s), None) for s in dropped)
        wait = self._committer.commit(ops)
        # Only now that the batch is applied does the index change.
        for old in removed:
            self._forget(old)
        for old in dropped:
            self._forget(old)
        self.stats.dropped_full += len(dropped)
        self._remember(seq, _Entry(target, key, size, now))
        if previous_seq is not None:
            self.stats.merged += 1
        else:
            self.stats.added += 1
        if dropped:
            _log.warn("Hint store full: dropped the {count} oldest hints", count=len(dropped))
        return wait

    def remove(self, hint: Hint) -> Wait:
        """Delete a delivered hint, unless it was superseded (merged) meanwhile."""
        if hint.seq not in self._entries:
            return None
        wait = self._committer.commit([(_hint_db_key(hint.target, hint.seq), None)])
        self._forget(hint.seq)
        self.stats.delivered += 1
        return wait

    def expire(self) -> int:
        """Drop hints older than the age cap (counted in C{dropped_expired}); return how many.

        An owner that stays down longer than the cap no longer gets these writes by handoff;
        read repair and anti-entropy are what bring it up to date.
        """
        cutoff = self.now_ms() - self.max_age_ms
        doomed: list[int] = []
        # Entries are in seq order, which is creation order while the wall clock runs
        # forwards, so the scan stops at the first young hint; one that is out of order
        # (the clock stepped back) only expires a little late.
        for seq, entry in self._entries.items():
            if entry.created_at_ms > cutoff:
                break
            doomed.append(seq)
        if not doomed:
            return 0
        self._committer.commit([(_hint_db_key(self._entries[s].target, s), None) for s in doomed])
        for seq in doomed:
            self._forget(seq)
        self.stats.dropped_expired += len(doomed)
        _log.warn("Dropped {count} hints older than {age} ms", count=len(doomed),
                  age=self.max_age_ms)
        return len(doomed)

    # -- index ---------------------------------------------------------------------------

    def _make_room(self, size: int, exclude: int | None) -> list[int]:
        """The oldest hints to drop so that one more of C{size} bytes fits the caps."""
        count = len(self._entries) - (1 if exclude is not None else 0)
        total = self.stats.bytes - (
            self._entries[exclude].size if exclude is not None and exclude in self._entries else 0
        )
        dropped: list[int] = []
        for seq, entry in self._entries.items():
            if count + 1 <= self.max_count and total + size <= self.max_bytes:
                break
            if seq == exclude:
                continue
            dropped.append(seq)
            count -= 1
            total -= entry.size
        return dropped

    def _remember(self, seq: int, entry: _Entry) -> None:
        self._entries[seq] = entry
        self._by_key[(entry.target, entry.key)] = seq
        self.stats.stored += 1
        self.stats.bytes += entry.size
        self.stats.per_target[entry.target] += 1

    def _forget(self, seq: int) -> None:
        entry = self._entries.pop(seq, None)
        if entry is None:
            return
        if self._by_key.get((entry.target, entry.key)) == seq:
            del self._by_key[(entry.target, entry.key)]
        self.stats.stored -= 1
        self.stats.bytes -= entry.size
        self.stats.per_target[entry.target] -= 1
        if self.stats.per_target[entry.target] <= 0:
            del self.stats.per_target[entry.target]
