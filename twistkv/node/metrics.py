"""A node's counters, and their Prometheus exposition.

The request path only bumps plain Python integers (a dict lookup and an
add); turning them into Prometheus metric families happens at scrape time in
L{NodeCollector}. That keeps C{prometheus_client}'s per-observation locking
off the hot path, as the issue asks ("metrics that are cheap counters"), and
lets several nodes live in one process (tests) with separate registries.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector, CollectorRegistry

__all__ = ["LATENCY_BUCKETS", "CommandStat", "NodeStats", "NodeCollector", "new_registry"]

#: Upper bounds in seconds; tuned for a store whose requests take 20 us to 5 ms.
LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)


_FIRST_BOUND = LATENCY_BUCKETS[0]


class CommandStat:
    """Calls, errors and a latency histogram for one command."""

    __slots__ = ("calls", "errors", "seconds", "buckets")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Zero in place: open connections keep (and go on counting into) this object."""
        self.calls = 0
        self.errors = 0
        self.seconds = 0.0
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)

    def observe(self, seconds: float) -> None:
        """Record one completed call that took C{seconds}."""
        self.calls += 1
        self.seconds += seconds
        # Nearly every command is faster than the first bound: skip the bisection then.
        self.buckets[0 if seconds < _FIRST_BOUND else bisect_left(LATENCY_BUCKETS, seconds)] += 1

    def observe_many(self, count: int, seconds_each: float) -> None:
        """Record C{count} completed calls that took C{seconds_each} apiece.

        For a run of pipelined commands executed together (L{twistkv.node.protocol}):
        their total time is known, how it splits between them is not, so each gets
        its share (or, when they all waited for one fsync, the whole wait).
        """
        self.calls += count
        self.seconds += seconds_each * count
        self.buckets[bisect_left(LATENCY_BUCKETS, seconds_each)] += count

    def quantile(self, q: float) -> float:
        """Approximate latency quantile from the buckets (upper bound of the bucket)."""
        total = sum(self.buckets)
        if not total:
            return 0.0
        rank = q * total
        seen = 0
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), self.buckets, strict=True):
            seen += count
            if seen >= rank:
                return bound
        return float("inf")


class NodeStats:
    """Every counter of one node, read by INFO, /metrics and the dashboard."""

    def __init__(self) -> None:
        self.commands: dict[str, CommandStat] = {}
        self.connections_total = 0
        self.rejected_connections = 0
        self.protocol_errors = 0
        self.keyspace_hits = 0
        self.keyspace_misses = 0
        self.http_requests: dict[tuple[str, int], int] = {}
        self._ops_window: tuple[float, int] = (0.0, 0)
        self._ops_per_sec = 0.0
        #: Wired by the node service once storage exists.
        self.committer_stats: Callable[[], dict[str, Any]] = dict
        self.storage_bytes: Callable[[], int] = lambda: 0
        self.storage_healthy: Callable[[], bool] = lambda: True
        self.connected_clients: Callable[[], int] = lambda: 0
        self.key_count: Callable[[], int] = lambda: 0
        self.cluster_stats: Callable[[], dict[str, int]] = dict

    def command(self, name: str) -> CommandStat:
        """The stat object for C{name}, created on first use."""
        stat = self.commands.get(name)
        if stat is None:
            stat = self.commands[name] = CommandStat()
        return stat

    def commands_total(self) -> int:
        return sum(stat.calls for stat in self.commands.values())

    def sample(self, now: float) -> None:
        """Update the ops/s figure; called once a second by the node."""
        then, count = self._ops_window
        total = self.commands_total()
        if then and now > then:
            self._ops_per_sec = (total - count) / (now - then)
        self._ops_window = (now, total)

    def ops_per_sec(self) -> float:
        return self._ops_per_sec

    def reset(self) -> None:
        """CONFIG RESETSTAT: zero the request counters (in place, so that connections holding
        a command's stat object keep counting into the one INFO and /metrics read)."""
        for stat in self.commands.values():
            stat.reset()
        self.rejected_connections = 0
        self.protocol_errors = 0
        self.keyspace_hits = 0
        self.keyspace_misses = 0
        self._ops_window = (0.0, 0)


class NodeCollector(Collector):
    """Exposes a L{NodeStats} as Prometheus metric families at scrape time."""

    def __init__(self, stats: NodeStats, node_id: str) -> None:
        self._stats = stats
        self._node_id = node_id

    def collect(self) -> Iterator[Any]:
        stats = self._stats
        calls = CounterMetricFamily(
            "twistkv_commands", "Client commands completed, by command.", labels=["command"]
        )
        errors = CounterMetricFamily(
            "twistkv_command_errors", "Client commands answered with an error.", labels=["command"]
        )
        latency = HistogramMetricFamily(
            "twistkv_command_latency_seconds",
            "Time from parsing a command to its reply being ready (durability included).",
            labels=["command"],
        )
        for name, stat in sorted(stats.commands.items()):
            calls.add_metric([name], stat.calls)
            errors.add_metric([name], stat.errors)
            cumulative = 0
            buckets = []
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), stat.buckets, strict=True):
                cumulative += count
                buckets.append((_bound(bound), cumulative))
            latency.add_metric([name], buckets, stat.seconds)
        yield calls
        yield errors
        yield latency
        yield CounterMetricFamily(
            "twistkv_connections", "Client connections accepted.", value=stats.connections_total
        )
        yield CounterMetricFamily(
            "twistkv_rejected_connections",
            "Client connections refused (over --max-clients).",
            value=stats.rejected_connections,
        )
        yield CounterMetricFamily(
            "twistkv_protocol_errors",
            "Connections closed for unparseable input.",
            value=stats.protocol_errors,
        )
        yield GaugeMetricFamily(
            "twistkv_connected_clients", "Open client connections.", value=stats.connected_clients()
        )
        yield GaugeMetricFamily("twistkv_keys", "Keys stored on this node.", value=stats.key_count())
        yield GaugeMetricFamily(
            "twistkv_storage_bytes", "Approximate bytes used by the store.", value=stats.storage_bytes()
        )
        committer = stats.committer_stats()
        yield CounterMetricFamily(
            "twistkv_group_commits", "WAL syncs, each covering a group of writes.",
            value=committer.get("groups", 0),
        )
        yield CounterMetricFamily(
            "twistkv_group_commit_ops", "Writes covered by group commits.",
            value=committer.get("ops", 0),
        )
        yield CounterMetricFamily(
            "twistkv_fsync_seconds", "Time spent in WAL fsync.",
            value=committer.get("sync_seconds", 0.0),
        )
        http = CounterMetricFamily(
            "twistkv_http_requests", "HTTP API requests by route and status.",
            labels=["route", "status"],
        )
        for (route, status), count in sorted(stats.http_requests.items()):
            http.add_metric([route, str(status)], count)
        yield http
        for name, value in sorted(stats.cluster_stats().items()):
            if name.endswith(("_stored", "_bytes")) or name == "ring_nodes":
                yield GaugeMetricFamily(f"twistkv_cluster_{name}", f"Cluster gauge {name}.", value=value)
            else:
                yield CounterMetricFamily(f"twistkv_cluster_{name}", f"Cluster counter {name}.", value=value)
        info = GaugeMetricFamily("twistkv_node_info", "This node's identity.", labels=["node_id"])
        info.add_metric([self._node_id], 1)
        yield info


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def new_registry(stats: NodeStats, node_id: str) -> CollectorRegistry:
    """A registry holding only this node's metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(stats, node_id))
    return registry
