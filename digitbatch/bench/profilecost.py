"""What the drift profile of each chunk costs a scoring task (``bench score``).

On the same chunks of MNIST images, in one thread (as a scoring worker's
BLAS), interleaved and the best of a few repeats each (the machine is
shared): a store chunk's numpy work without the profile (read from the
store, ``score_chunk``, the confusion counts) and the profile alone
(:func:`digitbatch.profile.chunk_profile`). Their ratio is an upper bound
of what the profile costs store scoring end to end, whose tasks also write
their rows and commit records and whose runs start a cluster.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from . import find_mnist

REPEATS = 5
# chunks compared at most (held in memory for the profile's turn)
MAX_CHUNKS = 8


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def lines(model, store, *, repeats: int = REPEATS, max_chunks: int = MAX_CHUNKS
          ) -> Iterator[str]:
    """The rows of the comparison on ``store``'s first ``max_chunks`` chunks with compact
    ``model``."""
    from threadpoolctl import threadpool_limits

    from ..chunkio import read_rows
    from ..profile import INPUT_EVERY, chunk_profile
    from ..scoring.record import chunk_counts

    which = range(min(len(store.chunks), max_chunks))
    n = sum(store.chunks[i][1] - store.chunks[i][0] for i in which)
    images_arr, labels_arr = store.images, store.labels

    def task():  # a store chunk's numpy work, as score_store_chunk does it (no writes)
        out = []
        for i in which:
            a, b = store.chunks[i]
            images = read_rows(images_arr, i)
            labels = model.target(read_rows(labels_arr, i))
            pred, margin, _ = model.score_chunk(images, proba=False)
            chunk_counts(labels, pred.astype(np.int8), model.n_classes)
            out.append((images, pred, margin, labels, np.arange(a, b)))
        return out

    every = INPUT_EVERY
    with threadpool_limits(1):
        chunks = task()

        def prof():
            for images, pred, margin, labels, rows in chunks:
                chunk_profile(images, pred, margin, labels, model.classes, rows=rows,
                              input_every=every)

        t_task = t_prof = float("inf")
        for _ in range(repeats):  # interleaved: both see the same machine
            t_task = min(t_task, _best(task, 1))
            t_prof = min(t_prof, _best(prof, 1))
    share = t_prof / t_task
    yield (f"drift profile cost ({model.name}, {n:,} images in {len(which)} chunks, 1 "
           f"thread, best of {repeats}):")
    yield (f"  read + score_chunk + counts: {t_task:.3f} s ({n / t_task:,.0f} img/s); "
           f"profile alone: {t_prof:.4f} s ({n / t_prof:,.0f} img/s)")
    yield (f"  the profile (input statistics of one row in {every}) adds {share:.1%} to a "
           f"store chunk's numpy work (target: under 5% of store scoring throughput)")


def run(*, mnist_dir=None, workdir=None) -> Iterator[str]:
    """Ingest MNIST, train ``sgd`` on it, and compare on its 70,000 images."""
    from ..ingestion import ingest
    from ..layout import open_store
    from ..modelio import load_model
    from ..training import train

    mnist = find_mnist(mnist_dir)
    own = workdir is None
    work = Path(tempfile.mkdtemp(prefix="digitbatch-bench-profile-")) if own else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    try:
        store = work / "mnist.zarr"
        if not store.exists():
            ingest(mnist, store)
        model = work / "profile-model-sgd"
        if not model.exists():
            train(store, model, model="sgd")
        yield from lines(load_model(model).model, open_store(store))
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)
