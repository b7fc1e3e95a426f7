"""Helpers and fixtures for the C{twistkv} CLI tests (conftest.py registers the fixtures).

Unit tests call L{twistkv.cli.main} in-process with C{capsys} and need no network.
Integration tests (marked C{integration}) reuse the integration harness
(C{tests/integration/conftest.py}: L{Node}, L{NodeFactory}) for a live 3-node cluster,
or run the CLI's own launcher in a tmp dir and check that no process outlives the test.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

_TESTS = Path(__file__).resolve().parents[1]
if str(_TESTS) not in sys.path:  # the integration harness is package `integration` under tests/
    sys.path.insert(0, str(_TESTS))

from integration.conftest import HOST, Node, NodeFactory, node_env  # noqa: E402

from twistkv.cli import main  # noqa: E402

REPO_ROOT = _TESTS.parent


@dataclass
class Result:
    """What one CLI run produced."""

    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
        ) -> Callable[..., Result]:
    """Run C{main(argv)} in-process; returns exit code, stdout and stderr."""
    monkeypatch.delenv("TWISTKV_SERVER", raising=False)

    def run(*argv: str) -> Result:
        capsys.readouterr()
        code = main(list(argv))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def run_subprocess(*argv: str, stdin: str | None = None, cwd: Path | None = None,
                   timeout: float = 60, env: dict[str, str] | None = None) -> Result:
    """C{python -m twistkv.cli ARGV} as a real process (this tree first on the path)."""
    proc = subprocess.run(
        [sys.executable, "-m", "twistkv.cli", *argv], input=stdin, capture_output=True,
        text=True, timeout=timeout, cwd=cwd or REPO_ROOT, env=env or node_env(),
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def _serves(node: Node) -> bool:
    """Whether the node coordinates a read at CONSISTENCY ALL (it has joined its cluster)."""
    client = redis.Redis(host=HOST, port=node.client_port, protocol=3, socket_timeout=2)
    try:
        client.execute_command("CONSISTENCY", "ALL")
        client.execute_command("GET", "__cli_tests_ready__")
        return True
    except redis.RedisError:
        return False
    finally:
        client.close()


def wait_converged(nodes: list[Node], timeout: float = 20.0) -> None:
    """Until every node's MEMBERS shows every node alive and every node serves ALL reads."""
    ids = {n.node_id for n in nodes}
    deadline = time.monotonic() + timeout
    while True:
        ok = 0
        for n in nodes:
            client = redis.Redis(host=HOST, port=n.client_port, protocol=3, socket_timeout=2,
                                 decode_responses=True)
            try:
                rows = client.execute_command("MEMBERS")
                alive = {r["id"] for r in rows if r["state"] == "alive"}
                ok += ids <= alive
            except redis.RedisError:
                pass
            finally:
                client.close()
        if ok == len(nodes) and all(_serves(n) for n in nodes):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"cluster did not converge within {timeout} s")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Node]]:
    """Three in-memory nodes seeded with each other, converged; shared by a module."""
    factory = NodeFactory(tmp_path_factory.mktemp("cli-nodes"))
    try:
        nodes = factory.cluster(3, storage="memory")
        wait_converged(nodes)
        yield nodes
    finally:
        factory.close()


def free_base_port(count: int = 3) -> int:
    """A base port whose client (+0..), peer (+100..) and http (+1000..) ports are free."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 60000 - 1000 - count)
        ports = [base + off + i for off in (0, 100, 1000) for i in range(count)]
        if all(_free(p) for p in ports):
            return base
    raise RuntimeError("no free port range")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def processes_in(directory: Path) -> dict[int, str]:
    """Live (non-zombie) processes whose working directory is C{directory}: pid -> cmdline."""
    found = {}
    target = str(directory.resolve())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "cwd") != target:
                continue
            stat = (entry / "stat").read_text()
            if stat.rpartition(")")[2].split()[:1] == ["Z"]:
                continue
            found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
    return found


def kill_strays(directory: Path) -> dict[int, str]:
    """SIGKILL anything still running in C{directory} (the safety net); what was found."""
    strays = {pid: cmd for pid, cmd in processes_in(directory).items() if "kvnode" in cmd}
    for pid in strays:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return strays


@pytest.fixture
def launcher_dir(tmp_path: Path) -> Iterator[Path]:
    """A cluster dir for `twistkv cluster`; anything left running in it is killed and reported."""
    directory = tmp_path / "cluster"
    directory.mkdir()
    try:
        yield directory
    finally:
        strays = kill_strays(directory)
        assert not strays, f"processes outlived the test: {strays}"
