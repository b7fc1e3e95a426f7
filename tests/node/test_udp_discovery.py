"""Tests for twistkv.node.discovery: UDPDiscovery on a fake clock and transport, its wiring
into membership (ClusterRuntimes on a SimulatedNetwork joined by discovery alone), and real
sockets sharing the discovery port on loopback.

(Not named test_discovery.py: tests/core/test_discovery.py has that basename, and the test
directories are not packages, so pytest would refuse to collect both.)
"""

from __future__ import annotations

import random
import socket
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import MessageLengthError
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs

from twistkv.core.discovery import (
    DiscoveryIdentity,
    decode_announce,
    encode_announce,
    make_announce,
)
from twistkv.core.membership import MembershipConfig, MemberState
from twistkv.node.cluster import ClusterOptions, ClusterRuntime
from twistkv.node.discovery import (
    DiscoveryService,
    UDPDiscovery,
    cluster_discovery,
    live_member_ids,
    membership_joiner,
)
from twistkv.node.durability import GroupCommitter
from twistkv.storage.interface import FsyncPolicy
from twistkv.storage.memory import MemoryStore
from twistkv.testing import SimulatedNetwork

EPOCH = 1_767_225_600.0
PORT = 7381
BCAST = "10.77.0.255"


class FakeDatagramTransport:
    """Records what the protocol sends; can be told to fail."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.written: list[tuple[bytes, tuple[str, int]]] = []
        self.fail = fail
        self.broadcast = False

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.fail is not None:
            raise self.fail
        if not self.broadcast:
            raise PermissionError(13, "Permission denied")  # as the kernel, without SO_BROADCAST
        self.written.append((data, addr))

    def setBroadcastAllowed(self, enabled: bool) -> None:
        self.broadcast = enabled

    def stopListening(self) -> None:
        pass


def identity(node: str = "a", secret: bytes | None = None) -> DiscoveryIdentity:
    return DiscoveryIdentity("twistkv", node, f"10.77.0.{ord(node[-1]) % 250 + 1}:7380", secret)


def make(clock: Clock, found: list[str], node: str = "a", *, secret: bytes | None = None,
         members: Callable[[], Any] = tuple, interval: float = 5.0,
         transport: FakeDatagramTransport | None = None) -> tuple[UDPDiscovery, Any]:
    discovery = UDPDiscovery(clock, PORT, BCAST, interval, identity(node, secret), found.append,
                             members=members, rng=random.Random(1))
    transport = transport if transport is not None else FakeDatagramTransport()
    discovery.makeConnection(transport)
    return discovery, transport


def peer_announce(node: str, *, members: int = 1, now: float = EPOCH,
                  secret: bytes | None = None, nonce: bytes = b"\x01" * 16) -> bytes:
    return encode_announce(make_announce(identity(node, secret), members=members, now=now,
                                         nonce=nonce))


def clock() -> Clock:
    c = Clock()
    c.advance(EPOCH)
    return c


# -- announcing ----------------------------------------------------------------------------


def test_announces_at_start_then_every_interval_with_jitter() -> None:
    c = clock()
    discovery, transport = make(c, [], members=lambda: ["a", "b"])
    assert len(transport.written) == 1
    data, addr = transport.written[0]
    assert addr == (BCAST, PORT)
    announce = decode_announce(data)
    assert (announce.node_id, announce.address, announce.members) == ("a", "10.77.0.98:7380", 2)
    for _ in range(20):
        (call,) = c.getDelayedCalls()
        assert 4.5 <= call.getTime() - c.seconds() <= 5.5
        c.advance(call.getTime() - c.seconds())
    assert len(transport.written) == 21
    assert len({decode_announce(d).nonce for d, _ in transport.written}) == 21
    assert discovery.stats["sent"] == 21


def test_stop_cancels_the_timer() -> None:
    c = clock()
    discovery, _ = make(c, [])
    discovery.doStop()
    assert c.getDelayedCalls() == []


def test_a_failing_send_is_counted_logged_once_and_retried() -> None:
    c = clock()
    transport = FakeDatagramTransport(fail=OSError(101, "Network is unreachable"))
    discovery, _ = make(c, [], transport=transport)
    c.advance(6)
    c.advance(6)
    assert discovery.stats["send_errors"] == 3 and discovery.stats["sent"] == 0
    transport.fail = None
    c.advance(6)
    assert discovery.stats["sent"] == 1
    transport.fail = MessageLengthError("message too long")
    c.advance(6)
    assert discovery.stats["send_errors"] == 4


def test_a_failing_member_view_does_not_stop_announcing() -> None:
    def broken() -> list[str]:
        raise RuntimeError("boom")

    c = clock()
    _, transport = make(c, [], members=broken)
    assert decode_announce(transport.written[0][0]).members == 1


# -- receiving -----------------------------------------------------------------------------


def test_hands_a_new_peer_once_and_ignores_itself_and_garbage() -> None:
    c = clock()
    found: list[str] = []
    discovery, transport = make(c, found)
    own = transport.written[0][0]
    discovery.datagramReceived(own, ("10.77.0.98", PORT))
    discovery.datagramReceived(b"\x00garbage", ("10.77.0.66", PORT))
    discovery.datagramReceived(b"x" * 70000, ("10.77.0.66", PORT))
    discovery.datagramReceived(peer_announce("b"), ("10.77.0.99", PORT))
    discovery.datagramReceived(peer_announce("b", nonce=b"\x02" * 16), ("10.77.0.99", PORT))
    assert found == ["10.77.0.99:7380"]
    assert discovery.stats["self"] == 1 and discovery.stats["garbage"] == 2
    assert discovery.stats["join"] == 1 and discovery.stats["recently_handed"] == 1
    c.advance(31)  # the cooldown is 6 intervals
    discovery.datagramReceived(peer_announce("b", now=EPOCH + 31), ("10.77.0.99", PORT))
    assert found == ["10.77.0.99:7380"] * 2


def test_known_members_are_not_handed() -> None:
    c = clock()
    found: list[str] = []
    discovery, _ = make(c, found, members=lambda: ["a", "b"])
    discovery.datagramReceived(peer_announce("b"), ("10.77.0.99", PORT))
    discovery.datagramReceived(peer_announce("c"), ("10.77.0.100", PORT))  # alone: awaits us
    assert found == [] and discovery.stats["known"] == 1 and discovery.stats["await"] == 1


def test_secret_checks_and_replays() -> None:
    c = clock()
    found: list[str] = []
    secret = b"k" * 32
    discovery, _ = make(c, found, secret=secret)
    discovery.datagramReceived(peer_announce("b"), ("10.77.0.99", PORT))
    discovery.datagramReceived(peer_announce("b", secret=b"z" * 32), ("10.77.0.99", PORT))
    good = peer_announce("b", secret=secret)
    discovery.datagramReceived(good, ("10.77.0.99", PORT))
    discovery.datagramReceived(good, ("10.77.0.99", PORT))
    assert found == ["10.77.0.99:7380"]
    assert [discovery.stats[r] for r in ("auth_mismatch", "auth_failed", "join", "replay")] == [
        1, 1, 1, 1]


def test_strangers_are_warned_about_once_each() -> None:
    c = clock()
    discovery, _ = make(c, [], secret=b"k" * 32)
    with capturedLogs() as events:
        for i in range(5):
            stranger = peer_announce("b", secret=b"z" * 32, now=EPOCH + i)
            discovery.datagramReceived(stranger, ("10.77.0.99", PORT))
        discovery.datagramReceived(peer_announce("c"), ("10.77.0.100", PORT))
    warnings = [e for e in events if e["log_level"] == LogLevel.warn]
    assert [(e["node"], e["reason"]) for e in warnings] == [("b", "auth_failed"),
                                                           ("c", "auth_mismatch")]
    assert discovery.stats["auth_failed"] == 5


def test_a_failing_callback_does_not_stop_discovery() -> None:
    c = clock()
    calls: list[str] = []

    def on_peer(address: str) -> None:
        calls.append(address)
        raise RuntimeError("boom")

    discovery = UDPDiscovery(c, PORT, BCAST, 5.0, identity("a"), on_peer)
    discovery.makeConnection(FakeDatagramTransport())
    discovery.datagramReceived(peer_announce("b"), ("10.77.0.99", PORT))
    discovery.datagramReceived(peer_announce("c"), ("10.77.0.100", PORT))
    assert len(calls) == 2


def test_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError):
        UDPDiscovery(clock(), 0, BCAST, 5.0, identity(), print)
    with pytest.raises(ValueError):
        UDPDiscovery(clock(), PORT, BCAST, 0, identity(), print)


# -- listening and the service ---------------------------------------------------------------


class ListeningReactor(MemoryReactorClock):
    """MemoryReactorClock plus a recording listenMulticast."""

    def __init__(self) -> None:
        super().__init__()
        self.multicast: list[tuple[int, Any, str, bool]] = []
        self.transports: list[FakeDatagramTransport] = []

    def listenMulticast(self, port: int, protocol: Any, interface: str = "",
                        maxPacketSize: int = 8192, listenMultiple: bool = False) -> Any:
        self.multicast.append((port, protocol, interface, listenMultiple))
        transport = FakeDatagramTransport()
        self.transports.append(transport)
        protocol.makeConnection(transport)
        return transport


def test_service_listens_shared_with_broadcast_and_stops() -> None:
    reactor = ListeningReactor()
    discovery = UDPDiscovery(reactor, PORT, BCAST, 5.0, identity(), print)
    service = DiscoveryService(discovery)
    service.startService()
    assert [(p, i, m) for p, _, i, m in reactor.multicast] == [(PORT, "", True)]
    (transport,) = reactor.transports
    assert transport.broadcast and len(transport.written) == 1
    assert len(reactor.getDelayedCalls()) == 1
    stopped = service.stopService()
    assert stopped.called and not service.running
    assert reactor.getDelayedCalls() == []


# -- wiring into membership ----------------------------------------------------------------


class RecordingPool:
    """The few PeerClientPool methods MembershipService uses; requests never answer."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []

    def request(self, address: str, frame: Any, timeout: float | None = None) -> Deferred[Any]:
        self.requests.append((address, frame.verb))
        return Deferred()

    def send(self, address: str, frame: Any) -> None:
        self.requests.append((address, frame.verb))

    def forget_failures(self, address: str) -> None:
        pass

    def peer_node_id(self, address: str) -> str | None:
        return None


def test_membership_joiner_syncs_with_the_address_and_retries() -> None:
    from twistkv.core.membership import Membership
    from twistkv.node.gossip import MembershipService

    c = clock()
    membership = Membership("a", "10.77.0.1:7380", MembershipConfig(), random.Random(1),
                            c.seconds())
    pool = RecordingPool()
    service = MembershipService(c, membership, pool)  # type: ignore[arg-type]
    join = membership_joiner(service)
    join("10.77.0.2:7380")
    assert pool.requests == []  # not started: nothing happens
    service.startService()
    join("10.77.0.2:7380")
    assert pool.requests == [("10.77.0.2:7380", "SWIM_SYNC")]
    assert not membership.joined
    c.advance(MembershipConfig().join_retry_interval)
    assert pool.requests.count(("10.77.0.2:7380", "SWIM_SYNC")) == 2
    assert live_member_ids(membership)() == ["a"]
    service.halt()
    join("10.77.0.3:7380")
    assert ("10.77.0.3:7380", "SWIM_SYNC") not in pool.requests
    service.stopService()


class BroadcastSegment:
    """A lossless broadcast domain on the simulated clock: every write reaches every attached
    protocol (the sender included, as the kernel loops broadcasts back) after a delay."""

    def __init__(self, clock: Any, delay: float = 0.002) -> None:
        self.clock = clock
        self.delay = delay
        self.members: list[tuple[str, UDPDiscovery]] = []
        self.muted = False  # True: every datagram is lost

    def attach(self, host: str, discovery: UDPDiscovery) -> None:
        segment = self

        class Transport(FakeDatagramTransport):
            def write(self, data: bytes, addr: tuple[str, int]) -> None:
                if not self.broadcast:
                    raise PermissionError(13, "Permission denied")
                if segment.muted:
                    return
                for _, receiver in list(segment.members):
                    segment.clock.callLater(segment.delay, receiver.datagramReceived, data,
                                            (host, addr[1]))

        self.members.append((host, discovery))
        discovery.makeConnection(Transport())


def sim_cluster(names: list[str], seeds: dict[str, list[str]] | None = None, *,
                muted: bool = False
                ) -> tuple[SimulatedNetwork, dict[str, ClusterRuntime], BroadcastSegment]:
    c = MemoryReactorClock()
    c.advance(EPOCH)
    network = SimulatedNetwork(c, random.Random(3), min_delay=0.001, max_delay=0.02)
    segment = BroadcastSegment(c)
    segment.muted = muted
    runtimes = {}
    for name in names:
        address = f"{name}:7380"
        store = MemoryStore()
        committer = GroupCommitter(store, FsyncPolicy.NEVER, c)
        committer.start()
        runtime = ClusterRuntime(
            name, address, reactor=c, store=store, committer=committer,
            seeds=(seeds or {}).get(name, []), cluster_name="sim",
            options=ClusterOptions(vnodes_per_node=8),
            rng=random.Random(name), endpoint_factory=network.endpoint_factory(address),
        )
        network.revive(address, runtime.server_factory)
        runtime.start()
        service = cluster_discovery(c, runtime, cluster_name="sim", secret=None, interval=5.0,
                                    rng=random.Random(f"jitter-{name}"))
        segment.attach(name, service.discovery)
        runtimes[name] = runtime
    return network, runtimes, segment


def converged(runtimes: dict[str, ClusterRuntime]) -> bool:
    names = set(runtimes)
    return all(
        rt.membership.joined and set(rt.ring.nodes) == names
        and {m.node_id for m in rt.membership.members() if m.state is MemberState.ALIVE} == names
        for rt in runtimes.values()
    )


def test_three_runtimes_without_seeds_form_one_cluster_through_discovery() -> None:
    network, runtimes, segment = sim_cluster(["n1", "n2", "n3"])
    network.run_for(8.0)
    assert converged(runtimes)
    handed = sum(d.stats["handed"] for _, d in segment.members)
    assert 1 <= handed <= 6  # alone nodes joined someone; then everyone was "known"
    network.run_for(30.0)  # later announces change nothing
    assert converged(runtimes)
    assert sum(d.stats["handed"] for _, d in segment.members) == handed


def test_two_clusters_that_meet_on_the_lan_merge() -> None:
    """Two equal clusters that start hearing each other merge into one; the pair with the
    smaller ids is the one that starts the merge, and nobody is left waiting."""
    seeds = {"n1": ["n2:7380"], "n2": ["n1:7380"], "n3": ["n4:7380"], "n4": ["n3:7380"]}
    # Two pairs form through seeds while the LAN drops every announce ...
    network, runtimes, segment = sim_cluster(["n1", "n2", "n3", "n4"], seeds, muted=True)
    network.run_for(5.0)
    assert converged({k: runtimes[k] for k in ("n1", "n2")})
    assert converged({k: runtimes[k] for k in ("n3", "n4")})
    # ... then the announces flow: one pair joins the other (equal sizes: smaller ids join).
    segment.muted = False
    stats = {name: d.stats for name, d in segment.members}
    first_joiners: set[str] = set()
    for _ in range(1200):  # step until the first join decision anywhere
        network.run_for(0.01)
        first_joiners = {n for n in stats if stats[n]["join"]}
        if first_joiners:
            break
    assert first_joiners and first_joiners <= {"n1", "n2"}
    network.run_for(12.0)
    assert converged(runtimes)
    assert sum(stats[n]["await"] for n in stats) == 0
    # Later joins from n3/n4 can happen while views merge (an announce from n1/n2 already
    # counting 4 members): harmless, one more sync. The tie-break only decides who starts.


# -- real sockets on loopback --------------------------------------------------------------


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest_twisted.inlineCallbacks
def test_real_sockets_share_the_port_and_hear_each_other_on_loopback() -> Any:
    """Three discoveries on one host and port, broadcasting to 127.255.255.255 (loopback
    only: nothing leaves the machine)."""
    port = _free_udp_port()
    found: dict[str, list[str]] = {}
    discoveries = []
    for i in (1, 2, 3):
        name = f"r{i}"
        found[name] = []
        ident = DiscoveryIdentity("loop", name, f"127.0.0.1:{40000 + i}")
        discovery = UDPDiscovery(global_reactor, port, "127.255.255.255", 0.2, ident,
                                 found[name].append)
        discovery.start()
        discoveries.append(discovery)
    try:
        sock = discoveries[0].transport.socket
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        for _ in range(50):  # bounded: 50 x 0.1 s
            if all(len(addresses) == 2 for addresses in found.values()):
                break
            yield deferLater(global_reactor, 0.1, lambda: None)
        assert {name: sorted(a) for name, a in found.items()} == {
            "r1": ["127.0.0.1:40002", "127.0.0.1:40003"],
            "r2": ["127.0.0.1:40001", "127.0.0.1:40003"],
            "r3": ["127.0.0.1:40001", "127.0.0.1:40002"],
        }
    finally:
        for discovery in discoveries:
            yield discovery.stop()
