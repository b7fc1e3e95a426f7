"""Fixtures for node-layer tests: a real keyspace over a memory store and a fake clock."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from twistkv.config import NodeConfig
from twistkv.core.versioning import HybridLogicalClock
from twistkv.node.commands import NodeContext
from twistkv.node.durability import GroupCommitter
from twistkv.node.keyspace import LocalKeyspace
from twistkv.node.metrics import NodeStats
from twistkv.storage.interface import FsyncPolicy
from twistkv.storage.memory import MemoryStore

#: 2026-01-01T00:00:00Z: a realistic wall clock for expiry arithmetic.
EPOCH = 1_767_225_600.0


class ThreadlessClock(Clock):
    """A Clock that also accepts C{callFromThread} (the committer's sync thread reports back)."""

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)


class InlinePool:
    """A threadpool stand-in that runs the sync at once, so tests stay single-threaded."""

    started = True

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def callInThreadWithCallback(
        self, on_result: Callable[[bool, Any], None], func: Callable[..., Any], *args: Any, **kw: Any
    ) -> None:
        try:
            result = func(*args, **kw)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)


class DurableMemoryStore(MemoryStore):
    """A memory store that claims durability, so fsync-always grouping is exercised; counts syncs."""

    durable = True  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.syncs = 0

    def sync(self) -> None:
        self.syncs += 1


@pytest.fixture
def clock() -> ThreadlessClock:
    clock = ThreadlessClock()
    clock.advance(EPOCH)
    return clock


@pytest.fixture
def store() -> DurableMemoryStore:
    return DurableMemoryStore()


@pytest.fixture
def committer(store: MemoryStore, clock: Clock) -> GroupCommitter:
    committer = GroupCommitter(store, FsyncPolicy.ALWAYS, clock, threadpool=InlinePool())  # type: ignore[arg-type]
    committer.start()
    return committer


@pytest.fixture
def make_clock() -> Callable[[], ThreadlessClock]:
    """A factory of fresh clocks like C{clock}, for tests that build several worlds."""

    def build() -> ThreadlessClock:
        clock = ThreadlessClock()
        clock.advance(EPOCH)
        return clock

    return build


@pytest.fixture
def make_durable_committer() -> Callable[[Clock], tuple[DurableMemoryStore, GroupCommitter]]:
    """A factory of C{committer}-like fsync=always committers over their own store."""

    def build(clock: Clock) -> tuple[DurableMemoryStore, GroupCommitter]:
        store = DurableMemoryStore()
        committer = GroupCommitter(store, FsyncPolicy.ALWAYS, clock, threadpool=InlinePool())  # type: ignore[arg-type]
        committer.start()
        return store, committer

    return build


@pytest.fixture
def keyspace(store: MemoryStore, committer: GroupCommitter, clock: Clock) -> LocalKeyspace:
    ks = LocalKeyspace(store, committer, "n1", HybridLogicalClock(), lambda: int(clock.seconds() * 1000))
    ks.load()
    return ks


@pytest.fixture
def context(keyspace: LocalKeyspace, tmp_path: Path) -> NodeContext:
    config = NodeConfig(node_id="n1", data_dir=tmp_path, max_value_bytes=1024, max_clients=3)
    return NodeContext(keyspace=keyspace, config=config, stats=NodeStats(), started_at=EPOCH)


@pytest.fixture
def make_context(tmp_path: Path) -> Callable[[], tuple[NodeContext, ThreadlessClock, DurableMemoryStore]]:
    """Builds a fresh node context like the fixtures above (its clock and store too) on each
    call: for property tests, which need one per example, not one per test."""

    def make() -> tuple[NodeContext, ThreadlessClock, DurableMemoryStore]:
        clock = ThreadlessClock()
        clock.advance(EPOCH)
        store = DurableMemoryStore()
        committer = GroupCommitter(store, FsyncPolicy.ALWAYS, clock, threadpool=InlinePool())  # type: ignore[arg-type]
        committer.start()
        ks = LocalKeyspace(store, committer, "n1", HybridLogicalClock(),
                           lambda: int(clock.seconds() * 1000))
        ks.load()
        config = NodeConfig(node_id="n1", data_dir=tmp_path, max_value_bytes=1024, max_clients=3)
        return NodeContext(keyspace=ks, config=config, stats=NodeStats(), started_at=EPOCH), clock, store

    return make
