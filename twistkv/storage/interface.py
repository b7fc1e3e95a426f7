"""The one storage interface: an ordered map from bytes to bytes.

Stores know nothing of records, versions or expiry. Higher layers encode
records themselves and use key prefixes as namespaces (C{b"d"} data,
C{b"h"} hints, C{b"m"} metadata), so a range scan over one prefix is a
scan over one namespace, and new namespaces need no storage change.

Applying a write and making it durable are separate steps (L{OrderedStore.write}
then L{OrderedStore.sync}) so that the node can apply each write at once,
making it visible to the next read, and share one fsync among every write of
a reactor turn (group commit, L{twistkv.node.durability}).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from typing import Protocol

__all__ = ["FsyncPolicy", "OrderedStore", "WriteOp"]

#: One change in a batch: (key, value), or (key, None) to delete the key.
WriteOp = tuple[bytes, bytes | None]


class FsyncPolicy(enum.Enum):
    """When acknowledged writes reach stable storage (Redis's C{appendfsync})."""

    #: Acknowledge a write only after the fsync that covers it: nothing
    #: acknowledged is lost on power failure. Group commit keeps it affordable.
    ALWAYS = "always"
    #: Acknowledge at once, fsync once a second: a crash loses at most
    #: about a second of acknowledged writes.
    EVERYSEC = "everysec"
    #: Acknowledge at once and leave flushing to RocksDB and the OS: a
    #: process crash loses nothing (the WAL is in the page cache), a power
    #: failure may lose anything not yet written back.
    NEVER = "never"

    @classmethod
    def parse(cls, text: str) -> FsyncPolicy:
        """The policy named by C{text} (case-insensitive), as given on a command line.

        @raise ValueError: C{text} names no policy; the message lists the choices.
        """
        try:
            return cls(text.strip().lower())
        except ValueError:
            choices = ", ".join(policy.value for policy in cls)
            raise ValueError(f"fsync policy must be one of {choices}, not {text!r}") from None


class OrderedStore(Protocol):
    """A byte-keyed, byte-valued map kept in lexicographic key order.

    Keys and values must be C{bytes} (anything else raises C{TypeError});
    the empty key is allowed. Failures of the underlying storage raise
    L{twistkv.storage.errors.StorageError} subclasses; any method called
    after L{close} raises L{twistkv.storage.errors.StoreClosedError}.

    Threading: every method is called from one thread (the reactor's),
    except that L{sync} may run in a worker thread while that thread keeps
    calling L{get}, L{write} and L{iterate}.
    """

    @property
    def durable(self) -> bool:
        """Whether data survives a restart (False: a sync has nothing to do)."""

    @property
    def path(self) -> str | None:
        """The data dir, or None for a store that lives only in memory."""

    def get(self, key: bytes) -> bytes | None:
        """The value stored under C{key}, or None."""

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """What L{get} answers for each of C{keys}, in order, in one call (RocksDB's
        MultiGet; a C-level loop for memory): pipelined reads and writes look up a
        run of keys at once."""

    def write(self, ops: Sequence[WriteOp]) -> None:
        """Apply C{ops} in order as one atomic batch; a None value deletes the key.

        The batch is visible to L{get} and L{iterate} when this returns, but
        is durable only after a later L{sync}. Either every op is applied or,
        when this raises, none is. A key may appear more than once; the
        last op for it wins.
        """

    def sync(self) -> None:
        """Make every write applied so far durable (one WAL fsync on RocksDB)."""

    def iterate(
        self, start: bytes = b"", stop: bytes | None = None, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        """Yield (key, value) for keys in [C{start}, C{stop}), ascending, or descending if C{reverse}.

        Iteration runs over the live store, so callers may write while
        iterating (streaming a range, sweeping expired keys). What holds:
          - keys come in strictly monotonic order, so no key is yielded twice;
          - a key present from the first C{next()} until the iterator is
            exhausted is yielded exactly once, with a value it held at some
            moment during the iteration;
          - a key inserted or deleted meanwhile may or may not be yielded.
        It is not a point-in-time snapshot: use a RocksDB checkpoint for one.
        Keys are read ahead in bounded batches, so an abandoned iterator
        pins no storage resources and writes never invalidate it.
        """

    def approximate_size_bytes(self) -> int:
        """Roughly how many bytes the data occupies (disk plus memtables for RocksDB)."""

    def approximate_key_count(self) -> int:
        """Roughly how many keys are stored (exact for memory, an estimate for RocksDB)."""

    def close(self) -> None:
        """Make applied writes durable and release the store; closing twice is harmless."""
