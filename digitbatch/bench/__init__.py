"""Benchmarks: each prints images/s and peak memory beside its baseline, in one run.

Measured here, never in timed unit tests (machines are noisy).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from ..errors import SourceNotFoundError


@contextmanager
def scratch(workdir: str | os.PathLike | None, prefix: str = "digitbatch-bench-"):
    """A bench's working folder: ``workdir`` (created, kept: its stores and models are
    reused by the next run), or a temporary folder removed afterwards."""
    own = workdir is None
    work = Path(tempfile.mkdtemp(prefix=prefix)) if own else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield work
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)


def find_mnist(mnist_dir: str | os.PathLike | None = None) -> Path:
    """The MNIST IDX directory: the argument, $DIGITBATCH_MNIST_DIR, or ../shared/data/mnist."""
    candidates = [mnist_dir, os.environ.get("DIGITBATCH_MNIST_DIR"),
                  Path.cwd().parent / "shared" / "data" / "mnist",
                  Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist"]
    for c in candidates:
        if c and (Path(c) / "train-images-idx3-ubyte.gz").exists():
            return Path(c)
    raise SourceNotFoundError(
        "full MNIST not found: pass --mnist-dir, set DIGITBATCH_MNIST_DIR, or run from a "
        "checkout next to ../shared/data/mnist"
    )


@dataclass
class Measure:
    label: str
    n: int = 0
    seconds: float = 0.0
    peak_rss: int = 0
    bracket: Measure | None = None  # the baseline measured around this case, if any

    @property
    def rate(self) -> float:
        return self.n / self.seconds if self.seconds else float("nan")

    def row(self, baseline: Measure | None = None) -> str:
        ratio = f"{self.rate / baseline.rate:6.2f}x" if baseline else "  base "
        return (f"{self.label:44s} {self.n:>9,d} {self.seconds:8.2f} s {self.rate:>12,.0f} "
                f"img/s {self.peak_rss / 2**20:8.0f} MiB  {ratio}")


HEADER = (f"{'case':44s} {'images':>9s} {'time':>10s} {'rate':>18s} {'peak RSS':>12s}  ratio")


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy since boot (every core:
    user, nice, system and interrupts; not idle, I/O wait or time stolen by
    other virtual machines). Differences bracket work running in other
    processes, on a machine doing nothing else."""
    t = psutil.cpu_times()
    return sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq"))


class PeakRSS:
    """Samples the summed RSS of this process and all its descendants."""

    def __init__(self, interval: float = 0.1, include_self: bool = True):
        self.interval = interval
        self.include_self = include_self
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        me = psutil.Process()
        total = 0
        procs = me.children(recursive=True)
        for p in [me, *procs] if self.include_self else procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self.peak = self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())


@contextmanager
def measure(label: str, n: int = 0, *, include_self: bool = True):
    """Time a block and sample the peak RSS of this process tree (or only its children)."""
    m = Measure(label, n)
    with PeakRSS(include_self=include_self) as rss:
        t0 = time.perf_counter()
        yield m
        m.seconds = time.perf_counter() - t0
    m.peak_rss = rss.peak
