"""INCR-family commands in the cluster: PN-counter increments that are never lost once acked.

How an increment travels (docs/consistency.md, "INCR family"; the verb is
docs/peer-protocol.md §5.2 C{INCR}):

 1. The coordinator (any node) picks the key's *acting replica*: the first live node of the
    key's preference list, so one node usually holds all of a key's increments and the
    counter keeps few entries. It sends it C{INCR key delta} (or acts itself, with no
    network hop, when it is that node).
 2. The actor, in one reactor turn, reads its local record, adds C{delta} to its own entry
    (L{twistkv.core.replication.increment_version}) and stores the result in its replica.
    Only the actor ever changes its entry, and it always starts from its own latest local
    state, so the entry only grows.
 3. The actor replicates the new counter version like any write (L{Coordinator.replicate}:
    same targets, stand-ins, hints and quorum) and answers once W replicas, itself
    included, hold it. Concurrent versions of one counter (other actors' increments) are kept
    wherever versions meet, like any concurrent versions, and every read counts them as one
    value (L{twistkv.core.record.live_value}); the next increment supersedes them all.

Retries: an increment is not idempotent (Riak's counters are not either). The coordinator
moves on to the next replica only when the previous one certainly did not apply it: it was
believed down, the request could not be sent, or it answered a refusal sent before applying
(C{not_owner}, C{shutting_down}, C{storage_error}, ...). When a request was sent and no
answer came (timeout, connection lost), the increment may or may not have been applied, and
the client gets an error that says so instead of a silent retry that could count it twice.

Actor ids are C{<node-id>/<epoch>}, the epoch random per process start and renewed before the
first increment under a new ring after the node dropped records it no longer replicated
(L{CounterService.records_dropped}): an actor whose local copy might be older than what it once
published must not continue its old entry.

test-case-name: tests.node.test_counters
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from twistkv.core.counter import CounterError, CounterOverflow
from twistkv.core.peerwire import (
    Frame,
    IncrRequest,
    PeerProtocolError,
    error_frame,
    incr_frame,
    parse_incr,
    quote,
    unquote_text,
)
from twistkv.core.quorum import ConsistencyLevel
from twistkv.core.record import CorruptRecordError, Record, Version, decode_record, encode_record
from twistkv.core.replication import increment_version
from twistkv.core.ring import Ring
from twistkv.core.versioning import ClockSkewError
from twistkv.node.coordinator import (
    MAX_KEY_BYTES,
    Coordinator,
    KeyTooLong,
    PeerRequester,
    QuorumUnavailable,
)
from twistkv.node.peer import PeerBusy, PeerRefused, PeerTimeout, PeerUnavailable
from twistkv.storage.errors import StorageError

__all__ = [
    "COUNTER_VERBS",
    "CounterRefused",
    "CounterService",
    "IncrementUnavailable",
]

_log = Logger()

#: The peer verbs L{CounterService.handle} serves.
COUNTER_VERBS = ("INCR",)

#: NACK reasons an actor sends before touching anything: the next replica may act instead.
_NOT_APPLIED = frozenset({"not_owner", "shutting_down", "not_ready", "storage_error"})

#: Outcomes of a failed increment, for L{IncrementUnavailable}.
NOT_APPLIED = "not applied"
APPLIED = "applied"
UNKNOWN = "unknown"


class CounterRefused(Exception):
    """The actor refused the increment before applying it (C{reason} is the NACK code)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class IncrementUnavailable(QuorumUnavailable):
    """An increment failed; C{outcome} says whether it counts, so that clients never guess.

     - L{NOT_APPLIED}: no replica applied it; retrying is safe.
     - L{APPLIED}: the actor applied it but fewer than W replicas acknowledged; it counts
       and spreads (read repair, hints, anti-entropy); a retry would count it twice.
     - L{UNKNOWN}: a request was sent and no answer came; it may or may not count.
    """

    def __init__(self, outcome: str, acks: int, required: int, tried: list[str],
                 detail: dict[str, str]) -> None:
        self.outcome = outcome
        super().__init__("increment", acks, required, sorted(tried), detail)

    def _message(self) -> str:
        reasons = ", ".join(f"{node} {why}" for node, why in sorted(self.detail.items()))
        suffix = f" ({reasons})" if reasons else ""
        if self.outcome == NOT_APPLIED:
            return (f"UNAVAILABLE increment was not applied: no replica of the key could act "
                    f"on it{suffix}; retrying is safe")
        if self.outcome == APPLIED:
            return (f"UNAVAILABLE increment was applied but reached {self.acks} of "
                    f"{self.required} required replicas{suffix}; it counts and will spread: "
                    "do not retry, a retry counts it twice")
        return (f"UNAVAILABLE increment outcome unknown{suffix}; it may have been applied; "
                "INCR is not idempotent, so a retry may count it twice")


def _nack(reason: str, message: str) -> Frame:
    return Frame("NACK", 0, {"reason": reason, "message": quote(message)})


class CounterService:
    """Both sides of cluster increments: L{increment} coordinates one, L{handle} acts on one
    forwarded by a peer. See the module docstring.

    @param rng: draws the actor epochs; C{SystemRandom} by default.
    @param forward_timeout: seconds the coordinator waits for the actor's answer; the actor
        itself answers within its coordinator's request timeout, so the default is twice that.
    """

    def __init__(
        self,
        coordinator: Coordinator,
        *,
        pool: PeerRequester,
        ring_provider: Callable[[], Ring],
        alive_provider: Callable[[str], bool],
        address_provider: Callable[[str], str | None],
        ready_provider: Callable[[], bool],
        rng: random.Random | None = None,
        forward_timeout: float | None = None,
    ) -> None:
        self._coordinator = coordinator
        self._pool = pool
        self._ring = ring_provider
        self._alive = alive_provider
        self._address = address_provider
        self._ready = ready_provider
        # Not the runtime's seeded generator: drawing from it would shift every later draw
        # (SWIM, backoff) and so change seeded simulations that never touch a counter.
        self._rng = rng if rng is not None else random.SystemRandom()
        self.node_id = coordinator.node_id
        self.forward_timeout = (2 * coordinator.request_timeout if forward_timeout is None
                                else forward_timeout)
        self.actor = ""
        self.renew_epoch()
        #: The ring under which this node last dropped records it did not replicate.
        self._dropped_under: Ring | None = None
        self._stopped = False
        #: increments coordinated, acted on (here, for any coordinator), refused, failed.
        self.stats = {"increments": 0, "increments_acted": 0, "increments_failed": 0,
                      "increments_forwarded": 0}

    def renew_epoch(self) -> None:
        """Act under a fresh actor id from now on (the local copy may have lost state)."""
        self.actor = f"{self.node_id}/{self._rng.getrandbits(32):08x}"

    def records_dropped(self, ring: Ring) -> None:
        """This node deleted records it does not replicate under C{ring} (rebalancing).

        A dropped key can only come back here under another ring, possibly as an older copy
        than what this node published, so the epoch is renewed before the first increment
        under a different ring; one renewal per ring change, not per dropped batch.
        """
        if self._dropped_under is not None and self._dropped_under is not ring:
            self.renew_epoch()
        self._dropped_under = ring

    def shutdown(self) -> None:
        """Refuse to act from now on (the node stops)."""
        self._stopped = True

    # -- the actor side ----------------------------------------------------------------------

    def act(self, key: bytes, delta: int, consistency: ConsistencyLevel | None
            ) -> Deferred[Version]:
        """Apply C{delta} to this node's entry of C{key}'s counter and replicate the result.

        Fires with the stored counter version once W replicas hold it. Fails with
        L{CounterRefused} (nothing applied), L{CounterError} (the client's error, nothing
        applied) or L{QuorumUnavailable} (applied here, below W).
        """
        coordinator = self._coordinator
        if self._stopped:
            return fail(CounterRefused("shutting_down", f"{self.node_id} is shutting down"))
        if not self._ready():
            return fail(CounterRefused("not_ready", f"{self.node_id} has not joined yet"))
        ring = self._ring()
        if self.node_id not in ring.preference_list(key, coordinator.n):
            return fail(CounterRefused("not_owner", f"{self.node_id} does not replicate the key"))
        if self._dropped_under is not None and self._dropped_under is not ring:
            self.renew_epoch()
            self._dropped_under = None
        coordinator.issue_queued()  # the client's SETs queued before this increment first
        replica = coordinator.replica
        try:
            record = replica.read(key)
            version = increment_version(record, self.actor, delta, self.node_id,
                                        self._stamp(record), coordinator.now_ms())
            # Stored here first, so that this node's entry is never published anywhere
            # before it is in its own replica (the next increment starts from it).
            replica.apply(key, (version,))
        except CounterError as error:
            return fail(error)
        except (StorageError, CorruptRecordError) as error:
            return fail(CounterRefused("storage_error", str(error)))
        self.stats["increments_acted"] += 1
        return coordinator.replicate(key, version, consistency)

    def _stamp(self, record: Record | None) -> int:
        """A fresh HLC timestamp above every version the increment supersedes, so that the
        counter is also the last-writer winner over them (as L{Coordinator} does)."""
        hlc = self._coordinator.hlc
        wall = self._coordinator.now_ms()
        newest = max((v.hlc for v in record.versions), default=0) if record else 0
        try:
            return hlc.observe(newest, wall) if newest else hlc.tick(wall)
        except ClockSkewError:
            return hlc.tick(wall)

    def handle(self, peer_node_id: str, frame: Frame) -> Frame | Deferred[Frame | None]:
        """The request handler for C{INCR} (docs/peer-protocol.md §5.2)."""
        try:
            request = parse_incr(frame)
        except PeerProtocolError as error:
            return error_frame(0, error.code, error.message)
        consistency = (ConsistencyLevel(request.consistency)
                       if request.consistency is not None else None)
        answer: Deferred[Frame | None] = self.act(request.key, request.delta, consistency
                                                  ).addCallbacks(_value_frame, self._refusal)
        return answer

    @staticmethod
    def _refusal(failure: Failure) -> Frame:
        error = failure.value
        if isinstance(error, CounterRefused):
            return _nack(error.reason, str(error))
        if isinstance(error, CounterError):
            return _nack("overflow" if isinstance(error, CounterOverflow) else "not_integer",
                         str(error))
        if isinstance(error, QuorumUnavailable):
            # The message is the replicas that did not count, for the coordinator's error.
            reasons = ", ".join(f"{node} {why}" for node, why in sorted(error.detail.items()))
            return Frame("NACK", 0, {"reason": "unavailable", "message": quote(reasons or "-"),
                                     "acks": str(error.acks), "required": str(error.required)})
        _log.failure("INCR failed unexpectedly", failure)
        return _nack("internal_error", failure.getErrorMessage())

    # -- the coordinator side ----------------------------------------------------------------

    def increment(self, key: bytes, delta: int,
                  consistency: ConsistencyLevel | None = None) -> Deferred[int]:
        """INCRBY: fires with the counter's value after C{delta}, as the actor saw it.

        Fails with L{IncrementUnavailable} (its C{outcome} says whether it counts),
        L{CounterError} (the key holds no integer, or it would overflow) or L{KeyTooLong}.
        """
        if len(key) > MAX_KEY_BYTES:
            return fail(KeyTooLong(len(key)))
        self.stats["increments"] += 1
        coordinator = self._coordinator
        required = coordinator.default_w if consistency is None else consistency.required(
            coordinator.n)
        if self._stopped or not self._ready():
            why = "is shutting down" if self._stopped else "has not joined the cluster yet"
            return self._failed(NOT_APPLIED, 0, required, [], {self.node_id: why})
        preference = self._ring().preference_list(key, coordinator.n)
        candidates = [node for node in preference
                      if node == self.node_id or self._alive(node)]
        detail = {node: "down" for node in preference if node not in candidates}
        result: Deferred[int] = Deferred()
        self._try(key, delta, consistency, candidates, detail, [], required, result)
        return result

    def _failed(self, outcome: str, acks: int, required: int, tried: list[str],
                detail: dict[str, str]) -> Deferred[Any]:
        self.stats["increments_failed"] += 1
        return fail(IncrementUnavailable(outcome, acks, required, tried, detail))

    def _try(self, key: bytes, delta: int, consistency: ConsistencyLevel | None,
             candidates: list[str], detail: dict[str, str], tried: list[str], required: int,
             result: Deferred[int]) -> None:
        """Ask the next candidate to act; on a certain refusal move on, else settle."""

        def give_up(outcome: str, acks: int = 0) -> None:
            self._failed(outcome, acks, required, tried, detail).addErrback(result.errback)

        def next_one(node: str, why: str) -> None:
            detail[node] = why
            self._try(key, delta, consistency, candidates, detail, tried, required, result)

        if not candidates:
            give_up(NOT_APPLIED)
            return
        node = candidates.pop(0)
        tried.append(node)
        if node == self.node_id:
            acting = maybeDeferred(self.act, key, delta, consistency)

            def local_failed(failure: Failure) -> None:
                error = failure.value
                if isinstance(error, CounterRefused):
                    next_one(node, f"refused ({error.reason})")
                elif isinstance(error, QuorumUnavailable):
                    detail.update(error.detail)
                    give_up(APPLIED, error.acks)
                else:
                    result.errback(failure)

            acting.addCallbacks(lambda version: result.callback(int(version.value)),
                                local_failed)
            return
        address = self._address(node)
        if address is None:
            next_one(node, "address unknown")
            return
        self.stats["increments_forwarded"] += 1
        frame = incr_frame(IncrRequest(key, delta, consistency.value if consistency else None))
        request = self._pool.request(address, frame, self.forward_timeout)
        # A request that failed before we return has not left this node: safe to move on.
        sent = not request.called

        def answered(frame: Frame) -> None:
            if frame.verb == "VAL":
                try:
                    (version,) = decode_record(frame.payload).versions
                    value = int(version.value)
                except (CorruptRecordError, ValueError) as error:
                    detail[node] = f"sent a bad answer ({error})"
                    give_up(UNKNOWN)
                    return
                result.callback(value)
                return
            reason = frame.fields.get("reason", frame.verb.lower())
            message = _text(frame.fields.get("message", ""))
            if reason in _NOT_APPLIED:
                next_one(node, f"refused ({reason})")
            elif reason in ("not_integer", "overflow"):
                result.errback(CounterError(message))
            elif reason == "unavailable":
                detail[node] = f"applied it ({message})"
                give_up(APPLIED, _int_field(frame, "acks"))
            else:
                detail[node] = f"refused ({reason})"
                give_up(UNKNOWN)

        def errored(failure: Failure) -> None:
            error = failure.value
            if not sent and isinstance(error, (PeerUnavailable, PeerBusy)):
                next_one(node, "unreachable" if isinstance(error, PeerUnavailable) else "busy")
            elif isinstance(error, PeerRefused):
                next_one(node, f"refused ({error.code})")  # ERROR: the verb was not served
            elif isinstance(error, PeerTimeout):
                detail[node] = "timed out"
                give_up(UNKNOWN)
            else:
                detail[node] = "connection lost" if isinstance(error, PeerUnavailable) else (
                    f"failed ({error})")
                give_up(UNKNOWN)

        request.addCallbacks(answered, errored)


def _value_frame(version: Version) -> Frame | None:
    return Frame("VAL", 0, {}, encode_record(Record((version,))))


def _text(value: str) -> str:
    try:
        return unquote_text(value)
    except PeerProtocolError:
        return value


def _int_field(frame: Frame, name: str) -> int:
    text = frame.fields.get(name, "0")
    return int(text) if text.isdigit() else 0
