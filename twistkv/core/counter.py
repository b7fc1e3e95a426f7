"""PN-counters: the value kind INCR-family commands store, so that no increment is lost.

Why a CRDT and not read-modify-write
------------------------------------

A plain ``INCR`` that reads the value and writes ``value + 1`` back turns two concurrent
increments into two sibling versions, and the last-writer-wins read keeps one of them: an
acknowledged increment disappears. A PN-counter (Shapiro et al., 2011; Riak's ``riak_dt_pncounter``)
instead keeps, per *actor*, the total of its positive (P) and negative (N) increments. The
value is ``base + sum(P) - sum(N)``, and two states merge by taking the pointwise maximum of
every entry. That merge is commutative, associative and idempotent, and each actor's entry
only grows, so replicas that see the same increments in any order, any number of times,
converge on a value that counts each increment exactly once.

The base: Redis semantics on top of a CRDT
------------------------------------------

Redis lets ``INCR`` run on a plain string holding an integer (``SET k 10``, ``INCR k`` -> 11)
and lets ``SET`` reset a counter. So a counter carries the value it started from (``base``)
and the identity of the version that value came from (``origin_hlc``, ``origin_node``: the
HLC stamp and writer of the plain version, tombstone or expired value that the first
increment replaced; ``(0, "")`` when there was none). Together they are the counter's
*lineage*. Two actors that independently turn the same plain ``"10"`` into a counter produce
the same lineage, so their states join and both increments count. Counters of different
lineages (a ``SET`` concurrent with increments) are never joined: they stay siblings, exactly
like concurrent plain writes (see ``twistkv.core.replication`` for where states are joined,
and docs/consistency.md).

Actors are replicas, not clients: ``<node-id>/<epoch>``, where the epoch is random per process
start. An actor must never restart its entry from a state older than one it already
published, or max-merge would hide the new increments until the entry caught up; a fresh
epoch after a restart (or after the node dropped data it no longer replicates) guarantees
that, at the cost of one more entry per key per such event.

Encoding (big-endian), carried as the value bytes of a version whose counter flag is set
(``twistkv.core.record``)::

    counter := base(i64) origin_hlc(u64) origin_node(str8) count(u16) entry*
    entry   := actor(str16) P(uint) N(uint)        ; sorted by actor, no (0, 0) entry
    uint    := len(u8) big-endian magnitude bytes  ; len 0 = zero
    strN    := len(uN) utf-8 bytes

test-case-name: tests.core.test_counter
"""

from __future__ import annotations

import struct
from typing import NamedTuple

__all__ = [
    "CounterError",
    "CounterFormatError",
    "CounterOverflow",
    "INT64_MAX",
    "INT64_MIN",
    "NotAnInteger",
    "PNCounter",
    "decode_counter",
    "encode_counter",
    "parse_int64",
]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

#: base, origin_hlc, then the origin node's length byte (decoding reads them together)
_HEAD = struct.Struct(">qQB")
_BASE = struct.Struct(">qQ")
_U16 = struct.Struct(">H")


class CounterError(ValueError):
    """An increment the client asked for cannot be applied; the message is Redis's wording."""


class NotAnInteger(CounterError):
    """The key holds a value that is not a decimal int64."""

    def __init__(self) -> None:
        super().__init__("ERR value is not an integer or out of range")


class CounterOverflow(CounterError):
    """The increment would take the value outside int64."""

    def __init__(self) -> None:
        super().__init__("ERR increment or decrement would overflow")


class CounterFormatError(ValueError):
    """Counter bytes do not decode (or are not in canonical form)."""


def parse_int64(value: bytes) -> int:
    """Parse a stored value the way Redis's INCR does: an int64 in canonical decimal form.

    @raise NotAnInteger: anything else (spaces, a leading '+' or zero, out of range).
    """
    if not value or len(value) > 20 or value[:1] in b" +" or value[-1:] == b" ":
        raise NotAnInteger()
    digits = value[1:] if value[:1] == b"-" else value
    if not digits.isdigit() or (len(digits) > 1 and digits[:1] == b"0") or value == b"-0":
        raise NotAnInteger()
    number = int(value)
    if not INT64_MIN <= number <= INT64_MAX:
        raise NotAnInteger()
    return number


class PNCounter(NamedTuple):
    """One counter state: a base, the lineage it belongs to, and per-actor (P, N) totals.

    Immutable and canonical (entries sorted by actor, no all-zero entry), so equal states
    encode to equal bytes and anti-entropy digests agree.
    """

    base: int = 0
    origin_hlc: int = 0
    origin_node: str = ""
    entries: tuple[tuple[str, int, int], ...] = ()

    @property
    def lineage(self) -> tuple[int, int, str]:
        """What must be equal for two states to merge: the base and where it came from."""
        return (self.base, self.origin_hlc, self.origin_node)

    def value(self) -> int:
        """``base + sum(P) - sum(N)`` (may leave int64 after merges; callers check)."""
        return self.base + sum(p - n for _, p, n in self.entries)

    def entry(self, actor: str) -> tuple[int, int]:
        """The ``(P, N)`` totals of C{actor} (zeros if it never incremented)."""
        for name, p, n in self.entries:
            if name == actor:
                return p, n
        return 0, 0

    def add(self, actor: str, delta: int) -> PNCounter:
        """This state with C{delta} added to C{actor}'s entry (P for >= 0, N for < 0)."""
        p, n = self.entry(actor)
        if delta >= 0:
            p += delta
        else:
            n -= delta
        kept = [e for e in self.entries if e[0] != actor]
        if p or n:
            kept.append((actor, p, n))
        kept.sort()
        return self._replace(entries=tuple(kept))

    def join(self, other: PNCounter) -> PNCounter:
        """The least state that includes both: the pointwise maximum of every entry.

        @raise ValueError: the two states belong to different lineages (never merged).
        """
        if self.lineage != other.lineage:
            raise ValueError(f"cannot join counters of lineages {self.lineage} and "
                             f"{other.lineage}")
        if self.entries == other.entries:
            return self
        merged: dict[str, tuple[int, int]] = {a: (p, n) for a, p, n in self.entries}
        for actor, p, n in other.entries:
            mine = merged.get(actor)
            merged[actor] = (p, n) if mine is None else (max(mine[0], p), max(mine[1], n))
        entries = tuple(sorted((a, p, n) for a, (p, n) in merged.items()))
        return self._replace(entries=entries)


def _str8(text: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > 255:
        raise ValueError(f"node id too long for the counter format: {text[:40]!r}...")
    return bytes((len(raw),)) + raw


def _uint(number: int) -> bytes:
    if number < 0:
        raise ValueError(f"counter totals are non-negative, got {number}")
    raw = number.to_bytes((number.bit_length() + 7) // 8, "big")
    if len(raw) > 255:
        raise ValueError("counter total too large to encode")
    return bytes((len(raw),)) + raw


def encode_counter(counter: PNCounter) -> bytes:
    """Serialise a counter state; the inverse of L{decode_counter}."""
    parts = [
        _BASE.pack(counter.base, counter.origin_hlc),
        _str8(counter.origin_node),
        _U16.pack(len(counter.entries)),
    ]
    for actor, p, n in counter.entries:
        raw = actor.encode("utf-8")
        parts.append(_U16.pack(len(raw)))
        parts.append(raw)
        parts.append(_uint(p))
        parts.append(_uint(n))
    return b"".join(parts)


def decode_counter(data: bytes) -> PNCounter:
    """Parse counter bytes; raise L{CounterFormatError} for anything malformed or
    non-canonical (unsorted or repeated actors, all-zero entries, padded totals)."""
    try:
        base, origin_hlc, node_len = _HEAD.unpack_from(data, 0)
        offset = _HEAD.size
        origin_node = data[offset : offset + node_len].decode("utf-8")
        if len(data) < offset + node_len:
            raise CounterFormatError("counter origin truncated")
        offset += node_len
        (count,) = _U16.unpack_from(data, offset)
        offset += 2
        entries: list[tuple[str, int, int]] = []
        previous: str | None = None
        for _ in range(count):
            (actor_len,) = _U16.unpack_from(data, offset)
            offset += 2
            end = offset + actor_len
            if end > len(data):
                raise CounterFormatError("counter actor truncated")
            actor = data[offset:end].decode("utf-8")
            offset = end
            totals = []
            for _ in range(2):
                length = data[offset]
                end = offset + 1 + length
                if end > len(data):
                    raise CounterFormatError("counter total truncated")
                raw = data[offset + 1 : end]
                if length and raw[0] == 0:
                    raise CounterFormatError("counter total is not in canonical form")
                totals.append(int.from_bytes(raw, "big"))
                offset = end
            if previous is not None and actor <= previous:
                raise CounterFormatError("counter actors are not sorted and unique")
            if not (totals[0] or totals[1]):
                raise CounterFormatError(f"counter entry of {actor!r} is all zero")
            previous = actor
            entries.append((actor, totals[0], totals[1]))
        if offset != len(data):
            raise CounterFormatError(f"{len(data) - offset} trailing bytes after counter")
    except (struct.error, IndexError) as exc:
        raise CounterFormatError(f"counter truncated: {exc}") from None
    except UnicodeDecodeError as exc:
        raise CounterFormatError(f"counter actor is not UTF-8: {exc}") from None
    return PNCounter(base, origin_hlc, origin_node, tuple(entries))
