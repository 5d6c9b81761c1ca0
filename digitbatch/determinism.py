"""BLAS on one thread while scoring: the same output bytes on every scheduler and machine.

The scoring stage's chunk functions predict through :func:`deterministic_scores`;
a scoring run holds :func:`one_blas_thread` in the process that runs it.
"""

from __future__ import annotations

import contextlib
import threading


_BLAS = None  # a ThreadpoolController, made once per process (its library scan is slow)
_BLAS_LOCK = threading.Lock()
_BLAS_PINNED = False  # BLAS is on one thread in this process (see deterministic_scores)


def _blas():
    global _BLAS
    if _BLAS is None:
        from threadpoolctl import ThreadpoolController

        _BLAS = ThreadpoolController()
    return _BLAS


def deterministic_scores(model, images, *, proba: bool = True, full: bool = False):
    """``model.score_chunk`` (``full``: ``score_chunk_full``) with BLAS on one thread.

    OpenBLAS sums in a different order with more threads, which changes the
    last bits of float32 decision values, hence of ``proba`` and ``margin``
    (never ``pred``: close rows are rescored in float64). One thread makes
    the output bytes the same on every scheduler and machine size.

    The limit is process-wide and is set once, not per call: worker threads
    score at once, and a limit undone by one thread while another still
    multiplies (or toggled between 1 and n threads between calls, seen to
    change the bytes) is not deterministic. In a worker process it stays
    set, as Dask's own default worker environment has it
    (``OPENBLAS_NUM_THREADS=1``); in the process that runs a scoring job,
    :func:`one_blas_thread` holds it for the run and undoes it after.
    """
    global _BLAS_PINNED
    if not _BLAS_PINNED:
        with _BLAS_LOCK:
            if not _BLAS_PINNED:
                _blas().limit(limits=1, user_api="blas")
                _BLAS_PINNED = True
    return model.score_chunk_full(images, proba=proba) if full else \
        model.score_chunk(images, proba=proba)


@contextlib.contextmanager
def one_blas_thread():
    """BLAS on one thread in this process for the block, restored after."""
    global _BLAS_PINNED
    with _BLAS_LOCK:
        limiter = _blas().limit(limits=1, user_api="blas")
        was, _BLAS_PINNED = _BLAS_PINNED, True
    try:
        yield
    finally:
        with _BLAS_LOCK:
            limiter.restore_original_limits()
            _BLAS_PINNED = was
