"""Tests for the dashboard's HTTP side: SSE, fragments, /api parts, demo controls, and the
/kv routes with ?consistency= (single node and, with a fake runtime, cluster mode).

All through StubTreq over the app's resource, on a fake clock; no sockets.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import treq
from twisted.internet.defer import Deferred, fail, succeed
from webfakes import FakeNode, fired

from twistkv.core.membership import Member, MemberState
from twistkv.core.quorum import ConsistencyLevel
from twistkv.core.record import Version
from twistkv.core.ring import Ring
from twistkv.node.coordinator import QuorumUnavailable, ReadResult
from twistkv.node.events import ClusterWatch, EventBus, MembershipPause
from twistkv.node.rebalance import RebalanceError
from twistkv.web.app import ADMIN_TOKEN_HEADER, MAX_EVENT_STREAMS, NodeWebApp
from twistkv.web.dashboard import dashboard_view, snapshot_dashboard
from twistkv.web.sse import format_event, parse_event_id

BASE = "http://node.example:8379"


class Live:
    """A fake node with an event bus, its app on the node's clock, and a StubTreq client."""

    def __init__(self, admin_token: str | None = None, with_bus: bool = True) -> None:
        self.node = FakeNode()
        if admin_token is not None:
            self.node.config = _TokenConfig(self.node.config, admin_token)  # type: ignore[assignment]
        if with_bus:
            self.node.events = EventBus(self.node.clock, epoch="e1")  # type: ignore[attr-defined]
        # Without a reactor the app creates no bus of its own either.
        clock = self.node.clock if with_bus else None
        self.app = NodeWebApp(self.node, reactor=clock)  # type: ignore[arg-type]
        self.client = treq.testing.StubTreq(self.app.resource())

    @property
    def bus(self) -> EventBus:
        assert self.app.events is not None
        return self.app.events

    def call(self, method: str, path: str, body: bytes | None = None,
             headers: dict[str, Any] | None = None) -> tuple[int, Any]:
        response = fired(self.client.request(method, BASE + path, data=body, headers=headers))
        raw = fired(self.client.content(response))
        return response.code, json.loads(raw) if raw else None

    def open_stream(self, path: str = "/api/events", headers: dict[str, Any] | None = None
                    ) -> tuple[Any, list[bytes]]:
        response = fired(self.client.get(BASE + path, headers=headers))
        chunks: list[bytes] = []
        treq.collect(response, chunks.append)
        self.client.flush()
        return response, chunks

    def disconnect_all(self) -> None:
        for pump in list(self.client._agent._pumps):
            pump.clientIO.loseConnection()
        self.client.flush()


class _TokenConfig:
    """A NodeConfig plus the admin_token option the lead adds to the real one."""

    def __init__(self, config: Any, token: str) -> None:
        self._config = config
        self.admin_token = token

    def __getattr__(self, name: str) -> Any:
        return getattr(self._config, name)


def messages(chunks: list[bytes]) -> list[dict[str, str]]:
    """Parse an SSE byte stream into messages ({"id", "event", "data"}; comments dropped)."""
    parsed = []
    for block in b"".join(chunks).decode().split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line and not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value
        if "event" in fields:
            parsed.append(fields)
    return parsed


# -- Server-Sent Events ---------------------------------------------------------------------


def test_stream_delivers_events_in_order_with_ids() -> None:
    """Published events arrive in order, each with epoch-id, kind and the event's view."""
    live = Live()
    response, chunks = live.open_stream()
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == ["text/event-stream; charset=utf-8"]
    assert b"retry: 2000" in chunks[0]
    live.bus.publish("member", {"node": "n2", "old": "alive", "new": "suspect", "incarnation": 1})
    live.bus.publish("traffic", {"t": 1, "nodes": {}, "cluster": {}}, retain=False)
    live.bus.publish("member", {"node": "n2", "old": "suspect", "new": "dead", "incarnation": 1})
    live.client.flush()
    got = messages(chunks)
    assert [(m["id"], m["event"]) for m in got] == [
        ("e1-1", "member"), ("e1-2", "traffic"), ("e1-3", "member")]
    first = json.loads(got[0]["data"])
    assert first["text"] == "n2 alive → suspect" and first["severity"] == "warn"


class FakeRebalancer:
    """Hands stream reports to its observers, as L{Rebalancer.observe} does."""

    def __init__(self) -> None:
        self.observers: list[Any] = []

    def observe(self, observer: Any) -> Any:
        self.observers.append(observer)
        return lambda: self.observers.remove(observer)

    def report(self, phase: str, **data: Any) -> None:
        report = {"stream": "n4-1", "node": "n4", "movement": "join:n4", "move": "join",
                  "subject": "n4", "source": "n1", "target": "n4", "ranges": 5,
                  "share": 0.25, "state": "running", "keys": 0, "bytes": 0, "chunks": 0,
                  "retries": 0, "scanned": 0, "scan_total": None, "percent": None,
                  "error": None, "started_at": 10.0, "at": 10.0}
        report.update(data)
        for observer in list(self.observers):
            observer(phase, report)


class RebalancingRuntime:
    """Just what a L{ClusterWatch} needs from a runtime whose rebalancer streams."""

    node_id = "n4"
    running = True

    def __init__(self) -> None:
        self.rebalancer = FakeRebalancer()
        self.stats_extras: dict[str, Any] = {}
        self.membership_service = self

    def subscribe(self, subscriber: Any) -> Any:
        return lambda: None

    @property
    def membership(self) -> Any:
        return self

    def members(self) -> list[Member]:
        return []


def test_stream_delivers_rebalance_events_in_order_and_the_bars_follow() -> None:
    """A stream's start, progress and done reach a subscriber in order with their figures;
    the progress is not kept for replay, and the rebalance fragment shows the final bar."""
    live = Live()
    runtime = RebalancingRuntime()
    live.app.watch = ClusterWatch(live.bus, runtime, live.node.clock).start()
    _, chunks = live.open_stream()
    t = live.node.clock.seconds()
    runtime.rebalancer.report("start", started_at=t, at=t)
    runtime.rebalancer.report("progress", keys=40, bytes=4640, chunks=1, scanned=150,
                              scan_total=300, percent=50.0, started_at=t, at=t + 1)
    runtime.rebalancer.report("done", state="done", keys=71, bytes=8236, chunks=2,
                              scanned=300, scan_total=300, percent=100.0, started_at=t, at=t + 2)
    live.client.flush()
    got = messages(chunks)
    assert [(m["id"], m["event"]) for m in got] == [
        ("e1-1", "rebalance_start"), ("e1-2", "rebalance_progress"), ("e1-3", "rebalance_done")]
    data = [json.loads(m["data"]) for m in got]
    assert [(d["data"]["keys"], d["data"]["percent"], d["at"]) for d in data] == [
        (0, None, t), (40, 50.0, t + 1), (71, 100.0, t + 2)]
    assert data[2]["text"] == "join of n4: n1 → n4 done: 71 keys, 8.0 KiB moved"
    assert [e.kind for e in live.bus.recent()] == ["rebalance_start", "rebalance_done"]
    status, doc = live.call("GET", "/fragments?parts=rebalance")
    assert status == 200 and 'data-state="done"' in doc["parts"]["rebalance"]


def test_reconnect_with_last_event_id_replays_what_was_missed() -> None:
    """A browser reconnecting with Last-Event-ID gets the retained events after it, then live."""
    live = Live()
    _, first = live.open_stream()
    live.bus.publish("member", {"node": "n2", "old": "alive", "new": "suspect"})
    live.client.flush()
    last_seen = messages(first)[-1]["id"]
    live.disconnect_all()
    live.bus.publish("member", {"node": "n2", "old": "suspect", "new": "dead"})
    live.bus.publish("traffic", {}, retain=False)
    live.bus.publish("hints_queued", {"node": "n1", "count": 4, "waiting": 4})
    _, again = live.open_stream(headers={"Last-Event-ID": [last_seen]})
    live.bus.publish("member", {"node": "n2", "old": "dead", "new": "alive"})
    live.client.flush()
    assert [(m["id"], m["event"]) for m in messages(again)] == [
        ("e1-2", "member"), ("e1-4", "hints_queued"), ("e1-5", "member")]


def test_since_parameter_replays_from_the_page_render() -> None:
    """The page's first connection passes ?since= (EventSource cannot set headers)."""
    live = Live()
    live.bus.publish("member", {"node": "n2", "old": "alive", "new": "dead"})
    _, chunks = live.open_stream("/api/events?since=e1-0")
    assert [m["id"] for m in messages(chunks)] == ["e1-1"]


@pytest.mark.parametrize("last", ["other-3", "e1-0"])
def test_reconnect_from_another_epoch_or_past_the_buffer_gets_reset(last: str) -> None:
    """An id from a restarted node, or older than the buffer, is answered with a reset."""
    live = Live()
    live.app.events = EventBus(live.node.clock, capacity=2, epoch="e1")
    for n in range(4):
        live.bus.publish("read_repair", {"node": "n1", "count": n + 1})
    _, chunks = live.open_stream(headers={"Last-Event-ID": [last]})
    got = messages(chunks)
    assert [m["event"] for m in got] == ["reset"]
    assert got[0]["id"] == "e1-4"


def test_heartbeat_every_15_seconds() -> None:
    """An idle stream gets a keep-alive comment every 15 s."""
    live = Live()
    _, chunks = live.open_stream()
    live.node.clock.advance(14.9)
    live.client.flush()
    assert not any(b"keep-alive" in c for c in chunks)
    live.node.clock.advance(0.1)
    live.client.flush()
    assert sum(b": keep-alive" in c for c in chunks) == 1


def test_closing_the_stream_unsubscribes() -> None:
    """When the browser goes away the subscription and the heartbeat end."""
    live = Live()
    live.open_stream()
    live.open_stream()
    assert (live.bus.subscriber_count, live.app.streams) == (2, 2)
    live.disconnect_all()
    assert (live.bus.subscriber_count, live.app.streams) == (0, 0)
    assert live.node.clock.getDelayedCalls() == []
    live.bus.publish("member", {"node": "n2"})  # nobody to write to: no error


def test_stream_limits_and_absence() -> None:
    """No bus: 503; past the stream limit: 503 too."""
    assert Live(with_bus=False).call("GET", "/api/events")[0] == 503
    live = Live()
    live.app.streams = MAX_EVENT_STREAMS
    status, doc = live.call("GET", "/api/events")
    assert (status, doc["error"]["code"]) == (503, "too_many_streams")


def test_event_id_round_trip() -> None:
    """Our SSE ids parse back; anything else is not ours."""
    assert format_event("ab", 7, "x", {}).startswith(b"id: ab-7\nevent: x\ndata: {}\n\n")
    assert parse_event_id(b"ab-7") == ("ab", 7)
    for bad in (None, b"", b"7", b"ab-", b"ab-x", b"-1"):
        assert parse_event_id(bad) is None


# -- dashboard data routes --------------------------------------------------------------------


def test_dashboard_page_and_parts_share_one_model() -> None:
    """/api/dashboard is dashboard_view of a snapshot; /api/<part> is that part."""
    live = Live()
    live.bus.publish("member", {"node": "n1", "old": None, "new": "alive"})
    expected = dashboard_view(snapshot_dashboard(live.node, "node.example", bus=live.bus))
    assert live.call("GET", "/api/dashboard") == (200, expected)
    assert live.call("GET", "/api/timeline") == (200, expected["timeline"])
    assert live.call("GET", "/api/overview")[1]["health"]["text"] == "1 node alive"
    assert live.call("GET", "/api/nope")[0] == 404
    assert live.call("GET", "/api/node")[1]["node_id"] == "n1"  # the older route still wins


def test_fragments_render_the_asked_parts() -> None:
    """/fragments?parts= gives each part's HTML and the stream position."""
    live = Live()
    status, doc = live.call("GET", "/fragments?parts=overview,timeline")
    assert status == 200
    assert set(doc["parts"]) == {"overview", "timeline"}
    assert 'id="verdict"' in doc["parts"]["overview"]
    assert doc["stream"]["epoch"] == "e1"
    assert live.call("GET", "/fragments")[0] == 400
    assert live.call("GET", "/fragments?parts=overview,evil")[0] == 400


def test_dashboard_page_is_served_at_root() -> None:
    """GET / is the dashboard: verdict, stream position, script from /static."""
    live = Live()
    response = fired(live.client.get(BASE + "/"))
    page = fired(live.client.content(response)).decode()
    assert 'class="verdict ok"' in page and "1 node alive" in page
    assert 'data-stream-epoch="e1"' in page
    assert '<script src="/static/dashboard.js" defer></script>' in page


def test_dashboard_script_is_served() -> None:
    """The dashboard's JavaScript ships in the package."""
    live = Live()
    response = fired(live.client.get(BASE + "/static/dashboard.js"))
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == ["text/javascript; charset=utf-8"]


# -- demo controls ----------------------------------------------------------------------------


class FakeMembershipService:
    def __init__(self) -> None:
        self.halted = 0
        self.started = 0

    def halt(self) -> None:
        self.halted += 1

    def startService(self) -> None:
        self.started += 1


class PausableRuntime:
    node_id = "n1"
    running = True

    def __init__(self) -> None:
        self.membership_service = FakeMembershipService()


def demo_live(token: str | None = "s3cret") -> tuple[Live, PausableRuntime]:
    live = Live(admin_token=token)
    runtime = PausableRuntime()
    live.app.pause_control = MembershipPause(runtime, live.node.clock, live.bus)
    return live, runtime


def post(live: Live, action: str, body: dict[str, Any], **headers: str) -> tuple[int, Any]:
    sent = {"content-type": ["application/json"]}
    sent.update({k.replace("_", "-"): [v] for k, v in headers.items()})
    return live.call("POST", f"/api/demo/{action}", json.dumps(body).encode(), sent)


TOKEN = {ADMIN_TOKEN_HEADER.decode(): "s3cret"}


def test_pause_with_the_token_halts_membership_and_resumes() -> None:
    """The right token pauses this node's membership; it resumes on time or on request."""
    live, runtime = demo_live()
    status, doc = post(live, "pause", {"seconds": 10}, **TOKEN)
    assert status == 200 and doc["paused"] and doc["node"] == "n1"
    assert runtime.membership_service.halted == 1
    assert post(live, "pause", {"seconds": 10}, **TOKEN)[0] == 409
    assert live.call("GET", "/api/demo")[1]["paused"] is True
    assert post(live, "resume", {}, **TOKEN) == (200, {"node": "n1", "paused": False,
                                                      "resumed": True})
    assert runtime.membership_service.started == 1
    assert [e.kind for e in live.bus.recent()] == ["pause", "resume"]


def test_demo_controls_are_off_without_a_token() -> None:
    """No --admin-token: 403, and nothing is halted."""
    live, runtime = demo_live(token=None)
    status, doc = post(live, "pause", {"seconds": 5}, **TOKEN)
    assert (status, doc["error"]["code"]) == (403, "demo_disabled")
    assert runtime.membership_service.halted == 0


@pytest.mark.parametrize("headers", [{}, {"x_twistkv_admin_token": "wrong"}])
def test_wrong_or_missing_token_is_401(headers: dict[str, str]) -> None:
    """The token must be in the custom header, exactly."""
    live, runtime = demo_live()
    status, doc = post(live, "pause", {"seconds": 5}, **headers)
    assert (status, doc["error"]["code"]) == (401, "bad_admin_token")
    assert runtime.membership_service.halted == 0


@pytest.mark.parametrize("headers", [
    {"origin": "http://evil.example"},
    {"sec_fetch_site": "cross-site"},
])
def test_cross_origin_requests_are_refused_even_with_the_token(headers: dict[str, str]) -> None:
    """A page on another origin cannot drive the controls (CSRF), token or not."""
    live, runtime = demo_live()
    status, doc = post(live, "pause", {"seconds": 5}, **TOKEN, **headers)
    assert (status, doc["error"]["code"]) == (403, "cross_origin")
    assert runtime.membership_service.halted == 0


def test_same_origin_request_is_accepted() -> None:
    """The dashboard's own fetch (Origin = the Host it was served from) passes."""
    live, runtime = demo_live()
    status, _ = post(live, "pause", {"seconds": 5}, origin="http://node.example:8379",
                     sec_fetch_site="same-origin", **TOKEN)
    assert status == 200


@pytest.mark.parametrize("body", [{"seconds": 0}, {"seconds": 9999}, {"seconds": "5"}])
def test_pause_refuses_bad_durations(body: dict[str, Any]) -> None:
    """Durations must be numbers in (0, 300]."""
    live, runtime = demo_live()
    assert post(live, "pause", body, **TOKEN)[0] == 400
    assert runtime.membership_service.halted == 0


def test_controls_are_post_only() -> None:
    """A GET (a link, an image tag) cannot pause anything."""
    live, runtime = demo_live()
    assert live.call("GET", "/api/demo/pause")[0] == 405


def test_pause_of_unknown_node_is_404() -> None:
    """Asking to pause a node that is not a member with an HTTP address fails cleanly."""
    live, runtime = demo_live()
    status, doc = post(live, "pause", {"seconds": 5, "node": "n9"}, **TOKEN)
    assert (status, doc["error"]["code"]) == (404, "unknown_node")


class LeavingRuntime:
    """A cluster runtime whose leave() is counted; it fires when the test says so."""

    node_id = "n1"

    def __init__(self, refuse: str | None = None) -> None:
        self.leaves: list[Deferred[None]] = []
        self.refuse = refuse
        self.membership = FakeMembership()

    def leave(self) -> Deferred[None]:
        if self.refuse is not None:
            raise RebalanceError(self.refuse)
        done: Deferred[None] = Deferred()
        self.leaves.append(done)
        return done


def leave_live(token: str | None = "s3cret", refuse: str | None = None
               ) -> tuple[Live, LeavingRuntime, list[str]]:
    live = Live(admin_token=token)
    runtime = LeavingRuntime(refuse)
    shutdowns: list[str] = []
    context = live.node.context
    assert context is not None
    context.cluster = runtime  # type: ignore[attr-defined]
    context.shutdown = lambda: shutdowns.append("stop")  # type: ignore[attr-defined]
    return live, runtime, shutdowns


def test_leave_with_the_token_starts_one_leave_then_shuts_down_once_left() -> None:
    """The right token starts exactly one leave (202 at once); the node shuts down only
    once its ranges are handed over."""
    live, runtime, shutdowns = leave_live()
    status, doc = post(live, "leave", {}, **TOKEN)
    assert (status, doc) == (202, {"node": "n1", "leaving": True})
    assert len(runtime.leaves) == 1 and shutdowns == []
    runtime.leaves[0].callback(None)
    assert shutdowns == ["stop"]


def test_leave_is_off_without_a_token() -> None:
    """No --admin-token: 403, and no leave starts."""
    live, runtime, _ = leave_live(token=None)
    status, doc = post(live, "leave", {}, **TOKEN)
    assert (status, doc["error"]["code"]) == (403, "demo_disabled")
    assert runtime.leaves == []


@pytest.mark.parametrize("headers", [
    {"origin": "http://evil.example"},
    {"sec_fetch_site": "cross-site"},
])
def test_cross_origin_leave_is_refused_even_with_the_token(headers: dict[str, str]) -> None:
    """Another origin's page cannot make a node leave (CSRF), token or not."""
    live, runtime, _ = leave_live()
    status, doc = post(live, "leave", {}, **TOKEN, **headers)
    assert (status, doc["error"]["code"]) == (403, "cross_origin")
    assert runtime.leaves == []


def test_leave_with_a_wrong_token_or_by_get_does_nothing() -> None:
    """A wrong token is 401; a GET (a link) is 405."""
    live, runtime, _ = leave_live()
    assert post(live, "leave", {}, x_twistkv_admin_token="wrong")[0] == 401
    assert live.call("GET", "/api/demo/leave")[0] == 405
    assert runtime.leaves == []


def test_a_leave_that_cannot_start_is_409_and_an_unknown_node_404() -> None:
    """The rebalancer's refusal is reported as is; a node that is not a member is 404."""
    live, runtime, shutdowns = leave_live(refuse="the last node of the ring cannot leave")
    status, doc = post(live, "leave", {}, **TOKEN)
    assert (status, doc["error"]) == (409, {"code": "leave_refused",
                                            "message": "the last node of the ring cannot leave"})
    status, doc = post(live, "leave", {"node": "n9"}, **TOKEN)
    assert (status, doc["error"]["code"]) == (404, "unknown_node")
    assert shutdowns == []


# -- /kv with ?consistency= -------------------------------------------------------------------


def test_consistency_parameter_is_validated() -> None:
    """one/quorum/all/default are accepted (a lone node has one replica); others are 400."""
    live = Live()
    for level in ("one", "QUORUM", "all", "default"):
        status, _ = live.call("PUT", f"/kv/k?consistency={level}", b"v")
        assert status in (200, 201)
        assert live.call("GET", f"/kv/k?format=json&consistency={level}")[0] == 200
    status, doc = live.call("GET", "/kv/k?consistency=most")
    assert (status, doc["error"]["code"]) == (400, "invalid_parameter")
    assert live.call("DELETE", "/kv/k?consistency=all") == (200, {"deleted": True})


def test_where_on_a_single_node() -> None:
    """A lone node is the only replica and holds the versions."""
    live = Live()
    live.node.keyspace.set(b"a/b", b"v")
    status, doc = live.call("GET", "/api/where/a%2Fb")
    assert status == 200 and doc["key"] == "a/b" and doc["mode"] == "single"
    (row,) = doc["replicas"]
    assert (row["node"], row["role"], row["versions"][0]["value"]) == ("n1", "replica", "v")


class FakeCoordinator:
    """Answers reads from a dict; records writes; can be told to fail with a quorum error."""

    def __init__(self) -> None:
        self.versions: dict[bytes, tuple[Version, ...]] = {}
        self.failure: Exception | None = None
        self.calls: list[tuple[str, bytes, ConsistencyLevel | None]] = []

    def get(self, key: bytes, consistency: ConsistencyLevel | None = None,
            wait_for_all: bool = False) -> Deferred[ReadResult]:
        self.calls.append(("get", key, consistency))
        if self.failure is not None:
            return fail(self.failure)
        held = self.versions.get(key, ())
        return succeed(ReadResult(key, held, {"n1": held, "n2": held}, {"n3": "timed out"}))

    def put(self, key: bytes, value: bytes, consistency: ConsistencyLevel | None = None,
            expires_at_ms: int = 0, context: Any = None) -> Deferred[Version]:
        self.calls.append(("put", key, consistency))
        version = Version(value, (("n1", 9),), 9, "n1", expires_at_ms)
        self.versions[key] = (version,)
        return succeed(version)


class FakeClusterKeyspace:
    def __init__(self, coordinator: FakeCoordinator, now_ms: Any) -> None:
        self.coordinator = coordinator
        self.now_ms = now_ms

    def record(self, key: bytes, consistency: ConsistencyLevel | None = None) -> Any:
        return self.coordinator.get(key, consistency, wait_for_all=True)

    def at(self, consistency: ConsistencyLevel | None) -> Any:
        return self

    def key_count(self) -> int:
        return 0

    def delete(self, keys: list[bytes]) -> Deferred[int]:
        return succeed(len(keys))


class FakeMembership:
    def __init__(self) -> None:
        self._members = {n: Member(n, f"{n}.test:7380", MemberState.ALIVE, 0, 0.0,
                                   {"http": f"{n}.test:8379"}) for n in ("n1", "n2", "n3")}

    def members(self) -> list[Member]:
        return list(self._members.values())

    def get(self, node: str) -> Member | None:
        return self._members.get(node)


class FakeClusterRuntime:
    node_id = "n1"

    def __init__(self, now_ms: Any) -> None:
        self.coordinator = FakeCoordinator()
        self.keyspace = FakeClusterKeyspace(self.coordinator, now_ms)
        self.ring = Ring(["n1", "n2", "n3"], 8)
        self.membership = FakeMembership()

        class Options:
            n = 3

        self.options = Options()

    def address_of(self, node: str) -> str:
        return f"{node}.test:7380"

    def stats(self) -> dict[str, int]:
        return {"replica_records": 0}


def clustered() -> tuple[Live, FakeClusterRuntime]:
    live = Live()
    runtime = FakeClusterRuntime(live.node.now_ms)
    assert live.node.context is not None
    live.node.context.cluster = runtime  # type: ignore[attr-defined]
    live.node.context.keyspace = runtime.keyspace  # type: ignore[assignment]
    return live, runtime


def test_cluster_get_reads_through_the_coordinator_at_the_level() -> None:
    """In cluster mode GET asks the coordinator at ?consistency= and says who answered."""
    live, runtime = clustered()
    status, doc = live.call("PUT", "/kv/k?consistency=all", b"v")
    assert (status, doc["created"]) == (201, True)
    assert doc["version"]["vector_clock"] == {"n1": 9}
    status, doc = live.call("GET", "/kv/k?format=json&consistency=one")
    assert status == 200 and doc["value"] == "v"
    assert doc["read"] == {"consistency": "one", "replied": ["n1", "n2"],
                           "failed": {"n3": "timed out"}}
    assert ("put", b"k", ConsistencyLevel.ALL) in runtime.coordinator.calls
    assert runtime.coordinator.calls[-1] == ("get", b"k", ConsistencyLevel.ONE)


def test_cluster_quorum_failure_is_503_with_detail() -> None:
    """QuorumUnavailable becomes 503 unavailable with who was tried and why."""
    live, runtime = clustered()
    runtime.coordinator.failure = QuorumUnavailable("read", 1, 2, ["n1", "n2"], {"n2": "timed out"})
    status, doc = live.call("GET", "/kv/k?consistency=quorum")
    assert status == 503
    assert doc["error"]["code"] == "unavailable"
    assert (doc["error"]["acks"], doc["error"]["required"]) == (1, 2)
    assert doc["error"]["detail"] == {"n2": "timed out"}


def test_cluster_where_lists_replicas_and_what_each_holds() -> None:
    """/api/where shows the N owners then fallbacks, with each replica's versions."""
    live, runtime = clustered()
    live.call("PUT", "/kv/k", b"v")
    status, doc = live.call("GET", "/api/where/k?consistency=all")
    assert status == 200 and doc["mode"] == "cluster" and doc["n"] == 3
    assert [r["role"] for r in doc["replicas"]] == ["replica"] * 3
    assert sorted(r["node"] for r in doc["replicas"]) == ["n1", "n2", "n3"]
    held = {r["node"]: r for r in doc["replicas"]}
    assert held["n2"]["versions"][0]["value"] == "v"
    assert (held["n3"]["answered"], held["n3"]["error"]) == (False, "timed out")
    assert doc["siblings"][0]["value"] == "v"
