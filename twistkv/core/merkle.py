"""Merkle trees over token ranges, for anti-entropy between replicas (sans-IO).

A L{MerkleTree} summarises the keys a replica holds in a *span* of the ring (a
L{TokenRange}, possibly the whole ring) as ``2**depth`` leaves of equal token width. Two
replicas build one each over the same span and the same key filter, compare them with L{diff},
and then exchange only the keys of the leaves that differ.

Leaf hash: XOR of per-key hashes
--------------------------------

Each key contributes ``entry_hash(key, record_digest(record))``, a 128-bit BLAKE2b of the key
and a digest of its record. A leaf holds the XOR of its keys' entry hashes and their count.
XOR was chosen over hashing the sorted list of entries because:

 - it is order-independent, so the leaf does not depend on the order keys were visited in.
   The store iterates keys in byte order, not token order, and a tree built over a *live*
   iteration (the store keeps changing while it is scanned) is still the hash of a set;
 - it is incremental: adding, removing or changing one key is O(1) (XOR the old entry out,
   the new one in), so a tree can be maintained on writes instead of rebuilt; the property
   tests check that incremental updates equal a rebuild;
 - it needs no per-leaf buffering: building costs one pass and O(leaves) memory.

Its weakness, that different sets can XOR to the same value, needs 128-bit collisions: random
keys never produce one, and a client who crafted some (a generalised-birthday attack over its
own keys) would only hide a difference from anti-entropy, which read repair still fixes. The
per-leaf count is compared too. Each key appears at most once per tree (the entry covers the
key), so equal entries cannot cancel.

The record digest is canonical: versions (siblings) are sorted by their encoding and clock
pairs are sorted, so two replicas holding the same sibling set in a different order agree.

Internal nodes hash their two children (BLAKE2b), so L{diff} descends from the root and visits
only subtrees that differ: ``O(differences * depth)`` comparisons.

Wire form (L{MerkleTree.encode}): for modest depths (default 10: 1024 leaves) sending the leaf
array in one message costs one round trip and a few KiB; empty leaves are left out with a
bitmap, so a sparse tree (a filter covering part of the span) stays small::

    tree   := FORMAT(u8 = 1) depth(u8) span_start(u64) span_end(u64)
              bitmap(ceil(2**depth / 8) bytes, bit i = leaf i present, LSB first)
              (count(u64) hash(16 bytes))*   ; one per present leaf, in leaf order

Ranges (L{encode_ranges}) travel as ``count(u32) (start(u64) end(u64))*``.
"""

from __future__ import annotations

import bisect
import hashlib
import struct
from collections.abc import Iterable, Iterator, Sequence

from twistkv.core.record import Record, Version, encode_record
from twistkv.core.ring import TOKEN_SPACE, TokenRange

__all__ = [
    "DEFAULT_DEPTH",
    "FULL_RING",
    "HASH_BYTES",
    "MAX_DEPTH",
    "CorruptTreeError",
    "MerkleTree",
    "RangeSet",
    "decode_bitmap",
    "decode_ranges",
    "diff",
    "diff_ranges",
    "encode_bitmap",
    "encode_ranges",
    "entry_hash",
    "intersect_ranges",
    "iter_leaf_ranges",
    "normalise_ranges",
    "record_digest",
    "ranges_width",
]

#: 1024 leaves: a 1M-key range has ~1000 keys per leaf; the encoded tree is <= 24 KiB.
DEFAULT_DEPTH = 10
#: 65536 leaves (<= 1.5 MiB encoded): the deepest tree a peer is asked to build.
MAX_DEPTH = 16
HASH_BYTES = 16
FORMAT = 1

#: The whole ring as a TokenRange (``start == end``, see L{TokenRange}).
FULL_RING = TokenRange(0, 0)

_MAX_TOKEN = TOKEN_SPACE - 1
_TREE_HEAD = struct.Struct(">BBQQ")
_LEAF = struct.Struct(">Q16s")
_RANGE = struct.Struct(">QQ")
_U32 = struct.Struct(">I")
_ZERO = bytes(HASH_BYTES)


class CorruptTreeError(ValueError):
    """Tree or range bytes from a peer do not decode."""


# -- hashing ---------------------------------------------------------------------------------


def _canonical(version: Version) -> Version:
    clock = version.clock
    if any(clock[i][0] >= clock[i + 1][0] for i in range(len(clock) - 1)):
        return version._replace(clock=tuple(sorted(clock)))
    return version


def record_digest(record: Record) -> bytes:
    """A 16-byte digest of a record that does not depend on the order of its siblings (nor of
    clock pairs): BLAKE2b-128 of the sorted one-version encodings, length-prefixed."""
    versions = record.versions
    if len(versions) == 1:  # the common case: no sorting, one encoding
        part = encode_record(Record((_canonical(versions[0]),)))
        material = _U32.pack(len(part)) + part
    else:
        parts = sorted(encode_record(Record((_canonical(v),))) for v in versions)
        material = b"".join(_U32.pack(len(part)) + part for part in parts)
    return hashlib.blake2b(material, digest_size=HASH_BYTES, person=b"twistkv-record").digest()


def entry_hash(key: bytes, digest: bytes) -> int:
    """The 128-bit contribution of one key (with its record digest) to its leaf."""
    material = _U32.pack(len(key)) + key + digest
    return int.from_bytes(
        hashlib.blake2b(material, digest_size=HASH_BYTES, person=b"twistkv-entry").digest(),
        "big",
    )


def _node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.blake2b(left + right, digest_size=HASH_BYTES, person=b"twistkv-node").digest()


# -- range algebra ---------------------------------------------------------------------------


def _linear(ranges: Iterable[TokenRange]) -> list[tuple[int, int]]:
    """Ranges as sorted, merged, non-wrapping intervals ``(lo, hi]`` with -1 <= lo < hi."""
    pieces: list[tuple[int, int]] = []
    for token_range in ranges:
        start, end = token_range
        if start == end:
            return [(-1, _MAX_TOKEN)]
        if start < end:
            pieces.append((start, end))
        else:
            pieces.append((start, _MAX_TOKEN))
            pieces.append((-1, end))
    pieces = [(lo, hi) for lo, hi in pieces if lo < hi]
    pieces.sort()
    merged: list[tuple[int, int]] = []
    for lo, hi in pieces:
        if merged and lo <= merged[-1][1]:
            if hi > merged[-1][1]:
                merged[-1] = (merged[-1][0], hi)
        else:
            merged.append((lo, hi))
    return merged


def _from_linear(intervals: list[tuple[int, int]]) -> list[TokenRange]:
    if intervals == [(-1, _MAX_TOKEN)]:
        return [FULL_RING]
    ranges = [TokenRange(lo % TOKEN_SPACE, hi) for lo, hi in intervals]
    # (lo, MAX] followed by (-1, hi] is one arc across the wrap.
    if len(intervals) > 1 and intervals[0][0] == -1 and intervals[-1][1] == _MAX_TOKEN:
        last = intervals[-1]
        ranges = [TokenRange(last[0], intervals[0][1])] + ranges[1:-1]
    elif intervals and intervals[0][0] == -1:
        ranges[0] = TokenRange(_MAX_TOKEN, intervals[0][1])
    return ranges


def normalise_ranges(ranges: Iterable[TokenRange]) -> list[TokenRange]:
    """Merge overlapping and touching ranges; the canonical form (sorted by start)."""
    return _from_linear(_linear(ranges))


def intersect_ranges(a: Iterable[TokenRange], b: Iterable[TokenRange]) -> list[TokenRange]:
    """The tokens in both ``a`` and ``b``, as canonical ranges (empty list when disjoint)."""
    left, right = _linear(a), _linear(b)
    out: list[tuple[int, int]] = []
    i = j = 0
    while i < len(left) and j < len(right):
        lo = max(left[i][0], right[j][0])
        hi = min(left[i][1], right[j][1])
        if lo < hi:
            out.append((lo, hi))
        if left[i][1] < right[j][1]:
            i += 1
        else:
            j += 1
    return _from_linear(out)


def ranges_width(ranges: Iterable[TokenRange]) -> int:
    """How many tokens the union of ``ranges`` covers."""
    return sum(hi - lo for lo, hi in _linear(ranges))


class RangeSet:
    """Fast membership of tokens in a union of ranges (one bisection per lookup)."""

    __slots__ = ("ranges", "_los", "_his", "_all")

    def __init__(self, ranges: Iterable[TokenRange]) -> None:
        intervals = _linear(ranges)
        self.ranges = _from_linear(intervals)
        self._all = intervals == [(-1, _MAX_TOKEN)]
        self._los = [lo for lo, _ in intervals]
        self._his = [hi for _, hi in intervals]

    def __contains__(self, token: int) -> bool:
        if self._all:
            return True
        index = bisect.bisect_left(self._his, token)
        return index < len(self._his) and self._los[index] < token

    def __bool__(self) -> bool:
        return bool(self._his)


def encode_ranges(ranges: Sequence[TokenRange]) -> bytes:
    """``count(u32) (start(u64) end(u64))*``."""
    return _U32.pack(len(ranges)) + b"".join(_RANGE.pack(start, end) for start, end in ranges)


def decode_ranges(data: bytes, offset: int = 0) -> tuple[list[TokenRange], int]:
    """Parse L{encode_ranges} at ``offset``; return the ranges and the offset after them."""
    try:
        (count,) = _U32.unpack_from(data, offset)
    except struct.error:
        raise CorruptTreeError("range list truncated") from None
    offset += _U32.size
    end = offset + count * _RANGE.size
    if end > len(data):
        raise CorruptTreeError("range list truncated")
    ranges = [TokenRange(*_RANGE.unpack_from(data, offset + i * _RANGE.size))
              for i in range(count)]
    return ranges, end


def _bitmap_bytes(leaves: int) -> int:
    return (leaves + 7) // 8


def encode_bitmap(indices: Iterable[int], leaves: int) -> bytes:
    """A set of leaf indices as a bitmap of ``ceil(leaves / 8)`` bytes, LSB first."""
    bitmap = bytearray(_bitmap_bytes(leaves))
    for index in indices:
        if not 0 <= index < leaves:
            raise ValueError(f"leaf {index} out of range for {leaves} leaves")
        bitmap[index >> 3] |= 1 << (index & 7)
    return bytes(bitmap)


def decode_bitmap(data: bytes, leaves: int, offset: int = 0) -> tuple[frozenset[int], int]:
    """Parse L{encode_bitmap} at ``offset``; return the indices and the offset after it."""
    size = _bitmap_bytes(leaves)
    chunk = data[offset:offset + size]
    if len(chunk) != size:
        raise CorruptTreeError("leaf bitmap truncated")
    found = {
        (byte_index << 3) | bit
        for byte_index, byte in enumerate(chunk) if byte
        for bit in range(8) if byte >> bit & 1
    }
    if any(index >= leaves for index in found):
        raise CorruptTreeError("leaf bitmap names leaves beyond the tree")
    return frozenset(found), offset + size


# -- the tree --------------------------------------------------------------------------------


class MerkleTree:
    """A fixed-depth Merkle tree over ``span``: ``2**depth`` leaves of equal token width.

    Leaf ``i`` covers the tokens whose offset into the span (``token - start - 1``, modulo the
    space) lies in ``[ceil(i * W / L), ceil((i + 1) * W / L))`` for span width ``W`` and ``L``
    leaves. A span narrower than ``L`` tokens leaves some leaves empty for good.
    """

    __slots__ = ("span", "depth", "_xor", "_counts", "_levels")

    def __init__(self, span: TokenRange = FULL_RING, depth: int = DEFAULT_DEPTH) -> None:
        if not 0 <= depth <= MAX_DEPTH:
            raise ValueError(f"depth must be 0..{MAX_DEPTH}, got {depth}")
        if not (0 <= span.start < TOKEN_SPACE and 0 <= span.end < TOKEN_SPACE):
            raise ValueError(f"span {span} is outside the token space")
        self.span = TokenRange(span.start, span.end)
        self.depth = depth
        self._xor = [0] * (1 << depth)
        self._counts = [0] * (1 << depth)
        self._levels: list[list[bytes]] | None = None

    @property
    def leaves(self) -> int:
        """How many leaves the tree has (``2**depth``)."""
        return 1 << self.depth

    # -- geometry ------------------------------------------------------------------------

    def leaf_of(self, token: int) -> int:
        """The index of the leaf covering ``token``.

        @raise ValueError: the token is outside the span.
        """
        if not self.span.contains(token):
            raise ValueError(f"token {token} is outside {self.span}")
        offset = (token - self.span.start - 1) % TOKEN_SPACE
        return offset * self.leaves // self.span.width

    def leaf_range(self, index: int) -> TokenRange | None:
        """The tokens leaf ``index`` covers, or None when it covers none (a narrow span)."""
        if not 0 <= index < self.leaves:
            raise ValueError(f"leaf {index} out of range")
        width, leaves = self.span.width, self.leaves
        lo = -(-index * width // leaves)
        hi = -(-(index + 1) * width // leaves)
        if lo == hi:
            return None
        start = self.span.start
        return TokenRange((start + lo) % TOKEN_SPACE, (start + hi) % TOKEN_SPACE)

    # -- contents ------------------------------------------------------------------------

    def add(self, token: int, key: bytes, digest: bytes) -> None:
        """Count ``key`` (whose record has ``digest``) in the leaf of ``token``."""
        index = self.leaf_of(token)
        self._xor[index] ^= entry_hash(key, digest)
        self._counts[index] += 1
        self._levels = None

    def remove(self, token: int, key: bytes, digest: bytes) -> None:
        """Undo L{add} of the same ``(key, digest)``."""
        index = self.leaf_of(token)
        if self._counts[index] == 0:
            raise ValueError(f"leaf {index} is empty")
        self._xor[index] ^= entry_hash(key, digest)
        self._counts[index] -= 1
        self._levels = None

    def update(self, token: int, key: bytes, old: bytes | None, new: bytes | None) -> None:
        """A key's record changed from digest ``old`` to ``new`` (None: absent)."""
        if old == new:
            return
        if old is not None:
            self.remove(token, key, old)
        if new is not None:
            self.add(token, key, new)

    def leaf(self, index: int) -> tuple[int, bytes]:
        """``(count, hash)`` of leaf ``index``; the hash is 16 zero bytes when empty."""
        return self._counts[index], self._xor[index].to_bytes(HASH_BYTES, "big")

    @property
    def key_count(self) -> int:
        """How many keys the tree counts."""
        return sum(self._counts)

    def _node_levels(self) -> list[list[bytes]]:
        """Hashes per level, leaves first (``levels[-1]`` is ``[root]``); cached."""
        if self._levels is None:
            level = [
                _ZERO if count == 0 and xor == 0 else _node_hash(
                    count.to_bytes(8, "big"), xor.to_bytes(HASH_BYTES, "big"))
                for count, xor in zip(self._counts, self._xor, strict=True)
            ]
            levels = [level]
            while len(level) > 1:
                level = [
                    _ZERO if level[i] == _ZERO and level[i + 1] == _ZERO
                    else _node_hash(level[i], level[i + 1])
                    for i in range(0, len(level), 2)
                ]
                levels.append(level)
            self._levels = levels
        return self._levels

    @property
    def root(self) -> bytes:
        """The root hash: equal roots mean equal trees (up to hash collisions)."""
        return self._node_levels()[-1][0]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MerkleTree):
            return NotImplemented
        return (self.span == other.span and self.depth == other.depth
                and self._counts == other._counts and self._xor == other._xor)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"MerkleTree(span={tuple(self.span)}, depth={self.depth}, "
                f"keys={self.key_count}, root={self.root.hex()[:12]})")

    # -- wire ----------------------------------------------------------------------------

    def encode(self) -> bytes:
        """The compact wire form (module docstring)."""
        present = [i for i, count in enumerate(self._counts) if count or self._xor[i]]
        parts = [_TREE_HEAD.pack(FORMAT, self.depth, self.span.start, self.span.end),
                 encode_bitmap(present, self.leaves)]
        parts.extend(
            _LEAF.pack(self._counts[i], self._xor[i].to_bytes(HASH_BYTES, "big"))
            for i in present
        )
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes, max_depth: int = MAX_DEPTH) -> MerkleTree:
        """Parse L{encode}'s output, refusing anything malformed or deeper than ``max_depth``.

        @raise CorruptTreeError: the bytes are not a tree.
        """
        try:
            fmt, depth, start, end = _TREE_HEAD.unpack_from(data, 0)
        except struct.error:
            raise CorruptTreeError("tree header truncated") from None
        if fmt != FORMAT:
            raise CorruptTreeError(f"unknown tree format {fmt}")
        if depth > max_depth:
            raise CorruptTreeError(f"tree depth {depth} exceeds {max_depth}")
        tree = cls(TokenRange(start, end), depth)
        present, offset = decode_bitmap(data, tree.leaves, _TREE_HEAD.size)
        if len(data) != offset + len(present) * _LEAF.size:
            raise CorruptTreeError("tree leaves truncated or followed by trailing bytes")
        for index in sorted(present):
            count, raw = _LEAF.unpack_from(data, offset)
            offset += _LEAF.size
            tree._counts[index] = count
            tree._xor[index] = int.from_bytes(raw, "big")
        return tree


def _check_comparable(a: MerkleTree, b: MerkleTree) -> None:
    if a.span != b.span or a.depth != b.depth:
        raise ValueError(
            f"trees over different spans or depths: {tuple(a.span)}/{a.depth} "
            f"and {tuple(b.span)}/{b.depth}")


def diff(a: MerkleTree, b: MerkleTree) -> list[int]:
    """Indices of the leaves whose contents differ, ascending; empty when the trees agree.

    Descends from the root into differing subtrees only. Symmetric: ``diff(a, b) ==
    diff(b, a)``.

    @raise ValueError: the trees cover different spans or have different depths.
    """
    _check_comparable(a, b)
    left, right = a._node_levels(), b._node_levels()  # noqa: SLF001 - same class
    if left[-1][0] == right[-1][0]:
        return []
    frontier = [0]
    for level in range(a.depth - 1, -1, -1):
        ours, theirs = left[level], right[level]
        frontier = [child for node in frontier for child in (2 * node, 2 * node + 1)
                    if ours[child] != theirs[child]]
    return frontier


def diff_ranges(a: MerkleTree, b: MerkleTree) -> list[TokenRange]:
    """The token ranges of the leaves that differ (see L{diff})."""
    found = (a.leaf_range(index) for index in diff(a, b))
    return [token_range for token_range in found if token_range is not None]


def iter_leaf_ranges(tree: MerkleTree) -> Iterator[tuple[int, TokenRange]]:
    """Every non-empty leaf range of ``tree`` with its index (for display and tests)."""
    for index in range(tree.leaves):
        token_range = tree.leaf_range(index)
        if token_range is not None:
            yield index, token_range
