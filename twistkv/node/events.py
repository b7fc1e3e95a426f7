"""What happens in the cluster, as a stream of events the dashboard can watch.

Three pieces, all on the injected reactor:

 - L{EventBus}: an in-process publish/subscribe bus with a bounded ring buffer.
   Every event gets the next integer id (ids only grow), so a browser that
   lost its Server-Sent Events connection reconnects with C{Last-Event-ID}
   and L{EventBus.since} replays what it missed, or says that the buffer
   no longer reaches back that far. Each bus has a random C{epoch}: ids from
   a bus of an earlier process (the node restarted) are recognised as such.
   Events published with C{retain=False} (the once-a-second traffic samples)
   reach live subscribers but are not kept, so they never push failure and
   healing events out of the buffer.

 - L{ClusterWatch} (started by L{watch_cluster}): turns the cluster runtime's
   membership events into C{member} events and its rebalancer's stream reports
   into C{rebalance_*} events, and once a second reads the
   counters of this node and, while someone watches, of every reachable peer
   (the peer protocol's C{STATS}), publishing what changed: hints queued and
   delivered, read repairs, quorum failures, and one C{traffic} sample (ops/s
   by command, p50/p99 latency over the last second, per node and for the
   cluster). It keeps the last minutes of samples, each node's latest
   counters and the latest report of each recent range stream for the
   dashboard's first paint. Streams are driven by the node that joins, leaves
   or removes, so each node also hands its own streams' latest reports to its
   peers in its C{STATS} answer (member C{rebalance}), and a watch relays a
   peer's streams as events: the dashboard of any node shows every movement.
   A driver that turns LEFT (a leaver answers for a moment after that) or DEAD
   is asked once more; what it never reported finished is then reported failed.

 - L{MembershipPause}: the dashboard's demo control. It halts this node's
   SWIM membership for some seconds (peers stop hearing from it, suspect it,
   declare it dead and route around it with hints) and then restarts it
   (the node rejoins, refutes the rumour of its death, and the hints come
   back). Client and replica traffic keep flowing meanwhile.

Event kinds and their C{data} (all JSON-ready; node ids are strings):

    member          node, old, new (state names, None when new/forgotten), incarnation
    hints_queued    node (the holder), count, waiting (hints it now holds)
    hints_delivered node (the holder), count, waiting
    read_repair     node (the coordinator), count
    quorum_failure  node (the coordinator), reads, writes (how many failed)
    pause           node, seconds, until (reactor time)
    resume          node
    traffic         t, nodes {id: {ops, p50_ms, p99_ms, commands {name: ops}, source}},
                    cluster {ops, p50_ms, p99_ms}   (not retained)
    rebalance_start     one range stream of a movement started (see below)
    rebalance_progress  it moved more, or started or stopped retrying; at most one
                        a second per stream                  (not retained)
    rebalance_done      it finished: every range arrived
    rebalance_failed    it stopped: its movement retracted (it starts again later
                        with new streams), the node stopped, or its source was
                        lost (its ranges are re-planned onto new streams); or,
                        relayed, its driver left or died before reporting its end

A range stream copies every token range one source gives one target for one
movement. The four C{rebalance_*} kinds carry the same data
(L{twistkv.node.rebalance.stream_report}): stream (id), node (the driver),
movement (C{join:n4}), move (join/leave/remove), subject (the node moving),
source, target, ranges (how many token ranges), share (of the ring, 0..1),
state (running/retrying/done/failed), keys, bytes, chunks, retries, scanned
and scan_total (records the source examined / holds: the known total; None
until its first answer), percent (None until known; 100 when done), error,
started_at and at (reactor time).

test-case-name: tests.node.test_events
"""

from __future__ import annotations

import json
import secrets
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from twistkv.core.membership import MemberEvent, MemberState
from twistkv.core.peerwire import Frame
from twistkv.node.metrics import LATENCY_BUCKETS, NodeStats

__all__ = [
    "DEFAULT_CAPACITY",
    "DEFAULT_HISTORY",
    "MAX_STREAMS",
    "Event",
    "EventBus",
    "ClusterWatch",
    "MembershipPause",
    "NodeReading",
    "PauseRefused",
    "Replay",
    "bucket_quantile_ms",
    "traffic_member",
    "watch_cluster",
]

_log = Logger()

#: Retained events kept for replay (failures and healing are a few per second at most).
DEFAULT_CAPACITY = 1000
#: Traffic samples kept for the charts: five minutes at one a second.
DEFAULT_HISTORY = 300
#: A node whose last reading is older than this many intervals is left out of a sample.
_STALE_INTERVALS = 3.0
#: Peers are polled while someone watched within this many seconds.
_DEMAND_WINDOW = 30.0
#: Range streams whose latest report a watch keeps (finished ones are forgotten first).
MAX_STREAMS = 24
_FINAL_STATES = ("done", "failed")

_Subscriber = Callable[["Event"], None]


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened: C{id} orders events of one bus, C{at} is reactor time."""

    id: int
    kind: str
    at: float
    data: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "at": self.at, "data": dict(self.data)}


@dataclass(frozen=True, slots=True)
class Replay:
    """What a reconnecting watcher missed: C{events} in order, and whether that is all.

    C{complete} is false when retained events after the watcher's last id were
    already dropped from the buffer (or the id is not one this bus handed out):
    the watcher should reload its whole view instead of patching it.
    """

    events: tuple[Event, ...]
    complete: bool


class EventBus:
    """Publish/subscribe with a bounded replay buffer; see the module docstring."""

    def __init__(self, clock: IReactorTime, capacity: int = DEFAULT_CAPACITY,
                 epoch: str | None = None) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._clock = clock
        self._buffer: deque[Event] = deque(maxlen=capacity)
        self._subscribers: list[_Subscriber] = []
        #: Distinguishes this bus's ids from those of a bus in an earlier process.
        self.epoch = epoch if epoch is not None else secrets.token_hex(4)
        self.last_id = 0
        #: The highest id of a retained event that the buffer dropped.
        self._dropped_through = 0

    @property
    def capacity(self) -> int:
        maxlen = self._buffer.maxlen
        assert maxlen is not None
        return maxlen

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def publish(self, kind: str, data: Mapping[str, Any], *, retain: bool = True,
                at: float | None = None) -> Event:
        """Number, keep (if C{retain}) and hand C{data} to every subscriber, in order."""
        self.last_id += 1
        event = Event(self.last_id, kind, self._clock.seconds() if at is None else at,
                      dict(data))
        if retain:
            if len(self._buffer) == self._buffer.maxlen:
                self._dropped_through = self._buffer[0].id
            self._buffer.append(event)
        for subscriber in list(self._subscribers):
            try:
                subscriber(event)
            except Exception:
                _log.failure("event subscriber {subscriber!r} failed", subscriber=subscriber)
        return event

    def subscribe(self, subscriber: _Subscriber) -> Callable[[], None]:
        """Call C{subscriber} with every later event; returns an idempotent unsubscribe."""
        self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

        return unsubscribe

    def since(self, last_id: int) -> Replay:
        """Retained events after C{last_id}, oldest first (see L{Replay})."""
        if last_id > self.last_id or last_id < 0:
            return Replay(tuple(self._buffer), False)
        events = tuple(event for event in self._buffer if event.id > last_id)
        return Replay(events, last_id >= self._dropped_through)

    def recent(self, limit: int | None = None, kinds: Iterable[str] | None = None
               ) -> list[Event]:
        """The newest retained events (at most C{limit}), oldest first."""
        wanted = None if kinds is None else frozenset(kinds)
        events = [e for e in self._buffer if wanted is None or e.kind in wanted]
        return events if limit is None else events[max(0, len(events) - limit):]


# -- latency and traffic arithmetic ---------------------------------------------------------


def bucket_quantile_ms(buckets: list[int] | tuple[int, ...], q: float) -> float | None:
    """Quantile C{q} of a latency histogram over L{LATENCY_BUCKETS}, in ms (bucket bound).

    None for an empty histogram; the overflow bucket reports the largest bound.
    """
    total = sum(buckets)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for bound, count in zip(LATENCY_BUCKETS, buckets, strict=False):
        seen += count
        if seen >= rank:
            return round(bound * 1000, 3)
    return round(LATENCY_BUCKETS[-1] * 1000, 3)


def traffic_member(stats: NodeStats) -> dict[str, Any]:
    """This node's cumulative command counters, as the C{traffic} member of C{STATS}.

    C{{"commands": {name: [calls, errors, [bucket counts...]]}}}: compact, and
    what a peer needs to compute ops/s and latency quantiles over any interval.
    """
    return {
        "commands": {
            name: [stat.calls, stat.errors, list(stat.buckets)]
            for name, stat in stats.commands.items()
        }
    }


@dataclass(slots=True)
class NodeReading:
    """The latest counters read from one node, and the rates since the reading before."""

    node_id: str
    at: float
    counters: dict[str, int]
    #: name -> (calls, buckets), cumulative; None when the node sent no traffic member.
    commands: dict[str, tuple[int, list[int]]] | None
    ops: float = 0.0
    command_ops: dict[str, float] = field(default_factory=dict)
    #: Latency histogram of the calls completed since the previous reading.
    buckets: list[int] = field(default_factory=list)
    source: str = "coordinator"

    def sample(self) -> dict[str, Any]:
        return {
            "ops": round(self.ops, 1),
            "p50_ms": bucket_quantile_ms(self.buckets, 0.5),
            "p99_ms": bucket_quantile_ms(self.buckets, 0.99),
            "commands": {name: round(ops, 1) for name, ops in sorted(self.command_ops.items())},
            "source": self.source,
        }


def _parse_commands(member: Any) -> dict[str, tuple[int, list[int]]] | None:
    if not isinstance(member, dict) or not isinstance(member.get("commands"), dict):
        return None
    parsed: dict[str, tuple[int, list[int]]] = {}
    for name, entry in member["commands"].items():
        try:
            calls, _errors, buckets = entry
            parsed[str(name)] = (int(calls), [int(b) for b in buckets])
        except (TypeError, ValueError):
            continue
    return parsed


#: Counter deltas published as events: kind -> counters summed.
_DELTAS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("hints_queued", ("hints_added",)),
    ("hints_delivered", ("hints_delivered",)),
    ("read_repair", ("read_repairs",)),
)


class ClusterWatch:
    """Publishes a cluster's changes on an L{EventBus}; see the module docstring.

    @param runtime: a L{twistkv.node.cluster.ClusterRuntime} (or anything with its
        C{node_id}, C{membership}, C{membership_service}, C{pool}, C{stats()} and
        C{running}).
    @param stats: this node's client command counters, for its traffic samples.
    """

    def __init__(self, bus: EventBus, runtime: Any, clock: IReactorTime, *,
                 stats: NodeStats | None = None, interval: float = 1.0,
                 history: int = DEFAULT_HISTORY, peer_timeout: float = 1.0) -> None:
        self.bus = bus
        self.runtime = runtime
        self._clock = clock
        self._stats = stats
        self.interval = interval
        self._peer_timeout = peer_timeout
        #: Traffic samples, oldest first (each the C{data} of a C{traffic} event).
        self.traffic: deque[dict[str, Any]] = deque(maxlen=history)
        self._readings: dict[str, NodeReading] = {}
        self._in_flight: set[str] = set()
        self._demand_until = -1.0
        self._loop = LoopingCall(self.tick)
        self._loop.clock = clock
        self._unsubscribe: Callable[[], None] | None = None
        self._unobserve: Callable[[], None] | None = None
        #: Latest report of each recent range stream, by stream id, oldest first.
        self.streams: dict[str, dict[str, Any]] = {}

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> ClusterWatch:
        if self._loop.running:
            return self
        self._unsubscribe = self.runtime.membership_service.subscribe(self._member_changed)
        rebalancer = getattr(self.runtime, "rebalancer", None)
        if rebalancer is not None and hasattr(rebalancer, "observe"):
            self._unobserve = rebalancer.observe(self._stream_reported)
        extras = getattr(self.runtime, "stats_extras", None)
        if isinstance(extras, dict):
            if self._stats is not None:
                stats = self._stats
                extras["traffic"] = lambda: traffic_member(stats)
            extras["rebalance"] = self.own_streams
        self._loop.start(self.interval, now=False).addErrback(
            lambda f: _log.failure("cluster watch failed", f))
        return self

    def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._unobserve is not None:
            self._unobserve()
            self._unobserve = None
        if self._loop.running:
            self._loop.stop()

    @property
    def running(self) -> bool:
        return self._loop.running

    def demand(self) -> None:
        """Someone is looking: poll peers too for the next L{_DEMAND_WINDOW} seconds.

        Asks the peers at once when nobody was looking, so the first page shows them.
        """
        was_watched = self.watched
        self._demand_until = self._clock.seconds() + _DEMAND_WINDOW
        if not was_watched and self._loop.running:
            self._poll_peers()

    @property
    def watched(self) -> bool:
        return self.bus.subscriber_count > 0 or self._clock.seconds() < self._demand_until

    # -- reads for the dashboard -----------------------------------------------------------

    def readings(self) -> dict[str, NodeReading]:
        """The latest reading of each node (this one included) that is still fresh."""
        horizon = self._clock.seconds() - self.interval * _STALE_INTERVALS
        return {node: r for node, r in self._readings.items() if r.at >= horizon}

    # -- membership ------------------------------------------------------------------------

    def _member_changed(self, event: MemberEvent) -> None:
        if event.old_state is event.new_state:
            return  # same-state news (incarnation, metadata): not a transition
        self.bus.publish("member", {
            "node": event.node_id,
            "old": _state_name(event.old_state),
            "new": _state_name(event.new_state),
            "incarnation": event.incarnation,
        }, at=event.at)
        if event.new_state in (MemberState.LEFT, MemberState.DEAD):
            self._last_word(event.node_id, event.new_state.value)

    def _last_word(self, node_id: str, state: str) -> None:
        """A peer that drives streams left or died: ask it once more (a leaver answers for a
        moment after announcing it left, with its streams' final reports), then close what
        it never reported finished."""
        if node_id == self.runtime.node_id or not self._unfinished(node_id):
            return
        member = next((m for m in self.runtime.membership.members() if m.node_id == node_id),
                      None)
        if member is not None and node_id not in self._in_flight:
            self._ask(node_id, member.address)

        def close() -> None:
            now = self._clock.seconds()
            for stream_id in self._unfinished(node_id):
                report = dict(self.streams[stream_id], state="failed", at=now,
                              error=f"{node_id} is {state}: the end of this stream was "
                                    "not reported")
                self._keep_stream(report)
                self.bus.publish("rebalance_failed", report, at=now)

        self._clock.callLater(self._peer_timeout + self.interval, close)

    def _unfinished(self, node_id: str) -> list[str]:
        return [k for k, r in self.streams.items()
                if r.get("node") == node_id and r.get("state") not in _FINAL_STATES]

    # -- range streams ---------------------------------------------------------------------

    def _stream_reported(self, phase: str, report: dict[str, Any]) -> None:
        """A report of this node's rebalancer: keep it, publish it."""
        self._keep_stream(report)
        self.bus.publish(f"rebalance_{phase}", report, retain=phase != "progress",
                         at=report.get("at"))

    def own_streams(self) -> list[dict[str, Any]]:
        """The latest reports of the streams this node drives (its C{STATS} member)."""
        me = self.runtime.node_id
        return [report for report in self.streams.values() if report.get("node") == me]

    def _keep_stream(self, report: dict[str, Any]) -> None:
        streams = self.streams
        streams.pop(report["stream"], None)
        streams[report["stream"]] = report
        while len(streams) > MAX_STREAMS:
            final = [k for k, r in streams.items() if r.get("state") in _FINAL_STATES]
            del streams[final[0] if final else next(iter(streams))]

    def _relay_streams(self, node_id: str, reports: Any, now: float, following: bool) -> None:
        """Publish what changed in the streams peer C{node_id} drives, as it reported them.

        A stream first seen finished (it was shorter than a poll interval) gets its final
        event only if the watch was C{following} the peer (it read it an interval ago):
        otherwise it ended before anyone watched, and is kept without an event. One that
        vanished unfinished from its driver's list (the driver restarted) is reported failed.
        """
        if not isinstance(reports, list):
            return
        listed = set()
        for report in reports:
            if not (isinstance(report, dict) and isinstance(report.get("stream"), str)
                    and report.get("node") == node_id):
                continue
            report = dict(report)
            stream_id = report["stream"]
            listed.add(stream_id)
            state = report.get("state")
            known = self.streams.get(stream_id)
            if known is not None and (known.get("state") in _FINAL_STATES or known == report):
                continue
            self._keep_stream(report)
            if state in _FINAL_STATES:
                if known is not None or following:
                    self.bus.publish(f"rebalance_{state}", report, at=now)
            elif known is None:
                self.bus.publish("rebalance_start", report, at=now)
            else:
                self.bus.publish("rebalance_progress", report, retain=False, at=now)
        for stream_id, known in list(self.streams.items()):
            if (known.get("node") == node_id and stream_id not in listed
                    and known.get("state") not in _FINAL_STATES):
                report = dict(known, state="failed", at=now,
                              error=f"{node_id} no longer reports this stream")
                self._keep_stream(report)
                self.bus.publish("rebalance_failed", report, at=now)

    # -- polling ---------------------------------------------------------------------------

    def tick(self) -> None:
        """Read counters (ours now, peers' as they answer) and publish one traffic sample."""
        runtime = self.runtime
        if not getattr(runtime, "running", True):
            self.stop()
            return
        now = self._clock.seconds()
        local: dict[str, Any] = dict(runtime.stats())
        if self._stats is not None:
            local["traffic"] = traffic_member(self._stats)
        self.record(runtime.node_id, local, now)
        if self.watched:
            self._poll_peers()
        self._publish_sample(now)

    def _poll_peers(self) -> None:
        runtime = self.runtime
        for member in runtime.membership.members():
            if (member.node_id == runtime.node_id or member.node_id in self._in_flight
                    or member.state not in (MemberState.ALIVE, MemberState.SUSPECT)):
                continue
            self._ask(member.node_id, member.address)

    def _ask(self, node_id: str, address: str) -> None:
        self._in_flight.add(node_id)
        asked = self.runtime.pool.request(address, Frame("STATS", 0), timeout=self._peer_timeout)

        def answered(frame: Frame) -> None:
            try:
                document = json.loads(frame.payload)
            except ValueError:
                return
            if isinstance(document, dict):
                self.record(node_id, document, self._clock.seconds())

        def done(result: object) -> None:
            self._in_flight.discard(node_id)

        asked.addCallback(answered).addErrback(lambda f: None).addBoth(done)

    def record(self, node_id: str, document: Mapping[str, Any], now: float) -> None:
        """Take one node's STATS document: publish what grew, update its rates."""
        counters = {k: int(v) for k, v in document.items()
                    if isinstance(v, int | float) and not isinstance(v, bool)}
        commands = _parse_commands(document.get("traffic"))
        previous = self._readings.get(node_id)
        reading = NodeReading(node_id, now, counters, commands)
        if node_id != self.runtime.node_id and "rebalance" in document:
            following = previous is not None and (
                now - previous.at <= self.interval * _STALE_INTERVALS)
            self._relay_streams(node_id, document["rebalance"], now, following)
        if previous is not None and now > previous.at:
            self._publish_deltas(node_id, previous.counters, counters, now)
            _rates(reading, previous, now - previous.at)
        elif previous is not None:
            reading.ops, reading.command_ops, reading.buckets, reading.source = (
                previous.ops, previous.command_ops, previous.buckets, previous.source)
        self._readings[node_id] = reading

    def _publish_deltas(self, node_id: str, old: dict[str, int], new: dict[str, int],
                        now: float) -> None:
        def grew(*names: str) -> int:
            if any(new.get(n, 0) < old.get(n, 0) for n in names):
                return 0  # counters went back: the node restarted; this is a new baseline
            return sum(new.get(n, 0) - old.get(n, 0) for n in names)

        waiting = new.get("hints_stored", 0)
        for kind, names in _DELTAS:
            count = grew(*names)
            if count > 0:
                data: dict[str, Any] = {"node": node_id, "count": count}
                if kind.startswith("hints"):
                    data["waiting"] = waiting
                self.bus.publish(kind, data, at=now)
        reads, writes = grew("reads_unavailable"), grew("writes_unavailable")
        if reads or writes:
            self.bus.publish("quorum_failure", {"node": node_id, "reads": reads,
                                                "writes": writes}, at=now)

    def _publish_sample(self, now: float) -> None:
        nodes = {node: reading.sample() for node, reading in sorted(self.readings().items())}
        merged = [0] * (len(LATENCY_BUCKETS) + 1)
        for reading in self.readings().values():
            for index, count in enumerate(reading.buckets[: len(merged)]):
                merged[index] += count
        sample = {
            "t": round(now, 3),
            "nodes": nodes,
            "cluster": {
                "ops": round(sum(n["ops"] for n in nodes.values()), 1),
                "p50_ms": bucket_quantile_ms(merged, 0.5),
                "p99_ms": bucket_quantile_ms(merged, 0.99),
            },
        }
        self.traffic.append(sample)
        self.bus.publish("traffic", sample, retain=False, at=now)


def _rates(reading: NodeReading, previous: NodeReading, elapsed: float) -> None:
    """Fill C{reading}'s rates from the counters it and C{previous} hold."""
    if reading.commands is not None and previous.commands is not None:
        reading.source = "commands"
        width = len(LATENCY_BUCKETS) + 1
        buckets = [0] * width
        total = 0
        for name, (calls, counts) in reading.commands.items():
            old_calls, old_counts = previous.commands.get(name, (0, [0] * width))
            if calls < old_calls:
                continue  # CONFIG RESETSTAT or a restart: skip this interval
            total += calls - old_calls
            if calls > old_calls:
                reading.command_ops[name] = (calls - old_calls) / elapsed
            for index in range(min(width, len(counts), len(old_counts))):
                buckets[index] += max(0, counts[index] - old_counts[index])
        reading.ops = total / elapsed
        reading.buckets = buckets
        return
    reading.source = "coordinator"
    done = sum(reading.counters.get(n, 0) for n in ("reads", "writes"))
    before = sum(previous.counters.get(n, 0) for n in ("reads", "writes"))
    reading.ops = max(0, done - before) / elapsed


def _state_name(state: MemberState | None) -> str | None:
    return None if state is None else state.value


def watch_cluster(bus: EventBus, runtime: Any, reactor: IReactorTime, *,
                  stats: NodeStats | None = None, interval: float = 1.0) -> ClusterWatch:
    """Start publishing C{runtime}'s membership changes and counters on C{bus}.

    Stop it with L{ClusterWatch.stop}; it also stops by itself once the
    runtime stops.
    """
    return ClusterWatch(bus, runtime, reactor, stats=stats, interval=interval).start()


# -- the demo control -------------------------------------------------------------------------


class PauseRefused(Exception):
    """The pause cannot start (the node is already paused, or its cluster is not running)."""


class MembershipPause:
    """Silence this node's membership (SWIM) for a while; see the module docstring."""

    #: Longest pause accepted, in seconds (a demo, not an outage).
    MAX_SECONDS = 300.0

    def __init__(self, runtime: Any, clock: IReactorTime, bus: EventBus | None = None) -> None:
        self._runtime = runtime
        self._clock = clock
        self._bus = bus
        self._resume_call: IDelayedCall | None = None
        self.paused_until: float | None = None

    @property
    def paused(self) -> bool:
        return self._resume_call is not None and self._resume_call.active()

    def pause(self, seconds: float) -> float:
        """Halt membership now and restart it after C{seconds}; returns the resume time.

        @raise ValueError: C{seconds} is not in (0, L{MAX_SECONDS}].
        @raise PauseRefused: already paused, or the cluster is not running.
        """
        if not 0 < seconds <= self.MAX_SECONDS:
            raise ValueError(f"seconds must be above 0 and at most {self.MAX_SECONDS:g}")
        if self.paused:
            raise PauseRefused("this node's membership is already paused")
        if not getattr(self._runtime, "running", False):
            raise PauseRefused("this node's cluster runtime is not running")
        self._runtime.membership_service.halt()
        until = self._clock.seconds() + seconds
        self.paused_until = until
        self._resume_call = self._clock.callLater(seconds, self.resume)
        _log.warn("Demo: membership of {node} paused for {seconds} s",
                  node=self._runtime.node_id, seconds=seconds)
        if self._bus is not None:
            self._bus.publish("pause", {"node": self._runtime.node_id, "seconds": seconds,
                                        "until": until})
        return until

    def resume(self) -> None:
        """Restart membership now (the node rejoins through its seeds and known members)."""
        call, self._resume_call = self._resume_call, None
        if call is not None and call.active():
            call.cancel()
        if self.paused_until is None:
            return
        self.paused_until = None
        if not getattr(self._runtime, "running", False):
            return  # the node stopped meanwhile: nothing to resume
        self._runtime.membership_service.startService()
        _log.warn("Demo: membership of {node} resumed", node=self._runtime.node_id)
        if self._bus is not None:
            self._bus.publish("resume", {"node": self._runtime.node_id})
