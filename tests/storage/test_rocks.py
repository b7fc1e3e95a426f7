"""RocksStore beyond the shared contract: persistence, checkpoints, error mapping,
and the rocksdict 0.3.29 behaviours that twistkv relies on or works around.

The "pinned" tests describe rocksdict itself, not our code: if one fails
after a rocksdict upgrade, re-read the module docstring of
L{twistkv.storage.rocks} and DESIGN.md section 2 before changing the test.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rocksdict import Options, Rdict, ReadOptions

from twistkv.storage.errors import (
    StorageError,
    StoreClosedError,
    StoreCorruptedError,
    StoreFullError,
    StoreIOError,
    StoreLockedError,
    StoreOpenError,
)
from twistkv.storage.rocks import _ROW_OVERHEAD, RocksStore, _translate


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RocksStore]:
    """An empty RocksStore in a fresh data dir, closed after the test."""
    opened = RocksStore(tmp_path / "db")
    yield opened
    opened.close()


@pytest.fixture
def raw_db(tmp_path: Path) -> Iterator[Rdict]:
    """A bare rocksdict DB opened the way RocksStore opens it (raw mode)."""
    db = Rdict(str(tmp_path / "raw"), Options(raw_mode=True))
    yield db
    db.close()


def test_reports_durable_and_its_path(store: RocksStore, tmp_path: Path) -> None:
    """A RocksStore says it is durable and names its data dir."""
    assert store.durable is True
    assert store.path == str(tmp_path / "db")


def test_data_survives_close_and_reopen(tmp_path: Path) -> None:
    """Synced writes and writes applied just before close() are both there after reopening."""
    first = RocksStore(tmp_path / "db")
    first.write([(b"synced", b"1"), (b"deleted", b"x")])
    first.sync()
    first.write([(b"unsynced", b"2"), (b"deleted", None)])
    first.close()
    reopened = RocksStore(tmp_path / "db")
    try:
        assert list(reopened.iterate()) == [(b"synced", b"1"), (b"unsynced", b"2")]
    finally:
        reopened.close()


def test_unknown_compression_is_refused(tmp_path: Path) -> None:
    """A typo in the compression name fails fast with the valid choices, before touching disk."""
    with pytest.raises(ValueError, match="lz4"):
        RocksStore(tmp_path / "db", compression="lzma")
    assert not (tmp_path / "db").exists()


# -- errors ------------------------------------------------------------------


def test_second_open_in_the_same_process_is_refused(store: RocksStore) -> None:
    """Opening an open data dir again raises StoreLockedError naming the dir."""
    with pytest.raises(StoreLockedError, match="already open in this process") as caught:
        RocksStore(store.path)
    assert store.path in str(caught.value)
    assert caught.value.path == store.path


def test_open_held_by_another_process_is_refused(tmp_path: Path) -> None:
    """A data dir locked by another process raises StoreLockedError saying so."""
    data_dir = tmp_path / "db"
    RocksStore(data_dir).close()
    # RocksDB locks LOCK with fcntl(F_SETLK), as lockf() does: a plain
    # Python child holding it stands in for a second twistkv node.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys; f = open(sys.argv[1], 'r+'); fcntl.lockf(f, fcntl.LOCK_EX); "
            "print('locked', flush=True); sys.stdin.read()",
            str(data_dir / "LOCK"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        with pytest.raises(StoreLockedError, match="in use by another process") as caught:
            RocksStore(data_dir)
        assert str(data_dir) in str(caught.value)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait()
    RocksStore(data_dir).close()  # the lock died with its holder


def test_path_that_is_a_file_cannot_be_opened(tmp_path: Path) -> None:
    """A data dir path naming a regular file raises StoreOpenError naming the path."""
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(StoreOpenError, match=str(not_a_dir)):
        RocksStore(not_a_dir)


def test_corrupt_data_dir_is_reported_as_corruption(tmp_path: Path) -> None:
    """RocksDB's corruption status becomes StoreCorruptedError naming the dir."""
    data_dir = tmp_path / "db"
    RocksStore(data_dir).close()
    (data_dir / "CURRENT").write_text("garbage")
    with pytest.raises(StoreCorruptedError, match=f"data dir {data_dir} is corrupt"):
        RocksStore(data_dir)


def test_failed_wal_write_becomes_store_io_error(tmp_path: Path) -> None:
    """A real I/O failure (file size limit hit while appending the WAL) raises StoreIOError.

    Runs in a child process, as the limit applies to the whole process.
    """
    script = textwrap.dedent(
        """
        import resource, signal, sys
        from twistkv.storage.errors import StoreIOError
        from twistkv.storage.rocks import RocksStore
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        store = RocksStore(sys.argv[1])
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
        try:
            for i in range(1000):
                store.write([(b"k%d" % i, b"x" * 1000)])
        except StoreIOError as error:
            print(type(error).__name__, error.path, error)
        """
    )
    data_dir = str(tmp_path / "db")
    child = subprocess.run(
        [sys.executable, "-c", script, data_dir], capture_output=True, text=True, check=True
    )
    assert child.stdout.startswith(f"StoreIOError {data_dir} I/O error while writing to data dir")
    assert "File too large" in child.stdout


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (
            "IO error: No space left on device While appending to file: /d/000008.log: "
            "No space left on device",
            StoreFullError,
        ),
        ("IO error: While fdatasync: /d/000008.log: Input/output error", StoreIOError),
        ("Corruption: block checksum mismatch: stored = 1, computed = 2", StoreCorruptedError),
        ("Invalid argument: Compression type LZ4 is not linked with the binary.", StorageError),
    ],
)
def test_rocksdb_status_maps_to_the_error_tree(status: str, expected: type[StorageError]) -> None:
    """Statuses we cannot provoke in a test (disk full, EIO) map by RocksDB's status text."""
    error = _translate(Exception(status), "./data/n1", "syncing")
    assert type(error) is expected
    assert isinstance(error, StorageError)
    assert "./data/n1" in str(error) and status in str(error)


# -- checkpoints ---------------------------------------------------------------


def test_checkpoint_is_point_in_time(store: RocksStore, tmp_path: Path) -> None:
    """A checkpoint holds every write applied before it (synced or not) and none after."""
    store.write([(b"a", b"before"), (b"gone", b"x")])
    store.write([(b"gone", None)])
    store.checkpoint(tmp_path / "copy")
    store.write([(b"a", b"after"), (b"b", b"after")])
    copy = RocksStore(tmp_path / "copy")
    try:
        assert list(copy.iterate()) == [(b"a", b"before")]
    finally:
        copy.close()
    assert store.get(b"a") == b"after"


def test_checkpoint_into_an_existing_dir_fails_clearly(store: RocksStore, tmp_path: Path) -> None:
    """Checkpointing over an existing dir raises StorageError naming both paths."""
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(StorageError, match=f"checkpointing to {existing}") as caught:
        store.checkpoint(existing)
    assert store.path in str(caught.value)


# -- pinned rocksdict 0.3.29 behaviours -----------------------------------------


def test_pinned_snapshot_point_reads_are_point_in_time(raw_db: Rdict) -> None:
    """Snapshot[key] ignores writes made after the snapshot: safe to rely on."""
    raw_db[b"k"] = b"old"
    snapshot = raw_db.snapshot()
    raw_db[b"k"] = b"new"
    raw_db[b"later"] = b"x"
    assert snapshot[b"k"] == b"old"
    with pytest.raises(Exception, match="key not found"):
        snapshot[b"later"]


def test_pinned_snapshot_iteration_sees_later_writes(raw_db: Rdict) -> None:
    """Snapshot.items() does NOT honour the snapshot: never build on it (use checkpoints)."""
    raw_db[b"a"] = b"1"
    snapshot = raw_db.snapshot()
    raw_db[b"b"] = b"2"
    assert [key for key, _ in snapshot.items()] == [b"a", b"b"]


def test_pinned_iterate_lower_bound_sets_the_upper_bound(raw_db: Rdict) -> None:
    """ReadOptions.set_iterate_lower_bound(b"b") hides keys from b on, not before it.

    So RocksStore checks range ends itself rather than through read options.
    """
    for key in (b"a", b"b", b"c"):
        raw_db[key] = b"v"
    lower_bounded = ReadOptions()
    lower_bounded.set_iterate_lower_bound(b"b")
    cursor = raw_db.iter(lower_bounded)
    cursor.seek_to_first()
    seen = []
    while cursor.valid():
        seen.append(cursor.key())
        cursor.next()
    assert seen == [b"a"]


def test_pinned_live_iterator_keeps_the_lock_after_close(tmp_path: Path) -> None:
    """A live RdictIter keeps the DB open past close(); RocksStore's iterators do not.

    This is why RocksStore.iterate reads in batches and holds no rocksdict
    iterator while its caller runs: an abandoned SCAN must not stop a
    restart in the same process from reopening the data dir.
    """
    raw_path = str(tmp_path / "raw")
    db = Rdict(raw_path, Options(raw_mode=True))
    db[b"k"] = b"v"
    cursor = db.iter()
    cursor.seek_to_first()
    db.close()
    with pytest.raises(Exception, match="lock hold by current process"):
        Rdict(raw_path, Options(raw_mode=True))
    del cursor
    Rdict(raw_path, Options(raw_mode=True)).close()

    store = RocksStore(tmp_path / "db")
    store.write([(b"k%03d" % i, b"v") for i in range(100)])
    abandoned = store.iterate()
    next(abandoned)
    store.close()
    RocksStore(tmp_path / "db").close()


class _FailingWrites:
    """Wraps a store's Rdict: counts batch writes, and fails them once told to."""

    def __init__(self, db: Rdict) -> None:
        self._db = db
        self.writes = 0
        self.fail = False

    def write(self, batch: object, options: object) -> None:
        self.writes += 1
        if self.fail:
            raise Exception("IO error: No space left on device")  # noqa: TRY002 - rocksdict's kind
        self._db.write(batch, options)

    def __getattr__(self, name: str) -> object:
        return getattr(self._db, name)


def test_staged_writes_are_read_at_once_and_reach_rocksdb_as_one_batch(
    store: RocksStore, tmp_path: Path
) -> None:
    """Staged puts and deletes are what get() answers before any flush; flush_staged()
    hands all of them to RocksDB in one batch write; a scan sees them too."""
    store.write([(b"gone", b"x"), (b"kept", b"k")])
    spy = _FailingWrites(store._db)
    store._db = spy  # type: ignore[assignment]
    store.stage([(b"a", b"1"), (b"gone", None)])
    store.stage([(b"a", b"2"), (b"b", b"3")])
    assert (store.get(b"a"), store.get(b"b"), store.get(b"gone")) == (b"2", b"3", None)
    assert spy.writes == 0
    store.flush_staged()
    store.flush_staged()  # nothing left: no empty batch
    assert spy.writes == 1
    assert list(store.iterate()) == [(b"a", b"2"), (b"b", b"3"), (b"kept", b"k")]


def test_scan_and_close_write_staged_ops_first(tmp_path: Path) -> None:
    """A scan reads RocksDB itself, so it flushes what is staged; close() flushes too, so
    staged writes survive a clean shutdown."""
    first = RocksStore(tmp_path / "db")
    first.stage([(b"a", b"1")])
    assert list(first.iterate()) == [(b"a", b"1")]
    first.stage([(b"b", b"2")])
    first.close()
    reopened = RocksStore(tmp_path / "db")
    try:
        assert list(reopened.iterate()) == [(b"a", b"1"), (b"b", b"2")]
    finally:
        reopened.close()


def test_failed_flush_loses_the_staged_ops_and_refuses_every_later_sync(store: RocksStore) -> None:
    """When the batch cannot be written, its ops are no longer read back, and sync(),
    stage() and flush_staged() all fail from then on: a later sync must never
    acknowledge writes that never reached the WAL."""
    spy = _FailingWrites(store._db)
    store._db = spy  # type: ignore[assignment]
    store.stage([(b"a", b"1")])
    spy.fail = True
    with pytest.raises(StoreFullError):
        store.flush_staged()
    assert store.get(b"a") is None
    spy.fail = False
    with pytest.raises(StoreFullError):
        store.sync()
    with pytest.raises(StoreFullError):
        store.stage([(b"b", b"2")])
    with pytest.raises(StoreFullError):
        store.flush_staged()
    with pytest.raises(StoreFullError):
        store.close()  # releases the data dir all the same, and says the data is gone


def test_stage_refuses_non_bytes_without_staging_anything(store: RocksStore) -> None:
    """A bad op in a staged batch leaves the store as it was, like an atomic write."""
    with pytest.raises(TypeError):
        store.stage([(b"a", b"1"), ("b", b"2")])  # type: ignore[list-item]
    assert store.get(b"a") is None
    store.flush_staged()
    assert list(store.iterate()) == []


def test_a_direct_write_lands_after_the_staged_ops_before_it(store: RocksStore) -> None:
    """write() flushes what is staged first, so an older staged value never overwrites
    a newer written one."""
    store.stage([(b"k", b"old")])
    store.write([(b"k", b"new")])
    store.flush_staged()
    assert store.get(b"k") == b"new"
    assert list(store.iterate()) == [(b"k", b"new")]


def test_get_many_reads_staged_ops_first(store: RocksStore) -> None:
    """Under fsync always, writes are staged before they reach RocksDB: get_many answers
    them (puts and deletes) like get does, before and after the flush."""
    store.write([(b"a", b"old"), (b"b", b"gone soon")])
    store.stage([(b"a", b"new"), (b"b", None), (b"c", b"3")])
    keys = [b"a", b"b", b"c", b"d"]
    assert store.get_many(keys) == [b"new", None, b"3", None]
    store.flush_staged()
    assert store.get_many(keys) == [b"new", None, b"3", None]


# -- the row cache -------------------------------------------------------------------


class _CountingReads(_FailingWrites):
    """A store's Rdict that also counts point and multi-key reads."""

    def __init__(self, db: Rdict) -> None:
        super().__init__(db)
        self.reads = 0

    def get(self, key: object) -> object:
        self.reads += 1
        return self._db.get(key)


def test_row_cache_answers_repeated_reads_and_written_keys_without_rocksdb(
    store: RocksStore,
) -> None:
    """A key written, or read once (found or absent), is read from the row cache after
    that: RocksDB sees one read per key, however often it is read again, by get or
    get_many, which asks RocksDB only for the keys the cache lacks."""
    spy = _CountingReads(store._db)
    store._db = spy  # type: ignore[assignment]
    store.write([(b"written", b"w"), (b"deleted", None)])
    assert (store.get(b"written"), store.get(b"deleted")) == (b"w", None)
    assert spy.reads == 0
    assert store.get(b"absent") is None and store.get(b"absent") is None
    assert spy.reads == 1
    store._db._db.put(b"behind", b"b")  # type: ignore[attr-defined]
    assert store.get_many([b"written", b"behind", b"absent", b"other"]) == [
        b"w", b"b", None, None]
    assert spy.reads == 2  # one multi-key read for "behind" and "other"
    assert store.get_many([b"behind", b"other"]) == [b"b", None]
    assert spy.reads == 2


def test_row_cache_is_not_changed_by_a_failed_write(store: RocksStore) -> None:
    """A write RocksDB refused leaves the cache as RocksDB is: the old value is read."""
    store.write([(b"k", b"old")])
    spy = _FailingWrites(store._db)
    store._db = spy  # type: ignore[assignment]
    spy.fail = True
    with pytest.raises(StoreFullError):
        store.write([(b"k", b"new"), (b"j", b"x")])
    assert (store.get(b"k"), store.get(b"j")) == (b"old", None)


def test_row_cache_after_a_failed_flush_and_after_close(store: RocksStore) -> None:
    """A cached key staged anew whose flush fails reads its old value again (what RocksDB
    holds); after close() even a cached key is refused, as every read of a closed store."""
    store.write([(b"k", b"old")])
    assert store.get(b"k") == b"old"
    spy = _FailingWrites(store._db)
    store._db = spy  # type: ignore[assignment]
    store.stage([(b"k", b"staged")])
    assert store.get(b"k") == b"staged"
    spy.fail = True
    with pytest.raises(StoreFullError):
        store.flush_staged()
    assert store.get(b"k") == b"old" and store.get_many([b"k"]) == [b"old"]
    store._db = spy._db  # type: ignore[assignment]
    store._stage_error = None  # (only to close cleanly: the store stays failed in real use)
    store.close()
    with pytest.raises(StoreClosedError):
        store.get(b"k")
    with pytest.raises(StoreClosedError):
        store.get_many([b"k"])


def test_row_cache_keeps_neither_a_batch_past_its_bound_nor_a_large_value(
    tmp_path: Path,
) -> None:
    """One write larger than the whole bound leaves the cache within it; a value costing
    over an eighth of the bound is not cached, and writing one forgets the key's old
    entry, so the cache never answers for it with stale bytes."""
    bound = 8192
    store = RocksStore(tmp_path / "db", row_cache_bytes=bound)
    try:
        store.write([(b"k%05d" % i, b"v" * 20) for i in range(2000)])
        assert 0 < store._row_bytes <= bound
        store.write([(b"small", b"s")])
        assert b"small" in store._rows
        store.write([(b"small", b"L" * 2000)])
        assert b"small" not in store._rows and store.get(b"small") == b"L" * 2000
        assert b"small" not in store._rows
    finally:
        store.close()


def test_row_cache_stays_within_its_bound(tmp_path: Path) -> None:
    """Past its byte bound the cache forgets its oldest entries; every read still gets
    what RocksDB holds."""
    bound = 4096
    store = RocksStore(tmp_path / "db", row_cache_bytes=bound)
    try:
        for i in range(500):
            store.write([(b"k%04d" % i, b"v" * (i % 50))])
            assert store._row_bytes <= bound
        assert 0 < len(store._rows) < 500
        assert store.get_many([b"k%04d" % i for i in range(500)]) == [
            b"v" * (i % 50) for i in range(500)]
        assert store._row_bytes <= bound
        assert store._row_bytes == sum(
            _ROW_OVERHEAD + len(k) + len(v or b"") for k, v in store._rows.items())
    finally:
        store.close()


def test_row_cache_of_zero_bytes_keeps_nothing(tmp_path: Path) -> None:
    """row_cache_bytes=0 turns the cache off; a negative bound is refused."""
    store = RocksStore(tmp_path / "db", row_cache_bytes=0)
    try:
        store.write([(b"a", b"1")])
        assert store.get(b"a") == b"1" and store.get_many([b"a", b"b"]) == [b"1", None]
        assert store._rows == {}
    finally:
        store.close()
    with pytest.raises(ValueError, match="row_cache_bytes"):
        RocksStore(tmp_path / "other", row_cache_bytes=-1)


_example_dirs = itertools.count()
#: Twelve keys: with entries up to an eighth of a bound, enough to pass it and evict.
_CACHE_KEYS = [bytes([c]) for c in b"abcdefghijkl"]
_cache_ops = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.lists(st.tuples(
            st.sampled_from(_CACHE_KEYS),
            st.one_of(st.none(), st.binary(max_size=40))), max_size=4)),
        st.tuples(st.just("stage"), st.lists(st.tuples(
            st.sampled_from(_CACHE_KEYS),
            st.one_of(st.none(), st.binary(max_size=40))), max_size=4)),
        st.tuples(st.just("flush"), st.just([])),
        st.tuples(st.just("read"), st.just([])),
    ),
    max_size=30,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_cache_ops, bound=st.sampled_from([0, 300, 1400, 1 << 20]))
def test_row_cache_reads_what_rocksdb_holds_after_any_writes(
    tmp_path: Path, ops: list[tuple[str, list[tuple[bytes, bytes | None]]]], bound: int
) -> None:
    """Whatever mix of writes, staged writes and flushes ran, with any cache bound, get
    and get_many answer what a model of the store holds (and once everything is
    flushed, what RocksDB itself holds), and the cache's byte count is exact and within
    its bound."""
    path = tmp_path / f"db{next(_example_dirs)}"  # each example starts empty
    store = RocksStore(path, row_cache_bytes=bound)
    model: dict[bytes, bytes] = {}
    keys = _CACHE_KEYS
    try:
        for kind, batch in ops:
            if kind in ("write", "stage"):
                (store.write if kind == "write" else store.stage)(batch)
                for key, value in batch:
                    if value is None:
                        model.pop(key, None)
                    else:
                        model[key] = value
            elif kind == "flush":
                store.flush_staged()
            expected = [model.get(key) for key in keys]
            assert [store.get(key) for key in keys] == expected
            assert store.get_many(keys) == expected
            assert store._row_bytes == sum(
                _ROW_OVERHEAD + len(k) + len(v or b"") for k, v in store._rows.items())
            assert store._row_bytes <= bound
        store.flush_staged()
        assert [store._db.get(key) for key in keys] == [model.get(key) for key in keys]
    finally:
        store.close()
