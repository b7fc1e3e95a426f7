"""Tests for twistkv.node.counters: cluster INCR as PN-counter increments, in the deterministic
in-process cluster of test_cluster_sim (links that drop, delay, reset and partition).

Checker rule for "no acknowledged increment is lost" (test_no_acknowledged_increment_is_lost):
after the faults heal, hints drain and a full anti-entropy repair runs, the key's value read at
QUORUM is

    sum(acknowledged deltas) + sum(deltas refused as "applied, below quorum") + S

where S is the sum of some subset of the deltas whose outcome was reported "unknown" (a
timeout or a lost connection after the request left). Deltas refused as "not applied" (and
every delta a crashed coordinator issued without an outcome it could report) are outside the
exact terms; the latter may be in S. So: nothing acknowledged is lost, nothing is counted
twice, and every error told the client the truth.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
from test_cluster_sim import SimCluster, three_nodes, wait
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from twistkv.core.counter import CounterError
from twistkv.core.peerwire import Frame, IncrRequest, incr_frame
from twistkv.core.quorum import ConsistencyLevel
from twistkv.core.record import Version
from twistkv.node.cluster import ClusterOptions
from twistkv.node.coordinator import KeyTooLong
from twistkv.node.counters import APPLIED, NOT_APPLIED, UNKNOWN, IncrementUnavailable


def preference(cluster: SimCluster, key: bytes) -> list[str]:
    return cluster.nodes[0].rt.ring.preference_list(key, 3)


def stored(cluster: SimCluster, name: str, key: bytes) -> tuple[Version, ...]:
    record = cluster.node(name).rt.replica.read(key)
    return record.versions if record is not None else ()


def test_concurrent_increments_through_every_node_all_count() -> None:
    """Fifteen INCRs issued at once through three coordinators all count (15), the acting
    replica is the first of the preference list, and every replica ends with the same single
    counter version (not siblings)."""
    cluster = three_nodes()
    key = b"hits"
    pending = [n.rt.keyspace.incr_by(key, 1) for n in cluster.nodes for _ in range(5)]
    results: list[object] = []
    for deferred in pending:
        deferred.addBoth(results.append)
    cluster.run(3.0)
    assert sorted(results) == list(range(1, 16))  # type: ignore[type-var]
    first = preference(cluster, key)[0]
    assert cluster.node(first).rt.counters.stats["increments_acted"] == 15
    got = wait(cluster, cluster.nodes[2].rt.keyspace.get(key))
    assert isinstance(got, Version) and got.value == b"15"
    versions = {stored(cluster, n.name, key) for n in cluster.nodes}
    assert len(versions) == 1 and len(next(iter(versions))) == 1


def test_increments_acked_on_both_sides_of_a_partition_both_count_after_healing() -> None:
    """Five nodes split so that the key's first replica (with a stand-in) and its other two
    replicas each acknowledge increments from different actors; after healing, hints and a
    repair, the counter holds all of them: concurrent counters merge, they are not siblings
    resolved by last-writer-wins."""
    cluster = SimCluster(5, 5)
    cluster.run(10.0)
    assert cluster.converged()
    key = b"split"
    first, second, _ = preference(cluster, key)
    outsider = next(n.name for n in cluster.nodes if n.name not in preference(cluster, key))
    side_a = [cluster.node(first), cluster.node(outsider)]
    side_b = [n for n in cluster.nodes if n not in side_a]
    cluster.network.partition([n.address for n in side_a], [n.address for n in side_b])
    cluster.run(15.0)
    assert wait(cluster, cluster.node(first).rt.keyspace.incr_by(key, 10)) == 10
    assert wait(cluster, cluster.node(second).rt.keyspace.incr_by(key, 1)) == 1
    assert wait(cluster, side_b[-1].rt.keyspace.incr_by(key, 1)) == 2
    cluster.network.heal()
    cluster.run(20.0)
    for node in cluster.nodes:
        wait(cluster, node.rt.antientropy.repair_all(), 30.0)
    for node in cluster.nodes:
        got = wait(cluster, node.rt.keyspace.get(key))
        assert isinstance(got, Version) and got.value == b"12", node.name
        assert got.counter is not None and len(got.counter.entries) == 2


def test_incr_continues_a_plain_integer_and_refuses_other_values() -> None:
    """SET k 10 then INCRBY 5 through another node gives 15; a non-integer value is the
    client's error (nothing written); an over-long key fails before anything is sent."""
    cluster = three_nodes()
    n1, n2, n3 = cluster.nodes
    assert wait(cluster, n1.rt.keyspace.set(b"k", b"10")) is None
    assert wait(cluster, n3.rt.keyspace.incr_by(b"k", 5)) == 15
    assert wait(cluster, n2.rt.keyspace.incr_by(b"k", -20)) == -5
    assert wait(cluster, n1.rt.keyspace.set(b"s", b"abc")) is None
    error = wait(cluster, n2.rt.keyspace.incr_by(b"s", 1))
    assert isinstance(error, Failure) and error.check(CounterError)
    assert "not an integer" in error.getErrorMessage()
    got = wait(cluster, n1.rt.keyspace.get(b"s"))
    assert isinstance(got, Version) and got.value == b"abc"
    too_long = wait(cluster, n1.rt.keyspace.incr_by(b"x" * 20000, 1))
    assert isinstance(too_long, Failure) and too_long.check(KeyTooLong)


def test_a_down_actor_is_skipped_and_the_counter_converges_when_it_returns() -> None:
    """With the key's first replica crashed and known dead, the next replica acts; after it
    returns, hints and a repair bring it the merged counter, and no increment is lost."""
    cluster = three_nodes()
    key = b"visits"
    first, second, _ = preference(cluster, key)
    coordinator = next(n for n in cluster.nodes if n.name != first)
    assert wait(cluster, coordinator.rt.keyspace.incr_by(key, 2)) == 2
    cluster.node(first).crash()
    cluster.run(15.0)
    assert not coordinator.rt.is_alive(first)
    assert wait(cluster, coordinator.rt.keyspace.incr_by(key, 3)) == 5
    assert cluster.node(second).rt.counters.stats["increments_acted"] == 1
    cluster.node(first).restart()
    cluster.run(20.0)
    wait(cluster, cluster.node(first).rt.antientropy.repair_all(), 30.0)
    assert wait(cluster, cluster.node(first).rt.keyspace.incr_by(key, 1)) == 6
    got = wait(cluster, cluster.node(second).rt.keyspace.get(key))
    assert isinstance(got, Version) and got.value == b"6"


def test_an_actor_that_vanishes_mid_request_gives_an_outcome_unknown_error() -> None:
    """When the actor is cut off after the request left and no answer comes, the client is
    told the outcome is unknown and that a retry may count twice; the coordinator does not
    silently retry elsewhere (which could count it twice)."""
    cluster = three_nodes()
    key = b"clicks"
    first = preference(cluster, key)[0]
    coordinator = next(n for n in cluster.nodes if n.name != first)
    assert wait(cluster, coordinator.rt.keyspace.incr_by(key, 1)) == 1
    cluster.network.partition([coordinator.address],
                              [n.address for n in cluster.nodes if n is not coordinator])
    error = wait(cluster, coordinator.rt.keyspace.incr_by(key, 1), 10.0)
    assert isinstance(error, Failure) and error.check(IncrementUnavailable)
    assert error.value.outcome in (UNKNOWN, NOT_APPLIED)
    if error.value.outcome == UNKNOWN:
        assert "may count it twice" in error.getErrorMessage()
    total = sum(n.rt.counters.stats["increments_acted"] for n in cluster.nodes)
    assert total == 1  # the partitioned request never reached an actor, nobody retried it


def test_an_increment_applied_below_quorum_says_so_and_still_counts() -> None:
    """With both other replicas down in a three-node cluster, the actor applies the
    increment but cannot reach W=2: the error says it was applied and must not be retried,
    and once the others are back the increment is there."""
    cluster = three_nodes()
    key = b"k"
    first = preference(cluster, key)[0]
    actor = cluster.node(first)
    for node in cluster.nodes:
        if node is not actor:
            node.crash()
    cluster.run(15.0)
    error = wait(cluster, actor.rt.keyspace.incr_by(key, 7), 5.0)
    assert isinstance(error, Failure) and error.check(IncrementUnavailable)
    assert error.value.outcome == APPLIED
    assert "do not retry" in error.getErrorMessage()
    for node in cluster.nodes:
        if node is not actor:
            node.restart()
    cluster.run(20.0)
    assert wait(cluster, cluster.nodes[1].rt.keyspace.incr_by(key, 1)) == 8


def test_a_node_that_does_not_replicate_the_key_refuses_to_act() -> None:
    """INCR sent to a node outside the key's preference list is refused with not_owner
    before anything is applied (the coordinator then asks the next replica)."""
    cluster = SimCluster(11, 4)
    cluster.run(10.0)
    assert cluster.converged()
    key = b"elsewhere"
    outsider = next(n for n in cluster.nodes if n.name not in preference(cluster, key))
    answer = outsider.rt.counters.handle("n1", incr_frame(IncrRequest(key, 1)))
    results: list[object] = []
    if isinstance(answer, Deferred):
        answer.addBoth(results.append)
    else:
        results.append(answer)
    cluster.run(1.0)
    (frame,) = results
    assert isinstance(frame, Frame) and frame.verb == "NACK"
    assert frame.fields["reason"] == "not_owner"
    assert outsider.rt.replica.read(key) is None


def test_malformed_incr_frames_are_answered_with_bad_request() -> None:
    """A malformed INCR gets ERROR bad_request and changes nothing."""
    cluster = three_nodes()
    node = cluster.nodes[0]
    answer = node.rt.counters.handle("n2", Frame("INCR", 0, {"key": "k", "delta": "+1"}))
    assert isinstance(answer, Frame) and answer.verb == "ERROR"
    assert answer.fields["code"] == "bad_request"
    assert node.rt.replica.read(b"k") is None


# -- the property: no acknowledged increment is lost ------------------------------------------


@dataclass
class Incr:
    delta: int
    outcome: str = "pending"  # acked | applied | unknown | not applied | lost (coordinator died)


def increments_under_faults(seed: int) -> tuple[SimCluster, list[Incr], int]:
    """Many concurrent INCRBYs through random coordinators across random partitions, crashes,
    restarts and connection resets; then heal, drain hints, repair, and read at QUORUM."""
    rng = random.Random(seed)
    cluster = SimCluster(seed, rng.choice([3, 4, 5]),
                         options=ClusterOptions(vnodes_per_node=16, hint_interval=1.0,
                                                antientropy_interval=0))
    cluster.run(8.0)
    assert cluster.converged(), f"seed {seed}: membership did not converge"
    network = cluster.network
    key = b"counter"
    incrs: list[Incr] = []
    partitioned = False
    max_down = 1 if cluster.size < 5 else 2
    for _ in range(150):
        cluster.run(rng.uniform(0.003, 0.1))
        up = [n for n in cluster.nodes if n.up]
        down = [n for n in cluster.nodes if not n.up]
        roll = rng.random()
        if roll < 0.8:
            node = rng.choice(up)
            incr = Incr(rng.randint(1, 9))
            incrs.append(incr)
            runtime = node.rt

            def acked(value: int, incr: Incr = incr, runtime: object = runtime) -> None:
                incr.outcome = "acked" if runtime.running else "lost"  # type: ignore[attr-defined]

            def failed(failure: Failure, incr: Incr = incr) -> None:
                failure.trap(IncrementUnavailable)
                incr.outcome = failure.value.outcome

            node.rt.keyspace.incr_by(key, incr.delta, ConsistencyLevel.QUORUM).addCallbacks(
                acked, failed)
        elif roll < 0.85 and not partitioned:
            addresses = [n.address for n in cluster.nodes]
            rng.shuffle(addresses)
            cut = rng.randint(1, len(addresses) - 1)
            network.partition(addresses[:cut], addresses[cut:])
            partitioned = True
        elif roll < 0.9 and partitioned:
            network.heal()
            partitioned = False
        elif roll < 0.94 and len(down) < max_down and len(up) > 1:
            rng.choice(up).crash()
        elif roll < 0.97 and down:
            rng.choice(down).restart()
        else:
            network.drop_connections(rng.choice(up).address)
    network.heal()
    for node in cluster.nodes:
        if not node.up:
            node.restart()
    cluster.run(40.0)
    assert cluster.converged(), f"seed {seed}: membership did not converge after healing"
    for node in cluster.nodes:
        wait(cluster, node.rt.antientropy.repair_all(), 30.0)
    result = cluster.read(cluster.nodes[0], key)
    live = result.live(cluster.now_ms())
    assert live is not None and live.counter is not None, f"seed {seed}: {result.versions}"
    return cluster, incrs, int(live.value)


def _subset_sums(deltas: list[int]) -> set[int]:
    sums = {0}
    for delta in deltas:
        sums |= {s + delta for s in sums}
    return sums


@pytest.mark.parametrize("seed", range(10))
def test_no_acknowledged_increment_is_lost(seed: int) -> None:
    """The module docstring's checker rule holds after random faults heal: every
    acknowledged increment and every one reported applied counts exactly once, and whatever
    else counts is a subset of the increments whose outcome was unknown to their client."""
    _, incrs, value = increments_under_faults(seed)
    certain = sum(i.delta for i in incrs if i.outcome in ("acked", APPLIED))
    maybe = [i.delta for i in incrs if i.outcome in (UNKNOWN, "lost", "pending")]
    assert any(i.outcome == "acked" for i in incrs)
    assert value - certain in _subset_sums(maybe), (
        f"seed {seed}: value {value}, certain {certain}, unknown {maybe}, "
        f"outcomes {[(i.delta, i.outcome) for i in incrs]}")


def test_a_connections_consistency_level_applies_to_increments() -> None:
    """CONSISTENCY ALL reaches INCR through the bound keyspace: with a replica down in a
    three-node cluster, the increment is applied but reports fewer than 3 acknowledgements."""
    cluster = three_nodes()
    key = b"strict"
    first, _, third = preference(cluster, key)
    strict = cluster.node(first).rt.keyspace.at(ConsistencyLevel.ALL)
    assert wait(cluster, strict.incr_by(key, 1)) == 1
    cluster.node(third).crash()
    cluster.run(15.0)
    error = wait(cluster, strict.incr_by(key, 1), 5.0)
    assert isinstance(error, Failure) and error.check(IncrementUnavailable)
    assert (error.value.outcome, error.value.acks, error.value.required) == (APPLIED, 2, 3)


def test_the_error_texts_in_the_consistency_doc_are_the_codes() -> None:
    """docs/consistency.md §14 quotes the three increment errors verbatim: each text the
    code produces (with the doc's example details) appears in the doc."""
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "consistency.md").read_text(encoding="utf-8")
    examples = [
        (NOT_APPLIED, 0, {"<node>": "<reason>, ..."}),
        (APPLIED, 1, {"<node>": "<reason>, ..."}),
        (UNKNOWN, 0, {"<node>": "timed out"}),
    ]
    for outcome, acks, detail in examples:
        text = str(IncrementUnavailable(outcome, acks, 2, [], detail))
        assert f"`{text}`" in doc, text


def test_dropping_records_renews_the_actor_once_the_ring_changes() -> None:
    """After a node dropped records under one ring, its first increment under another ring
    uses a new actor id (a key that moved away and back may come back older than what this
    node published), and dropping more batches under the same ring does not renew it again."""
    cluster = three_nodes()
    node = cluster.nodes[0]
    counters = node.rt.counters
    ring = node.rt.ring
    key = next(k for k in (b"k%d" % i for i in range(100)) if preference(cluster, k)[0] == "n1")
    before = counters.actor
    counters.records_dropped(ring)
    counters.records_dropped(ring)
    assert wait(cluster, node.rt.keyspace.incr_by(key, 1)) == 1
    assert counters.actor == before  # same ring: the dropped keys cannot be acted on here
    counters.records_dropped(object())  # type: ignore[arg-type]  # a later ring
    renewed = counters.actor
    assert renewed != before
    assert wait(cluster, node.rt.keyspace.incr_by(key, 1)) == 2  # acts under another ring
    latest = counters.actor
    assert latest not in (before, renewed)
    assert wait(cluster, node.rt.keyspace.incr_by(key, 1)) == 3
    assert counters.actor == latest  # renewed once per ring change, not per increment


def test_increments_during_a_join_all_count_on_the_new_ring() -> None:
    """While a fourth node joins (its ranges streamed, writes going to pending replicas,
    connections reset now and then), increments keep coming through every node; once the
    join settled and a repair ran, every counter holds every acknowledged increment plus some
    of those whose outcome was unknown, and the new node reads the same values."""
    from test_rebalance import Cluster

    cluster = Cluster(3, seed=4)
    keys = [b"c-%d" % i for i in range(8)]
    outcomes: dict[bytes, list[Incr]] = {key: [] for key in keys}

    def issue() -> None:
        candidates = [n for n in cluster.nodes if n.up and n.rt.rebalancer.ready]
        node = cluster.rng.choice(candidates)
        key = cluster.rng.choice(keys)
        incr = Incr(cluster.rng.randint(1, 5))
        outcomes[key].append(incr)

        def acked(_: int, incr: Incr = incr) -> None:
            incr.outcome = "acked"

        def failed(failure: Failure, incr: Incr = incr) -> None:
            failure.trap(IncrementUnavailable)
            incr.outcome = failure.value.outcome

        node.rt.keyspace.incr_by(key, incr.delta).addCallbacks(acked, failed)

    for _ in range(100):
        issue()
        cluster.run(0.01)
    n4 = cluster.add_node()
    for step in range(600):
        issue()
        cluster.run(cluster.rng.uniform(0.005, 0.03))
        if step % 50 == 0:
            cluster.network.drop_connections(cluster.rng.choice(cluster.nodes).address)
    cluster.settle()
    assert cluster.converged()
    for node in cluster.nodes:
        cluster.wait(node.rt.antientropy.repair_all(), 60.0)
    for key in keys:
        certain = sum(i.delta for i in outcomes[key] if i.outcome in ("acked", APPLIED))
        maybe = [i.delta for i in outcomes[key] if i.outcome in (UNKNOWN, "pending")]
        got = cluster.wait(n4.rt.keyspace.get(key))
        assert isinstance(got, Version), (key, got)
        assert int(got.value) - certain in _subset_sums(maybe), (key, got.value, certain, maybe)
    assert sum(i.outcome == "acked" for incrs in outcomes.values() for i in incrs) > 500


def test_an_increment_applied_below_quorum_by_a_remote_actor_names_it() -> None:
    """Forwarded to an actor that applies it but cannot reach W (here ALL, with a replica
    dead in a three-node cluster), the client's error says it was applied, by whom, and which
    replica did not count; the outcome is APPLIED, and the increment is there."""
    cluster = three_nodes()
    key = b"remote"
    first, second, third = preference(cluster, key)
    coordinator = cluster.node(second)
    cluster.node(third).crash()
    cluster.run(15.0)
    error = wait(cluster, coordinator.rt.keyspace.at(ConsistencyLevel.ALL).incr_by(key, 4),
                 10.0)
    assert isinstance(error, Failure) and error.check(IncrementUnavailable)
    assert error.value.outcome == APPLIED
    assert (error.value.acks, error.value.required) == (2, 3)
    message = error.getErrorMessage()
    assert f"{first} applied it (" in message and third in message
    assert cluster.node(first).rt.counters.stats["increments_acted"] == 1
    assert wait(cluster, coordinator.rt.keyspace.incr_by(key, 1)) == 5
