"""A deterministic, in-process TCP network on one fake clock.

Nodes register a listening address (C{"host:port"}) with a protocol factory;
clients dial through L{SimulatedNetwork.endpoint_factory}, which plugs
straight into L{twistkv.node.peer.PeerClientPool}. Each connection is a pair
of L{SimulatedTransport}s whose bytes travel one direction each, in order,
after a seeded random delay scheduled on the shared clock. Everything random
comes from one C{random.Random}, and every timer from one clock, so the same
seed gives the same run: L{SimulatedNetwork.log} records each connect,
delivery and reset for tests to compare.

The faults are those of TCP, not of a datagram network:

 - delay: each write arrives C{min_delay..max_delay} seconds later, never
   before an earlier write of the same direction;
 - partition: bytes between groups are held, not lost, and delivered after
   L{SimulatedNetwork.heal} (TCP retransmits); connects across a partition
   hang until healed or cancelled (SYNs are dropped, the dialler times out);
 - reset: L{SimulatedNetwork.kill} and L{SimulatedNetwork.drop_connections}
   end connections with C{connectionLost} on both sides and discard the
   bytes in flight; a killed address refuses connections both ways until
   L{SimulatedNetwork.revive}.

Bytes are never dropped, duplicated or reordered inside a connection: TCP
does not do that, and a stream that did would only test the frame decoder's
loss of sync, not the cluster. Message loss and duplication belong to the
layer above (a coordinator's retries, SWIM's probes): model loss as a reset,
and duplication by sending twice. Writes may be split (C{split_writes}) into
several C{dataReceived} calls, as TCP segments them, to exercise decoders.

test-case-name: tests.testing.test_network
"""

from __future__ import annotations

import itertools
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import (
    ConnectionAborted,
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
)
from twisted.internet.interfaces import (
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = ["NetworkEvent", "SimulatedNetwork", "SimulatedTransport"]

_FIN = object()  # end of stream marker queued behind the data, as TCP's FIN
_EPHEMERAL_PORTS = 40000


@dataclass(frozen=True)
class NetworkEvent:
    """One thing that happened on the network, for determinism checks and debugging."""

    at: float
    kind: str  # connect, refuse, deliver, close, reset, partition, heal, kill, revive
    source: str
    destination: str = ""
    detail: str = ""


def _host_port(address: str) -> tuple[str, int]:
    """C{"host:port"} -> parts; an address without a port (a pure client) gets port 0."""
    host, colon, port = address.rpartition(":")
    if not colon:
        return address, 0
    return host.strip("[]"), int(port)


class _Pipe:
    """One direction of a connection: in-order delivery after random delays."""

    def __init__(self, network: SimulatedNetwork, connection: _Connection,
                 source: str, destination: str, receiver: SimulatedTransport) -> None:
        self._network = network
        self._connection = connection
        self.source = source
        self.destination = destination
        self.receiver = receiver
        self.queue: deque[tuple[float, object]] = deque()
        self._last_due = 0.0
        self.call: IDelayedCall | None = None

    def push(self, chunk: object) -> None:
        network = self._network
        due = max(network.clock.seconds() + network.delay(), self._last_due)
        self._last_due = due
        self.queue.append((due, chunk))
        self.schedule()

    def schedule(self, at: float | None = None) -> None:
        """Arrange delivery of the head chunk, unless already arranged or held."""
        if self.call is not None or not self.queue or self._connection.closed:
            return
        if self._network.blocked(self.source, self.destination):
            return  # held: heal() reschedules
        now = self._network.clock.seconds()
        due = self.queue[0][0] if at is None else max(at, self.queue[0][0])
        self.call = self._network.clock.callLater(max(0.0, due - now), self._deliver)

    def release(self) -> None:
        """After a heal: deliver the held bytes one fresh delay from now."""
        if self.call is None and self.queue:
            self.schedule(at=self._network.clock.seconds() + self._network.delay())

    def _deliver(self) -> None:
        self.call = None
        network = self._network
        now = network.clock.seconds()
        while self.queue and self.queue[0][0] <= now and not self._connection.closed:
            if network.blocked(self.source, self.destination):
                return
            _, chunk = self.queue.popleft()
            if chunk is _FIN:
                network.record("close", self.source, self.destination)
                self._connection.finish(self.receiver)
                continue
            assert isinstance(chunk, bytes)
            network.record("deliver", self.source, self.destination, str(len(chunk)))
            self.receiver.receive(chunk)
        self.schedule()

    def discard(self) -> None:
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.call = None
        self.queue.clear()


@implementer(ITransport)
class SimulatedTransport:
    """One end of a simulated TCP connection (C{ITransport}, plus TCP option no-ops)."""

    def __init__(self, connection: _Connection, protocol: IProtocol,
                 host: IPv4Address, peer: IPv4Address) -> None:
        self._connection = connection
        self.protocol = protocol
        self._host = host
        self._peer = peer
        self.pipe: _Pipe | None = None  # outgoing direction, set by the connection
        self.disconnecting = False
        #: Set once this end got C{connectionLost}.
        self.lost = False
        self.producer: Any = None

    def write(self, data: bytes) -> None:
        if self.disconnecting or self.lost or not data:
            return
        assert self.pipe is not None
        network = self._connection.network
        for piece in network.split(data):
            self.pipe.push(piece)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """Close after the written bytes: FIN follows them; this end is done at once."""
        if self.disconnecting or self.lost:
            return
        self.disconnecting = True
        assert self.pipe is not None
        self.pipe.push(_FIN)
        self._connection.network.clock.callLater(
            0, self._connection.end, self, Failure(ConnectionDone())
        )

    def abortConnection(self) -> None:
        """Reset: both ends lose the connection now, bytes in flight are discarded."""
        if self.lost:
            return
        self._connection.reset("aborted", local=self)

    def getPeer(self) -> IPv4Address:
        return self._peer

    def getHost(self) -> IPv4Address:
        return self._host

    def receive(self, data: bytes) -> None:
        if not self.lost:
            self.protocol.dataReceived(data)

    # IConsumer / ITCPTransport niceties some protocols call; flow control is not simulated.
    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        self.loseConnection()

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def setTcpKeepAlive(self, enabled: bool) -> None:
        pass

    def logPrefix(self) -> str:
        return "simnet"


class _Connection:
    """A connected pair of transports between two node addresses."""

    def __init__(self, network: SimulatedNetwork, number: int,
                 client_address: str, server_address: str) -> None:
        self.network = network
        self.number = number
        self.client_address = client_address
        self.server_address = server_address
        self.closed = False
        self.transports: list[SimulatedTransport] = []
        self.pipes: list[_Pipe] = []

    def attach(self, client: IProtocol, server: IProtocol, client_port: int) -> None:
        c_host, _ = _host_port(self.client_address)
        s_host, s_port = _host_port(self.server_address)
        client_end = IPv4Address("TCP", c_host, client_port)
        server_end = IPv4Address("TCP", s_host, s_port)
        client_transport = SimulatedTransport(self, client, client_end, server_end)
        server_transport = SimulatedTransport(self, server, server_end, client_end)
        client_transport.pipe = _Pipe(self.network, self, self.client_address,
                                      self.server_address, server_transport)
        server_transport.pipe = _Pipe(self.network, self, self.server_address,
                                      self.client_address, client_transport)
        self.transports = [client_transport, server_transport]
        self.pipes = [client_transport.pipe, server_transport.pipe]
        server.makeConnection(server_transport)
        client.makeConnection(client_transport)

    def touches(self, address: str) -> bool:
        return address in (self.client_address, self.server_address)

    def finish(self, receiver: SimulatedTransport) -> None:
        """A FIN arrived at C{receiver}: it sees a clean close."""
        self.end(receiver, Failure(ConnectionDone()))

    def end(self, transport: SimulatedTransport, reason: Failure) -> None:
        if transport.lost:
            return
        transport.lost = transport.disconnecting = True
        if all(t.lost for t in self.transports):
            self._close()
        transport.protocol.connectionLost(reason)

    def reset(self, why: str, local: SimulatedTransport | None = None) -> None:
        """Tear down both ends now, discarding bytes in flight (a TCP RST)."""
        if self.closed:
            return
        self.network.record("reset", self.client_address, self.server_address, why)
        self._close()
        for transport in self.transports:
            if transport.lost:
                continue
            error = ConnectionAborted() if transport is local else ConnectionLost(
                f"connection reset by the simulated network ({why})"
            )
            transport.lost = transport.disconnecting = True
            transport.protocol.connectionLost(Failure(error))

    def _close(self) -> None:
        self.closed = True
        for pipe in self.pipes:
            pipe.discard()
        self.network.forget(self)


@dataclass(eq=False)
class _Dial:
    """A connect in progress."""

    source: str
    destination: str
    factory: IProtocolFactory
    deferred: Deferred[IProtocol] = field(default_factory=Deferred)
    call: IDelayedCall | None = None
    cancelled: bool = False


@implementer(IStreamClientEndpoint)
class _Endpoint:
    """C{IStreamClientEndpoint} dialling one address from one source address."""

    def __init__(self, network: SimulatedNetwork, source: str, destination: str) -> None:
        self._network = network
        self._source = source
        self._destination = destination

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        return self._network.dial(self._source, self._destination, factory)


class SimulatedNetwork:
    """Deterministic TCP between in-process nodes; see the module docstring."""

    def __init__(self, clock: Clock, rng: random.Random, *, min_delay: float = 0.001,
                 max_delay: float = 0.005, split_writes: bool = False) -> None:
        """
        @param clock: the clock every node of the test shares (a C{MemoryReactorClock}).
        @param rng: the only randomness used; seed it.
        @param split_writes: deliver each write in up to 3 random pieces.
        """
        if not 0 <= min_delay <= max_delay:
            raise ValueError("need 0 <= min_delay <= max_delay")
        self.clock = clock
        self._rng = rng
        self.min_delay = min_delay
        self.max_delay = max_delay
        self._split = split_writes
        self._listeners: dict[str, IProtocolFactory] = {}
        self._down: set[str] = set()
        self._groups: dict[str, int] | None = None
        self._connections: dict[int, _Connection] = {}
        self._parked: list[_Dial] = []
        self._numbers = itertools.count(1)
        self._ports = itertools.count(_EPHEMERAL_PORTS)
        #: Everything that happened, in order (see L{NetworkEvent}).
        self.log: list[NetworkEvent] = []

    # -- randomness and bookkeeping ------------------------------------------------------

    def delay(self) -> float:
        """A one-way delay drawn from C{[min_delay, max_delay]}."""
        return self._rng.uniform(self.min_delay, self.max_delay)

    def split(self, data: bytes) -> list[bytes]:
        if not self._split or len(data) < 2:
            return [data]
        cuts = sorted(self._rng.sample(range(1, len(data)), min(2, len(data) - 1)))
        return [data[i:j] for i, j in zip([0, *cuts], [*cuts, len(data)], strict=True)]

    def record(self, kind: str, source: str, destination: str = "", detail: str = "") -> None:
        self.log.append(NetworkEvent(self.clock.seconds(), kind, source, destination, detail))

    def forget(self, connection: _Connection) -> None:
        self._connections.pop(connection.number, None)

    def blocked(self, source: str, destination: str) -> bool:
        """Whether a partition currently separates the two addresses."""
        groups = self._groups
        if groups is None:
            return False
        return groups.get(source, -1) != groups.get(destination, -1)

    # -- nodes -------------------------------------------------------------------------------

    def listen(self, address: str, factory: IProtocolFactory) -> None:
        """Accept connections to C{address} with C{factory} (replacing any earlier one)."""
        _host_port(address)
        self._listeners[address] = factory
        self._down.discard(address)

    def stop_listening(self, address: str) -> None:
        """Refuse new connections to C{address}; existing ones stay up."""
        self._listeners.pop(address, None)

    def endpoint_factory(self, source: str) -> Callable[[str], _Endpoint]:
        """What a node at C{source} passes to C{PeerClientPool(endpoint_factory=...)}."""
        return lambda destination: _Endpoint(self, source, destination)

    def connections(self, address: str | None = None) -> list[tuple[str, str]]:
        """Open connections as C{(client address, server address)}, oldest first."""
        return [(c.client_address, c.server_address) for c in self._connections.values()
                if address is None or c.touches(address)]

    # -- faults ------------------------------------------------------------------------------

    def partition(self, *groups: Iterable[str]) -> None:
        """Split the network: bytes flow only within a group; unlisted addresses form one
        more group together. Replaces any earlier partition."""
        lists = [list(group) for group in groups]
        membership: dict[str, int] = {}
        for number, group in enumerate(lists):
            for address in group:
                if address in membership:
                    raise ValueError(f"{address} is in two groups")
                membership[address] = number
        self._groups = membership
        self.record("partition", " | ".join(",".join(sorted(group)) for group in lists))
        self._unblock()

    def isolate(self, address: str) -> None:
        """Cut C{address} off from every other address (a pulled cable)."""
        self.partition([address])

    def heal(self) -> None:
        """End the partition: held bytes are delivered, hung connects proceed."""
        self._groups = None
        self.record("heal", "")
        self._unblock()

    def _unblock(self) -> None:
        """Release held bytes and hung connects that the current partition allows."""
        for connection in list(self._connections.values()):
            for pipe in connection.pipes:
                if not self.blocked(pipe.source, pipe.destination):
                    pipe.release()
        parked, self._parked = self._parked, []
        for dial in parked:
            if dial.cancelled:
                continue
            if self.blocked(dial.source, dial.destination):
                self._parked.append(dial)
            else:
                self._schedule_attempt(dial)

    def kill(self, address: str) -> None:
        """Crash the host at C{address}: reset its connections, refuse all connects to and
        from it until L{revive}.

        The node's objects share the clock and keep their timers: stop them too (for
        instance C{MembershipService.halt}) or the "dead" node keeps deciding things.
        """
        self._down.add(address)
        self.record("kill", address)
        self._reset_all(address, "killed")

    def revive(self, address: str, factory: IProtocolFactory | None = None) -> None:
        """Bring C{address} back, optionally listening with a new (restarted) node's factory."""
        self._down.discard(address)
        if factory is not None:
            self._listeners[address] = factory
        self.record("revive", address)

    def drop_connections(self, address: str) -> None:
        """Reset every connection to or from C{address} (the host stays up)."""
        self._reset_all(address, "dropped")

    def _reset_all(self, address: str, why: str) -> None:
        for connection in [c for c in self._connections.values() if c.touches(address)]:
            connection.reset(why)

    # -- connecting --------------------------------------------------------------------------

    def dial(self, source: str, destination: str,
             factory: IProtocolFactory) -> Deferred[IProtocol]:
        """Connect from C{source} to C{destination}; used by the endpoints."""
        _host_port(destination)

        def cancel(_: Deferred[IProtocol]) -> None:
            dial.cancelled = True
            if dial.call is not None and dial.call.active():
                dial.call.cancel()

        dial = _Dial(source, destination, factory, Deferred(cancel))
        self._schedule_attempt(dial)
        return dial.deferred

    def _schedule_attempt(self, dial: _Dial) -> None:
        dial.call = self.clock.callLater(self.delay(), self._attempt, dial)

    def _attempt(self, dial: _Dial) -> None:
        dial.call = None
        source, destination = dial.source, dial.destination
        listener = self._listeners.get(destination)
        if source in self._down or destination in self._down or listener is None:
            self.record("refuse", source, destination)
            dial.deferred.errback(ConnectionRefusedError(destination))
            return
        if self.blocked(source, destination):
            self._parked.append(dial)
            return
        connection = _Connection(self, next(self._numbers), source, destination)
        client_port = next(self._ports)
        host, port = _host_port(destination)
        c_host, _ = _host_port(source)
        server = listener.buildProtocol(IPv4Address("TCP", c_host, client_port))
        client = dial.factory.buildProtocol(IPv4Address("TCP", host, port))
        if server is None or client is None:
            self.record("refuse", source, destination, "factory returned None")
            dial.deferred.errback(ConnectionRefusedError(destination))
            return
        self._connections[connection.number] = connection
        self.record("connect", source, destination, str(connection.number))
        connection.attach(client, server, client_port)
        dial.deferred.callback(client)

    # -- running -----------------------------------------------------------------------------

    def run(self, until: float, max_calls: int = 1_000_000) -> None:
        """Advance the clock call by call up to C{until} (absolute), running every timer due.

        @raise RuntimeError: more than C{max_calls} timers ran (a livelock).
        """
        clock = self.clock
        for _ in range(max_calls):
            due = [call.getTime() for call in clock.getDelayedCalls()]
            next_time = min(due, default=None)
            if next_time is None or next_time > until:
                if until > clock.seconds():
                    clock.advance(until - clock.seconds())
                return
            if next_time > clock.seconds():
                clock.advance(next_time - clock.seconds())
                if clock.seconds() < next_time:  # float rounding: land exactly on the call
                    clock.rightNow = next_time
                    clock.advance(0)
            else:
                clock.advance(0)
        raise RuntimeError(f"more than {max_calls} timers ran before t={until}")

    def run_for(self, duration: float) -> None:
        """L{run} for C{duration} seconds from now."""
        self.run(self.clock.seconds() + duration)
