"""Tests for twistkv.web.app: the HTTP API driven through StubTreq, no sockets, no wall clock."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError, Deferred
from webfakes import EPOCH_S, FakeNode, Web, fired, make_web

from twistkv.storage.errors import StoreIOError
from twistkv.web.app import (
    CLIENT_CLOSED,
    UNMATCHED_ROUTE,
    ApiError,
    NodeWebApp,
    _detached,
    decode_cursor,
    encode_cursor,
    list_page,
)
from twistkv.web.views import node_view, snapshot_node

BASE = "http://node.example:8379"


def call(
    web: Web, method: str, path: str | bytes, body: bytes | None = None, headers: dict[str, Any] | None = None
) -> tuple[int, Any, bytes]:
    """Send one request; return (status, headers, body). The response must be ready."""
    url = BASE.encode() + path if isinstance(path, bytes) else BASE + path
    response = fired(web.client.request(method, url, data=body, headers=headers))
    return response.code, response.headers, fired(web.client.content(response))


def call_json(web: Web, method: str, path: str | bytes, body: bytes | None = None, **kw: Any) -> tuple[int, Any]:
    status, headers, raw = call(web, method, path, body, **kw)
    assert headers.getRawHeaders("content-type") == ["application/json"], raw
    return status, json.loads(raw)


def has_fired(d: Deferred[Any]) -> bool:
    """Whether d has a result now (C{called} is also true while it waits on another Deferred)."""
    results: list[object] = []
    d.addBoth(lambda r: (results.append(r), r)[1])
    return bool(results)


def assert_error(web: Web, method: str, path: str | bytes, status: int, code: str, body: bytes | None = None) -> dict[str, Any]:
    got_status, document = call_json(web, method, path, body)
    assert got_status == status, document
    assert set(document) == {"error"}
    assert document["error"]["code"] == code
    assert document["error"]["message"]
    return document


# -- GET /kv -----------------------------------------------------------------


def test_get_returns_raw_bytes(web: Web) -> None:
    """A stored value comes back byte for byte as application/octet-stream with its length."""
    web.node.keyspace.set(b"greeting", b"hello \x00\xff world")
    status, headers, body = call(web, "GET", "/kv/greeting")
    assert status == 200
    assert body == b"hello \x00\xff world"
    assert headers.getRawHeaders("content-type") == ["application/octet-stream"]


def test_head_has_headers_but_no_body(web: Web) -> None:
    """HEAD answers like GET (status, type) without sending the value."""
    web.node.keyspace.set(b"k", b"12345")
    status, headers, body = call(web, "HEAD", "/kv/k")
    assert (status, body) == (200, b"")
    assert headers.getRawHeaders("content-type") == ["application/octet-stream"]


def test_get_missing_key_is_json_404(web: Web) -> None:
    """A missing key is a 404 with the JSON error shape, and counts as a keyspace miss."""
    assert_error(web, "GET", "/kv/nope", 404, "key_not_found")
    assert web.node.stats.keyspace_misses == 1


def test_get_json_format(web: Web) -> None:
    """?format=json gives the value, its version metadata, timestamp, TTL and siblings."""
    web.node.clock.advance(1.5)
    web.node.keyspace.set(b"user:1", b"alice", expires_at_ms=web.node.now_ms() + 60_000)
    web.node.clock.advance(10)
    status, doc = call_json(web, "GET", "/kv/user:1?format=json")
    assert status == 200
    assert doc["key"] == "user:1" and doc["key_encoding"] == "utf-8"
    assert doc["value"] == "alice" and doc["encoding"] == "utf-8"
    # A single writer's clock entry is its HLC (since the SET fast path), not a count.
    assert doc["version"]["vector_clock"] == {"n1": doc["version"]["hlc"]}
    assert doc["version"]["node"] == "n1"
    assert doc["version"]["hlc"] >> 16 == (EPOCH_S * 1000) + 1500
    assert doc["timestamp"] == "2023-11-14T22:13:21.500Z"
    assert doc["ttl_ms"] == 50_000
    assert len(doc["siblings"]) == 1
    sibling = doc["siblings"][0]
    assert sibling["value"] == "alice" and sibling["version"] == doc["version"]
    assert sibling["tombstone"] is False and sibling["expired"] is False


def test_get_json_without_ttl_has_null_ttl(web: Web) -> None:
    """A key without expiry reports ttl_ms null, not 0 or -1."""
    web.node.keyspace.set(b"k", b"v")
    _, doc = call_json(web, "GET", "/kv/k?format=json")
    assert doc["ttl_ms"] is None


def test_get_json_binary_value_is_base64(web: Web) -> None:
    """A value that is not UTF-8 is given as base64 and says so."""
    web.node.keyspace.set(b"bin", b"\xff\xfe\x00")
    _, doc = call_json(web, "GET", "/kv/bin?format=json")
    assert doc["encoding"] == "base64"
    assert base64.b64decode(doc["value"]) == b"\xff\xfe\x00"


def test_bad_format_is_400(web: Web) -> None:
    """An unknown ?format is refused rather than silently served raw."""
    web.node.keyspace.set(b"k", b"v")
    assert_error(web, "GET", "/kv/k?format=xml", 400, "invalid_parameter")


# -- binary-safe keys --------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "key"),
    [
        (b"/kv/%00%FF%2F%25", b"\x00\xff/%"),
        (b"/kv/a%2Fb", b"a/b"),
        (b"/kv/a/b", b"a/b"),
        (b"/kv/caf%C3%A9", "café".encode()),
        (b"/kv/with%20space", b"with space"),
        (b"/kv/%2E%2E", b".."),
        (b"/kv/a%3Fb", b"a?b"),
    ],
)
def test_percent_encoded_keys_address_exact_bytes(web: Web, path: bytes, key: bytes) -> None:
    """Any byte sequence is addressable with %XX, including NUL, 0xFF, '/' and '%'."""
    status, _ = call_json(web, "PUT", path, b"value")
    assert status == 201
    assert web.node.keyspace.get(key) is not None
    assert web.node.keyspace.get(key).value == b"value"  # type: ignore[union-attr]
    assert call(web, "GET", path)[2] == b"value"


def test_empty_key_is_not_addressable(web: Web) -> None:
    """/kv/ with nothing after it is not a key route (the empty key would be a listing)."""
    assert_error(web, "GET", "/kv/", 404, "not_found")


def test_non_utf8_path_outside_kv_is_json_400(web: Web) -> None:
    """A non-UTF-8 path elsewhere is a JSON 400, not Klein's plain-text error."""
    assert_error(web, "GET", b"/keys%FF", 400, "bad_request")


# -- PUT / POST ---------------------------------------------------------------


def test_put_new_key_is_201_then_200(web: Web) -> None:
    """The first write creates (201 + Location), the next replaces (200) with a newer clock."""
    status, headers, raw = call(web, "PUT", "/kv/a%2Fb", b"one")
    first = json.loads(raw)
    assert status == 201 and first["created"] is True
    assert headers.getRawHeaders("location") == ["/kv/a%2Fb"]
    assert set(first["version"]["vector_clock"]) == {"n1"}
    assert first["key"] == "a/b"
    status, second = call_json(web, "POST", "/kv/a%2Fb", b"two")
    assert status == 200 and second["created"] is False
    assert second["version"]["vector_clock"]["n1"] > first["version"]["vector_clock"]["n1"]
    assert second["version"]["hlc"] > first["version"]["hlc"]
    assert web.node.keyspace.get(b"a/b").value == b"two"  # type: ignore[union-attr]


def test_put_over_expired_key_counts_as_created(web: Web) -> None:
    """Writing a key whose previous value expired is a creation (201), as a reader would see it."""
    web.node.keyspace.set(b"k", b"old", expires_at_ms=web.node.now_ms() + 1000)
    web.node.clock.advance(2)
    assert call_json(web, "PUT", "/kv/k", b"new")[0] == 201


def test_put_ttl_seconds_expires(web: Web) -> None:
    """?ttl=5 makes the key vanish after five seconds of (fake) time."""
    status, doc = call_json(web, "PUT", "/kv/session?ttl=5", b"s")
    assert status == 201 and doc["ttl_ms"] == 5000
    web.node.clock.advance(4.999)
    assert call(web, "GET", "/kv/session")[0] == 200
    web.node.clock.advance(0.001)
    assert call(web, "GET", "/kv/session")[0] == 404


def test_put_px_milliseconds(web: Web) -> None:
    """?px=1500 sets a millisecond TTL."""
    _, doc = call_json(web, "PUT", "/kv/k?px=1500", b"v")
    assert doc["ttl_ms"] == 1500
    assert web.node.keyspace.get(b"k").expires_at_ms == web.node.now_ms() + 1500  # type: ignore[union-attr]


def test_put_without_ttl_clears_previous_ttl(web: Web) -> None:
    """A plain PUT replaces the value and its expiry, as Redis SET does."""
    call(web, "PUT", "/kv/k?ttl=5", b"v")
    _, doc = call_json(web, "PUT", "/kv/k", b"w")
    assert doc["ttl_ms"] is None


@pytest.mark.parametrize(
    "query",
    ["ttl=0", "ttl=-1", "ttl=abc", "ttl=1.5", "px=0", "ttl=1&px=1000", "ttl=1&ttl=2", "ttl=", "ttl=99999999999999999999"],
)
def test_put_bad_ttl_is_400(web: Web, query: str) -> None:
    """Malformed, non-positive, conflicting, repeated or huge TTLs are refused; nothing is written."""
    assert_error(web, "PUT", f"/kv/k?{query}", 400, "invalid_parameter", b"v")
    assert web.node.keyspace.get(b"k") is None


def test_put_value_at_limit_accepted_over_limit_413(web: Web) -> None:
    """max_value_bytes is inclusive; one byte more is a 413 and nothing is stored."""
    assert call_json(web, "PUT", "/kv/big", b"x" * 1024)[0] == 201
    assert_error(web, "PUT", "/kv/bigger", 413, "value_too_large", b"x" * 1025)
    assert web.node.keyspace.get(b"bigger") is None


def test_put_declared_length_over_limit_is_413_before_reading(web: Web) -> None:
    """A Content-Length over the limit is refused without reading the body."""
    status, _, raw = call(web, "PUT", "/kv/k", b"x" * 2000)
    assert status == 413
    assert json.loads(raw)["error"]["code"] == "value_too_large"


def test_form_encoded_post_is_stored_verbatim(web: Web) -> None:
    """A curl -d style body is a value, never form fields: 'ttl=5' in the body sets no TTL."""
    headers = {"content-type": ["application/x-www-form-urlencoded"]}
    status, doc = call_json(web, "POST", "/kv/k", b"ttl=5&x=1", headers=headers)
    assert status == 201 and doc["ttl_ms"] is None
    assert web.node.keyspace.get(b"k").value == b"ttl=5&x=1"  # type: ignore[union-attr]


def test_raw_json_content_type_is_stored_verbatim(web: Web) -> None:
    """Without ?format=json a JSON document is just the value, whatever the Content-Type."""
    body = b'{"value": "x", "ttl": 5}'
    status, _ = call_json(web, "PUT", "/kv/doc", body, headers={"content-type": ["application/json"]})
    assert status == 201
    assert web.node.keyspace.get(b"doc").value == body  # type: ignore[union-attr]


def test_put_json_body(web: Web) -> None:
    """With ?format=json the body is {"value", "ttl"}: the value is stored and the TTL applied."""
    body = json.dumps({"value": "héllo", "ttl": 10}).encode()
    status, doc = call_json(web, "PUT", "/kv/k?format=json", body)
    assert status == 201 and doc["ttl_ms"] == 10_000
    assert web.node.keyspace.get(b"k").value == "héllo".encode()  # type: ignore[union-attr]


def test_put_json_body_base64_round_trips_binary(web: Web) -> None:
    """The JSON form accepts base64 values, matching what GET ?format=json returns."""
    value = b"\x00\xff\xfe"
    body = json.dumps({"value": base64.b64encode(value).decode(), "encoding": "base64", "px": 250}).encode()
    status, doc = call_json(web, "PUT", "/kv/b?format=json", body)
    assert status == 201 and doc["ttl_ms"] == 250
    _, got = call_json(web, "GET", "/kv/b?format=json")
    assert base64.b64decode(got["value"]) == value


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'{"ttl": 5}',
        b'{"value": 5}',
        b'{"value": "x", "extra": 1}',
        b'{"value": "x", "encoding": "latin-1"}',
        b'{"value": "!!!", "encoding": "base64"}',
        b'{"value": "x", "ttl": true}',
        b'{"value": "x", "ttl": 0}',
        b'{"value": "x", "ttl": 1, "px": 5}',
        b'{"value": "\\ud800"}',
        b"\xff\xfe",
    ],
)
def test_put_bad_json_body_is_400(web: Web, body: bytes) -> None:
    """Every malformed JSON body is a 400 naming the problem; nothing is written."""
    status, doc = call_json(web, "PUT", "/kv/k?format=json", body)
    assert status == 400, doc
    assert doc["error"]["code"] in {"invalid_json", "invalid_parameter"}
    assert web.node.keyspace.get(b"k") is None


def test_put_json_ttl_in_query_and_body_is_400(web: Web) -> None:
    """A TTL given twice (query and body) is ambiguous and refused."""
    assert_error(web, "PUT", "/kv/k?format=json&ttl=5", 400, "invalid_parameter", b'{"value": "v", "ttl": 5}')


def test_put_answers_only_when_durable(web: Web) -> None:
    """The response waits for the group commit: nothing is sent until the write is durable."""
    web.node.committer.hold = True  # type: ignore[union-attr]
    response = web.client.request("PUT", BASE + "/kv/k", data=b"v")
    web.client.flush()
    assert not has_fired(response)
    web.node.committer.release()  # type: ignore[union-attr]
    web.client.flush()
    assert fired(response).code == 201


def test_put_durability_failure_is_503(web: Web) -> None:
    """If the commit holding the write fails, the client gets a 503 saying it may not be durable."""
    web.node.committer.hold = True  # type: ignore[union-attr]
    response = web.client.request("PUT", BASE + "/kv/k", data=b"v")
    web.client.flush()
    web.node.committer.fail(StoreIOError("fsync failed: EIO", "/data"))  # type: ignore[union-attr]
    web.client.flush()
    result = fired(response)
    document = json.loads(fired(web.client.content(result)))
    assert result.code == 503
    assert document["error"]["code"] == "storage_unavailable"
    assert "may not be durable" in document["error"]["message"]


def test_put_storage_error_before_write_is_503(web: Web, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store that refuses the write outright yields a 503 saying nothing was written."""

    def broken_write(ops: object) -> None:
        raise StoreIOError("disk full", "/data")

    monkeypatch.setattr(web.node.store, "write", broken_write)
    document = assert_error(web, "PUT", "/kv/k", 503, "storage_unavailable", b"v")
    assert "nothing was written" in document["error"]["message"]


def test_requests_before_storage_opens_are_503(web: Web) -> None:
    """A node without a keyspace yet answers 503 node_starting, not a crash."""
    web.node.context = None
    assert_error(web, "GET", "/kv/k", 503, "node_starting")


def test_disconnect_does_not_cancel_group_commit() -> None:
    """Cancelling the handler's wait (client gone) leaves the committer's Deferred to fire normally."""
    wait: Deferred[None] = Deferred()
    later: list[object] = []
    relay = _detached(wait)
    relay.addErrback(lambda f: f.trap(CancelledError))
    relay.cancel()
    wait.addCallback(later.append)
    wait.callback(None)  # would raise AlreadyCalledError had the cancel reached it
    assert later == [None]


# -- DELETE --------------------------------------------------------------------


def test_delete_reports_whether_a_key_was_removed(web: Web) -> None:
    """DELETE answers deleted true once, then false; the key is gone."""
    web.node.keyspace.set(b"k", b"v")
    assert call_json(web, "DELETE", "/kv/k") == (200, {"deleted": True})
    assert call_json(web, "DELETE", "/kv/k") == (200, {"deleted": False})
    assert web.node.keyspace.get(b"k") is None


def test_delete_waits_for_durability(web: Web) -> None:
    """DELETE, like PUT, answers only when the deletion is durable."""
    web.node.keyspace.set(b"k", b"v")
    web.node.committer.hold = True  # type: ignore[union-attr]
    response = web.client.request("DELETE", BASE + "/kv/k")
    web.client.flush()
    assert not has_fired(response)
    web.node.committer.release()  # type: ignore[union-attr]
    web.client.flush()
    assert fired(response).code == 200


# -- GET /keys -------------------------------------------------------------------


def put_keys(web: Web, keys: list[bytes]) -> None:
    for key in keys:
        web.node.keyspace.set(key, b"v")


def all_pages(web: Web, query: str) -> list[str]:
    """Follow next_cursor from the first page to the last; return every key listed."""
    keys: list[str] = []
    cursor = None
    for _ in range(1000):
        suffix = f"&cursor={cursor}" if cursor else ""
        status, doc = call_json(web, "GET", f"/keys?{query}{suffix}")
        assert status == 200, doc
        keys.extend(doc["keys"])
        cursor = doc["next_cursor"]
        if cursor is None:
            return keys
    raise AssertionError("paging did not terminate")


def test_keys_lists_in_order_with_default_limit(web: Web) -> None:
    """Without parameters: the first 100 keys in byte order and a cursor for the rest."""
    put_keys(web, [b"k%03d" % i for i in range(150)])
    _, doc = call_json(web, "GET", "/keys")
    assert doc["keys"] == [f"k{i:03d}" for i in range(100)]
    assert doc["encoding"] == "utf-8"
    assert doc["next_cursor"] is not None


def test_keys_paging_visits_every_key_once(web: Web) -> None:
    """Following next_cursor with a small limit lists every key exactly once, ending with null."""
    expected = sorted(f"key{i}" for i in range(23))
    put_keys(web, [k.encode() for k in expected])
    assert all_pages(web, "limit=5") == expected


def test_keys_last_full_page_has_null_cursor(web: Web) -> None:
    """When the keys run out exactly at the limit, next_cursor is null (no empty extra page)."""
    put_keys(web, [b"a", b"b", b"c"])
    _, doc = call_json(web, "GET", "/keys?limit=3")
    assert doc == {"keys": ["a", "b", "c"], "encoding": "utf-8", "next_cursor": None}


def test_keys_prefix_filters_exactly(web: Web) -> None:
    """prefix= lists only keys starting with it, including at byte boundaries around it."""
    put_keys(web, [b"use", b"user", b"user:1", b"user:2", b"userz", b"usf", b"usd\xff\xff", b"v"])
    assert all_pages(web, "prefix=user&limit=2") == ["user", "user:1", "user:2", "userz"]
    assert all_pages(web, "prefix=user%3A") == ["user:1", "user:2"]
    assert all_pages(web, "prefix=nothing") == []


def test_keys_prefix_seeks_instead_of_scanning(web: Web) -> None:
    """Listing a prefix reads about as many entries as it returns, not the whole keyspace."""
    put_keys(web, [b"a%05d" % i for i in range(2000)] + [b"b1", b"b2", b"b3"] + [b"c%05d" % i for i in range(2000)])
    web.node.store.yielded = 0
    _, doc = call_json(web, "GET", "/keys?prefix=b")
    assert doc["keys"] == ["b1", "b2", "b3"] and doc["next_cursor"] is None
    assert web.node.store.yielded < 50


def test_keys_skip_expired(web: Web) -> None:
    """Expired keys that the sweeper has not removed yet are not listed."""
    web.node.keyspace.set(b"gone", b"v", expires_at_ms=web.node.now_ms() + 10)
    web.node.keyspace.set(b"kept", b"v")
    web.node.clock.advance(1)
    assert all_pages(web, "limit=1") == ["kept"]


def test_keys_non_utf8_page_switches_to_base64(web: Web) -> None:
    """A page holding a non-UTF-8 key is sent all in base64, flagged by "encoding"."""
    put_keys(web, [b"a", b"\xff"])
    _, doc = call_json(web, "GET", "/keys")
    assert doc["encoding"] == "base64"
    assert [base64.b64decode(k) for k in doc["keys"]] == [b"a", b"\xff"]
    assert_error(web, "GET", "/keys?encoding=utf-8", 400, "invalid_parameter")


def test_keys_binary_prefix(web: Web) -> None:
    """A percent-encoded binary prefix selects exact bytes."""
    put_keys(web, [b"\x00a", b"\x00b", b"\x01a"])
    _, doc = call_json(web, "GET", "/keys?prefix=%00&encoding=base64")
    assert [base64.b64decode(k) for k in doc["keys"]] == [b"\x00a", b"\x00b"]


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("limit=0", "invalid_parameter"),
        ("limit=10001", "invalid_parameter"),
        ("limit=ten", "invalid_parameter"),
        ("limit=-5", "invalid_parameter"),
        ("cursor=%21%21", "invalid_cursor"),
        ("cursor=" + base64.urlsafe_b64encode(b"xyz").decode(), "invalid_cursor"),
        ("encoding=hex", "invalid_parameter"),
    ],
)
def test_keys_bad_parameters_are_400(web: Web, query: str, code: str) -> None:
    """Out-of-range limits, foreign cursors and unknown encodings are clear 400s."""
    assert_error(web, "GET", f"/keys?{query}", 400, code)


def test_keys_limit_max_accepted(web: Web) -> None:
    """limit=10000 is the maximum and is accepted."""
    assert call_json(web, "GET", "/keys?limit=10000")[0] == 200


def test_cursor_round_trips_every_key_including_empty() -> None:
    """Cursors are never empty (the empty key included) and decode to the key they encode."""
    for key in [b"", b"a", b"\x00\xff", b"x" * 300]:
        cursor = encode_cursor(key)
        assert cursor and "=" not in cursor
        assert decode_cursor(cursor.encode()) == key


def edgy_bytes(max_size: int) -> st.SearchStrategy[bytes]:
    """Short byte strings over the bytes where seek arithmetic can go wrong (0x00, 0xff...)."""
    return st.lists(st.sampled_from([0, 1, 0x61, 0xFE, 0xFF]), max_size=max_size).map(bytes)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    keys=st.sets(edgy_bytes(4), max_size=40),
    prefix=edgy_bytes(2),
    limit=st.integers(min_value=1, max_value=7),
)
def test_list_page_paging_equals_sorted_filter(keys: set[bytes], prefix: bytes, limit: int) -> None:
    """Paging with list_page yields exactly the sorted keys with the prefix, whatever the bytes."""
    node = FakeNode()
    for key in keys:
        node.keyspace.set(key, b"v")
    listed: list[bytes] = []
    after: bytes | None = None
    for _ in range(200):
        page, after = list_page(node.keyspace, prefix, after, limit)
        assert len(page) <= limit
        listed.extend(page)
        if after is None:
            break
    assert listed == sorted(k for k in keys if k.startswith(prefix))


# -- node routes -----------------------------------------------------------------------


def test_health_ok(web: Web) -> None:
    """A healthy node answers 200 with its id, uptime and storage health."""
    web.node.clock.advance(42)
    status, doc = call_json(web, "GET", "/health")
    assert status == 200
    assert doc["status"] == "ok" and doc["node_id"] == "n1"
    assert doc["uptime_s"] == 42.0
    assert doc["storage"]["healthy"] is True


def test_health_503_when_storage_unhealthy(web: Web) -> None:
    """A failed committer turns /health into a 503 that still carries the health report."""
    web.node.committer.healthy = False  # type: ignore[union-attr]
    status, doc = call_json(web, "GET", "/health")
    assert status == 503
    assert doc["status"] == "unhealthy" and doc["storage"]["healthy"] is False
    assert doc["error"]["code"] == "storage_unavailable"


def test_ready_follows_storage_health(web: Web) -> None:
    """/ready is 200 for a healthy node (a node without a cluster has nothing to join)
    and 503 with code not_ready once storage fails."""
    status, doc = call_json(web, "GET", "/ready")
    assert status == 200 and doc["joined"] is True
    web.node.committer.healthy = False  # type: ignore[union-attr]
    status, doc = call_json(web, "GET", "/ready")
    assert status == 503
    assert doc["error"]["code"] == "not_ready"


def test_cluster_single_node_shape(web: Web) -> None:
    """/cluster lists this node alone, with dialable addresses built from the Host header."""
    web.node.keyspace.set(b"k", b"v")
    status, doc = call_json(web, "GET", "/cluster")
    assert status == 200
    assert doc["mode"] == "single" and doc["node_id"] == "n1"
    assert doc["replication"] == {"n": 1, "r": 1, "w": 1}
    assert doc["cluster_name"] == "twistkv"
    (member,) = doc["nodes"]
    assert member == {
        "id": "n1",
        "state": "alive",
        "client_address": "node.example:7379",
        "http_address": "node.example:8379",
        "peer_address": "node.example:7380",
        "keys": 1,
        "version": member["version"],
        "uptime_s": 0.0,
        "is_self": True,
    }


def test_metrics_is_prometheus_text_with_http_counts(web: Web) -> None:
    """/metrics serves the node registry, including the HTTP requests counted so far."""
    call(web, "GET", "/kv/missing")
    status, headers, body = call(web, "GET", "/metrics")
    assert status == 200
    assert headers.getRawHeaders("content-type")[0].startswith("text/plain; version=")
    assert b'twistkv_http_requests_total{route="/kv/<key>",status="404"} 1.0' in body
    assert b'twistkv_node_info{node_id="n1"} 1.0' in body


def test_landing_page_is_html_with_node_facts(web: Web) -> None:
    """GET / renders the node id, key count and links to /cluster and /metrics."""
    web.node.keyspace.set(b"k", b"v")
    status, headers, body = call(web, "GET", "/")
    assert status == 200
    assert headers.getRawHeaders("content-type") == ["text/html; charset=utf-8"]
    page = body.decode()
    assert '<span class="node-id">n1</span>' in page
    assert '<dd id="keys">1</dd>' in page
    assert 'href="/cluster"' in page and 'href="/metrics"' in page
    assert 'href="/static/twistkv.css"' in page
    assert "http://" not in page and "https://" not in page  # no CDN


def test_api_node_and_format_json_share_the_view_model(web: Web) -> None:
    """/api/node and /?format=json are both exactly node_view of a snapshot."""
    web.node.clock.advance(3)
    expected = node_view(snapshot_node(web.node, "node.example"))
    assert call_json(web, "GET", "/api/node") == (200, expected)
    expected["http_requests_total"] += 1  # the /api/node request itself
    assert call_json(web, "GET", "/?format=json") == (200, expected)


def test_static_asset_served_with_etag(web: Web) -> None:
    """/static/ serves packaged files; a matching If-None-Match gets a bodiless 304."""
    status, headers, body = call(web, "GET", "/static/twistkv.css")
    assert status == 200 and b"twistkv" in body
    assert headers.getRawHeaders("content-type") == ["text/css; charset=utf-8"]
    (etag,) = headers.getRawHeaders("etag")
    status, _, body = call(web, "GET", "/static/twistkv.css", headers={"if-none-match": [etag]})
    assert (status, body) == (304, b"")


@pytest.mark.parametrize("path", ["/static/nope.css", "/static/..%2Fapp.py", "/static/.hidden"])
def test_static_missing_or_escaping_is_json_404(web: Web, path: str) -> None:
    """Unknown assets and traversal attempts are plain JSON 404s."""
    assert_error(web, "GET", path, 404, "not_found")


# -- errors and accounting -----------------------------------------------------------------


def test_unknown_route_is_json_404(web: Web) -> None:
    """Any unrouted URL is a JSON 404, counted under the unmatched label."""
    assert_error(web, "GET", "/nowhere", 404, "not_found")
    assert web.node.stats.http_requests == {(UNMATCHED_ROUTE, 404): 1}


def test_wrong_method_is_json_405_with_allow(web: Web) -> None:
    """A known path with the wrong method is a 405 listing the allowed methods."""
    status, headers, raw = call(web, "PATCH", "/kv/k")
    assert status == 405
    assert json.loads(raw)["error"]["code"] == "method_not_allowed"
    assert headers.getRawHeaders("allow") == ["DELETE, GET, HEAD, POST, PUT"]
    assert call(web, "POST", "/health")[0] == 405


def test_unexpected_exception_is_json_500(web: Web, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in a handler becomes a JSON 500 without leaking the traceback."""

    def boom(key: bytes) -> None:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(web.node.keyspace, "get", boom)
    document = assert_error(web, "GET", "/kv/k", 500, "internal_error")
    assert "secret" not in document["error"]["message"]


def test_requests_counted_by_route_pattern_and_status(web: Web) -> None:
    """Each request increments http_requests[(route pattern, status)] once, keys never leak in."""
    call(web, "PUT", "/kv/a", b"1")
    call(web, "PUT", "/kv/b", b"2")
    call(web, "PUT", "/kv/a", b"3")
    call(web, "GET", "/kv/zzz")
    call(web, "GET", "/health")
    assert web.node.stats.http_requests == {
        ("/kv/<key>", 201): 2,
        ("/kv/<key>", 200): 1,
        ("/kv/<key>", 404): 1,
        ("/health", 200): 1,
    }


def test_client_gone_is_counted_as_499() -> None:
    """A request whose client disconnects before the answer is counted with status 499."""
    web = make_web()
    app = web.app
    request = _FinishableRequest()
    app._begin(request)  # type: ignore[arg-type]
    app._labels[request] = "/kv/<key>"  # type: ignore[index]
    request.finished.errback(ConnectionError("gone"))
    assert web.node.stats.http_requests == {("/kv/<key>", CLIENT_CLOSED): 1}
    assert app._labels == {}


class _FinishableRequest:
    """Just enough of a request for the accounting hooks."""

    code = 200

    def __init__(self) -> None:
        self.finished: Deferred[None] = Deferred()

    def notifyFinish(self) -> Deferred[None]:
        return self.finished


def test_api_error_carries_status_code_and_message() -> None:
    """ApiError keeps the three parts the edge maps to the JSON error shape."""
    error = ApiError(418, "teapot", "short and stout")
    assert (error.status, error.code, error.message, str(error)) == (418, "teapot", "short and stout", "short and stout")


def test_web_app_resource_is_stable() -> None:
    """resource() returns the same root each time, so a Site and tests share the accounting."""
    app = NodeWebApp(FakeNode())
    assert app.resource() is app.resource()
