"""Rendering: aligned tables, durations, JSON, and redis-cli style replies. No I/O here.

Each command produces an L{Outcome}: the data (JSON-ready), the human text, and an exit
code; C{main} and the REPL decide where it goes.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "Outcome",
    "table",
    "jsonable",
    "dumps",
    "format_reply",
    "format_seconds",
    "format_ms",
    "iso_utc",
    "percent",
    "value_json",
]


@dataclass
class Outcome:
    """What one command produced.

    @ivar data: the JSON-ready result, printed by C{--json}.
    @ivar text: the human rendering (bytes for a raw value, written as is).
    @ivar code: the exit code.
    @ivar stderr: an extra line for stderr (a not-found notice), or C{None}.
    """

    data: Any
    text: str | bytes
    code: int = 0
    stderr: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    indent: str = "",
    right: Iterable[int] = (),
) -> str:
    """Rows as columns aligned on their widest cell; C{right} lists right-aligned columns.

    >>> print(table(["A", "BB"], [["x", 1], ["yyy", 22]], right=[1]))
    A     BB
    x      1
    yyy   22
    """
    cells = [[str(h) for h in headers]] + [
        ["-" if c is None else str(c) for c in row] for row in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    right_set = set(right)
    lines = []
    for row in cells:
        parts = []
        for i, cell in enumerate(row):
            last = i == len(row) - 1
            if i in right_set:
                parts.append(cell.rjust(widths[i]))
            else:
                parts.append(cell if last else cell.ljust(widths[i]))
        lines.append((indent + "  ".join(parts)).rstrip())
    return "\n".join(lines)


def value_json(value: bytes | None) -> dict[str, Any]:
    """A stored value for JSON: C{value} when it is UTF-8 text, else C{value_base64}."""
    if value is None:
        return {"value": None}
    try:
        return {"value": value.decode("utf-8")}
    except UnicodeDecodeError:
        return {"value_base64": base64.b64encode(value).decode("ascii")}


def jsonable(obj: Any) -> Any:
    """A RESP reply made JSON-ready: bytes become text, maps get text keys, sets lists."""
    if isinstance(obj, bytes | bytearray):
        return bytes(obj).decode("utf-8", errors="backslashreplace")
    if isinstance(obj, dict):
        return {str(jsonable(k)): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Exception):
        return {"error": str(obj)}
    return obj


def dumps(obj: Any) -> str:
    """Pretty, stable JSON text (no trailing newline)."""
    return json.dumps(jsonable(obj), indent=2, sort_keys=False, ensure_ascii=False)


def format_reply(reply: Any, indent: int = 0) -> str:
    """A RESP reply the way redis-cli shows it: C{"text"}, C{(integer) 1}, C{(nil)}, numbered lists."""
    pad = " " * indent
    if reply is None:
        return "(nil)"
    if isinstance(reply, bool):  # RESP3 boolean
        return "(true)" if reply else "(false)"
    if isinstance(reply, int):
        return f"(integer) {reply}"
    if isinstance(reply, float):
        return f"(double) {reply:g}"
    if isinstance(reply, Exception):
        return f"(error) {reply}"
    if isinstance(reply, bytes | bytearray):
        text = bytes(reply).decode("utf-8", errors="backslashreplace")
        if "\n" in text:  # verbatim text such as INFO or HELP: print it as it is
            return text.replace("\r\n", "\n").rstrip("\n")
        return json.dumps(text, ensure_ascii=False)
    if isinstance(reply, str):
        if "\n" in reply:
            return reply.replace("\r\n", "\n").rstrip("\n")
        return reply  # simple strings (OK, PONG) stay bare
    if isinstance(reply, dict):
        if not reply:
            return "(empty hash)"
        lines = []
        width = len(str(len(reply)))
        for i, (k, v) in enumerate(reply.items(), 1):
            prefix = f"{i:>{width}}# "
            inner = format_reply(v, indent + len(prefix))
            key = format_reply(k) if not isinstance(k, str) else json.dumps(k)
            lines.append(f"{pad if i > 1 else ''}{prefix}{key} => {inner}")
        return "\n".join(lines)
    if isinstance(reply, list | tuple | set | frozenset):
        items = list(reply)
        if not items:
            return "(empty array)"
        lines = []
        width = len(str(len(items)))
        for i, v in enumerate(items, 1):
            prefix = f"{i:>{width}}) "
            inner = format_reply(v, indent + len(prefix))
            lines.append(f"{pad if i > 1 else ''}{prefix}{inner}")
        return "\n".join(lines)
    return str(reply)


def format_seconds(seconds: float | None) -> str:
    """A short human duration: C{850ms}, C{4.2s}, C{3m05s}, C{2h10m}."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    return f"{int(seconds // 86400)}d{int(seconds % 86400 // 3600):02d}h"


def format_ms(seconds: float | None) -> str:
    """A latency in milliseconds with sensible precision (C{0.123 ms}, C{2.3 ms}, C{120 ms})."""
    if seconds is None:
        return "-"
    ms = seconds * 1000
    if ms < 1:
        return f"{ms:.3f} ms"
    if ms < 100:
        return f"{ms:.1f} ms"
    return f"{ms:.0f} ms"


def iso_utc(epoch: float) -> str:
    """C{2024-01-15T10:30:45Z}."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def percent(fraction: float | None, digits: int = 1) -> str:
    if fraction is None:
        return "-"
    return f"{fraction * 100:.{digits}f}%"
