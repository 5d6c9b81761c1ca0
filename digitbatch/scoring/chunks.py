"""The per-chunk worker functions of scoring: read, predict, write, commit.

Each function scores one :class:`~digitbatch.scoring.tasks.ChunkTask` on a
worker and returns its index: the rows go to the output first and the
commit record last (:func:`digitbatch.scoring.output.write_chunk`), with
the chunk's counts (:func:`digitbatch.scoring.record.chunk_counts`), and only
while the run still holds its lease (``lease``: its lock's token).
Predictions come from :func:`digitbatch.determinism.deterministic_scores`
(BLAS on one thread), so a retried or resumed chunk rewrites the same bytes.

- :func:`score_store_chunk`: one chunk of a store (the keys chunk is copied as stored).
- :func:`score_archive_chunk`: one slot chunk of an archive: its members are
  read (where the task holds references), decoded and normalised as ingest
  does (:func:`~digitbatch.sources.taskdecode.decode_entries`),
  labelled (folder or CSV), predicted and written to staging, one row per
  member slot.
"""

from __future__ import annotations

import numpy as np

from ..determinism import deterministic_scores
from ..digits import LABEL_DTYPE, UNKNOWN_LABEL
from ..errors import ScoreError
from ..layout import check_labels, copy_chunk, read_rows
from ..profile import chunk_profile, input_every
from ..sources.labels import LabelMap
from ..sources.listing import unpack
from ..sources.taskdecode import decode_entries
from .handles import open_array_cached
from .output import PRED_FILL, write_chunk, write_slots
from .record import chunk_counts
from .seen import seen_mask
from .tasks import ChunkTask

# An archive chunk's images are scored this many at a time: a model's work
# arrays grow with the rows it scores at once (the kernel models' by about
# 24 KiB a row), and an archive's slot chunks are up to 8192 members, so a
# worker's memory would otherwise grow with the archive's size.
SCORE_ROWS = 2048

# Chunk index -> the key of the member a task of this worker process is
# decoding now: what a chunk cancelled for running too long was stuck on
# (the runner asks a worker through Client.run, see decoding).
_DECODING: dict[int, str] = {}


def decoding(i: int) -> str | None:
    """The member key chunk ``i`` is decoding in this process, if it is decoding one."""
    return _DECODING.get(i)


def score_store_chunk(task: ChunkTask, *, store_path: str, out_path: str, model,
                      proba: bool, lease: str | None = None,
                      train_rows: tuple[int, int] | None = None) -> int:
    """Score rows ``[start, stop)`` of store chunk ``index``: write them, then commit.

    ``train_rows``: the rows the model was trained on, when the store is its
    training store (counted apart: :mod:`digitbatch.scoring.seen`).
    """
    i, start, stop = task.index, task.start, task.stop
    store_images = open_array_cached(store_path, "images", "r")
    images = read_rows(store_images, i, reuse=True)
    labels = model.target(check_labels(read_rows(open_array_cached(store_path, "labels", "r"), i),
                                       where=f"store {store_path}, chunk {i}"))
    if images.shape[0] != stop - start:
        raise ScoreError(f"chunk {i} of {store_path}: {images.shape[0]} rows, expected {stop - start}")
    copy_chunk(open_array_cached(store_path, "keys", "r"), open_array_cached(out_path, "keys"), i)
    sc = deterministic_scores(model, images, proba=proba, full=True)
    pred = sc.pred.astype(np.int8)
    counts = chunk_counts(labels, pred, model.n_classes, confidence=sc.confidence,
                          seen=seen_mask(start, stop, train_rows))
    counts["profile"] = chunk_profile(images, pred, sc.margin, labels, model.classes, rows=start,
                                      input_every=input_every(store_images.shape[0]))  # (drift)
    write_chunk(out_path, i, start, stop, pred=pred, margin=sc.margin,
                proba=sc.proba if proba else None, keys=None,
                gap=sc.gap, second=sc.second.astype(np.int8), counts=counts, lease=lease)
    return i


def score_archive_chunk(task: ChunkTask, *, out_path: str, model, proba: bool,
                        container: str, kind: str, limit: int, labels: LabelMap | None,
                        lease: str | None = None, offset: int = 0) -> int:
    """Decode, label, predict and write one archive slot chunk, then commit it.

    ``offset``: the staging row of member 0 (:func:`~digitbatch.scoring.plan.slot_layout`).
    """
    i, start = task.index, task.start

    def busy(key: str) -> None:
        _DECODING[i] = key

    try:
        got = decode_entries(container, kind, unpack(task.packed), limit=limit, busy=busy)
    finally:
        _DECODING.pop(i, None)
    n = len(got.keys)
    images, valid, flags = got.digits, got.ok, got.flags  # (flags: for the drift profile)
    rejects = [(j, [r.key, r.reason]) for j, r, _ in got.rejects]  # (slot, [key, reason])
    if labels:
        lab = np.full(n, UNKNOWN_LABEL, LABEL_DTYPE)
        for j in np.flatnonzero(valid).tolist():
            label = labels.labels.get(got.keys[j], got.folder[j])
            if isinstance(label, str):  # a bad label in the CSV
                rejects.append((j, [got.keys[j], label]))
                valid[j] = False
            elif label is not None:
                lab[j] = label
    else:  # each valid member's folder label
        folder = np.array([UNKNOWN_LABEL if f is None else f for f in got.folder], LABEL_DTYPE)
        lab = np.where(valid, folder, np.array(UNKNOWN_LABEL, LABEL_DTYPE))
    rejects = [r for _, r in sorted(rejects, key=lambda r: r[0])]
    keys = np.array(got.keys, dtype=object)
    pred = np.full(n, PRED_FILL, np.int8)
    margin = np.full(n, np.nan, np.float32)
    gap = np.full(n, np.nan, np.float32)
    second = np.full(n, PRED_FILL, np.int8)
    probs = np.full((n, model.n_classes), np.nan, np.float32) if proba else None
    idx = np.flatnonzero(valid)
    conf = None
    confs = []
    for a in range(0, idx.size, SCORE_ROWS):
        part = idx[a:a + SCORE_ROWS]
        sc = deterministic_scores(model, images[part], proba=proba, full=True)
        pred[part], margin[part], gap[part], second[part] = sc.pred, sc.margin, sc.gap, sc.second
        confs.append(sc.confidence)
        if proba:
            probs[part] = sc.proba
    if confs and all(c is not None for c in confs):
        conf = np.concatenate(confs)
    elif not idx.size and model.has_proba and model.calibration is not None:
        conf = np.zeros(0)
    target = model.target(lab[idx])
    counts = chunk_counts(target, pred[idx], model.n_classes, rejects=rejects,
                          confidence=conf)
    counts["profile"] = chunk_profile(  # (drift)
        images[idx], pred[idx], margin[idx], target, model.classes,
        normalisation=(idx.size, *np.count_nonzero(flags[idx], axis=0).tolist()))
    write_slots(out_path, i, start, offset=offset, valid=valid, labels=lab, pred=pred, margin=margin,
                proba=probs, keys=keys, gap=gap, second=second, counts=counts, lease=lease)
    return i
