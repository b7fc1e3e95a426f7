"""An in-memory node for the web tests: real keyspace, fake durability, fake time.

The keyspace is the real L{LocalKeyspace} over a L{MemoryStore}, so the API
is tested against real versions, expiry and scans. Durability is a small
fake committer the test controls: it can hold writes un-durable, release
them, or fail them, which is exactly what the group committer does to the
HTTP layer. Time is a L{Clock} set to a realistic epoch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from twistkv.config import NodeConfig
from twistkv.core.versioning import HybridLogicalClock
from twistkv.node.keyspace import LocalKeyspace
from twistkv.node.metrics import NodeStats, new_registry
from twistkv.storage.interface import WriteOp
from twistkv.storage.memory import MemoryStore
from twistkv.web.app import NodeWebApp

#: 2023-11-14T22:13:20Z: fake time starts at a real-looking instant.
EPOCH_S = 1_700_000_000


class CountingStore(MemoryStore):
    """A MemoryStore that counts the entries its scans yield (to prove seeks)."""

    def __init__(self) -> None:
        super().__init__()
        self.yielded = 0

    def iterate(
        self, start: bytes = b"", stop: bytes | None = None, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        for item in super().iterate(start, stop, reverse=reverse):
            self.yielded += 1
            yield item


class FakeCommitter:
    """Applies writes at once; makes them durable when the test says so."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.healthy = True
        self.hold = False
        self.pending: list[Deferred[None]] = []
        self.stats: dict[str, Any] = {}

    def commit(self, ops: Sequence[WriteOp]) -> Deferred[None] | None:
        self.store.write(ops)
        if not self.hold:
            return None
        wait: Deferred[None] = Deferred()
        self.pending.append(wait)
        return wait

    def release(self) -> None:
        pending, self.pending = self.pending, []
        for wait in pending:
            wait.callback(None)

    def fail(self, error: Exception) -> None:
        pending, self.pending = self.pending, []
        for wait in pending:
            wait.errback(Failure(error))


@dataclass
class FakeContext:
    keyspace: LocalKeyspace
    started_at: float
    clients: dict[int, Any] = field(default_factory=dict)


class FakeNode:
    """What L{NodeWebApp} reads from a L{KVNodeService}, in memory."""

    def __init__(self, **config: Any) -> None:
        self.clock = Clock()
        self.clock.advance(EPOCH_S)
        base = NodeConfig(node_id="n1", data_dir=Path("/nonexistent"), storage="memory")
        self.config = replace(base, **config)
        self.stats = NodeStats()
        self.registry = new_registry(self.stats, self.config.node_id)
        self.store = CountingStore()
        self.committer: FakeCommitter | None = FakeCommitter(self.store)
        self.keyspace = LocalKeyspace(
            self.store, self.committer, self.config.node_id, HybridLogicalClock(), self.now_ms
        )
        self.context: FakeContext | None = FakeContext(self.keyspace, started_at=self.clock.seconds())
        self.stats.key_count = self.keyspace.key_count
        self.stats.storage_bytes = self.store.approximate_size_bytes

    def now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)


@dataclass
class Web:
    """A node, its web app, and an in-memory HTTP client driving the app."""

    node: FakeNode
    app: NodeWebApp
    client: StubTreq


def make_web(**config: Any) -> Web:
    node = FakeNode(**config)
    app = NodeWebApp(node)
    return Web(node, app, StubTreq(app.resource()))


def fired(d: Deferred[Any]) -> Any:
    """The result of a Deferred that must already have fired (no reactor in these tests)."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "Deferred has not fired"
    result = results[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result
