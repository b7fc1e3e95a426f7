#!/usr/bin/env python3
"""Cost of a rebalance: add a 4th node to a loaded 3-node cluster, under client load.

A benchmark, not a test: it never fails on a slow result. It starts 3 local
twistkv nodes (``--storage memory`` by default, or rocksdb) with
``--rebalance-drop-delay 5``, loads K keys of 100-byte values at QUORUM, runs a
steady redis-py pipelined SET/GET load through n1 in a background thread,
measures it for ``--baseline`` seconds, then starts n4 with ``--seeds`` and polls
``REBALANCE`` until no movement remains while the load continues. It reports
the time of the move, keys/s and MB/s moved (REBALANCE's keys/bytes counters of
the operation n4 drives, else the change of the DBSIZE sum) and the client
throughput during the move as a ratio to before. Always stops what it started.

Run from the repository root:
  .venv/bin/python bench/rebalance_bench.py [--keys 100000] [--storage memory|rocksdb]
      [--json out.json]

Node, convergence and machine helpers come from bench/cluster_compare.py and
bench/redis_compare.py. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cluster_compare as cc  # noqa: E402 - bench/ is not a package
import redis_compare as rc  # noqa: E402
from redis_compare import REPO, BenchError, free_port  # noqa: E402

VALUE = b"v" * 100


def _set_opt(argv: list[str], flag: str, value: str) -> None:
    """Replace the value after `flag` in argv, or append the pair."""
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]


def make_nodes(storage: str, drop_delay: float, twistd: str,
               root: Path) -> tuple[list[cc.ClusterNode], cc.ClusterNode]:
    """cluster_compare's 3 seeded nodes, adjusted for storage and drop delay, plus n4."""
    nodes = cc.make_cluster("rebal", twistd, root)
    for node in nodes:
        _set_opt(node.argv, "--storage", storage)
        _set_opt(node.argv, "--fsync", "never")
        _set_opt(node.argv, "--rebalance-drop-delay", str(drop_delay))
    # n4: n2's command line (it already has --seeds n1) with its own id, dirs and ports.
    argv = list(nodes[1].argv)
    port = free_port()
    workdir = root / "rebal-n4"
    _set_opt(argv, "--node-id", "n4")
    _set_opt(argv, "--data-dir", str(workdir / "data"))
    _set_opt(argv, "--log-dir", str(workdir / "logs"))
    _set_opt(argv, "--listen", f"tcp:{port}:interface=127.0.0.1")
    _set_opt(argv, "--peer-listen", f"tcp:{free_port()}:interface=127.0.0.1")
    _set_opt(argv, "--http", f"tcp:{free_port()}:interface=127.0.0.1")
    return nodes, cc.ClusterNode("twistkv", "rebal-n4", argv, port, workdir, cwd=REPO)


def client(port: int) -> redis.Redis:
    r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=30)
    r.execute_command("CONSISTENCY", "QUORUM")
    return r


def load_keys(port: int, keys: int, batch: int = 500) -> float:
    r = client(port)
    t0 = time.monotonic()
    try:
        for start in range(0, keys, batch):
            pipe = r.pipeline(transaction=False)
            for i in range(start, min(keys, start + batch)):
                pipe.set(f"rb:{i:08d}", VALUE)
            pipe.execute()
    finally:
        r.close()
    return time.monotonic() - t0


class Load:
    """Pipelined SET/GET (half each) on the loaded keys through one node, timed per batch."""

    def __init__(self, port: int, keys: int, pipeline: int) -> None:
        self.port, self.keys, self.pipeline = port, keys, pipeline
        self.samples: list[tuple[float, int]] = []  # (monotonic end of batch, ops)
        self.errors = 0
        self.last_error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        rnd = random.Random(1)
        r = client(self.port)
        try:
            while not self._stop.is_set():
                pipe = r.pipeline(transaction=False)
                for j in range(self.pipeline):
                    key = f"rb:{rnd.randrange(self.keys):08d}"
                    if j % 2:
                        pipe.get(key)
                    else:
                        pipe.set(key, VALUE)
                try:
                    pipe.execute()
                    self.samples.append((time.monotonic(), self.pipeline))
                except redis.RedisError as exc:  # count, keep going: the move may hiccup
                    self.errors += 1
                    self.last_error = str(exc)
                    time.sleep(0.05)
        finally:
            r.close()

    def rate(self, t0: float, t1: float) -> float:
        ops = sum(n for t, n in list(self.samples) if t0 < t <= t1)
        return ops / (t1 - t0) if t1 > t0 else 0.0


def _text(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    if isinstance(v, dict):
        return {_text(k): _text(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_text(x) for x in v]
    return v


def rebalance(port: int) -> dict[str, Any]:
    """REBALANCE over RESP3, so its nested maps arrive as dicts (RESP2 flattens them)."""
    r = redis.Redis(host="127.0.0.1", port=port, protocol=3, socket_timeout=10)
    try:
        return _text(r.execute_command("REBALANCE"))
    finally:
        r.close()


def dbsize_sum(nodes: list[cc.ClusterNode]) -> int:
    total = 0
    for node in nodes:
        reply = cc.command(node.port, "DBSIZE")
        total += reply if isinstance(reply, int) else 0
    return total


def moved_counters(op: dict[str, Any] | None) -> tuple[int, int] | None:
    """keys, bytes from per-range counters (else per-operation) of REBALANCE's operation."""
    if not op:
        return None
    ranges = [r for s in op.get("streams") or [] for r in s.get("range_progress") or []]
    if ranges:
        return sum(int(r["keys"]) for r in ranges), sum(int(r["bytes"]) for r in ranges)
    if "keys" in op and "bytes" in op:
        return int(op["keys"]), int(op["bytes"])
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--keys", type=int, default=100_000, help="keys loaded before the move")
    p.add_argument("--storage", choices=("memory", "rocksdb"), default="memory")
    p.add_argument("--drop-delay", type=float, default=5.0, help="--rebalance-drop-delay")
    p.add_argument("--baseline", type=float, default=5.0, help="seconds of load before the move")
    p.add_argument("--pipeline", type=int, default=16, help="commands per client pipeline")
    p.add_argument("--move-timeout", type=float, default=600.0)
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--twistd", default=str(REPO / ".venv" / "bin" / "twistd"))
    p.add_argument("--startup-timeout", type=float, default=60.0)
    p.add_argument("--keep-temp", action="store_true")
    args = p.parse_args(argv)

    info = rc.machine_info(shutil.which("redis-server") or "redis-server",
                           shutil.which("redis-benchmark") or "redis-benchmark")
    if rc.cmd_output(["git", "-C", str(REPO), "status", "--porcelain", "--", "twistkv"]):
        info["twistkv_git"] += "+dirty"
    print(f"twistkv rebalance: 3 -> 4 nodes, {args.keys} keys x {len(VALUE)} B, "
          f"storage {args.storage}, drop delay {args.drop_delay:g}s")
    print(f"machine: nproc={info['nproc']} cpu={info['cpu_model']!r} kernel={info['kernel']} "
          f"python {info['python']} loadavg {info['loadavg_at_start']} "
          f"twistkv {info['twistkv_git']} {info['time']}", flush=True)

    old_term = signal.signal(signal.SIGTERM, rc._raise_interrupt)
    old_hup = signal.signal(signal.SIGHUP, rc._raise_interrupt)
    root = Path(tempfile.mkdtemp(prefix="twistkv-rebalance-bench-"))
    nodes, n4 = make_nodes(args.storage, args.drop_delay, args.twistd, root)
    started: list[cc.ClusterNode] = []
    load: Load | None = None
    result: dict[str, Any] = {}
    status = 0
    try:
        for node in nodes:
            started.append(node)
            node.start(args.startup_timeout)
        took = cc.wait_converged(nodes, args.startup_timeout)
        print(f"3 nodes converged ({took:.1f}s); loading {args.keys} keys at QUORUM ...",
              flush=True)
        load_s = load_keys(nodes[0].port, args.keys)
        before_db = dbsize_sum(nodes)
        print(f"  loaded in {load_s:.1f}s ({args.keys / load_s:,.0f} keys/s); "
              f"DBSIZE sum {before_db}", flush=True)

        load = Load(nodes[0].port, args.keys, args.pipeline)
        load.start()
        time.sleep(1.0)  # warm-up, not measured
        b0 = time.monotonic()
        time.sleep(args.baseline)
        b1 = time.monotonic()
        base_rate = load.rate(b0, b1)
        print(f"  baseline: {base_rate:,.0f} ops/s through n1 ({args.baseline:g}s)", flush=True)

        m0 = time.monotonic()
        started.append(n4)
        n4.start(args.startup_timeout)
        print(f"  n4 answers PING after {time.monotonic() - m0:.1f}s; polling REBALANCE ...",
              flush=True)
        seen_move = False
        snap: dict[str, Any] = {}
        polls = 0
        while True:
            for node in started:
                if node.proc is not None and node.proc.poll() is not None:
                    raise BenchError(f"{node.label} exited:\n" + node.log_tail())
            snaps = [rebalance(node.port) for node in (nodes[0], n4)]
            snap = snaps[1]
            polls += 1
            moving = any(s.get("movements") for s in snaps) or (
                (snap.get("operation") or {}).get("phase") not in (None, "done"))
            seen_move = seen_move or moving or snap.get("last_operation") is not None
            in_ring = "n4" in (snaps[0].get("ring") or [])
            if seen_move and not moving and in_ring:
                break
            if time.monotonic() - m0 > args.move_timeout:
                raise BenchError(f"movement not done after {args.move_timeout:.0f}s: "
                                 f"{json.dumps(snaps, default=str)[:1500]}")
            time.sleep(0.2)
        m1 = time.monotonic()
        move_s = m1 - m0
        move_rate = load.rate(m0, m1)
        a0 = time.monotonic()
        time.sleep(min(args.baseline, 3.0))
        after_rate = load.rate(a0, time.monotonic())
        load.stop()
        after_db = dbsize_sum(nodes + [n4])
        op = snap.get("last_operation") or snap.get("operation")
        counters = moved_counters(op)
        if counters:
            moved_keys, moved_bytes = counters
            source = "REBALANCE per-range keys/bytes (n4's operation)"
        else:
            moved_keys, moved_bytes = max(0, after_db - before_db), None
            source = "DBSIZE sum change (bytes unknown)"
        stream_s = None
        if op and op.get("started_at") and op.get("finished_at"):
            stream_s = float(op["finished_at"]) - float(op["started_at"])
        result = {
            "keys_loaded": args.keys, "value_bytes": len(VALUE), "storage": args.storage,
            "drop_delay_s": args.drop_delay, "load_s": load_s,
            "baseline_ops_s": base_rate, "move_ops_s": move_rate, "after_ops_s": after_rate,
            "move_ratio": move_rate / base_rate if base_rate else None,
            "move_s": move_s, "operation_s": stream_s,
            "moved_keys": moved_keys, "moved_bytes": moved_bytes, "moved_source": source,
            "keys_per_s": moved_keys / move_s if move_s else None,
            "mb_per_s": moved_bytes / move_s / 1e6 if moved_bytes and move_s else None,
            "dbsize_before": before_db, "dbsize_after": after_db,
            "client_errors": load.errors, "client_last_error": load.last_error,
            "rebalance_polls": polls,
            "operation": {k: v for k, v in (op or {}).items() if k != "streams"},
        }
    except KeyboardInterrupt:
        print("\ninterrupted: stopping nodes", file=sys.stderr)
        status = 130
    except (BenchError, redis.RedisError, OSError, ConnectionError) as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        status = 1
    finally:
        if load is not None:
            load.stop()
        for node in started:
            node.stop()
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGHUP, old_hup)
        if args.keep_temp or status == 1:
            print(f"(temp dir kept: {root})", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)

    if result:
        r = result
        mb = f"{r['mb_per_s']:.2f}" if r["mb_per_s"] is not None else "-"
        print()
        print(f"{'metric':<34} {'value':>14}")
        print("-" * 49)
        rows = [
            ("move time (n4 start -> no movement)", f"{r['move_s']:.1f} s"),
            ("  n4's operation started->finished",
             f"{r['operation_s']:.1f} s" if r["operation_s"] is not None else "-"),
            ("keys moved", f"{r['moved_keys']:,}"),
            ("bytes moved", f"{r['moved_bytes']:,}" if r["moved_bytes"] is not None else "-"),
            ("keys/s moved", f"{r['keys_per_s']:,.0f}"),
            ("MB/s moved", mb),
            ("  keys/s over n4's operation only",
             f"{r['moved_keys'] / r['operation_s']:,.0f}" if r["operation_s"] else "-"),
            ("client ops/s before", f"{r['baseline_ops_s']:,.0f}"),
            ("client ops/s during move", f"{r['move_ops_s']:,.0f}"),
            ("  ratio during/before",
             f"{r['move_ratio']:.2f}x" if r["move_ratio"] is not None else "-"),
            ("client ops/s after", f"{r['after_ops_s']:,.0f}"),
            ("client errors", f"{r['client_errors']}"),
            ("DBSIZE sum before -> after", f"{r['dbsize_before']} -> {r['dbsize_after']}"),
        ]
        for name, value in rows:
            print(f"{name:<34} {value:>14}")
        print(f"(moved from: {r['moved_source']})")
        if args.json:
            Path(args.json).write_text(json.dumps(
                {"machine": info, "result": r, "complete": status == 0},
                indent=2, default=str) + "\n")
            print(f"JSON written to {args.json}")
    return status


if __name__ == "__main__":
    sys.exit(main())
