"""The client port driven by hand, like a telnet or nc user: raw bytes in, raw RESP out.

These tests check exact bytes on the wire, so they catch framing mistakes
that a client library would hide or repair.
"""

from __future__ import annotations

import re
import socket

import pytest

from .conftest import HOST, Node, NodeFactory

pytestmark = pytest.mark.integration


class Raw:
    """A plain TCP connection with helpers that read exactly one RESP2 reply."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError(f"server closed the connection; unread: {self.buf!r}")
        self.buf += chunk

    def read_line(self) -> bytes:
        """One line, CRLF included."""
        while b"\r\n" not in self.buf:
            self._fill()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line + b"\r\n"

    def read_exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_reply(self) -> bytes:
        """The raw bytes of one complete reply (nested arrays included)."""
        line = self.read_line()
        kind = line[:1]
        if kind in (b"$", b"="):
            length = int(line[1:-2])
            return line if length < 0 else line + self.read_exactly(length + 2)
        if kind in (b"*", b"%"):
            count = int(line[1:-2]) * (2 if kind == b"%" else 1)
            return line + b"".join(self.read_reply() for _ in range(max(count, 0)))
        return line

    def command(self, data: bytes) -> bytes:
        self.send(data)
        return self.read_reply()

    def closed_by_server(self) -> bool:
        """Whether the server closes the connection (EOF within the socket timeout).

        Bytes that arrive before EOF are a failure: nothing may follow the
        error that announced the close.
        """
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return self.buf == b""
                self.buf += chunk
        except TimeoutError:
            return False
        except ConnectionResetError:
            return self.buf == b""

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def telnet_node(module_node_factory: NodeFactory) -> Node:
    """One node for this module's tests (default limits: 16 MiB values)."""
    return module_node_factory.start("telnet")


@pytest.fixture
def conn(telnet_node: Node):
    """A raw connection to the module's node, closed after the test."""
    raw = Raw(telnet_node.client_port)
    yield raw
    raw.close()


def test_inline_set_get(conn: Raw) -> None:
    """Typed `SET greeting hello` answers +OK; `GET greeting` answers the bulk string."""
    assert conn.command(b"SET greeting hello\r\n") == b"+OK\r\n"
    assert conn.command(b"GET greeting\r\n") == b"$5\r\nhello\r\n"
    assert conn.command(b"GET no-such-greeting\r\n") == b"$-1\r\n"


def test_inline_ping_variants(conn: Raw) -> None:
    """PING in any case answers +PONG; PING msg echoes; a bare LF (nc) ends a line too;
    empty lines are ignored rather than answered.
    """
    assert conn.command(b"PING\r\n") == b"+PONG\r\n"
    assert conn.command(b"ping\r\n") == b"+PONG\r\n"
    assert conn.command(b"PING hello\r\n") == b"$5\r\nhello\r\n"
    assert conn.command(b"PING\n") == b"+PONG\r\n"
    assert conn.command(b"\r\n\r\n\nPING\r\n") == b"+PONG\r\n"


def test_inline_quoted_arguments(conn: Raw) -> None:
    """Double quotes group words and honour redis-cli escapes (\\" \\\\ \\n \\t \\xHH);
    single quotes are literal except for \\'.
    """
    assert conn.command(b'SET "telnet key" "two words \\"quoted\\" \\x41\\n\\t\\\\ end"\r\n') == b"+OK\r\n"
    double = b'two words "quoted" A\n\t\\ end'
    assert conn.command(b'GET "telnet key"\r\n') == b"$%d\r\n%s\r\n" % (len(double), double)

    assert conn.command(b"SET 'single q' 'it\\'s raw \\n'\r\n") == b"+OK\r\n"
    expected = b"it's raw \\n"
    assert conn.command(b"GET 'single q'\r\n") == b"$%d\r\n%s\r\n" % (len(expected), expected)

    # The value set inline is the same key a multibulk client sees.
    reply = conn.command(b"*2\r\n$3\r\nGET\r\n$10\r\ntelnet key\r\n")
    assert reply == b"$%d\r\n%s\r\n" % (len(double), double)


def test_inline_unbalanced_quotes_is_protocol_error(conn: Raw) -> None:
    """An unterminated quote is a protocol error, and the server closes the connection."""
    conn.send(b'SET k "unterminated\r\n')
    line = conn.read_line()
    assert line.startswith(b"-ERR Protocol error: "), line
    assert b"quote" in line.lower()
    assert conn.closed_by_server()


def test_help_lists_commands_in_plain_words(conn: Raw) -> None:
    """HELP answers readable text naming the main commands, each with a short description."""
    reply = conn.command(b"HELP\r\n")
    assert reply[:1] in (b"$", b"="), reply[:80]
    text = reply.split(b"\r\n", 1)[1].decode()
    for name in ("GET", "SET", "DEL", "EXPIRE", "TTL", "SCAN", "INFO", "PING"):
        assert re.search(rf"^\s+{name}\b.*\w+ \w+", text, re.MULTILINE), f"{name} missing from HELP"
    assert "MULTI" not in re.findall(r"^\s+(\w+)", text, re.MULTILINE)
    assert conn.command(b"PING\r\n") == b"+PONG\r\n"


def test_unknown_command_then_connection_keeps_working(conn: Raw) -> None:
    """An unknown command gets -ERR unknown command (with its args), and the connection stays."""
    line = conn.command(b"FROB a b\r\n")
    assert line.startswith(b"-ERR unknown command 'FROB'"), line
    assert b"'a'" in line
    assert conn.command(b"SET after-unknown yes\r\n") == b"+OK\r\n"
    assert conn.command(b"GET after-unknown\r\n") == b"$3\r\nyes\r\n"


def test_wrong_arity_inline(conn: Raw) -> None:
    """A command with the wrong argument count gets Redis's error and the connection stays."""
    assert conn.command(b"GET\r\n") == b"-ERR wrong number of arguments for 'get' command\r\n"
    assert conn.command(b"PING\r\n") == b"+PONG\r\n"


@pytest.mark.parametrize(
    "frame",
    [
        b"*1\r\n$x\r\n",
        b"*abc\r\n",
        b"*1\r\n+PING\r\n",
        b"*2\r\n$-5\r\n",
    ],
    ids=["bad-bulk-length", "bad-count", "not-a-bulk", "negative-bulk-length"],
)
def test_malformed_multibulk_is_protocol_error_and_closes(telnet_node: Node, frame: bytes) -> None:
    """A malformed multibulk frame gets `-ERR Protocol error: ...`, then the server closes
    the connection (it cannot resynchronise); other connections are unaffected.
    """
    raw = Raw(telnet_node.client_port)
    try:
        raw.send(frame)
        line = raw.read_line()
        assert line.startswith(b"-ERR Protocol error: "), line
        assert raw.closed_by_server()
    finally:
        raw.close()
    other = Raw(telnet_node.client_port)
    try:
        assert other.command(b"PING\r\n") == b"+PONG\r\n"
    finally:
        other.close()


def test_huge_declared_lengths_refused_without_memory_blowup(telnet_node: Node) -> None:
    """Declaring billions of arguments or a multi-GiB bulk is refused with a protocol error;
    frames that declare large-but-legal sizes and then stall are not preallocated. RSS grows by
    less than 64 MiB through all of it, and other clients are served meanwhile.
    """
    rss_before = telnet_node.rss_kib()
    for frame in (b"*2147483648\r\n", b"*99999999999999\r\n", b"*1\r\n$4294967296\r\n"):
        raw = Raw(telnet_node.client_port)
        try:
            raw.send(frame)
            line = raw.read_line()
            assert line.startswith(b"-ERR Protocol error: "), (frame, line)
            assert raw.closed_by_server()
        finally:
            raw.close()

    # Legal-but-large declarations that never deliver their data.
    stalled = [Raw(telnet_node.client_port) for _ in range(8)]
    try:
        for i, raw in enumerate(stalled):
            raw.send(b"*1048576\r\n" if i % 2 else b"*2\r\n$3\r\nGET\r\n$16000000\r\nabc")
        probe = Raw(telnet_node.client_port)
        try:
            assert probe.command(b"PING\r\n") == b"+PONG\r\n"
            assert probe.command(b"SET still-serving 1\r\n") == b"+OK\r\n"
        finally:
            probe.close()
        growth_mib = (telnet_node.rss_kib() - rss_before) / 1024
        assert growth_mib < 64, f"RSS grew by {growth_mib:.0f} MiB"
    finally:
        for raw in stalled:
            raw.close()


def test_mixed_inline_and_multibulk_pipelined_in_one_send(conn: Raw) -> None:
    """Inline and multibulk commands sent in a single write are all answered, in order."""
    conn.send(
        b"PING\r\n"
        b"*3\r\n$3\r\nSET\r\n$5\r\nmixed\r\n$5\r\nvalue\r\n"
        b"GET mixed\r\n"
        b"*1\r\n$4\r\nPING\r\n"
        b"APPEND mixed !\r\n"
        b"*2\r\n$3\r\nGET\r\n$5\r\nmixed\r\n"
    )
    assert conn.read_reply() == b"+PONG\r\n"
    assert conn.read_reply() == b"+OK\r\n"
    assert conn.read_reply() == b"$5\r\nvalue\r\n"
    assert conn.read_reply() == b"+PONG\r\n"
    assert conn.read_reply() == b":6\r\n"
    assert conn.read_reply() == b"$6\r\nvalue!\r\n"


def test_quit_answers_ok_and_closes(conn: Raw) -> None:
    """QUIT answers +OK and the server then closes the connection."""
    assert conn.command(b"QUIT\r\n") == b"+OK\r\n"
    assert conn.closed_by_server()
