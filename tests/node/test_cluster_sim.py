"""The cluster end to end, in one process: several ClusterRuntimes on a SimulatedNetwork and
one fake clock, with seeded faults (partitions, crashes and restarts, connection resets,
random delays that reorder messages across connections).

Checker rule, for every key after the faults heal and hints are delivered, reading at QUORUM
(the same rule docs/consistency.md §11 states):

 1. no acknowledged write is lost: each acknowledged write's version is in the read's
    sibling set or superseded by one in it (its clock is descended by a kept clock);
 2. the latest acknowledged write wins: the plain-read winner's HLC is at least that of the
    most recently *issued* acknowledged write; equal means it is that very write, greater
    means it is a write (acknowledged or not) issued later: its HLC's millisecond is the
    issue time of a write by the winner's node with the same value (or a delete).

"Most recently issued" rather than "acknowledged last": two overlapping writes are
concurrent, and the cluster orders them by HLC, which follows issue time. Writes are issued
at distinct milliseconds on one shared clock, so HLC order is issue order. A write counts
as acknowledged only if its coordinator was still up when the acknowledgement fired.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hiredis
import pytest
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from twistkv.config import NodeConfig
from twistkv.core.membership import MemberState
from twistkv.core.quorum import ConsistencyLevel
from twistkv.core.record import Version
from twistkv.core.replication import version_clock
from twistkv.core.versioning import hlc_physical_ms
from twistkv.node.cluster import KEEP_TTL, ClusterOptions, ClusterRuntime, NotSupported
from twistkv.node.commands import NodeContext
from twistkv.node.coordinator import QuorumUnavailable, ReadResult
from twistkv.node.durability import GroupCommitter
from twistkv.node.metrics import NodeStats
from twistkv.node.protocol import RespFactory
from twistkv.storage.interface import FsyncPolicy
from twistkv.storage.memory import MemoryStore
from twistkv.testing import SimulatedNetwork

EPOCH = 1_767_225_600.0
OPTIONS = ClusterOptions(vnodes_per_node=16, hint_interval=1.0)
SEEDS = range(20)


class SimNode:
    """One node: its store outlives crashes (it is the disk); the runtime is the process."""

    def __init__(self, cluster: SimCluster, name: str) -> None:
        self.cluster = cluster
        self.name = name
        self.address = f"{name}:7380"
        self.store = MemoryStore()
        self.incarnation = 0
        self.runtime: ClusterRuntime | None = None

    @property
    def up(self) -> bool:
        return self.runtime is not None and self.runtime.running

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
            committer=committer, seeds=seeds, cluster_name="sim",
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

    def restart(self) -> None:
        others = [n.address for n in self.cluster.nodes if n is not self]
        self.boot(others)


@dataclass
class Write:
    key: bytes
    node: str
    issued_ms: int
    value: bytes | None  # None: a delete
    version: Version | None = None
    failed: bool = False
    #: A write of a run (put_run: pipelined SETs), acknowledged without its version.
    in_run: bool = False
    run_acked: bool = False

    @property
    def acknowledged(self) -> bool:
        return self.version is not None or self.run_acked


@dataclass
class SimCluster:
    seed: int
    size: int
    options: ClusterOptions = OPTIONS
    network: SimulatedNetwork = field(init=False)
    nodes: list[SimNode] = field(init=False)
    writes: list[Write] = field(default_factory=list)
    #: Errors a run reported other than QuorumUnavailable (there should be none).
    odd_errors: list[BaseException] = field(default_factory=list)

    def __post_init__(self) -> None:
        clock = MemoryReactorClock()
        clock.advance(EPOCH)
        self.network = SimulatedNetwork(clock, random.Random(self.seed), min_delay=0.001,
                                        max_delay=0.02)
        self.nodes = [SimNode(self, f"n{i + 1}") for i in range(self.size)]
        first = self.nodes[0]
        first.boot([])
        for node in self.nodes[1:]:
            node.boot([first.address])

    def node(self, name: str) -> SimNode:
        return next(n for n in self.nodes if n.name == name)

    def now_ms(self) -> int:
        return int(self.network.clock.seconds() * 1000)

    def run(self, seconds: float) -> None:
        self.network.run_for(seconds)

    def converged(self) -> bool:
        names = {n.name for n in self.nodes}
        return all(
            n.up and n.rt.membership.joined and set(n.rt.ring.nodes) == names
            and all(n.rt.is_alive(other) for other in names)
            for n in self.nodes
        )

    def write(self, node: SimNode, key: bytes, value: bytes | None) -> Write:
        """Issue a QUORUM write or delete; record whether it is acknowledged."""
        record = Write(key, node.name, self.now_ms(), value)
        self.writes.append(record)
        runtime = node.rt
        coordinator = runtime.coordinator
        if value is None:
            result = coordinator.delete(key, ConsistencyLevel.QUORUM)
        else:
            result = coordinator.put(key, value, ConsistencyLevel.QUORUM)

        def acked(version: Version) -> None:
            if runtime.running:  # a crashed coordinator's client never heard the ack
                record.version = version
            else:
                record.failed = True

        def failed(failure: Failure) -> None:
            failure.trap(QuorumUnavailable)
            record.failed = True

        result.addCallbacks(acked, failed)
        return record

    def write_run(self, node: SimNode, pairs: list[tuple[bytes, bytes]]) -> list[Write]:
        """Issue a run of QUORUM SETs (what a client's pipelined SETs become); record which
        were acknowledged. A run reports no versions: the checker finds its writes by value."""
        records = [Write(key, node.name, self.now_ms(), value, in_run=True)
                   for key, value in pairs]
        self.writes.extend(records)
        runtime = node.rt

        def settled(errors: list[BaseException | None] | None) -> None:
            for index, record in enumerate(records):
                error = None if errors is None else errors[index]
                if runtime.running and error is None:
                    record.run_acked = True
                else:
                    record.failed = True
                    if error is not None and not isinstance(error, QuorumUnavailable):
                        self.odd_errors.append(error)

        runtime.coordinator.put_run(pairs, ConsistencyLevel.QUORUM).addCallback(settled)
        return records

    def read(self, node: SimNode, key: bytes) -> ReadResult:
        results: list[object] = []
        node.rt.coordinator.get(key, ConsistencyLevel.QUORUM).addBoth(results.append)
        self.run(3.0)
        (result,) = results
        assert isinstance(result, ReadResult), result
        return result


def check(cluster: SimCluster, reader: SimNode) -> None:
    """The checker rule of the module docstring, for every key that has an acked write."""
    keys = sorted({w.key for w in cluster.writes})
    for key in keys:
        acked = [w for w in cluster.writes if w.key == key and w.acknowledged]
        if not acked:
            continue
        result = cluster.read(reader, key)
        kept = [version_clock(v) for v in result.versions]
        for write in acked:
            if write.version is None:
                continue  # a run's write: rule 1 needs its clock, which runs do not report
            wanted = version_clock(write.version)
            assert any(clock.descends(wanted) for clock in kept), (
                f"seed {cluster.seed}: acknowledged {write} of {key!r} lost; "
                f"replicas answered {dict(result.replies)}")
        latest = max(acked, key=lambda w: w.issued_ms)
        winner = result.winner
        assert winner is not None
        if latest.version is None:
            # A run's write, found by what it wrote: the winner is it, or a write issued
            # after it (writes are issued at distinct milliseconds, a run's keys differ).
            issued_ms = hlc_physical_ms(winner.hlc)
            assert any(
                w.key == key and w.node == winner.node and w.issued_ms == issued_ms
                and (w.value is None if winner.tombstone else w.value == winner.value)
                and w.issued_ms >= latest.issued_ms
                for w in cluster.writes
            ), f"seed {cluster.seed}: {key!r} winner {winner} is older than the run's {latest}"
        elif winner.hlc < latest.version.hlc:
            raise AssertionError(f"seed {cluster.seed}: {key!r} went back")
        elif winner.hlc == latest.version.hlc:
            assert winner == latest.version
        else:
            issued_ms = hlc_physical_ms(winner.hlc)
            assert any(
                w.key == key and w.node == winner.node and w.issued_ms == issued_ms
                and (w.value is None if winner.tombstone else w.value == winner.value)
                and w.issued_ms > latest.issued_ms
                for w in cluster.writes
            ), f"seed {cluster.seed}: {key!r} winner {winner} matches no later write"
        live = result.live(cluster.now_ms())
        assert (live is None) == winner.tombstone


def random_faults_run(seed: int, pipelined: bool = False) -> SimCluster:
    """Boot, run a QUORUM workload under random faults, heal, and let hints drain; with
    C{pipelined}, half the SETs go in runs of one to three keys (put_run)."""
    rng = random.Random(seed)
    cluster = SimCluster(seed, rng.choice([3, 4, 5]))
    cluster.run(8.0)
    assert cluster.converged(), f"seed {seed}: membership did not converge"
    network = cluster.network
    keys = [b"key-%d" % i for i in range(24)]
    max_down = 1 if cluster.size < 5 else 2
    partitioned = False
    for step in range(300):
        cluster.run(rng.uniform(0.003, 0.12))
        up = [n for n in cluster.nodes if n.up]
        down = [n for n in cluster.nodes if not n.up]
        roll = rng.random()
        if roll < 0.85:
            node = rng.choice(up)
            value = None if rng.random() < 0.1 else b"%d-%d" % (seed, step)
            if pipelined and value is not None and rng.random() < 0.5:
                run_keys = rng.sample(keys, rng.randint(1, 3))
                cluster.write_run(node, [(key, value) for key in run_keys])
            else:
                cluster.write(node, rng.choice(keys), value)
        elif roll < 0.89 and not partitioned:
            addresses = [n.address for n in cluster.nodes]
            rng.shuffle(addresses)
            cut = rng.randint(1, len(addresses) - 1)
            network.partition(addresses[:cut], addresses[cut:])
            partitioned = True
        elif roll < 0.93 and partitioned:
            network.heal()
            partitioned = False
        elif roll < 0.96 and len(down) < max_down and len(up) > 1:
            rng.choice(up).crash()
        elif roll < 0.98 and down:
            rng.choice(down).restart()
        else:
            network.drop_connections(rng.choice(up).address)
    network.heal()
    for node in cluster.nodes:
        if not node.up:
            node.restart()
    cluster.run(40.0)
    assert cluster.converged(), f"seed {seed}: membership did not converge after healing"
    return cluster


@pytest.mark.parametrize("seed", SEEDS)
def test_acknowledged_quorum_writes_survive_random_faults(seed: int) -> None:
    """After random partitions, crashes, restarts and resets heal, every key reads back at
    QUORUM by the checker rule, every hint has been delivered, and the run exercised both
    outcomes (some writes acknowledged, and for most seeds some refused)."""
    cluster = random_faults_run(seed)
    assert any(w.version is not None for w in cluster.writes)
    check(cluster, random.Random(seed).choice(cluster.nodes))
    for node in cluster.nodes:
        assert len(node.rt.hints) == 0, f"seed {seed}: {node.name} still holds hints"


@pytest.mark.parametrize("seed", SEEDS)
def test_acknowledged_pipelined_writes_survive_random_faults(seed: int) -> None:
    """The same, with half the SETs in runs (put_run, what pipelined RESP SETs use, which
    mint and replicate together and are promoted to the single-write path on a failure):
    every key's QUORUM read gives its latest acknowledged write, run or not, or a later
    one; no hint is left; the run exercised acknowledged runs."""
    cluster = random_faults_run(seed, pipelined=True)
    assert any(w.run_acked for w in cluster.writes) and not cluster.odd_errors
    check(cluster, random.Random(seed).choice(cluster.nodes))
    for node in cluster.nodes:
        assert len(node.rt.hints) == 0, f"seed {seed}: {node.name} still holds hints"


def test_the_same_seed_replays_the_same_run() -> None:
    """Determinism: one seed gives the same network history and the same outcomes."""

    def fingerprint() -> tuple[object, ...]:
        cluster = random_faults_run(3)
        outcomes = tuple((w.key, w.issued_ms, w.version) for w in cluster.writes)
        return len(cluster.network.log), outcomes

    assert fingerprint() == fingerprint()


# -- the scenarios, step by step ------------------------------------------------------


def three_nodes(seed: int = 7) -> SimCluster:
    cluster = SimCluster(seed, 3)
    cluster.run(8.0)
    assert cluster.converged()
    return cluster


def wait(cluster: SimCluster, deferred: Deferred[object], seconds: float = 3.0) -> object:
    results: list[object] = []
    deferred.addBoth(results.append)
    cluster.run(seconds)
    (result,) = results
    return result


def resp_client(keyspace: Any, coordinator: Any, tmp_path: Path
                ) -> tuple[Any, StringTransport]:
    """A RESP connection to a simulated node serving from C{keyspace}: (protocol, transport)."""
    context = NodeContext(keyspace=keyspace,
                          config=NodeConfig(node_id="n1", data_dir=tmp_path),
                          stats=NodeStats(), started_at=0.0, barrier=coordinator)
    protocol = RespFactory(context).buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def replies(transport: StringTransport) -> list[object]:
    """Every reply written to C{transport} so far, decoded."""
    reader = hiredis.Reader()
    reader.feed(transport.value())
    got = []
    while (item := reader.gets()) is not False:
        got.append(item)
    return got


def test_three_nodes_find_each_other_and_a_set_on_one_is_read_on_another() -> None:
    """Nodes joined through a seed form one ring; SET on n1, GET on n3 returns the value."""
    cluster = three_nodes()
    n1, _, n3 = cluster.nodes
    assert wait(cluster, n1.rt.keyspace.set(b"k", b"v")) is None
    got = wait(cluster, n3.rt.keyspace.get(b"k"))
    assert isinstance(got, Version) and got.value == b"v"


def test_kill_one_of_three_quorum_continues_hints_are_kept_and_delivered_on_return() -> None:
    """With one node crashed, QUORUM writes and reads succeed; the writes meant for it are
    kept as durable hints and, once it restarts, delivered so that it holds the data."""
    cluster = three_nodes(seed=11)
    n1, n2, n3 = cluster.nodes
    n3.crash()
    cluster.run(2.0)
    values = {b"key-%d" % i: b"value-%d" % i for i in range(10)}
    for key, value in values.items():
        version = wait(cluster, n1.rt.keyspace.set(key, value, 0, ConsistencyLevel.QUORUM), 0.5)
        assert version is None
    for key, value in values.items():
        got = wait(cluster, n2.rt.keyspace.get(key, ConsistencyLevel.QUORUM), 0.5)
        assert isinstance(got, Version) and got.value == value
    held = len(n1.rt.hints) + len(n2.rt.hints)
    assert held == len(values)
    assert all(n3.store.get(b"d" + key) is None for key in values)
    cluster.run(30.0)  # n3 declared dead meanwhile: it stays in the ring
    assert n1.rt.membership.get("n3").state is MemberState.DEAD  # type: ignore[union-attr]
    assert "n3" in n1.rt.ring
    n3.restart()
    cluster.run(10.0)
    assert len(n1.rt.hints) + len(n2.rt.hints) == 0
    for key, value in values.items():
        record = n3.rt.replica.read(key)
        assert record is not None and record.versions[0].value == value
    assert n1.rt.delivery.stats.delivered + n2.rt.delivery.stats.delivered == len(values)
    stats = n1.rt.stats()
    assert stats["hints_delivered"] + n2.rt.stats()["hints_delivered"] == len(values)
    assert stats["hints_stored"] == 0 and stats["ring_nodes"] == 3


def test_two_of_three_down_fails_unavailable_naming_the_replicas() -> None:
    """Without a quorum a write fails with the documented UNAVAILABLE error."""
    cluster = three_nodes(seed=12)
    n1, n2, n3 = cluster.nodes
    n2.crash()
    n3.crash()
    cluster.run(1.0)
    failure = wait(cluster, n1.rt.keyspace.set(b"k", b"v"))
    assert isinstance(failure, Failure) and failure.check(QuorumUnavailable)
    assert str(failure.value).startswith("UNAVAILABLE write reached 1 of 2 required replicas (")


def test_partition_makes_siblings_versions_shows_them_and_a_context_write_resolves() -> None:
    """Writes on both sides of a partition (at ONE) become siblings after healing; the
    VERSIONS read shows both with clocks; GET returns the later; DEL/SET with context (here a
    read-modify-write) leaves one version everywhere."""
    cluster = three_nodes(seed=13)
    n1, n2, n3 = cluster.nodes
    cluster.network.partition([n1.address], [n2.address, n3.address])
    cluster.run(0.1)
    wait(cluster, n1.rt.keyspace.set(b"k", b"left", 0, ConsistencyLevel.ONE), 0.5)
    wait(cluster, n2.rt.keyspace.set(b"k", b"right", 0, ConsistencyLevel.ONE), 0.5)
    cluster.network.heal()
    cluster.run(20.0)
    result = wait(cluster, n3.rt.keyspace.record(b"k", ConsistencyLevel.ALL))
    assert isinstance(result, ReadResult)
    assert {v.value for v in result.versions} == {b"left", b"right"}
    assert set(result.replies) == {"n1", "n2", "n3"}
    got = wait(cluster, n3.rt.keyspace.get(b"k"))
    assert isinstance(got, Version) and got.value == b"right"
    assert wait(cluster, n3.rt.keyspace.delete([b"k"])) == 1
    cluster.run(2.0)
    for node in cluster.nodes:
        record = node.rt.replica.read(b"k")
        assert record is not None and len(record.versions) == 1 and record.versions[0].tombstone


def test_a_restarted_seed_node_keeps_its_ring_and_rejoins_without_seeds() -> None:
    """The first node (started without seeds) crashes and restarts without seeds: it comes
    back with the persisted three-node ring, refuses to coordinate until it has synced with
    a member it knew (rather than acknowledging writes stored on itself alone), then serves."""
    cluster = three_nodes(seed=14)
    n1 = cluster.nodes[0]
    n1.crash()
    cluster.run(2.0)
    n1.boot([])
    assert set(n1.rt.ring.nodes) == {"n1", "n2", "n3"}
    refused = wait(cluster, n1.rt.keyspace.set(b"k", b"v"), 0.0)
    assert isinstance(refused, Failure)
    assert "has not joined the cluster yet" in str(refused.value)
    cluster.run(5.0)
    assert n1.rt.membership.joined
    assert wait(cluster, n1.rt.keyspace.set(b"k", b"v")) is None


def test_a_stopped_node_stays_in_the_ring_and_a_leaving_node_is_removed() -> None:
    """stop() is a restart, not a departure: peers keep the node's ranges and hint for it.
    A node that announces LEFT is removed from every ring, persisted copy included."""
    cluster = three_nodes(seed=15)
    n1, n2, n3 = cluster.nodes
    stopped: list[object] = []
    n3.rt.stop().addBoth(stopped.append)
    cluster.network.kill(n3.address)
    cluster.run(30.0)
    assert stopped == [None]
    assert "n3" in n1.rt.ring and "n3" in n2.rt.ring
    assert wait(cluster, n1.rt.keyspace.set(b"k", b"v")) is None
    assert len(n1.rt.hints) == 1
    n3.restart()
    cluster.run(10.0)
    assert cluster.converged()
    n3.rt.membership_service.stopService()  # announces LEFT
    cluster.run(2.0)
    for node in (n1, n2):
        assert "n3" not in node.rt.ring
        assert node.store.get(b"mring/n3") is None
    assert n1.store.get(b"mring/n2") == b"n2:7380"


def test_cluster_keyspace_mirrors_the_local_keyspace_operations() -> None:
    """The RESP-facing adapter: MSET, EXISTS, KEEPTTL, EXPIRE in the past and future, DEL
    counting, local SCAN/KEYS, and FLUSHDB refused."""
    cluster = three_nodes(seed=16)
    n1, n2, _ = cluster.nodes
    ks1, ks2 = n1.rt.keyspace, n2.rt.keyspace
    now = ks1.now_ms()
    assert wait(cluster, ks1.set_many([(b"a", b"1"), (b"b", b"2"), (b"a", b"3")])) is None
    assert wait(cluster, ks2.exists(b"a")) is True
    got = wait(cluster, ks2.get(b"a"))
    assert isinstance(got, Version) and got.value == b"3"
    assert wait(cluster, ks1.set(b"t", b"v", now + 60_000)) is None
    assert wait(cluster, ks2.set(b"t", b"w", KEEP_TTL)) is None
    kept = wait(cluster, ks1.get(b"t"))
    assert isinstance(kept, Version) and kept.value == b"w" and kept.expires_at_ms == now + 60_000
    assert wait(cluster, ks1.set_expiry(b"t", 0)) is True
    persisted = wait(cluster, ks2.get(b"t"))
    assert isinstance(persisted, Version) and persisted.expires_at_ms == 0
    assert wait(cluster, ks1.set_expiry(b"missing", 0)) is False
    assert wait(cluster, ks1.set_expiry(b"b", 1)) is True  # in the past: deleted
    assert wait(cluster, ks2.get(b"b")) is None
    assert wait(cluster, ks2.delete([b"a", b"a", b"b", b"nope"])) == 1
    assert sorted(ks1.iter_keys()) == [b"t"]
    assert ks1.scan(None, 10) == ([b"t"], None)
    assert ks1.key_count() == 3  # tombstones of a and b included until collected
    refused = wait(cluster, ks1.flush())
    assert isinstance(refused, Failure) and refused.check(NotSupported)


def test_a_pipeline_split_over_reads_of_one_turn_sees_its_sets(tmp_path: Path) -> None:
    """Plain SETs wait for the end of the reactor turn, yet a client's later commands see
    them even when they arrive in another read of the same turn (TLS hands over one record
    at a time): INCR continues from the SET's value, KEYS and DBSIZE count it, GET reads
    it; and two connections' SETs of one turn, issued by that INCR, still reach each replica
    together, in one PUT_BATCH ahead of the increment."""
    cluster = three_nodes(seed=18)
    n1 = cluster.nodes[0]
    (first, first_out), (second, second_out) = (
        resp_client(n1.rt.keyspace, n1.rt.coordinator, tmp_path) for _ in range(2))
    served = cluster.nodes[1].rt.coordinator.stats.served
    batches = served.get("PUT_BATCH", 0)
    first.dataReceived(b"SET split-a 5\r\n")
    second.dataReceived(b"SET split-b 1\r\n")
    first.dataReceived(b"INCR split-a\r\nKEYS split-*\r\nDBSIZE\r\nGET split-b\r\n")
    cluster.run(1.0)
    got = replies(first_out)
    assert got[:3] == [b"OK", 6, [b"split-a", b"split-b"]] and got[4] == b"1"
    assert isinstance(got[3], int) and got[3] >= 2
    assert second_out.value() == b"+OK\r\n"
    # The INCR issued both queued SETs: one PUT_BATCH for them, ahead of the increment.
    assert served.get("PUT_BATCH", 0) == batches + 1


class _WriteBetweenReadAndWrite:
    """A node's cluster keyspace where, once a read-modify-write command's read is answered,
    another node writes the key at ALL before the command goes on to its own write."""

    def __init__(self, keyspace: Any, other: Any, value: bytes) -> None:
        self._keyspace, self._other, self._value = keyspace, other, value
        self.interleaved = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._keyspace, name)

    def at(self, consistency: object) -> _WriteBetweenReadAndWrite:
        assert consistency is None
        return self

    def read_for_update(self, key: bytes) -> Deferred[Any]:
        def interleave(seen: object) -> Deferred[Any]:
            self.interleaved += 1
            write = self._other.set(key, self._value, 0, ConsistencyLevel.ALL)
            return write.addCallback(lambda _: seen)

        return self._keyspace.read_for_update(key).addCallback(interleave)


def test_conditional_sets_work_through_a_cluster_node(tmp_path: Path) -> None:
    """SET NX/XX/GET, SETNX, MSETNX, GETDEL and APPEND answer as Redis does when issued
    through one node of a cluster, and what they wrote is what another node reads."""
    cluster = three_nodes(seed=23)
    n1, _, n3 = cluster.nodes
    protocol, transport = resp_client(n1.rt.keyspace, n1.rt.coordinator, tmp_path)
    script = [
        (b"SET c v1 NX", b"OK"), (b"SET c v2 NX", None), (b"SET missing v XX", None),
        (b"SET c v3 XX GET", b"v1"), (b"SET c v4 GET", b"v3"), (b"SETNX c v5", 0),
        (b"SETNX d w", 1), (b"MSETNX d x e y", 0), (b"MSETNX e y f z", 1),
        (b"APPEND c !", 3), (b"GETDEL d", b"w"), (b"GETDEL d", None),
    ]
    for command, _ in script:
        protocol.dataReceived(command + b"\r\n")
        cluster.run(0.5)
    assert replies(transport) == [reply for _, reply in script]
    reads = {key: wait(cluster, n3.rt.keyspace.get(key)) for key in (b"c", b"d", b"e", b"f")}
    assert all(v is None or isinstance(v, Version) for v in reads.values()), reads
    values = {key: v.value if isinstance(v, Version) else None for key, v in reads.items()}
    assert values == {b"c": b"v4!", b"d": None, b"e": b"y", b"f": b"z"}


@pytest.mark.parametrize("command", [b"SET fresh mine NX", b"SETNX fresh mine",
                                     b"SET fresh mine NX GET"])
def test_set_nx_keeps_a_write_made_between_its_read_and_write(
        tmp_path: Path, command: bytes) -> None:
    """SET NX and SETNX on an absent key write with their read's (empty) context: a SET
    through another node landing between the check and the write stays a sibling on every
    replica, where a blind write through a node that already holds it would replace it."""
    cluster = three_nodes(seed=24)
    n1, n2, n3 = cluster.nodes
    keyspace = _WriteBetweenReadAndWrite(n1.rt.keyspace, n2.rt.keyspace, b"concurrent")
    protocol, transport = resp_client(keyspace, n1.rt.coordinator, tmp_path)
    protocol.dataReceived(command + b"\r\n")
    cluster.run(2.0)
    assert replies(transport) == [None if command.endswith(b"GET") else
                                  b"OK" if command.startswith(b"SET ") else 1]
    assert keyspace.interleaved == 1
    for node in (n1, n2, n3):
        record = node.rt.replica.read(b"fresh")
        assert record is not None
        assert sorted(v.value for v in record.versions) == [b"concurrent", b"mine"]


def test_a_delete_with_a_read_takes_only_the_key_that_was_read() -> None:
    """delete(seen=) writes the tombstone of the one key its read was of: given several
    keys, or another key, it refuses at once rather than deleting with a context that key
    never had (set and set_expiry likewise); given a read that found nothing it deletes
    nothing."""
    cluster = three_nodes(seed=22)
    keyspace = cluster.nodes[0].rt.keyspace
    assert wait(cluster, keyspace.set(b"a", b"1")) is None
    seen = wait(cluster, keyspace.read_for_update(b"a"))
    with pytest.raises(ValueError, match="exactly the one key"):
        keyspace.delete([b"a", b"b"], seen=seen)
    for write in (lambda: keyspace.delete([b"b"], seen=seen),
                  lambda: keyspace.set(b"b", b"x", seen=seen),
                  lambda: keyspace.set_expiry(b"b", 0, seen=seen)):
        with pytest.raises(ValueError, match="the key that was read"):
            write()
    nothing = wait(cluster, keyspace.read_for_update(b"absent"))
    assert wait(cluster, keyspace.delete([b"absent"], seen=nothing)) == 0
    assert wait(cluster, keyspace.delete([b"a"], seen=seen)) == 1
    assert wait(cluster, keyspace.get(b"a")) is None


@pytest.mark.parametrize(("command", "reply", "written"), [
    (b"GETDEL k", b"1", None),
    (b"APPEND k x", 2, b"1x"),
    (b"INCRBYFLOAT k 2.5", b"3.5", b"3.5"),
    (b"GETEX k PX 600000", b"1", b"1"),
    (b"EXPIRE k 600", 1, b"1"),
    (b"PEXPIRE k -1", 1, None),
    (b"PERSIST k", 1, b"1"),
    (b"SET k v2 XX KEEPTTL", b"OK", b"v2"),
    (b"SET k v2 XX GET", b"1", b"v2"),
])
def test_read_modify_write_commands_keep_a_write_made_between_their_read_and_write(
        tmp_path: Path, command: bytes, reply: object, written: bytes | None) -> None:
    """A read-modify-write command writes with the context of the read it computed its
    write from (docs/consistency.md §14): a SET through another node that lands between that
    read and the command's write is not superseded but kept as a sibling of the command's
    write, on every replica, and VERSIONS shows both. (Reading the key again before writing
    would take that SET into the context and silently drop it.)"""
    cluster = three_nodes(seed=21)
    n1, n2, n3 = cluster.nodes
    now = n1.rt.keyspace.now_ms()
    assert wait(cluster, n1.rt.keyspace.set(b"k", b"1", now + 300_000)) is None
    keyspace = _WriteBetweenReadAndWrite(n1.rt.keyspace, n2.rt.keyspace, b"concurrent")
    protocol, transport = resp_client(keyspace, n1.rt.coordinator, tmp_path)
    protocol.dataReceived(command + b"\r\n")
    cluster.run(2.0)
    assert replies(transport) == [reply]
    assert keyspace.interleaved == 1
    for node in (n1, n2, n3):
        record = node.rt.replica.read(b"k")
        assert record is not None
        values = sorted((v.value, v.tombstone) for v in record.versions)
        expected = [(b"", True)] if written is None else [(written, False)]
        assert values == sorted([(b"concurrent", False), *expected])
    result = wait(cluster, n3.rt.keyspace.record(b"k", ConsistencyLevel.ALL))
    assert isinstance(result, ReadResult) and len(result.versions) == 2


def test_pipelined_sets_travel_batched_and_a_run_answers_at_its_consistency() -> None:
    """A run of SETs (set_run, what pipelined RESP SETs use) is stored on every replica, the
    writes reach the replicas in PUT_BATCH frames, and a connection's CONSISTENCY applies to
    the run: with one node down, ALL fails where the default QUORUM succeeds."""
    cluster = three_nodes(seed=17)
    n1, n2, n3 = cluster.nodes
    pairs = [(b"run-%d" % i, b"v%d" % i) for i in range(20)]
    assert wait(cluster, n1.rt.keyspace.set_run(pairs)) is None
    for key, value in pairs:
        for node in (n1, n2, n3):
            record = node.rt.replica.read(key)
            assert record is not None and record.versions[0].value == value
    served = n2.rt.coordinator.stats.served
    assert served.get("PUT_BATCH", 0) >= 1 and served.get("PUT", 0) >= len(pairs)
    n3.crash()
    cluster.run(1.0)
    strict = n1.rt.keyspace.at(ConsistencyLevel.ALL)
    errors = wait(cluster, strict.set_run([(b"x", b"1"), (b"y", b"2")]))
    assert isinstance(errors, list) and len(errors) == 2
    assert all(isinstance(error, QuorumUnavailable) for error in errors)
    assert wait(cluster, n1.rt.keyspace.set_run([(b"x", b"1"), (b"y", b"2")]), 0.5) is None


def test_runs_of_one_turn_share_a_put_batch_and_each_counts_its_own_acks() -> None:
    """Two runs queued in one turn that cannot merge (both write one key) are coordinated
    apart, yet reach each replica in one PUT_BATCH; the batch's answer counts every record's
    ack for the run it came from: at ALL, which needs every replica's ack, both runs are
    acknowledged within a second, and the later write of the shared key wins everywhere."""
    cluster = three_nodes(seed=19)
    n1, n2, n3 = cluster.nodes
    served = n2.rt.coordinator.stats.served
    batches = served.get("PUT_BATCH", 0)
    strict = n1.rt.keyspace.at(ConsistencyLevel.ALL)
    outcomes: list[object] = []
    strict.set_run([(b"shared", b"first"), (b"a", b"1")]).addBoth(outcomes.append)
    strict.set_run([(b"b", b"2"), (b"c", b"3"), (b"shared", b"second")]).addBoth(
        outcomes.append)
    cluster.run(1.0)
    assert outcomes == [None, None]
    assert served.get("PUT_BATCH", 0) == batches + 1
    for node in (n1, n2, n3):
        record = node.rt.replica.read(b"shared")
        assert record is not None and [v.value for v in record.versions] == [b"second"]
