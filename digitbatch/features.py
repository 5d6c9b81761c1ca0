"""Per-chunk feature functions and folded predictors for the kernel models.

Everything works on a whole chunk, (n, 28, 28) uint8, with no per-image
Python loop: scoring runs these on every chunk. Nothing here knows Zarr or
Dask. :func:`deskew`, :func:`hog` and :func:`kernel_features` make features
(the ones the pipelines are fitted on; :mod:`digitbatch.scorefeatures` has
their float32 scoring form, from :func:`deskew_wide`);
:func:`make_kernel_pipeline` builds the flagship's pipeline, which
:mod:`digitbatch.folding` turns into a small numpy predictor.
"""

from __future__ import annotations

import logging

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


def check_images(images: np.ndarray) -> np.ndarray:
    """``images`` as (n, 28, 28) (flat (n, 784) rows are reshaped); ValueError for any other shape."""
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
    imgs = check_images(images)
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


def _windows(padded: np.ndarray, width: int) -> np.ndarray:
    """View a C-contiguous array as the flat sequence of records of ``width``
    values starting at each of its elements (the last ``width - 1`` excepted).

    A fancy index with flat positions then copies each window as one item:
    several times faster than fancy-indexing a sliding-window view, and
    than indexing a 2-d (row, column) view of the same records.
    """
    flat = padded.reshape(-1)
    item = flat.dtype.itemsize
    record = np.dtype((np.void, width * item))
    return np.ndarray((flat.shape[0] - width + 1,), record, buffer=flat, strides=(item,))


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
    wide = deskew_wide(images)
    return np.ascontiguousarray(wide[:, :, :SIDE])


WIDE = SIDE + 1


def deskew_wide(images: np.ndarray) -> np.ndarray:
    """:func:`deskew` with a zero 29th column in each row, shape (n, 28, 29), float32.

    The same values as :func:`deskew` in columns 0-27 (the same float32
    operations), without its final copy: the scoring path multiplies this
    form by a projection with zero rows for column 28. The horizontal
    blend runs over the chunk as one flat array (each row's last slot
    blends across into the next row, and is then zeroed), and the vertical
    one over whole images: long runs of contiguous float32, not 29-wide rows.
    """
    imgs = check_images(images)
    n = imgs.shape[0]
    if n == 0:
        return np.zeros((0, SIDE, WIDE), np.float32)
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
    fx = (shift - kx).astype(np.float32).ravel()

    # All rows of the chunk, zero-padded left and right, plus one zero row
    # that stands in for the rows above and below each image.
    m = n * SIDE
    padded = np.zeros((m + 1, SIDE + 2 * _PAD), imgs.dtype)
    padded[:m, _PAD : _PAD + SIDE] = imgs.reshape(m, SIDE)
    src_row = ky.astype(np.intp)[:, None] + np.arange(SIDE)
    start = (kx.astype(np.intp) + _PAD).ravel()
    base = (np.arange(n) * SIDE)[:, None]
    # the flat position of the upper and the lower source window of each output row
    at = np.empty((2, m), np.intp)
    at[0] = np.where((src_row >= 0) & (src_row < SIDE), base + src_row, m).ravel()
    at[1] = np.where((src_row >= -1) & (src_row < SIDE - 1), base + src_row + 1, m).ravel()
    at *= padded.shape[1]
    at += start
    both = _windows(padded, WIDE)[at.ravel()].view(imgs.dtype).reshape(2, n, SIDE * WIDE)
    # float32 copies of the upper and the lower windows; the result is made in the first
    out = both[0].astype(np.float32)
    lower = both[1].astype(np.float32)
    out *= np.subtract(np.float32(1.0), fy)[:, None]
    lower *= fy[:, None]
    out += lower  # top * (1 - wy) + bottom * wy
    rows = out.reshape(m * WIDE)
    wx = np.repeat(fx, WIDE)
    right = lower.reshape(m * WIDE)[:-1]
    np.multiply(rows[1:], wx[:-1], out=right)
    rows[:-1] *= np.subtract(np.float32(1.0), wx[:-1], out=wx[:-1])
    rows[:-1] += right  # rows[:, c] * (1 - fx) + rows[:, c + 1] * fx
    out = out.reshape(n, SIDE, WIDE)
    out[:, :, SIDE] = 0.0
    return out


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
    imgs = check_images(images)
    n = imgs.shape[0]
    x = np.zeros((n, HALF + 2, HALF + 2), np.float32)
    # Slice sums: numpy's multi-axis .sum() over the small axes is several times slower.
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
    check_hog_weight(hog_weight)
    straight = deskew(images)
    pixels = straight.reshape(straight.shape[0], SIDE * SIDE)
    pixels *= np.float32(1.0 / 255.0)
    if hog_weight:
        desc = hog(straight)
        desc *= np.float32(hog_weight)
        pixels = np.concatenate([pixels, desc], axis=1)
    return pixels.astype(dtype, copy=False)


def check_hog_weight(hog_weight: float) -> None:
    """ValueError unless ``hog_weight`` is a number >= 0."""
    if not hog_weight >= 0:
        raise ValueError(f"hog_weight must be >= 0; got {hog_weight!r}")


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
    rows (``benchmarks/explore_features.py``); :func:`digitbatch.folding.fold_kernel` turns
    the fitted pipeline into a ``KernelPredictor``.

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
