"""The per-chunk cost of a model's scoring steps, step by step (``bench train``, ``bench score``).

For ``sgd-patches``: each step of :func:`digitbatch.patchfeatures.patch_features`
(deskew, window copy, filter product, threshold, pooling, square root),
then the kernel head's projection (folded PCA), RBF kernel and weights, on
one chunk in one thread; for the other kernel models the feature step as
a whole. Times are the best of a few repeats: the machine is shared.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np

from .. import patchfeatures as PF


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def breakdown(model, chunk: np.ndarray, *, repeats: int = 3) -> dict[str, float]:
    """Seconds per step of scoring ``chunk`` (n, 28, 28) with compact ``model`` (best of ``repeats``)."""
    from threadpoolctl import threadpool_limits

    from ..models import PATCH_FEATURES, patch_settings

    out: dict[str, float] = {}
    with threadpool_limits(1):
        if model.features == PATCH_FEATURES:
            runs = []
            for _ in range(repeats):
                t: dict[str, float] = {}
                PF.patch_features(chunk, model.feature_arrays["filters"],
                                  model.feature_arrays["bias"], timings=t,
                                  **patch_settings(model.params))
                runs.append(t)
            best = min(runs, key=lambda t: sum(t.values()))
            out.update({f"features: {k}": v for k, v in best.items()})
        else:
            out["features"] = _best(lambda: model.featurize(chunk, np.float32), repeats)
        x = model.featurize(chunk, np.float32)
        if model.kind != "kernel":
            out["head"] = _best(lambda: model.head.decision_function(x), repeats)
            return out
        h = model.head
        w32 = {k: (None if v is None else v.astype(np.float32))
               for k, v in (("projection", h.projection), ("offset", h.offset),
                            ("weights", h.weights))}
        if w32["projection"] is not None:
            out["head: projection (folded PCA)"] = _best(
                lambda: x @ w32["projection"] + w32["offset"], repeats)
            z = x @ w32["projection"] + w32["offset"]
        else:
            z = x
        lm = h.landmarks.astype(np.float32)
        sq = h.landmark_sq_norms.astype(np.float32)

        def kernel():
            k = z @ lm.T
            k *= -2.0
            k += sq
            k += np.einsum("ij,ij->i", z, z)[:, None]
            np.maximum(k, 0.0, out=k)
            k *= -np.float32(h.gamma)
            return np.exp(k, out=k)

        out["head: RBF kernel"] = _best(kernel, repeats)
        kv = kernel()
        out["head: weights + argmax"] = _best(
            lambda: np.argmax(kv @ w32["weights"] + h.intercept.astype(np.float32), axis=1),
            repeats)
    return out


def lines(model, chunk: np.ndarray, *, repeats: int = 3) -> Iterator[str]:
    """:func:`breakdown` as bench lines: ms per chunk, us per image, share of the total."""
    steps = breakdown(model, chunk, repeats=repeats)
    total = sum(steps.values())
    n = chunk.shape[0]
    yield (f"  {model.name} per chunk of {n:,} images, one thread (best of {repeats}): "
           f"{1e3 * total:.0f} ms, {1e6 * total / n:.1f} us/image, "
           f"{n / total:,.0f} images/s a core")
    for step, s in steps.items():
        yield f"    {step:34s} {1e3 * s:8.1f} ms {1e6 * s / n:7.1f} us/image {s / total:6.1%}"
