"""Real ``twistd -n kvnode`` processes on 127.0.0.1, for integration tests.

L{Node} owns one node process: its ports (chosen free by binding port 0,
then released), its data and log dirs under a pytest tmp dir, and a file
collecting the process's stdout/stderr (twistd logs there with ``-n``).
L{NodeFactory} creates nodes and guarantees that every process it started is
killed when its fixture is finalised, whether the test passed or not; the
tail of each node's output is printed then, which pytest shows only for a
failing test.

Fixtures:
  - C{node_factory}: function scope; C{node_factory.start(...)} gives a
    running node, C{node_factory.cluster(n)} n nodes seeded with each other.
  - C{node}: one running node (RocksDB, fsync always) for one test.
  - C{module_node_factory}: like C{node_factory} but shared by a module, for
    read-mostly tests that would otherwise pay a node start each.

twistd is the one next to C{sys.executable}, so the tests run the same
environment's twistd in a fresh CI venv as on a laptop; the repo root is the
working directory and on C{PYTHONPATH}, so ``twisted/plugins/kvnode.py`` and
C{twistkv} come from this tree even when the package is not installed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

REPO_ROOT = Path(__file__).resolve().parents[2]
TWISTD = Path(sys.executable).parent / "twistd"
HOST = "127.0.0.1"

#: How long a node may take from exec to answering PING.
READY_TIMEOUT = 15.0
#: How long a node may take to exit after SIGTERM before it gets SIGKILL.
STOP_TIMEOUT = 10.0

#: Environment variables the kvnode plugin reads as defaults; removed so the
#: developer's shell cannot change what a test starts.
_PLUGIN_ENV = ("PORT", "PEERS", "NODE_ID")

_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago.

    Binding port 0 lets the kernel pick; the socket is then closed so the
    node can bind it. Ports are not handed out twice in one test session,
    so nodes started together never collide with each other.
    """
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no free port found")


def node_env(**overrides: str) -> dict[str, str]:
    """The environment for a node or tool process: this tree importable first."""
    env = {k: v for k, v in os.environ.items() if k not in _PLUGIN_ENV}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
    )
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env


def raw_ping(port: int, timeout: float = 1.0) -> bool:
    """Whether a RESP server on C{port} answers an inline PING with +PONG."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            data = b""
            while not data.endswith(b"\r\n"):
                chunk = sock.recv(64)
                if not chunk:
                    return False
                data += chunk
            return data == b"+PONG\r\n"
    except OSError:
        return False


_T = TypeVar("_T")


def wait_until(
    probe: Callable[[], _T],
    timeout: float,
    what: str,
    interval: float = 0.1,
) -> _T:
    """Call C{probe} until it returns something truthy; return that, or fail at C{timeout}.

    An exception from C{probe} counts as "not yet" (a node still starting, a
    refused write); the last value or exception is in the failure message.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = probe()
        except Exception as exc:  # noqa: BLE001 - "not yet", reported on timeout
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.1f} s: {what} (last: {last!r})")
        time.sleep(interval)


#: Seconds Node.wait_ready waits, beyond PONG, for the node to report cluster_ready:1.
CLUSTER_READY_WAIT = 8.0


class NodeError(AssertionError):
    """A node did not start, or did not stop, as expected (includes its output)."""


class Node:
    """One ``twistd -n kvnode`` process and everything needed to restart it.

    Ports, node id, data dir and log dir are fixed at construction, so
    L{restart} brings the same node back on the same addresses and data.
    """

    def __init__(
        self,
        base_dir: Path,
        node_id: str,
        *,
        storage: str = "rocksdb",
        fsync: str = "always",
        extra_args: Sequence[str] = (),
        data_dir: Path | None = None,
        log_dir: Path | None = None,
        twistd: Path = TWISTD,
        cwd: Path = REPO_ROOT,
        env: dict[str, str] | None = None,
    ) -> None:
        self.node_id = node_id
        self.storage = storage
        self.fsync = fsync
        self.extra_args = list(extra_args)
        self.twistd = twistd
        self.cwd = cwd
        self.env = env if env is not None else node_env()
        self.client_port = free_port()
        self.http_port = free_port()
        self.peer_port = free_port()
        node_dir = base_dir / node_id
        self.data_dir = data_dir if data_dir is not None else node_dir / "data"
        self.log_dir = log_dir if log_dir is not None else node_dir / "logs"
        self.output_path = node_dir / f"{node_id}-{self.client_port}.out"
        node_dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._clients: list[redis.Redis] = []

    # -- addresses ------------------------------------------------------------

    @property
    def peer_address(self) -> str:
        return f"{HOST}:{self.peer_port}"

    @property
    def http_url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "node was never started"
        return self.proc.pid

    def argv(self) -> list[str]:
        """The full command line of this node."""
        return [
            str(self.twistd), "-n", "--pidfile=", "kvnode",
            "--node-id", self.node_id,
            "--data-dir", str(self.data_dir),
            "--log-dir", str(self.log_dir),
            "--listen", f"tcp:{self.client_port}:interface={HOST}",
            "--http", f"tcp:{self.http_port}:interface={HOST}",
            "--peer-listen", f"tcp:{self.peer_port}:interface={HOST}",
            "--storage", self.storage,
            "--fsync", self.fsync,
            *self.extra_args,
        ]

    # -- lifecycle ------------------------------------------------------------

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start the process without waiting for it to be ready."""
        if self.running:
            raise NodeError(f"node {self.node_id} is already running (pid {self.pid})")
        self.starts += 1
        with open(self.output_path, "ab") as out:
            out.write(f"\n===== start #{self.starts}: {' '.join(self.argv())}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                self.argv(),
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self.proc

    def start(self, timeout: float = READY_TIMEOUT) -> Node:
        """Start the process and wait until its client port answers PING."""
        self.spawn()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Poll the client port until PONG; fail at once if the process exits."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            code = self.proc.poll()
            if code is not None:
                raise NodeError(
                    f"node {self.node_id} exited with {code} before answering PING\n"
                    + self.output_tail()
                )
            if raw_ping(self.client_port):
                self._await_cluster_ready(min(deadline - time.monotonic(), CLUSTER_READY_WAIT))
                return
            if time.monotonic() > deadline:
                raise NodeError(
                    f"node {self.node_id} did not answer PING on port {self.client_port} "
                    f"within {timeout:.0f} s\n" + self.output_tail()
                )
            time.sleep(0.05)

    def _await_cluster_ready(self, timeout: float) -> None:
        """Best effort: wait until INFO says the node coordinates (cluster_ready:1).

        A node answers PING before it has checked in with its cluster; tests that use it
        at once would see "has not joined the cluster yet". Nodes that are never meant to
        join (a wrong cluster secret) simply use up the short wait.
        """
        deadline = time.monotonic() + max(timeout, 0.0)
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((HOST, self.client_port), timeout=1.0) as conn:
                    conn.sendall(b"INFO cluster\r\n")
                    conn.settimeout(1.0)
                    data = b""
                    while b"cluster_ready:" not in data or not data.endswith(b"\r\n"):
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                if b"cluster_ready:1" in data:
                    return
            except OSError:
                pass
            time.sleep(0.1)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL, timeout: float = STOP_TIMEOUT) -> int | None:
        """Send C{sig}; for a terminating signal, wait for the exit and return its code."""
        assert self.proc is not None, "node was never started"
        if not self.running:
            return self.proc.returncode
        self.proc.send_signal(sig)
        if sig in (signal.SIGSTOP, signal.SIGCONT):
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT)
            raise NodeError(
                f"node {self.node_id} ignored signal {sig} for {timeout:.0f} s\n"
                + self.output_tail()
            ) from None

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, then SIGKILL after C{timeout}; returns the exit code (None if never run)."""
        self.close_clients()
        if self.proc is None:
            return None
        if self.running:
            self.proc.send_signal(signal.SIGCONT)  # a SIGSTOPped node cannot handle SIGTERM
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        return self.proc.returncode

    def restart(self, timeout: float = READY_TIMEOUT, **changes: Any) -> Node:
        """Stop (gracefully, if still running) and start on the same ports and data.

        C{changes} may replace C{storage}, C{fsync} or C{extra_args}.
        """
        self.stop()
        for name, value in changes.items():
            if name not in ("storage", "fsync", "extra_args"):
                raise TypeError(f"cannot change {name} on restart")
            setattr(self, name, list(value) if name == "extra_args" else value)
        return self.start(timeout)

    # -- clients and diagnostics ---------------------------------------------

    def client(self, **kwargs: Any) -> redis.Redis:
        """A redis-py client on this node (closed when the node stops)."""
        kwargs.setdefault("socket_timeout", 10)
        kwargs.setdefault("socket_connect_timeout", 5)
        client = redis.Redis(host=HOST, port=self.client_port, **kwargs)
        self._clients.append(client)
        return client

    def close_clients(self) -> None:
        for client in self._clients:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - best effort during teardown
                pass
        self._clients.clear()

    def output(self) -> str:
        try:
            return self.output_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def output_tail(self, lines: int = 60) -> str:
        tail = self.output().splitlines()[-lines:]
        return f"----- last {len(tail)} lines of {self.output_path} -----\n" + "\n".join(tail)

    def rss_kib(self) -> int:
        """The process's resident set size in KiB (Linux /proc)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise NodeError(f"no VmRSS for pid {self.pid}")

    # -- cluster views ----------------------------------------------------------

    def session(self, consistency: str | None = None, timeout: float = 10.0) -> redis.Redis:
        """A client whose commands and pipelines all use one connection, never resent.

        C{consistency} (ONE, QUORUM, ALL) is set on that connection with its own round
        trip before anything else is sent. Closed when the node stops.
        """
        client = redis.Redis(
            host=HOST, port=self.client_port, max_connections=1, decode_responses=True,
            socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0),
        )
        self._clients.append(client)
        if consistency is not None:
            client.execute_command("CONSISTENCY", consistency)
        return client

    def command(self, *args: Any, timeout: float = 5.0, consistency: str | None = None) -> Any:
        """One command on a fresh connection (closed after), optionally at a consistency.

        A fresh connection per call never reuses a socket of a killed or restarted
        node, and never retries: the reply or the exception is the answer.
        """
        client = self.session(consistency, timeout)
        try:
            return client.execute_command(*args)
        finally:
            self._clients.remove(client)
            client.close()

    def members(self, timeout: float = 2.0) -> dict[str, str]:
        """This node's MEMBERS as node id -> state (alive, suspect, dead, left)."""
        return {row["id"]: row["state"] for row in self.command("MEMBERS", timeout=timeout)}

    def http_get(self, path: str, timeout: float = 5.0) -> bytes:
        with urllib.request.urlopen(self.http_url + path, timeout=timeout) as response:
            return response.read()

    def http_json(self, path: str, timeout: float = 5.0) -> Any:
        return json.loads(self.http_get(path, timeout))

    def metrics(self, timeout: float = 5.0) -> dict[str, float]:
        """Unlabelled samples of C{/metrics}: metric name -> value."""
        samples = {}
        for line in self.http_get("/metrics", timeout).decode().splitlines():
            match = re.fullmatch(r"([A-Za-z_:][A-Za-z0-9_:]*) (\S+)", line)
            if match:
                samples[match[1]] = float(match[2])
        return samples

    def __repr__(self) -> str:
        state = f"pid {self.proc.pid}" if self.running and self.proc else "stopped"
        return f"<Node {self.node_id} :{self.client_port} {state}>"


class NodeFactory:
    """Creates nodes under one base dir and stops every one of them on L{close}."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self.nodes: list[Node] = []
        self._count = 0

    def create(self, node_id: str | None = None, **kwargs: Any) -> Node:
        """A node, not started (see L{Node} for the keyword arguments)."""
        self._count += 1
        node = Node(self.base_dir, node_id or f"n{self._count}", **kwargs)
        self.nodes.append(node)
        return node

    def start(self, node_id: str | None = None, **kwargs: Any) -> Node:
        """A started, ready node."""
        return self.create(node_id, **kwargs).start()

    def cluster(self, size: int, **kwargs: Any) -> list[Node]:
        """C{size} started nodes, each given the others' peer addresses as --seeds."""
        extra = list(kwargs.pop("extra_args", ()))
        nodes = [self.create(**kwargs) for _ in range(size)]
        for node in nodes:
            seeds = ",".join(other.peer_address for other in nodes if other is not node)
            node.extra_args = [*extra, "--seeds", seeds] if seeds else list(extra)
            node.spawn()
        for node in nodes:
            node.wait_ready()
        return nodes

    def joined_cluster(
        self, size: int, timeout: float = 30.0, **kwargs: Any
    ) -> list[Node]:
        """C{size} nodes started as the docs say, waited for until they serve as a cluster.

        The first node starts alone (no seeds); the others get it as their seed. Returns
        once every node's MEMBERS shows all C{size} nodes alive and a write coordinated by
        each node succeeds (a node refuses to coordinate until it has joined).
        """
        extra = list(kwargs.pop("extra_args", ()))
        nodes = [self.create(**kwargs) for _ in range(size)]
        first = nodes[0]
        first.extra_args = list(extra)
        first.start()
        for node in nodes[1:]:
            node.extra_args = [*extra, "--seeds", first.peer_address]
            node.spawn()
        for node in nodes[1:]:
            node.wait_ready()
        wait_cluster(nodes, timeout)
        return nodes

    def close(self) -> None:
        """Stop every node; print each one's output tail (shown if the test failed)."""
        errors = []
        for node in self.nodes:
            try:
                node.stop()
            except Exception as exc:  # noqa: BLE001 - keep stopping the others
                errors.append(exc)
            finally:
                if node.proc is not None and node.proc.poll() is None:
                    node.proc.kill()
                    node.proc.wait()
            if node.proc is not None:
                print(f"\n{node!r} exit code {node.proc.returncode}\n{node.output_tail(40)}")
        self.nodes.clear()
        if errors:
            raise errors[0]


def wait_cluster(nodes: Sequence[Node], timeout: float = 30.0) -> None:
    """Wait until every node sees all of C{nodes} alive and can coordinate a write."""
    ids = {node.node_id for node in nodes}

    def converged() -> bool:
        return all(
            {i: s for i, s in node.members().items() if i in ids} == dict.fromkeys(ids, "alive")
            for node in nodes
        )

    wait_until(converged, timeout, f"every node sees {sorted(ids)} alive")
    for node in nodes:
        wait_until(
            lambda node=node: node.command("SET", f"__joined__:{node.node_id}", "1") is True,
            timeout, f"{node.node_id} coordinates a write",
        )


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[NodeFactory]:
    """Nodes for one test, all killed when it ends."""
    factory = NodeFactory(tmp_path / "nodes")
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="module")
def module_node_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeFactory]:
    """Nodes shared by the tests of one module, all killed after its last test."""
    factory = NodeFactory(tmp_path_factory.mktemp("nodes"))
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def node(node_factory: NodeFactory) -> Node:
    """One running node (RocksDB, fsync always) for one test."""
    return node_factory.start()
