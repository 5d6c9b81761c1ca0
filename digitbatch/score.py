"""The scoring graph: map a saved model over store chunks; exactly-once, resumable.

One task per store chunk, or per batch of up to 4 chunks when there are
enough of them (:func:`digitbatch.score_tasks.batches`: fewer Dask tasks,
less scheduler Python). The model goes to each worker once (a task result,
not embedded in every task: dask-ml#842). Each chunk's work reads it,
predicts with the model's numpy kernel, writes its chunk-aligned rows of
the output and then commits them (see :mod:`digitbatch.predictions`); the
metrics are reduced from the commit records, so predictions are never
gathered in one place, and a resumed run counts every chunk exactly once.

Faults on the cluster (tests/faults): a killed worker's chunks are rerun
by Dask (a chunk rewrites the same bytes); a chunk whose workers keep dying
(an image that crashes the decoder) is given up after Dask's
``distributed.scheduler.allowed-failures``, and a chunk running longer than
``task_timeout`` is cancelled; either way the other chunks are still
scored and committed, then :class:`~digitbatch.errors.ChunkFailedError`
names the failed chunks and their image keys, and ``--resume`` redoes only
those.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import metrics, storage
from .errors import ScoreError
from .kernels import confusion_counts, prediction_histogram
from .ingest import DEFAULT_MAX_MEMBER_BYTES
from .layout import (
    DEFAULT_CHUNK_SIZE, chunk_bounds, copy_chunk, open_store, read_rows, validate_chunk_size,
)
from .modelio import load_model
from .predictions import (  # noqa: F401  (PRED_FILL: re-exported)
    METRICS, PRED_FILL, SUCCESS, IncompleteOutputError, OutputSpec, check_resume, committed,
    create_output, finalize, open_array_cached, run_lock, write_chunk,
)

from .determinism import deterministic_scores, one_blas_thread
from .score_tasks import MAX_KEYS_LISTED, DEFAULT_TASK_TIMEOUT, run, task_images

log = logging.getLogger(__name__)

METRICS_FILE = METRICS
# Bumped when a field of metrics.json is renamed or changes meaning (docs/schemas.md).
METRICS_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ScoreResult:
    out: str
    metrics: dict

    @property
    def accuracy(self):
        return self.metrics.get("accuracy")


def score_chunk(task: tuple[int, int, int], *, store_path: str, out_path: str, model,
                proba: bool) -> int:
    """Score rows ``[start, stop)`` of chunk ``i``: write them, then commit. Returns ``i``."""
    i, start, stop = task
    images = read_rows(open_array_cached(store_path, "images", "r"), i, reuse=True)
    labels = model.target(read_rows(open_array_cached(store_path, "labels", "r"), i))
    if images.shape[0] != stop - start:
        raise ScoreError(f"chunk {i} of {store_path}: {images.shape[0]} rows, expected {stop - start}")
    copy_chunk(open_array_cached(store_path, "keys", "r"), open_array_cached(out_path, "keys"), i)
    pred, margin, probs = deterministic_scores(model, images, proba=proba)
    pred = pred.astype(np.int8)
    k = model.n_classes
    counts = {"confusion": confusion_counts(labels, pred, k),
              "hist": prediction_histogram(pred, k),
              "n": stop - start, "n_unlabeled": int(np.count_nonzero(labels < 0))}
    write_chunk(out_path, i, start, stop, pred=pred, margin=margin,
                proba=probs if proba else None, keys=None, counts=counts)
    return i


def reduce_records(records: list[dict], k: int) -> dict:
    """Sum the commit records pairwise (a tree sum), as one would across workers."""
    parts = [(np.asarray(r["confusion"], np.int64), np.asarray(r["hist"], np.int64),
              int(r["n"]), int(r["n_unlabeled"])) for r in records]
    if not parts:
        return {"confusion": np.zeros((k, k), np.int64), "hist": np.zeros(k, np.int64),
                "n": 0, "n_unlabeled": 0}
    while len(parts) > 1:
        nxt = [tuple(a + b for a, b in zip(parts[j], parts[j + 1]))
               for j in range(0, len(parts) - 1, 2)]
        if len(parts) % 2:
            nxt.append(parts[-1])
        parts = nxt
    cm, hist, n, n_unl = parts[0]
    return {"confusion": cm, "hist": hist, "n": n, "n_unlabeled": n_unl}


def score(
    source: str | Path,
    *,
    model: str | Path,
    out: str | Path,
    scheduler: str | None = None,
    resume: bool = False,
    proba: bool = False,
    break_lock: bool = False,
    labels: str | Path | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
    progress=None,
    task_timeout: float | None = DEFAULT_TASK_TIMEOUT,
) -> ScoreResult:
    """Predict every image of ``source`` with ``model`` into the output group ``out``.

    Parameters
    ----------
    source : path or URL
        A digitbatch store, or an image directory / tar / zip scored directly
        (decoded, normalised and labelled as ingest does, no store written).
        URLs (``s3://...``): see :mod:`digitbatch.storage`; an archive at a
        URL is copied to a temporary directory and its members streamed to
        the workers.
    model, out : paths or URLs
        Model directory, output group to create.
    scheduler : str, optional
        See :mod:`digitbatch.cluster`.
    resume : bool
        Continue an interrupted run into ``out`` (same model, input and
        options), scoring only the chunks it had not committed. Without it
        an existing ``out`` is refused.
    proba : bool
        Also write the (N, k) class probabilities.
    break_lock : bool
        Remove a lock left by a run that died.
    labels : path, optional
        For archives: a key,label CSV, as ``ingest --labels``.
    chunk_size : int
        For archives: members per task and rows per output chunk.
    progress : callable, optional
        ``progress(n, total=None)``: called with ``total`` once, then with the
        images of each chunk as it is committed (for a progress bar).
    task_timeout : float, optional
        On a Dask cluster, seconds a chunk may run on a worker; a chunk
        running longer is cancelled (and its worker restarted, when it has a
        nanny, to free the stuck thread). None or 0: no limit.

    Raises
    ------
    ChunkFailedError
        Chunks failed on the cluster: their workers died too often while
        running them (``distributed.scheduler.allowed-failures``), or they
        ran past ``task_timeout`` (:class:`~digitbatch.errors.ChunkTimeoutError`).
        Every other chunk is scored and committed first, so ``resume``
        redoes only the failed ones.
    """
    task_timeout = _check_timeout(task_timeout)
    loaded = load_model(model)
    m = loaded.model
    if proba and not m.has_proba:
        raise ScoreError(f"--proba: model {m.name!r} (loss {m.loss!r}) gives no probabilities")
    out = storage.to_path(out)
    if out.exists() and not resume:
        raise ScoreError(f"output {out} already exists: choose another --out, or --resume it")
    with contextlib.ExitStack() as stack:
        return _score(stack, source, loaded, out, scheduler=scheduler, resume=resume,
                      proba=proba, break_lock=break_lock, labels=labels,
                      chunk_size=chunk_size, max_member_bytes=max_member_bytes,
                      progress=progress, task_timeout=task_timeout)


def _score(stack, source, loaded, out, *, scheduler, resume, proba, break_lock, labels,
           chunk_size, max_member_bytes, progress, task_timeout) -> ScoreResult:
    m = loaded.model
    plan = _plan(storage.to_path(source), m, proba=proba, labels=labels,
                 chunk_size=chunk_size, limit=max_member_bytes, stack=stack)
    spec = OutputSpec(n=plan.n, chunk_size=plan.chunk_size, n_classes=m.n_classes,
                      proba=bool(proba), model_sha256=loaded.sha256,
                      input_checksum=plan.checksum)
    t0 = time.perf_counter()
    with run_lock(out, break_lock=break_lock):
        if resume and (out / "zarr.json").exists() and _has_spec(out):
            check_resume(out, spec)
        else:
            create_output(out, spec, arrays=plan.archive is None, partial_ok=resume)
        if (out / SUCCESS).exists():
            log.info("%s is already complete", out)
            return ScoreResult(str(out), open_metrics(out))
        if plan.prepare is not None:
            plan.prepare(out)
        plan.kwargs["out_path"] = str(out)
        done = committed(out)
        todo = plan.tasks(set(done))
        log.info("scoring %d of %d chunks (%d committed before)", len(todo), plan.n_chunks,
                 len(done))
        if progress is not None:
            progress(0, total=sum(task_images(t) for t in todo))
        with one_blas_thread():  # (for tasks that run in this process's threads)
            run(todo, scheduler, plan.fn, plan.kwargs, broadcast=plan.broadcast,
                 progress=progress, task_timeout=task_timeout, describe=plan.describe,
                 processes=plan.processes, batch=plan.batch, stuck_on=plan.stuck_on,
                 committed=lambda: set(committed(out)))
        records = committed(out)
        missing = sorted(set(range(plan.n_chunks)) - set(records))
        if missing:
            raise IncompleteOutputError(f"chunks {missing[:10]} of {out} were not committed")
        ordered = [records[i] for i in sorted(records)]
        _sweep_temporaries(out)
        if plan.archive is not None:
            from .score_archive import compact

            compact(out, chunk_size=plan.chunk_size, n_classes=m.n_classes, proba=proba)
        seconds = time.perf_counter() - t0
        n_this_run = sum(task_images(t) for t in todo)
        total = reduce_records(ordered, m.n_classes)
        rejects = [r for rec in ordered for r in rec.get("rejects", [])]
        result = metrics.summarize(total["confusion"])
        result.update({
            "schema_version": METRICS_SCHEMA_VERSION,
            "n_images": total["n"],
            "n_scored": total["n"],
            "n_rejected": plan.n_rejected + len(rejects),
            "n_unlabeled": total["n_unlabeled"],
            "rejects": rejects[:1000],
            "prediction_histogram": total["hist"].tolist(),
            "classes": [int(c) for c in m.classes],
            "target": "multiclass" if m.binary_digit is None else f"is-{m.binary_digit}",
            "margin": "probability" if m.has_proba else "decision value",
            "seconds": round(seconds, 3),
            "n_scored_this_run": n_this_run,
            "images_per_second": round(n_this_run / seconds, 1) if seconds > 0 else None,
            "resumed": bool(done),
            "model": {"path": str(loaded.path), "name": m.name, "sha256": loaded.sha256},
            "input": plan.input,
        })
        finalize(out, result)
    log.info("scored %d images in %.2f s (accuracy %s)", n_this_run, seconds, result["accuracy"])
    return ScoreResult(str(out), result)


def _has_spec(out: Path) -> bool:
    from .predictions import ATTRS_KEY

    return ATTRS_KEY in storage.open_group(out, mode="r").attrs


@dataclass
class _Plan:
    """What one scoring run maps over: a store's chunks or an archive's slot chunks."""

    n: int
    chunk_size: int
    checksum: str
    input: dict
    n_rejected: int
    fn: object
    kwargs: dict
    broadcast: dict
    tasks_of: object
    n_chunks: int
    archive: object = None
    prepare: object = None  # called with the output path before tasks run
    describe: object = None  # task -> the image keys it covers (for error messages)
    stuck_on: object = None  # on a worker: chunk i -> the member it is decoding, or None
    # A LocalCluster started for the run has worker processes, or threads
    # (store chunks: our numpy kernel only, which releases the GIL; no
    # worker processes to start and stop).
    # Archives decode with Pillow, whose crash on a hostile image must kill
    # only a worker process.
    processes: bool = True
    # Several chunks may share a Dask task (score_tasks.batches): store chunks
    # are short. Archive chunks decode images for a long time each.
    batch: bool = False

    def tasks(self, done: set[int]) -> list:
        return self.tasks_of(done)


def _plan(source: Path, model, *, proba, labels, chunk_size, limit, stack=None) -> _Plan:
    """``stack``: an ExitStack that holds a remote archive's local copy for the run."""
    if (source / "zarr.json").exists() or not source.exists():
        if labels is not None:
            raise ScoreError("--labels applies to archives; a store already holds its labels")
        s = open_store(source)
        chunks = s.chunks
        return _Plan(
            n=s.n, chunk_size=s.chunk_size, checksum=s.checksum,
            input={"path": str(s.path), "kind": "store", "checksum": s.checksum},
            n_rejected=int(s.meta.get("n_rejects", 0)),
            fn=score_chunk, kwargs={"store_path": str(s.path), "proba": proba},
            broadcast={"model": model}, n_chunks=len(chunks),
            tasks_of=lambda done: [(i, a, b) for i, (a, b) in enumerate(chunks) if i not in done],
            describe=lambda task: _store_keys(s, task), processes=False, batch=True,
        )
    from .score_archive import create_staging, decoding, fingerprint, list_slots, score_slots, tasks
    from .sources.labels import load_labels

    chunk_size = validate_chunk_size(chunk_size)
    label_map = load_labels(labels) if labels is not None else None
    origin, identity = str(source), None
    if not storage.is_local(source):
        # a copy in this process's temporary directory, which the workers
        # cannot see: every member's bytes travel in its task (streamed)
        identity = storage.identity(source)
        if stack is None:
            raise ScoreError(f"{origin}: a remote archive needs a run to hold its local copy")
        source = stack.enter_context(storage.fetched(origin))
    kind, seekable, entries = list_slots(source, limit=limit, stream=identity is not None)
    checksum = fingerprint(source, entries, identity=identity)
    n_chunks = len(chunk_bounds(len(entries), chunk_size))

    def tasks_of(done):
        return list(tasks(entries, chunk_size, done))

    plan = _Plan(
        n=len(entries), chunk_size=chunk_size, checksum=checksum,
        input={"path": str(source.resolve()) if identity is None else origin,
               "kind": f"archive ({kind})", "checksum": checksum,
               "n_members": len(entries), "labels_file": str(labels) if labels else None},
        n_rejected=0, fn=score_slots,
        kwargs={"proba": proba, "container": str(source), "kind": kind, "limit": limit},
        broadcast={"model": model, "labels": label_map}, n_chunks=n_chunks,
        tasks_of=tasks_of, archive=(kind, seekable),
        prepare=lambda out: create_staging(out, n=len(entries), chunk_size=chunk_size,
                                           n_classes=model.n_classes, proba=proba),
        describe=lambda task: _listed([e.key for e in task[2]]), stuck_on=decoding,
    )
    return plan


def open_metrics(out: Path) -> dict:
    import json

    return json.loads((storage.to_path(out) / SUCCESS).read_text())


def _check_timeout(task_timeout) -> float | None:
    if task_timeout is None:
        return None
    if isinstance(task_timeout, bool) or not isinstance(task_timeout, (int, float)) \
            or task_timeout != task_timeout or task_timeout < 0:
        raise ScoreError(f"task_timeout must be a number of seconds >= 0 (0: no limit), "
                         f"got {task_timeout!r}")
    return float(task_timeout) or None


def _listed(keys: list[str]) -> list[str]:
    """``keys``, or its first and last when there are many."""
    return list(keys) if len(keys) <= MAX_KEYS_LISTED else [keys[0], keys[-1]]


def _store_keys(store, task) -> list[str]:
    i, a, b = task
    try:
        keys = store.keys
        return ([str(keys[a]), str(keys[b - 1])] if b - a > MAX_KEYS_LISTED
                else [str(k) for k in keys[a:b]])
    except Exception as exc:  # the message must not fail because the store is unreadable
        log.debug("cannot read the keys of rows %d-%d: %s", a, b, exc)
        return []


def _sweep_temporaries(out: Path) -> int:
    """Remove the temporary files of writers killed before their rename.

    A chunk file or commit record is written to ``.NAME.tmp-ID`` and renamed;
    a worker killed in between leaves the temporary behind (the rerun task
    writes its own). Called when every chunk is committed, so no writer of
    this run is left.
    """
    n = 0
    if not storage.is_local(storage.to_path(out)):
        return 0  # object stores publish each object whole: no temporaries
    for p in Path(out).rglob(".*.tmp-*"):
        if p.is_file():
            p.unlink(missing_ok=True)
            n += 1
    if n:
        log.info("removed %d temporary files left by killed workers in %s", n, out)
    return n


