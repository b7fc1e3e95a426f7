"""The node: a C{MultiService} wiring storage, keyspace, ports and timers.

Nothing here decides anything about data; it opens the store, builds the
keyspace and the protocol factories, listens on the configured endpoints
and runs the periodic chores (active expiry, ops/s sampling). The reactor
is injected so tests can run a node on a L{MemoryReactorClock}.
"""

from __future__ import annotations

import gc
import socket
import sys
from pathlib import Path
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import LoopingCall
from twisted.logger import FileLogObserver, Logger, globalLogPublisher, jsonFileLogObserver
from twisted.python.logfile import LogFile

from twistkv import __version__
from twistkv.config import NodeConfig
from twistkv.core.versioning import HybridLogicalClock
from twistkv.node.commands import NodeContext
from twistkv.node.durability import GroupCommitter
from twistkv.node.keyspace import LocalKeyspace
from twistkv.node.metrics import NodeStats, new_registry
from twistkv.node.protocol import RespFactory
from twistkv.storage.errors import StorageError
from twistkv.storage.interface import FsyncPolicy, OrderedStore

__all__ = ["GC_GEN0_THRESHOLD", "KVNodeService", "advertised_address", "open_store", "tune_garbage_collector"]

_log = Logger()


def open_store(config: NodeConfig) -> OrderedStore:
    """Open the store the config names (RocksDB under data_dir/db, or memory)."""
    if config.storage == "memory":
        from twistkv.storage.memory import MemoryStore

        return MemoryStore()
    from twistkv.storage.rocks import RocksStore

    return RocksStore(str(Path(config.data_dir) / "db"), row_cache_bytes=config.row_cache_bytes)


def _endpoint_parts(description: str) -> tuple[str | None, int | None]:
    """(interface, port) of a tcp: endpoint string; (None, None) for other kinds."""
    fields = description.split(":")
    if fields[0] not in ("tcp", "tcp6", "ssl") or len(fields) < 2 or not fields[1].isdigit():
        return None, None
    interface = None
    for field in fields[2:]:
        if field.startswith("interface="):
            interface = field[len("interface="):].replace("\\", "")
    return interface, int(fields[1])


def _host_address() -> str:
    """This host's first non-loopback IPv4 address, else 127.0.0.1 (no traffic is sent)."""
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
    except OSError:
        return "127.0.0.1"
    for info in infos:
        address = str(info[4][0])
        if not address.startswith("127."):
            return address
    return "127.0.0.1"


def advertised_address(config: NodeConfig, description: str | None = None) -> str | None:
    """host:port others use for an endpoint of this node (the peer port by default).

    An explicit --advertise wins (for the peer port; other ports take its host). Else
    the endpoint's own interface, unless it is a wildcard; else this host's address.
    """
    interface, port = _endpoint_parts(description or config.peer_listen)
    if config.advertise is not None:
        host, _, advertised_port = config.advertise.rpartition(":")
        return config.advertise if description is None else f"{host}:{port}"
    if port is None:
        return None
    if interface in (None, "", "0.0.0.0", "::"):
        interface = _host_address()
    return f"{interface}:{port}"


#: Allocations of container objects between two collections of the youngest generation
#: (CPython's default is 700). See L{tune_garbage_collector}.
GC_GEN0_THRESHOLD = 50_000


def tune_garbage_collector() -> None:
    """Make the cyclic garbage collector cheap for a serving node.

    Each request in flight holds a few container objects (a Deferred, a write's state, its
    frames) for a round trip. With CPython's default threshold a young collection runs every
    700 allocations, finds them still alive and promotes them, so the older generations fill
    up and full collections walk the whole heap again and again: on the coordinator of a
    3-node cluster under pipelined writes that was measured at 31% of its CPU. So: collect
    once, freeze what startup built (modules, the app, the ring: never garbage, never walked
    again, as Instagram does), and let the young generation grow to L{GC_GEN0_THRESHOLD}, so
    that most request objects die before a collection sees them. Measured on 3 local nodes
    (bench/cluster_compare.py --quick, QUORUM SET -P 16): coordinator 81-102 -> 66-78 us of
    CPU per request, p99 104-121 -> 54 ms. A young collection then takes a few milliseconds,
    once per tens of thousands of allocations.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, older, oldest)


class KVNodeService(MultiService):
    """One twistkv node."""

    def __init__(self, config: NodeConfig, reactor: Any = None, tune_gc: bool = False) -> None:
        """@param tune_gc: once the reactor runs, tune the process's garbage collector for
            serving (L{tune_garbage_collector}); for the process's own node (C{twistd}),
            not for nodes built inside another program or a test."""
        super().__init__()
        self._tune_gc = tune_gc
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self._reactor = reactor
        self.config = config
        self.stats = NodeStats()
        self.registry = new_registry(self.stats, config.node_id)
        self.store: OrderedStore | None = None
        self.committer: GroupCommitter | None = None
        self.context: NodeContext | None = None
        self.cluster: Any = None
        self.events: Any = None
        self.cluster_watch: Any = None
        self.membership_pause: Any = None
        self.local_keyspace: LocalKeyspace | None = None
        self._chores: list[LoopingCall] = []
        self._log_observer: FileLogObserver | None = None
        self._log_file: LogFile | None = None

    def now_ms(self) -> int:
        """Wall-clock milliseconds from the injected reactor."""
        return int(self._reactor.seconds() * 1000)

    def startService(self) -> None:
        config = self.config
        self._start_json_log()
        try:
            self.store = open_store(config)
        except StorageError as exc:
            _log.critical("cannot open storage: {error}", error=str(exc))
            raise SystemExit(f"twistkv: cannot open storage: {exc}") from None
        self.committer = GroupCommitter(self.store, FsyncPolicy.parse(config.fsync), self._reactor)
        self.committer.start()
        keyspace = LocalKeyspace(
            self.store, self.committer, config.node_id, HybridLogicalClock(), self.now_ms
        )
        keyspace.load()
        self.local_keyspace = keyspace
        self.context = NodeContext(
            keyspace=keyspace, config=config, stats=self.stats, started_at=self._reactor.seconds()
        )
        self._start_cluster()
        from twistkv.node.events import EventBus, MembershipPause, watch_cluster

        self.events = EventBus(self._reactor)
        self.cluster_watch = watch_cluster(
            self.events, self.cluster, self._reactor, stats=self.stats
        )
        self.membership_pause = MembershipPause(self.cluster, self._reactor, self.events)
        self._wire_stats()
        self._listen(config.listen, RespFactory(self.context, self._reactor))
        if config.http is not None:
            from twistkv.web.app import NodeWebApp

            self._listen(config.http, NodeWebApp(self).site(reactor=self._reactor))
        self._every(config.expiry_interval, lambda: self.context.keyspace.expire_due())
        self._every(1.0, lambda: self.stats.sample(self._reactor.seconds()))
        super().startService()
        if self._tune_gc:
            self._reactor.callWhenRunning(tune_garbage_collector)
        _log.info(
            "twistkv node {node_id} started: clients on {listen}, http on {http}, "
            "storage {storage} (fsync {fsync}) in {data_dir}, {keys} keys",
            node_id=config.node_id, listen=config.listen, http=config.http or "off",
            storage=config.storage, fsync=config.fsync, data_dir=str(config.data_dir),
            keys=keyspace.key_count(),
        )

    def _start_cluster(self) -> None:
        """Start the peer port and membership; cluster mode begins once there is a peer.

        A node that is alone (no seeds, no ring members remembered from an earlier run)
        serves from the local keyspace: no quorum round trips, physical deletes. The first
        time another node joins its ring it switches, for good, to the replicated keyspace.
        """
        from twistkv.core.membership import MembershipConfig
        from twistkv.node.cluster import ClusterOptions, ClusterRuntime

        config = self.config
        assert self.store is not None and self.committer is not None and self.context is not None
        peer_address = advertised_address(config) or f"127.0.0.1:{config.peer_listen}"
        metadata = {"version": __version__}
        for name, description in (("client", config.listen), ("http", config.http)):
            if description is not None:
                address = advertised_address(config, description)
                if address is not None:
                    metadata[name] = address
        options = ClusterOptions(
            n=config.replicas, r=config.read_quorum, w=config.write_quorum,
            request_timeout=config.request_timeout,
            antientropy_interval=config.antientropy_interval,
            antientropy_rate=config.antientropy_rate,
            rebalance_rate=config.rebalance_rate,
            rebalance_drop_delay=config.rebalance_drop_delay,
        )
        self.cluster = ClusterRuntime(
            config.node_id, peer_address, reactor=self._reactor, store=self.store,
            committer=self.committer, seeds=config.seeds, cluster_name=config.cluster_name,
            secret=config.cluster_secret, options=options,
            membership_config=MembershipConfig(suspicion_timeout=config.suspicion_timeout),
            hlc=self.local_keyspace.hlc, metadata=metadata,
        )
        self.context.cluster = self.cluster
        self.context.barrier = self.cluster.coordinator
        self.context.shutdown = self._shutdown_after_leave
        self._listen(config.peer_listen, self.cluster.server_factory)
        self.cluster.start()
        if config.discovery == "udp":
            from twistkv.node.discovery import cluster_discovery

            cluster_discovery(
                self._reactor, self.cluster, cluster_name=config.cluster_name,
                secret=config.cluster_secret, port=config.discovery_port,
                broadcast_address=config.discovery_broadcast,
                interval=config.discovery_interval,
            ).setServiceParent(self)
        self.cluster.membership_service.subscribe(self._maybe_cluster)
        if config.seeds or len(self.cluster.ring) > 1:
            self._enter_cluster_mode()

    def _shutdown_after_leave(self) -> None:
        """LEAVE finished handing over this node's ranges: stop the process cleanly."""
        _log.info("node {node_id} left the cluster; shutting down", node_id=self.config.node_id)
        self._reactor.callLater(0.5, self._reactor.stop)

    def _maybe_cluster(self, event: Any) -> None:
        if self.cluster is not None and len(self.cluster.ring) > 1:
            self._enter_cluster_mode()

    def _enter_cluster_mode(self) -> None:
        assert self.context is not None and self.cluster is not None
        if self.context.keyspace is self.cluster.keyspace:
            return
        _log.info(
            "node {node_id} serves clients from the replicated keyspace (N={n}, R={r}, W={w})",
            node_id=self.config.node_id, n=self.config.replicas, r=self.config.read_quorum,
            w=self.config.write_quorum,
        )
        self.context.keyspace = self.cluster.keyspace
        if self.local_keyspace is not None:
            # Keys written while alone went through the local keyspace: the replica's
            # record count (DBSIZE from now on) was taken at startup and must catch up.
            self.cluster.replica.stats.records = self.local_keyspace.key_count()
        for session in self.context.clients.values():
            session.rebind()

    def _listen(self, description: str, factory: Any) -> None:
        endpoint = serverFromString(self._reactor, description)
        service = StreamServerEndpointService(endpoint, factory)
        service._raiseSynchronously = True
        service.setServiceParent(self)

    def _every(self, interval: float, chore: Any) -> None:
        loop = LoopingCall(chore)
        loop.clock = self._reactor
        self._chores.append(loop)
        loop.start(interval, now=False).addErrback(
            lambda f: _log.failure("periodic chore failed", f)
        )

    def _wire_stats(self) -> None:
        assert self.context is not None and self.store is not None and self.committer is not None
        store, committer, context = self.store, self.committer, self.context
        self.stats.committer_stats = lambda: {
            "groups": committer.stats.syncs,
            "ops": committer.stats.ops,
            "sync_seconds": committer.stats.sync_seconds_total,
        }
        self.stats.storage_bytes = store.approximate_size_bytes
        self.stats.storage_healthy = lambda: committer.healthy
        self.stats.connected_clients = lambda: len(context.clients)
        self.stats.key_count = lambda: context.keyspace.key_count()
        cluster = self.cluster
        if cluster is not None:
            self.stats.cluster_stats = cluster.stats

    def _start_json_log(self) -> None:
        log_dir = self.config.log_dir
        if log_dir is None:
            return
        try:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            self._log_file = LogFile(
                "node.jsonl", str(log_dir), rotateLength=16 * 1024 * 1024, maxRotatedFiles=5
            )
        except OSError as exc:
            print(f"twistkv: cannot write logs to {log_dir}: {exc}", file=sys.stderr)
            return
        self._log_observer = jsonFileLogObserver(self._log_file)
        globalLogPublisher.addObserver(self._log_observer)

    def stopService(self) -> Any:
        if self.cluster_watch is not None:
            self.cluster_watch.stop()
        for loop in self._chores:
            if loop.running:
                loop.stop()
        self._chores.clear()
        d = super().stopService()

        def stop_cluster(result: Any) -> Any:
            if self.cluster is None:
                return result
            stopped = self.cluster.stop()
            stopped.addErrback(lambda f: _log.failure("cluster shutdown failed", f))
            return stopped.addCallback(lambda _: result)

        def stop_committer(result: Any) -> Any:
            if self.committer is None:
                return result
            stopped = self.committer.stop()
            stopped.addErrback(lambda f: _log.failure("final sync failed at shutdown", f))
            return stopped.addCallback(lambda _: result)

        def close_storage(result: Any) -> Any:
            if self.store is not None:
                self.store.close()
            _log.info("twistkv node {node_id} stopped", node_id=self.config.node_id)
            if self._log_observer is not None:
                globalLogPublisher.removeObserver(self._log_observer)
                self._log_observer = None
            if self._log_file is not None:
                self._log_file.close()
            return result

        return d.addBoth(stop_cluster).addBoth(stop_committer).addBoth(close_storage)
