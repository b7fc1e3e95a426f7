"""Tests for twistkv.tap: ``twistd kvnode`` option parsing and validation."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from twisted.python import usage

from twistkv.node.service import open_store
from twistkv.storage.rocks import RocksStore
from twistkv.tap import Options


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("PORT", "PEERS", "NODE_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


def test_defaults(tmp_path: Path) -> None:
    """With no options a node listens on the documented ports and stores in RocksDB with fsync always."""
    config = parse("--node-id", "n1").config
    assert config.node_id == "n1"
    assert config.listen == "tcp:7379"
    assert config.http == "tcp:8379"
    assert config.peer_listen == "tcp:7380"
    assert config.storage == "rocksdb"
    assert config.fsync == "always"
    assert config.data_dir == Path("data/n1")
    assert config.log_dir == Path("logs/n1")
    assert (tmp_path / "data/n1/NODE_ID").read_text().strip() == "n1"


def test_node_id_is_generated_and_persisted(tmp_path: Path) -> None:
    """Without --node-id a node id is generated once and reused from the data dir."""
    first = parse("--data-dir", "d").config.node_id
    second = parse("--data-dir", "d").config.node_id
    assert first == second
    assert (tmp_path / "d/NODE_ID").read_text().strip() == first


def test_data_dir_belongs_to_one_node() -> None:
    """Opening a data dir under another node id is refused with a message naming both ids."""
    parse("--node-id", "n1", "--data-dir", "d")
    with pytest.raises(usage.UsageError, match="belongs to node 'n1', not 'n2'"):
        parse("--node-id", "n2", "--data-dir", "d")


def test_environment_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """PORT, PEERS and NODE_ID (seed 000's variables) act as defaults."""
    monkeypatch.setenv("PORT", "8001")
    monkeypatch.setenv("PEERS", "10.0.0.2:7380, 10.0.0.3:7380")
    monkeypatch.setenv("NODE_ID", "envnode")
    config = parse().config
    assert config.listen == "tcp:8001"
    assert config.seeds == ("10.0.0.2:7380", "10.0.0.3:7380")
    assert config.node_id == "envnode"


def test_options_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Explicit options win over the environment."""
    monkeypatch.setenv("PORT", "8001")
    monkeypatch.setenv("NODE_ID", "envnode")
    config = parse("--listen", "tcp:9000", "--node-id", "cli").config
    assert config.listen == "tcp:9000"
    assert config.node_id == "cli"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--storage", "leveldb"], "--storage must be one of rocksdb, memory"),
        (["--fsync", "sometimes"], "--fsync must be one of always, everysec, never"),
        (["--max-value-bytes", "lots"], "--max-value-bytes must be a whole number"),
        (["--max-value-bytes", "0"], "--max-value-bytes must be positive"),
        (["--max-clients", "-3"], "--max-clients must be positive"),
        (["--row-cache-mb", "-1"], "--row-cache-mb must be 0 or more"),
        (["--row-cache-mb", "big"], "--row-cache-mb must be a whole number"),
        (["--listen", "carrier-pigeon:7"], "--listen 'carrier-pigeon:7' is not a Twisted endpoint"),
        (["--http", "tcp:notaport"], "--http 'tcp:notaport' is not a Twisted endpoint"),
        (["--seeds", "hostonly"], "seed 'hostonly' is not host:port"),
        (["--node-id", "has space"], "invalid node id"),
        (["--replicas", "100001"], "--replicas 100001 is above 100000"),
        (["--replicas", "3", "-W", "4"], "--write-quorum 4 exceeds --replicas 3"),
    ],
)
def test_bad_options_are_usage_errors(argv: list[str], message: str) -> None:
    """Each malformed option is a one-line UsageError that says what is wrong."""
    with pytest.raises(usage.UsageError, match=message.replace("[", r"\[")):
        parse("--node-id", "n1", *argv) if "--node-id" not in argv else parse(*argv)


def test_row_cache_is_set_in_mib_and_reaches_the_store(tmp_path: Path) -> None:
    """--row-cache-mb sets the RocksDB row cache bound in MiB (default 32, 0 for none),
    and the store the node opens uses it."""
    assert parse("--node-id", "n1").config.row_cache_bytes == 32 * 1024 * 1024
    config = parse("--node-id", "n1", "--row-cache-mb", "0",
                   "--data-dir", str(tmp_path / "n1")).config
    assert config.row_cache_bytes == 0
    store = open_store(replace(config, row_cache_bytes=4096))
    try:
        assert isinstance(store, RocksStore) and store._row_limit == 4096
    finally:
        store.close()


def test_http_can_be_disabled() -> None:
    """--http none turns the HTTP listener off."""
    assert parse("--node-id", "n1", "--http", "none").config.http is None


def test_help_lists_every_option() -> None:
    """--help names every option the issue requires."""
    text = str(Options())
    for flag in ("--listen", "--http", "--peer-listen", "--node-id", "--data-dir", "--storage",
                 "--fsync", "--max-value-bytes", "--max-clients", "--seeds", "--enable-flushdb"):
        assert flag in text
