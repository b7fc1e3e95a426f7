"""The peer port: Twisted adapters around the sans-IO peer protocol.

L{PeerProtocol} moves bytes between a transport and the codec, handshake and
request matcher of L{twistkv.core.peerwire}; it decides nothing about what a
request means. Requests from the peer go to a I{handler} callable, answers to
our own requests fire the Deferreds that L{PeerProtocol.request} returned.

L{PeerClientPool} keeps one outgoing connection per peer address, opened on
demand, and L{PeerServerFactory} accepts connections on C{--peer-listen}.
Each node therefore usually holds two connections to each peer, one per
direction of requests, as Cassandra does: neither side has to guess which
connection the other prefers, and a reconnect never races a dial from the
other end.

Writes are batched: every frame produced in one reactor turn on one
connection leaves in a single write, flushed at the end of C{dataReceived}
or, outside it, by a C{callLater(0)}; straight to the socket when Twisted
holds nothing for it. A quorum write to three replicas issued by sixteen
pipelined clients costs three writes, not 48. The coordinator's hot path uses
L{PeerClientPool.call}, which reports the answer to callbacks instead of a
Deferred, and L{PeerClientPool.put}, which goes further for replica writes: the
records of one turn to one peer travel as a single C{PUT_BATCH} request, answered
by one frame with an outcome per record, when the peer offered that feature in
its HELLO (docs/peer-protocol.md §5.2.1).

test-case-name: tests.node.test_peer
"""

from __future__ import annotations

import random
import socket
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from operator import itemgetter
from typing import Any, TypeAlias

from twisted.internet.defer import CancelledError, Deferred, DeferredList, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.tcp import Connection
from twisted.logger import Logger
from twisted.python.failure import Failure

from twistkv.core.peerwire import (
    CONNECTION_REQUEST_ID,
    DEFAULT_MAX_PAYLOAD,
    FEATURE_GET_BATCH,
    FEATURE_PUT_BATCH,
    MAX_BATCH_BYTES,
    MAX_LINE,
    MAX_REQUEST_ID,
    NOT_SENT,
    RESPONSE_VERBS,
    VERBS,
    Established,
    Frame,
    FrameDecoder,
    Handshake,
    HandshakeConfig,
    HandshakeFailed,
    HandshakeStep,
    InvalidFrameError,
    PeerProtocolError,
    PendingRequests,
    Role,
    TooManyOutstandingRequests,
    encode_frame,
    error_details,
    error_frame,
    get_batch_frames,
    parse_batch_outcomes,
    parse_get_batch_answer,
    put_batch_frames,
    quote,
)

__all__ = [
    "BatchAnswers",
    "EndpointFactory",
    "PeerBusy",
    "PeerClientPool",
    "PeerError",
    "PeerLimits",
    "PeerProtocol",
    "PeerRefused",
    "PeerServerFactory",
    "PeerTimeout",
    "PeerUnavailable",
    "RequestHandler",
    "VerbRouter",
    "report_put_outcomes",
    "hostname_endpoint_factory",
    "split_address",
]

_log = Logger()

#: C{(peer node id, request frame) -> answer}. The answer's request id is
#: replaced by the request's; None (or a Deferred firing None) sends nothing,
#: for one-way frames such as C{SWIM_GOSSIP}.
RequestHandler: TypeAlias = Callable[[str, Frame], "Frame | Deferred[Frame | None] | None"]
#: Peer address (C{host:port}) -> the endpoint that dials it.
EndpointFactory: TypeAlias = Callable[[str], IStreamClientEndpoint]

_NONCE_BYTES = 16
_INTERNAL_ERROR = "internal_error"
_CONNECTION_DONE = Failure(ConnectionDone())


# -- errors ----------------------------------------------------------------------------------


class PeerError(Exception):
    """A request to a peer did not get a usable answer. C{address} names the peer."""

    def __init__(self, address: str, message: str) -> None:
        super().__init__(message)
        self.address = address


class PeerUnavailable(PeerError):
    """No connection to the peer: connecting failed or is backing off, or it was lost."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(address, f"peer {address} unavailable: {reason}")
        self.reason = reason


class PeerTimeout(PeerError):
    """The peer did not answer within the request's timeout (a late answer is dropped)."""

    def __init__(self, address: str, verb: str, timeout: float) -> None:
        super().__init__(address, f"peer {address} did not answer {verb} within {timeout:g}s")
        self.verb = verb
        self.timeout = timeout


class PeerRefused(PeerError):
    """The peer answered the request with C{ERROR <id>} (e.g. C{unknown_verb})."""

    def __init__(self, address: str, verb: str, code: str, message: str) -> None:
        super().__init__(address, f"peer {address} refused {verb}: {code}: {message}")
        self.verb = verb
        self.code = code
        self.message = message


class PeerBusy(PeerError):
    """We already have as many requests outstanding to the peer as we allow ourselves."""

    def __init__(self, address: str, limit: int) -> None:
        super().__init__(address, f"peer {address} has {limit} requests outstanding already")
        self.limit = limit


# -- limits and helpers ----------------------------------------------------------------------


@dataclass(frozen=True)
class PeerLimits:
    """Per-connection bounds: what one peer can make us hold in memory."""

    #: Our requests awaiting the peer's answer (the sender side of §2's limit).
    max_outstanding: int = 4096
    #: The peer's requests whose handler has not answered yet; more are refused
    #: with C{too_many_requests} (the receiver side of §2's limit).
    max_handler_backlog: int = 4096
    max_line: int = MAX_LINE
    max_payload: int = DEFAULT_MAX_PAYLOAD
    #: Seconds for the HELLO exchange before the connection is abandoned (§7).
    handshake_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.max_outstanding < 1 or self.max_handler_backlog < 1:
            raise ValueError("max_outstanding and max_handler_backlog must be >= 1")
        if not self.handshake_timeout > 0:
            raise ValueError("handshake_timeout must be positive")


def split_address(address: str) -> tuple[str, int]:
    """C{"host:port"} or C{"[v6]:port"} -> C{(host, port)}.

    @raise ValueError: no port, or a port outside 1-65535.
    """
    host, colon, port_text = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"peer address {address!r} is not host:port")
    return host, int(port_text)


def hostname_endpoint_factory(reactor: Any, connect_timeout: float) -> EndpointFactory:
    """The production dialer: a L{HostnameEndpoint} per address (happy eyeballs, DNS)."""

    def endpoint(address: str) -> IStreamClientEndpoint:
        host, port = split_address(address)
        return HostnameEndpoint(reactor, host, port, timeout=connect_timeout)

    return endpoint


def _describe_address(address: IAddress | None) -> str:
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if host is None or port is None:
        return str(address)
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _nack(request_id: int, reason: str, message: str) -> Frame:
    return Frame("NACK", request_id, {"reason": reason, "message": quote(message)})


class VerbRouter:
    """A L{RequestHandler} that sends each verb to the component that owns it.

    The node wires it once (SWIM verbs to membership, replica verbs to the
    keyspace); a known verb nobody registered is answered C{unknown_verb},
    which the spec's §8 lets a sender read as "not supported".
    """

    def __init__(self) -> None:
        self._routes: dict[str, RequestHandler] = {}

    def route(self, verbs: Iterable[str], handler: RequestHandler) -> None:
        """Send requests with any of C{verbs} to C{handler}.

        @raise ValueError: a verb is already routed (two owners is a wiring bug).
        """
        verbs = tuple(verbs)
        for verb in verbs:
            if verb in self._routes:
                raise ValueError(f"verb {verb} is already routed")
        for verb in verbs:
            self._routes[verb] = handler

    def __call__(self, peer_node_id: str, frame: Frame) -> Frame | Deferred[Frame | None] | None:
        handler = self._routes.get(frame.verb)
        if handler is None:
            return error_frame(
                frame.request_id, "unknown_verb", f"{frame.verb} is not implemented by this node"
            )
        return handler(peer_node_id, frame)


# -- the connection --------------------------------------------------------------------------


#: C{(answer or Failure, *args) -> None}: how L{PeerProtocol.call} reports an outcome.
Callback: TypeAlias = Callable[..., object]


class _Outstanding:
    """A request awaiting its answer (a plain slotted class: one is built per request).

    Either C{deferred} (L{PeerProtocol.request}) or C{callback}/C{errback} with C{args}
    (L{PeerProtocol.call}) receives the outcome.
    """

    __slots__ = ("deferred", "verb", "timeout", "callback", "errback", "args")

    def __init__(self, deferred: Deferred[Frame] | None, verb: str, timeout: float,
                 callback: Callback | None = None, errback: Callback | None = None,
                 args: tuple[object, ...] = ()) -> None:
        self.deferred = deferred
        self.verb = verb
        self.timeout = timeout
        self.callback = callback
        self.errback = errback
        self.args = args

    def succeed(self, frame: Frame) -> None:
        if self.deferred is not None:
            self.deferred.callback(frame)
            return
        try:
            self.callback(frame, *self.args)  # type: ignore[misc]
        except Exception:
            _log.failure("Answer callback for {verb} failed", verb=self.verb)

    def fail(self, error: Exception) -> None:
        if self.deferred is not None:
            self.deferred.errback(error)
            return
        try:
            self.errback(Failure(error), *self.args)  # type: ignore[misc]
        except Exception:
            _log.failure("Error callback for {verb} failed", verb=self.verb)


#: Batches one flush sends at most: records put by the callbacks of a batch that failed at
#: once go in the same flush, but a callback that keeps putting cannot hold the reactor.
_BATCH_PASSES = 4
#: What L{PeerProtocol.put} reports for a record its C{PUT_BATCH} answer says was applied.
_BATCH_ACK = Frame("ACK", 0)
#: A record awaiting its C{PUT_BATCH}: verb, key, record, timeout, callback, errback, then
#: the callbacks' extra arguments.
_BatchItem: TypeAlias = tuple[Any, ...]


#: A key awaiting its C{GET_BATCH}: key, timeout, callback, errback, then the callbacks'
#: extra arguments.
_GetItem: TypeAlias = tuple[Any, ...]


class BatchAnswers:
    """A L{PeerProtocol.put} callback that can also hear a whole batch's acks in one call.

    A replicated write costs one callback per replica that applies it; with the records of
    many pipelined writes in one C{PUT_BATCH}, those calls are a visible share of the
    coordinator's time. When every record of a C{PUT_BATCH} answer was applied and every
    item of it has this same callback, C{acked(items)} gets the items in one call instead
    (each C{(verb, key, record, timeout, callback, errback, *args)}, as put). Anything
    else, refusals included, still calls C{answer(frame, *args)} per item.
    """

    __slots__ = ("acked", "answer")

    def __init__(self, answer: Callback, acked: Callable[[Sequence[_BatchItem]], object]
                 ) -> None:
        self.answer = answer
        self.acked = acked

    def __call__(self, frame: Frame, *args: object) -> object:
        return self.answer(frame, *args)


def report_put_outcomes(chunk: Sequence[_BatchItem], outcomes: Sequence[str | None],
                        request_id: int = 0) -> None:
    """Tell each item of a C{PUT_BATCH} its record's outcome (None: applied, else the
    C{NACK} reason), as L{PeerProtocol.put} promises: one C{acked(chunk)} call when every
    record was applied and every item has the same L{BatchAnswers}, else one callback per
    item with an C{ACK} or C{NACK} frame. A callback that raises is logged and the others
    still run. (Public so that test pools report batches exactly as a connection does.)
    """
    first = chunk[0][4] if chunk else None
    if type(first) is BatchAnswers and not any(outcomes) and all(
            [item[4] is first for item in chunk]):
        try:
            first.acked(chunk)
        except Exception:
            _log.failure("Ack callback for a PUT_BATCH failed")
        return
    for item, reason in zip(chunk, outcomes, strict=True):
        answer = (_BATCH_ACK if reason is None
                  else Frame("NACK", request_id, {"reason": reason}))
        try:  # _report, inlined: this loop runs once per replicated write
            item[4](answer, *item[6:])
        except Exception:
            _log.failure("Answer callback for a PUT_BATCH record failed")


class _SharedBatchFrames:
    """C{put_batch_frames}, reusing the frames it made last when the next connection sends
    the same records.

    A coordinator sends each write's record to every other owner, so in the usual turn the
    connections to a key range's owners send the same records, in the same order: encoding
    costs about 0.45 us a record, finding them the same about 0.05 (C{==} on lists of the
    very same objects compares identities). Only equal verbs, keys and records reuse frames,
    so the bytes sent are always those C{put_batch_frames} (with its default limits, the
    only ones senders use) would make. A batch of more than one frame, or of a frame
    above L{MAX_BATCH_BYTES} (one large record), is not kept: an idle node holds at most
    one frame's worth.
    """

    __slots__ = ("_verbs", "_keys", "_records", "_frames")

    _verb_of = itemgetter(0)
    _key_of = itemgetter(1)
    _record_of = itemgetter(2)

    def __init__(self) -> None:
        self._verbs: list[str] = []
        self._keys: list[bytes] = []
        self._records: list[bytes] = []
        self._frames: list[tuple[Frame, int]] = []

    def __call__(self, items: Sequence[_BatchItem]) -> list[tuple[Frame, int]]:
        """The C{PUT_BATCH} frames of C{items} (as L{put_batch_frames}).

        @raise InvalidFrameError: as L{put_batch_frames}.
        """
        records = list(map(self._record_of, items))
        keys = list(map(self._key_of, items))
        verbs = list(map(self._verb_of, items))
        if records == self._records and keys == self._keys and verbs == self._verbs:
            return self._frames
        frames = put_batch_frames(items)
        if len(frames) == 1 and len(frames[0][0].payload) <= MAX_BATCH_BYTES:
            self._verbs, self._keys, self._records, self._frames = verbs, keys, records, frames
        else:
            self._verbs, self._keys, self._records, self._frames = [], [], [], []
        return frames


#: The one L{_SharedBatchFrames} of this process: every connection's batches go through it.
_batch_frames = _SharedBatchFrames()


def _report(callback: Callback, outcome: object, args: tuple[object, ...]) -> None:
    try:
        callback(outcome, *args)
    except Exception:
        _log.failure("Answer callback for a record of a batch failed")


def _get_answered(frame: Frame, item: _GetItem) -> None:
    """A single C{GET}'s answer, reported as L{PeerProtocol.get_many} reports a record."""
    answer: object = (frame.payload or None) if frame.verb == "VAL" else frame
    item[2](answer, *item[4:])


def _get_failed(failure: Failure, item: _GetItem) -> None:
    item[3](failure, *item[4:])


class PeerProtocol(Protocol):
    """One peer connection, either end.

    Lifecycle: handshake (initiator or responder), then frames in both
    directions until either side closes. C{on_established} and C{on_lost}
    let the owner (pool or server factory) follow it without subclassing.
    A peer that breaks the protocol gets C{ERROR 0} and is disconnected;
    one that merely asks for something we lack gets C{ERROR <id>}.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        role: Role,
        config: HandshakeConfig,
        handler: RequestHandler,
        rng: random.Random,
        limits: PeerLimits = PeerLimits(),
        *,
        label: str | None = None,
        on_established: Callable[[PeerProtocol], None] | None = None,
        on_lost: Callable[[PeerProtocol, str], None] | None = None,
    ) -> None:
        """
        @param rng: source of handshake nonces; C{random.SystemRandom()} in
            production (a predictable nonce allows replaying a handshake).
        @param label: how logs and errors name the peer; the dialled address
            for outgoing connections, the remote TCP address otherwise.
        """
        self._reactor = reactor
        self.role = role
        self._config = config
        self._handler = handler
        self._rng = rng
        self._limits = limits
        self.label = label or "?"
        self._on_established = on_established
        self._on_lost = on_lost
        self._decoder = FrameDecoder(limits.max_line, limits.max_payload)
        self._handshake: Handshake | None = None
        #: Who the peer proved to be; None until the handshake succeeds.
        self.peer: Established | None = None
        self._pending = PendingRequests(limits.max_outstanding)
        self._outstanding: dict[int, _Outstanding] = {}
        self._next_id = 0
        self._backlog = 0
        self._out: list[bytes] = []
        #: PUT/DEL records of this turn awaiting their PUT_BATCH (L{put}), each with who
        #: waits for it: C{(verb, key, record, timeout, callback, errback, *args)}.
        self._batch: list[_BatchItem] = []
        #: Keys of this turn awaiting their GET_BATCH (L{get_many}).
        self._gets: list[_GetItem] = []
        #: The plain TCP socket, for L{_flush}'s direct send (None: TLS or a test transport).
        self._socket: socket.socket | None = None
        self._batching = False
        self._flush_call: IDelayedCall | None = None
        self._expiry_call: IDelayedCall | None = None
        self._expiry_at = 0.0
        self._handshake_call: IDelayedCall | None = None
        self._closing = False
        self._lost = False
        self._close_reason: str | None = None
        self._lost_waiters: list[Deferred[None]] = []

    # -- state -------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Whether requests may be sent: established and not closing."""
        return self.peer is not None and not self._closing

    @property
    def outstanding(self) -> int:
        """Our requests on this connection still awaiting an answer."""
        return len(self._outstanding)

    def when_lost(self) -> Deferred[None]:
        """A Deferred that fires once the connection is gone."""
        if self._lost:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._lost_waiters.append(waiter)
        return waiter

    # -- lifecycle ---------------------------------------------------------------------------

    def connectionMade(self) -> None:
        assert self.transport is not None
        # Frames of one turn are already coalesced into one write; Nagle would only
        # hold the next turn's frames back for the peer's delayed ACK.
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            try:
                set_no_delay(True)
            except OSError:
                pass
        if isinstance(self.transport, Connection) and not self.transport.TLS:
            self._socket = self.transport.socket
        if self.label == "?":
            self.label = _describe_address(self.transport.getPeer())
        secret = self._config.secret
        nonce = self._rng.randbytes(_NONCE_BYTES) if secret is not None else None
        self._handshake = Handshake(self.role, self._config, nonce)
        self._handshake_call = self._reactor.callLater(
            self._limits.handshake_timeout, self._handshake_timed_out
        )
        self._batching = True
        try:
            self._apply_step(self._handshake.start())
        finally:
            self._batching = False
            self._flush()

    def connectionLost(self, reason: Failure = _CONNECTION_DONE) -> None:
        self._closing = self._lost = True
        for call in (self._handshake_call, self._expiry_call, self._flush_call):
            if call is not None and call.active():
                call.cancel()
        self._handshake_call = self._expiry_call = self._flush_call = None
        self._out.clear()
        why = self._close_reason or _describe_loss(reason)
        if self.peer is not None:
            _log.info("Peer connection to {peer} ({node}) closed: {why}",
                      peer=self.label, node=self.peer.peer_node_id, why=why)
        outstanding, self._outstanding = self._outstanding, {}
        for request in outstanding.values():
            request.fail(PeerUnavailable(self.label, why))
        self._fail_batch(PeerUnavailable(self.label, why))
        if self._on_lost is not None:
            self._on_lost(self, why)
        waiters, self._lost_waiters = self._lost_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def close(self, reason: str) -> None:
        """Close after sending what is buffered; pending requests fail with C{reason}."""
        if self._closing:
            return
        self._closing = True
        self._close_reason = reason
        self._flush()
        if self.transport is not None:
            self.transport.loseConnection()

    def abort(self, reason: str) -> None:
        """Drop the connection at once (a peer that stopped talking cannot drain a buffer)."""
        if self._lost:
            return
        self._closing = True
        self._close_reason = self._close_reason or reason
        if self.transport is not None:
            self.transport.abortConnection()

    # -- input -------------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self._batching = True
        try:
            try:
                frames = self._decoder.feed(data)
            except PeerProtocolError as error:
                self._protocol_error(error)
                return
            for frame in frames:
                if self._closing:
                    break
                self._frame_received(frame)
        finally:
            self._batching = False
            self._flush()

    def _frame_received(self, frame: Frame) -> None:
        if self.peer is None:
            assert self._handshake is not None
            self._apply_step(self._handshake.receive(frame))
            return
        verb, request_id = frame.verb, frame.request_id
        if verb in RESPONSE_VERBS:
            if verb == "ERROR" and request_id == CONNECTION_REQUEST_ID:
                code, message = error_details(frame)
                _log.warn("Peer {peer} closed the connection: {code}: {message}",
                          peer=self.label, code=code, message=message)
                self.close(f"closed by the peer: {code}: {message}")
            else:
                self._response_received(frame)
        elif verb in ("HELLO", "AUTH"):
            self._protocol_error(PeerProtocolError("bad_hello", f"{verb} after the handshake"))
        elif request_id == CONNECTION_REQUEST_ID:
            self._protocol_error(PeerProtocolError(
                "bad_request_id", f"{verb} uses request id 0, reserved for the connection"))
        elif verb == "PING":
            self._write(Frame("PONG", request_id))
        elif verb not in VERBS:
            self._write(error_frame(request_id, "unknown_verb", f"{verb} is not implemented"))
        else:
            self._request_received(frame)

    def _apply_step(self, step: HandshakeStep) -> None:
        for frame in step.send:
            self._write(frame)
        outcome = step.outcome
        if isinstance(outcome, Established):
            if self._handshake_call is not None and self._handshake_call.active():
                self._handshake_call.cancel()
            self._handshake_call = None
            self.peer = outcome
            _log.info("Peer connection to {peer} ({node}) established as {role}",
                      peer=self.label, node=outcome.peer_node_id, role=self.role.value)
            if self._on_established is not None:
                self._on_established(self)
        elif isinstance(outcome, HandshakeFailed):
            side = "the peer refused us" if outcome.detected_by_peer else "we refused the peer"
            _log.warn("Peer handshake with {peer} failed ({side}): {code}: {message}",
                      peer=self.label, side=side, code=outcome.code, message=outcome.message)
            self.close(f"handshake failed ({side}): {outcome.code}: {outcome.message}")

    def _handshake_timed_out(self) -> None:
        self._handshake_call = None
        _log.warn("Peer handshake with {peer} timed out after {timeout}s",
                  peer=self.label, timeout=self._limits.handshake_timeout)
        self.abort(f"handshake timed out after {self._limits.handshake_timeout:g}s")

    def _protocol_error(self, error: PeerProtocolError) -> None:
        _log.warn("Peer {peer} broke the protocol, closing: {code}: {message}",
                  peer=self.label, code=error.code, message=error.message)
        self._write(error.to_frame())
        self.close(f"protocol error: {error.code}: {error.message}")

    def _request_received(self, frame: Frame) -> None:
        request_id = frame.request_id
        if self._backlog >= self._limits.max_handler_backlog:
            self._write(error_frame(request_id, "too_many_requests",
                                    f"more than {self._limits.max_handler_backlog} requests "
                                    "are awaiting an answer on this connection"))
            return
        assert self.peer is not None
        try:
            answer = self._handler(self.peer.peer_node_id, frame)
        except Exception:
            _log.failure("Handler failed on {verb} from {peer}", verb=frame.verb, peer=self.label)
            self._write(_nack(request_id, _INTERNAL_ERROR, f"{frame.verb} failed on this node"))
            return
        if isinstance(answer, Deferred):
            self._backlog += 1
            answer.addCallbacks(self._answer, self._answer_failed,
                                callbackArgs=(request_id, frame.verb),
                                errbackArgs=(request_id, frame.verb))
        else:
            self._answer(answer, request_id, frame.verb, counted=False)

    def _answer(self, answer: Frame | None, request_id: int, verb: str,
                counted: bool = True) -> None:
        if counted:
            self._backlog -= 1
        if answer is None or self._closing:
            return
        if not isinstance(answer, Frame):
            _log.error("Handler answered {verb} with {answer!r}, not a Frame",
                       verb=verb, answer=answer)
            answer = _nack(request_id, _INTERNAL_ERROR, f"{verb} failed on this node")
        try:
            self._queue(encode_frame(answer, self._limits.max_line, request_id))
        except Exception:
            _log.failure("Cannot send the answer to {verb} from {peer}", verb=verb, peer=self.label)
            self._write(_nack(request_id, _INTERNAL_ERROR, f"{verb} failed on this node"))

    def _answer_failed(self, failure: Failure, request_id: int, verb: str) -> None:
        self._backlog -= 1
        _log.failure("Handler failed on {verb} from {peer}", failure, verb=verb, peer=self.label)
        if not self._closing:
            self._write(_nack(request_id, _INTERNAL_ERROR, f"{verb} failed on this node"))

    def _response_received(self, frame: Frame) -> None:
        if not self._pending.resolve(frame):
            return  # answers a request that timed out or was cancelled (§3): dropped
        request = self._outstanding.pop(frame.request_id)
        if frame.verb == "ERROR":
            code, message = error_details(frame)
            request.fail(PeerRefused(self.label, request.verb, code, message))
        else:
            request.succeed(frame)

    # -- output ------------------------------------------------------------------------------

    def request(self, frame: Frame, timeout: float) -> Deferred[Frame]:
        """Send C{frame} (its request id is replaced) and wait for the answer.

        Fails with L{PeerTimeout} after C{timeout} seconds, L{PeerRefused} on
        an C{ERROR} answer, L{PeerUnavailable} if the connection goes, and
        L{PeerBusy} at once if too many requests are outstanding.
        """
        if self._batch or self._gets:
            self._release_held()
        request = _Outstanding(None, frame.verb, timeout)
        sent = self._send_request(frame, request)
        if isinstance(sent, Exception):
            return fail(sent)
        deferred: Deferred[Frame] = Deferred(lambda _: self._forget(sent))
        request.deferred = deferred
        return deferred

    def call(self, frame: Frame, timeout: float, callback: Callback, errback: Callback,
             *args: object) -> None:
        """Like L{request} without a Deferred: C{callback(answer, *args)} or
        C{errback(Failure, *args)} runs once, possibly before this returns.

        For the coordinator's hot path, where a Deferred and its callback chain cost more
        than the rest of a replica request. Exceptions the callbacks raise are logged.
        """
        if self._batch or self._gets:
            self._release_held()
        request = _Outstanding(None, frame.verb, timeout, callback, errback, args)
        sent = self._send_request(frame, request)
        if isinstance(sent, Exception):
            request.fail(sent)

    def _send_request(self, frame: Frame, request: _Outstanding) -> int | Exception:
        """Queue C{frame} under a fresh id awaited by C{request}: the id, or why not."""
        if not self.ready:
            return PeerUnavailable(self.label, self._close_reason or "not connected")
        request_id = self._allocate_id()
        try:
            data = encode_frame(frame, self._limits.max_line, request_id)
        except InvalidFrameError as error:  # our bug, but the caller should hear of it
            return error
        deadline = self._reactor.seconds() + request.timeout
        try:
            self._pending.register(request_id, deadline)
        except TooManyOutstandingRequests as error:
            return PeerBusy(self.label, error.limit)
        self._outstanding[request_id] = request
        self._queue(data)
        if self._expiry_call is None or deadline < self._expiry_at:
            self._arm_expiry()  # else the armed timer comes first and re-arms itself
        return request_id

    @property
    def batches_puts(self) -> bool:
        """Whether L{put} records travel in C{PUT_BATCH} frames: the peer offered it (§8)."""
        peer = self.peer
        return peer is not None and FEATURE_PUT_BATCH in peer.features

    def put(self, verb: str, key: bytes, record: bytes, timeout: float, callback: Callback,
            errback: Callback, *args: object) -> None:
        """Send one C{PUT} or C{DEL} record; report like L{call}, with an C{ACK} or C{NACK}
        frame as the answer.

        When the peer offered C{put_batch}, the records of one reactor turn leave together
        in C{PUT_BATCH} frames at the turn's flush (one request, one answer, one timeout:
        the shortest of theirs) and each record still gets its own outcome. Otherwise this
        is L{call} with a C{PUT}/C{DEL} frame.
        """
        if not self.batches_puts or not self.ready or not key:
            # (A PUT_BATCH entry's key has 1.. bytes: the empty key travels alone.)
            self.call(Frame(verb, 0, {"key": quote(key)}, record), timeout, callback, errback,
                      *args)
            return
        # One tuple per record kept in flight (not one plus the args): fewer objects for the
        # garbage collector to traverse while the batch awaits its answer.
        self._batch.append((verb, key, record, timeout, callback, errback, *args))
        if not self._batching and self._flush_call is None:
            self._flush_call = self._reactor.callLater(0, self._flush)

    def put_many(self, items: Sequence[_BatchItem]) -> None:
        """L{put} for several records at once: each item is C{(verb, key, record, timeout,
        callback, errback, *args)}, reported exactly as L{put} reports it."""
        if not self.batches_puts or not self.ready or not all([item[1] for item in items]):
            for item in items:
                self.put(*item)
            return
        self._batch.extend(items)
        if not self._batching and self._flush_call is None:
            self._flush_call = self._reactor.callLater(0, self._flush)

    @property
    def batches_gets(self) -> bool:
        """Whether L{get_many} keys travel in C{GET_BATCH} frames: the peer offered it."""
        peer = self.peer
        return peer is not None and FEATURE_GET_BATCH in peer.features

    def get_many(self, items: Sequence[_GetItem]) -> None:
        """Read the records of several keys: each item is C{(key, timeout, callback, errback,
        *args)}. C{callback(answer, *args)} gets the record's bytes (undecoded), None when
        the replica holds nothing for the key, or the C{NACK} frame that refused it;
        C{errback(Failure, *args)} as for L{call}. Each runs once per item.

        When the peer offered C{get_batch}, the keys of one reactor turn leave together in
        C{GET_BATCH} frames at the turn's flush (§5.2.2); otherwise each is one C{GET}.
        """
        if not self.batches_gets or not self.ready or not all([item[0] for item in items]):
            # (A GET_BATCH key has 1.. bytes: a run with the empty key goes one by one.)
            for item in items:
                self._get_one(item)
            return
        if self._batch:
            # Records written before these reads (and keys read before those) go first,
            # so that held keys are always older than held records (L{_release_held}).
            self._release_held()
        self._gets.extend(items)
        if not self._batching and self._flush_call is None:
            self._flush_call = self._reactor.callLater(0, self._flush)

    def _get_one(self, item: _GetItem) -> None:
        self.call(Frame("GET", 0, {"key": quote(item[0])}), item[1], _get_answered,
                  _get_failed, item)

    def _send_gets(self) -> None:
        """Turn this turn's L{get_many} keys into C{GET_BATCH} requests (in L{_flush})."""
        items, self._gets = self._gets, []
        try:
            frames = get_batch_frames(items)
        except InvalidFrameError as error:  # our bug; the callers should hear of it
            self._gets_failed(Failure(error), items)
            return
        self._send_chunks(frames, items, 1, self._gets_answered, self._gets_failed)

    def _gets_answered(self, frame: Frame, chunk: list[_GetItem]) -> None:
        if frame.verb != "VAL":
            # The whole batch refused (a NACK such as shutting_down): the same for each.
            for item in chunk:
                _report(item[2], frame, item[4:])
            return
        try:
            records = parse_get_batch_answer(frame, len(chunk))
        except PeerProtocolError as error:
            self._gets_failed(Failure(PeerRefused(self.label, "GET_BATCH", error.code,
                                                  error.message)), chunk)
            return
        for item, record in zip(chunk, records, strict=True):
            if record is NOT_SENT:  # left out to bound the answer: ask for it alone
                self._get_one(item)
                continue
            try:
                item[2](record, *item[4:])
            except Exception:
                _log.failure("Answer callback for a GET_BATCH key failed")

    def _gets_failed(self, failure: Failure, chunk: list[_GetItem]) -> None:
        for item in chunk:
            _report(item[3], failure, item[4:])

    def _send_batch(self) -> None:
        """Turn this turn's L{put} records into C{PUT_BATCH} requests (in L{_flush})."""
        items, self._batch = self._batch, []
        try:
            frames = _batch_frames(items)
        except InvalidFrameError as error:  # our bug; the callers should hear of it
            self._batch_failed(Failure(error), items)
            return
        self._send_chunks(frames, items, 3, self._batch_answered, self._batch_failed)

    def _send_chunks(self, frames: list[tuple[Frame, int]], items: list[Any], timeout_at: int,
                     answered: Callback, failed: Callback) -> None:
        """Send the batch C{frames} made of C{items} (each frame holding the next C{count}
        of them), each with the shortest timeout of its items (C{item[timeout_at]});
        C{answered(answer, chunk)} or C{failed(Failure, chunk)} gets each frame's outcome."""
        batching, self._batching = self._batching, True  # _queue must not arm another flush
        try:
            start = 0
            for frame, count in frames:
                chunk = items[start:start + count] if count < len(items) else items
                start += count
                timeout = min([item[timeout_at] for item in chunk])
                request = _Outstanding(None, frame.verb, timeout, answered, failed, (chunk,))
                sent = self._send_request(frame, request)
                if isinstance(sent, Exception):
                    request.fail(sent)
        finally:
            self._batching = batching

    def _batch_answered(self, frame: Frame, chunk: list[_BatchItem]) -> None:
        if frame.verb != "VAL":
            # The whole batch refused (a NACK such as shutting_down): the same for each.
            for item in chunk:
                _report(item[4], frame, item[6:])
            return
        try:
            outcomes = parse_batch_outcomes(frame, len(chunk))
        except PeerProtocolError as error:
            self._batch_failed(Failure(PeerRefused(self.label, "PUT_BATCH", error.code,
                                                   error.message)), chunk)
            return
        report_put_outcomes(chunk, outcomes, frame.request_id)

    def _batch_failed(self, failure: Failure, chunk: list[_BatchItem]) -> None:
        for item in chunk:
            _report(item[5], failure, item[6:])

    def _fail_batch(self, error: Exception) -> None:
        """Records and keys queued for a batch that will never leave (the connection is
        gone)."""
        items, self._batch = self._batch, []
        if items:
            self._batch_failed(Failure(error), items)
        gets, self._gets = self._gets, []
        if gets:
            self._gets_failed(Failure(error), gets)

    def send(self, frame: Frame) -> None:
        """Send a one-way frame (no answer expected) under a fresh request id."""
        if not self.ready:
            raise PeerUnavailable(self.label, self._close_reason or "not connected")
        if self._batch or self._gets:
            self._release_held()
        self._write(frame.with_request_id(self._allocate_id()))

    def _allocate_id(self) -> int:
        while True:
            self._next_id = self._next_id % MAX_REQUEST_ID + 1
            if self._next_id not in self._pending:
                return self._next_id

    def _forget(self, request_id: int) -> None:
        """Cancelled by the caller: free its slot; a late answer will be dropped."""
        self._outstanding.pop(request_id, None)
        self._pending.resolve(Frame("PONG", request_id))

    def _arm_expiry(self) -> None:
        deadline = self._pending.next_deadline()
        call = self._expiry_call
        if deadline is None or (call is not None and call.active() and self._expiry_at <= deadline):
            return  # an earlier timer re-arms itself when it fires
        if call is not None and call.active():
            call.cancel()
        self._expiry_at = deadline
        delay = max(0.0, deadline - self._reactor.seconds())
        self._expiry_call = self._reactor.callLater(delay, self._expire)

    def _expire(self) -> None:
        self._expiry_call = None
        # The timer was set for _expiry_at; float rounding of now + delay must not make it
        # miss the deadline it exists for (and spin re-arming at delay 0).
        now = max(self._reactor.seconds(), self._expiry_at)
        for request_id in self._pending.expire(now):
            request = self._outstanding.pop(request_id, None)
            if request is not None:
                request.fail(PeerTimeout(self.label, request.verb, request.timeout))
        self._arm_expiry()

    def _write(self, frame: Frame) -> None:
        self._queue(encode_frame(frame, self._limits.max_line))

    def _release_held(self) -> None:
        """Turn the keys and records held for this turn's C{GET_BATCH} / C{PUT_BATCH} into
        frames now, before a request made after them: the peer handles a connection's
        requests in order, so requests must leave in the order they were made (a client's
        pipelined SET, then an INCR sent alone to the acting replica, must reach it in
        that order). Held keys are always older than held records: L{get_many} releases
        the records first."""
        if self._gets:
            self._send_gets()
        if self._batch:
            self._send_batch()

    def _queue(self, data: bytes) -> None:
        if self._closing:
            return
        self._out.append(data)
        if not self._batching and self._flush_call is None:
            self._flush_call = self._reactor.callLater(0, self._flush)

    def flush_now(self) -> None:
        """Write what this turn produced now rather than at the armed flush call: for a
        caller that queued requests from within the reactor's timed calls, where a new
        C{callLater(0)} would only run after the next poll."""
        if self._flush_call is not None:
            self._flush()

    def _flush(self) -> None:
        """Write everything this turn produced in one C{transport.write}."""
        call, self._flush_call = self._flush_call, None
        if call is not None and call.active():
            call.cancel()
        for _ in range(_BATCH_PASSES):  # a callback of a failed batch may have put more
            if not self._batch and not self._gets:
                break
            self._release_held()
        else:
            if (self._batch or self._gets) and self._flush_call is None and not self._lost:
                self._flush_call = self._reactor.callLater(0, self._flush)
        if self._out and not self._lost and self.transport is not None:
            data = b"".join(self._out)
            self._out.clear()
            transport: Any = self.transport
            sock = self._socket
            if (
                sock is not None
                and not transport._tempDataBuffer
                and transport.offset >= len(transport.dataBuffer)
                and transport.connected
                and not transport.disconnecting
                and not transport._writeDisconnected
            ):
                # Twisted holds nothing for this socket: send now rather than register for
                # writability and send on the next reactor pass (two epoll_ctl calls and a
                # loop iteration per flush, as for client replies in protocol.py). Only
                # what the kernel does not take goes through transport.write, in order;
                # errors are left to Twisted's write path, which reports a lost connection.
                try:
                    sent = sock.send(data)
                except OSError:
                    sent = 0
                if sent == len(data):
                    return
                data = data[sent:]
            transport.write(data)


def _describe_loss(reason: Failure) -> str:
    if reason.check(ConnectionDone):
        return "connection closed"
    return f"connection lost: {reason.getErrorMessage()}"


# -- server side -----------------------------------------------------------------------------


class PeerServerFactory(Factory):
    """Accepts peer connections (the node's C{--peer-listen} port) as responder."""

    def __init__(
        self,
        reactor: IReactorTime,
        config: HandshakeConfig,
        handler: RequestHandler,
        rng: random.Random,
        limits: PeerLimits = PeerLimits(),
    ) -> None:
        self._reactor = reactor
        self._config = config
        self._handler = handler
        self._rng = rng
        self._limits = limits
        self._connections: set[PeerProtocol] = set()

    @property
    def connections(self) -> frozenset[PeerProtocol]:
        """Open incoming connections, handshaking ones included."""
        return frozenset(self._connections)

    def buildProtocol(self, addr: IAddress | None) -> PeerProtocol:
        protocol = PeerProtocol(
            self._reactor, Role.RESPONDER, self._config, self._handler, self._rng, self._limits,
            label=_describe_address(addr), on_lost=self._lost,
        )
        protocol.factory = self
        self._connections.add(protocol)
        return protocol

    def _lost(self, protocol: PeerProtocol, reason: str) -> None:
        self._connections.discard(protocol)

    def close_connections(self) -> Deferred[None]:
        """Close every incoming connection; fires when all are gone (for C{stopService})."""
        waiters = [protocol.when_lost() for protocol in self._connections]
        for protocol in list(self._connections):
            protocol.close("node shutting down")
        return DeferredList(waiters).addCallback(lambda _: None)


# -- client side -----------------------------------------------------------------------------


class _LinkState(Enum):
    CONNECTING = "connecting"  # endpoint.connect() in progress
    HANDSHAKING = "handshaking"  # TCP up, HELLO exchange running
    READY = "ready"


@dataclass(eq=False)
class _Queued:
    """A request or one-way frame waiting for its connection to be established."""

    frame: Frame
    #: None for a one-way frame.
    deferred: Deferred[Frame] | None
    deadline: float
    timeout: float
    timer: IDelayedCall | None = None
    inner: Deferred[Frame] | None = None


@dataclass(eq=False)
class _Link:
    address: str
    state: _LinkState = _LinkState.CONNECTING
    protocol: PeerProtocol | None = None
    connecting: Deferred[Any] | None = None
    connect_timer: IDelayedCall | None = None
    timed_out: bool = False
    queue: deque[_Queued] | None = None


@dataclass
class _Failures:
    """Remembered failures to reach one address: fail fast until C{retry_at}."""

    count: int
    retry_at: float
    reason: str


class _ClientFactory(Factory):
    def __init__(self, build: Callable[[], PeerProtocol]) -> None:
        self._build = build

    def buildProtocol(self, addr: IAddress | None) -> PeerProtocol:
        protocol = self._build()
        protocol.factory = self
        return protocol


class PeerClientPool:
    """Outgoing peer connections, one per address, opened on first use.

    Requests made while a connection is being opened wait in a bounded queue
    (their timeout runs meanwhile). When connecting fails, every waiting
    request fails with L{PeerUnavailable} and the address is not dialled
    again for a growing, jittered interval (C{backoff_initial} doubling up to
    C{backoff_max}): requests in that interval fail at once rather than each
    paying a connect timeout to a peer known to be down. A connection that
    was established and then lost is redialled on the next request without
    delay, since the peer may simply have restarted.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        config: HandshakeConfig,
        handler: RequestHandler,
        rng: random.Random,
        *,
        connect_timeout: float = 5.0,
        request_timeout: float = 5.0,
        endpoint_factory: EndpointFactory | None = None,
        limits: PeerLimits = PeerLimits(),
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        """
        @param handler: answers requests the peer sends us on our own
            connections (either end may send requests, §3).
        @param rng: handshake nonces and backoff jitter;
            C{random.SystemRandom()} in production.
        @param endpoint_factory: how to dial an address; defaults to
            L{hostname_endpoint_factory} (the reactor must then be an
            C{IReactorTCP} too). Tests pass an in-memory network's.
        """
        if not (connect_timeout > 0 and request_timeout > 0):
            raise ValueError("connect_timeout and request_timeout must be positive")
        if not 0 < backoff_initial <= backoff_max:
            raise ValueError("need 0 < backoff_initial <= backoff_max")
        self._reactor = reactor
        self._config = config
        self._handler = handler
        self._rng = rng
        self._connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self._endpoint_factory = endpoint_factory or hostname_endpoint_factory(
            reactor, connect_timeout
        )
        self._limits = limits
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._links: dict[str, _Link] = {}
        self._failures: dict[str, _Failures] = {}
        self._closed = False

    # -- queries -----------------------------------------------------------------------------

    def peer_node_id(self, address: str) -> str | None:
        """The node id proven by the established connection to C{address}, if any."""
        link = self._links.get(address)
        if link is None or link.protocol is None or link.protocol.peer is None:
            return None
        return link.protocol.peer.peer_node_id

    def forget_failures(self, address: str) -> None:
        """Dial C{address} on the next request even if it failed recently.

        For callers with better news than the backoff timer, such as
        membership hearing that the peer is alive again.
        """
        self._failures.pop(address, None)

    def connection(self, address: str) -> PeerProtocol | None:
        """The connection to C{address} (in any state), if one exists."""
        link = self._links.get(address)
        return link.protocol if link is not None else None

    # -- sending -----------------------------------------------------------------------------

    def request(self, address: str, frame: Frame, timeout: float | None = None) -> Deferred[Frame]:
        """Send C{frame} to the peer at C{address}; fire with its answer.

        The frame's request id is replaced. Fails with a L{PeerError}:
        L{PeerUnavailable}, L{PeerTimeout}, L{PeerRefused} or L{PeerBusy}.
        """
        timeout = self.request_timeout if timeout is None else timeout
        if self._closed:
            return fail(PeerUnavailable(address, "the peer pool is closed"))
        link = self._usable_link(address)
        if link is not None and link.state is _LinkState.READY:
            assert link.protocol is not None
            return link.protocol.request(frame, timeout)
        if link is None:
            refusal = self._backing_off(address)
            if refusal is not None:
                return fail(refusal)
        deferred: Deferred[Frame] = Deferred(lambda _: self._cancel_queued(address, item))
        item = _Queued(frame, deferred, self._reactor.seconds() + timeout, timeout)
        refused = self._enqueue(address, link, item)
        return deferred if refused is None else refused

    def call(self, address: str, frame: Frame, timeout: float | None, callback: Callback,
             errback: Callback, *args: object) -> None:
        """L{request} with callbacks instead of a Deferred (see L{PeerProtocol.call}):
        C{callback(answer, *args)} or C{errback(Failure, *args)} runs once, maybe at once.

        On an established connection no Deferred is made; otherwise this is L{request}.
        """
        if not self._closed:
            link = self._links.get(address)
            if link is not None and link.state is _LinkState.READY:
                protocol = link.protocol
                if protocol is not None and protocol.ready:
                    protocol.call(frame, self.request_timeout if timeout is None else timeout,
                                  callback, errback, *args)
                    return
        self.request(address, frame, timeout).addCallbacks(
            callback, errback, callbackArgs=args, errbackArgs=args)

    def put(self, address: str, verb: str, key: bytes, record: bytes, timeout: float | None,
            callback: Callback, errback: Callback, *args: object) -> None:
        """Send one C{PUT}/C{DEL} record like L{call}: batched with the turn's other records
        to C{address} when the connection allows it (L{PeerProtocol.put})."""
        if not self._closed:
            link = self._links.get(address)
            if link is not None and link.state is _LinkState.READY:
                protocol = link.protocol
                if protocol is not None and protocol.ready:
                    protocol.put(verb, key, record,
                                 self.request_timeout if timeout is None else timeout,
                                 callback, errback, *args)
                    return
        self.call(address, Frame(verb, 0, {"key": quote(key)}, record), timeout, callback,
                  errback, *args)

    def put_many(self, address: str, items: Sequence[_BatchItem]) -> None:
        """L{put} for several records to C{address}: each item is C{(verb, key, record,
        timeout, callback, errback, *args)} with a number for the timeout."""
        if not self._closed:
            link = self._links.get(address)
            if link is not None and link.state is _LinkState.READY:
                protocol = link.protocol
                if protocol is not None and protocol.ready:
                    protocol.put_many(items)
                    return
        for item in items:
            self.put(address, *item)

    def flush_now(self) -> None:
        """L{PeerProtocol.flush_now} on every connection: send what this turn queued."""
        # A copy: a failed send's errback may dial another peer (a stand-in) meanwhile.
        for link in list(self._links.values()):
            protocol = link.protocol
            if protocol is not None:
                protocol.flush_now()

    def get_many(self, address: str, items: Sequence[_GetItem]) -> None:
        """Read several keys' records from C{address} (L{PeerProtocol.get_many}): each item
        is C{(key, timeout, callback, errback, *args)} with a number for the timeout."""
        if not self._closed:
            link = self._links.get(address)
            if link is not None and link.state is _LinkState.READY:
                protocol = link.protocol
                if protocol is not None and protocol.ready:
                    protocol.get_many(items)
                    return
        for item in items:
            self.call(address, Frame("GET", 0, {"key": quote(item[0])}), item[1],
                      _get_answered, _get_failed, item)

    def send(self, address: str, frame: Frame) -> None:
        """Send a one-way frame, best effort: failures are logged, never raised."""
        if self._closed:
            return
        link = self._usable_link(address)
        if link is not None and link.state is _LinkState.READY:
            assert link.protocol is not None
            link.protocol.send(frame)
            return
        if link is None and self._backing_off(address) is not None:
            _log.debug("Dropped one-way {verb} to {peer}: backing off", verb=frame.verb,
                       peer=address)
            return
        item = _Queued(frame, None, self._reactor.seconds() + self.request_timeout,
                       self.request_timeout)
        self._enqueue(address, link, item)

    def close(self) -> Deferred[None]:
        """Fail everything queued, close every connection; fires once all are gone."""
        self._closed = True
        waiters: list[Deferred[None]] = []
        for link in list(self._links.values()):
            self._fail_link(link, "the peer pool is closed", record=False)
            if link.protocol is not None:
                waiters.append(link.protocol.when_lost())
                link.protocol.close("the peer pool is closed")
            elif link.connecting is not None:
                link.connecting.cancel()
        return DeferredList(waiters).addCallback(lambda _: None)

    # -- connection management ---------------------------------------------------------------

    def _usable_link(self, address: str) -> _Link | None:
        """The link to C{address}, unless its connection is already closing.

        A closing connection fails its own outstanding requests when it is
        lost; new ones go to a fresh connection instead.
        """
        link = self._links.get(address)
        if (link is not None and link.state is _LinkState.READY
                and (link.protocol is None or not link.protocol.ready)):
            del self._links[address]
            return None
        return link

    def _backing_off(self, address: str) -> PeerUnavailable | None:
        failures = self._failures.get(address)
        if failures is None:
            return None
        wait = failures.retry_at - self._reactor.seconds()
        if wait <= 0:
            return None
        return PeerUnavailable(address, f"{failures.reason} (next attempt in {wait:.2f}s)")

    def _enqueue(self, address: str, link: _Link | None, item: _Queued) -> Deferred[Frame] | None:
        """Queue C{item} on the link to C{address}, dialling if there is none.

        Returns a failed Deferred instead if the queue is full.
        """
        if link is None:
            link = _Link(address, queue=deque())
            self._links[address] = link
            new = True
        else:
            new = False
        assert link.queue is not None
        if len(link.queue) >= self._limits.max_outstanding:
            if item.deferred is None:
                return None
            return fail(PeerBusy(address, self._limits.max_outstanding))
        if item.deferred is not None:
            item.timer = self._reactor.callLater(item.timeout, self._queued_timed_out, link, item)
        link.queue.append(item)
        if new:
            self._dial(link)
        return None

    def _dial(self, link: _Link) -> None:
        address = link.address
        link.connect_timer = self._reactor.callLater(
            self._connect_timeout, self._connect_timed_out, link
        )

        def build() -> PeerProtocol:
            protocol = PeerProtocol(
                self._reactor, Role.INITIATOR, self._config, self._handler, self._rng,
                self._limits, label=address, on_established=lambda p: self._ready(link, p),
                on_lost=lambda p, why: self._lost(link, p, why),
            )
            link.protocol = protocol
            link.state = _LinkState.HANDSHAKING
            return protocol

        try:
            endpoint = self._endpoint_factory(address)
            connecting = endpoint.connect(_ClientFactory(build))
        except Exception as error:  # a malformed address, for one
            connecting = fail(error)
        link.connecting = connecting
        connecting.addCallbacks(self._connected, self._connect_failed,
                                callbackArgs=(link,), errbackArgs=(link,))

    def _connected(self, protocol: PeerProtocol, link: _Link) -> None:
        link.connecting = None

    def _connect_failed(self, failure: Failure, link: _Link) -> None:
        link.connecting = None
        if link.protocol is not None and link.protocol.ready:
            return
        if link.timed_out:
            reason = f"connect timed out after {self._connect_timeout:g}s"
        elif failure.check(CancelledError):
            reason = "connect cancelled"
        else:
            reason = f"connect failed: {failure.getErrorMessage()}"
        self._fail_link(link, reason, record=not self._closed)

    def _connect_timed_out(self, link: _Link) -> None:
        link.connect_timer = None
        link.timed_out = True
        if link.connecting is not None:
            link.connecting.cancel()
        elif link.protocol is not None and not link.protocol.ready:
            link.protocol.abort(f"connect timed out after {self._connect_timeout:g}s")

    def _ready(self, link: _Link, protocol: PeerProtocol) -> None:
        if self._links.get(link.address) is not link:
            return
        if link.connect_timer is not None and link.connect_timer.active():
            link.connect_timer.cancel()
        link.connect_timer = None
        link.state = _LinkState.READY
        self._failures.pop(link.address, None)
        queue, link.queue = link.queue or deque(), None
        now = self._reactor.seconds()
        for item in queue:
            if item.timer is not None and item.timer.active():
                item.timer.cancel()
            if item.deferred is None:
                protocol.send(item.frame)
                continue
            inner = protocol.request(item.frame, max(item.deadline - now, 0.0))
            item.inner = inner
            inner.addCallbacks(item.deferred.callback, item.deferred.errback)

    def _lost(self, link: _Link, protocol: PeerProtocol, why: str) -> None:
        if link.protocol is not protocol or self._links.get(link.address) is not link:
            return
        established = link.state is _LinkState.READY
        self._fail_link(link, why, record=not established and not self._closed)

    def _fail_link(self, link: _Link, reason: str, *, record: bool) -> None:
        """Forget C{link}; fail what waits on it; remember the failure if C{record}."""
        if self._links.get(link.address) is link:
            del self._links[link.address]
        if link.connect_timer is not None and link.connect_timer.active():
            link.connect_timer.cancel()
        link.connect_timer = None
        if record:
            previous = self._failures.get(link.address)
            count = previous.count + 1 if previous is not None else 1
            interval = min(self._backoff_max, self._backoff_initial * 2 ** (count - 1))
            interval = interval / 2 + self._rng.random() * interval / 2
            self._failures[link.address] = _Failures(
                count, self._reactor.seconds() + interval, reason
            )
            _log.warn("Cannot reach peer {peer}: {reason}; retrying no sooner than in "
                      "{interval:.2f}s", peer=link.address, reason=reason, interval=interval)
        queue, link.queue = link.queue or deque(), None
        for item in queue:
            if item.timer is not None and item.timer.active():
                item.timer.cancel()
            if item.deferred is not None:
                item.deferred.errback(PeerUnavailable(link.address, reason))

    def _queued_timed_out(self, link: _Link, item: _Queued) -> None:
        item.timer = None
        if link.queue is not None and item in link.queue:
            link.queue.remove(item)
            assert item.deferred is not None
            item.deferred.errback(PeerTimeout(link.address, item.frame.verb, item.timeout))

    def _cancel_queued(self, address: str, item: _Queued) -> None:
        if item.inner is not None:
            item.inner.cancel()
            return
        link = self._links.get(address)
        if link is not None and link.queue is not None and item in link.queue:
            link.queue.remove(item)
        if item.timer is not None and item.timer.active():
            item.timer.cancel()
