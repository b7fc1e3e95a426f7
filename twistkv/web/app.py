"""The HTTP API of one node: a Klein app on a class, bound to one node.

Routes (documented with examples in C{docs/http-api.md})::

    GET|HEAD /kv/<key>   value bytes, or ?format=json for value + versions
    PUT|POST /kv/<key>   store the body (?ttl=s / ?px=ms), or a JSON body with ?format=json
    DELETE   /kv/<key>   {"deleted": bool}
    GET /keys            ?prefix=&limit=&cursor=  keys in order, paged
    GET /health          200 / 503 with storage health
    GET /cluster         members and replication (one member until cluster mode)
    GET /metrics         Prometheus text
    GET /                dashboard (Jinja2); /api/node and /?format=json give the node model
    GET /static/<path>   dashboard assets, from the installed package
    GET /api/dashboard   the dashboard's model; /api/<part> one part of it
                         (overview, members, ring, timeline, traffic, demo)
    GET /fragments       ?parts=a,b: those parts rendered as HTML, in a JSON object
    GET /api/events      Server-Sent Events (failures, healing, traffic); Last-Event-ID
    GET /api/where/<key> preference list and what each replica holds (?consistency=)
    POST /api/demo/pause|resume|leave  demo controls; need --admin-token (docs/dashboard.md)

The /kv routes take C{?consistency=one|quorum|all} (default: the node's R and W);
in cluster mode they go through the quorum coordinator. The dashboard is
described in C{docs/dashboard.md}.

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
import hmac
import io
import json
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote_from_bytes, unquote_to_bytes

from klein import Klein
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from twistkv.core.quorum import ConsistencyLevel, InvalidConsistencyLevel
from twistkv.core.record import Record
from twistkv.node.cluster import NotSupported
from twistkv.node.coordinator import KeyTooLong, QuorumUnavailable
from twistkv.node.events import (
    ClusterWatch,
    EventBus,
    MembershipPause,
    PauseRefused,
    watch_cluster,
)
from twistkv.node.keyspace import LocalKeyspace
from twistkv.node.rebalance import RebalanceError
from twistkv.storage.errors import StorageError
from twistkv.web.bounded import BoundedRequest, bounded_request_factory
from twistkv.web.dashboard import (
    PARTS,
    DashboardSnapshot,
    dashboard_view,
    event_view,
    snapshot_dashboard,
)
from twistkv.web.sse import EventStream
from twistkv.web.templating import render, static_asset
from twistkv.web.views import (
    WebNode,
    cluster_view,
    encode_bytes,
    health_view,
    node_view,
    record_view,
    sibling_view,
    snapshot_node,
    write_view,
)

__all__ = [
    "ADMIN_TOKEN_HEADER",
    "ApiError",
    "CLIENT_CLOSED",
    "DEFAULT_KEYS_LIMIT",
    "MAX_EVENT_STREAMS",
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

#: The header carrying the admin token of the demo controls (never a cookie: a
#: custom header cannot be sent cross-origin without a CORS preflight, which we
#: never grant, so the controls are CSRF-safe).
ADMIN_TOKEN_HEADER = b"x-twistkv-admin-token"
#: Concurrent Server-Sent Event streams one node serves (a classroom, not the internet).
MAX_EVENT_STREAMS = 200
#: How long a demo request forwarded to another node may take.
_FORWARD_TIMEOUT_S = 5.0
#: Binary-safe key routes: the raw key after the prefix becomes one segment.
_KEY_PREFIXES = ((b"/kv/", [b"kv"]), (b"/api/where/", [b"api", b"where"]))

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


def _consistency(query: dict[bytes, list[bytes]]) -> ConsistencyLevel | None:
    """C{?consistency=one|quorum|all}; absent, empty or C{default}: the node's R and W."""
    raw = _param(query, "consistency")
    if raw is None or raw.strip().lower() in (b"", b"default"):
        return None
    try:
        return ConsistencyLevel.parse(raw.decode("ascii", "replace"))
    except InvalidConsistencyLevel as exc:
        raise ApiError(400, "invalid_parameter", str(exc)) from None


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
        for prefix, segments in _KEY_PREFIXES:
            if raw_path.startswith(prefix):
                key = unquote_to_bytes(raw_path[len(prefix):])
                request.postpath = [*segments, quote_from_bytes(key, safe="").encode("ascii")]
                break
        else:
            try:
                for segment in request.postpath or ():
                    segment.decode("utf-8")
            except UnicodeDecodeError:
                return _error_body(request, 400, "bad_request", "URL path is not UTF-8")
        return self._routed.render(request)


class _QuietSite(Site):
    """A C{Site} that leaves the dashboard's own polling out of the access log.

    An open dashboard asks for fragments about once a second; logging each would
    bury the requests that matter.
    """

    _QUIET = (b"/fragments", b"/static/", b"/api/events")

    def log(self, request: Request) -> None:
        if request.path.startswith(self._QUIET):
            return
        super().log(request)


class NodeWebApp:
    """The HTTP API and dashboard of one node.

    Built by the node service as C{NodeWebApp(service)}; mount L{site} (or
    L{resource} in a C{Site} of your own) on the C{--http} endpoint.

    The dashboard's live parts read the node's C{events} (an L{EventBus}),
    C{cluster_watch} (a L{ClusterWatch}) and C{membership_pause} (a
    L{MembershipPause}) when the node has them. A node without them (until
    the service creates them itself) gets them from L{site}: given a reactor,
    it creates the bus, and the watch and pause for the node's cluster
    runtime; the watch stops by itself when the runtime stops.
    """

    app = Klein()

    def __init__(self, node: WebNode, reactor: IReactorTime | None = None) -> None:
        self._node = node
        #: Route pattern of each request in flight, for the request counter.
        self._labels: dict[Request, str] = {}
        self._root = _ApiRoot(self, self.app.resource())
        self._reactor = reactor
        self.events: EventBus | None = getattr(node, "events", None)
        self.watch: ClusterWatch | None = getattr(node, "cluster_watch", None)
        self.pause_control: MembershipPause | None = getattr(node, "membership_pause", None)
        self.streams = 0
        if reactor is not None:
            self._ensure_events(reactor)

    def _ensure_events(self, reactor: IReactorTime) -> None:
        """Create what the node did not provide: event bus, cluster watch, pause control."""
        if self.events is None:
            self.events = EventBus(reactor)
        context = self._node.context
        cluster = getattr(context, "cluster", None) if context is not None else None
        if cluster is None:
            return
        if self.watch is None:
            self.watch = watch_cluster(self.events, cluster, reactor, stats=self._node.stats)
        if self.pause_control is None:
            self.pause_control = MembershipPause(cluster, reactor, self.events)

    def _clock(self) -> IReactorTime:
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor  # type: ignore[assignment]
        assert self._reactor is not None
        return self._reactor

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
        if reactor is not None:
            self._reactor = reactor
            self._ensure_events(reactor)
        site = _QuietSite(self._root, requestFactory=request_factory, **kwargs)
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

    def _cluster(self) -> Any:
        """The node's cluster runtime, or None."""
        context = self._node.context
        return getattr(context, "cluster", None) if context is not None else None

    def _clustered(self) -> Any:
        """The cluster runtime when the node serves from the replicated keyspace, else None."""
        context = self._node.context
        cluster = self._cluster()
        if cluster is not None and context is not None and context.keyspace is cluster.keyspace:
            return cluster
        return None

    def _dashboard(self, request: Request) -> DashboardSnapshot:
        if self.watch is not None:
            self.watch.demand()
        pause = self.pause_control
        return snapshot_dashboard(
            self._node, self._snapshot_host(request), bus=self.events, watch=self.watch,
            paused_until=pause.paused_until if pause is not None and pause.paused else None,
        )

    # -- key-value routes ---------------------------------------------------

    @_route(app, "/kv/<key>", "GET", "HEAD")
    async def get_value(self, request: Request, key: str) -> bytes:
        """The live value as raw bytes, or with its versions as JSON."""
        query = _query(request)
        fmt = _format(query)
        consistency = _consistency(query)
        name = unquote_to_bytes(key)
        keyspace = self._keyspace()
        cluster = self._clustered()
        read: dict[str, Any] | None = None
        if cluster is not None:
            result = await _detached(cluster.coordinator.get(name, consistency))
            live = result.live(keyspace.now_ms())
            record: Record | None = Record(result.versions)
            read = _read_view(consistency, result)
        else:
            live = keyspace.get(name)
            record = None
        stats = self._node.stats
        if live is None:
            stats.keyspace_misses += 1
            raise ApiError(404, "key_not_found", f"no such key: {_show(name)}")
        stats.keyspace_hits += 1
        if fmt == "json":
            if cluster is None:
                record = keyspace.record(name)
            view = record_view(name, live, record, keyspace.now_ms())
            if read is not None:
                view["read"] = read
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
        consistency = _consistency(query)
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
        cluster = self._clustered()
        if cluster is not None:
            # As SET does: a blind write through the coordinator, W replicas at the level.
            prior = await _detached(cluster.coordinator.get(name, consistency))
            created = prior.live(now) is None
            version = await _detached(
                cluster.coordinator.put(name, value, consistency, expires_at))
            if created:
                request.setHeader(
                    b"location", b"/kv/" + quote_from_bytes(name, safe="").encode())
            return _json_body(
                request, 201 if created else 200, write_view(name, version, created, now))
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
        consistency = _consistency(_query(request))
        name = unquote_to_bytes(key)
        try:
            removed = await _detached(self._keyspace().at(consistency).delete([name]))
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

    @_route(app, "/ready", "GET")
    def ready(self, request: Request) -> bytes:
        """Readiness: 200 once storage is healthy and the node has joined its cluster.

        A node that has not joined answers every request UNAVAILABLE, so a load balancer
        or Kubernetes should not send it clients yet (liveness stays on /health).
        """
        view = health_view(snapshot_node(self._node, self._snapshot_host(request)))
        if view["storage"]["healthy"] and view["joined"]:
            return _json_body(request, 200, view)
        view["status"] = "not ready"
        view["error"] = {
            "code": "not_ready",
            "message": "storage is failing" if not view["storage"]["healthy"]
            else "this node has not joined its cluster yet",
        }
        return _json_body(request, 503, view)

    @_route(app, "/cluster", "GET")
    def cluster(self, request: Request) -> bytes:
        """Cluster membership, replication settings, and each node's ring share, vnodes and
        keys (other nodes' from the cluster watch, which this request keeps reading)."""
        dash = self._dashboard(request)
        keys = {node_id: figures.keys for node_id, figures in dash.figures.items()}
        vnodes = Counter(owner for _, owner in dash.vnodes)
        return _json_body(request, 200, cluster_view(dash.node, keys, vnodes))

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
        """The dashboard, or this node's model with C{?format=json}."""
        view = node_view(snapshot_node(self._node, self._snapshot_host(request)))
        if _format(_query(request)) == "json":
            return _json_body(request, 200, view)
        body = render("index.html", node=view, dash=dashboard_view(self._dashboard(request)))
        return _html_body(request, body)

    # -- dashboard data -------------------------------------------------------------

    @_route(app, "/api/dashboard", "GET")
    def dashboard_json(self, request: Request) -> bytes:
        """The whole dashboard model (or C{?parts=a,b}), as the page is rendered from it."""
        parts = _parts(_query(request), required=False)
        return _json_body(request, 200, dashboard_view(self._dashboard(request), parts))

    @_route(app, "/api/<part>", "GET")
    def dashboard_part(self, request: Request, part: str) -> bytes:
        """One part of the dashboard model: overview, members, ring, timeline, traffic, demo."""
        if part not in PARTS:
            raise ApiError(404, "not_found", f"no route for GET /api/{part}")
        return _json_body(request, 200, PARTS[part](self._dashboard(request)))

    @_route(app, "/fragments", "GET")
    def fragments(self, request: Request) -> bytes:
        """C{?parts=a,b}: those dashboard parts rendered as HTML, in one JSON object.

        The page's script swaps them in when the event stream says something
        changed, so every part has exactly one renderer: its Jinja2 template.
        """
        parts = _parts(_query(request), required=True)
        assert parts is not None
        view = dashboard_view(self._dashboard(request), parts)
        html = {part: render(f"parts/{part}.html", dash=view).decode("utf-8") for part in parts}
        return _json_body(request, 200, {"parts": html, "stream": view["stream"]})

    @_route(app, "/api/events", "GET")
    def event_stream(self, request: Request) -> Deferred[None]:
        """Server-Sent Events: failures, healing and traffic as they happen (see L{EventStream}).

        Resumes after C{Last-Event-ID} (or C{?since=}, for the page's first connection).
        """
        bus = self.events
        if bus is None:
            raise ApiError(503, "events_unavailable", "this node has no event stream yet")
        if self.streams >= MAX_EVENT_STREAMS:
            raise ApiError(503, "too_many_streams",
                           f"this node already serves {MAX_EVENT_STREAMS} event streams")
        last = request.getHeader(b"last-event-id") or _param(_query(request), "since")
        if self.watch is not None:
            self.watch.demand()
        self.streams += 1

        def closed() -> None:
            self.streams -= 1

        stream = EventStream(request, bus, self._clock(), render=event_view, on_close=closed)
        return stream.start(last)

    @_route(app, "/api/where/<key>", "GET")
    async def where(self, request: Request, key: str) -> bytes:
        """The key's preference list, and what each replica holds (like WHERE + VERSIONS)."""
        consistency = _consistency(_query(request))
        name = unquote_to_bytes(key)
        key_text, key_encoding = encode_bytes(name)
        keyspace = self._keyspace()
        cluster = self._clustered()
        document: dict[str, Any] = {
            "key": key_text, "key_encoding": key_encoding,
            "consistency": consistency.value if consistency is not None else "default",
        }
        if cluster is None:
            record = keyspace.record(name)
            now = keyspace.now_ms()
            versions = [sibling_view(v, now) for v in (record.versions if record else ())]
            me = self._node.config.node_id
            document.update(mode="single", n=1, siblings=versions, error=None, replicas=[{
                "node": me, "role": "replica", "state": "alive", "address": None,
                "answered": True, "versions": versions, "error": None,
            }])
            return _json_body(request, 200, document)
        n = cluster.options.n
        ring = cluster.ring
        owners = ring.preference_list(name, n)
        fallbacks = ring.fallback_nodes(name, n, limit=2)
        result: Any = None
        error: dict[str, Any] | None = None
        try:
            result = await _detached(cluster.keyspace.record(name, consistency))
        except QuorumUnavailable as exc:
            error = {"code": "unavailable", "message": str(exc)}
        now = keyspace.now_ms()
        rows = []
        for role, nodes in (("replica", owners), ("fallback", fallbacks)):
            for node in nodes:
                member = cluster.membership.get(node)
                state = "alive" if node == cluster.node_id else (
                    member.state.value if member is not None else "unknown")
                replies = result.replies if result is not None else {}
                failures = result.failures if result is not None else {}
                held = replies.get(node)
                rows.append({
                    "node": node, "role": role, "state": state,
                    "address": cluster.address_of(node),
                    "answered": held is not None,
                    "versions": [sibling_view(v, now) for v in held] if held is not None else None,
                    "error": failures.get(node),
                })
        document.update(
            mode="cluster", n=n, error=error, replicas=rows,
            siblings=[sibling_view(v, now) for v in result.versions] if result else [],
        )
        return _json_body(request, 200, document)

    # -- demo controls ------------------------------------------------------------------

    def _check_admin(self, request: Request) -> None:
        """Refuse unless demo controls are on, the token matches, and the request is same-origin."""
        token = getattr(self._node.config, "admin_token", None)
        if not token:
            raise ApiError(403, "demo_disabled",
                           "demo controls are off; start the node with --admin-token")
        site = request.getHeader(b"sec-fetch-site")
        origin = request.getHeader(b"origin")
        host = request.getHeader(b"host") or b""
        if site is not None and site not in (b"same-origin", b"none"):
            raise ApiError(403, "cross_origin", "demo controls accept same-origin requests only")
        if origin is not None and origin not in (b"http://" + host, b"https://" + host):
            raise ApiError(403, "cross_origin", "demo controls accept same-origin requests only")
        given = request.getHeader(ADMIN_TOKEN_HEADER) or b""
        expected = token.encode("utf-8") if isinstance(token, str) else bytes(token)
        if not hmac.compare_digest(given, expected):
            raise ApiError(401, "bad_admin_token",
                           "missing or wrong X-Twistkv-Admin-Token header")

    def _demo_target(self, request: Request) -> tuple[dict[str, Any], str]:
        body = _read_body(request, 4096, "JSON body")
        try:
            document = json.loads(body or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "invalid_json", "body is not valid JSON") from None
        if not isinstance(document, dict):
            raise ApiError(400, "invalid_json", "body must be a JSON object")
        target = document.get("node") or self._node.config.node_id
        if not isinstance(target, str):
            raise ApiError(400, "invalid_json", '"node" must be a node id')
        return document, target

    async def _forward(self, request: Request, target: str, path: bytes,
                       document: dict[str, Any]) -> bytes:
        """Relay a demo request to the node C{target}'s own HTTP API, with our token."""
        cluster = self._cluster()
        member = cluster.membership.get(target) if cluster is not None else None
        address = member.metadata.get("http") if member is not None else None
        if address is None:
            raise ApiError(404, "unknown_node", f"no member {target!r} with an HTTP address")
        token = request.getHeader(ADMIN_TOKEN_HEADER) or b""
        agent = Agent(self._clock())  # type: ignore[arg-type]
        forwarded = dict(document, node=target)
        asked = agent.request(
            b"POST", f"http://{address}".encode("ascii") + path,
            Headers({b"content-type": [b"application/json"], ADMIN_TOKEN_HEADER: [token]}),
            FileBodyProducer(io.BytesIO(json.dumps(forwarded).encode())),
        )
        asked.addTimeout(_FORWARD_TIMEOUT_S, self._clock())  # type: ignore[arg-type]
        try:
            response = await _detached(asked)
            body: bytes = await _detached(readBody(response))
            answer = json.loads(body)
        except Exception as exc:  # noqa: BLE001 - any failure to reach the peer
            raise ApiError(502, "node_unreachable",
                           f"could not reach {target} at {address}: {exc}") from None
        return _json_body(request, response.code, answer)

    @_route(app, "/api/demo/pause", "POST")
    async def demo_pause(self, request: Request) -> bytes:
        """Pause a node's membership for C{seconds} (JSON body C{{"seconds", "node"}})."""
        self._check_admin(request)
        document, target = self._demo_target(request)
        if target != self._node.config.node_id:
            return await self._forward(request, target, b"/api/demo/pause", document)
        seconds = document.get("seconds", 20)
        if type(seconds) not in (int, float):
            raise ApiError(400, "invalid_json", '"seconds" must be a number')
        pause = self.pause_control
        if pause is None:
            raise ApiError(409, "no_cluster", "this node runs no cluster membership to pause")
        try:
            until = pause.pause(float(seconds))
        except ValueError as exc:
            raise ApiError(400, "invalid_parameter", str(exc)) from None
        except PauseRefused as exc:
            raise ApiError(409, "pause_refused", str(exc)) from None
        return _json_body(request, 200, {"node": target, "paused": True,
                                         "seconds": float(seconds), "until": until})

    @_route(app, "/api/demo/resume", "POST")
    async def demo_resume(self, request: Request) -> bytes:
        """End a pause early (JSON body C{{"node"}}, default this node)."""
        self._check_admin(request)
        document, target = self._demo_target(request)
        if target != self._node.config.node_id:
            return await self._forward(request, target, b"/api/demo/resume", document)
        pause = self.pause_control
        was_paused = pause is not None and pause.paused
        if pause is not None:
            pause.resume()
        return _json_body(request, 200, {"node": target, "paused": False,
                                         "resumed": was_paused})

    @_route(app, "/api/demo/leave", "POST")
    async def demo_leave(self, request: Request) -> bytes:
        """Ask a node (JSON body C{{"node"}}, default this one) to leave the cluster.

        Like the LEAVE command: the node streams its ranges to their new owners (progress
        on the event stream), leaves the ring and shuts down. Answers 202 once the leave
        has started; 409 if it cannot start (not a normal ring member, the last one, or
        another movement under way).
        """
        self._check_admin(request)
        document, target = self._demo_target(request)
        if target != self._node.config.node_id:
            return await self._forward(request, target, b"/api/demo/leave", document)
        cluster = self._cluster()
        if cluster is None:
            raise ApiError(409, "no_cluster", "this node runs no cluster to leave")
        try:
            leaving = cluster.leave()
        except RebalanceError as exc:
            raise ApiError(409, "leave_refused", str(exc)) from None
        context = self._node.context
        shutdown = getattr(context, "shutdown", None)

        def left(_: object) -> None:
            if shutdown is not None:
                shutdown()

        leaving.addCallbacks(left, lambda f: _log.failure("Demo: leave failed", f))
        _log.warn("Demo: {node} asked to leave the cluster", node=target)
        return _json_body(request, 202, {"node": target, "leaving": True})

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

    @app.handle_errors(QuorumUnavailable)
    def _unavailable(self, request: Request, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, QuorumUnavailable)
        return _json_body(request, 503, {"error": {
            "code": "unavailable", "message": str(error), "acks": error.acks,
            "required": error.required, "replicas_tried": list(error.replicas_tried),
            "detail": dict(error.detail),
        }})

    @app.handle_errors(KeyTooLong)
    def _key_too_long(self, request: Request, failure: Failure) -> bytes:
        return _error_body(request, 400, "key_too_long", failure.getErrorMessage())

    @app.handle_errors(NotSupported)
    def _not_supported(self, request: Request, failure: Failure) -> bytes:
        return _error_body(request, 501, "not_supported", failure.getErrorMessage())

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


def _html_body(request: Request, body: bytes) -> bytes:
    request.setHeader(b"content-type", b"text/html; charset=utf-8")
    request.setHeader(b"content-length", b"%d" % len(body))
    request.setHeader(b"cache-control", b"no-store")
    return body


def _parts(query: dict[bytes, list[bytes]], required: bool) -> list[str] | None:
    """C{?parts=a,b} as a list of known part names (None when absent and not required)."""
    raw = _param(query, "parts")
    if raw is None:
        if required:
            raise ApiError(400, "invalid_parameter", f"give parts=, some of {', '.join(PARTS)}")
        return None
    names = [p for p in raw.decode("ascii", "replace").split(",") if p]
    unknown = [p for p in names if p not in PARTS]
    if unknown or not names:
        raise ApiError(400, "invalid_parameter",
                       f"unknown part(s) {', '.join(unknown) or '(none)'}; "
                       f"use {', '.join(PARTS)}")
    return names


def _read_view(consistency: ConsistencyLevel | None, result: Any) -> dict[str, Any]:
    """How a cluster read was answered: the level, who replied, who failed and why."""
    return {
        "consistency": consistency.value if consistency is not None else "default",
        "replied": sorted(result.replies),
        "failed": dict(sorted(result.failures.items())),
    }


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
