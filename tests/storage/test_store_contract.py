"""The OrderedStore contract, run against every store (MemoryStore and RocksStore).

Plain tests take the C{make_store} fixture, parametrized over the stores.
Hypothesis tests take C{every_store} instead and run each generated example
against each store in turn: pytest-twisted 1.14 wraps a C{@given} test's
inner function in place, so a parametrized one would be wrapped twice and
fail. Those stores are emptied, not reopened, between examples: opening a
RocksDB costs several fsyncs, which would dominate the run time.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twistkv.storage.errors import StoreClosedError
from twistkv.storage.interface import OrderedStore
from twistkv.storage.memory import MemoryStore
from twistkv.storage.rocks import RocksStore

StoreFactory = Callable[[], OrderedStore]
STORE_KINDS = ["memory", "rocks"]


def open_store(kind: str, parent: Path) -> OrderedStore:
    """A fresh, empty store of C{kind}; a RocksStore gets a new dir under C{parent}."""
    if kind == "memory":
        return MemoryStore()
    return RocksStore(tempfile.mkdtemp(dir=parent), write_buffer_bytes=4 << 20)


@pytest.fixture(params=STORE_KINDS)
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """A factory of fresh, empty stores of one kind; all are closed after the test."""
    opened: list[OrderedStore] = []

    def make() -> OrderedStore:
        opened.append(open_store(request.param, tmp_path))
        return opened[-1]

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def every_store(tmp_path: Path) -> Iterator[Callable[[], Iterator[OrderedStore]]]:
    """Call it to get each kind of store in turn, emptied first; closed after the test."""
    stores = [open_store(kind, tmp_path) for kind in STORE_KINDS]

    def each_emptied() -> Iterator[OrderedStore]:
        for store in stores:
            store.write([(key, None) for key, _ in store.iterate()])
            yield store

    yield each_emptied
    for store in stores:
        store.close()


def model_range(
    model: dict[bytes, bytes], start: bytes, stop: bytes | None, reverse: bool
) -> list[tuple[bytes, bytes]]:
    """What iterate() must return for a store holding exactly C{model}."""
    pairs = sorted(
        (key, value)
        for key, value in model.items()
        if key >= start and (stop is None or key < stop)
    )
    return pairs[::-1] if reverse else pairs


# Few distinct bytes, so that random keys collide and random bounds fall
# between stored keys; lengths up to 3 exercise prefixes and the empty key.
keys = st.binary(max_size=3).map(lambda raw: bytes(b % 4 * 60 for b in raw))
write_ops = st.tuples(keys, st.none() | st.binary(max_size=8))


def test_missing_key_reads_none(make_store: StoreFactory) -> None:
    """A key never written reads as None, not as an error or an empty value."""
    assert make_store().get(b"nope") is None


def test_write_put_overwrite_delete(make_store: StoreFactory) -> None:
    """Writes are visible to get() at once; a later put replaces, a None value deletes."""
    store = make_store()
    store.write([(b"a", b"1"), (b"b", b"2")])
    assert (store.get(b"a"), store.get(b"b")) == (b"1", b"2")
    store.write([(b"a", b"3"), (b"b", None), (b"never-there", None)])
    assert (store.get(b"a"), store.get(b"b")) == (b"3", None)


def test_last_op_for_a_key_wins_within_a_batch(make_store: StoreFactory) -> None:
    """Ops apply in order, so the last op naming a key decides its value."""
    store = make_store()
    store.write([(b"k", b"first"), (b"k", None), (b"k", b"last"), (b"gone", b"x"), (b"gone", None)])
    assert store.get(b"k") == b"last"
    assert store.get(b"gone") is None


def test_empty_key_and_empty_value_are_ordinary(make_store: StoreFactory) -> None:
    """b"" is a valid key and a valid value, distinct from a missing key."""
    store = make_store()
    store.write([(b"", b"empty key"), (b"v", b"")])
    assert store.get(b"") == b"empty key"
    assert store.get(b"v") == b""
    assert list(store.iterate()) == [(b"", b"empty key"), (b"v", b"")]


def test_batch_with_a_non_bytes_key_applies_nothing(make_store: StoreFactory) -> None:
    """A bad op anywhere in a batch raises TypeError and leaves the store untouched."""
    store = make_store()
    with pytest.raises(TypeError):
        store.write([(b"good", b"1"), ("text", b"2")])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        store.write([(b"good", b"1"), (b"k", "text")])  # type: ignore[list-item]
    assert store.get(b"good") is None
    assert list(store.iterate()) == []


def test_get_with_a_non_bytes_key_raises(make_store: StoreFactory) -> None:
    """get() refuses str keys on every store, so code tested on memory works on RocksDB."""
    with pytest.raises(TypeError):
        make_store().get("text")  # type: ignore[arg-type]


def test_get_many_answers_what_get_answers_key_by_key(make_store: StoreFactory) -> None:
    """get_many gives get's answer for each key, in order: present, missing, empty,
    repeated keys; an empty list is an empty answer."""
    store = make_store()
    store.write([(b"a", b"1"), (b"", b"empty key"), (b"c", b"")])
    keys = [b"c", b"missing", b"a", b"", b"a"]
    assert store.get_many(keys) == [store.get(k) for k in keys] == [b"", None, b"1", b"empty key", b"1"]
    assert store.get_many([]) == []


def test_get_many_refuses_non_bytes_and_a_closed_store(make_store: StoreFactory) -> None:
    """get_many is as strict as get: a str key is a TypeError, a closed store refuses."""
    store = make_store()
    store.write([(b"a", b"1")])
    with pytest.raises(TypeError):
        store.get_many([b"a", "text"])  # type: ignore[list-item]
    store.close()
    with pytest.raises(StoreClosedError):
        store.get_many([b"a"])


def test_sync_keeps_data(make_store: StoreFactory) -> None:
    """sync() succeeds on an open store and changes nothing visible."""
    store = make_store()
    store.write([(b"k", b"v")])
    store.sync()
    assert store.get(b"k") == b"v"


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batches=st.lists(st.lists(write_ops, max_size=40), max_size=4),
    start=keys,
    stop=st.none() | keys,
    reverse=st.booleans(),
)
def test_iterate_matches_a_sorted_model(
    every_store: Callable[[], Iterator[OrderedStore]],
    batches: list[list[tuple[bytes, bytes | None]]],
    start: bytes,
    stop: bytes | None,
    reverse: bool,
) -> None:
    """iterate(start, stop, reverse) yields exactly the model's keys in [start, stop), in order."""
    for store in every_store():
        model: dict[bytes, bytes] = {}
        for batch in batches:
            store.write(batch)
            for key, value in batch:
                if value is None:
                    model.pop(key, None)
                else:
                    model[key] = value
        assert list(store.iterate(start, stop, reverse=reverse)) == model_range(
            model, start, stop, reverse
        )
        for key in model:
            assert store.get(key) == model[key]


@pytest.mark.parametrize("reverse", [False, True])
def test_iterate_crosses_read_ahead_batches(make_store: StoreFactory, reverse: bool) -> None:
    """A range much larger than one read-ahead batch comes back whole, in order, once each."""
    store = make_store()
    model = {b"k%05d" % i: b"v%d" % i for i in range(5000)}
    store.write(list(model.items()))
    store.write([(b"a-before", b"x"), (b"z-after", b"x")])
    assert list(store.iterate(b"k", b"l", reverse=reverse)) == model_range(
        model, b"k", b"l", reverse
    )


def test_iterate_empty_and_inverted_ranges(make_store: StoreFactory) -> None:
    """start == stop and start > stop are empty ranges, in both directions."""
    store = make_store()
    store.write([(b"a", b"1"), (b"b", b"2"), (b"c", b"3")])
    for reverse in (False, True):
        assert list(store.iterate(b"b", b"b", reverse=reverse)) == []
        assert list(store.iterate(b"c", b"a", reverse=reverse)) == []
    assert [key for key, _ in store.iterate(b"b", reverse=True)] == [b"c", b"b"]
    assert [key for key, _ in store.iterate(stop=b"b", reverse=True)] == [b"a"]


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    churn=st.lists(
        st.tuples(st.integers(0, 399), st.sampled_from(["put", "delete", "overwrite"])),
        min_size=1,
        max_size=400,
    ),
    reverse=st.booleans(),
)
def test_iterate_over_a_live_store(
    every_store: Callable[[], Iterator[OrderedStore]], churn: list[tuple[int, str]], reverse: bool
) -> None:
    """Writes between yields never break iteration.

    Keys come out strictly ordered (so never twice); every key that stays
    untouched throughout is yielded exactly once with its value; a key
    overwritten meanwhile shows its old or its new value.
    """
    stable = {b"s%03d" % i: b"stable" for i in range(0, 400, 2)}
    overwritten = {b"s%03d" % i: b"old" for i in range(1, 400, 2)}
    for store in every_store():
        store.write(list(stable.items()) + list(overwritten.items()))
        yielded: list[tuple[bytes, bytes]] = []
        churn_steps = iter(churn)
        for pair in store.iterate(b"s", b"t", reverse=reverse):
            yielded.append(pair)
            step = next(churn_steps, None)
            if step is None:
                continue
            index, action = step
            if action == "put":  # new keys, landing before and after the cursor
                store.write([(b"s%03d-new" % index, b"new")])
            elif action == "delete":  # deletes only keys that were never stable
                store.write([(b"s%03d-new" % index, None)])
            else:
                store.write([(b"s%03d" % (index | 1), b"new")])

        keys_out = [key for key, _ in yielded]
        assert keys_out == sorted(keys_out, reverse=reverse)
        assert len(set(keys_out)) == len(keys_out)
        values = dict(yielded)
        for key, value in stable.items():
            assert values[key] == value
        for key in overwritten:
            assert values[key] in (b"old", b"new")


def test_abandoned_iterator_does_not_block_writes(make_store: StoreFactory) -> None:
    """An iterator left half-consumed (SCAN stops early) leaves the store fully usable."""
    store = make_store()
    store.write([(b"k%03d" % i, b"v") for i in range(100)])
    partial = store.iterate()
    next(partial)
    store.write([(b"k%03d" % i, None) for i in range(100)])
    assert list(store.iterate()) == []


def test_key_count_and_size_track_inserts(make_store: StoreFactory) -> None:
    """After N distinct inserts into an empty store the estimates reflect them."""
    store = make_store()
    assert store.approximate_key_count() == 0
    store.write([(b"k%03d" % i, b"x" * 1000) for i in range(100)])
    assert store.approximate_key_count() == 100
    assert store.approximate_size_bytes() >= 100 * 1000


def test_closed_store_refuses_every_operation(make_store: StoreFactory) -> None:
    """After close(), each operation raises StoreClosedError; a second close() is harmless."""
    store = make_store()
    store.write([(b"k", b"v")])
    store.close()
    store.close()
    with pytest.raises(StoreClosedError):
        store.get(b"k")
    with pytest.raises(StoreClosedError):
        store.write([(b"k", b"v")])
    with pytest.raises(StoreClosedError):
        store.sync()
    with pytest.raises(StoreClosedError):
        list(store.iterate())
