"""Dynamo-style quorum coordination for one client request, sans-IO.

The coordinating node sends a write (or read) to the N replicas of a key's
preference list and feeds each reply, refusal and timer firing into one of
these objects; they decide when the client can be answered. They never send
anything or read the clock: the adapter owns the network and the timer.

Rules, for a request to N replicas needing K of them (K = W or R):

  - Only the first reply from each replica counts; replies from nodes outside
    the replica set are ignored.
  - It succeeds as soon as K distinct replicas have answered positively.
  - It fails as soon as success became impossible (more than N - K replicas
    refused) or when the deadline passes while still pending.
  - Once decided, the outcome never changes.

Sloppy quorum: when an owner is down, the preference list skips to the next
healthy node, which stores the write as a hint for the owner
(L{Replica.hinted_for}). As in Dynamo, a stand-in's ack counts towards W:
the write is durable on W nodes and hinted handoff moves it to the owner
later. The outcome reports how many of the acks were hinted, because such a
write is not yet on W of its owners.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType
from typing import Generic, TypeVar

__all__ = [
    "InvalidConsistencyLevel",
    "ConsistencyLevel",
    "Replica",
    "ReplicaSet",
    "Status",
    "FailureReason",
    "WriteOutcome",
    "WriteCoordination",
    "ReadOutcome",
    "ReadCoordination",
]

V = TypeVar("V")


class InvalidConsistencyLevel(ValueError):
    """A consistency level name that is not ONE, QUORUM or ALL."""


class ConsistencyLevel(Enum):
    """How many of the N replicas must answer before the client is answered."""

    ONE = "one"
    QUORUM = "quorum"
    ALL = "all"

    def required(self, n: int) -> int:
        """Replies needed out of C{n} replicas; QUORUM is a strict majority,
        so that any read quorum overlaps any write quorum."""
        if n < 1:
            raise ValueError(f"replication factor must be >= 1, got {n}")
        if self is ConsistencyLevel.ONE:
            return 1
        if self is ConsistencyLevel.QUORUM:
            return n // 2 + 1
        return n

    @classmethod
    def parse(cls, text: str) -> ConsistencyLevel:
        """Parse C{one}/C{quorum}/C{all} in any letter case (RESP, HTTP and CLI input)."""
        try:
            return cls(text.strip().lower())
        except ValueError:
            raise InvalidConsistencyLevel(
                f"unknown consistency level {text!r}: expected ONE, QUORUM or ALL"
            ) from None


@dataclass(frozen=True)
class Replica:
    """One target of a request: a node, possibly standing in for a down owner."""

    node: str
    #: The owner this node stands in for under sloppy quorum; None for an owner.
    hinted_for: str | None = None

    def __post_init__(self) -> None:
        if not self.node:
            raise ValueError("replica node id must not be empty")
        if self.hinted_for == self.node:
            raise ValueError(f"{self.node!r} cannot hold a hint for itself")


def _replica_set(replicas: Iterable[Replica | str]) -> tuple[Replica, ...]:
    targets = tuple(r if isinstance(r, Replica) else Replica(r) for r in replicas)
    nodes = [r.node for r in targets]
    if len(set(nodes)) != len(nodes):
        raise ValueError(f"replica nodes must be distinct: {nodes}")
    return targets


class ReplicaSet:
    """A validated, immutable set of targets, shared by the requests that go to it.

    A coordinator writing to the same replicas again and again (every key of a range, with
    every owner alive) builds one and passes it to each L{WriteCoordination}, which then
    skips validating and indexing the targets per request.
    """

    __slots__ = ("replicas", "by_node")

    def __init__(self, replicas: Iterable[Replica | str]) -> None:
        self.replicas = _replica_set(replicas)
        self.by_node: Mapping[str, Replica] = MappingProxyType(
            {replica.node: replica for replica in self.replicas})


def _check_required(required: int, replicas: Sequence[Replica], what: str) -> None:
    if not 1 <= required <= len(replicas):
        raise ValueError(f"{what} must be in 1..{len(replicas)}, got {required}")


class Status(Enum):
    """Where a coordinated request stands; only PENDING ever changes."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class FailureReason(Enum):
    """Why a coordinated request failed, so the client error can say so."""

    #: Too many replicas refused or errored for the requirement to be met.
    REFUSED = "refused"
    #: The deadline passed with too few replies.
    TIMEOUT = "timeout"


@dataclass(frozen=True)
class WriteOutcome:
    """A write's state; counts are as of the decision once decided."""

    status: Status
    acks: int
    #: Of C{acks}, how many came from stand-ins holding a hint.
    hinted_acks: int
    nacks: int
    #: Replicas that have neither acked nor refused.
    missing: int
    reason: FailureReason | None = None


class WriteCoordination:
    """Collects acks for one replicated write until W distinct replicas acked."""

    __slots__ = ("request_id", "replicas", "required_acks", "deadline", "_by_node", "_acked",
                 "_nacked", "_hinted", "_outcome")

    def __init__(
        self,
        request_id: int,
        replicas: Iterable[Replica | str] | ReplicaSet,
        required_acks: int,
        deadline: float,
    ) -> None:
        self.request_id = request_id
        if type(replicas) is ReplicaSet:
            self.replicas = replicas.replicas
            self._by_node = replicas.by_node
        else:
            self.replicas = _replica_set(replicas)  # type: ignore[arg-type]
            self._by_node = {replica.node: replica for replica in self.replicas}
        _check_required(required_acks, self.replicas, "required_acks")
        self.required_acks = required_acks
        self.deadline = deadline
        self._acked: dict[str, Replica] = {}
        self._nacked: dict[str, str] = {}
        #: Of the acks, how many came from stand-ins (kept, not recounted on every ack).
        self._hinted = 0
        self._outcome = self._tally()

    @property
    def outcome(self) -> WriteOutcome:
        return self._outcome

    @property
    def nack_reasons(self) -> Mapping[str, str]:
        """Node -> reason for each refusal counted, for the client's error message."""
        return MappingProxyType(self._nacked)

    def on_ack(self, node: str) -> WriteOutcome:
        """A replica durably applied the write."""
        # _counts, inlined: every write sees W or more of these.
        if (
            self._outcome.status is Status.PENDING
            and node not in self._acked
            and node not in self._nacked
        ):
            replica = self._by_node.get(node)
            if replica is not None:
                self._acked[node] = replica
                if replica.hinted_for is not None:
                    self._hinted += 1
                self._outcome = self._tally()
        return self._outcome

    def on_nack(self, node: str, reason: str) -> WriteOutcome:
        """A replica refused or failed the write (NACK, ERROR, or the connection dropped)."""
        if self._counts(node):
            self._nacked[node] = reason
            self._outcome = self._tally()
        return self._outcome

    def on_timeout(self, now: float) -> WriteOutcome:
        """The adapter's timer fired; fails the write if still pending at the deadline."""
        if self._outcome.status is Status.PENDING and now >= self.deadline:
            self._outcome = self._tally(FailureReason.TIMEOUT)
        return self._outcome

    def _counts(self, node: str) -> bool:
        """Whether a reply from C{node} is news: pending, known, first from it."""
        return (
            self._outcome.status is Status.PENDING
            and node in self._by_node
            and node not in self._acked
            and node not in self._nacked
        )

    def _tally(self, timeout: FailureReason | None = None) -> WriteOutcome:
        acks = len(self._acked)
        nacks = len(self._nacked)
        missing = len(self.replicas) - acks - nacks
        # Outcomes are immutable and few (counts bounded by the replica count): share them,
        # since building a frozen dataclass on every ack was a visible cost per write. The
        # key holds only ints (an Enum hashes in Python).
        key = (acks, self._hinted, nacks, missing, self.required_acks, timeout is not None)
        outcome = _WRITE_OUTCOMES.get(key)
        if outcome is None:
            if acks >= self.required_acks:
                status, reason = Status.SUCCEEDED, None
            elif acks + missing < self.required_acks:
                status, reason = Status.FAILED, FailureReason.REFUSED
            elif timeout is not None:
                status, reason = Status.FAILED, timeout
            else:
                status, reason = Status.PENDING, None
            outcome = _WRITE_OUTCOMES[key] = WriteOutcome(status, acks, self._hinted, nacks,
                                                          missing, reason)
        return outcome


_WRITE_OUTCOMES: dict[tuple[int, int, int, int, int, bool], WriteOutcome] = {}


@dataclass(frozen=True)
class ReadOutcome(Generic[V]):
    """A read's state; C{value} is the reconciled answer once it succeeded."""

    status: Status
    replies: int
    #: Replicas that refused or errored.
    failures: int
    #: Replicas that have neither replied nor failed.
    missing: int
    reason: FailureReason | None = None
    #: reconcile(versions from the first R replies); None unless succeeded.
    value: tuple[V, ...] | None = None


class ReadCoordination(Generic[V]):
    """Collects replies for one replicated read, then keeps listening for read repair.

    A reply is the list of versions a replica holds (siblings); an empty list
    means "not found". After R replies the outcome succeeds with
    C{reconcile(every version received so far)}. Replies keep being collected
    until every replica has answered or the deadline passes (L{finished});
    L{repair_targets} then names the replicas whose reply C{is_stale}
    compared with the reconciled set of all replies, to be sent that set.

    @param reconcile: collapses versions into the surviving siblings (with
        vector clocks: drop every version another one descends from).
    @param is_stale: C{is_stale(reply, reconciled)} is True when a replica
        that answered C{reply} lacks something in C{reconciled}.
    """

    def __init__(
        self,
        request_id: int,
        replicas: Iterable[Replica | str],
        required_replies: int,
        deadline: float,
        reconcile: Callable[[list[V]], list[V]],
        is_stale: Callable[[list[V], list[V]], bool],
    ) -> None:
        self.request_id = request_id
        self.replicas = _replica_set(replicas)
        _check_required(required_replies, self.replicas, "required_replies")
        self.required_replies = required_replies
        self.deadline = deadline
        self._reconcile = reconcile
        self._is_stale = is_stale
        self._by_node = {replica.node: replica for replica in self.replicas}
        self._replies: dict[str, list[V]] = {}
        self._failures: dict[str, str] = {}
        self._reconciled: list[V] | None = None  # cache of reconcile(); None when stale
        self._deadline_passed = False
        self._outcome: ReadOutcome[V] = self._tally()

    @property
    def outcome(self) -> ReadOutcome[V]:
        return self._outcome

    @property
    def finished(self) -> bool:
        """No more replies will be counted: all replicas answered or the deadline passed."""
        return self._deadline_passed or len(self._replies) + len(self._failures) == len(
            self.replicas
        )

    @property
    def replies(self) -> Mapping[str, list[V]]:
        """Node -> versions it returned, for every replica that replied."""
        return MappingProxyType(self._replies)

    @property
    def failure_reasons(self) -> Mapping[str, str]:
        """Node -> reason for each replica that refused or errored."""
        return MappingProxyType(self._failures)

    @property
    def reconciled(self) -> list[V]:
        """reconcile() over every version received so far; final once L{finished}."""
        if self._reconciled is None:
            self._reconciled = self._reconcile(
                [version for versions in self._replies.values() for version in versions]
            )
        return list(self._reconciled)

    @property
    def repair_targets(self) -> tuple[Replica, ...]:
        """Replicas that replied with something stale; final once L{finished}.

        Replicas that failed or never replied are not targets: nothing is
        known about them, and anti-entropy or hinted handoff covers them.
        """
        reconciled = self.reconciled
        return tuple(
            self._by_node[node]
            for node, versions in self._replies.items()
            if self._is_stale(list(versions), list(reconciled))
        )

    def on_reply(self, node: str, versions: Sequence[V]) -> ReadOutcome[V]:
        """A replica returned its versions for the key ([] when it has none)."""
        if self._counts(node):
            self._replies[node] = list(versions)
            self._reconciled = None
            self._outcome = self._next_outcome()
        return self._outcome

    def on_failure(self, node: str, reason: str) -> ReadOutcome[V]:
        """A replica refused or failed the read (NACK, ERROR, or the connection dropped)."""
        if self._counts(node):
            self._failures[node] = reason
            self._outcome = self._next_outcome()
        return self._outcome

    def on_timeout(self, now: float) -> ReadOutcome[V]:
        """The adapter's timer fired: at the deadline, stop collecting; fail if pending."""
        if now >= self.deadline:
            self._deadline_passed = True
            if self._outcome.status is Status.PENDING:
                self._outcome = self._tally(FailureReason.TIMEOUT)
        return self._outcome

    def _counts(self, node: str) -> bool:
        return (
            not self.finished
            and node in self._by_node
            and node not in self._replies
            and node not in self._failures
        )

    def _next_outcome(self) -> ReadOutcome[V]:
        if self._outcome.status is not Status.PENDING:
            return self._outcome  # decided: later replies only feed read repair
        return self._tally()

    def _tally(self, timeout: FailureReason | None = None) -> ReadOutcome[V]:
        replies = len(self._replies)
        failures = len(self._failures)
        missing = len(self.replicas) - replies - failures
        value: tuple[V, ...] | None = None
        if replies >= self.required_replies:
            status, reason = Status.SUCCEEDED, None
            value = tuple(self.reconciled)
        elif replies + missing < self.required_replies:
            status, reason = Status.FAILED, FailureReason.REFUSED
        elif timeout is not None:
            status, reason = Status.FAILED, timeout
        else:
            status, reason = Status.PENDING, None
        return ReadOutcome(status, replies, failures, missing, reason, value)
