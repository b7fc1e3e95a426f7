"""C{twistkv bench}: concurrent GET/SET load through redis-py threads, with latency figures.

Each client is a thread with its own connection (at the C{--consistency} level). Ops are
handed out from one shared counter until C{--ops} are done or C{--duration} has passed.
Latencies are measured per op around the round trip (C{time.perf_counter}) and reported
as p50/p90/p99/max per operation and as a log-scale histogram. The numbers include the
client's own Python overhead: compare runs with each other, not with redis-benchmark
(C{bench/} in the repo does that).
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from twistkv.cli._client import Address, command, connect, errors_mapped, parse_address
from twistkv.cli._data import fetch_members
from twistkv.cli._errors import EXIT_SERVER, EXIT_UNAVAILABLE, EXIT_UNREACHABLE, UsageError
from twistkv.cli._output import Outcome, format_ms, table
from twistkv.cli._progress import ProgressBar

__all__ = ["add_parser", "run", "percentile", "histogram", "summarize", "BenchResult"]

DEFAULT_OPS = 10_000
#: Histogram bucket upper bounds, in seconds (1-2-5 steps from 50 µs to 10 s).
BUCKETS = tuple(m * 10.0 ** e for e in range(-5, 1) for m in (1, 2, 5) if m * 10.0 ** e >= 5e-5) \
    + (10.0, math.inf)


def add_parser(add: Callable[..., argparse.ArgumentParser],
               positive: Callable[[str], float]) -> None:
    p = add("bench", "drive the cluster with concurrent clients: throughput and latency")
    p.add_argument("--ops", type=int, default=None, metavar="N",
                   help=f"total operations [default: {DEFAULT_OPS}, or unlimited with --duration]")
    p.add_argument("--clients", type=int, default=8, metavar="C",
                   help="concurrent clients (threads, one connection each) [default: 8]")
    p.add_argument("--ratio", type=float, default=0.5, metavar="R",
                   help="fraction of reads (GET); the rest are SETs [default: 0.5]")
    p.add_argument("--value-size", type=int, default=100, metavar="BYTES", help="[default: 100]")
    p.add_argument("--keys", type=int, default=1000, metavar="K",
                   help="distinct keys, chosen uniformly [default: 1000]")
    p.add_argument("--duration", type=positive, default=None, metavar="S",
                   help="stop after S seconds (and after --ops if also given)")
    p.add_argument("--prefix", default="bench:", help="key prefix [default: bench:]")
    p.add_argument("--spread", action="store_true",
                   help="spread the clients over every alive node (client addresses from MEMBERS)")
    p.add_argument("--preload", action="store_true",
                   help="write every key once before measuring, so reads find values")
    p.add_argument("--seed", type=int, default=None, help="random seed (repeatable key choice)")
    p.set_defaults(handler=run)


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """The nearest-rank C{q} quantile (0 < q <= 1) of already sorted values."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def histogram(values: Sequence[float], bounds: Sequence[float] = BUCKETS) -> list[tuple[float, int]]:
    """Counts per bucket (C{value <= bound}), trimmed to the range that holds values."""
    counts = [0] * len(bounds)
    for v in values:
        for i, bound in enumerate(bounds):
            if v <= bound:
                counts[i] += 1
                break
    used = [i for i, c in enumerate(counts) if c]
    if not used:
        return []
    return [(bounds[i], counts[i]) for i in range(used[0], used[-1] + 1)]


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """count, mean, p50, p90, p99, max (seconds) of latencies."""
    ordered = sorted(values)
    return {
        "count": len(ordered),
        "avg": (sum(ordered) / len(ordered)) if ordered else None,
        "p50": percentile(ordered, 0.50),
        "p90": percentile(ordered, 0.90),
        "p99": percentile(ordered, 0.99),
        "max": ordered[-1] if ordered else None,
    }


@dataclass
class _Worker:
    client: redis.Redis
    address: Address
    get: list[float] = field(default_factory=list)
    set: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    last_error: str = ""
    done: int = 0


@dataclass
class BenchResult:
    elapsed: float
    workers: list[_Worker]


def _drive(workers: list[_Worker], ops: int | None, duration: float | None, ratio: float,
           keys: int, prefix: str, value: bytes, seed: int | None,
           progress: ProgressBar) -> BenchResult:
    counter = itertools.count()
    stop = threading.Event()
    started = time.perf_counter()
    deadline = None if duration is None else started + duration

    def work(index: int, w: _Worker) -> None:
        rng = random.Random(None if seed is None else seed * 1000 + index)
        execute: Callable[..., Any] = w.client.execute_command
        clock = time.perf_counter
        while not stop.is_set():
            n = next(counter)
            if ops is not None and n >= ops:
                break
            key = f"{prefix}{rng.randrange(keys)}"
            read = rng.random() < ratio
            t0 = clock()
            try:
                if read:
                    execute("GET", key)
                else:
                    execute("SET", key, value)
            except redis.ResponseError as exc:
                kind = "unavailable" if str(exc).startswith("UNAVAILABLE") else "error"
                w.errors[kind] += 1
                w.last_error = str(exc).splitlines()[0]
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                w.errors["unreachable"] += 1
                w.last_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                time.sleep(0.01)  # do not spin on a dead node
            else:
                (w.get if read else w.set).append(clock() - t0)
            w.done += 1
            if deadline is not None and clock() >= deadline:
                stop.set()

    threads = [threading.Thread(target=work, args=(i, w), daemon=True, name=f"bench-{i}")
               for i, w in enumerate(workers)]
    for t in threads:
        t.start()
    try:
        while any(t.is_alive() for t in threads):
            done = sum(w.done for w in workers)
            elapsed = time.perf_counter() - started
            rate = f"{done / elapsed:,.0f} ops/s" if elapsed > 0 else ""
            if ops is not None:
                progress.update(done, rate)
            else:
                progress.update(min(elapsed, duration or 0.0), f"{done:,} ops  {rate}")
            for t in threads:
                t.join(0.1)
    except KeyboardInterrupt:
        stop.set()
        for t in threads:
            t.join(5)
    finally:
        progress.close()
    return BenchResult(time.perf_counter() - started, workers)


def _targets(ns: argparse.Namespace, first: Address) -> list[Address]:
    if not ns.spread:
        return [first]
    client = connect(first, timeout=ns.timeout)
    try:
        members = fetch_members(client, first)
    finally:
        client.close()
    found = [parse_address(str(m["client"])) for m in members
             if m.get("state") == "alive" and m.get("client")]
    return found or [first]


def _render(data: dict[str, Any]) -> str:
    cfg = data["config"]
    lines = [
        f"twistkv bench: {data['ops']:,} ops ({cfg['ratio'] * 100:.0f}% GET) by {cfg['clients']} "
        f"clients on {', '.join(cfg['servers'])}; {cfg['keys']:,} keys, {cfg['value_size']}-byte "
        f"values, consistency {cfg['consistency'] or 'node default'}",
        f"elapsed {data['elapsed_s']:.2f}s, throughput {data['throughput']:,.0f} ops/s, "
        f"errors {data['errors_total']}"
        + (f" ({', '.join(f'{k} {v}' for k, v in sorted(data['errors'].items()))})"
           if data["errors"] else ""),
    ]
    if data.get("last_error"):
        lines.append(f"last error: {data['last_error']}")
    rows = []
    for name in ("get", "set", "all"):
        s = data["latency"][name]
        if s["count"] or name == "all":
            rows.append([name.upper(), f"{s['count']:,}", *(format_ms(s[q]) for q in
                                                              ("avg", "p50", "p90", "p99", "max"))])
    lines += ["", table(["OP", "COUNT", "AVG", "P50", "P90", "P99", "MAX"], rows,
                        right=[1, 2, 3, 4, 5, 6])]
    hist = data["histogram"]
    if hist:
        total = sum(c for _, c in hist)
        peak = max(c for _, c in hist)
        lines += ["", "latency histogram (all successful ops):"]
        for bound, count in hist:
            label = "   > 10 s" if bound is None else f"<= {format_ms(bound):>9}"
            bar = "#" * (round(40 * count / peak) if peak else 0)
            lines.append(f"  {label} |{bar:<40} {count:>8,} {count / total * 100:5.1f}%")
    return "\n".join(lines)


def run(ns: argparse.Namespace) -> Outcome:
    if ns.clients < 1:
        raise UsageError("--clients must be at least 1")
    if ns.keys < 1:
        raise UsageError("--keys must be at least 1")
    if not 0.0 <= ns.ratio <= 1.0:
        raise UsageError("--ratio is the fraction of reads: between 0 and 1")
    if ns.value_size < 0:
        raise UsageError("--value-size must not be negative")
    if ns.ops is not None and ns.ops < 1:
        raise UsageError("--ops must be at least 1")
    ops = ns.ops if ns.ops is not None else (None if ns.duration else DEFAULT_OPS)
    first = parse_address(ns.server)
    targets = _targets(ns, first)
    workers = []
    try:
        for i in range(ns.clients):
            address = targets[i % len(targets)]
            client = connect(address, timeout=ns.timeout, consistency=ns.consistency)
            workers.append(_Worker(client, address))
        for w in workers:  # connect (and set the consistency) before the clock starts
            with errors_mapped(w.address):
                w.client.ping()
        value = (b"x" * ns.value_size) if ns.seed is None else \
            bytes(random.Random(ns.seed).choice(b"abcdefghij") for _ in range(ns.value_size))
        if ns.preload:
            bar = ProgressBar(ns.keys, "preload", unit=" keys")
            pipe_client = workers[0].client
            with errors_mapped(workers[0].address):
                for start in range(0, ns.keys, 100):
                    pairs: list[Any] = []
                    for k in range(start, min(ns.keys, start + 100)):
                        pairs += [f"{ns.prefix}{k}", value]
                    command(pipe_client, "MSET", *pairs)
                    bar.update(min(ns.keys, start + 100))
            bar.close()
        progress = ProgressBar(ops if ops is not None else ns.duration, "bench",
                               unit=" ops" if ops is not None else "s")
        result = _drive(workers, ops, ns.duration, ns.ratio, ns.keys, ns.prefix, value,
                        ns.seed, progress)
    finally:
        for w in workers:
            w.client.close()
    gets = [x for w in result.workers for x in w.get]
    sets = [x for w in result.workers for x in w.set]
    every = gets + sets
    errors: Counter[str] = Counter()
    for w in result.workers:
        errors.update(w.errors)
    done = sum(w.done for w in result.workers)
    data = {
        "config": {"servers": sorted({str(a) for a in targets}), "clients": ns.clients,
                   "ratio": ns.ratio, "keys": ns.keys, "value_size": ns.value_size,
                   "consistency": ns.consistency, "ops": ops, "duration": ns.duration},
        "ops": done,
        "elapsed_s": result.elapsed,
        "throughput": len(every) / result.elapsed if result.elapsed > 0 else 0.0,
        "errors": dict(errors),
        "errors_total": sum(errors.values()),
        "last_error": next((w.last_error for w in result.workers if w.last_error), ""),
        "latency": {"get": summarize(gets), "set": summarize(sets), "all": summarize(every)},
        "histogram": [(None if b == math.inf else b, c) for b, c in histogram(every)],
    }
    code = 0
    if done and not every:  # nothing succeeded: say why in the exit code
        code = EXIT_UNAVAILABLE if errors.get("unavailable") else (
            EXIT_UNREACHABLE if errors.get("unreachable") else EXIT_SERVER)
    outcome = Outcome(data, _render(data), code=code)
    if code:
        outcome.stderr = f"every operation failed: {data['last_error']}"
    return outcome

