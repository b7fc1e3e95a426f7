"""The ``twistd kvnode`` command line: options, validation and service wiring.

``twisted/plugins/kvnode.py`` only names this module; everything testable
lives here, as in C{twisted.names.tap}. Options are checked in
L{Options.postOptions} so a bad flag is a one-line C{UsageError}, never a
traceback from deep inside startup.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from twistkv.config import (
    DEFAULT_CLIENT_PORT,
    DEFAULT_HTTP_PORT,
    DEFAULT_PEER_PORT,
    NodeConfig,
    NodeIdError,
    resolve_node_id,
    valid_node_id,
)
from twistkv.core.discovery import (
    DEFAULT_BROADCAST_ADDRESS,
    DEFAULT_DISCOVERY_PORT,
    DEFAULT_INTERVAL,
)
from twistkv.core.peerwire import MAX_PLACEMENT

__all__ = ["Options", "makeService"]

_STORAGE_CHOICES = ("rocksdb", "memory")
_FSYNC_CHOICES = ("always", "everysec", "never")


def _whole_number(name: str, text: str, minimum: int) -> int:
    """C{text} as an int of at least C{minimum} (1: "positive"), or a UsageError."""
    try:
        value = int(text)
    except ValueError:
        raise usage.UsageError(f"--{name} must be a whole number, not {text!r}") from None
    if value < minimum:
        least = "positive" if minimum == 1 else f"{minimum} or more"
        raise usage.UsageError(f"--{name} must be {least}, not {value}")
    return value


def _positive_int(name: str, text: str) -> int:
    return _whole_number(name, text, 1)


def _non_negative_int(name: str, text: str) -> int:
    return _whole_number(name, text, 0)


def _positive_float(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise usage.UsageError(f"--{name} must be a number of seconds, not {text!r}") from None
    if not value > 0:
        raise usage.UsageError(f"--{name} must be positive, not {text}")
    return value


def _read_secret(text: str | None) -> bytes | None:
    """The cluster secret: literal text, or @PATH to read it (kept out of ps output)."""
    if not text:
        return None
    if text.startswith("@"):
        try:
            secret = Path(text[1:]).read_bytes().strip()
        except OSError as exc:
            raise usage.UsageError(
                f"cannot read --cluster-secret file {text[1:]}: {exc.strerror}"
            ) from None
    else:
        secret = text.encode("utf-8")
    if len(secret) < 16:
        raise usage.UsageError("--cluster-secret must be at least 16 bytes long")
    return secret


def _check_endpoint(name: str, description: str) -> None:
    """Reject a malformed endpoint string now rather than when listening."""
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.testing import MemoryReactor

    try:
        serverFromString(MemoryReactor(), description)
    except (ValueError, TypeError, KeyError) as exc:
        raise usage.UsageError(
            f"--{name} {description!r} is not a Twisted endpoint string "
            f"(e.g. tcp:{DEFAULT_CLIENT_PORT}:interface=127.0.0.1): {exc}"
        ) from None


class Options(usage.Options):
    """Options of ``twistd kvnode``.

    Seed 000's environment variables supply defaults: ``PORT`` (client
    port), ``PEERS`` (comma-separated seed peers) and ``NODE_ID``.
    """

    synopsis = "[options]"
    longdesc = (
        "Run one twistkv node. Clients connect with redis-cli, redis-py or telnet to "
        "--listen; the HTTP API and dashboard are on --http; nodes talk to each other "
        "on --peer-listen. Listen addresses are Twisted endpoint strings."
    )

    optFlags = [
        ["enable-flushdb", None, "Allow FLUSHDB/FLUSHALL (refused by default: it erases all data)."],
    ]

    optParameters = [
        ["listen", "l", None,
         f"Client (RESP/telnet) endpoint [default: tcp:$PORT or tcp:{DEFAULT_CLIENT_PORT}]."],
        ["http", None, f"tcp:{DEFAULT_HTTP_PORT}",
         "HTTP API + dashboard endpoint, or 'none' to disable."],
        ["peer-listen", None, f"tcp:{DEFAULT_PEER_PORT}", "Peer protocol endpoint."],
        ["node-id", None, None,
         "This node's id [default: $NODE_ID, else the id stored in --data-dir, else generated and stored]."],
        ["data-dir", "d", None,
         "Data directory [default: ./data/<node-id>, or ./data/twistkv without a node id]."],
        ["log-dir", None, None, "Directory for JSON-lines logs [default: ./logs/<node-id>]."],
        ["storage", None, "rocksdb", "Storage: rocksdb (durable) or memory (lost on exit)."],
        ["fsync", None, "always",
         "When writes reach disk: always (ack after WAL fsync, group-committed), "
         "everysec (up to ~1 s of acked writes lost on power failure) or never (OS decides)."],
        ["row-cache-mb", None, "32",
         "RocksDB only: MiB of recently read and written records kept in memory, "
         "answering reads without RocksDB (0: none)."],
        ["max-value-bytes", None, str(16 * 1024 * 1024), "Largest value accepted, in bytes."],
        ["max-clients", None, "10000", "Most simultaneous client connections."],
        ["cluster-name", None, "twistkv",
         "Cluster name; nodes refuse peers with another name."],
        ["cluster-secret", None, None,
         "Shared secret for the peer handshake (HMAC-SHA256); or @FILE to read it from a file. "
         "[default: $TWISTKV_CLUSTER_SECRET, else none: any peer may join]"],
        ["advertise", None, None,
         "host:port other nodes use to reach --peer-listen [default: its interface, "
         "else this host's first non-loopback address, else 127.0.0.1]."],
        ["replicas", "N", "3", "Replication factor N: copies of each key."],
        ["read-quorum", "R", None, "Replicas a read waits for by default [default: N/2+1]."],
        ["write-quorum", "W", None, "Replicas a write waits for by default [default: N/2+1]."],
        ["request-timeout", None, "2.0",
         "Seconds a request waits for its quorum before answering UNAVAILABLE."],
        ["suspicion-timeout", None, "4.0",
         "Failure detection: the shortest a silent node stays suspect before it is "
         "declared dead (up to 6x without confirmations)."],
        ["antientropy-interval", None, "60",
         "Seconds between background Merkle-tree comparisons with a peer (0 = off)."],
        ["antientropy-rate", None, "100",
         "Keys per second background anti-entropy may repair (REPAIR runs faster)."],
        ["rebalance-rate", None, str(8 * 1024 * 1024),
         "Bytes per second a join/leave/remove may stream (0 = unlimited)."],
        ["rebalance-drop-delay", None, "60",
         "Seconds a node keeps ranges it no longer owns before dropping them."],
        ["admin-token", None, None,
         "Enable the dashboard's demo controls, guarded by this token "
         "[default: $TWISTKV_ADMIN_TOKEN, else off]."],
        ["seeds", None, None,
         "Comma-separated peer addresses (host:port) to join [default: $PEERS]."],
        ["discovery", None, "none",
         "LAN discovery: 'udp' announces this node by UDP broadcast and joins the nodes it "
         "hears, no seeds needed (one broadcast domain; docs/discovery.md); 'none' is off."],
        ["discovery-port", None, str(DEFAULT_DISCOVERY_PORT),
         "UDP port of --discovery udp, the same on every node."],
        ["discovery-broadcast", None, DEFAULT_BROADCAST_ADDRESS,
         "Where --discovery udp announces go, e.g. the LAN's 192.168.1.255."],
        ["discovery-interval", None, str(DEFAULT_INTERVAL),
         "Seconds between --discovery udp announces."],
    ]

    def postOptions(self) -> None:
        """Validate every option and build the L{NodeConfig} as C{self.config}."""
        env = os.environ
        listen = self["listen"]
        if listen is None:
            port = env.get("PORT")
            if port is not None:
                _positive_int("listen (from $PORT)", port)
                listen = f"tcp:{port}"
            else:
                listen = f"tcp:{DEFAULT_CLIENT_PORT}"
        http = self["http"]
        if http is not None and http.lower() == "none":
            http = None
        for name, desc in (("listen", listen), ("http", http), ("peer-listen", self["peer-listen"])):
            if desc is not None:
                _check_endpoint(name, desc)

        if self["storage"] not in _STORAGE_CHOICES:
            raise usage.UsageError(
                f"--storage must be one of {', '.join(_STORAGE_CHOICES)}, not {self['storage']!r}"
            )
        if self["fsync"] not in _FSYNC_CHOICES:
            raise usage.UsageError(
                f"--fsync must be one of {', '.join(_FSYNC_CHOICES)}, not {self['fsync']!r}"
            )
        max_value = _positive_int("max-value-bytes", self["max-value-bytes"])
        row_cache_mb = _non_negative_int("row-cache-mb", self["row-cache-mb"])
        max_clients = _positive_int("max-clients", self["max-clients"])

        seeds_text = self["seeds"] if self["seeds"] is not None else env.get("PEERS", "")
        seeds = tuple(s.strip() for s in seeds_text.split(",") if s.strip())
        for seed in seeds:
            host, sep, port = seed.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise usage.UsageError(f"seed {seed!r} is not host:port")

        if not valid_node_id(self["cluster-name"]):
            raise usage.UsageError(
                f"invalid cluster name {self['cluster-name']!r}: use 1-63 characters from A-Z a-z 0-9 . _ -"
            )
        replicas = _positive_int("replicas", self["replicas"])
        if replicas > MAX_PLACEMENT:
            raise usage.UsageError(f"--replicas {replicas} is above {MAX_PLACEMENT}")
        quorum = replicas // 2 + 1
        read_quorum = (
            _positive_int("read-quorum", self["read-quorum"]) if self["read-quorum"] else quorum
        )
        write_quorum = (
            _positive_int("write-quorum", self["write-quorum"]) if self["write-quorum"] else quorum
        )
        for name, value in (("read-quorum", read_quorum), ("write-quorum", write_quorum)):
            if value > replicas:
                raise usage.UsageError(f"--{name} {value} exceeds --replicas {replicas}")
        request_timeout = _positive_float("request-timeout", self["request-timeout"])
        suspicion_timeout = _positive_float("suspicion-timeout", self["suspicion-timeout"])
        if suspicion_timeout < 2.0:
            raise usage.UsageError(
                "--suspicion-timeout must be at least 2 seconds (two protocol periods)"
            )
        try:
            antientropy_interval = float(self["antientropy-interval"])
            if antientropy_interval < 0:
                raise ValueError
        except ValueError:
            raise usage.UsageError(
                f"--antientropy-interval must be seconds >= 0, not {self['antientropy-interval']!r}"
            ) from None
        antientropy_rate = _positive_int("antientropy-rate", self["antientropy-rate"])
        try:
            rebalance_rate = int(self["rebalance-rate"])
            rebalance_drop_delay = float(self["rebalance-drop-delay"])
            if rebalance_rate < 0 or rebalance_drop_delay < 0:
                raise ValueError
        except ValueError:
            raise usage.UsageError(
                "--rebalance-rate (bytes/s) and --rebalance-drop-delay (seconds) must be "
                "numbers >= 0"
            ) from None
        admin_token = self["admin-token"] or env.get("TWISTKV_ADMIN_TOKEN") or None
        if admin_token is not None and len(admin_token) < 8:
            raise usage.UsageError("--admin-token must be at least 8 characters long")
        secret = _read_secret(self["cluster-secret"] or env.get("TWISTKV_CLUSTER_SECRET"))
        advertise = self["advertise"]
        if advertise is not None:
            host, sep, port = advertise.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise usage.UsageError(f"--advertise {advertise!r} is not host:port")

        if self["discovery"] not in ("none", "udp"):
            raise usage.UsageError(f"--discovery must be none or udp, not {self['discovery']!r}")
        discovery_port = _positive_int("discovery-port", self["discovery-port"])
        if discovery_port > 65535:
            raise usage.UsageError(f"--discovery-port must be 1-65535, not {discovery_port}")
        discovery_interval = _positive_float("discovery-interval", self["discovery-interval"])
        try:
            ipaddress.IPv4Address(self["discovery-broadcast"])
        except ValueError:
            raise usage.UsageError(
                f"--discovery-broadcast must be an IPv4 address, not {self['discovery-broadcast']!r}"
            ) from None

        requested_id = self["node-id"] or env.get("NODE_ID") or None
        if requested_id is not None and not valid_node_id(requested_id):
            raise usage.UsageError(
                f"invalid node id {requested_id!r}: use 1-63 characters from A-Z a-z 0-9 . _ -"
            )
        if self["data-dir"]:
            data_dir = Path(self["data-dir"])
        elif requested_id:
            data_dir = Path("data") / requested_id
        else:
            data_dir = Path("data") / "twistkv"
        try:
            node_id = resolve_node_id(data_dir, requested_id)
        except NodeIdError as exc:
            raise usage.UsageError(str(exc)) from None
        except OSError as exc:
            raise usage.UsageError(f"cannot use data dir {data_dir}: {exc.strerror}") from None
        log_dir = Path(self["log-dir"]) if self["log-dir"] else Path("logs") / node_id

        self.config = NodeConfig(
            node_id=node_id,
            data_dir=data_dir,
            log_dir=log_dir,
            listen=listen,
            http=http,
            peer_listen=self["peer-listen"],
            storage=self["storage"],
            fsync=self["fsync"],
            max_value_bytes=max_value,
            max_clients=max_clients,
            row_cache_bytes=row_cache_mb * 1024 * 1024,
            seeds=seeds,
            cluster_name=self["cluster-name"],
            cluster_secret=secret,
            advertise=advertise,
            replicas=replicas,
            read_quorum=read_quorum,
            write_quorum=write_quorum,
            request_timeout=request_timeout,
            suspicion_timeout=suspicion_timeout,
            antientropy_interval=antientropy_interval,
            antientropy_rate=antientropy_rate,
            admin_token=admin_token,
            rebalance_rate=rebalance_rate,
            rebalance_drop_delay=rebalance_drop_delay,
            enable_flushdb=bool(self["enable-flushdb"]),
            discovery=self["discovery"],
            discovery_port=discovery_port,
            discovery_broadcast=self["discovery-broadcast"],
            discovery_interval=discovery_interval,
        )


def makeService(options: Any) -> IService:
    """Build the node's service tree from parsed L{Options}, on the lean epoll reactor
    (L{twistkv.node.reactor}) unless twistd was given another with C{--reactor}.

    Installing it is a side effect on the process: called where a reactor is already
    installed (tests under pytest-twisted, another application), it changes nothing.
    """
    from twistkv.node.reactor import install

    install()
    from twistkv.node.service import KVNodeService

    return KVNodeService(options.config, tune_gc=True)
