"""Tests for twistkv.node.protocol: the client connection on a StringTransport."""

from __future__ import annotations

from typing import Any

import hiredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs

from twistkv.core.resp import encode
from twistkv.node.commands import NodeContext
from twistkv.node.protocol import RespFactory, RespProtocol
from twistkv.storage.errors import StoreIOError


def connect(context: NodeContext) -> tuple[RespProtocol, StringTransport]:
    protocol = RespFactory(context).buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def replies(transport: StringTransport) -> list[object]:
    """Parse (and consume) everything written so far as RESP replies."""
    reader = hiredis.Reader()  # parses RESP3 types too
    reader.feed(transport.value())
    transport.clear()
    out = []
    while (item := reader.gets()) is not False:
        out.append(item)
    return out


def test_inline_commands_like_telnet(context: NodeContext, clock: Clock) -> None:
    """Typed inline commands work: SET answers +OK once durable, GET answers the value."""
    protocol, transport = connect(context)
    protocol.dataReceived(b"SET greeting hello\r\n")
    assert transport.value() == b""  # waiting for the group commit
    clock.advance(0)
    assert transport.value() == b"+OK\r\n"
    transport.clear()
    protocol.dataReceived(b'GET greeting\r\nSET "two words" "a b"\r\n')
    clock.advance(0)
    assert transport.value() == b"$5\r\nhello\r\n+OK\r\n"


def test_pipelined_writes_share_one_sync_and_reply_in_order(
    context: NodeContext, clock: Clock, store: object
) -> None:
    """Sixteen pipelined SETs and interleaved GETs run at once and are answered in order after one sync."""
    protocol, transport = connect(context)
    frames = []
    for i in range(16):
        frames.append(b"*3\r\n$3\r\nSET\r\n$2\r\nk%d\r\n$2\r\nv%d\r\n" % (i % 10, i % 10))
        frames.append(b"*2\r\n$3\r\nGET\r\n$2\r\nk%d\r\n" % (i % 10))
    protocol.dataReceived(b"".join(frames))
    assert transport.value() == b""
    syncs_before = store.syncs  # type: ignore[attr-defined]
    clock.advance(0)
    assert store.syncs == syncs_before + 1  # type: ignore[attr-defined]
    got = replies(transport)
    assert got == [x for i in range(16) for x in (b"OK", b"v%d" % (i % 10))]


class _Barrier:
    """A write barrier that records when it is settled and whether that issued anything."""

    def __init__(self, context: NodeContext) -> None:
        self.context = context
        self.issues = 0
        self.settled: list[tuple[int, bool]] = []  # (GETs run so far, issued now)

    def mark(self) -> int:
        return self.issues

    def settle(self, mark: int) -> None:
        issued = mark == self.issues
        if issued:
            self.issues += 1
        self.settled.append((self.context.stats.command("GET").calls, issued))


def test_a_command_after_a_waiting_reply_first_settles_the_barrier(
    context: NodeContext, clock: Clock
) -> None:
    """The command that follows one whose reply waits settles the context's write barrier
    before it runs (a cluster issues the SETs it queued for the end of the turn there, so
    that the pipeline's later commands see them), with the mark taken when the reply began
    to wait; commands after a ready reply, a SET (it queues behind), and the end of a read
    settle nothing, so the writes of many clients can still go out together. A later read settles the mark its
    connection still holds: issued already when a turn ended in between (the barrier then
    issues nothing), not when the read came in the same turn (as TLS records do)."""
    barrier = _Barrier(context)
    context.barrier = barrier
    protocol, transport = connect(context)
    protocol.dataReceived(b"SET a 1\r\nSET b 2\r\nGET a\r\nPING\r\nGET b\r\nSET c 3\r\n")
    assert barrier.settled == [(0, True)]  # once, before the first GET ran
    protocol.dataReceived(b"SET e 5\r\n")  # a SET after a waiting reply: nothing to settle
    protocol.dataReceived(b"GET c\r\n")  # the same turn: SET e's mark still holds
    assert barrier.settled == [(0, True), (2, True)]
    clock.advance(0)
    assert replies(transport) == [b"OK", b"OK", b"1", b"PONG", b"2", b"OK", b"OK", b"3"]
    protocol.dataReceived(b"SET d 4\r\n")
    barrier.issues += 1  # the turn's end issued SET d
    protocol.dataReceived(b"GET d\r\nPING\r\n")
    assert barrier.settled == [(0, True), (2, True), (3, False)]
    clock.advance(0)
    assert replies(transport) == [b"OK", b"4", b"PONG"]


def test_unknown_command_and_wrong_arity_keep_connection(context: NodeContext) -> None:
    """Unknown commands and wrong arity answer Redis-style errors; the next command works."""
    protocol, transport = connect(context)
    protocol.dataReceived(b"FROB a b\r\nGET\r\nPING\r\n")
    got = replies(transport)
    assert isinstance(got[0], hiredis.ReplyError)
    assert str(got[0]).startswith("ERR unknown command 'FROB', with args beginning with: 'a' 'b'")
    assert str(got[1]) == "ERR wrong number of arguments for 'get' command"
    assert got[2] == b"PONG"
    assert not transport.disconnecting


def test_protocol_error_closes_connection(context: NodeContext) -> None:
    """An unparseable frame is answered with -ERR Protocol error and the connection closes."""
    protocol, transport = connect(context)
    protocol.dataReceived(b"PING\r\n*1\r\n$x\r\n")
    value = transport.value()
    assert value.startswith(b"+PONG\r\n-ERR Protocol error")
    assert transport.disconnecting
    assert context.stats.protocol_errors == 1


def test_quit_replies_then_closes(context: NodeContext) -> None:
    """QUIT answers +OK and then closes; commands after it in the same packet are not run."""
    protocol, transport = connect(context)
    protocol.dataReceived(b"QUIT\r\nSET after quit\r\n")
    assert transport.value() == b"+OK\r\n"
    assert transport.disconnecting
    assert context.keyspace.get(b"after") is None


def test_max_clients(context: NodeContext) -> None:
    """The connection beyond --max-clients gets a clear error and is closed; others are unaffected."""
    connections = [connect(context) for _ in range(3)]
    protocol, transport = connect(context)
    assert transport.value() == b"-ERR max number of clients reached\r\n"
    assert transport.disconnecting
    assert context.stats.rejected_connections == 1
    first, first_transport = connections[0]
    first.dataReceived(b"PING\r\n")
    assert first_transport.value() == b"+PONG\r\n"


def test_hello_3_switches_to_resp3(context: NodeContext) -> None:
    """After HELLO 3 a missing key is the RESP3 null and HELLO's answer is a map."""
    protocol, transport = connect(context)
    protocol.dataReceived(b"HELLO 3\r\nGET missing\r\n")
    raw = transport.value()
    assert raw.startswith(b"%")
    assert raw.endswith(b"_\r\n")
    got = replies(transport)
    assert got[0][b"proto"] == 3


def test_hello_other_version_is_noproto(context: NodeContext) -> None:
    """HELLO with an unsupported version answers -NOPROTO and keeps RESP2."""
    protocol, transport = connect(context)
    protocol.dataReceived(b"HELLO 4\r\nGET missing\r\n")
    assert transport.value() == b"-NOPROTO unsupported protocol version\r\n$-1\r\n"


def test_transactions_refused_clearly(context: NodeContext) -> None:
    """MULTI answers an error that points redis-py users at pipeline(transaction=False)."""
    protocol, transport = connect(context)
    protocol.dataReceived(b"MULTI\r\n")
    assert b"pipeline(transaction=False)" in transport.value()


def test_oversize_value_refused_connection_usable(context: NodeContext, clock: Clock) -> None:
    """A value over --max-value-bytes is refused with -ERR and nothing is stored."""
    protocol, transport = connect(context)
    big = b"x" * 2000
    protocol.dataReceived(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2000\r\n" + big + b"\r\nPING\r\n")
    got = replies(transport)
    assert "exceeds this node's limit of 1024 bytes" in str(got[0])
    assert got[1] == b"PONG"
    assert context.keyspace.get(b"k") is None


def test_help_lists_commands_in_plain_words(context: NodeContext) -> None:
    """HELP answers readable text naming the commands with a summary each."""
    protocol, transport = connect(context)
    protocol.dataReceived(b"HELP\r\n")
    (text,) = replies(transport)
    assert isinstance(text, bytes)
    for line in (b"GET key", b"SET key value", b"SCAN cursor", b"EXPIRE key seconds"):
        assert line in text
    assert b"Read a key's value" in text


def test_connection_lost_unregisters_client(context: NodeContext) -> None:
    """A closed connection no longer counts toward connected clients."""
    protocol, _ = connect(context)
    assert len(context.clients) == 1
    protocol.connectionLost()
    assert context.clients == {}


class SlowReads:
    """A keyspace whose reads answer later, like the cluster's quorum reads."""

    #: Like the cluster's keyspace: no synchronous multi-key read for runs of GETs.
    get_values = None

    def __init__(self, inner: object) -> None:
        self._inner = inner
        self.pending: list[tuple[Deferred[object], object]] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def get(self, key: bytes) -> Deferred[object]:
        d: Deferred[object] = Deferred()
        self.pending.append((d, self._inner.get(key)))  # type: ignore[attr-defined]
        return d

    def answer_all(self) -> None:
        pending, self.pending = self.pending, []
        for d, value in reversed(pending):  # answer out of order
            d.callback(value)


def test_async_reads_reply_in_order_and_map_errors(context: NodeContext, clock: Clock) -> None:
    """With reads that complete later and out of order, replies keep request order and
    a user error raised after the read (INCR on text) still reaches the client as -ERR."""
    slow = SlowReads(context.keyspace)
    context.keyspace.set(b"text", b"abc")
    context.keyspace.set(b"n", b"41")
    clock.advance(0)
    context.keyspace = slow  # type: ignore[assignment]
    protocol, transport = connect(context)
    protocol.dataReceived(b"GET n\r\nINCR text\r\nINCR n\r\nPING\r\n")
    assert transport.value() == b""
    slow.answer_all()
    clock.advance(0)
    got = replies(transport)
    assert got[0] == b"41"
    assert str(got[1]) == "ERR value is not an integer or out of range"
    assert got[2] == 42
    assert got[3] == b"PONG"


def test_refused_multi_runs_none_of_the_queued_commands(context: NodeContext, clock: Clock) -> None:
    """After a refused MULTI, queued commands are refused (not run) and EXEC answers EXECABORT."""
    protocol, transport = connect(context)
    protocol.dataReceived(b"MULTI\r\nSET a 1\r\nINCR c\r\nEXEC\r\nGET a\r\n")
    clock.advance(0)
    got = replies(transport)
    assert "not offered" in str(got[0])
    assert str(got[1]).startswith("ERR SET was not run")
    assert str(got[2]).startswith("ERR INCR was not run")
    assert str(got[3]).startswith("EXECABORT")
    assert got[4] is None
    assert context.keyspace.get(b"c") is None


def test_already_fired_deferred_reply_keeps_its_place(context: NodeContext) -> None:
    """A reply whose Deferred has already fired (a local read at ONE) is written after the
    plain replies parsed before it in the same packet, not ahead of them."""
    from twisted.internet.defer import succeed

    class FiredReads(SlowReads):
        def get(self, key: bytes) -> Deferred[object]:
            return succeed(self._inner.get(key))  # type: ignore[attr-defined]

    context.keyspace.set(b"k", b"v")
    context.keyspace = FiredReads(context.keyspace)  # type: ignore[assignment]
    protocol, transport = connect(context)
    protocol.dataReceived(b"PING\r\nGET k\r\nGET missing\r\nECHO last\r\n")
    assert replies(transport) == [b"PONG", b"v", None, b"last"]


class _KernelSocket:
    """Stands in for a TCP socket whose kernel buffer takes at most C{room} bytes per send."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> int:
        taken = data[: self.room]
        self.sent.append(taken)
        return len(taken)


def test_direct_send_hands_the_rest_to_twisted_in_order(context: NodeContext) -> None:
    """With nothing buffered a reply goes straight to send(); what the kernel refuses is
    buffered by the transport, and while anything is buffered later replies queue behind
    it instead of overtaking it."""
    protocol, transport = connect(context)
    # The attributes of twisted.internet.abstract.FileDescriptor that _send consults.
    transport._tempDataBuffer = []  # type: ignore[attr-defined]
    transport.offset = 0  # type: ignore[attr-defined]
    transport.dataBuffer = b""  # type: ignore[attr-defined]
    transport.connected = True  # type: ignore[attr-defined]
    transport._writeDisconnected = False  # type: ignore[attr-defined]
    kernel = _KernelSocket(room=3)
    protocol._socket = kernel  # type: ignore[assignment]
    protocol._send(b"+PONG\r\n")
    assert kernel.sent == [b"+PO"]
    assert transport.value() == b"NG\r\n"
    transport._tempDataBuffer = [b"NG\r\n"]  # type: ignore[attr-defined]  # Twisted still holds it
    protocol._send(b"+OK\r\n")
    assert kernel.sent == [b"+PO"]
    assert transport.value() == b"NG\r\n+OK\r\n"


def test_replies_completing_while_others_wait_are_sent_together(context: NodeContext) -> None:
    """Pipelined replies that complete while later ones of the pipeline are still awaited
    are buffered in Twisted's transport (sent together on its next write pass) rather than
    each costing a send() of its own; when nothing is awaited any more, the rest follows in
    order behind them, and a lone reply still goes straight to the socket."""
    context.keyspace.set(b"k", b"v")
    slow = SlowReads(context.keyspace)
    context.keyspace = slow  # type: ignore[assignment]
    protocol, transport = connect(context)
    buffered: list[bytes] = []
    plain_write = transport.write

    def write(data: bytes) -> None:  # what FileDescriptor.write keeps until doWrite
        buffered.append(data)
        plain_write(data)

    transport.write = write  # type: ignore[method-assign]
    transport._tempDataBuffer = buffered  # type: ignore[attr-defined]
    transport.offset = 0  # type: ignore[attr-defined]
    transport.dataBuffer = b""  # type: ignore[attr-defined]
    transport.connected = True  # type: ignore[attr-defined]
    transport._writeDisconnected = False  # type: ignore[attr-defined]
    kernel = _KernelSocket(room=1 << 20)
    protocol._socket = kernel  # type: ignore[assignment]
    protocol.dataReceived(b"GET k\r\nGET k\r\nGET missing\r\n")
    (d1, v1), (d2, v2), (d3, v3) = slow.pending
    d1.callback(v1)
    d2.callback(v2)
    assert kernel.sent == []  # two ready, one awaited: buffered, not sent one by one
    d3.callback(v3)
    assert kernel.sent == []  # queued behind the buffer, in order
    assert replies(transport) == [b"v", b"v", None]
    buffered.clear()  # Twisted's write pass sent it
    protocol.dataReceived(b"GET k\r\n")
    d4, v4 = slow.pending.pop()
    d4.callback(v4)
    assert kernel.sent == [b"$1\r\nv\r\n"]


def spell(word: bytes, mask: int) -> bytes:
    """C{word} with the letters whose bit is set in C{mask} switched to the other case."""
    return bytes(c ^ 32 if (mask >> j) & 1 else c for j, c in enumerate(word))


def test_command_names_in_any_letter_case_dispatch_and_count_as_one(
    context: NodeContext, clock: Clock
) -> None:
    """Every letter-case spelling of a name runs the same command, past the bound of the
    per-connection spelling cache (64 spellings of EXISTS, then GET spellings again), and
    all calls count under the command's one name."""
    protocol, transport = connect(context)
    protocol.dataReceived(b"SET k v\r\n")
    clock.advance(0)
    transport.clear()
    exists = [spell(b"exists", mask) for mask in range(64)]
    gets = [spell(b"get", mask) for mask in range(8)] * 2
    protocol.dataReceived(b"".join(b"%s k\r\n" % name for name in exists + gets))
    assert replies(transport) == [1] * 64 + [b"v"] * 16
    assert context.stats.commands["EXISTS"].calls == 64
    assert context.stats.commands["GET"].calls == 16


# -- runs of pipelined commands ----------------------------------------------------------------

_KEYS = [b"a", b"b", b"c"]
pipelined = st.lists(
    st.one_of(
        st.tuples(st.just(b"GET"), st.sampled_from(_KEYS)),
        st.tuples(st.just(b"SET"), st.sampled_from(_KEYS), st.binary(max_size=8)),
        st.tuples(st.just(b"SET"), st.sampled_from(_KEYS), st.just(b"x" * 1025)),  # refused
        st.tuples(st.just(b"SET"), st.sampled_from(_KEYS), st.just(b"v"), st.just(b"NX")),
        st.tuples(st.just(b"DEL"), st.sampled_from(_KEYS)),
        st.tuples(st.just(b"get"), st.sampled_from(_KEYS)),  # another spelling: not in the run
        st.tuples(st.just(b"GET")),  # wrong arity
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # a factory: no state
@given(commands=pipelined, protocol_version=st.sampled_from([2, 3]))
def test_a_pipeline_answers_as_its_commands_one_at_a_time(
    make_context: Any, commands: list[tuple[bytes, ...]], protocol_version: int
) -> None:
    """Sent as one pipeline (consecutive GETs and plain SETs execute as runs) or one command
    per read (no runs), the same commands give the same replies, the same data and the same
    call counts, in RESP2 and RESP3; oversized values and wrong arity stay per-command errors."""
    outcomes = []
    for together in (True, False):
        context, clock, _ = make_context()
        protocol, transport = connect(context)
        protocol.dataReceived(b"HELLO %d\r\n" % protocol_version)
        clock.advance(0)
        transport.clear()
        frames = [encode(list(command), 2) for command in commands]
        if together:
            protocol.dataReceived(b"".join(frames))
        else:
            for frame in frames:
                protocol.dataReceived(frame)
        clock.advance(0)
        data = {key: getattr(context.keyspace.get(key), "value", None) for key in _KEYS}
        calls = {name: stat.calls for name, stat in context.stats.commands.items()}
        outcomes.append((transport.value(), data, calls, context.keyspace.key_count()))
    assert outcomes[0] == outcomes[1]


def test_a_run_of_sets_shares_one_commit_and_answers_after_its_sync(
    context: NodeContext, clock: Clock, store: Any
) -> None:
    """Sixteen pipelined SETs are one commit and one sync; no reply goes out before the
    sync, then all sixteen +OK in order, each counted as a SET call."""
    protocol, transport = connect(context)
    commits = context.keyspace._committer.stats.commits  # type: ignore[attr-defined]
    syncs = store.syncs
    protocol.dataReceived(b"".join(encode([b"SET", b"k%d" % i, b"v"], 2) for i in range(16)))
    assert context.keyspace._committer.stats.commits == commits + 1  # type: ignore[attr-defined]
    assert transport.value() == b""
    clock.advance(0)
    assert store.syncs == syncs + 1
    assert transport.value() == b"+OK\r\n" * 16
    assert context.stats.commands["SET"].calls == 16


def test_a_run_whose_sync_fails_answers_every_command_with_the_error(
    context: NodeContext, clock: Clock, store: Any
) -> None:
    """When the one sync of a run fails, each of its commands gets the storage error (the
    writes were applied but may not be durable), not just the first, and each counts as an
    error."""
    protocol, transport = connect(context)

    def broken_sync() -> None:
        raise StoreIOError("disk on fire")

    store.sync = broken_sync  # type: ignore[method-assign]
    protocol.dataReceived(b"".join(encode([b"SET", b"k%d" % i, b"v"], 2) for i in range(3)) + b"PING\r\n")
    clock.advance(0)
    got = replies(transport)
    assert len(got) == 4 and got[3] == b"PONG"
    for error in got[:3]:
        assert isinstance(error, hiredis.ReplyError)
        assert "may not be durable" in str(error) and "disk on fire" in str(error)
    assert context.stats.commands["SET"].errors == 3


class ReplicatedRuns:
    """A keyspace whose runs of SETs settle later, some writes failing, like the cluster's."""

    def __init__(self, inner: object) -> None:
        self._inner = inner
        self.runs: list[tuple[list[tuple[bytes, bytes]], Deferred[object]]] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def set_run(self, pairs: list[tuple[bytes, bytes]]) -> Deferred[object]:
        d: Deferred[object] = Deferred()
        self.runs.append((pairs, d))
        return d


def test_a_run_whose_writes_end_differently_answers_each_command_its_own_outcome(
    context: NodeContext,
) -> None:
    """In a cluster one write of a pipelined run can fail while the others succeed: each
    command gets its own reply (+OK or its UNAVAILABLE error), in order, behind the replies
    before it, and only the failed one counts as an error."""
    from twistkv.node.coordinator import QuorumUnavailable

    replicated = ReplicatedRuns(context.keyspace)
    context.keyspace = replicated  # type: ignore[assignment]
    protocol, transport = connect(context)
    protocol.dataReceived(b"PING\r\n" + b"".join(
        encode([b"SET", key, b"v"], 2) for key in (b"a", b"b", b"c")))
    (pairs, settled), = replicated.runs
    assert pairs == [(b"a", b"v"), (b"b", b"v"), (b"c", b"v")]
    assert replies(transport) == [b"PONG"]
    lost = QuorumUnavailable("write", 1, 2, ["n1", "n2"], {"n2": "timed out"})
    settled.callback([None, lost, None])
    got = replies(transport)
    assert got[0] == b"OK" and got[2] == b"OK"
    assert isinstance(got[1], hiredis.ReplyError)
    assert str(got[1]).startswith("UNAVAILABLE write reached 1 of 2 required replicas")
    assert context.stats.commands["SET"].calls == 3
    assert context.stats.commands["SET"].errors == 1


class ReplicatedReads:
    """A keyspace whose GETs are runs that settle later, some reads failing, like the
    cluster's (where a lone GET is a run of one)."""

    reads_in_runs = True
    get_values = None  # reads do not answer synchronously here

    def __init__(self, inner: object) -> None:
        self._inner = inner
        self.runs: list[tuple[list[bytes], Deferred[object]]] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def get_run(self, keys: list[bytes]) -> Deferred[object]:
        d: Deferred[object] = Deferred()
        self.runs.append((list(keys), d))
        return d


def test_a_run_of_reads_that_end_differently_answers_each_command_its_own_outcome(
    context: NodeContext,
) -> None:
    """In a cluster pipelined GETs are read as one run: each command gets its own reply (its
    value, a null, or its UNAVAILABLE error), in order, behind the replies before it; a lone
    GET is a run of one whose failure is its error reply. Hits, misses and errors are
    counted per command."""
    from twistkv.node.coordinator import QuorumUnavailable

    replicated = ReplicatedReads(context.keyspace)
    context.keyspace = replicated  # type: ignore[assignment]
    protocol, transport = connect(context)
    protocol.dataReceived(b"PING\r\n" + b"".join(
        encode([b"GET", key], 2) for key in (b"a", b"b", b"c")))
    (keys, settled), = replicated.runs
    assert keys == [b"a", b"b", b"c"]
    assert replies(transport) == [b"PONG"]
    lost = QuorumUnavailable("read", 1, 2, ["n1", "n2"], {"n2": "timed out"})
    settled.callback([b"1", lost, None])
    got = replies(transport)
    assert got[0] == b"1" and got[2] is None
    assert isinstance(got[1], hiredis.ReplyError)
    assert str(got[1]).startswith("UNAVAILABLE read reached 1 of 2 required replicas")
    protocol.dataReceived(encode([b"GET", b"d"], 2) + encode([b"SET", b"e", b"v"], 2))
    (keys, settled) = replicated.runs[1]
    assert keys == [b"d"]
    settled.callback([lost])
    (alone,) = replies(transport)[:1]
    assert isinstance(alone, hiredis.ReplyError) and "UNAVAILABLE read" in str(alone)
    assert context.stats.commands["GET"].calls == 4
    assert context.stats.commands["GET"].errors == 2
    assert (context.stats.keyspace_hits, context.stats.keyspace_misses) == (1, 1)


def test_mget_in_a_cluster_reads_its_keys_as_one_run(context: NodeContext) -> None:
    """MGET's keys are read as one run: the reply lists each value (null when absent), and
    a key whose read failed fails the command with that key's error, the first in key
    order."""
    from twistkv.node.coordinator import QuorumUnavailable

    replicated = ReplicatedReads(context.keyspace)
    context.keyspace = replicated  # type: ignore[assignment]
    protocol, transport = connect(context)
    protocol.dataReceived(encode([b"MGET", b"a", b"b", b"c"], 2))
    (keys, settled), = replicated.runs
    assert keys == [b"a", b"b", b"c"]
    settled.callback([b"1", None, b"3"])
    assert replies(transport) == [[b"1", None, b"3"]]
    protocol.dataReceived(encode([b"MGET", b"a", b"b"], 2))
    first = QuorumUnavailable("read", 0, 2, ["n2"], {"n2": "timed out"})
    second = QuorumUnavailable("read", 1, 2, ["n3"], {"n3": "down"})
    replicated.runs[1][1].callback([first, second])
    (error,) = replies(transport)
    assert isinstance(error, hiredis.ReplyError) and "reached 0 of 2" in str(error)


# -- replies written at the end of the reactor turn (ReplyFlusher) ---------------------


def connect_flushed(
    context: NodeContext, clock: Clock, count: int
) -> list[tuple[RespProtocol, StringTransport]]:
    """C{count} clients of one factory whose replies wait for the end of the turn."""
    factory = RespFactory(context, clock)
    pairs = []
    for _ in range(count):
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        pairs.append((protocol, transport))
    return pairs


def test_replies_of_a_turn_are_held_until_it_ends(context: NodeContext, clock: Clock) -> None:
    """With several clients connected, replies ready during a turn are written together when
    it ends: nothing before, every client's replies in order after, one timer per turn."""
    (first, first_wire), (second, second_wire) = connect_flushed(context, clock, 2)
    first.dataReceived(b"PING\r\n")
    second.dataReceived(b"ECHO a\r\nECHO b\r\n")
    first.dataReceived(b"ECHO c\r\n")
    assert first_wire.value() == second_wire.value() == b""
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(0)
    assert first_wire.value() == b"+PONG\r\n$1\r\nc\r\n"
    assert second_wire.value() == b"$1\r\na\r\n$1\r\nb\r\n"
    assert clock.getDelayedCalls() == []
    first.dataReceived(b"PING\r\n")  # the next turn holds again
    assert first_wire.value() == b"+PONG\r\n$1\r\nc\r\n"
    clock.advance(0)
    assert first_wire.value().endswith(b"$1\r\nc\r\n+PONG\r\n")


def test_a_lone_client_is_answered_at_once(context: NodeContext, clock: Clock) -> None:
    """A single connected client has nobody to share a wake-up with: no reply waits."""
    ((protocol, transport),) = connect_flushed(context, clock, 1)
    protocol.dataReceived(b"PING\r\n")
    assert transport.value() == b"+PONG\r\n"
    assert clock.getDelayedCalls() == []


def test_held_replies_keep_order_with_replies_that_waited(
    context: NodeContext, clock: Clock
) -> None:
    """Replies that waited for a group commit join those held in the same turn behind the
    ones before them: one pipelined client sees SET, GET and PING answered in order."""
    (protocol, transport), _ = connect_flushed(context, clock, 2)
    protocol.dataReceived(b"ECHO first\r\n")  # held
    protocol.dataReceived(b"SET k v\r\nGET k\r\nPING\r\n")  # SET waits for its sync
    assert transport.value() == b""
    clock.advance(0)
    assert replies(transport) == [b"first", b"OK", b"v", b"PONG"]


def test_quit_writes_held_replies_before_closing(context: NodeContext, clock: Clock) -> None:
    """QUIT answers +OK after the replies before it and closes only once they are written."""
    (protocol, transport), _ = connect_flushed(context, clock, 2)
    protocol.dataReceived(b"PING\r\nQUIT\r\n")
    assert transport.value() == b"+PONG\r\n+OK\r\n"
    assert transport.disconnecting


def test_a_lost_connection_drops_its_held_replies(context: NodeContext, clock: Clock) -> None:
    """Replies held for a client that went away are dropped; the others are still written."""
    (gone, gone_wire), (kept, kept_wire) = connect_flushed(context, clock, 2)
    gone.dataReceived(b"PING\r\n")
    kept.dataReceived(b"PING\r\n")
    gone.connectionLost(None)
    clock.advance(0)
    assert gone_wire.value() == b""
    assert kept_wire.value() == b"+PONG\r\n"


def test_one_failing_write_does_not_stall_the_others(context: NodeContext, clock: Clock) -> None:
    """A connection whose write raises is logged and dropped (its replies are lost, so no
    later reply may reach it in their place); the other held replies are still written."""
    (broken, broken_wire), (kept, kept_wire) = connect_flushed(context, clock, 2)

    def fail(data: bytes) -> None:
        raise RuntimeError("transport broke")

    broken_wire.write = fail  # type: ignore[method-assign]
    broken.dataReceived(b"PING\r\n")
    kept.dataReceived(b"PING\r\n")
    with capturedLogs() as events:
        clock.advance(0)
    assert kept_wire.value() == b"+PONG\r\n"
    failures = [event["log_failure"] for event in events if "log_failure" in event]
    assert [failure.getErrorMessage() for failure in failures] == ["transport broke"]
    assert broken_wire.disconnecting
    broken.dataReceived(b"PING\r\n")  # a closing connection runs nothing more
    assert clock.getDelayedCalls() == []


def test_an_interrupt_while_writing_leaves_the_other_replies_held(
    context: NodeContext, clock: Clock
) -> None:
    """A KeyboardInterrupt raised while one connection is written propagates, and the
    connections after it keep their replies for the next turn instead of losing them."""
    import pytest

    (stopped, stopped_wire), (kept, kept_wire) = connect_flushed(context, clock, 2)

    def interrupt(data: bytes) -> None:
        raise KeyboardInterrupt

    stopped_wire.write = interrupt  # type: ignore[method-assign]
    stopped.dataReceived(b"PING\r\n")
    kept.dataReceived(b"ECHO later\r\n")
    with pytest.raises(KeyboardInterrupt):
        clock.advance(0)
    assert kept_wire.value() == b""
    clock.advance(0)
    assert kept_wire.value() == b"$5\r\nlater\r\n"


class StrictTransport(StringTransport):
    """A transport that, like a closed socket, takes no bytes once it was told to close."""

    def write(self, data: bytes) -> None:
        if not self.disconnecting:
            super().write(data)


def test_replies_that_waited_are_written_before_a_quit_closes(
    context: NodeContext, clock: Clock
) -> None:
    """GET (answered later, in a cluster) then QUIT: once the GET is answered, both replies
    reach the client before the connection closes, even when replies are held."""
    replicated = ReplicatedReads(context.keyspace)
    context.keyspace = replicated  # type: ignore[assignment]
    factory = RespFactory(context, clock)
    protocol = factory.buildProtocol(None)
    transport = StrictTransport()
    protocol.makeConnection(transport)
    other = factory.buildProtocol(None)
    other.makeConnection(StringTransport())
    protocol.dataReceived(b"GET a\r\nQUIT\r\n")
    assert not transport.disconnecting  # the GET is still awaited
    (_, settled), = replicated.runs
    settled.callback([b"1"])
    assert transport.value() == b"$1\r\n1\r\n+OK\r\n"
    assert transport.disconnecting


def test_replies_completed_out_of_turn_order_stay_behind_held_ones(
    context: NodeContext, clock: Clock
) -> None:
    """A reply that completes while a later one is still awaited (a cluster read) joins the
    replies held this turn, after those before it: nothing reaches the wire early."""
    replicated = ReplicatedReads(context.keyspace)
    context.keyspace = replicated  # type: ignore[assignment]
    (protocol, transport), _ = connect_flushed(context, clock, 2)
    protocol.dataReceived(b"PING\r\nGET a\r\n")
    protocol.dataReceived(b"GET b\r\n")
    (_, first), (_, second) = replicated.runs
    first.callback([b"1"])
    assert transport.value() == b""
    second.callback([b"2"])
    clock.advance(0)
    assert replies(transport) == [b"PONG", b"1", b"2"]
