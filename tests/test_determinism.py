"""Reproducible scores: BLAS on one thread (digitbatch.determinism)."""

from __future__ import annotations

import numpy as np

from digitbatch.modelio import load_model

from .conftest import synthetic_digits


def test_concurrent_worker_threads_score_byte_identically(model_dir):
    """Worker threads of one process share the process-wide BLAS limit: every
    thread's margins and probabilities are those of a sequential run (a limit
    set and undone per call changed their last bits)."""
    import threading

    from digitbatch.determinism import deterministic_scores, one_blas_thread

    m = load_model(model_dir).model
    x, _ = synthetic_digits(8192, seed=11)
    with one_blas_thread():
        want = deterministic_scores(m, x, proba=True)
    same = []

    def work():
        for _ in range(4):
            got = deterministic_scores(m, x, proba=True)
            same.append(all(np.array_equal(a, b) for a, b in zip(got, want)))

    with one_blas_thread():
        threads = [threading.Thread(target=work) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert same == [True] * 8
