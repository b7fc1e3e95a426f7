"""Anti-entropy end to end: ClusterRuntimes on a SimulatedNetwork and one fake clock.

Divergence is made either by wiping a node's store (a fresh MemoryStore on restart: its data
directory was lost) or by applying versions straight into chosen replicas, so that nothing but
anti-entropy (no hint, no read repair) can bring replicas together.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock

from twistkv.core.merkle import FULL_RING, encode_bitmap, encode_ranges, record_digest
from twistkv.core.peerwire import Frame
from twistkv.core.quorum import ConsistencyLevel
from twistkv.core.record import Record, Version
from twistkv.core.ring import TokenRange
from twistkv.node.antientropy import (
    RateLimiter,
    RepairSummary,
    decode_entries,
    encode_entries,
)
from twistkv.node.cluster import ClusterOptions, ClusterRuntime
from twistkv.node.durability import GroupCommitter
from twistkv.storage.interface import FsyncPolicy
from twistkv.storage.memory import MemoryStore
from twistkv.testing import SimulatedNetwork

EPOCH = 1_767_225_600.0
#: Background anti-entropy off: only an explicit repair or exchange runs.
QUIET = ClusterOptions(vnodes_per_node=16, antientropy_interval=0)


class Node:
    def __init__(self, cluster: Cluster, name: str) -> None:
        self.cluster = cluster
        self.name = name
        self.address = f"{name}:7380"
        self.store = MemoryStore()
        self.incarnation = 0
        self.runtime: ClusterRuntime | None = None

    @property
    def rt(self) -> ClusterRuntime:
        assert self.runtime is not None
        return self.runtime

    def boot(self, seeds: list[str]) -> None:
        network = self.cluster.network
        committer = GroupCommitter(self.store, FsyncPolicy.NEVER, network.clock)
        committer.start()
        self.runtime = ClusterRuntime(
            self.name, self.address, reactor=network.clock, store=self.store,
            committer=committer, seeds=seeds, cluster_name="ae",
            options=self.cluster.options,
            rng=random.Random(f"{self.cluster.seed}/{self.name}/{self.incarnation}"),
            endpoint_factory=network.endpoint_factory(self.address),
            incarnation=self.incarnation,
        )
        network.revive(self.address, self.runtime.server_factory)
        self.runtime.start()

    def crash(self) -> None:
        self.rt.halt()
        self.cluster.network.kill(self.address)
        self.incarnation += 1

    def restart(self, wipe: bool = False) -> None:
        if wipe:
            self.store = MemoryStore()
        self.boot([n.address for n in self.cluster.nodes if n is not self])

    def records(self) -> dict[bytes, Record]:
        return dict(self.rt.replica.iterate())


class Cluster:
    def __init__(self, size: int, options: ClusterOptions = QUIET, seed: int = 1) -> None:
        self.seed = seed
        self.options = options
        clock = MemoryReactorClock()
        clock.advance(EPOCH)
        self.network = SimulatedNetwork(clock, random.Random(seed), min_delay=0.001,
                                        max_delay=0.01)
        self.nodes = [Node(self, f"n{i + 1}") for i in range(size)]
        self.nodes[0].boot([])
        for node in self.nodes[1:]:
            node.boot([self.nodes[0].address])
        self.run(8.0)
        assert self.converged()

    def run(self, seconds: float) -> None:
        self.network.run_for(seconds)

    def converged(self) -> bool:
        names = {n.name for n in self.nodes}
        return all(
            n.runtime is not None and n.rt.running and n.rt.membership.joined
            and set(n.rt.ring.nodes) == names and all(n.rt.is_alive(o) for o in names)
            for n in self.nodes
        )

    def wait(self, deferred: Deferred[Any], seconds: float = 3.0) -> object:
        results: list[object] = []
        deferred.addBoth(results.append)
        step = 0.5
        while not results and seconds > 0:
            self.run(min(step, seconds))
            seconds -= step
        assert results, "timed out"
        return results[0]

    def write_all(self, count: int, prefix: bytes = b"key") -> dict[bytes, bytes]:
        values = {b"%s-%d" % (prefix, i): b"value-%d" % i for i in range(count)}
        writer = self.nodes[0].rt.keyspace
        for key, value in values.items():
            writer.set(key, value, 0, ConsistencyLevel.ALL)
        self.run(3.0)
        return values

    def digests(self, node: Node) -> dict[bytes, bytes]:
        return {key: record_digest(record) for key, record in node.records().items()}

    def replicas_of(self, key: bytes) -> set[str]:
        node = self.nodes[0]
        return set(node.rt.ring.preference_list(key, self.options.n))


def version(value: bytes, node: str, counter: int, tombstone: bool = False,
            clock: tuple[tuple[str, int], ...] | None = None) -> Version:
    pairs = clock if clock is not None else ((node, counter),)
    return Version(b"" if tombstone else value, pairs, counter, node, 0, tombstone)


# -- the scenarios -------------------------------------------------------------------


def test_a_wiped_replica_gets_every_key_back_from_a_repair() -> None:
    """Three nodes, 150 keys; n3 loses its data directory and restarts empty; REPAIR on n3
    brings every key back, identical to the other replicas, counted in the summary and the
    node's stats."""
    cluster = Cluster(3)
    n1, n2, n3 = cluster.nodes
    values = cluster.write_all(150)
    assert len(n3.records()) == 150
    n3.crash()
    n3.restart(wipe=True)
    cluster.run(5.0)
    assert cluster.converged() and n3.records() == {}
    summary = cluster.wait(n3.rt.antientropy.repair_all(), 30.0)
    assert isinstance(summary, RepairSummary)
    assert summary.failures == {}
    assert summary.trees_compared == 2 and summary.peers == 2
    assert summary.keys_pulled == 150 and summary.keys_pushed == 0
    assert summary.ranges_differing > 0 and summary.bytes_sent > 0
    assert cluster.digests(n3) == cluster.digests(n1) == cluster.digests(n2)
    assert {k: r.versions[0].value for k, r in n3.records().items()} == values
    stats = n3.rt.stats()
    assert stats["ae_trees_compared"] == 2 and stats["ae_keys_pulled"] == 150
    assert stats["ae_full_repairs"] == 1 and stats["ae_bytes_sent"] == summary.bytes_sent
    # A second repair finds nothing to do: identical trees, no keys moved.
    again = cluster.wait(n3.rt.antientropy.repair_all(), 10.0)
    assert isinstance(again, RepairSummary)
    assert again.trees_compared == 2 and again.ranges_differing == 0
    assert again.keys_repaired == 0


def test_background_anti_entropy_alone_restores_a_wiped_replica() -> None:
    """No REPAIR, no reads, no hints: background exchanges every few seconds refill a wiped
    replica, the healthy nodes pushing to it as well as it pulling."""
    options = replace(QUIET, antientropy_interval=3.0, antientropy_rate=200.0)
    cluster = Cluster(3, options, seed=2)
    n1, _, n3 = cluster.nodes
    cluster.write_all(120)
    n3.crash()
    n3.restart(wipe=True)
    cluster.run(60.0)
    assert cluster.digests(n3) == cluster.digests(n1)
    assert len(n3.records()) == 120
    moved = sum(n.rt.antientropy.stats.keys_pushed + n.rt.antientropy.stats.keys_pulled
                for n in cluster.nodes)
    assert moved >= 120
    assert all(n.rt.hints.stats.added == 0 for n in cluster.nodes)


def test_divergent_replicas_converge_keeping_concurrent_siblings() -> None:
    """Keys written into single replicas, a key updated on one replica only, and concurrent
    versions of one key on two replicas: after a repair pass from every node, the three
    replicas are identical, the newer version replaced the older, and both concurrent versions
    survive as siblings."""
    cluster = Cluster(3)
    n1, n2, n3 = cluster.nodes
    for i, node in enumerate(cluster.nodes):
        for j in range(10):
            node.rt.replica.apply(b"only-%d-%d" % (i, j), [version(b"v", node.name, 100 + j)])
    old = version(b"old", "n1", 100)
    new = version(b"new", "n1", 200)
    for node in cluster.nodes:
        node.rt.replica.apply(b"updated", [old])
    n2.rt.replica.apply(b"updated", [new])
    left = version(b"left", "n1", 300)
    right = version(b"right", "n2", 301)
    n1.rt.replica.apply(b"siblings", [left])
    n3.rt.replica.apply(b"siblings", [right])
    for node in cluster.nodes:
        summary = cluster.wait(node.rt.antientropy.repair_all(), 20.0)
        assert isinstance(summary, RepairSummary) and summary.failures == {}
    assert cluster.digests(n1) == cluster.digests(n2) == cluster.digests(n3)
    records = n3.records()
    assert len(records) == 32
    assert records[b"updated"].versions == (new,)
    assert {v.value for v in records[b"siblings"].versions} == {b"left", b"right"}
    # Converged: trees agree everywhere now.
    for node in cluster.nodes:
        summary = cluster.wait(node.rt.antientropy.repair_all(), 10.0)
        assert isinstance(summary, RepairSummary) and summary.ranges_differing == 0


def test_a_deleted_key_stays_deleted_after_repair() -> None:
    """n3 missed a delete and still holds the value: anti-entropy between any pair spreads the
    tombstone (it descends the value), never the value."""
    cluster = Cluster(3)
    n1, n2, n3 = cluster.nodes
    value = version(b"v", "n1", 100)
    tombstone = version(b"", "n2", 200, tombstone=True, clock=(("n1", 100), ("n2", 200)))
    for node in cluster.nodes:
        node.rt.replica.apply(b"k", [value])
    for node in (n1, n2):
        node.rt.replica.apply(b"k", [tombstone])
    summary = cluster.wait(n3.rt.antientropy.repair_all(), 10.0)  # n3 pulls ...
    assert isinstance(summary, RepairSummary) and summary.keys_pulled == 1
    assert summary.keys_pushed == 0  # ... and has nothing the others lack
    for node in cluster.nodes:
        record = node.rt.replica.read(b"k")
        assert record is not None and record.versions == (tombstone,)
    got = cluster.wait(n1.rt.keyspace.get(b"k", ConsistencyLevel.ALL))
    assert got is None


def test_repair_only_moves_the_ranges_a_node_replicates() -> None:
    """Five nodes with N = 3: a wiped node gets back exactly the keys whose preference list
    names it, from the peers that share each range."""
    cluster = Cluster(5, seed=3)
    cluster.write_all(100)
    victim = cluster.nodes[2]
    victim.crash()
    victim.restart(wipe=True)
    cluster.run(5.0)
    summary = cluster.wait(victim.rt.antientropy.repair_all(), 30.0)
    assert isinstance(summary, RepairSummary) and summary.failures == {}
    assert summary.peers == 4
    mine = {key for key in (b"key-%d" % i for i in range(100))
            if victim.name in cluster.replicas_of(key)}
    assert 0 < len(mine) < 100
    assert set(victim.records()) == mine
    for node in cluster.nodes:
        assert set(node.records()) == {k for k in (b"key-%d" % i for i in range(100))
                                       if node.name in cluster.replicas_of(k)}


def test_rate_limit_bounds_keys_repaired_per_second() -> None:
    """At 5 keys/s in the background, a 40-key repair takes about 8 s: after t seconds at most
    5 * t + 5 (one burst) keys have moved, and one exchange runs at a time."""
    options = replace(QUIET, antientropy_rate=5.0)
    cluster = Cluster(3, options, seed=4)
    _, n2, n3 = cluster.nodes
    cluster.write_all(40)
    n3.crash()
    n3.restart(wipe=True)
    cluster.run(3.0)
    ae = n3.rt.antientropy
    start = cluster.network.clock.seconds()
    done = ae.exchange("n1")
    other = ae.exchange("n2")
    observed = []
    finished: list[object] = []
    done.addBoth(finished.append)
    while not finished:
        cluster.run(0.5)
        elapsed = cluster.network.clock.seconds() - start
        observed.append((elapsed, ae.stats.keys_pulled))
        assert ae.stats.keys_pulled <= 5 * elapsed + 5
        assert elapsed < 30
    assert ae.stats.keys_pulled == 40 and observed[-1][0] >= 6.0
    # The second exchange, started while the first ran, ran after it and found nothing.
    result = cluster.wait(other, 20.0)
    assert isinstance(result, RepairSummary) and result.keys_repaired == 0
    assert result.trees_compared == 1


def test_background_exchanges_follow_the_interval() -> None:
    """One exchange per interval (jittered +-25%), alternating between the peers."""
    options = replace(QUIET, antientropy_interval=10.0)
    cluster = Cluster(3, options, seed=5)
    ae = cluster.nodes[0].rt.antientropy
    before = ae.stats.exchanges
    cluster.run(100.0)
    made = ae.stats.exchanges - before
    assert 100 / 12.5 - 1 <= made <= 100 / 7.5 + 1
    assert ae.stats.exchange_failures == 0
    assert ae.stats.trees_compared == ae.stats.exchanges


# -- tombstones: collected only once every replica holds them --------------------------------


def test_tombstones_wait_for_every_replica_and_a_deleted_key_never_comes_back() -> None:
    """n3 is down (hint dropped after its age cap) when k is deleted, and stays away past the
    grace period: n1 and n2 keep the tombstone, because n3 never confirmed it. When n3 returns
    with the old value, anti-entropy gives it the tombstone; only then is it collected, on every
    replica, and nothing (exchange, read, repair) brings the value back."""
    options = replace(QUIET, antientropy_interval=4.0, tombstone_grace=120.0,
                      hint_max_age=60.0, gc_interval=1.0)
    cluster = Cluster(3, options, seed=6)
    n1, n2, n3 = cluster.nodes
    cluster.write_all(5)
    assert n3.rt.replica.read(b"key-0") is not None
    n3.crash()
    cluster.run(2.0)
    assert cluster.wait(n1.rt.keyspace.delete([b"key-0"]), 3.0) == 1
    cluster.run(300.0)  # hint expired (60 s) and grace (120 s) long past
    assert all(len(n.rt.hints) == 0 for n in (n1, n2))
    for node in (n1, n2):
        record = node.rt.replica.read(b"key-0")
        assert record is not None and record.versions[0].tombstone, node.name
        assert node.rt.stats()["tombstones_collected"] == 0
        assert node.rt.antientropy.gc_pending == 1
    n3.restart()
    assert n3.rt.replica.read(b"key-0") is not None  # the old value, on n3's disk
    cluster.run(60.0)
    for node in cluster.nodes:
        assert node.rt.replica.read(b"key-0") is None, node.name
        assert node.rt.stats()["tombstones_collected"] == 1, node.name
    for node in cluster.nodes:
        summary = cluster.wait(node.rt.antientropy.repair_all(), 10.0)
        assert isinstance(summary, RepairSummary) and summary.keys_repaired == 0
    assert cluster.wait(n3.rt.keyspace.get(b"key-0", ConsistencyLevel.ALL)) is None
    assert all(n.rt.replica.read(b"key-0") is None for n in cluster.nodes)
    assert len(n1.records()) == 4


def test_without_background_anti_entropy_collection_falls_back_to_the_grace() -> None:
    """antientropy_interval 0: nobody confirms tombstones, so the grace period alone decides
    (the documented weaker rule)."""
    options = replace(QUIET, tombstone_grace=120.0, hint_max_age=60.0)
    cluster = Cluster(3, options, seed=7)
    n1 = cluster.nodes[0]
    cluster.write_all(2)
    assert cluster.wait(n1.rt.keyspace.delete([b"key-0"]), 3.0) == 1
    cluster.run(150.0)
    assert all(n.rt.replica.read(b"key-0") is None for n in cluster.nodes)


# -- the responder ---------------------------------------------------------------------------


def test_responder_refuses_bad_requests_and_ranges_it_does_not_replicate() -> None:
    cluster = Cluster(5, seed=8)
    node = cluster.nodes[0]
    ae = node.rt.antientropy
    head = {"start": "0", "end": "0", "depth": "4"}
    answer = ae.handle("n2", Frame("AE_TREE", 1, head, encode_ranges([FULL_RING])))
    assert isinstance(answer, Frame) and answer.verb == "NACK"
    assert answer.fields["reason"] == "not_owner"
    for fields, payload in [
        (dict(head, depth="99"), encode_ranges([FULL_RING])),
        (dict(head, start="x"), encode_ranges([FULL_RING])),
        (head, b"\x00"),
        (dict(head, start="5", end="9"), encode_ranges([TokenRange(1, 20)])),
        (head, encode_ranges([FULL_RING]) + b"junk"),
    ]:
        answer = ae.handle("n2", Frame("AE_TREE", 1, fields, payload))
        assert isinstance(answer, Frame) and answer.verb == "ERROR", fields
        assert answer.fields["code"] == "bad_request"
    mine = ae.units()[0][1]
    ok = ae.handle("n2", Frame("AE_KEYS", 1, head, encode_ranges(mine) + encode_bitmap([1], 16)))
    result = cluster.wait(ok) if isinstance(ok, Deferred) else ok
    assert isinstance(result, Frame) and result.verb == "VAL"
    assert decode_entries(result.payload) == {}


def test_key_entries_and_rate_limiter_units() -> None:
    entries = [(b"a", bytes(16)), (b"\x00\xff", bytes(range(16)))]
    assert decode_entries(encode_entries(entries)) == dict(entries)
    clock = MemoryReactorClock()
    limiter = RateLimiter(clock, 10.0, 5)
    fired: list[float] = []
    for _ in range(4):
        limiter.acquire(5).addCallback(lambda _: fired.append(clock.seconds()))
    for _ in range(40):
        clock.advance(0.1)
    assert fired == pytest.approx([0.0, 0.5, 1.0, 1.5], abs=0.11)
