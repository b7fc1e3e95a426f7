"""MemoryStore beyond the shared contract: what it reports about itself."""

from __future__ import annotations

from twistkv.storage.memory import MemoryStore


def test_reports_not_durable_and_no_path() -> None:
    """The group committer reads durable=False as "nothing to sync"; there is no data dir."""
    store = MemoryStore()
    assert store.durable is False
    assert store.path is None


def test_size_counts_live_key_and_value_bytes_exactly() -> None:
    """Overwrites replace and deletes remove their bytes, so the size never drifts."""
    store = MemoryStore()
    store.write([(b"ab", b"1234"), (b"c", b"5")])
    assert store.approximate_size_bytes() == 2 + 4 + 1 + 1
    store.write([(b"ab", b"x"), (b"c", None), (b"missing", None)])
    assert store.approximate_size_bytes() == 2 + 1
    store.write([(b"ab", b"y"), (b"ab", b"zz")])
    assert store.approximate_size_bytes() == 2 + 2
    assert store.approximate_key_count() == 1


def test_close_drops_the_data() -> None:
    """close() releases the memory: counters read zero afterwards."""
    store = MemoryStore()
    store.write([(b"k", b"v" * 1000)])
    store.close()
    assert store.approximate_key_count() == 0
    assert store.approximate_size_bytes() == 0


def test_single_overwrite_keeps_order_and_size_exact() -> None:
    """A lone overwrite (the hot path that skips the sorted-key update) replaces the
    value and its bytes, and range scans still list every key once, in order."""
    store = MemoryStore()
    store.write([(b"b", b"12345")])
    store.write([(b"a", b"1")])
    store.write([(b"b", b"xy")])
    assert store.get(b"b") == b"xy"
    assert store.approximate_size_bytes() == (1 + 1) + (1 + 2)
    assert list(store.iterate()) == [(b"a", b"1"), (b"b", b"xy")]


def test_batch_of_overwrites_keeps_order_size_and_atomicity() -> None:
    """A batch that only overwrites existing keys (a run of pipelined SETs) replaces values
    and their bytes exactly; a repeated key keeps its last value; a batch holding a
    value of the wrong type is refused whole; range scans still list every key once."""
    import pytest

    store = MemoryStore()
    store.write([(b"a", b"1"), (b"b", b"22"), (b"c", b"333")])
    store.write([(b"c", b"x"), (b"a", b"yyyy")])
    assert (store.get(b"a"), store.get(b"c")) == (b"yyyy", b"x")
    assert store.approximate_size_bytes() == 3 + 4 + 2 + 1
    store.write([(b"b", b"first"), (b"b", b"second"), (b"a", b"z")])
    assert store.get(b"b") == b"second"
    assert store.approximate_size_bytes() == 3 + 1 + 6 + 1
    with pytest.raises(TypeError):
        store.write([(b"a", b"new"), (b"b", "text")])  # type: ignore[list-item]
    assert (store.get(b"a"), store.get(b"b")) == (b"z", b"second")
    assert store.approximate_size_bytes() == 3 + 1 + 6 + 1
    assert list(store.iterate()) == [(b"a", b"z"), (b"b", b"second"), (b"c", b"x")]
