"""An ordered store held in memory: for tests, caches and C{--storage memory}.

A C{SortedDict} is a C{dict} subclass, so L{MemoryStore.get} is a plain
hash lookup; the sorted key list beside it serves range scans in
O(log n + k).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import islice

from sortedcontainers import SortedDict

from twistkv.storage.errors import StoreClosedError
from twistkv.storage.interface import WriteOp

__all__ = ["MemoryStore"]

#: Iteration copies keys in batches that start small (a SCAN asking for ten
#: keys copies sixteen) and double up to a bound (a full scan pays the
#: O(log n) re-seek once per thousand keys).
_FIRST_BATCH = 16
_MAX_BATCH = 1024


class MemoryStore:
    """An L{OrderedStore<twistkv.storage.interface.OrderedStore>} that forgets everything on exit."""

    durable = False
    path = None

    def __init__(self) -> None:
        self._data: SortedDict = SortedDict()
        self._closed = False
        #: Sum of key and value lengths, kept up to date by L{write}.
        self._payload_bytes = 0

    def get(self, key: bytes) -> bytes | None:
        value: bytes | None = self._data.get(key)
        if value is None:
            # Checked only on a miss: a closed store's data is empty, and a key of another
            # type is never found (every stored key is bytes), so hits skip both tests.
            if self._closed:
                raise _closed_error()
            if type(key) is not bytes:
                raise TypeError(f"store keys must be bytes, not {type(key).__name__}")
        return value

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        values = list(map(self._data.get, keys))
        if None in values:  # the checks of get, which only misses need
            if self._closed:
                raise _closed_error()
            for key, value in zip(keys, values, strict=True):
                if value is None and type(key) is not bytes:
                    raise TypeError(f"store keys must be bytes, not {type(key).__name__}")
        return values

    def write(self, ops: Sequence[WriteOp]) -> None:
        if self._closed:
            raise _closed_error()
        if len(ops) == 1:
            key, value = ops[0]
            data = self._data
            if type(key) is bytes and type(value) is bytes and key in data:
                # Overwriting one key, the usual write: the sorted key list is
                # unchanged, so skip SortedDict's Python-level __setitem__.
                self._payload_bytes += len(value) - len(data[key])
                dict.__setitem__(data, key, value)
                return
        # Check every op before applying any, so that a bad op leaves the
        # store untouched, as an atomic RocksDB WriteBatch would.
        for key, value in ops:
            if type(key) is not bytes or (value is not None and type(value) is not bytes):
                raise TypeError(
                    "store keys and values must be bytes, not "
                    f"{type(key).__name__} and {type(value).__name__}"
                )
        data = self._data
        payload = self._payload_bytes
        for key, value in ops:
            old = data.get(key)
            if value is None:
                if old is not None:
                    payload -= len(key) + len(old)
                    del data[key]
            elif old is not None:
                # An existing key: the sorted key list is unchanged (see above).
                payload += len(value) - len(old)
                dict.__setitem__(data, key, value)
            else:
                data[key] = value
                payload += len(key) + len(value)
        self._payload_bytes = payload

    def sync(self) -> None:
        """Nothing to do: memory is as durable as it gets."""
        if self._closed:
            raise _closed_error()

    def iterate(
        self, start: bytes = b"", stop: bytes | None = None, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        # Each batch is copied out of the dict before it is yielded, and the
        # next batch resumes strictly after the last key yielded: writes
        # between batches can neither invalidate the cursor nor make it skip
        # or repeat a key that was there all along.
        batch = _FIRST_BATCH
        lower, upper = start, stop
        include_lower = True
        while True:
            if self._closed:
                raise _closed_error()
            data = self._data
            in_range = data.irange(lower, upper, inclusive=(include_lower, False), reverse=reverse)
            keys = list(islice(in_range, batch))
            pairs = [(key, data[key]) for key in keys]
            yield from pairs
            if len(keys) < batch:
                return
            if reverse:
                upper = keys[-1]
            else:
                lower, include_lower = keys[-1], False
            batch = min(batch * 2, _MAX_BATCH)

    def approximate_size_bytes(self) -> int:
        """Bytes of keys and values (excluding Python's per-object overhead)."""
        return self._payload_bytes

    def approximate_key_count(self) -> int:
        """The exact number of keys."""
        return len(self._data)

    def close(self) -> None:
        """Drop the data, freeing its memory."""
        self._closed = True
        self._data = SortedDict()
        self._payload_bytes = 0


def _closed_error() -> StoreClosedError:
    return StoreClosedError("in-memory store is closed")
