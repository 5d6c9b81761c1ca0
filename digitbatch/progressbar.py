"""The CLI's progress display: counted in images, on stderr, only on a terminal.

Library functions take a ``progress(n, total=None)`` callable; this is the
one the CLI passes. It draws nothing unless stderr is a TTY and ``--quiet``
is off, so scheduled runs and pipes get clean logs.
"""

from __future__ import annotations

import sys
import time


class Progress:
    """``progress(n, total=None)``: add ``n`` images; ``total`` once when known."""

    def __init__(self, label: str, *, enabled: bool | None = None, stream=None,
                 min_interval: float = 0.2):
        self.stream = stream or sys.stderr
        if enabled is None:
            enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled = enabled
        self.label = label
        self.done = 0
        self.total: int | None = None
        self.t0 = time.perf_counter()
        self._last = 0.0
        self.min_interval = min_interval

    def __call__(self, n: int, total: int | None = None) -> None:
        if total is not None:
            self.total = total
        self.done += n
        now = time.perf_counter()
        if self.enabled and (now - self._last >= self.min_interval
                             or (self.total is not None and self.done >= self.total)):
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        rate = self.done / max(now - self.t0, 1e-9)
        if self.total:
            frac = min(1.0, self.done / self.total)
            bar = "#" * int(30 * frac) + "-" * (30 - int(30 * frac))
            text = (f"\r{self.label} [{bar}] {self.done:,}/{self.total:,} images "
                    f"({100 * frac:.0f}%) {rate:,.0f} images/s")
        else:
            text = f"\r{self.label}: {self.done:,} images {rate:,.0f} images/s"
        self.stream.write(text)
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.done:
            self._draw(time.perf_counter())
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
