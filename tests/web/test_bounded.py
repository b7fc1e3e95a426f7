"""Tests for twistkv.web.bounded, through a real HTTPChannel on a StringTransport.

These drive the bytes a client would send into the Site that
L{NodeWebApp.site} builds, so they show what goes back on the wire: when the
413 is sent (before the body is stored) and that the connection is closed.
"""

from __future__ import annotations

import json

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from webfakes import Web, make_web

from twistkv.web.app import REFUSED_BODY_ROUTE, max_body_bytes
from twistkv.web.bounded import bounded_request_factory, too_large_response

#: max_value_bytes=16 gives a body bound of 21 + 64 KiB.
BOUND = max_body_bytes(16)


class Wire:
    """One HTTP connection into the node's Site, with the bytes it sent back."""

    def __init__(self, web: Web) -> None:
        site = web.app.site(reactor=MemoryReactorClock())
        self.protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def received(self) -> bytes:
        return self.transport.value()

    def status(self) -> int:
        return int(self.received().split(b" ", 2)[1])


def request_head(method: str, path: str, length: int | None = None, extra: str = "") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: node"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def chunked(*chunks: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


@pytest.fixture
def small() -> Web:
    return make_web(max_value_bytes=16)


def test_small_put_goes_through(small: Web) -> None:
    """A body within every bound reaches the app, which stores it (201)."""
    wire = Wire(small)
    wire.send(request_head("PUT", "/kv/k", 5) + b"hello")
    assert wire.status() == 201
    assert small.node.keyspace.get(b"k").value == b"hello"  # type: ignore[union-attr]


def test_declared_length_over_bound_is_refused_before_storing(small: Web) -> None:
    """A Content-Length over the bound gets a JSON 413 on the first body bytes, and the connection closes."""
    wire = Wire(small)
    wire.send(request_head("PUT", "/kv/k", BOUND + 1))
    assert wire.received() == b""  # nothing answered before any body arrives
    wire.send(b"x" * 1000)
    assert wire.received() == too_large_response(BOUND)
    assert wire.transport.disconnecting
    wire.send(b"x" * 1000)  # the rest of the upload is ignored, never dispatched
    assert small.node.keyspace.get(b"k") is None
    assert small.node.stats.http_requests == {(REFUSED_BODY_ROUTE, 413): 1}


def test_chunked_body_is_cut_off_at_the_bound(small: Web) -> None:
    """A chunked upload that passes the bound is refused as soon as it does."""
    wire = Wire(small)
    wire.send(request_head("PUT", "/kv/k", extra="Transfer-Encoding: chunked\r\n"))
    wire.send(chunked(b"x" * (BOUND // 2)).removesuffix(b"0\r\n\r\n"))
    assert wire.received() == b""
    wire.send(chunked(b"x" * (BOUND // 2 + 10)))
    assert wire.status() == 413
    assert json.loads(wire.received().split(b"\r\n\r\n", 1)[1])["error"]["code"] == "body_too_large"
    assert small.node.keyspace.get(b"k") is None


def test_expect_continue_then_413(small: Web) -> None:
    """With Expect: 100-continue the client is told to continue, then refused once it sends too much."""
    wire = Wire(small)
    wire.send(request_head("PUT", "/kv/k", BOUND + 1, "Expect: 100-continue\r\n"))
    assert wire.received() == b"HTTP/1.1 100 Continue\r\n\r\n"
    wire.send(b"x")
    assert wire.received().endswith(too_large_response(BOUND))


def test_value_over_limit_but_within_body_bound_is_app_413(small: Web) -> None:
    """A chunked raw body under the channel bound but over max_value_bytes is refused by the route."""
    wire = Wire(small)
    wire.send(request_head("PUT", "/kv/k", extra="Transfer-Encoding: chunked\r\n") + chunked(b"x" * 17))
    assert wire.status() == 413
    body = wire.received().split(b"\r\n\r\n", 1)[1]
    assert b"value_too_large" in body
    assert small.node.stats.http_requests == {("/kv/<key>", 413): 1}


def test_form_posts_are_not_parsed(small: Web) -> None:
    """Twisted's form parsing is off: a form-encoded body is kept whole as the value."""
    wire = Wire(small)
    body = b"a=1&b=2"
    wire.send(
        request_head("POST", "/kv/k", len(body), "Content-Type: application/x-www-form-urlencoded\r\n")
        + body
    )
    assert wire.status() == 201
    assert small.node.keyspace.get(b"k").value == body  # type: ignore[union-attr]


def test_raw_get_sends_content_length_and_head_omits_body(small: Web) -> None:
    """GET sends Content-Length with the value; HEAD sends the same length and no bytes."""
    small.node.keyspace.set(b"k", b"12345")
    wire = Wire(small)
    wire.send(request_head("GET", "/kv/k"))
    head, body = wire.received().split(b"\r\n\r\n", 1)
    assert b"Content-Length: 5" in head and body == b"12345"
    wire = Wire(small)
    wire.send(request_head("HEAD", "/kv/k"))
    head, body = wire.received().split(b"\r\n\r\n", 1)
    assert b"Content-Length: 5" in head and body == b""


def test_factory_rejects_negative_bound() -> None:
    """A negative bound is a programming error, reported at once."""
    with pytest.raises(ValueError):
        bounded_request_factory(-1)


def test_factory_bound_is_per_class() -> None:
    """Each factory call makes its own class: two sites keep their own bounds."""
    a, b = bounded_request_factory(10), bounded_request_factory(20)
    assert (a.max_body_bytes, b.max_body_bytes) == (10, 20)
    assert a is not b
