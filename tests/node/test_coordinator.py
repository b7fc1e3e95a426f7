"""Tests for twistkv.node.coordinator: quorums, sloppy quorum and hints, read repair, siblings,
the replica verbs, and the client-facing error text.

The peers here are other in-process coordinators behind a scripted pool, so each test
chooses exactly which replica answers, refuses, is unreachable or hangs; the full stack over
the simulated network is exercised by test_cluster_sim.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from twistkv.core.peerwire import (
    MAX_BATCH_BYTES,
    NOT_SENT,
    BatchEntry,
    Frame,
    get_batch_frames,
    parse_batch_outcomes,
    parse_get_batch_answer,
    put_batch_frames,
    quote,
)
from twistkv.core.quorum import ConsistencyLevel
from twistkv.core.record import Record, Version, decode_record, encode_record
from twistkv.core.ring import Ring
from twistkv.core.versioning import HybridLogicalClock
from twistkv.node import coordinator as coordinator_module
from twistkv.node.coordinator import (
    Coordinator,
    HintDelivery,
    KeyTooLong,
    QuorumUnavailable,
    ReadResult,
)
from twistkv.node.durability import GroupCommitter
from twistkv.node.peer import PeerTimeout, PeerUnavailable, report_put_outcomes
from twistkv.node.replica import HintStore, ReplicaStore
from twistkv.storage.errors import StoreIOError
from twistkv.storage.interface import FsyncPolicy
from twistkv.storage.memory import MemoryStore

DOCS = Path(__file__).resolve().parents[2] / "docs" / "consistency.md"
VNODES = 16


class Net:
    """In-process peers: a request reaches the target coordinator's handle() 0.5 ms later and
    its answer comes back 0.5 ms after that, unless the target is scripted to be unreachable,
    to hang (the request times out), to never answer (a lost request), or to refuse."""

    def __init__(self, clock: Clock, names: list[str], n: int = 3,
                 batching: bool = False,
                 storage: Callable[[Clock], tuple[MemoryStore, GroupCommitter]] | None = None,
                 ) -> None:
        self.clock = clock
        self.ring = Ring(names, VNODES)
        self.faults: dict[str, str] = {}
        self.believed_down: set[str] = set()
        self.sent: list[tuple[str, str, Frame]] = []
        self.nodes: dict[str, Coordinator] = {}
        for name in names:
            if storage is not None:
                store, committer = storage(clock)
            else:
                store = MemoryStore()
                committer = GroupCommitter(store, FsyncPolicy.NEVER, clock)
                committer.start()
            now = self.now_ms
            self.nodes[name] = Coordinator(
                name,
                replica=ReplicaStore(store, committer, now, tombstone_grace_ms=10**9),
                hints=HintStore(store, committer, now),
                pool=(_ReadingPool if batching else _Pool)(self, name),
                ring_provider=lambda: self.ring,
                alive_provider=lambda node: node not in self.believed_down,
                address_provider=lambda node: f"{node}:7380" if node in self.nodes else None,
                reactor=clock,
                hlc=HybridLogicalClock(),
                n=n,
                request_timeout=2.0,
            )

    def now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    def __getitem__(self, name: str) -> Coordinator:
        return self.nodes[name]

    def run(self, seconds: float = 5.0) -> None:
        for _ in range(int(seconds * 1000)):
            self.clock.advance(0.001)

    def key_owned_by(self, owners: tuple[str, ...]) -> bytes:
        """A key whose preference list is exactly ``owners`` (in that order)."""
        for i in range(100_000):
            key = b"key-%d" % i
            if self.ring.preference_list(key, len(owners)) == owners:
                return key
        raise AssertionError(f"no key with preference list {owners}")

    def stored(self, name: str, key: bytes) -> list[bytes]:
        record = self.nodes[name].replica.read(key)
        return sorted(v.value for v in record.versions) if record else []


class _Pool:
    def __init__(self, net: Net, source: str) -> None:
        self._net = net
        self._source = source

    def request(self, address: str, frame: Frame, timeout: float | None = None) -> Deferred[Frame]:
        net = self._net
        target = address.split(":")[0]
        net.sent.append((self._source, target, frame))
        fault = net.faults.get(target)
        if fault == "unreachable":
            return fail(PeerUnavailable(address, "connection refused"))
        result: Deferred[Frame] = Deferred()
        if fault == "silent":  # a lost request: only the caller's own deadline ends it
            return result
        if fault == "hang":
            net.clock.callLater(timeout or 5.0, result.errback,
                                Failure(PeerTimeout(address, frame.verb, timeout or 5.0)))
            return result

        def arrive() -> None:
            if fault == "refuse":
                answer: object = Frame("NACK", 1, {"reason": "storage_error"})
            else:
                answer = net.nodes[target].handle(self._source, replace(frame, request_id=1))
            respond(answer)

        def respond(answer: object) -> None:
            if isinstance(answer, Deferred):
                answer.addCallback(respond)
                return
            assert isinstance(answer, Frame)
            net.clock.callLater(0.0005, result.callback, answer)

        net.clock.callLater(0.0005, arrive)
        return result


class _BatchingPool(_Pool):
    """A pool with put() and put_many() (as PeerClientPool has), so that put_run takes its
    run path: put_many's records travel in real PUT_BATCH frames to the peer's handle(),
    and their outcomes are reported as a connection reports them (report_put_outcomes:
    one acked() call for an all-applied batch)."""

    def put(self, address: str, verb: str, key: bytes, record: bytes, timeout: float | None,
            callback: Callable[..., object], errback: Callable[..., object],
            *args: object) -> None:
        self.request(address, Frame(verb, 0, {"key": quote(key)}, record), timeout).addCallbacks(
            callback, errback, callbackArgs=args, errbackArgs=args)

    def put_many(self, address: str, items: list[tuple[object, ...]]) -> None:
        if not all(item[1] for item in items):  # as PeerProtocol.put_many: "" goes alone
            for item in items:
                self.put(address, *item)  # type: ignore[arg-type]
            return
        start = 0
        for frame, count in put_batch_frames(items):
            chunk = items[start:start + count]
            start += count
            timeout = min(float(item[3]) for item in chunk)  # type: ignore[arg-type]
            self.request(address, frame, timeout).addCallbacks(
                self._batch_answered, self._batch_failed, callbackArgs=(chunk,),
                errbackArgs=(chunk,))

    @staticmethod
    def _batch_answered(frame: Frame, chunk: list[tuple[object, ...]]) -> None:
        if frame.verb != "VAL":
            for item in chunk:
                item[4](frame, *item[6:])  # type: ignore[operator]
            return
        report_put_outcomes(chunk, parse_batch_outcomes(frame, len(chunk)))

    @staticmethod
    def _batch_failed(failure: Failure, chunk: list[tuple[object, ...]]) -> None:
        for item in chunk:
            item[5](failure, *item[6:])  # type: ignore[operator]


class _ReadingPool(_BatchingPool):
    """A pool with get_many() as well (as PeerClientPool has), so that get_run takes its run
    path: the keys travel in real GET_BATCH frames to the peer's handle()."""

    def get_many(self, address: str, items: list[tuple[object, ...]]) -> None:
        start = 0
        for frame, count in get_batch_frames(items):  # type: ignore[arg-type]
            chunk = items[start:start + count]
            start += count
            timeout = min(float(item[1]) for item in chunk)  # type: ignore[arg-type]
            self.request(address, frame, timeout).addCallbacks(
                self._answered, self._failed, callbackArgs=(address, chunk),
                errbackArgs=(chunk,))

    def _answered(self, frame: Frame, address: str, chunk: list[tuple[object, ...]]) -> None:
        if frame.verb != "VAL":
            for item in chunk:
                item[2](frame, *item[4:])  # type: ignore[operator]
            return
        for item, record in zip(chunk, parse_get_batch_answer(frame, len(chunk)), strict=True):
            if record is NOT_SENT:
                self.request(address, Frame("GET", 0, {"key": quote(item[0])}), 2.0  # type: ignore[arg-type]
                             ).addCallback(lambda answer, item=item: item[2](  # type: ignore[misc, operator]
                                 answer.payload or None if answer.verb == "VAL" else answer,
                                 *item[4:]))
                continue
            item[2](record, *item[4:])  # type: ignore[operator]

    @staticmethod
    def _failed(failure: Failure, chunk: list[tuple[object, ...]]) -> None:
        for item in chunk:
            item[3](failure, *item[4:])  # type: ignore[operator]


def outcome(deferred: Deferred[object]) -> list[object]:
    results: list[object] = []
    deferred.addBoth(results.append)
    return results


@pytest.fixture
def net3(clock: Clock) -> Net:
    return Net(clock, ["n1", "n2", "n3"])


@pytest.fixture
def net4(clock: Clock) -> Net:
    return Net(clock, ["n1", "n2", "n3", "n4"])


# -- quorum writes ----------------------------------------------------------------------------


def test_quorum_write_reaches_every_replica(net3: Net) -> None:
    """A default (W=2) write fires with its version and lands on all three replicas."""
    results = outcome(net3["n1"].put(b"k", b"v"))
    net3.run(0.01)
    (written,) = results
    assert isinstance(written, Version) and written.value == b"v"
    assert all(net3.stored(n, b"k") == [b"v"] for n in ("n1", "n2", "n3"))


def test_write_waits_for_w_acks_not_for_every_replica(net3: Net) -> None:
    """One hanging replica does not delay a QUORUM write; ALL waits and fails on it."""
    net3.faults["n3"] = "hang"
    quorum = outcome(net3["n1"].put(b"k", b"v"))
    net3.run(0.01)
    assert len(quorum) == 1 and isinstance(quorum[0], Version)
    every = outcome(net3["n1"].put(b"k", b"w", ConsistencyLevel.ALL))
    net3.run(1.9)
    assert every == []
    net3.run(0.2)
    (failure,) = every
    assert isinstance(failure, Failure) and failure.check(QuorumUnavailable)


def test_write_that_cannot_reach_w_fails_unavailable_with_an_exact_message(net3: Net) -> None:
    """Two of three replicas unreachable: W=2 cannot be met; the error names who answered
    and who did not, and the coordinator keeps hints for both owners it could not reach."""
    key = net3.key_owned_by(("n1", "n2", "n3"))
    net3.faults.update(n2="unreachable", n3="unreachable")
    results = outcome(net3["n1"].put(key, b"v"))
    net3.run(0.01)
    (failure,) = results
    assert isinstance(failure, Failure)
    error = failure.value
    assert isinstance(error, QuorumUnavailable)
    assert str(error) == (
        "UNAVAILABLE write reached 1 of 2 required replicas (n2 unreachable, n3 unreachable); "
        "the value may exist on the replicas that acknowledged and will spread by read "
        "repair/hints"
    )
    assert (error.acks, error.required, error.replicas_tried) == (1, 2, ("n1", "n2", "n3"))
    assert net3.stored("n1", key) == [b"v"]
    assert net3["n1"].hints.targets() == ["n2", "n3"]
    assert net3["n1"].stats.writes_unavailable == 1


def test_write_times_out_at_the_request_timeout(net3: Net) -> None:
    """Replicas that never answer fail the write at the deadline, not before; the message
    says they timed out."""
    net3.faults.update(n2="hang", n3="hang")
    results = outcome(net3["n1"].put(b"k", b"v"))
    net3.run(1.99)
    assert results == []
    net3.run(0.02)
    (failure,) = results
    assert isinstance(failure, Failure)
    assert "reached 1 of 2 required replicas (n2 timed out, n3 timed out)" in str(failure.value)


def test_staggered_writes_each_time_out_at_their_own_deadline(net3: Net) -> None:
    """Requests in flight share one deadline timer: a write issued later fails at its own
    deadline, not at the first one's, and reads are swept by the same timer."""
    net3.faults.update(n2="hang", n3="hang")
    first = outcome(net3["n1"].put(b"a", b"v"))
    net3.run(0.5)
    second = outcome(net3["n1"].put(b"b", b"v"))
    read = outcome(net3["n1"].get(b"a"))
    net3.run(1.51)
    assert len(first) == 1 and isinstance(first[0], Failure)
    assert second == [] and read == []
    net3.run(0.5)
    assert len(second) == 1 and isinstance(second[0], Failure)
    assert "n2 timed out" in str(second[0].value)
    assert len(read) == 1 and isinstance(read[0], Failure)


def test_a_settled_coordinator_holds_no_timer(clock: Clock) -> None:
    """Once every write settled, nothing is left scheduled for their deadlines: an idle
    node's reactor has no timer of the coordinator's."""
    net = Net(clock, ["n1", "n2", "n3"])
    results = [outcome(net["n1"].put(b"k%d" % i, b"v")) for i in range(20)]
    net.run(0.01)
    assert all(len(r) == 1 and isinstance(r[0], Version) for r in results)
    assert clock.getDelayedCalls() == []


def test_consistency_one_succeeds_on_the_local_replica_alone(net3: Net) -> None:
    """ONE needs a single ack: the coordinator's own replica suffices."""
    key = net3.key_owned_by(("n1", "n2", "n3"))
    net3.faults.update(n2="unreachable", n3="unreachable")
    results = outcome(net3["n1"].put(key, b"v", ConsistencyLevel.ONE))
    assert len(results) == 1 and isinstance(results[0], Version)


# -- sloppy quorum and hinted handoff ---------------------------------------------------------


def test_down_owner_is_replaced_by_a_stand_in_whose_hint_counts(net4: Net) -> None:
    """With n3 believed down, its copy goes to the fallback n4 as a hint (hint_for=n3);
    n4's ack counts, n4 stores nothing as its own data."""
    key = net4.key_owned_by(("n1", "n2", "n3"))
    assert net4.ring.fallback_nodes(key, 3) == ("n4",)
    net4.believed_down.add("n3")
    net4.faults["n3"] = "unreachable"
    results = outcome(net4["n1"].put(key, b"v", ConsistencyLevel.ALL))
    net4.run(0.01)
    assert len(results) == 1 and isinstance(results[0], Version)
    puts = [(t, f.fields.get("hint_for")) for _, t, f in net4.sent if f.verb == "PUT"]
    assert ("n4", "n3") in puts and all(t != "n3" for t, _ in puts)
    assert net4.stored("n4", key) == []
    (hint,) = net4["n4"].hints.pending_for("n3")
    assert hint.key == key
    assert net4["n1"].stats.hinted_acks == 1 and net4["n4"].stats.hints_accepted == 1


def test_a_failing_owner_fails_over_to_a_stand_in_within_the_deadline(net4: Net) -> None:
    """The failure detector still thinks n3 is alive, but its request times out: the slot
    moves to n4 after the replica timeout, in time for an ALL write to succeed."""
    key = net4.key_owned_by(("n1", "n2", "n3"))
    net4.faults["n3"] = "hang"
    results = outcome(net4["n1"].put(key, b"v", ConsistencyLevel.ALL))
    net4.run(0.99)
    assert results == []
    net4.run(0.05)
    assert len(results) == 1 and isinstance(results[0], Version)
    assert [h.key for h in net4["n4"].hints.pending_for("n3")] == [key]


def test_hints_are_delivered_when_the_owner_returns_then_deleted(net4: Net) -> None:
    """Hinted handoff: nothing is sent while the owner is down; once it is back the stand-in
    delivers, the owner stores the write as its own, and the hint is gone."""
    key = net4.key_owned_by(("n1", "n2", "n3"))
    net4.believed_down.add("n3")
    net4.faults["n3"] = "unreachable"
    net4["n1"].put(key, b"v")
    net4.run(0.01)
    stand_in = net4["n4"]
    delivery = HintDelivery(net4.clock, "n4", stand_in.hints, _Pool(net4, "n4"),
                            lambda n: f"{n}:7380", lambda n: n not in net4.believed_down)
    assert delivery.run_once() == 0
    net4.believed_down.discard("n3")
    del net4.faults["n3"]
    assert delivery.run_once() == 1
    net4.run(0.01)
    assert net4.stored("n3", key) == [b"v"]
    assert stand_in.hints.targets() == [] and delivery.stats.delivered == 1
    assert stand_in.hints.stats.delivered == 1


def test_three_node_cluster_coordinator_keeps_the_hint_for_a_dead_node(net3: Net) -> None:
    """With N=3 on three nodes there is no fallback: QUORUM writes still succeed on the two
    live owners and the coordinator keeps a durable hint for the dead one, delivered on its
    return."""
    key = net3.key_owned_by(("n1", "n2", "n3"))
    net3.believed_down.add("n3")
    net3.faults["n3"] = "unreachable"
    results = outcome(net3["n2"].put(key, b"v"))
    net3.run(0.01)
    assert len(results) == 1 and isinstance(results[0], Version)
    assert [h.key for h in net3["n2"].hints.pending_for("n3")] == [key]
    assert net3["n2"].stats.coordinator_hints == 1
    net3.believed_down.clear()
    net3.faults.clear()
    delivery = HintDelivery(net3.clock, "n2", net3["n2"].hints, _Pool(net3, "n2"),
                            lambda n: f"{n}:7380", lambda n: True)
    delivery.run_once()
    net3.run(0.01)
    assert net3.stored("n3", key) == [b"v"]


def test_a_refused_hint_stays_for_the_next_round(net4: Net) -> None:
    """A NACK from the owner keeps the hint; it is retried and removed once acked."""
    key = net4.key_owned_by(("n1", "n2", "n3"))
    net4.believed_down.add("n3")
    net4["n1"].put(key, b"v")
    net4.run(0.01)
    delivery = HintDelivery(net4.clock, "n4", net4["n4"].hints, _Pool(net4, "n4"),
                            lambda n: f"{n}:7380", lambda n: True)
    net4.faults["n3"] = "refuse"
    delivery.run_once()
    net4.run(0.01)
    assert net4["n4"].hints.targets() == ["n3"] and delivery.stats.failures == 1
    del net4.faults["n3"]
    delivery.run_once()
    net4.run(0.01)
    assert net4["n4"].hints.targets() == []


# -- reads --------------------------------------------------------------------------------------


def test_quorum_read_returns_the_newest_and_repairs_the_stale_replica(net3: Net) -> None:
    """A replica that missed a write answers the old version; the read returns the new one
    and, once every replica answered, sends the stale one the reconciled record."""
    key = net3.key_owned_by(("n1", "n2", "n3"))
    net3["n1"].put(key, b"old")
    net3.run(0.01)
    net3.faults["n3"] = "unreachable"
    net3["n1"].put(key, b"new")
    net3.run(0.01)
    del net3.faults["n3"]
    assert net3.stored("n3", key) == [b"old"]
    # n3 coordinates: its own stale copy is the first reply.
    results = outcome(net3["n3"].get(key, ConsistencyLevel.ALL))
    net3.run(0.01)
    (result,) = results
    assert isinstance(result, ReadResult)
    assert [v.value for v in result.versions] == [b"new"]
    assert net3.stored("n3", key) == [b"new"]
    assert net3["n3"].stats.read_repairs == 1


def test_read_repair_of_a_remote_replica_is_counted(net3: Net) -> None:
    """A stale remote replica gets a PUT of the reconciled record after the read answered."""
    key = net3.key_owned_by(("n1", "n2", "n3"))
    net3.faults["n3"] = "unreachable"
    net3["n1"].put(key, b"v")
    net3.run(0.01)
    del net3.faults["n3"]
    results = outcome(net3["n1"].get(key))
    net3.run(0.01)
    assert isinstance(results[0], ReadResult) and results[0].live(net3.now_ms()) is not None
    assert net3.stored("n3", key) == [b"v"]
    assert net3["n1"].stats.read_repairs == 1 and net3["n1"].stats.read_repair_failures == 0


def test_read_that_cannot_reach_r_fails_unavailable(net3: Net) -> None:
    """Two replicas down and R=2: the read fails at once, naming them."""
    key = net3.key_owned_by(("n1", "n2", "n3"))
    net3.believed_down.update({"n2", "n3"})
    results = outcome(net3["n1"].get(key))
    (failure,) = results
    assert isinstance(failure, Failure)
    assert str(failure.value) == (
        "UNAVAILABLE read reached 1 of 2 required replicas (n2 down, n3 down); nothing was "
        "changed, retry or read at a lower consistency level"
    )


def test_wait_for_all_shows_every_replicas_answer(net3: Net) -> None:
    """VERSIONS reads wait for every replica, so per-replica answers are complete."""
    net3["n1"].put(b"k", b"v")
    net3.run(0.01)
    results = outcome(net3["n2"].get(b"k", wait_for_all=True))
    net3.run(0.01)
    (result,) = results
    assert isinstance(result, ReadResult)
    assert sorted(result.replies) == ["n1", "n2", "n3"]


# -- siblings, context, deletes ---------------------------------------------------------------


def test_concurrent_blind_writes_become_siblings_and_a_context_write_resolves_them(
    net3: Net,
) -> None:
    """Two nodes write the same key in the same instant, each without the other's version:
    the read shows both siblings, GET's winner is the later HLC, and a write with the read's
    context replaces both everywhere."""
    key = net3.key_owned_by(("n1", "n2", "n3"))
    first = outcome(net3["n1"].put(key, b"from-n1"))
    net3.clock.advance(0.0002)  # a later HLC, but before n1's write reaches n2
    second = outcome(net3["n2"].put(key, b"from-n2"))
    net3.run(0.01)
    assert isinstance(first[0], Version) and isinstance(second[0], Version)
    results = outcome(net3["n3"].get(key, wait_for_all=True))
    net3.run(0.01)
    (read,) = results
    assert isinstance(read, ReadResult)
    assert {v.value for v in read.versions} == {b"from-n1", b"from-n2"}
    live = read.live(net3.now_ms())
    assert live is not None and live.value == b"from-n2"
    outcome(net3["n3"].put(key, b"resolved", context=read.context))
    net3.run(0.01)
    assert all(net3.stored(n, key) == [b"resolved"] for n in ("n1", "n2", "n3"))


def test_delete_writes_a_versioned_tombstone(net3: Net) -> None:
    """A delete supersedes the value on every replica with a tombstone; GET sees nothing."""
    net3["n1"].put(b"k", b"v")
    net3.run(0.01)
    results = outcome(net3["n2"].delete(b"k"))
    net3.run(0.01)
    assert isinstance(results[0], Version) and results[0].tombstone
    for name in ("n1", "n2", "n3"):
        record = net3[name].replica.read(b"k")
        assert record is not None and [v.tombstone for v in record.versions] == [True]
    reads = outcome(net3["n3"].get(b"k"))
    net3.run(0.01)
    assert isinstance(reads[0], ReadResult) and reads[0].live(net3.now_ms()) is None
    deletes = [f for _, _, f in net3.sent if f.verb == "DEL"]
    assert len(deletes) == 2


def test_blind_write_at_a_replica_supersedes_what_it_holds(net3: Net) -> None:
    """Sequential SETs through one replica replace each other: no sibling build-up."""
    for value in (b"1", b"2", b"3"):
        net3["n1"].put(b"k", value)
        net3.run(0.01)
    assert all(net3.stored(n, b"k") == [b"3"] for n in ("n1", "n2", "n3"))


# -- guards and the replica verbs ---------------------------------------------------------------


def test_key_too_long_is_refused_before_contacting_anyone(net3: Net) -> None:
    """The 16 KiB key limit is the client's error, raised without any request."""
    results = outcome(net3["n1"].put(b"x" * (16 * 1024 + 1), b"v"))
    assert isinstance(results[0], Failure) and results[0].check(KeyTooLong)
    assert net3.sent == []


def test_a_node_that_has_not_joined_refuses_to_coordinate(clock: Clock) -> None:
    """Until membership joined, the ring holds only this node: acknowledging would be a lie."""
    net = Net(clock, ["n1"])
    coordinator = net["n1"]
    coordinator._ready = lambda: False  # type: ignore[method-assign]
    results = outcome(coordinator.put(b"k", b"v"))
    assert isinstance(results[0], Failure)
    assert "has not joined the cluster yet" in str(results[0].value)


def test_a_single_node_cluster_serves_default_quorums(clock: Clock) -> None:
    """Fewer nodes than N: defaults are capped to the replicas that exist."""
    net = Net(clock, ["n1"])
    assert isinstance(outcome(net["n1"].put(b"k", b"v"))[0], Version)
    read = outcome(net["n1"].get(b"k"))[0]
    assert isinstance(read, ReadResult) and read.versions[0].value == b"v"


def test_replica_verbs_validate_their_input(net3: Net) -> None:
    """GET of an absent key is VAL without payload; malformed or misdirected requests are
    refused with the spec's codes."""
    node = net3["n1"]
    tomb = encode_record(Record((Version(b"", (("n2", 1),), 1, "n2", tombstone=True),)))
    live = encode_record(Record((Version(b"v", (("n2", 1),), 1, "n2"),)))
    assert node.handle("n2", Frame("GET", 1, {"key": "absent"})) == Frame("VAL", 0)
    missing = node.handle("n2", Frame("PUT", 1, {}, live))
    assert isinstance(missing, Frame) and missing.fields["code"] == "bad_request"
    corrupt = node.handle("n2", Frame("PUT", 1, {"key": "k"}, b"\x07junk"))
    assert isinstance(corrupt, Frame) and corrupt.fields["code"] == "bad_request"
    live_del = node.handle("n2", Frame("DEL", 1, {"key": "k"}, live))
    assert isinstance(live_del, Frame) and live_del.fields["code"] == "bad_request"
    astray = node.handle("n2", Frame("HINT", 1, {"key": "k", "hint_for": "n3"}, live))
    assert isinstance(astray, Frame) and astray.verb == "NACK"
    assert astray.fields["reason"] == "not_owner"
    assert node.handle("n2", Frame("DEL", 1, {"key": quote(b"a b")}, tomb)) == Frame("ACK", 0)
    val = node.handle("n2", Frame("GET", 1, {"key": quote(b"a b")}))
    assert isinstance(val, Frame) and decode_record(val.payload).versions[0].tombstone


def lone_coordinator(
    name: str, store: MemoryStore, committer: GroupCommitter, clock: Clock
) -> Coordinator:
    """A coordinator alone in its ring over the fixtures' store and committer, for tests of
    what it does as a replica."""
    now = lambda: int(clock.seconds() * 1000)  # noqa: E731
    return Coordinator(
        name, replica=ReplicaStore(store, committer, now),
        hints=HintStore(store, committer, now), pool=_Pool(Net(clock, []), name),
        ring_provider=lambda: Ring([name], VNODES), alive_provider=lambda n: True,
        address_provider=lambda n: None, reactor=clock, hlc=HybridLogicalClock(),
    )


def test_stand_in_acks_a_hint_only_once_durable(
    store: MemoryStore, committer: GroupCommitter, clock: Clock
) -> None:
    """Under fsync=always the stand-in's ACK waits for the commit holding the hint."""
    node = lone_coordinator("n4", store, committer, clock)
    record = encode_record(Record((Version(b"v", (("n1", 1),), 1, "n1"),)))
    answer = node.handle("n1", Frame("PUT", 1, {"key": "k", "hint_for": "n3"}, record))
    assert isinstance(answer, Deferred)
    results = outcome(answer)
    assert results == []
    clock.advance(0)
    assert results == [Frame("ACK", 0)]
    assert node.hints.targets() == ["n3"] and node.replica.read(b"k") is None


def test_shutdown_refuses_new_work(net3: Net) -> None:
    """A stopped coordinator refuses client requests and peer writes."""
    net3["n1"].shutdown()
    results = outcome(net3["n1"].get(b"k"))
    assert isinstance(results[0], Failure) and "shutting down" in str(results[0].value)
    answer = net3["n1"].handle("n2", Frame("GET", 1, {"key": "k"}))
    assert isinstance(answer, Frame) and answer.fields["reason"] == "shutting_down"


def test_documented_error_messages_match_the_code() -> None:
    """docs/consistency.md quotes the UNAVAILABLE messages verbatim; they must not drift."""
    text = " ".join(DOCS.read_text(encoding="utf-8").split())
    examples = [
        QuorumUnavailable("write", 1, 2, ["n1", "n2", "n3"], {"n3": "unreachable"}),
        QuorumUnavailable("write", 0, 2, ["n1", "n2"], {"n1": "storage error",
                                                        "n2": "timed out"}),
        QuorumUnavailable("read", 1, 2, ["n1", "n2"], {"n2": "timed out", "n3": "down"}),
        QuorumUnavailable("write", 0, 2, [], {}, note="this node has not joined the cluster yet"),
    ]
    for error in examples:
        assert str(error) in text, str(error)


# -- PUT_BATCH, put_run and the byte-level write path ----------------------------------------


def _batch(*entries: tuple[str, bytes, bytes]) -> Frame:
    ((frame, _),) = put_batch_frames([BatchEntry(*entry) for entry in entries])
    return frame.with_request_id(1)


def test_put_batch_applies_each_record_and_refuses_bad_ones_alone(net3: Net) -> None:
    """Each record of a PUT_BATCH is handled as its own PUT/DEL: a corrupt record and a DEL
    carrying a live value are refused (bad_request) while the others are stored."""
    node = net3["n2"]
    live = encode_record(Record((Version(b"v", (("n1", 1),), 1, "n1"),)))
    tomb = encode_record(Record((Version(b"", (("n1", 2),), 2, "n1", tombstone=True),)))
    answer = node.handle("n1", _batch(("PUT", b"a", live), ("PUT", b"b", b"\x07junk"),
                                      ("DEL", b"c", live), ("DEL", b"d", tomb)))
    assert isinstance(answer, Frame) and answer.verb == "VAL"
    assert parse_batch_outcomes(answer, 4) == [None, "bad_request", "bad_request", None]
    assert net3.stored("n2", b"a") == [b"v"]
    assert net3.stored("n2", b"b") == [] and net3.stored("n2", b"c") == []
    assert node.replica.read(b"d").versions[0].tombstone  # type: ignore[union-attr]
    assert node.stats.served["PUT_BATCH"] == 1 and node.stats.served["PUT"] == 2


def test_put_batch_merges_concurrent_records_like_put(net3: Net) -> None:
    """A batched record concurrent with what the replica holds becomes a sibling, and an
    older one changes nothing, exactly as with single PUTs."""
    node = net3["n2"]
    mine = encode_record(Record((Version(b"mine", (("n2", 5),), 5, "n2"),)))
    theirs = encode_record(Record((Version(b"theirs", (("n1", 3),), 3, "n1"),)))
    older = encode_record(Record((Version(b"older", (("n2", 4),), 4, "n2"),)))
    assert isinstance(node.handle("n1", _batch(("PUT", b"k", mine))), Frame)
    node.handle("n1", _batch(("PUT", b"k", theirs), ("PUT", b"k", older)))
    assert net3.stored("n2", b"k") == [b"mine", b"theirs"]


def test_put_batch_is_refused_whole_when_malformed_or_shutting_down(net3: Net) -> None:
    """A broken batch layout is one bad_request; a stopped node refuses the whole batch."""
    node = net3["n2"]
    broken = node.handle("n1", Frame("PUT_BATCH", 1, {}, b"\x00\x00\x00\x02"))
    assert isinstance(broken, Frame) and broken.fields["code"] == "bad_request"
    node.shutdown()
    live = encode_record(Record((Version(b"v", (("n1", 1),), 1, "n1"),)))
    refused = node.handle("n1", _batch(("PUT", b"a", live)))
    assert isinstance(refused, Frame) and refused.verb == "NACK"
    assert refused.fields["reason"] == "shutting_down"


def test_put_batch_answers_once_every_record_is_durable(
    store: MemoryStore, committer: GroupCommitter, clock: Clock
) -> None:
    """Under fsync=always the batch's answer waits for the commit holding its records."""
    node = lone_coordinator("n2", store, committer, clock)
    live = encode_record(Record((Version(b"v", (("n1", 1),), 1, "n1"),)))
    answer = node.handle("n1", _batch(("PUT", b"a", live), ("PUT", b"b", b"\x07junk"),
                                      ("PUT", b"c", live)))
    assert isinstance(answer, Deferred)
    results = outcome(answer)
    assert results == []
    clock.advance(0)
    (frame,) = results
    assert isinstance(frame, Frame)
    assert parse_batch_outcomes(frame, 3) == [None, "bad_request", None]


def _sole(value: bytes, writer: str, counter: int) -> bytes:
    return encode_record(Record((Version(value, ((writer, counter),), counter, writer),)))


def test_put_batch_stores_a_run_of_superseding_records_in_one_commit(
    store: MemoryStore, committer: GroupCommitter, clock: Clock
) -> None:
    """Records of one writer superseding what is stored reach the store in one commit per
    run: within it a key's later record wins; a record that takes the general path (another
    writer's, concurrent) ends the run first, so it merges with what the run stored."""
    node = lone_coordinator("n2", store, committer, clock)
    commits = committer.stats.commits
    answer = node.handle("n1", _batch(("PUT", b"a", _sole(b"one", "n1", 1)),
                                      ("PUT", b"b", _sole(b"bee", "n1", 1)),
                                      ("PUT", b"a", _sole(b"two", "n1", 2))))
    clock.advance(0)
    (frame,) = outcome(answer)
    assert parse_batch_outcomes(frame, 3) == [None, None, None]
    assert committer.stats.commits == commits + 1
    assert node.replica.stats.records == 2
    assert node.replica.read(b"a") == decode_record(_sole(b"two", "n1", 2))
    answer = node.handle("n1", _batch(("PUT", b"a", _sole(b"three", "n1", 3)),
                                      ("PUT", b"a", _sole(b"theirs", "n3", 1))))
    clock.advance(0)
    (frame,) = outcome(answer)
    assert parse_batch_outcomes(frame, 2) == [None, None]
    assert committer.stats.commits == commits + 3
    values = sorted(v.value for v in node.replica.read(b"a").versions)  # type: ignore[union-attr]
    assert values == [b"theirs", b"three"]


def test_put_batch_checks_each_record_against_what_earlier_records_stored(
    store: MemoryStore, committer: GroupCommitter, clock: Clock
) -> None:
    """The stored records a batch is checked against are read once, when it arrives; a key
    that an earlier record of the batch stored (its run committed, or written the general
    way) is read again, so an older record of it that comes later merges in (and loses)
    instead of replacing the newer one."""
    node = lone_coordinator("n2", store, committer, clock)
    answer = node.handle("n1", _batch(("PUT", b"a", _sole(b"new", "n1", 5)),
                                      ("PUT", b"b", _sole(b"theirs", "n3", 1)),
                                      ("PUT", b"b", _sole(b"concurrent", "n4", 1)),
                                      ("PUT", b"a", _sole(b"old", "n1", 3)),
                                      ("PUT", b"b", _sole(b"late", "n3", 2))))
    clock.advance(0)
    (frame,) = outcome(answer)
    assert parse_batch_outcomes(frame, 5) == [None] * 5
    assert node.replica.read(b"a") == decode_record(_sole(b"new", "n1", 5))
    values = sorted(v.value for v in node.replica.read(b"b").versions)  # type: ignore[union-attr]
    assert values == [b"concurrent", b"late"]


def test_put_batch_records_of_a_refused_commit_each_answer_storage_error(
    store: MemoryStore, committer: GroupCommitter, clock: Clock
) -> None:
    """When the store refuses a run's commit (here: the committer stopped), every record of
    the run is answered storage_error and nothing is stored."""
    node = lone_coordinator("n2", store, committer, clock)
    committer.stop()
    clock.advance(0)
    answer = node.handle("n1", _batch(("PUT", b"a", _sole(b"one", "n1", 1)),
                                      ("PUT", b"b", _sole(b"bee", "n1", 1))))
    assert isinstance(answer, Frame)
    assert parse_batch_outcomes(answer, 2) == ["storage_error", "storage_error"]
    assert node.replica.read(b"a") is None and node.replica.read(b"b") is None


class _UnreadableStore(MemoryStore):
    """A store whose reads fail (a disk gone bad under the data) while writes still work."""

    def get(self, key: bytes) -> bytes | None:
        raise StoreIOError("read failed: input/output error")

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        raise StoreIOError("read failed: input/output error")


def test_put_batch_records_that_cannot_be_read_against_answer_storage_error(
    clock: Clock,
) -> None:
    """When the store cannot be read, each record of a PUT_BATCH (one of one writer, one of
    another that must merge) is answered storage_error in the batch's answer, rather than
    the whole batch failing, and nothing is stored."""
    store = _UnreadableStore()
    node = lone_coordinator("n2", store, GroupCommitter(store, FsyncPolicy.NEVER, clock),
                            clock)
    answer = node.handle("n1", _batch(("PUT", b"a", _sole(b"one", "n1", 1)),
                                      ("PUT", b"b", _sole(b"two", "n3", 1))))
    assert isinstance(answer, Frame) and answer.verb == "VAL"
    assert parse_batch_outcomes(answer, 2) == ["storage_error", "storage_error"]
    assert store.approximate_size_bytes() == 0


def test_repeated_blind_writes_mint_what_the_general_path_would(net3: Net) -> None:
    """The byte-level mint of a blind write on a key held as this node's own record gives the
    version new_version() would: one clock entry, strictly growing, equal to the HLC stamp;
    every replica stores exactly that record."""
    first = outcome(net3["n1"].put(b"k", b"one"))
    net3.run()
    second = outcome(net3["n1"].put(b"k", b"two"))
    net3.run()
    (v1,), (v2,) = first, second
    assert isinstance(v1, Version) and isinstance(v2, Version)
    assert v1.clock == (("n1", v1.hlc),) and v2.clock == (("n1", v2.hlc),)
    assert v2.hlc > v1.hlc
    for name in ("n1", "n2", "n3"):
        assert net3[name].replica.read(b"k") == Record((v2,))


def test_a_blind_write_over_another_writers_version_still_descends_it(net3: Net) -> None:
    """A key last written by another node takes the general mint: the new version's clock
    covers the old one, so it replaces it everywhere instead of becoming a sibling."""
    outcome(net3["n2"].put(b"k", b"from-n2"))
    net3.run()
    results = outcome(net3["n1"].put(b"k", b"from-n1"))
    net3.run()
    (version,) = results
    assert isinstance(version, Version) and dict(version.clock).keys() == {"n1", "n2"}
    for name in ("n1", "n2", "n3"):
        assert net3.stored(name, b"k") == [b"from-n1"]


def test_put_run_writes_every_key_and_fires_once(net3: Net) -> None:
    """put_run coordinates each write like put (a key written twice keeps the later value)
    and fires one Deferred with None once all were acknowledged."""
    results = outcome(net3["n1"].put_run([(b"a", b"1"), (b"b", b"2"), (b"a", b"3")]))
    assert results == []
    net3.run()
    assert results == [None]
    for name in ("n1", "n2", "n3"):
        assert net3.stored(name, b"a") == [b"3"] and net3.stored(name, b"b") == [b"2"]


_RUN_FAULTS = {
    "none": ({}, set()),
    "one replica hangs": ({"n3": "hang"}, set()),
    "one replica never answers": ({"n3": "silent"}, set()),
    "one replica hangs, another never answers": ({"n2": "hang", "n3": "silent"}, set()),
    "one replica unreachable": ({"n3": "unreachable"}, set()),
    "one replica refuses": ({"n3": "refuse"}, set()),
    "two replicas unreachable": ({"n2": "unreachable", "n3": "unreachable"}, set()),
    "two replicas hang": ({"n2": "hang", "n3": "hang"}, set()),
    "one replica believed down": ({"n3": "unreachable"}, {"n3"}),
    "a peer replica hangs, a stand-in exists": ({"n2": "hang"}, set()),
}


def _describe_outcome(result: object) -> object:
    if isinstance(result, list):
        return [None if e is None else f"{type(e).__name__}: {e}" for e in result]
    return result


@pytest.mark.parametrize("durable", [False, True], ids=["fsync-never", "fsync-always"])
@pytest.mark.parametrize("names", [["n1", "n2", "n3"], ["n1", "n2", "n3", "n4"]])
@pytest.mark.parametrize("fault", sorted(_RUN_FAULTS))
def test_put_run_run_path_answers_and_stores_what_the_general_path_does(
    names: list[str], fault: str, durable: bool, make_clock: Callable[[], Clock],
    make_durable_committer: Callable[[Clock], tuple[MemoryStore, GroupCommitter]],
) -> None:
    """The run path (a pool with put(): one commit per run, acks counted per write, a write
    promoted to the general path on any failure) gives each write of a run the outcome, the
    error text, the stored copies and the hints that coordinating it alone with put() gives,
    under hanging, unreachable, refusing and believed-down replicas, with and without a
    stand-in, with local copies acknowledged at once or after a group commit's sync. A key
    written twice in the run and a too-long key are in it; a second run of distinct keys
    (minted together: one lookup, one block of timestamps) overwrites some of them, a new
    key, and a key last written by another coordinator."""
    faults, down = _RUN_FAULTS[fault]
    pairs = [(b"a", b"1"), (b"b", b"2"), (b"a", b"3"), (b"k" * (16 * 1024 + 1), b"4"),
             (b"", b"empty key")]
    pairs += [(b"key-%d" % i, b"v%d" % i) for i in range(12)]
    second = [(b"b", b"5"), (b"fresh", b"6"), (b"other", b"7")]
    second += [(b"key-%d" % i, b"w%d" % i) for i in range(0, 12, 2)]
    seen = []
    for batching in (False, True):
        clock = make_clock()
        net = Net(clock, names, batching=batching,
                  storage=make_durable_committer if durable else None)
        outcome(net["n2"].put(b"other", b"from n2"))
        net.run(0.05)
        net.faults.update(faults)
        net.believed_down.update(down)
        coordinator = net["n1"]
        # Copied when it fires: what the caller saw then.
        results = outcome(coordinator.put_run(pairs).addCallback(
            lambda errors: None if errors is None else list(errors)))
        net.run(0.1)
        if not faults:
            assert not coordinator._timed, "every write settled: no deadline left armed"
        net.run(2.9)
        assert not coordinator._timed
        later = outcome(coordinator.put_run(second).addCallback(
            lambda errors: None if errors is None else list(errors)))
        net.run(3.0)
        assert not coordinator._timed
        results += later
        stored = {(name, key): net.stored(name, key)
                  for name in names for key, _ in pairs + second}
        # Which hints sit where depends on the order the owners' failures arrive in (the
        # first owner to fail gets the stand-in, the next one a hint on the coordinator),
        # and the run path sends to its peers in another order; an older hint may then
        # stay beside a newer one instead of merging with it. Compare what is covered: per
        # owner and key, the newest write some node keeps a hint of.
        newest: dict[tuple[str, bytes], Version] = {}
        for name in names:
            for target in net[name].hints.targets():
                for hint in net[name].hints.pending_for(target):
                    winner = max(hint.record.versions, key=lambda v: v.hlc)
                    held = newest.get((target, hint.key))
                    if held is None or winner.hlc > held.hlc:
                        newest[(target, hint.key)] = winner
        hints = ({slot: version.value for slot, version in newest.items()},
                 {name: net[name].replica.stats.records for name in names})
        assert len(results) == 2
        seen.append(([_describe_outcome(r) for r in results], stored, hints,
                     coordinator.stats.writes,
                     coordinator.stats.writes_unavailable, coordinator.stats.coordinator_hints))
    general, run_path = seen
    assert run_path == general
    outcomes = general[0][0]
    assert isinstance(outcomes, list) and outcomes[3].startswith("KeyTooLong")
    if not faults:
        assert general[0][1] is None
        assert all(general[1][(name, b"other")] == [b"7"] for name in names[:3]
                   if name in net.ring.preference_list(b"other", 3))


def test_put_run_with_a_plan_made_before_an_owner_went_down_still_keeps_its_copy(
    clock: Clock,
) -> None:
    """A run plan is reused for up to 0.1 s: a run sent to an owner that went down since is
    promoted write by write to the general path, so each write still succeeds at QUORUM and
    the down owner's copy is kept as a hint, as for a run planned after the failure."""
    net = Net(clock, ["n1", "n2", "n3"], batching=True)
    keys = [b"key-%d" % i for i in range(8)]
    assert outcome(net["n1"].put_run([(key, b"before") for key in keys])) == []
    net.run(0.01)
    for pause in (0.0, 0.2):  # within the plan's lifetime, then past it
        net.faults["n3"] = "unreachable"
        net.believed_down.add("n3")
        clock.advance(pause)
        stats = net["n1"].hints.stats
        kept = stats.added + stats.merged
        results = outcome(net["n1"].put_run([(key, b"after %g" % pause) for key in keys]))
        net.run(0.01)
        assert results == [None]
        assert stats.added + stats.merged == kept + len(keys)
        assert all(net.stored("n2", key) == [b"after %g" % pause] for key in keys)


def test_put_run_reports_each_write_once_every_write_settled(net3: Net) -> None:
    """A run with a write that cannot succeed fires once the others have settled, with one
    outcome per write in order (None: acknowledged; the error put would give otherwise),
    and the others are written."""
    results = outcome(net3["n1"].put_run([(b"ok", b"1"), (b"k" * (16 * 1024 + 1), b"2"),
                                          (b"ok2", b"3")]))
    assert results == []
    net3.run()
    (errors,) = results
    assert isinstance(errors, list) and len(errors) == 3
    assert errors[0] is None and errors[2] is None and isinstance(errors[1], KeyTooLong)
    assert net3.stored("n2", b"ok") == [b"1"] and net3.stored("n2", b"ok2") == [b"3"]



# -- runs queued for the end of the turn -------------------------------------------------------


def _put_batches(net: Net, source: str, target: str) -> list[Frame]:
    return [frame for src, dst, frame in net.sent
            if (src, dst) == (source, target) and frame.verb == "PUT_BATCH"]


def _record_groups(coordinator: Coordinator, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the runs the coordinator coordinates (after grouping queued ones)."""
    sizes: list[int] = []
    write_run = coordinator._write_run

    def recording(pairs: list[tuple[bytes, bytes]], *args: object) -> None:
        sizes.append(len(pairs))
        write_run(pairs, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(coordinator, "_write_run", recording)
    return sizes


def test_runs_queued_in_one_turn_travel_together(
    clock: Clock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """put_run only queues: the runs of a reactor turn (several clients' pipelines) are
    coordinated together at its end, as one run, so each other owner gets one PUT_BATCH
    for all of them, and each run's Deferred still fires with its own outcome."""
    net = Net(clock, ["n1", "n2", "n3"], batching=True)
    coordinator = net["n1"]
    groups = _record_groups(coordinator, monkeypatch)
    runs = [[(b"c%d-k%d" % (client, i), b"v%d" % i) for i in range(4)] for client in range(3)]
    results = [outcome(coordinator.put_run(pairs)) for pairs in runs]
    assert net.sent == [] and net.stored("n1", b"c0-k0") == []  # queued, not yet issued
    clock.advance(0)
    assert groups == [12]
    assert [len(_put_batches(net, "n1", peer)) for peer in ("n2", "n3")] == [1, 1]
    net.run(0.1)
    assert results == [[None], [None], [None]]
    for pairs in runs:
        for key, value in pairs:
            assert all(net.stored(name, key) == [value] for name in ("n1", "n2", "n3"))


class _FlushingPool(_ReadingPool):
    """A pool that, like PeerClientPool, can send what it holds at once (flush_now)."""

    def __init__(self, net: Net, source: str) -> None:
        super().__init__(net, source)
        self.flushes_after: list[int] = []  # len(net.sent) at each flush_now

    def flush_now(self) -> None:
        self.flushes_after.append(len(self._net.sent))


def test_runs_issued_at_the_end_of_the_turn_go_to_the_wire_at_once(clock: Clock) -> None:
    """The end-of-turn issue asks the pool to send at once (its own flush would wait for
    another poll); runs issued early by a barrier leave the pool to flush at the turn's end."""
    net = Net(clock, ["n1", "n2", "n3"], batching=True)
    coordinator = net["n1"]
    pool = _FlushingPool(net, "n1")
    coordinator._flush_peers = pool.flush_now
    outcome(coordinator.put_run([(b"a", b"1")]))
    coordinator.issue_queued()  # a barrier: a pipelined command followed
    assert pool.flushes_after == []
    outcome(coordinator.put_run([(b"b", b"2")]))
    clock.advance(0)
    assert pool.flushes_after == [len(net.sent)] and len(net.sent) > 0



def test_a_slice_of_queued_writes_leaves_before_the_turn_ends(
    clock: Clock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Once _ISSUE_AT writes are queued they are coordinated and handed to the wire at once,
    in the middle of the turn (the owners store them while this node reads on); the writes
    queued after them wait for the next slice or the turn's end, and every run still gets
    its own outcome."""
    net = Net(clock, ["n1", "n2", "n3"], batching=True)
    coordinator = net["n1"]
    pool = _FlushingPool(net, "n1")
    coordinator._flush_peers = pool.flush_now
    groups = _record_groups(coordinator, monkeypatch)
    slice_size = coordinator_module._ISSUE_AT
    small = (slice_size - 1) // 3  # three runs stay below a slice
    sizes = [small, small, small, slice_size - 3 * small, small, small]
    runs = [[(b"c%d-k%d" % (client, i), b"v") for i in range(size)]
            for client, size in enumerate(sizes)]
    results = [outcome(coordinator.put_run(runs[client])) for client in range(3)]
    assert groups == [] and pool.flushes_after == []  # below a slice: queued
    results.append(outcome(coordinator.put_run(runs[3])))
    assert groups == [slice_size]  # the fourth run made a slice: issued with the three before
    assert pool.flushes_after == [len(net.sent)]
    assert [len(_put_batches(net, "n1", peer)) for peer in ("n2", "n3")] == [1, 1]
    results += [outcome(coordinator.put_run(runs[client])) for client in (4, 5)]
    assert groups == [slice_size]
    clock.advance(0)
    assert groups == [slice_size, 2 * small] and len(pool.flushes_after) == 2
    net.run(0.1)
    assert results == [[None]] * 6
    for pairs in runs:
        for key, value in pairs:
            assert all(net.stored(name, key) == [value] for name in ("n1", "n2", "n3"))


@pytest.mark.parametrize("nested", [False, True], ids=["plain", "after-a-nested-issue"])
def test_a_slice_queued_by_a_callback_of_an_issue_waits_for_it(
    nested: bool, clock: Clock,
) -> None:
    """A write settled while queued runs are issued can fire a callback that queues a whole
    slice; that slice must not be coordinated before the issue's later runs (an earlier
    write of the same key would then be minted after it, and win): it waits for the issue.
    So it must when the callback first issued again (put() issues what is queued): when
    that nested issue ends, the outer one is still coordinating."""
    net = Net(clock, ["n1", "n2", "n3"], batching=True)
    coordinator = net["n1"]
    later = [(b"k", b"from the callback")] + [
        (b"filler-%d" % i, b"v") for i in range(coordinator_module._ISSUE_AT)]
    chained: list[Deferred[object]] = []

    def queue_a_slice(_: object) -> None:
        if nested:
            coordinator.put_run([(b"x", b"1")])
            coordinator.put(b"y", b"2")  # issues the queue: an issue nested in the first
        chained.append(coordinator.put_run(later))

    # ONE: this node's own copy settles the first run during the issue, firing the callback.
    coordinator.put_run([(b"a", b"1")], ConsistencyLevel.ONE).addCallback(queue_a_slice)
    coordinator.put_run([(b"k", b"queued first")])  # QUORUM: a run of its own, issued after
    clock.advance(0)
    assert len(chained) == 1
    net.run(0.1)
    assert outcome(chained[0]) == [None]
    assert all(net.stored(name, b"k") == [b"from the callback"] for name in ("n1", "n2", "n3"))


@pytest.mark.parametrize("fault", sorted(_RUN_FAULTS))
def test_runs_issued_together_report_to_their_own_callers(fault: str, clock: Clock) -> None:
    """Runs queued in one turn get, write by write, the outcomes and stored copies that one
    run of all their writes gets (under every fault of the run-path test): each error, a
    too-long key's and the empty key's included, reaches the run and the position it came
    from."""
    faults, down = _RUN_FAULTS[fault]
    runs = [[(b"a", b"1"), (b"k" * (16 * 1024 + 1), b"2")],
            [(b"", b"empty key"), (b"b", b"3")],
            [(b"key-%d" % i, b"v%d" % i) for i in range(6)]]
    seen = []
    for together in (False, True):
        net = Net(Clock(), ["n1", "n2", "n3"], batching=True)
        net.faults.update(faults)
        net.believed_down.update(down)
        coordinator = net["n1"]
        if together:
            results = [outcome(coordinator.put_run(pairs)) for pairs in runs]
        else:
            results = [outcome(coordinator.put_run([pair for pairs in runs for pair in pairs]))]
        net.run(3.0)
        assert all(len(result) == 1 for result in results)
        per_write: list[object] = []
        for pairs, (result,) in zip(runs if together else [sum(runs, [])], results,
                                    strict=True):
            per_write += [None] * len(pairs) if result is None else _describe_outcome(result)
        stored = {(name, key): net.stored(name, key)
                  for name in ("n1", "n2", "n3") for pairs in runs for key, _ in pairs}
        seen.append((per_write, stored))
    assert seen[0] == seen[1]
    assert str(seen[1][0][1]).startswith("KeyTooLong")


def test_queued_runs_that_write_the_same_key_keep_their_order(
    clock: Clock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Queued runs that write the same key are not merged (a run that writes a key twice
    mints each write alone, so one repeated key would cost a whole merged run its shared
    mint): the group ends before the run that repeats a key, a run that repeats a key of
    its own goes alone, and the later write of a key still wins on every replica."""
    net = Net(clock, ["n1", "n2", "n3"], batching=True)
    coordinator = net["n1"]
    groups = _record_groups(coordinator, monkeypatch)
    first = outcome(coordinator.put_run([(b"shared", b"first"), (b"x", b"1")]))
    second = outcome(coordinator.put_run([(b"y", b"2"), (b"shared", b"second")]))
    third = outcome(coordinator.put_run([(b"z", b"3")]))
    twice = outcome(coordinator.put_run([(b"w", b"4"), (b"w", b"5")]))
    fourth = outcome(coordinator.put_run([(b"v", b"6")]))
    net.run(0.1)
    assert groups == [2, 3, 2, 1]
    assert first == second == third == twice == fourth == [None]
    assert all(net.stored(name, b"shared") == [b"second"] and net.stored(name, b"w") == [b"5"]
               for name in ("n1", "n2", "n3"))


def test_queued_runs_keep_their_own_consistency(
    clock: Clock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Runs queued in one turn at different consistency levels are coordinated apart: with
    one owner unreachable, the run at ALL fails and the run at ONE succeeds."""
    net = Net(clock, ["n1", "n2", "n3"], batching=True)
    net.faults["n3"] = "unreachable"
    coordinator = net["n1"]
    groups = _record_groups(coordinator, monkeypatch)
    strict = outcome(coordinator.put_run([(b"s1", b"1"), (b"s2", b"2")], ConsistencyLevel.ALL))
    loose = outcome(coordinator.put_run([(b"l1", b"1"), (b"l2", b"2")], ConsistencyLevel.ONE))
    net.run(3.0)
    assert groups == [2, 2]
    (errors,) = strict
    assert isinstance(errors, list) and all(isinstance(e, QuorumUnavailable) for e in errors)
    assert loose == [None]


def test_an_operation_after_a_queued_run_sees_it(clock: Clock) -> None:
    """A read, a write or a delete coordinated in the same turn as a queued run, after it,
    issues the run first (pipelined commands see the ones before them), and the run's
    end-of-turn call is withdrawn."""
    for operation in ("get", "get_run", "put", "delete"):
        net = Net(clock, ["n1", "n2", "n3"], batching=True)
        coordinator = net["n1"]
        written = outcome(coordinator.put_run([(b"k", b"queued")]))
        if operation == "get":
            after = outcome(coordinator.get(b"k").addCallback(
                lambda result: result.live(0).value))
        elif operation == "get_run":
            after = outcome(coordinator.get_run([b"k"]))
        elif operation == "put":
            after = outcome(coordinator.put(b"k", b"later").addCallback(lambda _: None))
        else:
            after = outcome(coordinator.delete(b"k").addCallback(lambda _: None))
        assert not any(call.func == coordinator._issue_at_turn_end and call.active()
                       for call in clock.getDelayedCalls()), operation
        net.run(0.1)
        assert written == [None], operation
        assert after == {"get": [b"queued"], "get_run": [[b"queued"]], "put": [None],
                         "delete": [None]}[operation]
        final = {"get": [b"queued"], "get_run": [b"queued"], "put": [b"later"], "delete": []}
        assert [v.value for v in coordinator.replica.read(b"k").versions
                if not v.tombstone] == final[operation], operation


def test_settling_a_mark_issues_only_what_is_still_queued(clock: Clock) -> None:
    """settle(mark) issues the runs queued when the mark was taken if they have not gone
    yet, and otherwise (or when nothing was queued then) leaves the turn's later runs
    queued, to go together at its end."""
    net = Net(clock, ["n1", "n2", "n3"], batching=True)
    coordinator = net["n1"]
    outcome(coordinator.put_run([(b"a", b"1")]))
    mark = coordinator.mark()
    coordinator.settle(mark)
    assert net.stored("n1", b"a") == [b"1"]  # issued: the local copy is committed
    outcome(coordinator.put_run([(b"b", b"2")]))
    coordinator.settle(mark)  # its own write went already: b stays queued
    assert net.stored("n1", b"b") == [] and coordinator.mark() == mark + 1
    net.run(0.1)
    assert net.stored("n1", b"b") == [b"2"]
    idle = coordinator.mark()  # nothing queued: a mark that never needs issuing
    outcome(coordinator.put_run([(b"c", b"3")]))
    coordinator.settle(idle)  # (a connection idle since its reply waited on nothing)
    assert net.stored("n1", b"c") == []


def test_a_store_failure_while_issuing_fails_only_its_writes(
    clock: Clock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A store error while a queued run is minted fails only the writes whose key it hit,
    each with the error (nothing of them was sent): the run's lookup failing makes each
    write mint alone, and raises nowhere; the turn's other writes, and an operation that
    issued the queue, go on."""
    net = Net(clock, ["n1", "n2", "n3"], batching=True)
    coordinator = net["n1"]
    raw_many, raw = coordinator.replica.raw_many, coordinator.replica.raw
    failures = [StoreIOError("disk on fire")]

    def failing_lookup(keys: list[bytes]) -> list[bytes | None]:
        if failures:
            raise failures.pop()
        return raw_many(keys)

    def failing_raw(key: bytes) -> bytes | None:
        if key == b"a":
            raise StoreIOError("bad sector under a")
        return raw(key)

    monkeypatch.setattr(coordinator.replica, "raw_many", failing_lookup)
    monkeypatch.setattr(coordinator.replica, "raw", failing_raw)
    first = outcome(coordinator.put_run([(b"a", b"1"), (b"b", b"2")]))
    second = outcome(coordinator.put_run([(b"c", b"3")], ConsistencyLevel.ALL))
    read = outcome(coordinator.get_run([b"c"]))  # issues the queue first
    net.run(0.1)
    (errors,) = first
    assert isinstance(errors, list) and [str(e) if e else e for e in errors] == [
        "bad sector under a", None]
    assert second == [None] and read == [[b"3"]]
    assert net.stored("n2", b"a") == [] and net.stored("n2", b"b") == [b"2"]
    assert net.stored("n2", b"c") == [b"3"]


def test_queued_runs_during_a_range_movement_also_reach_the_pending_owners(
    clock: Clock,
) -> None:
    """While a range moves (a node joining), queued runs take the general path, which also
    writes to the key's pending owner (the joining node), as a write sent alone would."""
    net = Net(clock, ["n1", "n2", "n3", "n4"], batching=True)
    joined = Ring(["n1", "n2", "n3", "n4"], VNODES)
    net.ring = Ring(["n1", "n2", "n3"], VNODES)
    key = next(b"key-%d" % i for i in range(10_000)
               if "n4" in joined.preference_list(b"key-%d" % i, 3))
    coordinator = net["n1"]
    coordinator._pending = lambda: joined
    results = outcome(coordinator.put_run([(key, b"moving"), (b"other", b"x")]))
    net.run(0.1)
    assert results == [None]
    assert net.stored("n4", key) == [b"moving"]
    assert all(net.stored(name, key) == [b"moving"] for name in ("n1", "n2", "n3"))


def test_shutdown_refuses_queued_runs_at_once(net3: Net) -> None:
    """A node that stops answers the runs it had queued with UNAVAILABLE (shutting down)
    instead of leaving them unanswered, and issues nothing."""
    coordinator = net3["n1"]
    results = outcome(coordinator.put_run([(b"a", b"1"), (b"b", b"2")]))
    coordinator.shutdown()
    (errors,) = results
    assert isinstance(errors, list) and len(errors) == 2
    assert all(isinstance(e, QuorumUnavailable) and "shutting down" in str(e) for e in errors)
    net3.run(0.1)
    assert net3.sent == []


# -- runs of reads -----------------------------------------------------------------------------


def _seed_reads(net: Net) -> list[bytes]:
    """Keys in every state a read can meet, written with every replica up; the keys to read
    (one of them twice, one too long)."""
    coordinator = net["n1"]
    names = sorted(net.nodes)
    for i in range(10):
        outcome(coordinator.put(b"same-%d" % i, b"v%d" % i))
    outcome(coordinator.put(b"gone", b"x"))
    outcome(coordinator.put(b"short-lived", b"y", expires_at_ms=net.now_ms() + 500))
    outcome(coordinator.put(b"stale", b"old"))
    outcome(coordinator.put(b"siblings", b"from n1"))
    outcome(coordinator.put(b"corrupt", b"z"))
    net.run(0.05)
    outcome(coordinator.delete(b"gone"))
    net.run(0.05)
    # One owner misses the newer write of "stale" (no hint delivery runs here).
    owners = net.ring.preference_list(b"stale", 3)
    net.faults[owners[-1]] = "unreachable"
    outcome(coordinator.put(b"stale", b"new"))
    net.run(0.05)
    net.faults.clear()
    # A concurrent write of "siblings" that reached one owner only.
    rival = Version(b"from elsewhere", (("zz", 1),), net.now_ms(), "zz")
    net[net.ring.preference_list(b"siblings", 3)[1]].replica.apply(b"siblings", [rival])
    # One owner's copy of "corrupt" is damaged.
    damaged = net.ring.preference_list(b"corrupt", 3)[-1]
    net[damaged].replica._store.write([(b"d" + b"corrupt", b"\x01\x00\x01garbage")])
    net.run(0.6)  # "short-lived" has expired
    assert names
    keys = [b"same-%d" % i for i in range(10)]
    outcome(coordinator.put(b"", b"empty key"))
    net.run(0.05)
    return keys + [b"absent", b"gone", b"short-lived", b"stale", b"siblings", b"corrupt",
                   b"same-3", b"", b"k" * (16 * 1024 + 1)]


def _describe_read(result: object, all_needed: bool = True) -> object:
    """The outcomes as comparable text, without what depends on the order the replies
    arrive in. The run path sends each peer the keys of a run in one frame, so a peer's
    answer may come before or after another's than it does for reads sent one by one; a read
    at ALL then fails on the first failure having heard one reply more or fewer, and names
    the owners still awaited ("no answer yet", or "not asked" when the general path had
    not reached them yet). Every other part of the text must be the same."""
    if isinstance(result, list):
        return [r if r is None or isinstance(r, bytes) else _timeless(r, all_needed)
                for r in result]
    return result


def _timeless(error: BaseException, all_needed: bool) -> str:
    """An error's text with the reply count and the replicas still awaited taken out (see
    L{_describe_read}); at ALL, where the first failure decides, also which replica's
    failure that was."""
    text = f"{type(error).__name__}: {error}"
    found = re.fullmatch(r"(.*) reached \d+ of (.*?) \((.*)\); (.*)", text)
    if found is None:
        return text
    head, required, details, tail = found.groups()
    reasons = sorted(re.sub(r"^n\d ", "", item) if all_needed else item
                     for item in details.split(", ")
                     if not item.endswith(("no answer yet", "not asked")))
    return f"{head} of {required}: {reasons}; {tail}"


_READ_LEVELS = {"default": None, "one": ConsistencyLevel.ONE, "all": ConsistencyLevel.ALL}


@pytest.mark.parametrize("level", sorted(_READ_LEVELS))
@pytest.mark.parametrize("names", [["n1", "n2", "n3"], ["n1", "n2", "n3", "n4"]])
@pytest.mark.parametrize("fault", sorted(_RUN_FAULTS))
def test_get_run_run_path_answers_and_repairs_what_the_general_path_does(
    names: list[str], fault: str, level: str, make_clock: Callable[[], Clock],
) -> None:
    """The run path (a pool with get_many(): GET_BATCH frames, replies compared as bytes, a
    read promoted to the general path when replies differ or one fails) gives each read of a
    run the value or the error text that reading it alone with get() gives, and leaves the
    same copies behind after read repair, with the same counts, under hanging, unreachable,
    refusing and believed-down replicas. The keys include absent, deleted, expired, stale,
    sibling and damaged records, a key read twice and a too-long key."""
    faults, down = _RUN_FAULTS[fault]
    consistency = _READ_LEVELS[level]
    seen = []
    for batching in (False, True):
        clock = make_clock()
        net = Net(clock, names, batching=batching)
        keys = _seed_reads(net)
        net.faults.update(faults)
        net.believed_down.update(down)
        coordinator = net["n1"]
        stats = coordinator.stats
        before = (stats.reads, stats.reads_unavailable)
        results = outcome(coordinator.get_run(keys, consistency).addCallback(list))
        net.run(0.1)
        if not faults:
            assert not coordinator._timed, "every read settled: no deadline left armed"
        net.run(2.9)
        assert not coordinator._timed
        assert len(results) == 1
        net.faults.clear()
        stored = {(name, key): net.stored(name, key) if key != b"corrupt" else None
                  for name in names for key in keys[:-1]}
        answers = _describe_read(results[0], consistency is ConsistencyLevel.ALL)
        if consistency is ConsistencyLevel.ONE and isinstance(answers, list):
            # At ONE the first owner to answer decides, and the two paths send in different
            # orders: either copy of the stale key is a right answer (repair follows).
            at = keys.index(b"stale")
            assert answers[at] in (b"old", b"new")
            answers[at] = "either"
        seen.append((answers, stored, stats.reads - before[0],
                     stats.reads_unavailable - before[1], stats.read_repairs,
                     stats.read_repair_failures))
    general, run_path = seen
    assert run_path == general
    values = general[0]
    assert isinstance(values, list)
    assert values[:10] == [b"v%d" % i for i in range(10)] or fault != "none"
    assert values[-1].startswith("KeyTooLong")


def test_runs_follow_a_ring_change_within_the_plan_window(clock: Clock) -> None:
    """Run plans are kept per vnode of one ring: a new ring (a node joined) is used by the
    next run at once, even well inside the plan's lifetime, for writes and reads."""
    net = Net(clock, ["n1", "n2", "n3", "n4"], batching=True)
    net.ring = Ring(["n1", "n2", "n3"], VNODES)
    keys = [b"key-%d" % i for i in range(40)]
    first = outcome(net["n1"].put_run([(key, b"old") for key in keys]))
    net.run(0.01)
    assert first == [None]
    assert all(net.stored("n4", key) == [] for key in keys)
    net.ring = Ring(["n1", "n2", "n3", "n4"], VNODES)  # 0.01 s later: same plan window
    moved = [key for key in keys if "n4" in net.ring.preference_list(key, 3)]
    assert moved
    done = outcome(net["n1"].put_run([(key, b"new") for key in keys]))
    net.run(0.01)
    assert done == [None]
    assert all(net.stored("n4", key) == [b"new"] for key in moved)
    net.ring = Ring(["n1", "n2", "n4"], VNODES)  # n3 left: n4 now serves its keys alone
    read = outcome(net["n1"].get_run(moved, ConsistencyLevel.ALL).addCallback(list))
    net.run(0.01)
    assert read == [[b"new"] * len(moved)]
    assert not [frame for source, target, frame in net.sent if target == "n3"
                and frame.verb == "GET_BATCH"]


@pytest.mark.parametrize("names", [["n1", "n2"], ["n1", "n2", "n3"], ["n1", "n2", "n3", "n4"]])
def test_runs_hash_keys_only_when_the_ring_has_more_members_than_n(
    names: list[str], clock: Clock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With N=3 and three members or fewer every key lives on every member, so runs of
    writes and reads place keys without hashing them (no Ring.vnode_of call) and still
    store on, and read from, every member; with four members each key is hashed and goes
    to its own three owners only."""
    hashed: list[bytes] = []
    vnode_of = Ring.vnode_of

    def counting(ring: Ring, key: bytes) -> int:
        hashed.append(key)
        return vnode_of(ring, key)

    monkeypatch.setattr(Ring, "vnode_of", counting)
    net = Net(clock, names, batching=True)
    keys = [b"key-%d" % i for i in range(40)]
    written = outcome(net["n1"].put_run([(key, b"v-" + key) for key in keys]))
    net.run(0.01)
    read = outcome(net["n1"].get_run(keys, ConsistencyLevel.ALL).addCallback(list))
    net.run(0.01)
    assert written == [None]
    assert read == [[b"v-" + key for key in keys]]
    assert hashed == ([] if len(names) <= 3 else keys + keys)
    for key in keys:
        owners = net.ring.preference_list(key, 3)
        assert len(owners) == min(3, len(names))
        assert [name for name in names if net.stored(name, key)] == sorted(owners)


def test_get_run_answers_from_identical_replies_without_repairs(net3: Net, clock: Clock) -> None:
    """With every owner holding the same records, a run of reads is answered from the
    replies' bytes: one GET_BATCH per peer, no promotion, no read repair."""
    net = Net(clock, ["n1", "n2", "n3"], batching=True)
    keys = [b"key-%d" % i for i in range(20)]
    for key in keys:
        outcome(net["n1"].put(key, key + b"!"))
    net.run(0.05)
    net.sent.clear()
    results = outcome(net["n1"].get_run(keys + [b"absent"]))
    net.run(0.05)
    assert results == [[key + b"!" for key in keys] + [None]]
    assert sorted((target, frame.verb) for _, target, frame in net.sent) == [
        ("n2", "GET_BATCH"), ("n3", "GET_BATCH")]
    assert net["n1"].stats.read_repairs == 0 and not net["n1"]._timed


def test_get_run_repairs_a_stale_owner_found_after_the_answer(clock: Clock) -> None:
    """A read answered by R identical replies still repairs the owner whose later reply is
    stale, as get() does: the run path hands the read to the general path then."""
    net = Net(clock, ["n1", "n2", "n3"], batching=True)
    key = net.key_owned_by(("n1", "n2", "n3"))
    outcome(net["n1"].put(key, b"old"))
    net.run(0.05)
    net.faults["n3"] = "unreachable"
    outcome(net["n1"].put(key, b"new"))
    net.run(0.05)
    net.faults.clear()
    assert net.stored("n3", key) == [b"old"]
    results = outcome(net["n1"].get_run([key]))
    net.run(0.05)
    assert results == [[b"new"]]
    assert net.stored("n3", key) == [b"new"]
    assert net["n1"].stats.read_repairs == 1


def test_get_batch_answers_each_key_as_stored(net3: Net) -> None:
    """GET_BATCH gives each key's stored record bytes in order (None when absent); a broken
    batch is refused as a whole, and a stopping node refuses it."""
    outcome(net3["n1"].put(b"a", b"1"))
    net3.run(0.05)
    replica = net3["n2"]
    ((frame, _),) = get_batch_frames([b"a", b"missing", b"a"])
    answer = replica.handle("n1", frame)
    assert isinstance(answer, Frame) and answer.verb == "VAL"
    stored = replica.replica.raw(b"a")
    assert parse_get_batch_answer(answer, 3) == [stored, None, stored]
    broken = replica.handle("n1", Frame("GET_BATCH", 1, {}, b"\x00\x00\x00\x02\x00"))
    assert isinstance(broken, Frame) and broken.verb == "ERROR"
    assert broken.fields["code"] == "bad_request"
    replica.shutdown()
    refused = replica.handle("n1", frame)
    assert isinstance(refused, Frame) and refused.verb == "NACK"
    assert refused.fields["reason"] == "shutting_down"


def test_get_batch_leaves_out_records_past_the_answer_bound(net3: Net) -> None:
    """Records that would take the answer past 1 MiB are left out (the coordinator asks for
    them alone); the first always goes, and a run still reads every value."""
    net = net3
    big = b"x" * (MAX_BATCH_BYTES // 2)
    keys = [b"big-%d" % i for i in range(3)]
    for key in keys:
        outcome(net["n1"].put(key, big))
    net.run(0.05)
    ((frame, _),) = get_batch_frames(keys)
    answer = net["n2"].handle("n1", frame)
    assert isinstance(answer, Frame)
    records = parse_get_batch_answer(answer, 3)
    assert records[0] is not None and records[0] is not NOT_SENT
    assert NOT_SENT in records
    assert len(answer.payload) <= MAX_BATCH_BYTES


def test_runs_whose_reply_arrives_at_the_deadline_still_expire(clock: Clock) -> None:
    """A write or read of a run promoted by a reply that arrives at its deadline, before the
    deadline sweep, is in no sweep: it still fails UNAVAILABLE then, instead of waiting for
    an owner that never answers."""
    net = Net(clock, ["n1", "n2", "n3"], batching=True)
    keys = [b"k%d" % i for i in range(5)]
    assert outcome(net["n1"].put_run([(key, b"v") for key in keys])) == []
    net.run(0.1)
    # n2 times out exactly at the deadline (its timer was set before the sweep's), n3 is lost.
    net.faults.update(n2="hang", n3="silent")
    reads = outcome(net["n1"].get_run(keys))  # alone: no earlier deadline armed the sweep
    net.run(2.5)
    writes = outcome(net["n1"].put_run([(key, b"w") for key in keys]))
    net.run(2.5)
    assert len(writes) == 1 and len(reads) == 1
    for error in list(writes[0]) + list(reads[0]):  # type: ignore[call-overload]
        assert isinstance(error, QuorumUnavailable)
        assert "reached 1 of 2" in str(error) and "n3 timed out" in str(error)
    assert not net["n1"]._timed
