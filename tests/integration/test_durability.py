"""What survives a crash or a restart, and what a data dir allows.

The central promise (DESIGN.md §2): with ``--storage rocksdb --fsync always``
a write is acknowledged only after the WAL fsync that covers it, so
``kill -9`` can lose only writes that were never acknowledged.
"""

from __future__ import annotations

import subprocess
import threading
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .conftest import Node, NodeFactory

pytestmark = pytest.mark.integration

WRITERS = 4
BATCH = 50
#: Acknowledged writes required before the node is killed.
ACKS_BEFORE_KILL = 4000


def value_for(key: str) -> str:
    """The value written under C{key}: derived from it, so every key's value is distinct."""
    return f"value-of-{key}-" + "x" * (len(key) % 17)


class Writer(threading.Thread):
    """Pipelines batches of SETs of fresh keys on its own connection until the node dies.

    A batch's keys are recorded as acknowledged only once every reply of the
    batch has arrived as OK; a batch cut short by the kill counts as not
    acknowledged (it may or may not have been written).
    """

    def __init__(self, node: Node, index: int, stop: threading.Event) -> None:
        super().__init__(name=f"writer-{index}", daemon=True)
        # No retries: a resent batch after a reconnect would blur what was acked when.
        self.client = node.client(
            decode_responses=True, single_connection_client=True,
            retry=Retry(NoBackoff(), 0), socket_timeout=10,
        )
        self.index = index
        self.stop_event = stop
        self.acked: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        n = 0
        try:
            while not self.stop_event.is_set():
                keys = [f"dur:{self.index}:{n + i}" for i in range(BATCH)]
                n += BATCH
                pipe = self.client.pipeline(transaction=False)
                for key in keys:
                    pipe.set(key, value_for(key))
                replies = pipe.execute()
                assert replies == [True] * BATCH, replies
                self.acked.extend(keys)
        except (redis.ConnectionError, redis.TimeoutError, ConnectionError) as exc:
            self.error = exc  # expected: the node was killed under us
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def test_sigkill_under_load_loses_no_acknowledged_write(node_factory: NodeFactory) -> None:
    """Four connections pipeline SETs; the node is SIGKILLed after thousands of acks and
    restarted on the same data dir: every acknowledged key is there with its exact value.
    """
    node = node_factory.start(storage="rocksdb", fsync="always")
    stop = threading.Event()
    writers = [Writer(node, i, stop) for i in range(WRITERS)]
    for writer in writers:
        writer.start()
    try:
        deadline = time.monotonic() + 60
        while sum(len(w.acked) for w in writers) < ACKS_BEFORE_KILL:
            problems = [w.error for w in writers if w.error is not None]
            assert not problems, f"a writer failed before the kill: {problems[0]!r}"
            assert time.monotonic() < deadline, "fewer than 4000 acks in 60 s"
            time.sleep(0.01)
        node.kill()  # SIGKILL, mid-load: the writers are still sending
    finally:
        stop.set()
        for writer in writers:
            writer.join(30)
    assert not any(w.is_alive() for w in writers), "a writer hung after the kill"
    assert any(w.error is not None for w in writers), "no writer was cut off: not mid-load"
    unexpected = [
        w.error for w in writers
        if w.error is not None and not isinstance(w.error, redis.ConnectionError | ConnectionError | redis.TimeoutError)
    ]
    assert not unexpected, f"writer failed with {unexpected[0]!r}"

    acked = [key for w in writers for key in w.acked]
    assert len(acked) >= ACKS_BEFORE_KILL
    node.restart()
    client = node.client(decode_responses=True)
    missing, wrong = [], []
    for start in range(0, len(acked), 1000):
        chunk = acked[start:start + 1000]
        for key, value in zip(chunk, client.mget(chunk), strict=True):
            if value is None:
                missing.append(key)
            elif value != value_for(key):
                wrong.append((key, value))
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged keys lost, e.g. {missing[:5]}"
    assert not wrong, f"{len(wrong)} acknowledged keys have wrong values, e.g. {wrong[:3]}"
    assert client.dbsize() >= len(acked)


def test_memory_storage_loses_data_on_restart(node_factory: NodeFactory) -> None:
    """--storage memory is documented as lost on exit: after a restart the keyspace is empty,
    and INFO persistence says the node is not durable.
    """
    node = node_factory.start(storage="memory")
    client = node.client(decode_responses=True)
    client.mset({"mem:a": "1", "mem:b": "2"})
    assert client.dbsize() == 2
    assert client.info("persistence")["durable"] == 0

    node.restart()
    client = node.client(decode_responses=True)
    assert client.get("mem:a") is None
    assert client.dbsize() == 0


def test_rocksdb_restart_keeps_data(node_factory: NodeFactory) -> None:
    """The control for the test above: the same steps with RocksDB keep the data."""
    node = node_factory.start(storage="rocksdb", fsync="everysec")
    client = node.client(decode_responses=True)
    client.mset({"disk:a": "1", "disk:b": "2"})
    node.restart()
    client = node.client(decode_responses=True)
    assert client.mget(["disk:a", "disk:b"]) == ["1", "2"]


def test_second_node_on_same_data_dir_fails_fast_with_clear_message(
    node_factory: NodeFactory,
) -> None:
    """A second node on a data dir in use exits non-zero within 30 s with a one-line message
    saying the data dir is in use (no traceback); the first node keeps serving.
    """
    first = node_factory.start("owner")
    first.client().set("owned", "yes")
    second = node_factory.create(
        "owner", data_dir=first.data_dir, log_dir=first.log_dir.with_name("second-logs")
    )
    second.output_path = first.output_path.with_name("second.out")
    proc = second.spawn()
    try:
        code = proc.wait(30)
    except subprocess.TimeoutExpired:
        pytest.fail("second node on a locked data dir is still running after 30 s\n"
                    + second.output_tail())
    output = second.output().split("\n=====", 2)[-1]
    assert code != 0, output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if "in use" in line]
    assert lines, f"no line saying the data dir is in use:\n{output}"
    assert str(first.data_dir) in lines[0], output
    assert first.client().get("owned") == b"yes"
