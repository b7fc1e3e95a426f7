"""Versions of a value: vector clocks for causality, hybrid logical clocks for a total order.

Each stored version carries two stamps, and they answer different questions:

 - Its vector clock says whether one write *knew about* another. A write whose clock descends
   the stored clock replaces it. Concurrent writes are both kept, as siblings, until a client
   resolves them (Dynamo, Riak).
 - Its hybrid logical clock (HLC) timestamp gives a total order that stays close to wall time.
   That order picks the last-writer-wins answer of a plain ``GET`` out of the siblings.

Clocks have one entry per *coordinating node* (Riak's vnode clocks), not per client. So a
clock's size is bounded by the number of nodes that ever coordinated a write to the key.

No pruning. Riak prunes entries by the wall-clock time of their last update (``young_vclock``
/ ``old_vclock``, ``small_vclock`` / ``big_vclock``). Our on-disk record stores only
``(node, counter)`` pairs, and the counter says nothing about age: a node that wrote once
yesterday has counter 1, exactly like one that wrote once a second ago. Dropping the smallest
counters would therefore drop arbitrary history. Any pruning can turn "descends" into
"concurrent" (harmless: a spurious sibling) or the reverse (a lost update). With per-node
entries and stable node ids (a StatefulSet), clocks stay small without it. If node ids churn,
pruning by a stored timestamp is the fix, and this module's record format would have to grow
one.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from typing import Protocol, TypeVar

__all__ = [
    "ClockSkewError",
    "HybridLogicalClock",
    "LOGICAL_BITS",
    "Ordering",
    "Version",
    "VectorClock",
    "hlc_logical",
    "hlc_physical_ms",
    "lww_winner",
    "pack_hlc",
    "reconcile",
    "stale",
]


class Ordering(enum.Enum):
    """How two vector clocks relate, read as ``a.compare(b)``: is ``a`` before or after ``b``?"""

    BEFORE = "before"
    AFTER = "after"
    EQUAL = "equal"
    CONCURRENT = "concurrent"


class VectorClock:
    """An immutable, hashable map from node id to a positive counter.

    Entries at zero are not stored. A missing entry means zero, so there is exactly one
    representation of each clock, and equality and hashing can follow it.
    """

    __slots__ = ("_pairs", "_counters")

    _pairs: tuple[tuple[str, int], ...]
    _counters: dict[str, int]

    def __init__(self) -> None:
        """Create the empty clock: the clock of a key that was never written."""
        self._pairs = ()
        self._counters = {}

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, int]]) -> VectorClock:
        """Build a clock from ``(node_id, counter)`` pairs, as stored on disk.

        The pairs may come in any order. Zero counters are dropped. A repeated node id or a
        negative counter means the record is corrupt, and raises ``ValueError`` rather than
        being guessed at.
        """
        counters: dict[str, int] = {}
        for node_id, counter in pairs:
            if not isinstance(node_id, str) or type(counter) is not int:
                raise ValueError(f"clock entry must be (str, int), got {(node_id, counter)!r}")
            if counter < 0:
                raise ValueError(f"negative counter {counter} for node {node_id!r}")
            if node_id in counters:
                raise ValueError(f"node {node_id!r} appears twice in a vector clock")
            counters[node_id] = counter
        return cls._from_counters(counters)

    @classmethod
    def _from_canonical(
        cls, pairs: tuple[tuple[str, int], ...], counters: dict[str, int]
    ) -> VectorClock:
        """Trusted: ``pairs`` already sorted by node with positive int counters, and
        ``counters`` the same entries as a dict (not shared with anyone who mutates it)."""
        clock = cls.__new__(cls)
        clock._pairs = pairs
        clock._counters = counters
        return clock

    @classmethod
    def _from_counters(cls, counters: dict[str, int]) -> VectorClock:
        clock = cls.__new__(cls)
        clock._pairs = tuple(sorted((n, c) for n, c in counters.items() if c > 0))
        clock._counters = dict(clock._pairs)
        return clock

    @property
    def pairs(self) -> tuple[tuple[str, int], ...]:
        """The ``(node_id, counter)`` entries sorted by node id: the on-disk record format."""
        return self._pairs

    def counter(self, node_id: str) -> int:
        """Return how many writes ``node_id`` has coordinated in this history (0 if none)."""
        return self._counters.get(node_id, 0)

    def increment(self, node_id: str) -> VectorClock:
        """Return this clock with ``node_id``'s counter advanced by one: a write it coordinates."""
        counters = dict(self._counters)
        counters[node_id] = counters.get(node_id, 0) + 1
        return VectorClock._from_counters(counters)

    def merge(self, other: VectorClock) -> VectorClock:
        """Return the pointwise maximum: the least clock that descends both."""
        counters = dict(self._counters)
        for node_id, counter in other._pairs:
            if counter > counters.get(node_id, 0):
                counters[node_id] = counter
        return VectorClock._from_counters(counters)

    def compare(self, other: VectorClock) -> Ordering:
        """Return how this clock relates to ``other`` in the happens-before partial order."""
        mine, theirs = self._counters, other._counters
        ahead = any(counter > theirs.get(node_id, 0) for node_id, counter in mine.items())
        behind = any(counter > mine.get(node_id, 0) for node_id, counter in theirs.items())
        if ahead and behind:
            return Ordering.CONCURRENT
        if ahead:
            return Ordering.AFTER
        if behind:
            return Ordering.BEFORE
        return Ordering.EQUAL

    def descends(self, other: VectorClock) -> bool:
        """True if this clock has seen everything ``other`` has (it is AFTER or EQUAL)."""
        mine = self._counters
        return all(counter <= mine.get(node_id, 0) for node_id, counter in other._pairs)

    def __iter__(self) -> Iterator[tuple[str, int]]:
        return iter(self._pairs)

    def __len__(self) -> int:
        return len(self._pairs)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VectorClock):
            return NotImplemented
        return self._pairs == other._pairs

    def __hash__(self) -> int:
        return hash(self._pairs)

    def __repr__(self) -> str:
        return f"VectorClock.from_pairs({list(self._pairs)!r})"


#: Low bits of an HLC timestamp that hold the logical counter; the physical part is above them.
LOGICAL_BITS = 16
_LOGICAL_MASK = (1 << LOGICAL_BITS) - 1


def pack_hlc(physical_ms: int, logical: int) -> int:
    """Encode an HLC timestamp as one int, so timestamps compare and sort as plain ints."""
    if physical_ms < 0 or not 0 <= logical <= _LOGICAL_MASK:
        raise ValueError(f"HLC parts out of range: physical={physical_ms}, logical={logical}")
    return (physical_ms << LOGICAL_BITS) | logical


def hlc_physical_ms(timestamp: int) -> int:
    """Return the physical part of an HLC timestamp, in milliseconds since the epoch."""
    return timestamp >> LOGICAL_BITS


def hlc_logical(timestamp: int) -> int:
    """Return the logical counter of an HLC timestamp."""
    return timestamp & _LOGICAL_MASK


class ClockSkewError(Exception):
    """A remote HLC timestamp is further ahead of our wall clock than the allowed offset.

    The message carrying it should be refused. Adopting the timestamp would drag this node's
    clock, and then every node that hears from it, into the future.
    """

    def __init__(self, remote_ts: int, wall_ms: int, max_offset_ms: int) -> None:
        self.remote_ts = remote_ts
        self.wall_ms = wall_ms
        self.max_offset_ms = max_offset_ms
        ahead = hlc_physical_ms(remote_ts) - wall_ms
        super().__init__(
            f"remote clock is {ahead} ms ahead of ours; at most {max_offset_ms} allowed"
        )


class HybridLogicalClock:
    """A hybrid logical clock (Kulkarni et al., 2014) with no I/O: the caller passes wall time.

    A timestamp packs ``(physical_ms << 16) | logical`` into one int. It fits a signed 64-bit
    field until about the year 6400. Every update then takes
    the form ``max(last + 1, wall_ms << 16)``, and ``observe`` also includes ``remote + 1``.
    This gives the paper's rules. When wall time moves ahead, the logical counter resets. When
    it stalls or steps back, the counter rises. If more than 65,535 events share one
    millisecond, the counter carries into the physical part, which still never goes backwards.

    Remote timestamps more than ``max_offset_ms`` ahead of our wall clock are refused with
    ``ClockSkewError`` and leave the state unchanged, as CockroachDB does. We chose this over
    accepting the timestamp with a cap. Capping would break the guarantee that ``observe``
    returns more than the remote timestamp, which LWW needs so that a causally later write
    wins. Accepting it without a cap would let one bad clock push the whole cluster's
    timestamps into the future for good. Pass ``max_offset_ms=None`` to accept any remote
    timestamp.
    """

    __slots__ = ("_last", "_max_offset_ms")

    def __init__(self, last: int = 0, max_offset_ms: int | None = 500) -> None:
        """Start after ``last``: the greatest timestamp issued before a restart, if known.

        Seeding from what was persisted keeps timestamps increasing across a restart, even if
        the wall clock stepped back while the node was down.
        """
        if last < 0:
            raise ValueError(f"HLC timestamps are non-negative, got {last}")
        if max_offset_ms is not None and max_offset_ms < 0:
            raise ValueError(f"max_offset_ms must be non-negative, got {max_offset_ms}")
        self._last = last
        self._max_offset_ms = max_offset_ms

    @property
    def last(self) -> int:
        """The greatest timestamp issued so far (or the seed)."""
        return self._last

    def tick(self, wall_ms: int) -> int:
        """Return a new timestamp for a local event or an outgoing message."""
        self._last = max(self._last + 1, _wall_floor(wall_ms))
        return self._last

    def tick_many(self, wall_ms: int, count: int) -> int:
        """Reserve C{count} timestamps for local events at once; return the first.

        The events get C{first, first + 1, ..., first + count - 1}: exactly what
        C{count} calls of L{tick} at the same C{wall_ms} return, in one step.
        """
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        first = max(self._last + 1, _wall_floor(wall_ms))
        self._last = first + count - 1
        return first

    def observe(self, remote_ts: int, wall_ms: int) -> int:
        """Merge a timestamp from an incoming message and return one greater than both clocks.

        Raises ``ClockSkewError`` if ``remote_ts`` is too far ahead of ``wall_ms``.
        """
        if remote_ts < 0:
            raise ValueError(f"HLC timestamps are non-negative, got {remote_ts}")
        floor = _wall_floor(wall_ms)
        if (
            self._max_offset_ms is not None
            and hlc_physical_ms(remote_ts) - wall_ms > self._max_offset_ms
        ):
            raise ClockSkewError(remote_ts, wall_ms, self._max_offset_ms)
        self._last = max(self._last + 1, remote_ts + 1, floor)
        return self._last


def _wall_floor(wall_ms: int) -> int:
    if wall_ms < 0:
        raise ValueError(f"wall clock must be non-negative milliseconds, got {wall_ms}")
    return wall_ms << LOGICAL_BITS


class Version(Protocol):
    """What reconciliation needs from a stored version. Value, tombstone flag and so on are
    the caller's business."""

    @property
    def clock(self) -> VectorClock: ...

    @property
    def hlc(self) -> int: ...

    @property
    def node(self) -> str: ...


_V = TypeVar("_V", bound=Version)


def _newest_first(version: Version) -> tuple[int, str, tuple[tuple[str, int], ...]]:
    return (version.hlc, version.node, version.clock.pairs)


def reconcile(versions: Iterable[_V]) -> list[_V]:
    """Return the versions that no other version supersedes: the sibling set.

    A version is dropped if another one's clock is strictly AFTER it. Of several versions with
    EQUAL clocks (the same write, reported by several replicas), one is kept. The result is
    ordered newest first by ``(hlc, node, clock)``, so it does not depend on input order and
    element 0 is the LWW winner. Siblings are few, so the quadratic scan is cheaper than
    anything cleverer.
    """
    candidates = sorted(versions, key=_newest_first, reverse=True)
    kept: list[_V] = []
    for version in candidates:
        superseded = any(
            other.clock.compare(version.clock) is Ordering.AFTER for other in candidates
        )
        if not superseded and all(other.clock != version.clock for other in kept):
            kept.append(version)
    return kept


def lww_winner(versions: Iterable[_V]) -> _V:
    """Return the last writer among the siblings: the answer to a plain ``GET``.

    Dominated versions are dropped first. A write that supersedes another can still carry a
    smaller HLC: its coordinator may have had only the old clock as context, without having
    observed the old HLC. Picking by HLC alone would then bring a superseded value back.
    """
    siblings = reconcile(versions)
    if not siblings:
        raise ValueError("lww_winner needs at least one version")
    return siblings[0]


def stale(replica_versions: Iterable[Version], reconciled: Iterable[Version]) -> bool:
    """True if read repair should send ``reconciled`` to the replica that returned
    ``replica_versions``.

    That is the case when the replica lacks a reconciled version or still holds one that a
    reconciled version supersedes. Versions are identified by their clocks, because two
    versions with equal clocks are the same write.
    """
    return {v.clock for v in replica_versions} != {v.clock for v in reconciled}
