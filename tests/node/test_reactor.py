"""Tests for twistkv.node.reactor: the epoll reactor without the per-event log context."""

from __future__ import annotations

import errno
import select
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import capturedLogs

reactor_module = pytest.importorskip("twistkv.node.reactor")
if not hasattr(reactor_module, "LeanEPollReactor"):
    pytest.skip("no epoll on this platform", allow_module_level=True)
LeanEPollReactor = reactor_module.LeanEPollReactor


@pytest.fixture
def lean() -> Iterator[Any]:
    """A lean reactor instance (not installed as the global one), closed afterwards."""
    reactor = LeanEPollReactor()
    poller, selectables = reactor._poller, reactor._selectables
    yield reactor
    reactor._poller, reactor._selectables = poller, selectables  # a test may stub them
    for selectable in reactor.removeAll():  # accepted connections: close their sockets
        sock = getattr(selectable, "socket", None)
        if sock is not None:
            sock.close()
    poller.close()
    reactor.waker.connectionLost(None)  # closes its pipe


class _Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data.upper())


class _FakePoller:
    def __init__(self, result: list[tuple[int, int]] | OSError) -> None:
        self.result = result

    def poll(self, timeout: float, limit: int) -> list[tuple[int, int]]:
        if isinstance(self.result, OSError):
            raise self.result
        return self.result


def test_serves_a_real_connection_without_the_legacy_log_wrapper(
    lean: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bytes from a client reach a protocol through doPoll and its reply comes back, with
    twisted.python.log.callWithLogger never called (stock EPollReactor fails this)."""
    from twisted.python import log

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("callWithLogger was called")

    monkeypatch.setattr(log, "callWithLogger", forbidden)
    port = lean.listenTCP(0, Factory.forProtocol(_Echo), interface="127.0.0.1")
    client = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5)
    try:
        client.sendall(b"ping")
        client.setblocking(False)
        reply = b""
        for _ in range(200):
            lean.iterate(0.01)
            try:
                reply += client.recv(100)
            except BlockingIOError:
                pass
            if reply == b"PING":
                break
        assert reply == b"PING"
    finally:
        client.close()
        port.stopListening()
        lean.iterate(0)  # the port closes its socket on the next iteration


def test_an_error_escaping_one_handler_is_logged_and_the_others_still_run(lean: Any) -> None:
    """A handler that raises is logged with its traceback; the sockets after it in the same
    poll are still served, and a socket removed meanwhile is skipped."""
    broken, healthy = object(), object()
    lean._selectables = {10: broken, 12: healthy}
    lean._poller = _FakePoller([(10, select.EPOLLIN), (11, select.EPOLLIN), (12, select.EPOLLIN)])
    served: list[object] = []

    def dispatch(selectable: object, fd: int, event: int) -> None:
        served.append(selectable)
        if selectable is broken:
            raise RuntimeError("connectionLost blew up")

    lean._doReadOrWrite = dispatch
    with capturedLogs() as events:
        lean.doPoll(0)
    assert served == [broken, healthy]
    failures = [event["log_failure"] for event in events if "log_failure" in event]
    assert [failure.getErrorMessage() for failure in failures] == ["connectionLost blew up"]


def test_an_interrupted_poll_returns_and_other_poll_errors_raise(lean: Any) -> None:
    """EINTR (a signal arrived) ends the iteration quietly, as in Twisted's reactor; any
    other epoll_wait failure is a bug and propagates."""
    lean._poller = _FakePoller(OSError(errno.EINTR, "interrupted"))
    assert lean.doPoll(None) is None
    lean._poller = _FakePoller(OSError(errno.EBADF, "bad fd"))
    with pytest.raises(OSError, match="bad fd"):
        lean.doPoll(0)


def _run(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return result.stdout.strip()


def test_install_makes_it_the_global_reactor() -> None:
    """In a fresh process install() installs the lean reactor and returns it."""
    out = _run(
        "from twistkv.node.reactor import install\n"
        "installed = install()\n"
        "from twisted.internet import reactor\n"
        "print(installed is reactor, type(reactor).__name__)\n"
    )
    assert out == "True LeanEPollReactor"


def test_install_keeps_a_reactor_chosen_before() -> None:
    """A reactor installed first (twistd --reactor=poll) is kept: install() does nothing."""
    out = _run(
        "from twisted.internet import pollreactor\n"
        "pollreactor.install()\n"
        "from twistkv.node.reactor import install\n"
        "print(install())\n"
        "from twisted.internet import reactor\n"
        "print(type(reactor).__name__)\n"
    )
    assert out.split() == ["None", "PollReactor"]
