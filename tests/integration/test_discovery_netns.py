"""LAN discovery end to end: real ``twistd kvnode --discovery udp`` processes in network
namespaces on one bridge (docs/discovery.md, /work/shared/FAULTS.md), no seeds.

Hosts 1-3 share a cluster secret and must find each other by broadcast alone: MEMBERS on
each shows all three alive, and a SET on one is read on another. Host 4 runs the same
cluster name with another secret: its announces fail authentication, so it stays alone.

Every address used is 10.77.0.x inside namespaces this test creates (a unique prefix per
run) and deletes in teardown; nothing is sent from the root namespace. Each host gets a
default route on its veth so that the default broadcast address 255.255.255.255 works as on
a laptop; the bridge has no uplink, so nothing can leave it. Skipped unless run as root
where ``ip netns add`` works, and until ``twistd kvnode`` has the ``--discovery`` option.
"""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from .conftest import REPO_ROOT, TWISTD, node_env, wait_until

pytestmark = pytest.mark.integration

HOSTS = 4
CLIENT_PORT = 7379
PEER_PORT = 7380
SECRET = "discovery-test-secret-0123456789"
#: Bounds: one `ip` call, a node's start, the whole discovery wait.
IP_TIMEOUT = 10.0
START_TIMEOUT = 20.0
DISCOVERY_TIMEOUT = 40.0
STOP_TIMEOUT = 10.0


def _discovery_option_missing() -> str | None:
    from twistkv.tap import Options

    names = {row[0] for row in Options.optParameters}
    if "discovery" not in names:
        return ("twistd kvnode has no --discovery option yet: the lead wires "
                "twistkv.node.discovery into twistkv/tap.py and twistkv/node/service.py "
                "(see docs/discovery.md)")
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT,
                          check=check)


class Lan:
    """A bridge namespace and HOSTS host namespaces, host i at 10.77.0.i/24."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.bridge = f"{prefix}br"
        self.hosts = [f"{prefix}h{i}" for i in range(1, HOSTS + 1)]
        self.created: list[str] = []

    def create(self) -> None:
        _ip("netns", "add", self.bridge)
        self.created.append(self.bridge)
        _ip("-n", self.bridge, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.bridge, "link", "set", "br0", "up")
        for i, host in enumerate(self.hosts, start=1):
            _ip("netns", "add", host)
            self.created.append(host)
            _ip("-n", self.bridge, "link", "add", f"vn{i}", "type", "veth", "peer", "name",
                "eth0", "netns", host)
            _ip("-n", self.bridge, "link", "set", f"vn{i}", "master", "br0")
            _ip("-n", self.bridge, "link", "set", f"vn{i}", "up")
            _ip("-n", host, "addr", "add", f"10.77.0.{i}/24", "dev", "eth0")
            _ip("-n", host, "link", "set", "eth0", "up")
            _ip("-n", host, "link", "set", "lo", "up")
            # 255.255.255.255 needs a route; this one only reaches the isolated bridge.
            _ip("-n", host, "route", "add", "default", "dev", "eth0")

    def delete(self) -> None:
        for name in reversed(self.created):
            _ip("netns", "del", name, check=False)
        self.created.clear()


@pytest.fixture
def lan() -> Iterator[Lan]:
    missing = _discovery_option_missing()
    if missing:
        pytest.skip(missing)
    if not sys.platform.startswith("linux") or shutil.which("ip") is None:
        pytest.skip("network namespaces need Linux and iproute2's ip")
    network = Lan(f"tkd{secrets.token_hex(3)}")
    try:
        probe = _ip("netns", "add", network.bridge, check=False)
        if probe.returncode != 0:
            pytest.skip(f"ip netns add is not permitted here: {probe.stderr.strip()}")
        network.created.append(network.bridge)
        network.delete()
        network.create()
        yield network
    finally:
        network.delete()


class NsNode:
    """One twistd kvnode inside a host namespace."""

    def __init__(self, lan: Lan, index: int, base: Path, extra: Sequence[str]) -> None:
        self.index = index
        self.ns = lan.hosts[index - 1]
        self.ip = f"10.77.0.{index}"
        self.node_id = f"d{index}"
        self.dir = base / self.node_id
        self.dir.mkdir(parents=True)
        self.output_path = self.dir / "out.log"
        self.argv = [
            "ip", "netns", "exec", self.ns, str(TWISTD), "-n", "--pidfile=", "kvnode",
            "--node-id", self.node_id, "--storage", "memory",
            "--data-dir", str(self.dir / "data"), "--log-dir", str(self.dir / "logs"),
            "--listen", f"tcp:{CLIENT_PORT}:interface={self.ip}", "--http", "none",
            "--peer-listen", f"tcp:{PEER_PORT}:interface={self.ip}",
            "--discovery", "udp", "--discovery-interval", "1", *extra,
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.output_path, "wb") as out:
            self.proc = subprocess.Popen(self.argv, cwd=REPO_ROOT, env=node_env(),
                                         stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def command(self, *args: str, timeout: float = 5.0) -> Any:
        """One command from inside this node's namespace; the decoded reply."""
        script = (
            "import json, sys, redis\n"
            "c = redis.Redis(host=sys.argv[1], port=int(sys.argv[2]), decode_responses=True,"
            " socket_timeout=3, socket_connect_timeout=3)\n"
            "print(json.dumps(c.execute_command(*sys.argv[3:]), default=str))\n"
        )
        done = subprocess.run(
            ["ip", "netns", "exec", self.ns, sys.executable, "-c", script, self.ip,
             str(CLIENT_PORT), *args],
            capture_output=True, text=True, timeout=timeout, env=node_env(), check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip().splitlines()[-1:] or done.returncode)
        return json.loads(done.stdout)

    def members(self) -> dict[str, str]:
        return {row["id"]: row["state"] for row in self.command("MEMBERS")}

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT)

    def output(self) -> str:
        try:
            return self.output_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""


def _tails(nodes: Sequence[NsNode]) -> str:
    return "\n".join(
        f"----- {n.node_id} ({n.ns}) -----\n" + "\n".join(n.output().splitlines()[-40:])
        for n in nodes
    )


def test_nodes_on_one_lan_find_each_other_without_seeds(lan: Lan, tmp_path: Path) -> None:
    secret = ["--cluster-secret", SECRET]
    nodes = [NsNode(lan, i, tmp_path, secret) for i in (1, 2, 3)]
    stranger = NsNode(lan, 4, tmp_path, ["--cluster-secret", "another-secret-0123456789abc"])
    everyone = [*nodes, stranger]
    try:
        for node in everyone:
            node.start()
        for node in everyone:
            wait_until(lambda n=node: (n.running() or _fail(n)) and n.command("PING"),
                       START_TIMEOUT, f"{node.node_id} answers PING", interval=0.25)
        wanted = {n.node_id: "alive" for n in nodes}
        try:
            wait_until(lambda: all(n.members() == wanted for n in nodes), DISCOVERY_TIMEOUT,
                       "MEMBERS on d1..d3 lists d1, d2 and d3 alive", interval=0.5)
            assert stranger.members() == {"d4": "alive"}
            wait_until(lambda: nodes[0].command("SET", "lan-key", "found") in ("OK", True),
                       START_TIMEOUT, "SET on d1", interval=0.5)
            assert wait_until(lambda: nodes[2].command("GET", "lan-key") == "found",
                              START_TIMEOUT, "GET on d3", interval=0.5)
        except AssertionError as error:
            raise AssertionError(f"{error}\n{_tails(everyone)}") from None
        logs = "".join(n.output() for n in nodes)
        assert "Discovery: found" in logs, _tails(nodes)
        assert "auth_failed" in stranger.output() or "auth_failed" in logs, _tails(everyone)
    finally:
        for node in everyone:
            node.stop()


def _fail(node: NsNode) -> bool:
    raise AssertionError(f"{node.node_id} exited early\n{_tails([node])}")

