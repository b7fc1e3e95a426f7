"""A node writes structured JSON-lines logs under its log dir (seed 001's logs/<node-id>/)."""

from __future__ import annotations

import json

import pytest

from .conftest import NodeFactory

pytestmark = pytest.mark.integration


def test_json_lines_log_records_start_and_stop(node_factory: NodeFactory) -> None:
    """Every line of node.jsonl is a JSON event; startup and clean shutdown are both recorded."""
    node = node_factory.start("logger1")
    node.client().set("k", "v")
    node.stop()
    log_file = node.log_dir / "node.jsonl"
    lines = log_file.read_text(encoding="utf-8").splitlines()
    events = [json.loads(line) for line in lines if line.strip()]
    formats = [event.get("log_format", "") for event in events]
    assert any("started" in f for f in formats), formats
    assert any("stopped" in f for f in formats), formats
    started = next(e for e in events if "started" in e.get("log_format", ""))
    assert started["node_id"] == "logger1"
    assert started["storage"] == "rocksdb"


def test_node_runs_on_the_lean_epoll_reactor(node_factory: NodeFactory) -> None:
    """twistd kvnode installs twistkv's epoll reactor (no per-event log context), and says
    so in its startup log."""
    node = node_factory.start("reactor1", storage="memory")
    assert node.client().ping()
    assert "reactor class: twistkv.node.reactor.LeanEPollReactor" in node.output()
