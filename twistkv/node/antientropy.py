"""Anti-entropy: replicas compare Merkle trees of the ranges they share and repair the keys
that differ, in the background and on demand (REPAIR); and tombstone collection that waits
until every replica holds the tombstone.

The unit of work is an *exchange* between this node and one peer over every token range the
two replicate together under the current ring (L{AntiEntropy.units}):

 1. ``AE_TREE``: both sides build a L{MerkleTree} over those ranges (the peer in answer to the
    request, we meanwhile), by one scan of their replica;
 2. L{twistkv.core.merkle.diff} names the leaves that differ; nothing more is sent when none do;
 3. ``AE_KEYS``: the peer lists ``(key, record digest)`` for the keys of the differing leaves,
    a page at a time in key order; we walk our own keys over the same key interval and, per
    key: *push* (C{PUT}, as read repair does) what the peer lacks, *pull* (C{GET}, then merge
    with L{twistkv.core.replication.merge_versions}, which never loses a version nothing
    supersedes) what we lack, and pull-then-push when both hold different versions.

Everything runs over live iterations of the store (see docs/consistency.md §12): a write
landing mid-scan is either counted or not, and either way it reaches the other replica by the
write path or by the next exchange, since merges commute.

Rate limits: one exchange at a time; background exchanges start every C{interval} seconds
(jittered), one peer after another; keys repaired (pushed + pulled) are limited to C{rate} per
second by a token bucket (C{repair_rate} while a full repair runs); scans yield to the reactor
every C{scan_chunk} keys.

test-case-name: tests.node.test_antientropy
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Generator, Iterator
from dataclasses import asdict, dataclass, field
from itertools import islice
from typing import Any, cast

from twisted.internet.defer import (
    Deferred,
    DeferredList,
    DeferredLock,
    inlineCallbacks,
    succeed,
)
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from twistkv.core.merkle import (
    DEFAULT_DEPTH,
    FULL_RING,
    HASH_BYTES,
    MAX_DEPTH,
    CorruptTreeError,
    MerkleTree,
    RangeSet,
    decode_bitmap,
    decode_ranges,
    diff,
    encode_bitmap,
    encode_ranges,
    intersect_ranges,
    ranges_width,
    record_digest,
)
from twistkv.core.peerwire import (
    Frame,
    PeerProtocolError,
    encode_frame,
    error_frame,
    quote,
    unquote,
)
from twistkv.core.record import CorruptRecordError, Record, decode_record, encode_record
from twistkv.core.replication import collectable
from twistkv.core.ring import Ring, TokenRange, key_token
from twistkv.node.coordinator import PeerRequester
from twistkv.node.peer import PeerError
from twistkv.node.replica import ReplicaStore
from twistkv.storage.errors import StorageError

__all__ = [
    "AE_VERBS",
    "AntiEntropy",
    "AntiEntropyStats",
    "RateLimiter",
    "RepairSummary",
    "decode_entries",
    "encode_entries",
]

_log = Logger()

#: The peer verbs L{AntiEntropy.handle} serves.
AE_VERBS = ("AE_TREE", "AE_KEYS")

#: Most entries one AE_KEYS answer carries, whatever the request asks for.
MAX_KEYS_PER_ANSWER = 10_000
#: Stop filling an AE_KEYS answer past this many bytes (keys may be 16 KiB).
MAX_KEYS_ANSWER_BYTES = 4 * 1024 * 1024

_U32 = struct.Struct(">I")


class _ExchangeFailed(Exception):
    """An exchange could not complete; the message says why (for summaries and logs)."""


# -- wire helpers ----------------------------------------------------------------------------


def encode_entries(entries: list[tuple[bytes, bytes]]) -> bytes:
    """``count(u32) (key_len(u32) key digest(16))*``: an AE_KEYS answer's payload."""
    parts = [_U32.pack(len(entries))]
    for key, digest in entries:
        parts.append(_U32.pack(len(key)))
        parts.append(key)
        parts.append(digest)
    return b"".join(parts)


def decode_entries(data: bytes) -> dict[bytes, bytes]:
    """Parse L{encode_entries}; key -> digest.

    @raise CorruptTreeError: malformed.
    """
    try:
        (count,) = _U32.unpack_from(data, 0)
        offset = _U32.size
        entries: dict[bytes, bytes] = {}
        for _ in range(count):
            (length,) = _U32.unpack_from(data, offset)
            offset += _U32.size
            key = data[offset:offset + length]
            digest = data[offset + length:offset + length + HASH_BYTES]
            if len(key) != length or len(digest) != HASH_BYTES:
                raise CorruptTreeError("key entry truncated")
            offset += length + HASH_BYTES
            entries[key] = digest
    except struct.error:
        raise CorruptTreeError("key entries truncated") from None
    if offset != len(data):
        raise CorruptTreeError("trailing bytes after key entries")
    return entries


def _nack(reason: str, message: str) -> Frame:
    return Frame("NACK", 0, {"reason": reason, "message": quote(message)})


def _token(text: str | None, name: str) -> int:
    if text is None or not text.isdigit() or (len(text) > 1 and text[0] == "0"):
        raise PeerProtocolError("bad_request", f"{name} must be a canonical decimal token")
    value = int(text)
    if value >= 1 << 64:
        raise PeerProtocolError("bad_request", f"{name} is outside the token space")
    return value


# -- rate limiting ---------------------------------------------------------------------------


class RateLimiter:
    """A token bucket on the reactor's clock: C{rate} per second, bursts up to C{burst}.

    L{acquire} reserves at once (the bucket may go negative) and fires when the reservation is
    covered, so by time ``t`` after creation at most ``burst + rate * t`` units were granted.
    C{rate} None means unlimited.
    """

    def __init__(self, clock: IReactorTime, rate: float | None, burst: int | None = None) -> None:
        if rate is not None and not rate > 0:
            raise ValueError("rate must be positive (or None for unlimited)")
        self._clock = clock
        self.rate = rate
        self.burst = max(1, burst if burst is not None else int(rate or 1))
        self._tokens = float(self.burst)
        self._stamp = clock.seconds()

    def acquire(self, amount: int) -> Deferred[None]:
        """Fire once C{amount} (capped at the burst) units may be spent."""
        if self.rate is None:
            return succeed(None)
        amount = min(max(amount, 1), self.burst)
        now = self._clock.seconds()
        self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= amount
        if self._tokens >= 0:
            return succeed(None)
        return deferLater(self._clock, -self._tokens / self.rate, lambda: None)


# -- results and counters --------------------------------------------------------------------


@dataclass
class AntiEntropyStats:
    """Counters for metrics; they only grow."""

    #: Exchanges started (background and repair) and those that did not complete.
    exchanges: int = 0
    exchange_failures: int = 0
    #: Merkle trees compared with a peer's (one per completed tree exchange).
    trees_compared: int = 0
    #: Leaves (token sub-ranges) found different.
    ranges_differing: int = 0
    #: Keys fetched from a peer and merged here; keys sent to a peer and acknowledged.
    keys_pulled: int = 0
    keys_pushed: int = 0
    #: Bytes of anti-entropy frames this node sent (requests, answers, pushes).
    bytes_sent: int = 0
    #: AE_TREE / AE_KEYS requests served for peers.
    requests_served: int = 0
    #: Full repairs (REPAIR) completed.
    full_repairs: int = 0


@dataclass
class RepairSummary:
    """What one exchange, or a full repair (L{AntiEntropy.repair_all}), did."""

    #: Peers compared with, and token ranges their trees covered.
    peers: int = 0
    ranges_compared: int = 0
    trees_compared: int = 0
    ranges_differing: int = 0
    keys_pulled: int = 0
    keys_pushed: int = 0
    bytes_sent: int = 0
    #: peer -> why its exchange did not complete.
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def keys_repaired(self) -> int:
        """Keys pulled plus keys pushed."""
        return self.keys_pulled + self.keys_pushed

    def as_dict(self) -> dict[str, Any]:
        """Plain values, for a RESP reply or JSON."""
        result = asdict(self)
        result["keys_repaired"] = self.keys_repaired
        return result


@dataclass
class _Tally:
    """Counts one exchange into both the node's stats and a summary."""

    stats: AntiEntropyStats
    summary: RepairSummary

    def add(self, name: str, amount: int = 1) -> None:
        setattr(self.stats, name, getattr(self.stats, name) + amount)
        setattr(self.summary, name, getattr(self.summary, name) + amount)


# -- the service -----------------------------------------------------------------------------


class AntiEntropy:
    """Background Merkle-tree anti-entropy for one node; see the module docstring.

    @param ring_provider: the current ring.
    @param address_provider: a node's peer address, or None if unknown.
    @param is_alive: whether a node is believed up (only those are compared with).
    @param n: replicas per key (must match the coordinator's).
    @param interval: seconds between background exchanges (jittered by C{jitter}, a fraction);
        None = none (peers are still served, and L{repair_all} still works).
    @param rate: keys repaired per second in the background; None = unlimited.
    @param repair_rate: the same while a full repair (L{repair_all}) runs.
    @param depth: Merkle tree depth (``2**depth`` leaves).
    @param remove: deletes one key from the replica (tombstone collection); without it
        L{collect_garbage} falls back to the replica's grace-only collector.
    @param ready_provider: False until the node has joined the cluster.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        node_id: str,
        replica: ReplicaStore,
        pool: PeerRequester,
        ring_provider: Callable[[], Ring],
        address_provider: Callable[[str], str | None],
        is_alive: Callable[[str], bool],
        *,
        n: int = 3,
        interval: float | None = 60.0,
        rate: float | None = 100.0,
        repair_rate: float | None = 2000.0,
        depth: int = DEFAULT_DEPTH,
        jitter: float = 0.25,
        rng: random.Random | None = None,
        scan_chunk: int = 1000,
        keys_per_request: int = 1000,
        request_timeout: float = 5.0,
        scan_timeout: float = 120.0,
        max_serving: int = 2,
        max_gc_pending: int = 100_000,
        remove: Callable[[bytes], None] | None = None,
        ready_provider: Callable[[], bool] = lambda: True,
    ) -> None:
        if interval is not None and not interval > 0:
            raise ValueError("interval must be positive (or None: no background exchanges)")
        if not 1 <= depth <= MAX_DEPTH:
            raise ValueError(f"depth must be 1..{MAX_DEPTH}")
        if not 0 <= jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        if scan_chunk < 1 or keys_per_request < 1 or max_serving < 1:
            raise ValueError("scan_chunk, keys_per_request and max_serving must be >= 1")
        self._reactor = reactor
        self.node_id = node_id
        self._replica = replica
        self._pool = pool
        self._ring = ring_provider
        self._address = address_provider
        self._alive = is_alive
        self.n = n
        self.interval = interval
        self.depth = depth
        self.jitter = jitter
        self._rng = rng if rng is not None else random.Random()
        self.scan_chunk = scan_chunk
        self.keys_per_request = min(keys_per_request, MAX_KEYS_PER_ANSWER)
        self.request_timeout = request_timeout
        self.scan_timeout = scan_timeout
        self.max_serving = max_serving
        self.max_gc_pending = max_gc_pending
        self._remove = remove
        self._ready = ready_provider
        self.background = RateLimiter(reactor, rate, _batch_for(rate))
        self.repairing = RateLimiter(reactor, repair_rate, _batch_for(repair_rate))
        self.stats = AntiEntropyStats()
        self.running = False
        self._call: IDelayedCall | None = None
        #: Held by the running exchange: exchanges run one at a time.
        self._lock = DeferredLock()
        self._serving = 0
        self._last_peer: str | None = None
        self._full_repair: Deferred[RepairSummary] | None = None
        self._repair_waiters: list[Deferred[RepairSummary]] = []
        self._owned_cache: tuple[Ring | None, dict[str, list[TokenRange]]] = (None, {})
        #: Tombstones old enough to collect -> (their digest, peers that confirmed holding it).
        self._acks: dict[bytes, tuple[bytes, set[str]]] = {}

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Serve peers; start background exchanges, the first after a jittered interval."""
        self.running = True
        self._schedule()

    def stop(self) -> None:
        """Stop starting exchanges; one in flight stops at its next step."""
        self.running = False
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _schedule(self) -> None:
        if not self.running or self.interval is None:
            return
        if self._call is not None and self._call.active():
            return
        delay = self.interval * (1 + self.jitter * (2 * self._rng.random() - 1))
        self._call = self._reactor.callLater(delay, self._tick)

    def _tick(self) -> None:
        self._call = None
        if self._lock.locked or not self._ready():
            self._schedule()
            return
        unit = self._next_unit()
        if unit is None:
            self._schedule()
            return
        peer, ranges = unit
        self._last_peer = peer
        self._run_exchange(peer, ranges, RepairSummary()).addBoth(lambda _: self._schedule())

    def _next_unit(self) -> tuple[str, list[TokenRange]] | None:
        """The next peer after the last one compared (round robin) that is alive."""
        units = [(peer, ranges) for peer, ranges in self.units() if self._alive(peer)]
        if not units:
            return None
        for peer, ranges in units:
            if self._last_peer is None or peer > self._last_peer:
                return peer, ranges
        return units[0]

    # -- what to compare -------------------------------------------------------------------

    def _owned(self, ring: Ring, node: str) -> list[TokenRange]:
        cached_ring, owned = self._owned_cache
        if cached_ring is not ring:
            owned = {}
            self._owned_cache = (ring, owned)
        if node not in owned:
            owned[node] = ring.owned_ranges(node, self.n)
        return owned[node]

    def units(self) -> list[tuple[str, list[TokenRange]]]:
        """Each peer sharing ranges with this node, with those ranges, by peer id."""
        ring = self._ring()
        if self.node_id not in ring:
            return []
        mine = self._owned(ring, self.node_id)
        found = []
        for peer in ring.nodes:
            if peer == self.node_id:
                continue
            shared = intersect_ranges(mine, self._owned(ring, peer))
            if shared:
                found.append((peer, shared))
        return found

    def _replicates(self, ranges: list[TokenRange]) -> bool:
        ring = self._ring()
        if self.node_id not in ring:
            return False
        inside = intersect_ranges(ranges, self._owned(ring, self.node_id))
        return ranges_width(inside) == ranges_width(ranges)

    # -- exchanges -------------------------------------------------------------------------

    def exchange(self, peer: str) -> Deferred[RepairSummary]:
        """Compare and repair every range shared with C{peer} now (tests, diagnostics).

        Fires with the summary (its C{failures} names the peer if it did not complete).
        """
        ranges = dict(self.units()).get(peer)
        summary = RepairSummary()
        if ranges is None:
            summary.failures[peer] = "shares no ranges with this node"
            return succeed(summary)
        return self._run_exchange(peer, ranges, summary).addCallback(lambda _: summary)

    def repair_all(self) -> Deferred[RepairSummary]:
        """A full pass now: every range this node replicates, with every live peer sharing
        it, one exchange after another at C{repair_rate}. Fires with the summary; a call while
        one runs waits for that one's summary."""
        waiter: Deferred[RepairSummary] = Deferred()
        self._repair_waiters.append(waiter)
        if self._full_repair is None:
            self._full_repair = self._repair_all()
            self._full_repair.addBoth(self._repair_done)
        return waiter

    def _repair_done(self, result: RepairSummary | Failure) -> None:
        self._full_repair = None
        waiters, self._repair_waiters = self._repair_waiters, []
        if isinstance(result, RepairSummary):
            self.stats.full_repairs += 1
        for waiter in waiters:
            if isinstance(result, RepairSummary):
                waiter.callback(result)
            else:
                waiter.errback(result)

    @inlineCallbacks
    def _repair_all(self) -> Generator[Deferred[Any], Any, RepairSummary]:
        summary = RepairSummary()
        for peer, ranges in self.units():
            if not self._alive(peer):
                summary.failures[peer] = "down"
                continue
            yield self._run_exchange(peer, ranges, summary)
        return summary

    def _limiter(self) -> RateLimiter:
        return self.repairing if self._full_repair is not None else self.background

    def _run_exchange(
        self, peer: str, ranges: list[TokenRange], summary: RepairSummary
    ) -> Deferred[None]:
        """Run one exchange once the one running (if any) is done; never fails: a failure is
        counted and put in the summary. A running exchange speeds up to C{repair_rate} as
        soon as a full repair waits for it (L{_limiter})."""
        return self._lock.run(self._exchange_now, peer, ranges, summary)

    def _exchange_now(
        self, peer: str, ranges: list[TokenRange], summary: RepairSummary
    ) -> Deferred[None]:
        self.stats.exchanges += 1
        summary.peers += 1
        summary.ranges_compared += len(ranges)
        tally = _Tally(self.stats, summary)

        def failed(failure: Failure) -> None:
            self.stats.exchange_failures += 1
            error = failure.value
            reason = str(error) if isinstance(error, _ExchangeFailed | PeerError) else repr(error)
            summary.failures[peer] = reason
            if not isinstance(error, _ExchangeFailed | PeerError):
                _log.failure("Anti-entropy exchange with {peer} failed", failure, peer=peer)
            else:
                _log.info("Anti-entropy exchange with {peer} failed: {reason}", peer=peer,
                          reason=reason)

        return self._exchange(peer, ranges, tally).addErrback(failed)

    def _send(self, address: str, frame: Frame, tally: _Tally,
              timeout: float | None = None) -> Deferred[Frame]:
        tally.add("bytes_sent", _frame_size(frame))
        return self._pool.request(
            address, frame, self.request_timeout if timeout is None else timeout)

    def _check_running(self) -> None:
        if not self.running:
            raise _ExchangeFailed("anti-entropy stopped")

    @inlineCallbacks
    def _exchange(
        self, peer: str, ranges: list[TokenRange], tally: _Tally
    ) -> Generator[Deferred[Any], Any, None]:
        address = self._address(peer)
        if address is None:
            raise _ExchangeFailed("address unknown")
        span = ranges[0] if len(ranges) == 1 else FULL_RING
        rangeset = RangeSet(ranges)
        head = {"start": str(span.start), "end": str(span.end), "depth": str(self.depth)}
        ranges_blob = encode_ranges(ranges)
        request = self._send(address, Frame("AE_TREE", 0, head, ranges_blob), tally,
                             self.scan_timeout)
        eligible: dict[bytes, bytes] = {}
        try:
            mine = yield self._build(span, rangeset, self.depth, eligible)
        except BaseException:
            request.addErrback(lambda _: None)
            raise
        answer = yield request
        self._check_running()
        theirs = _tree_answer(answer, "AE_TREE")
        if theirs.span != mine.span or theirs.depth != mine.depth:
            raise _ExchangeFailed("peer answered a tree over another span or depth")
        tally.add("trees_compared")
        leaves = diff(mine, theirs)
        complete = True
        if leaves:
            tally.add("ranges_differing", len(leaves))
            payload = ranges_blob + encode_bitmap(leaves, mine.leaves)
            complete = yield self._repair_leaves(
                address, head, payload, rangeset, mine, frozenset(leaves), tally)
        if complete:
            self._record_acks(peer, eligible)
        else:
            raise _ExchangeFailed("some keys could not be repaired")

    @inlineCallbacks
    def _repair_leaves(
        self, address: str, head: dict[str, str], payload: bytes, rangeset: RangeSet,
        tree: MerkleTree, leaves: frozenset[int], tally: _Tally,
    ) -> Generator[Deferred[Any], Any, bool]:
        """Page through the peer's keys of C{leaves}; push, pull and merge what differs."""
        after: bytes | None = None
        complete = True
        while True:
            fields = dict(head, limit=str(self.keys_per_request))
            if after is not None:
                fields["after"] = quote(after)
            answer = yield self._send(address, Frame("AE_KEYS", 0, fields, payload), tally,
                                      self.scan_timeout)
            self._check_running()
            if answer.verb != "VAL":
                raise _ExchangeFailed(f"peer refused AE_KEYS: {_reason(answer)}")
            try:
                theirs = decode_entries(answer.payload)
                upto = unquote(answer.fields["next"]) if "next" in answer.fields else None
            except (CorruptTreeError, PeerProtocolError) as error:
                raise _ExchangeFailed(f"peer sent bad key entries: {error}") from None
            actions: list[tuple[bytes, bool]] = []  # (key, pull first?)
            for chunk in self._chunks(after, upto):
                now = self._replica.now_ms()
                for key, record in chunk:
                    token = key_token(key)
                    if token not in rangeset or tree.leaf_of(token) not in leaves:
                        continue
                    their = theirs.pop(key, None)
                    if their == record_digest(record):
                        continue
                    if their is None and self._forgettable(record, now):
                        continue  # the peer collected it, or never had the key: leave it so
                    actions.append((key, their is not None))
                    if len(actions) >= self._limiter().burst:
                        ok = yield self._act(address, actions, tally)
                        complete = complete and ok
                        actions = []
                yield self._pause()
            actions.extend((key, True) for key in theirs)  # they hold keys we lack
            while actions:
                batch, actions = (actions[:self._limiter().burst],
                                  actions[self._limiter().burst:])
                ok = yield self._act(address, batch, tally)
                complete = complete and ok
            if upto is None:
                return complete
            after = upto

    @inlineCallbacks
    def _act(
        self, address: str, actions: list[tuple[bytes, bool]], tally: _Tally
    ) -> Generator[Deferred[Any], Any, bool]:
        """Repair a batch of keys in parallel once the rate limit allows; True if all did."""
        yield self._limiter().acquire(len(actions))
        self._check_running()
        requests = [
            self._pull(address, key, tally) if pull else self._push(address, key, tally)
            for key, pull in actions
        ]
        results = yield DeferredList(requests, consumeErrors=True)
        return all(ok and value for ok, value in results)

    def _push(self, address: str, key: bytes, tally: _Tally,
              record: Record | None = None) -> Deferred[bool]:
        """Send our record for C{key} (PUT, as read repair does); True once acknowledged."""
        if record is None:
            try:
                record = self._replica.read(key)
            except (StorageError, CorruptRecordError) as error:
                _log.warn("Anti-entropy cannot read {key!r}: {error}", key=key, error=str(error))
                return succeed(False)
        if record is None or not record.versions:
            return succeed(True)  # collected meanwhile: nothing to send
        frame = Frame("PUT", 0, {"key": quote(key)}, encode_record(record))

        def answered(answer: Frame) -> bool:
            if answer.verb != "ACK":
                return False
            tally.add("keys_pushed")
            return True

        return self._send(address, frame, tally).addCallbacks(answered, _false)

    def _pull(self, address: str, key: bytes, tally: _Tally) -> Deferred[bool]:
        """Fetch the peer's record for C{key}, merge it here, and push back the merge if the
        peer lacks part of it; True once both sides hold the merge."""

        def answered(answer: Frame) -> Deferred[bool] | bool:
            if answer.verb != "VAL":
                return False
            if not answer.payload:
                return self._push(address, key, tally)
            theirs = decode_record(answer.payload)
            if not theirs.versions:
                return self._push(address, key, tally)
            if self._replica.read(key) is None and self._forgettable(theirs,
                                                                     self._replica.now_ms()):
                return True  # we collected it, or never had it: absent already means deleted
            wait = self._replica.apply(key, theirs.versions)
            tally.add("keys_pulled")
            merged = self._replica.read(key)
            if merged is not None and record_digest(merged) != record_digest(theirs):
                pushed = self._push(address, key, tally, merged)
                return pushed if wait is None else wait.addCallback(lambda _: pushed)
            return True if wait is None else wait.addCallback(lambda _: True)

        frame = Frame("GET", 0, {"key": quote(key)})
        result = self._send(address, frame, tally).addCallback(answered).addErrback(_false)
        return cast("Deferred[bool]", result)

    def _forgettable(self, record: Record, now: int) -> bool:
        """Whether C{record} is dead past the grace period: a replica lacking the key is then
        as good as one holding it, so it is neither pushed to nor pulled by one that lacks it.

        Otherwise the first replica to collect a tombstone would get it back from one that
        has not collected it yet, and collection would never settle.
        """
        return collectable(record, now, self._replica.tombstone_grace_ms)

    # -- scanning --------------------------------------------------------------------------

    def _pause(self) -> Deferred[None]:
        """Let the reactor serve other work between scan chunks."""
        return deferLater(self._reactor, 0, lambda: None)

    def _chunks(self, after: bytes | None, upto: bytes | None
                ) -> Iterator[list[tuple[bytes, Record]]]:
        """Keys in ``(after, upto]`` (None: unbounded), C{scan_chunk} at a time, each chunk a
        fresh iteration from a cursor: no iterator is held across reactor turns."""
        cursor = None if after is None else after + b"\x00"
        stop = None if upto is None else upto + b"\x00"
        while True:
            chunk = list(islice(self._replica.iterate(cursor, stop), self.scan_chunk))
            if chunk:
                yield chunk
            if len(chunk) < self.scan_chunk:
                return
            cursor = chunk[-1][0] + b"\x00"

    @inlineCallbacks
    def _build(
        self, span: TokenRange, rangeset: RangeSet, depth: int,
        eligible: dict[bytes, bytes] | None = None,
    ) -> Generator[Deferred[Any], Any, MerkleTree]:
        """One scan of the replica: the tree of the keys in C{rangeset}; and, into
        C{eligible}, the records old and dead enough to collect (their digests)."""
        tree = MerkleTree(span, depth)
        grace = self._replica.tombstone_grace_ms
        for chunk in self._chunks(None, None):
            now = self._replica.now_ms()
            for key, record in chunk:
                token = key_token(key)
                if token not in rangeset:
                    continue
                digest = record_digest(record)
                tree.add(token, key, digest)
                if (eligible is not None and len(eligible) < self.max_gc_pending
                        and collectable(record, now, grace)):
                    eligible[key] = digest
            yield self._pause()
        return tree

    # -- serving peers ---------------------------------------------------------------------

    def handle(self, peer_node_id: str, frame: Frame) -> Frame | Deferred[Frame | None]:
        """The L{twistkv.node.peer.RequestHandler} for L{AE_VERBS}."""
        if not self.running:
            return _nack("shutting_down", f"{self.node_id} is not running anti-entropy")
        try:
            span, depth, ranges, leaves, after, limit = self._parse(frame)
        except (PeerProtocolError, CorruptTreeError, ValueError) as error:
            message = error.message if isinstance(error, PeerProtocolError) else str(error)
            return error_frame(0, "bad_request", message)
        if not self._replicates(ranges):
            return _nack("not_owner", f"{self.node_id} does not replicate all of those ranges")
        if self._serving >= self.max_serving:
            return _nack("overloaded", f"{self.node_id} is already serving {self._serving} scans")
        self._serving += 1
        self.stats.requests_served += 1
        rangeset = RangeSet(ranges)
        if frame.verb == "AE_TREE":
            work: Deferred[Frame] = self._build(span, rangeset, depth).addCallback(
                lambda tree: Frame("VAL", 0, {}, tree.encode()))
        else:
            assert leaves is not None
            work = self._collect_keys(span, depth, rangeset, leaves, after, limit)

        def answer(result: Frame | Failure) -> Frame:
            self._serving -= 1
            if isinstance(result, Failure):
                _log.failure("Serving {verb} failed", result, verb=frame.verb)
                return _nack("storage_error", result.getErrorMessage())
            self.stats.bytes_sent += _frame_size(result)
            return result

        return work.addBoth(answer)

    def _parse(
        self, frame: Frame
    ) -> tuple[TokenRange, int, list[TokenRange], frozenset[int] | None, bytes | None, int]:
        fields = frame.fields
        span = TokenRange(_token(fields.get("start"), "start"), _token(fields.get("end"), "end"))
        depth_text = fields.get("depth", "")
        if not depth_text.isdigit() or not 1 <= int(depth_text) <= MAX_DEPTH:
            raise PeerProtocolError("bad_request", f"depth must be 1..{MAX_DEPTH}")
        depth = int(depth_text)
        ranges, offset = decode_ranges(frame.payload)
        if not ranges:
            raise PeerProtocolError("bad_request", "no ranges given")
        if ranges_width(intersect_ranges(ranges, [span])) != ranges_width(ranges):
            raise PeerProtocolError("bad_request", "ranges reach outside the span")
        leaves: frozenset[int] | None = None
        after: bytes | None = None
        limit = self.keys_per_request
        if frame.verb == "AE_KEYS":
            leaves, offset = decode_bitmap(frame.payload, 1 << depth, offset)
            if "after" in fields:
                after = unquote(fields["after"])
            limit_text = fields.get("limit", str(limit))
            if not limit_text.isdigit() or int(limit_text) < 1:
                raise PeerProtocolError("bad_request", "limit must be a positive decimal")
            limit = min(int(limit_text), MAX_KEYS_PER_ANSWER)
        if offset != len(frame.payload):
            raise PeerProtocolError("bad_request", "trailing bytes after the request")
        return span, depth, ranges, leaves, after, limit

    @inlineCallbacks
    def _collect_keys(
        self, span: TokenRange, depth: int, rangeset: RangeSet, leaves: frozenset[int],
        after: bytes | None, limit: int,
    ) -> Generator[Deferred[Any], Any, Frame]:
        """AE_KEYS: ``(key, digest)`` of our keys after C{after} in C{leaves}, up to C{limit};
        ``next`` names the last key the answer covers when it stopped early."""
        tree = MerkleTree(span, depth)
        entries: list[tuple[bytes, bytes]] = []
        size = 0
        upto: bytes | None = None
        for chunk in self._chunks(after, None):
            for key, record in chunk:
                token = key_token(key)
                if token not in rangeset or tree.leaf_of(token) not in leaves:
                    continue
                entries.append((key, record_digest(record)))
                size += len(key) + HASH_BYTES + 4
                if len(entries) >= limit or size >= MAX_KEYS_ANSWER_BYTES:
                    upto = key
                    break
            if upto is not None:
                break
            yield self._pause()
        fields = {} if upto is None else {"next": quote(upto)}
        return Frame("VAL", 0, fields, encode_entries(entries))

    # -- tombstone collection --------------------------------------------------------------

    def _record_acks(self, peer: str, eligible: dict[bytes, bytes]) -> None:
        """After a complete exchange, C{peer} holds each of these records (or a descendant)."""
        acks = self._acks
        for key, digest in eligible.items():
            entry = acks.get(key)
            if entry is not None and entry[0] == digest:
                entry[1].add(peer)
            elif entry is not None or len(acks) < self.max_gc_pending:
                acks[key] = (digest, {peer})

    @property
    def gc_pending(self) -> int:
        """Collectable tombstones waiting for some replica to confirm it holds them."""
        return len(self._acks)

    def collect_garbage(self, limit: int = 1000) -> int:
        """One bounded step of tombstone collection; returns how many records it removed.

        A record is removed only when it is collectable at the grace period *and* every other
        replica of its key (under the current ring) confirmed, in a complete exchange this
        node started after the record became collectable, that it holds this very record or
        nothing for the key. So no
        replica can still hold a value the tombstone deleted, and no exchange, hint or read
        repair can bring it back (docs/consistency.md §5, §12). Without peers (a one-node
        ring, N = 1) or without a remover, the replica's grace-only collector runs.
        """
        ring = self._ring()
        if self._remove is None or len(ring) <= 1 or self.n <= 1:
            return self._replica.collect_garbage(limit)
        acks = self._acks
        now = self._replica.now_ms()
        grace = self._replica.tombstone_grace_ms
        removed = 0
        for _ in range(min(limit, len(acks))):
            key = next(iter(acks))
            digest, confirmed = acks.pop(key)
            others = set(ring.preference_list(key, self.n)) - {self.node_id}
            if self.node_id not in ring.preference_list(key, self.n):
                continue  # no longer ours: handing it over is the rebalancer's job
            if not others <= confirmed:
                acks[key] = (digest, confirmed)  # back of the queue
                continue
            try:
                record = self._replica.read(key)
            except (StorageError, CorruptRecordError):
                continue
            if (record is None or record_digest(record) != digest
                    or not collectable(record, now, grace)):
                continue
            try:
                self._remove(key)
            except StorageError as error:
                _log.warn("Cannot collect {key!r}: {error}", key=key, error=str(error))
                acks[key] = (digest, confirmed)
                break
            removed += 1
        return removed

    def stats_dict(self) -> dict[str, int]:
        """Counters under the names L{twistkv.node.cluster.ClusterRuntime.stats} uses."""
        stats = self.stats
        return {
            "ae_exchanges": stats.exchanges,
            "ae_exchange_failures": stats.exchange_failures,
            "ae_trees_compared": stats.trees_compared,
            "ae_ranges_differing": stats.ranges_differing,
            "ae_keys_pulled": stats.keys_pulled,
            "ae_keys_pushed": stats.keys_pushed,
            "ae_bytes_sent": stats.bytes_sent,
            "ae_requests_served": stats.requests_served,
            "ae_full_repairs": stats.full_repairs,
            "ae_gc_pending": self.gc_pending,
        }


# -- helpers ---------------------------------------------------------------------------------


def _batch_for(rate: float | None) -> int:
    """Keys repaired per batch (and the bucket's burst): at most 64, at most a second's worth."""
    return 64 if rate is None else max(1, min(64, int(rate)))


def _frame_size(frame: Frame) -> int:
    return len(encode_frame(frame))


def _false(failure: Failure) -> bool:
    if not isinstance(failure.value, PeerError | CorruptRecordError | StorageError):
        _log.failure("Anti-entropy repair of a key failed", failure)
    return False


def _reason(answer: Frame) -> str:
    return answer.fields.get("reason", answer.verb.lower())


def _tree_answer(answer: Frame, verb: str) -> MerkleTree:
    if answer.verb != "VAL":
        raise _ExchangeFailed(f"peer refused {verb}: {_reason(answer)}")
    try:
        return MerkleTree.decode(answer.payload)
    except CorruptTreeError as error:
        raise _ExchangeFailed(f"peer sent a bad tree: {error}") from None
