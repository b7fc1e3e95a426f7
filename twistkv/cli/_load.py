"""C{twistkv load FILE}: seed data from JSON lines or CSV, written in MSET batches.

JSON lines: one object per line, C{{"key": "user:1", "value": "Ada"}}; a value that is
not a string (number, object, ...) is stored as its JSON text. CSV: C{key,value} rows,
an optional C{key,value} header, RFC 4180 quoting. Blank lines and, in JSON lines, lines
starting with C{#} are skipped. The format comes from the extension (C{.jsonl},
C{.ndjson}, C{.json}, C{.csv}) or, failing that, from the first character (C{{}} means
JSON lines). C{-} reads stdin. A malformed record stops the load before anything after
it is written, naming the line (exit 2).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from twistkv.cli._client import command, connect, errors_mapped, parse_address
from twistkv.cli._errors import CLIError, UsageError
from twistkv.cli._output import Outcome
from twistkv.cli._progress import ProgressBar

__all__ = ["add_parser", "run", "records", "detect_format"]


def add_parser(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add("load", "load seed data from JSON lines ({\"key\":..,\"value\":..}) or CSV (key,value)")
    p.add_argument("file", metavar="FILE", help="the data file, or - for stdin")
    p.add_argument("--format", choices=("auto", "jsonl", "csv"), default="auto",
                   help="[default: auto: by extension, else by the first character]")
    p.add_argument("--batch", type=int, default=100, metavar="N",
                   help="keys per MSET [default: 100]")
    p.add_argument("--dry-run", action="store_true", help="check the file, write nothing")
    p.set_defaults(handler=run)


def detect_format(name: str, first_char: str) -> str:
    suffix = Path(name).suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".csv", ".txt"):
        return "csv"
    return "jsonl" if first_char == "{" else "csv"


class _Counted:
    """Lines of a binary stream as text, counting the bytes consumed (for progress)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.bytes = 0
        self.lineno = 0

    def __iter__(self) -> Iterator[str]:
        for raw in self.stream:
            self.bytes += len(raw)
            self.lineno += 1
            try:
                yield raw.decode("utf-8-sig" if self.lineno == 1 else "utf-8")
            except UnicodeDecodeError:
                raise UsageError(f"line {self.lineno}: not UTF-8 text") from None


def _value_bytes(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def records(lines: _Counted, fmt: str, name: str) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) pairs; a L{UsageError} naming the line for anything malformed."""
    if fmt == "jsonl":
        for line in lines:
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            where = f"{name}:{lines.lineno}"
            try:
                obj = json.loads(stripped)
            except json.JSONDecodeError as exc:
                raise UsageError(f"{where}: not JSON ({exc.msg})") from None
            if not isinstance(obj, dict) or "key" not in obj or "value" not in obj:
                raise UsageError(f'{where}: expected an object with "key" and "value"')
            key = obj["key"]
            if not isinstance(key, str) or not key:
                raise UsageError(f'{where}: "key" must be a non-empty string')
            yield key.encode("utf-8"), _value_bytes(obj["value"])
        return
    reader = csv.reader(lines)
    first = True
    for row in reader:
        where = f"{name}:{lines.lineno}"
        if not row or all(not cell.strip() for cell in row):
            continue
        if first and [c.strip().lower() for c in row] == ["key", "value"]:
            first = False
            continue
        first = False
        if len(row) != 2:
            raise UsageError(f"{where}: expected 2 columns (key,value), found {len(row)}; "
                             'quote values that contain commas: k,"a, b"')
        if not row[0]:
            raise UsageError(f"{where}: empty key")
        yield row[0].encode("utf-8"), row[1].encode("utf-8")


def _chunks(pairs: Iterable[tuple[bytes, bytes]], size: int) -> Iterator[list[tuple[bytes, bytes]]]:
    chunk: list[tuple[bytes, bytes]] = []
    for pair in pairs:
        chunk.append(pair)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def run(ns: argparse.Namespace) -> Outcome:
    if ns.batch < 1:
        raise UsageError("--batch must be at least 1")
    if ns.file == "-":
        stream: IO[bytes] = sys.stdin.buffer
        name, total = "<stdin>", None
    else:
        path = Path(ns.file)
        try:
            stream = open(path, "rb")  # noqa: SIM115 - closed in finally
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}") from None
        name, total = str(path), path.stat().st_size
    try:
        peek = stream.peek(64) if hasattr(stream, "peek") else b""
        first_char = peek.lstrip(b"\xef\xbb\xbf \t\r\n")[:1].decode("ascii", "replace")
        fmt = detect_format(name, first_char) if ns.format == "auto" else ns.format
        lines = _Counted(stream)
        address = parse_address(ns.server)
        client = None if ns.dry_run else connect(address, timeout=ns.timeout,
                                                 consistency=ns.consistency)
        bar = ProgressBar(total, f"load {Path(name).name}", unit=" bytes" if total else " keys")
        loaded = 0
        started = time.monotonic()
        try:
            for chunk in _chunks(records(lines, fmt, name), ns.batch):
                if client is not None:
                    args: list[bytes] = []
                    for key, value in chunk:
                        args += [key, value]
                    try:
                        with errors_mapped(address):
                            command(client, "MSET", *args)
                    except CLIError as exc:
                        exc.args = (f"{exc.message} (after {loaded} keys were loaded; the batch "
                                    f"ending at {name}:{lines.lineno} may be partly written)",)
                        raise
                loaded += len(chunk)
                bar.update(lines.bytes if total else loaded, f"{loaded:,} keys")
        finally:
            bar.close()
            if client is not None:
                client.close()
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    elapsed = time.monotonic() - started
    rate = loaded / elapsed if elapsed > 0 else 0.0
    verb = "checked" if ns.dry_run else "loaded"
    where = "" if ns.dry_run else f" into {address}"
    return Outcome(
        {"file": name, "format": fmt, "loaded" if not ns.dry_run else "checked": loaded,
         "seconds": round(elapsed, 3), "dry_run": bool(ns.dry_run)},
        f"{verb} {loaded:,} keys from {name} ({fmt}){where} in {elapsed:.2f}s ({rate:,.0f} keys/s)",
    )

