"""Tests for twistkv.core.discovery: announce codec, MAC, replay protection, join decisions."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twistkv.core.discovery import (
    ANNOUNCE_VERSION,
    MAX_ANNOUNCE_BYTES,
    REASONS,
    Announce,
    DiscoveryError,
    DiscoveryIdentity,
    DiscoveryState,
    ReplayCache,
    announce_mac,
    decide,
    decode_announce,
    encode_announce,
    is_loopback_address,
    make_announce,
)

NOW = 1_767_225_600.0
SECRET = b"s" * 32
NONCE = bytes(range(16))
DOCS = Path(__file__).resolve().parents[2] / "docs" / "discovery.md"


def ident(node: str = "a", address: str | None = None, secret: bytes | None = None,
          cluster: str = "twistkv") -> DiscoveryIdentity:
    port = 1000 + sum(ord(c) * 31**i for i, c in enumerate(node)) % 60000
    return DiscoveryIdentity(cluster, node, address or f"10.0.0.1:{port}", secret)


def announce(node: str = "b", *, members: int = 1, secret: bytes | None = None,
             now: float = NOW, nonce: bytes = NONCE, cluster: str = "twistkv",
             address: str | None = None) -> Announce:
    return make_announce(ident(node, address, secret, cluster), members=members, now=now,
                         nonce=nonce)


# -- codec ---------------------------------------------------------------------------------


def test_encoding_is_one_readable_line() -> None:
    data = encode_announce(announce("n1", address="10.77.0.1:7380", members=2))
    assert data == (b"TKVD 1 cluster=twistkv node=n1 addr=10.77.0.1:7380 members=2 "
                    b"ts=1767225600000 nonce=000102030405060708090a0b0c0d0e0f\n")


@pytest.mark.parametrize("secret", [None, SECRET])
@pytest.mark.parametrize("address", ["10.0.0.1:7380", "laptop.local:1", "[fe80::1]:65535"])
def test_round_trip(secret: bytes | None, address: str) -> None:
    original = announce("node-1.x", address=address, secret=secret, members=7,
                        nonce=b"\xff" * 64)
    assert decode_announce(encode_announce(original)) == original
    assert (original.mac is None) == (secret is None)


def test_decoding_accepts_fields_in_any_order_and_no_newline() -> None:
    line = ("TKVD 1 nonce=" + NONCE.hex() + " ts=5 members=1 addr=h:1 node=b cluster=c")
    decoded = decode_announce(line.encode())
    assert (decoded.cluster, decoded.node_id, decoded.address, decoded.timestamp_ms) == (
        "c", "b", "h:1", 5)


GOOD = encode_announce(announce(address="10.0.0.2:7380")).rstrip(b"\n")


@pytest.mark.parametrize(("data", "code"), [
    (b"", "bad_datagram"),
    (b"\xff\xfe", "bad_datagram"),
    (GOOD.replace(b" ", b"  ", 1), "bad_datagram"),
    (GOOD + b"\r\n", "bad_datagram"),
    (b"HELLO 0 version=1", "bad_magic"),
    (b"TKVD", "bad_magic"),
    (GOOD.replace(b"TKVD 1", b"TKVD 2"), "version"),
    (GOOD.replace(b"TKVD 1", b"TKVD 01"), "bad_version"),
    (GOOD + b" extra=1", "bad_field"),
    (GOOD + b" members=1", "bad_field"),
    (GOOD + b" novalue", "bad_field"),
    (GOOD + b" mac=", "bad_field"),
    (GOOD.replace(b" members=1", b""), "bad_field"),
    (GOOD.replace(b"members=1", b"members=0"), "bad_members"),
    (GOOD.replace(b"members=1", b"members=-1"), "bad_members"),
    (GOOD.replace(b"members=1", b"members=99999999999"), "bad_members"),
    (GOOD.replace(b"ts=", b"ts=0"), "bad_ts"),
    (GOOD.replace(b"node=b", b"node=-b"), "bad_node"),
    (GOOD.replace(b"cluster=twistkv", b"cluster=" + b"x" * 64), "bad_cluster"),
    (GOOD.replace(b":7380", b":0"), "bad_addr"),
    (GOOD.replace(b":7380", b""), "bad_addr"),
    (GOOD.replace(NONCE.hex().encode(), b"00"), "bad_nonce"),
    (GOOD.replace(NONCE.hex().encode(), NONCE.hex().upper().encode()), "bad_nonce"),
    (GOOD + b" mac=" + b"A" * 64, "bad_mac"),
    (GOOD + b" mac=" + b"a" * 62, "bad_mac"),
    (b"TKVD 1 " + b"x" * MAX_ANNOUNCE_BYTES, "too_long"),
])
def test_garbage_raises_discovery_error(data: bytes, code: str) -> None:
    with pytest.raises(DiscoveryError) as raised:
        decode_announce(data)
    assert raised.value.code == code


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=MAX_ANNOUNCE_BYTES + 10))
def test_fuzz_random_bytes_raise_only_discovery_error(data: bytes) -> None:
    try:
        decoded = decode_announce(data)
    except DiscoveryError:
        return
    assert decode_announce(encode_announce(decoded)) == decoded


_TOKENS = st.sampled_from([
    "TKVD", "1", "2", "cluster=twistkv", "node=b", "addr=10.0.0.1:7380", "addr=[::1]:1",
    "members=1", "members=0", "ts=1", "nonce=" + NONCE.hex(), "nonce=zz", "mac=" + "0" * 64,
    "mac=x", "=", "node=", "a=b=c", "\t", "", "\x00", "é",
])


@settings(max_examples=400, deadline=None)
@given(st.lists(_TOKENS, max_size=12), st.sampled_from([" ", "  ", "\n", ""]))
def test_fuzz_near_misses_raise_only_discovery_error(tokens: list[str], sep: str) -> None:
    data = sep.join(tokens).encode("utf-8")
    try:
        decoded = decode_announce(data)
    except DiscoveryError:
        return
    assert decode_announce(encode_announce(decoded)) == decoded


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=60), st.integers(0, 200))
def test_fuzz_mutated_valid_announce(junk: bytes, at: int) -> None:
    valid = encode_announce(announce(secret=SECRET))
    data = valid[:at] + junk + valid[at + len(junk):]
    try:
        decoded = decode_announce(data)
    except DiscoveryError:
        return
    # Whatever decodes either is the original or fails authentication.
    verdict = decide(decoded, ident("a", secret=SECRET), ["a"], NOW)
    assert decoded == decode_announce(valid) or verdict.reason in (
        "auth_failed", "other_cluster", "self", "stale", "auth_mismatch", "same_address",
        "loopback_address")


def test_invalid_announce_and_identity_cannot_be_built() -> None:
    with pytest.raises(DiscoveryError):
        Announce("c", "n", "h:1", 1, 0, b"short")
    with pytest.raises(DiscoveryError):
        Announce("c", "n", "h:1", 1, 0, NONCE, version=ANNOUNCE_VERSION + 1)
    with pytest.raises(DiscoveryError):
        Announce("c", "n", "h:1", True, 0, NONCE)  # type: ignore[arg-type]
    with pytest.raises(DiscoveryError):
        DiscoveryIdentity("c", "n", "no-port")
    with pytest.raises(ValueError, match="empty cluster secret"):
        DiscoveryIdentity("c", "n", "h:1", b"")


# -- MAC -----------------------------------------------------------------------------------


def test_mac_covers_every_field() -> None:
    signed = announce(secret=SECRET)
    assert signed.mac == announce_mac(SECRET, signed)
    variants = [
        Announce("other", signed.node_id, signed.address, signed.members, signed.timestamp_ms,
                 signed.nonce),
        Announce(signed.cluster, "c", signed.address, signed.members, signed.timestamp_ms,
                 signed.nonce),
        Announce(signed.cluster, signed.node_id, "10.9.9.9:1", signed.members,
                 signed.timestamp_ms, signed.nonce),
        Announce(signed.cluster, signed.node_id, signed.address, 2, signed.timestamp_ms,
                 signed.nonce),
        Announce(signed.cluster, signed.node_id, signed.address, signed.members,
                 signed.timestamp_ms + 1, signed.nonce),
        Announce(signed.cluster, signed.node_id, signed.address, signed.members,
                 signed.timestamp_ms, b"\x01" * 16),
    ]
    macs = {announce_mac(SECRET, variant) for variant in variants}
    assert len(macs) == len(variants) and signed.mac not in macs
    assert announce_mac(b"t" * 32, signed) != signed.mac


# -- decisions -----------------------------------------------------------------------------


def test_alone_joins_an_announcer() -> None:
    verdict = decide(announce("b"), ident("a"), ["a"], NOW)
    assert (verdict.seed, verdict.reason) == (announce("b").address, "join")
    assert decide(announce("b"), ident("a"), [], NOW).reason == "join"


@pytest.mark.parametrize(("incoming", "mine", "reason"), [
    (announce("b", cluster="other"), ident("a"), "other_cluster"),
    (announce("a"), ident("a"), "self"),
    (announce("b", secret=SECRET), ident("a"), "auth_mismatch"),
    (announce("b"), ident("a", secret=SECRET), "auth_mismatch"),
    (announce("b", secret=b"t" * 32), ident("a", secret=SECRET), "auth_failed"),
    (announce("b", address="10.0.0.9:1"), ident("a", address="10.0.0.9:1"), "same_address"),
    (announce("b", address="127.0.0.1:7380"), ident("a"), "loopback_address"),
    (announce("b", address="0.0.0.0:7380"), ident("a"), "loopback_address"),
    (announce("b", address="localhost:7380"), ident("a"), "loopback_address"),
    (announce("b", address="[::1]:7380"), ident("a"), "loopback_address"),
])
def test_refusals(incoming: Announce, mine: DiscoveryIdentity, reason: str) -> None:
    verdict = decide(incoming, mine, ["a"], NOW)
    assert (verdict.seed, verdict.reason) == (None, reason)
    assert reason in REASONS


def test_loopback_address_is_fine_between_nodes_of_one_host() -> None:
    verdict = decide(announce("b", address="127.0.0.1:7390"), ident("a"), ["a"], NOW,
                     source_is_loopback=True)
    assert verdict.seed == "127.0.0.1:7390"


def test_secret_replay_window_both_ways() -> None:
    mine = ident("a", secret=SECRET)
    assert decide(announce("b", secret=SECRET), mine, [], NOW + 30).reason == "join"
    assert decide(announce("b", secret=SECRET), mine, [], NOW + 30.001).reason == "stale"
    assert decide(announce("b", secret=SECRET), mine, [], NOW - 30.001).reason == "stale"
    assert decide(announce("b", secret=SECRET), mine, [], NOW, seen_nonces={NONCE}).reason == (
        "replay")


def test_without_secret_there_is_no_clock_check() -> None:
    assert decide(announce("b", now=0), ident("a"), [], NOW).reason == "join"


def test_known_members_are_not_joined_again() -> None:
    assert decide(announce("b"), ident("a"), ["a", "b"], NOW).reason == "known"


def test_a_cluster_lets_a_lone_node_join_it() -> None:
    assert decide(announce("z", members=1), ident("a"), ["a", "b"], NOW).reason == "await"


def test_when_two_clusters_meet_exactly_one_side_joins() -> None:
    # Cluster {a, b} hears c (of {c, d}), and the other way round.
    ab_hears_c = decide(announce("c", members=2), ident("a"), ["a", "b"], NOW)
    cd_hears_a = decide(announce("a", members=2), ident("c"), ["c", "d"], NOW)
    assert {ab_hears_c.reason, cd_hears_a.reason} == {"join", "other_joins"}
    assert ab_hears_c.reason == "join"  # equal sizes: the smaller id joins
    # Sizes first: the smaller cluster joins the larger.
    assert decide(announce("a", members=2), ident("z"), ["z", "y", "x"], NOW).reason == (
        "other_joins")
    assert decide(announce("z", members=3), ident("a"), ["a", "b"], NOW).reason == "join"


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 50), st.integers(2, 50), st.sampled_from(["n1", "n2", "m"]))
def test_island_rule_is_antisymmetric(ours: int, theirs: int, other: str) -> None:
    me = ident("n0")
    my_live = ["n0", *[f"x{i}" for i in range(ours - 1)]]
    their_live = [other, *[f"y{i}" for i in range(theirs - 1)]]
    forward = decide(announce(other, members=theirs), me, my_live, NOW).reason
    backward = decide(announce("n0", members=ours), ident(other), their_live, NOW).reason
    assert sorted([forward, backward]) == ["join", "other_joins"]


# -- state: replay cache and cooldown --------------------------------------------------------


def test_state_refuses_replays_and_forgets_after_the_window() -> None:
    state = DiscoveryState(ident("a", secret=SECRET), rejoin_after=0.5)
    datagram = encode_announce(announce("b", secret=SECRET))
    assert state.receive(datagram, NOW, ["a"]).reason == "join"
    assert state.receive(datagram, NOW + 1, ["a"]).reason == "replay"
    assert state.receive(datagram, NOW + 31, ["a"]).reason == "stale"
    fresh = encode_announce(announce("b", secret=SECRET, now=NOW + 1, nonce=b"\x07" * 16))
    assert state.receive(fresh, NOW + 1, ["a"]).reason == "join"


def test_state_does_not_cache_nonces_of_forged_announces() -> None:
    state = DiscoveryState(ident("a", secret=SECRET))
    forged = encode_announce(announce("b", secret=b"t" * 32))
    assert state.receive(forged, NOW, ["a"]).reason == "auth_failed"
    assert state.receive(encode_announce(announce("b", secret=SECRET)), NOW, ["a"]).reason == (
        "join")


def test_state_hands_an_address_once_per_cooldown() -> None:
    state = DiscoveryState(ident("a"), rejoin_after=30)
    first = encode_announce(announce("b"))
    assert state.receive(first, NOW, ["a"]).seed == announce("b").address
    assert state.receive(first, NOW + 5, ["a"]).reason == "recently_handed"
    assert state.receive(first, NOW + 30, ["a"]).reason == "join"


def test_state_announce_counts_us_once() -> None:
    state = DiscoveryState(ident("a", address="10.0.0.1:7380"))
    data = state.announce(["a", "b", "b"], NOW, NONCE)
    decoded = decode_announce(data)
    assert (decoded.node_id, decoded.address, decoded.members) == ("a", "10.0.0.1:7380", 2)
    assert decode_announce(state.announce([], NOW, NONCE)).members == 1


def test_state_garbage_raises() -> None:
    with pytest.raises(DiscoveryError):
        DiscoveryState(ident("a")).receive(b"GET / HTTP/1.1\r\n", NOW, [])


def test_replay_cache_is_bounded_and_expires() -> None:
    cache = ReplayCache(window=10, capacity=3)
    for i in range(5):
        cache.add(bytes([i]) * 16, NOW)
    assert len(cache) == 3 and bytes([0]) * 16 not in cache and bytes([4]) * 16 in cache
    cache.expire(NOW + 20)
    assert len(cache) == 0
    with pytest.raises(ValueError):
        ReplayCache(window=0)


def test_loopback_detection() -> None:
    assert is_loopback_address("127.0.1.1:7380") and is_loopback_address("[::]:1")
    assert not is_loopback_address("10.77.0.1:7380")
    assert not is_loopback_address("laptop.local:7380")


def test_docs_list_every_reason() -> None:
    text = DOCS.read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", text, re.MULTILINE))
    assert documented == set(REASONS)
