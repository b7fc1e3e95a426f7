"""Tests for twistkv.core.record: the versioned record format."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twistkv.core.counter import PNCounter
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
    counter=st.none(),
)
#: Valid (canonical) PN-counter states: sorted unique actors, no all-zero entry.
counters = st.builds(
    PNCounter,
    base=st.integers(-(2**63), 2**63 - 1),
    origin_hlc=st.integers(0, 2**64 - 1),
    origin_node=st.one_of(st.just(""), node_ids),
    entries=st.dictionaries(
        node_ids, st.tuples(st.integers(0, 2**70), st.integers(0, 2**70)).filter(any),
        max_size=4,
    ).map(lambda d: tuple(sorted((a, p, n) for a, (p, n) in d.items()))),
)
#: Counter versions as a decoder produces them: the value is the counter's decimal text.
counter_versions = st.builds(
    lambda counter, clock, hlc, node, expires: Version(
        str(counter.value()).encode(), clock, hlc, node, expires, False, counter),
    counters,
    st.lists(st.tuples(node_ids, st.integers(0, 2**64 - 1)), max_size=5).map(tuple),
    st.integers(0, 2**64 - 1),
    node_ids,
    st.integers(0, 2**64 - 1),
)
records = st.lists(st.one_of(versions, counter_versions), max_size=4).map(
    lambda vs: Record(tuple(vs)))


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
    for flags in (0x03, 0x04, 0x80):  # counter + tombstone, reserved bits
        flagged = bytearray(raw)
        flagged[3] = flags  # flags byte of the first version
        with pytest.raises(CorruptRecordError, match="flags"):
            decode_record(bytes(flagged))


def test_a_counter_version_decodes_with_its_decimal_value() -> None:
    """A counter's stored bytes are its CRDT state, but the decoded version's value is the
    decimal text a GET returns (base + P - N), and the state rides along unchanged."""
    counter = PNCounter(10, 7, "n1", (("n1/x", 5, 0), ("n2/y", 0, 20)))
    raw = encode_record(Record((Version(b"ignored", (("n1", 9),), 9, "n1", 0, False, counter),)))
    (decoded,) = decode_record(raw).versions
    assert decoded.value == b"-5"
    assert decoded.counter == counter
    assert raw[3] == 0x02


def test_a_counter_tombstone_cannot_be_encoded() -> None:
    """A tombstone carries no value, so a tombstone with a counter is a caller bug, refused."""
    with pytest.raises(ValueError, match="tombstone"):
        encode_record(Record((Version(b"", tombstone=True, counter=PNCounter()),)))


def test_a_corrupt_counter_is_a_corrupt_record() -> None:
    """Malformed counter bytes under the counter flag raise CorruptRecordError like any other
    corruption (so the replica and peers treat them alike)."""
    raw = bytearray(encode_record(Record((Version(b"", (("n1", 1),), 1, "n1", 0, False,
                                                  PNCounter(0, 0, "", (("a", 1, 0),))),))))
    raw[-2] = 0  # the P total's only byte: a zero-padded total is not canonical
    with pytest.raises(CorruptRecordError, match="counter"):
        decode_record(bytes(raw))


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


@settings(max_examples=100)
@given(st.lists(st.binary(max_size=40), max_size=8), st.integers(0, 2**62), node_ids)
def test_single_writer_run_encodes_each_value_as_the_single_encoder_does(
    values: list[bytes], first_hlc: int, node: str
) -> None:
    """A run's records are the single-writer records of its values, stamped with
    consecutive HLCs from the first, without expiry."""
    from twistkv.core.record import (
        encode_single_writer,
        encode_single_writer_run,
        single_writer_block,
    )

    block = single_writer_block(node)
    assert encode_single_writer_run(block, values, first_hlc) == [
        encode_single_writer(block, value, first_hlc + i, 0) for i, value in enumerate(values)
    ]


@settings(max_examples=100)
@given(st.lists(st.one_of(st.none(), st.sampled_from(["own", "other", "two", "short"])),
                max_size=8), node_ids)
def test_foreign_writes_lists_the_records_a_run_must_merge(
    kinds: list[str | None], node: str
) -> None:
    """foreign_writes names exactly the present records that is_single_writer rejects: those
    of another node, with two versions, or damaged; never an absent one."""
    from twistkv.core.record import (
        encode_single_writer,
        foreign_writes,
        is_single_writer,
        single_writer_block,
    )

    block = single_writer_block(node)
    examples = {
        "own": encode_single_writer(block, b"v", 7, 0),
        "other": encode_single_writer(single_writer_block(node + "x"), b"v", 7, 0),
        "two": encode_record(Record((Version(b"v", ((node, 1),), 1, node),) * 2)),
        "short": b"\x01\x00",
    }
    raws = [None if kind is None else examples[kind] for kind in kinds]
    expected = [i for i, kind in enumerate(kinds) if kind not in (None, "own")]
    assert foreign_writes(raws, block) == expected
    assert expected == [
        i for i, raw in enumerate(raws) if raw is not None and not is_single_writer(raw, block)
    ]


@settings(max_examples=200)
@given(st.lists(versions, min_size=1, max_size=2), node_ids)
def test_own_plain_version_agrees_with_decode_record(chosen: list[Version], node: str) -> None:
    """The GET fast path either declines (None) or decodes exactly what decode_record
    does; it never declines a plain value clocked by its own node alone."""
    from twistkv.core.record import own_plain_version, single_writer_block

    block = single_writer_block(node)
    own = chosen[0]._replace(node=node, clock=((node, chosen[0].hlc ^ 1),))
    for record in (Record(tuple(chosen)), Record((own,))):
        raw = encode_record(record)
        fast = own_plain_version(raw, block, node)
        if fast is not None:
            assert fast == decode_record(raw).versions[0]
            assert len(record.versions) == 1 and not record.versions[0].tombstone
    fast = own_plain_version(encode_record(Record((own,))), block, node)
    assert (fast is None) == own.tombstone


@settings(max_examples=200)
@given(st.lists(versions, min_size=1, max_size=2), node_ids)
def test_own_plain_value_is_own_plain_version_without_the_version(
    chosen: list[Version], node: str
) -> None:
    """The multi-GET fast path reads the same value and expiry as the GET fast path, and
    declines exactly the records it declines."""
    from twistkv.core.record import own_plain_value, own_plain_version, single_writer_block

    block = single_writer_block(node)
    own = chosen[0]._replace(node=node, clock=((node, chosen[0].hlc ^ 1),))
    for record in (Record(tuple(chosen)), Record((own,))):
        raw = encode_record(record)
        version = own_plain_version(raw, block, node)
        plain = own_plain_value(raw, block)
        if version is None:
            assert plain is None
        else:
            assert plain == (version.value, version.expires_at_ms)
    damaged = encode_record(Record((own._replace(tombstone=False, counter=None),)))[:-1]
    assert own_plain_value(damaged, block) is None


def test_own_plain_version_declines_counters_and_damaged_records() -> None:
    """Counters (flag bit 1) and a record whose value length does not fit its bytes go
    to decode_record, which decodes the one and reports the other."""
    from twistkv.core.record import encode_single_writer, own_plain_version, single_writer_block

    block = single_writer_block("n1")
    counter = Version(b"", (("n1", 5),), 5, "n1", counter=PNCounter(base=7))
    assert own_plain_version(encode_record(Record((counter,))), block, "n1") is None
    raw = encode_single_writer(block, b"value", 5, 0)
    assert own_plain_version(raw, block, "n1") is not None
    assert own_plain_version(raw[:-1], block, "n1") is None
    with pytest.raises(CorruptRecordError):
        decode_record(raw[:-1])
