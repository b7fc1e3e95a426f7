"""`twistkv cluster` against real processes in a tmp dir: up, the kill demo, restart, down.

Every test checks the processes themselves (pids from the state file, and a scan of
/proc for anything whose working directory is the cluster dir), so a launcher that
leaves strays fails here, and the C{launcher_dir} fixture kills any it finds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from clihelpers import REPO_ROOT, Result, free_base_port, node_env, processes_in

from twistkv.cli import _cluster

pytestmark = pytest.mark.integration

Cli = Callable[..., Result]


def _pids(directory: Path) -> dict[str, int]:
    found = {}
    for path in (directory / "run").glob("*.pid"):
        text = path.read_text().strip()
        if text:
            found[path.stem] = int(text)
    return found


def _alive(pid: int) -> bool:
    """Running and not a zombie (a zombie child of this test process is reaped first)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _kvnodes(directory: Path) -> dict[int, str]:
    return {pid: cmd for pid, cmd in processes_in(directory).items() if "kvnode" in cmd}


def test_up_kill_restart_down(cli: Cli, launcher_dir: Path) -> None:
    """Seed 000's demo: up 3 nodes, kill one, lose quorum with two down, restart, down."""
    d = str(launcher_dir)
    base = free_base_port(3)
    up = cli("cluster", "up", "-n", "3", "--base-port", str(base), "--storage", "memory",
             "--dir", d)
    assert up.code == 0, up
    for i in range(3):
        assert f"http://127.0.0.1:{base + 1000 + i}/" in up.out  # dashboards
        assert f"127.0.0.1:{base + i}" in up.out  # client addresses
    pids = _pids(launcher_dir)
    assert sorted(pids) == ["n1", "n2", "n3"]
    for pid in pids.values():
        assert _alive(pid) and os.getpgid(pid) == pid  # detached: its own process group
    assert (launcher_dir / "logs" / "n1" / "twistd.out").exists()
    assert (launcher_dir / "data" / "n1").is_dir()
    state = json.loads((launcher_dir / "run" / "cluster.json").read_text())
    assert [n["client_port"] for n in state["nodes"]] == [base, base + 1, base + 2]

    again = cli("cluster", "up", "--base-port", str(base), "--dir", d)
    assert again.code == 5 and "already running" in again.err

    status = json.loads(cli("cluster", "status", "--dir", d, "--json").out)
    assert [(n["id"], n["running"], n["membership"]) for n in status["nodes"]] == [
        ("n1", True, "alive"), ("n2", True, "alive"), ("n3", True, "alive")]

    n1 = f"127.0.0.1:{base}"
    assert cli("-s", n1, "put", "demo:k", "v1").code == 0

    killed = cli("cluster", "kill", "n3", "--dir", d)
    assert killed.code == 0 and "SIGKILL" in killed.out
    assert not _alive(pids["n3"]) and "n3" not in _pids(launcher_dir)
    assert cli("-s", n1, "put", "demo:k", "v2").code == 0  # 2 of 3: quorum holds

    assert cli("cluster", "kill", "n2", "--dir", d).code == 0
    lost = cli("-s", n1, "--consistency", "quorum", "put", "demo:k", "v3")
    assert lost.code == 4, lost
    assert lost.err.startswith("twistkv: ") and "UNAVAILABLE" in lost.err
    assert lost.err.count("\n") == 1
    one = cli("-s", n1, "--consistency", "one", "get", "demo:k")
    assert one.code == 0 and one.out in ("v2\n", "v3\n")

    assert cli("cluster", "kill", "n3", "--dir", d).code == 5  # not running: says so

    restarted = cli("cluster", "restart", "n2", "--dir", d)
    assert restarted.code == 0, restarted
    assert f"127.0.0.1:{base + 1}" in restarted.out
    assert cli("-s", n1, "--consistency", "quorum", "put", "demo:k", "v4").code == 0
    assert cli("cluster", "restart", "n3", "--dir", d).code == 0
    assert cli("-s", f"127.0.0.1:{base + 2}", "get", "demo:k").out == "v4\n"

    logs = cli("cluster", "logs", "n1", "-n", "5", "--dir", d)
    assert logs.code == 0 and len(logs.out.splitlines()) == 5
    followed = cli("cluster", "logs", "-f", "--for", "0.3", "-n", "1", "--dir", d)
    assert followed.code == 0
    assert {line.split(" | ")[0].strip() for line in followed.out.splitlines()} == {
        "n1", "n2", "n3"}

    final = _pids(launcher_dir)
    down = cli("cluster", "down", "--dir", d)
    assert down.code == 0, down
    assert "stopped (SIGTERM" in down.out
    for pid in final.values():
        assert not _alive(pid)
    assert _pids(launcher_dir) == {}
    assert _kvnodes(launcher_dir) == {}
    assert "no node was running" in cli("cluster", "down", "--dir", d).out


def test_down_after_an_interrupted_up(launcher_dir: Path, cli: Cli) -> None:
    """`up` killed mid-way (SIGKILL, no cleanup) leaves detached nodes: `down` stops them all."""
    base = free_base_port(3)
    proc = subprocess.Popen(
        [sys.executable, "-m", "twistkv.cli", "cluster", "up", "-n", "3", "--base-port",
         str(base), "--storage", "memory", "--dir", str(launcher_dir), "--wait", "60"],
        cwd=REPO_ROOT, env=node_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while len(_pids(launcher_dir)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    pids = _pids(launcher_dir)
    assert len(pids) == 3, pids
    assert any(_alive(pid) for pid in pids.values())  # the nodes outlived the launcher
    down = cli("cluster", "down", "--dir", str(launcher_dir), "--grace", "5")
    assert down.code == 0, down
    for pid in pids.values():
        assert not _alive(pid)
    assert _kvnodes(launcher_dir) == {}


def test_failed_up_stops_what_it_started(cli: Cli, launcher_dir: Path) -> None:
    """A node that cannot start fails `up` with one line naming why; nothing keeps running."""
    base = free_base_port(2)
    result = cli("cluster", "up", "-n", "2", "--base-port", str(base), "--storage", "memory",
                 "--dir", str(launcher_dir), "--node-args=--no-such-option")
    assert result.code == 5
    assert result.err.count("\n") == 1 and "--no-such-option" in result.err
    assert "n1 exited during start-up" in result.err
    assert _pids(launcher_dir) == {}
    assert _kvnodes(launcher_dir) == {}
    state = _cluster.load_state(launcher_dir)
    assert all(n.pid is None for n in state.nodes)
