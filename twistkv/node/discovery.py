"""LAN discovery on the reactor: UDP broadcast announces (seed 002), off by default.

L{UDPDiscovery} is a C{DatagramProtocol} bound to the discovery port on all interfaces with
C{SO_REUSEADDR}/C{SO_REUSEPORT} (several nodes on one host can share the port, e.g. in tests)
and C{SO_BROADCAST}. It broadcasts this node's announce at start and then every C{interval}
seconds (with +-10% jitter so that nodes started together do not stay in step), and hands
the peer address of every announce that L{twistkv.core.discovery.decide} accepts to
C{on_peer}. It decides nothing itself.

L{DiscoveryService} runs it as a child of the node's service; L{cluster_discovery} builds
both for a L{twistkv.node.cluster.ClusterRuntime}, wired to its membership (see
C{docs/discovery.md}).

test-case-name: tests.node.test_udp_discovery
"""

from __future__ import annotations

import ipaddress
import os
import random
from collections import Counter
from collections.abc import Callable, Collection
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IListeningPort
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from twistkv.core.discovery import (
    DEFAULT_BROADCAST_ADDRESS,
    DEFAULT_DISCOVERY_PORT,
    DEFAULT_INTERVAL,
    DEFAULT_REPLAY_WINDOW,
    MAX_ANNOUNCE_BYTES,
    REASONS,
    DiscoveryError,
    DiscoveryIdentity,
    DiscoveryState,
    is_loopback_address,
)
from twistkv.core.membership import Membership, MemberState

__all__ = [
    "DiscoveryService",
    "UDPDiscovery",
    "cluster_discovery",
    "listen_broadcast",
    "live_member_ids",
    "membership_joiner",
]

_log = Logger()

#: Peer callback: called with a peer address (host:port) that membership should join.
PeerCallback = Callable[[str], None]
_LIVE = (MemberState.ALIVE, MemberState.SUSPECT)
_JITTER = 0.1
#: Refusals an operator should hear about: a misconfigured node, or a stranger.
_WARN_REASONS = frozenset({"auth_failed", "auth_mismatch", "loopback_address", "same_address"})
_MAX_WARNED = 256


def listen_broadcast(reactor: Any, port: int, protocol: DatagramProtocol,
                     interface: str = "") -> IListeningPort:
    """Bind C{protocol} to UDP C{port} on C{interface} (all by default), shareable.

    C{listenMulticast(listenMultiple=True)} is Twisted's public way to set C{SO_REUSEADDR}
    and C{SO_REUSEPORT} on a UDP port; no multicast group is joined. A socket bound to one
    unicast address does not receive broadcasts on Linux, so keep the default interface.
    """
    # The protocol allows broadcasting in startProtocol, which runs inside this call, before
    # its first announce.
    return reactor.listenMulticast(port, protocol, interface=interface, listenMultiple=True)


def _is_loopback_host(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class UDPDiscovery(DatagramProtocol):
    """Announce this node on the LAN and report the peers worth joining.

    @param reactor: provides C{seconds}, C{callLater} and C{listenMulticast} (only L{start}
        listens; tests may instead call C{makeConnection} with a fake transport).
    @param port: the UDP port to listen on and announce to.
    @param broadcast_address: where announces go: C{255.255.255.255} (the sender's segment,
        through the interface of the default route) or a subnet's directed broadcast address
        such as C{192.168.1.255}; a loopback address for nodes on one host.
    @param interval: seconds between announces.
    @param identity: cluster, node id, peer address and secret to announce and check with.
    @param on_peer: called with the peer address of each announcer to join.
    @param members: the node ids we hold live (ALIVE or SUSPECT), for L{decide} and our
        announce's member count; none by default (always "alone").
    @param rng: jitter; nonces come from C{os.urandom} unless C{nonce} is given (tests).
    """

    noisy = False  # no "Starting protocol" lines; startProtocol logs what matters

    def __init__(
        self,
        reactor: Any,
        port: int,
        broadcast_address: str,
        interval: float,
        identity: DiscoveryIdentity,
        on_peer: PeerCallback,
        *,
        members: Callable[[], Collection[str]] = tuple,
        interface: str = "",
        replay_window: float = DEFAULT_REPLAY_WINDOW,
        rejoin_after: float | None = None,
        rng: random.Random | None = None,
        nonce: Callable[[], bytes] = lambda: os.urandom(16),
    ) -> None:
        if not 0 < port < 65536:
            raise ValueError(f"discovery port must be 1-65535, not {port}")
        if not interval > 0:
            raise ValueError(f"discovery interval must be positive, not {interval}")
        self._reactor = reactor
        self.port = port
        self.broadcast_address = broadcast_address
        self.interval = interval
        self.identity = identity
        self._on_peer = on_peer
        self._members = members
        self._interface = interface
        self._rng = rng if rng is not None else random.Random()
        self._nonce = nonce
        self.state = DiscoveryState(
            identity, replay_window=replay_window,
            rejoin_after=rejoin_after if rejoin_after is not None else 6 * interval,
        )
        self._listening: IListeningPort | None = None
        self._timer: IDelayedCall | None = None
        self._send_error: str | None = None
        self._warned: set[tuple[str, str, str]] = set()
        #: Counters: sent, send_errors, received, garbage, handed, and one per verdict reason.
        self.stats: Counter[str] = Counter()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Listen on the discovery port and start announcing.

        @raise twisted.internet.error.CannotListenError: the port is taken by a socket
            without C{SO_REUSEADDR}/C{SO_REUSEPORT}.
        """
        if self._listening is None:
            self._listening = listen_broadcast(self._reactor, self.port, self, self._interface)

    def stop(self) -> Deferred[None]:
        """Stop announcing and close the port; fires when closed."""
        self._cancel_timer()
        listening, self._listening = self._listening, None
        if listening is None:
            return succeed(None)
        return maybeDeferred(listening.stopListening).addCallback(lambda _: None)

    def startProtocol(self) -> None:
        assert self.transport is not None
        self.transport.setBroadcastAllowed(True)  # SO_BROADCAST, else sendto gets EACCES
        if (is_loopback_address(self.identity.address)
                and not _is_loopback_host(self.broadcast_address)):
            _log.warn(
                "Discovery announces peer address {address}, which other hosts cannot dial; "
                "start the node with --advertise <LAN IP>:<peer port>",
                address=self.identity.address,
            )
        _log.info("Discovery: announcing {node} at {address} to {to}:{port} every {every} s",
                  node=self.identity.node_id, address=self.identity.address,
                  to=self.broadcast_address, port=self.port, every=self.interval)
        self.announce()

    def stopProtocol(self) -> None:
        self._cancel_timer()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    # -- announcing --------------------------------------------------------------------------

    def announce(self) -> None:
        """Broadcast our announce now and schedule the next one."""
        self._cancel_timer()
        if self.transport is None:
            return
        datagram = self.state.announce(self._live(), self._reactor.seconds(), self._nonce())
        try:
            self.transport.write(datagram, (self.broadcast_address, self.port))
        except Exception as error:  # noqa: BLE001 - OSError, MessageLengthError, bad address
            self.stats["send_errors"] += 1
            text = f"{type(error).__name__}: {error}"
            if text != self._send_error:  # log each new cause once, not every interval
                _log.warn("Discovery cannot broadcast to {to}:{port}: {error}",
                          to=self.broadcast_address, port=self.port, error=text)
            self._send_error = text
        else:
            self.stats["sent"] += 1
            if self._send_error is not None:
                _log.info("Discovery broadcasts again to {to}:{port}",
                          to=self.broadcast_address, port=self.port)
            self._send_error = None
        delay = self.interval * (1 + self._rng.uniform(-_JITTER, _JITTER))
        self._timer = self._reactor.callLater(delay, self.announce)

    def _live(self) -> Collection[str]:
        try:
            return self._members()
        except Exception:  # noqa: BLE001 - never let a view provider stop discovery
            _log.failure("Discovery: the member view failed")
            return ()

    # -- receiving ---------------------------------------------------------------------------

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.stats["received"] += 1
        host = str(addr[0]) if isinstance(addr, tuple) and addr else ""
        if len(datagram) > MAX_ANNOUNCE_BYTES:
            self.stats["garbage"] += 1
            return
        try:
            verdict = self.state.receive(datagram, self._reactor.seconds(), self._live(),
                                         source_is_loopback=_is_loopback_host(host))
        except DiscoveryError as error:
            self.stats["garbage"] += 1
            _log.debug("Discovery: ignored a datagram from {host}: {error}", host=host,
                       error=str(error))
            return
        self.stats[verdict.reason] += 1
        announce = verdict.announce
        if verdict.reason in _WARN_REASONS and announce is not None:
            key = (verdict.reason, announce.node_id, host)
            # Once per sender and reason at warn level: a stranger announces every interval.
            first = key not in self._warned and len(self._warned) < _MAX_WARNED
            if first:
                self._warned.add(key)
            (_log.warn if first else _log.debug)(
                "Discovery: ignored {node} ({address}) announced from {host}: {reason} ({why})",
                node=announce.node_id, address=announce.address, host=host,
                reason=verdict.reason, why=REASONS[verdict.reason])
        if verdict.seed is None:
            return
        self.stats["handed"] += 1
        _log.info("Discovery: found {node} at {address} (from {host}); joining",
                  node=announce.node_id if announce else "?", address=verdict.seed, host=host)
        try:
            self._on_peer(verdict.seed)
        except Exception:  # noqa: BLE001 - a failing callback must not stop discovery
            _log.failure("Discovery: on_peer failed for {address}", address=verdict.seed)


class DiscoveryService(Service):
    """Runs a L{UDPDiscovery} as part of a service tree (add it with C{setServiceParent})."""

    name = "discovery"

    def __init__(self, discovery: UDPDiscovery) -> None:
        self.discovery = discovery

    def startService(self) -> None:
        self.discovery.start()
        super().startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.discovery.stop()


def live_member_ids(membership: Membership) -> Callable[[], list[str]]:
    """A member view for L{UDPDiscovery}: node ids C{membership} holds ALIVE or SUSPECT."""
    return lambda: [m.node_id for m in membership.members() if m.state in _LIVE]


def membership_joiner(service: Any) -> PeerCallback:
    """An C{on_peer} that joins through the address with a running
    L{twistkv.node.gossip.MembershipService}: C{Membership.join([address], now)}, whose
    actions (a push-pull SWIM_SYNC to the address, then retries every
    C{join_retry_interval} until some sync answers) the service carries out.
    """

    def join(address: str) -> None:
        if not service.active:  # stopped or crashed
            return
        try:
            service.join_through([address])
        except (RuntimeError, ValueError) as error:  # left the cluster, or a bad address
            _log.warn("Discovery: cannot join through {address}: {error}", address=address,
                      error=str(error))

    return join


def cluster_discovery(
    reactor: Any,
    cluster: Any,
    *,
    cluster_name: str,
    secret: bytes | None,
    port: int = DEFAULT_DISCOVERY_PORT,
    broadcast_address: str = DEFAULT_BROADCAST_ADDRESS,
    interval: float = DEFAULT_INTERVAL,
    rng: random.Random | None = None,
) -> DiscoveryService:
    """Discovery for a L{twistkv.node.cluster.ClusterRuntime}: announces its node id and
    peer address, and joins announcers through its membership service.

    @param rng: announce jitter; seeded by deterministic simulations."""
    identity = DiscoveryIdentity(cluster_name, cluster.node_id, cluster.peer_address, secret)
    discovery = UDPDiscovery(
        reactor, port, broadcast_address, interval, identity,
        membership_joiner(cluster.membership_service),
        members=live_member_ids(cluster.membership), rng=rng,
    )
    return DiscoveryService(discovery)
