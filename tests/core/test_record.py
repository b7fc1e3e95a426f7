"""Tests for twistkv.core.record: the versioned record format."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twistkv.core.record import (
    CorruptRecordError,
    Record,
    Version,
    decode_record,
    encode_record,
    live_value,
)

node_ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._", min_size=1, max_size=20)
versions = st.builds(
    Version,
    value=st.binary(max_size=200),
    clock=st.lists(st.tuples(node_ids, st.integers(0, 2**64 - 1)), max_size=5).map(tuple),
    hlc=st.integers(0, 2**64 - 1),
    node=node_ids,
    expires_at_ms=st.integers(0, 2**64 - 1),
    tombstone=st.booleans(),
)
records = st.lists(versions, max_size=4).map(lambda vs: Record(tuple(vs)))


@settings(max_examples=200)
@given(records)
def test_round_trip(record: Record) -> None:
    """Any record decodes back to exactly what was encoded."""
    assert decode_record(encode_record(record)) == record


@settings(max_examples=300)
@given(records, st.data())
def test_truncation_is_detected(record: Record, data: st.DataObject) -> None:
    """Every strict prefix of a valid encoding is refused with CorruptRecordError."""
    raw = encode_record(record)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(CorruptRecordError):
        decode_record(raw[:cut])


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_garbage_raises_only_corrupt_record_error(raw: bytes) -> None:
    """Random bytes either decode or raise CorruptRecordError, never anything else."""
    try:
        decode_record(raw)
    except CorruptRecordError:
        pass


def test_trailing_bytes_and_unknown_flags_are_refused() -> None:
    """A record with extra bytes or reserved flag bits set is refused, not misread."""
    raw = encode_record(Record((Version(b"v", (("n1", 1),), 5, "n1"),)))
    with pytest.raises(CorruptRecordError, match="trailing"):
        decode_record(raw + b"x")
    flagged = bytearray(raw)
    flagged[3] |= 0x02  # flags byte of the first version
    with pytest.raises(CorruptRecordError, match="flags"):
        decode_record(bytes(flagged))


def test_winner_is_highest_hlc_then_node() -> None:
    """The plain-read winner among siblings is the greatest (hlc, node)."""
    a = Version(b"a", hlc=10, node="n1")
    b = Version(b"b", hlc=10, node="n2")
    c = Version(b"c", hlc=9, node="n9")
    assert Record((a, b, c)).winner() is b
    assert Record(()).winner() is None


def test_live_value_hides_tombstones_and_expired_versions() -> None:
    """A tombstone or a version past its expiry reads as absent; others read as themselves."""
    live = Version(b"v", expires_at_ms=1000)
    assert live_value(Record((live,)), now_ms=999) is live
    assert live_value(Record((live,)), now_ms=1000) is None
    assert live_value(Record((Version(b"", tombstone=True),)), now_ms=0) is None
    assert live_value(None, now_ms=0) is None
    assert live_value(Record((Version(b"forever"),)), now_ms=2**62) is not None


@settings(max_examples=100)
@given(st.binary(max_size=100), st.integers(0, 2**63), st.integers(0, 2**63), node_ids)
def test_single_writer_encoding_matches_general(
    value: bytes, hlc: int, expires: int, node: str
) -> None:
    """The direct single-writer encoding is byte-identical to encoding the equivalent Record,
    and is_single_writer recognises it for its node only."""
    from twistkv.core.record import encode_single_writer, is_single_writer, single_writer_block

    block = single_writer_block(node)
    raw = encode_single_writer(block, value, hlc, expires)
    assert raw == encode_record(Record((Version(value, ((node, hlc),), hlc, node, expires),)))
    assert is_single_writer(raw, block)
    assert not is_single_writer(raw, single_writer_block(node + "x"))
    two = encode_record(Record((Version(value, ((node, 1),), 1, node),) * 2))
    assert not is_single_writer(two, block)
    mixed = encode_record(Record((Version(value, ((node, 1), ("zz", 2)), 1, node),)))
    assert not is_single_writer(mixed, block)
