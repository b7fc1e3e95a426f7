"""The dashboard's view models: a cluster's state as plain dicts, SVG geometry included.

Like L{twistkv.web.views}, everything here below L{snapshot_dashboard} is pure:
a L{DashboardSnapshot} (plain values read from the node, its event bus and its
cluster watch in one go) goes in, JSON-ready dicts come out. The same dict
feeds the Jinja2 page, its live fragments (C{/fragments/<part>}) and the JSON
API (C{/api/dashboard}, C{/api/<part>}), so the three cannot disagree.

The pictures are computed here too, as numbers a template puts into
hand-written SVG: the ring's arcs (L{ring_arcs}) and the traffic charts'
polylines (L{chart}). No charting library, nothing fetched from elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from twistkv.node.events import ClusterWatch, Event, EventBus
from twistkv.web.views import (
    MemberSnapshot,
    NodeSnapshot,
    WebNode,
    human_duration,
    snapshot_node,
)

__all__ = [
    "DashboardSnapshot",
    "NodeFigures",
    "PARTS",
    "PALETTE_SIZE",
    "bytes_text",
    "chart",
    "dashboard_view",
    "describe_event",
    "event_view",
    "health_verdict",
    "members_view",
    "overview_view",
    "rebalance_view",
    "ring_arcs",
    "ring_view",
    "seconds_text",
    "snapshot_dashboard",
    "timeline_view",
    "traffic_view",
]

#: Owner colours cycle through this many CSS classes (C{own-0} ... C{own-7}).
PALETTE_SIZE = 8
#: How much history the traffic charts show.
TRAFFIC_WINDOW_S = 300.0
#: Newest timeline entries shown.
TIMELINE_LIMIT = 200
_TOKEN_SPACE = float(1 << 64)
_STATES = ("alive", "suspect", "dead", "left")


@dataclass(frozen=True, slots=True)
class NodeFigures:
    """What a node's latest C{STATS} said: its replica's records and waiting hints."""

    keys: int | None = None
    hints_waiting: int | None = None
    ops: float | None = None


@dataclass(frozen=True, slots=True)
class DashboardSnapshot:
    """Everything the dashboard shows, read at one moment (see the module docstring).

    @ivar now_s: reactor time (seconds since the epoch on a real reactor).
    @ivar vnodes: the ring's C{(token, owner)} pairs in token order; empty without a ring.
    @ivar figures: per node id, from the cluster watch's fresh readings.
    @ivar events: retained events, oldest first.
    @ivar traffic: traffic samples, oldest first (each a C{traffic} event's data).
    @ivar admin: whether the demo controls are enabled (an admin token is set).
    @ivar streams: the latest report of each recent range stream, oldest first (each the
        data of a C{rebalance_*} event).
    """

    node: NodeSnapshot
    now_s: float
    vnodes: tuple[tuple[int, str], ...] = ()
    figures: Mapping[str, NodeFigures] = field(default_factory=dict)
    events: tuple[Event, ...] = ()
    traffic: tuple[Mapping[str, Any], ...] = ()
    admin: bool = False
    paused_until: float | None = None
    stream_epoch: str | None = None
    last_event_id: int = 0
    streams: tuple[Mapping[str, Any], ...] = ()


# -- small words -------------------------------------------------------------------------------


def seconds_text(seconds: float) -> str:
    """C{"14 s"} under a minute, else L{human_duration} (C{"3m 5s"})."""
    return f"{int(seconds)} s" if seconds < 60 else human_duration(seconds)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def bytes_text(size: float) -> str:
    """C{"812 B"}, C{"14.2 KiB"}, C{"3.0 MiB"}: sizes for people."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _clock_text(at: float) -> tuple[str, str]:
    moment = datetime.fromtimestamp(at, UTC)
    return moment.strftime("%H:%M:%S"), moment.isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


# -- members and health --------------------------------------------------------------------------


def _members(snapshot: DashboardSnapshot) -> tuple[MemberSnapshot, ...]:
    node = snapshot.node
    if node.members:
        return node.members
    # No cluster runtime (a bare single node): this node alone, alive since it started.
    uptime = max(0.0, (node.now_ms - node.started_at_ms) / 1000)
    return (MemberSnapshot(
        node_id=node.node_id, peer_address=node.peer_endpoint, state="alive",
        state_for_s=round(uptime, 1), incarnation=0, client_address=None, http_address=None,
        version=node.version, in_ring=True, is_self=True, primary_share=1.0, replica_share=1.0,
    ),)


def _hints_waiting(snapshot: DashboardSnapshot) -> int:
    return sum(f.hints_waiting or 0 for f in snapshot.figures.values())


def health_verdict(snapshot: DashboardSnapshot) -> dict[str, str]:
    """The cluster's health in words, and a level: C{ok}, C{warn} or C{bad}.

    C{"all 3 nodes alive"}, C{"n2 dead for 14 s: 312 hints waiting"}. C{bad} when
    fewer nodes answer (alive or suspect) than the default read or write quorum needs,
    or when this node's storage fails.
    """
    members = [m for m in _members(snapshot) if m.state != "left"]
    _, r, w = snapshot.node.replication
    hints = _hints_waiting(snapshot)
    hints_text = f": {_plural(hints, 'hint')} waiting" if hints else ""
    down = [m for m in members if m.state != "alive"]
    reachable = sum(1 for m in members if m.state in ("alive", "suspect"))
    level = "ok"
    if not down:
        text = ("1 node alive" if len(members) == 1 else f"all {len(members)} nodes alive")
        text += hints_text
    else:
        text = ", ".join(f"{m.node_id} {m.state} for {seconds_text(m.state_for_s)}"
                         for m in sorted(down, key=lambda m: m.node_id)) + hints_text
        level = "warn"
        if reachable < max(r, w):
            level = "bad"
            text += f"; only {reachable} of {len(members)} nodes reachable, quorum at risk"
    if snapshot.paused_until is not None:
        left = max(0.0, snapshot.paused_until - snapshot.now_s)
        text += f"; this node's membership is paused for {seconds_text(left)} more (demo)"
        level = "bad" if level == "bad" else "warn"
    if not snapshot.node.storage_healthy:
        text += f"; storage failing on {snapshot.node.node_id}"
        level = "bad"
    return {"level": level, "text": text}


def overview_view(snapshot: DashboardSnapshot) -> dict[str, Any]:
    """Cluster name, mode, N/R/W, nodes by state, keys, ops/s now, and the verdict."""
    node = snapshot.node
    members = _members(snapshot)
    states = dict.fromkeys(_STATES, 0)
    for member in members:
        states[member.state] = states.get(member.state, 0) + 1
    n, r, w = node.replication
    in_ring = [m.node_id for m in members if m.in_ring]
    records = [snapshot.figures[i].keys for i in in_ring if i in snapshot.figures]
    known = [k for k in records if k is not None]
    if node.mode == "cluster" and known:
        replicas = max(1, min(n, len(in_ring)))
        total = sum(known)
        keys: int = round(total / replicas)
        keys_note = (f"≈ {total} replica records ÷ {replicas} replicas"
                     + ("" if len(known) == len(in_ring) else
                        f"; {len(in_ring) - len(known)} node(s) did not answer"))
    else:
        keys, keys_note = node.keys, "on this node"
    ops = node.ops_per_sec
    if snapshot.traffic:
        ops = float(snapshot.traffic[-1].get("cluster", {}).get("ops", ops))
    return {
        "cluster_name": node.cluster_name,
        "node_id": node.node_id,
        "version": node.version,
        "mode": node.mode,
        "replication": {"n": n, "r": r, "w": w},
        "nodes_total": len(members),
        "states": states,
        "keys": keys,
        "keys_note": keys_note,
        "ops_per_sec": round(ops, 1),
        "health": health_verdict(snapshot),
    }


def members_view(snapshot: DashboardSnapshot) -> list[dict[str, Any]]:
    """One row per member: state with its age, incarnation, keys held, ring share."""
    rows = []
    for member in _members(snapshot):
        figures = snapshot.figures.get(member.node_id, NodeFigures())
        rows.append({
            "id": member.node_id,
            "is_self": member.is_self,
            "address": member.peer_address,
            "client_address": member.client_address,
            "http_address": member.http_address,
            "dashboard_url": f"http://{member.http_address}/" if member.http_address else None,
            "state": member.state,
            "state_for_s": member.state_for_s,
            "state_for": seconds_text(member.state_for_s),
            "incarnation": member.incarnation,
            "keys": figures.keys,
            "hints_waiting": figures.hints_waiting,
            "primary_share": member.primary_share,
            "replica_share": member.replica_share,
            "load_pct": round(member.primary_share * 100, 1),
            "replica_pct": round(member.replica_share * 100, 1),
            "version": member.version,
            "in_ring": member.in_ring,
        })
    return rows


# -- the ring ----------------------------------------------------------------------------------


def _point(cx: float, cy: float, radius: float, fraction: float) -> tuple[float, float]:
    angle = fraction * 2 * math.pi - math.pi / 2  # 0 at the top, clockwise
    return round(cx + radius * math.cos(angle), 2), round(cy + radius * math.sin(angle), 2)


def _arc_path(start: float, end: float, cx: float, cy: float, outer: float,
              inner: float) -> str:
    large = 1 if end - start > 0.5 else 0
    x0, y0 = _point(cx, cy, outer, start)
    x1, y1 = _point(cx, cy, outer, end)
    x2, y2 = _point(cx, cy, inner, end)
    x3, y3 = _point(cx, cy, inner, start)
    return (f"M{x0} {y0}A{outer} {outer} 0 {large} 1 {x1} {y1}"
            f"L{x2} {y2}A{inner} {inner} 0 {large} 0 {x3} {y3}Z")


def ring_arcs(vnodes: Sequence[tuple[int, str]]) -> list[tuple[float, float, str]]:
    """The ring as C{(start, end, owner)} arcs in turns (0..1 from the top, clockwise).

    A vnode with token C{t} owns C{(previous token, t]}; neighbouring vnodes of one
    owner are merged, across the wrap too, so the SVG stays small. The first arc may
    start below 0 (it wraps past the top).
    """
    if not vnodes:
        return []
    tokens = [token / _TOKEN_SPACE for token, _ in vnodes]
    arcs: list[list[Any]] = []
    for index, (_, owner) in enumerate(vnodes):
        start = tokens[index - 1] - (1.0 if index == 0 else 0.0)
        end = tokens[index]
        if arcs and arcs[-1][2] == owner:
            arcs[-1][1] = end
        else:
            arcs.append([start, end, owner])
    if len(arcs) > 1 and arcs[0][2] == arcs[-1][2]:
        last = arcs.pop()
        arcs[0][0] = last[0] - 1.0
    return [(float(a), float(b), str(o)) for a, b, o in arcs]


def ring_view(snapshot: DashboardSnapshot, size: float = 240.0) -> dict[str, Any]:
    """SVG geometry for the ring (arcs coloured by owner) and per-node share bars."""
    members = _members(snapshot)
    states = {m.node_id: m.state for m in members}
    owners = sorted({owner for _, owner in snapshot.vnodes} | {m.node_id for m in members
                                                                   if m.in_ring})
    colour = {node: f"own-{index % PALETTE_SIZE}" for index, node in enumerate(owners)}
    cx = cy = size / 2
    outer, inner = size / 2 - 4, size / 2 - 34
    paths = []
    arcs = ring_arcs(snapshot.vnodes)
    if len(arcs) == 1:  # one owner: a full annulus cannot be one SVG arc
        start, _, owner = arcs[0]
        arcs = [(start, start + 0.5, owner), (start + 0.5, start + 1.0, owner)]
    for start, end, owner in arcs:
        paths.append({
            "d": _arc_path(start, end, cx, cy, outer, inner),
            "owner": owner,
            "class": colour.get(owner, "own-0"),
            "down": states.get(owner, "dead") not in ("alive", "suspect"),
            "share_pct": round((end - start) * 100, 2),
        })
    vnode_counts: dict[str, int] = {}
    for _, owner in snapshot.vnodes:
        vnode_counts[owner] = vnode_counts.get(owner, 0) + 1
    rows = members_view(snapshot)
    max_keys = max([row["keys"] or 0 for row in rows] + [1])
    bars = [{
        "id": row["id"],
        "class": colour.get(row["id"], "own-0"),
        "state": row["state"],
        "vnodes": vnode_counts.get(row["id"], 0),
        "keys": row["keys"],
        "keys_pct": round(100 * (row["keys"] or 0) / max_keys, 1),
        "primary_pct": row["load_pct"],
        "replica_pct": row["replica_pct"],
    } for row in rows if row["in_ring"]]
    return {
        "size": size, "cx": cx, "cy": cy, "vnodes": len(snapshot.vnodes),
        "arcs": paths, "bars": bars,
        "legend": [{"id": node, "class": colour[node], "state": states.get(node, "unknown")}
                   for node in owners],
    }


# -- the timeline --------------------------------------------------------------------------------

_MEMBER_SEVERITY = {"alive": "ok", "suspect": "warn", "dead": "bad", "left": "info"}


def describe_event(kind: str, data: Mapping[str, Any]) -> tuple[str, str]:
    """C{(text, severity)} of an event for people; severity is ok, info, warn or bad."""
    node = str(data.get("node", "?"))
    if kind == "member":
        old, new = data.get("old"), data.get("new")
        if new is None:
            return f"{node} forgotten (was {old})", "info"
        if old is None:
            return f"{node} joined as {new}", _MEMBER_SEVERITY.get(str(new), "info")
        return f"{node} {old} → {new}", _MEMBER_SEVERITY.get(str(new), "info")
    count = int(data.get("count", 0))
    if kind == "hints_queued":
        return (f"{node} queued {_plural(count, 'hint')} for a down replica "
                f"({data.get('waiting', 0)} waiting)"), "warn"
    if kind == "hints_delivered":
        return (f"{node} delivered {_plural(count, 'hint')} "
                f"({data.get('waiting', 0)} still waiting)"), "ok"
    if kind == "read_repair":
        return f"{node} read-repaired {_plural(count, 'stale replica')}", "ok"
    if kind == "quorum_failure":
        parts = [_plural(int(data.get(op + "s", 0)), op) for op in ("read", "write")
                 if data.get(op + "s")]
        return f"{node}: {' and '.join(parts)} failed to reach quorum", "bad"
    if kind == "pause":
        return f"{node} paused its membership for {seconds_text(float(data.get('seconds', 0)))} (demo)", "warn"
    if kind == "resume":
        return f"{node} resumed its membership (demo)", "info"
    if kind.startswith("rebalance_"):
        return _describe_stream(kind[len("rebalance_"):], data)
    return f"{kind} {dict(data)}", "info"


def _movement_text(data: Mapping[str, Any]) -> str:
    move, subject = data.get("move"), data.get("subject")
    return f"{move} of {subject}" if move and subject else str(data.get("movement", "?"))


def _describe_stream(phase: str, data: Mapping[str, Any]) -> tuple[str, str]:
    route = f"{data.get('source', '?')} → {data.get('target', '?')}"
    what = f"{_movement_text(data)}: {route}"
    moved = f"{_plural(int(data.get('keys') or 0), 'key')}, {bytes_text(data.get('bytes') or 0)}"
    if phase == "start":
        return (f"{what} started streaming {_plural(int(data.get('ranges') or 0), 'range')} "
                f"({_share_text(data.get('share'))} of the ring)"), "info"
    if phase == "done":
        return f"{what} done: {moved} moved", "ok"
    if phase == "failed":
        return f"{what} stopped after {moved}: {data.get('error') or 'failed'}", "warn"
    percent = data.get("percent")
    return f"{what}: {moved}" + (f" ({percent}%)" if percent is not None else ""), "info"


def _share_text(share: Any) -> str:
    return f"{float(share) * 100:.1f}%" if isinstance(share, int | float) else "?"


def event_view(event: Event) -> dict[str, Any]:
    """An event as the browser gets it: the bus's fields plus time and words."""
    if event.kind == "traffic":
        return {"id": event.id, "kind": event.kind, "at": event.at, "data": dict(event.data)}
    text, severity = describe_event(event.kind, event.data)
    time_text, iso = _clock_text(event.at)
    return {"id": event.id, "kind": event.kind, "at": event.at, "data": dict(event.data),
            "text": text, "severity": severity, "time": time_text, "iso": iso}


def timeline_view(snapshot: DashboardSnapshot) -> list[dict[str, Any]]:
    """Retained events, newest first (at most L{TIMELINE_LIMIT})."""
    events = [e for e in snapshot.events if e.kind != "traffic"][-TIMELINE_LIMIT:]
    return [event_view(event) for event in reversed(events)]


# -- traffic charts ----------------------------------------------------------------------------


def chart(series: Mapping[str, Sequence[tuple[float, float | None]]], now: float, *,
          window: float = TRAFFIC_WINDOW_S, width: float = 300.0, height: float = 48.0,
          unit: str = "") -> dict[str, Any]:
    """Polylines for a sparkline chart of C{series} (name -> C{(t, value)}) over C{window}.

    Values are scaled to a shared maximum (at least 1); a missing value (None) breaks
    the line. Returns C{{"lines": [{"name", "segments": [points...]}], "max", "last"}}.
    """
    top = max([v for points in series.values() for t, v in points
               if v is not None and now - t <= window] + [1.0])
    lines = []
    last: dict[str, float | None] = {}
    for name, points in series.items():
        segments: list[str] = []
        current: list[str] = []
        for t, value in points:
            age = now - t
            if age > window or age < 0:
                continue
            if value is None:
                if len(current) > 1:
                    segments.append(" ".join(current))
                current = []
                continue
            x = round(width * (1 - age / window), 1)
            y = round(height - 2 - (height - 4) * value / top, 1)
            current.append(f"{x},{y}")
        if len(current) > 1:
            segments.append(" ".join(current))
        lines.append({"name": name, "segments": segments})
        last[name] = next((v for _, v in reversed(points)), None) if points else None
    return {"lines": lines, "max": round(top, 3), "last": last, "unit": unit,
            "width": width, "height": height, "window_s": window}


def traffic_view(snapshot: DashboardSnapshot) -> dict[str, Any]:
    """Ops/s and p50/p99 over the last minutes, for the cluster and each node."""
    samples = [s for s in snapshot.traffic if isinstance(s.get("t"), int | float)]
    now = snapshot.now_s

    def pick(extract: Callable[[Mapping[str, Any]], Any]) -> list[tuple[float, float | None]]:
        out = []
        for sample in samples:
            try:
                value = extract(sample)
            except (KeyError, TypeError):
                value = None
            out.append((float(sample["t"]), None if value is None else float(value)))
        return out

    cluster = {
        "ops": chart({"ops": pick(lambda s: s["cluster"]["ops"])}, now, unit="ops/s"),
        "latency": chart({"p50": pick(lambda s: s["cluster"]["p50_ms"]),
                          "p99": pick(lambda s: s["cluster"]["p99_ms"])}, now, unit="ms"),
        "now": dict(samples[-1]["cluster"]) if samples else {"ops": 0.0, "p50_ms": None,
                                                             "p99_ms": None},
    }
    node_ids = sorted({node for s in samples for node in s.get("nodes", {})})
    nodes = []
    for node in node_ids:
        latest = samples[-1].get("nodes", {}).get(node) if samples else None
        nodes.append({
            "id": node,
            "ops": chart({"ops": pick(lambda s, n=node: s["nodes"][n]["ops"])}, now,
                         width=200, height=36, unit="ops/s"),
            "latency": chart({"p50": pick(lambda s, n=node: s["nodes"][n]["p50_ms"]),
                              "p99": pick(lambda s, n=node: s["nodes"][n]["p99_ms"])}, now,
                             width=200, height=36, unit="ms"),
            "now": dict(latest) if latest else None,
        })
    commands: dict[str, float] = {}
    if samples:
        for figures in samples[-1].get("nodes", {}).values():
            for name, ops in figures.get("commands", {}).items():
                commands[name] = commands.get(name, 0.0) + float(ops)
    return {
        "window_s": TRAFFIC_WINDOW_S,
        "samples": len(samples),
        "cluster": cluster,
        "nodes": nodes,
        "commands": [{"name": name, "ops": round(ops, 1)}
                     for name, ops in sorted(commands.items(), key=lambda kv: (-kv[1], kv[0]))],
    }


# -- rebalancing -------------------------------------------------------------------------------

#: Most progress bars shown (running streams first, then the newest finished ones).
STREAMS_SHOWN = 12
#: Finished streams stay shown this long (and only those of the latest movement).
FINISHED_SHOWN_S = 600.0
_STREAM_STATES = {"running": ("streaming", "info"), "retrying": ("retrying", "warn"),
                  "done": ("done", "ok"), "failed": ("failed", "bad")}


def rebalance_view(snapshot: DashboardSnapshot) -> dict[str, Any]:
    """One progress bar per recent range stream: route, movement, keys and bytes moved,
    percentage when the total is known, state. Running streams first, then the finished
    streams of the latest movement (for L{FINISHED_SHOWN_S}); older movements' are gone."""
    def started(report: Mapping[str, Any]) -> float:
        value = report.get("started_at")
        return float(value) if isinstance(value, int | float) else 0.0

    def finished(report: Mapping[str, Any]) -> bool:
        return report.get("state") in ("done", "failed")

    def movement(report: Mapping[str, Any]) -> tuple[Any, Any]:
        return report.get("node"), report.get("movement")

    latest = movement(max(snapshot.streams, key=started)) if snapshot.streams else None

    def shown(report: Mapping[str, Any]) -> bool:
        if not finished(report):
            return True
        at = report.get("at")
        recent = not isinstance(at, int | float) or snapshot.now_s - at <= FINISHED_SHOWN_S
        return recent and movement(report) == latest

    reports = sorted((r for r in snapshot.streams if shown(r)),
                     key=lambda r: (finished(r), -started(r)))[:STREAMS_SHOWN]
    bars = []
    for report in reports:
        state = str(report.get("state", "running"))
        state_text, level = _STREAM_STATES.get(state, (state, "info"))
        percent = report.get("percent")
        percent = float(percent) if isinstance(percent, int | float) else None
        size = report.get("bytes") or 0
        at, started = report.get("at"), report.get("started_at")
        elapsed = (float(at) - float(started) if isinstance(at, int | float)
                   and isinstance(started, int | float) else None)
        bars.append({
            "id": str(report.get("stream", "")),
            "source": str(report.get("source", "?")),
            "target": str(report.get("target", "?")),
            "driver": str(report.get("node", "?")),
            "movement": _movement_text(report),
            "ranges": int(report.get("ranges") or 0),
            "ranges_text": (f"{_plural(int(report.get('ranges') or 0), 'range')}, "
                            f"{_share_text(report.get('share'))} of the ring"),
            "state": state,
            "state_text": state_text,
            "level": level,
            "keys": int(report.get("keys") or 0),
            "bytes": int(size),
            "bytes_text": bytes_text(size),
            "percent": percent,
            "width": round(min(100.0, percent if percent is not None else
                               (100.0 if state == "done" else 0.0)), 1),
            "elapsed_text": None if elapsed is None else seconds_text(max(0.0, elapsed)),
            "error": report.get("error") if state in ("failed", "retrying") else None,
        })
    active = sum(1 for bar in bars if bar["state"] in ("running", "retrying"))
    return {"bars": bars, "active": active}


# -- the whole page ------------------------------------------------------------------------------


def demo_view(snapshot: DashboardSnapshot) -> dict[str, Any]:
    """Whether the demo controls are on, and whether this node is paused."""
    paused = snapshot.paused_until
    return {
        "enabled": snapshot.admin,
        "paused": paused is not None,
        "paused_for_s": None if paused is None else round(max(0.0, paused - snapshot.now_s), 1),
        "nodes": [m.node_id for m in _members(snapshot) if m.state != "left"],
        "node_id": snapshot.node.node_id,
    }


def _stream(snapshot: DashboardSnapshot) -> dict[str, Any]:
    return {"epoch": snapshot.stream_epoch, "last_event_id": snapshot.last_event_id,
            "enabled": snapshot.stream_epoch is not None}


#: Each live part of the dashboard: name -> its view. Also the JSON routes C{/api/<name>}.
PARTS: Mapping[str, Callable[[DashboardSnapshot], Any]] = {
    "overview": overview_view,
    "members": members_view,
    "ring": ring_view,
    "timeline": timeline_view,
    "traffic": traffic_view,
    "demo": demo_view,
    "rebalance": rebalance_view,
}


def dashboard_view(snapshot: DashboardSnapshot, parts: Iterable[str] | None = None
                   ) -> dict[str, Any]:
    """The dashboard's model: every part (or those named), plus the event stream's position."""
    names = PARTS if parts is None else [p for p in parts if p in PARTS]
    view = {name: PARTS[name](snapshot) for name in names}
    view["stream"] = _stream(snapshot)
    return view


# -- reading a node (the one impure function here) -----------------------------------------------


def snapshot_dashboard(node: WebNode, host: str = "localhost", *, bus: EventBus | None = None,
                       watch: ClusterWatch | None = None, paused_until: float | None = None,
                       now_s: float | None = None) -> DashboardSnapshot:
    """Read everything the dashboard shows from C{node}, its bus and its watch, once."""
    base = snapshot_node(node, host)
    context = node.context
    cluster = getattr(context, "cluster", None) if context is not None else None
    vnodes: tuple[tuple[int, str], ...] = ()
    if cluster is not None:
        vnodes = tuple(cluster.ring.vnode_tokens())
    figures: dict[str, NodeFigures] = {}
    if watch is not None:
        for node_id, reading in watch.readings().items():
            counters = reading.counters
            figures[node_id] = NodeFigures(keys=counters.get("replica_records"),
                                           hints_waiting=counters.get("hints_stored"),
                                           ops=reading.ops)
    if base.mode == "single":
        # A lone node serves from its local keyspace, not the replica store.
        mine = figures.get(base.node_id, NodeFigures())
        figures[base.node_id] = NodeFigures(keys=base.keys, hints_waiting=mine.hints_waiting,
                                            ops=base.ops_per_sec)
    return DashboardSnapshot(
        node=base,
        now_s=base.now_ms / 1000 if now_s is None else now_s,
        vnodes=vnodes,
        figures=figures,
        events=tuple(bus.recent()) if bus is not None else (),
        traffic=tuple(watch.traffic) if watch is not None else (),
        admin=bool(getattr(node.config, "admin_token", None)),
        paused_until=paused_until,
        stream_epoch=bus.epoch if bus is not None else None,
        last_event_id=bus.last_id if bus is not None else 0,
        streams=tuple(dict(r) for r in getattr(watch, "streams", {}).values()),
    )
