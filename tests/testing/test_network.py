"""Tests for L{twistkv.testing.network}: the deterministic in-process network."""

from __future__ import annotations

import random
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from twistkv.core.peerwire import Frame, HandshakeConfig
from twistkv.node.peer import (
    PeerClientPool,
    PeerServerFactory,
    PeerTimeout,
    PeerUnavailable,
)
from twistkv.testing import SimulatedNetwork

A, B, C = "a:7380", "b:7380", "c:7380"


class Recorder(Protocol):
    """Remembers what arrived and when, and how the connection ended."""

    def __init__(self, clock: MemoryReactorClock) -> None:
        self.clock = clock
        self.received: list[tuple[float, bytes]] = []
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received.append((self.clock.seconds(), data))

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.lost = reason

    @property
    def data(self) -> bytes:
        return b"".join(chunk for _, chunk in self.received)


class RecorderFactory(Factory):
    def __init__(self, clock: MemoryReactorClock) -> None:
        self.clock = clock
        self.built: list[Recorder] = []

    def buildProtocol(self, addr: Any) -> Recorder:
        protocol = Recorder(self.clock)
        self.built.append(protocol)
        return protocol


def outcome(deferred: Deferred[Any]) -> Any:
    results: list[Any] = []
    deferred.addBoth(results.append)
    assert results, "Deferred has not fired"
    return results[0]


def make_network(seed: int = 1, **options: Any) -> tuple[MemoryReactorClock, SimulatedNetwork]:
    clock = MemoryReactorClock()
    return clock, SimulatedNetwork(clock, random.Random(seed), **options)


def dial(clock: MemoryReactorClock, network: SimulatedNetwork,
         source: str = A, destination: str = B) -> tuple[Recorder, Recorder]:
    """Connect a Recorder at C{source} to the Recorder server listening at C{destination}."""
    server_factory = RecorderFactory(clock)
    network.listen(destination, server_factory)
    connecting = network.endpoint_factory(source)(destination).connect(RecorderFactory(clock))
    network.run_for(1.0)
    client = outcome(connecting)
    assert isinstance(client, Recorder)
    return client, server_factory.built[-1]


def test_bytes_arrive_in_order_even_when_writes_are_split() -> None:
    """Each direction delivers every byte in write order, whatever the random delays and
    however the writes are segmented."""
    clock, network = make_network(split_writes=True, min_delay=0.001, max_delay=0.05)
    client, server = dial(clock, network)
    expected = b""
    for i in range(60):
        chunk = f"<{i}>".encode() * (i % 5 + 1)
        client.transport.write(chunk)
        expected += chunk
        network.run_for(0.004)  # writes closer together than the delay spread
    server.transport.write(b"back")
    network.run_for(1.0)
    assert server.data == expected
    assert client.data == b"back"
    assert len(server.received) > 60  # segmentation really happened


def test_delays_stay_within_bounds() -> None:
    """A write arrives no sooner than min_delay and no later than max_delay after it."""
    clock, network = make_network(seed=7, min_delay=0.01, max_delay=0.03)
    client, server = dial(clock, network)
    sent: list[float] = []
    for i in range(40):
        sent.append(clock.seconds())
        client.transport.write(bytes([i]))
        network.run_for(0.05)
    delays = [arrived - sent[data[0]] for arrived, data in server.received]
    assert len(delays) == 40
    assert all(0.01 - 1e-9 <= d <= 0.03 + 1e-9 for d in delays)
    assert max(delays) - min(delays) > 0.01  # delays really are random


def test_partition_holds_bytes_and_heal_delivers_them_in_order() -> None:
    """Bytes between partitioned groups are held, not lost, and arrive in order on heal;
    traffic inside a group keeps flowing."""
    clock, network = make_network()
    client, server = dial(clock, network)
    network.partition([A], [B])
    client.transport.write(b"one ")
    client.transport.write(b"two")
    network.run_for(60.0)
    assert server.received == []
    network.heal()
    network.run_for(0.005)
    assert server.data == b"one two"
    assert client.lost is None and server.lost is None


def test_bytes_in_flight_when_the_partition_starts_are_held_too() -> None:
    """A partition also stops bytes already on the wire."""
    clock, network = make_network(min_delay=0.01, max_delay=0.01)
    client, server = dial(clock, network)
    client.transport.write(b"in flight")
    network.isolate(B)
    network.run_for(1.0)
    assert server.received == []
    network.heal()
    network.run_for(1.0)
    assert server.data == b"in flight"


def test_connect_across_a_partition_hangs_until_heal() -> None:
    """Dialling across a partition neither succeeds nor fails until the partition heals."""
    clock, network = make_network()
    network.listen(B, RecorderFactory(clock))
    network.partition([A], [B])
    connecting = network.endpoint_factory(A)(B).connect(RecorderFactory(clock))
    network.run_for(30.0)
    assert not connecting.called
    network.heal()
    network.run_for(1.0)
    assert isinstance(outcome(connecting), Recorder)


def test_kill_resets_both_ends_and_refuses_until_revive() -> None:
    """kill() ends the connection on both sides, connects to the dead address are refused
    (after a delay), and revive() makes it reachable again."""
    clock, network = make_network()
    client, server = dial(clock, network)
    client.transport.write(b"lost in flight")
    network.kill(B)
    assert client.lost is not None and client.lost.check(ConnectionLost)
    assert server.lost is not None and server.lost.check(ConnectionLost)
    network.run_for(1.0)
    assert server.received == []
    refused = network.endpoint_factory(A)(B).connect(RecorderFactory(clock))
    assert not refused.called
    network.run_for(1.0)
    assert outcome(refused).check(ConnectionRefusedError)
    from_dead = network.endpoint_factory(B)(A).connect(RecorderFactory(clock))
    network.run_for(1.0)
    assert outcome(from_dead).check(ConnectionRefusedError)
    network.revive(B)
    client, _ = dial(clock, network)
    assert client.lost is None


def test_drop_connections_resets_but_keeps_the_host_up() -> None:
    """drop_connections() resets every connection of an address; it can reconnect."""
    clock, network = make_network()
    client, server = dial(clock, network)
    network.drop_connections(A)
    assert client.lost is not None and server.lost is not None
    assert network.connections() == []
    dial(clock, network)
    assert network.connections() == [(A, B)]


def test_lose_connection_delivers_pending_bytes_then_closes_cleanly() -> None:
    """loseConnection() is a FIN: bytes written before it arrive, then both ends close."""
    clock, network = make_network()
    client, server = dial(clock, network)
    client.transport.write(b"last words")
    client.transport.loseConnection()
    network.run_for(1.0)
    assert server.data == b"last words"
    assert server.lost is not None and server.lost.check(ConnectionDone)
    assert client.lost is not None and client.lost.check(ConnectionDone)
    assert network.connections() == []


def test_unlisted_addresses_form_their_own_group() -> None:
    """Addresses not named in partition() share one implicit group."""
    clock, network = make_network()
    network.partition([A])
    assert network.blocked(A, B) and not network.blocked(B, C)
    with pytest.raises(ValueError):
        network.partition([A], [A, B])


# -- with the peer layer ---------------------------------------------------------------------


class Node:
    """One node's peer layer on the simulated network: server factory and client pool."""

    def __init__(self, network: SimulatedNetwork, name: str, seed: int) -> None:
        self.address = f"{name}:7380"
        self.seen: list[tuple[str, str]] = []
        config = HandshakeConfig("sim", name, self.address, b"secret")
        rng = random.Random(seed)
        self.server = PeerServerFactory(network.clock, config, self.handle, rng)
        network.listen(self.address, self.server)
        self.pool = PeerClientPool(network.clock, config, self.handle, rng,
                                   endpoint_factory=network.endpoint_factory(self.address),
                                   request_timeout=1.0, connect_timeout=1.0)
        self.name = name

    def handle(self, peer: str, frame: Frame) -> Frame:
        self.seen.append((peer, frame.fields.get("key", "")))
        return Frame("VAL", 0, payload=f"{self.name}:{frame.fields.get('key', '')}".encode())


def exchange(seed: int) -> tuple[list[Any], SimulatedNetwork, list[Node]]:
    """Three nodes each send four GETs to both others; returns what every request got."""
    clock, network = make_network(seed, min_delay=0.001, max_delay=0.02)
    nodes = [Node(network, name, seed * 10 + i) for i, name in enumerate("abc")]
    results: list[Any] = []
    for round_number in range(4):
        for node in nodes:
            for other in nodes:
                if other is not node:
                    key = f"{node.name}{round_number}"
                    request = node.pool.request(other.address, Frame("GET", 0, {"key": key}))
                    request.addBoth(lambda r, k=key, o=other.name: results.append(
                        (clock.seconds(), o, k, r.payload if isinstance(r, Frame) else r)))
        network.run_for(0.003)
    network.run_for(2.0)
    return results, network, nodes


def test_three_pools_exchange_requests_over_the_network() -> None:
    """Every request between three nodes is answered by the right node, which saw the
    authenticated node id of the sender; one connection per ordered pair is opened."""
    results, network, nodes = exchange(seed=3)
    assert len(results) == 24
    for _, answered_by, key, payload in results:
        assert payload == f"{answered_by}:{key}".encode()
    for node in nodes:
        assert sorted(node.seen) == sorted(
            (sender, f"{sender}{r}") for sender in "abc" if sender != node.name for r in range(4)
        )
    assert len([e for e in network.log if e.kind == "connect"]) == 6


def test_same_seed_same_run_other_seed_other_run() -> None:
    """Determinism: the same seed reproduces the event log and results exactly; another
    seed gives another interleaving."""
    first, first_network, _ = exchange(seed=5)
    again, again_network, _ = exchange(seed=5)
    other, other_network, _ = exchange(seed=6)
    assert first_network.log == again_network.log and first == again
    assert first_network.log != other_network.log
    assert any(event.kind == "deliver" for event in first_network.log)


def test_pools_see_kills_as_unavailable_and_partitions_as_timeouts() -> None:
    """A killed peer fails requests with PeerUnavailable (connection reset, then refused);
    an isolated one with PeerTimeout; after revive and heal requests succeed again."""
    _, network, (a, b, c) = exchange(seed=9)
    outstanding = a.pool.request(b.address, Frame("GET", 0, {"key": "x"}))
    network.kill(b.address)
    assert outcome(outstanding).check(PeerUnavailable)
    refused = a.pool.request(b.address, Frame("GET", 0, {"key": "y"}))
    network.run_for(0.5)
    failure = outcome(refused)
    assert failure.check(PeerUnavailable) and "connect failed" in failure.value.reason
    network.isolate(c.address)
    isolated = a.pool.request(c.address, Frame("GET", 0, {"key": "z"}))
    network.run_for(1.0)
    assert outcome(isolated).check(PeerTimeout)
    network.revive(b.address)
    network.heal()
    network.run_for(60.0)  # past any backoff
    answers = [a.pool.request(n.address, Frame("GET", 0, {"key": "k"})) for n in (b, c)]
    network.run_for(1.0)
    assert [outcome(d).payload for d in answers] == [b"b:k", b"c:k"]


def test_changing_the_partition_releases_what_it_no_longer_blocks() -> None:
    """Re-partitioning without heal() delivers held bytes between now-joined addresses."""
    clock, network = make_network()
    client, server = dial(clock, network)
    network.partition([A], [B, C])
    client.transport.write(b"held")
    network.run_for(5.0)
    assert server.received == []
    network.partition([A, B], [C])
    network.run_for(0.01)
    assert server.data == b"held"
