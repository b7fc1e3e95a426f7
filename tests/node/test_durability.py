"""GroupCommitter: group commit under each fsync policy, failure handling, shutdown.

The sync thread is played by the test: L{ManualThreadPool} holds each sync
until the test runs it, and L{ThreadlessClock} delivers its result at once,
so "a write arrives while a sync is in flight" is a deterministic sequence.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from twistkv.node.durability import GroupCommitter, SyncThread
from twistkv.storage.errors import (
    StorageError,
    StoreClosedError,
    StoreFailedError,
    StoreFullError,
    StoreIOError,
)
from twistkv.storage.interface import FsyncPolicy, WriteOp
from twistkv.storage.memory import MemoryStore


class RecordingStore(MemoryStore):
    """A memory store that claims durability and records writes and syncs."""

    durable = True

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.sync_threads: list[int] = []
        self.sync_error: BaseException | None = None
        self.write_error: StorageError | None = None

    def write(self, ops: Sequence[WriteOp]) -> None:
        if self.write_error is not None:
            raise self.write_error
        super().write(ops)
        self.calls.append("write " + ",".join(key.decode() for key, _ in ops))

    def sync(self) -> None:
        self.sync_threads.append(threading.get_ident())
        if self.sync_error is not None:
            raise self.sync_error
        self.calls.append("sync")


class ManualThreadPool:
    """Stands in for the one-thread sync pool: jobs wait until the test runs them."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Callable[[bool, Any], None], Callable[[], Any]]] = []

    def callInThreadWithCallback(  # noqa: N802 - Twisted's ThreadPool API
        self, on_result: Callable[[bool, Any], None], work: Callable[[], Any]
    ) -> None:
        self.jobs.append((on_result, work))

    def run_next(self) -> None:
        """Run the oldest queued sync and report its outcome, as the pool thread would."""
        on_result, work = self.jobs.pop(0)
        try:
            result = work()
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)


class ThreadlessClock(Clock):
    """A Clock whose callFromThread runs the call at once."""

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:  # noqa: N802
        f(*args, **kwargs)


@dataclass
class Harness:
    reactor: ThreadlessClock
    pool: ManualThreadPool
    store: RecordingStore
    committer: GroupCommitter


def fake_timer() -> Callable[[], float]:
    """A timer that advances 0.25 s per reading: each sync appears to take 0.25 s."""
    readings = iter(range(10**6))
    return lambda: next(readings) * 0.25


def harness(policy: FsyncPolicy, store: RecordingStore | None = None) -> Harness:
    reactor = ThreadlessClock()
    pool = ManualThreadPool()
    store = RecordingStore() if store is None else store
    committer = GroupCommitter(store, policy, reactor, threadpool=pool, timer=fake_timer())  # type: ignore[arg-type]
    committer.start()
    return Harness(reactor, pool, store, committer)


@pytest.fixture
def always() -> Iterator[Harness]:
    """A started committer under the always policy."""
    yield harness(FsyncPolicy.ALWAYS)


def outcome(result: Deferred[None] | None) -> list[object]:
    """Empty while C{result} is pending, then [None] or [Failure]."""
    assert result is not None
    box: list[object] = []
    result.addBoth(box.append)
    return box


def commit(h: Harness, key: bytes) -> list[object]:
    return outcome(h.committer.commit([(key, b"v")]))


# -- always --------------------------------------------------------------------


def test_writes_of_one_turn_share_one_sync(always: Harness) -> None:
    """Three commits in one reactor turn are covered by one sync, then all three fire."""
    waits = [commit(always, key) for key in (b"a", b"b", b"c")]
    always.reactor.advance(0)
    assert len(always.pool.jobs) == 1
    always.pool.run_next()
    assert always.store.calls == ["write a", "write b", "write c", "sync"]
    assert waits == [[None], [None], [None]]
    assert always.committer.stats.syncs == 1
    assert always.committer.stats.last_group_commits == 3


def test_writes_are_readable_before_they_are_acknowledged(always: Harness) -> None:
    """commit() applies the ops at once; only the acknowledgement waits for the sync."""
    wait = commit(always, b"k")
    assert always.store.get(b"k") == b"v"
    always.reactor.advance(0)
    assert wait == []
    always.pool.run_next()
    assert wait == [None]


def test_write_during_an_inflight_sync_joins_the_next_group(always: Harness) -> None:
    """Only one sync runs at a time; a write it may not cover waits for the next one."""
    first = commit(always, b"a")
    always.reactor.advance(0)
    second = commit(always, b"b")
    always.reactor.advance(0)
    assert len(always.pool.jobs) == 1

    always.pool.run_next()
    assert (first, second) == ([None], [])
    assert len(always.pool.jobs) == 1  # the next group's sync started without waiting a turn
    always.pool.run_next()
    assert second == [None]
    assert always.store.calls == ["write a", "write b", "sync", "sync"]
    assert always.committer.stats.last_group_commits == 1


def test_empty_commit_is_a_barrier(always: Harness) -> None:
    """commit([]) fires only after a sync covering everything written before it."""
    barrier = outcome(always.committer.commit([]))
    always.reactor.advance(0)
    assert barrier == []
    always.pool.run_next()
    assert barrier == [None]


def test_sync_failure_fails_its_group_and_refuses_later_writes(always: Harness) -> None:
    """A failed fsync errbacks exactly the unsynced waiters; the committer turns unhealthy."""
    acknowledged = commit(always, b"early")
    always.reactor.advance(0)
    always.pool.run_next()
    group = [commit(always, b"a"), commit(always, b"b")]
    always.reactor.advance(0)
    arrived_during_sync = commit(always, b"c")
    disk_full = StoreFullError("disk full while syncing data dir /d", "/d")
    always.store.sync_error = disk_full

    always.pool.run_next()

    assert acknowledged == [None]
    for wait in [*group, arrived_during_sync]:
        assert isinstance(wait[0], Failure) and wait[0].value is disk_full
    assert not always.committer.healthy
    assert always.committer.failure is disk_full
    assert always.pool.jobs == []  # no sync after a failed one: it could lie
    with pytest.raises(StoreFailedError, match="disk full") as refused:
        always.committer.commit([(b"late", b"v")])
    assert refused.value.__cause__ is disk_full
    assert always.store.get(b"late") is None


def test_unexpected_sync_exception_is_reported_as_storage_error(always: Harness) -> None:
    """A sync raising something other than StorageError still fails its waiters as a StorageError."""
    wait = commit(always, b"a")
    always.store.sync_error = OSError("EIO")
    always.reactor.advance(0)
    always.pool.run_next()
    assert isinstance(wait[0], Failure) and wait[0].check(StorageError)
    assert isinstance(always.committer.failure, StorageError)


def test_write_failure_raises_and_fails_pending_waiters(always: Harness) -> None:
    """A write the store rejects raises to its caller and fails writes still awaiting a sync."""
    pending = commit(always, b"a")
    always.store.write_error = StoreIOError("I/O error while writing to data dir /d", "/d")
    with pytest.raises(StoreIOError):
        always.committer.commit([(b"b", b"v")])
    assert isinstance(pending[0], Failure) and pending[0].check(StoreIOError)
    always.reactor.advance(0)
    assert always.pool.jobs == []
    assert not always.committer.healthy


def test_stats_count_commits_ops_and_sync_time(always: Harness) -> None:
    """Counters for metrics: commits, ops, syncs and fsync seconds (from the injected timer)."""
    always.committer.commit([(b"a", b"1"), (b"b", b"2")])
    always.committer.commit([(b"c", b"3")])
    always.reactor.advance(0)
    always.pool.run_next()
    stats = always.committer.stats
    assert (stats.commits, stats.ops, stats.syncs) == (2, 3, 1)
    assert stats.sync_seconds_last == 0.25
    assert stats.sync_seconds_total == 0.25


# -- everysec and never ----------------------------------------------------------


def test_everysec_acknowledges_at_once_and_syncs_on_the_tick() -> None:
    """Under everysec commit returns None and a sync runs once per second, only if dirty."""
    h = harness(FsyncPolicy.EVERYSEC)
    assert h.committer.commit([(b"a", b"v")]) is None
    assert h.committer.commit([(b"b", b"v")]) is None
    h.reactor.advance(0.999)
    assert h.pool.jobs == []
    h.reactor.advance(0.001)
    assert len(h.pool.jobs) == 1
    h.pool.run_next()
    h.reactor.advance(1)
    assert h.pool.jobs == []  # nothing written since: no sync
    assert h.store.calls == ["write a", "write b", "sync"]


def test_everysec_skips_a_tick_while_a_slow_sync_runs() -> None:
    """A sync still running at the next tick is not joined by a second one."""
    h = harness(FsyncPolicy.EVERYSEC)
    h.committer.commit([(b"a", b"v")])
    h.reactor.advance(1)
    h.committer.commit([(b"b", b"v")])
    h.reactor.advance(1)
    assert len(h.pool.jobs) == 1
    h.pool.run_next()
    h.reactor.advance(1)
    assert len(h.pool.jobs) == 1  # b is synced on the first tick after the slow sync


def test_everysec_sync_failure_refuses_writes() -> None:
    """A failed periodic sync makes the committer unhealthy and stops the ticking."""
    h = harness(FsyncPolicy.EVERYSEC)
    h.committer.commit([(b"a", b"v")])
    h.store.sync_error = StoreIOError("I/O error while syncing data dir /d", "/d")
    h.reactor.advance(1)
    h.pool.run_next()
    assert not h.committer.healthy
    with pytest.raises(StoreFailedError):
        h.committer.commit([(b"b", b"v")])
    assert h.reactor.getDelayedCalls() == []


def test_never_acknowledges_at_once_and_never_syncs_on_its_own() -> None:
    """Under never no sync is ever scheduled while the node runs."""
    h = harness(FsyncPolicy.NEVER)
    assert h.committer.commit([(b"a", b"v")]) is None
    h.reactor.advance(3600)
    assert h.pool.jobs == []
    assert h.reactor.getDelayedCalls() == []


def test_store_that_is_not_durable_never_waits() -> None:
    """With a memory store even always acknowledges at once: there is nothing to sync."""
    reactor = ThreadlessClock()
    pool = ManualThreadPool()
    store = MemoryStore()
    committer = GroupCommitter(store, FsyncPolicy.ALWAYS, reactor, threadpool=pool)  # type: ignore[arg-type]
    committer.start()
    assert committer.policy is FsyncPolicy.NEVER
    assert committer.commit([(b"a", b"v")]) is None
    assert outcome(committer.stop()) == [None]
    assert pool.jobs == [] and reactor.getDelayedCalls() == []


# -- stop ------------------------------------------------------------------------


def test_stop_syncs_pending_writes_then_refuses_new_ones(always: Harness) -> None:
    """stop() starts the owed sync at once, fires the waiters, then fires itself."""
    wait = commit(always, b"a")
    stopped = outcome(always.committer.stop())
    assert len(always.pool.jobs) == 1 and stopped == []
    always.pool.run_next()
    assert wait == [None] and stopped == [None]
    assert always.reactor.getDelayedCalls() == []
    with pytest.raises(StoreClosedError, match="shutting down"):
        always.committer.commit([(b"b", b"v")])


def test_stop_waits_for_the_inflight_sync_and_then_syncs_the_rest(always: Harness) -> None:
    """Writes that arrived during a running sync are synced before stop() fires."""
    first = commit(always, b"a")
    always.reactor.advance(0)
    second = commit(always, b"b")
    stopped = outcome(always.committer.stop())
    always.pool.run_next()
    assert (first, second, stopped) == ([None], [], [])
    always.pool.run_next()
    assert (second, stopped) == ([None], [None])
    assert always.store.calls == ["write a", "write b", "sync", "sync"]


@pytest.mark.parametrize("policy", [FsyncPolicy.EVERYSEC, FsyncPolicy.NEVER])
def test_stop_syncs_writes_acknowledged_without_a_sync(policy: FsyncPolicy) -> None:
    """Under everysec and never, stop() syncs what was written since the last sync."""
    h = harness(policy)
    h.committer.commit([(b"a", b"v")])
    stopped = outcome(h.committer.stop())
    assert stopped == []
    h.pool.run_next()
    assert stopped == [None]
    assert h.store.calls == ["write a", "sync"]
    assert h.reactor.getDelayedCalls() == []


def test_stop_with_nothing_written_fires_at_once(always: Harness) -> None:
    """A clean committer stops without a sync; stopping again is harmless."""
    assert outcome(always.committer.stop()) == [None]
    assert outcome(always.committer.stop()) == [None]
    assert always.pool.jobs == []


def test_stop_after_a_failure_reports_it(always: Harness) -> None:
    """stop() on a failed committer fails too, so shutdown logs that writes may be lost."""
    commit(always, b"a")
    always.store.sync_error = StoreFullError("disk full while syncing data dir /d", "/d")
    always.reactor.advance(0)
    always.pool.run_next()
    stopped = outcome(always.committer.stop())
    assert isinstance(stopped[0], Failure) and stopped[0].check(StoreFailedError)


# -- the real thread pool ---------------------------------------------------------


def test_default_pool_syncs_off_the_reactor_thread_and_stop_joins_it() -> None:
    """Without an injected pool the committer syncs in its own thread and stops it on stop()."""

    class QueueingClock(Clock):
        """Hands calls from the sync thread to the test, which plays the reactor thread."""

        def __init__(self) -> None:
            super().__init__()
            self.from_threads: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...]]]
            self.from_threads = queue.Queue()

        def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:  # noqa: N802
            self.from_threads.put((f, args))

    reactor = QueueingClock()
    store = RecordingStore()
    committer = GroupCommitter(store, FsyncPolicy.ALWAYS, reactor)  # type: ignore[arg-type]
    committer.start()
    wait = commit(Harness(reactor, ManualThreadPool(), store, committer), b"a")
    reactor.advance(0)
    f, args = reactor.from_threads.get(timeout=30)  # a hang guard, not a timing verdict
    f(*args)
    assert wait == [None]
    assert store.sync_threads != [threading.get_ident()]

    assert outcome(committer.stop()) == [None]
    assert not [t for t in threading.enumerate() if "twistkv-fsync" in t.name]


def test_sync_thread_runs_jobs_in_order_in_one_thread_and_reports_failures() -> None:
    """SyncThread runs queued jobs one after another in its own thread, reports each
    result or Failure through onResult, and stop() runs what is queued before it ends."""
    pool = SyncThread("twistkv-fsync-test")
    pool.start()
    reports: queue.Queue[tuple[bool, object, int]] = queue.Queue()

    def report(succeeded: bool, result: object) -> None:
        reports.put((succeeded, result, threading.get_ident()))

    def boom() -> None:
        raise ZeroDivisionError("disk on fire")

    pool.callInThreadWithCallback(report, lambda: "first")
    pool.callInThreadWithCallback(report, boom)
    pool.callInThreadWithCallback(report, lambda: "third")
    pool.stop()
    first, failed, third = (reports.get(timeout=30) for _ in range(3))  # hang guards
    assert (first[:2], third[:2]) == ((True, "first"), (True, "third"))
    assert failed[0] is False and isinstance(failed[1], Failure)
    assert failed[1].check(ZeroDivisionError)
    assert len({first[2], failed[2], third[2]}) == 1 and first[2] != threading.get_ident()
    assert not pool.started
    assert not [t for t in threading.enumerate() if t.name == "twistkv-fsync-test"]


def test_sync_thread_outlives_a_failing_result_callback_and_refuses_a_second_start() -> None:
    """A result callback that raises is logged and the thread goes on with the next job
    (else every later sync would wait for ever); starting a running thread is refused."""
    pool = SyncThread("twistkv-fsync-test")
    pool.start()
    with pytest.raises(RuntimeError, match="already running"):
        pool.start()
    reports: queue.Queue[object] = queue.Queue()

    def broken(succeeded: bool, result: object) -> None:
        raise ValueError("callback bug")

    logged: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        pool.callInThreadWithCallback(broken, lambda: "first")
        pool.callInThreadWithCallback(lambda succeeded, result: reports.put(result),
                                      lambda: "next")
        pool.stop()
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert reports.get(timeout=30) == "next"  # a hang guard, not a timing verdict
    failures = [event["log_failure"] for event in logged if "log_failure" in event]
    assert [str(failure.value) for failure in failures] == ["callback bug"]


# -- staging stores and pipelining -----------------------------------------------


class StagingStore(RecordingStore):
    """A recording store that stages writes, as RocksStore does, and can fail its flush."""

    def __init__(self) -> None:
        super().__init__()
        self.flush_error: StorageError | None = None

    def stage(self, ops: Sequence[WriteOp]) -> None:
        super().write(ops)
        self.calls[-1] = self.calls[-1].replace("write", "stage")

    def flush_staged(self) -> None:
        if self.flush_error is not None:
            raise self.flush_error
        self.calls.append("flush")


def test_always_hands_a_staging_store_each_group_as_one_flush_before_its_sync() -> None:
    """Under always, writes are staged and each group is flushed once, on the reactor
    thread, right before the sync that covers it; the waiters fire after the sync."""
    h = harness(FsyncPolicy.ALWAYS, StagingStore())
    waits = [commit(h, key) for key in (b"a", b"b")]
    h.reactor.advance(0)
    assert h.store.calls == ["stage a", "stage b", "flush"]
    assert waits == [[], []]
    h.pool.run_next()
    assert h.store.calls == ["stage a", "stage b", "flush", "sync"]
    assert waits == [[None], [None]]


@pytest.mark.parametrize("policy", [FsyncPolicy.EVERYSEC, FsyncPolicy.NEVER])
def test_policies_that_do_not_wait_write_through(policy: FsyncPolicy) -> None:
    """Without a sync before each acknowledgement nothing flushes staged ops in time,
    so other policies write straight through."""
    h = harness(policy, StagingStore())
    h.committer.commit([(b"a", b"v")])
    assert h.store.calls == ["write a"]


def test_failed_flush_fails_its_group_and_refuses_later_writes() -> None:
    """A group whose batch cannot be written is answered with the error, never synced,
    and the committer refuses writes from then on."""
    h = harness(FsyncPolicy.ALWAYS, StagingStore())
    wait = commit(h, b"a")
    h.store.flush_error = StoreIOError("disk gone", "/data")  # type: ignore[attr-defined]
    h.reactor.advance(0)
    assert h.pool.jobs == []
    assert len(wait) == 1 and isinstance(wait[0], Failure)
    assert wait[0].check(StoreIOError)
    assert not h.committer.healthy
    with pytest.raises(StoreFailedError):
        h.committer.commit([(b"b", b"v")])
