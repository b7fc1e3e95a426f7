"""A node's configuration: one frozen object built from the command line.

Everything a node needs to start is in L{NodeConfig}, so tests can build a
node without parsing options or touching ``os.environ`` (Tahoe-LAFS's
``config_from_string`` idea).
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "NodeConfig",
    "NodeIdError",
    "DEFAULT_CLIENT_PORT",
    "DEFAULT_HTTP_PORT",
    "DEFAULT_PEER_PORT",
    "resolve_node_id",
    "valid_node_id",
]

DEFAULT_CLIENT_PORT = 7379
DEFAULT_HTTP_PORT = 8379
DEFAULT_PEER_PORT = 7380

#: Node ids appear in logs, file names, peer-protocol header fields and
#: vector clocks, so they are kept to a safe, short alphabet.
_NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")

NODE_ID_FILE = "NODE_ID"


class NodeIdError(ValueError):
    """The requested node id is malformed or contradicts the data directory."""


def valid_node_id(node_id: str) -> bool:
    """Whether ``node_id`` is acceptable (1-63 chars of ``[A-Za-z0-9._-]``)."""
    return bool(_NODE_ID.match(node_id))


def resolve_node_id(data_dir: Path, requested: str | None) -> str:
    """Return the node id for ``data_dir``, persisting it on first use.

    A data directory belongs to exactly one node for its whole life: replicas
    are identified by node id in vector clocks and hints, so opening node
    n1's data as n2 would silently corrupt causality. A requested id that
    contradicts the one stored is therefore refused.
    """
    if requested is not None and not valid_node_id(requested):
        raise NodeIdError(
            f"invalid node id {requested!r}: use 1-63 characters from A-Z a-z 0-9 . _ -"
        )
    id_file = data_dir / NODE_ID_FILE
    if id_file.exists():
        stored = id_file.read_text(encoding="utf-8").strip()
        if requested is not None and requested != stored:
            raise NodeIdError(
                f"data dir {data_dir} belongs to node {stored!r}, not {requested!r}; "
                f"use --node-id {stored} or another --data-dir"
            )
        return stored
    node_id = requested or _generated_node_id()
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = id_file.with_suffix(".tmp")
    tmp.write_text(node_id + "\n", encoding="utf-8")
    os.replace(tmp, id_file)
    return node_id


def _generated_node_id() -> str:
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname().split(".")[0])[:40] or "node"
    if not host[0].isalnum():
        host = "n" + host
    return f"{host}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class NodeConfig:
    """Everything one node needs; see C{twistd kvnode --help} for meanings."""

    node_id: str
    data_dir: Path
    log_dir: Path | None = None
    listen: str = f"tcp:{DEFAULT_CLIENT_PORT}"
    http: str | None = f"tcp:{DEFAULT_HTTP_PORT}"
    peer_listen: str = f"tcp:{DEFAULT_PEER_PORT}"
    storage: str = "rocksdb"
    fsync: str = "always"
    #: 16 MiB: large enough for any cache/session payload, small enough that
    #: one value cannot stall a node's reactor for long or blow up a peer
    #: message (Riak advises < 1 MB objects and caps them at 50 MB).
    max_value_bytes: int = 16 * 1024 * 1024
    max_clients: int = 10_000
    #: RocksDB's row cache bound (L{twistkv.storage.rocks.RocksStore}); 0 = none.
    row_cache_bytes: int = 32 * 1024 * 1024
    seeds: tuple[str, ...] = ()
    #: Nodes only talk to peers of the same cluster name (checked in HELLO).
    cluster_name: str = "twistkv"
    #: Shared secret proving cluster membership in the peer handshake (HMAC); None = off.
    cluster_secret: bytes | None = None
    #: host:port other nodes dial to reach this node's peer port; None = derived.
    advertise: str | None = None
    #: Replication factor N and default read/write quorums R and W.
    replicas: int = 3
    read_quorum: int = 2
    write_quorum: int = 2
    #: Seconds a client request waits for its quorum before answering UNAVAILABLE.
    request_timeout: float = 2.0
    #: Seconds of silence (after failed direct and indirect probes) before a node is dead.
    suspicion_timeout: float = 4.0
    #: Seconds between background anti-entropy exchanges (0 = off) and keys/s they repair.
    antientropy_interval: float = 60.0
    antientropy_rate: int = 100
    #: Bytes/s a range movement (join, leave, remove) may stream (0 = unlimited), and
    #: seconds a node keeps ranges it no longer owns before dropping them.
    rebalance_rate: int = 8 * 1024 * 1024
    rebalance_drop_delay: float = 60.0
    #: Token that unlocks the dashboard's demo controls (pause a node); None = controls off.
    admin_token: str | None = None
    enable_flushdb: bool = False
    #: Seconds between active-expiry sweeps (Redis runs its cycle 10x/s).
    expiry_interval: float = 0.1
    #: LAN discovery (docs/discovery.md): "udp" announces by UDP broadcast, "none" is off.
    discovery: str = "none"
    discovery_port: int = 7381
    discovery_broadcast: str = "255.255.255.255"
    discovery_interval: float = 5.0
    extra: dict[str, str] = field(default_factory=dict)
