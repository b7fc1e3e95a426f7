"""Tests for twistkv.web.views: pure view models, no node, no request."""

from __future__ import annotations

import base64
import json
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from webfakes import FakeNode

from twistkv.core.record import Record, Version
from twistkv.core.versioning import pack_hlc
from twistkv.web.views import (
    NodeSnapshot,
    advertised_address,
    cluster_view,
    encode_bytes,
    health_view,
    human_duration,
    iso_timestamp,
    node_view,
    record_view,
    snapshot_node,
    write_view,
)

SNAPSHOT = NodeSnapshot(
    node_id="n1",
    version="0.1.0",
    now_ms=1_700_000_090_000,
    started_at_ms=1_700_000_000_000,
    keys=7,
    ops_per_sec=12.345,
    commands_total=100,
    connected_clients=2,
    http_requests_total=5,
    storage_engine="rocksdb",
    fsync="always",
    storage_healthy=True,
    storage_bytes=4096,
    client_endpoint="tcp:7379",
    http_endpoint="tcp:8379:interface=10.0.0.5",
    peer_endpoint="tcp:7380",
    cluster_name="prod",
    host="kv.example",
)


def test_node_view_is_plain_json_data() -> None:
    """The view model holds only JSON types and the figures the page shows, rounded."""
    view = node_view(SNAPSHOT)
    assert json.loads(json.dumps(view)) == view
    assert view["uptime_s"] == 90.0 and view["uptime_human"] == "1m 30s"
    assert view["ops_per_sec"] == 12.3
    assert view["keys"] == 7
    assert view["addresses"] == {
        "client": "kv.example:7379",
        "http": "10.0.0.5:8379",
        "peer": "kv.example:7380",
    }
    assert view["storage"] == {
        "healthy": True, "engine": "rocksdb", "fsync": "always", "approximate_bytes": 4096,
    }


def test_node_view_http_off() -> None:
    """A node without an HTTP endpoint advertises none (null), not a bogus address."""
    assert node_view(replace(SNAPSHOT, http_endpoint=None))["addresses"]["http"] is None


def test_health_view_reports_unhealthy_storage() -> None:
    """Unhealthy storage flips status; uptime and node id stay."""
    view = health_view(replace(SNAPSHOT, storage_healthy=False))
    assert view["status"] == "unhealthy"
    assert view["storage"]["healthy"] is False
    assert view["node_id"] == "n1" and view["uptime_s"] == 90.0


def test_cluster_view_single_member() -> None:
    """The single-node cluster view names itself as the only alive member."""
    view = cluster_view(SNAPSHOT)
    assert view["cluster_name"] == "prod" and view["mode"] == "single"
    assert [m["id"] for m in view["nodes"]] == ["n1"]
    assert view["nodes"][0]["is_self"] is True
    assert view["nodes"][0]["http_address"] == "10.0.0.5:8379"


def test_uptime_never_negative() -> None:
    """A wall clock that stepped back reports zero uptime, not a negative one."""
    assert node_view(replace(SNAPSHOT, now_ms=SNAPSHOT.started_at_ms - 5000))["uptime_s"] == 0


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("tcp:7379", "h:7379"),
        ("tcp:port=7379", "h:7379"),
        ("tcp:7379:interface=0.0.0.0", "h:7379"),
        ("tcp:7379:interface=127.0.0.1", "127.0.0.1:7379"),
        ("tcp6:7379:interface=\\:\\:1", "[::1]:7379"),
        ("tcp6:7379:interface=\\:\\:", "h:7379"),
        ("ssl:8443:privateKey=k.pem:interface=10.1.2.3", "10.1.2.3:8443"),
        ("unix:/run/twistkv.sock", "unix:/run/twistkv.sock"),
    ],
)
def test_advertised_address(endpoint: str, expected: str) -> None:
    """Listen endpoints become dialable host:port; wildcards take the request's host."""
    assert advertised_address(endpoint, "h") == expected


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59.9, "59s"), (61, "1m 1s"), (3600, "1h 0m"), (90061, "1d 1h 1m")],
)
def test_human_duration(seconds: float, text: str) -> None:
    """Durations read like a status page: largest units first, no clutter."""
    assert human_duration(seconds) == text


def test_iso_timestamp_uses_physical_part_only() -> None:
    """The logical counter of an HLC never shifts the displayed time."""
    assert iso_timestamp(pack_hlc(1_700_000_001_500, 0)) == "2023-11-14T22:13:21.500Z"
    assert iso_timestamp(pack_hlc(1_700_000_001_500, 65535)) == "2023-11-14T22:13:21.500Z"
    assert iso_timestamp(0) == "1970-01-01T00:00:00.000Z"


@given(st.binary(max_size=64))
def test_encode_bytes_is_lossless(data: bytes) -> None:
    """Whatever the bytes, the (text, encoding) pair decodes back to them."""
    text, encoding = encode_bytes(data)
    decoded = text.encode("utf-8") if encoding == "utf-8" else base64.b64decode(text)
    assert decoded == data


def test_record_view_lists_siblings_newest_first() -> None:
    """Siblings are all versions, newest first, with tombstones and expiry flagged."""
    now = 1_700_000_000_000
    old = Version(b"a", (("n1", 1),), pack_hlc(now - 2000, 0), "n1", expires_at_ms=now - 1)
    dead = Version(b"", (("n2", 1),), pack_hlc(now - 1000, 0), "n2", tombstone=True)
    live = Version(b"\xff", (("n1", 1), ("n3", 1)), pack_hlc(now - 500, 3), "n3", expires_at_ms=now + 250)
    view = record_view(b"k", live, Record((old, live, dead)), now)
    assert view["value"] == base64.b64encode(b"\xff").decode() and view["encoding"] == "base64"
    assert view["version"] == {"vector_clock": {"n1": 1, "n3": 1}, "hlc": live.hlc, "node": "n3"}
    assert view["ttl_ms"] == 250
    assert [s["version"]["node"] for s in view["siblings"]] == ["n3", "n2", "n1"]
    assert view["siblings"][1]["tombstone"] is True and view["siblings"][1]["value"] is None
    assert view["siblings"][2]["expired"] is True and view["siblings"][2]["ttl_ms"] == 0


def test_write_view_for_binary_key() -> None:
    """A binary key is reported in base64, flagged by key_encoding."""
    version = Version(b"v", (("n1", 1),), pack_hlc(1000, 0), "n1")
    view = write_view(b"\xff\x00", version, True, 1000)
    assert view["key"] == "/wA=" and view["key_encoding"] == "base64"
    assert view["created"] is True and view["ttl_ms"] is None


def test_snapshot_of_a_fake_node() -> None:
    """snapshot_node reads ids, counts, health and endpoints from a node."""
    node = FakeNode()
    node.keyspace.set(b"k", b"v")
    node.clock.advance(5)
    node.stats.http_requests[("/health", 200)] = 3
    snap = snapshot_node(node, "host.example")
    assert (snap.node_id, snap.keys, snap.http_requests_total) == ("n1", 1, 3)
    assert snap.now_ms - snap.started_at_ms == 5000
    assert snap.storage_healthy is True and snap.host == "host.example"
    node.committer = None
    assert snapshot_node(node).storage_healthy is False


def test_cluster_view_lists_every_member() -> None:
    """In cluster mode /cluster lists each member with state, addresses, ring share and
    vnodes; another node's keys come from the cluster watch's STATS readings (None
    without one), and uptime is reported for this node only."""
    from twistkv.web.views import MemberSnapshot

    def member(node_id: str, state: str, is_self: bool) -> MemberSnapshot:
        return MemberSnapshot(
            node_id=node_id, peer_address=f"10.0.0.{node_id[-1]}:7380", state=state,
            state_for_s=3.0, incarnation=1, client_address=f"10.0.0.{node_id[-1]}:7379",
            http_address=None, version="0.1.0", in_ring=True, is_self=is_self,
            primary_share=0.33, replica_share=1.0,
        )

    snapshot = replace(
        SNAPSHOT, mode="cluster", replication=(3, 2, 2),
        members=(member("n1", "alive", True), member("n2", "dead", False)),
        cluster_counters=(("hints_stored", 4),),
    )
    view = cluster_view(snapshot)
    assert view["mode"] == "cluster"
    assert view["replication"] == {"n": 3, "r": 2, "w": 2}
    assert [(n["id"], n["state"], n["is_self"]) for n in view["nodes"]] == [
        ("n1", "alive", True), ("n2", "dead", False)
    ]
    assert view["nodes"][0]["keys"] == 7 and view["nodes"][1]["keys"] is None
    assert view["counters"] == {"hints_stored": 4}
    assert json.loads(json.dumps(view)) == view
    # With the cluster watch's readings and the ring: every node's keys and vnodes (this
    # node's own count is its own, not a reading's).
    view = cluster_view(snapshot, {"n1": 99, "n2": 1234}, {"n1": 150, "n2": 150})
    assert [(n["id"], n["keys"], n["vnodes"]) for n in view["nodes"]] == [
        ("n1", 7, 150), ("n2", 1234, 150)]


def test_health_view_reports_joined() -> None:
    """/health and /ready carry whether the node has joined its cluster."""
    assert health_view(SNAPSHOT)["joined"] is True
    assert health_view(replace(SNAPSHOT, joined=False))["joined"] is False
