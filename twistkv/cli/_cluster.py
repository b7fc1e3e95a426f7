"""C{twistkv cluster}: a local cluster of real C{twistd -n kvnode} processes (seed 000's demo).

Layout under C{--dir} (default: the current directory)::

    run/cluster.json     ports, ids, command lines and pids: every subcommand reads it
    run/<id>.pid         one per running node
    data/<id>/           the node's data dir (kept by `down`; `down --purge` removes it)
    logs/<id>/twistd.out the node's stdout and stderr; logs/<id>/node.jsonl its JSON log

Nodes are detached: each runs in its own session and process group, so closing the
terminal or interrupting the CLI does not stop them; only C{down}, C{kill} and
C{restart} do. C{up} records each node in the state file the moment it is spawned, so
C{down} finds every process it started even after a failed or interrupted C{up} (which
also stops its own nodes before it returns). Before signalling a pid the launcher checks
it is still that node (C{/proc/<pid>/cmdline} names C{kvnode} and its node id), so a
recycled pid is never signalled.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from twistkv.cli._client import Address, command, connect
from twistkv.cli._data import fetch_members
from twistkv.cli._errors import CLIError, ServerError, UsageError
from twistkv.cli._output import Outcome, format_seconds, table

__all__ = [
    "add_parser",
    "ClusterState",
    "NodeSpec",
    "plan",
    "load_state",
    "pid_alive",
    "up",
    "down",
    "node_argv",
]

STATE_VERSION = 1
#: Default base ports: client 7001.., peer 7101.., http 8001...
BASE_PORT = 7001
PEER_OFFSET = 100
HTTP_OFFSET = 1000
#: Seconds `up` and `restart` wait for every node to see every other alive.
DEFAULT_WAIT = 30.0
#: Seconds `down` and `restart` wait after SIGTERM before SIGKILL.
DEFAULT_GRACE = 10.0

#: Popen objects of nodes this process started, kept so they can be reaped (no zombies
#: when the CLI runs in-process, e.g. under pytest) and never garbage-collected running.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
#: Exit codes of reaped children, by pid (for error messages).
_EXIT_CODES: dict[int, int] = {}

#: The kvnode plugin reads these as defaults; a launcher node must not inherit them.
_PLUGIN_ENV = ("PORT", "PEERS", "NODE_ID")


@dataclass
class NodeSpec:
    """One node of the local cluster: where it listens and how it is started."""

    id: str
    client_port: int
    peer_port: int
    http_port: int
    argv: list[str]
    pid: int | None = None
    started_at: float | None = None

    def client(self, host: str) -> str:
        return f"{host}:{self.client_port}"

    def peer(self, host: str) -> str:
        return f"{host}:{self.peer_port}"

    def http(self, host: str) -> str:
        return f"{host}:{self.http_port}"


@dataclass
class ClusterState:
    """run/cluster.json."""

    dir: Path
    host: str
    base_port: int
    storage: str
    nodes: list[NodeSpec] = field(default_factory=list)
    version: int = STATE_VERSION

    @property
    def run_dir(self) -> Path:
        return self.dir / "run"

    @property
    def path(self) -> Path:
        return self.run_dir / "cluster.json"

    def node(self, node_id: str) -> NodeSpec:
        for n in self.nodes:
            if n.id == node_id:
                return n
        known = ", ".join(n.id for n in self.nodes) or "none"
        raise UsageError(f"no node {node_id!r} in {self.path} (nodes: {known})")

    def out_path(self, node: NodeSpec) -> Path:
        return self.dir / "logs" / node.id / "twistd.out"

    def pid_path(self, node: NodeSpec) -> Path:
        return self.run_dir / f"{node.id}.pid"

    def save(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        data = {
            "version": self.version, "host": self.host, "base_port": self.base_port,
            "storage": self.storage, "dir": str(self.dir),
            "nodes": [asdict(n) for n in self.nodes],
        }
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, self.path)
        for n in self.nodes:
            pid_file = self.pid_path(n)
            if n.pid:
                tmp_pid = pid_file.with_suffix(".pid.tmp")
                tmp_pid.write_text(f"{n.pid}\n")
                os.replace(tmp_pid, pid_file)  # readers never see a half-written pid file
            else:
                pid_file.unlink(missing_ok=True)

    def to_json(self) -> dict[str, Any]:
        return {
            "dir": str(self.dir), "host": self.host, "storage": self.storage,
            "nodes": [{
                "id": n.id, "pid": n.pid, "running": pid_alive(n.pid, n.id),
                "client": n.client(self.host), "peer": n.peer(self.host),
                "http": f"http://{n.http(self.host)}/", "log": str(self.out_path(n)),
            } for n in self.nodes],
        }


def load_state(directory: Path) -> ClusterState:
    """The state in C{directory}/run/cluster.json (a usage error if there is none)."""
    path = directory / "run" / "cluster.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(
            f"no cluster in {directory} ({path} does not exist): start one with "
            "'twistkv cluster up -n 3'") from None
    except (OSError, ValueError) as exc:
        raise ServerError(f"cannot read {path}: {exc}") from None
    return ClusterState(
        dir=directory, host=raw["host"], base_port=raw["base_port"], storage=raw["storage"],
        nodes=[NodeSpec(**n) for n in raw["nodes"]], version=raw.get("version", 1),
    )


# -- processes ----------------------------------------------------------------------


def twistd_command() -> list[str]:
    """The twistd of this Python environment (as the integration tests use)."""
    beside = Path(sys.executable).parent / "twistd"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("twistd")
    if found:
        return [found]
    return [sys.executable, "-c",
            "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"]


def node_argv(node_id: str, host: str, client: int, peer: int, http: int, storage: str,
              seeds: list[str], extra: list[str]) -> list[str]:
    """The full command line of one node (paths relative to the cluster dir)."""
    argv = [
        *twistd_command(), "-n", "--pidfile=", "kvnode",
        "--node-id", node_id,
        "--data-dir", f"data/{node_id}",
        "--log-dir", f"logs/{node_id}",
        "--listen", f"tcp:{client}:interface={host}",
        "--peer-listen", f"tcp:{peer}:interface={host}",
        "--http", f"tcp:{http}:interface={host}",
        "--storage", storage,
    ]
    if seeds:
        argv += ["--seeds", ",".join(seeds)]
    return argv + extra


def plan(directory: Path, count: int, base_port: int = BASE_PORT, host: str = "127.0.0.1",
         storage: str = "rocksdb", extra: list[str] | None = None) -> ClusterState:
    """The cluster C{up} would start: n1..nN, client/peer/http ports, n2.. seeded from n1."""
    if count < 1:
        raise UsageError("-n must be at least 1")
    if not (0 < base_port and base_port + HTTP_OFFSET + count - 1 < 65536):
        raise UsageError(f"--base-port {base_port} leaves no room for {count} nodes")
    nodes = []
    first_peer = f"{host}:{base_port + PEER_OFFSET}"
    for i in range(count):
        node_id = f"n{i + 1}"
        client, peer, http = base_port + i, base_port + PEER_OFFSET + i, base_port + HTTP_OFFSET + i
        seeds = [first_peer] if i else []
        nodes.append(NodeSpec(node_id, client, peer, http,
                              node_argv(node_id, host, client, peer, http, storage, seeds,
                                        list(extra or []))))
    return ClusterState(dir=directory, host=host, base_port=base_port, storage=storage,
                        nodes=nodes)


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return []
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def _exists(pid: int) -> bool:
    """Whether C{pid} is a process that has not finished exiting (zombies do not count;
    one that is our child is reaped)."""
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        _EXIT_CODES[pid] = child.returncode
        del _CHILDREN[pid]
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if _zombie(pid):
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        return False
    return True


def pid_alive(pid: int | None, node_id: str | None = None) -> bool:
    """Whether C{pid} runs (not a zombie) and, where /proc tells, is C{node_id}'s kvnode."""
    if not pid or not _exists(pid):
        return False
    argv = _cmdline(pid)
    if argv is None or not Path("/proc").is_dir():
        return True  # no /proc: trust the pid file
    if not argv:
        return True  # exiting: its memory is gone but it is not a zombie yet
    if "kvnode" not in argv:
        return False
    if node_id is not None:
        return any(a == "--node-id" and b == node_id for a, b in zip(argv, argv[1:], strict=False))
    return True


def _signal(pid: int, sig: int) -> None:
    """C{sig} to the node's process group (its own session), else to the pid alone."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _wait_gone(pids: dict[str, int], seconds: float) -> set[str]:
    """Wait up to C{seconds} for the processes to exit; the ids still running."""
    deadline = time.monotonic() + seconds
    left = dict(pids)
    while left:
        left = {n: p for n, p in left.items() if _exists(p)}
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    return set(left)


def stop_pids(pids: dict[str, int], grace: float) -> dict[str, str]:
    """SIGTERM (after SIGCONT), then SIGKILL after C{grace}; how each one ended."""
    result: dict[str, str] = {}
    started = time.monotonic()
    live = {n: p for n, p in pids.items() if pid_alive(p, n)}
    for node in pids:
        if node not in live:
            result[node] = "was not running"
    for pid in live.values():
        _signal(pid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        _signal(pid, signal.SIGTERM)
    stubborn = _wait_gone(live, grace)
    for node in live:
        if node not in stubborn:
            result[node] = f"stopped (SIGTERM, {time.monotonic() - started:.1f}s)"
    for node in stubborn:
        _signal(live[node], signal.SIGKILL)
    still = _wait_gone({n: live[n] for n in stubborn}, 5.0)
    for node in stubborn:
        result[node] = ("did not die, even after SIGKILL" if node in still
                        else f"killed (SIGKILL after {grace:.0f}s grace)")
    return result


def with_seeds(argv: list[str], seeds: list[str]) -> list[str]:
    """C{argv} with its C{--seeds} replaced by C{seeds} (removed if empty)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--seeds":
            skip = True
            continue
        if arg.startswith("--seeds="):
            continue
        out.append(arg)
    return out + (["--seeds", ",".join(seeds)] if seeds else [])


def _spawn(state: ClusterState, node: NodeSpec, argv: list[str] | None = None) -> None:
    argv = argv or node.argv
    out_path = state.out_path(node)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    (state.dir / "data" / node.id).mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in _PLUGIN_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    with open(out_path, "ab") as out:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        out.write(f"\n===== {stamp} twistkv cluster: {shlex.join(argv)}\n".encode())
        out.flush()
        try:
            proc = subprocess.Popen(
                argv, cwd=state.dir, env=env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
            )
        except OSError as exc:
            raise ServerError(f"cannot start {node.id} ({argv[0]}): {exc.strerror}") from None
    _CHILDREN[proc.pid] = proc
    node.pid = proc.pid
    node.started_at = time.time()
    state.save()


def _tail(path: Path, lines: int) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return data.splitlines()[-lines:] if lines else []


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _ping(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
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


#: A key no one writes: `up` reads it at CONSISTENCY ALL through each node to learn that the
#: node has joined and reaches its replicas (no command reports "joined" yet).
READY_PROBE_KEY = "__twistkv_launcher_ready__"


def _serves(state: ClusterState, node: NodeSpec, level: str, timeout: float = 2.0) -> bool:
    """Whether C{node} coordinates a read at C{level} (a node that has not joined refuses)."""
    client = connect(Address(state.host, node.client_port), timeout=timeout, consistency=level)
    try:
        command(client, "GET", READY_PROBE_KEY)
        return True
    except Exception:  # noqa: BLE001 - "not yet"
        return False
    finally:
        client.close()


def _view(state: ClusterState, node: NodeSpec, timeout: float = 1.0) -> dict[str, str] | None:
    """C{node}'s MEMBERS as id -> state, or None if it does not answer."""
    client = connect(Address(state.host, node.client_port), timeout=timeout)
    try:
        return {str(m["id"]): str(m["state"]) for m in fetch_members(client, node.id)}
    except CLIError:
        return None
    finally:
        client.close()


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """One launcher command at a time per cluster dir."""
    run = state_dir / "run"
    run.mkdir(parents=True, exist_ok=True)
    with open(run / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ServerError(f"another 'twistkv cluster' command is running in {state_dir}") \
                from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class _Progress:
    """One rewritable status line on stderr, only on a terminal."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.on = self.stream.isatty()

    def show(self, message: str) -> None:
        if self.on:
            self.stream.write("\r\033[K" + message)
            self.stream.flush()

    def done(self) -> None:
        if self.on:
            self.stream.write("\r\033[K")
            self.stream.flush()


def wait_converged(state: ClusterState, nodes: list[NodeSpec], expect: list[NodeSpec],
                   seconds: float, progress: _Progress | None = None, level: str = "all") -> None:
    """Wait until each of C{nodes} answers, sees every node of C{expect} alive and
    coordinates a read at C{level}: ALL after `up` (it has joined and reaches every
    replica), ONE after `restart` (it has joined; other nodes may be down).

    Fails at once (L{ServerError}, naming the last line of its output) if a process exits.
    """
    deadline = time.monotonic() + seconds
    want = {n.id for n in expect}
    while True:
        for n in nodes:
            if not pid_alive(n.pid, n.id):
                status = _EXIT_CODES.get(n.pid or 0)
                code = "" if status is None else f" with exit code {status}"
                last = [line.strip() for line in _tail(state.out_path(n), 20) if line.strip()]
                reason = f": {last[-1]}" if last else ""
                raise ServerError(f"{n.id} exited during start-up{code}{reason} "
                                  f"(see {state.out_path(n)})")
        answering = [n for n in nodes if _ping(state.host, n.client_port)]
        converged = 0
        views: dict[str, dict[str, str] | None] = {}
        if len(answering) == len(nodes):
            for n in nodes:
                views[n.id] = view = _view(state, n)
                if view is not None and all(view.get(w) == "alive" for w in want):
                    converged += 1
            if converged == len(nodes):
                serving = [n.id for n in nodes if _serves(state, n, level)]
                if len(serving) == len(nodes):
                    return
                views = {n.id: {"serving": "no"} for n in nodes if n.id not in serving}
        if progress:
            progress.show(f"waiting: {len(answering)}/{len(nodes)} nodes answer, "
                          f"{converged}/{len(nodes)} see all {len(want)} alive ...")
        if time.monotonic() >= deadline:
            missing = [n.id for n in nodes if n not in answering]
            why = (f"{', '.join(missing)} did not answer PING" if missing else
                   "the nodes did not all join: " + "; ".join(
                       f"{k}: {v}" for k, v in views.items()))
            raise ServerError(f"the cluster was not ready within {seconds:.0f}s: {why}")
        time.sleep(0.2)


# -- subcommands ---------------------------------------------------------------------


def _dir(ns: argparse.Namespace) -> Path:
    return Path(ns.dir).expanduser().resolve()


def up(ns: argparse.Namespace) -> Outcome:
    directory = _dir(ns)
    directory.mkdir(parents=True, exist_ok=True)
    extra = shlex.split(ns.node_args) if ns.node_args else []
    with _locked(directory):
        recorded: dict[str, int] = {}
        with contextlib.suppress(UsageError):
            recorded = {n.id: n.pid for n in load_state(directory).nodes if n.pid}
        for pid_file in (directory / "run").glob("*.pid"):
            with contextlib.suppress(OSError, ValueError):
                recorded.setdefault(pid_file.stem, int(pid_file.read_text().strip()))
        running = [f"{node} (pid {pid})" for node, pid in sorted(recorded.items())
                   if pid_alive(pid, node)]
        if running:
            raise ServerError(
                f"a cluster is already running in {directory}: {', '.join(running)}; "
                "stop it first with 'twistkv cluster down'")
        state = plan(directory, ns.nodes, ns.base_port, ns.host, ns.storage, extra)
        busy = [f"{port} ({n.id} {kind})" for n in state.nodes
                for kind, port in (("client", n.client_port), ("peer", n.peer_port),
                                   ("http", n.http_port))
                if not _port_free(state.host, port)]
        if busy:
            raise ServerError(f"ports in use on {state.host}: {', '.join(busy)}; "
                              "choose another --base-port")
        progress = _Progress()
        started = time.monotonic()
        state.save()
        try:
            # The seed first: the others join through it at once instead of retrying.
            first, rest = state.nodes[0], state.nodes[1:]
            progress.show(f"starting {first.id} ...")
            _spawn(state, first)
            wait_converged(state, [first], [first], ns.wait, progress, level="one")
            for n in rest:
                progress.show(f"starting {n.id} ...")
                _spawn(state, n)
            remaining = max(1.0, ns.wait - (time.monotonic() - started))
            wait_converged(state, state.nodes, state.nodes, remaining, progress)
        except BaseException:
            progress.done()
            if not ns.keep_on_failure:
                result = stop_pids({n.id: n.pid for n in state.nodes if n.pid}, 2.0)
                for n in state.nodes:  # a node that would not die stays recorded for `down`
                    if not result.get(n.id, "").startswith("did not die"):
                        n.pid = None
                state.save()
            raise
        progress.done()
    elapsed = time.monotonic() - started
    data = state.to_json()
    first = state.nodes[0]
    here = "" if directory == Path.cwd().resolve() else f" --dir {shlex.quote(str(directory))}"
    lines = [
        f"twistkv cluster of {len(state.nodes)} nodes is up in {directory} "
        f"(storage {state.storage}); all joined and alive after {elapsed:.1f}s",
        "",
        table(["NODE", "PID", "CLIENT", "PEER", "DASHBOARD"],
              [[n.id, n.pid, n.client(state.host), n.peer(state.host),
                f"http://{n.http(state.host)}/"] for n in state.nodes], right=[1]),
        "",
        f"Try:   twistkv --server {first.client(state.host)} status",
        f"       redis-cli -p {first.client_port}      curl http://{first.http(state.host)}/cluster",
        f"Logs:  twistkv cluster logs {first.id} -f{here}",
        f"Demo:  twistkv cluster kill n{len(state.nodes)}{here}; then: cluster restart "
        f"n{len(state.nodes)}{here}",
        f"Stop:  twistkv cluster down{here}",
    ]
    return Outcome(data, "\n".join(lines))


def down(ns: argparse.Namespace) -> Outcome:
    directory = _dir(ns)
    with _locked(directory):
        try:
            state = load_state(directory)
        except UsageError:
            state = None
        pids: dict[str, int] = {}
        if state is not None:
            pids = {n.id: n.pid for n in state.nodes if n.pid}
        run = directory / "run"
        for pid_file in sorted(run.glob("*.pid")) if run.is_dir() else []:
            with contextlib.suppress(OSError, ValueError):
                pids.setdefault(pid_file.stem, int(pid_file.read_text().strip()))
        if state is None and not pids:
            return Outcome({"stopped": {}}, f"no cluster in {directory}: nothing to stop")
        result = stop_pids(pids, ns.grace)
        for node_id in pids:
            (run / f"{node_id}.pid").unlink(missing_ok=True)
        if state is not None:
            for n in state.nodes:
                n.pid = None
            state.save()
        failed = [n for n, how in result.items() if how.startswith("did not die")]
        purged = []
        if ns.purge and not failed:
            ids = [n.id for n in state.nodes] if state is not None else list(pids)
            for node_id in ids:
                for sub in ("data", "logs"):
                    path = directory / sub / node_id
                    if path.exists():
                        shutil.rmtree(path, ignore_errors=True)
                        purged.append(str(path))
            shutil.rmtree(run, ignore_errors=True)
    body = table(["NODE", "PID", "RESULT"],
                 [[n, pids[n], result[n]] for n in sorted(result)], right=[1]) if result else \
        "no node was running"
    note = ("\nremoved " + ", ".join(purged)) if purged else \
        ("" if ns.purge else f"\ndata and logs are kept in {directory}/data and "
         f"{directory}/logs ('down --purge' removes them)")
    if failed:
        raise ServerError(f"could not stop {', '.join(failed)}")
    return Outcome({"stopped": result, "purged": purged}, body + note)


def status(ns: argparse.Namespace) -> Outcome:
    state = load_state(_dir(ns))
    views: dict[str, dict[str, str]] = {}
    running = {n.id: pid_alive(n.pid, n.id) for n in state.nodes}
    observer = None
    for n in state.nodes:
        if running[n.id]:
            view = _view(state, n, timeout=min(ns.timeout, 2.0))
            if view is not None:
                views[n.id] = view
                observer = observer or n.id
    rows = []
    data = []
    for n in state.nodes:
        seen = views.get(observer, {}).get(n.id) if observer else None
        answers = n.id in views
        uptime = time.time() - n.started_at if running[n.id] and n.started_at else None
        data.append({"id": n.id, "pid": n.pid, "running": running[n.id], "answers": answers,
                     "membership": seen, "seen_by": observer, "client": n.client(state.host),
                     "http": f"http://{n.http(state.host)}/", "uptime_s": uptime})
        rows.append([n.id, n.pid or "-", "running" if running[n.id] else "stopped",
                     "yes" if answers else "no", (seen or "-").upper(),
                     format_seconds(uptime), n.client(state.host), f"http://{n.http(state.host)}/"])
    body = table(["NODE", "PID", "PROCESS", "ANSWERS", "MEMBERSHIP", "UP", "CLIENT", "DASHBOARD"],
                 rows, right=[1])
    note = (f"\nMEMBERSHIP as seen by {observer}" if observer
            else "\nno node answers: start with 'twistkv cluster up' or 'cluster restart <node>'")
    return Outcome({"dir": str(state.dir), "nodes": data}, body + note)


def _follow(files: dict[str, Path], lines: int, follow: bool, seconds: float | None,
            out: IO[str]) -> None:
    prefix_width = max(len(n) for n in files)
    many = len(files) > 1

    def emit(node: str, line: str) -> None:
        out.write(f"{node:<{prefix_width}} | {line}\n" if many else f"{line}\n")

    positions: dict[str, int] = {}
    for node, path in files.items():
        for line in _tail(path, lines):
            emit(node, line)
        positions[node] = path.stat().st_size if path.exists() else 0
    out.flush()
    if not follow:
        return
    deadline = None if seconds is None else time.monotonic() + seconds
    partial: dict[str, str] = {}
    while deadline is None or time.monotonic() < deadline:
        for node, path in files.items():
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            if size < positions[node]:  # truncated or replaced
                positions[node] = 0
            if size > positions[node]:
                with open(path, "rb") as f:
                    f.seek(positions[node])
                    chunk = f.read(size - positions[node])
                positions[node] = size
                text = partial.pop(node, "") + chunk.decode("utf-8", errors="replace")
                *complete, rest = text.split("\n")
                if rest:
                    partial[node] = rest
                for line in complete:
                    emit(node, line)
                out.flush()
        time.sleep(0.2)


def logs(ns: argparse.Namespace) -> int:
    state = load_state(_dir(ns))
    chosen = [state.node(ns.node)] if ns.node else state.nodes
    name = "node.jsonl" if ns.jsonl else "twistd.out"
    files = {n.id: state.dir / "logs" / n.id / name for n in chosen}
    if not any(p.exists() for p in files.values()):
        raise UsageError(f"no log yet: {', '.join(str(p) for p in files.values())}")
    try:
        _follow(files, ns.lines, ns.follow, ns.follow_for, sys.stdout)
    except KeyboardInterrupt:
        pass
    return 0


_SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM, "STOP": signal.SIGSTOP,
            "CONT": signal.SIGCONT}


def kill(ns: argparse.Namespace) -> Outcome:
    directory = _dir(ns)
    with _locked(directory):
        state = load_state(directory)
        node = state.node(ns.node)
        if not pid_alive(node.pid, node.id):
            raise ServerError(f"{node.id} is not running (start it with "
                              f"'twistkv cluster restart {node.id}')")
        assert node.pid is not None
        pid = node.pid
        sig = _SIGNALS[ns.signal]
        _signal(pid, sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            still = _wait_gone({node.id: pid}, 5.0 if sig == signal.SIGKILL else ns.grace)
            if still:
                raise ServerError(f"{node.id} (pid {pid}) is still running after SIG{ns.signal}")
            node.pid = None
            state.save()
    if sig == signal.SIGKILL:
        how = (f"{node.id} (pid {pid}) killed with SIGKILL. Its peers will mark it SUSPECT within "
               "seconds and DEAD after the suspicion timeout (4 s by default); writes meant for it "
               "are kept as hints on other nodes.")
    elif sig == signal.SIGTERM:
        how = f"{node.id} (pid {pid}) stopped with SIGTERM."
    elif sig == signal.SIGSTOP:
        how = (f"{node.id} (pid {pid}) paused with SIGSTOP: it still accepts connections but "
               f"answers nothing. Resume: twistkv cluster kill {node.id} --signal CONT")
    else:
        how = f"{node.id} (pid {pid}) resumed with SIGCONT."
    nxt = "" if sig in (signal.SIGSTOP, signal.SIGCONT) else \
        f"\nWatch: twistkv cluster status    Bring it back: twistkv cluster restart {node.id}"
    return Outcome({"node": node.id, "pid": pid, "signal": ns.signal}, how + nxt)


def restart(ns: argparse.Namespace) -> Outcome:
    directory = _dir(ns)
    with _locked(directory):
        state = load_state(directory)
        node = state.node(ns.node)
        how = "started"
        if node.pid and pid_alive(node.pid, node.id):
            result = stop_pids({node.id: node.pid}, ns.grace)
            how = f"{result[node.id]}, then started"
        node.pid = None
        state.save()
        started = time.monotonic()
        progress = _Progress()
        others = [n for n in state.nodes if n is not node and pid_alive(n.pid, n.id)]
        # Seeded from every running node: it rejoins even if its usual seed is down, and
        # even with --storage memory (which forgets the ring it knew).
        seeds = [n.peer(state.host) for n in others]
        _spawn(state, node, with_seeds(node.argv, seeds) if seeds else node.argv)
        # With a majority running, wait until every running node reaches the others for a
        # QUORUM read (peers reconnect to the restarted node); else until it has joined.
        replicas = min(3, len(state.nodes))
        level = "quorum" if len(others) + 1 >= replicas // 2 + 1 else "one"
        try:
            wait_converged(state, [node, *others], [node, *others], ns.wait, progress,
                           level=level)
        finally:
            progress.done()
    return Outcome(
        {"node": node.id, "pid": node.pid, "client": node.client(state.host)},
        f"{node.id}: {how} as pid {node.pid} on {node.client(state.host)} (same ports and "
        f"data dir); {len(others) + 1} running nodes see it alive after "
        f"{time.monotonic() - started:.1f}s",
    )


def add_parser(add: Callable[..., argparse.ArgumentParser],
               parser_class: type[argparse.ArgumentParser],
               common: argparse.ArgumentParser) -> None:
    p = add("cluster", "run a local cluster of twistd kvnode processes (up/down/status/logs/"
                       "kill/restart)")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True,
                           parser_class=parser_class)

    def action(name: str, help_text: str, fn: Callable[[argparse.Namespace], Any]
               ) -> argparse.ArgumentParser:
        a = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
        a.add_argument("--dir", default=".", metavar="DIR",
                       help="cluster directory: run/, data/, logs/ [default: .]")
        a.set_defaults(handler=fn)
        return a

    a = action("up", "start N nodes and wait until each sees all alive", up)
    a.add_argument("-n", "--nodes", type=int, default=3, metavar="N", help="[default: 3]")
    a.add_argument("--base-port", type=int, default=BASE_PORT, metavar="PORT",
                   help="client ports PORT.., peer PORT+100.., http PORT+1000.. [default: 7001]")
    a.add_argument("--storage", choices=("rocksdb", "memory"), default="rocksdb",
                   help="[default: rocksdb]")
    a.add_argument("--host", default="127.0.0.1", help="interface to listen on [127.0.0.1]")
    a.add_argument("--wait", type=float, default=DEFAULT_WAIT, metavar="SECONDS",
                   help="how long to wait for the cluster to form [default: 30]")
    a.add_argument("--node-args", default="", metavar="ARGS",
                   help="extra kvnode options for every node, e.g. \"--fsync never\"")
    a.add_argument("--keep-on-failure", action="store_true",
                   help="leave the nodes running if the cluster does not form (to debug)")
    a = action("down", "stop every node (SIGTERM, SIGKILL after --grace)", down)
    a.add_argument("--grace", type=float, default=DEFAULT_GRACE, metavar="SECONDS",
                   help="[default: 10]")
    a.add_argument("--purge", action="store_true", help="also remove data/<id>, logs/<id>, run/")
    action("status", "processes and membership of the local cluster", status)
    a = action("logs", "show (and follow) a node's output, or all nodes'", logs)
    a.add_argument("node", nargs="?", metavar="NODE", help="node id [default: all]")
    a.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    a.add_argument("--for", dest="follow_for", type=float, default=None, metavar="SECONDS",
                   help="with -f: stop after this long")
    a.add_argument("-n", "--lines", type=int, default=20, metavar="N", help="[default: 20]")
    a.add_argument("--jsonl", action="store_true",
                   help="the node's JSON-lines log (node.jsonl) instead of twistd.out")
    a = action("kill", "signal one node: SIGKILL by default (the failure demo)", kill)
    a.add_argument("node", metavar="NODE")
    a.add_argument("--signal", choices=sorted(_SIGNALS), default="KILL", type=str.upper,
                   help="KILL (crash), TERM (clean stop), STOP (pause), CONT (resume)")
    a.add_argument("--grace", type=float, default=DEFAULT_GRACE, help=argparse.SUPPRESS)
    a = action("restart", "stop (if running) and start a node on the same ports and data",
               restart)
    a.add_argument("node", metavar="NODE")
    a.add_argument("--grace", type=float, default=DEFAULT_GRACE, metavar="SECONDS",
                   help="[default: 10]")
    a.add_argument("--wait", type=float, default=DEFAULT_WAIT, metavar="SECONDS",
                   help="[default: 30]")

