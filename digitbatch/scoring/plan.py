"""The scoring plan: what one run maps over, as a typed object the runner executes.

:func:`make_plan` looks at the input: a digitbatch store becomes one
:class:`~digitbatch.scoring.tasks.ChunkTask` per store chunk (run on
threads, several chunks to a Dask task); an image directory, tar or zip is
listed once (:func:`digitbatch.sources.listing.list_archive`) and cut into
slot chunks of ``chunk_size`` members, each task carrying its entries
packed (run on worker processes, one chunk to a task). A plan can be
printed and tested without a cluster.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from .. import storage
from ..errors import ScoreError
from ..layout import chunk_bounds, open_store, validate_chunk_size
from ..modelio import check_model_for_store
from ..sources.archive import detect_image_source
from ..sources.labels import load_labels
from ..sources.listing import Listing, list_archive, pack
from .chunks import decoding, score_archive_chunk, score_store_chunk
from .output import create_staging
from .tasks import MAX_KEYS_LISTED, ChunkTask, Work, listed

log = logging.getLogger(__name__)

# An archive's slot chunks (one task each) hold at most chunk_size members,
# and fewer in a small archive, so that every worker has work from the
# start and the first chunk commits early: about ARCHIVE_TASKS tasks, of
# MIN_SLOT to MAX_SLOT members (a task costs a few writes and a commit).
ARCHIVE_TASKS = 16
MIN_SLOT, MAX_SLOT = 1024, 8192
# The first task holds only this many members (the others a whole slot), so
# that the first chunk commits soon after the cluster is up, whatever the
# slot size: fewer than fitjit.LOAD_AFTER scans, so that this task never
# shares its worker with the loading of the compiled kernels. Its slots lie
# at the end of staging chunk 0, which no other task writes: every later
# task still writes whole staging chunks (:func:`slot_layout`).
FIRST_SLOT = 512


def slot_size(n: int, chunk_size: int) -> int:
    """Members per archive slot chunk for ``n`` members and output chunks of ``chunk_size``."""
    return min(chunk_size, max(MIN_SLOT, min(MAX_SLOT, -(-n // ARCHIVE_TASKS))))


def slot_layout(n: int, slot: int) -> tuple[list[tuple[int, int]], int, int | None]:
    """``(bounds, offset, first)``: the member ranges of an archive's tasks, the
    staging row of member 0, and the first task's size when it is not a whole slot.

    The first task takes :data:`FIRST_SLOT` members and the others ``slot``
    each. Member ``m`` is staging row ``m + offset``, with ``offset = slot -
    first``: the first task's rows fill the end of staging chunk 0 and task
    ``k`` (from 1) fills staging chunk ``k``, so no two tasks write one chunk.
    """
    first = min(FIRST_SLOT, slot)
    if first == slot or n <= first:
        return chunk_bounds(n, slot), 0, None
    rest = [(a + first, b + first) for a, b in chunk_bounds(n - first, slot)]
    return [(0, first), *rest], slot - first, first


@dataclass
class ScorePlan:
    """One scoring run's input, its chunks, and the work that scores them."""

    n: int  # output rows (store) or member slots (archive)
    chunk_size: int
    checksum: str  # the store's content checksum, or the archive's fingerprint
    input: dict  # metrics.json's "input"
    n_rejected: int  # refused before this run (by ingest)
    bounds: list[tuple[int, int]] = field(repr=False)
    work: Work = field(repr=False)
    # called with the output path before tasks run (archive staging)
    prepare: Callable[[Path], None] | None = field(default=None, repr=False)
    listing: Listing | None = field(default=None, repr=False)
    slot_size: int | None = None  # an archive's members per task (its staging chunks)
    first_slot: int | None = None  # an archive's first task's members, when fewer

    @property
    def n_chunks(self) -> int:
        return len(self.bounds)

    @property
    def archive(self) -> bool:
        return self.listing is not None

    def tasks(self, done: set[int]) -> list[ChunkTask]:
        """The chunks not in ``done``, in order (an archive's entries are packed
        into each as it is submitted: :attr:`~.tasks.Work.fill`)."""
        return [ChunkTask(i, a, b) for i, (a, b) in enumerate(self.bounds) if i not in done]


def is_store(source: Path) -> bool:
    """A store, or a path that is not an archive (open_store says what it lacks)."""
    return (source / "zarr.json").exists() or not source.exists()


def make_plan(source: Path, model, *, out_path: str, proba: bool, labels, chunk_size: int,
              limit: int, stack: contextlib.ExitStack) -> ScorePlan:
    """The plan of scoring ``source`` with ``model`` into ``out_path``.

    ``stack`` holds a remote archive's local copy for the run.
    """
    if is_store(source):
        if labels is not None:
            raise ScoreError("--labels applies to archives; a store already holds its labels")
        return _store_plan(source, model, out_path=out_path, proba=proba)
    return _archive_plan(source, model, out_path=out_path, proba=proba, labels=labels,
                         chunk_size=chunk_size, limit=limit, stack=stack)


def _store_plan(source: Path, model, *, out_path: str, proba: bool) -> ScorePlan:
    s = open_store(source)
    check_model_for_store(model, s)  # its classes can count the store's labels

    def describe(task: ChunkTask) -> list[str]:
        a, b = task.start, task.stop
        try:
            keys = s.keys
            return ([str(keys[a]), str(keys[b - 1])] if b - a > MAX_KEYS_LISTED
                    else [str(k) for k in keys[a:b]])
        except Exception as exc:  # the message must not fail because the store is unreadable
            log.debug("cannot read the keys of rows %d-%d: %s", a, b, exc)
            return []

    return ScorePlan(
        n=s.n, chunk_size=s.chunk_size, checksum=s.checksum,
        input={"path": str(s.path), "kind": "store", "checksum": s.checksum},
        n_rejected=int(s.meta.get("n_rejects", 0)), bounds=list(s.chunks),
        work=Work(fn=score_store_chunk,
                  kwargs={"store_path": str(s.path), "proba": proba, "out_path": out_path},
                  broadcast={"model": model}, describe=describe, processes=False, batch=True),
    )


def _archive_plan(source: Path, model, *, out_path: str, proba: bool, labels, chunk_size: int,
                  limit: int, stack: contextlib.ExitStack) -> ScorePlan:
    chunk_size = validate_chunk_size(chunk_size)
    label_map = load_labels(labels) if labels is not None else None
    origin, identity = str(source), None
    if not storage.is_local(source):
        # a copy in this process's temporary directory, which the workers
        # cannot see: every member's bytes travel in its task (streamed)
        identity = storage.identity(source)
        source = stack.enter_context(storage.fetched(origin))
    kind = detect_image_source(source)
    if kind is None:
        raise ScoreError(f"{source} is neither a digitbatch store nor an image directory, tar or zip")
    listing = list_archive(source, kind, limit=limit, identity=identity)
    entries = listing.entries
    checksum = listing.fingerprint
    n = len(entries)
    slot = slot_size(n, chunk_size)
    bounds, offset, first = slot_layout(n, slot)

    def describe(task: ChunkTask) -> list[str]:
        return listed([e.key for e in entries[task.start:task.stop]])

    def fill(task: ChunkTask) -> ChunkTask:
        return replace(task, packed=pack(entries[task.start:task.stop]))

    return ScorePlan(
        n=n, chunk_size=chunk_size, checksum=checksum,
        input={"path": str(source.resolve()) if identity is None else origin,
               "kind": f"archive ({kind})", "checksum": checksum,
               "n_members": n, "labels_file": str(labels) if labels else None},
        n_rejected=0, bounds=bounds, slot_size=slot, first_slot=first,
        work=Work(fn=score_archive_chunk,
                  kwargs={"proba": proba, "container": str(source), "kind": kind,
                          "limit": limit, "out_path": out_path, "offset": offset},
                  broadcast={"model": model, "labels": label_map}, describe=describe,
                  stuck_on=decoding, processes=True, batch=False, fill=fill),
        prepare=lambda out: create_staging(out, n=n + offset, chunk_size=slot,
                                           n_classes=model.n_classes, proba=proba),
        listing=listing,
    )
