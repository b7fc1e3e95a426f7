#!/usr/bin/env python3
"""A 3-node twistkv cluster vs a single twistkv node, under the same redis-benchmark runs.

A benchmark, not a test: it never fails on a slow result. In one run it
starts every configuration on fresh processes, then measures them in turns
(with --repeat N: N rounds, each configuration once per round, the order
reversed every other round, the median run kept), after a load phase that
writes and reads the keyspace on each, so that the machine's drift in speed
falls on all of them alike:

  single   one twistkv node, --storage memory
  quorum   3 local nodes, --storage memory, defaults N=3 R=2 W=2
  one      3 local nodes, --storage memory, started with -R 1 -W 1

redis-benchmark always talks to node 1, which coordinates every request
(redis-benchmark cannot send CONSISTENCY per connection, so ONE is the
node-wide default of the "one" cluster). Each workload is
``redis-benchmark -t set,get -c 50 -r 100000 -P 1|16 --csv``. It prints ops/s,
p50/p99 and the ratio to the single-node figure of the same run, marks the
issue's target (QUORUM SET >= 0.3x single) PASS/MISS, optionally writes JSON,
and always stops everything it started (also on Ctrl-C or SIGTERM).

Run from the repository root:
  .venv/bin/python bench/cluster_compare.py [--quick] [--config single|quorum|one ...]
      [--workload p1-c50|p16-c50 ...] [--json out.json] [--repeat N]
      [--profile DIR [--profile-seconds S]]

The helpers (servers, redis-benchmark runs, CSV parsing, py-spy) come from
bench/redis_compare.py. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import redis_compare as rc  # noqa: E402 - bench/ is not a package
from redis_compare import REPO, BenchError, Server, free_port  # noqa: E402

CLUSTER_SIZE = 3
CONFIGS = ("single", "quorum", "one")
CONFIG_DESC = {
    "single": "1 node, memory",
    "quorum": "3 nodes, N3 R2 W2",
    "one": "3 nodes, N3 R1 W1",
}
WORKLOADS = ("p1-c50", "p16-c50")  # names in redis_compare.WORKLOADS (-c 50 -P 1 / -P 16)

# The issue's target: QUORUM SET ops/s >= 0.3 x the single-node SET ops/s of the same run.
TARGETS: dict[tuple[str, str], float] = {("quorum", "SET"): 0.30}


# --------------------------------------------------------------------------- RESP


class RespError(Exception):
    pass


def _read_reply(f: Any) -> Any:
    """Read one full RESP2/RESP3 reply from a binary file object."""
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed")
    kind, body = line[:1], line[1:-2]
    if kind == b"+":
        return body.decode(errors="replace")
    if kind == b"-":
        return RespError(body.decode(errors="replace"))
    if kind in (b":", b"("):
        return int(body)
    if kind == b",":
        return float(body)
    if kind == b"#":
        return body == b"t"
    if kind == b"_":
        return None
    if kind in (b"$", b"="):
        n = int(body)
        if n < 0:
            return None
        data = f.read(n + 2)
        if len(data) != n + 2:
            raise ConnectionError("connection closed")
        return data[:-2]
    if kind in (b"*", b"~", b">"):
        n = int(body)
        return None if n < 0 else [_read_reply(f) for _ in range(n)]
    if kind == b"%":
        return {_text(_read_reply(f)): _read_reply(f) for _ in range(int(body))}
    raise ConnectionError(f"unexpected RESP reply {line[:40]!r}")


def _text(v: Any) -> Any:
    return v.decode(errors="replace") if isinstance(v, bytes) else v


def command(port: int, *args: str, timeout: float = 5.0) -> Any:
    """One RESP command on a fresh connection; the full reply, errors as RespError values."""
    payload = f"*{len(args)}\r\n".encode()
    for a in args:
        b = a.encode()
        payload += b"$%d\r\n%s\r\n" % (len(b), b)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(payload)
        with s.makefile("rb") as f:
            return _read_reply(f)


def members(port: int) -> list[dict[str, Any]]:
    """MEMBERS as a list of {field: value} (accepts RESP3 maps or flat RESP2 arrays)."""
    reply = command(port, "MEMBERS")
    if isinstance(reply, RespError):
        raise BenchError(f"MEMBERS on port {port}: {reply}")
    rows = []
    for row in reply or []:
        if isinstance(row, list):
            row = {_text(k): v for k, v in zip(row[::2], row[1::2], strict=False)}
        rows.append({k: _text(v) for k, v in row.items()})
    return rows


# --------------------------------------------------------------------------- cluster


class ClusterNode(Server):
    """A cluster member: ready when it answers PING (SET needs the cluster, checked later)."""

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_error = "no answer"
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise BenchError(f"{self.label} exited with status {self.proc.returncode} "
                                 "during startup:\n" + self.log_tail())
            try:
                reply = command(self.port, "PING", timeout=2)
                if reply == "PONG":
                    return
                last_error = f"PING answered {reply!r}"
            except (OSError, ConnectionError) as exc:
                last_error = str(exc)
            time.sleep(0.2)
        raise BenchError(f"{self.label} not ready after {timeout:.0f}s ({last_error}):\n"
                         + self.log_tail())


def make_cluster(config: str, twistd: str, root: Path) -> list[ClusterNode]:
    """CLUSTER_SIZE memory nodes; nodes 2.. seed from node 1's peer port."""
    nodes: list[ClusterNode] = []
    seed_port = None
    for i in range(1, CLUSTER_SIZE + 1):
        port, http, peer = free_port(), free_port(), free_port()
        node_id = f"n{i}"
        workdir = root / f"{config}-{node_id}"
        argv = [twistd, "-n", "--pidfile=", "kvnode",
                "--node-id", node_id,
                "--data-dir", str(workdir / "data"),
                "--log-dir", str(workdir / "logs"),
                "--listen", f"tcp:{port}:interface=127.0.0.1",
                "--peer-listen", f"tcp:{peer}:interface=127.0.0.1",
                "--http", f"tcp:{http}:interface=127.0.0.1",
                "--storage", "memory", "--fsync", "never"]
        if config == "one":
            argv += ["-R", "1", "-W", "1"]
        if seed_port is None:
            seed_port = peer
        else:
            argv += ["--seeds", f"127.0.0.1:{seed_port}"]
        nodes.append(ClusterNode("twistkv", f"{config}-{node_id}", argv, port, workdir, cwd=REPO))
    return nodes


def wait_converged(nodes: list[ClusterNode], timeout: float) -> float:
    """Wait until every node's MEMBERS lists CLUSTER_SIZE alive nodes, then probe SET/GET."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    last = "no answer"
    while True:
        for node in nodes:
            if node.proc is not None and node.proc.poll() is not None:
                raise BenchError(f"{node.label} exited with status {node.proc.returncode}:\n"
                                 + node.log_tail())
        try:
            views = {node.label: members(node.port) for node in nodes}
            pending = {}
            for label, rows in views.items():
                alive = {r.get("id") for r in rows
                         if r.get("state") == "alive" and r.get("in_ring", 1) not in (0, "0")}
                if len(alive) < CLUSTER_SIZE:
                    pending[label] = sorted(f"{r.get('id')}={r.get('state')}" for r in rows)
            if not pending:
                break
            last = f"not converged: {pending}"
        except (OSError, ConnectionError) as exc:
            last = str(exc)
        if time.monotonic() > deadline:
            raise BenchError(f"cluster did not converge in {timeout:.0f}s ({last}):\n"
                             + nodes[0].log_tail())
        time.sleep(0.25)
    # The benchmark only means something if SET/GET really work through the cluster.
    value = f"hello-{time.time_ns()}"
    reply = command(nodes[0].port, "SET", "bench:probe", value)
    if reply != "OK":
        raise BenchError(f"{nodes[0].label}: SET answered {reply!r}")
    for node in nodes:
        got = None
        while time.monotonic() < deadline:
            got = command(node.port, "GET", "bench:probe")
            if got == value.encode():
                break
            time.sleep(0.2)
        else:
            raise BenchError(f"{node.label}: GET bench:probe answered {got!r}, not {value!r}")
    return time.monotonic() - t0


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) a process used so far, from /proc; None if unreadable.

    Unlike ops/s, CPU per request hardly depends on what else runs on the machine, so it
    is the figure to compare between runs on a shared box.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def cpu_per_request(nodes: list[Server], before: list[float | None], requests: int
                    ) -> list[float | None]:
    """Microseconds of CPU per request, per node, since C{before}."""
    out: list[float | None] = []
    for node, start in zip(nodes, before, strict=True):
        end = cpu_seconds(node.proc.pid) if node.proc is not None else None
        out.append(None if start is None or end is None else (end - start) / requests * 1e6)
    return out


class PeerWatch:
    """Watch the nodes run_benchmark does not (it watches node 1): death and RSS."""

    def __init__(self, nodes: list[Server], max_rss_mb: float) -> None:
        self.nodes = nodes
        self.max_rss_mb = max_rss_mb
        self.problem: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeerWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.25) and self.problem is None:
            for node in self.nodes:
                if node.proc is None:
                    continue
                if node.proc.poll() is not None:
                    self.problem = f"{node.label} exited with status {node.proc.returncode}"
                    return
                rss = rc.rss_mb(node.proc.pid)
                if rss > self.max_rss_mb:
                    self.problem = (f"{node.label} grew to {rss:.0f} MiB RSS "
                                    f"(> --max-rss-mb {self.max_rss_mb:.0f}); stopped it")
                    node.stop()
                    return


def profile_set(py_spy: str, redis_benchmark: str, node: Server, seconds: float,
                out: Path, keyspace: int = rc.KEYSPACE) -> list[tuple[str, int, float, float]]:
    """py-spy on the coordinating node for `seconds` under SET -c 50 -P 16."""
    cmd = [redis_benchmark, "-h", "127.0.0.1", "-p", str(node.port), "-t", "set",
           "-c", "50", "-P", "16", "-r", str(keyspace), "-n", "100000000", "-q"]
    bench = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             stdin=subprocess.DEVNULL, preexec_fn=rc._die_with_parent)
    try:
        time.sleep(1.0)  # let the connections open and the pipeline fill
        profiler = rc.Profiler(py_spy, node.proc.pid, out)
        try:
            time.sleep(seconds)
        finally:
            profiler.stop()
    finally:
        if bench.poll() is None:
            bench.kill()
        bench.wait()
    # Idle threads blocked waiting for work can be sampled as busy: Twisted pool threads in
    # Queue.get, and the group-commit SyncThread with nothing above its _work loop.
    busy = out.with_name(out.stem + "-busy.txt")
    try:
        busy.write_text("".join(
            line for line in out.read_text(errors="replace").splitlines(keepends=True)
            if not ("_threadworker.py" in line and "Condition.wait" in line)
            and not line.rpartition(" ")[0].rpartition(";")[2].startswith("SyncThread._work")))
    except OSError:
        return []
    return rc.summarise_raw_profile(busy, top=15)


# --------------------------------------------------------------------------- report


_SPIN = ("import time\n"
         "end = time.perf_counter() + {seconds}\n"
         "n = 0\n"
         "while time.perf_counter() < end:\n"
         "    for _ in range(10000): pass\n"
         "    n += 1\n"
         "print(n)\n")


def parallel_speed(seconds: float = 1.0) -> float:
    """How fast two CPU-bound processes run together, as a fraction of one alone (1.0: two
    full cores). The cluster needs both cores and the single node mostly one, so on a VM
    whose cores share hardware with other tenants this is what the ratios lean on."""
    code = _SPIN.format(seconds=seconds)

    def spin(count: int) -> list[int]:
        procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                  text=True) for _ in range(count)]
        return [int(proc.communicate()[0]) for proc in procs]

    alone = spin(1)
    together = spin(2)
    alone += spin(1)  # before and after the pair: the speed drifts meanwhile too
    return sum(together) / sum(alone) if sum(alone) else 0.0


def print_table(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    header = (f"{'config':<7} {'nodes/quorum':<18} {'workload':<11} {'test':<4} {'ops/s':>10} "
              f"{'p50 ms':>7} {'p99 ms':>7} {'vs single':>9}  {'target':<8} {'':4} "
              f"CPU us/req by node")
    print(header)
    print("-" * len(header))
    keyed = {(r["config"], r["workload"], r["test"]): r for r in results}
    comparisons = []
    for workload in WORKLOADS:
        for test in ("SET", "GET"):
            single = keyed.get(("single", workload, test))
            for config in CONFIGS:
                row = keyed.get((config, workload, test))
                if row is None:
                    continue
                ratio = None
                if single and single["rps"] > 0:
                    ratio = row["rps"] / single["rps"]
                threshold = TARGETS.get((config, test))
                target = mark = ""
                if threshold is not None:
                    target = f">={threshold:.2f}x"
                    mark = "PASS" if ratio is not None and ratio >= threshold else "MISS"
                if config != "single":
                    comparisons.append({"config": config, "workload": workload, "test": test,
                                        "ratio_to_single": ratio, "target": target or None,
                                        "verdict": mark or None})
                rtxt = f"{ratio:.3f}x" if ratio is not None else "-"
                cpu = "+".join("-" if c is None else f"{c:.0f}"
                               for c in row.get("cpu_us_per_request_by_node") or ())
                print(f"{config:<7} {CONFIG_DESC[config]:<18} {rc.WORKLOADS[workload][0]:<11} "
                      f"{test:<4} {row['rps']:>10,.0f} {row['p50_latency_ms']:>7.3f} "
                      f"{row['p99_latency_ms']:>7.3f} {rtxt:>9}  {target:<8} {mark:<4} {cpu}")
        print()
    return comparisons


# --------------------------------------------------------------------------- main


def _positive(text: str) -> int:
    """An argparse type: a whole number of at least 1 (redis-benchmark's -r divides by it)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="divide every -n by 10 (smoke run)")
    p.add_argument("--config", action="append", choices=CONFIGS,
                   help="run only this configuration (repeatable); ratios need 'single'")
    p.add_argument("--workload", action="append", choices=WORKLOADS,
                   help="run only this workload (repeatable): "
                        + ", ".join(f"{k} ({rc.WORKLOADS[k][0]}, -n {rc.WORKLOADS[k][2]})"
                                    for k in WORKLOADS))
    p.add_argument("--requests", "-n", type=int, metavar="N",
                   help="use this -n for every workload (before --quick's division)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--keyspace", type=_positive, default=rc.KEYSPACE, metavar="N",
                   help="redis-benchmark -r N: random keys drawn from N (default %(default)s); "
                        "a small one fits the CPU caches three nodes' copies overflow")
    p.add_argument("--repeat", type=int, default=1,
                   help="run N rounds (each configuration once per round, in turns) and "
                        "keep each benchmark's median-ops/s run")
    p.add_argument("--profile", metavar="DIR",
                   help="after the quorum runs, record py-spy on node 1 (the coordinator) "
                        "under SET -c 50 -P 16 and print the top 15 functions by self time")
    p.add_argument("--profile-seconds", type=float, default=10.0)
    p.add_argument("--redis-benchmark", default=shutil.which("redis-benchmark") or "redis-benchmark")
    p.add_argument("--twistd", default=str(REPO / ".venv" / "bin" / "twistd"))
    p.add_argument("--startup-timeout", type=float, default=60.0,
                   help="seconds for a node to answer and for the cluster to converge")
    p.add_argument("--max-rss-mb", type=float, default=4096.0,
                   help="stop a node whose resident memory passes this (guards the machine)")
    p.add_argument("--keep-temp", action="store_true", help="keep the temp dir (logs, data)")
    args = p.parse_args(argv)

    configs = [c for c in CONFIGS if c in (args.config or CONFIGS)]
    workloads = [w for w in WORKLOADS if w in (args.workload or WORKLOADS)]
    scale = 10 if args.quick else 1
    py_spy = None
    if args.profile:
        py_spy = shutil.which("py-spy") or str(Path(args.twistd).with_name("py-spy"))
        if not Path(py_spy).exists() and not shutil.which(py_spy):
            print("--profile needs py-spy (pip install py-spy)", file=sys.stderr)
            return 2
        Path(args.profile).mkdir(parents=True, exist_ok=True)

    info = rc.machine_info(shutil.which("redis-server") or "redis-server", args.redis_benchmark)
    # The nodes run the working tree, which may differ from HEAD.
    if rc.cmd_output(["git", "-C", str(REPO), "status", "--porcelain", "--", "twistkv"]):
        info["twistkv_git"] += "+dirty"
    print(f"twistkv {CLUSTER_SIZE}-node local cluster vs single node "
          f"(redis-benchmark --csv, -t set,get, -r {args.keyspace}, against node 1)")
    print(f"machine: nproc={info['nproc']} cpu={info['cpu_model']!r} kernel={info['kernel']}")
    print(f"         python {info['python']} ({info['python_impl']}), {info['redis_benchmark']}")
    print(f"         loadavg at start {info['loadavg_at_start']}, twistkv {info['twistkv_git']}, "
          f"{info['time']}")
    print(f"mode: {'quick (-n / 10)' if args.quick else 'full'}"
          f"{f', -n {args.requests}' if args.requests else ''}, configs {configs}, "
          f"workloads {workloads}, repeat {args.repeat}")
    print(f"note: all {CLUSTER_SIZE} nodes and redis-benchmark share this machine's "
          f"{info['nproc']} cores; treat ratios as indicative.\n", flush=True)

    old_term = signal.signal(signal.SIGTERM, rc._raise_interrupt)
    old_hup = signal.signal(signal.SIGHUP, rc._raise_interrupt)
    root = Path(tempfile.mkdtemp(prefix="twistkv-cluster-bench-"))
    servers: list[Server] = []
    results: list[dict[str, Any]] = []
    profiles: dict[str, Any] = {}
    converge: dict[str, float] = {}
    #: parallel_speed() before each round.
    speeds: list[float] = []
    #: "config/workload/test" -> its ops/s over the single node's, round by round.
    round_ratios: dict[str, list[float | None]] = {}
    status = 0
    try:
        clusters: list[tuple[str, list[Server]]] = []
        for config in configs:
            if config == "single":
                nodes: list[Server] = [rc.make_twistkv("memory", args.twistd, root)]
            else:
                nodes = list(make_cluster(config, args.twistd, root))
            for node in nodes:
                servers.append(node)
                print(f"starting {node.label} on 127.0.0.1:{node.port} ...", flush=True)
                node.start(args.startup_timeout)
            if config != "single":
                took = wait_converged(nodes, args.startup_timeout)  # type: ignore[arg-type]
                converge[config] = took
                print(f"  {config}: MEMBERS shows {CLUSTER_SIZE} alive on every node, "
                      f"SET/GET probe ok ({took:.1f}s)", flush=True)
            clusters.append((config, nodes))
        # A load phase, as YCSB has: the keyspace written (and read) before anything is
        # measured. A fresh node's first runs pay for inserting new keys and growing its
        # tables: a fresh cluster's four -P 16 runs in a row gave 57k, 78k, 89k and 92k
        # SET/s, so whichever configuration went first in a round was measured colder.
        for config, nodes in clusters:
            n = max(1, 3 * args.keyspace // scale)
            t0 = time.monotonic()
            rc.run_benchmark(args.redis_benchmark, nodes[0], "p16-c50", n,
                             timeout=max(120.0, 2 * n / 1000), max_rss_mb=args.max_rss_mb,
                             keyspace=args.keyspace)
            print(f"  {config}: loaded, {n:,} SETs and GETs at -P 16, not measured "
                  f"({time.monotonic() - t0:.1f}s)", flush=True)
        # Every configuration stays up and they take turns, round by round (the order
        # reversed every other round): this machine's speed drifts by tens of percent
        # within minutes, and measuring one configuration after the other would put that
        # drift into the ratios. An idle cluster only gossips.
        runs_of: dict[tuple[str, str], list[tuple[dict[str, Any], float, list[float | None]]]]
        runs_of = {(config, workload): [] for config in configs for workload in workloads}
        commands: dict[str, list[str]] = {}
        for round_index in range(args.repeat):
            speed = parallel_speed()
            speeds.append(speed)
            print(f"  round {round_index + 1}: two busy cores each run at {speed:.0%} of one "
                  "alone", flush=True)
            order = clusters if round_index % 2 == 0 else clusters[::-1]
            for workload in workloads:
                n = max(1, (args.requests or rc.WORKLOADS[workload][2]) // scale)
                for config, nodes in order:
                    coordinator, peers = nodes[0], nodes[1:]
                    t0 = time.monotonic()
                    cpu0 = [cpu_seconds(node.proc.pid) if node.proc is not None else None
                            for node in nodes]
                    with PeerWatch(peers, args.max_rss_mb) as watch:
                        # generous: assumes at least 1000 ops/s for SET + GET
                        cmd, rows = rc.run_benchmark(args.redis_benchmark, coordinator, workload,
                                                     n, timeout=max(120.0, 2 * n / 1000),
                                                     max_rss_mb=args.max_rss_mb,
                                                     keyspace=args.keyspace)
                    elapsed = time.monotonic() - t0
                    commands[workload] = cmd
                    if watch.problem:
                        raise BenchError(f"{watch.problem} during {config} {workload}")
                    for node in nodes:
                        if node.proc is not None and node.proc.poll() is not None:
                            raise BenchError(f"{node.label} died during the benchmark:\n"
                                             + node.log_tail())
                    # -t set,get: n SETs then n GETs, so the CPU covers 2n requests.
                    cpu = cpu_per_request(nodes, cpu0, 2 * n)
                    runs_of[config, workload].append((rows, elapsed, cpu))
                    r = {t: rows.get(t, {}).get("rps", 0) for t in ("SET", "GET")}
                    cpu_text = " ".join("-" if c is None else f"{c:.0f}" for c in cpu)
                    print(f"  round {round_index + 1} {config:<7} {workload:<8} "
                          f"SET {r['SET']:>9,.0f}/s GET {r['GET']:>9,.0f}/s  ({elapsed:.1f}s; "
                          f"CPU us/request by node {cpu_text})", flush=True)
        # Each round measured every configuration within a minute or so: its own ratio
        # pairs figures taken in one phase of the machine, where the medians above may
        # come from different rounds. Printed to show the spread, not judged.
        for config, workload in runs_of:
            if config == "single" or ("single", workload) not in runs_of:
                continue
            for test in ("SET", "GET"):
                # None for a round where either side lacks the figure: positions stay rounds.
                paired = [ours[test]["rps"] / single[test]["rps"]
                          if test in ours and single.get(test, {}).get("rps") else None
                          for (ours, _, _), (single, _, _) in zip(
                              runs_of[config, workload], runs_of["single", workload],
                              strict=True)]
                if any(ratio is not None for ratio in paired):
                    round_ratios[f"{config}/{workload}/{test}"] = paired
        for config, nodes in clusters:
            for workload in workloads:
                runs = runs_of[config, workload]
                n = max(1, (args.requests or rc.WORKLOADS[workload][2]) // scale)
                for test in ("SET", "GET"):
                    got = sorted(((r[test], cpu) for r, _, cpu in runs if test in r),
                                 key=lambda x: x[0]["rps"])
                    if got:
                        median, cpu = got[len(got) // 2]
                        results.append({"config": config, "workload": workload, "test": test,
                                        "nodes": len(nodes), "n": n,
                                        "command": " ".join(commands[workload][1:]),
                                        "all_rps": [g["rps"] for g, _ in got],
                                        "cpu_us_per_request_by_node": cpu, **median})
            if py_spy and config == "quorum":
                out = Path(args.profile) / "quorum-set-p16-node1.txt"
                print(f"  profiling {nodes[0].label} for {args.profile_seconds:.0f}s under "
                      "SET -c 50 -P 16 ...", flush=True)
                top = profile_set(py_spy, args.redis_benchmark, nodes[0],
                                  args.profile_seconds, out, args.keyspace)
                profiles["quorum/SET/p16-c50/n1"] = {
                    "file": str(out),
                    "top_self": [{"function": f, "samples": s, "self_pct": sp, "total_pct": tp}
                                 for f, s, sp, tp in top]}
        for _, nodes in clusters:
            for node in nodes:
                node.stop()
    except KeyboardInterrupt:
        print("\ninterrupted: stopping servers", file=sys.stderr)
        status = 130
    except BenchError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        status = 1
    finally:
        for server in servers:
            server.stop()
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGHUP, old_hup)
        if args.keep_temp or status == 1:
            print(f"(temp dir kept: {root})", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)

    if results:
        print()
        comparisons = print_table(results)
        verdicts = [c["verdict"] for c in comparisons if c["verdict"]]
        if speeds:
            print("two busy cores each ran at " + ", ".join(f"{s:.0%}" for s in speeds)
                  + " of one alone, before each round (the cluster needs both)")
        if len(speeds) > 1:
            for key, paired in round_ratios.items():
                print(f"{key} vs single, round by round: "
                      + " ".join("-" if ratio is None else f"{ratio:.3f}x" for ratio in paired))
        print(f"target: QUORUM SET >= 0.30x single-node SET: {verdicts.count('PASS')} PASS, "
              f"{verdicts.count('MISS')} MISS" if verdicts else
              "target: QUORUM SET >= 0.30x single (not evaluated: needs single and quorum)")
        for key, prof in profiles.items():
            print(f"\npy-spy top functions by self time, {key} ({prof['file']}):")
            for entry in prof["top_self"]:
                print(f"  {entry['self_pct']:5.1f}% self {entry['total_pct']:5.1f}% total  "
                      f"{entry['function']}")
        if args.json:
            Path(args.json).write_text(json.dumps(
                {"machine": info, "quick": args.quick, "repeat": args.repeat,
                 "keyspace": args.keyspace, "cluster_size": CLUSTER_SIZE,
                 "converge_s": converge, "parallel_speed_by_round": speeds,
                 "ratio_to_single_by_round": round_ratios,
                 "results": results, "comparisons": comparisons,
                 "targets": {f"{c}/{t}": {"kind": "ratio_to_single", "threshold": v}
                             for (c, t), v in TARGETS.items()},
                 "profiles": profiles, "complete": status == 0}, indent=2) + "\n")
            print(f"\nJSON written to {args.json}")
    return status


if __name__ == "__main__":
    sys.exit(main())
