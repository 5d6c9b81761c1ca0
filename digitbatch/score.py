"""The scoring graph: map a saved model over store chunks, reduce confusion counts.

One task per store chunk. Each task reads its chunk, predicts with a pure
numpy kernel, writes its (chunk-aligned) slice of the output and returns
its 10x10 confusion counts and prediction histogram, which are summed
here; predictions are never gathered in one place.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from . import cluster, metrics
from .errors import ScoreError
from .kernels import confusion_counts, prediction_histogram
from .layout import COMPRESSORS, open_store
from .modelio import load_model

log = logging.getLogger(__name__)

PRED_FILL = -1  # not a label: rows never written read as -1
METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class ScoreResult:
    out: str
    metrics: dict

    @property
    def accuracy(self):
        return self.metrics.get("accuracy")


def score_chunk(bounds: tuple[int, int], *, store_path: str, out_path: str, model) -> dict:
    """Score rows ``[start, stop)``: write ``pred`` there, return the counts."""
    start, stop = bounds
    src = zarr.open_group(store_path, mode="r")
    images = src["images"][start:stop]
    labels = model.target(src["labels"][start:stop])
    pred = model.predict(images).astype(np.int8)
    out = zarr.open_group(out_path, mode="r+")
    out["pred"][start:stop] = pred
    out["keys"][start:stop] = src["keys"][start:stop]
    k = model.n_classes
    return {"confusion": confusion_counts(labels, pred, k), "hist": prediction_histogram(pred, k),
            "n": stop - start, "n_unlabeled": int(np.count_nonzero(labels < 0))}


def score(store: str | Path, *, model: str | Path, out: str | Path,
          scheduler: str | None = None) -> ScoreResult:
    """Predict every row of ``store`` with ``model`` into a new output group ``out``."""
    s = open_store(store)
    loaded = load_model(model)
    out = Path(out)
    if out.exists():
        raise ScoreError(f"output {out} already exists: choose another --out")
    t0 = time.perf_counter()
    g = zarr.open_group(str(out), mode="w-")
    c = s.chunk_size
    g.create_array("pred", shape=(s.n,), chunks=(c,), dtype="int8", fill_value=PRED_FILL,
                   compressors=COMPRESSORS)
    g.create_array("keys", shape=(s.n,), chunks=(c,), dtype=str)
    k = loaded.model.n_classes
    cm = np.zeros((k, k), dtype=np.int64)
    hist = np.zeros(k, dtype=np.int64)
    n = n_unlabeled = 0
    with cluster.executor(scheduler) as ex:
        if ex.client is None:
            parts = (score_chunk(b, store_path=str(s.path), out_path=str(out),
                                 model=loaded.model) for b in s.chunks)
        else:
            parts = _dask_results(ex.client, s, out, loaded.model)
        for part in parts:
            cm += part["confusion"]
            hist += part["hist"]
            n += part["n"]
            n_unlabeled += part["n_unlabeled"]
    seconds = time.perf_counter() - t0
    result = metrics.summarize(cm)
    result.update({
        "n_images": n,
        "n_unlabeled": n_unlabeled,
        "prediction_histogram": hist.tolist(),
        "seconds": round(seconds, 3),
        "images_per_second": round(n / seconds, 1) if seconds > 0 else None,
        "model": {"path": str(loaded.path), "name": loaded.model.name, "sha256": loaded.sha256},
        "input": {"path": str(s.path), "checksum": s.checksum},
    })
    (out / METRICS_FILE).write_text(json.dumps(result, indent=2) + "\n")
    log.info("scored %d images in %.2f s (accuracy %s)", n, seconds, result["accuracy"])
    return ScoreResult(str(out), result)


def _dask_results(client, s, out, model):
    # The model goes to each worker once; tasks refer to it (dask-ml#842).
    model_future = client.scatter(model, broadcast=True)
    futures = client.map(score_chunk, s.chunks, store_path=str(s.path), out_path=str(out),
                         model=model_future, pure=False)
    for fut in futures:
        yield fut.result()
