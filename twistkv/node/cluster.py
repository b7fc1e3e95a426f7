"""A node's cluster side, assembled: membership, peer connections, the ring, coordination,
hinted handoff, anti-entropy and tombstone collection; and the keyspace API the client protocols use.

L{ClusterRuntime} is built from plain parameters (the node service maps C{NodeConfig} onto
them) and has L{ClusterRuntime.start} / L{ClusterRuntime.stop}. It listens nowhere itself:
the caller serves L{ClusterRuntime.server_factory} on the peer port (or, in tests, on a
L{twistkv.testing.SimulatedNetwork} address).

Ring membership versus liveness
-------------------------------

As in Dynamo, the ring changes only when a node joins or leaves, never when it fails: a node
enters the ring when membership first hears of it (ALIVE, SUSPECT or even DEAD, as learnt from
a peer's full view) and leaves it only when it announced LEFT. A node that crashes keeps its
vnodes, even after SWIM forgets it (C{dead_forget_timeout}, an hour by default): writes meant
for it go to stand-ins as hints, and it gets them back when it returns. Rebuilding the ring on
every failure would instead move ranges to nodes that hold none of their data, make quorum
reads miss acknowledged writes, and stream data back and forth on every flap. Liveness (ALIVE
or SUSPECT) only decides routing: whom to contact, and whom to hint for.

For the same reason L{ClusterRuntime.stop} does not announce LEFT: a stopped node is expected
back (restart, upgrade), and peers treat it like a crashed one. Leaving for good
(L{ClusterRuntime.leave}) first hands the node's ranges over.

Joining, leaving and removing
-----------------------------

A node's ring status (waiting, joining, normal, leaving) travels in its membership metadata,
and the ring is derived from the statuses (L{twistkv.core.transfers.derive_view}): a node
enters the ring once it announces NORMAL, after it has received its ranges, and leaves it when
it is LEFT. While a range moves, writes also go to its new owners (pending ranges); the
L{twistkv.node.rebalance.Rebalancer} runs the movements. The very first nodes (fewer than N in
the ring) go NORMAL at once. See docs/consistency.md §13.

The ring's members and their addresses are kept in the store (C{b"mring/<node>"}), so a
restarted node starts with the full ring and rejoins through the members it knew, even when
it was started without seeds (the first node of a cluster usually is). Without that, it
would come back with a ring of one, and until gossip reached it, it would acknowledge writes
stored only on itself.

test-case-name: tests.node.test_cluster_sim
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import (
    Deferred,
    DeferredList,
    FirstError,
    fail,
    gatherResults,
    maybeDeferred,
    succeed,
)
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from twistkv.core import membership as swim
from twistkv.core.membership import MemberEvent, Membership, MembershipConfig, MemberState
from twistkv.core.peerwire import Frame, HandshakeConfig
from twistkv.core.quorum import ConsistencyLevel
from twistkv.core.record import Version, live_value
from twistkv.core.ring import DEFAULT_VNODES_PER_NODE, Ring
from twistkv.core.transfers import (
    REMOVING_KEY,
    STATUS_KEY,
    ClusterView,
    MemberView,
    RingStatus,
    derive_view,
    status_of,
)
from twistkv.core.versioning import HybridLogicalClock
from twistkv.node.antientropy import AE_VERBS, AntiEntropy
from twistkv.node.coordinator import REPLICA_VERBS, Coordinator, HintDelivery, ReadResult
from twistkv.node.counters import COUNTER_VERBS, CounterService
from twistkv.node.gossip import MembershipService
from twistkv.node.keyspace import Seen
from twistkv.node.peer import (
    EndpointFactory,
    PeerClientPool,
    PeerLimits,
    PeerServerFactory,
    VerbRouter,
)
from twistkv.node.rebalance import REBALANCE_VERBS, Rebalancer
from twistkv.node.replica import DATA_PREFIX, HintStore, ReplicaStore
from twistkv.storage.errors import StorageError

if TYPE_CHECKING:
    from twistkv.node.durability import GroupCommitter
    from twistkv.storage.interface import OrderedStore

__all__ = [
    "KEEP_TTL",
    "RING_PREFIX",
    "ClusterKeyspace",
    "ClusterOptions",
    "ClusterRuntime",
    "NotSupported",
]

_log = Logger()

#: Sentinel expiry for L{ClusterKeyspace.set}: keep the key's current expiry (SET KEEPTTL);
#: the same value as C{twistkv.node.keyspace.KEEP_TTL}.
KEEP_TTL = -1

#: Store prefix of the persisted ring: node id -> peer address.
RING_PREFIX = b"mring/"
_RING_END = b"mring0"
#: Store prefix of nodes known to have left or been removed (kept out of the ring).
GONE_PREFIX = b"mgone/"
_GONE_END = b"mgone0"
#: Store key of this node's own ring status.
STATUS_DB_KEY = b"mstatus"


@dataclass(frozen=True)
class ClusterOptions:
    """Replication and housekeeping settings; the defaults are the cluster issue's.

    Times are in seconds. C{tombstone_grace} must exceed C{hint_max_age}: a tombstone
    collected while a hint still carries the value it deleted would let handoff resurrect it.
    """

    n: int = 3
    r: int = 2
    w: int = 2
    request_timeout: float = 2.0
    #: Seconds one replica may take before its slot fails over; None = request_timeout / 2.
    replica_timeout: float | None = None
    vnodes_per_node: int = DEFAULT_VNODES_PER_NODE
    hint_max_count: int = 100_000
    hint_max_bytes: int = 256 * 1024 * 1024
    hint_max_age: float = 3 * 3600.0
    hint_interval: float = 1.0
    hint_batch: int = 64
    tombstone_grace: float = 10 * 24 * 3600.0
    gc_interval: float = 1.0
    gc_batch: int = 1000
    peer_connect_timeout: float = 5.0
    peer_request_timeout: float = 5.0
    #: Seconds between background anti-entropy exchanges (one peer each, jittered +-25%);
    #: 0 = no background exchanges (REPAIR still works, tombstones fall back to grace-only
    #: collection, see docs/consistency.md §12).
    antientropy_interval: float = 60.0
    #: Keys repaired (pushed + pulled) per second by background exchanges.
    antientropy_rate: float = 100.0
    #: Keys repaired per second while a full repair (REPAIR) runs; 0 = unlimited.
    antientropy_repair_rate: float = 2000.0
    #: Merkle tree depth: 2**depth leaves per exchange.
    antientropy_depth: int = 10
    #: Seconds a peer may take to scan its replica for an AE_TREE / AE_KEYS answer.
    antientropy_timeout: float = 120.0
    #: Bytes per second a range movement this node drives streams; 0 = unlimited.
    rebalance_rate: float = 8 * 1024 * 1024
    #: Most records, and about the most bytes, per streamed chunk (bounds memory).
    rebalance_chunk_keys: int = 500
    rebalance_chunk_bytes: int = 1024 * 1024
    #: Streams a movement runs at once.
    rebalance_streams: int = 2
    #: Seconds before a failed chunk is retried (doubling up to 30 s).
    rebalance_retry: float = 1.0
    #: Seconds the ring must be stable before a node deletes what it no longer replicates.
    rebalance_drop_delay: float = 60.0

    def __post_init__(self) -> None:
        if self.n < 1 or not 1 <= self.r <= self.n or not 1 <= self.w <= self.n:
            raise ValueError(f"need 1 <= R, W <= N, got N={self.n} R={self.r} W={self.w}")
        if not self.tombstone_grace > self.hint_max_age:
            raise ValueError("tombstone_grace must exceed hint_max_age")
        for name in ("request_timeout", "hint_interval", "gc_interval", "hint_max_age",
                     "antientropy_rate", "antientropy_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if self.antientropy_interval < 0 or self.antientropy_repair_rate < 0:
            raise ValueError("antientropy_interval and antientropy_repair_rate must be >= 0")
        if not 1 <= self.antientropy_depth <= 16:
            raise ValueError("antientropy_depth must be 1..16")
        if (self.rebalance_rate < 0 or self.rebalance_drop_delay < 0
                or not self.rebalance_retry > 0 or self.rebalance_chunk_keys < 1
                or self.rebalance_chunk_bytes < 1 or self.rebalance_streams < 1):
            raise ValueError("invalid rebalance_* option")


class ClusterRuntime:
    """Everything a node needs to take part in the cluster; see the module docstring.

    @param peer_address: the C{host:port} other nodes dial for this one (advertised in
        HELLO and membership).
    @param store: the node's store, shared with anything else under other prefixes.
    @param committer: the node's group committer for C{store}.
    @param rng: handshake nonces, SWIM randomness, backoff jitter; C{SystemRandom} by default.
        Tests pass a seeded C{random.Random}.
    @param endpoint_factory: how the peer pool dials; tests pass a simulated network's.
    @param hlc: the node's clock, if the node already has one (it is then trusted to be
        seeded from the stored data); by default one is created at L{start}, seeded from the
        newest timestamp in the replica and hint stores.
    @param incarnation: SWIM incarnation to start at (above the last one announced).
    """

    def __init__(
        self,
        node_id: str,
        peer_address: str,
        *,
        reactor: IReactorTime,
        store: OrderedStore,
        committer: GroupCommitter,
        seeds: Sequence[str] = (),
        cluster_name: str = "twistkv",
        secret: bytes | None = None,
        options: ClusterOptions = ClusterOptions(),
        membership_config: MembershipConfig | None = None,
        rng: random.Random | None = None,
        endpoint_factory: EndpointFactory | None = None,
        hlc: HybridLogicalClock | None = None,
        incarnation: int = 0,
        metadata: Mapping[str, str] | None = None,
        peer_limits: PeerLimits | None = None,
    ) -> None:
        self.node_id = node_id
        self.peer_address = peer_address
        self.options = options
        self._reactor = reactor
        self._own_hlc = hlc is None
        rng = rng if rng is not None else random.SystemRandom()
        peer_limits = peer_limits if peer_limits is not None else PeerLimits()
        membership_config = (
            membership_config if membership_config is not None else MembershipConfig()
        )
        handshake = HandshakeConfig(cluster_name, node_id, peer_address, secret,
                                    replicas=options.n, vnodes=options.vnodes_per_node)
        self._store = store
        self._committer = committer
        #: Ring members persisted by an earlier run: node id -> last known peer address.
        self._known: dict[str, str] = {
            db_key[len(RING_PREFIX):].decode("utf-8"): raw.decode("utf-8")
            for db_key, raw in store.iterate(RING_PREFIX, _RING_END)
        }
        self._known.pop(node_id, None)
        gone = {db_key[len(GONE_PREFIX):].decode("utf-8")
                for db_key, _ in store.iterate(GONE_PREFIX, _GONE_END)}
        status = _initial_status(store.get(STATUS_DB_KEY), bool(self._known), bool(seeds))
        self._base_metadata = dict(metadata or {})
        metadata = {**self._base_metadata, STATUS_KEY: status.value}
        self.router = VerbRouter()
        self.pool = PeerClientPool(
            reactor, handshake, self.router, rng,
            connect_timeout=options.peer_connect_timeout,
            request_timeout=options.peer_request_timeout,
            endpoint_factory=endpoint_factory, limits=peer_limits,
        )
        self.server_factory = PeerServerFactory(reactor, handshake, self.router, rng, peer_limits)
        self.membership = Membership(
            node_id, peer_address, membership_config, rng, reactor.seconds(),
            metadata=metadata, incarnation=incarnation,
        )
        join_through = list(dict.fromkeys([*seeds, *sorted(self._known.values())]))
        self.membership_service = MembershipService(
            reactor, self.membership, self.pool, join_through
        )
        self.router.route(swim.VERBS, self.membership_service.handle)
        self.replica = ReplicaStore(
            store, committer, self.now_ms,
            tombstone_grace_ms=int(options.tombstone_grace * 1000),
        )
        self.hints = HintStore(
            store, committer, self.now_ms, max_count=options.hint_max_count,
            max_bytes=options.hint_max_bytes, max_age_ms=int(options.hint_max_age * 1000),
        )
        ring_nodes = set(self._known)
        if status in (RingStatus.NORMAL, RingStatus.LEAVING):
            ring_nodes.add(node_id)
        self._view = ClusterView(frozenset(ring_nodes), (), frozenset(gone))
        self._ring = Ring(ring_nodes, options.vnodes_per_node)
        #: The ring once the movement under way completes; None when nothing moves.
        self._target_ring: Ring | None = None
        self.rebalancer = Rebalancer(
            self, reactor, rate=options.rebalance_rate or None,
            chunk_keys=options.rebalance_chunk_keys, chunk_bytes=options.rebalance_chunk_bytes,
            max_streams=options.rebalance_streams, retry=options.rebalance_retry,
            drop_delay=options.rebalance_drop_delay,
            request_timeout=options.peer_request_timeout, status=status, rng=rng,
        )
        self.router.route(REBALANCE_VERBS, self.rebalancer.handle)
        self.coordinator = Coordinator(
            node_id, replica=self.replica, hints=self.hints, pool=self.pool,
            ring_provider=lambda: self._ring, alive_provider=self.is_alive,
            address_provider=self.address_of, reactor=reactor,
            hlc=hlc if hlc is not None else HybridLogicalClock(),
            n=options.n, default_r=options.r, default_w=options.w,
            request_timeout=options.request_timeout, replica_timeout=options.replica_timeout,
            ready_provider=self._ready, pending_provider=lambda: self._target_ring,
        )
        self.router.route(REPLICA_VERBS, self.coordinator.handle)
        self.router.route(("STATS",), self._answer_stats)
        #: Extra members of the STATS answer (the dashboard adds per-command latency).
        self.stats_extras: dict[str, Callable[[], Any]] = {}
        self.delivery = HintDelivery(
            reactor, node_id, self.hints, self.pool, self.address_of, self.is_alive,
            interval=options.hint_interval, batch=options.hint_batch,
            request_timeout=options.peer_request_timeout,
            keep_hint=self.rebalancer.keep_hint,
        )
        background = options.antientropy_interval > 0
        self.antientropy = AntiEntropy(
            reactor, node_id, self.replica, self.pool, lambda: self._ring, self.address_of,
            self.is_alive, n=options.n,
            interval=options.antientropy_interval if background else None,
            rate=options.antientropy_rate,
            repair_rate=options.antientropy_repair_rate or None,
            depth=options.antientropy_depth, rng=rng,
            request_timeout=options.peer_request_timeout,
            scan_timeout=options.antientropy_timeout,
            # Without background exchanges no replica would ever confirm a tombstone, so
            # collection falls back to the grace period alone.
            remove=self._remove_record if background else None,
            ready_provider=self._ready,
        )
        self.router.route(AE_VERBS, self.antientropy.handle)
        self.counters = CounterService(
            self.coordinator, pool=self.pool, ring_provider=lambda: self._ring,
            alive_provider=self.is_alive, address_provider=self.address_of,
            ready_provider=self._ready,
        )
        self.router.route(COUNTER_VERBS, self.counters.handle)
        self.keyspace = ClusterKeyspace(self.coordinator, self.counters)
        self._gc = LoopingCall(self._collect_garbage)
        self._gc.clock = reactor
        self._unsubscribe: Callable[[], None] | None = None
        self.running = False

    # -- views -----------------------------------------------------------------------------

    def now_ms(self) -> int:
        """Wall-clock milliseconds from the reactor."""
        return int(self._reactor.seconds() * 1000)

    @property
    def ring(self) -> Ring:
        """The current ring: the members that completed their join and have not left."""
        return self._ring

    @property
    def view(self) -> ClusterView:
        """The ring, the range movements under way and the nodes known gone."""
        return self._view

    @property
    def target_ring(self) -> Ring | None:
        """The ring once the movements under way complete; None when nothing moves."""
        return self._target_ring

    def _ready(self) -> bool:
        return self.membership.joined and self.rebalancer.ready

    @property
    def ready(self) -> bool:
        """Whether this node coordinates requests: it has joined, checked in with a peer
        (or is alone) and is a NORMAL or LEAVING ring member. /ready and INFO report it."""
        return self._ready()

    def rebalance_status(self, detail: bool = True) -> dict[str, Any]:
        """The rebalancing snapshot for /cluster and the dashboard: this node's ring status,
        the ring and target ring, the movements under way, the movement this node drives with
        per-stream and (with C{detail}) per-range keys and bytes moved, and cleanup."""
        return self.rebalancer.snapshot(detail)

    # -- membership changes an operator asks for ------------------------------------------

    def leave(self) -> Deferred[None]:
        """LEAVE: stream this node's ranges to their new owners, announce LEFT, and stop this
        runtime. Fires once stopped; the caller then shuts the process down.

        @raise twistkv.node.rebalance.RebalanceError: the leave cannot start.
        """
        return self.rebalancer.leave()

    def remove(self, node_id: str) -> Deferred[None]:
        """REMOVE <node-id>: re-replicate a dead node's ranges from the survivors, then mark
        it LEFT cluster-wide. Fires once done.

        @raise twistkv.node.rebalance.RebalanceError: the removal cannot start.
        """
        return self.rebalancer.remove(node_id)

    def join(self, seed_address: str) -> Deferred[None]:
        """JOIN host:port: join the cluster of that node (this node must be alone and empty).
        Fires once this node is a normal ring member.

        @raise twistkv.node.rebalance.RebalanceError: this node is not alone or not empty.
        """
        return self.rebalancer.join(seed_address)

    def is_alive(self, node_id: str) -> bool:
        """Whether requests should go to C{node_id} (ALIVE or SUSPECT in our view)."""
        if node_id == self.node_id:
            return True
        member = self.membership.get(node_id)
        if member is None:
            return False
        state = member.state
        # ALIVE or SUSPECT are contacted; DEAD nodes stay in the ring but get hints. Tested
        # by identity rather than in a set: an Enum hashes in Python, and this runs per
        # replica of every request.
        return state is MemberState.ALIVE or state is MemberState.SUSPECT

    def address_of(self, node_id: str) -> str | None:
        """The peer address membership knows for C{node_id} (else the persisted one)."""
        member = self.membership.get(node_id)
        return member.address if member is not None else self._known.get(node_id)

    def stats(self) -> dict[str, int]:
        """Every cluster counter and gauge, flat, for INFO, /metrics and STATS.

        Names are stable: C{read_repairs}, C{hints_stored}, C{hints_delivered}, ... (see the
        source for the list); counters only grow, C{*_stored}/C{*_bytes}/C{ring_nodes} are
        gauges.
        """
        coordinator = self.coordinator.stats
        hints = self.hints.stats
        replica = self.replica.stats
        delivery = self.delivery.stats
        return {
            "reads": coordinator.reads,
            "writes": coordinator.writes,
            "reads_unavailable": coordinator.reads_unavailable,
            "writes_unavailable": coordinator.writes_unavailable,
            "read_repairs": coordinator.read_repairs,
            "read_repair_failures": coordinator.read_repair_failures,
            "hinted_acks": coordinator.hinted_acks,
            "coordinator_hints": coordinator.coordinator_hints,
            "hints_accepted": coordinator.hints_accepted,
            "hints_stored": hints.stored,
            "hints_bytes": hints.bytes,
            "hints_added": hints.added,
            "hints_merged": hints.merged,
            "hints_delivered": hints.delivered,
            "hints_dropped_full": hints.dropped_full,
            "hints_dropped_expired": hints.dropped_expired,
            "hints_rejected": hints.rejected,
            "hint_delivery_attempts": delivery.attempts,
            "hint_delivery_failures": delivery.failures,
            "replica_records": replica.records,
            "replica_writes_applied": replica.applied,
            "replica_writes_unchanged": replica.unchanged,
            "tombstones_collected": replica.collected,
            "ring_nodes": len(self._ring),
            "pending_writes": coordinator.pending_writes,
            "hints_discarded": delivery.discarded,
            **self.antientropy.stats_dict(),
            **self.rebalancer.stats_dict(),
            **self.counters.stats,
        }

    def _answer_stats(self, peer_node_id: str, frame: Frame) -> Frame:
        """STATS (§5.4): this node's cluster counters as JSON, for RING and the dashboard."""
        document: dict[str, Any] = dict(self.stats())
        document.update({name: source() for name, source in self.stats_extras.items()})
        return Frame("VAL", 0, {}, json.dumps(document, sort_keys=True).encode())

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Load the local stores, join through the seeds, start handoff and collection."""
        newest = max(self.replica.load(), self.hints.load())
        if self._own_hlc and newest > self.coordinator.hlc.last:
            self.coordinator.hlc = HybridLogicalClock(last=newest)
        self._unsubscribe = self.membership_service.subscribe(self._member_changed)
        if self._store.get(STATUS_DB_KEY) is None:
            self.persist_status(self.rebalancer.status)
        self.running = True
        self.membership_service.startService()
        self.delivery.start()
        self.antientropy.start()
        self.rebalancer.start()
        self._gc.start(self.options.gc_interval, now=False).addErrback(
            lambda f: _log.failure("tombstone collection failed", f)
        )

    def stop(self) -> Deferred[None]:
        """Stop the chores and membership, close peer connections; fires when closed.

        Does not announce LEFT (see the module docstring): peers will see this node as
        failed, keep its ranges, and hold hints for it until it returns.
        """
        if not self.running:
            return succeed(None)
        self._stop_chores()
        self.membership_service.halt()
        closing = DeferredList(
            [self.pool.close(), self.server_factory.close_connections()], consumeErrors=True
        )
        return closing.addCallback(lambda _: None)

    def halt(self) -> None:
        """Stop everything at once without telling anyone, as a crash would (for tests).

        A crashed process holds no connections either: the peer pool is closed, so that
        requests it had queued (hint deliveries, say) cannot go out later, when the address
        is reused by the restarted node, and act on a store the new process owns.
        """
        if not self.running:
            return
        self._stop_chores()
        self.membership_service.halt()
        self.pool.close().addErrback(lambda _: None)

    def _stop_chores(self) -> None:
        self.running = False
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self.coordinator.shutdown()
        self.counters.shutdown()
        self.delivery.stop()
        self.antientropy.stop()
        self.rebalancer.stop()
        if self._gc.running:
            self._gc.stop()

    # -- membership -> ring ----------------------------------------------------------------

    def _member_changed(self, event: MemberEvent) -> None:
        node = event.node_id
        if node != self.node_id and event.new_state is MemberState.ALIVE:
            self.delivery.poke()
        self._refresh_view()

    def _refresh_view(self) -> None:
        """Derive the ring and the movements from membership (docs/consistency.md §13), and
        persist what changed."""
        previous = self._view
        members = [
            MemberView(m.node_id, m.state, status_of(m.metadata),
                       m.metadata.get(REMOVING_KEY) or None)
            for m in self.membership.members() if m.node_id != self.node_id
        ]
        rebalancer = self.rebalancer
        view = derive_view(previous.ring, members, previous.gone, self.node_id,
                           rebalancer.status, rebalancer.removing)
        self._view = view
        ops: list[tuple[bytes, bytes | None]] = []
        for node in sorted(view.ring - {self.node_id}):
            member = self.membership.get(node)
            address = member.address if member is not None else self._known.get(node)
            if node not in previous.ring:
                _log.info("Ring: {node} joins", node=node)
            if address is not None and self._known.get(node) != address:
                self._known[node] = address
                ops.append((RING_PREFIX + node.encode("utf-8"), address.encode("utf-8")))
        for node in sorted(previous.ring - view.ring - {self.node_id}):
            _log.info("Ring: {node} left the ring", node=node)
            self._known.pop(node, None)
            ops.append((RING_PREFIX + node.encode("utf-8"), None))
        for node in sorted(view.gone - previous.gone):
            ops.append((GONE_PREFIX + node.encode("utf-8"), b""))
        for node in sorted(previous.gone - view.gone):
            ops.append((GONE_PREFIX + node.encode("utf-8"), None))
        if ops:
            self._persist(ops)
        if view.ring != previous.ring:
            self._ring = Ring(view.ring, self.options.vnodes_per_node)
            rebalancer.ring_changed()
        target = view.target if view.movements else view.ring
        if target == view.ring:
            self._target_ring = None
        elif self._target_ring is None or set(self._target_ring.nodes) != target:
            self._target_ring = Ring(target, self.options.vnodes_per_node)

    def _persist(self, ops: list[tuple[bytes, bytes | None]]) -> None:
        """Record ring changes; not waited for: a lost one is relearnt by gossip."""
        try:
            self._committer.commit(ops)
        except StorageError as error:
            _log.warn("Cannot persist a ring change: {error}", error=str(error))

    # -- what the rebalancer asks of the runtime -------------------------------------------

    def announce_status(self, status: RingStatus, removing: str | None) -> None:
        """Gossip this node's ring status (and the node it removes), persist it, and
        re-derive the ring."""
        metadata = {**self._base_metadata, STATUS_KEY: status.value}
        if removing is not None:
            metadata[REMOVING_KEY] = removing
        me = self.membership.get(self.node_id)
        if self.running and me is not None and me.state is MemberState.ALIVE:
            self.membership_service.perform(
                self.membership.set_metadata(metadata, self._reactor.seconds()))
        self.persist_status(status)
        self._refresh_view()

    def persist_status(self, status: RingStatus) -> None:
        """Remember this node's ring status across restarts."""
        self._persist([(STATUS_DB_KEY, status.value.encode("ascii"))])

    def announce_left(self) -> None:
        """Announce that this node left for good (after handing its ranges over)."""
        self.membership_service.perform(self.membership.leave(self._reactor.seconds()))
        self._refresh_view()

    def declare_left(self, node_id: str) -> None:
        """Gossip that C{node_id} (a removed dead node) left, on its behalf."""
        self.membership_service.perform(self.membership.remove(
            node_id, self._reactor.seconds(), address=self.address_of(node_id)))
        self._refresh_view()

    def join_through(self, seed_address: str) -> None:
        """Start joining the cluster of the node at C{seed_address}."""
        self.membership_service.join_through([seed_address])

    def drop_records(self, keys: Sequence[bytes]) -> None:
        """Delete records this node no longer replicates (rebalancing cleanup).

        Counter entries of this node may be among them: should a key come back here, its
        copy could be older than what this node published, so it will act under a new id.
        """
        self.counters.records_dropped(self._ring)
        self._committer.commit([(DATA_PREFIX + key, None) for key in keys])
        self.replica.stats.records -= len(keys)

    def _collect_garbage(self) -> None:
        # Anti-entropy decides: a tombstone goes only once every replica confirmed it. Not
        # while ranges move: a target that streamed the value but not yet the tombstone
        # would keep the value.
        if self._view.movements:
            return
        self.antientropy.collect_garbage(self.options.gc_batch)

    def _remove_record(self, key: bytes) -> None:
        """Physically delete one collected record (anti-entropy's tombstone collection)."""
        self._committer.commit([(DATA_PREFIX + key, None)])
        self.replica.stats.records -= 1
        self.replica.stats.collected += 1


# -- the keyspace API -----------------------------------------------------------------------


class NotSupported(Exception):
    """The command has no cluster-mode implementation (yet)."""


class ClusterKeyspace:
    """L{twistkv.node.keyspace.LocalKeyspace}'s operations, replicated: every method that
    touches data returns a Deferred and takes a per-call C{consistency} (None = the cluster's
    default R or W). Failures are L{twistkv.node.coordinator.QuorumUnavailable} and
    L{twistkv.node.coordinator.KeyTooLong}.

    Differences from the local keyspace, documented in docs/consistency.md:
     - C{set_many} (MSET) writes each key independently: not atomic across keys.
     - Read-modify-write operations (C{delete}, C{set_expiry}, C{KEEP_TTL}) read at the
       given consistency, then write with the read's context, so they resolve siblings; they
       are not isolated from a concurrent writer (that one becomes a sibling, never lost).
       A command that computes its write from its own read (APPEND, GETDEL...) passes that
       read back (C{read_for_update}, L{Seen}) so that nothing is read a second time.
     - C{incr_by} (INCR family) is a PN-counter increment applied by one replica and
       replicated (L{twistkv.node.counters}): concurrent increments merge, none is lost.
     - C{key_count}, C{scan} and C{iter_keys} see this node's replica only.
     - Expired values are invisible at once; the replica's collector removes them after the
       tombstone grace period, so C{expire_due} has nothing to do.
    """

    #: A lone GET is a run of one (L{get_run}): it shares the peers' GET_BATCH frames.
    reads_in_runs = True

    def __init__(self, coordinator: Coordinator, counters: CounterService | None = None
                 ) -> None:
        self._coordinator = coordinator
        self._counters = counters
        self.expired_keys = 0

    def now_ms(self) -> int:
        """Wall-clock milliseconds from the reactor."""
        return self._coordinator.now_ms()

    def at(self, consistency: ConsistencyLevel | None) -> ClusterKeyspace | ConsistencyView:
        """This keyspace with reads and writes at C{consistency} (None = the defaults)."""
        return self if consistency is None else ConsistencyView(self, consistency)

    # -- reads -----------------------------------------------------------------------------

    def record(self, key: bytes, consistency: ConsistencyLevel | None = None
               ) -> Deferred[ReadResult]:
        """Every version the key has across its replicas (for VERSIONS), waiting for all
        replicas that answer before the deadline."""
        return self._coordinator.get(key, consistency, wait_for_all=True)

    def get(self, key: bytes, consistency: ConsistencyLevel | None = None
            ) -> Deferred[Version | None]:
        """The live last-writer version of C{key}, or None when absent, deleted or expired."""
        now = self.now_ms
        return self._coordinator.get(key, consistency).addCallback(
            lambda result: result.live(now())
        )

    def read_for_update(self, key: bytes, consistency: ConsistencyLevel | None = None
                        ) -> Deferred[Seen]:
        """L{get} for a read-modify-write command: the live version and the read's causal
        context, which the command's write (C{seen=} of L{set}, L{delete}, L{set_expiry})
        carries, so that it supersedes exactly what the command read."""
        now = self.now_ms

        def seen(result: ReadResult) -> Seen:
            return Seen(key, result.live(now()), result.context)

        return self._coordinator.get(key, consistency).addCallback(seen)

    def get_run(self, keys: Sequence[bytes], consistency: ConsistencyLevel | None = None
                ) -> Deferred[list[bytes | None | BaseException]]:
        """The live values of a run of pipelined GETs, in order, each read like L{get}; one
        Deferred for the run (L{Coordinator.get_run}): per key its value, None (absent,
        deleted or expired) or the error its own read would have failed with."""
        return self._coordinator.get_run(keys, consistency)

    def exists(self, key: bytes, consistency: ConsistencyLevel | None = None
               ) -> Deferred[bool]:
        """Whether C{key} holds a live value."""
        return self.get(key, consistency).addCallback(lambda version: version is not None)

    # -- writes ----------------------------------------------------------------------------

    def set(self, key: bytes, value: bytes, expires_at_ms: int = 0,
            consistency: ConsistencyLevel | None = None, *, seen: Seen | None = None
            ) -> Deferred[None]:
        """Store C{value}; C{expires_at_ms} 0 = no expiry, KEEP_TTL = keep.

        A blind write, unless C{seen} (L{read_for_update}) gives the read it follows: then
        it carries that read's context, and KEEP_TTL keeps the expiry read there.
        """
        coordinator = self._coordinator
        if seen is not None:
            seen.check(key)
            if expires_at_ms == KEEP_TTL:
                current = seen.current
                expires_at_ms = current.expires_at_ms if current is not None else 0
            return coordinator.put(key, value, consistency, expires_at_ms, seen.context
                                   ).addCallback(_none)
        if expires_at_ms == 0:
            # A run of one: mints no Version object to return.
            return coordinator.put_run(((key, value),), consistency).addCallback(_sole_outcome)
        if expires_at_ms != KEEP_TTL:
            return coordinator.put(key, value, consistency, expires_at_ms).addCallback(_none)

        def keep(result: ReadResult) -> Deferred[None]:
            current = result.live(self.now_ms())
            expiry = current.expires_at_ms if current is not None else 0
            return coordinator.put(key, value, consistency, expiry, result.context
                                   ).addCallback(_none)

        return coordinator.get(key, consistency).addCallback(keep)

    def set_run(self, pairs: Sequence[tuple[bytes, bytes]],
                consistency: ConsistencyLevel | None = None
                ) -> Deferred[list[BaseException | None] | None]:
        """Plain SETs of a run of pipelined commands, in order, each replicated like L{set};
        one Deferred for the run (L{Coordinator.put_run}): None once all were acknowledged,
        else each write's error (None where acknowledged), so that each command of the run
        gets its own answer."""
        return self._coordinator.put_run(pairs, consistency)

    def set_many(self, pairs: Sequence[tuple[bytes, bytes]],
                 consistency: ConsistencyLevel | None = None) -> Deferred[None]:
        """Store several keys, each replicated independently (not atomic across keys)."""
        latest = dict(pairs)
        writes = [self._coordinator.put(k, v, consistency) for k, v in latest.items()]
        return _all(writes).addCallback(_none)

    def delete(self, keys: Sequence[bytes], consistency: ConsistencyLevel | None = None, *,
               seen: Seen | None = None) -> Deferred[int]:
        """Write tombstones for the keys that hold a live value; fires with how many did.

        Each key is read first, and its tombstone carries that read's context; with C{seen}
        (one key: L{read_for_update}) the command's own read is that read.
        """
        coordinator = self._coordinator
        if seen is not None:
            if len(keys) != 1:
                raise ValueError("delete with seen= takes exactly the one key that was read")
            seen.check(keys[0])
            if seen.current is None:
                return succeed(0)
            return coordinator.delete(keys[0], consistency, seen.context).addCallback(
                lambda _: 1)

        def one(key: bytes) -> Deferred[int]:
            def decide(result: ReadResult) -> Deferred[int] | int:
                if result.live(self.now_ms()) is None:
                    return 0
                return coordinator.delete(key, consistency, result.context).addCallback(
                    lambda _: 1)
            return coordinator.get(key, consistency).addCallback(decide)

        unique = list(dict.fromkeys(keys))
        return _all([one(key) for key in unique]).addCallback(lambda counts: sum(counts))

    def set_expiry(self, key: bytes, expires_at_ms: int,
                   consistency: ConsistencyLevel | None = None, *, seen: Seen | None = None
                   ) -> Deferred[bool]:
        """Change the expiry of a live key (0 = persist); fires with whether it existed.
        The key is read first, or C{seen} (L{read_for_update}) is that read."""
        coordinator = self._coordinator

        def change(read: Seen) -> Deferred[bool] | bool:
            current = read.current
            if current is None:
                return False
            if expires_at_ms and expires_at_ms <= self.now_ms():
                return coordinator.delete(key, consistency, read.context).addCallback(
                    lambda _: True)
            return coordinator.put(key, current.value, consistency, expires_at_ms,
                                   read.context).addCallback(lambda _: True)

        if seen is not None:
            seen.check(key)
            return maybeDeferred(change, seen)
        return self.read_for_update(key, consistency).addCallback(change)

    def incr_by(self, key: bytes, delta: int, consistency: ConsistencyLevel | None = None
                ) -> Deferred[int]:
        """INCRBY as a PN-counter increment (L{twistkv.node.counters}): fires with the new
        value once W replicas hold it. Concurrent increments through any nodes all count.
        Fails with L{twistkv.node.counters.IncrementUnavailable} (saying whether the
        increment counts), L{twistkv.core.counter.CounterError} or L{KeyTooLong}."""
        if self._counters is None:
            return fail(NotSupported("INCR needs the cluster's counter service"))
        return self._counters.increment(key, delta, consistency)

    def flush(self) -> Deferred[None]:
        """FLUSHDB is refused in cluster mode: it would need a tombstone for every key."""
        return fail(NotSupported("FLUSHDB is not supported in cluster mode"))

    # -- local views -----------------------------------------------------------------------

    def key_count(self) -> int:
        """Records on this node's replica (tombstones included): an approximation of DBSIZE."""
        self._coordinator.issue_queued()  # the views include the SETs queued this turn
        return self._coordinator.replica.stats.records

    def scan(self, after: bytes | None, count: int,
             match: Callable[[bytes], bool] | None = None
             ) -> tuple[list[bytes], bytes | None]:
        """Like L{LocalKeyspace.scan}, over this node's replica only."""
        self._coordinator.issue_queued()
        now = self.now_ms()
        keys: list[bytes] = []
        last: bytes | None = None
        examined = 0
        start = None if after is None else after + b"\x00"
        for key, record in self._coordinator.replica.iterate(start):
            last = key
            examined += 1
            if live_value(record, now) is not None and (match is None or match(key)):
                keys.append(key)
            if examined >= count:
                return keys, last
        return keys, None

    def iter_keys(self, match: Callable[[bytes], bool] | None = None) -> Iterator[bytes]:
        """Every live key on this node's replica, in order."""
        self._coordinator.issue_queued()
        now = self.now_ms()
        for key, record in self._coordinator.replica.iterate():
            if (match is None or match(key)) and live_value(record, now) is not None:
                yield key

    def expire_due(self, limit: int | None = 200) -> int:
        """Nothing to do: expired versions are collected with tombstones (see class doc)."""
        return 0

    def keys_with_expiry(self) -> int:
        """Not tracked in cluster mode."""
        return 0


def _initial_status(persisted: bytes | None, known_ring: bool, seeds: bool) -> RingStatus:
    """This node's ring status at start: as persisted (a join or leave in progress restarts
    from the beginning), else NORMAL for a ring member of an earlier version or the first
    node of a cluster (no seeds), else WAITING (a new node, to join through the seeds)."""
    text = persisted.decode("ascii", "replace") if persisted is not None else None
    if text in ("left", "removed"):
        return RingStatus(text)
    if text in ("normal", "leaving"):
        return RingStatus.NORMAL
    if text in ("waiting", "joining"):
        return RingStatus.WAITING
    return RingStatus.NORMAL if known_ring or not seeds else RingStatus.WAITING


def _sole_outcome(errors: list[BaseException | None] | None) -> None:
    """The result of a run of one write: None, or its error raised."""
    if errors is not None and errors[0] is not None:
        raise errors[0]


def _none(_: object) -> None:
    return None


def _all(deferreds: Sequence[Deferred[Any]]) -> Deferred[list[Any]]:
    """Fire with every result, or fail with the first failure (its error, unwrapped)."""
    gathered: Deferred[list[Any]] = gatherResults(list(deferreds), consumeErrors=True)

    def unwrap(failure: Failure) -> Failure:
        error = failure.value
        return error.subFailure if isinstance(error, FirstError) else failure

    return gathered.addErrback(unwrap)


class ConsistencyView:
    """A L{ClusterKeyspace} bound to one consistency level (a connection's CONSISTENCY).

    The data methods get the level as their C{consistency} argument; everything else
    (key counts, expiry housekeeping, the clock) is the keyspace's own.
    """

    _BOUND = frozenset({"record", "get", "read_for_update", "get_run", "exists", "set",
                        "set_run", "set_many", "delete", "set_expiry", "incr_by"})

    def __init__(self, keyspace: ClusterKeyspace, consistency: ConsistencyLevel) -> None:
        self._keyspace = keyspace
        self.consistency = consistency

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._keyspace, name)
        if name in self._BOUND:
            return partial(attribute, consistency=self.consistency)
        return attribute

    def at(self, consistency: ConsistencyLevel | None) -> ClusterKeyspace | ConsistencyView:
        return self._keyspace.at(consistency)
