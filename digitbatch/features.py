"""Per-chunk feature functions and folded predictors for the kernel models.

Everything works on a whole chunk, (n, 28, 28) uint8, with no per-image
Python loop: scoring runs these on every chunk. Nothing here knows Zarr or
Dask. :func:`deskew`, :func:`hog` and :func:`kernel_features` make features;
:func:`fold_linear` and :func:`fold_kernel` turn fitted scikit-learn
pipelines into small numpy predictors, with the fixed linear steps (scaling,
PCA, Nystroem's normalisation) folded into the weights.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

SIDE = 28
# Deskewing re-centres each image on its centre of mass at (CENTRE, CENTRE),
# the convention of the classic scipy deskew (shape / 2, not (shape - 1) / 2).
CENTRE = SIDE / 2.0
_COORDS = np.arange(SIDE, dtype=np.float64)
_ROW_WEIGHTS = np.stack([np.ones(SIDE), _COORDS], axis=1).astype(np.float32)
# A column shift of SIDE or more moves every ink pixel out of the row, so
# shifts are clipped there and the zero padding never needs to be wider.
_PAD = SIDE + 1


def _check_images(images: np.ndarray) -> np.ndarray:
    arr = np.asarray(images)
    if arr.ndim == 2 and arr.shape[1] == SIDE * SIDE:
        arr = arr.reshape(-1, SIDE, SIDE)
    if arr.ndim != 3 or arr.shape[1:] != (SIDE, SIDE):
        raise ValueError(f"images must have shape (n, {SIDE}, {SIDE}) or (n, {SIDE * SIDE}); got {arr.shape}")
    return arr


def image_moments(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre of mass and second moments of each image of a chunk.

    Parameters
    ----------
    images : ndarray, shape (n, 28, 28)
        Ink intensities (any real dtype; uint8 in MNIST form).

    Returns
    -------
    centroid : ndarray, shape (n, 2), float64
        (row, column) centre of mass; (14, 14) for a blank image.
    var_row : ndarray, shape (n,), float64
        Variance of the row coordinate (``mu02`` in image-moment terms).
    cov_row_col : ndarray, shape (n,), float64
        Covariance of the row and column coordinates (``mu11``).
    """
    imgs = _check_images(images)
    n = imgs.shape[0]
    # One small matrix product gives each row's ink and column-weighted ink.
    # For uint8 images these are integers far below 2**24, exact in float32.
    rows = imgs.reshape(n * SIDE, SIDE).astype(np.float32, copy=False)
    per_row = (rows @ _ROW_WEIGHTS).reshape(n, SIDE, 2).astype(np.float64)
    row_sum, row_csum = per_row[..., 0], per_row[..., 1]
    total = row_sum.sum(axis=1)
    blank = total <= 0
    safe = np.where(blank, 1.0, total)
    mean_r = row_sum @ _COORDS / safe
    mean_c = row_csum.sum(axis=1) / safe
    var_r = row_sum @ (_COORDS**2) / safe - mean_r**2
    cov_rc = row_csum @ _COORDS / safe - mean_r * mean_c
    mean_r[blank], mean_c[blank], var_r[blank], cov_rc[blank] = CENTRE, CENTRE, 0.0, 0.0
    return np.stack([mean_r, mean_c], axis=1), var_r, cov_rc


def _row_windows(padded: np.ndarray, width: int) -> np.ndarray:
    """View (rows, W) as (rows, W - width + 1) records of ``width`` values.

    A fancy index then copies each window as one item: several times faster
    than fancy-indexing a sliding-window view.
    """
    rows, cols = padded.shape
    item = padded.dtype.itemsize
    record = np.dtype((np.void, width * item))
    return np.ndarray((rows, cols - width + 1), record, buffer=padded, strides=(cols * item, item))


def deskew(images: np.ndarray) -> np.ndarray:
    """Deskew a chunk of digits by the moment-based shear, without a per-image loop.

    Each image is sheared horizontally so that its row/column covariance
    becomes zero, and shifted so that its centre of mass lands on (14, 14).
    It is the classic ``scipy.ndimage.affine_transform(image, [[1, 0],
    [alpha, 1]], offset=centroid - affine @ (14, 14))`` deskew with
    ``alpha = mu11 / mu02``, computed with bilinear interpolation and zero
    outside the image (``order=1, mode='grid-constant'``).

    Output row ``r`` of an image reads input rows ``r + dy`` (one vertical
    shift per image) at columns ``c + s_r`` (one horizontal shift per row),
    so each output row is a blend of two windows of 29 input pixels: they
    are gathered as whole records from a zero-padded copy of the chunk.

    Parameters
    ----------
    images : ndarray, shape (n, 28, 28)
        A chunk of images, uint8 in MNIST form (other dtypes are cast to
        float32 first, which is slower).

    Returns
    -------
    ndarray, shape (n, 28, 28), float32
        Deskewed images on the input's intensity scale (0-255 for uint8).
        Blank images come back blank.
    """
    imgs = _check_images(images)
    n = imgs.shape[0]
    if n == 0:
        return np.zeros((0, SIDE, SIDE), np.float32)
    if imgs.dtype != np.uint8:
        imgs = imgs.astype(np.float32)
    centroid, var_r, cov_rc = image_moments(imgs)
    # A single row of ink has no vertical spread, hence no defined slant.
    alpha = np.divide(cov_rc, var_r, out=np.zeros_like(cov_rc), where=var_r > 1e-6)

    dy = centroid[:, 0] - CENTRE
    ky = np.floor(dy)
    fy = (dy - ky).astype(np.float32)
    shift = alpha[:, None] * (_COORDS - CENTRE) + (centroid[:, 1:2] - CENTRE)
    np.clip(shift, -SIDE, SIDE, out=shift)
    kx = np.floor(shift)
    fx = (shift - kx).astype(np.float32).reshape(-1, 1)

    # All rows of the chunk, zero-padded left and right, plus one zero row
    # that stands in for the rows above and below each image.
    m = n * SIDE
    padded = np.zeros((m + 1, SIDE + 2 * _PAD), imgs.dtype)
    padded[:m, _PAD : _PAD + SIDE] = imgs.reshape(m, SIDE)
    windows = _row_windows(padded, SIDE + 1)
    src_row = ky.astype(np.intp)[:, None] + np.arange(SIDE)
    start = (kx.astype(np.intp) + _PAD).ravel()
    base = (np.arange(n) * SIDE)[:, None]
    upper = np.where((src_row >= 0) & (src_row < SIDE), base + src_row, m).ravel()
    lower = np.where((src_row >= -1) & (src_row < SIDE - 1), base + src_row + 1, m).ravel()
    top = windows[upper, start].view(imgs.dtype).reshape(m, SIDE + 1)
    bottom = windows[lower, start].view(imgs.dtype).reshape(m, SIDE + 1)

    wy = np.repeat(fy, SIDE)[:, None]
    rows = top * (1.0 - wy)
    rows += bottom * wy
    out = rows[:, :-1] * (1.0 - fx)
    out += rows[:, 1:] * fx
    return out.reshape(n, SIDE, SIDE)


HALF = SIDE // 2
HOG_CELLS = 7
HOG_CHANNELS = 8
HOG_SIZE = HOG_CHANNELS * HOG_CELLS * HOG_CELLS


def _cell_tents() -> np.ndarray:
    """(14, 7) tent weights of half-resolution pixels around the 7 cell centres."""
    coords = np.arange(HALF, dtype=np.float64)
    width = HALF / HOG_CELLS
    centres = width * np.arange(HOG_CELLS) + (width - 1) / 2.0
    tent = np.maximum(0.0, 1.0 - np.abs(coords[:, None] - centres[None, :]) / width)
    return tent.astype(np.float32)


_TENTS = _cell_tents()


def hog(images: np.ndarray) -> np.ndarray:
    """Histograms of oriented gradients on a 7 x 7 grid of cells, for a chunk.

    The images are first averaged over 2 x 2 blocks (14 x 14): MNIST strokes
    are 2-3 pixels wide, so little is lost, and every later step costs a
    quarter. Central-difference gradients (zero outside the image) are
    projected on 4 axes (0, 45, 90 and 135 degrees); the positive and
    negative parts of each projection give 8 signed orientation channels (a
    cosine-lobe binning that needs no ``arctan2``, the slow part of classic
    HOG). Each channel is pooled over 7 x 7 soft cells (tent weights, so a
    pixel also votes into its neighbouring cells) with two small matrix
    products. Each image's descriptor is then square-rooted and scaled to
    unit L2 norm, which makes it insensitive to stroke contrast.

    Parameters
    ----------
    images : ndarray, shape (n, 28, 28)
        Images, e.g. the output of :func:`deskew`; any intensity scale.

    Returns
    -------
    ndarray, shape (n, 392), float32
        Channel-major (8), then cell row (7), then cell column (7); all zero
        for a blank image.
    """
    imgs = _check_images(images)
    n = imgs.shape[0]
    x = np.zeros((n, HALF + 2, HALF + 2), np.float32)
    # Slice sums: numpy's multi-axis .sum() over the small axes is 10x slower.
    pairs = imgs[:, 0::2].astype(np.float32) + imgs[:, 1::2]
    np.add(pairs[:, :, 0::2], pairs[:, :, 1::2], out=x[:, 1:-1, 1:-1])
    proj = np.empty((4, n, HALF, HALF), np.float32)
    np.subtract(x[:, 1:-1, 2:], x[:, 1:-1, :-2], out=proj[0])
    np.subtract(x[:, 2:, 1:-1], x[:, :-2, 1:-1], out=proj[1])
    np.add(proj[0], proj[1], out=proj[2])
    np.subtract(proj[0], proj[1], out=proj[3])
    proj[2:] *= np.float32(np.sqrt(0.5))
    proj = proj.reshape(4, n * HALF * HALF)
    # relu(p) and relu(-p), times 2: (|p| + p) and (|p| - p).
    chans = np.empty((HOG_CHANNELS, n * HALF * HALF), np.float32)
    np.abs(proj, out=chans[4:])
    np.add(chans[4:], proj, out=chans[:4])
    chans[4:] -= proj
    # Separable soft pooling: columns into cells, then rows into cells.
    k = HOG_CELLS
    cols = (chans.reshape(-1, HALF) @ _TENTS).reshape(HOG_CHANNELS * n, HALF, k)
    cells = np.ascontiguousarray(cols.transpose(0, 2, 1)).reshape(-1, HALF) @ _TENTS
    # (channel, image, cell column, cell row) -> (image, channel, row, column)
    hist = cells.reshape(HOG_CHANNELS, n, k, k).transpose(1, 0, 3, 2).reshape(n, HOG_SIZE)
    np.sqrt(hist, out=hist)
    norm = np.linalg.norm(hist, axis=1, keepdims=True)
    hist /= np.maximum(norm, 1e-6)
    return hist


def kernel_features(
    images: np.ndarray, *, hog_weight: float = 0.0, dtype: np.dtype | type = np.float32
) -> np.ndarray:
    """The feature step of the kernel models: deskewed pixels, optionally with HOG.

    Parameters
    ----------
    images : ndarray, shape (n, 28, 28)
        A chunk of images in MNIST form (uint8, 0-255).
    hog_weight : float, default 0.0
        Weight of the :func:`hog` block (unit norm per image) against the
        pixel block (deskewed pixels / 255, norm about 9 for a digit); 0
        leaves HOG out.
    dtype : numpy dtype, default float32
        Of the result. Fit scikit-learn pipelines on float64: Nystroem's
        normalisation matrix is ill-conditioned, so a float32 pipeline
        carries rounding noise of about 1e-2 in its decision values. The
        folded predictors score well in float32.

    Returns
    -------
    ndarray, shape (n, 784) or (n, 784 + 392)
    """
    if hog_weight < 0:
        raise ValueError(f"hog_weight must be >= 0; got {hog_weight!r}")
    straight = deskew(images)
    pixels = straight.reshape(straight.shape[0], SIDE * SIDE)
    pixels *= np.float32(1.0 / 255.0)
    if hog_weight:
        desc = hog(straight)
        desc *= np.float32(hog_weight)
        pixels = np.concatenate([pixels, desc], axis=1)
    return pixels.astype(dtype, copy=False)


# --- folding fixed linear steps into the weights ---------------------------


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
        inv = 1.0 / (np.ones(d) if step.scale_ is None else step.scale_)
        mean = np.zeros(d) if step.mean_ is None else step.mean_
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


def make_kernel_pipeline(
    *,
    hog_weight: float = 7.0,
    pca_components: int | None = 80,
    n_components: int = 2000,
    gamma: float = 0.02,
    alpha: float = 1e-6,
    max_iter: int = 60,
    average: bool = False,
    random_state: int = 0,
    features: bool = True,
    n_jobs: int | None = None,
):
    """The scikit-learn pipeline of the ``sgd-kernel`` model (unfitted).

    :func:`kernel_features` (float64) -> ``PCA`` -> ``Nystroem(kernel="rbf")``
    -> hinge ``SGDClassifier`` (``tol=None``: exactly ``max_iter`` epochs).
    The defaults were chosen on a validation split of the MNIST training
    rows (``benchmarks/explore_features.py``); :func:`fold_kernel` turns the
    fitted pipeline into a :class:`KernelPredictor`.

    Parameters
    ----------
    hog_weight : float
        Passed to :func:`kernel_features`.
    pca_components : int or None
        PCA dimensions before the kernel; None for no PCA.
    n_components, gamma : int, float
        Nystroem landmarks and RBF width (on the PCA-projected features).
    alpha, max_iter, average, n_jobs : float, int, bool, int or None
        Passed to ``SGDClassifier``.
    random_state : int
        Seeds PCA, Nystroem and SGD.
    features : bool, default True
        Start with the feature step (a ``FunctionTransformer`` taking
        (n, 28, 28) or (n, 784) uint8 images); False to start from features.

    Returns
    -------
    sklearn.pipeline.Pipeline
    """
    from sklearn.decomposition import PCA
    from sklearn.kernel_approximation import Nystroem
    from sklearn.linear_model import SGDClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    steps: list[tuple[str, object]] = []
    if features:
        kw = {"hog_weight": hog_weight, "dtype": np.float64}
        steps.append(("features", FunctionTransformer(kernel_features, kw_args=kw)))
    if pca_components is not None:
        steps.append(("pca", PCA(pca_components, svd_solver="covariance_eigh", random_state=random_state)))
    steps.append(("nystroem", Nystroem(gamma=gamma, n_components=n_components, random_state=random_state)))
    sgd = SGDClassifier(
        loss="hinge", alpha=alpha, max_iter=max_iter, tol=None, average=average, random_state=random_state, n_jobs=n_jobs
    )
    steps.append(("sgd", sgd))
    return Pipeline(steps)
