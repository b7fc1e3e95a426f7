"""The durable store: RocksDB through rocksdict, in raw (bytes-only) mode.

Writes go to the write-ahead log without an fsync (C{WriteOptions.sync =
False}) and durability comes from an explicit L{RocksStore.sync}, so the
group committer can cover every write of a reactor turn with one fsync.

Under C{--fsync always} the committer goes one step further and I{stages}
writes (L{RocksStore.stage}): they are visible to this store's reads at once
but reach RocksDB as one WriteBatch per group commit (L{RocksStore.flush_staged}),
which saves a WAL append per write (measured: 6.7 us per single-op write vs
2.3 us per op in batches of 16). Nothing staged is ever acknowledged: the
committer flushes before it syncs, and answers only after the sync.

Point reads go through a bounded I{row cache} first (C{row_cache_bytes}, the
C{--row-cache-mb} option): a dict of what RocksDB holds for recently read or
written keys, absent ones included. A rocksdict point read costs 2.6-3.7 us
here and a dict hit 0.4 us, and every SET reads the record it replaces. The
cache is updated only after RocksDB accepted a write, so it never shows what
RocksDB does not hold; scans read RocksDB itself.

rocksdict 0.3.29 behaviours this module relies on or avoids, each pinned by
C{tests/storage/test_rocks.py}:
  - every failure is a bare C{Exception} with RocksDB's status text, which
    L{_translate} maps onto L{twistkv.storage.errors};
  - C{ReadOptions.set_iterate_lower_bound} sets the I{upper} bound, so
    range ends are checked here instead of through read options;
  - an iterator created from the DB reads one implicit snapshot, but a
    C{Snapshot}'s own iteration does not honour the snapshot, so nothing here
    iterates a C{Snapshot}; L{RocksStore.checkpoint} gives point-in-time copies;
  - a live C{RdictIter} keeps the DB (and its LOCK) open after C{close()}, so
    iteration reads in batches and never keeps an iterator across a yield.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from itertools import repeat

from rocksdict import (
    BlockBasedOptions,
    Cache,
    Checkpoint,
    DbClosedError,
    DBCompressionType,
    DBRecoveryMode,
    Options,
    Rdict,
    RdictIter,
    WriteBatch,
    WriteOptions,
)

from twistkv.storage.errors import (
    StorageError,
    StoreClosedError,
    StoreCorruptedError,
    StoreFullError,
    StoreIOError,
    StoreLockedError,
    StoreOpenError,
)
from twistkv.storage.interface import WriteOp

__all__ = ["COMPRESSION_CHOICES", "RocksStore"]

#: Block compression names accepted by L{RocksStore}. LZ4 is the default:
#: it decompresses fast enough to stay off the GET path's critical cost, and
#: is RocksDB's own tuning-guide choice for all but the bottom level.
COMPRESSION_CHOICES = {
    "lz4": DBCompressionType.lz4,
    "zstd": DBCompressionType.zstd,
    "snappy": DBCompressionType.snappy,
    "none": DBCompressionType.none,
}

#: Iteration reads batches that start small (a SCAN for ten keys reads
#: sixteen) and double up to a bound (a full scan re-seeks once per
#: thousand keys, about 1% of the cost of reading them).
_FIRST_BATCH = 16
_MAX_BATCH = 1024

_MiB = 1024 * 1024

#: L{RocksStore.get}'s marker for a key the staging overlay or the row cache does not hold.
_ABSENT = object()

#: Bytes a row cache entry costs beyond its key and value: two bytes objects' headers and
#: the dict's share (sys.getsizeof on CPython 3.11: 33 + 33, and 30-60 bytes of table per
#: entry, the most just after an eviction).
_ROW_OVERHEAD = 126


class RocksStore:
    """An L{OrderedStore<twistkv.storage.interface.OrderedStore>} kept in a RocksDB data dir.

    @ivar path: the data dir as given, used in every error message.
    """

    durable = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        write_buffer_bytes: int = 64 * _MiB,
        block_cache_bytes: int = 128 * _MiB,
        compression: str = "lz4",
        row_cache_bytes: int = 32 * _MiB,
    ) -> None:
        """Open (creating if needed) the store in C{path}.

        @param write_buffer_bytes: memtable size; bigger absorbs more
            overwrites before a flush, at the cost of memory and replay time.
        @param block_cache_bytes: cache for uncompressed blocks, index and
            bloom filters (filters live in the cache so memory stays bounded).
        @param compression: one of L{COMPRESSION_CHOICES}.
        @param row_cache_bytes: bound of the row cache (0: none), which keeps recently
            read and written records, and keys known absent, in a dict: a point read
            through rocksdict costs 2.6-3.7 us here, a dict lookup 0.4 us, and every
            SET reads the record it replaces.
        @raise StoreLockedError: another process, or this one, has C{path} open.
        @raise StoreOpenError: C{path} cannot be created or opened.
        @raise StoreCorruptedError: RocksDB found the data dir corrupt.
        """
        self.path: str = os.fspath(path)
        if row_cache_bytes < 0:
            raise ValueError(f"row_cache_bytes must be >= 0, not {row_cache_bytes}")
        if compression not in COMPRESSION_CHOICES:
            raise ValueError(
                f"compression must be one of {', '.join(COMPRESSION_CHOICES)}, not {compression!r}"
            )
        options = _options(write_buffer_bytes, block_cache_bytes, compression)
        try:
            self._db = Rdict(self.path, options)
        except Exception as exc:
            raise _translate(exc, self.path, "opening", StoreOpenError) from exc
        self._write_options = WriteOptions()
        self._write_options.sync = False
        self._closed = False
        #: Staged writes not yet handed to RocksDB: the overlay reads consult
        #: (None = deleted), and the batch that will carry them.
        self._staged: dict[bytes, bytes | None] = {}
        self._staged_batch: WriteBatch | None = None
        #: Set when a staged batch could not be written: nothing may be synced
        #: (and so acknowledged) after that, since those writes are gone.
        self._stage_error: StorageError | None = None
        #: The row cache: what RocksDB holds for recently read or written keys (None:
        #: absent), in the order they were read or written (a hit does not move an entry:
        #: first in, first out), within C{_row_limit} bytes counted by L{_row_cost}. It
        #: mirrors RocksDB exactly: filled after a read, updated after a write succeeds.
        #: Every change to the DB must therefore go through L{write} or L{flush_staged}.
        self._rows: dict[bytes, bytes | None] = {}
        self._row_bytes = 0
        self._row_limit = row_cache_bytes

    def get(self, key: bytes) -> bytes | None:
        staged = self._staged
        if staged:
            found = staged.get(key, _ABSENT)
            if found is not _ABSENT:
                return found  # type: ignore[return-value]
        found = self._rows.get(key, _ABSENT)
        if found is not _ABSENT:
            return found  # type: ignore[return-value]
        try:
            value: bytes | None = self._db.get(key)
        except Exception as exc:
            raise _translate(exc, self.path, "reading") from exc
        if self._row_limit:
            self._remember(((key, value),))
        return value

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        if self._staged:
            return [self.get(key) for key in keys]  # staged ops answer first, key by key
        if not all(type(key) is bytes for key in keys):
            raise TypeError("store keys must be bytes")
        values: list[bytes | None] = list(map(self._rows.get, keys, repeat(_ABSENT)))
        if _ABSENT not in values:
            return values
        missing = [index for index, value in enumerate(values) if value is _ABSENT]
        try:
            found: list[bytes | None] = self._db.get([keys[index] for index in missing])
        except Exception as exc:
            raise _translate(exc, self.path, "reading") from exc
        for index, value in zip(missing, found, strict=True):
            values[index] = value
        if self._row_limit:
            self._remember([(keys[index], value) for index, value in zip(missing, found,
                                                                         strict=True)])
        return values

    def _remember(self, rows: Iterable[tuple[bytes, bytes | None]]) -> None:
        """Put what RocksDB now holds for these keys in the row cache, as its newest
        entries. A record costing over an eighth of the bound is not kept (its key is
        forgotten: one large value must not flush the cache). Whenever the cache passes
        its bound, the oldest entries go, down to half of it, in one pass (O(1) per entry,
        and a batch larger than the bound never holds more than the bound)."""
        cache = self._rows
        size = self._row_bytes
        limit = self._row_limit
        largest = limit // 8
        for key, value in rows:
            old = cache.pop(key, _ABSENT)
            if old is not _ABSENT:
                size -= _row_cost(key, old)  # type: ignore[arg-type]
            cost = _row_cost(key, value)
            if cost > largest:
                continue
            cache[key] = value
            size += cost
            if size > limit:
                size = self._forget_oldest(size)
        self._row_bytes = size

    def _forget_oldest(self, size: int) -> int:
        """Drop the oldest row cache entries until it holds half its bound; the new size."""
        cache = self._rows
        target = self._row_limit // 2
        forgotten = []
        for old_key, old_value in cache.items():
            if size <= target:
                break
            size -= _row_cost(old_key, old_value)
            forgotten.append(old_key)
        for old_key in forgotten:
            del cache[old_key]
        return size

    def write(self, ops: Sequence[WriteOp]) -> None:
        if self._staged_batch is not None:
            self.flush_staged()  # keep the order: staged ops are older
        batch = WriteBatch(raw_mode=True)
        try:
            for key, value in ops:
                if value is None:
                    batch.delete(key)
                else:
                    batch.put(key, value)
            self._db.write(batch, self._write_options)
        except Exception as exc:
            raise _translate(exc, self.path, "writing to") from exc
        if self._row_limit:
            self._remember(ops)

    def stage(self, ops: Sequence[WriteOp]) -> None:
        """Apply C{ops} for this store's reads now; hand them to RocksDB at the next
        L{flush_staged} (or read that needs RocksDB itself), as one batch with every
        other staged op.

        Only the reactor thread calls this and every other method but L{sync} (they share
        the staging overlay and the row cache).

        @raise TypeError: a key or value is not bytes (nothing is staged).
        @raise StorageError: an earlier staged batch could not be written.
        """
        if self._closed:
            raise StoreClosedError(f"data dir {self.path} is closed", self.path)
        if self._stage_error is not None:
            raise self._stage_error
        for key, value in ops:
            if type(key) is not bytes or (value is not None and type(value) is not bytes):
                raise TypeError(
                    "store keys and values must be bytes, not "
                    f"{type(key).__name__} and {type(value).__name__}"
                )
        batch = self._staged_batch
        if batch is None:
            batch = self._staged_batch = WriteBatch(raw_mode=True)
        staged = self._staged
        for key, value in ops:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
            staged[key] = value

    def flush_staged(self) -> None:
        """Write every staged op to RocksDB (the WAL, unsynced) as one batch.

        @raise StorageError: the batch could not be written; the staged ops are
            lost and every later L{sync} and L{stage} fails too.
        """
        if self._stage_error is not None:
            raise self._stage_error
        batch = self._staged_batch
        if batch is None:
            return
        self._staged_batch = None
        try:
            self._db.write(batch, self._write_options)
        except Exception as exc:
            self._stage_error = _translate(exc, self.path, "writing to")  # type: ignore[assignment]
            raise self._stage_error from exc
        else:
            if self._row_limit:
                self._remember(self._staged.items())
        finally:
            self._staged.clear()

    def sync(self) -> None:
        """Flush and fsync the WAL, covering every batch written so far.

        Staged ops are covered only once L{flush_staged} has written them.
        Measured here: 0.16 ms median for one small batch on a quiet disk,
        2-4 ms while other processes load the same disk.
        """
        if self._stage_error is not None:
            raise self._stage_error
        try:
            self._db.flush_wal(True)
        except Exception as exc:
            raise _translate(exc, self.path, "syncing") from exc

    def iterate(
        self, start: bytes = b"", stop: bytes | None = None, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        # Each batch comes from one RocksDB iterator (one implicit snapshot)
        # that is dropped before the batch is yielded; the next batch seeks
        # strictly past the last key yielded.
        batch = _FIRST_BATCH
        lower, upper = start, stop
        while True:
            if reverse:
                pairs = self._read_backward(lower, upper, batch)
            else:
                pairs = self._read_forward(lower, upper, batch)
            yield from pairs
            if len(pairs) < batch:
                return
            if reverse:
                upper = pairs[-1][0]
            else:
                # The smallest key greater than the last one is that key + NUL.
                lower = pairs[-1][0] + b"\x00"
            batch = min(batch * 2, _MAX_BATCH)

    def _read_forward(
        self, lower: bytes, upper: bytes | None, limit: int
    ) -> list[tuple[bytes, bytes]]:
        """Up to C{limit} pairs with keys in [C{lower}, C{upper}), ascending."""
        self.flush_staged()
        pairs: list[tuple[bytes, bytes]] = []
        cursor: RdictIter | None = None
        try:
            cursor = self._db.iter()
            cursor.seek(lower)
            while cursor.valid() and len(pairs) < limit:
                key = cursor.key()
                if upper is not None and key >= upper:
                    break
                pairs.append((key, cursor.value()))
                cursor.next()
            cursor.status()
        except Exception as exc:
            raise _translate(exc, self.path, "reading") from exc
        finally:
            # An exception's traceback keeps this frame; a cursor left in it
            # would hold the DB open past close().
            cursor = None
        return pairs

    def _read_backward(
        self, lower: bytes, upper: bytes | None, limit: int
    ) -> list[tuple[bytes, bytes]]:
        """Up to C{limit} pairs with keys in [C{lower}, C{upper}), descending."""
        self.flush_staged()
        pairs: list[tuple[bytes, bytes]] = []
        cursor: RdictIter | None = None
        try:
            cursor = self._db.iter()
            if upper is None:
                cursor.seek_to_last()
            else:
                cursor.seek_for_prev(upper)
                if cursor.valid() and cursor.key() >= upper:
                    cursor.prev()
            while cursor.valid() and len(pairs) < limit:
                key = cursor.key()
                if key < lower:
                    break
                pairs.append((key, cursor.value()))
                cursor.prev()
            cursor.status()
        except Exception as exc:
            raise _translate(exc, self.path, "reading") from exc
        finally:
            cursor = None
        return pairs

    def approximate_size_bytes(self) -> int:
        """SST files on disk plus memtables, from RocksDB's own properties."""
        return self._int_property("rocksdb.total-sst-files-size") + self._int_property(
            "rocksdb.cur-size-all-mem-tables"
        )

    def approximate_key_count(self) -> int:
        """RocksDB's estimate: overwrites and deletes not yet compacted skew it."""
        return self._int_property("rocksdb.estimate-num-keys")

    def _int_property(self, name: str) -> int:
        try:
            value = self._db.property_int_value(name)
        except Exception as exc:
            raise _translate(exc, self.path, "reading") from exc
        return value or 0

    def checkpoint(self, dest_dir: str | os.PathLike[str]) -> None:
        """Write a point-in-time copy of the store to C{dest_dir}, which must not exist.

        SST files are hard-linked when C{dest_dir} is on the same filesystem,
        so this is cheap; the copy opens as a L{RocksStore} of its own. This
        is the point-in-time view Raft snapshots and backups need, which
        rocksdict's C{Snapshot} iteration does not give.
        """
        dest = os.fspath(dest_dir)
        if self._closed:
            raise StoreClosedError(f"data dir {self.path} is closed", self.path)
        self.flush_staged()
        try:
            Checkpoint(self._db).create_checkpoint(dest)
        except Exception as exc:
            raise _translate(exc, self.path, f"checkpointing to {dest}") from exc

    def close(self) -> None:
        """Write staged ops, sync the WAL and release the data dir (its LOCK), even if
        the sync fails."""
        if self._closed:
            return
        self._closed = True
        self._rows.clear()  # reads after close must reach the DB (and fail)
        self._row_bytes = self._row_limit = 0
        try:
            self.flush_staged()
            self._db.flush_wal(True)
        except StorageError:
            raise  # staged writes that could not be written: already explained
        except Exception as exc:
            raise _translate(exc, self.path, "syncing") from exc
        finally:
            self._db.close()


def _row_cost(key: bytes, value: bytes | None) -> int:
    return _ROW_OVERHEAD + len(key) + (0 if value is None else len(value))


def _options(write_buffer_bytes: int, block_cache_bytes: int, compression: str) -> Options:
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    options.set_compression_type(COMPRESSION_CHOICES[compression]())
    table = BlockBasedOptions()
    # A full (not block-based) bloom filter at 10 bits/key: ~1% false
    # positives, so a GET for a missing key rarely touches a data block.
    table.set_bloom_filter(10, False)
    table.set_block_cache(Cache(block_cache_bytes))
    table.set_cache_index_and_filter_blocks(True)
    table.set_pin_l0_filter_and_index_blocks_in_cache(True)
    options.set_block_based_table_factory(table)
    options.set_write_buffer_size(write_buffer_bytes)
    options.set_level_compaction_dynamic_level_bytes(True)
    # Flushes and compactions run beside the reactor; two jobs suit a small host.
    options.set_max_background_jobs(2)
    # Write SST data back gradually instead of in one burst at the end of a flush.
    options.set_bytes_per_sync(_MiB)
    # After a crash, recover every write up to the first damaged WAL record.
    options.set_wal_recovery_mode(DBRecoveryMode.point_in_time())
    options.set_keep_log_file_num(5)
    options.set_max_log_file_size(16 * _MiB)
    return options


def _translate(
    exc: Exception, path: str, action: str, fallback: type[StorageError] = StorageError
) -> Exception:
    """The L{StorageError} (or C{TypeError}) that explains rocksdict's C{exc}.

    rocksdict raises bare C{Exception}s, so the RocksDB status text is all
    there is to go on; the prefixes matched here are RocksDB's C{Status}
    codes and the POSIX messages it embeds.
    """
    text = str(exc)
    if isinstance(exc, DbClosedError):
        return StoreClosedError(f"data dir {path} is closed", path)
    if isinstance(exc, KeyError | ValueError) and "only support bytes" in text:
        return TypeError(f"store keys and values must be bytes ({text})")
    if "lock hold by current process" in text:
        return StoreLockedError(f"data dir {path} is already open in this process", path)
    if "While lock file" in text:
        return StoreLockedError(f"data dir {path} is in use by another process ({text})", path)
    if "No space left on device" in text:
        return StoreFullError(f"disk full while {action} data dir {path} ({text})", path)
    if "Corruption:" in text:
        return StoreCorruptedError(f"data dir {path} is corrupt ({text})", path)
    if "IO error:" in text:
        return StoreIOError(f"I/O error while {action} data dir {path} ({text})", path)
    return fallback(f"failed {action} data dir {path} ({text})", path)
