"""A progress bar on stderr, drawn only when stderr is a terminal (never in pipes or logs)."""

from __future__ import annotations

import sys
import time
from typing import IO

__all__ = ["ProgressBar", "render_bar"]


def render_bar(fraction: float, width: int = 30) -> str:
    """C{[#########.....................]} for C{fraction} in [0, 1]."""
    fraction = min(1.0, max(0.0, fraction))
    filled = int(round(fraction * width))
    return "[" + "#" * filled + "." * (width - filled) + "]"


class ProgressBar:
    """C{update(done)} redraws at most ten times a second; C{close()} clears the line."""

    def __init__(self, total: float | None, label: str = "", *, stream: IO[str] | None = None,
                 enabled: bool | None = None, unit: str = "") -> None:
        self.total = total
        self.label = label
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.started = time.monotonic()
        self._last = 0.0

    def update(self, done: float, extra: str = "", force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        if self.total:
            fraction = done / self.total
            line = f"{self.label} {render_bar(fraction)} {fraction * 100:5.1f}%"
        else:
            line = f"{self.label}"
        count = f"{done:,.0f}" if not self.total else f"{done:,.0f}/{self.total:,.0f}"
        line += f" {count}{self.unit}"
        if extra:
            line += f"  {extra}"
        self.stream.write("\r\033[K" + line)
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()
