"""Server-Sent Events: an L{EventBus} streamed to a browser over one HTTP response.

Klein keeps a response open for as long as the route's Deferred has not fired,
and sends whatever the handler writes to the request meanwhile; it cancels the
Deferred when the client goes away. So L{EventStream.start} writes the stream's
preamble, subscribes to the bus, and returns a Deferred that never fires on its
own: its canceller (and C{request.notifyFinish()}, whichever comes first) ends
the subscription and the heartbeat. (Returning C{NOT_DONE_YET} instead would
make Klein finish the response after the first write.)

Wire format (https://html.spec.whatwg.org/multipage/server-sent-events.html)::

    id: <epoch>-<event id>
    event: <kind>
    data: <one line of JSON: twistkv.web.dashboard.event_view(event)>

Ids carry the bus's epoch, so a browser reconnecting (C{Last-Event-ID}, sent
by C{EventSource} on its own) to a node that restarted meanwhile is told
C{event: reset} instead of being replayed the wrong events; C{reset} is also
sent when the bus's buffer no longer reaches back to the browser's last id.
A comment line is sent every C{heartbeat} seconds so that proxies and the
browser keep an idle stream open.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.server import Request

from twistkv.node.events import Event, EventBus

__all__ = ["HEARTBEAT_S", "RETRY_MS", "EventStream", "format_event", "parse_event_id"]

_log = Logger()

#: Seconds between keep-alive comments.
HEARTBEAT_S = 15.0
#: What the browser waits before reconnecting a dropped stream.
RETRY_MS = 2000


def format_event(epoch: str, event_id: int, kind: str, data: Any) -> bytes:
    """One SSE message; C{data} is JSON-encoded on a single line."""
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"id: {epoch}-{event_id}\nevent: {kind}\ndata: {payload}\n\n".encode()


def parse_event_id(raw: bytes | str | None) -> tuple[str, int] | None:
    """C{(epoch, id)} from a C{Last-Event-ID} value, or None if it is not one of ours."""
    if raw is None:
        return None
    text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw
    epoch, _, number = text.strip().rpartition("-")
    if not epoch or not number.isdigit() or len(number) > 18:
        return None
    return epoch, int(number)


class EventStream:
    """One browser's subscription, written to its request; see the module docstring."""

    def __init__(self, request: Request, bus: EventBus, clock: IReactorTime, *,
                 render: Callable[[Event], Any], heartbeat: float = HEARTBEAT_S,
                 on_close: Callable[[], None] | None = None) -> None:
        self._request = request
        self._bus = bus
        self._render = render
        self._on_close = on_close
        self._unsubscribe: Callable[[], None] | None = None
        self._heartbeat = LoopingCall(self._beat)
        self._heartbeat.clock = clock
        self._heartbeat_s = heartbeat
        self._done: Deferred[None] = Deferred(lambda _: self.close())
        self.closed = False

    def start(self, last_event_id: bytes | str | None) -> Deferred[None]:
        """Write the preamble and any replay, then follow the bus until the client leaves."""
        request = self._request
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")
        request.notifyFinish().addBoth(lambda _: self.close())
        bus = self._bus
        self._write(f"retry: {RETRY_MS}\n: twistkv events, epoch {bus.epoch}\n\n".encode())
        last = parse_event_id(last_event_id)
        if last is not None:
            epoch, last_id = last
            replay = bus.since(last_id) if epoch == bus.epoch else None
            if replay is None or not replay.complete:
                self._write(format_event(bus.epoch, bus.last_id, "reset",
                                         {"reason": "missed events; reload the view"}))
            else:
                for event in replay.events:
                    self._send(event)
        self._unsubscribe = bus.subscribe(self._send)
        self._heartbeat.start(self._heartbeat_s, now=False)
        return self._done

    def close(self) -> None:
        """Stop following the bus (idempotent); the response itself is Klein's to end."""
        if self.closed:
            return
        self.closed = True
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._heartbeat.running:
            self._heartbeat.stop()
        if self._on_close is not None:
            self._on_close()

    def _send(self, event: Event) -> None:
        self._write(format_event(self._bus.epoch, event.id, event.kind, self._render(event)))

    def _beat(self) -> None:
        self._write(b": keep-alive\n\n")

    def _write(self, data: bytes) -> None:
        if self.closed:
            return
        if getattr(self._request, "finished", False) or getattr(
                self._request, "_disconnected", False):
            self.close()
            return
        self._request.write(data)
