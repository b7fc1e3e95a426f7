"""One node's keyspace: versioned records in an ordered store, with expiry.

This is the single-node database the client protocols (RESP and HTTP) talk
to. Reads are synchronous (a store lookup is about a microsecond); writes
apply to the store at once and return what to wait for before acknowledging:
C{None} when the fsync policy needs no wait, otherwise a L{Deferred} that
fires when the group commit holding the write is durable.

Keys live under the C{b"d"} prefix of the store so hints, metadata and Raft
state can share it later. Expired keys are invisible at once (each version
carries an absolute expiry) and are removed by an active sweep, as Redis
does, so memory and disk are reclaimed even for keys nobody reads again.
"""

from __future__ import annotations

import heapq
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred

from twistkv.core.record import (
    Record,
    Version,
    decode_record,
    encode_record,
    encode_single_writer,
    encode_single_writer_run,
    foreign_writes,
    is_single_writer,
    live_value,
    own_plain_value,
    own_plain_version,
    single_writer_block,
)
from twistkv.core.replication import increment_version
from twistkv.core.versioning import HybridLogicalClock, VectorClock

if TYPE_CHECKING:
    from twistkv.node.durability import GroupCommitter
    from twistkv.storage.interface import OrderedStore

__all__ = ["DATA_PREFIX", "LocalKeyspace", "Seen", "Wait", "KEEP_TTL"]

DATA_PREFIX = b"d"
_DATA_END = b"e"

#: What a write returns: nothing to wait for, or a Deferred fired once durable.
Wait = Deferred[None] | None

#: Sentinel for L{LocalKeyspace.set}: keep the key's current expiry (SET KEEPTTL).
KEEP_TTL = -1


@dataclass(frozen=True)
class Seen:
    """What a read-modify-write command (APPEND, GETDEL, EXPIRE...) read: the live version
    it computes its write from, and the causal context that write must carry.

    In a cluster the write has to descend exactly what was read: reading again before
    writing could take in a concurrent write the command never saw and supersede it. Get
    one from C{read_for_update} and hand it back to C{set}, C{delete} or C{set_expiry}.

    @ivar key: the key read; a write given this read must be of the same key.
    @ivar current: the live version read (None: absent, deleted or expired).
    @ivar context: the read's causal context (the cluster's L{VectorClock}); None on a lone
        node, whose read and write run in one step of the reactor.
    """

    key: bytes
    current: Version | None
    context: VectorClock | None = None

    def check(self, key: bytes) -> None:
        """Refuse to lend this read's context to a write of another key (a bug)."""
        if key != self.key:
            raise ValueError("a write given seen= must be of the key that was read")


def _after(wait: Any, result: Any) -> Any:
    """C{result} now, or a Deferred of it once C{wait} fires."""
    if isinstance(wait, Deferred):
        return wait.addCallback(lambda _: result)
    return result


class LocalKeyspace:
    """Versioned key-value operations over one L{OrderedStore}."""

    #: GET reads synchronously here; a cluster keyspace reads in runs (L{cmd_get}).
    reads_in_runs = False

    def __init__(
        self,
        store: OrderedStore,
        committer: GroupCommitter,
        node_id: str,
        hlc: HybridLogicalClock,
        now_ms: Callable[[], int],
    ) -> None:
        self._store = store
        self._committer = committer
        self._node_id = node_id
        self._own_block = single_writer_block(node_id)
        self._hlc = hlc
        self.now_ms = now_ms
        #: This node's PN-counter actor id (twistkv.core.counter): a fresh epoch per start,
        #: so that a data directory restored from an older copy never continues old entries.
        self.actor = f"{node_id}/{secrets.token_hex(4)}"
        self._key_count = 0
        #: (expires_at_ms, key) for every key written with a TTL; entries go
        #: stale when a key is overwritten and are re-checked when popped.
        self._expiry_heap: list[tuple[int, bytes]] = []
        self.expired_keys = 0

    # -- startup ----------------------------------------------------------

    def load(self) -> None:
        """Count stored keys and index expiries: one scan at startup.

        Exact C{DBSIZE} and active expiry need both; the scan costs about a
        second per million keys on RocksDB, paid once per start.
        """
        count = 0
        newest_hlc = 0
        heap: list[tuple[int, bytes]] = []
        for db_key, raw in self._store.iterate(DATA_PREFIX, _DATA_END):
            count += 1
            record = decode_record(raw)
            for version in record.versions:
                newest_hlc = max(newest_hlc, version.hlc)
            winner = record.winner()
            if winner is not None and winner.expires_at_ms:
                heap.append((winner.expires_at_ms, db_key[1:]))
        heapq.heapify(heap)
        self._key_count = count
        self._expiry_heap = heap
        # Timestamps must keep increasing across a restart even if the wall
        # clock stepped back while the node was down.
        if newest_hlc > self._hlc.last:
            self._hlc = HybridLogicalClock(last=newest_hlc)

    @property
    def hlc(self) -> HybridLogicalClock:
        """The clock stamping this node's writes (shared with the cluster coordinator)."""
        return self._hlc

    def at(self, consistency: object) -> LocalKeyspace:
        """This keyspace at a consistency level: one replica, so every level is the same."""
        return self

    # -- reads ------------------------------------------------------------

    def record(self, key: bytes) -> Record | None:
        """The stored record for C{key}, expired or not (for VERSIONS, HTTP JSON)."""
        raw = self._store.get(DATA_PREFIX + key)
        return None if raw is None else decode_record(raw)

    def get(self, key: bytes) -> Version | None:
        """The live version of C{key}, or None when absent or expired."""
        raw = self._store.get(DATA_PREFIX + key)
        if raw is None:
            return None
        version = own_plain_version(raw, self._own_block, self._node_id)
        if version is not None:  # the usual record: one plain value this node wrote
            expires = version.expires_at_ms
            return version if not expires or expires > self.now_ms() else None
        versions = decode_record(raw).versions
        if len(versions) == 1:
            version = versions[0]
            if version.tombstone or (
                version.expires_at_ms and version.expires_at_ms <= self.now_ms()
            ):
                return None
            return version
        return live_value(Record(versions), self.now_ms())

    def read_for_update(self, key: bytes) -> Seen:
        """L{get} for a read-modify-write command, to hand back to its write (L{Seen}).

        A lone node needs no context: the command's write follows its read in the same
        step, with nothing in between."""
        return Seen(key, self.get(key))

    def get_values(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """The live values of C{keys} (None where absent or expired), for a run of
        pipelined GETs: one loop instead of a command dispatch per key."""
        block = self._own_block
        now = self.now_ms()
        values: list[bytes | None] = []
        append = values.append
        raws = self._store.get_many([DATA_PREFIX + key for key in keys])
        for key, raw in zip(keys, raws, strict=True):
            if raw is None:
                append(None)
                continue
            plain = own_plain_value(raw, block)
            if plain is None:
                version = self.get(key)
                append(None if version is None else version.value)
            elif plain[1] and plain[1] <= now:
                append(None)
            else:
                append(plain[0])
        return values

    def exists(self, key: bytes) -> bool:
        """Whether C{key} holds a live value."""
        return self.get(key) is not None

    def key_count(self) -> int:
        """Exact number of live keys (sweeps due expiries first)."""
        self.expire_due(limit=None)
        return self._key_count

    def scan(
        self, after: bytes | None, count: int, match: Callable[[bytes], bool] | None = None
    ) -> tuple[list[bytes], bytes | None]:
        """Up to about C{count} live keys sorted after C{after}; returns (keys, last key seen).

        The second element is where the next call resumes, or None when the
        keyspace is exhausted. C{count} bounds the keys examined, not the
        keys returned, exactly like Redis's SCAN COUNT, so one call's cost is
        bounded even when MATCH filters out almost everything.
        """
        start = DATA_PREFIX if after is None else DATA_PREFIX + after + b"\x00"
        now = self.now_ms()
        keys: list[bytes] = []
        examined = 0
        last: bytes | None = None
        for db_key, raw in self._store.iterate(start, _DATA_END):
            key = db_key[1:]
            last = key
            examined += 1
            if live_value(decode_record(raw), now) is not None and (match is None or match(key)):
                keys.append(key)
            if examined >= count:
                return keys, last
        return keys, None

    def iter_keys(self, match: Callable[[bytes], bool] | None = None) -> Iterator[bytes]:
        """Every live key in order (KEYS, HTTP listing)."""
        now = self.now_ms()
        for db_key, raw in self._store.iterate(DATA_PREFIX, _DATA_END):
            key = db_key[1:]
            if (match is None or match(key)) and live_value(decode_record(raw), now) is not None:
                yield key

    # -- writes -----------------------------------------------------------

    def _new_version(
        self, previous: Record | None, value: bytes, expires_at_ms: int, tombstone: bool = False,
        hlc: int | None = None,
    ) -> Version:
        """A version that descends every version stored for the key (stamped C{hlc}, or a
        new tick of the node's clock)."""
        node_id = self._node_id
        if hlc is None:
            hlc = self._hlc.tick(self.now_ms())
        # This node's clock entry is its HLC timestamp: strictly increasing per node, so
        # it descends every earlier write of this node (the cluster coordinator does the
        # same, see twistkv.core.replication.new_version).
        merged: dict[str, int] = {}
        if previous is not None:
            for version in previous.versions:
                for node, counter in version.clock:
                    if counter > merged.get(node, 0):
                        merged[node] = counter
        merged[node_id] = max(hlc, merged.get(node_id, 0) + 1)
        clock = tuple(sorted(merged.items()))
        return Version(value, clock, hlc, node_id, expires_at_ms, tombstone)

    def _put_op(
        self, key: bytes, value: bytes, expires_at_ms: int, previous_raw: bytes | None,
        hlc: int | None = None,
    ) -> tuple[bytes, bytes]:
        if previous_raw is None:
            previous = None
            self._key_count += 1
            if expires_at_ms == KEEP_TTL:
                expires_at_ms = 0
        else:
            previous = decode_record(previous_raw)
            if expires_at_ms == KEEP_TTL:
                current = live_value(previous, self.now_ms())
                expires_at_ms = current.expires_at_ms if current is not None else 0
        if expires_at_ms:
            heapq.heappush(self._expiry_heap, (expires_at_ms, key))
        version = self._new_version(previous, value, expires_at_ms, hlc=hlc)
        return DATA_PREFIX + key, encode_record(Record((version,)))

    def set(self, key: bytes, value: bytes, expires_at_ms: int = 0, *,
            seen: Seen | None = None) -> Wait:
        """Store C{value} under C{key}; C{expires_at_ms} 0 = no expiry, KEEP_TTL = keep.
        C{seen} (L{read_for_update}) changes nothing here but the key check: see L{Seen}."""
        if seen is not None:
            seen.check(key)
        db_key = DATA_PREFIX + key
        raw = self._store.get(db_key)
        if expires_at_ms != KEEP_TTL and (raw is None or is_single_writer(raw, self._own_block)):
            # The hot path: nothing to merge, so nothing to decode.
            if raw is None:
                self._key_count += 1
            if expires_at_ms:
                heapq.heappush(self._expiry_heap, (expires_at_ms, key))
            hlc = self._hlc.tick(self.now_ms())
            data = encode_single_writer(self._own_block, value, hlc, expires_at_ms)
            return self._committer.commit(((db_key, data),))
        op = self._put_op(key, value, expires_at_ms, raw)
        return self._committer.commit((op,))

    def set_run(self, pairs: Sequence[tuple[bytes, bytes]]) -> Wait:
        """Plain SETs (no options) of a run of pipelined commands, in order, as one batch.

        The same outcome as calling L{set} for each pair in turn (a key written twice ends
        with the later value), with one clock reading, one block of HLC timestamps and one
        commit for the run.
        """
        block = self._own_block
        first_hlc = self._hlc.tick_many(self.now_ms(), len(pairs))
        db_keys = [DATA_PREFIX + key for key, _ in pairs]
        raws = self._store.get_many(db_keys)
        # A key written twice in the run keeps its later value (a dict keeps the last).
        staged = dict(zip(db_keys, encode_single_writer_run(
            block, [value for _, value in pairs], first_hlc), strict=True))
        created = raws.count(None)
        if created < len(raws):
            # Versions from elsewhere (a former cluster) to merge: the general path. Every
            # write of one key saw the same stored record, so all or none of them are here.
            for i in foreign_writes(raws, block):
                key, value = pairs[i]
                staged[db_keys[i]] = self._put_op(key, value, 0, raws[i], first_hlc + i)[1]
        if created and len(staged) < len(pairs):
            # A key written twice in the run was counted once per write.
            created = len({db_key for db_key, raw in zip(db_keys, raws, strict=True)
                           if raw is None})
        wait = self._committer.commit(list(staged.items()))
        self._key_count += created
        return wait

    def incr_by(self, key: bytes, delta: int) -> int | Deferred[int]:
        """INCRBY: add C{delta} to the key's counter; the new value (a Deferred when it must
        wait for durability).

        Stored as a PN-counter (L{twistkv.core.replication.increment_version}), the same form
        the cluster uses, so a lone node's counters keep counting correctly once it joins a
        cluster. A plain integer value becomes the counter's base; the key's TTL is kept.

        @raise twistkv.core.counter.CounterError: not an integer, or it would overflow.
        """
        db_key = DATA_PREFIX + key
        raw = self._store.get(db_key)
        record = None if raw is None else decode_record(raw)
        now = self.now_ms()
        version = increment_version(record, self.actor, delta, self._node_id,
                                    self._hlc.tick(now), now)
        if raw is None:
            self._key_count += 1
        if version.expires_at_ms:
            heapq.heappush(self._expiry_heap, (version.expires_at_ms, key))
        wait = self._committer.commit(((db_key, encode_record(Record((version,)))),))
        value = int(version.value)
        if wait is None:
            return value
        return wait.addCallback(lambda _: value)

    def set_many(self, pairs: Sequence[tuple[bytes, bytes]]) -> Wait:
        """Store several keys in one atomic batch (MSET), without expiry."""
        latest: dict[bytes, bytes] = {}
        for key, value in pairs:
            latest[key] = value
        ops = [
            self._put_op(key, value, 0, self._store.get(DATA_PREFIX + key))
            for key, value in latest.items()
        ]
        return self._committer.commit(ops)

    def delete(self, keys: Sequence[bytes], *, seen: Seen | None = None
               ) -> int | Deferred[int]:
        """Delete C{keys}; how many held a live value (a Deferred when it must wait).
        C{seen} (of one key) changes nothing here but the key check (L{Seen}).

        A single node has no replica that could resurrect a deleted key, so
        deletion is physical; the cluster writes versioned tombstones instead.
        """
        if seen is not None:
            if len(keys) != 1:
                raise ValueError("delete with seen= takes exactly the one key that was read")
            seen.check(keys[0])
        removed = 0
        ops: list[tuple[bytes, bytes | None]] = []
        done: set[bytes] = set()
        now = self.now_ms()
        for key in keys:
            if key in done:
                continue
            done.add(key)
            db_key = DATA_PREFIX + key
            raw = self._store.get(db_key)
            if raw is None:
                continue
            if live_value(decode_record(raw), now) is not None:
                removed += 1
            ops.append((db_key, None))
            self._key_count -= 1
        if not ops:
            return 0
        return _after(self._committer.commit(ops), removed)

    def set_expiry(self, key: bytes, expires_at_ms: int, *,
                   seen: Seen | None = None) -> bool | Deferred[bool]:
        """Change the expiry of a live key (0 = persist); whether the key existed.
        C{seen} changes nothing here but the key check (L{Seen})."""
        if seen is not None:
            seen.check(key)
        raw = self._store.get(DATA_PREFIX + key)
        if raw is None:
            return False
        current = live_value(decode_record(raw), self.now_ms())
        if current is None:
            return False
        if expires_at_ms and expires_at_ms <= self.now_ms():
            return _after(self.delete([key]), True)
        op = self._put_op(key, current.value, expires_at_ms, raw)
        return _after(self._committer.commit([op]), True)

    def flush(self) -> Wait:
        """Delete every key (FLUSHDB)."""
        ops: list[tuple[bytes, bytes | None]] = [
            (db_key, None) for db_key, _ in self._store.iterate(DATA_PREFIX, _DATA_END)
        ]
        self._key_count = 0
        self._expiry_heap.clear()
        return self._committer.commit(ops) if ops else None

    # -- expiry -----------------------------------------------------------

    def expire_due(self, limit: int | None = 200) -> int:
        """Physically remove keys whose expiry has passed; returns how many.

        Called from a periodic timer (bounded by C{limit} per call so one
        sweep never stalls the reactor) and before counting keys.
        """
        now = self.now_ms()
        heap = self._expiry_heap
        ops: list[tuple[bytes, bytes | None]] = []
        while heap and heap[0][0] <= now and (limit is None or len(ops) < limit):
            expires_at, key = heapq.heappop(heap)
            db_key = DATA_PREFIX + key
            raw = self._store.get(db_key)
            if raw is None:
                continue
            winner = decode_record(raw).winner()
            if winner is None or winner.expires_at_ms != expires_at:
                continue  # overwritten since; a newer heap entry covers it
            ops.append((db_key, None))
            self._key_count -= 1
        if ops:
            self.expired_keys += len(ops)
            # Expiry is re-derivable from the stored expiry, so losing this
            # delete in a crash is harmless: no need to wait for durability.
            # A failed sync is already logged (critically) by the committer.
            wait = self._committer.commit(ops)
            if wait is not None:
                wait.addErrback(lambda _: None)
        return len(ops)

    def keys_with_expiry(self) -> int:
        """Upper bound on keys carrying a TTL (INFO keyspace ``expires``)."""
        return len(self._expiry_heap)
