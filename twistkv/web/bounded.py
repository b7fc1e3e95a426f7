"""HTTP requests whose body is bounded while it arrives, not after.

C{twisted.web} buffers a whole request body (in memory, or in a temporary
file past 100 kB) before any resource sees the request, so a check in a
route handler comes too late: a client could already have streamed 10 GB to
our disk. L{BoundedRequest} counts body bytes as the channel delivers them;
past the bound it drops what it holds, answers C{413} at once and closes the
connection, as nginx's C{client_max_body_size} does. The route handlers
still check the length themselves (L{twistkv.web.app}), so the bound holds
even when the resource is mounted in a plain C{Site}.

It also turns off Twisted's parsing of C{POST} form bodies into
C{request.args}: a value body is opaque bytes, never form fields, and
multipart parsing of a large body is work nobody asked for.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any, ClassVar

from twisted.web import http, server

__all__ = ["BoundedRequest", "bounded_request_factory", "too_large_response"]


def too_large_response(max_body_bytes: int) -> bytes:
    """The complete HTTP/1.1 C{413} response sent when a body passes the bound.

    Written straight to the transport: the request has not been parsed to
    the point where the normal response machinery could be used.
    """
    body = json.dumps(
        {
            "error": {
                "code": "body_too_large",
                "message": f"request body exceeds this node's limit of {max_body_bytes} bytes",
            }
        }
    ).encode("utf-8") + b"\n"
    head = (
        b"HTTP/1.1 413 Content Too Large\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: %d\r\n"
        b"Connection: close\r\n\r\n" % len(body)
    )
    return head + body


class BoundedRequest(server.Request):
    """A C{Request} that refuses bodies longer than C{max_body_bytes}.

    Use L{bounded_request_factory} to make a subclass with a concrete bound.

    @ivar body_refused: the body passed the bound and was dropped; a route
        that still runs (HTTP/2, where we cannot answer early) must answer 413.
    """

    max_body_bytes: ClassVar[int] = 16 * 1024 * 1024
    #: Called once for each body refused early (the node counts it); a
    #: tuple so the callable is not bound as a method.
    refusal_hooks: ClassVar[tuple[Callable[[], None], ...]] = ()

    _parsePOSTFormSubmission = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.body_refused = False
        self._received = 0
        self._declared_too_large = False
        self._answered_early = False

    def gotLength(self, length: int | None) -> None:
        """Refuse to buffer a body whose declared length is over the bound."""
        if length is not None and length > self.max_body_bytes:
            # Answer when the first body bytes arrive: by then Twisted has
            # sent any "100 Continue" it owed, so our 413 is the last thing
            # written on the connection.
            self._declared_too_large = True
            self.content = io.BytesIO()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        """Keep C{data} unless the body has passed the bound."""
        if self.body_refused:
            return
        self._received += len(data)
        if self._declared_too_large or self._received > self.max_body_bytes:
            self._refuse()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """Dispatch the request, unless it was already answered with a 413."""
        if self._answered_early:
            return
        super().requestReceived(command, path, version)

    def _refuse(self) -> None:
        self.body_refused = True
        content, self.content = self.content, io.BytesIO()
        if content is not None:
            content.close()  # frees the temporary file, if Twisted made one
        channel = self.channel
        transport: Any = getattr(channel, "transport", None)
        if isinstance(channel, http.HTTPChannel) and transport is not None:
            transport.write(too_large_response(self.max_body_bytes))
            channel.loseConnection()
            self._answered_early = True
            for hook in self.refusal_hooks:
                hook()


def bounded_request_factory(
    max_body_bytes: int, on_refused: Callable[[], None] | None = None
) -> type[BoundedRequest]:
    """A L{BoundedRequest} subclass for C{Site(..., requestFactory=...)}."""
    if max_body_bytes < 0:
        raise ValueError(f"max_body_bytes must be >= 0, not {max_body_bytes}")
    return type(
        "BoundedRequest",
        (BoundedRequest,),
        {"max_body_bytes": max_body_bytes, "refusal_hooks": (on_refused,) if on_refused else ()},
    )
