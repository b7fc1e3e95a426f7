"""The HTTP API of one node: a Klein app on a class, bound to one node.

Routes (documented with examples in C{docs/http-api.md})::

    GET|HEAD /kv/<key>   value bytes, or ?format=json for value + versions
    PUT|POST /kv/<key>   store the body (?ttl=s / ?px=ms), or a JSON body with ?format=json
    DELETE   /kv/<key>   {"deleted": bool}
    GET /keys            ?prefix=&limit=&cursor=  keys in order, paged
    GET /health          200 / 503 with storage health
    GET /cluster         members and replication (one member until cluster mode)
    GET /metrics         Prometheus text
    GET /                dashboard (Jinja2); /api/node and /?format=json give its model
    GET /static/<path>   dashboard assets, from the installed package

Design:
 - Handlers are thin: they parse the request, call the node's
   L{LocalKeyspace}, and hand plain values to L{twistkv.web.views}.
 - Errors are exceptions (L{ApiError}, L{StorageError}, werkzeug's routing
   errors) mapped to one JSON shape, C{{"error": {"code", "message"}}}, at
   the edge with C{handle_errors}; nothing else answers plain text.
 - Writes answer only once durable: the handler awaits the keyspace's
   group-commit C{Wait} before it responds.
 - Keys in URLs are binary-safe: C{/kv/} is followed by any percent-encoded
   byte string (C{%2F} included). Twisted and Klein decode paths as UTF-8
   segments, which cannot carry arbitrary bytes, so L{resource} wraps the
   Klein resource in L{_ApiRoot}, which re-encodes the raw key as one ASCII
   segment before routing; handlers decode it back to bytes.
 - Every request is counted into C{stats.http_requests[(route, status)]},
   labelled by route pattern (bounded cardinality), when the response ends.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote_from_bytes, unquote_to_bytes

from klein import Klein
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from twistkv.node.keyspace import LocalKeyspace
from twistkv.storage.errors import StorageError
from twistkv.web.bounded import BoundedRequest, bounded_request_factory
from twistkv.web.templating import render, static_asset
from twistkv.web.views import (
    WebNode,
    cluster_view,
    health_view,
    node_view,
    record_view,
    snapshot_node,
    write_view,
)

__all__ = [
    "ApiError",
    "CLIENT_CLOSED",
    "DEFAULT_KEYS_LIMIT",
    "MAX_KEYS_LIMIT",
    "NodeWebApp",
    "REFUSED_BODY_ROUTE",
    "UNMATCHED_ROUTE",
    "decode_cursor",
    "encode_cursor",
    "max_body_bytes",
]

_log = Logger()

#: Route label for requests that matched no route (bad path, unknown URL).
UNMATCHED_ROUTE = "<unmatched>"
#: Route label for bodies refused by L{BoundedRequest} before routing.
REFUSED_BODY_ROUTE = "<body-too-large>"
#: Status counted when the client disconnects before its response was sent
#: (nginx's convention; never sent on the wire).
CLIENT_CLOSED = 499

DEFAULT_KEYS_LIMIT = 100
MAX_KEYS_LIMIT = 10_000
#: A C{/keys} page examines at most this many keys per key asked for (plus
#: a constant), so a range full of expired-but-unswept keys cannot make one
#: request scan without bound; the page then ends early with a cursor.
_EXAMINE_FACTOR = 4
_EXAMINE_EXTRA = 1024
_FIRST_BATCH = 8

#: Expiry times are unsigned 64-bit on disk; keep far inside that.
_MAX_EXPIRES_AT_MS = 2**62
#: Cursor format tag, so a cluster-wide cursor can be told apart later.
_CURSOR_TAG = b"k"

_JSON = b"application/json"
_F = TypeVar("_F", bound=Callable[..., Any])


class ApiError(Exception):
    """A request the node refuses, with its HTTP status and a stable error code.

    C{code} is for programs (it never changes), C{message} for people.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def max_body_bytes(max_value_bytes: int) -> int:
    """The largest request body worth reading for values of at most C{max_value_bytes}.

    Room for a JSON body carrying a maximal value in base64 (4/3 larger),
    plus its field names; raw bodies are then held to C{max_value_bytes}.
    """
    return max_value_bytes * 4 // 3 + 64 * 1024


def encode_cursor(key: bytes) -> str:
    """An opaque C{/keys} cursor: resume listing after C{key}.

    Tagged so it is never empty (the empty key is a valid key, and an empty
    cursor would mean "from the start": a client would loop forever).
    """
    return base64.urlsafe_b64encode(_CURSOR_TAG + key).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: bytes) -> bytes:
    """The key a cursor from L{encode_cursor} resumes after.

    @raise ApiError: 400, the cursor was not made by this node.
    """
    try:
        raw = base64.b64decode(cursor + b"=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if not raw.startswith(_CURSOR_TAG):
        raise ApiError(400, "invalid_cursor", "cursor is not one this API returned")
    return raw[len(_CURSOR_TAG) :]


def _seek_after(prefix: bytes) -> bytes | None:
    """An C{after} argument for L{LocalKeyspace.scan} that starts at C{prefix}.

    C{scan} resumes strictly after a key, so we need a key just below
    C{prefix}. When C{prefix} ends in a zero byte, dropping it is exact.
    Otherwise we lower the last byte and pad with C{0xff}: every key with
    the prefix sorts after that, and only keys sharing that exotic padded
    form fall in between (they are examined and filtered out).
    """
    if not prefix:
        return None
    if prefix[-1] == 0:
        return prefix[:-1]
    return prefix[:-1] + bytes((prefix[-1] - 1,)) + b"\xff" * 8


def list_page(
    keyspace: LocalKeyspace, prefix: bytes, after: bytes | None, limit: int
) -> tuple[list[bytes], bytes | None]:
    """Up to C{limit} live keys with C{prefix}, in order, after C{after}.

    Returns C{(keys, resume_after)}; C{resume_after} is None only when no
    key with the prefix follows. One extra key is looked for so the last
    page says so, instead of sending the client for an empty one.
    """
    match = (lambda key: key.startswith(prefix)) if prefix else None
    cursor = after if after is not None and after >= prefix else _seek_after(prefix)
    found: list[bytes] = []
    budget = limit * _EXAMINE_FACTOR + _EXAMINE_EXTRA
    # scan() examines exactly as many keys as asked, even past the end of
    # the prefix range; asking in doubling batches bounds that overshoot
    # by what the page returns, instead of by the limit.
    batch = _FIRST_BATCH
    while True:
        want = min(limit + 1 - len(found), batch)
        batch *= 2
        keys, last = keyspace.scan(cursor, want, match)
        found.extend(keys)
        budget -= want
        if len(found) > limit:
            return found[:limit], found[limit - 1]
        if last is None or (not last.startswith(prefix) and last > prefix):
            return found, None
        if budget <= 0:
            return found, last
        cursor = last


def _detached(wait: Any) -> Deferred[Any]:
    """A Deferred that fires with C{wait}'s result, without owning C{wait}.

    C{wait} is a keyspace result: a plain value, or a Deferred of one when
    the write must become durable first. Klein cancels a handler's Deferred
    when the client disconnects. Were we to return the committer's Deferred
    itself, that cancel would fire it early and the committer's own callback
    would then fail; so we relay.
    """
    if not isinstance(wait, Deferred):
        return succeed(wait)
    relay: Deferred[Any] = Deferred()

    def fire(result: object) -> None:
        if not relay.called:
            if isinstance(result, Failure):
                relay.errback(result)
            else:
                relay.callback(result)
        elif isinstance(result, Failure):
            _log.failure("durability wait failed after the client left", result)

    wait.addBoth(fire)
    return relay


def _route(app: Klein, pattern: str, *methods: str) -> Callable[[_F], _F]:
    """C{app.route}, also labelling each request with C{pattern} for the metrics."""

    def decorate(handler: _F) -> _F:
        @functools.wraps(handler)
        def labelled(self: NodeWebApp, request: Request, *args: Any, **kwargs: Any) -> Any:
            self._labels[request] = pattern
            return handler(self, request, *args, **kwargs)

        app.route(pattern, methods=list(methods) or ["GET"])(labelled)
        return handler

    return decorate


def _query(request: Request) -> dict[bytes, list[bytes]]:
    """The query string's parameters, as percent-decoded bytes.

    Read from the URI rather than C{request.args}: a plain C{Site} merges
    form-encoded POST bodies into C{args}, and a value body is not a form.
    """
    _, _, query = request.uri.partition(b"?")
    return parse_qs(query, keep_blank_values=True)


def _param(query: dict[bytes, list[bytes]], name: str) -> bytes | None:
    values = query.get(name.encode("ascii"))
    if not values:
        return None
    if len(values) > 1:
        raise ApiError(400, "invalid_parameter", f"parameter {name} given more than once")
    return values[0]


def _int_param(
    query: dict[bytes, list[bytes]], name: str, low: int, high: int, default: int | None = None
) -> int | None:
    raw = _param(query, name)
    if raw is None:
        return default
    text = raw.decode("ascii", "replace")
    if not (text.isdigit() and len(text) <= 20 and low <= int(text) <= high):
        raise ApiError(
            400, "invalid_parameter", f"{name} must be an integer from {low} to {high}, not {text!r}"
        )
    return int(text)


def _format(query: dict[bytes, list[bytes]]) -> str:
    raw = _param(query, "format")
    if raw is None or raw == b"raw":
        return "raw"
    if raw == b"json":
        return "json"
    raise ApiError(400, "invalid_parameter", "format must be raw or json")


def _show(key: bytes) -> str:
    """A key for an error message: readable, bounded, never invalid text."""
    text = key.decode("utf-8", "backslashreplace")
    return text if len(text) <= 200 else text[:200] + "..."


def _json_body(request: Request, status: int, document: object) -> bytes:
    body = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
    request.setResponseCode(status)
    request.setHeader(b"content-type", _JSON)
    request.setHeader(b"content-length", b"%d" % len(body))
    request.setHeader(b"cache-control", b"no-store")
    return body


def _error_body(request: Request, status: int, code: str, message: str) -> bytes:
    return _json_body(request, status, {"error": {"code": code, "message": message}})


def _read_body(request: Request, limit: int, what: str) -> bytes:
    """The request body, refusing with 413 anything over C{limit} bytes.

    The declared length is checked before reading, and the read itself is
    bounded, for chunked bodies that declare nothing.
    """
    too_large = ApiError(413, "value_too_large", f"{what} is larger than {limit} bytes")
    if getattr(request, "body_refused", False):
        raise too_large
    declared = request.getHeader(b"content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise ApiError(400, "bad_request", "Content-Length is not a number")
        if int(declared) > limit:
            raise too_large
    content = request.content
    if content is None:
        return b""
    content.seek(0)
    data: bytes = content.read(limit + 1)
    if len(data) > limit:
        raise too_large
    return data


def _ttl_ms(seconds: int | None, millis: int | None, source: str) -> int | None:
    if seconds is not None and millis is not None:
        raise ApiError(400, "invalid_parameter", f"give ttl or px in the {source}, not both")
    if seconds is not None:
        return seconds * 1000
    return millis


class _ApiRoot(Resource):
    """The resource a Site serves: counts requests, makes /kv/ keys binary-safe."""

    isLeaf = True

    def __init__(self, web: NodeWebApp, routed: Resource) -> None:
        super().__init__()
        self._web = web
        self._routed = routed

    def render(self, request: Request) -> Any:
        self._web._begin(request)
        raw_path = request.path
        if raw_path.startswith(b"/kv/"):
            key = unquote_to_bytes(raw_path[4:])
            request.postpath = [b"kv", quote_from_bytes(key, safe="").encode("ascii")]
        else:
            try:
                for segment in request.postpath or ():
                    segment.decode("utf-8")
            except UnicodeDecodeError:
                return _error_body(request, 400, "bad_request", "URL path is not UTF-8")
        return self._routed.render(request)


class NodeWebApp:
    """The HTTP API and dashboard of one node.

    Built by the node service as C{NodeWebApp(service)}; mount L{site} (or
    L{resource} in a C{Site} of your own) on the C{--http} endpoint.
    """

    app = Klein()

    def __init__(self, node: WebNode) -> None:
        self._node = node
        #: Route pattern of each request in flight, for the request counter.
        self._labels: dict[Request, str] = {}
        self._root = _ApiRoot(self, self.app.resource())

    # -- mounting ---------------------------------------------------------

    def resource(self) -> Resource:
        """The root resource: every route, JSON errors, request counting."""
        return self._root

    def site(self, reactor: IReactorTime | None = None) -> Site:
        """A C{Site} serving L{resource} that refuses oversized bodies as they arrive."""
        request_factory: type[BoundedRequest] = bounded_request_factory(
            max_body_bytes(self._node.config.max_value_bytes),
            on_refused=lambda: self._count(REFUSED_BODY_ROUTE, 413),
        )
        kwargs: dict[str, Any] = {} if reactor is None else {"reactor": reactor}
        site = Site(self._root, requestFactory=request_factory, **kwargs)
        site.noisy = False
        return site

    # -- request accounting -------------------------------------------------

    def _begin(self, request: Request) -> None:
        self._labels[request] = UNMATCHED_ROUTE
        request.notifyFinish().addCallbacks(
            lambda _: self._end(request, request.code),
            lambda _: self._end(request, CLIENT_CLOSED),
        )

    def _end(self, request: Request, status: int) -> None:
        self._count(self._labels.pop(request, UNMATCHED_ROUTE), status)

    def _count(self, route: str, status: int) -> None:
        counters = self._node.stats.http_requests
        counters[(route, status)] = counters.get((route, status), 0) + 1

    # -- helpers ------------------------------------------------------------

    def _keyspace(self) -> LocalKeyspace:
        context = self._node.context
        if context is None:
            raise ApiError(503, "node_starting", "the node has not opened its storage yet")
        return context.keyspace

    def _snapshot_host(self, request: Request) -> str:
        host: bytes = request.getRequestHostname()
        return host.decode("utf-8", "replace")

    # -- key-value routes ---------------------------------------------------

    @_route(app, "/kv/<key>", "GET", "HEAD")
    def get_value(self, request: Request, key: str) -> bytes:
        """The live value as raw bytes, or with its versions as JSON."""
        query = _query(request)
        fmt = _format(query)
        name = unquote_to_bytes(key)
        keyspace = self._keyspace()
        live = keyspace.get(name)
        stats = self._node.stats
        if live is None:
            stats.keyspace_misses += 1
            raise ApiError(404, "key_not_found", f"no such key: {_show(name)}")
        stats.keyspace_hits += 1
        if fmt == "json":
            view = record_view(name, live, keyspace.record(name), keyspace.now_ms())
            return _json_body(request, 200, view)
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"content-length", b"%d" % len(live.value))
        request.setHeader(b"cache-control", b"no-store")
        return live.value

    @_route(app, "/kv/<key>", "PUT", "POST")
    async def put_value(self, request: Request, key: str) -> bytes:
        """Store a value; answers once it is durable, 201 if the key was new."""
        query = _query(request)
        fmt = _format(query)
        name = unquote_to_bytes(key)
        limit = self._node.config.max_value_bytes
        query_ttl = _ttl_ms(
            _int_param(query, "ttl", 1, _MAX_EXPIRES_AT_MS // 1000),
            _int_param(query, "px", 1, _MAX_EXPIRES_AT_MS),
            "query",
        )
        if fmt == "json":
            body = _read_body(request, max_body_bytes(limit), "JSON body")
            value, body_ttl = _parse_json_value(body)
            if query_ttl is not None and body_ttl is not None:
                raise ApiError(400, "invalid_parameter", "give a TTL in the query or the body, not both")
            ttl = query_ttl if query_ttl is not None else body_ttl
        else:
            value, ttl = _read_body(request, limit, "value"), query_ttl
        if len(value) > limit:
            raise ApiError(413, "value_too_large", f"value is larger than {limit} bytes")

        keyspace = self._keyspace()
        now = keyspace.now_ms()
        expires_at = 0
        if ttl is not None:
            expires_at = now + ttl
            if expires_at >= _MAX_EXPIRES_AT_MS:
                raise ApiError(400, "invalid_parameter", "ttl is too far in the future")
        created = keyspace.get(name) is None
        wait = keyspace.set(name, value, expires_at)
        record = keyspace.record(name)
        version = record.winner() if record is not None else None
        assert version is not None, "a write just applied must be readable"
        try:
            await _detached(wait)
        except StorageError as exc:
            raise ApiError(
                503,
                "storage_unavailable",
                f"the write was applied but may not be durable: {exc}",
            ) from exc
        if created:
            request.setHeader(b"location", b"/kv/" + quote_from_bytes(name, safe="").encode())
        return _json_body(request, 201 if created else 200, write_view(name, version, created, now))

    @_route(app, "/kv/<key>", "DELETE")
    async def delete_value(self, request: Request, key: str) -> bytes:
        """Delete a key; answers once the deletion is durable."""
        name = unquote_to_bytes(key)
        try:
            removed = await _detached(self._keyspace().delete([name]))
        except StorageError as exc:
            raise ApiError(
                503,
                "storage_unavailable",
                f"the delete was applied but may not be durable: {exc}",
            ) from exc
        return _json_body(request, 200, {"deleted": removed > 0})

    @_route(app, "/keys", "GET")
    def list_keys(self, request: Request) -> bytes:
        """One page of keys in byte order, optionally under a prefix."""
        query = _query(request)
        prefix = _param(query, "prefix") or b""
        limit = _int_param(query, "limit", 1, MAX_KEYS_LIMIT, DEFAULT_KEYS_LIMIT)
        assert limit is not None
        cursor = _param(query, "cursor")
        after = decode_cursor(cursor) if cursor else None
        encoding = _param(query, "encoding")
        if encoding not in (None, b"utf-8", b"base64"):
            raise ApiError(400, "invalid_parameter", "encoding must be utf-8 or base64")
        keys, resume = list_page(self._keyspace(), prefix, after, limit)
        texts: list[str] = []
        if encoding != b"base64":
            try:
                texts = [key.decode("utf-8") for key in keys]
            except UnicodeDecodeError:
                if encoding == b"utf-8":
                    raise ApiError(
                        400, "invalid_parameter", "some keys are not UTF-8; use encoding=base64"
                    ) from None
                encoding = b"base64"
        if encoding == b"base64":
            texts = [base64.b64encode(key).decode("ascii") for key in keys]
        return _json_body(
            request,
            200,
            {
                "keys": texts,
                "encoding": "base64" if encoding == b"base64" else "utf-8",
                "next_cursor": encode_cursor(resume) if resume is not None else None,
            },
        )

    # -- node routes ----------------------------------------------------------

    @_route(app, "/health", "GET")
    def health(self, request: Request) -> bytes:
        """Liveness plus storage health: 503 when writes cannot be made durable."""
        view = health_view(snapshot_node(self._node, self._snapshot_host(request)))
        if view["storage"]["healthy"]:
            return _json_body(request, 200, view)
        view["error"] = {
            "code": "storage_unavailable",
            "message": "storage is failing; writes cannot be made durable",
        }
        return _json_body(request, 503, view)

    @_route(app, "/cluster", "GET")
    def cluster(self, request: Request) -> bytes:
        """Cluster membership and replication settings."""
        return _json_body(
            request, 200, cluster_view(snapshot_node(self._node, self._snapshot_host(request)))
        )

    @_route(app, "/metrics", "GET")
    def metrics(self, request: Request) -> bytes:
        """Prometheus exposition of this node's registry."""
        body: bytes = generate_latest(self._node.registry)
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"content-length", b"%d" % len(body))
        return body

    @_route(app, "/api/node", "GET")
    def node_json(self, request: Request) -> bytes:
        """The dashboard's view model as JSON."""
        return _json_body(request, 200, node_view(snapshot_node(self._node, self._snapshot_host(request))))

    @_route(app, "/", "GET")
    def index(self, request: Request) -> bytes:
        """The landing page, or its model with C{?format=json}."""
        view = node_view(snapshot_node(self._node, self._snapshot_host(request)))
        if _format(_query(request)) == "json":
            return _json_body(request, 200, view)
        body = render("index.html", node=view)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"content-length", b"%d" % len(body))
        request.setHeader(b"cache-control", b"no-store")
        return body

    @_route(app, "/static/<path:name>", "GET")
    def static(self, request: Request, name: str) -> bytes:
        """Dashboard assets shipped inside the package."""
        asset = static_asset(name)
        if asset is None:
            raise ApiError(404, "not_found", f"no static file {name!r}")
        request.setHeader(b"etag", asset.etag.encode("ascii"))
        request.setHeader(b"cache-control", b"public, max-age=300")
        if request.getHeader(b"if-none-match") == asset.etag.encode("ascii"):
            request.setResponseCode(304)
            return b""
        request.setHeader(b"content-type", asset.content_type.encode("ascii"))
        request.setHeader(b"content-length", b"%d" % len(asset.body))
        return asset.body

    # -- errors, mapped at the edge ---------------------------------------------

    @app.handle_errors(ApiError)
    def _api_error(self, request: Request, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, ApiError)
        return _error_body(request, error.status, error.code, error.message)

    @app.handle_errors(StorageError)
    def _storage_error(self, request: Request, failure: Failure) -> bytes:
        _log.error("storage failure serving {uri}: {error}", uri=request.uri, error=failure.value)
        return _error_body(
            request,
            503,
            "storage_unavailable",
            f"storage failure on this node, nothing was written: {failure.getErrorMessage()}",
        )

    @app.handle_errors(HTTPException)
    def _routing_error(self, request: Request, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, HTTPException)
        status = error.code or 500
        if status < 400:
            # A redirect werkzeug chose (e.g. merged slashes): pass it on.
            response = error.get_response()
            request.setResponseCode(status)
            for header, value in response.headers.items():
                request.setHeader(header.encode("latin-1"), value.encode("latin-1"))
            return b""
        method = request.method.decode("ascii", "replace")
        path = request.path.decode("utf-8", "replace")
        if status == 404:
            return _error_body(request, 404, "not_found", f"no route for {method} {path}")
        if isinstance(error, MethodNotAllowed):
            allowed = sorted(error.valid_methods or ())
            request.setHeader(b"allow", ", ".join(allowed).encode("ascii"))
            return _error_body(
                request, 405, "method_not_allowed",
                f"{method} is not allowed on {path}; use {', '.join(allowed)}",
            )
        code = (error.name or "error").lower().replace(" ", "_")
        return _error_body(request, status, code, error.description or code)

    @app.handle_errors(Exception)
    def _internal_error(self, request: Request, failure: Failure) -> bytes:
        _log.failure("unexpected error serving {uri}", failure, uri=request.uri)
        return _error_body(request, 500, "internal_error", "internal error; see the node's log")


def _parse_json_value(body: bytes) -> tuple[bytes, int | None]:
    """Value and TTL (ms) from a C{{"value", "encoding", "ttl" | "px"}} JSON body."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ApiError(400, "invalid_json", 'body must be a JSON object like {"value": "..."}')
    unknown = set(document) - {"value", "encoding", "ttl", "px"}
    if unknown:
        raise ApiError(400, "invalid_json", f"unknown fields: {', '.join(sorted(unknown))}")
    value = document.get("value")
    if not isinstance(value, str):
        raise ApiError(400, "invalid_json", 'body needs a string field "value"')
    encoding = document.get("encoding", "utf-8")
    if encoding == "utf-8":
        try:
            data = value.encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(400, "invalid_json", '"value" holds unpaired surrogates') from None
    elif encoding == "base64":
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "invalid_json", '"value" is not valid base64') from None
    else:
        raise ApiError(400, "invalid_json", '"encoding" must be "utf-8" or "base64"')
    ttls: dict[str, int | None] = {}
    for field, high in (("ttl", _MAX_EXPIRES_AT_MS // 1000), ("px", _MAX_EXPIRES_AT_MS)):
        raw = document.get(field)
        if raw is not None and (type(raw) is not int or not 1 <= raw <= high):
            raise ApiError(400, "invalid_json", f'"{field}" must be an integer from 1 to {high}')
        ttls[field] = raw
    return data, _ttl_ms(ttls["ttl"], ttls["px"], "body")
