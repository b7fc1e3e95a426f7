"""Redis glob patterns (KEYS, SCAN MATCH, CONFIG GET) over binary keys.

Redis's ``stringmatchlen`` differs from :mod:`fnmatch`: classes negate with
``^`` (not ``!``), a backslash escapes the next byte anywhere, and an
unterminated ``[`` matches the rest literally. We translate once to a
compiled bytes regex so matching each key is a C-speed ``fullmatch``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache

__all__ = ["compile_glob"]


@lru_cache(maxsize=256)
def compile_glob(pattern: bytes) -> Callable[[bytes], bool]:
    """Return a predicate telling whether a key matches the Redis glob ``pattern``."""
    if pattern == b"*":
        return lambda key: True
    regex = re.compile(_translate(pattern), re.DOTALL)
    return lambda key: regex.fullmatch(key) is not None


def _translate(pattern: bytes) -> bytes:
    out: list[bytes] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i : i + 1]
        if c == b"*":
            while i + 1 < n and pattern[i + 1 : i + 2] == b"*":
                i += 1
            out.append(b".*")
        elif c == b"?":
            out.append(b".")
        elif c == b"\\" and i + 1 < n:
            i += 1
            out.append(re.escape(pattern[i : i + 1]))
        elif c == b"[":
            i, cls = _translate_class(pattern, i + 1)
            out.append(cls)
            continue
        else:
            out.append(re.escape(c))
        i += 1
    return b"".join(out)


def _translate_class(pattern: bytes, i: int) -> tuple[int, bytes]:
    """Translate a ``[...]`` class starting after the ``[``; returns (next index, regex)."""
    n = len(pattern)
    negate = i < n and pattern[i : i + 1] == b"^"
    if negate:
        i += 1
    items: list[bytes] = []
    while i < n and pattern[i : i + 1] != b"]":
        c = pattern[i : i + 1]
        if c == b"\\" and i + 1 < n:
            i += 1
            c = pattern[i : i + 1]
            items.append(re.escape(c))
            i += 1
        elif i + 2 < n and pattern[i + 1 : i + 2] == b"-" and pattern[i + 2 : i + 3] != b"]":
            lo, hi = pattern[i], pattern[i + 2]
            if lo > hi:  # Redis swaps reversed ranges
                lo, hi = hi, lo
            items.append(re.escape(bytes((lo,))) + b"-" + re.escape(bytes((hi,))))
            i += 3
        else:
            items.append(re.escape(c))
            i += 1
    # Redis treats a missing "]" as the end of the pattern: the class ends there.
    i += 1
    if not items:
        # "[]" matches nothing in Redis; "[^]" matches any one byte.
        return i, b"(?s:.)" if negate else b"(?!)"
    return i, b"[" + (b"^" if negate else b"") + b"".join(items) + b"]"
