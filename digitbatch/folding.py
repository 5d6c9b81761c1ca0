"""Fold fitted scikit-learn pipelines into small numpy predictors.

Fixed linear steps (pixel scaling, StandardScaler, PCA, Nystroem's
normalisation) are folded into the weights of the final linear classifier,
so scoring runs one feature step and one (or two) matrix products, with
predictions identical to the pipeline's. :func:`kernel_scorer` makes the
float32 scoring form of a kernel predictor (:class:`KernelScorer`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


def _predict(scores: np.ndarray, classes: np.ndarray) -> np.ndarray:
    if scores.ndim == 1:
        return classes[(scores > 0).astype(np.intp)]
    return classes[np.argmax(scores, axis=1)]


@dataclass(frozen=True)
class LinearPredictor:
    """A linear classifier with its fixed scaling folded in: ``x @ weights + intercept``.

    ``weights`` is (n_features, n_outputs); one output per class, or a single
    output for a binary model (positive class ``classes[1]``, as in
    scikit-learn).
    """

    weights: np.ndarray
    intercept: np.ndarray
    classes: np.ndarray

    def decision_function(self, features: np.ndarray) -> np.ndarray:
        """Decision values, shape (n,) for binary models, else (n, n_classes)."""
        scores = np.asarray(features) @ self.weights + self.intercept
        return scores[:, 0] if scores.shape[1] == 1 else scores

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Predicted class labels, shape (n,)."""
        return _predict(self.decision_function(features), self.classes)


@dataclass(frozen=True)
class KernelPredictor:
    """A Nystroem RBF model as a few numpy arrays.

    ``z = x @ projection + offset`` (the folded linear steps before the
    kernel: scalers, PCA; skipped when ``projection`` is None), then the RBF
    kernel against the ``landmarks``, then ``@ weights + intercept``.
    Nystroem's normalisation matrix and any scaling after the kernel step
    are folded into ``weights``, so scoring does no (n_components,
    n_components) product.
    """

    projection: np.ndarray | None
    offset: np.ndarray | None
    landmarks: np.ndarray
    landmark_sq_norms: np.ndarray
    gamma: float
    weights: np.ndarray
    intercept: np.ndarray
    classes: np.ndarray

    def kernel(self, features: np.ndarray) -> np.ndarray:
        """RBF kernel values against the landmarks, shape (n, n_components)."""
        z = np.asarray(features, dtype=self.landmarks.dtype)
        if self.projection is not None:
            z = z @ self.projection + self.offset
        k = z @ self.landmarks.T
        # |z - c|^2 = |z|^2 + |c|^2 - 2 z.c, clipped at 0 against rounding
        k *= -2.0
        k += self.landmark_sq_norms
        k += np.einsum("ij,ij->i", z, z)[:, None]
        np.maximum(k, 0.0, out=k)
        k *= -self.gamma
        return np.exp(k, out=k)

    def decision_function(self, features: np.ndarray) -> np.ndarray:
        """Decision values, shape (n,) for binary models, else (n, n_classes)."""
        scores = self.kernel(features) @ self.weights + self.intercept
        return scores[:, 0] if scores.shape[1] == 1 else scores

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Predicted class labels, shape (n,)."""
        return _predict(self.decision_function(features), self.classes)


# Rows of a chunk whose RBF kernel values KernelScorer makes, exponentiates
# and multiplies at a time, in cache: a whole chunk's (2,048 rows x 2,000
# landmarks) would be 16 MB, passed over several times.
SCORER_ROWS = 256


@dataclass(frozen=True)
class KernelScorer:
    """The float32 scoring form of a :class:`KernelPredictor`, with its constants folded.

    The input comes in column blocks (e.g. the raw pixels and the HOG block of
    :func:`digitbatch.features.kernel_features`), each with its fixed factor
    folded into its rows of the projection (``blocks``). The RBF exponent
    ``-gamma |z - c|^2 = 2 gamma z.c - gamma |z|^2 - gamma |c|^2`` is one
    matrix product of ``[z, |z|^2, 1]`` with ``rbf`` = ``[2 gamma C^T;
    -gamma; -gamma |c|^2]``, then ``exp`` and ``@ weights`` on a few hundred
    rows at a time, in cache. Decision values agree with the float64
    predictor's to float32 rounding (tests/test_folding.py bounds it).
    """

    blocks: tuple[np.ndarray, ...]  # (n_in_i, d) float32 each, or () for no projection
    offset: np.ndarray  # (d,)
    rbf: np.ndarray  # (d + 2, n_components)
    weights: np.ndarray  # (n_components, n_outputs)
    intercept: np.ndarray  # (n_outputs,)

    def decision_function(self, *parts: np.ndarray, row_scales: tuple = ()) -> np.ndarray:
        """float32 decision values, (n, n_outputs), of the features ``parts``.

        ``parts[i]`` is (n, n_in_i), the i-th column block of the features
        before its fixed factor; ``row_scales[i]``, when given and not None,
        an (n,) factor of each row of that block (applied after the product).
        """
        d = self.rbf.shape[0] - 2
        widths = tuple(p.shape[0] for p in self.blocks) or (d,)
        got = tuple(np.shape(x)[1] if np.ndim(x) == 2 else None for x in parts)
        if got != widths or len({np.shape(x)[0] for x in parts}) != 1:
            raise ValueError(f"the scorer takes {len(widths)} block(s) of {widths} columns with "
                             f"the same rows; got shapes {[np.shape(x) for x in parts]}")
        n = parts[0].shape[0]
        za = np.empty((n, d + 2), np.float32)
        z = za[:, :d]
        if not self.blocks:
            z[...] = parts[0]
        for i, (x, p) in enumerate(zip(parts, self.blocks)):
            scale = row_scales[i] if i < len(row_scales) else None
            if i == 0 and scale is None:
                np.matmul(x, p, out=z)
                continue
            y = x @ p
            if scale is not None:
                y *= scale[:, None]
            if i == 0:
                z[...] = y
            else:
                z += y
        z += self.offset
        np.einsum("ij,ij->i", z, z, out=za[:, d])
        za[:, d + 1] = 1.0
        out = np.empty((n, self.weights.shape[1]), np.float32)
        k = np.empty((min(n, SCORER_ROWS), self.rbf.shape[1]), np.float32)
        for a in range(0, n, SCORER_ROWS):
            r = min(SCORER_ROWS, n - a)
            kr = np.matmul(za[a : a + r], self.rbf, out=k[:r])
            # (-gamma |z - c|^2 is <= 0 up to rounding, so exp is at most
            # 1 + a rounding error: no clip, unlike the float64 predictor)
            np.exp(kr, out=kr)
            np.matmul(kr, self.weights, out=out[a : a + r])
        out += self.intercept
        return out


def kernel_scorer(head: KernelPredictor, columns: tuple[np.ndarray, ...] = (), factors: tuple[float, ...] = ()
                  ) -> KernelScorer:
    """The :class:`KernelScorer` of ``head`` (made from its float64 arrays, then cast once).

    Parameters
    ----------
    head : KernelPredictor
    columns : tuple of int ndarray, optional
        The column blocks the features come in: for each block, the index
        of each of its columns among the head's inputs (-1 for a column to
        ignore, e.g. padding). Default: one block, every input in order.
    factors : tuple of float, optional
        A fixed factor of each block (default 1), folded into the projection:
        the head sees ``block * factor``.

    Without a projection the features must come as one plain block.
    """
    f32 = np.float32
    lm = np.asarray(head.landmarks, np.float64)
    g = float(head.gamma)
    if head.projection is None:
        if columns or any(f != 1.0 for f in factors):
            raise ValueError("a predictor without projection takes its features as one block, with factor 1")
        blocks, offset = (), np.zeros(lm.shape[1])
    else:
        proj = np.asarray(head.projection, np.float64)
        cols = tuple(np.asarray(c, np.intp) for c in columns) or (np.arange(proj.shape[0]),)
        used = np.concatenate([c[c >= 0] for c in cols])
        if len(factors) not in (0, len(cols)) or np.any(used >= proj.shape[0]):
            raise ValueError(f"columns/factors do not fit the projection's {proj.shape[0]} inputs")
        facs = factors or (1.0,) * len(cols)

        def block(c: np.ndarray, factor: float) -> np.ndarray:
            p = np.zeros((c.shape[0], proj.shape[1]))
            p[c >= 0] = proj[c[c >= 0]] * factor
            return np.ascontiguousarray(p, f32)

        blocks = tuple(block(c, f) for c, f in zip(cols, facs))
        offset = np.asarray(head.offset, np.float64)
    sq = np.einsum("ij,ij->i", lm, lm)
    rbf = np.vstack([2.0 * g * lm.T, np.full((1, lm.shape[0]), -g), -g * sq[None, :]])
    return KernelScorer(blocks=blocks, offset=offset.astype(f32), rbf=np.ascontiguousarray(rbf, f32),
                        weights=np.ascontiguousarray(head.weights, f32), intercept=np.asarray(head.intercept, f32))


def _steps(model: object) -> list[object]:
    steps = getattr(model, "steps", None)
    if steps is None:
        return [model]
    return [s for _, s in steps if s is not None and not (isinstance(s, str) and s == "passthrough")]


def _linear_head(step: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    coef = getattr(step, "coef_", None)
    if coef is None or not hasattr(step, "classes_"):
        raise ValueError(f"the last step must be a fitted linear classifier; got {step!r}")
    weights = np.asarray(coef, np.float64).T
    intercept = np.broadcast_to(np.asarray(step.intercept_, np.float64), (weights.shape[1],))
    return weights, intercept.copy(), np.asarray(step.classes_)


def _scalers(steps: list[object], scale: float | np.ndarray, d: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """``x * scale`` then ``steps`` (fitted StandardScalers) as one map ``x * a + c``."""
    from sklearn.preprocessing import StandardScaler

    a, c = np.broadcast_to(np.asarray(scale, np.float64), (d,)).copy(), np.zeros(d)
    for step in steps:
        if not isinstance(step, StandardScaler):
            raise ValueError(f"cannot fold {type(step).__name__} {where}: only StandardScaler steps can be folded")
        # (scikit-learn fits mean_ even with with_mean=False, and does not subtract it)
        inv = 1.0 / (np.ones(d) if step.scale_ is None or not step.with_std else step.scale_)
        mean = np.zeros(d) if step.mean_ is None or not step.with_mean else step.mean_
        a, c = a * inv, (c - mean) * inv
    return a, c


def fold_linear(model: object, *, scale: float | np.ndarray = 1.0) -> LinearPredictor:
    """Fold the fixed scaling of a linear classifier (pipeline) into its weights.

    Parameters
    ----------
    model : Pipeline or linear classifier
        Fitted: ``StandardScaler`` steps (any number), then a linear
        classifier with ``coef_`` and ``intercept_`` (``SGDClassifier``,
        ``LogisticRegression``).
    scale : float or ndarray, default 1.0
        A fixed factor applied to the inputs before ``model`` (1/255 when it
        was fitted on pixels / 255).

    Returns
    -------
    LinearPredictor
        Its decision values on ``x`` equal ``model``'s on ``x * scale`` (to
        float64 rounding).
    """
    steps = _steps(model)
    weights, intercept, classes = _linear_head(steps[-1])
    a, c = _scalers(steps[:-1], scale, weights.shape[0], "before the classifier")
    return LinearPredictor(weights=a[:, None] * weights, intercept=intercept + c @ weights, classes=classes)


def fold_kernel(model: object, *, dtype: np.dtype | type = np.float64) -> KernelPredictor:
    """Fold a fitted kernel-approximation pipeline into a :class:`KernelPredictor`.

    Parameters
    ----------
    model : Pipeline
        Fitted steps: ``StandardScaler`` steps, an optional ``PCA``, a
        ``Nystroem(kernel="rbf")``, ``StandardScaler`` steps, and a linear
        classifier (``SGDClassifier``,
        ``LogisticRegression``). A leading ``FunctionTransformer`` (the
        feature step, e.g. :func:`kernel_features`) is not folded: the
        predictor takes its output.
    dtype : numpy dtype, default float64
        Of the predictor's arrays. float32 scores faster; on MNIST its
        decision values agree with float64 to about 1e-3.

    Returns
    -------
    KernelPredictor
    """
    from sklearn.decomposition import PCA
    from sklearn.kernel_approximation import Nystroem
    from sklearn.preprocessing import FunctionTransformer

    steps = _steps(model)
    if isinstance(steps[0], FunctionTransformer):
        steps = steps[1:]
    at = [i for i, s in enumerate(steps) if isinstance(s, Nystroem)]
    if len(at) != 1:
        raise ValueError(f"model must have exactly one Nystroem step; got {steps!r}")
    approx, before = steps[at[0]], steps[: at[0]]
    weights, intercept, classes = _linear_head(steps[-1])
    a, c = _scalers(steps[at[0] + 1 : -1], 1.0, weights.shape[0], "after the kernel step")
    weights, intercept = a[:, None] * weights, intercept + c @ weights

    pca = before.pop() if before and isinstance(before[-1], PCA) else None
    d = (pca if pca is not None else approx).n_features_in_
    a, c = _scalers(before, 1.0, d, "before the kernel step")
    projection, offset = (None, None) if not before else (np.diag(a), c)
    if pca is not None:
        comp = pca.components_.T.astype(np.float64)
        if pca.whiten:
            comp = comp / np.sqrt(pca.explained_variance_)
        projection, offset = a[:, None] * comp, (c - pca.mean_) @ comp

    if approx.kernel != "rbf":
        raise ValueError(f"only kernel='rbf' Nystroem can be folded; got {approx.kernel!r}")
    gamma = float(approx.gamma or 1.0 / approx.n_features_in_)
    landmarks = approx.components_.astype(np.float64)
    weights = approx.normalization_.T.astype(np.float64) @ weights
    log.debug("folded a Nystroem model: %d landmarks, %d outputs", *weights.shape)

    def cast(v: np.ndarray | None) -> np.ndarray | None:
        return None if v is None else np.ascontiguousarray(v, dtype=dtype)

    return KernelPredictor(
        projection=cast(projection),
        offset=cast(offset),
        landmarks=cast(landmarks),
        landmark_sq_norms=cast(np.einsum("ij,ij->i", landmarks, landmarks)),
        gamma=gamma,
        weights=cast(weights),
        intercept=cast(intercept),
        classes=classes,
    )
