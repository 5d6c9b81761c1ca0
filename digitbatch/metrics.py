"""Confusion matrix -> accuracy and per-class precision / recall / F1."""

from __future__ import annotations

import numpy as np


def summarize(cm: np.ndarray) -> dict:
    """Metrics of a confusion matrix (rows = true label, columns = predicted)."""
    cm = np.asarray(cm, dtype=np.int64)
    total = int(cm.sum())
    tp = np.diag(cm).astype(float)
    support = cm.sum(axis=1).astype(float)
    predicted = cm.sum(axis=0).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return {
        "accuracy": float(tp.sum() / total) if total else None,
        "n_labeled": total,
        "confusion_matrix": cm.tolist(),
        "per_class": {
            str(k): {"precision": round(float(precision[k]), 6), "recall": round(float(recall[k]), 6),
                     "f1": round(float(f1[k]), 6), "support": int(support[k])}
            for k in range(cm.shape[0])
        },
    }


def format_confusion(cm: np.ndarray, labels: list[str] | None = None) -> str:
    """An aligned text confusion matrix with row totals (rows = true label)."""
    cm = np.asarray(cm, dtype=np.int64)
    k = cm.shape[0]
    labels = labels or [str(i) for i in range(k)]
    # (the grand total is the widest number: counts are never negative)
    width = max(5, len(str(int(cm.sum()))) + 1)
    head = "true\\pred".ljust(10) + "".join(l.rjust(width) for l in labels) + "total".rjust(width + 1)
    lines = [head]
    for i in range(k):
        row = "".join(str(int(v)).rjust(width) for v in cm[i])
        lines.append(labels[i].ljust(10) + row + str(int(cm[i].sum())).rjust(width + 1))
    lines.append("total".ljust(10) + "".join(str(int(v)).rjust(width) for v in cm.sum(axis=0))
                 + str(int(cm.sum())).rjust(width + 1))
    return "\n".join(lines)
