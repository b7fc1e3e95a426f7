"""Tests for twistkv.core.merkle: tree laws, wire form, and the range algebra."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twistkv.core.merkle import (
    FULL_RING,
    MAX_DEPTH,
    CorruptTreeError,
    MerkleTree,
    RangeSet,
    decode_bitmap,
    decode_ranges,
    diff,
    diff_ranges,
    encode_bitmap,
    encode_ranges,
    intersect_ranges,
    iter_leaf_ranges,
    normalise_ranges,
    ranges_width,
    record_digest,
)
from twistkv.core.record import Record, Version
from twistkv.core.ring import TOKEN_SPACE, Ring, TokenRange, key_token

tokens = st.integers(min_value=0, max_value=TOKEN_SPACE - 1)
spans = st.builds(TokenRange, tokens, tokens)
keys = st.binary(min_size=1, max_size=12)
digests = st.binary(min_size=16, max_size=16)
datasets = st.dictionaries(keys, digests, max_size=60)
depths = st.integers(min_value=1, max_value=8)


def build(span: TokenRange, depth: int, data: dict[bytes, bytes]) -> MerkleTree:
    """A tree of the keys of ``data`` inside ``span``."""
    tree = MerkleTree(span, depth)
    for key, digest in data.items():
        token = key_token(key)
        if span.contains(token):
            tree.add(token, key, digest)
    return tree


@settings(max_examples=60, deadline=None)
@given(span=spans, depth=depths, data=datasets)
def test_identical_data_gives_no_difference(span: TokenRange, depth: int,
                                            data: dict[bytes, bytes]) -> None:
    """Two replicas with the same keys and records agree, whatever order they added them in."""
    a = build(span, depth, data)
    b = build(span, depth, dict(reversed(list(data.items()))))
    assert diff(a, b) == [] and a == b and a.root == b.root


@settings(max_examples=60, deadline=None)
@given(depth=depths, data=datasets, key=keys, digest=digests, other=digests)
def test_one_differing_key_is_exactly_its_leaf(depth: int, data: dict[bytes, bytes],
                                               key: bytes, digest: bytes, other: bytes) -> None:
    """A key one replica lacks, or holds with another record, shows up as its leaf and no other;
    and the difference is symmetric."""
    data.pop(key, None)
    a = build(FULL_RING, depth, data)
    b = build(FULL_RING, depth, {**data, key: digest})
    leaf = a.leaf_of(key_token(key))
    assert diff(a, b) == [leaf] == diff(b, a)
    if other != digest:
        c = build(FULL_RING, depth, {**data, key: other})
        assert diff(b, c) == [leaf] == diff(c, b)
    leaf_range = a.leaf_range(leaf)
    assert leaf_range is not None and leaf_range.contains(key_token(key))
    assert diff_ranges(a, b) == [leaf_range]


@settings(max_examples=60, deadline=None)
@given(depth=depths, a_data=datasets, b_data=datasets)
def test_diff_is_symmetric_and_names_exactly_the_leaves_with_different_keys(
        depth: int, a_data: dict[bytes, bytes], b_data: dict[bytes, bytes]) -> None:
    a = build(FULL_RING, depth, a_data)
    b = build(FULL_RING, depth, b_data)
    expected = sorted({
        a.leaf_of(key_token(key))
        for key in set(a_data) | set(b_data) if a_data.get(key) != b_data.get(key)
    })
    assert diff(a, b) == diff(b, a) == expected


@settings(max_examples=60, deadline=None)
@given(span=spans, depth=depths, start=datasets, changes=st.lists(
    st.tuples(keys, st.one_of(st.none(), digests)), max_size=40))
def test_incremental_updates_equal_a_rebuild(span: TokenRange, depth: int,
                                             start: dict[bytes, bytes],
                                             changes: list[tuple[bytes, bytes | None]]) -> None:
    """Adding, changing and removing keys one at a time gives the tree built from scratch."""
    tree = build(span, depth, start)
    data = dict(start)
    for key, new in changes:
        token = key_token(key)
        if span.contains(token):
            tree.update(token, key, data.get(key), new)
        if new is None:
            data.pop(key, None)
        else:
            data[key] = new
    assert tree == build(span, depth, data)
    assert diff(tree, build(span, depth, data)) == []


@settings(max_examples=60, deadline=None)
@given(span=spans, depth=st.integers(min_value=0, max_value=10), data=datasets)
def test_wire_form_round_trips(span: TokenRange, depth: int, data: dict[bytes, bytes]) -> None:
    tree = build(span, depth, data)
    encoded = tree.encode()
    decoded = MerkleTree.decode(encoded)
    assert decoded == tree and decoded.root == tree.root
    # Compact: a bitmap plus 24 bytes per non-empty leaf.
    non_empty = sum(1 for i in range(tree.leaves) if tree.leaf(i)[0])
    assert len(encoded) == 18 + (tree.leaves + 7) // 8 + 24 * non_empty


def test_decode_refuses_garbage() -> None:
    tree = build(FULL_RING, 4, {b"a": bytes(16), b"b": bytes(range(16))})
    encoded = tree.encode()
    for bad in (b"", encoded[:-1], encoded + b"x", b"\x02" + encoded[1:]):
        with pytest.raises(CorruptTreeError):
            MerkleTree.decode(bad)
    deep = bytes([1, MAX_DEPTH + 1]) + encoded[2:]
    with pytest.raises(CorruptTreeError):
        MerkleTree.decode(deep)


def test_trees_over_other_spans_are_not_compared() -> None:
    with pytest.raises(ValueError):
        diff(MerkleTree(FULL_RING, 3), MerkleTree(FULL_RING, 4))
    with pytest.raises(ValueError):
        diff(MerkleTree(TokenRange(1, 2), 3), MerkleTree(FULL_RING, 3))


@settings(max_examples=60, deadline=None)
@given(span=spans, depth=depths, token=tokens)
def test_leaves_partition_the_span(span: TokenRange, depth: int, token: int) -> None:
    """Every token of the span is in exactly the leaf leaf_of names, and leaf ranges tile it."""
    tree = MerkleTree(span, depth)
    ranges = [r for _, r in iter_leaf_ranges(tree)]
    assert sum(r.width for r in ranges) == span.width
    if span.contains(token):
        index = tree.leaf_of(token)
        leaf_range = tree.leaf_range(index)
        assert leaf_range is not None and leaf_range.contains(token)
        assert sum(1 for r in ranges if r.contains(token)) == 1
    else:
        with pytest.raises(ValueError):
            tree.leaf_of(token)


def test_a_narrow_span_has_empty_leaves() -> None:
    tree = MerkleTree(TokenRange(10, 13), 3)
    assert [tree.leaf_range(i) for i in range(8) if tree.leaf_range(i) is not None] == [
        TokenRange(10, 11), TokenRange(11, 12), TokenRange(12, 13)]
    non_empty = {i for i in range(8) if tree.leaf_range(i) is not None}
    assert [tree.leaf_of(t) for t in (11, 12, 13)] == sorted(non_empty) == [0, 2, 5]


def test_record_digest_ignores_sibling_and_clock_order() -> None:
    a = Version(b"x", (("n1", 5), ("n2", 3)), 10, "n1")
    b = Version(b"y", (("n3", 1),), 11, "n3")
    a_reordered = a._replace(clock=(("n2", 3), ("n1", 5)))
    assert record_digest(Record((a, b))) == record_digest(Record((b, a_reordered)))
    assert record_digest(Record((a,))) != record_digest(Record((a, b)))
    assert record_digest(Record((a,))) != record_digest(Record((a._replace(tombstone=True),)))


# -- ranges ----------------------------------------------------------------------------------

range_lists = st.lists(spans, max_size=5)


def brute_member(ranges: list[TokenRange], token: int) -> bool:
    return any(r.contains(token) for r in ranges)


@settings(max_examples=100, deadline=None)
@given(a=range_lists, b=range_lists, probes=st.lists(tokens, max_size=20))
def test_range_algebra_agrees_with_membership(a: list[TokenRange], b: list[TokenRange],
                                              probes: list[int]) -> None:
    both = intersect_ranges(a, b)
    union = normalise_ranges(a)
    edges = [r.end for r in a + b] + [(r.start + 1) % TOKEN_SPACE for r in a + b] + [
        r.start for r in a + b]
    for token in probes + edges:
        assert brute_member(both, token) == (brute_member(a, token) and brute_member(b, token))
        assert brute_member(union, token) == brute_member(a, token)
        assert (token in RangeSet(a)) == brute_member(a, token)
    assert ranges_width(both) <= min(ranges_width(a), ranges_width(b))
    assert ranges_width(union) == ranges_width(a) <= TOKEN_SPACE


@settings(max_examples=30, deadline=None)
@given(a=range_lists, depth=depths)
def test_range_and_bitmap_encodings_round_trip(a: list[TokenRange], depth: int) -> None:
    blob = encode_ranges(a)
    assert decode_ranges(blob) == (a, len(blob))
    leaves = 1 << depth
    chosen = {i for i in range(leaves) if i % 3 == 0}
    bitmap = encode_bitmap(chosen, leaves)
    assert decode_bitmap(blob + bitmap, leaves, len(blob)) == (frozenset(chosen),
                                                                len(blob) + len(bitmap))
    with pytest.raises(CorruptTreeError):
        decode_ranges(blob[:-1] if a else b"\x00")


def test_shared_ranges_of_ring_nodes() -> None:
    """With N = 2 of 4 nodes, two nodes share part of the ring; with N = 4 all of it."""
    ring = Ring(["a", "b", "c", "d"], vnodes_per_node=8)
    shared = intersect_ranges(ring.owned_ranges("a", 2), ring.owned_ranges("b", 2))
    assert 0 < ranges_width(shared) < TOKEN_SPACE
    for token in range(0, TOKEN_SPACE, TOKEN_SPACE // 997):
        replicas = ring.preference_list_for_token(token, 2)
        assert brute_member(shared, token) == ({"a", "b"} <= set(replicas))
    everything = intersect_ranges(ring.owned_ranges("a", 4), ring.owned_ranges("b", 4))
    assert everything == [FULL_RING] and ranges_width(everything) == TOKEN_SPACE
