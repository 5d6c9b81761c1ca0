"""What the scoring runner executes: the chunk task type, the work it maps, and batching.

A :class:`ChunkTask` is one output chunk: rows ``[start, stop)`` of a
store chunk, or one slot chunk of an archive (its entries packed with
:func:`digitbatch.sources.listing.pack`). A :class:`Work` says which
per-chunk function scores a task, what goes to every worker once, and how
to describe a task in an error message; the runner knows nothing else of
the input.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

# Store chunks go to Dask in batches of up to this many: each Dask task costs
# the scheduler, worker and client a few ms of Python on their event loops,
# and on a threaded LocalCluster that Python shares the GIL with the chunk
# work (a worker thread coming back from numpy waits for it). 3-4 chunks per
# task scored fastest (README, "Measured defaults").
MAX_CHUNKS_PER_BATCH = 4
# ...but at least this many batches per worker, so that the last ones
# still keep every worker busy (and progress still moves).
MIN_BATCHES_PER_WORKER = 8
# Image keys an error message lists per chunk; a longer chunk gives its first and last.
MAX_KEYS_LISTED = 20


@dataclass(frozen=True)
class ChunkTask:
    """Output chunk ``index``: rows (or archive member slots) ``[start, stop)``."""

    index: int
    start: int
    stop: int
    packed: bytes | None = field(default=None, repr=False)  # an archive chunk's entries

    @property
    def n_images(self) -> int:
        """Images (or archive members) the task covers: what progress counts."""
        return self.stop - self.start


@dataclass(frozen=True)
class Work:
    """How the runner scores tasks: ``fn(task, **kwargs, **broadcast)`` writes and
    commits one chunk and returns its index."""

    fn: Callable[..., int]
    kwargs: dict
    broadcast: dict  # sent to each worker once (the model, a label map)
    # task -> the image keys it covers, for error messages
    describe: Callable[[ChunkTask], list[str]]
    # run on a worker: chunk index -> what it is busy with (the archive member
    # it decodes), named when the chunk is cancelled for running too long
    stuck_on: Callable[[int], str | None] | None = None
    # A LocalCluster started for the run has worker processes, or threads
    # (store chunks: our numpy kernel only, which releases the GIL). Archives
    # decode with Pillow, whose crash on a hostile image must kill only a
    # worker process.
    processes: bool = True
    # Several chunks may share a Dask task (:func:`batches`): store chunks are
    # short. Archive chunks decode images for a long time each.
    batch: bool = False
    # what a task still needs when it is submitted (an archive chunk's packed
    # entries): filled task by task, so that the first goes out without
    # waiting for every other to be filled
    fill: Callable[[ChunkTask], ChunkTask] | None = None

    def filled(self, tasks: list[ChunkTask]) -> list[ChunkTask]:
        """``tasks`` as they are run: :attr:`fill` applied, where there is one."""
        return list(tasks) if self.fill is None else [self.fill(t) for t in tasks]


def listed(keys: list[str]) -> list[str]:
    """``keys``, or its first and last when there are more than :data:`MAX_KEYS_LISTED`."""
    return list(keys) if len(keys) <= MAX_KEYS_LISTED else [keys[0], keys[-1]]


def images_of(tasks: list[ChunkTask]) -> int:
    return sum(t.n_images for t in tasks)


def batches(todo: list[ChunkTask], n_workers: int, *, batch: bool = True) -> list[list[ChunkTask]]:
    """``todo`` in order, as lists of up to :data:`MAX_CHUNKS_PER_BATCH` tasks,
    with at least :data:`MIN_BATCHES_PER_WORKER` lists per worker where
    there are enough tasks (one task per list with ``batch`` false)."""
    size = max(1, min(MAX_CHUNKS_PER_BATCH,
                      len(todo) // (MIN_BATCHES_PER_WORKER * max(1, n_workers)))) if batch else 1
    return [list(todo[a:a + size]) for a in range(0, len(todo), size)]


def run_batch(batch: list[ChunkTask], fn, **kwargs) -> list[int]:
    """Run ``fn(task, **kwargs)`` for each task of a batch, in order (one Dask task)."""
    return [fn(task, **kwargs) for task in batch]
