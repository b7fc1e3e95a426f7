#!/usr/bin/env python3
"""twistkv vs redis-server, side by side, under the same redis-benchmark runs.

A benchmark, not a test: it never fails on a slow result. It starts its own
redis-server(s) and twistkv node(s) on free loopback ports in a temporary
directory, runs identical ``redis-benchmark --csv`` commands against each,
prints ops/s, p50/p99 latency and the twistkv/redis ratio next to the targets
of the performance issue (PASS/MISS), optionally writes JSON, and always stops
everything it started (also on Ctrl-C or SIGTERM).

Pairs compared:
  memory   twistkv --storage memory          vs  redis --save "" --appendonly no
  durable  twistkv --storage rocksdb --fsync always
                                             vs  redis --appendonly yes --appendfsync always

Run from the repository root (``make bench`` does):
  .venv/bin/python bench/redis_compare.py [--quick] [--only memory|durable]
      [--workload p1-c50|p16-c50|c1 ...] [--json out.json] [--repeat N]
      [--profile DIR]

See bench/README.md.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
KEYSPACE = 100_000  # -r: random keys drawn from key:000000000000..key:000000099999

# name -> (description, redis-benchmark arguments without -n, full -n)
WORKLOADS: dict[str, tuple[str, list[str], int]] = {
    "p1-c50": ("-c 50 -P 1", ["-c", "50", "-P", "1"], 200_000),
    "p16-c50": ("-c 50 -P 16", ["-c", "50", "-P", "16"], 1_000_000),
    "c1": ("-c 1 -P 1", ["-c", "1", "-P", "1"], 20_000),
}

PAIRS = ("memory", "durable")

# Targets from the performance issue: (pair, workload) -> (kind, threshold).
# kind "ratio": twistkv ops/s >= threshold x redis ops/s.
# kind "p99": twistkv p99 latency (ms) <= threshold.
TARGETS: dict[tuple[str, str], tuple[str, float]] = {
    ("memory", "p1-c50"): ("ratio", 0.45),
    ("memory", "p16-c50"): ("ratio", 0.35),
    ("memory", "c1"): ("p99", 0.2),
    ("durable", "p1-c50"): ("ratio", 0.40),
}

CSV_FIELDS = ("rps", "avg_latency_ms", "min_latency_ms", "p50_latency_ms",
              "p95_latency_ms", "p99_latency_ms", "max_latency_ms")


class BenchError(Exception):
    """A server could not be started or a benchmark could not run."""


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """preexec_fn: ask Linux to SIGTERM the child if this script dies (best effort)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux, no libc: cleanup still runs in finally
        pass


def resp(sock: socket.socket, *args: str) -> bytes:
    """Send one RESP command and return the first reply line (enough for PING/SET/GET)."""
    payload = f"*{len(args)}\r\n".encode()
    for a in args:
        b = a.encode()
        payload += b"$%d\r\n%s\r\n" % (len(b), b)
    sock.sendall(payload)
    buf = b""
    while b"\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    if buf.startswith(b"$") and not buf.startswith(b"$-1"):
        # bulk string: read its body too
        length = int(buf[1:buf.index(b"\r\n")])
        need = buf.index(b"\r\n") + 2 + length + 2
        while len(buf) < need:
            buf += sock.recv(4096)
        return buf[:need]
    return buf.split(b"\r\n", 1)[0]


def cmd_output(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unavailable"


def machine_info(redis_server: str, redis_benchmark: str) -> dict[str, Any]:
    cpu_model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "unknown"
    git = cmd_output(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    return {
        "nproc": usable,
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "python_impl": platform.python_implementation(),
        "redis_server": cmd_output([redis_server, "--version"]),
        "redis_benchmark": cmd_output([redis_benchmark, "--version"]),
        "loadavg_at_start": load,
        "twistkv_git": git,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# --------------------------------------------------------------------------- servers


@dataclass
class Server:
    """One server process this script started."""

    kind: str  # "redis" or "twistkv"
    pair: str
    argv: list[str]
    port: int
    workdir: Path
    cwd: Path
    proc: subprocess.Popen | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.workdir / f"{self.kind}.out"

    @property
    def label(self) -> str:
        return f"{self.kind}-{self.pair}"

    def start(self, timeout: float) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(
                self.argv, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent,
            )
        finally:
            log.close()
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_error = "no answer"
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise BenchError(
                    f"{self.label} exited with status {self.proc.returncode} during startup:\n"
                    + self.log_tail()
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                    s.settimeout(5)
                    reply = resp(s, "PING")
                    if reply != b"+PONG":
                        last_error = f"PING answered {reply!r}"
                        raise ConnectionError(last_error)
                    # The benchmark only means something if SET/GET really work.
                    reply = resp(s, "SET", "bench:probe", "hello")
                    if reply != b"+OK":
                        raise BenchError(f"{self.label}: SET answered {reply!r}")
                    reply = resp(s, "GET", "bench:probe")
                    if not reply.endswith(b"hello\r\n"):
                        raise BenchError(f"{self.label}: GET answered {reply!r}")
                    return
            except (OSError, ConnectionError) as exc:
                last_error = str(exc)
            time.sleep(0.2)
        raise BenchError(f"{self.label} not ready after {timeout:.0f}s ({last_error}):\n"
                         + self.log_tail())

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no output)"
        return "\n".join("    " + line for line in text[-lines:]) or "    (no output)"

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)  # its own session: it and any children only
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue


def make_redis(pair: str, redis_server: str, root: Path) -> Server:
    port = free_port()
    workdir = root / f"redis-{pair}"
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [redis_server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
            "--save", "", "--daemonize", "no", "--protected-mode", "no",
            "--logfile", ""]
    if pair == "memory":
        argv += ["--appendonly", "no"]
    else:
        argv += ["--appendonly", "yes", "--appendfsync", "always"]
    return Server("redis", pair, argv, port, workdir, cwd=workdir)


def make_twistkv(pair: str, twistd: str, root: Path) -> Server:
    port, http, peer = free_port(), free_port(), free_port()
    workdir = root / f"twistkv-{pair}"
    argv = [twistd, "-n", "--pidfile=", "kvnode",
            "--node-id", f"bench-{pair}",
            "--data-dir", str(workdir / "data"),
            "--log-dir", str(workdir / "logs"),
            "--listen", f"tcp:{port}:interface=127.0.0.1",
            "--http", f"tcp:{http}:interface=127.0.0.1",
            "--peer-listen", f"tcp:{peer}:interface=127.0.0.1"]
    if pair == "memory":
        argv += ["--storage", "memory", "--fsync", "never"]
    else:
        argv += ["--storage", "rocksdb", "--fsync", "always"]
    return Server("twistkv", pair, argv, port, workdir, cwd=REPO)


# --------------------------------------------------------------------------- benchmark


def parse_csv(text: str) -> dict[str, dict[str, float]]:
    """redis-benchmark --csv output -> {"SET": {"rps": .., "p50_latency_ms": ..}, ...}."""
    rows: dict[str, dict[str, float]] = {}
    for row in csv.reader(io.StringIO(text)):
        if len(row) < 1 + len(CSV_FIELDS) or row[0] == "test":
            continue
        try:
            rows[row[0]] = {name: float(v) for name, v in zip(CSV_FIELDS, row[1:1 + len(CSV_FIELDS)], strict=True)}
        except ValueError:
            continue
    return rows


class Profiler:
    """py-spy record on the twistkv process for the length of one benchmark run."""

    def __init__(self, py_spy: str, pid: int, out: Path) -> None:
        self.out = out
        self.proc = subprocess.Popen(
            [py_spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "200",
             "--function", "-o", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        time.sleep(0.5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def summarise_raw_profile(path: Path, top: int = 15) -> list[tuple[str, int, float, float]]:
    """Collapsed stacks -> [(function, self samples, self %, total %)] by self time."""
    self_counts: Counter[str] = Counter()
    total_counts: Counter[str] = Counter()
    grand = 0
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        grand += n
        self_counts[frames[-1]] += n
        for frame in set(frames):
            total_counts[frame] += n
    if not grand:
        return []
    return [(fn, n, 100.0 * n / grand, 100.0 * total_counts[fn] / grand)
            for fn, n in self_counts.most_common(top)]


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MiB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (0 if it is gone).

    Per-request server CPU is steadier than ops/s on a shared machine: it
    does not count the time a server waits for a core that others hold.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def run_benchmark(redis_benchmark: str, server: Server, workload: str, n: int,
                  timeout: float, max_rss_mb: float, keyspace: int = KEYSPACE,
                  ) -> tuple[list[str], dict[str, dict[str, float]]]:
    """Run one redis-benchmark; watch the server so a runaway never takes the machine down."""
    _, extra, _ = WORKLOADS[workload]
    cmd = [redis_benchmark, "-h", "127.0.0.1", "-p", str(server.port), "-t", "set,get",
           "-n", str(n), "-r", str(keyspace), "--csv", *extra]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        bench = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        problem = None
        try:
            while bench.poll() is None:
                if time.monotonic() > deadline:
                    problem = f"did not finish in {timeout:.0f}s"
                    break
                if server.proc is not None:
                    if server.proc.poll() is not None:
                        problem = f"{server.label} exited with status {server.proc.returncode}"
                        break
                    rss = rss_mb(server.proc.pid)
                    if rss > max_rss_mb:
                        problem = (f"{server.label} grew to {rss:.0f} MiB RSS "
                                   f"(> --max-rss-mb {max_rss_mb:.0f}); stopped it")
                        server.stop()
                        break
                time.sleep(0.25)
        finally:
            if bench.poll() is None:
                bench.kill()
                bench.wait()
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    if problem:
        raise BenchError(f"{problem}: {' '.join(cmd)}\n" + server.log_tail())
    rows = parse_csv(stdout)
    if bench.returncode != 0 or not rows:
        raise BenchError(f"redis-benchmark failed (exit {bench.returncode}): {' '.join(cmd)}\n"
                         f"{stdout[-2000:]}{stderr[-2000:]}")
    return cmd, rows


# --------------------------------------------------------------------------- report


def verdict(pair: str, workload: str, ratio: float | None,
            twistkv: dict[str, float]) -> tuple[str, str]:
    target = TARGETS.get((pair, workload))
    if target is None:
        return "", ""
    kind, threshold = target
    if kind == "ratio":
        ok = ratio is not None and ratio >= threshold
        return f">={threshold:.2f}x", "PASS" if ok else "MISS"
    ok = twistkv["p99_latency_ms"] <= threshold
    return f"p99<={threshold}ms", "PASS" if ok else "MISS"


def print_table(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Print the comparison table; return the comparison records."""
    header = (f"{'pair':<8} {'workload':<12} {'test':<4} {'server':<8} {'ops/s':>11} "
              f"{'p50 ms':>7} {'p99 ms':>7} {'cpu us':>7} {'ratio':>7}  {'target':<12} {'':4}")
    print(header)
    print("-" * len(header))
    comparisons = []
    keyed = {(r["pair"], r["workload"], r["test"], r["server"]): r for r in results}
    seen: list[tuple[str, str, str]] = []
    for r in results:
        k = (r["pair"], r["workload"], r["test"])
        if k not in seen:
            seen.append(k)
    for pair, workload, test in seen:
        redis = keyed.get((pair, workload, test, "redis"))
        tkv = keyed.get((pair, workload, test, "twistkv"))
        ratio = None
        if redis and tkv and redis["rps"] > 0:
            ratio = tkv["rps"] / redis["rps"]
        desc = WORKLOADS[workload][0]
        for row in (redis, tkv):
            if row is None:
                continue
            extra = ""
            if row is tkv:
                target, mark = verdict(pair, workload, ratio, tkv)
                rtxt = f"{ratio:.3f}x" if ratio is not None else "-"
                extra = f"{rtxt:>7}  {target:<12} {mark}"
                comparisons.append({"pair": pair, "workload": workload, "test": test,
                                    "ratio": ratio, "target": target or None,
                                    "verdict": mark or None,
                                    "twistkv_p99_ms": tkv["p99_latency_ms"]})
            cpu = row.get("server_cpu_us_per_request")
            cpu_txt = f"{cpu:>7.2f}" if cpu is not None else f"{'-':>7}"
            print(f"{pair:<8} {desc:<12} {test:<4} {row['server']:<8} {row['rps']:>11,.0f} "
                  f"{row['p50_latency_ms']:>7.3f} {row['p99_latency_ms']:>7.3f} {cpu_txt} {extra}")
    return comparisons


# --------------------------------------------------------------------------- main


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="divide every -n by 10 (smoke run)")
    p.add_argument("--only", choices=PAIRS, help="run only the memory or the durable pair")
    p.add_argument("--workload", action="append", choices=sorted(WORKLOADS),
                   help="run only this workload (repeatable): "
                        + ", ".join(f"{k} ({v[0]}, -n {v[2]})" for k, v in WORKLOADS.items()))
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--repeat", type=int, default=1,
                   help="run each benchmark N times per server and keep the median-ops/s run")
    p.add_argument("--profile", metavar="DIR",
                   help="record py-spy (raw collapsed stacks) of twistkv during each of its runs "
                        "into DIR and print the top functions by self time; py-spy pauses "
                        "the process to sample, so profiled twistkv figures read low")
    p.add_argument("--redis-server", default=shutil.which("redis-server") or "redis-server")
    p.add_argument("--redis-benchmark", default=shutil.which("redis-benchmark") or "redis-benchmark")
    p.add_argument("--twistd", default=str(REPO / ".venv" / "bin" / "twistd"))
    p.add_argument("--startup-timeout", type=float, default=60.0)
    p.add_argument("--max-rss-mb", type=float, default=4096.0,
                   help="stop a server whose resident memory passes this (guards the machine)")
    p.add_argument("--keep-temp", action="store_true", help="keep the temp dir (logs, data)")
    args = p.parse_args(argv)

    pairs = [args.only] if args.only else list(PAIRS)
    workloads = args.workload or list(WORKLOADS)
    scale = 10 if args.quick else 1
    py_spy = None
    if args.profile:
        py_spy = shutil.which("py-spy") or str(Path(args.twistd).with_name("py-spy"))
        if not Path(py_spy).exists() and not shutil.which(py_spy):
            print("--profile needs py-spy (pip install py-spy)", file=sys.stderr)
            return 2
        Path(args.profile).mkdir(parents=True, exist_ok=True)

    info = machine_info(args.redis_server, args.redis_benchmark)
    print(f"twistkv vs redis-server (redis-benchmark --csv, -t set,get, -r {KEYSPACE})")
    print(f"machine: nproc={info['nproc']} cpu={info['cpu_model']!r} kernel={info['kernel']}")
    print(f"         python {info['python']} ({info['python_impl']}), {info['redis_server']}")
    print(f"         loadavg at start {info['loadavg_at_start']}, twistkv {info['twistkv_git']}, "
          f"{info['time']}")
    print(f"mode: {'quick (-n / 10)' if args.quick else 'full'}, pairs {pairs}, "
          f"workloads {workloads}, repeat {args.repeat}")
    print("note: figures are from one shared machine; redis-benchmark, the server and any "
          "other load share its cores, so treat ratios as indicative.\n", flush=True)

    old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    old_hup = signal.signal(signal.SIGHUP, _raise_interrupt)
    root = Path(tempfile.mkdtemp(prefix="twistkv-bench-"))
    servers: list[Server] = []
    results: list[dict[str, Any]] = []
    profiles: dict[str, Any] = {}
    status = 0
    try:
        for pair in pairs:
            redis = make_redis(pair, args.redis_server, root)
            tkv = make_twistkv(pair, args.twistd, root)
            for server in (redis, tkv):
                servers.append(server)
                print(f"starting {server.label} on 127.0.0.1:{server.port} ...", flush=True)
                server.start(args.startup_timeout)
            for workload in workloads:
                n = max(1, WORKLOADS[workload][2] // scale)
                for server in (redis, tkv):
                    runs = []
                    for i in range(args.repeat):
                        profiler = None
                        if py_spy and server.kind == "twistkv" and server.proc is not None:
                            out = Path(args.profile) / f"{pair}-{workload}-{i}.txt"
                            profiler = Profiler(py_spy, server.proc.pid, out)
                        t0 = time.monotonic()
                        pid = server.proc.pid if server.proc is not None else 0
                        cpu0 = cpu_seconds(pid)
                        try:
                            # generous: assumes at least 1000 ops/s for SET + GET
                            cmd, rows = run_benchmark(args.redis_benchmark, server, workload, n,
                                                      timeout=max(120.0, 2 * n / 1000),
                                                      max_rss_mb=args.max_rss_mb)
                        finally:
                            if profiler is not None:
                                profiler.stop()
                        elapsed = time.monotonic() - t0
                        # redis-benchmark runs SET then GET: n requests each.
                        cpu_us = (cpu_seconds(pid) - cpu0) / (2 * n) * 1e6
                        if server.proc is not None and server.proc.poll() is not None:
                            raise BenchError(f"{server.label} died during the benchmark:\n"
                                             + server.log_tail())
                        runs.append((rows, elapsed, cpu_us))
                        if profiler is not None:
                            top = summarise_raw_profile(profiler.out)
                            profiles[f"{pair}/{workload}/{i}"] = {
                                "file": str(profiler.out),
                                "top_self": [{"function": f, "samples": s, "self_pct": sp,
                                              "total_pct": tp} for f, s, sp, tp in top]}
                    for test in ("SET", "GET"):
                        got = [(rows[test], el, cpu) for rows, el, cpu in runs if test in rows]
                        if not got:
                            continue
                        got.sort(key=lambda x: x[0]["rps"])
                        row, elapsed, cpu_us = got[len(got) // 2]
                        rec = {"pair": pair, "workload": workload, "test": test,
                               "server": server.kind, "n": n, "command": " ".join(cmd[1:]),
                               "all_rps": [g[0]["rps"] for g in got],
                               "server_cpu_us_per_request": round(cpu_us, 2), **row}
                        results.append(rec)
                    r = {t: runs[-1][0].get(t, {}).get("rps", 0) for t in ("SET", "GET")}
                    print(f"  {pair:<8} {workload:<8} {server.kind:<8} SET {r['SET']:>10,.0f}/s "
                          f"GET {r['GET']:>10,.0f}/s  ({runs[-1][1]:.1f}s, "
                          f"{runs[-1][2]:.2f} us CPU/request)", flush=True)
            for server in (redis, tkv):
                server.stop()
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
        misses = [c for c in comparisons if c["verdict"] == "MISS"]
        passes = [c for c in comparisons if c["verdict"] == "PASS"]
        print(f"\ntargets: {len(passes)} PASS, {len(misses)} MISS "
              "(memory P1 c50 >=0.45x, P16 c50 >=0.35x, c1 p99 <=0.2 ms; "
              "durable P1 c50 >=0.40x)")
        for key, prof in profiles.items():
            print(f"\npy-spy top functions by self time, twistkv {key} ({prof['file']}):")
            for entry in prof["top_self"]:
                print(f"  {entry['self_pct']:5.1f}% self {entry['total_pct']:5.1f}% total  "
                      f"{entry['function']}")
        if args.json:
            Path(args.json).write_text(json.dumps(
                {"machine": info, "quick": args.quick, "repeat": args.repeat,
                 "keyspace": KEYSPACE, "results": results, "comparisons": comparisons,
                 "targets": {f"{k[0]}/{k[1]}": {"kind": v[0], "threshold": v[1]}
                             for k, v in TARGETS.items()},
                 "profiles": profiles, "complete": status == 0}, indent=2) + "\n")
            print(f"\nJSON written to {args.json}")
    return status


if __name__ == "__main__":
    sys.exit(main())
