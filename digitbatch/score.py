"""The scoring graph: map a saved model over store chunks; exactly-once, resumable.

One task per store chunk. The model goes to each worker once (scattered,
not embedded in every task: dask-ml#842). Each task reads its chunk,
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
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import cluster, metrics, storage
from .errors import ChunkFailedError, ChunkTimeoutError, ScoreError
from .kernels import confusion_counts, prediction_histogram
from .ingest import DEFAULT_MAX_MEMBER_BYTES
from .layout import (
    DEFAULT_CHUNK_SIZE, chunk_bounds, copy_chunk, open_store, read_rows, validate_chunk_size,
)
from .modelio import load_model
from .predictions import (
    METRICS, SUCCESS, IncompleteOutputError, OutputSpec, check_resume, committed, create_output,
    finalize, open_group_cached, run_lock, write_chunk,
)

log = logging.getLogger(__name__)

PRED_FILL = -1
METRICS_FILE = METRICS
TASK_RETRIES = 2
# Seconds a chunk may run on a worker before it is cancelled (None or 0: no limit).
# A 32,768-image chunk scores in about a second and decodes from PNGs in about a
# minute, so only a wedged task (a decoder stuck on a hostile image, a hung
# network read) gets near this.
DEFAULT_TASK_TIMEOUT = 1800.0
# How a chunk failed on the cluster (ChunkFailedError.failures[i]["kind"]).
KILLED, TIMED_OUT, CANCELLED = "workers-died", "timed-out", "cancelled"
# Image keys a ChunkFailedError lists per chunk; a longer chunk gives its first and last.
_MAX_KEYS_LISTED = 20
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
    src = open_group_cached(store_path, "r")
    images = read_rows(src["images"], i, reuse=True)
    labels = model.target(read_rows(src["labels"], i))
    if images.shape[0] != stop - start:
        raise ScoreError(f"chunk {i} of {store_path}: {images.shape[0]} rows, expected {stop - start}")
    copy_chunk(src["keys"], open_group_cached(out_path)["keys"], i)
    pred, margin, probs = deterministic_scores(model, images)
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
    source : path
        A digitbatch store, or an image directory / tar / zip scored directly
        (decoded, normalised and labelled as ingest does, no store written).
    model, out : paths
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
            progress(0, total=sum(_task_images(t) for t in todo))
        _run(todo, scheduler, plan.fn, plan.kwargs, broadcast=plan.broadcast, progress=progress,
             task_timeout=task_timeout, describe=plan.describe)
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
        n_this_run = sum(_task_images(t) for t in todo)
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
            describe=lambda task: _store_keys(s, task),
        )
    from .score_archive import create_staging, fingerprint, list_slots, score_slots, tasks
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
        describe=lambda task: _listed([e.key for e in task[2]]),
    )
    return plan


def open_metrics(out: Path) -> dict:
    import json

    return json.loads((storage.to_path(out) / SUCCESS).read_text())


def deterministic_scores(model, images):
    """``model.score_chunk`` with BLAS on one thread.

    OpenBLAS sums in a different order with more threads, which changes the
    last bits of float32 decision values, hence of ``proba`` and ``margin``
    (never ``pred``: close rows are rescored in float64). One thread makes
    the output bytes the same on every scheduler and machine size.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        return model.score_chunk(images)


def _hold(obj):
    """A task that returns its argument: shared read-only data with lineage."""
    return obj


def _task_images(task) -> int:
    """Images (or archive members) one task covers: what progress counts."""
    return len(task[2]) if isinstance(task[2], list) else task[2] - task[1]


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
    return list(keys) if len(keys) <= _MAX_KEYS_LISTED else [keys[0], keys[-1]]


def _store_keys(store, task) -> list[str]:
    i, a, b = task
    try:
        keys = store.keys
        return ([str(keys[a]), str(keys[b - 1])] if b - a > _MAX_KEYS_LISTED
                else [str(k) for k in keys[a:b]])
    except Exception as exc:  # the message must not fail because the store is unreadable
        log.debug("cannot read the keys of rows %d-%d: %s", a, b, exc)
        return []


def _executing(dask_worker=None) -> dict:
    """On a worker: seconds each task it is executing has run (for ``task_timeout``)."""
    from distributed.metrics import time as now

    t = now()
    tasks = dask_worker.state.tasks
    return {str(k): t - tasks[k].start_time for k in list(dask_worker.active_keys)
            if k in tasks and tasks[k].start_time is not None}


def _stuck_on(i: int) -> str | None:
    """On a worker: the archive member chunk ``i`` is decoding now (None for store chunks)."""
    from .score_archive import decoding

    return decoding(i)


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


def _run(todo, scheduler, fn, kwargs, *, broadcast, progress=None, task_timeout=None,
         describe=None) -> None:
    if not todo:
        return
    with cluster.executor(scheduler) as ex:
        if ex.client is None:
            for task in todo:
                fn(task, **kwargs, **broadcast)
                if progress is not None:
                    progress(_task_images(task))
            return
        client = ex.client
        # The model (and labels) go to each worker once and tasks refer to them
        # (dask-ml#842). Not with scatter: scattered data dies with the worker
        # that holds it ("lost dependencies", found by tests/faults). As the
        # result of a task, the scheduler can recompute it after a worker dies;
        # other workers fetch it from a peer once.
        shared = {k: client.submit(_hold, v, key=f"digitbatch-{k}-{uuid.uuid4().hex}",
                                   pure=False) if v is not None else None
                  for k, v in broadcast.items()}
        futures = client.map(fn, todo, **kwargs, **shared, pure=False, retries=TASK_RETRIES)
        failures = _gather_commits(client, futures, todo, progress=progress,
                                   task_timeout=task_timeout)
        killed = [f for f in failures if f[2] == KILLED]
        if len(killed) > 1:
            # A worker's death counts against every task it held, queued ones too,
            # so a chunk can be given up for dying beside the one that kills its
            # workers. Run the given-up chunks again one at a time: alone, a chunk
            # fails only by itself.
            log.warning("%d chunks were given up after their workers died; running them "
                        "again one at a time to find those that kill their workers",
                        len(killed))
            failures = [f for f in failures if f[2] != KILLED]
            for task, _, _ in sorted(killed, key=lambda f: f[0][0]):
                fut = client.submit(fn, task, **kwargs, **shared, pure=False,
                                    retries=TASK_RETRIES)
                failures += [(t, r + ", running alone too" if k == KILLED else r, k)
                             for t, r, k in _gather_commits(client, [fut], [task],
                                                            progress=progress,
                                                            task_timeout=task_timeout)]
        if failures:
            raise _failed_error(failures, describe, n_tasks=len(todo))


def _gather_commits(client, futures, todo, *, progress, task_timeout) -> list[tuple]:
    """Wait for every chunk task; returns ``(task, reason, kind)`` of those that failed.

    A task that raises re-raises here at once (a bug, or a bad input the
    task names itself). A task the scheduler gives up (KilledWorker: its
    workers died ``allowed-failures`` + 1 times) or cancels, or one running
    past ``task_timeout``, is recorded and the others are still waited for,
    so every chunk that can be committed is.
    """
    from distributed import KilledWorker, wait

    task_of = {f.key: t for f, t in zip(futures, todo)}
    pending = set(futures)
    failures: list[tuple] = []
    poll = None if task_timeout is None else min(max(task_timeout / 10, 0.2), 10.0)
    first_seen: dict[tuple, float] = {}  # (key, worker) -> when first seen processing there
    next_check = 0.0
    while pending:
        try:
            done = wait(pending, timeout=poll, return_when="FIRST_COMPLETED").done
        except TimeoutError:
            done = set()
        for fut in done:
            pending.discard(fut)
            task = task_of[fut.key]
            if fut.status == "finished":
                if progress is not None:
                    progress(_task_images(task))
                continue
            if fut.status == "error":
                exc = fut.exception()
                if not isinstance(exc, KilledWorker):
                    fut.result()  # raises the task's own error, with its traceback
                allowed = getattr(exc, "allowed_failures", None)
                reason = (f"the workers running it died {allowed + 1} times (a crash, e.g. an "
                          f"image that kills the decoder, or killed workers; "
                          f"distributed.scheduler.allowed-failures is {allowed})"
                          if allowed is not None else f"its workers died ({exc})")
                kind = KILLED
            else:
                reason, kind = f"the scheduler {fut.status} it", CANCELLED
            failures.append((task, reason, kind))
        if task_timeout is not None and pending and time.monotonic() >= next_check:
            next_check = time.monotonic() + poll
            for fut, worker, secs in _overdue(client, pending, task_timeout, first_seen):
                i = task_of[fut.key][0]
                log.warning("chunk %d has run %.0f s on %s (task_timeout %g s): cancelling it",
                            i, secs, worker, task_timeout)
                stuck = _ask(client, worker, _stuck_on, i)
                fut.cancel()
                pending.discard(fut)
                failures.append((task_of[fut.key],
                                 f"it ran longer than task_timeout={task_timeout:g} s on worker "
                                 f"{worker}" + (f", stuck decoding {stuck!r}," if stuck else "")
                                 + " and was cancelled", TIMED_OUT))
                _restart(client, worker)
    return failures


def _overdue(client, pending, task_timeout, first_seen) -> list[tuple]:
    """``(future, worker, seconds)`` of pending tasks executing longer than ``task_timeout``.

    The workers say how long each task has been executing; a worker that
    does not answer (its event loop is blocked) is judged by when the
    scheduler was first seen to have handed it the task.
    """
    keys = {f.key: f for f in pending}
    now = time.monotonic()
    on = {}
    for worker, ks in client.processing().items():
        for k in ks:
            if k in keys:
                on[k] = worker
                first_seen.setdefault((k, worker), now)
    # (a task cannot have executed for longer than it was seen processing)
    if not any(now - first_seen[(k, w)] > task_timeout for k, w in on.items()):
        return []
    try:
        running = client.run(_executing, workers=sorted(set(on.values())), on_error="return",
                             callback_timeout=min(task_timeout, 30.0))
    except Exception as exc:  # a worker does not answer
        log.debug("workers did not say what they are executing: %s", exc)
        running = {}
    out = []
    for k, w in on.items():
        report = running.get(w)
        if isinstance(report, dict):
            secs = report.get(str(k))
            if secs is not None and secs > task_timeout:
                out.append((keys[k], w, secs))
        elif now - first_seen[(k, w)] > task_timeout:
            out.append((keys[k], w, now - first_seen[(k, w)]))
    return out


def _ask(client, worker: str, fn, *args):
    """``fn(*args)`` run on ``worker``; None if it fails or does not answer in 10 s."""
    try:
        answer = client.run(fn, *args, workers=[worker], on_error="return",
                            callback_timeout=10).get(worker)
    except Exception as exc:
        log.debug("worker %s did not answer: %s", worker, exc)
        return None
    return None if isinstance(answer, BaseException) else answer


def _restart(client, worker: str) -> None:
    """Restart the worker of a cancelled, stuck task: cancelling does not stop its thread."""
    try:
        client.restart_workers([worker], timeout=60, raise_for_error=False)
    except Exception as exc:  # no nanny, or it is gone already: the task stays cancelled
        log.warning("could not restart worker %s after cancelling its task: %s", worker, exc)


def _failed_error(failures, describe, *, n_tasks: int) -> ChunkFailedError:
    items = []
    for task, reason, kind in sorted(failures, key=lambda f: f[0][0]):
        start = task[1]
        stop = start + _task_images(task)
        keys = describe(task) if describe is not None else []
        items.append({"chunk": int(task[0]), "start": int(start), "stop": int(stop),
                      "keys": keys, "reason": reason, "kind": kind})

    def one(f):
        n = f["stop"] - f["start"]
        if not f["keys"]:
            keys = ""
        elif len(f["keys"]) == 2 and n > _MAX_KEYS_LISTED:
            keys = f", keys {f['keys'][0]!r} ... {f['keys'][1]!r}"
        else:
            keys = ", keys " + ", ".join(repr(k) for k in f["keys"])
        return f"chunk {f['chunk']} (rows {f['start']}-{f['stop'] - 1}{keys}): {f['reason']}"

    cls = ChunkTimeoutError if all(f["kind"] == TIMED_OUT for f in items) else ChunkFailedError
    return cls(f"{len(items)} of {n_tasks} chunks failed on the cluster (the other "
               f"{n_tasks - len(items)} are committed): " + "; ".join(one(f) for f in items)
               + ". Remove or fix those images and rerun with --resume: only the failed "
                 "chunks are redone", items)
