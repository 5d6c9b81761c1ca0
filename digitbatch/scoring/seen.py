"""Rows the model was trained on: finding them, counting them apart, the honest headline.

When the scored input is the model's own training store (the store's
checksum equals the one its manifest records), the rows of the split it
was fitted on are not evidence of its accuracy. :func:`training_rows`
finds them (the manifest's ``train.rows``, or, for a model trained before
that was recorded, the store's split of that name); every chunk's commit
record counts them apart (``confusion_seen``, by :func:`seen_mask`), and
:func:`headline` makes the unseen rows' accuracy the run's ``headline``
with the training rows' figures in a ``training_rows`` block, labelled as
such (``accuracy`` and the matrix keep counting every labelled row).
The rows held out for calibration belong to the train split and count as
training rows here: the model's probabilities were fitted on them.
"""

from __future__ import annotations

import logging

import numpy as np

from .. import metrics
from ..kernels import confusion_counts
from ..layout import open_store

log = logging.getLogger(__name__)

UNSEEN = "unseen rows: the scored store is the model's training store, its train split left out"


def training_rows(manifest: dict, input: dict) -> tuple[int, int] | None:
    """The row range ``[start, stop)`` of the scored store the model was fitted on,
    or None when the input is not the model's training store."""
    train = manifest.get("train") or {}
    if input.get("kind") != "store" or not train.get("store_checksum") \
            or train.get("store_checksum") != input.get("checksum"):
        return None
    rows = train.get("rows")
    if isinstance(rows, list) and len(rows) == 2 and all(isinstance(v, int) for v in rows):
        return int(rows[0]), int(rows[1])
    try:  # (a model trained before its rows were recorded: the store's split of that name)
        r = open_store(input["path"]).split_rows(train.get("split", "train"))
    except Exception as exc:  # (noqa: a store without the split names no rows)
        log.warning("cannot tell the training rows of %s (%s): all rows count as unseen",
                    input.get("path"), exc)
        return None
    return r.start, r.stop


def seen_mask(start: int, stop: int, rows: tuple[int, int] | None) -> np.ndarray | None:
    """Which of rows ``[start, stop)`` are training rows (None: not the training store)."""
    if rows is None:
        return None
    r = np.arange(start, stop)
    return (r >= rows[0]) & (r < rows[1])


def seen_counts(target: np.ndarray, pred: np.ndarray, n_classes: int,
                seen: np.ndarray | None) -> dict:
    """A chunk's confusion counts of its training rows (empty without ``seen``)."""
    if seen is None:
        return {}
    return {"confusion_seen": confusion_counts(target[seen], pred[seen], n_classes)}


def reduce_seen(records: list[dict], k: int) -> np.ndarray | None:
    """The training rows' confusion counts summed pairwise (None: not the training store)."""
    parts = [r.get("confusion_seen") for r in records]
    if not parts or any(p is None for p in parts):
        return None
    parts = [np.asarray(p, np.int64).reshape(k, k) for p in parts]
    while len(parts) > 1:
        nxt = [parts[j] + parts[j + 1] for j in range(0, len(parts) - 1, 2)]
        if len(parts) % 2:
            nxt.append(parts[-1])
        parts = nxt
    return parts[0]


def headline(total_confusion: np.ndarray, seen: np.ndarray | None,
             rows: tuple[int, int] | None = None) -> dict:
    """The metrics of every labelled row (as before), the run's ``headline`` and,
    when the input is the model's training store, its training rows' figures apart.

    ``headline``: ``accuracy``, ``n_labeled``, ``n_correct`` and ``of`` (what
    they count): every labelled row, or only the unseen ones of a training store.
    """
    out = metrics.summarize(total_confusion)
    if seen is None:
        out["headline"] = _figures(np.asarray(total_confusion), "all labelled rows")
        return out
    out["headline"] = _figures(np.asarray(total_confusion, np.int64) - seen, UNSEEN)
    out["training_rows"] = {**_figures(seen, None), "rows": list(rows) if rows else None,
                            "confusion_matrix": np.asarray(seen).tolist(),
                            "note": "rows the model was fitted (or calibrated) on: not "
                                    "evidence of its accuracy"}
    del out["training_rows"]["of"]
    return out


def _figures(cm: np.ndarray, of: str | None) -> dict:
    n = int(np.sum(cm))
    correct = int(np.trace(cm))
    return {"accuracy": correct / n if n else None, "n_labeled": n, "n_correct": correct,
            "of": of}
