"""Rebalancing on the reactor: join, leave and removal of a dead node, with range streaming,
pending ranges and the cleanup of ranges a node no longer replicates.

The decisions are L{twistkv.core.transfers}'s (the ring and movements derived from gossiped
ring statuses, which ranges move and from which source); this module runs them:

 1. **announce**: the node that drives the movement gossips it (its own ring status JOINING or
    LEAVING, or C{removing=<node>} in its metadata); from then on every coordinator that has
    heard it writes to the pending replicas too (L{twistkv.node.coordinator.Coordinator});
 2. **barrier**: the driver asks every live member (C{RB_STATUS}) until each reports the same
    ring and this movement, so no coordinator can still write to the old replicas only once
    streaming starts. A movement that sees another one ordered before it (a concurrent join)
    retracts, waits until nothing moves, and starts again;
 3. **stream**: one stream per (source, target) pair covers all its ranges in one scan of the
    source's replica, a chunk at a time (C{RB_FETCH}, C{RB_PUT}): bounded by keys and bytes
    per chunk, paced by a token bucket on bytes, and resumable from the last key acknowledged
    after a dropped connection. The scan is a live iteration (DESIGN §2): records merge on
    arrival and concurrent writes reach the target as pending writes, so nothing is lost;
 4. **finish**: the joiner announces NORMAL, the leaver announces LEFT and stops, the remover
    gossips the dead node LEFT; every node switches rings;
 5. **cleanup**: C{drop_delay} seconds after its ring last changed, with no movement under
    way, each node deletes the records it no longer replicates, and hints kept for nodes that
    left.

Any failure of a chunk is retried from the same cursor with backoff. A stream whose source is
declared dead is re-planned onto the surviving replicas of its ranges.

Progress is reported to observers (L{Rebalancer.observe}; the node's
L{twistkv.node.events.ClusterWatch} turns the reports into C{rebalance_*} events for the
dashboard): per stream, C{start} once it runs, C{progress} after its first chunk (which tells
the total), then after a chunk at most every C{progress_interval} seconds (and at once when it
starts or stops retrying), then C{done}, or C{failed} when its movement retracts or stops or
its source is lost (its ranges re-planned). L{stream_report} is the data of every report.

test-case-name: tests.node.test_rebalance
"""

from __future__ import annotations

import bisect
import json
import random
import struct
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import (
    Deferred,
    DeferredSemaphore,
    FirstError,
    fail,
    gatherResults,
    inlineCallbacks,
    succeed,
)
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from twistkv.core.membership import MemberState
from twistkv.core.merkle import (
    CorruptTreeError,
    RangeSet,
    decode_ranges,
    encode_ranges,
    intersect_ranges,
)
from twistkv.core.peerwire import Frame, PeerProtocolError, error_frame, quote, unquote
from twistkv.core.record import CorruptRecordError, decode_record, encode_record
from twistkv.core.replication import collectable
from twistkv.core.ring import TOKEN_SPACE, Ring, TokenRange, key_token
from twistkv.core.transfers import (
    Move,
    Movement,
    RingStatus,
    Stream,
    movement_target,
    plan_moves,
    plan_streams,
)
from twistkv.node.antientropy import RateLimiter
from twistkv.node.peer import PeerError
from twistkv.storage.errors import StorageError

if TYPE_CHECKING:
    from twistkv.node.cluster import ClusterRuntime

__all__ = [
    "REBALANCE_VERBS",
    "RebalanceError",
    "RebalanceStats",
    "Rebalancer",
    "StreamProgress",
    "decode_entries",
    "encode_entries",
    "stream_report",
]

_log = Logger()

#: The peer verbs L{Rebalancer.handle} serves.
REBALANCE_VERBS = ("RB_STATUS", "RB_FETCH", "RB_PUT")

#: Most records, and about the most bytes, one RB_FETCH answer carries whatever is asked.
MAX_CHUNK_KEYS = 10_000
MAX_CHUNK_BYTES = 16 * 1024 * 1024
#: Most keys one RB_FETCH examines (scanning is synchronous: this bounds a reactor turn).
MAX_SCAN = 50_000

_U32 = struct.Struct(">I")
_MAX_TOKEN = TOKEN_SPACE - 1
#: Seconds between barrier rounds and between checks while waiting for quiet.
_POLL = 0.5
#: Seconds a leaving node keeps answering after announcing LEFT, so the news spreads.
LEAVE_LINGER = 2.0


class RebalanceError(Exception):
    """A JOIN, LEAVE or REMOVE that cannot start; the message is for the client."""


def _already_logged(failure: Failure) -> None:
    """Consume the failure of a movement nobody waits for (a join started by this node
    itself): L{Rebalancer._run} has logged it, and the status shows it."""


class _Aborted(Exception):
    """The movement must retract: the ring changed, or a movement ordered first appeared."""


_CHUNK_ERRORS = (PeerError, StorageError, CorruptRecordError, ValueError)


# -- wire helpers ----------------------------------------------------------------------------


def encode_entries(entries: list[tuple[bytes, bytes]]) -> bytes:
    """``count(u32) (key_len(u32) key record_len(u32) record)*``: RB_FETCH / RB_PUT payloads;
    records are C{encode_record} bytes."""
    parts = [_U32.pack(len(entries))]
    for key, record in entries:
        parts += [_U32.pack(len(key)), key, _U32.pack(len(record)), record]
    return b"".join(parts)


def decode_entries(data: bytes, offset: int = 0) -> list[tuple[bytes, bytes]]:
    """Parse L{encode_entries} from C{offset} to the end.

    @raise ValueError: malformed.
    """
    try:
        (count,) = _U32.unpack_from(data, offset)
        offset += _U32.size
        entries: list[tuple[bytes, bytes]] = []
        for _ in range(count):
            (key_len,) = _U32.unpack_from(data, offset)
            offset += _U32.size
            key = data[offset:offset + key_len]
            offset += key_len
            (record_len,) = _U32.unpack_from(data, offset)
            offset += _U32.size
            record = data[offset:offset + record_len]
            offset += record_len
            if len(key) != key_len or len(record) != record_len:
                raise ValueError("entry truncated")
            entries.append((key, record))
    except struct.error:
        raise ValueError("entries truncated") from None
    if offset != len(data):
        raise ValueError("trailing bytes after the entries")
    return entries


def _nack(reason: str, message: str) -> Frame:
    return Frame("NACK", 0, {"reason": reason, "message": quote(message)})


def _positive(fields: dict[str, str] | Any, name: str, default: int, cap: int) -> int:
    text = fields.get(name)
    if text is None:
        return default
    if not text.isdigit() or int(text) < 1:
        raise PeerProtocolError("bad_request", f"{name} must be a positive decimal")
    return min(int(text), cap)


class _RangeIndex:
    """Which of a stream's ranges a token falls in (for per-range progress)."""

    def __init__(self, ranges: list[TokenRange]) -> None:
        pieces: list[tuple[int, int, int]] = []
        for index, (start, end) in enumerate(ranges):
            if start == end:
                pieces.append((-1, _MAX_TOKEN, index))
            elif start < end:
                pieces.append((start, end, index))
            else:
                pieces += [(start, _MAX_TOKEN, index), (-1, end, index)]
        pieces.sort(key=lambda piece: piece[1])
        self._his = [hi for _, hi, _ in pieces]
        self._pieces = pieces

    def find(self, token: int) -> int | None:
        at = bisect.bisect_left(self._his, token)
        if at < len(self._pieces) and self._pieces[at][0] < token:
            return self._pieces[at][2]
        return None


# -- progress --------------------------------------------------------------------------------


@dataclass
class RebalanceStats:
    """Counters for metrics; they only grow."""

    operations_completed: int = 0
    #: Movements retracted (conflict, ring change) and restarted later.
    operations_retracted: int = 0
    streams_started: int = 0
    streams_completed: int = 0
    #: Streams whose source went down and whose ranges were re-planned.
    streams_rerouted: int = 0
    chunks: int = 0
    #: Chunks that failed (connection dropped, timeout, refusal) and were retried.
    chunk_retries: int = 0
    #: Records (and their bytes) moved by streams this node drove.
    keys_streamed: int = 0
    bytes_streamed: int = 0
    #: Records merged here as a stream's target (RB_PUT or a local fetch).
    keys_received: int = 0
    #: Records sent in answer to peers' RB_FETCH.
    keys_served: int = 0
    #: Records deleted by cleanup (no longer replicated here), and their bytes.
    keys_dropped: int = 0
    bytes_dropped: int = 0
    #: Hints deleted because their owner left the ring.
    hints_dropped: int = 0
    cleanup_passes: int = 0


@dataclass
class RangeProgress:
    """Records and bytes moved in one token range of a stream."""

    token_range: TokenRange
    keys: int = 0
    size: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"start": str(self.token_range.start), "end": str(self.token_range.end),
                "keys": self.keys, "bytes": self.size}


@dataclass(eq=False)
class StreamProgress:
    """One stream's state: C{pending}, C{running}, C{retrying}, C{done} or C{rerouted}."""

    source: str
    target: str
    ranges: list[RangeProgress]
    state: str = "pending"
    keys: int = 0
    #: Bytes moved (keys plus encoded records).
    size: int = 0
    chunks: int = 0
    retries: int = 0
    #: Keys the source examined so far, and how many records it holds (progress estimate).
    scanned: int = 0
    source_records: int = 0
    #: The last key covered: the stream resumes after it.
    cursor: bytes | None = None
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    #: Names the stream in progress reports and events (unique per node and operation).
    id: str = ""
    #: The movement this stream serves (for reports), and when its last report went out
    #: (None: not reported yet; C{reported} once a final report went out).
    movement: Movement | None = field(default=None, repr=False)
    reported_at: float | None = field(default=None, repr=False)
    reported: bool = field(default=False, repr=False)

    @property
    def token_ranges(self) -> list[TokenRange]:
        return [r.token_range for r in self.ranges]

    @property
    def progress(self) -> float:
        """0..1: done streams 1, else the share of the source's records scanned so far."""
        if self.state == "done":
            return 1.0
        if not self.source_records:
            return 0.0
        return min(0.99, self.scanned / self.source_records)

    def as_dict(self, detail: bool = True) -> dict[str, Any]:
        result: dict[str, Any] = {
            "id": self.id, "source": self.source, "target": self.target, "state": self.state,
            "keys": self.keys, "bytes": self.size, "chunks": self.chunks,
            "retries": self.retries, "progress": round(self.progress, 4),
            "ranges": len(self.ranges), "error": self.error,
            "started_at": self.started_at, "finished_at": self.finished_at,
        }
        if detail:
            result["range_progress"] = [r.as_dict() for r in self.ranges]
        return result


@dataclass(eq=False)
class Operation:
    """The movement this node drives, and its streams."""

    movement: Movement
    #: A bootstrap fill: the node is NORMAL already (the ring had fewer than N nodes); its
    #: streams only top it up, with no barrier and nothing to retract.
    fill: bool = False
    phase: str = "queued"
    started_at: float = 0.0
    finished_at: float | None = None
    error: str | None = None
    streams: list[StreamProgress] = field(default_factory=list)
    #: Ranges that had no live source when planned (waiting for one to come back).
    stuck: int = 0
    attempts: int = 0
    ring: frozenset[str] = frozenset()
    done: Deferred[None] = field(default_factory=Deferred)

    def as_dict(self, detail: bool = True) -> dict[str, Any]:
        streams = self.streams
        return {
            "kind": self.movement.kind, "node": self.movement.node,
            "driver": self.movement.driver, "fill": self.fill, "phase": self.phase,
            "started_at": self.started_at, "finished_at": self.finished_at,
            "error": self.error, "attempts": self.attempts, "stuck_ranges": self.stuck,
            "keys": sum(s.keys for s in streams), "bytes": sum(s.size for s in streams),
            "streams_total": sum(1 for s in streams if s.state != "rerouted"),
            "streams_done": sum(1 for s in streams if s.state == "done"),
            "progress": round(_overall(streams), 4) if streams else (
                1.0 if self.phase == "done" else 0.0),
            "streams": [s.as_dict(detail) for s in streams],
        }


def _ring_share(ranges: list[TokenRange]) -> float:
    """The share of the token space C{ranges} cover (0..1)."""
    covered = 0
    for start, end in ranges:
        covered += TOKEN_SPACE if start == end else (end - start) % TOKEN_SPACE
    return min(1.0, covered / TOKEN_SPACE)


def stream_report(sp: StreamProgress, state: str, now: float) -> dict[str, Any]:
    """One progress report of a stream, JSON-ready (the C{data} of C{rebalance_*} events).

    C{state} is C{running}, C{retrying}, C{done} or C{failed}. C{scanned} and C{scan_total}
    are the records the source examined and holds: the stream ends once the source scanned
    everything, so C{percent} (None until the source first answered) is
    C{scanned / scan_total}, and 100 once done. Keys moved are not known in advance.
    """
    movement = sp.movement
    percent: float | None = None
    if state == "done":
        percent = 100.0
    elif sp.source_records:
        percent = round(sp.progress * 100, 1)
    return {
        "stream": sp.id,
        "node": movement.driver if movement is not None else "",
        "movement": movement.label if movement is not None else "",
        "move": movement.kind if movement is not None else "",
        "subject": movement.node if movement is not None else "",
        "source": sp.source,
        "target": sp.target,
        "ranges": len(sp.ranges),
        "share": round(_ring_share(sp.token_ranges), 4),
        "state": state,
        "keys": sp.keys,
        "bytes": sp.size,
        "chunks": sp.chunks,
        "retries": sp.retries,
        "scanned": sp.scanned,
        "scan_total": sp.source_records or None,
        "percent": percent,
        "error": sp.error,
        "started_at": sp.started_at,
        "at": now,
    }


def _overall(streams: list[StreamProgress]) -> float:
    live = [s for s in streams if s.state != "rerouted"]
    return sum(s.progress for s in live) / len(live) if live else 1.0


# -- the rebalancer --------------------------------------------------------------------------


class Rebalancer:
    """Runs this node's range movements, serves peers' streams, and cleans up; see the
    module docstring.

    @param rate: bytes per second streamed by movements this node drives (None: unlimited).
    @param drop_delay: seconds after a ring change before records no longer replicated here
        are deleted; covers coordinators that still route by the previous ring.
    """

    def __init__(
        self,
        runtime: ClusterRuntime,
        reactor: IReactorTime,
        *,
        rate: float | None = 8 * 1024 * 1024,
        chunk_keys: int = 500,
        chunk_bytes: int = 1024 * 1024,
        scan_limit: int = 5000,
        max_streams: int = 2,
        retry: float = 1.0,
        max_retry: float = 30.0,
        drop_delay: float = 60.0,
        cleanup_chunk: int = 1000,
        request_timeout: float = 5.0,
        status: RingStatus = RingStatus.NORMAL,
        rng: random.Random | None = None,
        progress_interval: float = 1.0,
    ) -> None:
        if chunk_keys < 1 or chunk_bytes < 1 or scan_limit < 1 or max_streams < 1:
            raise ValueError("chunk_keys, chunk_bytes, scan_limit, max_streams must be >= 1")
        if not retry > 0 or drop_delay < 0:
            raise ValueError("retry must be positive and drop_delay non-negative")
        self._runtime = runtime
        self._reactor = reactor
        self.node_id = runtime.node_id
        self.rate = rate
        self.chunk_keys = min(chunk_keys, MAX_CHUNK_KEYS)
        self.chunk_bytes = min(chunk_bytes, MAX_CHUNK_BYTES)
        self.scan_limit = min(scan_limit, MAX_SCAN)
        self.max_streams = max_streams
        self.retry = retry
        self.max_retry = max(max_retry, retry)
        self.drop_delay = drop_delay
        self.cleanup_chunk = cleanup_chunk
        self.request_timeout = request_timeout
        self._rng = rng if rng is not None else random.Random()
        self.limiter = RateLimiter(reactor, rate, max(1, min(self.chunk_bytes, int(rate or 1))))
        self.stats = RebalanceStats()
        #: This node's own ring status, and the dead node it is removing (if any).
        self.status = status
        self.removing: str | None = None
        #: Whether this node checked with a peer that it was not removed meanwhile.
        self.checked = False
        self.operation: Operation | None = None
        self.last_operation: Operation | None = None
        self.running = False
        self._loop = LoopingCall(self._tick)
        self._loop.clock = reactor
        self._checking = False
        self._join_waiters: list[Deferred[None]] = []
        self._cleanup_due: float | None = None
        self._cleanup_running = False
        #: Least seconds between two C{progress} reports of one stream.
        self.progress_interval = progress_interval
        self._observers: list[Callable[[str, dict[str, Any]], None]] = []
        self._streams_made = 0

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Check in with the cluster, then drive the state machine every half second."""
        self.running = True
        self._cleanup_due = self._reactor.seconds() + self.drop_delay
        self._loop.start(_POLL, now=True).addErrback(
            lambda f: _log.failure("rebalancing tick failed", f))

    def stop(self) -> None:
        """Stop ticking; a running movement stops at its next chunk (and is resumed from
        scratch by the next start, if the node's status says so)."""
        self.running = False
        if self._loop.running:
            self._loop.stop()

    @property
    def ready(self) -> bool:
        """Whether this node may coordinate: it checked in and is a ring member (NORMAL or
        LEAVING). As in Cassandra, a node serves clients only once it has joined: until then
        it holds none of its data, and it was not removed meanwhile."""
        return self.checked and self.status in (RingStatus.NORMAL, RingStatus.LEAVING)

    def ring_changed(self) -> None:
        """The runtime's ring changed: clean up once it has been stable for C{drop_delay}."""
        self._cleanup_due = self._reactor.seconds() + self.drop_delay

    # -- progress reports --------------------------------------------------------------------

    def observe(self, observer: Callable[[str, dict[str, Any]], None]) -> Callable[[], None]:
        """Call C{observer(phase, report)} for every stream report (see the module docstring;
        C{phase} is C{start}, C{progress}, C{done} or C{failed}, C{report} a
        L{stream_report}). Returns an idempotent unsubscribe."""
        self._observers.append(observer)

        def unsubscribe() -> None:
            if observer in self._observers:
                self._observers.remove(observer)

        return unsubscribe

    def _report(self, sp: StreamProgress, phase: str, *, force: bool = False) -> None:
        """Tell the observers about C{sp}; C{progress} at most every C{progress_interval}."""
        if sp.reported:
            return
        now = self._reactor.seconds()
        if phase == "progress" and not force and sp.reported_at is not None and (
                now - sp.reported_at < self.progress_interval):
            return
        if phase in ("done", "failed"):
            sp.reported = True
        sp.reported_at = now
        state = {"start": sp.state, "progress": sp.state}.get(phase, phase)
        if not self._observers:
            return
        report = stream_report(sp, state, now)
        for observer in list(self._observers):
            try:
                observer(phase, report)
            except Exception:
                _log.failure("rebalance observer {observer!r} failed", observer=observer)

    # -- commands --------------------------------------------------------------------------

    def leave(self) -> Deferred[None]:
        """Stream every range this node replicates to its new owners, then announce LEFT and
        stop the runtime. Fires once the node has left.

        @raise RebalanceError: this node is not a NORMAL ring member, it is the last one, or
            it is already moving something.
        """
        view = self._runtime.view
        if self.status is not RingStatus.NORMAL or self.node_id not in view.ring:
            raise RebalanceError(f"this node is {self.status.value}, not a normal ring member")
        if len(view.ring) < 2:
            raise RebalanceError("the last node of the ring cannot leave")
        mine = Movement(self.node_id, "leave", self.node_id)
        self._busy_check(mine)
        return self._begin(Operation(mine))

    def remove(self, node_id: str) -> Deferred[None]:
        """Re-replicate the ranges of the dead ring member C{node_id} from the survivors onto
        their new owners, then declare it LEFT cluster-wide. Fires once done.

        @raise RebalanceError: the node is not in the ring, is this node, is not dead, or
            another movement is under way.
        """
        runtime = self._runtime
        view = runtime.view
        if node_id == self.node_id:
            raise RebalanceError("a node cannot remove itself: use LEAVE")
        member = runtime.membership.get(node_id)
        if node_id not in view.ring and (member is None or member.state is MemberState.LEFT):
            raise RebalanceError(f"{node_id} is not in the ring")
        if self.status is not RingStatus.NORMAL:
            raise RebalanceError(f"this node is {self.status.value}; run REMOVE on a normal node")
        if member is not None and member.state is not MemberState.DEAD:
            raise RebalanceError(
                f"{node_id} is {member.state.value}: only a dead node can be removed "
                "(stop it, wait until it is declared dead, or run LEAVE on it)")
        mine = Movement(node_id, "remove", self.node_id)
        if node_id not in view.ring:
            # A node that died waiting or joining holds no range anyone relies on: declaring
            # it LEFT ends its pending movement.
            runtime.declare_left(node_id)
            return succeed(None)
        self._busy_check(mine)
        return self._begin(Operation(mine))

    def join(self, seed_address: str) -> Deferred[None]:
        """Join the cluster of the node at C{seed_address}: this node must be alone and
        empty. Fires once it is a NORMAL ring member."""
        runtime = self._runtime
        others = [m for m in runtime.membership.members()
                  if m.node_id != self.node_id and m.state is not MemberState.LEFT]
        if others or len(runtime.ring) > 1:
            raise RebalanceError("this node is already part of a cluster")
        # The store itself, not the replica's counter: a node serving alone writes through
        # the local keyspace, which shares the layout but not the counter.
        if next(iter(runtime.replica.iterate()), None) is not None:
            raise RebalanceError(
                "this node holds data; a node joins empty (its ranges are streamed to it): "
                "wipe its data directory first")
        self._set_status(RingStatus.WAITING)
        self.checked = False
        runtime.join_through(seed_address)
        waiter: Deferred[None] = Deferred()
        self._join_waiters.append(waiter)
        return waiter

    def _busy_check(self, mine: Movement) -> None:
        if self.operation is not None and not self.operation.fill:
            raise RebalanceError(
                f"this node is already running {self.operation.movement.label}")
        others = self._runtime.view.others(mine)
        if others:
            labels = ", ".join(m.label for m in others)
            raise RebalanceError(f"another range movement is under way ({labels}); retry later")

    def _begin(self, operation: Operation) -> Deferred[None]:
        previous = self.operation
        if previous is not None:  # a fill: superseded
            previous.phase = "superseded"
        self.operation = operation
        operation.started_at = self._reactor.seconds()
        self._run(operation)
        return operation.done

    # -- the state machine -----------------------------------------------------------------

    def _tick(self) -> None:
        if not self.running:
            return
        runtime = self._runtime
        if not runtime.membership.joined:
            return
        if not self.checked:
            self._check_in()
            return
        if self.status is RingStatus.WAITING and self.operation is None:
            self._decide_join()
        self._maybe_cleanup()

    def _check_in(self) -> None:
        """Ask one live peer for its view: were we removed while away? Are we (wiped and
        restarted) still in its ring? Then coordinate."""
        if self._checking:
            return
        runtime = self._runtime
        peers = [m.node_id for m in runtime.membership.members()
                 if m.node_id != self.node_id and m.state is MemberState.ALIVE]
        if not peers:
            self.checked = True
            return
        self._checking = True

        @inlineCallbacks
        def ask() -> Generator[Deferred[Any], Any, None]:
            try:
                for peer in peers:
                    answer = yield self._status_of(peer)
                    if answer is not None:
                        self._checked_in(answer)
                        return
            finally:
                self._checking = False

        ask().addErrback(lambda f: _log.failure("check-in failed", f))

    def _checked_in(self, answer: dict[str, Any]) -> None:
        ring = set(answer.get("ring", ()))
        gone = set(answer.get("gone", ()))
        if self.node_id in gone and self.status is RingStatus.NORMAL:
            _log.error(
                "Node {node} was removed from the cluster while it was away: it refuses to "
                "serve. Wipe its data directory to add it again.", node=self.node_id)
            self._set_status(RingStatus.REMOVED)
        elif self.status is RingStatus.WAITING and self.node_id in ring:
            _log.info("Node {node} is still in the ring: it resumes as a normal member "
                      "(anti-entropy refills it)", node=self.node_id)
            self._set_status(RingStatus.NORMAL)
        self.checked = True

    def _decide_join(self) -> None:
        view = self._runtime.view
        ring = view.ring
        n = self._runtime.options.n
        if view.movements or any(node < self.node_id for node in view.waiting):
            return  # wait for quiet, and for the nodes ahead of us in line
        if len(ring) < n:
            # Bootstrap: with fewer than N members every member holds every key, so a quorum
            # of the bigger ring still meets a quorum of the old one. Go NORMAL now and
            # top up from the others in the background.
            old = ring
            self._set_status(RingStatus.NORMAL)
            self._notify_joined()
            if old:
                fill = Operation(Movement(self.node_id, "join", self.node_id), fill=True,
                                 ring=frozenset(old))
                self._begin(fill).addErrback(_already_logged)
            return
        self._begin(Operation(Movement(self.node_id, "join", self.node_id))).addErrback(
            _already_logged)

    def _notify_joined(self) -> None:
        waiters, self._join_waiters = self._join_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    # -- running a movement ----------------------------------------------------------------

    def _run(self, operation: Operation) -> None:
        def finished(result: None | Failure) -> None:
            if self.operation is operation:
                self.operation = None
            self.last_operation = operation
            operation.finished_at = self._reactor.seconds()
            if isinstance(result, Failure):
                operation.phase = "failed"
                operation.error = result.getErrorMessage()
                if result.check(_Aborted):
                    _log.info("Range movement {label} stopped: {why}",
                              label=operation.movement.label, why=operation.error)
                else:
                    _log.failure("Range movement {label} failed", result,
                                 label=operation.movement.label)
                if not operation.done.called:
                    operation.done.errback(result)
                return
            if not operation.done.called:
                operation.done.callback(None)

        runner = self._run_fill(operation) if operation.fill else self._run_movement(operation)
        runner.addBoth(finished)

    @inlineCallbacks
    def _run_fill(self, operation: Operation) -> Generator[Deferred[Any], Any, None]:
        runtime = self._runtime
        n = runtime.options.n
        old = Ring(operation.ring, runtime.options.vnodes_per_node)
        new = old.with_node(self.node_id)
        moves = [m for m in plan_moves(old, new, n) if m.target == self.node_id]
        operation.phase = "streaming"

        def check() -> None:
            if not self.running or self.operation is not operation:
                raise _Aborted("superseded")

        yield self._stream_moves(operation, moves, (), check=check, wait_stuck=False)
        operation.phase = "done"

    @inlineCallbacks
    def _run_movement(self, operation: Operation) -> Generator[Deferred[Any], Any, None]:
        movement = operation.movement
        runtime = self._runtime
        while True:
            if not self.running:
                raise _Aborted("the node stopped")
            operation.attempts += 1
            operation.phase = "waiting"
            while runtime.view.others(movement):
                yield self._sleep(_POLL)
                if not self.running:
                    raise _Aborted("the node stopped")
            self._announce(movement)
            operation.phase = "barrier"
            try:
                yield self._barrier(operation)
                operation.ring = runtime.view.ring
                operation.phase = "streaming"
                operation.streams = []
                old = Ring(operation.ring, runtime.options.vnodes_per_node)
                new = Ring(movement_target(operation.ring, [movement]),
                           runtime.options.vnodes_per_node)
                moves = plan_moves(old, new, runtime.options.n)
                exclude = (movement.node,) if movement.kind == "remove" else ()
                check = partial(self._check_moving, operation, operation.attempts)
                yield self._stream_moves(operation, moves, exclude, check=check)
                check()
            except _Aborted as why:
                _log.info("Range movement {label} retracts: {why}", label=movement.label,
                          why=str(why))
                self.stats.operations_retracted += 1
                operation.error = str(why)
                self._retract(movement)
                if not self.running:
                    raise
                yield self._sleep(self.retry * (1 + 2 * self._rng.random()))
                continue
            operation.phase = "finishing"
            yield self._finish(operation)
            operation.phase = "done"
            operation.error = None
            self.stats.operations_completed += 1
            return

    def _check_moving(self, operation: Operation, attempt: int) -> None:
        """Raise L{_Aborted} if the movement must retract (checked before every chunk), or if
        this is a stream of an attempt that already retracted."""
        if not self.running:
            raise _Aborted("the node stopped")
        if operation.attempts != attempt or self.operation is not operation:
            raise _Aborted("superseded by a later attempt")
        view = self._runtime.view
        if view.ring != operation.ring:
            raise _Aborted("the ring changed")
        conflicts = view.conflicts(operation.movement)
        if conflicts:
            raise _Aborted(f"{conflicts[0].label} goes first")

    def _announce(self, movement: Movement) -> None:
        if movement.kind == "join":
            self._set_status(RingStatus.JOINING)
        elif movement.kind == "leave":
            self._set_status(RingStatus.LEAVING)
        else:
            self.removing = movement.node
            self._set_status(self.status)

    def _retract(self, movement: Movement) -> None:
        if movement.kind == "join":
            self._set_status(RingStatus.WAITING)
        elif movement.kind == "leave":
            self._set_status(RingStatus.NORMAL)
        else:
            self.removing = None
            self._set_status(self.status)

    def _set_status(self, status: RingStatus) -> None:
        self.status = status
        self._runtime.announce_status(status, self.removing)

    @inlineCallbacks
    def _finish(self, operation: Operation) -> Generator[Deferred[Any], Any, None]:
        movement = operation.movement
        runtime = self._runtime
        if movement.kind == "join":
            self._set_status(RingStatus.NORMAL)
            self._notify_joined()
            _log.info("Node {node} joined the ring", node=self.node_id)
        elif movement.kind == "remove":
            runtime.declare_left(movement.node)
            self.removing = None
            self._set_status(self.status)
            _log.info("Node {node} removed from the ring", node=movement.node)
        else:
            self.status = RingStatus.LEFT
            runtime.persist_status(RingStatus.LEFT)
            runtime.announce_left()
            _log.info("Node {node} left the ring; stopping", node=self.node_id)
            yield self._sleep(LEAVE_LINGER)
            yield runtime.stop()

    @inlineCallbacks
    def _barrier(self, operation: Operation) -> Generator[Deferred[Any], Any, None]:
        """Wait until every live member reports this ring and this movement."""
        runtime = self._runtime
        label = operation.movement.label
        while True:
            self._check_quiet(operation)
            ring = sorted(runtime.view.ring)
            gone = runtime.view.gone
            peers = [m.node_id for m in runtime.membership.members()
                     if m.node_id != self.node_id and m.node_id not in gone
                     and m.state in (MemberState.ALIVE, MemberState.SUSPECT)]
            answers = yield gatherResults([self._status_of(peer) for peer in peers])
            self._check_quiet(operation)
            if sorted(runtime.view.ring) == ring and all(
                answer is not None and label in answer.get("movements", ())
                and sorted(answer.get("ring", ())) == ring
                for answer in answers
            ):
                return
            yield self._sleep(_POLL)

    def _check_quiet(self, operation: Operation) -> None:
        if not self.running:
            raise _Aborted("the node stopped")
        conflicts = self._runtime.view.conflicts(operation.movement)
        if conflicts:
            raise _Aborted(f"{conflicts[0].label} goes first")

    def _status_of(self, peer: str) -> Deferred[dict[str, Any] | None]:
        """A peer's RB_STATUS answer, or None if it did not give one."""
        address = self._runtime.address_of(peer)
        if address is None:
            return succeed(None)

        def answered(frame: Frame) -> dict[str, Any] | None:
            if frame.verb != "VAL":
                return None
            try:
                parsed = json.loads(frame.payload)
            except ValueError:
                return None
            return parsed if isinstance(parsed, dict) else None

        request = self._runtime.pool.request(address, Frame("RB_STATUS", 0), self.request_timeout)
        return request.addCallbacks(answered, lambda _: None)

    def _sleep(self, seconds: float) -> Deferred[None]:
        return deferLater(self._reactor, seconds, lambda: None)

    # -- streams ---------------------------------------------------------------------------

    @inlineCallbacks
    def _stream_moves(
        self, operation: Operation, moves: list[Move], exclude: tuple[str, ...],
        check: Callable[[], None], wait_stuck: bool = True,
    ) -> Generator[Deferred[Any], Any, None]:
        """Run streams for C{moves} until every range arrived; re-plan the ranges of streams
        whose source was lost, and (with C{wait_stuck}) wait for a source when a range has
        none alive."""
        runtime = self._runtime
        todo = moves
        excluded = set(exclude)
        while todo:
            streams, stuck = plan_streams(todo, runtime.is_alive, excluded)
            operation.stuck = len(stuck)
            progress = [self._progress(stream) for stream in streams]
            for sp in progress:
                sp.movement = operation.movement
            operation.streams.extend(progress)
            semaphore = DeferredSemaphore(self.max_streams)
            results = yield gatherResults(
                [semaphore.run(self._run_stream, sp, check) for sp in progress],
                consumeErrors=True,
            ).addErrback(_unwrap)
            lost = [sp for sp, ok in zip(progress, results, strict=True) if not ok]
            todo = [m for sp in lost for m in _restrict(todo, sp)] + stuck
            excluded |= {sp.source for sp in lost}
            for sp in lost:
                sp.state = "rerouted"
                self.stats.streams_rerouted += 1
            if stuck and not wait_stuck:
                operation.error = f"{len(stuck)} ranges had no live source"
                return
            if stuck and not lost:
                operation.error = f"{len(stuck)} ranges have no live source; waiting"
                yield self._sleep(self.retry * 2)
                check()
                excluded = set(exclude)  # a source may be back

    def _progress(self, stream: Stream) -> StreamProgress:
        self._streams_made += 1
        stream_id = f"{self.node_id}-{int(self._reactor.seconds() * 1000):x}-{self._streams_made}"
        return StreamProgress(stream.source, stream.target,
                              [RangeProgress(r) for r in stream.ranges], id=stream_id)

    def _run_stream(self, sp: StreamProgress, check: Callable[[], None]) -> Deferred[bool]:
        """L{_copy_stream}, reporting the stream C{failed} if it raises or lost its source."""

        def lost(done: bool) -> bool:
            if not done:
                sp.error = f"source {sp.source} lost; its ranges are re-planned"
                self._report(sp, "failed")
            return done

        def failed(failure: Failure) -> Failure:
            if sp.reported_at is not None:
                sp.error = failure.getErrorMessage()
                self._report(sp, "failed")
            return failure

        copying: Deferred[bool] = self._copy_stream(sp, check)
        return copying.addCallbacks(lost, failed)

    @inlineCallbacks
    def _copy_stream(
        self, sp: StreamProgress, check: Callable[[], None]
    ) -> Generator[Deferred[Any], Any, bool]:
        """Copy one stream, chunk by chunk; True when done, False when its source was lost
        (raises L{_Aborted} to retract)."""
        runtime = self._runtime
        self.stats.streams_started += 1
        sp.state = "running"
        sp.started_at = self._reactor.seconds()
        ranges = sp.token_ranges
        blob = encode_ranges(ranges)
        rangeset = RangeSet(ranges)
        index = _RangeIndex(ranges)
        delay = self.retry
        while True:
            check()
            if sp.reported_at is None:
                self._report(sp, "start")
            try:
                entries, upto, scanned, records = yield self._fetch(sp, blob, rangeset)
                size = sum(len(k) + len(r) for k, r in entries)
                if size:
                    yield self.limiter.acquire(size)
                    check()
                    yield self._deliver(sp, entries)
            except _CHUNK_ERRORS as error:
                sp.retries += 1
                self.stats.chunk_retries += 1
                sp.error = str(error)
                was_retrying = sp.state == "retrying"
                sp.state = "retrying"
                self._report(sp, "progress", force=not was_retrying)
                _log.info("Stream {source} -> {target} chunk failed, retrying in {delay}s: "
                          "{error}", source=sp.source, target=sp.target, delay=delay,
                          error=str(error))
                for node in (sp.source, sp.target):
                    member = runtime.membership.get(node)
                    if (node == sp.source and node != self.node_id and member is not None
                            and member.state in (MemberState.DEAD, MemberState.LEFT)):
                        return False
                yield self._sleep(delay)
                delay = min(delay * 2, self.max_retry)
                continue
            delay = self.retry
            resumed = sp.state == "retrying"
            sp.state = "running"
            sp.error = None
            sp.chunks += 1
            sp.scanned += scanned
            sp.source_records = max(records, sp.scanned)
            self.stats.chunks += 1
            for key, record in entries:
                where = index.find(key_token(key))
                size = len(key) + len(record)
                if where is not None:
                    sp.ranges[where].keys += 1
                    sp.ranges[where].size += size
                sp.keys += 1
                sp.size += size
            self.stats.keys_streamed += len(entries)
            self.stats.bytes_streamed += sum(len(k) + len(r) for k, r in entries)
            sp.cursor = upto
            if upto is None:
                sp.state = "done"
                sp.finished_at = self._reactor.seconds()
                self.stats.streams_completed += 1
                self._report(sp, "done")
                return True
            # The first chunk tells the total (the source's records): report it at once.
            self._report(sp, "progress", force=resumed or sp.chunks == 1)

    def _fetch(
        self, sp: StreamProgress, blob: bytes, rangeset: RangeSet
    ) -> Deferred[tuple[list[tuple[bytes, bytes]], bytes | None, int, int]]:
        if sp.source == self.node_id:
            try:
                return succeed(self._scan(rangeset, sp.cursor, self.chunk_keys,
                                          self.chunk_bytes, self.scan_limit))
            except (StorageError, CorruptRecordError) as error:
                return fail(error)
        address = self._runtime.address_of(sp.source)
        if address is None:
            return fail(ValueError(f"{sp.source}: address unknown"))
        fields = {"limit": str(self.chunk_keys), "bytes": str(self.chunk_bytes),
                  "scan": str(self.scan_limit)}
        if sp.cursor is not None:
            fields["after"] = quote(sp.cursor)
        frame = Frame("RB_FETCH", 0, fields, blob)

        def answered(answer: Frame) -> tuple[list[tuple[bytes, bytes]], bytes | None, int, int]:
            if answer.verb != "VAL":
                raise ValueError(f"{sp.source} refused RB_FETCH: "
                                 f"{answer.fields.get('reason', answer.verb)}")
            upto = unquote(answer.fields["next"]) if "next" in answer.fields else None
            scanned = int(answer.fields.get("scanned", "0"))
            records = int(answer.fields.get("records", "0"))
            return decode_entries(answer.payload), upto, scanned, records

        return self._runtime.pool.request(address, frame, self.request_timeout).addCallback(
            answered)

    def _deliver(self, sp: StreamProgress, entries: list[tuple[bytes, bytes]]
                 ) -> Deferred[None]:
        if sp.target == self.node_id:
            return self._apply(entries)
        address = self._runtime.address_of(sp.target)
        if address is None:
            return fail(ValueError(f"{sp.target}: address unknown"))
        frame = Frame("RB_PUT", 0, {}, encode_entries(entries))

        def answered(answer: Frame) -> None:
            if answer.verb != "ACK":
                raise ValueError(f"{sp.target} refused RB_PUT: "
                                 f"{answer.fields.get('reason', answer.verb)}")

        return self._runtime.pool.request(address, frame, self.request_timeout).addCallback(
            answered)

    # -- the source and target sides -------------------------------------------------------

    def _scan(
        self, rangeset: RangeSet, after: bytes | None, limit: int, max_bytes: int, scan: int
    ) -> tuple[list[tuple[bytes, bytes]], bytes | None, int, int]:
        """Up to C{limit} records (about C{max_bytes}) in C{rangeset} after C{after},
        examining at most C{scan} keys; returns them, the last key covered (None: the end),
        how many keys were examined, and how many records this replica holds."""
        replica = self._runtime.replica
        start = None if after is None else after + b"\x00"
        entries: list[tuple[bytes, bytes]] = []
        size = 0
        examined = 0
        last: bytes | None = None
        finished = True
        for key, record in replica.iterate(start):
            examined += 1
            last = key
            if key_token(key) in rangeset:
                encoded = encode_record(record)
                entries.append((key, encoded))
                size += len(key) + len(encoded)
            if len(entries) >= limit or size >= max_bytes or examined >= scan:
                finished = False
                break
        return entries, None if finished else last, examined, replica.stats.records

    def _apply(self, entries: list[tuple[bytes, bytes]]) -> Deferred[None]:
        """Merge streamed records into this replica; fires once durable."""
        replica = self._runtime.replica
        now = replica.now_ms()
        waits = []
        for key, raw in entries:
            record = decode_record(raw)
            if not record.versions:
                continue
            if collectable(record, now, replica.tombstone_grace_ms) and replica.read(key) is None:
                continue  # dead past the grace: absent already means deleted
            wait = replica.apply(key, record.versions)
            self.stats.keys_received += 1
            if wait is not None:
                waits.append(wait)
        if not waits:
            return succeed(None)
        return gatherResults(waits, consumeErrors=True).addCallbacks(
            lambda _: None, _unwrap)

    def handle(self, peer_node_id: str, frame: Frame) -> Frame | Deferred[Frame | None]:
        """The L{twistkv.node.peer.RequestHandler} for L{REBALANCE_VERBS}."""
        verb = frame.verb
        if verb == "RB_STATUS":
            detail = frame.fields.get("detail") == "1"
            return Frame("VAL", 0, {}, json.dumps(self.snapshot(detail)).encode())
        if not self._runtime.running:
            return _nack("shutting_down", f"{self.node_id} is shutting down")
        if verb == "RB_FETCH":
            try:
                ranges, offset = decode_ranges(frame.payload)
                if offset != len(frame.payload) or not ranges:
                    raise PeerProtocolError("bad_request", "RB_FETCH needs ranges and only them")
                after = unquote(frame.fields["after"]) if "after" in frame.fields else None
                limit = _positive(frame.fields, "limit", self.chunk_keys, MAX_CHUNK_KEYS)
                max_bytes = _positive(frame.fields, "bytes", self.chunk_bytes, MAX_CHUNK_BYTES)
                scan = _positive(frame.fields, "scan", self.scan_limit, MAX_SCAN)
            except (PeerProtocolError, CorruptTreeError) as error:
                message = error.message if isinstance(error, PeerProtocolError) else str(error)
                return error_frame(0, "bad_request", message)
            try:
                entries, upto, examined, records = self._scan(
                    RangeSet(ranges), after, limit, max_bytes, scan)
            except (StorageError, CorruptRecordError) as error:
                return _nack("storage_error", str(error))
            self.stats.keys_served += len(entries)
            fields = {"scanned": str(examined), "records": str(records)}
            if upto is not None:
                fields["next"] = quote(upto)
            return Frame("VAL", 0, fields, encode_entries(entries))
        if verb == "RB_PUT":
            try:
                entries = decode_entries(frame.payload)
                for _, raw in entries:
                    decode_record(raw)
            except (ValueError, CorruptRecordError) as error:
                return error_frame(0, "bad_request", f"bad entries: {error}")
            try:
                wait = self._apply(entries)
            except StorageError as error:
                return _nack("storage_error", str(error))
            answer: Deferred[Frame | None] = wait.addCallbacks(
                lambda _: Frame("ACK", 0),
                lambda f: _nack("storage_error", f.getErrorMessage()))
            return answer
        return error_frame(0, "unknown_verb", f"{verb} is not a rebalancing verb")

    # -- cleanup ---------------------------------------------------------------------------

    def _maybe_cleanup(self) -> None:
        runtime = self._runtime
        view = runtime.view
        if (self._cleanup_running or self._cleanup_due is None
                or self._reactor.seconds() < self._cleanup_due
                or self.status is not RingStatus.NORMAL or view.movements
                or self.node_id not in view.ring or self.operation is not None):
            return
        self._cleanup_due = None
        self._cleanup_running = True

        def done(result: object) -> None:
            self._cleanup_running = False
            if isinstance(result, Failure):
                if not result.check(_Aborted):
                    _log.failure("Cleanup failed", result)
                self._cleanup_due = self._reactor.seconds() + self.drop_delay

        self.cleanup().addBoth(done)

    @inlineCallbacks
    def cleanup(self) -> Generator[Deferred[Any], Any, int]:
        """One pass: delete every record this node does not replicate under the current ring,
        and every hint kept for a node that is no longer in it. Returns the records deleted.

        Stops (raising L{_Aborted}) if the ring changes or a movement starts meanwhile.
        """
        runtime = self._runtime
        ring = runtime.ring
        n = runtime.options.n
        replica = runtime.replica
        dropped = 0
        cursor: bytes | None = None
        while True:
            if runtime.ring is not ring or runtime.view.movements or not self.running:
                raise _Aborted("the ring changed")
            batch = []
            examined = 0
            last = None
            for key, record in replica.iterate(cursor):
                examined += 1
                last = key
                if self.node_id not in ring.preference_list(key, n):
                    batch.append((key, len(key) + len(encode_record(record))))
                if examined >= self.cleanup_chunk:
                    break
            if batch:
                runtime.drop_records([key for key, _ in batch])
                dropped += len(batch)
                self.stats.keys_dropped += len(batch)
                self.stats.bytes_dropped += sum(size for _, size in batch)
            if examined < self.cleanup_chunk or last is None:
                break
            cursor = last + b"\x00"
            yield self._sleep(0)
        self._drop_hints()
        self.stats.cleanup_passes += 1
        if dropped:
            _log.info("Cleanup deleted {count} records this node no longer replicates",
                      count=dropped)
        return dropped

    def _drop_hints(self) -> None:
        runtime = self._runtime
        view = runtime.view
        keep = view.ring | view.target
        hints = runtime.hints
        for target in hints.targets():
            if target in keep:
                continue
            for hint in hints.pending_for(target):
                hints.remove(hint)
                self.stats.hints_dropped += 1

    def keep_hint(self, target: str, key: bytes) -> bool:
        """Whether a hint for C{target} is still worth delivering: it replicates C{key}
        under the current or the target ring (always, while a movement is under way)."""
        runtime = self._runtime
        view = runtime.view
        if view.movements:
            return True
        return target in runtime.ring.preference_list(key, runtime.options.n)

    # -- views -----------------------------------------------------------------------------

    def snapshot(self, detail: bool = True) -> dict[str, Any]:
        """Plain JSON-able state for RB_STATUS, /cluster and the dashboard."""
        runtime = self._runtime
        view = runtime.view
        now = self._reactor.seconds()
        operation = self.operation
        return {
            "node": self.node_id,
            "status": self.status.value,
            "ready": self.ready,
            "removing": self.removing,
            "ring": sorted(view.ring),
            "target": sorted(view.target) if view.movements else None,
            "gone": sorted(view.gone),
            "movements": [m.label for m in view.movements],
            "movement_detail": [{"kind": m.kind, "node": m.node, "driver": m.driver}
                                for m in view.movements],
            "operation": operation.as_dict(detail) if operation is not None else None,
            "last_operation": (self.last_operation.as_dict(detail)
                               if self.last_operation is not None else None),
            "cleanup": {
                "running": self._cleanup_running,
                "due_in": (None if self._cleanup_due is None
                           else round(max(0.0, self._cleanup_due - now), 1)),
                "keys_dropped": self.stats.keys_dropped,
                "bytes_dropped": self.stats.bytes_dropped,
            },
            "settings": {"rate": self.rate, "chunk_keys": self.chunk_keys,
                         "chunk_bytes": self.chunk_bytes, "drop_delay": self.drop_delay},
        }

    def stats_dict(self) -> dict[str, int]:
        """Counters and gauges under the names L{ClusterRuntime.stats} uses."""
        stats = self.stats
        operation = self.operation
        streams = operation.streams if operation is not None else []
        return {
            "rebalance_operations_completed": stats.operations_completed,
            "rebalance_operations_retracted": stats.operations_retracted,
            "rebalance_streams_started": stats.streams_started,
            "rebalance_streams_completed": stats.streams_completed,
            "rebalance_streams_rerouted": stats.streams_rerouted,
            "rebalance_chunks": stats.chunks,
            "rebalance_chunk_retries": stats.chunk_retries,
            "rebalance_keys_streamed": stats.keys_streamed,
            "rebalance_bytes_streamed": stats.bytes_streamed,
            "rebalance_keys_received": stats.keys_received,
            "rebalance_keys_served": stats.keys_served,
            "rebalance_keys_dropped": stats.keys_dropped,
            "rebalance_bytes_dropped": stats.bytes_dropped,
            "rebalance_hints_dropped": stats.hints_dropped,
            "rebalance_movements": len(self._runtime.view.movements),
            "rebalance_streams_running": sum(
                1 for s in streams if s.state in ("running", "retrying")),
        }


# -- helpers ---------------------------------------------------------------------------------


def _unwrap(failure: Failure) -> Failure:
    error = failure.value
    return error.subFailure if isinstance(error, FirstError) else failure


def _restrict(moves: list[Move], sp: StreamProgress) -> list[Move]:
    """The parts of C{moves} for C{sp}'s target inside C{sp}'s ranges (to re-plan them)."""
    ranges = sp.token_ranges
    restricted = []
    for move in moves:
        if move.target != sp.target:
            continue
        for piece in intersect_ranges([move.token_range], ranges):
            restricted.append(Move(piece, move.target, move.losers, move.others))
    return restricted
