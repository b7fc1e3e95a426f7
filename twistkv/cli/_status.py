"""C{twistkv status}: health, nodes and metrics of the whole cluster (seed 003's dashboard).

The answering node's C{MEMBERS} gives the nodes and their states. Every live node is then
asked, in parallel and within the timeout, for C{INFO} (requests, ops/s) on its client port
and for C{/metrics} (the command latency histogram) on its HTTP port; a node that does not
answer is shown without metrics, never fails the command.
"""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import redis

from twistkv.cli._client import Address, connect, info, parse_address
from twistkv.cli._data import fetch_members
from twistkv.cli._errors import CLIError, ServerError
from twistkv.cli._output import Outcome, format_ms, format_seconds, iso_utc, table

__all__ = ["status", "parse_metrics", "LatencyHistogram", "render_status"]

#: Commands left out of the latency figures: introspection, not data traffic.
ADMIN_COMMANDS = frozenset({
    "INFO", "MEMBERS", "RING", "WHERE", "VERSIONS", "CLIENT", "HELLO", "COMMAND", "CONFIG",
    "PING", "HELP", "CONSISTENCY", "SELECT", "ECHO", "TIME", "QUIT", "DBSIZE", "KEYS", "SCAN",
})

_SAMPLE = re.compile(
    r'^twistkv_command_latency_seconds_(bucket|sum|count)\{([^}]*)\}\s+(\S+)'
)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass
class LatencyHistogram:
    """Server-side command latency, merged over commands and nodes (Prometheus buckets)."""

    count: float = 0.0
    total: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count

    def merge(self, other: LatencyHistogram) -> None:
        self.count += other.count
        self.total += other.total
        for le, n in other.buckets.items():
            self.buckets[le] = self.buckets.get(le, 0.0) + n

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def quantile(self, q: float) -> float | None:
        """Upper bound of the bucket holding the C{q} quantile (None without samples)."""
        if not self.count:
            return None
        rank = q * self.count
        for le in sorted(self.buckets):
            if self.buckets[le] >= rank:
                return le
        return None


def parse_metrics(body: str, exclude: frozenset[str] = ADMIN_COMMANDS) -> LatencyHistogram:
    """The latency histogram of a node's C{/metrics} text, data commands only."""
    hist = LatencyHistogram()
    for line in body.splitlines():
        match = _SAMPLE.match(line)
        if not match:
            continue
        kind, labels_text, value_text = match.groups()
        labels = dict(_LABEL.findall(labels_text))
        if labels.get("command", "").upper() in exclude:
            continue
        try:
            value = float(value_text)
        except ValueError:
            continue
        if kind == "sum":
            hist.total += value
        elif kind == "count":
            hist.count += value
        else:
            le = labels.get("le", "+Inf")
            bound = float("inf") if le == "+Inf" else float(le)
            hist.buckets[bound] = hist.buckets.get(bound, 0.0) + value
    return hist


@dataclass
class NodeReport:
    """What one live node said about itself (None where it did not answer)."""

    info: dict[str, Any] | None = None
    latency: LatencyHistogram | None = None
    error: str | None = None


def _fetch_info(address: str, timeout: float) -> dict[str, Any]:
    client = connect(parse_address(address), timeout=timeout)
    try:
        return info(client, address)
    finally:
        client.close()


def _fetch_latency(http: str, timeout: float) -> LatencyHistogram:
    with urllib.request.urlopen(f"http://{http}/metrics", timeout=timeout) as reply:  # noqa: S310
        return parse_metrics(reply.read().decode("utf-8", errors="replace"))


def _report(member: dict[str, Any], timeout: float,
            own_info: dict[str, Any] | None) -> NodeReport:
    report = NodeReport()
    try:
        if member.get("self") and own_info is not None:
            report.info = own_info
        elif member.get("client"):
            report.info = _fetch_info(member["client"], timeout)
    except CLIError as exc:
        report.error = exc.message
    except Exception as exc:  # noqa: BLE001 - one silent node must not fail status
        report.error = str(exc)
    if member.get("http"):
        try:
            report.latency = _fetch_latency(member["http"], timeout)
        except Exception:  # noqa: BLE001 - latency is optional (HTTP may be off)
            report.latency = None
    return report


def status(client: redis.Redis, address: Address | str, timeout: float = 5.0,
           now: Callable[[], float] = time.time) -> Outcome:
    """Gather and render the cluster status as seen from C{address}."""
    own = info(client, address)
    try:
        members = fetch_members(client, address)
    except ServerError:  # a node without the cluster runtime: just itself
        members = [{"id": str(own.get("node_id", "?")), "state": "alive", "since_s": 0.0,
                    "client": str(address), "address": "", "http": "", "self": True,
                    "in_ring": True, "incarnation": 0}]
    live = [m for m in members if m.get("state") in ("alive", "suspect")]
    reports: dict[str, NodeReport] = {}
    if live:
        with ThreadPoolExecutor(max_workers=min(16, len(live))) as pool:
            futures = {m["id"]: pool.submit(_report, m, min(timeout, 3.0), own) for m in live}
            reports = {node: f.result() for node, f in futures.items()}
    data = build_status(members, own, reports, now(), str(address))
    return Outcome(data, render_status(data))


def build_status(members: list[dict[str, Any]], own: dict[str, Any],
                 reports: dict[str, NodeReport], now: float, address: str) -> dict[str, Any]:
    """The JSON-ready status (pure: easy to test without a cluster)."""
    counted = [m for m in members if m.get("state") != "left"]
    states = {s: sum(1 for m in counted if m.get("state") == s)
              for s in ("alive", "suspect", "dead")}
    total = len(counted)
    latency = LatencyHistogram()
    requests = 0
    ops = 0.0
    reporting = 0
    nodes = []
    for m in members:
        state = str(m.get("state", "unknown"))
        since = float(m.get("since_s") or 0.0)
        last_seen = now if state == "alive" or m.get("self") else now - since
        report = reports.get(m["id"])
        node: dict[str, Any] = {
            "id": m["id"], "state": state, "self": bool(m.get("self")),
            "client": m.get("client") or None, "peer": m.get("address") or None,
            "http": m.get("http") or None, "state_for_s": since,
            "last_seen": iso_utc(last_seen), "requests": None, "ops_per_sec": None,
            "keys": None, "avg_latency_ms": None, "error": None,
        }
        if report is not None:
            node["error"] = report.error
            if report.info is not None:
                reporting += 1
                node["requests"] = int(report.info.get("total_commands_processed", 0))
                node["ops_per_sec"] = float(report.info.get("instantaneous_ops_per_sec", 0.0))
                node["keys"] = report.info.get("replica_records")
                requests += node["requests"]
                ops += node["ops_per_sec"]
            if report.latency is not None:
                latency.merge(report.latency)
                mean = report.latency.mean
                node["avg_latency_ms"] = None if mean is None else round(mean * 1000, 3)
        nodes.append(node)

    def ms(value: float | None) -> float | None:
        return None if value is None or value == float("inf") else round(value * 1000, 3)

    return {
        "seen_from": {"address": address, "node_id": own.get("node_id")},
        "health": {"total": total, **states,
                   "left": sum(1 for m in members if m.get("state") == "left"),
                   "availability": (states["alive"] / total) if total else None},
        "cluster": {
            "name": own.get("cluster_name"), "mode": own.get("mode"),
            "replicas": own.get("replicas"), "read_quorum": own.get("read_quorum"),
            "write_quorum": own.get("write_quorum"),
        },
        "nodes": nodes,
        "metrics": {
            "nodes_reporting": reporting,
            "total_requests": requests,
            "ops_per_sec": round(ops, 1),
            "avg_latency_ms": ms(latency.mean),
            "p50_latency_ms": ms(latency.quantile(0.5)),
            "p99_latency_ms": ms(latency.quantile(0.99)),
            "latency_samples": int(latency.count),
        },
    }


def render_status(data: dict[str, Any]) -> str:
    """Seed 003's status screen: health line, nodes, metrics."""
    health = data["health"]
    avail = health["availability"]
    parts = [f"{health['total']} total nodes", f"{health['alive']} alive"]
    if health["suspect"]:
        parts.append(f"{health['suspect']} suspect")
    parts.append(f"{health['dead']} dead")
    line = ", ".join(parts)
    line += f" ({avail * 100:.1f}% availability)" if avail is not None else ""
    if health["left"]:
        line += f"; {health['left']} left"
    out = ["=== Cluster Status ===", f"Health: {line}"]
    c = data["cluster"]
    seen = data["seen_from"]
    if c.get("replicas"):
        out.append(f"Cluster: {c.get('name')} ({c.get('mode')} mode), N={c.get('replicas')} "
                   f"R={c.get('read_quorum')} W={c.get('write_quorum')}; seen from "
                   f"{seen.get('node_id')} at {seen['address']}")
    out += ["", "=== Nodes ==="]
    out.append(table(
        ["NODE", "CLIENT", "STATE", "LAST SEEN", "FOR", "REQUESTS", "OPS/S", "LATENCY"],
        [[f"{n['id']}{' *' if n['self'] else ''}", n["client"] or "-", n["state"].upper(),
          n["last_seen"], format_seconds(n["state_for_s"]),
          "-" if n["requests"] is None else n["requests"],
          "-" if n["ops_per_sec"] is None else f"{n['ops_per_sec']:.1f}",
          "-" if n["avg_latency_ms"] is None else format_ms(n["avg_latency_ms"] / 1000)]
         for n in data["nodes"]],
        indent="  ", right=[5, 6, 7],
    ))
    m = data["metrics"]
    out += ["", "=== Metrics ==="]
    out.append(f"Total requests: {m['total_requests']}"
               f" (from {m['nodes_reporting']} of {health['alive'] + health['suspect']} live nodes)")
    out.append(f"Ops per sec: {m['ops_per_sec']:.1f}")
    if m["avg_latency_ms"] is not None:
        quantiles = [f"{name} <= {format_ms(m[field] / 1000)}"
                     for name, field in (("p50", "p50_latency_ms"), ("p99", "p99_latency_ms"))
                     if m[field] is not None]
        tail = f" ({', '.join(quantiles)})" if quantiles else ""
        out.append(f"Average latency: {format_ms(m['avg_latency_ms'] / 1000)}{tail},"
                   " server-side, data commands")
    else:
        out.append("Average latency: - (no data commands yet, or /metrics not reachable)")
    errors = [f"{n['id']}: {n['error']}" for n in data["nodes"] if n.get("error")]
    if errors:
        out += ["", "Not answering: " + "; ".join(errors)]
    return "\n".join(out)
