"""The scoring graph: map a saved model over store chunks; exactly-once, resumable.

One task per store chunk. The model goes to each worker once (scattered,
not embedded in every task: dask-ml#842). Each task reads its chunk,
predicts with the model's numpy kernel, writes its chunk-aligned rows of
the output and then commits them (see :mod:`digitbatch.predictions`); the
metrics are reduced from the commit records, so predictions are never
gathered in one place, and a resumed run counts every chunk exactly once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from . import cluster, metrics
from .errors import ScoreError
from .kernels import confusion_counts, prediction_histogram
from .layout import open_store
from .modelio import load_model
from .predictions import (
    METRICS, SUCCESS, IncompleteOutputError, OutputSpec, check_resume, committed, create_output,
    finalize, run_lock, write_chunk,
)

log = logging.getLogger(__name__)

PRED_FILL = -1
METRICS_FILE = METRICS
TASK_RETRIES = 2


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
    src = zarr.open_group(store_path, mode="r")
    images = src["images"][start:stop]
    labels = model.target(src["labels"][start:stop])
    keys = src["keys"][start:stop]
    pred, margin, probs = model.score_chunk(images)
    pred = pred.astype(np.int8)
    k = model.n_classes
    counts = {"confusion": confusion_counts(labels, pred, k),
              "hist": prediction_histogram(pred, k),
              "n": stop - start, "n_unlabeled": int(np.count_nonzero(labels < 0))}
    write_chunk(out_path, i, start, stop, pred=pred, margin=margin,
                proba=probs if proba else None, keys=keys, counts=counts)
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
    store: str | Path,
    *,
    model: str | Path,
    out: str | Path,
    scheduler: str | None = None,
    resume: bool = False,
    proba: bool = False,
    break_lock: bool = False,
) -> ScoreResult:
    """Predict every row of ``store`` with ``model`` into the output group ``out``.

    Parameters
    ----------
    store, model, out : paths
        Input store, model directory, output group to create.
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
    """
    s = open_store(store)
    loaded = load_model(model)
    m = loaded.model
    if proba and not m.has_proba:
        raise ScoreError(f"--proba: model {m.name!r} (loss {m.loss!r}) gives no probabilities")
    out = Path(out)
    if out.exists() and not resume:
        raise ScoreError(f"output {out} already exists: choose another --out, or --resume it")
    spec = OutputSpec(n=s.n, chunk_size=s.chunk_size, n_classes=m.n_classes, proba=bool(proba),
                      model_sha256=loaded.sha256, input_checksum=s.checksum)
    t0 = time.perf_counter()
    with run_lock(out, break_lock=break_lock):
        if resume and (out / "pred" / "zarr.json").exists():
            check_resume(out, spec)
        else:
            create_output(out, spec)
        if (out / SUCCESS).exists():
            log.info("%s is already complete", out)
            return ScoreResult(str(out), open_metrics(out))
        done = committed(out)
        todo = [(i, a, b) for i, (a, b) in enumerate(s.chunks) if i not in done]
        log.info("scoring %d of %d chunks (%d committed before)", len(todo), len(s.chunks), len(done))
        _run(todo, scheduler, store_path=str(s.path), out_path=str(out), model=m, proba=proba)
        records = committed(out)
        missing = sorted(set(range(len(s.chunks))) - set(records))
        if missing:
            raise IncompleteOutputError(f"chunks {missing[:10]} of {out} were not committed")
        seconds = time.perf_counter() - t0
        n_this_run = sum(b - a for _, a, b in todo)
        total = reduce_records([records[i] for i in sorted(records)], m.n_classes)
        result = metrics.summarize(total["confusion"])
        result.update({
            "n_images": total["n"],
            "n_scored": total["n"],
            "n_rejected": int(s.meta.get("n_rejects", 0)),
            "n_unlabeled": total["n_unlabeled"],
            "prediction_histogram": total["hist"].tolist(),
            "classes": [int(c) for c in m.classes],
            "target": "multiclass" if m.binary_digit is None else f"is-{m.binary_digit}",
            "margin": "probability" if m.has_proba else "decision value",
            "seconds": round(seconds, 3),
            "n_scored_this_run": n_this_run,
            "images_per_second": round(n_this_run / seconds, 1) if seconds > 0 else None,
            "resumed": bool(done),
            "model": {"path": str(loaded.path), "name": m.name, "sha256": loaded.sha256},
            "input": {"path": str(s.path), "checksum": s.checksum},
        })
        finalize(out, result)
    log.info("scored %d images in %.2f s (accuracy %s)", n_this_run, seconds, result["accuracy"])
    return ScoreResult(str(out), result)


def open_metrics(out: Path) -> dict:
    import json

    return json.loads((Path(out) / SUCCESS).read_text())


def _run(todo, scheduler, *, store_path, out_path, model, proba) -> None:
    if not todo:
        return
    with cluster.executor(scheduler) as ex:
        if ex.client is None:
            for task in todo:
                score_chunk(task, store_path=store_path, out_path=out_path, model=model,
                            proba=proba)
            return
        from distributed import as_completed

        client = ex.client
        # The model goes to each worker once; tasks refer to it (dask-ml#842).
        model_future = client.scatter(model, broadcast=True, hash=False)
        futures = client.map(score_chunk, todo, store_path=store_path, out_path=out_path,
                             model=model_future, proba=proba, pure=False, retries=TASK_RETRIES)
        for fut in as_completed(futures):
            fut.result()
        del model_future
