"""Tests for twistkv.node.events: the event bus, the cluster watch and the demo pause."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock

from twistkv.core.membership import Member, MemberEvent, MemberState
from twistkv.core.peerwire import Frame
from twistkv.node.events import (
    MAX_STREAMS,
    ClusterWatch,
    Event,
    EventBus,
    MembershipPause,
    PauseRefused,
    bucket_quantile_ms,
    traffic_member,
    watch_cluster,
)
from twistkv.node.metrics import LATENCY_BUCKETS, NodeStats
from twistkv.node.peer import PeerUnavailable

# -- the bus --------------------------------------------------------------------------------


def test_ids_increase_and_subscribers_see_events_in_order() -> None:
    """Each published event gets the next id; every subscriber receives them in order."""
    clock = Clock()
    bus = EventBus(clock)
    seen: list[Event] = []
    bus.subscribe(seen.append)
    clock.advance(5)
    first = bus.publish("member", {"node": "n2"})
    second = bus.publish("traffic", {"ops": 1}, retain=False)
    assert (first.id, second.id) == (1, 2)
    assert first.at == 5.0
    assert seen == [first, second]
    assert bus.last_id == 2


def test_unsubscribe_is_idempotent_and_stops_delivery() -> None:
    """After unsubscribe (even twice) a subscriber gets nothing more."""
    bus = EventBus(Clock())
    seen: list[Event] = []
    unsubscribe = bus.subscribe(seen.append)
    bus.publish("a", {})
    unsubscribe()
    unsubscribe()
    bus.publish("b", {})
    assert [e.kind for e in seen] == ["a"]
    assert bus.subscriber_count == 0


def test_a_failing_subscriber_does_not_stop_the_others() -> None:
    """An exception in one subscriber is logged; later subscribers still get the event."""
    bus = EventBus(Clock())
    seen: list[str] = []

    def broken(event: Event) -> None:
        raise RuntimeError("boom")

    bus.subscribe(broken)
    bus.subscribe(lambda e: seen.append(e.kind))
    bus.publish("x", {})
    assert seen == ["x"]


def test_subscriber_may_unsubscribe_while_being_called() -> None:
    """Unsubscribing from inside a delivery does not skip the next subscriber."""
    bus = EventBus(Clock())
    seen: list[str] = []
    unsubscribe: list[Callable[[], None]] = []
    unsubscribe.append(bus.subscribe(lambda e: unsubscribe[0]()))
    bus.subscribe(lambda e: seen.append(e.kind))
    bus.publish("x", {})
    bus.publish("y", {})
    assert seen == ["x", "y"]


def test_since_replays_retained_events_only() -> None:
    """Replay skips unretained samples and returns what followed the last id seen."""
    bus = EventBus(Clock())
    bus.publish("member", {"n": 1})
    bus.publish("traffic", {}, retain=False)
    bus.publish("member", {"n": 2})
    replay = bus.since(1)
    assert replay.complete
    assert [(e.id, e.data["n"]) for e in replay.events] == [(3, 2)]
    assert bus.since(3).events == ()
    assert bus.since(0).complete


def test_since_reports_a_gap_when_the_buffer_dropped_events() -> None:
    """A last id older than the buffer reaches is an incomplete replay."""
    bus = EventBus(Clock(), capacity=3)
    for n in range(5):
        bus.publish("e", {"n": n})
    assert [e.id for e in bus.recent()] == [3, 4, 5]
    assert not bus.since(1).complete
    assert bus.since(2).complete
    assert [e.id for e in bus.since(2).events] == [3, 4, 5]


def test_since_an_id_from_the_future_is_incomplete() -> None:
    """An id above anything handed out (another process's bus) asks for a full reload."""
    bus = EventBus(Clock())
    bus.publish("e", {})
    replay = bus.since(99)
    assert not replay.complete
    assert [e.id for e in replay.events] == [1]


def test_recent_filters_by_kind_and_limit() -> None:
    """recent() gives the newest retained events of the asked kinds, oldest first."""
    bus = EventBus(Clock())
    for kind in ["a", "b", "a", "c", "a"]:
        bus.publish(kind, {})
    assert [e.id for e in bus.recent(2, kinds={"a"})] == [3, 5]
    assert [e.id for e in bus.recent(kinds=("b", "c"))] == [2, 4]


def test_epochs_differ_between_buses() -> None:
    """Two buses (two processes) have different epochs unless told otherwise."""
    assert EventBus(Clock()).epoch != EventBus(Clock()).epoch
    assert EventBus(Clock(), epoch="e1").epoch == "e1"


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 40)), max_size=60),
       st.integers(1, 8))
def test_replay_never_loses_a_retained_event_silently(
        ops: list[tuple[bool, int]], capacity: int) -> None:
    """For any sequence: replay from any id is either exactly the retained events after it,
    or says it is incomplete; never a silent gap."""
    bus = EventBus(Clock(), capacity=capacity)
    retained: list[int] = []
    for retain, _ in ops:
        event = bus.publish("e", {}, retain=retain)
        if retain:
            retained.append(event.id)
    for last in range(0, bus.last_id + 1):
        replay = bus.since(last)
        expected = [i for i in retained if i > last]
        got = [e.id for e in replay.events]
        if replay.complete:
            assert got == expected
        else:
            assert got == expected[len(expected) - len(got):]
            assert len(got) < len(expected)


# -- latency arithmetic ---------------------------------------------------------------------


def test_bucket_quantiles_are_bucket_bounds_in_ms() -> None:
    """p50/p99 of a histogram are the upper bounds of the buckets they fall in."""
    buckets = [0] * (len(LATENCY_BUCKETS) + 1)
    buckets[2] = 98  # <= 0.25 ms
    buckets[6] = 2  # <= 5 ms
    assert bucket_quantile_ms(buckets, 0.5) == 0.25
    assert bucket_quantile_ms(buckets, 0.99) == 5.0
    assert bucket_quantile_ms([0] * 14, 0.5) is None
    overflow = [0] * len(LATENCY_BUCKETS) + [3]
    assert bucket_quantile_ms(overflow, 0.5) == LATENCY_BUCKETS[-1] * 1000


def test_traffic_member_is_json_and_cumulative() -> None:
    """The STATS traffic member carries calls, errors and buckets per command."""
    stats = NodeStats()
    stats.command("get").observe(0.0002)
    stats.command("get").observe(0.0002)
    stats.command("set").errors += 1
    member = json.loads(json.dumps(traffic_member(stats)))
    assert member["commands"]["get"][0] == 2
    assert sum(member["commands"]["get"][2]) == 2
    assert member["commands"]["set"][1] == 1


# -- the cluster watch ----------------------------------------------------------------------


class FakeMembershipService:
    def __init__(self) -> None:
        self.subscribers: list[Callable[[MemberEvent], None]] = []
        self.halted = 0
        self.started = 0

    def subscribe(self, subscriber: Callable[[MemberEvent], None]) -> Callable[[], None]:
        self.subscribers.append(subscriber)
        return lambda: self.subscribers.remove(subscriber)

    def emit(self, event: MemberEvent) -> None:
        for subscriber in list(self.subscribers):
            subscriber(event)

    def halt(self) -> None:
        self.halted += 1

    def startService(self) -> None:
        self.started += 1


class FakeMembership:
    def __init__(self, members: list[Member]) -> None:
        self._members = members

    def members(self) -> list[Member]:
        return list(self._members)


class FakePool:
    """Answers STATS with whatever the test queued, or leaves the request pending."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, Deferred[Frame]]] = []
        self.down: set[str] = set()

    def request(self, address: str, frame: Frame, timeout: float | None = None) -> Deferred[Frame]:
        assert frame.verb == "STATS"
        if address in self.down:
            return fail(PeerUnavailable(address, "refused"))
        d: Deferred[Frame] = Deferred()
        self.requests.append((address, d))
        return d

    def answer(self, address: str, document: dict[str, Any]) -> None:
        for index, (asked, d) in enumerate(self.requests):
            if asked == address:
                del self.requests[index]
                d.callback(Frame("VAL", 0, {}, json.dumps(document).encode()))
                return
        raise AssertionError(f"no pending STATS to {address}")


def member(node: str, state: MemberState = MemberState.ALIVE) -> Member:
    return Member(node, f"{node}.test:7380", state, 1, 0.0, {})


class FakeRuntime:
    def __init__(self) -> None:
        self.node_id = "n1"
        self.running = True
        self.counters: dict[str, int] = {"reads": 0, "writes": 0, "hints_added": 0,
                                         "hints_delivered": 0, "hints_stored": 0,
                                         "read_repairs": 0, "reads_unavailable": 0,
                                         "writes_unavailable": 0, "replica_records": 5}
        self.membership = FakeMembership([member("n1"), member("n2"),
                                          member("n3", MemberState.DEAD)])
        self.membership_service = FakeMembershipService()
        self.pool = FakePool()
        self.stats_extras: dict[str, Callable[[], Any]] = {}
        self.rebalancer = FakeRebalancer()

    def stats(self) -> dict[str, int]:
        return dict(self.counters)


class FakeRebalancer:
    """Hands stream reports to its observers, as L{Rebalancer.observe} does."""

    def __init__(self) -> None:
        self.observers: list[Callable[[str, dict[str, Any]], None]] = []

    def observe(self, observer: Callable[[str, dict[str, Any]], None]) -> Callable[[], None]:
        self.observers.append(observer)
        return lambda: self.observers.remove(observer)

    def report(self, phase: str, data: dict[str, Any]) -> None:
        for observer in list(self.observers):
            observer(phase, data)


def report(stream: str, node: str = "n1", state: str = "running", **kw: Any) -> dict[str, Any]:
    """A stream report (the fields the watch reads; the rest travels along untouched)."""
    return {"stream": stream, "node": node, "source": node, "target": "n9", "state": state,
            "keys": 0, "bytes": 0, "percent": None, "at": 5.0, **kw}


@pytest.fixture
def watched() -> tuple[Clock, EventBus, FakeRuntime, ClusterWatch, list[Event], NodeStats]:
    clock = Clock()
    bus = EventBus(clock)
    runtime = FakeRuntime()
    stats = NodeStats()
    watch = watch_cluster(bus, runtime, clock, stats=stats)
    seen: list[Event] = []
    bus.subscribe(seen.append)
    return clock, bus, runtime, watch, seen, stats


def kinds(events: list[Event], exclude: str = "traffic") -> list[str]:
    return [e.kind for e in events if e.kind != exclude]


def test_member_transitions_become_member_events(watched: Any) -> None:
    """A membership change is published with the node, old and new state names."""
    clock, bus, runtime, watch, seen, _ = watched
    runtime.membership_service.emit(MemberEvent("n2", MemberState.ALIVE, MemberState.SUSPECT, 3, 7.5))
    runtime.membership_service.emit(MemberEvent("n2", MemberState.SUSPECT, MemberState.SUSPECT, 3, 8))
    runtime.membership_service.emit(MemberEvent("n4", None, MemberState.ALIVE, 0, 9))
    assert [e.data for e in seen] == [
        {"node": "n2", "old": "alive", "new": "suspect", "incarnation": 3},
        {"node": "n4", "old": None, "new": "alive", "incarnation": 0},
    ]
    assert seen[0].at == 7.5


def test_counter_growth_becomes_events_after_a_baseline(watched: Any) -> None:
    """The first reading is a baseline; later growth is published as deltas."""
    clock, bus, runtime, watch, seen, _ = watched
    runtime.counters["hints_added"] = 10  # before the first reading: baseline, not news
    clock.advance(1)
    assert kinds(seen) == []
    runtime.counters.update(hints_added=13, hints_stored=13, read_repairs=2,
                            writes_unavailable=1)
    clock.advance(1)
    by_kind = {e.kind: e.data for e in seen if e.kind != "traffic"}
    assert by_kind == {
        "hints_queued": {"node": "n1", "count": 3, "waiting": 13},
        "read_repair": {"node": "n1", "count": 2},
        "quorum_failure": {"node": "n1", "reads": 0, "writes": 1},
    }
    seen.clear()
    runtime.counters.update(hints_delivered=13, hints_stored=0)
    clock.advance(1)
    assert [(e.kind, e.data) for e in seen if e.kind != "traffic"] == [
        ("hints_delivered", {"node": "n1", "count": 13, "waiting": 0})]


def test_counters_going_back_are_a_new_baseline(watched: Any) -> None:
    """A node that restarted reports lower counters: no negative or bogus events."""
    clock, bus, runtime, watch, seen, _ = watched
    runtime.counters["read_repairs"] = 50
    clock.advance(1)
    runtime.counters["read_repairs"] = 2
    clock.advance(1)
    runtime.counters["read_repairs"] = 3
    clock.advance(1)
    assert [(e.kind, e.data["count"]) for e in seen if e.kind != "traffic"] == [("read_repair", 1)]


def test_traffic_samples_rates_and_latency(watched: Any) -> None:
    """Each tick publishes an unretained sample: ops/s by command and p50/p99 of that second."""
    clock, bus, runtime, watch, seen, stats = watched
    clock.advance(1)
    for _ in range(99):
        stats.command("get").observe(0.0002)
    stats.command("set").observe(0.004)
    clock.advance(1)
    sample = [e for e in seen if e.kind == "traffic"][-1].data
    assert sample["nodes"]["n1"] == {
        "ops": 100.0, "p50_ms": 0.25, "p99_ms": 0.25,
        "commands": {"get": 99.0, "set": 1.0}, "source": "commands",
    }
    assert sample["cluster"]["ops"] == 100.0
    assert list(watch.traffic)[-1] == sample
    assert bus.recent(kinds={"traffic"}) == []


def test_peers_are_polled_only_while_watched(watched: Any) -> None:
    """Nobody watching: no STATS to peers. Watching: alive and suspect peers are asked."""
    clock, bus, runtime, watch, seen, _ = watched
    bus._subscribers.clear()  # the fixture's own subscriber would count as a watcher
    clock.advance(1)
    assert runtime.pool.requests == []
    unsubscribe = bus.subscribe(lambda e: None)
    clock.advance(1)
    assert [a for a, _ in runtime.pool.requests] == ["n2.test:7380"]  # n3 is dead
    clock.advance(1)
    assert len(runtime.pool.requests) == 1, "one request per peer in flight at most"
    unsubscribe()
    watch.demand()
    runtime.pool.answer("n2.test:7380", {"reads": 1, "writes": 1})
    clock.advance(1)
    assert len(runtime.pool.requests) == 1


def test_peer_counters_and_traffic_feed_events_and_samples(watched: Any) -> None:
    """A peer's STATS growth is published under its id; its traffic member gives its rates."""
    clock, bus, runtime, watch, seen, _ = watched
    clock.advance(1)
    width = len(LATENCY_BUCKETS) + 1
    runtime.pool.answer("n2.test:7380", {"hints_delivered": 4, "hints_stored": 8,
                                         "traffic": {"commands": {"get": [10, 0, [10] + [0] * (width - 1)]}}})
    clock.advance(1)
    runtime.pool.answer("n2.test:7380", {"hints_delivered": 12, "hints_stored": 0,
                                         "traffic": {"commands": {"get": [30, 0, [10, 20] + [0] * (width - 2)]}}})
    assert [(e.kind, e.data) for e in seen if e.kind != "traffic"] == [
        ("hints_delivered", {"node": "n2", "count": 8, "waiting": 0})]
    clock.advance(1)
    sample = [e for e in seen if e.kind == "traffic"][-1].data
    assert sample["nodes"]["n2"]["ops"] == 20.0
    assert sample["nodes"]["n2"]["p50_ms"] == 0.1
    assert set(watch.readings()) == {"n1", "n2"}


def test_peer_without_traffic_member_falls_back_to_coordinator_counts(watched: Any) -> None:
    """Older peers send counters only: their ops/s are the reads and writes they coordinated."""
    clock, bus, runtime, watch, seen, _ = watched
    clock.advance(1)
    runtime.pool.answer("n2.test:7380", {"reads": 10, "writes": 10})
    clock.advance(2)
    runtime.pool.answer("n2.test:7380", {"reads": 40, "writes": 20})
    reading = watch.readings()["n2"]
    assert (reading.source, reading.ops) == ("coordinator", 20.0)
    assert reading.sample()["p50_ms"] is None


def test_stale_readings_drop_out(watched: Any) -> None:
    """A node that stopped answering disappears from the samples after a few intervals."""
    clock, bus, runtime, watch, seen, _ = watched
    clock.advance(1)
    runtime.pool.answer("n2.test:7380", {"reads": 1})
    runtime.pool.down.add("n2.test:7380")
    clock.advance(1)
    assert "n2" in watch.readings()
    clock.advance(5)
    assert set(watch.readings()) == {"n1"}


def test_failed_stats_requests_are_swallowed(watched: Any) -> None:
    """An unreachable peer is just absent; the watch keeps running."""
    clock, bus, runtime, watch, seen, _ = watched
    runtime.pool.down.add("n2.test:7380")
    clock.advance(3)
    assert watch.running


def test_watch_registers_its_stats_member_and_stops(watched: Any) -> None:
    """The traffic and rebalance members are offered to the runtime's STATS; stop()
    unsubscribes and halts."""
    clock, bus, runtime, watch, seen, _ = watched
    assert set(runtime.stats_extras) == {"traffic", "rebalance"}
    assert runtime.stats_extras["rebalance"]() == []
    assert runtime.stats_extras["traffic"]() == {"commands": {}}
    watch.stop()
    assert runtime.membership_service.subscribers == []
    seen.clear()
    clock.advance(5)
    assert seen == []


def test_rebalancer_reports_become_rebalance_events(watched: Any) -> None:
    """This node's stream reports are published in order as rebalance_<phase>, at the
    report's time; progress reaches live watchers but is not kept for replay."""
    clock, bus, runtime, watch, seen, _ = watched
    runtime.rebalancer.report("start", report("s1", at=5.0))
    runtime.rebalancer.report("progress", report("s1", keys=40, percent=50.0, at=6.0))
    runtime.rebalancer.report("done", report("s1", "n1", "done", keys=71, percent=100.0, at=7))
    assert [(e.kind, e.data["keys"], e.at) for e in seen] == [
        ("rebalance_start", 0, 5.0), ("rebalance_progress", 40, 6.0), ("rebalance_done", 71, 7)]
    assert kinds(bus.recent()) == ["rebalance_start", "rebalance_done"]
    assert watch.streams["s1"]["state"] == "done"
    assert runtime.stats_extras["rebalance"]() == [watch.streams["s1"]]
    watch.stop()
    assert runtime.rebalancer.observers == []


def test_watch_keeps_recent_streams_forgetting_finished_ones_first(watched: Any) -> None:
    """At most MAX_STREAMS reports are kept; a running stream outlives newer finished ones."""
    clock, bus, runtime, watch, seen, _ = watched
    runtime.rebalancer.report("start", report("running"))
    for index in range(MAX_STREAMS + 5):
        runtime.rebalancer.report("done", report(f"d{index}", state="done"))
    assert len(watch.streams) == MAX_STREAMS
    assert "running" in watch.streams and "d0" not in watch.streams
    assert f"d{MAX_STREAMS + 4}" in watch.streams


def test_peer_streams_are_relayed_as_events(watched: Any) -> None:
    """A peer's STATS lists the streams it drives: a new running one is relayed as started,
    a change as progress, its end as done. A finished one in the first answer is old news,
    kept without an event; one that ended between two polls gets its done event; one that
    vanished unfinished (the peer restarted) is reported failed."""
    clock, bus, runtime, watch, seen, _ = watched
    stats = {"reads": 0}

    def answer(*reports: dict[str, Any]) -> None:
        clock.advance(1)
        runtime.pool.answer("n2.test:7380", {**stats, "rebalance": list(reports)})

    answer(report("s1", "n2", keys=0), report("old", "n2", "done", keys=9),
           report("forged", "n3"))
    answer(report("s1", "n2", keys=40), report("old", "n2", "done", keys=9),
           report("s2", "n2"))
    answer(report("s1", "n2", keys=40), report("s2", "n2", keys=3),
           report("quick", "n2", "done", keys=5))
    answer(report("s1", "n2", "done", keys=71), report("s2", "n2", keys=3))
    answer(report("s1", "n2", "done", keys=71))
    relayed = [(e.kind, e.data["stream"], e.data["keys"]) for e in seen
               if e.kind.startswith("rebalance")]
    assert relayed == [
        ("rebalance_start", "s1", 0),
        ("rebalance_progress", "s1", 40),
        ("rebalance_start", "s2", 0),
        ("rebalance_progress", "s2", 3),
        ("rebalance_done", "quick", 5),
        ("rebalance_done", "s1", 71),
        ("rebalance_failed", "s2", 3),
    ]
    failed = [e for e in seen if e.kind == "rebalance_failed"]
    assert failed[0].data["error"] == "n2 no longer reports this stream"
    assert kinds(bus.recent()) == ["rebalance_start", "rebalance_start", "rebalance_done",
                                   "rebalance_done", "rebalance_failed"]
    assert watch.streams["old"]["keys"] == 9 and "forged" not in watch.streams
    assert runtime.stats_extras["rebalance"]() == [], "a peer's streams are not re-exported"


@pytest.mark.parametrize("answers", [True, False])
def test_a_driver_that_leaves_is_asked_once_more_then_its_streams_are_closed(
        watched: Any, answers: bool) -> None:
    """When a peer driving a stream turns LEFT (a leaver lingers a moment), it is asked for
    STATS at once: its final report is relayed. If it does not answer, the stream is
    reported failed after the request timeout, saying why."""
    clock, bus, runtime, watch, seen, _ = watched
    clock.advance(1)
    runtime.pool.answer("n2.test:7380", {"rebalance": [report("s1", "n2", keys=40)]})
    runtime.membership_service.emit(MemberEvent("n2", MemberState.ALIVE, MemberState.LEFT,
                                                3, clock.seconds()))
    assert [a for a, _ in runtime.pool.requests] == ["n2.test:7380"]
    if answers:
        runtime.pool.answer("n2.test:7380", {"rebalance": [report("s1", "n2", "done",
                                                                  keys=71)]})
    clock.advance(2.5)
    final = [(e.kind, e.data["keys"], e.data.get("error")) for e in seen
             if e.kind in ("rebalance_done", "rebalance_failed")]
    if answers:
        assert final == [("rebalance_done", 71, None)]
    else:
        assert final == [("rebalance_failed", 40,
                          "n2 is left: the end of this stream was not reported")]


def test_watch_stops_itself_with_the_runtime(watched: Any) -> None:
    """Once the runtime stopped, the next tick ends the watch."""
    clock, bus, runtime, watch, seen, _ = watched
    runtime.running = False
    clock.advance(1)
    assert not watch.running


def test_watch_start_is_idempotent() -> None:
    """Starting twice subscribes once."""
    clock = Clock()
    runtime = FakeRuntime()
    watch = ClusterWatch(EventBus(clock), runtime, clock)
    watch.start()
    watch.start()
    assert len(runtime.membership_service.subscribers) == 1


# -- the demo pause -------------------------------------------------------------------------


def test_pause_halts_membership_then_restarts_it() -> None:
    """pause(s) halts SWIM at once and restarts it s seconds later, publishing both."""
    clock = Clock()
    bus = EventBus(clock)
    runtime = FakeRuntime()
    pause = MembershipPause(runtime, clock, bus)
    assert pause.pause(10) == 10.0
    assert (runtime.membership_service.halted, pause.paused) == (1, True)
    with pytest.raises(PauseRefused):
        pause.pause(5)
    clock.advance(9.9)
    assert runtime.membership_service.started == 0
    clock.advance(0.1)
    assert (runtime.membership_service.started, pause.paused) == (1, False)
    assert [(e.kind, e.data["node"]) for e in bus.recent()] == [("pause", "n1"), ("resume", "n1")]


@pytest.mark.parametrize("seconds", [0, -1, 301])
def test_pause_refuses_bad_durations(seconds: float) -> None:
    """Durations outside (0, 300] are refused before anything is halted."""
    runtime = FakeRuntime()
    with pytest.raises(ValueError):
        MembershipPause(runtime, Clock()).pause(seconds)
    assert runtime.membership_service.halted == 0


def test_pause_of_a_stopped_runtime_is_refused_and_no_resume_after_stop() -> None:
    """No pause without a running runtime; a runtime stopped mid-pause is not restarted."""
    clock = Clock()
    runtime = FakeRuntime()
    runtime.running = False
    with pytest.raises(PauseRefused):
        MembershipPause(runtime, clock).pause(5)
    runtime.running = True
    pause = MembershipPause(runtime, clock)
    pause.pause(5)
    runtime.running = False
    clock.advance(5)
    assert runtime.membership_service.started == 0


def test_pause_on_a_simulated_cluster_kills_then_revives_the_node_in_peers_eyes() -> None:
    """On real runtimes (simulated network): a paused node is declared dead by its peers and
    comes back alive, at a higher incarnation, once the pause ends; events say so."""
    from test_cluster_sim import three_nodes

    cluster = three_nodes(seed=5)
    n1, _, n3 = cluster.nodes
    bus = EventBus(cluster.network.clock)
    watch = watch_cluster(bus, n1.rt, cluster.network.clock)
    pause = MembershipPause(n3.rt, cluster.network.clock)
    pause.pause(40)
    cluster.run(35.0)
    assert n1.rt.membership.get("n3").state is MemberState.DEAD  # type: ignore[union-attr]
    cluster.run(15.0)
    member = n1.rt.membership.get("n3")
    assert member is not None and member.state is MemberState.ALIVE and member.incarnation > 0
    transitions = [(e.data["old"], e.data["new"]) for e in bus.recent(kinds={"member"})
                   if e.data["node"] == "n3"]
    assert transitions[:2] == [("alive", "suspect"), ("suspect", "dead")]
    assert transitions[-1] == ("dead", "alive")
    watch.stop()
