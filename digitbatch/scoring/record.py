"""The counts a chunk commits, their reduction, and the whole metrics.json record.

Every field of ``metrics.json`` is made here (docs/schemas.md describes
them; :mod:`digitbatch.scoring.output` writes the file): each chunk's
commit record carries its confusion counts and prediction histogram
(:func:`chunk_counts`), the run sums them pairwise (:func:`reduce_records`)
without ever gathering predictions, and :func:`build_record` turns the
total into the record, per-class figures by :func:`digitbatch.metrics.summarize`.
"""

from __future__ import annotations

import numpy as np

from .. import calibration, metrics
from ..drift import Thresholds, drift_block
from ..kernels import confusion_counts, prediction_histogram
from ..profile import reduce_profiles
from . import seen as seen_rows

# Bumped when a field of metrics.json is renamed or changes meaning (docs/schemas.md).
SCHEMA_VERSION = 1
# metrics.json lists at most this many rejects (n_rejected counts them all)
MAX_REJECTS_LISTED = 1000


def chunk_counts(target: np.ndarray, pred: np.ndarray, n_classes: int, *,
                 rejects: list[list[str]] | None = None, confidence: np.ndarray | None = None,
                 seen: np.ndarray | None = None) -> dict:
    """What one chunk commits: confusion counts against ``target`` (rows with an
    unknown label skipped), the prediction histogram, its row counts, and for
    archive slot chunks its rejected members (``[key, reason]``).

    ``confidence``: the rows' calibrated top probability, counted in reliability
    bins for the labelled rows (training rows left out); ``seen``: which rows
    the model was trained on (:mod:`digitbatch.scoring.seen`), counted apart.
    """
    counts = {"confusion": confusion_counts(target, pred, n_classes),
              "hist": prediction_histogram(pred, n_classes),
              "n": int(pred.shape[0]), "n_unlabeled": int(np.count_nonzero(target < 0))}
    if rejects is not None:
        counts.update({"n_rejected": len(rejects), "rejects": rejects})
    counts.update(seen_rows.seen_counts(target, pred, n_classes, seen))
    if confidence is not None:
        use = (target >= 0) & (True if seen is None else ~seen)
        rel = calibration.reliability_counts(confidence[use], pred[use] == target[use])
        counts["reliability"] = {k: v.tolist() for k, v in rel.items()}
    return counts


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


def build_record(records: list[dict], *, model, model_path: str, model_sha256: str,
                 input: dict, n_rejected_before: int, seconds: float, n_this_run: int,
                 resumed: bool, run_id: str, model_via: str | None = None,
                 reference: dict | None = None, thresholds: Thresholds | None = None,
                 train_rows: tuple[int, int] | None = None) -> dict:
    """The metrics.json record of a run from its commit records, in chunk order.

    ``n_rejected_before``: members refused before scoring (by ingest, for a
    store input). ``n_this_run``: images of the chunks this run scored.
    ``model_via``: the pointer (``models/current``) the model was resolved from.
    ``reference``: the model manifest's ``drift_reference`` (None: it has
    none); ``thresholds``: the PSI thresholds of the ``drift`` block.
    ``train_rows``: the rows the model was trained on, when the input is its
    training store (their figures are kept apart from the headline).
    """
    total = reduce_records(records, model.n_classes)
    rejects = [r for rec in records for r in rec.get("rejects", [])]
    k = model.n_classes
    result = seen_rows.headline(total["confusion"], seen_rows.reduce_seen(records, k), train_rows)
    rel = calibration.reduce_reliability([r.get("reliability") for r in records])
    result["calibration"] = calibration.reliability_block(rel)
    result.update({
        "schema_version": SCHEMA_VERSION,
        "n_images": total["n"],
        "n_scored": total["n"],
        "n_rejected": n_rejected_before + len(rejects),
        "n_unlabeled": total["n_unlabeled"],
        "rejects": rejects[:MAX_REJECTS_LISTED],
        "prediction_histogram": total["hist"].tolist(),
        "classes": [int(c) for c in model.classes],
        "target": "multiclass" if model.binary_digit is None else f"is-{model.binary_digit}",
        "margin": "probability" if model.has_proba else "decision value",
        "seconds": round(seconds, 3),
        "n_scored_this_run": n_this_run,
        "images_per_second": round(n_this_run / seconds, 1) if seconds > 0 else None,
        "resumed": resumed,
        "run_id": run_id,
        "model": {"path": model_path, "name": model.name, "sha256": model_sha256,
                  **({"resolved_from": model_via} if model_via else {})},
        "input": input,
    })
    result["drift"] = drift_block(  # (the chunks' profiles summed pairwise: digitbatch.drift)
        reduce_profiles([r.get("profile") for r in records]), reference,
        thresholds or Thresholds(), n_rejected=result["n_rejected"],
        accuracy=result.get("accuracy"), margin=result["margin"], n_classes=model.n_classes)
    return result
