"""The CLI's progress display: a bar on a terminal, periodic log lines elsewhere.

Library functions take a ``progress(n, total=None)`` callable; this is the
one the CLI (and ``run``, per step) passes. It counts units (images for
ingest and score; chunks or fits for train, see :mod:`digitbatch.training`):

* on a terminal (stderr a TTY, no ``--quiet``, text logs): a bar redrawn in
  place. :func:`cleared` moves it out of the way while a log record is
  written (:class:`digitbatch.logs.BarAwareHandler`), so the two never share
  a line;
* otherwise (a scheduled run's log, a pipe, ``--log-format json``): an INFO
  record on the ``digitbatch.progress`` logger every ``interval`` seconds,
  from a timer thread, so a chunk that takes minutes still shows the run is
  alive: units done / total, percent, units/s and ETA in the message, and
  the same as structured fields (``step``, ``unit``, ``done``, ``total``,
  ``percent``, ``rate``, ``eta_seconds``; ``images`` when counting images),
  and one last line when the step ends.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import sys
import threading
import time

log = logging.getLogger("digitbatch.progress")

DEFAULT_INTERVAL = 30.0
MODES = ("bar", "log", "off")

_bars: list = []  # the bars on screen now, innermost last
_bars_lock = threading.RLock()


@contextlib.contextmanager
def cleared(stream):
    """Clear a bar drawn on ``stream`` for the block (a log record), redraw it after."""
    with _bars_lock:
        bar = next((b for b in reversed(_bars) if b.stream is stream and b.drawn), None)
        if bar is not None:
            stream.write("\r\x1b[K")
        try:
            yield
        finally:
            if bar is not None:
                bar.draw(time.perf_counter())


def _guard_handlers(stream) -> None:
    """Make every log handler that writes on ``stream`` clear the bar first.

    digitbatch's own (:class:`digitbatch.logs.BarAwareHandler`) does; Dask,
    tornado and bokeh keep stream handlers of their own that do not
    propagate to the root, and would write into the bar's line.
    """
    loggers = [logging.getLogger(), *(lg for lg in list(logging.Logger.manager.loggerDict.values())
                                      if isinstance(lg, logging.Logger))]
    for lg in loggers:
        for h in list(lg.handlers):
            if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is stream \
                    and not getattr(h, "_bar_guarded", False):
                h.emit = functools.partial(_emit_cleared, h.emit, stream)
                h._bar_guarded = True


def _emit_cleared(emit, stream, record) -> None:
    with cleared(stream):
        emit(record)


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}"


class Progress:
    """``progress(n, total=None)``: add ``n`` units; ``total``: units announced (each
    call with ``total`` adds to it: an incremental run announces each input's images
    as it starts it).

    ``mode``: ``"bar"``, ``"log"`` or ``"off"``; None picks ``bar`` when
    ``stream`` is a terminal, else ``log``. ``enabled=False`` is ``off``.
    """

    def __init__(self, label: str, *, enabled: bool | None = None, stream=None,
                 min_interval: float = 0.2, mode: str | None = None,
                 interval: float = DEFAULT_INTERVAL, unit: str = "images"):
        self.stream = stream or sys.stderr
        if mode is None:
            tty = bool(getattr(self.stream, "isatty", lambda: False)())
            mode = "off" if enabled is False else ("bar" if tty or enabled else "log")
        if mode not in MODES:
            raise ValueError(f"progress mode must be one of {MODES}, got {mode!r}")
        if not interval > 0:
            raise ValueError(f"progress interval must be > 0 seconds, got {interval!r}")
        self.mode, self.label, self.unit = mode, label, unit
        self.enabled = mode == "bar"  # (the bar's; kept for callers that ask)
        self.done = 0
        self.total: int | None = None
        self.t0 = time.perf_counter()
        self._last = 0.0
        self.min_interval = min_interval
        self.interval = float(interval)
        self.drawn = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        if mode == "bar":
            with _bars_lock:
                _bars.append(self)
        elif mode == "log":
            # the lines carry the log fields (run id, step, input) of the latest caller
            self._ctx = contextvars.copy_context()
            self._thread = threading.Thread(target=self._tick, daemon=True,
                                            name=f"digitbatch-progress-{label}")
            self._thread.start()

    def __call__(self, n: int, total: int | None = None) -> None:
        with self._lock:
            if total is not None:  # (announced again: more work, e.g. the next input)
                if self.total is None and self.done == 0:
                    self.t0 = time.perf_counter()  # the rate counts from when work starts
                self.total = (self.total or 0) + total
            self.done += n
            if self.mode == "log":
                self._ctx = contextvars.copy_context()
        now = time.perf_counter()
        if self.mode == "bar" and (now - self._last >= self.min_interval
                                   or (self.total is not None and self.done >= self.total)):
            self._last = now
            with _bars_lock:
                self.draw(now)

    # --- figures ---------------------------------------------------------------

    def figures(self, now: float | None = None) -> dict:
        """done, total, percent, rate (units/s), eta_seconds (None when unknown)."""
        with self._lock:
            done, total = self.done, self.total
        elapsed = max((now or time.perf_counter()) - self.t0, 1e-9)
        rate = done / elapsed
        percent = min(100.0, 100.0 * done / total) if total else None
        eta = (max(total - done, 0) / rate if total is not None and rate > 0 else None)
        return {"done": done, "total": total, "percent": percent, "rate": rate,
                "eta_seconds": eta, "elapsed_seconds": elapsed}

    def text(self, now: float | None = None, *, final: bool = False) -> str:
        f = self.figures(now)
        u = self.unit
        head = (f"{f['done']:,}/{f['total']:,} {u} ({f['percent']:.0f}%)" if f["total"]
                else f"{f['done']:,} {u} (total not known yet)")
        tail = (f"in {format_eta(f['elapsed_seconds'])}" if final
                else f"ETA {format_eta(f['eta_seconds'])}")
        return f"{self.label}: {head}, {f['rate']:,.1f} {u}/s, {tail}"

    # --- terminal bar ----------------------------------------------------------

    def draw(self, now: float) -> None:
        f = self.figures(now)
        if f["total"]:
            frac = f["percent"] / 100
            bar = "#" * int(30 * frac) + "-" * (30 - int(30 * frac))
            text = (f"\r{self.label} [{bar}] {f['done']:,}/{f['total']:,} {self.unit} "
                    f"({f['percent']:.0f}%) {f['rate']:,.0f} {self.unit}/s "
                    f"ETA {format_eta(f['eta_seconds'])}")
        else:
            text = f"\r{self.label}: {f['done']:,} {self.unit} {f['rate']:,.0f} {self.unit}/s"
        _guard_handlers(self.stream)
        self.stream.write(text + "\x1b[K")
        self.stream.flush()
        self.drawn = True

    # --- log lines -------------------------------------------------------------

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                ctx, started = self._ctx, self.total is not None or self.done > 0
            if started:  # (not before the step knows what it counts, nor its run id)
                ctx.run(self.log_line)

    def log_line(self, *, final: bool = False) -> None:
        """Log the figures now (the timer thread calls this every ``interval``)."""
        now = time.perf_counter()
        f = self.figures(now)
        fields = {"step": self.label, "unit": self.unit,
                  "progress": "ended" if final else "running",
                  **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in f.items()}}
        if self.unit == "images":
            fields["images"] = f["done"]
        log.info("%s", self.text(now, final=final), extra=fields)

    def close(self) -> None:
        if self.mode == "bar":
            with _bars_lock:
                if self.done or self.drawn:  # (end the bar's line: what follows starts anew)
                    self.draw(time.perf_counter())
                    self.stream.write("\n")
                    self.stream.flush()
                self.drawn = False
                if self in _bars:
                    _bars.remove(self)
        elif self.mode == "log" and self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            if self.done or self.total:
                self._ctx.run(self.log_line, final=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
