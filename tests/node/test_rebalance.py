"""Rebalancing end to end: ClusterRuntimes on a SimulatedNetwork and one fake clock.

Each scenario writes data, changes the membership (a fourth node joins, a node leaves, a
killed node is removed) while a QUORUM write load runs and connections are reset at random
(the network's model of message loss), then checks the issue's invariants once hints are
delivered and the old copies are dropped:

 - every acknowledged write is readable at QUORUM (its version, or one descending it);
 - every key is stored on exactly its N owners under the new ring, each holding the latest
   acknowledged version (or a descendant).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from twistkv.core.membership import MemberState
from twistkv.core.merkle import encode_ranges
from twistkv.core.peerwire import Frame
from twistkv.core.quorum import ConsistencyLevel
from twistkv.core.record import Record, Version, decode_record, encode_record
from twistkv.core.replication import version_clock
from twistkv.core.ring import TokenRange
from twistkv.core.transfers import RingStatus
from twistkv.node.cluster import ClusterOptions, ClusterRuntime
from twistkv.node.coordinator import QuorumUnavailable, ReadResult
from twistkv.node.durability import GroupCommitter
from twistkv.node.events import Event, EventBus, watch_cluster
from twistkv.node.rebalance import RebalanceError, decode_entries, encode_entries
from twistkv.storage.interface import FsyncPolicy
from twistkv.storage.memory import MemoryStore
from twistkv.testing import SimulatedNetwork

EPOCH = 1_767_225_600.0
#: Small rings, slow streams (so writes land mid-move), quick cleanup; no background
#: anti-entropy, so only streaming, pending writes and hints can place data.
OPTIONS = ClusterOptions(
    vnodes_per_node=16, antientropy_interval=0, rebalance_rate=8_000,
    rebalance_chunk_keys=40, rebalance_chunk_bytes=8_000, rebalance_drop_delay=5.0,
    rebalance_retry=0.5,
)


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

    @property
    def up(self) -> bool:
        return self.runtime is not None and self.runtime.running

    def boot(self, seeds: list[str]) -> None:
        network = self.cluster.network
        committer = GroupCommitter(self.store, FsyncPolicy.NEVER, network.clock)
        committer.start()
        self.runtime = ClusterRuntime(
            self.name, self.address, reactor=network.clock, store=self.store,
            committer=committer, seeds=seeds, cluster_name="rb",
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

    def records(self) -> dict[bytes, Record]:
        return dict(self.rt.replica.iterate())


@dataclass
class Write:
    key: bytes
    value: bytes
    version: Version | None = None
    failed: bool = False


@dataclass
class Cluster:
    size: int
    seed: int = 1
    options: ClusterOptions = OPTIONS
    network: SimulatedNetwork = field(init=False)
    nodes: list[Node] = field(init=False)
    writes: list[Write] = field(default_factory=list)

    def __post_init__(self) -> None:
        clock = MemoryReactorClock()
        clock.advance(EPOCH)
        self.rng = random.Random(self.seed)
        self.network = SimulatedNetwork(clock, random.Random(self.seed), min_delay=0.001,
                                        max_delay=0.01)
        self.nodes = []
        for _ in range(self.size):
            self.add_node()
        self.run(8.0)
        assert self.converged()

    def add_node(self) -> Node:
        node = Node(self, f"n{len(self.nodes) + 1}")
        node.boot([self.nodes[0].address] if self.nodes else [])
        self.nodes.append(node)
        return node

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def run(self, seconds: float) -> None:
        self.network.run_for(seconds)

    def live(self) -> list[Node]:
        return [n for n in self.nodes if n.up]

    def converged(self) -> bool:
        live = self.live()
        names = {n.name for n in live}
        return all(
            n.rt.membership.joined and set(n.rt.ring.nodes) == names
            and not n.rt.view.movements and all(n.rt.is_alive(o) for o in names)
            for n in live
        )

    def wait(self, deferred: Deferred[Any], seconds: float = 5.0) -> object:
        results: list[object] = []
        deferred.addBoth(results.append)
        step = 0.25
        while not results and seconds > 0:
            self.run(min(step, seconds))
            seconds -= step
        assert results, "timed out"
        return results[0]

    def load(self, count: int, size: int = 60) -> None:
        """Write C{count} keys at ALL through n1 (every owner holds them)."""
        writer = self.nodes[0].rt.keyspace
        for i in range(count):
            key = b"key-%04d" % i
            value = b"v0-%04d-" % i + b"x" * size
            write = Write(key, value)
            self.writes.append(write)
            writer.set(key, value, 0, ConsistencyLevel.ALL).addCallbacks(
                lambda _, w=write: None, lambda f, w=write: setattr(w, "failed", True))
        self.run(5.0)
        for write in self.writes:
            assert not write.failed
        # record the versions the writes got, read back at ALL
        for write in self.writes:
            result = self.wait(self.nodes[0].rt.coordinator.get(write.key, ConsistencyLevel.ALL))
            assert isinstance(result, ReadResult) and result.winner is not None
            write.version = result.winner

    def write(self, node: Node, key: bytes, value: bytes) -> Write:
        """A QUORUM write; acknowledged only if its coordinator was still up then."""
        record = Write(key, value)
        self.writes.append(record)
        runtime = node.rt

        def acked(version: Version) -> None:
            if runtime.running:
                record.version = version
            else:
                record.failed = True

        def failed(failure: Failure) -> None:
            failure.trap(QuorumUnavailable)
            record.failed = True

        runtime.coordinator.put(key, value, ConsistencyLevel.QUORUM).addCallbacks(acked, failed)
        return record

    def load_while(self, seconds: float, keys: int, *, resets: float = 0.02,
                   writers: list[Node] | None = None) -> None:
        """Random QUORUM writes every few ms for C{seconds}, resetting a random node's
        connections with probability C{resets} per step."""
        end = self.network.clock.seconds() + seconds
        step = 0
        while self.network.clock.seconds() < end:
            step += 1
            self.run(self.rng.uniform(0.005, 0.05))
            candidates = [n for n in (writers or self.nodes) if n.up and n.rt.rebalancer.ready]
            if not candidates:
                continue
            node = self.rng.choice(candidates)
            key = b"key-%04d" % self.rng.randrange(keys)
            self.write(node, key, b"%s-%d" % (node.name.encode(), step))
            if self.rng.random() < resets:
                self.network.drop_connections(self.rng.choice(self.live()).address)

    def settle(self, seconds: float = 30.0) -> None:
        """Let hints drain, drop delays pass and cleanups run."""
        self.run(seconds)

    # -- the checks ------------------------------------------------------------------------

    def latest(self) -> dict[bytes, Write]:
        latest: dict[bytes, Write] = {}
        for write in self.writes:
            if write.version is not None:
                best = latest.get(write.key)
                if best is None or best.version is None or write.version.hlc > best.version.hlc:
                    latest[write.key] = write
        return latest

    def check_readable(self, reader: Node) -> None:
        """Every acknowledged write is in (or superseded within) a QUORUM read."""
        for key in sorted({w.key for w in self.writes}):
            acked = [w for w in self.writes if w.key == key and w.version is not None]
            if not acked:
                continue
            result = self.wait(reader.rt.coordinator.get(key, ConsistencyLevel.QUORUM))
            assert isinstance(result, ReadResult), result
            kept = [version_clock(v) for v in result.versions]
            for write in acked:
                assert write.version is not None
                wanted = version_clock(write.version)
                assert any(c.descends(wanted) for c in kept), (
                    f"acknowledged write {write} of {key!r} lost: {dict(result.replies)}")

    def check_placement(self) -> None:
        """Every key is on exactly its N owners, each holding its latest acked version."""
        live = self.live()
        ring = live[0].rt.ring
        n = self.options.n
        stores = {node.name: node.records() for node in live}
        for key, write in sorted(self.latest().items()):
            owners = set(ring.preference_list(key, n))
            holding = {name for name, records in stores.items() if key in records}
            assert holding == owners, f"{key!r} on {sorted(holding)}, owners {sorted(owners)}"
            assert write.version is not None
            wanted = version_clock(write.version)
            for name in owners:
                clocks = [version_clock(v) for v in stores[name][key].versions]
                assert any(c.descends(wanted) for c in clocks), (
                    f"{name} lacks the latest acked version of {key!r}")
        for node in live:
            assert len(node.rt.hints) == 0, f"{node.name} still holds hints"


# -- join ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_fourth_node_joins_under_quorum_load_with_resets(seed: int) -> None:
    """n4 starts with --seeds: it announces JOINING, every node writes to it as a pending
    replica, the losing owners stream its ranges (slowly, with connections reset at random),
    it turns NORMAL, and the old copies are dropped. Every acknowledged write is readable and
    every key ends on exactly its three owners, with its latest version."""
    cluster = Cluster(3, seed=seed)
    cluster.load(300)
    n4 = cluster.add_node()
    cluster.load_while(10.0, 300, resets=0.05)
    joined = n4.rt.rebalancer.last_operation
    assert n4.rt.rebalancer.status is RingStatus.NORMAL, n4.rt.rebalance_status()
    assert joined is not None and joined.phase == "done" and not joined.fill
    cluster.settle()
    assert cluster.converged()
    assert set(n4.rt.ring.nodes) == {"n1", "n2", "n3", "n4"}
    cluster.check_placement()  # first: the reads would repair what they find missing
    cluster.check_readable(cluster.nodes[0])
    # Progress was visible: per stream and per range, and in the stats.
    status = n4.rt.rebalance_status()
    done = status["last_operation"]
    assert done["kind"] == "join" and done["phase"] == "done" and done["progress"] == 1.0
    assert done["keys"] > 0 and done["bytes"] > 0
    for stream in done["streams"]:
        assert stream["target"] == "n4" and stream["state"] == "done"
        assert sum(r["keys"] for r in stream["range_progress"]) == stream["keys"]
    stats = n4.rt.stats()
    assert stats["rebalance_keys_streamed"] == done["keys"]
    assert stats["rebalance_streams_completed"] == len(done["streams"])
    assert sum(n.rt.stats()["pending_writes"] for n in cluster.nodes) > 0
    assert sum(n.rt.stats()["rebalance_keys_dropped"] for n in cluster.nodes) > 0
    json.dumps(status)


def test_a_join_publishes_each_streams_start_progress_and_done_in_order() -> None:
    """n4's event bus gets, per stream, rebalance_start (nothing moved yet), progress after
    the first chunk (which tells the total) and then at most once a second, with keys and
    percent only growing, and rebalance_done with the stream's final keys and bytes; the
    totals match the metrics. n1's dashboard gets n4's streams relayed through STATS."""
    cluster = Cluster(3, seed=1, options=replace(OPTIONS, rebalance_rate=3_000))
    cluster.load(300)
    n4 = cluster.add_node()
    clock = cluster.network.clock
    seen: dict[str, list[Event]] = {}
    for node in (n4, cluster.nodes[0]):
        bus = EventBus(clock)
        watch_cluster(bus, node.rt, clock)
        seen[node.name] = []
        bus.subscribe(seen[node.name].append)
    cluster.run(20.0)
    done = n4.rt.rebalancer.last_operation
    assert done is not None and done.phase == "done" and len(done.streams) == 3
    events = [e for e in seen["n4"] if e.kind.startswith("rebalance_")]
    assert {e.data["stream"] for e in events} == {sp.id for sp in done.streams}
    progress_total = 0
    for sp in done.streams:
        mine = [e for e in events if e.data["stream"] == sp.id]
        kinds = [e.kind for e in mine]
        assert kinds[0] == "rebalance_start" and kinds[-1] == "rebalance_done"
        assert set(kinds[1:-1]) == {"rebalance_progress"}
        progress_total += len(kinds) - 2
        first, last = mine[0].data, mine[-1].data
        assert (first["keys"], first["bytes"], first["percent"], first["state"]) == (
            0, 0, None, "running")
        assert (last["keys"], last["bytes"], last["percent"], last["state"]) == (
            sp.keys, sp.size, 100.0, "done")
        assert (last["source"], last["target"], last["node"], last["movement"]) == (
            sp.source, "n4", "n4", "join:n4")
        assert last["ranges"] == len(sp.ranges) and 0 < last["share"] < 1
        assert last["scan_total"] == sp.source_records > 0
        keys = [e.data["keys"] for e in mine]
        percents = [e.data["percent"] for e in mine[1:]]
        assert keys == sorted(keys) and None not in percents and percents == sorted(percents)
        times = [e.at for e in mine if e.kind == "rebalance_progress"][1:]
        assert all(b - a >= 1.0 for a, b in zip(times, times[1:], strict=False))
    assert progress_total > len(done.streams), "some stream reported progress twice or more"
    assert sum(e.data["keys"] for e in events if e.kind == "rebalance_done") == (
        n4.rt.stats()["rebalance_keys_streamed"])
    relayed = [(e.kind, e.data["stream"]) for e in seen["n1"]
               if e.kind in ("rebalance_start", "rebalance_done")]
    assert sorted(relayed) == sorted([("rebalance_start", sp.id) for sp in done.streams]
                                     + [("rebalance_done", sp.id) for sp in done.streams])
    for sp in done.streams:
        assert relayed.index(("rebalance_start", sp.id)) < relayed.index(
            ("rebalance_done", sp.id))
    assert {e.data["stream"]: e.data["keys"] for e in seen["n1"]
            if e.kind == "rebalance_done"} == {sp.id: sp.keys for sp in done.streams}


def test_streams_stopped_midway_are_reported_failed_once() -> None:
    """The joiner crashes mid-stream: each stream that had started and not finished is
    reported failed (once, with the reason) and nothing is reported after that."""
    cluster = Cluster(3, seed=2, options=replace(OPTIONS, rebalance_rate=3_000))
    cluster.load(300)
    n4 = cluster.add_node()
    reports: list[tuple[str, dict[str, Any]]] = []
    n4.rt.rebalancer.observe(lambda phase, report: reports.append((phase, report)))
    for _ in range(200):
        cluster.run(0.1)
        if any(phase == "progress" for phase, _ in reports):
            break
    started = {r["stream"] for phase, r in reports if phase == "start"}
    running = started - {r["stream"] for phase, r in reports if phase == "done"}
    assert running
    operation = n4.rt.rebalancer.operation
    assert operation is not None
    operation.done.addErrback(lambda failure: None)  # the join fails: expected here
    n4.crash()
    cluster.run(10.0)
    failed = [r for phase, r in reports if phase == "failed"]
    assert sorted(r["stream"] for r in failed) == sorted(running)
    assert all(r["state"] == "failed" and r["error"] == "the node stopped" for r in failed)
    for stream in running:
        phases = [phase for phase, r in reports if r["stream"] == stream]
        assert phases[0] == "start" and phases[-1] == "failed" and phases.count("failed") == 1


def test_a_stream_whose_source_dies_is_reported_failed_then_replanned() -> None:
    """A source dies mid-stream: once it is declared dead its stream is reported failed
    (its ranges re-planned), and the new streams from surviving replicas start and finish."""
    options = replace(OPTIONS, rebalance_rate=3_000, rebalance_streams=1,
                      rebalance_chunk_keys=10)
    cluster = Cluster(3, seed=3, options=options)
    cluster.load(300)
    n4 = cluster.add_node()
    reports: list[tuple[str, dict[str, Any]]] = []
    n4.rt.rebalancer.observe(lambda phase, report: reports.append((phase, report)))
    for _ in range(300):
        cluster.run(0.1)
        if any(phase == "progress" for phase, _ in reports):
            break
    victim = reports[0][1]
    assert reports[0][0] == "start"
    cluster.node(victim["source"]).crash()
    joined = n4.rt.rebalancer.last_operation
    for _ in range(120):
        cluster.run(0.5)
        joined = n4.rt.rebalancer.last_operation
        if joined is not None and joined.phase == "done":
            break
    assert joined is not None and joined.phase == "done"
    lost = [(phase, r) for phase, r in reports if r["stream"] == victim["stream"]]
    assert lost[-1][0] == "failed" and lost[-1][1]["state"] == "failed"
    assert lost[-1][1]["error"] == f"source {victim['source']} lost; its ranges are re-planned"
    later = [r for phase, r in reports[reports.index(lost[-1]) + 1:] if phase == "done"]
    assert later and all(r["source"] != victim["source"] for r in later)
    assert {r["stream"] for r in later} == {
        sp.id for sp in joined.streams if sp.state == "done"} - {
        r["stream"] for phase, r in reports[:reports.index(lost[-1])] if phase == "done"}


def test_during_a_join_writes_go_to_old_and_new_owners_and_reads_to_old_ones() -> None:
    """With streaming stalled, a write to a moving key is stored on its three old owners and
    on the joiner, and needs one more ack; reads use the old owners only."""
    options = replace(OPTIONS, rebalance_rate=1.0, rebalance_chunk_bytes=1)
    cluster = Cluster(3, seed=4, options=options)
    cluster.load(50)
    n4 = cluster.add_node()
    for _ in range(40):
        cluster.run(0.25)
        if n4.rt.rebalancer.status is RingStatus.JOINING and all(
                n.rt.view.movements for n in cluster.nodes):
            break
    n1 = cluster.nodes[0]
    target = n1.rt.target_ring
    assert target is not None and "n4" in target and "n4" not in n1.rt.ring
    key = next(k for k in (b"key-%04d" % i for i in range(50))
               if "n4" in target.preference_list(k, 3))
    old_owners = set(n1.rt.ring.preference_list(key, 3))
    write = cluster.write(n1, key, b"pending")
    cluster.run(1.0)
    assert write.version is not None
    for node in cluster.nodes:
        record = node.rt.replica.read(key)
        holds = record is not None and any(v.value == b"pending" for v in record.versions)
        assert holds == (node.name in old_owners or node.name == "n4"), node.name
    assert n1.rt.stats()["pending_writes"] >= 1
    result = cluster.wait(n1.rt.coordinator.get(key, ConsistencyLevel.ALL, wait_for_all=True))
    assert isinstance(result, ReadResult) and set(result.replies) == old_owners
    status = n4.rt.rebalance_status(detail=False)
    assert status["status"] == "joining" and status["movements"] == ["join:n4"]
    assert status["operation"]["phase"] == "streaming"
    assert "range_progress" not in status["operation"]["streams"][0]


def test_a_dropped_connection_mid_stream_resumes_where_it_stopped() -> None:
    """Connections of the joiner are reset several times while it streams: each stream
    retries from its cursor and completes, and the records moved stay close to what the
    ranges hold (nothing restarted from scratch)."""
    options = replace(OPTIONS, rebalance_rate=20_000, rebalance_chunk_keys=20,
                      rebalance_streams=1)
    cluster = Cluster(3, seed=5, options=options)
    cluster.load(400)
    n4 = cluster.add_node()
    resets = 0
    for _ in range(400):
        cluster.run(0.1)
        operation = n4.rt.rebalancer.operation
        if operation is not None and operation.phase == "streaming" and any(
                s.chunks for s in operation.streams) and resets < 4:
            cluster.network.drop_connections(n4.address)
            resets += 1
        if n4.rt.rebalancer.status is RingStatus.NORMAL:
            break
    assert resets == 4
    done = n4.rt.rebalancer.last_operation
    assert done is not None and done.phase == "done"
    assert sum(s.retries for s in done.streams) >= 1
    assert all(s.state == "done" for s in done.streams)
    ring = n4.rt.ring
    mine = {k for k in (b"key-%04d" % i for i in range(400))
            if "n4" in ring.preference_list(k, 3)}
    assert set(n4.records()) == mine
    moved = sum(s.keys for s in done.streams)
    assert len(mine) <= moved <= len(mine) + 4 * options.rebalance_chunk_keys


def test_the_first_nodes_join_at_once_and_are_topped_up() -> None:
    """With fewer than N nodes in the ring a new node goes NORMAL at once (every node holds
    every key), and a background fill copies the data to it."""
    cluster = Cluster(2, seed=6)
    cluster.load(60)
    n3 = cluster.add_node()
    cluster.run(6.0)
    assert n3.rt.rebalancer.status is RingStatus.NORMAL
    fill = n3.rt.rebalancer.last_operation
    assert fill is not None and fill.fill and fill.phase == "done"
    assert len(n3.records()) == 60
    cluster.check_placement()


def test_two_nodes_started_together_join_one_after_the_other() -> None:
    """n4 and n5 start at once into a loaded three-node cluster: they take turns (by node
    id), each streaming its ranges, and every key ends on exactly three of the five."""
    cluster = Cluster(3, seed=12)
    cluster.load(200)
    n4, n5 = cluster.add_node(), cluster.add_node()
    cluster.load_while(12.0, 200, writers=cluster.nodes[:3])
    cluster.settle()
    assert cluster.converged() and len(cluster.nodes[0].rt.ring) == 5
    for node in (n4, n5):
        done = node.rt.rebalancer.last_operation
        assert done is not None and done.phase == "done" and not done.fill
    cluster.check_placement()
    cluster.check_readable(cluster.nodes[2])


def test_join_command_adds_an_empty_lone_node_and_refuses_a_loaded_one() -> None:
    """JOIN host:port on a node started alone: refused while it holds data or once it is in
    a cluster; an empty one joins and receives its ranges."""
    cluster = Cluster(3, seed=13)
    cluster.load(100)
    loner = Node(cluster, "n4")
    loner.boot([])
    cluster.nodes.append(loner)
    cluster.run(1.0)
    assert loner.rt.rebalancer.status is RingStatus.NORMAL and len(loner.rt.ring) == 1
    loner.rt.replica.apply(b"mine", [Version(b"x", (("n4", 1),), 1, "n4", 0, False)])
    with pytest.raises(RebalanceError, match="holds data"):
        loner.rt.join(cluster.nodes[0].address)
    loner.rt.drop_records([b"mine"])
    joined = loner.rt.join(cluster.nodes[0].address)
    assert cluster.wait(joined, 20.0) is None
    cluster.settle(10.0)
    assert cluster.converged()
    assert loner.rt.rebalancer.last_operation is not None
    assert loner.rt.rebalancer.last_operation.movement.kind == "join"
    assert not loner.rt.rebalancer.last_operation.fill
    cluster.check_placement()
    with pytest.raises(RebalanceError, match="already part of a cluster"):
        loner.rt.join(cluster.nodes[0].address)


# -- leave -----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [7, 8])
def test_leave_streams_ranges_away_under_load_then_the_node_stops(seed: int) -> None:
    """LEAVE on n2 of four: it streams its ranges to their new owners while QUORUM writes
    continue (with resets), announces LEFT, and stops. No acknowledged write is lost, keys
    written during the leave included, and every key is on exactly three of the others."""
    cluster = Cluster(4, seed=seed)
    cluster.load(300)
    n2 = cluster.node("n2")
    left = n2.rt.leave()
    cluster.run(0.5)
    with pytest.raises(RebalanceError, match="leave:n2"):
        cluster.nodes[0].rt.leave()  # one movement at a time
    writers = [n for n in cluster.nodes if n is not n2]
    cluster.load_while(8.0, 300, writers=writers)
    assert cluster.wait(left, 20.0) is None
    assert not n2.up and n2.rt.rebalancer.status is RingStatus.LEFT
    cluster.settle()
    assert cluster.converged()
    for node in cluster.live():
        assert set(node.rt.ring.nodes) == {"n1", "n3", "n4"}
        assert "n2" in node.rt.view.gone
        assert node.store.get(b"mring/n2") is None
    cluster.check_placement()  # first: the reads would repair what they find missing
    cluster.check_readable(cluster.nodes[0])
    done = n2.rt.rebalancer.last_operation
    assert done is not None and done.movement.kind == "leave"
    assert all(s.source == "n2" and s.state == "done" for s in done.streams)
    assert n2.store.get(b"mstatus") == b"left"


def test_two_leaves_started_at_once_go_one_after_the_other() -> None:
    """LEAVE on n4 and n5 at the same instant: both announce before hearing of the other; n5
    (ordered after n4) retracts, waits until n4 has left, then leaves in turn. No key is
    lost and every key ends on exactly three of the remaining nodes."""
    cluster = Cluster(5, seed=15)
    cluster.load(200)
    n4, n5 = cluster.node("n4"), cluster.node("n5")
    first, second = n4.rt.leave(), n5.rt.leave()
    cluster.load_while(6.0, 200, writers=cluster.nodes[:3])
    assert cluster.wait(first, 20.0) is None
    assert cluster.wait(second, 20.0) is None
    assert n5.rt.stats()["rebalance_operations_retracted"] >= 1
    assert n5.rt.rebalancer.last_operation is not None
    assert n5.rt.rebalancer.last_operation.attempts >= 2
    cluster.settle()
    assert cluster.converged()
    assert set(cluster.nodes[0].rt.ring.nodes) == {"n1", "n2", "n3"}
    cluster.check_placement()
    cluster.check_readable(cluster.nodes[0])


# -- remove ----------------------------------------------------------------------------------


def test_remove_a_killed_node_restores_n_copies_from_the_survivors() -> None:
    """n3 of four is killed. REMOVE is refused while it is alive or suspected; once it is
    dead, REMOVE on n1 streams its ranges from the surviving replicas to the new owners and
    gossips it LEFT: every key is back on three nodes, and the ring forgets n3."""
    cluster = Cluster(4, seed=9)
    cluster.load(300)
    n1, n3 = cluster.node("n1"), cluster.node("n3")
    with pytest.raises(RebalanceError, match="only a dead node"):
        n1.rt.remove("n3")
    with pytest.raises(RebalanceError, match="not in the ring"):
        n1.rt.remove("n9")
    n3.crash()
    for _ in range(60):
        cluster.run(1.0)
        member = n1.rt.membership.get("n3")
        if member is not None and member.state is MemberState.DEAD:
            break
    removed = n1.rt.remove("n3")
    cluster.load_while(4.0, 300, writers=[n for n in cluster.nodes if n is not n3])
    assert cluster.wait(removed, 30.0) is None
    cluster.settle()
    assert cluster.converged()
    for node in cluster.live():
        assert set(node.rt.ring.nodes) == {"n1", "n2", "n4"}
    cluster.check_placement()
    cluster.check_readable(cluster.nodes[1])
    done = n1.rt.rebalancer.last_operation
    assert done is not None and done.movement.kind == "remove" and done.phase == "done"
    assert "n3" not in {s.source for s in done.streams}


def test_a_joiner_that_dies_blocks_movements_until_removed() -> None:
    """A joiner killed mid-join keeps its movement pending (writes still reach its stand-ins,
    LEAVE elsewhere is refused); REMOVE declares it LEFT at once, and the cluster is as
    before."""
    options = replace(OPTIONS, rebalance_rate=2_000)
    cluster = Cluster(3, seed=14, options=options)
    cluster.load(100)
    n4 = cluster.add_node()
    for _ in range(40):
        cluster.run(0.25)
        if n4.rt.rebalancer.status is RingStatus.JOINING and all(
                n.rt.view.movements for n in cluster.nodes[:3]):
            break
    n4.crash()
    n1 = cluster.nodes[0]
    for _ in range(60):
        cluster.run(1.0)
        member = n1.rt.membership.get("n4")
        if member is not None and member.state is MemberState.DEAD:
            break
    assert [m.label for m in n1.rt.view.movements] == ["join:n4"]
    with pytest.raises(RebalanceError, match="join:n4"):
        n1.rt.leave()
    assert cluster.wait(n1.rt.remove("n4"), 5.0) is None
    cluster.run(2.0)
    for node in cluster.nodes[:3]:
        assert node.rt.view.movements == () and "n4" in node.rt.view.gone
        assert set(node.rt.ring.nodes) == {"n1", "n2", "n3"}
    cluster.nodes.remove(n4)
    cluster.settle(10.0)
    cluster.check_placement()


def test_a_removed_node_that_comes_back_refuses_to_serve() -> None:
    """A node removed while it was down learns so from the first peer it asks, refuses to
    coordinate, and stays out of every ring."""
    cluster = Cluster(4, seed=10, options=replace(OPTIONS, rebalance_drop_delay=2.0))
    cluster.load(40)
    n1, n4 = cluster.node("n1"), cluster.node("n4")
    n4.crash()
    for _ in range(60):
        cluster.run(1.0)
        member = n1.rt.membership.get("n4")
        if member is not None and member.state is MemberState.DEAD:
            break
    assert cluster.wait(n1.rt.remove("n4"), 30.0) is None
    n4.boot([n1.address])
    cluster.run(10.0)
    assert n4.rt.rebalancer.status is RingStatus.REMOVED and not n4.rt.rebalancer.ready
    refused = cluster.wait(n4.rt.keyspace.set(b"k", b"v"), 2.0)
    assert isinstance(refused, Failure) and refused.check(QuorumUnavailable)
    for node in cluster.nodes[:3]:
        assert "n4" not in node.rt.ring


# -- the verbs -------------------------------------------------------------------------------


def test_rb_verbs_serve_chunks_and_refuse_bad_requests() -> None:
    """RB_FETCH pages through a node's records in token ranges with a cursor; RB_PUT merges
    records; RB_STATUS reports the view; malformed requests get bad_request."""
    cluster = Cluster(3, seed=11)
    cluster.load(30)
    n1, n2 = cluster.nodes[0], cluster.nodes[1]

    def ask(frame: Frame) -> Frame:
        answer = cluster.wait(n1.rt.pool.request(n2.address, frame, 2.0))
        assert isinstance(answer, Frame), answer
        return answer

    everything = encode_ranges([TokenRange(0, 0)])
    seen: list[bytes] = []
    after: str | None = None
    while True:
        fields = {"limit": "7"} if after is None else {"limit": "7", "after": after}
        answer = ask(Frame("RB_FETCH", 0, fields, everything))
        assert answer.verb == "VAL" and int(answer.fields["records"]) == 30
        seen += [key for key, _ in decode_entries(answer.payload)]
        if "next" not in answer.fields:
            break
        after = answer.fields["next"]
    assert seen == sorted(n2.records())
    record = encode_record(Record((Version(b"pushed", (("n1", 1),), 1, "n1", 0, False),)))
    answer = ask(Frame("RB_PUT", 0, {}, encode_entries([(b"pushed-key", record)])))
    assert answer.verb == "ACK"
    assert decode_record(encode_record(n2.rt.replica.read(b"pushed-key"))).versions[0].value == (  # type: ignore[arg-type]
        b"pushed")
    status = json.loads(ask(Frame("RB_STATUS", 0)).payload)
    assert status["ring"] == ["n1", "n2", "n3"] and status["status"] == "normal"
    for bad in (Frame("RB_FETCH", 0, {}, b"junk"), Frame("RB_PUT", 0, {}, b"\x00\x00\x00\x05"),
                Frame("RB_FETCH", 0, {"limit": "0"}, everything)):
        failure = cluster.wait(n1.rt.pool.request(n2.address, bad, 2.0))
        assert isinstance(failure, Failure) and "bad_request" in failure.getErrorMessage()
    assert decode_entries(encode_entries([(b"k", b"r")])) == [(b"k", b"r")]
    with pytest.raises(ValueError):
        decode_entries(encode_entries([(b"k", b"r")]) + b"x")
