"""Dynamo-style request coordination on the reactor: quorum reads and writes, sloppy quorum,
read repair, hinted handoff, and the replica side of the peer verbs.

Any node coordinates any key. The decisions are made by the sans-IO pieces:

 - L{twistkv.core.quorum.WriteCoordination} / L{ReadCoordination} decide when W acks or R
   replies make a request succeed, and which replicas a read found stale;
 - L{twistkv.core.replication} mints write versions, merges and reconciles them, and picks
   sloppy-quorum stand-ins.

This module only sends frames, applies local writes in-process (no network hop to self), and
runs timers: one for the deadlines of every request in flight (L{Coordinator._track}), not one
per request.

The write path is the cluster's hot path, so it keeps per-write work and objects down: the
records of one reactor turn to one replica travel in one C{PUT_BATCH} (L{PeerClientPool.put},
docs/peer-protocol.md §5.2.1); a blind write on a key this node last wrote alone is minted and
stored on the record's bytes, and a replica stores such a record without decoding it
(L{twistkv.core.replication.supersedes_sole_writer}); writes to all-alive owners share their
validated target set; a client's pipelined SETs share one Deferred (L{Coordinator.put_run}). What each outcome means for a user's data is written down in
C{docs/consistency.md}; the frames are C{docs/peer-protocol.md} §5.2.

Sloppy quorum, as implemented here
----------------------------------

A write goes to one target per owner of the key's preference list. An owner the failure
detector believes down, or whose request fails or times out (after C{replica_timeout}, well
inside the request's deadline), is replaced by the next live fallback node of the ring, which
receives the write with C{hint_for=<owner>}, keeps it durably in its L{HintStore}, and acks; its
ack counts towards W (Dynamo). When no fallback is left (a cluster of exactly N nodes has
none), the coordinator itself keeps a hint for the owner. That hint does not count towards W,
since the coordinator's node is already counted once, but it guarantees that the owner gets
the write when it is back. L{HintDelivery} sends hints to owners that are alive again and
deletes them once acknowledged.

test-case-name: tests.node.test_coordinator
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from types import MappingProxyType
from typing import Any, Protocol, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from twistkv.core.peerwire import (
    Frame,
    PeerProtocolError,
    batch_outcomes_frame,
    error_frame,
    get_batch_answer,
    parse_get_batch,
    parse_put_batch,
    quote,
    unquote,
    unquote_text,
)
from twistkv.core.quorum import (
    ConsistencyLevel,
    ReadCoordination,
    Replica,
    ReplicaSet,
    Status,
    WriteCoordination,
)
from twistkv.core.record import (
    CorruptRecordError,
    Record,
    Version,
    decode_record,
    encode_record,
    live_value,
    single_writer_block,
)
from twistkv.core.replication import (
    context_clock,
    encode_sole_writer,
    encode_sole_writer_run,
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
)
from twistkv.core.ring import Ring
from twistkv.core.versioning import ClockSkewError, HybridLogicalClock, VectorClock
from twistkv.node.peer import (
    BatchAnswers,
    PeerBusy,
    PeerRefused,
    PeerTimeout,
    PeerUnavailable,
)
from twistkv.node.replica import Hint, HintRejected, HintStore, ReplicaStore
from twistkv.storage.errors import StorageError

__all__ = [
    "MAX_KEY_BYTES",
    "REPLICA_VERBS",
    "Coordinator",
    "CoordinatorStats",
    "HintDelivery",
    "HintDeliveryStats",
    "KeyTooLong",
    "PeerRequester",
    "QuorumUnavailable",
    "ReadResult",
]

_log = Logger()

#: Longest key accepted (docs/peer-protocol.md §2): checked before any replica is contacted.
MAX_KEY_BYTES = 16 * 1024

#: The peer verbs L{Coordinator.handle} serves; route them to it on the node's VerbRouter.
REPLICA_VERBS = ("PUT", "GET", "DEL", "HINT", "PUT_BATCH", "GET_BATCH")


class PeerRequester(Protocol):
    """What the coordinator needs of L{twistkv.node.peer.PeerClientPool}."""

    def request(
        self, address: str, frame: Frame, timeout: float | None = None
    ) -> Deferred[Frame]: ...


# -- errors and results ---------------------------------------------------------------------


class KeyTooLong(ValueError):
    """The client's key exceeds L{MAX_KEY_BYTES}: the client's fault, nothing was sent."""

    def __init__(self, length: int) -> None:
        super().__init__(f"key of {length} bytes exceeds the limit of {MAX_KEY_BYTES} bytes")
        self.length = length


class QuorumUnavailable(Exception):
    """A read or write could not reach its required replicas before its deadline.

    The message is the client-facing error (RESP sends it as C{-UNAVAILABLE ...}); its exact
    wording and what it means for the data are specified in C{docs/consistency.md}.

    @ivar acks: replicas that acknowledged (write) or answered (read).
    @ivar required: how many were needed.
    @ivar replicas_tried: every node contacted (or read locally), sorted.
    @ivar detail: node -> why it did not count (C{unreachable}, C{timed out}, ...).
    """

    def __init__(
        self,
        operation: str,
        acks: int,
        required: int,
        replicas_tried: Sequence[str],
        detail: Mapping[str, str],
        *,
        note: str | None = None,
    ) -> None:
        self.operation = operation
        self.acks = acks
        self.required = required
        self.replicas_tried = tuple(replicas_tried)
        self.detail: Mapping[str, str] = MappingProxyType(dict(detail))
        self.note = note
        super().__init__(self._message())

    def _message(self) -> str:
        reasons = self.note or ", ".join(
            f"{node} {reason}" for node, reason in sorted(self.detail.items())
        )
        head = (
            f"UNAVAILABLE {self.operation} reached {self.acks} of {self.required} required "
            f"replicas"
        )
        if reasons:
            head += f" ({reasons})"
        if self.note is not None:
            return head + "; nothing was sent, retry later or through another node"
        if self.operation == "read":
            return head + "; nothing was changed, retry or read at a lower consistency level"
        if self.acks:
            return head + (
                "; the value may exist on the replicas that acknowledged and will spread by "
                "read repair/hints"
            )
        return head + (
            "; no replica acknowledged, but the value may still reach replicas that did not "
            "answer in time"
        )


@dataclass(frozen=True)
class ReadResult:
    """A quorum read: the reconciled siblings and what each replica answered.

    @ivar versions: the surviving versions (siblings), newest first: element 0 is the
        last-writer winner a plain GET returns. Deleted and expired versions are included.
    @ivar replies: replica -> the versions it returned, for every replica that had answered
        when the read was answered (all of them with C{wait_for_all}); for C{VERSIONS}.
    @ivar failures: replica -> why it did not answer, for those that failed by then.
    """

    key: bytes
    versions: tuple[Version, ...]
    replies: Mapping[str, tuple[Version, ...]]
    failures: Mapping[str, str]

    @property
    def winner(self) -> Version | None:
        """The last-writer winner, live or not; None when no replica holds the key."""
        return self.versions[0] if self.versions else None

    def live(self, now_ms: int) -> Version | None:
        """The version a plain GET returns at C{now_ms}: None when deleted, expired or absent."""
        return live_value(Record(self.versions), now_ms)

    @property
    def context(self) -> VectorClock:
        """The causal context to write back with: the merge of every sibling's clock.

        A write carrying it supersedes all the siblings read, which is how they are resolved
        (the winner's clock alone would leave the other siblings standing).
        """
        return context_clock(self.versions)


@dataclass
class CoordinatorStats:
    """Counters for metrics; they only grow."""

    reads: int = 0
    writes: int = 0
    reads_unavailable: int = 0
    writes_unavailable: int = 0
    #: Stale replicas sent the reconciled record after a read, and acknowledged it.
    read_repairs: int = 0
    read_repair_failures: int = 0
    #: Write acks that came from a stand-in holding a hint (sloppy quorum).
    hinted_acks: int = 0
    #: Hints this coordinator kept for an owner no stand-in could take.
    coordinator_hints: int = 0
    #: Replica requests served for peers, by verb.
    served: dict[str, int] = field(default_factory=dict)
    #: Hints accepted as a stand-in for peers' writes.
    hints_accepted: int = 0
    #: Writes that also went to pending replicas (a range movement was under way).
    pending_writes: int = 0


# -- in-flight request state ----------------------------------------------------------------


#: L{_Write.stored} when the minting did not look at the stored bytes.
_UNSEEN = object()


class _Write:
    """One write in flight (a plain slotted class: one is built per write)."""

    __slots__ = ("id", "key", "version", "verb", "payload", "stored", "required", "deadline",
                 "fallbacks", "slots", "coordination", "result", "acked", "nacked", "reasons",
                 "tried", "timed", "expired", "settled", "run_index")

    def __init__(
        self, id: int, key: bytes, version: Version | None, verb: str, payload: bytes,
        stored: bytes | None | object, required: int, deadline: float,
        fallbacks: tuple[str, ...], slots: dict[str, Replica],
        coordination: WriteCoordination, result: Deferred[Version] | _Run | _Runs,
    ) -> None:
        self.id = id
        self.key = key
        #: None until needed when the caller does not want it (L{minted}).
        self.version = version
        self.verb = verb
        self.payload = payload
        #: The local replica's bytes for the key when the version was minted from them
        #: alone (L{Coordinator._mint}): the local copy is then stored without a merge if
        #: they are unchanged; L{_UNSEEN} otherwise.
        self.stored = stored
        self.required = required
        self.deadline = deadline
        self.fallbacks = fallbacks
        #: owner -> the target currently standing for it.
        self.slots = slots
        self.coordination = coordination
        #: Fired once settled: the caller's own Deferred, or the run it belongs to.
        self.result = result
        self.acked: dict[str, Replica] = {}
        #: Targets whose slot is exhausted (no stand-in left): counted as refusals.
        self.nacked: dict[str, str] = {}
        #: Node -> why it did not ack, for the error message.
        self.reasons: dict[str, str] = {}
        self.tried: set[str] = set()
        #: Whether the deadline sweep still watches it (L{Coordinator._track}).
        self.timed = False
        self.expired = False
        #: Whether the outcome was reported to C{result}.
        self.settled = False
        #: Its position in the run it belongs to (L{Coordinator.put_run}).
        self.run_index = 0

    def minted(self) -> Version:
        """The version written, decoded from the payload if it was not kept (a run's write
        needs it only on its failure paths: fewer objects kept per write in flight)."""
        version = self.version
        if version is None:
            version = self.version = decode_record(self.payload).versions[0]
        return version


def _given(result: Deferred[Version] | None) -> Deferred[Version]:
    """The Deferred of a write made without a run (L{Coordinator._write} then returns one)."""
    assert result is not None
    return result


class _Run:
    """The writes of L{Coordinator.put_run}: one Deferred for all of them instead of one each."""

    __slots__ = ("size", "pending", "errors", "deferred")

    def __init__(self, count: int) -> None:
        self.size = count
        self.pending = count
        #: Per write, in order: None (acknowledged) or why it failed; None until one fails.
        self.errors: list[BaseException | None] | None = None
        self.deferred: Deferred[list[BaseException | None] | None] = Deferred()

    def settled(self, index: int, error: BaseException | None) -> None:
        """Write number C{index} of the run settled (C{error} None: acknowledged)."""
        if error is not None:
            if self.errors is None:
                self.errors = [None] * self.size
            self.errors[index] = error
        self.pending -= 1
        if self.pending == 0:
            self.deferred.callback(self.errors)


class _Runs:
    """Several clients' runs coordinated as one: settles each write in the run it came from."""

    __slots__ = ("size", "owners", "indexes")

    def __init__(self, owners: list[_Run], indexes: list[int]) -> None:
        self.size = len(owners)
        self.owners = owners
        self.indexes = indexes

    def settled(self, index: int, error: BaseException | None) -> None:
        self.owners[index].settled(self.indexes[index], error)


def _merged(
    group: list[tuple[Sequence[tuple[bytes, bytes]], _Run]], consistency: ConsistencyLevel | None,
) -> tuple[Sequence[tuple[bytes, bytes]], ConsistencyLevel | None, _Run | _Runs]:
    """Several queued runs as one (L{Coordinator.issue_queued})."""
    if len(group) == 1:
        pairs, run = group[0]
        return pairs, consistency, run
    merged: list[tuple[bytes, bytes]] = []
    owners: list[_Run] = []
    indexes: list[int] = []
    for some, run in group:
        merged.extend(some)
        owners.extend([run] * run.size)
        indexes.extend(range(run.size))
    return merged, consistency, _Runs(owners, indexes)


#: What a write reports to when it belongs to a run (rather than to a Deferred of its own).
_RUN_TYPES = (_Run, _Runs)


#: Seconds a run plan (L{_RunPlan}) is used for before it is made again. A plan records which
#: owners were alive and their addresses: a write using one up to this much older is as if it
#: had arrived that much earlier (a write to an owner that just went down still fails over to
#: a stand-in, through the general path). Failure detection takes seconds.
_RUN_PLAN_TTL = 0.1

#: Queued writes (L{Coordinator.put_run}) that are issued at once, without waiting for the
#: end of the reactor turn. One poll can bring every pipelining client's commands (hundreds
#: of SETs); coordinating them all before the first record leaves would keep the other
#: owners idle meanwhile and then busy together, and the CPU the nodes share idle by turns.
#: Issued in slices of this size, the owners store one slice while this node reads the next.
#: A slice this big still costs one C{PUT_BATCH} per owner for many writes. Measured on the
#: 3-node benchmark (C{-c 50 -P 16}, medians of six interleaved runs): 81-83k SET/s without
#: slices, 87k at 64, 90-93k at 128, 94k at 256, 83k at 384; idle CPU 25% -> 7-19%.
_ISSUE_AT = 256


class _RunPlan:
    """How the writes of a run to one preference list go while every owner is alive."""

    __slots__ = ("preference", "fallbacks", "coordinated", "slots", "required", "local",
                 "remote", "timeout")

    def __init__(
        self, preference: tuple[str, ...], fallbacks: tuple[str, ...],
        coordinated: ReplicaSet, slots: dict[str, Replica], required: int,
        local: Replica | None, remote: tuple[tuple[str, Replica], ...], timeout: float,
    ) -> None:
        self.preference = preference
        self.fallbacks = fallbacks
        self.coordinated = coordinated
        #: Owner -> its target (the objects the answers are matched against).
        self.slots = slots
        self.required = required
        #: This node's target when it is an owner.
        self.local = local
        #: (peer address, target) of the other owners.
        self.remote = remote
        self.timeout = timeout


class _FastRun:
    """The writes of one L{Coordinator.put_run} that went the short way (L{_RunPlan}): acks
    are counted per write in flat lists, with no L{_Write}, L{WriteCoordination} or deadline
    entry per write. A write that hears anything but an ack is I{promoted}: it becomes the
    L{_Write} it would have been, with the acks it had, and the general path takes over
    (stand-ins, hints, the UNAVAILABLE error), as does the deadline for every write still
    short of its quorum then.
    """

    __slots__ = ("id", "run", "deadline", "keys", "payloads", "stored", "plans", "need",
                 "acks", "promoted", "open", "timed")

    def __init__(self, id: int, run: _Run | _Runs, deadline: float) -> None:
        self.id = id
        self.run = run
        self.deadline = deadline
        #: Per write of the run (by its run index; None for writes that went another way).
        self.keys: list[bytes | None] = [None] * run.size
        self.payloads: list[bytes] = [b""] * run.size
        self.stored: list[bytes | None | object] = [None] * run.size
        self.plans: list[_RunPlan | None] = [None] * run.size
        #: Acks still needed (0 or less: acknowledged); the nodes that acked so far.
        self.need: list[int] = [0] * run.size
        self.acks: list[list[str] | None] = [None] * run.size
        #: Run index -> the write it became.
        self.promoted: dict[int, _Write] = {}
        #: Writes short of their quorum and not promoted: the deadline entry lives while any.
        self.open = 0
        self.timed = False


class _ReadRun:
    """The reads of L{Coordinator.get_run}: one Deferred for all of them."""

    __slots__ = ("pending", "results", "deferred")

    def __init__(self, count: int) -> None:
        self.pending = count
        #: Per read, in order: the live value (None: absent, deleted or expired) or the error.
        self.results: list[bytes | None | BaseException] = [None] * count
        self.deferred: Deferred[list[bytes | None | BaseException]] = Deferred()

    def settled(self, index: int, result: bytes | None | BaseException) -> None:
        self.results[index] = result
        self.pending -= 1
        if self.pending == 0:
            self.deferred.callback(self.results)


class _ReadPlan:
    """How the reads of a run to one preference list go while every owner is alive."""

    __slots__ = ("preference", "required", "local", "remote", "timeout")

    def __init__(self, preference: tuple[str, ...], required: int, local: bool,
                 remote: tuple[tuple[str, str], ...], timeout: float) -> None:
        self.preference = preference
        self.required = required
        #: Whether this node is an owner (its copy is read first, as L{Coordinator.get} does).
        self.local = local
        #: (node, peer address) of the other owners.
        self.remote = remote
        self.timeout = timeout


class _FastRead:
    """The reads of one L{Coordinator.get_run} that went the short way (L{_ReadPlan}).

    Every owner is asked, as L{Coordinator.get} asks them; the replies are compared as
    bytes. While they are identical nothing is decoded but the one record answered, and
    nothing is stale, so there is nothing to repair. A read whose replies differ, or that
    hears a refusal or an error, is I{promoted}: it becomes the L{_Read} the general path
    would hold, with the replies it had, and that path reconciles, answers and repairs. So
    does the deadline for every read still waiting for a reply then.
    """

    __slots__ = ("id", "run", "deadline", "keys", "plans", "first", "repliers", "need",
                 "left", "promoted", "open", "timed")

    def __init__(self, id: int, run: _ReadRun, deadline: float, size: int) -> None:
        self.id = id
        self.run = run
        self.deadline = deadline
        #: Per read of the run (by its run index; None for reads that went another way).
        self.keys: list[bytes | None] = [None] * size
        self.plans: list[_ReadPlan | None] = [None] * size
        #: The first reply's record bytes (None: nothing held; _UNSEEN: no reply yet), and
        #: the owners that replied exactly that, in order.
        self.first: list[bytes | None | object] = [_UNSEEN] * size
        self.repliers: list[list[str] | None] = [None] * size
        #: Replies still needed for the answer (0 or less: answered), and still to come.
        self.need: list[int] = [0] * size
        self.left: list[int] = [0] * size
        #: Run index -> the read it became.
        self.promoted: dict[int, _Read] = {}
        #: Reads still waiting for a reply and not promoted: the deadline entry lives while any.
        self.open = 0
        self.timed = False


@dataclass(eq=False)
class _Read:
    key: bytes
    coordination: ReadCoordination[Version]
    result: Deferred[ReadResult]
    wait_for_all: bool
    id: int = 0
    deadline: float = 0.0
    tried: set[str] = field(default_factory=set)
    #: Whether the deadline sweep still watches it (L{Coordinator._track}).
    timed: bool = False
    repaired: bool = False
    #: The GET frame, shared by every replica asked.
    frame: Frame | None = None


def _describe(failure: Failure | BaseException) -> str:
    """A short reason for a failed replica request, for error messages."""
    error = failure.value if isinstance(failure, Failure) else failure
    if isinstance(error, PeerTimeout):
        return "timed out"
    if isinstance(error, PeerUnavailable):
        return "unreachable"
    if isinstance(error, PeerBusy):
        return "busy"
    if isinstance(error, PeerRefused):
        return f"refused ({error.code})"
    if isinstance(error, StorageError):
        return "storage error"
    if isinstance(error, HintRejected):
        return "refused (overloaded)"
    return f"failed ({error})"


def _nack(reason: str, message: str) -> Frame:
    return Frame("NACK", 0, {"reason": reason, "message": quote(message)})


#: Frames are immutable and the adapter sends answers under the request's id: one ACK serves.
_ACK = Frame("ACK", 0)
#: The (run, index, target) of an item L{Coordinator._write_run} hands to the pool: keep
#: in step with the tuple it builds ("PUT", key, record, timeout, answer, error, run,
#: index, target).
_RUN_ACK_OF = itemgetter(6, 7, 8)
_P = TypeVar("_P")
#: The key under which runs keep their one plan when the ring has no more members than the
#: replication factor N (three nodes at N=3): every key is then owned by every member, with
#: no fallbacks, so runs skip the key hash and vnode lookup (7% of a coordinator's time
#: under pipelined SETs, py-spy). Only the owners' order differs by key; runs and the
#: writes and reads they promote ask every owner and count replies, and errors sort the
#: replicas they name, so nothing depends on it. Not a vnode index (those are >= 0); a
#: ring uses it for all its keys or none, and a new ring clears the plans.
_ONE_PLAN = -2


def _ack(_: object = None) -> Frame:
    return _ACK


# -- the coordinator ------------------------------------------------------------------------


class Coordinator:
    """Coordinates reads and writes for any key, and serves the replica verbs for peers.

    @param ring_provider: the current ring (membership changes replace it).
    @param alive_provider: whether a node is believed up (ALIVE or SUSPECT); only routing
        depends on it, never ring membership.
    @param address_provider: a node's peer address, or None if unknown.
    @param ready_provider: False until this node has joined the cluster. Coordinating with a
        ring that holds only ourselves would acknowledge writes stored on one node.
    @param pending_provider: the ring once the range movement under way completes, or None
        when nothing moves. Writes then also go to the nodes that replicate the key only
        under that ring (pending ranges), and need one more ack per such node, so that W
        replicas under the old ring and W under the new one hold every acknowledged write;
        reads stay on the current ring (docs/consistency.md §13).
    @param request_timeout: seconds a client request may take before it fails UNAVAILABLE.
    @param replica_timeout: seconds one replica may take before its slot fails over to a
        stand-in, when one is available (else it has until the deadline); defaults to half
        the request timeout, so the stand-in has time to ack.
    """

    def __init__(
        self,
        node_id: str,
        *,
        replica: ReplicaStore,
        hints: HintStore,
        pool: PeerRequester,
        ring_provider: Callable[[], Ring],
        alive_provider: Callable[[str], bool],
        address_provider: Callable[[str], str | None],
        reactor: IReactorTime,
        hlc: HybridLogicalClock,
        n: int = 3,
        default_r: int = 2,
        default_w: int = 2,
        request_timeout: float = 2.0,
        replica_timeout: float | None = None,
        ready_provider: Callable[[], bool] = lambda: True,
        pending_provider: Callable[[], Ring | None] = lambda: None,
    ) -> None:
        if n < 1 or not 1 <= default_r <= n or not 1 <= default_w <= n:
            raise ValueError(f"need 1 <= R, W <= N, got N={n} R={default_r} W={default_w}")
        if not request_timeout > 0:
            raise ValueError("request_timeout must be positive")
        self.node_id = node_id
        self.replica = replica
        self.hints = hints
        self._pool = pool
        # The pool's Deferred-free call() when it has one (PeerClientPool does), and its
        # put(), which batches the records of one turn per replica (PUT_BATCH).
        self._call: Callable[..., None] = getattr(pool, "call", None) or self._call_via_request
        self._put: Callable[..., None] = getattr(pool, "put", None) or self._put_via_call
        self._ring = ring_provider
        self._alive = alive_provider
        self._address = address_provider
        self._ready = ready_provider
        self._pending = pending_provider
        self._reactor = reactor
        self.hlc = hlc
        self.n = n
        self.default_r = default_r
        self.default_w = default_w
        self.request_timeout = request_timeout
        self.replica_timeout = (
            request_timeout / 2 if replica_timeout is None else min(replica_timeout,
                                                                    request_timeout)
        )
        self.stats = CoordinatorStats()
        self._ids = itertools.count(1)
        self._stopped = False
        #: put_run's writes not yet coordinated (L{issue_queued}, at the end of the turn).
        self._queued: list[tuple[Sequence[tuple[bytes, bytes]], ConsistencyLevel | None,
                                 _Run]] = []
        self._queued_call: IDelayedCall | None = None
        #: How many writes L{_queued} holds (issued at once from L{_ISSUE_AT}).
        self._queued_writes = 0
        #: Whether L{issue_queued} is coordinating: a slice queued meanwhile by a callback
        #: it fired waits for it to end (it must not overtake the writes still to go).
        self._issuing = False
        #: How many times queued runs were issued (L{mark}, L{settle}).
        self.issues = 0
        #: Requests in flight by id, and a min-heap of (deadline, id) with lazy deletion:
        #: one DelayedCall for all of them instead of one per request (L{_track}).
        self._timed: dict[int, _Write | _Read | _FastRun | _FastRead] = {}
        self._deadlines: list[tuple[float, int]] = []
        self._sweep_call: IDelayedCall | None = None
        self._sweep_at = 0.0
        #: Preference list -> its targets when every owner is alive (L{_owner_plan}).
        self._owner_plans: dict[tuple[str, ...], tuple[ReplicaSet, dict[str, Replica]]] = {}
        # Bound once: a bound method is an object, and every replica request passes two.
        self._on_write_answer = self._write_answer
        self._on_write_error = self._write_error
        #: A run's replica answers: one call per PUT_BATCH whose records were all applied.
        self._on_run_answer = BatchAnswers(self._run_answer, self._run_batch_acked)
        self._on_run_error = self._run_error
        #: The pool's batching put, which runs of writes need (L{_write_run}), and its
        #: put_many when it has one.
        self._put_via_pool: Callable[..., None] | None = getattr(pool, "put", None)
        self._put_many: Callable[[str, Sequence[tuple[object, ...]]], None] = (
            getattr(pool, "put_many", None) or self._put_each)
        #: Sends what the pool's connections queued this turn (L{_issue_at_turn_end}).
        self._flush_peers: Callable[[], None] | None = getattr(pool, "flush_now", None)
        #: The pool's get_many, which runs of reads need (L{_read_run}).
        self._get_many: Callable[[str, Sequence[tuple[object, ...]]], None] | None = getattr(
            pool, "get_many", None)
        self._on_read_run_answer = self._read_run_answer
        self._on_read_run_error = self._read_run_error
        #: The run plans of the ring C{_plans_ring} (L{_run_plan}) by consistency: one dict
        #: by vnode (L{Ring.vnode_of}: what each write looks up; L{_ONE_PLAN} alone on a
        #: ring of N members or fewer) and one by preference list
        #: (so each distinct list is planned once, however many vnodes share it); made
        #: afresh at most _RUN_PLAN_TTL seconds after C{_plans_since}.
        self._run_plans: dict[ConsistencyLevel | None, tuple[dict[int, _RunPlan | None],
                                                             dict[tuple[str, ...],
                                                                  _RunPlan | None]]] = {}
        #: The same for runs of reads (L{_read_plan}), emptied with them.
        self._read_plans: dict[ConsistencyLevel | None, tuple[dict[int, _ReadPlan | None],
                                                              dict[tuple[str, ...],
                                                                   _ReadPlan | None]]] = {}
        self._plans_ring: Ring | None = None
        self._plans_since = 0.0
        #: How this node's own one-version records start (L{_mint}'s byte-level path).
        self._block = single_writer_block(node_id)

    def shutdown(self) -> None:
        """Refuse new requests and peer writes; requests in flight finish without failover.

        Called when the node stops (or, in tests, crashes) so that a stopped node's timers
        cannot keep writing hints into its store.
        """
        self._stopped = True
        self.issue_queued()  # refused now ("shutting down") rather than never answered

    # -- helpers ---------------------------------------------------------------------------

    def now_ms(self) -> int:
        """Wall-clock milliseconds from the reactor."""
        return int(self._reactor.seconds() * 1000)

    def _is_alive(self, node: str) -> bool:
        return node == self.node_id or self._alive(node)

    def _check_key(self, key: bytes) -> None:
        if len(key) > MAX_KEY_BYTES:
            raise KeyTooLong(len(key))

    def _not_serving(self, operation: str, required: int, replicas: int) -> QuorumUnavailable | None:
        """Why this node cannot coordinate now, or None if it can."""
        if self._stopped:
            note = "this node is shutting down"
        elif not self._ready() or not replicas:
            note = "this node has not joined the cluster yet"
        else:
            return None
        return QuorumUnavailable(operation, 0, required, (), {}, note=note)

    def _call_via_request(
        self, address: str, frame: Frame, timeout: float, callback: Callable[..., object],
        errback: Callable[..., object], *args: object,
    ) -> None:
        self._pool.request(address, frame, timeout).addCallbacks(
            callback, errback, callbackArgs=args, errbackArgs=args)

    def _put_via_call(
        self, address: str, verb: str, key: bytes, record: bytes, timeout: float,
        callback: Callable[..., object], errback: Callable[..., object], *args: object,
    ) -> None:
        self._call(address, Frame(verb, 0, {"key": quote(key)}, record), timeout, callback,
                   errback, *args)

    def _put_each(self, address: str, items: Sequence[tuple[object, ...]]) -> None:
        put = self._put_via_pool
        assert put is not None
        for item in items:
            put(address, *item)

    def _remaining(self, deadline: float) -> float:
        return max(deadline - self._reactor.seconds(), 0.001)

    # -- deadlines -------------------------------------------------------------------------

    def _track(self, request: _Write | _Read | _FastRun | _FastRead, deadline: float) -> None:
        """Expire C{request} at C{deadline} unless L{_untrack}ed before.

        A DelayedCall per request costs the reactor a heap push and a cancellation on
        every write; here requests wait in a heap of our own and one call is armed for the
        earliest deadline, as L{twistkv.core.peerwire.PendingRequests} does per connection.
        """
        request.timed = True
        self._timed[request.id] = request
        heapq.heappush(self._deadlines, (deadline, request.id))
        call = self._sweep_call
        if call is None or deadline < self._sweep_at:
            if call is not None:
                call.cancel()
            self._sweep_at = deadline
            # Usually deadline is now + request_timeout: pass the timeout itself, as a
            # per-request callLater did, so that rounding cannot move the deadline. A write
            # promoted out of a run (L{_promote}) has less time left.
            delay = self.request_timeout
            remaining = deadline - self._reactor.seconds()
            if remaining < delay:
                delay = max(remaining, 0.0)
            self._sweep_call = self._reactor.callLater(delay, self._sweep)

    def _untrack(self, request: _Write | _Read | _FastRun | _FastRead) -> None:
        """The request needs its deadline no more (it settled)."""
        request.timed = False
        timed = self._timed
        if timed.pop(request.id, None) is None:
            return
        if not timed:
            # Idle: hold no timer and no stale heap entries.
            self._deadlines.clear()
            if self._sweep_call is not None:
                self._sweep_call.cancel()
                self._sweep_call = None
        elif len(self._deadlines) > 2 * len(timed) + 64:
            self._deadlines = [entry for entry in self._deadlines if entry[1] in timed]
            heapq.heapify(self._deadlines)

    def _sweep(self) -> None:
        """The earliest deadline passed: expire every request due, re-arm for the next."""
        self._sweep_call = None
        # The call was set for _sweep_at; float rounding must not make it miss that deadline.
        now = max(self._reactor.seconds(), self._sweep_at)
        heap, timed = self._deadlines, self._timed
        due: list[_Write | _Read | _FastRun | _FastRead] = []
        while heap and heap[0][0] <= now:
            request = timed.pop(heapq.heappop(heap)[1], None)
            if request is not None:
                request.timed = False
                due.append(request)
        while heap and heap[0][1] not in timed:
            heapq.heappop(heap)
        if heap:
            self._sweep_at = heap[0][0]
            self._sweep_call = self._reactor.callLater(max(0.0, self._sweep_at - now), self._sweep)
        for request in due:
            if isinstance(request, _Write):
                self._write_deadline(request)
            elif isinstance(request, _FastRun):
                self._run_deadline(request)
            elif isinstance(request, _FastRead):
                self._read_run_deadline(request)
            else:
                self._read_deadline(request)

    def _mint(
        self, key: bytes, value: bytes, expires_at_ms: int, context: VectorClock | None,
        tombstone: bool, keep: bool = True, wall: int | None = None,
    ) -> tuple[Version | None, bytes, bytes | None | object]:
        """The new version, its record's bytes, and the stored bytes it was minted from
        (L{_UNSEEN} unless they were read undecoded). It descends the context (default: what
        we hold locally). Without C{keep} the byte-level path builds no L{Version} (None)."""
        if wall is None:
            wall = self.now_ms()
        node = self.node_id
        if context is None:
            # The usual blind write: the key absent here or last written by this node alone
            # (what L{new_version} would mint, read and written on the bytes).
            raw = self.replica.raw(key)
            clock = None if raw is None else sole_writer_clock(raw, self._block)
            if raw is None or clock is not None:
                newest, previous = clock if clock is not None else (0, 0)
                try:
                    ts = self.hlc.observe(newest, wall) if newest else self.hlc.tick(wall)
                except ClockSkewError:
                    ts = self.hlc.tick(wall)
                if tombstone:
                    value, expires_at_ms = b"", 0
                counter = max(previous + 1, ts)
                version = (Version(value, ((node, counter),), ts, node, expires_at_ms, tombstone)
                           if keep else None)
                return version, encode_sole_writer(self._block, value, ts, expires_at_ms,
                                                   counter, tombstone), raw
        local = self.replica.read(key)
        versions = local.versions if local is not None else ()
        seen = context_clock(versions) if context is None else context
        newest = max((v.hlc for v in versions), default=0)
        try:
            # Observing what we supersede makes the new write the LWW winner over it too.
            ts = self.hlc.observe(newest, wall) if newest else self.hlc.tick(wall)
        except ClockSkewError:
            ts = self.hlc.tick(wall)
        version = new_version(seen, value, node, ts, expires_at_ms, tombstone)
        return version, encode_record(Record((version,))), _UNSEEN

    # -- writes ----------------------------------------------------------------------------

    def put(
        self,
        key: bytes,
        value: bytes,
        consistency: ConsistencyLevel | None = None,
        expires_at_ms: int = 0,
        context: VectorClock | None = None,
    ) -> Deferred[Version]:
        """Write C{value}; fires with the stored version once W replicas acknowledged.

        @param consistency: None for the cluster's default W.
        @param context: the clock the client read (L{ReadResult.context}); None means the
            clocks this node holds for the key (a blind write; see docs/consistency.md).
        @return: fails with L{QuorumUnavailable} or L{KeyTooLong}.
        """
        if self._queued:
            self.issue_queued()  # after the runs queued before it
        return _given(self._write(key, value, consistency, expires_at_ms, context,
                                  tombstone=False))

    def delete(
        self,
        key: bytes,
        consistency: ConsistencyLevel | None = None,
        context: VectorClock | None = None,
    ) -> Deferred[Version]:
        """Write a tombstone (a versioned delete); fires with it once W replicas acknowledged."""
        if self._queued:
            self.issue_queued()  # after the runs queued before it
        return _given(self._write(key, b"", consistency, 0, context, tombstone=True))

    def put_run(
        self, pairs: Sequence[tuple[bytes, bytes]], consistency: ConsistencyLevel | None = None
    ) -> Deferred[list[BaseException | None] | None]:
        """Blind writes of several keys in order (a client's pipelined plain SETs), each
        coordinated exactly as L{put} would; one Deferred for all of them.

        Once every write has settled it fires with None if all were acknowledged, else with
        one entry per write, in order: None for an acknowledged write, the error (what
        L{put} would have failed with) for the others. Saves a Deferred and its callbacks
        per write when a client pipelines.
        """
        if not pairs:
            return succeed(None)
        run = _Run(len(pairs))
        self._queued.append((pairs, consistency, run))
        self._queued_writes += len(pairs)
        if self._queued_writes >= _ISSUE_AT and not self._issuing:
            self._issue_at_turn_end()  # a slice's worth: to the owners now (see _ISSUE_AT)
        elif self._queued_call is None:
            self._queued_call = self._reactor.callLater(0, self._issue_at_turn_end)
        return run.deferred

    def mark(self) -> int:
        """A token for the writes queued so far (see L{settle}); -1 when none is."""
        return self.issues if self._queued else -1

    def settle(self, mark: int) -> None:
        """Issue the writes queued when C{mark} was taken, unless they were issued since.

        A client connection calls this before the command that follows one whose write
        may still be queued, so that the pipeline's later commands see it, without
        issuing other clients' writes of the turn early when its own already went."""
        if self.issues == mark and self._queued:
            self.issue_queued()

    def _issue_at_turn_end(self) -> None:
        """L{issue_queued} at the end of the reactor turn, then hand the records it queued
        for the other owners to the wire at once: this runs among the reactor's timed calls,
        where the connections' own C{callLater(0)} flush would only run after another poll
        (a poll's worth of client commands, milliseconds under load, added to every write)."""
        self.issue_queued()
        flush = self._flush_peers
        if flush is not None:
            flush()

    def issue_queued(self) -> None:
        """Coordinate the writes L{put_run} queued, in order: the runs of one reactor turn
        (from every client) go together where they can, as one run. Each write reports to
        its run, failures included; this raises nothing."""
        call, self._queued_call = self._queued_call, None
        if call is not None and call.active():
            call.cancel()
        queued = self._queued
        if not queued:
            return
        self._queued = []
        self._queued_writes = 0
        self.issues += 1
        issuing, self._issuing = self._issuing, True  # an issue can nest (put() in a callback)
        try:
            self._issue(queued)
        finally:
            self._issuing = issuing

    def _issue(
        self, queued: list[tuple[Sequence[tuple[bytes, bytes]], ConsistencyLevel | None, _Run]],
    ) -> None:
        """L{issue_queued}'s work on the runs it took from the queue."""
        if self._stopped or self._put_via_pool is None or not self._ready() or (
            self._pending() is not None
        ):
            write = self._write
            for pairs, consistency, run in queued:
                for index, (key, value) in enumerate(pairs):
                    try:
                        write(key, value, consistency, 0, None, False, None, run, index)
                    except Exception:  # noqa: BLE001 - a bug here must not strand the others
                        _log.failure("coordinating a queued write failed")
            return
        for pairs, consistency, run in self._groups(queued):
            try:
                self._write_run(pairs, consistency, run)
            except Exception:  # noqa: BLE001 - a bug here must not strand the other runs
                _log.failure("coordinating a run of {count} queued writes failed",
                             count=len(pairs))

    @staticmethod
    def _groups(
        queued: list[tuple[Sequence[tuple[bytes, bytes]], ConsistencyLevel | None, _Run]],
    ) -> Iterator[tuple[Sequence[tuple[bytes, bytes]], ConsistencyLevel | None, _Run | _Runs]]:
        """C{queued} as runs to coordinate, in order: consecutive runs of one consistency
        level that share no key are merged (L{_Runs}); a run that writes a key twice goes
        alone (its second write must see the first, so it is minted write by write, and one
        repeated key would cost a merged run its shared mint)."""
        group: list[tuple[Sequence[tuple[bytes, bytes]], _Run]] = []
        group_consistency: ConsistencyLevel | None = None
        seen: set[bytes] = set()
        for pairs, consistency, run in queued:
            keys = [key for key, _ in pairs]
            if group and (consistency != group_consistency or not seen.isdisjoint(keys)):
                yield _merged(group, group_consistency)
                group = []
                seen = set()
            before = len(seen)
            seen.update(keys)
            if len(seen) - before != len(keys):
                if group:
                    yield _merged(group, group_consistency)
                    group = []
                yield pairs, consistency, run
                seen = set()
                continue
            group.append((pairs, run))
            group_consistency = consistency
        if group:
            yield _merged(group, group_consistency)

    # -- runs of blind writes: the short way -----------------------------------------------

    def _run_plan(
        self, successors: tuple[str, ...], consistency: ConsistencyLevel | None
    ) -> _RunPlan | None:
        """The plan of a run's writes to C{successors}, or None when they must go the general
        way (an owner down or of unknown address, no owner at all)."""
        n = self.n
        preference, fallbacks = successors[:n], successors[n:]
        if not preference:
            return None
        is_alive = self._is_alive
        if not all(map(is_alive, preference)):
            return None
        owners = self._owner_plans.get(preference)
        if owners is None:
            owners = self._owner_plan(preference)
        coordinated, slots = owners
        me = self.node_id
        remote = []
        for node in preference:
            if node != me:
                address = self._address(node)
                if address is None:
                    return None
                remote.append((address, slots[node]))
        if consistency is None:
            required = min(self.default_w, len(preference))
        else:
            required = required_replies(consistency, len(preference), self.default_w)
        timeout = self.request_timeout
        if any(map(is_alive, fallbacks)):
            # As _send_write: give up on a slow owner early when a stand-in can take over.
            timeout = min(self.replica_timeout, timeout)
        return _RunPlan(preference, fallbacks, coordinated, slots, required, slots.get(me),
                        tuple(remote), timeout)

    @staticmethod
    def _plans_of(by_consistency: dict[ConsistencyLevel | None, tuple[dict[int, _P],
                                                                     dict[tuple[str, ...], _P]]],
                  consistency: ConsistencyLevel | None,
                  ) -> tuple[dict[int, _P], dict[tuple[str, ...], _P]]:
        """The plans by vnode and by preference list for C{consistency}, made if missing."""
        plans = by_consistency.get(consistency)
        if plans is None:
            plans = by_consistency[consistency] = ({}, {})
        return plans

    def _check_plans(self, ring: Ring, now: float) -> None:
        """Forget the run plans when the ring changed or they are older than _RUN_PLAN_TTL."""
        if ring is not self._plans_ring or now - self._plans_since > _RUN_PLAN_TTL:
            self._plans_ring, self._plans_since = ring, now
            self._run_plans.clear()
            self._read_plans.clear()

    def _write_run(
        self, pairs: Sequence[tuple[bytes, bytes]], consistency: ConsistencyLevel | None,
        run: _Run | _Runs,
    ) -> None:
        """L{put_run}'s writes, each coordinated as L{_write} would, for less per write.

        While every owner of a key is alive each write is minted on the bytes as usual, its
        local copy joins one commit for the whole run (one store write, one durability
        wait) and its records go to the other owners through the pool's C{put} (one
        C{PUT_BATCH} per peer and turn); the answers are counted in L{_FastRun}. Writes to
        keys with an owner down, and too-long keys, take L{_write}.
        """
        ring = self._ring()
        everyone = len(ring.nodes)
        vnode_of = ring.vnode_of
        hashed = everyone > self.n  # else every key's owners are every member (_ONE_PLAN)
        now = self._reactor.seconds()
        self._check_plans(ring, now)
        plans, planned = self._plans_of(self._run_plans, consistency)
        deadline = now + self.request_timeout
        wall = int(now * 1000)  # now_ms(), read once: the writes of a run arrived together
        fast = _FastRun(next(self._ids), run, deadline)
        keys, payloads, stored_of, plan_of, need = (
            fast.keys, fast.payloads, fast.stored, fast.plans, fast.need)
        answer, error = self._on_run_answer, self._on_run_error
        #: Peer address -> the records of this run for it (one hand-over to the pool each).
        outgoing: dict[str, list[tuple[object, ...]]] = {}
        #: This node's copies not yet committed: key -> record, and their run indexes.
        staged: dict[bytes, bytes] = {}
        staged_indexes: list[int] = []
        fresh = 0
        local_waits: list[tuple[list[int], Deferred[None]]] = []
        count = 0
        try:
            minted_run = self._mint_run(pairs, wall)
        except Exception:  # noqa: BLE001 - the store failed: each write mints (or fails) alone
            minted_run = None
        for index, (key, value) in enumerate(pairs):
            if len(key) > MAX_KEY_BYTES:
                run.settled(index, KeyTooLong(len(key)))
                continue
            vnode = vnode_of(key) if hashed else _ONE_PLAN
            plan = plans.get(vnode, _UNSEEN)
            if plan is _UNSEEN:
                successors = ring.preference_list(key, everyone)
                plan = planned.get(successors, _UNSEEN)
                if plan is _UNSEEN:
                    plan = planned[successors] = self._run_plan(successors, consistency)
                plans[vnode] = plan
            if plan is None or key in staged:
                # The general path and the mint read what this node stores: commit first.
                if staged:
                    fresh = self._commit_run(fast, staged, staged_indexes, fresh, local_waits)
                if plan is None:
                    self._write(key, value, consistency, 0, None, False, None, run, index)
                    continue
            assert isinstance(plan, _RunPlan)
            minted = None if minted_run is None else minted_run[index]
            if minted is None:
                try:
                    _, payload, stored = self._mint(key, value, 0, None, False, False, wall)
                except Exception as failure:  # noqa: BLE001 - nothing was sent: it fails alone
                    run.settled(index, failure)
                    continue
            else:
                payload, stored = minted
            count += 1
            keys[index] = key
            payloads[index] = payload
            stored_of[index] = stored
            plan_of[index] = plan
            need[index] = plan.required
            fast.open += 1
            if plan.local is not None:
                if stored is _UNSEEN:
                    # Minted over another writer's versions: merged in, on its own.
                    if staged:
                        fresh = self._commit_run(fast, staged, staged_indexes, fresh,
                                                 local_waits)
                    self._commit_one(fast, index, local_waits)
                else:
                    staged[key] = payload
                    staged_indexes.append(index)
                    fresh += stored is None
            for address, target in plan.remote:
                items = outgoing.get(address)
                if items is None:
                    items = outgoing[address] = []
                items.append(("PUT", key, payload, plan.timeout, answer, error, fast, index,
                              target))
        if staged:
            self._commit_run(fast, staged, staged_indexes, fresh, local_waits)
        put_many = self._put_many
        for address, items in outgoing.items():
            put_many(address, items)
        self.stats.writes += count
        if fast.open:
            self._track(fast, deadline)
        for indexes, wait in local_waits:
            wait.addCallbacks(self._run_local_acked, self._run_local_failed,
                              callbackArgs=(fast, indexes), errbackArgs=(fast, indexes))

    def _mint_run(
        self, pairs: Sequence[tuple[bytes, bytes]], wall: int
    ) -> list[tuple[bytes, bytes | None] | None] | None:
        """The records of a run's blind writes, minted together where L{_mint}'s byte-level
        path would mint them (the key absent here, or last written by this node alone):
        one store lookup and one block of HLC timestamps for the run. Per write, C{(record,
        stored bytes)} or None (another writer's versions: L{_mint}); None for a run that
        writes a key twice (the second write must see the first).

        The block starts past the newest timestamp of the records it supersedes, as each
        L{_mint} would, so every new version is also their last-writer winner.
        """
        keys = [key for key, _ in pairs]
        if len(set(keys)) != len(keys):
            return None
        raws = self.replica.raw_many(keys)
        block = self._block
        clocks = sole_writer_clocks(raws, block)
        newest = max([clock[0] for clock in clocks if clock is not None], default=0)
        hlc = self.hlc
        try:
            first = hlc.observe(newest, wall) if newest else hlc.tick(wall)
        except ClockSkewError:
            first = hlc.tick(wall)
        if len(keys) > 1:
            hlc.tick_many(wall, len(keys) - 1)  # first + 1 .. first + len - 1: _last is first
        return encode_sole_writer_run(block, [value for _, value in pairs], first, raws, clocks)

    def _commit_run(
        self, fast: _FastRun, staged: dict[bytes, bytes], indexes: list[int], fresh: int,
        waits: list[tuple[list[int], Deferred[None]]],
    ) -> int:
        """Store this node's staged copies in one commit; empties C{staged} and C{indexes}
        and returns 0 (the new count of fresh keys)."""
        taken = list(indexes)
        staged_ops = list(staged.items())
        staged.clear()
        indexes.clear()
        try:
            wait = self.replica.replace_many(staged_ops, fresh)
        except StorageError as failure:
            for index in taken:
                self._run_local_failed(failure, fast, (index,))
            return 0
        if wait is None:
            self._run_local_acked(None, fast, taken)
        else:
            waits.append((taken, wait))
        return 0

    def _commit_one(
        self, fast: _FastRun, index: int, waits: list[tuple[list[int], Deferred[None]]]
    ) -> None:
        """Merge one write's version into this node's copy (minted over other writers)."""
        key, payload = fast.keys[index], fast.payloads[index]
        assert key is not None
        try:
            wait = self.replica.apply(key, (decode_record(payload).versions[0],),
                                      encoded=payload)
        except StorageError as failure:
            self._run_local_failed(failure, fast, (index,))
            return
        if wait is None:
            self._run_local_acked(None, fast, (index,))
        else:
            waits.append(([index], wait))

    def _run_local_acked(self, _: object, fast: _FastRun, indexes: Sequence[int]) -> None:
        """This node's copies of writes C{indexes} are stored: one ack each (L{_run_acked}
        for this node, in one loop: this runs for every write of a run)."""
        promoted = fast.promoted
        node = self.node_id
        need, acks = fast.need, fast.acks
        settled = fast.run.settled
        for index in indexes:
            if promoted and index in promoted:
                self._run_answer(_ACK, fast, index, self._local_target(fast, index))
                continue
            held = acks[index]
            if held is None:
                acks[index] = [node]
            else:
                held.append(node)
            left = need[index] - 1
            need[index] = left
            if left == 0:
                settled(index, None)
                fast.open -= 1
        if not fast.open and fast.timed:
            self._untrack(fast)

    def _run_local_failed(self, failure: Failure | BaseException, fast: _FastRun,
                          indexes: Sequence[int]) -> None:
        for index in indexes:
            self._run_error(failure, fast, index, self._local_target(fast, index))

    @staticmethod
    def _local_target(fast: _FastRun, index: int) -> Replica:
        plan = fast.plans[index]
        assert plan is not None and plan.local is not None
        return plan.local

    def _run_answer(self, frame: Frame, fast: _FastRun, index: int, target: Replica) -> None:
        """A replica's answer to write C{index} of C{fast}."""
        promoted = fast.promoted
        if promoted and index in promoted:
            write = promoted[index]
            self._write_answer(frame, write, target)
            self._expire_write_if_due(write)
        elif frame.verb == "ACK":
            self._run_acked(((fast, index, target),))
        else:
            reason = frame.fields.get("reason", frame.verb.lower())
            write = self._promote(fast, index)
            self._write_failed(write, target, f"refused ({reason})")
            self._expire_write_if_due(write)

    def _run_batch_acked(self, items: Sequence[tuple[Any, ...]]) -> None:
        """Every record of a C{PUT_BATCH} answer was applied: C{items} as L{_write_run}
        queued them, counted in one loop."""
        self._run_acked(map(_RUN_ACK_OF, items))

    def _run_acked(self, acks: Iterable[tuple[_FastRun, int, Replica]]) -> None:
        """C{(run, index, target)}: C{target} stored write C{index} of C{run}."""
        for fast, index, target in acks:
            promoted = fast.promoted
            if promoted and index in promoted:
                self._run_answer(_ACK, fast, index, target)
                continue
            held = fast.acks[index]
            if held is None:
                fast.acks[index] = [target.node]
            else:
                held.append(target.node)
            left = fast.need[index] - 1
            fast.need[index] = left
            if left == 0:
                fast.run.settled(index, None)
                fast.open -= 1
                if not fast.open and fast.timed:
                    self._untrack(fast)

    def _run_error(self, failure: Failure | BaseException, fast: _FastRun, index: int,
                   target: Replica) -> None:
        promoted = fast.promoted.get(index)
        if promoted is None:
            promoted = self._promote(fast, index)
        self._write_failed(promoted, target, _describe(failure))
        self._expire_write_if_due(promoted)

    def _expire_write_if_due(self, write: _Write) -> None:
        """A write promoted at or after its deadline is in no deadline sweep (its run's
        entry may already have fired): expire it here, as the sweep would have."""
        if not write.timed and not write.settled and self._reactor.seconds() >= write.deadline:
            self._write_deadline(write)

    def _promote(self, fast: _FastRun, index: int) -> _Write:
        """Write C{index} of C{fast} as the L{_Write} the general path would hold by now."""
        plan, key = fast.plans[index], fast.keys[index]
        assert plan is not None and key is not None
        write_id = next(self._ids)
        write = _Write(
            write_id, key, None, "PUT", fast.payloads[index], fast.stored[index],
            plan.required, fast.deadline, plan.fallbacks, dict(plan.slots),
            WriteCoordination(write_id, plan.coordinated, plan.required, fast.deadline),
            fast.run,
        )
        write.run_index = index
        write.tried.update(plan.preference)
        coordination = write.coordination
        for node in fast.acks[index] or ():
            write.acked[node] = plan.slots[node]
            coordination.on_ack(node)
        fast.promoted[index] = write
        if fast.need[index] > 0:
            fast.open -= 1
            if not fast.open and fast.timed:
                self._untrack(fast)
        else:
            write.settled = True  # reported to the run already; what is left is hints
        if self._reactor.seconds() < fast.deadline:
            self._track(write, fast.deadline)
        else:
            write.expired = True
        return write

    def _run_deadline(self, fast: _FastRun) -> None:
        """The run's deadline passed: each write still short of its quorum fails as
        L{_write_deadline} fails a write."""
        for index, left in enumerate(fast.need):
            if left > 0 and fast.plans[index] is not None and index not in fast.promoted:
                write = self._promote(fast, index)
                write.expired = True
                self._write_deadline(write)

    def replicate(
        self, key: bytes, version: Version, consistency: ConsistencyLevel | None = None
    ) -> Deferred[Version]:
        """Write a version minted elsewhere (a counter increment, L{twistkv.node.counters})
        exactly like L{put} writes its own: same targets, stand-ins, hints and quorum."""
        if self._queued:
            self.issue_queued()  # after the runs queued before it
        return _given(self._write(key, version.value, consistency, version.expires_at_ms, None,
                                  tombstone=False, minted=version))

    def _write(
        self, key: bytes, value: bytes, consistency: ConsistencyLevel | None,
        expires_at_ms: int, context: VectorClock | None, tombstone: bool,
        minted: Version | None = None, run: _Run | _Runs | None = None, run_index: int = 0,
    ) -> Deferred[Version] | None:
        """Coordinate one write; its Deferred, or None when it reports to C{run} instead."""
        if len(key) > MAX_KEY_BYTES:
            return self._refuse(KeyTooLong(len(key)), run, run_index)
        self.stats.writes += 1
        ring = self._ring()
        # One hash for the preference list and the fallbacks (the ring memoizes the walk).
        successors = ring.preference_list_for_token(ring.token(key), len(ring.nodes))
        preference = successors[:self.n]
        if consistency is None and preference:
            required = min(self.default_w, len(preference))  # required_replies, inlined
        else:
            required = required_replies(consistency, max(len(preference), 1), self.default_w)
        if self._stopped or not preference or not self._ready():
            refusal = self._not_serving("write", required, len(preference))
            if refusal is not None:
                self.stats.writes_unavailable += 1
                return self._refuse(refusal, run, run_index)
        target_ring = self._pending()
        pending: tuple[str, ...] = ()
        if target_ring is not None:
            pending = tuple(node for node in target_ring.preference_list(key, self.n)
                            if node not in preference)
        if pending:
            # Cassandra's rule: W + (pending replicas) acks among old + pending owners leave
            # at least W acks among the old owners and at least W among the new ones.
            self.stats.pending_writes += 1
            required += len(pending)
        version: Version | None
        if minted is not None:
            version, payload, stored = minted, encode_record(Record((minted,))), _UNSEEN
        elif run is None:
            version, payload, stored = self._mint(key, value, expires_at_ms, context, tombstone,
                                                  True)
        else:
            try:
                version, payload, stored = self._mint(key, value, expires_at_ms, context,
                                                      tombstone, False)
            except Exception as failure:  # noqa: BLE001 - nothing was sent: it fails alone
                return self._refuse(failure, run, run_index)
        fallbacks = successors[self.n:]
        if pending:
            fallbacks = tuple(node for node in fallbacks if node not in pending)
        is_alive = self._is_alive
        coordinated: Sequence[Replica] | ReplicaSet
        if not pending and all(map(is_alive, preference)):
            # plan_write_targets' answer when every owner is alive: the owners themselves,
            # validated and indexed once per preference list.
            plan = self._owner_plans.get(preference)
            if plan is None:
                plan = self._owner_plan(preference)
            coordinated, owner_slots = plan
            targets: Sequence[Replica] = coordinated.replicas
            slots = dict(owner_slots)
        else:
            targets = coordinated = plan_write_targets(preference + pending, fallbacks, is_alive)
            slots = {(r.hinted_for or r.node): r for r in targets}
        deadline = self._reactor.seconds() + self.request_timeout
        write_id = next(self._ids)
        write = _Write(
            write_id, key, version, "DEL" if tombstone else "PUT", payload, stored, required,
            deadline, fallbacks, slots, WriteCoordination(write_id, coordinated, required,
                                                          deadline),
            Deferred() if run is None else run,
        )
        write.run_index = run_index
        if coordinated is not targets:
            for target in targets:
                if target.hinted_for is not None:
                    write.reasons[target.hinted_for] = "down"
        self._track(write, deadline)
        for target in targets:
            self._send_write(write, target)
        return write.result if run is None else None  # type: ignore[return-value]

    @staticmethod
    def _refuse(error: Exception, run: _Run | _Runs | None, run_index: int) -> Deferred[Version] | None:
        """A write refused before anything was sent: a failed Deferred, or reported to C{run}."""
        if run is None:
            return fail(error)
        run.settled(run_index, error)
        return None

    def _owner_plan(self, preference: tuple[str, ...]) -> tuple[ReplicaSet, dict[str, Replica]]:
        """The targets of a write to C{preference} with every owner alive (cached)."""
        plans = self._owner_plans
        if len(plans) >= 4096:  # rings change; keep only what recent writes used
            plans.clear()
        replica_set = ReplicaSet(preference)
        plan = plans[preference] = (replica_set, {r.node: r for r in replica_set.replicas})
        return plan

    def _send_write(self, write: _Write, target: Replica) -> None:
        node = target.node
        write.tried.add(node)
        if node == self.node_id:
            try:
                stored = write.stored
                if target.hinted_for is not None:
                    wait = self.hints.add(target.hinted_for, write.key, (write.minted(),))
                elif stored is not _UNSEEN and (
                    (raw := self.replica.raw(write.key)) is stored or raw == stored
                ):
                    # Still the bytes the version was minted from, which it descends.
                    wait = self.replica.replace(write.key, write.payload, raw)
                else:
                    wait = self.replica.apply(write.key, (write.minted(),),
                                              encoded=write.payload)
            except (StorageError, HintRejected) as error:
                self._write_failed(write, target, _describe(error))
                return
            if wait is None:
                self._write_acked(write, target)
            else:
                wait.addCallbacks(
                    lambda _: self._write_acked(write, target),
                    lambda f: self._write_failed(write, target, _describe(f)),
                )
            return
        address = self._address(node)
        if address is None:
            self._write_failed(write, target, "address unknown")
            return
        timeout = self._remaining(write.deadline)
        if write.fallbacks:
            owner = target.hinted_for or node
            used = write.tried | {r.node for r in write.slots.values()}
            if next_stand_in(owner, write.fallbacks, used, self._is_alive) is not None:
                # Give up early only if a stand-in can take over; otherwise a slow replica
                # may still make the deadline.
                timeout = min(self.replica_timeout, timeout)
        if target.hinted_for is not None:
            frame = Frame(write.verb, 0, {"key": quote(write.key),
                                          "hint_for": quote(target.hinted_for)}, write.payload)
            self._call(address, frame, timeout, self._write_answer, self._write_error, write,
                       target)
            return
        self._put(address, write.verb, write.key, write.payload, timeout, self._on_write_answer,
                  self._on_write_error, write, target)

    def _write_answer(self, frame: Frame, write: _Write, target: Replica) -> None:
        if frame.verb == "ACK":
            self._write_acked(write, target)
        else:
            reason = frame.fields.get("reason", frame.verb.lower())
            self._write_failed(write, target, f"refused ({reason})")

    def _write_error(self, failure: Failure, write: _Write, target: Replica) -> None:
        self._write_failed(write, target, _describe(failure))

    def _write_acked(self, write: _Write, target: Replica) -> None:
        node, hinted_for = target.node, target.hinted_for
        # Each target is its own object (a stand-in gets a new one): identity is the test.
        if write.slots.get(hinted_for or node) is not target:
            return  # a replaced target answering late: the pool drops those, but be safe
        write.acked[node] = target
        if write.reasons:
            write.reasons.pop(node, None)
        if hinted_for is not None:
            self.stats.hinted_acks += 1
        write.coordination.on_ack(node)
        self._settle_write(write)

    def _write_failed(self, write: _Write, target: Replica, reason: str) -> None:
        owner = target.hinted_for or target.node
        if write.slots.get(owner) is not target:
            return
        write.reasons[target.node] = reason
        if self._stopped:
            write.nacked[target.node] = reason
            write.coordination.on_nack(target.node, reason)
            self._settle_write(write)
            return
        if not write.expired:
            used = write.tried | {r.node for r in write.slots.values()}
            stand_in = next_stand_in(owner, write.fallbacks, used, self._is_alive)
            if stand_in is not None:
                replacement = Replica(stand_in, hinted_for=owner)
                write.slots[owner] = replacement
                self._rebuild(write)
                self._send_write(write, replacement)
                return
        if owner != self.node_id and not (target.node == self.node_id and target.hinted_for):
            self._keep_hint(owner, write)
        write.nacked[target.node] = reason
        write.coordination.on_nack(target.node, reason)
        self._settle_write(write)

    def _keep_hint(self, owner: str, write: _Write) -> None:
        """Last resort: no stand-in took the owner's copy, so the coordinator keeps it."""
        try:
            self.hints.add(owner, write.key, (write.minted(),))
        except (StorageError, HintRejected) as error:
            _log.warn("Cannot keep a hint for {owner}: {error}", owner=owner, error=str(error))
            return
        self.stats.coordinator_hints += 1

    def _rebuild(self, write: _Write) -> None:
        """A slot moved to a stand-in: recount the replies against the new target set."""
        coordination = WriteCoordination(
            write.id, write.slots.values(), write.required, write.deadline
        )
        for node in write.acked:
            coordination.on_ack(node)
        for node, reason in write.nacked.items():
            coordination.on_nack(node, reason)
        write.coordination = coordination

    def _write_deadline(self, write: _Write) -> None:
        write.expired = True
        now = max(self._reactor.seconds(), write.deadline)
        write.coordination.on_timeout(now)
        self._settle_write(write)

    def _settle_write(self, write: _Write) -> None:
        outcome = write.coordination.outcome
        if not write.settled:
            if outcome.status is Status.SUCCEEDED:
                write.settled = True
                result = write.result
                if type(result) in _RUN_TYPES:
                    result.settled(write.run_index, None)
                elif not result.called:  # type: ignore[union-attr]
                    result.callback(write.minted())  # type: ignore[union-attr]
            elif outcome.status is Status.FAILED and not self._local_write_pending(write):
                write.settled = True
                self.stats.writes_unavailable += 1
                detail = {n: r for n, r in write.reasons.items() if n not in write.acked}
                for target in write.slots.values():
                    if target.node not in write.acked and target.node not in detail:
                        detail[target.node] = "timed out" if write.expired else "no answer yet"
                # Count the acks now: the coordination froze its outcome when success
                # became impossible, possibly before the local copy was committed.
                error = QuorumUnavailable(
                    "write", len(write.acked), write.required, sorted(write.tried), detail)
                result = write.result
                if type(result) in _RUN_TYPES:
                    result.settled(write.run_index, error)
                elif not result.called:  # type: ignore[union-attr]
                    result.errback(error)  # type: ignore[union-attr]
        if write.timed and (
            write.expired or len(write.acked) + len(write.nacked) >= len(write.slots)
        ):
            self._untrack(write)
            write.expired = True

    def _local_write_pending(self, write: _Write) -> bool:
        """Whether this node's own copy is still being committed (a few ms at most).

        A failed write waits for it so that the error counts it: remote failures can
        arrive synchronously (a peer in backoff) before the local group commit fires.
        """
        if write.expired:
            return False
        return any(
            target.node == self.node_id
            and target.node not in write.acked
            and target.node not in write.nacked
            for target in write.slots.values()
        )

    # -- reads -----------------------------------------------------------------------------

    def get(
        self, key: bytes, consistency: ConsistencyLevel | None = None, *,
        wait_for_all: bool = False,
    ) -> Deferred[ReadResult]:
        """Read C{key} from R replicas; fires with the reconciled L{ReadResult}.

        Replies that arrive after the answer still count for read repair: once every replica
        answered (or the deadline passed), those that returned something stale are sent the
        reconciled record in the background.

        @param wait_for_all: answer only once every replica answered or the deadline passed
            (still succeeding with R), so that C{replies} shows every replica: for C{VERSIONS}.
        @return: fails with L{QuorumUnavailable} or L{KeyTooLong}.
        """
        if self._queued:
            self.issue_queued()  # a read sees the runs queued before it
        try:
            self._check_key(key)
        except KeyTooLong as error:
            return fail(error)
        self.stats.reads += 1
        preference = self._ring().preference_list(key, self.n)
        required = required_replies(consistency, max(len(preference), 1), self.default_r)
        refusal = self._not_serving("read", required, len(preference))
        if refusal is not None:
            self.stats.reads_unavailable += 1
            return fail(refusal)
        deadline = self._reactor.seconds() + self.request_timeout
        read_id = next(self._ids)
        read = _Read(
            key,
            ReadCoordination(read_id, preference, required, deadline,
                             reconcile_versions, replica_is_stale),
            Deferred(),
            wait_for_all,
            read_id,
            deadline,
        )
        self._track(read, deadline)
        # The local replica first: it answers at once, so it always counts.
        for node in sorted(preference, key=lambda node: node != self.node_id):
            if read.coordination.finished:
                break
            self._send_read(read, node, deadline)
        self._settle_read(read)
        return read.result

    def _send_read(self, read: _Read, node: str, deadline: float) -> None:
        coordination = read.coordination
        if node == self.node_id:
            read.tried.add(node)
            try:
                record = self.replica.read(read.key)
            except (StorageError, CorruptRecordError) as error:
                _log.error("Local read of {key!r} failed: {error}", key=read.key,
                           error=str(error))
                coordination.on_failure(node, "storage error")
                return
            coordination.on_reply(node, record.versions if record is not None else ())
            return
        address = self._address(node)
        if not self._is_alive(node) or address is None:
            coordination.on_failure(node, "down")
            return
        read.tried.add(node)
        frame = read.frame
        if frame is None:
            frame = read.frame = Frame("GET", 0, {"key": quote(read.key)})
        self._call(address, frame, self._remaining(deadline), self._read_answer,
                   self._read_error, read, node)

    def _read_answer(self, frame: Frame, read: _Read, node: str) -> None:
        self._feed(read, node, (frame.payload or None) if frame.verb == "VAL" else frame)
        self._settle_read(read)

    def _read_error(self, failure: Failure, read: _Read, node: str) -> None:
        read.coordination.on_failure(node, _describe(failure))
        self._settle_read(read)

    def _read_deadline(self, read: _Read) -> None:
        read.coordination.on_timeout(max(self._reactor.seconds(), read.coordination.deadline))
        self._settle_read(read)

    def _settle_read(self, read: _Read) -> None:
        coordination = read.coordination
        outcome = coordination.outcome
        if not read.result.called:
            if outcome.status is Status.SUCCEEDED and (
                not read.wait_for_all or coordination.finished
            ):
                read.result.callback(ReadResult(
                    read.key,
                    tuple(coordination.reconciled),
                    MappingProxyType({n: tuple(v) for n, v in coordination.replies.items()}),
                    MappingProxyType(dict(coordination.failure_reasons)),
                ))
            elif outcome.status is Status.FAILED:
                self.stats.reads_unavailable += 1
                detail = dict(coordination.failure_reasons)
                expired = self._reactor.seconds() >= coordination.deadline
                for replica in coordination.replicas:
                    if replica.node not in detail and replica.node not in coordination.replies:
                        if replica.node not in read.tried:
                            detail[replica.node] = "not asked"
                        else:
                            detail[replica.node] = "timed out" if expired else "no answer yet"
                read.result.errback(QuorumUnavailable(
                    "read", outcome.replies, coordination.required_replies,
                    sorted(read.tried), detail))
        if coordination.finished and not read.repaired:
            read.repaired = True
            if read.timed:
                self._untrack(read)
            self._repair(read)

    def _repair(self, read: _Read) -> None:
        """Send the reconciled record to every replica that answered something stale."""
        coordination = read.coordination
        reconciled = coordination.reconciled
        if not reconciled:
            return
        targets = coordination.repair_targets
        if not targets:
            return
        payload = encode_record(Record(tuple(reconciled)))
        for target in targets:
            node = target.node
            if node == self.node_id:
                try:
                    wait = self.replica.apply(read.key, reconciled)
                except StorageError:
                    self.stats.read_repair_failures += 1
                    continue
                if wait is None:
                    self.stats.read_repairs += 1
                else:
                    wait.addCallbacks(self._repaired, self._repair_failed, errbackArgs=(node,))
                continue
            address = self._address(node)
            if address is None:
                self.stats.read_repair_failures += 1
                continue
            frame = Frame("PUT", 0, {"key": quote(read.key)}, payload)
            request = self._pool.request(address, frame, self.request_timeout)
            request.addCallbacks(self._repaired, self._repair_failed, errbackArgs=(node,))

    def _repaired(self, answer: object) -> None:
        if isinstance(answer, Frame) and answer.verb != "ACK":
            self.stats.read_repair_failures += 1
        else:
            self.stats.read_repairs += 1

    def _repair_failed(self, failure: Failure, node: str) -> None:
        self.stats.read_repair_failures += 1
        _log.debug("Read repair of {node} failed: {error}", node=node,
                   error=failure.getErrorMessage())

    # -- runs of reads: the short way ------------------------------------------------------

    def get_run(
        self, keys: Sequence[bytes], consistency: ConsistencyLevel | None = None
    ) -> Deferred[list[bytes | None | BaseException]]:
        """Plain reads of several keys (a client's pipelined GETs), each coordinated exactly
        as L{get} would; one Deferred for all of them.

        Once every read has settled it fires with one entry per key, in order: the live
        value (what C{ReadResult.live} gives), None when the key is absent, deleted or
        expired, or the error L{get} would have failed with.
        """
        if self._queued:
            self.issue_queued()  # a read sees the runs queued before it
        run = _ReadRun(len(keys))
        if not keys:
            run.deferred.callback([])
        elif self._stopped or self._get_many is None or not self._ready():
            for index, key in enumerate(keys):
                self._read_one(run, index, key, consistency)
        else:
            self._read_run(keys, consistency, run)
        return run.deferred

    def _read_one(self, run: _ReadRun, index: int, key: bytes,
                  consistency: ConsistencyLevel | None) -> None:
        """Read C{index} of C{run} through L{get}."""
        self.get(key, consistency).addCallbacks(
            self._read_one_done, self._read_one_failed,
            callbackArgs=(run, index), errbackArgs=(run, index))

    def _read_one_done(self, result: ReadResult, run: _ReadRun, index: int) -> None:
        version = result.live(self.now_ms())
        run.settled(index, None if version is None else version.value)

    @staticmethod
    def _read_one_failed(failure: Failure, run: _ReadRun, index: int) -> None:
        run.settled(index, failure.value)

    def _read_plan(
        self, preference: tuple[str, ...], consistency: ConsistencyLevel | None
    ) -> _ReadPlan | None:
        """The plan of a run's reads of keys owned by C{preference}, or None when they must
        go the general way (an owner down or of unknown address, no owner at all)."""
        if not preference or not all(map(self._is_alive, preference)):
            return None
        me = self.node_id
        remote = []
        for node in preference:
            if node != me:
                address = self._address(node)
                if address is None:
                    return None
                remote.append((node, address))
        if consistency is None:
            required = min(self.default_r, len(preference))
        else:
            required = required_replies(consistency, len(preference), self.default_r)
        return _ReadPlan(preference, required, me in preference, tuple(remote),
                         self.request_timeout)

    def _read_run(
        self, keys: Sequence[bytes], consistency: ConsistencyLevel | None, run: _ReadRun
    ) -> None:
        """L{get_run}'s reads, each coordinated as L{get} would, for less per read.

        While every owner of a key is alive, this node's copy is read first and the other
        owners are asked through the pool's C{get_many} (one C{GET_BATCH} per peer and
        turn); the replies are counted in L{_FastRead}. Keys with an owner down, and
        too-long keys, take L{get}.
        """
        ring = self._ring()
        now = self._reactor.seconds()
        self._check_plans(ring, now)
        plans, planned = self._plans_of(self._read_plans, consistency)
        deadline = now + self.request_timeout
        fast = _FastRead(next(self._ids), run, deadline, len(keys))
        answer, error = self._on_read_run_answer, self._on_read_run_error
        outgoing: dict[str, list[tuple[object, ...]]] = {}
        me = self.node_id
        n = self.n
        vnode_of = ring.vnode_of
        hashed = len(ring.nodes) > n  # else every key's owners are every member (_ONE_PLAN)
        raw = self.replica.raw
        count = 0
        for index, key in enumerate(keys):
            if len(key) > MAX_KEY_BYTES:
                run.settled(index, KeyTooLong(len(key)))
                continue
            if not key:  # a GET_BATCH carries keys of 1.. bytes: the empty key goes alone
                self._read_one(run, index, key, consistency)
                continue
            vnode = vnode_of(key) if hashed else _ONE_PLAN
            plan = plans.get(vnode, _UNSEEN)
            if plan is _UNSEEN:
                preference = ring.preference_list(key, n)
                plan = planned.get(preference, _UNSEEN)
                if plan is _UNSEEN:
                    plan = planned[preference] = self._read_plan(preference, consistency)
                plans[vnode] = plan
            if plan is None:
                self._read_one(run, index, key, consistency)
                continue
            assert isinstance(plan, _ReadPlan)
            count += 1
            fast.keys[index] = key
            fast.plans[index] = plan
            fast.need[index] = plan.required
            fast.left[index] = len(plan.preference)
            fast.open += 1
            if plan.local:
                try:
                    record = raw(key)
                except StorageError as failure:
                    self._read_run_error(failure, fast, index, me)
                else:
                    self._read_run_answer(record, fast, index, me)
            for node, address in plan.remote:
                items = outgoing.get(address)
                if items is None:
                    items = outgoing[address] = []
                items.append((key, plan.timeout, answer, error, fast, index, node))
        get_many = self._get_many
        assert get_many is not None
        for address, items in outgoing.items():
            get_many(address, items)
        self.stats.reads += count
        if fast.open:
            self._track(fast, deadline)

    def _read_run_answer(self, answer: bytes | None | Frame, fast: _FastRead, index: int,
                         node: str) -> None:
        """Owner C{node}'s answer to read C{index} of C{fast}: its record's bytes, None when
        it holds nothing, or the frame refusing the read."""
        promoted = fast.promoted
        if promoted and index in promoted:
            self._feed_promoted(promoted[index], node, answer)
            return
        if isinstance(answer, Frame):
            self._feed_promoted(self._promote_read(fast, index), node, answer)
            return
        first = fast.first[index]
        if first is _UNSEEN:
            fast.first[index] = answer
        elif answer != first:
            self._feed_promoted(self._promote_read(fast, index), node, answer)
            return
        need = fast.need[index] - 1
        if need == 0:
            try:
                value = self._live_value(answer)
            except CorruptRecordError:
                # The general path says which replica sent what.
                self._feed_promoted(self._promote_read(fast, index), node, answer)
                return
            fast.run.settled(index, value)
        fast.need[index] = need
        repliers = fast.repliers[index]
        if repliers is None:
            fast.repliers[index] = [node]
        else:
            repliers.append(node)
        left = fast.left[index] - 1
        fast.left[index] = left
        if not left:
            fast.open -= 1
            if not fast.open and fast.timed:
                self._untrack(fast)

    def _read_run_error(self, failure: Failure | BaseException, fast: _FastRead, index: int,
                        node: str) -> None:
        read = fast.promoted.get(index)
        if read is None:
            read = self._promote_read(fast, index)
        if node == self.node_id:
            error = failure.value if isinstance(failure, Failure) else failure
            _log.error("Local read of {key!r} failed: {error}", key=read.key, error=str(error))
            read.coordination.on_failure(node, "storage error")
        else:
            read.coordination.on_failure(node, _describe(failure))
        self._expire_if_due(read)
        self._settle_read(read)

    def _live_value(self, record: bytes | None) -> bytes | None:
        """What a plain GET answers for a key whose replicas all hold C{record}."""
        if record is None:
            return None
        plain = sole_writer_value(record)
        if plain is not None:
            value, expires_at_ms, tombstone = plain
            if tombstone or (expires_at_ms and expires_at_ms <= self.now_ms()):
                return None
            return value
        versions = reconcile_versions(decode_record(record).versions)
        version = live_value(Record(tuple(versions)), self.now_ms())
        return None if version is None else version.value

    def _promote_read(self, fast: _FastRead, index: int) -> _Read:
        """Read C{index} of C{fast} as the L{_Read} the general path would hold by now, fed
        the replies it had."""
        plan, key = fast.plans[index], fast.keys[index]
        assert plan is not None and key is not None
        read_id = next(self._ids)
        answered = fast.need[index] <= 0
        read = _Read(
            key,
            ReadCoordination(read_id, plan.preference, plan.required, fast.deadline,
                             reconcile_versions, replica_is_stale),
            succeed(None) if answered else Deferred(),  # type: ignore[arg-type]
            False,
            read_id,
            fast.deadline,
        )
        read.tried.update(plan.preference)
        if not answered:
            read.result.addCallbacks(self._read_one_done, self._read_one_failed,
                                     callbackArgs=(fast.run, index),
                                     errbackArgs=(fast.run, index))
        fast.promoted[index] = read
        first = fast.first[index]
        for node in fast.repliers[index] or ():
            self._feed(read, node, first)  # type: ignore[arg-type]
        if fast.left[index] > 0:
            fast.open -= 1
            if not fast.open and fast.timed:
                self._untrack(fast)
        if self._reactor.seconds() < fast.deadline:
            self._track(read, fast.deadline)
        return read

    def _feed(self, read: _Read, node: str, answer: bytes | None | Frame) -> None:
        """Count owner C{node}'s answer in C{read}: its record's bytes, None (it holds
        nothing) or the frame refusing the read. This node's own copy counts as
        L{_send_read} counts it (a damaged one is a storage error here)."""
        coordination = read.coordination
        if isinstance(answer, Frame):
            reason = answer.fields.get("reason", answer.verb.lower())
            coordination.on_failure(node, f"refused ({reason})")
            return
        try:
            versions = decode_record(answer).versions if answer is not None else ()
        except CorruptRecordError as error:
            if node == self.node_id:
                _log.error("Local read of {key!r} failed: {error}", key=read.key,
                           error=str(error))
                coordination.on_failure(node, "storage error")
            else:
                _log.warn("Replica {node} sent a corrupt record: {error}", node=node,
                          error=str(error))
                coordination.on_failure(node, "sent a corrupt record")
            return
        coordination.on_reply(node, versions)

    def _feed_promoted(self, read: _Read, node: str, answer: bytes | None | Frame) -> None:
        self._feed(read, node, answer)
        self._expire_if_due(read)
        self._settle_read(read)

    def _expire_if_due(self, read: _Read) -> None:
        """A read promoted at or after its deadline is in no deadline sweep (its run's
        entry may already have fired): expire it here, as the sweep would have."""
        if not read.timed and self._reactor.seconds() >= read.deadline:
            read.coordination.on_timeout(read.deadline)

    def _read_run_deadline(self, fast: _FastRead) -> None:
        """The run's deadline passed: each read still waiting for a reply is promoted and
        expires as L{_read_deadline} expires a read."""
        for index, left in enumerate(fast.left):
            if left > 0 and fast.plans[index] is not None and index not in fast.promoted:
                self._read_deadline(self._promote_read(fast, index))

    # -- the replica side: requests from peers ---------------------------------------------

    def handle(self, peer_node_id: str, frame: Frame) -> Frame | Deferred[Frame | None] | None:
        """The L{twistkv.node.peer.RequestHandler} for L{REPLICA_VERBS} (§5.2)."""
        verb = frame.verb
        if self._stopped:
            return _nack("shutting_down", f"{self.node_id} is shutting down")
        served = self.stats.served
        served[verb] = served.get(verb, 0) + 1
        if verb == "PUT_BATCH":
            return self._handle_batch(frame)
        if verb == "GET_BATCH":
            return self._handle_get_batch(frame)
        try:
            key = unquote(frame.fields["key"])
            hint_for = (unquote_text(frame.fields["hint_for"])
                        if "hint_for" in frame.fields else None)
        except KeyError:
            return error_frame(0, "bad_request", f"{verb} lacks the key field")
        except PeerProtocolError as error:
            return error_frame(0, "bad_request", error.message)
        if verb == "GET":
            # The record as stored, undecoded (as GET_BATCH sends it): the coordinator
            # decodes it, and names this replica if it is damaged.
            try:
                raw = self.replica.raw(key)
            except StorageError as error:
                return _nack("storage_error", str(error))
            if raw is None:
                return Frame("VAL", 0)
            return Frame("VAL", 0, {}, raw)
        if verb not in ("PUT", "DEL", "HINT"):
            return error_frame(0, "unknown_verb", f"{verb} is not a replica verb")
        refusal, wait = self._store_record(verb, key, hint_for, frame.payload)
        if refusal is not None:
            reason, message = refusal
            if reason == "bad_request":
                return error_frame(0, "bad_request", message)
            return _nack(reason, message)
        if wait is None:
            return _ack()
        answer: Deferred[Frame | None] = wait.addCallbacks(
            _ack, lambda f: _nack("storage_error", f.getErrorMessage())
        )
        return answer

    def _store_record(
        self, verb: str, key: bytes, hint_for: str | None, payload: bytes
    ) -> tuple[tuple[str, str] | None, Deferred[None] | None]:
        """Apply one received PUT/DEL/HINT record: C{((reason, message), None)} when refused
        (C{bad_request} is the sender's fault), else C{(None, what to wait for)}."""
        if not payload:
            return ("bad_request", f"{verb} carries no record"), None
        if (hint_for is None or hint_for == self.node_id) and (
            verb != "DEL" or payload[3:4] == b"\x01"
        ):
            # The usual replica write: a record of one writer superseding what we hold of it
            # is stored as it came, without decoding and merging (the result is the same).
            try:
                stored = self.replica.raw(key)
            except StorageError as error:
                return ("storage_error", str(error)), None
            if supersedes_sole_writer(stored, payload):
                try:
                    return None, self.replica.replace(key, payload, stored)
                except StorageError as error:
                    return ("storage_error", str(error)), None
        try:
            versions = decode_record(payload).versions
        except CorruptRecordError as error:
            return ("bad_request", f"bad record: {error}"), None
        if not versions:
            return ("bad_request", f"{verb} carries a record without versions"), None
        if verb == "DEL" and not all(v.tombstone for v in versions):
            return ("bad_request", "DEL carries a live value"), None
        if verb == "HINT" and hint_for != self.node_id:
            return ("not_owner", f"hint for {hint_for!r} delivered to {self.node_id!r}"), None
        try:
            if hint_for is not None and hint_for != self.node_id:
                wait = self.hints.add(hint_for, key, versions)
                self.stats.hints_accepted += 1
            else:
                # Bytes decode_record accepted re-encode to themselves unless a version is a
                # counter (its state has several encodings): store them as they came.
                canonical = all(v.counter is None for v in versions)
                wait = self.replica.apply(key, versions,
                                          encoded=payload if canonical else None)
        except HintRejected as error:
            return ("overloaded", str(error)), None
        except StorageError as error:
            return ("storage_error", str(error)), None
        return None, wait

    def _handle_get_batch(self, frame: Frame) -> Frame:
        """C{GET_BATCH}: each key's record as this replica stores it, undecoded (the
        coordinator decodes what it uses, as it does a C{GET}'s record)."""
        try:
            keys = parse_get_batch(frame)
        except PeerProtocolError as error:
            return error_frame(0, "bad_request", error.message)
        try:
            records = self.replica.raw_many(keys)
        except StorageError as error:
            return _nack("storage_error", str(error))
        return get_batch_answer(records)

    def _handle_batch(self, frame: Frame) -> Frame | Deferred[Frame | None]:
        """C{PUT_BATCH}: each record applied as its own C{PUT}/C{DEL} would be, answered in
        one C{VAL} with an outcome per record (a refused record does not fail the others).

        Records of one writer that supersede what is stored (the usual replica write, see
        L{_store_record}) are stored as they came in one commit per run of them, so a batch
        costs one store write and one durability wait, not one per record. A run ends before
        any record that takes the general path, which must read what the run stored.
        """
        try:
            entries = parse_put_batch(frame)
        except PeerProtocolError as error:
            return error_frame(0, "bad_request", error.message)
        served = self.stats.served
        outcomes: list[str | None] = [None] * len(entries)
        waits: list[tuple[Sequence[int], Deferred[None]]] = []
        replica = self.replica
        raw_of = replica.raw
        #: What is stored for each entry's key when the batch arrived (one store call), and
        #: the keys written since by the general path (read again: their bytes changed).
        prefetched: list[bytes | None] = []
        #: Whether each record supersedes its key's prefetched bytes, checked in one loop
        #: (a key the batch already wrote is checked against what it wrote); None when the
        #: store failed: each record then reads on its own, and one whose read fails too
        #: is answered storage_error alone.
        verdicts: list[bool] | None = None
        try:
            prefetched = replica.raw_many([entry[1] for entry in entries])
        except StorageError:
            pass
        else:
            verdicts = supersedes_sole_writer_run(prefetched, [entry[2] for entry in entries])
        rewritten: set[bytes] = set()
        #: The current run: key -> the record to store (a key's last record supersedes its
        #: earlier ones), and the indexes the run's commit answers for.
        staged: dict[bytes, bytes] = {}
        staged_indexes: list[int] = []
        new_records = 0

        def commit_staged() -> None:
            rewritten.update(staged)  # their prefetched bytes are stale from now on
            try:
                wait = replica.replace_many(list(staged.items()), new_records)
            except StorageError:
                for index in staged_indexes:
                    outcomes[index] = "storage_error"
            else:
                if wait is not None:
                    waits.append((list(staged_indexes), wait))
            staged.clear()
            staged_indexes.clear()

        deletes = [entry[0] for entry in entries].count("DEL")  # the others are PUTs
        if deletes:
            served["DEL"] = served.get("DEL", 0) + deletes
        if deletes < len(entries):
            served["PUT"] = served.get("PUT", 0) + len(entries) - deletes
        for index, (verb, key, payload) in enumerate(entries):
            if payload and (verb != "DEL" or payload[3:4] == b"\x01"):
                stored = staged.get(key)
                if stored is None:
                    if verdicts is None or key in rewritten:
                        try:
                            stored = raw_of(key)
                        except StorageError:
                            outcomes[index] = "storage_error"
                            continue
                        fresh = stored is None
                        supersedes = supersedes_sole_writer(stored, payload)
                    else:
                        fresh = prefetched[index] is None
                        supersedes = verdicts[index]
                else:
                    fresh = False
                    supersedes = supersedes_sole_writer(stored, payload)
                if supersedes:
                    staged[key] = payload
                    staged_indexes.append(index)
                    new_records += fresh
                    continue
            if staged:
                commit_staged()
                new_records = 0
            rewritten.add(key)
            refusal, wait = self._store_record(verb, key, None, payload)
            if refusal is not None:
                outcomes[index] = refusal[0]
            elif wait is not None:
                waits.append(((index,), wait))
        if staged:
            commit_staged()
        if not waits:
            return batch_outcomes_frame(outcomes)
        answer: Deferred[Frame | None] = Deferred()
        remaining = [len(waits)]

        def settled(result: object, indexes: Sequence[int]) -> None:
            if isinstance(result, Failure):
                for index in indexes:
                    outcomes[index] = "storage_error"
            remaining[0] -= 1
            if remaining[0] == 0:
                answer.callback(batch_outcomes_frame(outcomes))

        for indexes, wait in waits:
            wait.addBoth(settled, indexes)
        return answer


# -- hinted handoff -------------------------------------------------------------------------


@dataclass
class HintDeliveryStats:
    """Counters for metrics; they only grow."""

    attempts: int = 0
    delivered: int = 0
    failures: int = 0
    #: Hints dropped undelivered because their owner no longer replicates the key.
    discarded: int = 0


class HintDelivery:
    """Sends stored hints to their owners once those are alive again.

    Every C{interval} seconds (or at once after L{poke}, e.g. when membership sees an owner come
    back), for each owner that has hints, is believed alive and is not already being served: up
    to C{batch} of its hints, oldest first, go out as C{HINT} frames; each is deleted once the
    owner acks it, and kept for the next round otherwise. One batch per owner per round bounds
    the load a returning node receives; a batch fully acknowledged is followed by the next one
    at once, so a large backlog drains without waiting for the timer.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        node_id: str,
        hints: HintStore,
        pool: PeerRequester,
        address_provider: Callable[[str], str | None],
        alive_provider: Callable[[str], bool],
        *,
        interval: float = 1.0,
        batch: int = 64,
        request_timeout: float = 5.0,
        keep_hint: Callable[[str, bytes], bool] = lambda target, key: True,
    ) -> None:
        if not interval > 0 or batch < 1:
            raise ValueError("interval must be positive and batch at least 1")
        self._reactor = reactor
        self._node_id = node_id
        self._hints = hints
        self._pool = pool
        self._address = address_provider
        self._alive = alive_provider
        self.interval = interval
        self.batch = batch
        self.request_timeout = request_timeout
        self._keep = keep_hint
        self.stats = HintDeliveryStats()
        self._busy: set[str] = set()
        self._call: IDelayedCall | None = None
        self._call_at = 0.0
        self.running = False

    def start(self) -> None:
        """Run rounds every C{interval} seconds."""
        self.running = True
        self._schedule(self.interval)

    def stop(self) -> None:
        """Stop starting rounds; deliveries in flight finish on their own."""
        self.running = False
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def poke(self) -> None:
        """Run a round now (an owner came back)."""
        self._schedule(0.0)

    def _schedule(self, delay: float) -> None:
        if not self.running:
            return
        at = self._reactor.seconds() + delay
        if self._call is not None and self._call.active():
            if self._call_at <= at:
                return
            self._call.cancel()
        self._call_at = at
        self._call = self._reactor.callLater(delay, self._round)

    def _round(self) -> None:
        self._call = None
        try:
            self.run_once()
        finally:
            self._schedule(self.interval)

    def run_once(self) -> int:
        """One round: expire old hints, start a batch for each ready owner; returns how many
        hints were sent."""
        self._hints.expire()
        sent = 0
        for target in self._hints.targets():
            if target in self._busy or target == self._node_id or not self._alive(target):
                continue
            address = self._address(target)
            if address is None:
                continue
            batch = self._hints.pending_for(target, self.batch)
            kept = [hint for hint in batch if self._keep(target, hint.key)]
            if len(kept) < len(batch):
                # The owner no longer replicates these keys (a range moved away from it once
                # the write was hinted); the write also went to the new owners.
                for hint in batch:
                    if hint not in kept:
                        self._hints.remove(hint)
                        self.stats.discarded += 1
                batch = kept
            if batch:
                sent += len(batch)
                self._deliver(target, address, batch)
        return sent

    def _deliver(self, target: str, address: str, batch: list[Hint]) -> None:
        self._busy.add(target)
        outstanding = [len(batch)]
        failed = [0]

        def done(_: object = None) -> None:
            outstanding[0] -= 1
            if outstanding[0] == 0:
                self._busy.discard(target)
                if not failed[0] and len(batch) == self.batch:
                    self.poke()

        def answered(frame: Frame, hint: Hint) -> None:
            if frame.verb == "ACK":
                self._hints.remove(hint)
                self.stats.delivered += 1
            else:
                failed[0] += 1
                self.stats.failures += 1
            done()

        def errored(failure: Failure) -> None:
            failed[0] += 1
            self.stats.failures += 1
            _log.debug("Hint delivery to {target} failed: {error}", target=target,
                       error=failure.getErrorMessage())
            done()

        for hint in batch:
            self.stats.attempts += 1
            frame = Frame("HINT", 0, {"key": quote(hint.key), "hint_for": quote(target)},
                          encode_record(hint.record))
            request = self._pool.request(address, frame, self.request_timeout)
            request.addCallbacks(answered, errored, callbackArgs=(hint,))
