"""Tests for twistkv.web.dashboard: view models, SVG geometry and the templates they feed.

Rendered HTML is parsed with the standard library's html.parser, never matched as text
where structure matters.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from html.parser import HTMLParser
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_views import SNAPSHOT

from twistkv.core.ring import Ring
from twistkv.node.events import Event
from twistkv.web.dashboard import (
    PARTS,
    DashboardSnapshot,
    NodeFigures,
    chart,
    dashboard_view,
    describe_event,
    health_verdict,
    members_view,
    overview_view,
    rebalance_view,
    ring_arcs,
    ring_view,
    seconds_text,
    timeline_view,
    traffic_view,
)
from twistkv.web.templating import render
from twistkv.web.views import MemberSnapshot, node_view

NOW = SNAPSHOT.now_ms / 1000


def member(node: str, state: str = "alive", for_s: float = 30.0, **kw: Any) -> MemberSnapshot:
    fields: dict[str, Any] = dict(
        node_id=node, peer_address=f"10.0.0.{node[-1]}:7380", state=state, state_for_s=for_s,
        incarnation=2, client_address=f"10.0.0.{node[-1]}:7379",
        http_address=f"10.0.0.{node[-1]}:8379", version="0.1.0", in_ring=True,
        is_self=node == "n1", primary_share=1 / 3, replica_share=1.0)
    fields.update(kw)
    return MemberSnapshot(**fields)


RING = Ring(["n1", "n2", "n3"], 16)
CLUSTER = replace(SNAPSHOT, mode="cluster", replication=(3, 2, 2),
                  members=(member("n1"), member("n2"), member("n3")))


def snapshot(**kw: Any) -> DashboardSnapshot:
    fields: dict[str, Any] = dict(
        node=CLUSTER, now_s=NOW, vnodes=RING.vnode_tokens(),
        figures={"n1": NodeFigures(100, 0, 5.0), "n2": NodeFigures(90, 0, 1.0),
                 "n3": NodeFigures(110, 0, 2.0)},
        stream_epoch="e1", last_event_id=7)
    fields.update(kw)
    return DashboardSnapshot(**fields)


def with_members(*members: MemberSnapshot, **kw: Any) -> DashboardSnapshot:
    return snapshot(node=replace(CLUSTER, members=members), **kw)


# -- words ---------------------------------------------------------------------------------------


def test_verdict_all_alive() -> None:
    """Everyone alive: the verdict counts them."""
    assert health_verdict(snapshot()) == {"level": "ok", "text": "all 3 nodes alive"}


def test_verdict_names_the_dead_node_and_the_hints_waiting() -> None:
    """The issue's example: "n2 dead for 14 s: 312 hints waiting"."""
    view = with_members(member("n1"), member("n2", "dead", 14.2), member("n3"),
                        figures={"n1": NodeFigures(1, 200), "n3": NodeFigures(1, 112)})
    assert health_verdict(view) == {"level": "warn", "text": "n2 dead for 14 s: 312 hints waiting"}


def test_verdict_is_bad_when_quorum_is_at_risk() -> None:
    """With two of three dead, R=W=2 cannot be met by live nodes: level bad."""
    view = with_members(member("n1"), member("n2", "dead", 90), member("n3", "dead", 3))
    verdict = health_verdict(view)
    assert verdict["level"] == "bad"
    assert verdict["text"].startswith("n2 dead for 1m 30s, n3 dead for 3 s")
    suspect = with_members(member("n1"), member("n2", "dead", 90), member("n3", "suspect", 3))
    assert health_verdict(suspect)["level"] == "warn"  # a suspect still answers


def test_verdict_mentions_a_demo_pause_and_failing_storage() -> None:
    """A paused membership and failing storage are both said in words."""
    view = snapshot(paused_until=NOW + 12, node=replace(CLUSTER, storage_healthy=False))
    verdict = health_verdict(view)
    assert verdict["level"] == "bad"
    assert "paused for 12 s more" in verdict["text"]
    assert "storage failing on n1" in verdict["text"]


def test_left_members_do_not_count() -> None:
    """A node that left is not reported as down."""
    view = with_members(member("n1"), member("n2", "left"))
    assert health_verdict(view)["text"] == "1 node alive"


@pytest.mark.parametrize(("seconds", "text"), [(0, "0 s"), (14.9, "14 s"), (61, "1m 1s")])
def test_seconds_text(seconds: float, text: str) -> None:
    """Short durations in seconds, longer ones as minutes and seconds."""
    assert seconds_text(seconds) == text


@pytest.mark.parametrize(("kind", "data", "text", "severity"), [
    ("member", {"node": "n2", "old": "alive", "new": "suspect"}, "n2 alive → suspect", "warn"),
    ("member", {"node": "n2", "old": "suspect", "new": "dead"}, "n2 suspect → dead", "bad"),
    ("member", {"node": "n2", "old": "dead", "new": "alive"}, "n2 dead → alive", "ok"),
    ("member", {"node": "n4", "old": None, "new": "alive"}, "n4 joined as alive", "ok"),
    ("hints_queued", {"node": "n1", "count": 3, "waiting": 9},
     "n1 queued 3 hints for a down replica (9 waiting)", "warn"),
    ("hints_delivered", {"node": "n1", "count": 1, "waiting": 0},
     "n1 delivered 1 hint (0 still waiting)", "ok"),
    ("read_repair", {"node": "n3", "count": 2}, "n3 read-repaired 2 stale replicas", "ok"),
    ("quorum_failure", {"node": "n1", "reads": 0, "writes": 2},
     "n1: 2 writes failed to reach quorum", "bad"),
    ("rebalance_start", {"move": "join", "subject": "n4", "source": "n1", "target": "n4",
                         "ranges": 5, "share": 0.268},
     "join of n4: n1 → n4 started streaming 5 ranges (26.8% of the ring)", "info"),
    ("rebalance_done", {"move": "leave", "subject": "n2", "source": "n2", "target": "n3",
                        "keys": 71, "bytes": 8236},
     "leave of n2: n2 → n3 done: 71 keys, 8.0 KiB moved", "ok"),
    ("rebalance_failed", {"move": "join", "subject": "n4", "source": "n1", "target": "n4",
                          "keys": 1, "bytes": 40, "error": "the ring changed"},
     "join of n4: n1 → n4 stopped after 1 key, 40 B: the ring changed", "warn"),
])
def test_describe_event(kind: str, data: dict[str, Any], text: str, severity: str) -> None:
    """Each event kind reads as a sentence with a severity."""
    assert describe_event(kind, data) == (text, severity)


# -- view models ---------------------------------------------------------------------------------


def test_every_part_is_json_data() -> None:
    """The whole model survives a JSON round trip (the API serves exactly this)."""
    view = dashboard_view(snapshot(events=(Event(1, "member", NOW, {"node": "n2", "old": "alive",
                                                                     "new": "dead"}),)))
    assert set(view) == {*PARTS, "stream"}
    assert json.loads(json.dumps(view)) == view
    assert view["stream"] == {"epoch": "e1", "last_event_id": 7, "enabled": True}
    assert set(dashboard_view(snapshot(), ["ring"])) == {"ring", "stream"}


def test_overview_counts_states_and_estimates_keys() -> None:
    """Nodes by state, and keys as replica records divided by N."""
    view = overview_view(with_members(member("n1"), member("n2", "dead"), member("n3")))
    assert view["states"] == {"alive": 2, "suspect": 0, "dead": 1, "left": 0}
    assert view["replication"] == {"n": 3, "r": 2, "w": 2}
    assert view["keys"] == 100  # (100 + 90 + 110) / 3
    assert view["mode"] == "cluster"


def test_overview_single_node_uses_the_local_key_count() -> None:
    """A lone node reports its keyspace's exact count."""
    view = overview_view(snapshot(node=SNAPSHOT, vnodes=(), figures={}))
    assert (view["keys"], view["nodes_total"], view["mode"]) == (7, 1, "single")
    assert view["health"]["text"] == "1 node alive"


def test_overview_ops_come_from_the_last_traffic_sample() -> None:
    """Ops/s now is the cluster figure of the newest sample."""
    sample = {"t": NOW, "nodes": {}, "cluster": {"ops": 42.44, "p50_ms": 0.1, "p99_ms": 1}}
    assert overview_view(snapshot(traffic=(sample,)))["ops_per_sec"] == 42.4


def test_members_rows() -> None:
    """Rows carry state and its age, keys held, load share and a link to that node's page."""
    rows = members_view(with_members(member("n1"), member("n2", "suspect", 3.5)))
    assert [(r["id"], r["state"], r["state_for"], r["keys"]) for r in rows] == [
        ("n1", "alive", "30 s", 100), ("n2", "suspect", "3 s", 90)]
    assert rows[1]["dashboard_url"] == "http://10.0.0.2:8379/"
    assert rows[0]["load_pct"] == 33.3


@given(st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1, max_size=6, unique=True),
       st.integers(1, 12))
def test_ring_arcs_cover_the_circle_exactly(nodes: list[str], vnodes: int) -> None:
    """Arcs are contiguous, never overlap, cover one full turn, and alternate owners."""
    arcs = ring_arcs(Ring(nodes, vnodes).vnode_tokens())
    assert math.isclose(sum(end - start for start, end, _ in arcs), 1.0, abs_tol=1e-9)
    for (_, end, owner), (start, _, next_owner) in zip(arcs, arcs[1:], strict=False):
        assert math.isclose(end, start, abs_tol=1e-12)
        assert owner != next_owner
    if len(arcs) > 1:
        assert arcs[0][2] != arcs[-1][2]


def test_ring_view_paths_colours_and_bars() -> None:
    """Every arc is a closed SVG path coloured by owner; down owners are marked."""
    view = ring_view(with_members(member("n1"), member("n2", "dead"), member("n3")))
    assert view["vnodes"] == 48
    classes = {a["owner"]: a["class"] for a in view["arcs"]}
    assert classes == {"n1": "own-0", "n2": "own-1", "n3": "own-2"}
    assert all(a["d"].startswith("M") and a["d"].endswith("Z") for a in view["arcs"])
    assert {a["owner"] for a in view["arcs"] if a["down"]} == {"n2"}
    assert [b["id"] for b in view["bars"]] == ["n1", "n2", "n3"]
    assert max(b["keys_pct"] for b in view["bars"]) == 100.0


def test_ring_of_one_owner_is_drawn_as_two_halves() -> None:
    """A full annulus needs two SVG arcs."""
    view = ring_view(snapshot(node=replace(CLUSTER, members=(member("n1"),)),
                              vnodes=Ring(["n1"], 8).vnode_tokens()))
    assert len(view["arcs"]) == 2


def test_timeline_is_newest_first_without_traffic() -> None:
    """Retained events only, newest first, with a clock time and words."""
    events = (Event(1, "member", NOW - 5, {"node": "n2", "old": "alive", "new": "suspect"}),
              Event(3, "member", NOW, {"node": "n2", "old": "suspect", "new": "dead"}))
    rows = timeline_view(snapshot(events=events))
    assert [r["id"] for r in rows] == [3, 1]
    assert rows[0]["text"] == "n2 suspect → dead" and rows[0]["severity"] == "bad"
    assert rows[0]["time"] == "22:14:50" and rows[0]["iso"].endswith("Z")


def test_chart_scales_to_the_window_and_breaks_on_gaps() -> None:
    """Points map time to x and value to y; a None splits the line; old points drop out."""
    points = [(NOW - 400, 5.0), (NOW - 300, 10.0), (NOW - 150, 5.0), (NOW - 100, None),
              (NOW - 50, 0.0), (NOW, 10.0)]
    c = chart({"ops": points}, NOW, width=300, height=44)
    assert c["max"] == 10.0
    (line,) = c["lines"]
    assert line["segments"] == ["0.0,2.0 150.0,22.0", "250.0,42.0 300.0,2.0"]
    assert c["last"] == {"ops": 10.0}


def test_traffic_view_per_node_and_commands() -> None:
    """Charts for the cluster and each node; commands summed over nodes, busiest first."""
    samples = tuple({"t": NOW - 2 + i, "cluster": {"ops": 10.0 * i, "p50_ms": 0.1, "p99_ms": 2.5},
                     "nodes": {"n1": {"ops": 6.0, "p50_ms": 0.1, "p99_ms": 1.0, "source": "commands",
                                      "commands": {"get": 4.0, "set": 2.0}},
                               "n2": {"ops": 4.0, "p50_ms": None, "p99_ms": None,
                                      "source": "coordinator", "commands": {"get": 1.0}}}}
                    for i in range(3))
    view = traffic_view(snapshot(traffic=samples))
    assert view["samples"] == 3
    assert [n["id"] for n in view["nodes"]] == ["n1", "n2"]
    assert view["cluster"]["now"]["ops"] == 20.0
    assert view["commands"] == [{"name": "get", "ops": 5.0}, {"name": "set", "ops": 2.0}]
    assert view["nodes"][1]["latency"]["lines"][0]["segments"] == []


def stream(stream_id: str, state: str = "running", **kw: Any) -> dict[str, Any]:
    """A C{rebalance_*} event's data, as L{twistkv.node.rebalance.stream_report} makes it."""
    report: dict[str, Any] = {
        "stream": stream_id, "node": "n4", "movement": "join:n4", "move": "join",
        "subject": "n4", "source": "n1", "target": "n4", "ranges": 5, "share": 0.25,
        "state": state, "keys": 40, "bytes": 4640, "chunks": 1, "retries": 0,
        "scanned": 150, "scan_total": 300, "percent": 50.0, "error": None,
        "started_at": NOW - 3, "at": NOW}
    report.update(kw)
    return report


def test_rebalance_view_one_bar_per_stream_running_first() -> None:
    """Each recent stream is a bar with its route, movement, figures and percentage; running
    streams come first, then the newest finished ones; the percentage is absent until known."""
    view = rebalance_view(snapshot(streams=(
        stream("s1", "done", keys=71, bytes=8236, percent=100.0, started_at=NOW - 9),
        stream("s2", "failed", error="the ring changed", started_at=NOW - 5),
        stream("s3", "running", percent=None, scan_total=None, keys=0, bytes=0),
        stream("s4", "retrying", error="n1 unreachable", source="n2"),
    )))
    assert view["active"] == 2
    bars = view["bars"]
    assert [b["id"] for b in bars] == ["s3", "s4", "s2", "s1"]
    running, retrying, failed, done = bars
    assert (running["percent"], running["width"], running["state_text"]) == (
        None, 0.0, "streaming")
    assert (retrying["source"], retrying["level"], retrying["error"]) == (
        "n2", "warn", "n1 unreachable")
    assert (failed["level"], failed["error"]) == ("bad", "the ring changed")
    assert (done["keys"], done["bytes_text"], done["width"], done["level"]) == (
        71, "8.0 KiB", 100.0, "ok")
    assert done["movement"] == "join of n4" and done["ranges_text"] == "5 ranges, 25.0% of the ring"
    assert done["elapsed_text"] == "9 s"
    json.dumps(view)


def test_rebalance_view_shows_at_most_a_dozen_bars() -> None:
    """Many finished streams do not push a running one off the panel."""
    old = tuple(stream(f"d{i}", "done", started_at=NOW - 100 + i) for i in range(20))
    bars = rebalance_view(snapshot(streams=(*old, stream("live", started_at=NOW - 200))))["bars"]
    assert len(bars) == 12 and bars[0]["id"] == "live"
    assert [b["id"] for b in bars[1:3]] == ["d19", "d18"]


def test_rebalance_view_forgets_older_movements_and_old_finished_streams() -> None:
    """Finished streams of an earlier movement (say the start-up joins) and finished ones
    older than ten minutes make no bar; running streams always do."""
    earlier = stream("j2", "done", node="n2", movement="join:n2", started_at=NOW - 50)
    running = stream("j3-run", node="n3", movement="join:n3", started_at=NOW - 40, at=NOW)
    ended = stream("j4", "done", started_at=NOW - 30)
    latest = stream("j4-late", "done", started_at=NOW - 20)
    ids = [b["id"] for b in rebalance_view(snapshot(
        streams=(earlier, running, ended, latest)))["bars"]]
    assert ids == ["j3-run", "j4-late", "j4"]
    stale = rebalance_view(snapshot(streams=(earlier, running, ended, latest),
                                    now_s=NOW + 601))["bars"]
    assert [b["id"] for b in stale] == ["j3-run"]


class Bars(HTMLParser):
    """The progress bars of a rendered page: each C{li.move} with its C{svg} and C{rect}s."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.bars: list[dict[str, Any]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "li" and "move" in classes:
            self.bars.append({"li": a, "svg": None, "rects": []})
        elif self.bars and tag == "svg" and "progress" in classes:
            self.bars[-1]["svg"] = a
        elif self.bars and tag == "rect":
            self.bars[-1]["rects"].append(a)


def test_page_renders_a_progress_bar_per_moving_stream() -> None:
    """In the failures-and-healing panel, each stream is an accessible SVG progress bar whose
    fill is its percentage, with route, keys, bytes and state in words."""
    view = snapshot(streams=(stream("s1", "done", keys=71, bytes=8236, percent=100.0),
                             stream("s2", "running", percent=37.5, source="n2")))
    html = render("index.html", node=node_view(view.node), dash=dashboard_view(view)).decode()
    bars = Bars(html).bars
    assert [b["li"]["data-stream"] for b in bars] == ["s2", "s1"]
    running, done = bars
    assert running["li"]["data-state"] == "running" and done["li"]["data-state"] == "done"
    assert running["svg"]["role"] == "progressbar"
    assert running["svg"]["aria-valuenow"] == "37.5" and done["svg"]["aria-valuenow"] == "100.0"
    fills = [[r for r in b["rects"] if "fill" in (r.get("class") or "").split()] for b in bars]
    assert [f[0]["width"] for f in fills] == ["37.5", "100.0"]
    assert "ok" in (fills[1][0]["class"] or "").split()
    page = Page(html)
    assert " ".join(page.text["move-s2"].split()).startswith("n2 → n4 join of n4")
    assert "71 keys · 8.0 KiB · 100.0%" in " ".join(page.text["move-s1"].split())


def test_progress_bar_without_a_known_total_has_no_value() -> None:
    """Until the source first answers, the bar is empty and claims no percentage."""
    part = render("parts/rebalance.html", dash=dashboard_view(
        snapshot(streams=(stream("s1", percent=None, scan_total=None),)), ["rebalance"]))
    bars = Bars(part.decode()).bars
    assert "aria-valuenow" not in bars[0]["svg"]
    assert [r["width"] for r in bars[0]["rects"]] == ["100", "0.0"]


def test_no_moving_stream_renders_no_bar() -> None:
    """With nothing moving the part is an empty list (hidden by the stylesheet)."""
    page = Page(render("parts/rebalance.html", dash=dashboard_view(snapshot(), ["rebalance"]))
                .decode())
    assert "moves" in page.ids and page.text["moves"] == ""


# -- templates -------------------------------------------------------------------------------------


class Page(HTMLParser):
    """Collects elements by id (with their text), every tag, and every URL referred to."""

    _VOID = frozenset({"meta", "link", "input", "br", "img", "path", "rect", "line",
                       "polyline", "hr", "source"})

    def __init__(self, html: str) -> None:
        super().__init__()
        self.ids: dict[str, dict[str, str | None]] = {}
        self.text: dict[str, str] = {}
        self.urls: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self._stack: list[tuple[str, str | None]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        for name in ("href", "src"):
            if attributes.get(name):
                self.urls.append(str(attributes[name]))
        element = attributes.get("id")
        if element:
            self.ids[element] = attributes
            self.text[element] = ""
        if tag not in self._VOID:
            self._stack.append((tag, element))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in self._VOID:
            self._stack.pop()

    def handle_data(self, data: str) -> None:
        for _, element in self._stack:
            if element:
                self.text[element] += data

    def handle_endtag(self, tag: str) -> None:
        while self._stack:
            if self._stack.pop()[0] == tag:
                break

    def find(self, tag: str, **attrs: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag and all(
            (a.get(k) or "").split().__contains__(v) if k == "class" else a.get(k) == v
            for k, v in attrs.items())]


def page_for(view: DashboardSnapshot) -> Page:
    return Page(render("index.html", node=node_view(view.node), dash=dashboard_view(view)).decode())


def test_dashboard_page_shows_every_part() -> None:
    """The page has the verdict, one member row per node, ring arcs, charts and the explorer."""
    page = page_for(with_members(member("n1"), member("n2", "dead", 14), member("n3"),
                                 traffic=({"t": NOW, "cluster": {"ops": 3.0, "p50_ms": 0.1,
                                                                 "p99_ms": 0.5},
                                           "nodes": {}},)))
    assert "n2 dead for 14 s" in page.text["verdict"]
    assert "warn" in (page.ids["verdict"]["class"] or "")
    rows = page.find("tr", **{"class": "member"})
    assert [r["data-node"] for r in rows] == ["n1", "n2", "n3"]
    assert "state-dead" in (rows[1]["class"] or "")
    assert len(page.find("path", **{"class": "arc"})) == len(ring_arcs(RING.vnode_tokens()))
    assert "chart-cluster-ops" in page.ids and "kv-form" in page.ids
    assert page.ids["kv-consistency"] is not None
    body = page.find("body")[0]
    assert (body["data-stream-epoch"], body["data-last-event-id"]) == ("e1", "7")


def test_page_refers_only_to_its_own_node_assets() -> None:
    """Scripts and styles come from /static on the node; no CDN. Peer links are dashboards."""
    page = page_for(snapshot())
    assets = [a.get("src") or a.get("href") for t, a in page.tags if t in ("script", "link")]
    assert assets == ["/static/favicon.svg", "/static/twistkv.css", "/static/dashboard.js"]
    external = [u for u in page.urls if "://" in u]
    assert external == ["http://10.0.0.2:8379/", "http://10.0.0.3:8379/"]


def test_demo_controls_only_with_an_admin_token() -> None:
    """Without --admin-token the page explains how to turn the controls on and has no form."""
    off = page_for(snapshot())
    assert "demo-form" not in off.ids and "--admin-token" in off.text["demo-status"]
    on = page_for(snapshot(admin=True, paused_until=NOW + 9))
    assert "demo-form" in on.ids
    assert "paused for 9.0 s more" in on.text["demo-status"]
    assert off.find("button", **{"data-action": "leave"}) == []
    assert [b["type"] for b in on.find("button", **{"data-action": "leave"})] == ["button"]


def test_timeline_part_renders_events_escaped() -> None:
    """Event text is escaped: a hostile node id cannot inject markup."""
    hostile = Event(1, "member", NOW, {"node": "<img src=x>", "old": "alive", "new": "dead"})
    html = render("parts/timeline.html", dash=dashboard_view(snapshot(events=(hostile,)))).decode()
    assert "<img" not in html and "&lt;img src=x&gt;" in html


def test_empty_timeline_says_so() -> None:
    """With no events the timeline invites the teacher to kill a node."""
    html = render("parts/timeline.html", dash=dashboard_view(snapshot())).decode()
    assert "Kill a node" in html


@pytest.mark.parametrize("part", [p for p in PARTS])
def test_every_part_has_a_fragment_template(part: str) -> None:
    """Each part renders alone (what /fragments serves) from the same model."""
    html = render(f"parts/{part}.html", dash=dashboard_view(snapshot(), [part])).decode()
    assert html.strip()


def test_index_without_dashboard_is_the_plain_node_page() -> None:
    """Rendered with only the node model, index.html is the node page (no script)."""
    page = Page(render("index.html", node=node_view(SNAPSHOT)).decode())
    assert "verdict" not in page.ids
    assert page.find("script") == []
