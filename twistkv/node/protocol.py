"""The client port: RESP2/RESP3 and telnet inline commands over TCP.

Thin by design: bytes go to L{twistkv.core.resp.RequestParser}, each parsed
command is looked up in L{twistkv.node.commands.COMMANDS_BY_NAME} and run,
and the replies go back through the RESP encoder, all replies of one
C{dataReceived} in one write.

Replies are written at the end of the reactor turn, not the moment they are
ready (L{ReplyFlusher}): the way Redis writes in C{beforeSleep}, so that
clients woken by one turn's replies are woken together.

Pipelining and durability: commands run in arrival order as soon as they
are parsed, even while an earlier write still waits for its group commit;
only the *replies* wait, in order. That is what lets sixteen pipelined SETs
share one WAL fsync instead of paying sixteen (Redis behaves the same way
with C{appendfsync always}: it executes, then replies after the fsync).
"""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import Callable
from time import perf_counter
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.tcp import Connection
from twisted.logger import Logger
from twisted.python.failure import Failure

from twistkv.core.resp import (
    Error,
    RequestParser,
    RespProtocolError,
    SimpleString,
    encode,
    encode_into_resp2,
    encode_into_resp3,
)
from twistkv.node.cluster import NotSupported
from twistkv.node.commands import (
    COMMANDS_BY_NAME,
    OK,
    ClientSession,
    Command,
    CommandError,
    NodeContext,
    QuitConnection,
    arity_error,
    refused_in_multi,
    unknown_command_error,
)
from twistkv.node.coordinator import KeyTooLong, QuorumUnavailable
from twistkv.node.metrics import CommandStat
from twistkv.storage.errors import StorageError

__all__ = ["ReplyFlusher", "RespProtocol", "RespFactory"]

_log = Logger()

#: Pause reading from a client whose replies are this far behind (a client
#: that pipelines without reading); resume once it has caught up.
_PAUSE_AT = 10_000
_RESUME_AT = 1_000

#: Spellings of command names cached per connection (see L{RespProtocol._route}).
_MAX_ROUTES = 64

#: Reply types that are never a Deferred: an exact type check spares the ABC
#: instance check that C{isinstance(reply, Deferred)} costs.
_PLAIN_REPLIES = frozenset((bytes, type(None), SimpleString, int, list, Error))
_OK_WIRE = OK.wire  # +OK is the same in RESP2 and RESP3

_Route = tuple[
    Callable[[ClientSession, list[bytes]], Any], int, CommandStat, Command,
    Callable[[ClientSession, list[list[bytes]]], Any] | None, int,
]


class _Slot:
    """A reply position held for a command whose answer is not ready yet."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data: bytes | None = None


class ReplyFlusher:
    """Holds the client replies of one reactor turn and writes them all when it ends.

    Why: a reply sent the moment it is ready wakes a client that went back to
    sleep after the previous one; on this VM each such wake-up costs the sender
    an inter-processor interrupt (perf: 12% of a node's CPU in the wake-up under
    C{redis-benchmark -c 50 -P 16}). Replies written together at the end of the
    turn find the client already awake for all but the first. Redis does the
    same: it writes replies in C{beforeSleep}, before it polls again. The delay
    added is the rest of the turn's work, and only when more than one client is
    connected (see L{RespProtocol._send}): a lone client has nobody to share a
    wake-up with, so its reply is written at once.

    "End of the turn" is a C{callLater(0)}: replies completed by socket events are
    written before the reactor polls again. A reply completed inside a timer call (a
    request timing out) waits one more poll, which does not block: Twisted queues
    timers made by timers for its next pass.
    """

    def __init__(self, reactor: IReactorTime) -> None:
        self._reactor = reactor
        self._held: list[RespProtocol] = []
        self._scheduled = False

    def hold(self, protocol: RespProtocol) -> None:
        """Write C{protocol}'s held replies when this turn ends."""
        self._held.append(protocol)
        if not self._scheduled:
            self._scheduled = True
            self._reactor.callLater(0, self.flush)

    def flush(self) -> None:
        """Write every held reply, connection by connection (a failing one is logged and
        the others still get theirs)."""
        self._scheduled = False
        held, self._held = self._held, []
        for index, protocol in enumerate(held):
            try:
                protocol.flush_replies()
            except Exception:  # noqa: BLE001 - one connection's bug must not stall the others
                _log.failure("writing the replies of client {peer}; closing it",
                             peer=protocol._peer())
                # Its replies of this turn are gone: later ones must not reach the client
                # as answers to these commands, so the connection goes, as Redis does.
                protocol.abort()
            except BaseException:
                for waiting in held[index + 1:]:  # still written, on the next turn
                    self.hold(waiting)
                raise


class RespProtocol(Protocol):
    """One client connection."""

    def __init__(self, context: NodeContext, flusher: ReplyFlusher | None = None) -> None:
        self._context = context
        #: Writes this connection's replies at the end of the reactor turn (None: at once).
        self._flusher = flusher
        #: Replies held for the flusher this turn (None: nothing held).
        self._held: list[bytes] | None = None
        self._stats = context.stats
        config = context.config
        # Values up to twice the limit are parsed and refused with a clean
        # -ERR (the connection stays usable); beyond that the frame is a
        # protocol error and the connection closes, like Redis's
        # proto-max-bulk-len.
        self._parser = RequestParser(max_bulk_len=max(2 * config.max_value_bytes, 1 << 20))
        self._waiting: deque[_Slot | bytes] = deque()
        self._closing = False
        self._paused = False
        self.session: ClientSession | None = None
        #: The plain TCP socket, for L{_send}'s direct path (None: TLS or a test transport).
        self._socket: socket.socket | None = None
        #: Command name as this client spells it -> (handler, arity, counters, command).
        self._routes: dict[bytes, _Route] = {}
        #: The writes the keyspace queues for the end of the turn (NodeContext.barrier).
        self._barrier = context.barrier
        #: A reply waits and its write may still be queued: the barrier's mark, to settle
        #: before the next command (None: nothing to settle).
        self._unissued: int | None = None

    # -- connection lifecycle ---------------------------------------------

    def connectionMade(self) -> None:
        context = self._context
        stats = self._stats
        stats.connections_total += 1
        if len(context.clients) >= context.config.max_clients:
            stats.rejected_connections += 1
            self.transport.write(b"-ERR max number of clients reached\r\n")
            self.transport.loseConnection()
            self._closing = True
            return
        transport = self.transport
        if isinstance(transport, Connection) and not transport.TLS:
            self._socket = transport.socket
        _no_delay(transport)
        client_id = context.next_client_id
        context.next_client_id += 1
        self.session = ClientSession(context, client_id, _describe(self.transport.getPeer()))
        context.clients[client_id] = self.session

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.session is not None:
            self._context.clients.pop(self.session.client_id, None)
        self._waiting.clear()
        self._held = None  # the flusher finds nothing to write

    # -- input --------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        parser = self._parser
        out: list[bytes] = []
        try:
            parser.feed(data)
            run = self._run
            while not self._closing:
                commands = parser.pop_commands()
                if not commands:
                    break
                run(commands, out)
        except RespProtocolError as exc:
            self._stats.protocol_errors += 1
            _log.info("closing client {peer}: {error}", peer=self._peer(), error=str(exc))
            self._emit(encode(Error(f"ERR {exc}"), 2), out)
            self._close_after_replies()
        if out:
            self._send(b"".join(out))
        if self._closing and not self._waiting:
            self.flush_replies()
            self.transport.loseConnection()

    def _route(self, name: bytes) -> _Route | None:
        """The cached dispatch entry for a command name as the client spells it.

        Caching by the raw spelling saves the upper-casing and the hash of a
        L{Command} on every call; the cache is bounded because a client could
        spell one name in many letter cases.
        """
        cmd = COMMANDS_BY_NAME.get(name) or COMMANDS_BY_NAME.get(name.upper())
        if cmd is None:
            return None
        stat = self._stats.command(cmd.name)
        route = (cmd.handler, cmd.arity, stat, cmd, cmd.run, cmd.run_arity)
        if len(self._routes) < _MAX_ROUTES:
            self._routes[name] = route
        return route

    def _run(self, commands: list[list[bytes]], out: list[bytes]) -> None:
        """Run the commands of one read in order, appending ready replies to C{out}.

        This is the per-command hot path (sixteen times per read under
        C{redis-benchmark -P 16}), so it avoids per-command objects and
        method calls where it can; replies that must wait take L{_deferred}.
        Consecutive calls of a command that has a L{Command.run} (pipelined
        GETs, plain SETs) execute as one run: one dispatch, one keyspace pass,
        one commit. Each command's time runs from the end of the previous one,
        so one clock reading per command serves both.
        """
        session = self.session
        assert session is not None
        routes = self._routes
        waiting = self._waiting
        protocol = session.protocol
        encode_into = encode_into_resp2 if protocol == 2 else encode_into_resp3
        count = len(commands)
        i = 0
        started = perf_counter()
        while i < count:
            args = commands[i]
            i += 1
            name = args[0]
            route = routes.get(name)
            if route is None:
                route = self._route(name)
                if route is None:
                    self._emit(encode(unknown_command_error(args), session.protocol), out)
                    started = perf_counter()
                    continue
            handler, arity, stat, cmd, run, run_arity = route
            if self._unissued is not None and cmd.name != "SET":
                # A command before this one may have queued a write (a plain SET in a cluster
                # waits for the end of the turn, to go with other clients' writes): have it
                # issued now, unless it went already, so that this command sees it, as a
                # pipeline's commands see the ones before them. (The mark, not a flag: a
                # later read may come in the same turn, as TLS records do, or in a later one.
                # A SET needs none: a plain one queues behind it, one with options is
                # coordinated alone, which issues the queue first.)
                mark, self._unissued = self._unissued, None
                self._barrier.settle(mark)  # type: ignore[union-attr]
            nargs = len(args)
            if arity != nargs and (arity > 0 or nargs < -arity):
                self._emit(encode(arity_error(cmd), session.protocol), out)
                started = perf_counter()
                continue
            if session.in_refused_multi and cmd.name not in ("EXEC", "DISCARD", "MULTI", "QUIT"):
                self._emit(encode(refused_in_multi(cmd), session.protocol), out)
                started = perf_counter()
                continue
            session.last_command = name
            if run is not None and nargs == run_arity and i < count:
                end = i
                while end < count and commands[end][0] == name and len(commands[end]) == nargs:
                    end += 1
                if end > i:
                    done = self._execute_run(run, cmd.name, stat, commands[i - 1:end], started, out)
                    if done is not None:
                        i = end
                        started = done
                        continue
            try:
                reply = handler(session, args)
            except QuitConnection:
                self._emit(encode(OK, session.protocol), out)
                self._close_after_replies()
                return
            except Exception as exc:  # noqa: BLE001 - every failure becomes a reply, never a dropped connection
                stat.errors += 1
                reply = error_reply(Failure(exc), cmd.name)
            if type(reply) not in _PLAIN_REPLIES and isinstance(reply, Deferred):
                self._deferred(reply, stat, started, out)
                started = perf_counter()
                continue
            now = perf_counter()
            stat.observe(now - started)
            started = now
            if session.protocol != protocol:  # HELLO switched it: its own reply uses the new one
                protocol = session.protocol
                encode_into = encode_into_resp2 if protocol == 2 else encode_into_resp3
            if waiting:
                waiting.append(encode(reply, protocol))
            elif reply is OK:
                out.append(_OK_WIRE)
            else:
                encode_into(out, reply)

    def _execute_run(
        self, run: Callable[[ClientSession, list[list[bytes]]], Any], name: str,
        stat: CommandStat, batch: list[list[bytes]], started: float, out: list[bytes],
    ) -> float | None:
        """Execute C{batch}, consecutive calls of one command, through its run handler.

        Returns when the next command starts (for its latency), or None when the run was
        not taken (the handler declined, or raised: nothing was applied) and the commands
        must run one by one, each getting its own reply and error.
        """
        try:
            wire = run(self.session, batch)
        except Exception as exc:  # noqa: BLE001 - the one-by-one path gives each its error
            if not isinstance(exc, StorageError):
                _log.failure("unexpected error in a run of {command}", Failure(exc), command=name)
            return None
        if wire is None:
            return None
        size = len(batch)
        if type(wire) is not bytes:
            self._deferred(wire, stat, started, out, size)
            return perf_counter()
        now = perf_counter()
        stat.observe_many(size, (now - started) / size)
        if self._waiting:
            self._waiting.append(wire)
        else:
            out.append(wire)
        return now

    def _deferred(
        self, reply: Deferred[Any], stat: CommandStat, started: float, out: list[bytes],
        run_size: int = 0,
    ) -> None:
        """Hold a place for a reply that is not ready yet; later replies queue behind it.

        C{run_size} > 0: C{reply} fires with the wire bytes of that many commands' replies
        (a run, see L{_run}); otherwise with one command's reply value.
        """
        if out:
            # Earlier replies of this read go first: the Deferred may already have
            # fired (a local read at ONE), and _drain would write it at once.
            self._send(b"".join(out))
            out.clear()
        slot = _Slot()
        self._waiting.append(slot)
        if self._barrier is not None:
            self._unissued = self._barrier.mark()
        reply.addCallbacks(
            self._deferred_reply, self._deferred_failure,
            callbackArgs=(slot, stat, started, run_size),
            errbackArgs=(slot, stat, started, run_size),
        )
        if len(self._waiting) >= _PAUSE_AT and not self._paused:
            self._paused = True
            self.transport.pauseProducing()

    # -- output -------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        """Hold C{data} for the end of the reactor turn (L{ReplyFlusher}), or write it now
        when there is no flusher or this is the only client connected."""
        held = self._held
        if held is not None:
            held.append(data)
            return
        flusher = self._flusher
        if flusher is not None and len(self._context.clients) > 1:
            self._held = [data]
            flusher.hold(self)
            return
        self._write(data)

    def abort(self) -> None:
        """Drop the connection at once: replies were lost, so none may follow."""
        self._held = None
        self._closing = True
        transport = self.transport
        if transport is not None:
            abort = getattr(transport, "abortConnection", None)
            try:
                if abort is not None:
                    abort()
                else:
                    transport.loseConnection()
            except Exception:  # noqa: BLE001 - best effort: the transport already failed once
                _log.failure("closing client {peer}", peer=self._peer())

    def flush_replies(self) -> None:
        """Write the replies held for the end of this turn, if any."""
        held = self._held
        if held is None:
            return
        self._held = None
        if self.transport is not None:
            self._write(held[0] if len(held) == 1 else b"".join(held))

    def _write(self, data: bytes) -> None:
        """Write to the client, calling send() at once when nothing is buffered.

        C{transport.write} buffers the bytes and registers the socket for
        writability, sending on the next reactor pass: two epoll_ctl calls and
        a loop iteration per reply, which py-spy measured at ~30% of the CPU
        under C{redis-benchmark -P 1 -c 50}. When Twisted holds nothing for this
        socket, we send directly (order is kept) and hand only what the kernel
        did not take to C{transport.write}. Errors are left to Twisted's own
        write path, which reports them as a lost connection.
        """
        transport = self.transport
        sock = self._socket
        if (
            sock is not None
            and not transport._tempDataBuffer
            and transport.offset >= len(transport.dataBuffer)
            and transport.connected
            and not transport.disconnecting
            and not transport._writeDisconnected
        ):
            try:
                sent = sock.send(data)
            except OSError:
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        transport.write(data)

    def _emit(self, data: bytes, out: list[bytes]) -> None:
        """Send C{data} now, or queue it behind replies still being awaited."""
        if self._waiting:
            self._waiting.append(data)
        else:
            out.append(data)

    def _deferred_reply(
        self, reply: Any, slot: _Slot, stat: CommandStat, started: float, run_size: int
    ) -> None:
        if run_size:
            # Every command of the run waited for the same event (its group commit, or the
            # last of its replicated writes).
            stat.observe_many(run_size, perf_counter() - started)
            if type(reply) is list:  # one outcome per command: some failed
                data = self._encode_outcomes(reply, stat)
            else:
                data = reply
        elif reply is OK:
            stat.observe(perf_counter() - started)
            data = _OK_WIRE
        else:
            stat.observe(perf_counter() - started)
            data = encode(reply, self.session.protocol if self.session is not None else 2)
        waiting = self._waiting
        if len(waiting) == 1 and waiting[0] is slot and not self._closing and not self._paused:
            # The only reply awaited (a lone write waiting for its fsync): send it.
            waiting.clear()
            self._send(data)
            return
        slot.data = data
        self._drain()

    def _encode_outcomes(self, outcomes: list[Any], stat: CommandStat) -> bytes:
        """The wire replies of a run whose commands ended differently: a reply value or an
        exception each."""
        protocol = self.session.protocol if self.session is not None else 2
        parts = []
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                stat.errors += 1
                outcome = error_reply(Failure(outcome), "", waited=True)
            parts.append(encode(outcome, protocol))
        return b"".join(parts)

    def _deferred_failure(
        self, failure: Failure, slot: _Slot, stat: CommandStat, started: float, run_size: int
    ) -> None:
        commands = run_size or 1
        stat.observe_many(commands, perf_counter() - started)
        stat.errors += commands
        protocol = self.session.protocol if self.session is not None else 2
        # A run fails as a whole (its one commit failed): each of its commands gets the error.
        slot.data = encode(error_reply(failure, "", waited=True), protocol) * commands
        self._drain()

    def _drain(self) -> None:
        """Write every reply at the head of the queue that is ready."""
        waiting = self._waiting
        ready: list[bytes] = []
        while waiting:
            head = waiting[0]
            if type(head) is bytes:
                ready.append(head)
            elif head.data is not None:  # type: ignore[union-attr]
                ready.append(head.data)  # type: ignore[union-attr]
            else:
                break
            waiting.popleft()
        if ready and self.transport is not None:
            if self._held is not None:
                self._held.append(b"".join(ready))
            elif waiting:
                # More replies of this pipeline are still awaited: buffer in Twisted's
                # transport, which sends everything that became ready during this reactor
                # turn in one send() (quorum acks and group commits complete replies in
                # bursts: one syscall instead of one per reply).
                self.transport.write(b"".join(ready))
            else:
                self._send(b"".join(ready))
        if self._paused and len(waiting) <= _RESUME_AT:
            self._paused = False
            self.transport.resumeProducing()
        if self._closing and not waiting:
            self.flush_replies()
            self.transport.loseConnection()

    def _close_after_replies(self) -> None:
        """Stop reading; the connection closes once queued replies are written."""
        self._closing = True

    def _peer(self) -> str:
        return self.session.peer if self.session is not None else "?"


def _no_delay(transport: Any) -> None:
    """Turn off Nagle's algorithm, as Redis does for its clients.

    Replies that wait for a quorum or a group commit are written one by one; with
    Nagle on, every reply after the first waits for the client's delayed ACK (~40 ms),
    which measured 45 ms per pipelined batch from a single client.
    """
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        try:
            set_no_delay(True)
        except OSError:
            pass  # not a TCP socket after all; nothing to tune


def error_reply(failure: Failure, command: str, waited: bool = False) -> Error:
    """Map a handler's failure to the RESP error the client sees.

    User errors carry their own Redis-style text; a storage failure says
    whether the write may have been applied; anything else is our bug and
    is logged with its traceback, the client getting a one-line summary.
    """
    error = failure.value
    if isinstance(error, CommandError):
        return Error(str(error))
    if isinstance(error, StorageError):
        _log.error("storage failure in {command}: {error}", command=command, error=str(error))
        if waited:
            return Error(
                "ERR storage failure on this node: the write was applied but may not be "
                f"durable: {error}"
            )
        return Error(f"ERR storage failure on this node, nothing was written: {error}")
    if isinstance(error, QuorumUnavailable):
        return Error(str(error))  # starts with UNAVAILABLE, Redis-style error code
    if isinstance(error, (KeyTooLong, NotSupported)):
        return Error(f"ERR {error}")
    _log.failure("unexpected error in command {command}", failure, command=command)
    return Error(f"ERR internal error: {failure.getErrorMessage()}")


def _describe(address: IAddress) -> str:
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    return f"{host}:{port}" if host is not None else str(address)


class RespFactory(Factory):
    """Builds a L{RespProtocol} per client connection of one node."""

    noisy = False

    def __init__(self, context: NodeContext, reactor: IReactorTime | None = None) -> None:
        """@param reactor: when given, replies are written at the end of each reactor
            turn (L{ReplyFlusher}); without one, as soon as they are ready."""
        self.context = context
        self.flusher = None if reactor is None else ReplyFlusher(reactor)

    def buildProtocol(self, addr: IAddress) -> RespProtocol:
        protocol = RespProtocol(self.context, self.flusher)
        protocol.factory = self
        return protocol
