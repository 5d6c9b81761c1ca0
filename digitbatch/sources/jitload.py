"""When a process loads numba kernels: the switch-off, the threshold and the background thread.

Importing numba and loading compiled kernels costs a worker process about a
second of CPU, which the kernels win back only over some tens of thousands
of images; so a :class:`KernelLoader` starts loading (on a background
thread) only once its owner has asked for ``load_after`` images' worth,
and the owner's numpy path serves until the kernels are in. A process
loads at most once (one thread, ever). :func:`available` is False when
numba is not installed, or when ``DIGITBATCH_NO_JIT`` is set.
(:mod:`.fitjit` owns the kernels and what loading them means.)
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


@functools.cache
def installed() -> bool:
    """Whether numba can be imported (without importing it)."""
    return importlib.util.find_spec("numba") is not None


def available() -> bool:
    """Whether compiled kernels may be used (numba installed, not switched off)."""
    return installed() and not os.environ.get("DIGITBATCH_NO_JIT")


def compile_in(namespace: dict, names) -> None:
    """Replace each function ``names`` of a module's ``namespace`` by its
    numba-compiled form (cached on disk, ``nogil``), callees first: a kernel
    calls the others by the module global, which is compiled by then. The
    owner's loader calls this; the first calls load (or compile) them."""
    import numba

    for name in names:
        namespace[name] = numba.njit(cache=True, nogil=True)(namespace[name])


class KernelLoader:
    """Loads kernels with ``load`` (on a thread of its own), once, when asked to."""

    def __init__(self, what: str, load: Callable[[], None]):
        self.what = what
        self._load = load
        self.loaded = threading.Event()
        self._lock = threading.Lock()
        self.threads: list[threading.Thread] = []  # the loader, once started
        self.asked = 0

    def ready(self, n: int, after: int, *, start: bool = False) -> bool:
        """Whether the kernels are in, for ``n`` images about to be processed;
        once ``after`` images have been asked for (or at once with ``start``),
        loading starts where :func:`available`."""
        if not available():
            return False
        if self.loaded.is_set():
            return True
        self.asked += n
        if self.asked < after and not start:
            return False
        with self._lock:
            if not self.threads:
                t = threading.Thread(target=self._run, name="digitbatch-jitload", daemon=True)
                self.threads.append(t)
                t.start()
        return False

    def wait(self) -> None:
        """Load now and wait for it; RuntimeError when loading failed."""
        self.ready(0, 0, start=True)
        if self.threads:
            self.threads[0].join()
        if not self.loaded.is_set():
            raise RuntimeError(f"{self.what} could not be loaded (see the log)")

    def _run(self) -> None:
        try:
            self._load()
            self.loaded.set()
        except Exception:  # the numpy path goes on serving
            log.warning("%s could not be loaded; using numpy", self.what, exc_info=True)
