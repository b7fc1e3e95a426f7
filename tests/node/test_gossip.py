"""Tests for L{twistkv.node.gossip}: SWIM membership over the simulated network."""

from __future__ import annotations

import random

from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock

from twistkv.core import membership as swim
from twistkv.core.membership import MemberEvent, Membership, MembershipConfig, MemberState
from twistkv.core.peerwire import Frame, HandshakeConfig
from twistkv.node.gossip import MembershipService
from twistkv.node.peer import PeerClientPool, PeerServerFactory, VerbRouter
from twistkv.testing import SimulatedNetwork

CONFIG = MembershipConfig()


class Node:
    """One node's membership stack wired to the network, as the node service will."""

    def __init__(self, network: SimulatedNetwork, name: str, seeds: list[str],
                 incarnation: int = 0, seed: int = 0) -> None:
        self.name = name
        self.address = f"{name}:7380"
        self.events: list[MemberEvent] = []
        clock = network.clock
        rng = random.Random(f"{name}/{seed}")
        handshake = HandshakeConfig("sim", name, self.address)
        router = VerbRouter()
        self.pool = PeerClientPool(clock, handshake, router, rng,
                                   endpoint_factory=network.endpoint_factory(self.address))
        self.membership = Membership(name, self.address, CONFIG, rng, clock.seconds(),
                                     incarnation=incarnation)
        self.service = MembershipService(clock, self.membership, self.pool, seeds)
        router.route(swim.VERBS, self.service.handle)
        self.service.subscribe(self.events.append)
        network.listen(self.address, PeerServerFactory(clock, handshake, router, rng))
        self.service.startService()

    def view(self) -> dict[str, MemberState]:
        return {m.node_id: m.state for m in self.membership.members()}

    def states_of(self, node_id: str) -> list[MemberState | None]:
        return [e.new_state for e in self.events if e.node_id == node_id]


def cluster(seed: int = 1) -> tuple[SimulatedNetwork, list[Node]]:
    clock = MemoryReactorClock()
    network = SimulatedNetwork(clock, random.Random(seed), min_delay=0.001, max_delay=0.01)
    first = Node(network, "n1", [], seed=seed)
    others = [Node(network, name, [first.address], seed=seed) for name in ("n2", "n3")]
    return network, [first, *others]


def all_alive(nodes: list[Node]) -> bool:
    names = {node.name for node in nodes}
    return all(
        {m.node_id for m in node.membership.alive_members()} == names for node in nodes
    )


def test_three_nodes_converge_through_a_seed() -> None:
    """Two nodes joining through the first all see each other alive within a few seconds,
    and subscribers hear an event for every member learnt."""
    network, nodes = cluster()
    network.run_for(5.0)
    assert all_alive(nodes)
    for node in nodes:
        for other in nodes:
            if other is not node:
                assert node.states_of(other.name)[0] is MemberState.ALIVE


def test_a_killed_node_is_suspected_then_declared_dead() -> None:
    """After a crash the survivors first suspect the node, then declare it dead, and agree."""
    network, (n1, n2, n3) = cluster(seed=2)
    network.run_for(5.0)
    n3.service.halt()
    network.kill(n3.address)
    network.run_for(40.0)
    for survivor in (n1, n2):
        states = survivor.states_of("n3")
        assert MemberState.SUSPECT in states
        assert states.index(MemberState.SUSPECT) < states.index(MemberState.DEAD)
        assert survivor.view() == {"n1": MemberState.ALIVE, "n2": MemberState.ALIVE,
                                   "n3": MemberState.DEAD}


def test_a_restarted_node_with_a_higher_incarnation_is_alive_again() -> None:
    """A node that comes back after being declared dead, with a higher incarnation, is seen
    alive by everyone again."""
    network, (n1, n2, n3) = cluster(seed=3)
    network.run_for(5.0)
    n3.service.halt()
    network.kill(n3.address)
    network.run_for(40.0)
    assert n1.view()["n3"] is MemberState.DEAD
    last = n3.membership.get("n3")
    assert last is not None
    network.revive(n3.address)
    reborn = Node(network, "n3", [n1.address], incarnation=last.incarnation + 1, seed=3)
    network.run_for(10.0)
    assert all_alive([n1, n2, reborn])
    for survivor in (n1, n2):
        assert survivor.states_of("n3")[-1] is MemberState.ALIVE
        member = survivor.membership.get("n3")
        assert member is not None and member.incarnation > last.incarnation


def test_leaving_is_announced_and_seen_as_left() -> None:
    """stopService() gossips LEFT, so the others record a departure, not a failure."""
    network, (n1, n2, n3) = cluster(seed=4)
    network.run_for(5.0)
    n3.service.stopService()
    network.run_for(1.0)
    for survivor in (n1, n2):
        assert survivor.view()["n3"] is MemberState.LEFT
        assert MemberState.SUSPECT not in survivor.states_of("n3")


def test_same_seed_same_membership_history() -> None:
    """The whole cluster run is reproducible: same seed, same events on every node."""

    def history(seed: int) -> list[list[tuple[str, MemberState | None, float]]]:
        network, nodes = cluster(seed)
        network.run_for(5.0)
        nodes[2].service.halt()
        network.kill(nodes[2].address)
        network.run_for(30.0)
        return [[(e.node_id, e.new_state, e.at) for e in node.events] for node in nodes]

    assert history(11) == history(11)


def test_malformed_and_unexpected_frames_are_refused_not_crashed_on() -> None:
    """Garbage in a SWIM frame gets bad_request; a SWIM answer verb sent as a request
    gets unknown_verb; a request before the service runs is refused."""
    clock = MemoryReactorClock()
    network = SimulatedNetwork(clock, random.Random(1))
    node = Node(network, "n1", [])
    bad = node.service.handle("n2", Frame("SWIM_PING", 1, {"seq": "x"}))
    assert isinstance(bad, Frame) and bad.fields["code"] == "bad_request"
    odd = node.service.handle("n2", Frame("SWIM_ACK", 1, {"seq": "1", "from": "n2"}))
    assert isinstance(odd, Frame) and odd.fields["code"] == "unknown_verb"
    forged = node.service.handle("n2", Frame("SWIM_PING", 1, {
        "seq": "1", "from": "n9", "addr": "n9:7380", "target": "n1"}))
    assert isinstance(forged, Frame) and (forged.verb, forged.fields["reason"]) == (
        "NACK", "ignored")
    node.service.halt()
    stopped = node.service.handle("n2", Frame("SWIM_PING", 1, {
        "seq": "2", "from": "n2", "addr": "n2:7380", "target": "n1"}))
    assert isinstance(stopped, Frame) and stopped.fields["reason"] == "shutting_down"


def test_pingreq_is_answered_once_the_relayed_probe_ends() -> None:
    """A helper answers SWIM_PINGREQ on the same request: SWIM_ACK when the target acked
    its relayed probe, SWIM_NACK (not silence) when the probe timed out."""
    network, (n1, n2, n3) = cluster(seed=5)
    network.run_for(5.0)

    def pingreq(seq: int) -> Deferred[Frame]:
        verb, fields, payload = swim.encode(
            swim.PingReq(seq, "n1", n1.address, "n3", n3.address))
        return n1.pool.request(n2.address, Frame(verb, 0, fields, payload), timeout=5.0)

    def outcome(deferred: Deferred[Frame]) -> Frame:
        results: list[Frame] = []
        deferred.addCallback(results.append)
        assert results, "no answer yet"
        return results[0]

    alive = pingreq(10**12)
    network.run_for(0.2)
    answer = outcome(alive)
    assert (answer.verb, answer.fields["seq"], answer.fields["from"]) == (
        "SWIM_ACK", str(10**12), "n2")
    n3.service.halt()
    network.kill(n3.address)
    dead = pingreq(10**12 + 1)
    network.run_for(0.2)
    assert not dead.called  # the helper is still waiting for its own probe
    network.run_for(0.3)
    answer = outcome(dead)
    assert (answer.verb, answer.fields["seq"]) == ("SWIM_NACK", str(10**12 + 1))


def test_join_through_merges_two_separate_nodes_and_halt_makes_the_service_inactive() -> None:
    """C{join_through} (what LAN discovery and JOIN call) makes a lone node join another's
    cluster; C{active} turns false on C{halt}, so callers stop acting for a crashed node."""
    clock = MemoryReactorClock()
    network = SimulatedNetwork(clock, random.Random(5), min_delay=0.001, max_delay=0.01)
    a = Node(network, "a", [])
    b = Node(network, "b", [])
    network.run_for(3.0)
    assert set(a.view()) == {"a"} and set(b.view()) == {"b"}
    assert b.service.active
    b.service.join_through([a.address])
    network.run_for(3.0)
    assert all_alive([a, b])
    b.service.halt()
    assert not b.service.active
