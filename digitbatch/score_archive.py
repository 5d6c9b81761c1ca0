"""Scoring an image archive or directory directly, without an intermediate store.

The container's members are listed in source order (as ingest lists them)
and cut into *slots* of ``chunk_size`` members. Each task decodes and
normalises its slots exactly as ingest does, predicts, and writes a staging
chunk (one row per member, a ``valid`` flag, rejected members left unset),
then commits it with its counts and rejects. When every slot chunk is
committed, the valid rows are compacted, in order, into the output arrays,
so the result equals ingest-then-score row for row; the staging group is
then removed and ``_SUCCESS`` written. A killed run resumes from the commit
records; a run killed while compacting compacts again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from .determinism import deterministic_scores
from .errors import ScoreError
from .kernels import confusion_counts, prediction_histogram
from .layout import COMPRESSORS, IMAGE_SHAPE, LABEL_DTYPE, UNKNOWN_LABEL, chunk_bounds
from . import storage
from .predictions import PRED_FILL, open_group_cached, write_chunk
from .sources.base import MemberRef, Reject
from .sources.images import decode_one, detect_image_source, iter_members
from .sources.labels import LabelMap
from .sources.refs import iter_refs, read_refs, seekable_kind

log = logging.getLogger(__name__)

STAGING = "_staging"
# Chunk index -> the key of the member a task of this worker process is
# decoding now: what a chunk cancelled for running too long was stuck on
# (the runner, digitbatch.score_tasks, asks a worker through Client.run).
_DECODING: dict[int, str] = {}


def decoding(i: int) -> str | None:
    """The member key chunk ``i`` is decoding in this process, if it is decoding one."""
    return _DECODING.get(i)


def list_slots(path: Path, *, limit: int, stream: bool = False) -> tuple[str, bool, list]:
    """``(container kind, seekable, entries)``: MemberRef / Member / Reject in source order.

    For a compressed tar the entries are Members holding their bytes, read
    here as a stream (gzip cannot be entered in the middle); ``stream``
    reads every container so (a local copy the workers cannot see).
    """
    kind = detect_image_source(path)
    if kind is None:
        raise ScoreError(f"{path} is neither a digitbatch store nor an image directory, tar or zip")
    seekable = not stream and seekable_kind(path, kind)
    entries = list(iter_refs(path, kind, limit=limit) if seekable
                   else iter_members(path, kind=kind, max_member_bytes=limit))
    return kind, seekable, entries


def fingerprint(path: Path, entries: list, identity: str | None = None) -> str:
    """Identity of an archive for --resume: size, mtime and the member listing.

    ``identity`` replaces size and mtime (a remote archive's size and ETag).
    """
    if identity is None:
        st = os.stat(path)
        identity = f"{st.st_size}:{st.st_mtime_ns}"
    h = hashlib.sha256(f"{identity}:".encode())
    for e in entries:
        h.update(e.key.encode("utf-8", "surrogateescape") + b"\n")
    return "archive-sha256:" + h.hexdigest()


def score_slots(task: tuple[int, int, list], *, out_path: str, model, proba: bool,
                container: str, kind: str, limit: int, labels: LabelMap | None) -> int:
    """Decode, label, predict and write one slot chunk, then commit it."""
    i, start, entries = task
    refs = [e for e in entries if isinstance(e, MemberRef)]
    read = iter(read_refs(container, kind, refs, limit=limit)) if refs else iter(())
    n = len(entries)
    images = np.zeros((n, *IMAGE_SHAPE), np.uint8)
    lab = np.full(n, UNKNOWN_LABEL, LABEL_DTYPE)
    valid = np.zeros(n, bool)
    rejects: list[list[str]] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            for j, e in enumerate(entries):
                item = next(read) if isinstance(e, MemberRef) else e
                if isinstance(item, Reject):
                    rejects.append([item.key, item.reason])
                    continue
                _DECODING[i] = item.key
                out = decode_one(item.data)
                if isinstance(out, str):
                    rejects.append([item.key, out])
                    continue
                label = (labels.labels.get(item.key, item.folder_label) if labels
                         else item.folder_label)
                if isinstance(label, str):  # a bad label in the CSV
                    rejects.append([item.key, label])
                    continue
                images[j], valid[j] = out, True
                lab[j] = UNKNOWN_LABEL if label is None else label
    finally:
        _DECODING.pop(i, None)
    keys = np.array([e.key for e in entries], dtype=object)
    pred = np.full(n, PRED_FILL, np.int8)
    margin = np.full(n, np.nan, np.float32)
    probs = np.full((n, model.n_classes), np.nan, np.float32) if proba else None
    idx = np.flatnonzero(valid)
    if idx.size:
        p, mg, pr = deterministic_scores(model, images[idx], proba=proba)
        pred[idx], margin[idx] = p, mg
        if proba:
            probs[idx] = pr
    target = model.target(lab[idx])
    k = model.n_classes
    counts = {"confusion": confusion_counts(target, pred[idx], k),
              "hist": prediction_histogram(pred[idx], k), "n": int(idx.size),
              "n_unlabeled": int(np.count_nonzero(target < 0)), "n_rejected": len(rejects),
              "rejects": rejects}
    g = open_group_cached(out_path)
    g[f"{STAGING}/valid"][start:start + n] = valid.astype(np.int8)
    g[f"{STAGING}/labels"][start:start + n] = lab
    write_chunk(out_path, i, start, start + n, pred=pred, margin=margin, proba=probs, keys=keys,
                counts=counts, prefix=f"{STAGING}/")
    return i


def tasks(entries: list, chunk_size: int, done: set[int]) -> Iterator[tuple[int, int, list]]:
    for i, (a, b) in enumerate(chunk_bounds(len(entries), chunk_size)):
        if i not in done:
            yield i, a, entries[a:b]


def create_staging(out: Path, *, n: int, chunk_size: int, n_classes: int, proba: bool) -> None:
    g = storage.open_group(out, mode="a")
    st = g.require_group(STAGING)
    c = chunk_size
    for name, dtype, fill in (("pred", "int8", PRED_FILL), ("margin", "float32", np.nan),
                              ("valid", "int8", 0), ("labels", "int8", UNKNOWN_LABEL)):
        if name not in st:
            st.create_array(name, shape=(n,), chunks=(c,), dtype=dtype, fill_value=fill,
                            compressors=COMPRESSORS)
    if proba and "proba" not in st:
        st.create_array("proba", shape=(n, n_classes), chunks=(c, n_classes), dtype="float32",
                        fill_value=np.nan, compressors=COMPRESSORS)
    if "keys" not in st:
        st.create_array("keys", shape=(n,), chunks=(c,), dtype=str)


def compact(out: Path, *, chunk_size: int, n_classes: int, proba: bool) -> int:
    """Copy the valid staging rows, in order, into the output arrays; drop staging."""
    g = storage.open_group(out, mode="r+")
    st = g[STAGING]
    n_slots = st["valid"].shape[0]
    names = ["pred", "margin", "keys", "labels"] + (["proba"] if proba else [])
    for name in names:
        if name in g:
            del g[name]
    c = chunk_size
    shapes = {"proba": (0, n_classes)}
    for name in names:
        src = st[name]
        kw = {"dtype": str} if name == "keys" else {
            "dtype": src.dtype, "fill_value": src.fill_value, "compressors": COMPRESSORS}
        g.create_array(name, shape=shapes.get(name, (0,)),
                       chunks=(c, n_classes) if name == "proba" else (c,), **kw)
    buf: dict[str, list] = {name: [] for name in names}
    written = pending = 0

    def flush(count: int) -> None:
        nonlocal written, pending
        for name in names:
            arr = np.concatenate(buf[name]) if buf[name] else None
            head, rest = arr[:count], arr[count:]
            buf[name] = [rest] if len(rest) else []
            dst = g[name]
            dst.resize((written + count, *dst.shape[1:]))
            dst[written:written + count] = head
        written += count
        pending -= count

    for a, b in chunk_bounds(n_slots, c):
        keep = st["valid"][a:b].astype(bool)
        if not keep.any():
            continue
        for name in names:
            vals = st[name][a:b]
            buf[name].append(np.asarray(vals, dtype=object)[keep] if name == "keys" else vals[keep])
        pending += int(keep.sum())
        while pending >= c:
            flush(c)
    if pending:
        flush(pending)
    del g[STAGING]
    storage.rmtree(storage.to_path(out) / STAGING)
    return written
