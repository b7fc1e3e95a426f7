"""The on-disk and on-wire form of one key's versions.

A key maps to a L{Record}: the set of concurrent versions (siblings) the
replica holds, each with the vector clock that orders it, the hybrid logical
clock (HLC) timestamp that picks a last-writer winner for plain reads, the
writer's node id (the HLC tiebreak), an absolute expiry, and a tombstone
flag. A single node only ever holds one version per key; the format already
carries siblings so that the cluster reuses it unchanged.

Encoding (all integers big-endian)::

    record  := FORMAT(u8 = 1) count(u16) version*
    version := flags(u8) hlc(u64) expires_at_ms(u64) node(str8)
               clock_len(u16) (node(str8) counter(u64))* value_len(u32) value
    str8    := len(u8) utf-8 bytes

flags bit 0 = tombstone; bit 1 = counter: the value bytes are a PN-counter
state (L{twistkv.core.counter}), and the decoded L{Version} carries it as
C{counter} with C{value} set to its decimal text, so that GET, STRLEN,
GETRANGE and APPEND see what Redis would show. A counter is never a
tombstone. Bits 2-7 must be zero (reserved for further value kinds), so an old
node refuses a record it cannot understand instead of misreading it. Records
written before counters existed decode unchanged (the format byte stays 1).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from functools import lru_cache
from itertools import count
from typing import NamedTuple

from twistkv.core.counter import CounterFormatError, PNCounter, decode_counter, encode_counter

__all__ = [
    "CorruptRecordError",
    "Version",
    "Record",
    "encode_record",
    "decode_record",
    "counter_lineage",
    "join_counters",
    "live_value",
]

FORMAT = 1
_HEAD = struct.Struct(">BH")
#: flags, hlc, expires_at_ms (the writer's node id follows as str8)
_VERSION_FIXED = struct.Struct(">BQQ")
#: the same, read together with the node id's length byte
_VERSION_HEAD = struct.Struct(">BQQB")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_TOMBSTONE = 0x01
_COUNTER = 0x02


class CorruptRecordError(ValueError):
    """Stored or received record bytes do not decode: the store or the peer is at fault."""


ClockPairs = tuple[tuple[str, int], ...]


class Version(NamedTuple):
    """One version of a key's value.

    ``expires_at_ms`` is absolute (ms since the Unix epoch; 0 = never) so that
    every replica expires the key at the same moment, and so that expiry
    survives restarts without rewriting anything. A NamedTuple rather than a
    frozen dataclass: one is built per read on the hot path, and a tuple is
    about four times cheaper to construct while staying immutable.
    """

    value: bytes
    clock: ClockPairs = ()
    hlc: int = 0
    node: str = ""
    expires_at_ms: int = 0
    tombstone: bool = False
    #: The PN-counter state when this version is a counter (INCR family); C{value} is then
    #: its decimal text. None for plain values and tombstones.
    counter: PNCounter | None = None

    def expired(self, now_ms: int) -> bool:
        """Whether this version has passed its expiry at ``now_ms``."""
        return self.expires_at_ms != 0 and self.expires_at_ms <= now_ms

    def visible(self, now_ms: int) -> bool:
        """Whether a plain read at ``now_ms`` sees this version as a value."""
        return not self.tombstone and not (self.expires_at_ms != 0 and self.expires_at_ms <= now_ms)


class Record(NamedTuple):
    """All versions a replica holds for one key (siblings when concurrent)."""

    versions: tuple[Version, ...] = ()

    def winner(self) -> Version | None:
        """The last-writer winner by (hlc, node): what a plain GET answers."""
        versions = self.versions
        if len(versions) == 1:
            return versions[0]
        if not versions:
            return None
        return max(versions, key=lambda v: (v.hlc, v.node))


def live_value(record: Record | None, now_ms: int) -> Version | None:
    """The version a plain read returns, or None when deleted, expired or absent.

    When the last-writer winner is a counter, concurrent counters of its lineage are not
    rival writes but parts of one count: the answer is their join (L{join_counters}).
    """
    if record is None:
        return None
    winner = record.winner()
    if winner is None or not winner.visible(now_ms):
        return None
    if winner.counter is not None and len(record.versions) > 1:
        lineage = counter_lineage(winner)
        same = [v for v in record.versions if counter_lineage(v) == lineage]
        if len(same) > 1:
            return join_counters(same)
    return winner


def counter_lineage(version: Version) -> tuple[object, ...] | None:
    """What two counter versions must share to count as one counter: the counter's lineage
    (its base and the version it came from, L{PNCounter.lineage}) and the expiry it
    inherited; None for plain values and tombstones.

    The expiry is part of it so that a counter that expired (still held by a replica that has
    not collected it) never adds to a new counter started after it.
    """
    counter = version.counter
    if counter is None:
        return None
    return (counter.lineage, version.expires_at_ms)


def join_counters(versions: Sequence[Version]) -> Version:
    """One counter version that counts every one of C{versions} (all of one lineage).

    The state is the PN-counter join, the clock the merge of the clocks, and the HLC stamp,
    writer and expiry are those of the newest input by C{(hlc, node)}; each part is a
    semilattice join, so the result does not depend on order or repetition.
    """
    newest = max(versions, key=lambda v: (v.hlc, v.node))
    counter = newest.counter
    if counter is None:
        raise ValueError("join_counters needs counter versions")
    clocks: dict[str, int] = {}
    for version in versions:
        if version.counter is None:
            raise ValueError("join_counters needs counter versions")
        counter = counter.join(version.counter)
        for node_id, tick in version.clock:
            if tick > clocks.get(node_id, 0):
                clocks[node_id] = tick
    return Version(
        str(counter.value()).encode("ascii"), tuple(sorted(clocks.items())), newest.hlc,
        newest.node, newest.expires_at_ms, False, counter,
    )


@lru_cache(maxsize=1024)
def _str8(text: str) -> bytes:
    """Length-prefixed UTF-8; cached because the same few node ids recur in every record."""
    raw = text.encode("utf-8")
    if len(raw) > 255:
        raise ValueError(f"node id too long for the record format: {text[:40]!r}...")
    return bytes((len(raw),)) + raw


def encode_record(record: Record) -> bytes:
    """Serialise a record; the inverse of L{decode_record}."""
    versions = record.versions
    parts = [_HEAD.pack(FORMAT, len(versions))]
    append = parts.append
    for value, clock, hlc, node, expires_at_ms, tombstone, counter in versions:
        if counter is not None:
            if tombstone:
                raise ValueError("a counter version cannot be a tombstone")
            value = encode_counter(counter)
            append(_VERSION_FIXED.pack(_COUNTER, hlc, expires_at_ms))
        else:
            append(_VERSION_FIXED.pack(_TOMBSTONE if tombstone else 0, hlc, expires_at_ms))
        append(_str8(node))
        append(_U16.pack(len(clock)))
        for clock_node, tick in clock:
            append(_str8(clock_node))
            append(_U64.pack(tick))
        append(_U32.pack(len(value)))
        append(value)
    return b"".join(parts)


#: Builds a NamedTuple from a complete tuple of its fields without the Python-level
#: ``__new__`` that NamedTuple generates (a measurable share of decoding).
_tuple_new = tuple.__new__


def decode_record(data: bytes) -> Record:
    """Parse record bytes, raising L{CorruptRecordError} for anything malformed."""
    try:
        fmt, count = _HEAD.unpack_from(data, 0)
        if fmt != FORMAT:
            raise CorruptRecordError(f"unknown record format {fmt}")
        offset = 3
        versions = []
        for _ in range(count):
            flags, hlc, expires, node_len = _VERSION_HEAD.unpack_from(data, offset)
            if flags > _TOMBSTONE and flags != _COUNTER:
                raise CorruptRecordError(f"unknown record flags {flags:#x}")
            offset += 18
            end = offset + node_len
            node = data[offset:end].decode("utf-8")
            (clock_len,) = _U16.unpack_from(data, end)
            offset = end + 2
            clock = []
            for _ in range(clock_len):
                end = offset + 1 + data[offset]
                clock_node = data[offset + 1 : end].decode("utf-8")
                (counter,) = _U64.unpack_from(data, end)
                offset = end + 8
                clock.append((clock_node, counter))
            (value_len,) = _U32.unpack_from(data, offset)
            offset += 4
            end = offset + value_len
            if end > len(data):
                raise CorruptRecordError("record value truncated")
            if flags == _COUNTER:
                versions.append(_counter_version(data[offset:end], clock, hlc, node, expires))
            else:
                versions.append(
                    _tuple_new(
                        Version,
                        (data[offset:end], tuple(clock), hlc, node, expires,
                         flags == _TOMBSTONE, None),
                    )
                )
            offset = end
        if offset != len(data):
            raise CorruptRecordError(f"{len(data) - offset} trailing bytes after record")
        return _tuple_new(Record, (tuple(versions),))
    except (struct.error, IndexError) as exc:
        raise CorruptRecordError(f"record truncated: {exc}") from None
    except UnicodeDecodeError as exc:
        raise CorruptRecordError(f"record node id is not UTF-8: {exc}") from None


def _counter_version(
    raw: bytes, clock: list[tuple[str, int]], hlc: int, node: str, expires: int
) -> Version:
    """A decoded counter version: its state, and its value as decimal text."""
    try:
        counter = decode_counter(raw)
    except CounterFormatError as exc:
        raise CorruptRecordError(f"bad counter: {exc}") from None
    value = str(counter.value()).encode("ascii")
    return _tuple_new(Version, (value, tuple(clock), hlc, node, expires, False, counter))


def single_writer_block(node: str) -> bytes:
    """The bytes that mark a record as one version written and clocked by C{node} alone.

    A single node's records are almost all of this shape, so its write path can
    recognise and produce them without decoding (see L{is_single_writer}).
    """
    return _str8(node) + _U16.pack(1) + _str8(node)


def is_single_writer(raw: bytes, block: bytes) -> bool:
    """Whether C{raw} holds exactly one version whose writer and only clock entry is the
    node of C{block} (from L{single_writer_block}): such a record is superseded by any
    later write of that node, so it need not be decoded first."""
    return raw[1:3] == _ONE_VERSION and raw[20 : 20 + len(block)] == block


def foreign_writes(raws: Sequence[bytes | None], block: bytes) -> list[int]:
    """The positions in C{raws} of records that are not L{is_single_writer} records of
    C{block} (absent ones, None, are not foreign): a run of writes must merge those."""
    tail = 20 + len(block)
    return [
        i for i, raw in enumerate(raws)
        if raw is not None and not (raw[1:3] == _ONE_VERSION and raw[20:tail] == block)
    ]


def encode_single_writer(block: bytes, value: bytes, hlc: int, expires_at_ms: int) -> bytes:
    """Encode the one-version record C{Version(value, ((node, hlc),), hlc, node,
    expires_at_ms)} directly: the node's clock entry is its HLC timestamp, which is
    strictly increasing per node and so descends every earlier write of that node."""
    layout = _SINGLE_LAYOUTS.get(len(block)) or single_writer_layout(len(block))
    # One pack for everything before the value: head, block and tail (by block length).
    return layout.pack(1, 1, 0, hlc, expires_at_ms, block, hlc, len(value)) + value


def encode_single_writer_run(block: bytes, values: Sequence[bytes], first_hlc: int) -> list[bytes]:
    """L{encode_single_writer} for a run of values without expiry, stamped C{first_hlc},
    C{first_hlc + 1}, ... in order: one loop for a run of pipelined SETs."""
    pack = (_SINGLE_LAYOUTS.get(len(block)) or single_writer_layout(len(block))).pack
    return [
        pack(1, 1, 0, hlc, 0, block, hlc, len(value)) + value
        for hlc, value in zip(count(first_hlc), values)
    ]


def single_writer_layout(block_length: int) -> struct.Struct:
    """The struct of a one-version record up to its value, for a writer block of
    C{block_length} bytes: format byte, version count, flags, HLC, expiry, the block, the
    clock's one counter and the value length (cached per length)."""
    layout = _SINGLE_LAYOUTS.get(block_length)
    if layout is None:
        layout = _SINGLE_LAYOUTS[block_length] = struct.Struct(f">BHBQQ{block_length}sQI")
    return layout


#: A record's version count when it holds one version (bytes 1-2, after the format byte).
_ONE_VERSION = b"\x00\x01"
#: The counter and value length that follow a single-writer block.
_SINGLE_TAIL = struct.Struct(">QI")
#: Block length -> the struct of head, block and tail (L{encode_single_writer}); a node
#: has one block, so this holds one entry or a few.
_SINGLE_LAYOUTS: dict[int, struct.Struct] = {}
#: Defaults of the Version fields after C{tombstone}, for building one without C{__new__}.
_VERSION_REST = tuple(Version._field_defaults[f] for f in Version._fields[6:])


def own_plain_value(raw: bytes, block: bytes) -> tuple[bytes, int] | None:
    """The value and expiry (ms, 0 = none) of C{raw} if it is one plain version clocked by
    the node of C{block} alone; None means use L{decode_record}. L{own_plain_version}
    without building the L{Version}, for reads that need only the value."""
    tail = 20 + len(block)
    if raw[:4] != b"\x01\x00\x01\x00" or raw[20:tail] != block or len(raw) < tail + 12:
        return None  # not this shape, or damaged (decode_record reports it)
    size = _U32.unpack_from(raw, tail + 8)[0]
    start = tail + 12
    if start + size != len(raw):
        return None  # damaged: decode_record reports it
    return raw[start:], _U64.unpack_from(raw, 12)[0]


def own_plain_version(raw: bytes, block: bytes, node: str) -> Version | None:
    """Decode C{raw} if it is one plain (not tombstone, not counter) version clocked by
    C{node} alone (C{block} from L{single_writer_block}); None means use L{decode_record}.

    A lone node's records nearly all have this shape, so its GET reads the few
    fixed-offset fields it needs instead of walking the general format.
    """
    tail = 20 + len(block)
    if raw[:4] != b"\x01\x00\x01\x00" or raw[20:tail] != block or len(raw) < tail + 12:
        return None  # not this shape, or damaged (decode_record reports it)
    _, hlc, expires_at_ms = _VERSION_FIXED.unpack_from(raw, 3)
    counter, size = _SINGLE_TAIL.unpack_from(raw, tail)
    start = tail + 12
    if start + size != len(raw):
        return None  # damaged: decode_record reports it
    return _tuple_new(
        Version, (raw[start:], ((node, counter),), hlc, node, expires_at_ms, False, *_VERSION_REST)
    )
