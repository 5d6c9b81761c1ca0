"""The per-chunk cost of a model's scoring steps, step by step (``bench train``, ``bench score``).

For ``sgd-patches``: each step of :func:`digitbatch.patchfeatures.patch_features`
(deskew, window copy, filter product, threshold, pooling, square root),
then the kernel head as scoring runs it (its float32 KernelScorer:
projection, RBF kernel and weights), on one chunk in one thread; for
``sgd-kernel`` its float32 feature blocks, then the same head. Times are the best of a few repeats: the machine is shared.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np

from .. import patchfeatures as PF
from .. import scorefeatures as SF


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
        if model.kind != "kernel":
            out["features"] = _best(lambda: model.featurize(chunk, np.float32), repeats)
            x = model.featurize(chunk, np.float32)
            out["head"] = _best(lambda: model.head.decision_function(x), repeats)
            return out
        # the kernel head as scoring runs it: its float32 KernelScorer (projection,
        # RBF kernel and weights in one pass, a block of rows at a time)
        scorer, blocks = model.scorer32()
        if blocks:
            hw = float(model.params.get("hog_weight", 0.0))
            out["features (float32 column blocks)"] = _best(
                lambda: SF.kernel_feature_parts(chunk, hog_weight=hw), repeats)
            parts, scales = SF.kernel_feature_parts(chunk, hog_weight=hw)
            out["head: projection, RBF kernel, weights"] = _best(
                lambda: scorer.decision_function(*parts, row_scales=scales), repeats)
            return out
        if model.features != PATCH_FEATURES:
            out["features"] = _best(lambda: model.featurize(chunk, np.float32), repeats)
        x = model.featurize(chunk, np.float32)
        out["head: projection, RBF kernel, weights"] = _best(
            lambda: scorer.decision_function(x), repeats)
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
