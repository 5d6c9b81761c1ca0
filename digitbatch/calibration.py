"""Calibrated probabilities: the held-out rows, the temperature fit, scores and reliability.

A catalogue model's decision values are turned into probabilities by one
temperature ``T`` fitted at train time on rows held out from the fit
(:func:`heldout_mask`, about 1/12 of the train rows, chosen by a hash of
the row number and the seed): a softmax of ``d / T`` over the classes, or
``sigmoid(d / T)`` for a binary detector's one decision value. ``T``
minimises the Brier score (squared error of the probabilities, a proper
scoring rule) on those rows: the negative log-likelihood, dominated by the
few confidently wrong rows, calibrates the linear ``sgd`` model's confident
rows worse (docs/schemas.md, "Calibration", has the measurements).
One parameter does not move the prediction (the argmax of ``d / T`` is that of ``d``),
so a calibrated model predicts exactly what it predicted before; per-class
biases or Platt's offset would (a detector's threshold moves off 0).

:func:`scores` makes, from a chunk's decision values and predicted class
indices, the calibrated top probability, the margin (top-1 minus top-2
probability, computed without cancellation: ``p1 * -expm1(-gap)``), the
calibrated decision-value gap ``(d1 - d2) / T`` that breaks the margin's
ties, and the runner-up class. A model without calibration (trained before
it existed) is scored as before: scikit-learn's one-vs-rest probabilities
for log-loss models, raw decision values otherwise.

Reliability: each chunk counts its labelled rows in :data:`N_BINS` fixed
bins of the top probability (rows, sum of confidence, rows right:
:func:`reliability_counts`); runs sum those pairwise
(:func:`reduce_reliability`) and :func:`reliability_block` gives the
``calibration`` block of ``metrics.json`` with the expected calibration
error (ECE: the rows' share-weighted mean of ``|accuracy - confidence|``
over the bins). Pure numpy throughout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

METHOD = "temperature"
# Held-out share of the train rows, and its bounds: a single parameter is
# estimated well from a few thousand rows, and more is training data lost.
HOLDOUT_FRACTION = 1.0 / 12.0
MAX_CALIBRATION_ROWS = 20_000
MIN_CALIBRATION_ROWS = 50  # expected held-out rows below which none are held out
MIN_FIT_ROWS = 20  # held-out rows (of the model's classes) below which none is fitted
# Fixed bins of the top probability: 15 equal-width bins (Guo et al. 2017).
N_BINS = 15
# model.npz name of the temperature (a 0-d float64 array: covered by the model's hash)
TEMPERATURE_ARRAY = "calibration_temperature"
_LOG_BETA_RANGE = (-12.0, 8.0)  # beta = 1 / T searched on this log range


def holdout_fraction(n_rows: int) -> float:
    """The share of ``n_rows`` train rows held out for calibration (0: too few rows)."""
    if n_rows * HOLDOUT_FRACTION < MIN_CALIBRATION_ROWS:
        return 0.0
    return min(HOLDOUT_FRACTION, MAX_CALIBRATION_ROWS / n_rows)


def heldout_mask(rows: np.ndarray, seed: int, fraction: float) -> np.ndarray:
    """Which store rows (absolute row numbers) are held out for calibration.

    A splitmix64 hash of (row, seed) compared with ``fraction``: the same
    rows whatever the chunking or the order rows are read in, so the
    in-memory and the incremental fits hold out the same rows.
    """
    x = np.asarray(rows, np.uint64) + np.uint64((int(seed) * 0x9E3779B97F4A7C15) % (1 << 64))
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    u = (x >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
    return u < fraction


def _as_columns(d: np.ndarray) -> np.ndarray:
    d = np.asarray(d, np.float64)
    return d.reshape(d.shape[0], -1) if d.ndim != 2 else d


def nll(d: np.ndarray, y: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of class indices ``y`` under ``d / temperature``."""
    z = _as_columns(d) / temperature
    if z.shape[1] == 1:  # binary: sigmoid(z) is P(class index 1)
        s = np.where(y == 1, -z[:, 0], z[:, 0])  # -log sigmoid(-s) = log1p(exp(s))
        return float(np.mean(np.logaddexp(0.0, s)))
    top = z.max(axis=1)
    lse = top + np.log(np.exp(z - top[:, None]).sum(axis=1))
    return float(np.mean(lse - z[np.arange(z.shape[0]), y]))


def brier(d: np.ndarray, y: np.ndarray, temperature: float) -> float:
    """Mean Brier score (squared error summed over the classes) of class indices ``y``
    under ``d / temperature``; binary: that of the two classes' probabilities."""
    z = _as_columns(d) / temperature
    if z.shape[1] == 1:
        p = 1.0 / (1.0 + np.exp(-np.clip(z[:, 0], -700, 700)))
        return float(np.mean(2.0 * (p - (y == 1)) ** 2))
    z = z - z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    z[np.arange(z.shape[0]), y] -= 1.0
    return float(np.mean(np.einsum("ij,ij->i", z, z)))


def fit_temperature(d: np.ndarray, y: np.ndarray) -> float:
    """The temperature minimising :func:`brier` of class indices ``y``.

    A grid over ``log(1 / T)`` (steps of 0.25) finds the best bracket, and a
    golden-section search refines it to ~1e-6.
    """
    d = _as_columns(d)
    y = np.asarray(y, np.intp)
    if d.shape[0] == 0:
        raise ValueError("no rows to calibrate on")

    def f(lb):
        return brier(d, y, math.exp(-lb))

    grid = np.arange(_LOG_BETA_RANGE[0], _LOG_BETA_RANGE[1] + 1e-9, 0.25)
    best = int(np.argmin([f(v) for v in grid]))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, grid.size - 1)]
    g = (math.sqrt(5) - 1) / 2
    a, b = lo + (1 - g) * (hi - lo), lo + g * (hi - lo)
    fa, fb = f(a), f(b)
    while hi - lo > 1e-6:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = lo + (1 - g) * (hi - lo)
            fa = f(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = f(b)
    return float(math.exp(-(lo + hi) / 2))


def fit(d: np.ndarray, y: np.ndarray) -> dict:
    """The calibration of decision values ``d`` for class indices ``y``, with its
    held-out figures (Brier score, NLL and ECE before and after: before is ``T = 1``)."""
    d = _as_columns(d)
    y = np.asarray(y, np.intp)
    t = fit_temperature(d, y)
    idx = (d[:, 0] > 0).astype(np.intp) if d.shape[1] == 1 else np.argmax(d, axis=1)
    out = {"method": METHOD, "temperature": t, "n_rows": int(d.shape[0])}
    for name, temp in (("uncalibrated", 1.0), ("calibrated", t)):
        s = scores(d, idx, temp)
        counts = reliability_counts(s.confidence, idx == y)
        out[name] = {"brier": round(brier(d, y, temp), 6), "nll": round(nll(d, y, temp), 6),
                     "ece": round(ece(counts), 6)}
    return out


def check_params(params, temperature) -> float:
    """The temperature of a model's calibration, or ValueError naming what is wrong."""
    if not isinstance(params, dict) or params.get("method") != METHOD:
        raise ValueError(f"calibration method {params!r} is not {METHOD!r}")
    t = np.asarray(temperature)
    if t.shape != () or t.dtype.kind != "f" or not np.isfinite(t) or not t > 0:
        raise ValueError(f"temperature {temperature!r} is not one positive finite number")
    if not math.isclose(float(t), float(params.get("temperature", float("nan"))),
                        rel_tol=1e-12):
        raise ValueError(f"temperature {float(t)!r} in model.npz differs from the manifest's "
                         f"{params.get('temperature')!r}")
    return float(t)


@dataclass(frozen=True)
class Scores:
    """One chunk's calibrated figures (see :func:`scores`)."""

    margin: np.ndarray  # float32: top-1 minus top-2 probability
    gap: np.ndarray  # float32: (d1 - d2) / T, the decision-value gap
    second: np.ndarray  # intp: the runner-up's class index
    confidence: np.ndarray  # float64: the top probability
    proba: np.ndarray | None  # float64 (n, k) when asked for


def scores(d: np.ndarray, idx: np.ndarray, temperature: float, *,
           proba: bool = False) -> Scores:
    """Calibrated margin, gap, runner-up and top probability of decision values ``d``.

    ``idx``: each row's predicted class index (the model's own, float64-exact
    near ties); the figures are those of that class against the best other.
    Multiclass: ``p1 = 1 / sum_j exp(z_j - z1)`` with ``z = d / T``, margin
    ``p1 * -expm1(-(z1 - z2))``; binary: ``z = d / T``, ``p1 = sigmoid(|z|)``,
    margin ``tanh(|z| / 2)``, both without cancellation.
    """
    z = _as_columns(d) / float(temperature)
    n = z.shape[0]
    idx = np.asarray(idx, np.intp)
    if z.shape[1] == 1:
        sign = np.where(idx == 1, 1.0, -1.0)
        gap = np.maximum(sign * z[:, 0], 0.0)
        e = np.exp(-gap)
        p1 = 1.0 / (1.0 + e)
        margin = -np.expm1(-gap) / (1.0 + e)
        pr = None
        if proba:  # (the runner-up's e / (1 + e): no 1 - p1 cancellation)
            p2 = e / (1.0 + e)
            pr = np.column_stack([np.where(idx == 1, p2, p1), np.where(idx == 1, p1, p2)])
        return Scores(margin.astype(np.float32), gap.astype(np.float32),
                      (1 - idx).astype(np.intp), p1, pr)
    r = np.arange(n)
    z1 = z[r, idx].copy()
    z[r, idx] = -np.inf
    second = np.argmax(z, axis=1) if n else np.zeros(0, np.intp)
    gap = np.maximum(z1 - z[r, second], 0.0)
    z -= z1[:, None]
    np.exp(z, out=z)  # (the predicted class's column is exp(-inf) = 0)
    total = 1.0 + z.sum(axis=1)
    p1 = 1.0 / total
    margin = p1 * -np.expm1(-gap)
    pr = None
    if proba:
        z[r, idx] = 1.0
        pr = z / total[:, None]
    return Scores(margin.astype(np.float32), gap.astype(np.float32), second, p1, pr)


# --- reliability -------------------------------------------------------------------------


def reliability_counts(confidence: np.ndarray, correct: np.ndarray,
                       n_bins: int = N_BINS) -> dict:
    """Per fixed bin of the top probability: rows, their summed confidence, rows right."""
    c = np.asarray(confidence, np.float64)
    b = np.clip((c * n_bins).astype(np.int64), 0, n_bins - 1)
    return {"count": np.bincount(b, minlength=n_bins).astype(np.int64),
            "confidence_sum": np.bincount(b, weights=c, minlength=n_bins),
            "n_correct": np.bincount(b, weights=np.asarray(correct, bool),
                                     minlength=n_bins).astype(np.int64)}


def reduce_reliability(parts: list[dict]) -> dict | None:
    """Sum reliability counts pairwise (None when any part lacks them)."""
    if not parts or any(p is None for p in parts):
        return None
    parts = [{k: np.asarray(v) for k, v in p.items()} for p in parts]
    while len(parts) > 1:
        nxt = [{k: parts[j][k] + parts[j + 1][k] for k in parts[j]}
               for j in range(0, len(parts) - 1, 2)]
        if len(parts) % 2:
            nxt.append(parts[-1])
        parts = nxt
    return parts[0]


def ece(counts: dict) -> float:
    """Expected calibration error (a share, 0-1) of reliability counts."""
    n = np.asarray(counts["count"], np.float64)
    total = n.sum()
    if total == 0:
        return float("nan")
    gap = np.abs(np.asarray(counts["n_correct"], np.float64)
                 - np.asarray(counts["confidence_sum"], np.float64))
    return float(gap.sum() / total)


def reliability_block(counts: dict | None) -> dict | None:
    """The ``calibration`` block of metrics.json (None without labelled rows)."""
    if counts is None or int(np.sum(counts["count"])) == 0:
        return None
    n = np.asarray(counts["count"], np.int64)
    k = len(n)
    return {"n_bins": k, "bin_edges": [round(i / k, 6) for i in range(k + 1)],
            "count": n.tolist(),
            "confidence_sum": [round(float(v), 6) for v in counts["confidence_sum"]],
            "n_correct": [int(v) for v in counts["n_correct"]],
            "n_rows": int(n.sum()), "ece": round(ece(counts), 6)}
