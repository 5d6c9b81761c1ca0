"""What the drift profile of each chunk costs a scoring task (``bench score``).

On the same chunks of MNIST images, in one thread (as a scoring worker's
BLAS), one chunk after the other, each chunk's task and profile timed in
turn and the best of a few repeats of each kept; in CPU time of the
process (``time.process_time``): on a shared machine wall time counts the
other processes' turns too, which a short measurement dodges more often
than a long one: a store chunk's numpy work without the profile (read from the
store, ``score_chunk``, the confusion counts) and the profile alone
(:func:`digitbatch.profile.chunk_profile`), with the input statistics of
one row in 32 (a large store) and of every row (a small one). Their ratio is an upper bound
of what the profile costs store scoring end to end, whose tasks also write
their rows and commit records and whose runs start a cluster.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from . import find_mnist, scratch

REPEATS = 7
# chunks compared at most (held in memory for the profile's turn)
MAX_CHUNKS = 8


def lines(model, store, *, repeats: int = REPEATS, max_chunks: int = MAX_CHUNKS
          ) -> Iterator[str]:
    """The rows of the comparison on ``store``'s first ``max_chunks`` chunks with compact
    ``model``."""
    from threadpoolctl import threadpool_limits

    from ..chunkio import read_rows
    from ..profile import INPUT_ROWS, chunk_profile, input_every
    from ..scoring.record import chunk_counts

    bounds = store.chunks
    which = range(min(len(bounds), max_chunks))
    n = sum(bounds[i][1] - bounds[i][0] for i in which)
    images_arr, labels_arr = store.images, store.labels

    def task(i):  # a store chunk's numpy work, as score_store_chunk does it (no writes)
        images = read_rows(images_arr, i)
        labels = model.target(read_rows(labels_arr, i))
        pred, margin, _ = model.score_chunk(images, proba=False)
        chunk_counts(labels, pred.astype(np.int8), model.n_classes)
        return images, pred, margin, labels

    def prof(i, every, images, pred, margin, labels):
        chunk_profile(images, pred, margin, labels, model.classes, rows=bounds[i][0],
                      input_every=every)

    # a store at archive scale (4M images) measures the input statistics of one row
    # in `large`; a store of fewer than 2 * INPUT_ROWS rows of every row
    large = input_every(4_000_000)
    t_task, t_prof = 0.0, {large: 0.0, 1: 0.0}
    with threadpool_limits(1):
        for i in which:  # chunk by chunk, interleaved: all see the same machine
            best = {"task": float("inf"), large: float("inf"), 1: float("inf")}
            for _ in range(repeats):
                t0 = time.process_time()
                out = task(i)
                best["task"] = min(best["task"], time.process_time() - t0)
                for every in (large, 1):
                    t0 = time.process_time()
                    prof(i, every, *out)
                    best[every] = min(best[every], time.process_time() - t0)
            t_task += best["task"]
            for every in (large, 1):
                t_prof[every] += best[every]
    yield (f"drift profile cost ({model.name}, {n:,} images in {len(which)} chunks, 1 "
           f"thread, CPU time, per chunk the best of {repeats}):")
    yield (f"  read + score_chunk + counts (a store chunk's numpy work, no writes): "
           f"{t_task:.3f} s ({n / t_task:,.0f} img/s)")
    for every, what in ((large, f"input statistics of one row in {large}, as a store of "
                                f"4M images"), (1, f"input statistics of every row, as a "
                                               f"store of under {2 * INPUT_ROWS:,} images")):
        yield (f"  profile, {what}: {t_prof[every]:.4f} s, {t_prof[every] / t_task:.1%} of "
               f"the chunk's numpy work")
    yield ("  (store scoring end to end also writes rows and commit records and runs Dask: "
           "the profile's share of its throughput is smaller; target under 5%)")


def run(*, mnist_dir=None, workdir=None) -> Iterator[str]:
    """Ingest MNIST, train ``sgd`` on it, and compare on its 70,000 images."""
    from ..ingestion import ingest
    from ..layout import open_store
    from ..modelio import load_model
    from ..training import train

    mnist = find_mnist(mnist_dir)
    with scratch(workdir, "digitbatch-bench-profile-") as work:
        store = work / "mnist.zarr"
        if not store.exists():
            ingest(mnist, store)
        model = work / "profile-model-sgd"
        if not model.exists():
            train(store, model, model="sgd")
        yield from lines(load_model(model).model, open_store(store))
