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

flags bit 0 = tombstone; bits 1-7 must be zero (reserved for value kinds such
as counters), so an old node refuses a record it cannot understand instead of
misreading it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

__all__ = [
    "CorruptRecordError",
    "Version",
    "Record",
    "encode_record",
    "decode_record",
    "live_value",
]

FORMAT = 1
_HEAD = struct.Struct(">BH")
_VERSION_HEAD = struct.Struct(">BQQ")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_TOMBSTONE = 0x01


class CorruptRecordError(ValueError):
    """Stored or received record bytes do not decode: the store or the peer is at fault."""


ClockPairs = tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class Version:
    """One version of a key's value.

    ``expires_at_ms`` is absolute (ms since the Unix epoch; 0 = never) so that
    every replica expires the key at the same moment, and so that expiry
    survives restarts without rewriting anything.
    """

    value: bytes
    clock: ClockPairs = ()
    hlc: int = 0
    node: str = ""
    expires_at_ms: int = 0
    tombstone: bool = False

    def expired(self, now_ms: int) -> bool:
        """Whether this version has passed its expiry at ``now_ms``."""
        return self.expires_at_ms != 0 and self.expires_at_ms <= now_ms

    def visible(self, now_ms: int) -> bool:
        """Whether a plain read at ``now_ms`` sees this version as a value."""
        return not self.tombstone and not (self.expires_at_ms != 0 and self.expires_at_ms <= now_ms)


@dataclass(frozen=True, slots=True)
class Record:
    """All versions a replica holds for one key (siblings when concurrent)."""

    versions: tuple[Version, ...] = field(default=())

    def winner(self) -> Version | None:
        """The last-writer winner by (hlc, node): what a plain GET answers."""
        if not self.versions:
            return None
        if len(self.versions) == 1:
            return self.versions[0]
        return max(self.versions, key=lambda v: (v.hlc, v.node))


def live_value(record: Record | None, now_ms: int) -> Version | None:
    """The version a plain read returns, or None when deleted, expired or absent."""
    if record is None:
        return None
    winner = record.winner()
    if winner is None or not winner.visible(now_ms):
        return None
    return winner


def _str8(text: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > 255:
        raise ValueError(f"node id too long for the record format: {text[:40]!r}...")
    return bytes((len(raw),)) + raw


def encode_record(record: Record) -> bytes:
    """Serialise a record; the inverse of L{decode_record}."""
    parts = [_HEAD.pack(FORMAT, len(record.versions))]
    for version in record.versions:
        parts.append(
            _VERSION_HEAD.pack(
                _TOMBSTONE if version.tombstone else 0, version.hlc, version.expires_at_ms
            )
        )
        parts.append(_str8(version.node))
        parts.append(_U16.pack(len(version.clock)))
        for node, counter in version.clock:
            parts.append(_str8(node))
            parts.append(_U64.pack(counter))
        parts.append(_U32.pack(len(version.value)))
        parts.append(version.value)
    return b"".join(parts)


def decode_record(data: bytes) -> Record:
    """Parse record bytes, raising L{CorruptRecordError} for anything malformed."""
    try:
        fmt, count = _HEAD.unpack_from(data, 0)
        if fmt != FORMAT:
            raise CorruptRecordError(f"unknown record format {fmt}")
        offset = _HEAD.size
        versions = []
        for _ in range(count):
            flags, hlc, expires = _VERSION_HEAD.unpack_from(data, offset)
            if flags & ~_TOMBSTONE:
                raise CorruptRecordError(f"unknown record flags {flags:#x}")
            offset += _VERSION_HEAD.size
            node, offset = _read_str8(data, offset)
            (clock_len,) = _U16.unpack_from(data, offset)
            offset += 2
            clock = []
            for _ in range(clock_len):
                clock_node, offset = _read_str8(data, offset)
                (counter,) = _U64.unpack_from(data, offset)
                offset += 8
                clock.append((clock_node, counter))
            (value_len,) = _U32.unpack_from(data, offset)
            offset += 4
            value = data[offset : offset + value_len]
            if len(value) != value_len:
                raise CorruptRecordError("record value truncated")
            offset += value_len
            versions.append(
                Version(value, tuple(clock), hlc, node, expires, bool(flags & _TOMBSTONE))
            )
        if offset != len(data):
            raise CorruptRecordError(f"{len(data) - offset} trailing bytes after record")
        return Record(tuple(versions))
    except (struct.error, IndexError) as exc:
        raise CorruptRecordError(f"record truncated: {exc}") from None
    except UnicodeDecodeError as exc:
        raise CorruptRecordError(f"record node id is not UTF-8: {exc}") from None


def _read_str8(data: bytes, offset: int) -> tuple[str, int]:
    length = data[offset]
    end = offset + 1 + length
    if end > len(data):
        raise CorruptRecordError("record string truncated")
    return data[offset + 1 : end].decode("utf-8"), end
