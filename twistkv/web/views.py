"""View models: a node's state and its stored versions as plain, JSON-ready dicts.

The HTTP layer never formats node state inline. It takes a L{NodeSnapshot}
(plain values, read from the node in one go) and turns it into dicts here;
the same dict is rendered by Jinja2 for a browser and by C{json.dumps} for
C{/api/node}, so the dashboard and the API cannot drift apart (Tahoe-LAFS's
C{MultiFormatResource}). Everything below the snapshot is pure and is tested
without a node, a reactor or a request.

Binary safety: keys and values are bytes. A JSON document carries them as
UTF-8 text when they decode, otherwise as base64, and always says which with
an C{encoding} field, so a client never has to guess.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from twistkv import __version__
from twistkv.core.versioning import hlc_physical_ms

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from twistkv.config import NodeConfig
    from twistkv.core.record import Record, Version
    from twistkv.node.keyspace import LocalKeyspace
    from twistkv.node.metrics import NodeStats

__all__ = [
    "DEFAULT_CLUSTER_NAME",
    "MemberSnapshot",
    "NodeSnapshot",
    "WebNode",
    "advertised_address",
    "cluster_view",
    "encode_bytes",
    "health_view",
    "human_duration",
    "iso_timestamp",
    "node_view",
    "record_view",
    "sibling_view",
    "snapshot_node",
    "version_view",
    "write_view",
]

#: Until the cluster issue adds a configured name, every node calls its cluster this.
DEFAULT_CLUSTER_NAME = "twistkv"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class _Context(Protocol):
    keyspace: LocalKeyspace
    started_at: float


class _Committer(Protocol):
    @property
    def healthy(self) -> bool: ...


class WebNode(Protocol):
    """What the HTTP layer reads from a node (L{KVNodeService} provides it).

    Spelled out so tests can hand the web app a small in-memory node, and so
    the seam between C{twistkv.node} and C{twistkv.web} is visible.
    """

    config: NodeConfig
    stats: NodeStats
    registry: CollectorRegistry

    @property
    def context(self) -> _Context | None: ...

    @property
    def committer(self) -> _Committer | None: ...

    def now_ms(self) -> int: ...


@dataclass(frozen=True, slots=True)
class MemberSnapshot:
    """One cluster member as this node sees it."""

    node_id: str
    peer_address: str
    state: str
    state_for_s: float
    incarnation: int
    client_address: str | None
    http_address: str | None
    version: str | None
    in_ring: bool
    is_self: bool
    primary_share: float
    replica_share: float


@dataclass(frozen=True, slots=True)
class NodeSnapshot:
    """One node's state at one moment, as plain values.

    @ivar host: the host name the HTTP client used to reach us; it stands in
        for wildcard listen interfaces when advertising addresses.
    """

    node_id: str
    version: str
    now_ms: int
    started_at_ms: int
    keys: int
    ops_per_sec: float
    commands_total: int
    connected_clients: int
    http_requests_total: int
    storage_engine: str
    fsync: str
    storage_healthy: bool
    storage_bytes: int
    client_endpoint: str
    http_endpoint: str | None
    peer_endpoint: str
    cluster_name: str
    host: str
    mode: str = "single"
    replication: tuple[int, int, int] = (1, 1, 1)
    members: tuple[MemberSnapshot, ...] = ()
    cluster_counters: tuple[tuple[str, int], ...] = ()
    #: Whether the node has joined its cluster and will coordinate requests.
    joined: bool = True
    #: Ring status and range movements in progress (JSON-shaped), in cluster mode.
    rebalance: Any = None


def _snapshot_members(cluster: Any, now_s: float) -> tuple[MemberSnapshot, ...]:
    ring = cluster.ring
    n = cluster.options.n
    primary = ring.ownership_share(1)
    replicated = ring.ownership_share(n)
    members = []
    for member in sorted(cluster.membership.members(), key=lambda m: m.node_id):
        meta = member.metadata
        members.append(MemberSnapshot(
            node_id=member.node_id,
            peer_address=member.address,
            state=member.state.value,
            state_for_s=round(max(0.0, now_s - member.state_since), 1),
            incarnation=member.incarnation,
            client_address=meta.get("client"),
            http_address=meta.get("http"),
            version=meta.get("version"),
            in_ring=member.node_id in ring,
            is_self=member.node_id == cluster.node_id,
            primary_share=round(primary.get(member.node_id, 0.0), 4),
            replica_share=round(replicated.get(member.node_id, 0.0), 4),
        ))
    return tuple(members)


def snapshot_node(node: WebNode, host: str = "localhost") -> NodeSnapshot:
    """Read everything the views need from C{node}, once."""
    config, stats = node.config, node.stats
    now_ms = node.now_ms()
    context = node.context
    started_at_ms = int(context.started_at * 1000) if context is not None else now_ms
    committer = node.committer
    return NodeSnapshot(
        node_id=config.node_id,
        version=__version__,
        now_ms=now_ms,
        started_at_ms=started_at_ms,
        keys=context.keyspace.key_count() if context is not None else 0,
        ops_per_sec=stats.ops_per_sec(),
        commands_total=stats.commands_total(),
        connected_clients=stats.connected_clients(),
        http_requests_total=sum(stats.http_requests.values()),
        storage_engine=config.storage,
        fsync=config.fsync,
        storage_healthy=committer is not None and committer.healthy,
        storage_bytes=stats.storage_bytes(),
        client_endpoint=config.listen,
        http_endpoint=config.http,
        peer_endpoint=config.peer_listen,
        cluster_name=getattr(config, "cluster_name", DEFAULT_CLUSTER_NAME),
        host=host,
        **_cluster_fields(node, context, now_ms),
    )


def _cluster_fields(node: WebNode, context: Any, now_ms: int) -> dict[str, Any]:
    """Membership, replication and counters when the node runs a cluster runtime."""
    cluster = getattr(context, "cluster", None) if context is not None else None
    if cluster is None:
        return {}
    config = node.config
    clustered = context.keyspace is cluster.keyspace
    return {
        "mode": "cluster" if clustered else "single",
        "replication": (config.replicas, config.read_quorum, config.write_quorum),
        "members": _snapshot_members(cluster, now_ms / 1000),
        "joined": bool(cluster.ready),
        "rebalance": (
            cluster.rebalance_status(detail=False) if hasattr(cluster, "rebalance_status") else None
        ),
        "cluster_counters": tuple(sorted(cluster.stats().items())),
    }


# -- node views ---------------------------------------------------------------


def _uptime_s(snapshot: NodeSnapshot) -> float:
    return round(max(0, snapshot.now_ms - snapshot.started_at_ms) / 1000, 3)


def node_view(snapshot: NodeSnapshot) -> dict[str, Any]:
    """The landing page's model, also served as JSON at C{/api/node}."""
    uptime = _uptime_s(snapshot)
    return {
        "node_id": snapshot.node_id,
        "cluster_name": snapshot.cluster_name,
        "version": snapshot.version,
        "uptime_s": uptime,
        "uptime_human": human_duration(uptime),
        "keys": snapshot.keys,
        "ops_per_sec": round(snapshot.ops_per_sec, 1),
        "commands_total": snapshot.commands_total,
        "connected_clients": snapshot.connected_clients,
        "http_requests_total": snapshot.http_requests_total,
        "storage": _storage_view(snapshot),
        "addresses": _addresses(snapshot),
    }


def health_view(snapshot: NodeSnapshot) -> dict[str, Any]:
    """What a load balancer or Kubernetes probe reads at C{/health}."""
    return {
        "status": "ok" if snapshot.storage_healthy else "unhealthy",
        "node_id": snapshot.node_id,
        "uptime_s": _uptime_s(snapshot),
        "storage": _storage_view(snapshot),
        "joined": snapshot.joined,
    }


def cluster_view(snapshot: NodeSnapshot, keys: Mapping[str, int | None] | None = None,
                 vnodes: Mapping[str, int] | None = None) -> dict[str, Any]:
    """C{/cluster}: membership, replication settings and, per node, its ring share, vnodes
    and keys. A lone node answers itself as the only member, with fewer fields (no ring,
    membership or cluster counters: docs/http-api.md).

    @param keys: node id -> records its replica holds, as its latest C{STATS} reading said
        (the dashboard's cluster watch); this node's own count is read directly.
    @param vnodes: node id -> its virtual nodes on the ring.
    """
    addresses = _addresses(snapshot)
    if snapshot.members:
        n, r, w = snapshot.replication
        keys = keys or {}
        vnodes = vnodes or {}
        return {
            "cluster_name": snapshot.cluster_name,
            "mode": snapshot.mode,
            "node_id": snapshot.node_id,
            "replication": {"n": n, "r": r, "w": w},
            "nodes": [_member_view(snapshot, member, keys.get(member.node_id),
                                   vnodes.get(member.node_id, 0))
                      for member in snapshot.members],
            "counters": dict(snapshot.cluster_counters),
            "rebalance": snapshot.rebalance,
        }
    return {
        "cluster_name": snapshot.cluster_name,
        "mode": "single",
        "node_id": snapshot.node_id,
        "replication": {"n": 1, "r": 1, "w": 1},
        "nodes": [
            {
                "id": snapshot.node_id,
                "state": "alive",
                "client_address": addresses["client"],
                "http_address": addresses["http"],
                "peer_address": addresses["peer"],
                "keys": snapshot.keys,
                "version": snapshot.version,
                "uptime_s": _uptime_s(snapshot),
                "is_self": True,
            }
        ],
    }


def _member_view(snapshot: NodeSnapshot, member: MemberSnapshot, keys: int | None,
                 vnodes: int) -> dict[str, Any]:
    """One entry of C{/cluster}'s C{nodes}; uptime is known for this node only, and another
    node's keys once the cluster watch has read its C{STATS} (None before, or while it is
    unreachable)."""
    return {
        "id": member.node_id,
        "state": member.state,
        "state_for_s": member.state_for_s,
        "incarnation": member.incarnation,
        "client_address": member.client_address,
        "http_address": member.http_address,
        "peer_address": member.peer_address,
        "keys": snapshot.keys if member.is_self else keys,
        "version": member.version,
        "uptime_s": _uptime_s(snapshot) if member.is_self else None,
        "in_ring": member.in_ring,
        "vnodes": vnodes,
        "primary_share": member.primary_share,
        "replica_share": member.replica_share,
        "is_self": member.is_self,
    }


def _storage_view(snapshot: NodeSnapshot) -> dict[str, Any]:
    return {
        "healthy": snapshot.storage_healthy,
        "engine": snapshot.storage_engine,
        "fsync": snapshot.fsync,
        "approximate_bytes": snapshot.storage_bytes,
    }


def _addresses(snapshot: NodeSnapshot) -> dict[str, str | None]:
    host = snapshot.host
    return {
        "client": advertised_address(snapshot.client_endpoint, host),
        "http": advertised_address(snapshot.http_endpoint, host)
        if snapshot.http_endpoint is not None
        else None,
        "peer": advertised_address(snapshot.peer_endpoint, host),
    }


_TCP_ENDPOINT = re.compile(r"^(?:tcp|tcp6|ssl):(?:port=)?(\d+)(?::(.*))?$")
_UNESCAPED_COLON = re.compile(r"(?<!\\):")
_WILDCARDS = {"", "0.0.0.0", "::", "[::]"}


def advertised_address(endpoint: str, host: str) -> str:
    """C{host:port} a client can dial, from a server endpoint string.

    A listen endpoint says which port, and at best which interface; a
    wildcard interface cannot be dialled, so the host the HTTP client used
    to reach this node stands in for it. Endpoints that are not TCP (unix
    sockets, systemd) are returned unchanged.
    """
    match = _TCP_ENDPOINT.match(endpoint)
    if match is None:
        return endpoint
    port, rest = match.group(1), match.group(2) or ""
    interface = ""
    for option in _UNESCAPED_COLON.split(rest):
        name, _, value = option.partition("=")
        if name == "interface":
            interface = value.replace("\\:", ":")
    if interface in _WILDCARDS:
        interface = host
    if ":" in interface and not interface.startswith("["):
        interface = f"[{interface}]"
    return f"{interface}:{port}"


def human_duration(seconds: float) -> str:
    """A short human reading of a duration (C{"3d 4h 5m"}, C{"42s"})."""
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


# -- version views ------------------------------------------------------------


def encode_bytes(data: bytes) -> tuple[str, str]:
    """C{(text, encoding)}: UTF-8 text when C{data} decodes, else base64."""
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


def iso_timestamp(hlc: int) -> str:
    """ISO 8601 UTC time of an HLC timestamp's physical part, to the millisecond."""
    moment = _EPOCH + timedelta(milliseconds=hlc_physical_ms(hlc))
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def version_view(version: Version) -> dict[str, Any]:
    """A version's causal metadata: what a client needs to order or resolve it."""
    return {"vector_clock": dict(version.clock), "hlc": version.hlc, "node": version.node}


def _ttl_ms(version: Version, now_ms: int) -> int | None:
    if not version.expires_at_ms:
        return None
    return max(0, version.expires_at_ms - now_ms)


def sibling_view(version: Version, now_ms: int) -> dict[str, Any]:
    """One stored version (sibling) with its value, causal metadata and flags."""
    return _sibling_view(version, now_ms)


def _sibling_view(version: Version, now_ms: int) -> dict[str, Any]:
    text, encoding = encode_bytes(version.value)
    return {
        "value": None if version.tombstone else text,
        "encoding": encoding,
        "version": version_view(version),
        "timestamp": iso_timestamp(version.hlc),
        "ttl_ms": _ttl_ms(version, now_ms),
        "tombstone": version.tombstone,
        "expired": version.expired(now_ms),
    }


def record_view(
    key: bytes, live: Version, record: Record | None, now_ms: int
) -> dict[str, Any]:
    """C{GET /kv/<key>?format=json}: the live value, its version, and every sibling.

    C{siblings} lists all versions the replica holds, expired and tombstoned
    ones included and flagged, newest first; on a single node it has one
    entry, in a cluster it shows the conflicts a plain read hides.
    """
    key_text, key_encoding = encode_bytes(key)
    value_text, value_encoding = encode_bytes(live.value)
    versions = record.versions if record is not None else (live,)
    ordered = sorted(versions, key=lambda v: (v.hlc, v.node), reverse=True)
    return {
        "key": key_text,
        "key_encoding": key_encoding,
        "value": value_text,
        "encoding": value_encoding,
        "version": version_view(live),
        "timestamp": iso_timestamp(live.hlc),
        "ttl_ms": _ttl_ms(live, now_ms),
        "siblings": [_sibling_view(v, now_ms) for v in ordered],
    }


def write_view(key: bytes, version: Version, created: bool, now_ms: int) -> dict[str, Any]:
    """The answer to a PUT: which version the write created."""
    key_text, key_encoding = encode_bytes(key)
    return {
        "key": key_text,
        "key_encoding": key_encoding,
        "created": created,
        "version": version_view(version),
        "timestamp": iso_timestamp(version.hlc),
        "ttl_ms": _ttl_ms(version, now_ms),
    }
