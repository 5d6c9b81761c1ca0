"""Pure numpy per-chunk functions: preprocess, predict, confusion counts.

Nothing here knows about Dask or Zarr; the scoring graph applies these to
one chunk at a time.
"""

from __future__ import annotations

import numpy as np
from .digits import N_CLASSES, UNKNOWN_LABEL

# Rows whose top-2 float32 decision values are closer than this are
# recomputed in float64, so predictions equal scikit-learn's exactly.
TIE_TOLERANCE = 1e-3


def flatten(images: np.ndarray) -> np.ndarray:
    """(n, 28, 28) -> (n, 784) without copying."""
    return images.reshape(images.shape[0], int(np.prod(images.shape[1:])))


# Rows converted and multiplied at a time: the float copy of a block stays in
# cache, which is much faster than converting a whole chunk first. 512 was
# near the best on machines with 512 KiB and 2 MiB of L2 (README, "Measured
# defaults"), and each block is a few GIL round trips, which scoring's worker
# threads share: fewer is better.
BLOCK_ROWS = 512


def linear_decision(X: np.ndarray, weights: np.ndarray, intercept: np.ndarray,
                    dtype=np.float32) -> np.ndarray:
    """``X @ weights + intercept`` in ``dtype``; weights are (n_features, n_outputs).

    Integer inputs are converted a block of rows at a time.
    """
    W = weights.astype(dtype, copy=False)
    n = X.shape[0]
    if X.dtype == dtype or n <= BLOCK_ROWS:
        return X.astype(dtype, copy=False) @ W + intercept.astype(dtype)
    out = np.empty((n, W.shape[1]), dtype)
    buf = np.empty((BLOCK_ROWS, X.shape[1]), dtype)
    for a in range(0, n, BLOCK_ROWS):
        rows = X[a:a + BLOCK_ROWS]
        m = rows.shape[0]
        np.copyto(buf[:m], rows, casting="unsafe")
        np.matmul(buf[:m], W, out=out[a:a + m])
    out += intercept.astype(dtype)
    return out


def expit(x: np.ndarray) -> np.ndarray:
    """The logistic sigmoid ``1 / (1 + exp(-x))``, in numpy.

    (scipy.special.expit gives the same values, but importing scipy.special
    is paid at every scoring job's start and by each worker's first task.)
    """
    e = np.negative(np.asarray(x))  # (one new array, then in place)
    with np.errstate(over="ignore"):  # exp(-x) = inf for very negative x: sigmoid 0
        np.exp(e, out=e)
    e += 1
    return np.reciprocal(e, out=e)


def linear_scores(X: np.ndarray, weights: np.ndarray, intercept: np.ndarray, *,
                  with_top2: bool = False) -> tuple:
    """float32 decision values and the class index of each row, equal to float64's.

    The product runs in float32 (twice as fast); rows whose top two
    decision values (or whose binary decision and 0) are closer than float32
    can separate get their index from a float64 recomputation.
    ``with_top2``: also return the :class:`Top2` of the decision values
    (None for one column), for :func:`ovr_margin`.
    """
    d = linear_decision(X, weights, intercept)
    if d.shape[0] == 0:
        return (d, np.zeros(0, dtype=np.intp)) + ((None,) if with_top2 else ())
    if d.shape[1] == 1:  # binary: one decision column, positive class classes[1]
        idx = (d[:, 0] > 0).astype(np.intp)
        close = np.flatnonzero(np.abs(d[:, 0]) < TIE_TOLERANCE)
        if close.size:
            d64 = linear_decision(X[close], weights, intercept, dtype=np.float64)
            idx[close] = (d64[:, 0] > 0).astype(np.intp)
        return (d, idx) + ((None,) if with_top2 else ())
    top = Top2.of(d)
    idx = top.index
    close = np.flatnonzero((top.first - top.second) < TIE_TOLERANCE * (1 + np.abs(top.first)))
    if close.size:
        d64 = linear_decision(X[close], weights, intercept, dtype=np.float64)
        idx[close] = np.argmax(d64, axis=1)
    return (d, idx) + ((top,) if with_top2 else ())


def linear_predict_features(X: np.ndarray, weights: np.ndarray, intercept: np.ndarray,
                            classes: np.ndarray) -> np.ndarray:
    """Class labels under a linear head, equal to the float64 result."""
    return classes[linear_scores(X, weights, intercept)[1]]


def ovr_proba(d: np.ndarray) -> np.ndarray:
    """Probabilities from decision values as scikit-learn's log-loss models give them.

    One column (binary): ``[1 - s, s]`` with ``s = sigmoid(d)``; several
    (one-vs-rest): the sigmoids normalised to sum to 1.
    """
    d = np.asarray(d)
    if d.ndim == 2 and d.shape[1] == 1:
        d = d[:, 0]
    p = expit(d)
    if p.ndim == 1:
        return np.column_stack([1 - p, p])
    s = p.sum(axis=1, keepdims=True)
    return np.divide(p, s, out=np.full_like(p, 1.0 / p.shape[1]), where=s > 0)


class Top2:
    """The largest value of each row of an (n, k>=2) array, its column and the runner-up.

    One pass over the k columns (of a transposed copy, which
    :func:`ovr_margin` reuses): exact (only comparisons), the first column
    on ties as ``np.argmax``; several times faster than ``argmax`` plus
    ``np.partition`` (README, "Measured defaults").
    """

    __slots__ = ("first", "second", "index", "columns")

    def __init__(self, first, second, index, columns):
        self.first, self.second, self.index, self.columns = first, second, index, columns

    @classmethod
    def of(cls, values: np.ndarray) -> "Top2":
        cols = np.ascontiguousarray(np.asarray(values).T)
        first = cols[0].copy()
        second = np.full_like(first, -np.inf)
        index = np.zeros(first.shape[0], np.intp)
        step = np.empty_like(index)
        gt = np.empty(first.shape[0], bool)
        low = np.empty_like(first)
        for j in range(1, cols.shape[0]):
            x = cols[j]
            np.greater(x, first, out=gt)
            np.minimum(first, x, out=low)
            np.maximum(second, low, out=second)
            np.maximum(first, x, out=first)
            # index += (j - index) * gt: arithmetic, much faster than a masked copy
            np.subtract(j, index, out=step)
            np.multiply(step, gt, out=step)
            index += step
        return cls(first, second, index, cols)


def top2(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The largest and second-largest value of each row of an (n, k>=2) array."""
    t = Top2.of(values)
    return t.first, t.second


def ovr_margin(d: np.ndarray, top: Top2 | None = None) -> np.ndarray:
    """float32 top-1 minus top-2 of :func:`ovr_proba`, without normalising every row.

    The sigmoid is monotonic and each row is divided by one sum, so the top
    two probabilities are those of the top two decision values:
    ``(s1 - s2) / sum(s)`` with ``s = sigmoid(d)``. The difference is taken
    in float64 (float32 sigmoids saturate, and both top values are often
    near 1); the row sum of the k sigmoids in float32 summed in float64
    (relative error ~1e-7, below the float32 result's own precision), over
    the transposed columns of ``top`` (contiguous: a sum over rows of
    length k is many times slower). Results within one float32 ulp of the float64
    probabilities'. ``top``: the :class:`Top2` of ``d`` when the caller has it.
    """
    d = np.asarray(d)
    if d.ndim == 2 and d.shape[1] == 1:
        d = d[:, 0]
    if d.ndim == 1:  # binary: |s - (1 - s)|
        return np.abs(2.0 * expit(d.astype(np.float64)) - 1.0).astype(np.float32)
    if d.shape[0] == 0:
        return np.zeros(0, np.float32)
    top = Top2.of(d) if top is None else top
    s = expit(top.columns)
    total = s.sum(axis=0, dtype=np.float64)
    num = expit(top.first.astype(np.float64)) - expit(top.second.astype(np.float64))
    out = np.divide(num, total, out=np.zeros_like(total), where=total > 0)
    return out.astype(np.float32)


def top2_margin(values: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 of each row (probabilities, or decision values); |d| for one column."""
    v = np.asarray(values)
    if v.ndim == 1 or v.shape[1] == 1:
        return np.abs(v.reshape(v.shape[0]))
    if v.shape[0] == 0:
        return np.zeros(0, v.dtype)
    if v.shape[1] == 2:
        return np.abs(v[:, 1] - v[:, 0])
    first, second = top2(v)
    return first - second


def linear_predict(images: np.ndarray, coef: np.ndarray, intercept: np.ndarray,
                   classes: np.ndarray) -> np.ndarray:
    """Class labels of a chunk of images under scikit-learn-style ``coef`` (k, 784)."""
    return linear_predict_features(flatten(images), np.asarray(coef).T, intercept, classes)


def confusion_counts(labels: np.ndarray, pred: np.ndarray,
                     n_classes: int = N_CLASSES) -> np.ndarray:
    """(n_classes, n_classes) int64 counts, rows = true label; unknown labels skipped."""
    known = labels != UNKNOWN_LABEL
    t = labels[known].astype(np.int64)
    p = pred[known].astype(np.int64)
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes)


def prediction_histogram(pred: np.ndarray, n_classes: int = N_CLASSES) -> np.ndarray:
    """Counts of each predicted class."""
    return np.bincount(pred.astype(np.int64), minlength=n_classes)[:n_classes]
