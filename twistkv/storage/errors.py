"""Storage failures, each naming the data dir and the cause.

RocksDB (through rocksdict) reports every failure as a bare C{Exception}
carrying RocksDB's status text; L{twistkv.storage.rocks} translates those
into this tree so that the node can tell an operator what to do ("the data
dir is in use by another process") rather than show a Rust status string,
and so that callers can catch storage failures without catching everything.
"""

from __future__ import annotations

__all__ = [
    "StorageError",
    "StoreOpenError",
    "StoreLockedError",
    "StoreCorruptedError",
    "StoreIOError",
    "StoreFullError",
    "StoreClosedError",
    "StoreFailedError",
]


class StorageError(Exception):
    """A store could not do what was asked; the message names path and cause.

    @ivar path: the store's data dir, or None for an in-memory store.
    """

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class StoreOpenError(StorageError):
    """The store could not be opened (path unusable, options refused)."""


class StoreLockedError(StoreOpenError):
    """The data dir is held by another process, or already open in this one."""


class StoreCorruptedError(StorageError):
    """RocksDB found corrupt data; the node must not serve from this store."""


class StoreIOError(StorageError):
    """The operating system failed a read, write or fsync.

    After a failed fsync the state of the unsynced data is unknown (the
    kernel may have dropped the dirty pages), so the store must be reopened,
    not retried: see L{twistkv.node.durability.GroupCommitter}.
    """


class StoreFullError(StoreIOError):
    """The disk holding the data dir is full."""


class StoreClosedError(StorageError):
    """The store was used after L{close<twistkv.storage.interface.OrderedStore.close>}."""


class StoreFailedError(StorageError):
    """An earlier write or sync failed, so writes are refused until the store is reopened.

    Raised by L{twistkv.node.durability.GroupCommitter}; the original
    failure is the C{__cause__}.
    """
