"""Tests for L{twistkv.node.peer}: the peer-protocol adapter and the client pool.

Two protocols are joined by C{iosim} fake transports and pumped by hand; time
is a C{MemoryReactorClock}. No sockets, no wall clock.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.test import iosim

from twistkv.core.peerwire import (
    FEATURE_PUT_BATCH,
    MAX_BATCH_BYTES,
    SUPPORTED_FEATURES,
    Frame,
    FrameDecoder,
    HandshakeConfig,
    Role,
    batch_outcomes_frame,
    error_frame,
    get_batch_answer,
    parse_get_batch,
    parse_put_batch,
    put_batch_frames,
    unquote,
)
from twistkv.node import peer as peer_module
from twistkv.node.peer import (
    BatchAnswers,
    PeerBusy,
    PeerClientPool,
    PeerLimits,
    PeerProtocol,
    PeerRefused,
    PeerServerFactory,
    PeerTimeout,
    PeerUnavailable,
    RequestHandler,
    VerbRouter,
    report_put_outcomes,
    split_address,
)

CLUSTER = "test"


def config(node: str, secret: bytes | None = None,
           features: frozenset[str] = SUPPORTED_FEATURES) -> HandshakeConfig:
    return HandshakeConfig(CLUSTER, node, f"{node}:7380", secret, features=features)


class RecordingTransport(iosim.FakeTransport):
    """An iosim transport that remembers each C{write} call, to check batching."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self.disconnecting:
            self.writes.append(data)
        super().write(data)


def frames_in(writes: list[bytes]) -> list[Frame]:
    return FrameDecoder().feed(b"".join(writes))


def no_handler(peer: str, frame: Frame) -> Frame | None:
    raise AssertionError(f"unexpected request {frame} from {peer}")


def never(peer: str, frame: Frame) -> Deferred[Frame | None]:
    return Deferred()


class Pair:
    """A client (initiator, node a) and a server (responder, node b) joined by iosim."""

    def __init__(
        self,
        server_handler: RequestHandler = no_handler,
        client_handler: RequestHandler = no_handler,
        *,
        client_secret: bytes | None = None,
        server_secret: bytes | None = None,
        limits: PeerLimits | None = None,
        server_features: frozenset[str] = SUPPORTED_FEATURES,
    ) -> None:
        limits = limits or PeerLimits()
        self.clock = MemoryReactorClock()
        self.lost: dict[str, str] = {}
        self.client = PeerProtocol(
            self.clock, Role.INITIATOR, config("a", client_secret), client_handler,
            random.Random(1), limits, label="b:7380",
            on_lost=lambda p, why: self.lost.__setitem__("client", why),
        )
        self.server = PeerProtocol(
            self.clock, Role.RESPONDER, config("b", server_secret, server_features),
            server_handler,
            random.Random(2), limits,
            on_lost=lambda p, why: self.lost.__setitem__("server", why),
        )
        self.client_io = RecordingTransport(self.client, isServer=False,
                                            peerAddress=IPv4Address("TCP", "10.0.0.2", 7380))
        self.server_io = RecordingTransport(self.server, isServer=True,
                                            peerAddress=IPv4Address("TCP", "10.0.0.1", 40000))
        self.pump = iosim.connect(self.server, self.server_io, self.client, self.client_io,
                                  clock=self.clock)

    def flush(self) -> None:
        self.pump.flush()


def result_of(deferred: Deferred[Any]) -> Any:
    results: list[Any] = []
    deferred.addBoth(results.append)
    assert results, "Deferred has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def failure_of(deferred: Deferred[Any]) -> Failure:
    results: list[Any] = []
    deferred.addBoth(results.append)
    assert results, "Deferred has not fired"
    assert isinstance(results[0], Failure), f"expected a failure, got {results[0]!r}"
    return results[0]


def pending(deferred: Deferred[Any]) -> bool:
    return not deferred.called


# -- handshake -------------------------------------------------------------------------------


def test_handshake_with_the_same_secret_establishes_both_ends() -> None:
    """With one cluster secret both ends authenticate and learn each other's node id."""
    pair = Pair(client_secret=b"s3cret", server_secret=b"s3cret")
    assert pair.client.ready and pair.server.ready
    assert pair.client.peer is not None and pair.server.peer is not None
    assert (pair.client.peer.peer_node_id, pair.client.peer.authenticated) == ("b", True)
    assert (pair.server.peer.peer_node_id, pair.server.peer.peer_address) == ("a", "a:7380")
    assert [f.verb for f in frames_in(pair.client_io.writes)] == ["HELLO", "AUTH"]
    assert pair.lost == {}


def test_handshake_with_a_wrong_secret_sends_error_and_closes_both_ends() -> None:
    """Different secrets: the initiator refuses the responder's proof with ERROR 0
    auth_failed, both ends report that code and the connection is closed."""
    pair = Pair(client_secret=b"one", server_secret=b"two")
    assert not pair.client.ready and not pair.server.ready
    sent_by_client = frames_in(pair.client_io.writes)
    assert [f.verb for f in sent_by_client] == ["HELLO", "ERROR"]
    assert (sent_by_client[-1].request_id, sent_by_client[-1].fields["code"]) == (0, "auth_failed")
    assert "auth_failed" in pair.lost["client"] and "we refused the peer" in pair.lost["client"]
    assert "auth_failed" in pair.lost["server"] and "the peer refused us" in pair.lost["server"]
    assert pair.client_io.disconnecting and pair.server_io.disconnecting


def test_handshake_that_never_completes_is_abandoned() -> None:
    """A peer that connects but never says HELLO is dropped after the handshake timeout."""
    clock = MemoryReactorClock()
    lost: list[str] = []
    server = PeerProtocol(clock, Role.RESPONDER, config("b"), no_handler, random.Random(1),
                          PeerLimits(handshake_timeout=3.0),
                          on_lost=lambda p, why: lost.append(why))
    transport = StringTransport()
    server.makeConnection(transport)
    clock.advance(2.9)
    assert not transport.disconnecting
    clock.advance(0.1)
    assert transport.disconnecting


def test_requests_before_the_handshake_fail_as_unavailable() -> None:
    """A request on a connection still handshaking fails at once, not silently queued."""
    clock = MemoryReactorClock()
    client = PeerProtocol(clock, Role.INITIATOR, config("a"), no_handler, random.Random(1),
                          label="b:7380")
    client.makeConnection(StringTransport())
    error = failure_of(client.request(Frame("PING", 0), timeout=1.0))
    assert error.check(PeerUnavailable)
    with pytest.raises(PeerUnavailable):
        client.send(Frame("SWIM_GOSSIP", 0))


# -- requests and responses ------------------------------------------------------------------


def test_pipelined_requests_match_out_of_order_answers() -> None:
    """Answers that come back in reverse order still reach the request they answer."""
    waiting: list[tuple[Frame, Deferred[Frame | None]]] = []

    def handler(peer: str, frame: Frame) -> Deferred[Frame | None]:
        answer: Deferred[Frame | None] = Deferred()
        waiting.append((frame, answer))
        return answer

    pair = Pair(handler)
    keys = ["k1", "k2", "k3"]
    requests = [pair.client.request(Frame("GET", 0, {"key": key}), timeout=5.0) for key in keys]
    pair.flush()
    assert [frame.fields["key"] for frame, _ in waiting] == keys
    order: list[str] = []
    for request, key in zip(requests, keys, strict=True):
        request.addCallback(lambda frame, key=key: (order.append(key), frame)[1])
    for frame, answer in reversed(waiting):
        answer.callback(Frame("VAL", 0, payload=frame.fields["key"].encode()))
        pair.flush()
    assert order == ["k3", "k2", "k1"]
    assert [result_of(r).payload for r in requests] == [b"k1", b"k2", b"k3"]
    assert pair.client.outstanding == 0


def test_request_timeout_errbacks_clearly_and_a_late_answer_is_dropped() -> None:
    """An unanswered request fails with PeerTimeout naming peer, verb and timeout; the
    answer arriving later is ignored without error."""
    answers: list[Deferred[Frame | None]] = []

    def handler(peer: str, frame: Frame) -> Deferred[Frame | None]:
        answers.append(Deferred())
        return answers[-1]

    pair = Pair(handler)
    request = pair.client.request(Frame("GET", 0, {"key": "k"}), timeout=2.0)
    pair.flush()
    pair.clock.advance(1.9)
    assert pending(request)
    pair.clock.advance(0.1)
    error = failure_of(request)
    assert error.check(PeerTimeout)
    assert str(error.value) == "peer b:7380 did not answer GET within 2s"
    answers[0].callback(Frame("VAL", 0))
    pair.flush()
    assert pair.client.ready and pair.client.outstanding == 0


def test_lost_connection_errbacks_pending_requests() -> None:
    """Requests outstanding when the connection goes fail with PeerUnavailable."""
    pair = Pair(never)
    requests = [pair.client.request(Frame("GET", 0, {"key": str(i)}), 5.0) for i in range(3)]
    pair.flush()
    pair.server_io.loseConnection()
    pair.flush()
    for request in requests:
        error = failure_of(request)
        assert error.check(PeerUnavailable)
        assert error.value.address == "b:7380"
    assert pair.client.outstanding == 0 and "client" in pair.lost


def test_error_answer_fails_the_request_with_peer_refused() -> None:
    """An ERROR <id> answer becomes PeerRefused carrying the peer's code and message."""
    pair = Pair(lambda peer, frame: error_frame(0, "bad_request", "no key"))
    request = pair.client.request(Frame("PUT", 0), 5.0)
    pair.flush()
    error = failure_of(request)
    assert error.check(PeerRefused)
    assert (error.value.code, error.value.message, error.value.verb) == (
        "bad_request", "no key", "PUT")


def test_call_reports_answers_refusals_timeouts_and_losses_to_its_callbacks() -> None:
    """call() is request() without a Deferred: each outcome reaches exactly one of its
    callbacks, with the extra arguments, and a callback that raises is only logged."""
    answers: dict[str, Deferred[Frame | None]] = {}

    def handler(peer: str, frame: Frame) -> Frame | Deferred[Frame | None]:
        key = frame.fields["key"]
        if key == "refuse":
            return error_frame(0, "bad_request", "no")
        answers[key] = Deferred()
        return answers[key]

    pair = Pair(handler)
    seen: list[tuple[str, object, str]] = []

    def ok(frame: Frame, tag: str) -> None:
        seen.append(("ok", frame.verb, tag))
        if tag == "raise":
            raise RuntimeError("a buggy callback")

    def failed(failure: Failure, tag: str) -> None:
        seen.append(("failed", type(failure.value).__name__, tag))

    for key in ("answer", "raise", "refuse", "slow"):
        pair.client.call(Frame("GET", 0, {"key": key}), 5.0 if key != "slow" else 1.0,
                         ok, failed, key)
    pair.flush()
    answers["answer"].callback(Frame("VAL", 0))
    answers["raise"].callback(Frame("VAL", 0))
    pair.flush()
    pair.clock.advance(1.0)
    pair.client.call(Frame("GET", 0, {"key": "lost"}), 5.0, ok, failed, "lost")
    pair.flush()
    pair.server_io.loseConnection()
    pair.flush()
    pair.client.call(Frame("GET", 0, {"key": "late"}), 5.0, ok, failed, "late")
    assert seen == [("failed", "PeerRefused", "refuse"), ("ok", "VAL", "answer"),
                    ("ok", "VAL", "raise"), ("failed", "PeerTimeout", "slow"),
                    ("failed", "PeerUnavailable", "lost"), ("failed", "PeerUnavailable", "late")]
    assert pair.client.outstanding == 0


def test_pool_call_uses_the_connection_or_queues_like_request() -> None:
    """The pool's call() answers through its callbacks both before the connection is up
    (queued, as request) and on the established connection."""
    net = FakeNet()
    seen: list[tuple[str, str]] = []
    record = lambda frame, tag: seen.append((frame.verb, tag))  # noqa: E731
    net.pool.call("b:7380", Frame("PUT", 0, {"key": "a"}), None, record, record, "queued")
    net.flush()
    net.pool.call("b:7380", Frame("PUT", 0, {"key": "b"}), 1.0, record, record, "direct")
    net.flush()
    assert seen == [("ACK", "queued"), ("ACK", "direct")]
    assert net.dials == ["b:7380"]


def test_unknown_verb_is_answered_and_the_connection_kept() -> None:
    """A verb outside the vocabulary gets ERROR unknown_verb; the connection stays usable."""
    pair = Pair()
    request = pair.client.request(Frame("FROB", 0), 5.0)
    pair.flush()
    error = failure_of(request)
    assert error.check(PeerRefused) and error.value.code == "unknown_verb"
    ping = pair.client.request(Frame("PING", 0), 5.0)
    pair.flush()
    assert result_of(ping).verb == "PONG"


def test_ping_is_answered_by_the_adapter_itself() -> None:
    """PING never reaches the handler: the adapter answers PONG with the same id."""
    pair = Pair()  # no_handler fails the test if called
    pong = pair.client.request(Frame("PING", 0), 5.0)
    pair.flush()
    assert result_of(pong).verb == "PONG"


def test_garbage_bytes_get_error_zero_and_close() -> None:
    """Bytes that are not a frame are a protocol error: ERROR 0, then the connection closes."""
    pair = Pair()
    before = len(pair.server_io.writes)
    pair.client_io.write(b"\x00\xffnot a frame at all\r\n")
    pair.flush()
    answer = frames_in(pair.server_io.writes[before:])
    assert len(answer) == 1 and answer[0].verb == "ERROR" and answer[0].request_id == 0
    assert answer[0].fields["code"] == "bad_header"
    assert "protocol error: bad_header" in pair.lost["server"]
    assert "closed by the peer: bad_header" in pair.lost["client"]


@pytest.mark.parametrize(
    ("raw", "code"),
    [(b"GET 0 key=k\r\n", "bad_request_id"), (b"HELLO 0 version=1\r\n", "bad_hello")],
)
def test_request_id_zero_and_late_hello_are_protocol_errors(raw: bytes, code: str) -> None:
    """A request under the reserved id 0, or a second HELLO, closes the connection."""
    pair = Pair(lambda peer, frame: Frame("VAL", 0))
    pair.client_io.write(raw)
    pair.flush()
    assert f"protocol error: {code}" in pair.lost["server"]


def test_one_way_frames_reach_the_handler_and_get_no_answer() -> None:
    """A one-way frame is handled; the handler's None answer sends nothing back."""
    seen: list[tuple[str, Frame]] = []

    def handler(peer: str, frame: Frame) -> None:
        seen.append((peer, frame))

    pair = Pair(handler)
    before = len(pair.server_io.writes)
    pair.client.send(Frame("SWIM_GOSSIP", 0, {"from": "a"}, b"alive a 1 a:7380 - -"))
    pair.flush()
    assert [(peer, f.verb, f.payload) for peer, f in seen] == [
        ("a", "SWIM_GOSSIP", b"alive a 1 a:7380 - -")
    ]
    assert seen[0][1].request_id != 0
    assert pair.server_io.writes[before:] == []


def test_handler_backlog_beyond_the_limit_is_refused_too_many_requests() -> None:
    """Requests beyond the per-connection handler backlog are answered too_many_requests,
    and a slot frees up once an answer goes out."""
    answers: list[Deferred[Frame | None]] = []

    def handler(peer: str, frame: Frame) -> Deferred[Frame | None]:
        answers.append(Deferred())
        return answers[-1]

    pair = Pair(handler, limits=PeerLimits(max_handler_backlog=2))
    requests = [pair.client.request(Frame("GET", 0, {"key": str(i)}), 5.0) for i in range(3)]
    pair.flush()
    assert len(answers) == 2
    error = failure_of(requests[2])
    assert error.check(PeerRefused) and error.value.code == "too_many_requests"
    answers[0].callback(Frame("VAL", 0))
    retry = pair.client.request(Frame("GET", 0, {"key": "again"}), 5.0)
    pair.flush()
    assert len(answers) == 3 and pending(retry)


def test_outstanding_requests_are_bounded_on_the_sender() -> None:
    """We never send more outstanding requests than our limit: the next fails PeerBusy."""
    pair = Pair(never, limits=PeerLimits(max_outstanding=2))
    first = [pair.client.request(Frame("GET", 0), 5.0) for _ in range(2)]
    third = pair.client.request(Frame("GET", 0), 5.0)
    assert all(pending(d) for d in first)
    assert failure_of(third).check(PeerBusy)


def test_handler_exceptions_are_answered_nack_internal_error() -> None:
    """A handler that raises (now or later) costs the peer one NACK, not the connection."""
    later: Deferred[Frame | None] = Deferred()

    def handler(peer: str, frame: Frame) -> Deferred[Frame | None]:
        if frame.fields["key"] == "now":
            raise RuntimeError("boom")
        return later

    pair = Pair(handler)
    now = pair.client.request(Frame("GET", 0, {"key": "now"}), 5.0)
    deferred = pair.client.request(Frame("GET", 0, {"key": "later"}), 5.0)
    pair.flush()
    later.errback(RuntimeError("boom later"))
    pair.flush()
    for request in (now, deferred):
        frame = result_of(request)
        assert (frame.verb, frame.fields["reason"]) == ("NACK", "internal_error")
    assert pair.client.ready


def test_cancelled_request_frees_its_slot() -> None:
    """Cancelling a request forgets it; its late answer is dropped."""
    answers: list[Deferred[Frame | None]] = []

    def handler(peer: str, frame: Frame) -> Deferred[Frame | None]:
        answers.append(Deferred())
        return answers[-1]

    pair = Pair(handler, limits=PeerLimits(max_outstanding=1))
    request = pair.client.request(Frame("GET", 0), 5.0)
    pair.flush()
    request.cancel()
    failure_of(request)
    assert pair.client.outstanding == 0
    answers[0].callback(Frame("VAL", 0))
    pair.flush()
    assert pending(pair.client.request(Frame("GET", 0), 5.0))


def test_answers_of_one_turn_leave_in_one_write() -> None:
    """Pipelined requests arriving together are answered with a single transport.write."""
    pair = Pair(lambda peer, frame: Frame("VAL", 0))
    for i in range(5):
        pair.client.request(Frame("GET", 0, {"key": str(i)}), 5.0)
    client_before, server_before = len(pair.client_io.writes), len(pair.server_io.writes)
    pair.flush()
    assert len(pair.client_io.writes) - client_before == 1
    assert len(pair.server_io.writes) - server_before == 1
    assert len(frames_in(pair.server_io.writes[server_before:])) == 5


def test_verb_router_dispatches_and_refuses_unrouted_verbs() -> None:
    """VerbRouter sends each verb to its owner and answers unknown_verb for the rest."""
    router = VerbRouter()
    router.route(["GET"], lambda peer, frame: Frame("VAL", 0, payload=peer.encode()))
    answer = router("a", Frame("GET", 7))
    assert isinstance(answer, Frame) and answer.payload == b"a"
    refused = router("a", Frame("STATS", 7))
    assert isinstance(refused, Frame)
    assert (refused.verb, refused.request_id, refused.fields["code"]) == (
        "ERROR", 7, "unknown_verb")
    with pytest.raises(ValueError):
        router.route(["GET"], no_handler)


def test_split_address() -> None:
    """Addresses are host:port, with brackets around IPv6 hosts."""
    assert split_address("n1:7380") == ("n1", 7380)
    assert split_address("[::1]:7380") == ("::1", 7380)
    for bad in ("n1", "n1:", ":7380", "n1:0", "n1:70000", "n1:x"):
        with pytest.raises(ValueError):
            split_address(bad)


# -- the pool --------------------------------------------------------------------------------


class FakeEndpoint:
    """Dials by building both protocols by hand and joining them with iosim."""

    def __init__(self, net: FakeNet, address: str) -> None:
        self._net = net
        self._address = address

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        net = self._net
        net.dials.append(self._address)
        if net.behaviour == "refuse":
            return fail(ConnectionRefusedError(self._address))
        if net.behaviour == "hang":
            return Deferred()
        client = factory.buildProtocol(IPv4Address("TCP", "10.0.0.2", 7380))
        server = net.server_factory.buildProtocol(IPv4Address("TCP", "10.0.0.1", 40000))
        client_io = RecordingTransport(client, isServer=False)
        server_io = RecordingTransport(server, isServer=True)
        net.pumps.append(iosim.connect(server, server_io, client, client_io, greet=False,
                                       clock=net.clock))
        net.client_ios.append(client_io)
        return succeed(client)


class FakeNet:
    """A pool for node a dialling a server factory for node b."""

    def __init__(self, server_handler: RequestHandler = lambda peer, frame: Frame("ACK", 0),
                 client_handler: RequestHandler = no_handler, *,
                 server_secret: bytes | None = None, client_secret: bytes | None = None,
                 **pool_options: Any) -> None:
        self.clock = MemoryReactorClock()
        self.behaviour = "connect"
        self.dials: list[str] = []
        self.pumps: list[iosim.IOPump] = []
        self.client_ios: list[RecordingTransport] = []
        self.server_factory = PeerServerFactory(self.clock, config("b", server_secret),
                                                server_handler, random.Random(2))
        self.pool = PeerClientPool(self.clock, config("a", client_secret), client_handler,
                                   random.Random(1), endpoint_factory=self.endpoint,
                                   **pool_options)

    def endpoint(self, address: str) -> FakeEndpoint:
        return FakeEndpoint(self, address)

    def flush(self) -> None:
        for pump in self.pumps:
            pump.flush()


def test_pool_queues_while_connecting_then_reuses_the_connection() -> None:
    """Requests made before the connection is up are sent once it is; later requests reuse
    that one connection."""
    net = FakeNet()
    first = [net.pool.request("b:7380", Frame("PUT", 0, {"key": str(i)})) for i in range(2)]
    assert all(pending(d) for d in first)
    net.flush()
    assert [result_of(d).verb for d in first] == ["ACK", "ACK"]
    again = net.pool.request("b:7380", Frame("PUT", 0))
    net.flush()
    assert result_of(again).verb == "ACK"
    assert net.dials == ["b:7380"]
    assert net.pool.peer_node_id("b:7380") == "b"


def test_pool_coalesces_the_frames_of_one_turn_into_one_write() -> None:
    """Frames sent to one peer in one reactor turn share a single transport.write."""
    net = FakeNet()
    warmup = net.pool.request("b:7380", Frame("PING", 0))
    net.flush()
    result_of(warmup)
    client_io = net.client_ios[0]
    before = len(client_io.writes)
    requests = [net.pool.request("b:7380", Frame("PUT", 0, {"key": str(i)})) for i in range(10)]
    net.pool.send("b:7380", Frame("SWIM_GOSSIP", 0))
    assert len(client_io.writes) == before  # nothing written yet: flushed at the turn's end
    net.clock.advance(0)
    assert len(client_io.writes) == before + 1
    assert [f.verb for f in frames_in(client_io.writes[before:])] == (
        ["PUT"] * 10 + ["SWIM_GOSSIP"])
    net.flush()
    assert all(result_of(r).verb == "ACK" for r in requests)


def test_pool_flush_now_writes_the_turns_frames_at_once() -> None:
    """flush_now (for a caller among the reactor's timed calls, such as the coordinator's
    end-of-turn writes) writes what the connection holds, PUT_BATCH records included, in
    one write without waiting for its flush call, which it withdraws; with nothing held it
    writes nothing."""
    net = FakeNet(_acking_handler([]))
    warmup = net.pool.request("b:7380", Frame("PING", 0))
    net.flush()
    result_of(warmup)
    client_io = net.client_ios[0]
    before = len(client_io.writes)
    net.pool.flush_now()
    assert len(client_io.writes) == before
    ignore = lambda *args: None  # noqa: E731
    net.pool.put_many("b:7380", [("PUT", b"k%d" % i, b"r", 1.0, ignore, ignore)
                                 for i in range(3)])
    net.pool.send("b:7380", Frame("SWIM_GOSSIP", 0))
    assert len(client_io.writes) == before
    net.pool.flush_now()
    assert len(client_io.writes) == before + 1
    assert [f.verb for f in frames_in(client_io.writes[before:])] == ["PUT_BATCH", "SWIM_GOSSIP"]
    assert not net.clock.getDelayedCalls() or all(
        call.func.__name__ != "_flush" for call in net.clock.getDelayedCalls())
    net.clock.advance(0)
    assert len(client_io.writes) == before + 1


def test_pool_flush_now_survives_an_errback_that_dials_another_peer() -> None:
    """A send that fails inside flush_now (here: too many requests outstanding) runs its
    errback at once; a coordinator's errback may hand the write to a stand-in, which dials
    a new peer and so adds a link while flush_now walks them. It must not break off."""
    net = FakeNet(never, limits=PeerLimits(max_outstanding=1))
    hanging = net.pool.request("b:7380", Frame("GET", 0, {"key": "x"}))
    net.flush()
    assert pending(hanging)
    seen: list[str] = []

    def to_stand_in(failure: Failure) -> None:
        seen.append(type(failure.value).__name__)
        net.pool.put("c:7380", "PUT", b"k", b"r", 1.0, lambda *a: None, lambda *a: None)

    net.pool.put("b:7380", "PUT", b"k", b"r", 1.0, lambda *a: None, to_stand_in)
    net.pool.flush_now()
    assert seen == ["PeerBusy"]


def test_refused_connect_fails_requests_and_backs_off_with_growing_intervals() -> None:
    """A refused connect fails the queued request; the next ones fail fast without dialling
    until a jittered interval passes, and the interval grows with each failure."""
    net = FakeNet(backoff_initial=1.0, backoff_max=8.0)
    net.behaviour = "refuse"
    error = failure_of(net.pool.request("b:7380", Frame("GET", 0)))
    assert error.check(PeerUnavailable) and "connect failed" in error.value.reason
    net.clock.advance(0.49)
    fast = failure_of(net.pool.request("b:7380", Frame("GET", 0)))
    assert "next attempt in" in str(fast.value)
    assert net.dials == ["b:7380"]
    net.clock.advance(0.51)  # the first interval lies within [0.5, 1]
    failure_of(net.pool.request("b:7380", Frame("GET", 0)))
    assert len(net.dials) == 2
    net.clock.advance(0.99)  # the second within [1, 2]
    failure_of(net.pool.request("b:7380", Frame("GET", 0)))
    assert len(net.dials) == 2
    net.behaviour = "connect"
    net.clock.advance(1.01)
    recovered = net.pool.request("b:7380", Frame("GET", 0))
    net.flush()
    assert result_of(recovered).verb == "ACK" and len(net.dials) == 3


def test_connect_timeout_fails_queued_requests() -> None:
    """A connect that hangs is cancelled after connect_timeout; queued requests fail."""
    net = FakeNet(connect_timeout=3.0, request_timeout=10.0)
    net.behaviour = "hang"
    request = net.pool.request("b:7380", Frame("GET", 0))
    net.clock.advance(2.9)
    assert pending(request)
    net.clock.advance(0.1)
    error = failure_of(request)
    assert error.check(PeerUnavailable)
    assert error.value.reason == "connect timed out after 3s"


def test_queued_request_times_out_while_still_connecting() -> None:
    """A request's own timeout runs while it waits for the connection."""
    net = FakeNet(connect_timeout=30.0)
    net.behaviour = "hang"
    request = net.pool.request("b:7380", Frame("GET", 0), timeout=1.0)
    net.clock.advance(1.0)
    assert failure_of(request).check(PeerTimeout)


def test_pool_reports_a_failed_handshake_as_unavailable() -> None:
    """A wrong cluster secret surfaces as PeerUnavailable carrying the handshake's code."""
    net = FakeNet(server_secret=b"one", client_secret=b"two")
    request = net.pool.request("b:7380", Frame("GET", 0))
    net.flush()
    error = failure_of(request)
    assert error.check(PeerUnavailable) and "auth_failed" in error.value.reason


def test_lost_connection_fails_pending_and_the_next_request_redials_at_once() -> None:
    """Losing an established connection fails its requests; the next request dials again
    without waiting (the peer may just have restarted)."""
    net = FakeNet(never)
    request = net.pool.request("b:7380", Frame("GET", 0))
    net.flush()
    connection = net.pool.connection("b:7380")
    assert connection is not None and connection.ready
    net.client_ios[0].loseConnection()
    net.flush()
    assert failure_of(request).check(PeerUnavailable)
    net.pool.request("b:7380", Frame("GET", 0))
    assert len(net.dials) == 2


def test_peer_can_send_requests_on_our_connection() -> None:
    """Either end may send requests: the pool's handler answers the server's request."""
    net = FakeNet(client_handler=lambda peer, frame: Frame("VAL", 0, payload=peer.encode()))
    net.pool.request("b:7380", Frame("PING", 0))
    net.flush()
    (server_side,) = net.server_factory.connections
    answer = server_side.request(Frame("GET", 0), 5.0)
    net.flush()
    assert result_of(answer).payload == b"b"


def test_pool_close_fails_everything_and_waits_for_connections() -> None:
    """close() fails queued and outstanding requests and fires once connections are gone;
    later requests fail at once."""
    net = FakeNet(never)
    outstanding = net.pool.request("b:7380", Frame("GET", 0))
    net.flush()
    closed = net.pool.close()
    net.flush()
    assert result_of(closed) is None
    assert failure_of(outstanding).check(PeerUnavailable)
    late = failure_of(net.pool.request("b:7380", Frame("GET", 0)))
    assert "closed" in str(late.value)


def test_server_factory_closes_its_connections() -> None:
    """close_connections() closes every accepted connection and fires when they are gone."""
    net = FakeNet()
    net.pool.request("b:7380", Frame("PING", 0))
    net.flush()
    assert len(net.server_factory.connections) == 1
    done = net.server_factory.close_connections()
    net.flush()
    assert result_of(done) is None and not net.server_factory.connections


# -- PUT_BATCH: put() (docs/peer-protocol.md §5.2.1) -------------------------------------------


class BatchReplica:
    """A replica handler that records what it receives and refuses the key "refuse"."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        #: Answer every request with this instead (a Deferred never fired: no answer).
        self.hold: Frame | Deferred[Frame | None] | None = None

    def __call__(self, peer: str, frame: Frame) -> Frame | Deferred[Frame | None]:
        self.frames.append(frame)
        if self.hold is not None:
            return self.hold
        if frame.verb == "PUT_BATCH":
            entries = parse_put_batch(frame)
            return batch_outcomes_frame(
                ["overloaded" if key == b"refuse" else None for _, key, _ in entries])
        return Frame("ACK", 0)


def test_put_records_of_one_turn_travel_in_one_put_batch_with_per_record_outcomes() -> None:
    """Records put in one turn leave as one PUT_BATCH (one write), and each record gets its
    own outcome: a record the replica refuses is refused alone."""
    replica = BatchReplica()
    pair = Pair(replica)
    pair.flush()
    assert pair.client.batches_puts
    seen: list[tuple[str, str, str]] = []

    def answered(frame: Frame, tag: str) -> None:
        seen.append((tag, frame.verb, frame.fields.get("reason", "")))

    before = len(pair.client_io.writes)
    for key in (b"a", b"refuse", b"c"):
        pair.client.put("PUT", key, b"record-" + key, 5.0, answered, no_handler, key.decode())
    pair.client.put("DEL", b"d", b"tomb", 5.0, answered, no_handler, "d")
    assert len(pair.client_io.writes) == before  # sent at the turn's end
    pair.clock.advance(0)
    assert len(pair.client_io.writes) == before + 1
    pair.flush()
    (frame,) = replica.frames
    assert frame.verb == "PUT_BATCH"
    assert [tuple(entry) for entry in parse_put_batch(frame)] == [
        ("PUT", b"a", b"record-a"), ("PUT", b"refuse", b"record-refuse"),
        ("PUT", b"c", b"record-c"), ("DEL", b"d", b"tomb")]
    assert seen == [("a", "ACK", ""), ("refuse", "NACK", "overloaded"), ("c", "ACK", ""),
                    ("d", "ACK", "")]
    assert pair.client.outstanding == 0


def test_requests_reach_the_peer_in_the_order_they_were_made() -> None:
    """Records and keys held for the turn's PUT_BATCH / GET_BATCH keep their place among the
    connection's other requests: a single-frame request (an INCR for the acting replica)
    made after a put leaves after that put's PUT_BATCH, and reads and writes that alternate
    leave as alternating batches, so the peer, which handles a connection's requests in
    order, applies a pipelined SET before the INCR or GET that followed it."""
    replica = BatchReplica()
    pair = Pair(replica)
    pair.flush()
    ignore = lambda *args: None  # noqa: E731
    pair.client.put("PUT", b"a", b"r", 5.0, ignore, ignore)
    pair.client.put("PUT", b"b", b"r", 5.0, ignore, ignore)
    pair.client.call(Frame("INCR", 0, {"key": "a"}), 5.0, ignore, ignore)
    pair.client.get_many([(b"a", 5.0, ignore, ignore)])
    pair.client.put_many([("PUT", b"c", b"r", 5.0, ignore, ignore)])
    pair.client.get_many([(b"c", 5.0, ignore, ignore), (b"d", 5.0, ignore, ignore)])
    pair.client.put("PUT", b"e", b"r", 5.0, ignore, ignore)
    pair.client.request(Frame("GET", 0, {"key": "e"}), 5.0)
    pair.clock.advance(0)
    pair.flush()
    assert [frame.verb for frame in replica.frames] == [
        "PUT_BATCH", "INCR", "GET_BATCH", "PUT_BATCH", "GET_BATCH", "PUT_BATCH", "GET"]
    assert [len(parse_put_batch(frame)) for frame in replica.frames
            if frame.verb == "PUT_BATCH"] == [2, 1, 1]


def test_put_to_a_peer_without_put_batch_sends_one_put_per_record() -> None:
    """An old peer (no features in its HELLO) gets the single-record verbs, never PUT_BATCH."""
    replica = BatchReplica()
    pair = Pair(replica, server_features=frozenset())
    pair.flush()
    assert not pair.client.batches_puts and pair.client.peer is not None
    assert pair.client.peer.features == frozenset()
    seen: list[str] = []
    for key in (b"a", b"b"):
        pair.client.put("PUT", key, b"r", 5.0, lambda frame, tag: seen.append(tag),
                        no_handler, key.decode())
    pair.client.put("DEL", b"c", b"r", 5.0, lambda frame, tag: seen.append(tag), no_handler, "c")
    pair.flush()
    assert [(f.verb, f.fields["key"]) for f in replica.frames] == [
        ("PUT", "a"), ("PUT", "b"), ("DEL", "c")]
    assert seen == ["a", "b", "c"]


def test_put_batch_failures_reach_every_record_of_the_batch() -> None:
    """A batch that times out fails each of its records (PeerTimeout, at the shortest of their
    timeouts); a NACK refusing the whole batch is each record's answer; records queued when
    the connection goes fail as unavailable."""
    replica = BatchReplica()
    replica.hold = Deferred()
    pair = Pair(replica)
    pair.flush()
    seen: list[tuple[str, str]] = []
    failed = lambda failure, tag: seen.append((tag, type(failure.value).__name__))  # noqa: E731
    answered = lambda frame, tag: seen.append((tag, frame.verb))  # noqa: E731
    pair.client.put("PUT", b"a", b"r", 5.0, answered, failed, "a")
    pair.client.put("PUT", b"b", b"r", 1.0, answered, failed, "b")
    pair.flush()
    pair.clock.advance(1.0)
    assert seen == [("a", "PeerTimeout"), ("b", "PeerTimeout")]

    seen.clear()
    replica.hold = Frame("NACK", 0, {"reason": "shutting_down"})
    pair.client.put("PUT", b"c", b"r", 5.0, answered, failed, "c")
    pair.client.put("PUT", b"d", b"r", 5.0, answered, failed, "d")
    pair.flush()
    assert seen == [("c", "NACK"), ("d", "NACK")]

    seen.clear()
    pair.client.put("PUT", b"e", b"r", 5.0, answered, failed, "e")
    pair.client_io.loseConnection()
    pair.flush()
    assert seen == [("e", "PeerUnavailable")]


def _acking_handler(received: list[str]) -> Callable[[str, Frame], Frame]:
    """A replica handler that records each verb and applies everything (ACK / all-None VAL)."""

    def handler(peer: str, frame: Frame) -> Frame:
        received.append(frame.verb)
        if frame.verb == "PUT_BATCH":
            return batch_outcomes_frame([None] * len(parse_put_batch(frame)))
        return Frame("ACK", 0)

    return handler


def test_pool_put_batches_on_the_connection_and_sends_single_puts_while_connecting() -> None:
    """Before the connection is up a record is queued as a plain PUT; once it is up, the
    records of a turn share one PUT_BATCH."""
    received: list[str] = []
    net = FakeNet(_acking_handler(received))
    seen: list[tuple[str, str]] = []
    record = lambda frame, tag: seen.append((frame.verb, tag))  # noqa: E731
    net.pool.put("b:7380", "PUT", b"k0", b"r", None, record, record, "queued")
    net.flush()
    for i in range(3):
        net.pool.put("b:7380", "PUT", b"k%d" % i, b"r", 1.0, record, record, str(i))
    net.clock.advance(0)
    net.flush()
    assert received == ["PUT", "PUT_BATCH"]
    assert seen == [("ACK", "queued"), ("ACK", "0"), ("ACK", "1"), ("ACK", "2")]


def test_put_many_is_put_for_each_record_in_one_call() -> None:
    """put_many hands several records over at once: on a connection they join the turn's
    PUT_BATCH with their own outcomes; through the pool before the connection is up, each
    is queued as a plain PUT, as put() would."""
    replica = BatchReplica()
    pair = Pair(replica)
    pair.flush()
    seen: list[tuple[str, str]] = []
    answered = lambda frame, tag: seen.append((tag, frame.verb))  # noqa: E731
    pair.client.put("PUT", b"a", b"r", 5.0, answered, no_handler, "a")
    pair.client.put_many([("PUT", b"refuse", b"r", 5.0, answered, no_handler, "refuse"),
                          ("DEL", b"c", b"t", 5.0, answered, no_handler, "c")])
    pair.flush()
    (frame,) = replica.frames
    assert [tuple(entry) for entry in parse_put_batch(frame)] == [
        ("PUT", b"a", b"r"), ("PUT", b"refuse", b"r"), ("DEL", b"c", b"t")]
    assert seen == [("a", "ACK"), ("refuse", "NACK"), ("c", "ACK")]

    received: list[str] = []
    net = FakeNet(_acking_handler(received))
    tags: list[str] = []
    record = lambda frame, tag: tags.append(f"{frame.verb}:{tag}")  # noqa: E731
    net.pool.put_many("b:7380", [("PUT", b"k0", b"r", 1.0, record, record, "0"),
                                 ("PUT", b"k1", b"r", 1.0, record, record, "1")])
    net.flush()
    net.pool.put_many("b:7380", [("PUT", b"k2", b"r", 1.0, record, record, "2"),
                                 ("PUT", b"k3", b"r", 1.0, record, record, "3")])
    net.clock.advance(0)
    net.flush()
    assert received == ["PUT", "PUT", "PUT_BATCH"]
    assert tags == ["ACK:0", "ACK:1", "ACK:2", "ACK:3"]


def test_batch_answers_hears_an_all_applied_put_batch_in_one_call() -> None:
    """A BatchAnswers callback gets a PUT_BATCH whose records were all applied as one
    acked(items) call, the items exactly as put; a batch with a refused record, or one
    whose items have other callbacks too, is reported per record through answer()."""
    replica = BatchReplica()
    pair = Pair(replica)
    pair.flush()
    acked: list[list[str]] = []
    answered: list[tuple[str, str]] = []
    grouped = BatchAnswers(lambda frame, tag: answered.append((tag, frame.verb)),
                           lambda items: acked.append([item[6] for item in items]))
    items = [("PUT", b"a", b"r", 5.0, grouped, no_handler, "a"),
             ("DEL", b"b", b"t", 5.0, grouped, no_handler, "b")]
    pair.client.put_many(items)
    pair.flush()
    assert acked == [["a", "b"]] and answered == []

    pair.client.put_many([("PUT", b"c", b"r", 5.0, grouped, no_handler, "c"),
                          ("PUT", b"refuse", b"r", 5.0, grouped, no_handler, "refuse")])
    pair.flush()
    assert acked == [["a", "b"]]
    assert answered == [("c", "ACK"), ("refuse", "NACK")]

    answered.clear()
    plain: list[str] = []
    pair.client.put_many([("PUT", b"d", b"r", 5.0, grouped, no_handler, "d"),
                          ("PUT", b"e", b"r", 5.0, lambda frame, tag: plain.append(tag),
                           no_handler, "e")])
    pair.flush()
    assert acked == [["a", "b"]] and answered == [("d", "ACK")] and plain == ["e"]
    assert len(replica.frames) == 3


def test_report_put_outcomes_logs_a_failing_acked_and_still_reports_per_record() -> None:
    """report_put_outcomes (what a connection does with a PUT_BATCH answer) logs an
    acked() that raises instead of letting it escape, and reports a batch with a refusal
    one record at a time, NACK reasons included."""
    answered: list[tuple[str, str]] = []

    def broken(items: object) -> None:
        raise ValueError("acked bug")

    grouped = BatchAnswers(lambda frame, tag: answered.append((tag, frame.verb)), broken)
    chunk = [("PUT", b"a", b"r", 5.0, grouped, no_handler, "a"),
             ("PUT", b"b", b"r", 5.0, grouped, no_handler, "b")]
    logged: list[dict[str, object]] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        report_put_outcomes(chunk, [None, None])
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert [str(event["log_failure"].value) for event in logged  # type: ignore[attr-defined]
            if "log_failure" in event] == ["acked bug"]
    report_put_outcomes(chunk, [None, "overloaded"])
    assert answered == [("a", "ACK"), ("b", "NACK")]


@pytest.fixture(autouse=True)
def _fresh_batch_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no PUT_BATCH frames kept from another (process-wide memo)."""
    monkeypatch.setattr(peer_module, "_batch_frames", peer_module._SharedBatchFrames())


def test_two_connections_sending_the_same_records_encode_them_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through real connections: the same records put on two peers' connections in a turn
    are encoded once, and both replicas receive exactly the batch put_batch_frames makes."""
    encoded: list[int] = []

    def counting(items: Any) -> list[tuple[Frame, int]]:
        encoded.append(len(items))
        return put_batch_frames(items)

    monkeypatch.setattr(peer_module, "put_batch_frames", counting)
    replicas = [BatchReplica(), BatchReplica()]
    pairs = [Pair(replica) for replica in replicas]
    for pair in pairs:
        pair.flush()
    records = [(b"key-%d" % i, b"record-%d" % i) for i in range(5)]
    answers: list[str] = []
    for pair in pairs:
        for key, record in records:
            pair.client.put("PUT", key, record, 5.0,
                            lambda frame, _: answers.append(frame.verb), no_handler, None)
        pair.clock.advance(0)
        pair.flush()
    assert encoded == [5]
    expected = put_batch_frames([("PUT", key, record) for key, record in records])
    assert [[frame.payload for frame in replica.frames] for replica in replicas] == [
        [expected[0][0].payload]] * 2
    assert answers == ["ACK"] * 10


def test_a_batch_above_one_frame_is_not_kept() -> None:
    """Frames of a batch too big for one frame (or one frame above MAX_BATCH_BYTES) are not
    kept for reuse, so an idle node does not hold a large batch; a one-frame batch is."""
    shared = peer_module._SharedBatchFrames()
    big = b"x" * (MAX_BATCH_BYTES // 2)
    large = [("PUT", b"a", big), ("PUT", b"b", big), ("PUT", b"c", big)]
    first = shared(large)
    assert len(first) > 1
    again = shared(list(large))
    assert again is not first and [f.payload for f, _ in again] == [f.payload for f, _ in first]
    small = [("PUT", b"a", b"r")]
    kept = shared(small)
    assert shared(list(small)) is kept


def test_batch_frames_are_encoded_once_for_owners_sent_the_same_records(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The connections to a write's other owners send the same records: the second reuses
    the frames the first made (one encoding), while records, keys or verbs that differ in
    any place are encoded again; the frames are always those put_batch_frames makes."""
    encoded: list[int] = []

    def counting(items: Any) -> list[tuple[Frame, int]]:
        encoded.append(len(items))
        return put_batch_frames(items)

    monkeypatch.setattr(peer_module, "put_batch_frames", counting)
    shared = peer_module._SharedBatchFrames()
    records = [b"record-%d" % i for i in range(3)]

    def items(verbs: list[str], keys: list[bytes], values: list[bytes], owner: str) -> list[Any]:
        return [(verb, key, value, 5.0, no_handler, no_handler, owner)
                for verb, key, value in zip(verbs, keys, values, strict=True)]

    puts, keys = ["PUT"] * 3, [b"a", b"b", b"c"]
    first = shared(items(puts, keys, records, "n2"))
    assert shared(items(puts, keys, records, "n3")) is first and encoded == [3]
    variants = [(puts, keys, records[:2] + [b"other"]),
                (puts, [b"a", b"x", b"c"], records),
                (["PUT", "PUT", "DEL"], keys, records)]
    for verbs, variant_keys, values in variants:
        shared = peer_module._SharedBatchFrames()
        shared(items(puts, keys, records, "n2"))
        batch = items(verbs, variant_keys, values, "n3")
        frames = shared(batch)
        assert [(frame.payload, count) for frame, count in frames] == [
            (frame.payload, count) for frame, count in put_batch_frames(batch)]
        assert frames[0][0].payload != first[0][0].payload
    assert encoded == [3] * 7


def test_records_put_by_a_failing_batchs_callbacks_still_leave() -> None:
    """A batch refused at send time (too many requests outstanding) fails its records at
    once; a record its callback puts again, during that flush, is sent in the same flush."""
    replica = BatchReplica()
    pair = Pair(replica, limits=PeerLimits(max_outstanding=1))
    pair.flush()
    blocker = pair.client.request(Frame("PING", 0), 5.0)  # the one slot: held until flushed
    seen: list[str] = []

    def failed(failure: Failure, tag: str) -> None:
        seen.append(f"{tag}:{type(failure.value).__name__}")
        if tag == "first":
            pair.client.put("PUT", b"again", b"r", 5.0, answered, failed, "again")

    def answered(frame: Frame, tag: str) -> None:
        seen.append(f"{tag}:{frame.verb}")

    pair.client.put("PUT", b"k", b"r", 5.0, answered, failed, "first")
    pair.clock.advance(0)
    assert seen == ["first:PeerBusy", "again:PeerBusy"]
    pair.flush()
    assert result_of(blocker).verb == "PONG"


def test_a_callback_that_keeps_putting_cannot_hold_the_flush() -> None:
    """Records put again and again by failing callbacks go out a few batches per flush and
    the rest at the next turn's flush: one reactor turn is never stuck in a flush."""
    pair = Pair(BatchReplica(), limits=PeerLimits(max_outstanding=1))
    pair.flush()
    pair.client.request(Frame("PING", 0), 5.0)  # holds the only slot until flushed
    failures: list[str] = []

    def failed(failure: Failure) -> None:
        failures.append(type(failure.value).__name__)
        if len(failures) < 10:
            pair.client.put("PUT", b"k", b"r", 5.0, no_handler, failed)

    def one_turn() -> None:
        """Run the flush armed for this turn, and only it (Clock.advance would also run
        what it arms for the next turn)."""
        (call,) = [call for call in pair.clock.getDelayedCalls()
                   if call.func == pair.client._flush]
        flush = call.func
        call.cancel()
        flush()

    pair.client.put("PUT", b"k", b"r", 5.0, no_handler, failed)
    one_turn()
    assert failures == ["PeerBusy"] * 4
    one_turn()
    assert failures == ["PeerBusy"] * 8


# -- GET_BATCH: get_many() (docs/peer-protocol.md §5.2.2) --------------------------------------


class ReadReplica(BatchReplica):
    """A replica handler that answers GET and GET_BATCH from C{records} and records what it
    receives (C{hold} as for L{BatchReplica})."""

    def __init__(self, records: dict[bytes, bytes], max_bytes: int = MAX_BATCH_BYTES) -> None:
        super().__init__()
        self.records = records
        #: Bound of a GET_BATCH answer: a smaller one makes the replica leave records out.
        self.max_bytes = max_bytes

    def __call__(self, peer: str, frame: Frame) -> Frame | Deferred[Frame | None]:
        if self.hold is not None or frame.verb not in ("GET", "GET_BATCH"):
            return super().__call__(peer, frame)
        self.frames.append(frame)
        if frame.verb == "GET_BATCH":
            return get_batch_answer([self.records.get(key) for key in parse_get_batch(frame)],
                                    self.max_bytes)
        return Frame("VAL", 0, payload=self.records.get(unquote(frame.fields["key"]), b""))

    def asked(self) -> list[tuple[str, list[bytes]]]:
        """Each request received: its verb and the keys it asked for."""
        return [(f.verb, parse_get_batch(f) if f.verb == "GET_BATCH"
                 else [unquote(f.fields["key"])]) for f in self.frames]


#: Records the read tests' replicas hold.
STORED = {b"a": b"record-a", b"c": b"record-c"}


def test_get_many_keys_of_one_turn_travel_in_one_get_batch_answered_in_order() -> None:
    """Keys read in one turn from a peer that offered get_batch leave as one GET_BATCH (one
    write), and each callback gets its key's record, or None, with its extra arguments."""
    replica = ReadReplica(STORED)
    pair = Pair(replica)
    pair.flush()
    assert pair.client.batches_gets
    seen: list[tuple[object, ...]] = []
    answered = lambda answer, tag, n: seen.append((tag, n, answer))  # noqa: E731
    before = len(pair.client_io.writes)
    pair.client.get_many([(b"a", 5.0, answered, no_handler, "a", 1),
                          (b"missing", 5.0, answered, no_handler, "missing", 2)])
    pair.client.get_many([(b"c", 5.0, answered, no_handler, "c", 3)])
    assert len(pair.client_io.writes) == before and seen == []  # sent at the turn's end
    pair.clock.advance(0)
    assert len(pair.client_io.writes) == before + 1
    pair.flush()
    assert replica.asked() == [("GET_BATCH", [b"a", b"missing", b"c"])]
    assert seen == [("a", 1, b"record-a"), ("missing", 2, None), ("c", 3, b"record-c")]
    assert pair.client.outstanding == 0


def test_get_many_to_a_peer_without_get_batch_sends_one_get_per_key() -> None:
    """A peer that did not offer get_batch (here: put_batch only) gets one GET per key, never
    GET_BATCH, and the callbacks get the same records / None as from a batch."""
    replica = ReadReplica(STORED)
    pair = Pair(replica, server_features=frozenset({FEATURE_PUT_BATCH}))
    pair.flush()
    assert pair.client.batches_puts and not pair.client.batches_gets
    seen: list[tuple[object, ...]] = []
    answered = lambda answer, tag, n: seen.append((tag, n, answer))  # noqa: E731
    pair.client.get_many([(b"a", 5.0, answered, no_handler, "a", 1),
                          (b"missing", 5.0, answered, no_handler, "missing", 2),
                          (b"c", 5.0, answered, no_handler, "c", 3)])
    pair.flush()
    assert replica.asked() == [("GET", [b"a"]), ("GET", [b"missing"]), ("GET", [b"c"])]
    assert seen == [("a", 1, b"record-a"), ("missing", 2, None), ("c", 3, b"record-c")]
    assert pair.client.outstanding == 0


def test_get_many_asks_for_a_record_left_out_of_the_answer_with_a_single_get() -> None:
    """A record the replica left out of its GET_BATCH answer (NOT_SENT) is asked for with one
    GET, and its callback gets the record from that answer, once."""
    records = {b"a": b"x" * 10, b"b": b"y" * 10}
    replica = ReadReplica(records, max_bytes=20)  # a goes in; b would pass the bound
    pair = Pair(replica)
    pair.flush()
    seen: list[tuple[str, object]] = []
    answered = lambda answer, tag: seen.append((tag, answer))  # noqa: E731
    pair.client.get_many([(key, 5.0, answered, no_handler, key.decode())
                          for key in (b"a", b"b", b"none")])
    pair.flush()
    assert replica.asked() == [("GET_BATCH", [b"a", b"b", b"none"]), ("GET", [b"b"])]
    assert seen == [("a", b"x" * 10), ("none", None), ("b", b"y" * 10)]
    assert pair.client.outstanding == 0


def test_get_batch_refusals_reach_every_key_of_the_batch() -> None:
    """A NACK refusing the whole GET_BATCH is every key's answer; an ERROR answer, or a VAL
    that does not hold one record per key, fails every key with PeerRefused."""
    replica = ReadReplica(STORED)
    pair = Pair(replica)
    pair.flush()
    seen: list[tuple[str, object]] = []
    answered = lambda answer, tag: seen.append((tag, answer))  # noqa: E731

    def failed(failure: Failure, tag: str) -> None:
        error = failure.value
        assert isinstance(error, PeerRefused)
        seen.append((tag, (error.verb, error.code)))

    nack = Frame("NACK", 0, {"reason": "shutting_down"})
    replica.hold = nack
    pair.client.get_many([(b"a", 5.0, answered, failed, "a"), (b"c", 5.0, answered, failed, "c")])
    pair.flush()
    nacks = [(tag, answer.verb, answer.fields["reason"]) for tag, answer in seen
             if isinstance(answer, Frame)]
    assert len(seen) == 2
    assert nacks == [("a", "NACK", "shutting_down"), ("c", "NACK", "shutting_down")]

    seen.clear()
    replica.hold = error_frame(0, "bad_request", "no")
    pair.client.get_many([(b"a", 5.0, answered, failed, "a"), (b"c", 5.0, answered, failed, "c")])
    pair.flush()
    assert seen == [("a", ("GET_BATCH", "bad_request")), ("c", ("GET_BATCH", "bad_request"))]

    seen.clear()
    replica.hold = get_batch_answer([b"record-a"])  # one record for two keys
    pair.client.get_many([(b"a", 5.0, answered, failed, "a"), (b"c", 5.0, answered, failed, "c")])
    pair.flush()
    assert seen == [("a", ("GET_BATCH", "bad_request")), ("c", ("GET_BATCH", "bad_request"))]
    assert [f.verb for f in replica.frames] == ["GET_BATCH"] * 3
    assert pair.client.outstanding == 0 and pair.client.ready


def test_get_batch_unanswered_times_out_every_key_at_the_shortest_timeout() -> None:
    """A GET_BATCH left unanswered fails each of its keys with PeerTimeout once the shortest
    of their timeouts has passed, not before."""
    replica = ReadReplica(STORED)
    replica.hold = Deferred()
    pair = Pair(replica)
    pair.flush()
    seen: list[tuple[str, str]] = []
    failed = lambda failure, tag: seen.append((tag, type(failure.value).__name__))  # noqa: E731
    pair.client.get_many([(b"a", 5.0, no_handler, failed, "a"),
                          (b"c", 1.0, no_handler, failed, "c")])
    pair.flush()
    pair.clock.advance(0.9)
    assert seen == []
    pair.clock.advance(0.1)
    assert seen == [("a", "PeerTimeout"), ("c", "PeerTimeout")]
    assert pair.client.outstanding == 0


def test_get_many_keys_queued_or_in_flight_fail_unavailable_when_the_connection_goes() -> None:
    """Losing the connection fails every key, whether its GET_BATCH is still awaiting the
    turn's flush (never sent) or awaiting its answer, with PeerUnavailable."""
    replica = ReadReplica(STORED)
    replica.hold = Deferred()
    pair = Pair(replica)
    pair.flush()
    seen: list[tuple[str, str]] = []
    failed = lambda failure, tag: seen.append((tag, type(failure.value).__name__))  # noqa: E731
    pair.client.get_many([(b"a", 5.0, no_handler, failed, "in flight")])
    pair.flush()
    assert [f.verb for f in replica.frames] == ["GET_BATCH"] and seen == []
    pair.client.get_many([(b"c", 5.0, no_handler, failed, "queued 1"),
                          (b"d", 5.0, no_handler, failed, "queued 2")])
    pair.server_io.loseConnection()
    pair.pump.flush(advanceClock=False)  # the client hears of the loss before its flush runs
    assert "client" in pair.lost
    assert sorted(seen) == [("in flight", "PeerUnavailable"), ("queued 1", "PeerUnavailable"),
                            ("queued 2", "PeerUnavailable")]
    pair.clock.advance(0)
    assert [f.verb for f in replica.frames] == ["GET_BATCH"]  # the queued keys never left
    assert len(seen) == 3 and pair.client.outstanding == 0

    late: list[tuple[str, str]] = []
    pair.client.get_many([(b"a", 5.0, no_handler,
                           lambda failure, tag: late.append((tag, type(failure.value).__name__)),
                           "late")])
    assert late == [("late", "PeerUnavailable")]


def test_pool_get_many_reports_every_key_before_and_after_the_connection_is_up() -> None:
    """Through the pool, keys read before the connection is up are each queued as a plain
    GET and answered; once it is up, the keys of a turn share one GET_BATCH; when the
    connect fails, every key's errback hears PeerUnavailable."""
    replica = ReadReplica(STORED)
    net = FakeNet(replica)
    seen: list[tuple[str, object]] = []
    answered = lambda answer, tag: seen.append((tag, answer))  # noqa: E731
    net.pool.get_many("b:7380", [(b"a", 1.0, answered, no_handler, "queued a"),
                                 (b"missing", 1.0, answered, no_handler, "queued missing")])
    net.flush()
    assert replica.asked() == [("GET", [b"a"]), ("GET", [b"missing"])]
    assert seen == [("queued a", b"record-a"), ("queued missing", None)]

    seen.clear()
    net.pool.get_many("b:7380", [(b"c", 1.0, answered, no_handler, "c"),
                                 (b"missing", 1.0, answered, no_handler, "missing")])
    net.clock.advance(0)
    net.flush()
    assert replica.asked()[2:] == [("GET_BATCH", [b"c", b"missing"])]
    assert seen == [("c", b"record-c"), ("missing", None)]
    assert net.dials == ["b:7380"]

    refused = FakeNet(ReadReplica(STORED))
    refused.behaviour = "refuse"
    failures: list[tuple[str, str]] = []
    failed = lambda failure, tag: failures.append((tag, type(failure.value).__name__))  # noqa: E731
    refused.pool.get_many("b:7380", [(b"a", 1.0, no_handler, failed, "a"),
                                     (b"c", 1.0, no_handler, failed, "c")])
    refused.flush()
    assert failures == [("a", "PeerUnavailable"), ("c", "PeerUnavailable")]


def test_the_empty_key_travels_alone_beside_batches() -> None:
    """Batch entries carry keys of 1.. bytes, so a record or a read of the empty key (a valid
    Redis key) goes as its own PUT or GET, and the other keys of the turn still share their
    PUT_BATCH / GET_BATCH: one empty key never fails a batch."""
    replica = ReadReplica({b"": b"record-empty", b"a": b"record-a"})
    pair = Pair(replica)
    pair.flush()
    seen: list[tuple[str, object]] = []

    def answered(answer: object, tag: str) -> None:
        seen.append((tag, answer.verb if isinstance(answer, Frame) else answer))

    pair.client.put("PUT", b"", b"rec", 5.0, answered, no_handler, "put empty")
    pair.client.put("PUT", b"b", b"rec", 5.0, answered, no_handler, "put b")
    pair.client.put_many([("PUT", b"c", b"rec", 5.0, answered, no_handler, "many c"),
                          ("PUT", b"", b"rec", 5.0, answered, no_handler, "many empty")])
    pair.client.get_many([(b"a", 5.0, answered, no_handler, "get a")])
    pair.client.get_many([(b"", 5.0, answered, no_handler, "get empty"),
                          (b"a", 5.0, answered, no_handler, "get a again")])
    pair.flush()
    verbs = sorted(frame.verb for frame in replica.frames)
    assert verbs == ["GET", "GET", "GET_BATCH", "PUT", "PUT", "PUT_BATCH"]
    (batch,) = [f for f in replica.frames if f.verb == "PUT_BATCH"]
    assert [key for _, key, _ in parse_put_batch(batch)] == [b"b", b"c"]
    (reads,) = [f for f in replica.frames if f.verb == "GET_BATCH"]
    assert parse_get_batch(reads) == [b"a"]
    assert sorted(seen, key=str) == sorted([
        ("put empty", "ACK"), ("put b", "ACK"), ("many c", "ACK"), ("many empty", "ACK"),
        ("get a", b"record-a"), ("get empty", b"record-empty"), ("get a again", b"record-a"),
    ], key=str)
