"""SWIM membership on the reactor: timers, peer frames and event subscribers.

L{MembershipService} drives L{twistkv.core.membership.Membership}: it calls
C{tick} at C{next_deadline()}, turns each C{Send} action into a peer frame,
feeds received SWIM frames to C{receive}, and hands C{MemberEvent}s to
subscribers (the ring, the dashboard). It decides nothing about membership.

The core treats its messages as one-way and matches replies by C{seq}; the
peer protocol (§5.4) carries SWIM_PING, SWIM_PINGREQ and SWIM_SYNC as
requests answered on the same connection. This module bridges the two:

 - an outgoing Ping, PingReq or Sync is a pool request, and its answer
   (SWIM_ACK, SWIM_NACK, SWIM_SYNCACK) is fed back to C{receive};
 - an incoming request parks a Deferred under the key the core's answer will
   carry (the requester's address and C{seq}, or its address for a Sync); the
   core's C{Send} of an Ack, Nack or SyncReply to that address fires it, now
   for a Ping or Sync, once the relayed probe ends for a PingReq;
 - Gossip is a one-way frame.

test-case-name: tests.node.test_gossip
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from twistkv.core.membership import (
    VERBS,
    Ack,
    Action,
    Gossip,
    MemberEvent,
    Membership,
    MembershipDecodeError,
    MemberState,
    Message,
    Nack,
    Ping,
    PingReq,
    Send,
    Sync,
    SyncReply,
    decode,
    encode,
)
from twistkv.core.peerwire import Frame, error_frame, quote
from twistkv.node.peer import PeerClientPool

__all__ = ["MembershipService", "MemberEventSubscriber"]

_log = Logger()

#: Called with every change of our view of the cluster, in order.
MemberEventSubscriber = Callable[[MemberEvent], None]

_REQUEST_VERBS = frozenset({"SWIM_PING", "SWIM_PINGREQ", "SWIM_SYNC"})
_ANSWER_VERBS = frozenset({"SWIM_ACK", "SWIM_NACK", "SWIM_SYNCACK"})
#: Shortest gap between two ticks, so that a deadline the core failed to move cannot spin.
_MIN_TICK_GAP = 0.001

_AnswerKey = tuple[str, int]  # (requester address, seq) for Ack/Nack


def _refusal(reason: str, message: str) -> Frame:
    return Frame("NACK", 0, {"reason": reason, "message": quote(message)})


class MembershipService(Service):
    """Runs one node's SWIM membership; see the module docstring.

    Route the membership verbs (L{twistkv.core.membership.VERBS}) to
    L{handle}, start the service to join through C{seeds}, stop it to leave.
    """

    name = "membership"

    def __init__(
        self,
        reactor: IReactorTime,
        membership: Membership,
        pool: PeerClientPool,
        seeds: Sequence[str] = (),
        *,
        sync_timeout: float | None = None,
    ) -> None:
        """
        @param pool: outgoing peer connections; its handshake node id must be
            C{membership.self_id}, since the node id a peer proves in HELLO is
            what membership trusts as a message's sender.
        @param sync_timeout: how long a push-pull sync may take (full state
            both ways); defaults to the pool's request timeout.
        """
        self._reactor = reactor
        self.membership = membership
        self._pool = pool
        self._seeds = tuple(seeds)
        self._sync_timeout = sync_timeout
        self._subscribers: list[MemberEventSubscriber] = []
        self._answers: dict[_AnswerKey, Deferred[Frame | None]] = {}
        self._sync_answers: dict[str, deque[Deferred[Frame | None]]] = {}
        self._timer: IDelayedCall | None = None
        self._timer_at = math.inf
        self._last_tick = -math.inf
        self._halted = False

    # -- subscribers -------------------------------------------------------------------------

    def subscribe(self, subscriber: MemberEventSubscriber) -> Callable[[], None]:
        """Call C{subscriber} with every future L{MemberEvent}; returns an unsubscribe."""
        self._subscribers.append(subscriber)
        return lambda: self._subscribers.remove(subscriber)

    def _publish(self, event: MemberEvent) -> None:
        _log.info("Member {node} {old} -> {new} (incarnation {incarnation})",
                  node=event.node_id, old=event.old_state.value if event.old_state else "new",
                  new=event.new_state.value if event.new_state else "forgotten",
                  incarnation=event.incarnation)
        if event.new_state is MemberState.ALIVE and event.node_id != self.membership.self_id:
            member = self.membership.get(event.node_id)
            if member is not None:
                # Better news than the pool's backoff timer: dial it on the next probe.
                self._pool.forget_failures(member.address)
        for subscriber in list(self._subscribers):
            try:
                subscriber(event)
            except Exception:
                _log.failure("Membership subscriber {subscriber!r} failed",
                             subscriber=subscriber)

    # -- lifecycle ---------------------------------------------------------------------------

    def startService(self) -> None:
        """Join through the seeds (the core retries until one answers)."""
        super().startService()
        self._halted = False
        self.perform(self.membership.join(self._seeds, self._now()))

    def stopService(self) -> Deferred[None] | None:
        """Announce that we leave; the farewell gossip is queued on the pool."""
        if not self._halted:
            self.perform(self.membership.leave(self._now()))
        self.halt()
        super().stopService()
        return None

    def halt(self) -> None:
        """Stop all activity without announcing anything, as a crash would.

        Peers will suspect, then declare us dead. Used by tests that simulate
        crashes, and by a node that must stop without a clean shutdown.
        """
        self._halted = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer, self._timer_at = None, math.inf
        answers = list(self._answers.values())
        answers += [d for queue in self._sync_answers.values() for d in queue]
        self._answers.clear()
        self._sync_answers.clear()
        for answer in answers:
            answer.callback(_refusal("shutting_down", "this node stopped its membership"))

    # -- incoming frames ---------------------------------------------------------------------

    def handle(self, peer_node_id: str, frame: Frame) -> Frame | Deferred[Frame | None] | None:
        """The L{twistkv.node.peer.RequestHandler} for the membership verbs."""
        if frame.verb not in VERBS or frame.verb in _ANSWER_VERBS:
            return error_frame(0, "unknown_verb", f"{frame.verb} is not a membership request")
        try:
            message = decode(frame.verb, frame.fields, frame.payload)
        except MembershipDecodeError as error:
            _log.warn("Bad {verb} from {peer}: {error}", verb=frame.verb, peer=peer_node_id,
                      error=str(error))
            return error_frame(0, "bad_request", str(error))
        if self._halted or not self.running:
            if frame.verb in _REQUEST_VERBS:
                return _refusal("shutting_down", "membership is not running")
            return None
        answer: Deferred[Frame | None] | None = None
        if isinstance(message, Ping | PingReq):
            key = (message.source_address, message.seq)
            if key in self._answers:
                return error_frame(0, "bad_request", f"seq {message.seq} is already in progress")
            answer = self._answers[key] = Deferred()
        elif isinstance(message, Sync):
            answer = Deferred()
            self._sync_answers.setdefault(message.source_address, deque()).append(answer)
        actions = self.membership.receive(peer_node_id, message, self._now())
        self.perform(actions)
        if answer is None or answer.called:
            return answer
        if isinstance(message, PingReq) and any(
            isinstance(a, Send) and isinstance(a.message, Ping)
            and a.to_address == message.target_address for a in actions
        ):
            return answer  # the relayed probe answers it with an Ack or a Nack
        self._discard(message, answer)
        return _refusal("ignored", f"membership ignored {frame.verb} from {peer_node_id}")

    def _discard(self, message: Message, answer: Deferred[Frame | None]) -> None:
        if isinstance(message, Ping | PingReq):
            self._answers.pop((message.source_address, message.seq), None)
        elif isinstance(message, Sync):
            queue = self._sync_answers.get(message.source_address)
            if queue is not None and answer in queue:
                queue.remove(answer)
                if not queue:
                    del self._sync_answers[message.source_address]

    def _answer_received(self, frame: Frame, address: str) -> None:
        if self._halted or frame.verb not in _ANSWER_VERBS:
            return  # e.g. NACK shutting_down: the core's own timers cover silence
        sender = self._pool.peer_node_id(address)
        if sender is None:
            return
        try:
            message = decode(frame.verb, frame.fields, frame.payload)
        except MembershipDecodeError as error:
            _log.warn("Bad {verb} from {peer}: {error}", verb=frame.verb, peer=address,
                      error=str(error))
            return
        self.perform(self.membership.receive(sender, message, self._now()))

    @staticmethod
    def _request_failed(failure: Failure, address: str, verb: str) -> None:
        # Unanswered probes are SWIM's input, not an error: the core times them out itself.
        _log.debug("{verb} to {peer} failed: {error}", verb=verb, peer=address,
                   error=failure.getErrorMessage())

    # -- the core's actions ------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Started and not halted: membership decisions may be acted on."""
        return bool(self.running) and not self._halted

    def join_through(self, addresses: list[str]) -> None:
        """Join the cluster of any of C{addresses} (the core retries until one answers).

        @raise RuntimeError: this node has left the cluster.
        @raise ValueError: an address is malformed.
        """
        self.perform(self.membership.join(addresses, self._now()))

    def perform(self, actions: list[Action]) -> None:
        """Carry out decisions of the membership core (sends and member events) and re-arm
        the protocol timer. For callers that drive the core themselves: leave, remove, status
        changes, LAN discovery."""
        for action in actions:
            if isinstance(action, MemberEvent):
                self._publish(action)
            else:
                self._send(action)
        self._schedule()

    def _send(self, send: Send) -> None:
        message, address = send.message, send.to_address
        verb, fields, payload = encode(message)
        frame = Frame(verb, 0, fields, payload)
        if isinstance(message, Ack | Nack):
            answer = self._answers.pop((address, message.seq), None)
            if answer is not None:
                answer.callback(frame)
            else:
                _log.debug("No request awaits {verb} seq {seq} for {peer}", verb=verb,
                           seq=message.seq, peer=address)
        elif isinstance(message, SyncReply):
            queue = self._sync_answers.get(address)
            if queue:
                answer = queue.popleft()
                if not queue:
                    del self._sync_answers[address]
                answer.callback(frame)
        elif isinstance(message, Gossip):
            self._pool.send(address, frame)
        else:
            timeout = self._request_timeout(message)
            request = self._pool.request(address, frame, timeout)
            request.addCallbacks(self._answer_received, self._request_failed,
                                 callbackArgs=(address,), errbackArgs=(address, verb))

    def _request_timeout(self, message: Any) -> float | None:
        if isinstance(message, Sync):
            return self._sync_timeout
        # A probe's answer is useless after its period (the core moved on), so the
        # pool need not hold the request any longer.
        config = self.membership.config
        return config.protocol_period * (self.membership.local_health + 1)

    # -- timers ------------------------------------------------------------------------------

    def _now(self) -> float:
        return self._reactor.seconds()

    def _schedule(self) -> None:
        if self._halted or not self.running:
            return
        deadline = max(self.membership.next_deadline(), self._last_tick + _MIN_TICK_GAP)
        timer = self._timer
        if timer is not None and timer.active():
            if self._timer_at <= deadline:
                return  # fires first; the tick reschedules
            timer.cancel()
        self._timer = None
        if math.isinf(deadline):
            return
        self._timer_at = deadline
        self._timer = self._reactor.callLater(max(0.0, deadline - self._now()), self._tick)

    def _tick(self) -> None:
        self._timer, self._timer_at = None, math.inf
        now = self._now()
        self._last_tick = now
        self.perform(self.membership.tick(now))
