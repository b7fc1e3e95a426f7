"""Tests for twistkv.node.service: the node's service tree (here: its garbage-collector tuning)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.testing import MemoryReactorClock

from twistkv.config import NodeConfig
from twistkv.node.service import GC_GEN0_THRESHOLD, KVNodeService, tune_garbage_collector
from twistkv.tap import Options, makeService


@pytest.fixture
def gc_state() -> Iterator[None]:
    """Give the test process its collector back as it was."""
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


class RecordingReactor(MemoryReactorClock):
    """A memory reactor that records what should run once it runs, without running it."""

    def __init__(self) -> None:
        super().__init__()
        self.when_running: list[object] = []

    def callWhenRunning(self, callable: object, *args: object, **kwargs: object) -> None:  # noqa: A002
        self.when_running.append(callable)


def start(tmp_path: Path, **kwargs: bool) -> RecordingReactor:
    reactor = RecordingReactor()
    config = NodeConfig(node_id="n1", data_dir=tmp_path / "data", log_dir=tmp_path / "logs",
                        storage="memory", listen="tcp:0", http=None, peer_listen="tcp:0",
                        advertise="127.0.0.1:7380")
    service = KVNodeService(config, reactor=reactor, **kwargs)
    service.startService()
    service.stopService()
    return reactor


def test_tuning_freezes_startup_objects_and_widens_the_young_generation(gc_state: None) -> None:
    """After tuning, what existed is frozen (never walked by collections again) and young
    collections wait for GC_GEN0_THRESHOLD allocations; the older thresholds are kept."""
    gc.unfreeze()
    _, older, oldest = gc.get_threshold()
    tune_garbage_collector()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (GC_GEN0_THRESHOLD, older, oldest)


def test_only_the_process_node_tunes_the_collector(tmp_path: Path) -> None:
    """A service asked to (what `twistd kvnode` builds) tunes once the reactor runs; one built
    inside another program or a test leaves that program's collector alone."""
    assert start(tmp_path / "a", tune_gc=True).when_running == [tune_garbage_collector]
    assert start(tmp_path / "b").when_running == []


def test_twistd_builds_a_tuning_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The twistd plugin's service is the process's node, so it tunes the collector."""
    monkeypatch.chdir(tmp_path)
    options = Options()
    options.parseOptions(["--node-id", "n1", "--storage", "memory"])
    service = makeService(options)
    assert isinstance(service, KVNodeService) and service._tune_gc
