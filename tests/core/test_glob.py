"""Tests for twistkv.core.glob: Redis-compatible glob matching."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twistkv.core.glob import compile_glob


@pytest.mark.parametrize(
    ("pattern", "key", "expected"),
    [
        (b"h?llo", b"hello", True),
        (b"h?llo", b"hllo", False),
        (b"h*llo", b"hllo", True),
        (b"h*llo", b"heeeello", True),
        (b"h[ae]llo", b"hallo", True),
        (b"h[ae]llo", b"hillo", False),
        (b"h[^e]llo", b"hallo", True),
        (b"h[^e]llo", b"hello", False),
        (b"h[a-b]llo", b"hbllo", True),
        (b"h[b-a]llo", b"hallo", True),
        (b"h\\*", b"h*", True),
        (b"h\\*", b"hx", False),
        (b"*", b"", True),
        (b"a*", b"a\nb", True),
        (b"[abc", b"a", True),
        (b"user:*:name", b"user:42:name", True),
        (b"user:*:name", b"user:42:email", False),
    ],
)
def test_redis_examples(pattern: bytes, key: bytes, expected: bool) -> None:
    """Patterns behave as Redis's stringmatchlen does on its documented cases."""
    assert compile_glob(pattern)(key) is expected


@settings(max_examples=200)
@given(st.binary(max_size=30))
def test_literal_pattern_matches_only_itself(key: bytes) -> None:
    """A pattern with every byte escaped matches exactly that key and nothing longer."""
    pattern = b"".join(b"\\" + bytes((c,)) for c in key)
    match = compile_glob(pattern)
    assert match(key)
    assert not match(key + b"x")


@settings(max_examples=200)
@given(st.binary(max_size=40))
def test_arbitrary_patterns_never_crash(pattern: bytes) -> None:
    """Any byte string is a usable pattern (Redis never rejects a glob)."""
    assert compile_glob(pattern)(b"some key") in (True, False)
