"""Pure numpy per-chunk feature functions for the kernel models.

Everything here works on a whole chunk of images at once, (n, 28, 28)
uint8, with no per-image Python loop: scoring runs these functions on every
chunk, so their speed is the scoring speed. Nothing here knows about Zarr or
Dask.

* :func:`deskew` straightens slanted digits with the classic moment-based
  shear, vectorised over the chunk.
* :func:`hog` is a small histogram-of-oriented-gradients descriptor.
* :func:`kernel_features` is the feature step of the ``sgd-kernel`` model:
  deskewed pixels scaled to [0, 1], followed by weighted HOG features.
* :func:`fold_linear` and :func:`fold_kernel` turn fitted scikit-learn
  pipelines into small numpy predictors with the fixed linear steps
  (scaling, Nystroem's normalisation) folded into the weights.
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
    if arr.ndim != 3 or arr.shape[1:] != (SIDE, SIDE):
        raise ValueError(f"images must have shape (n, {SIDE}, {SIDE}); got {arr.shape}")
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
    mean_r[blank] = CENTRE
    mean_c[blank] = CENTRE
    var_r[blank] = 0.0
    cov_rc[blank] = 0.0
    return np.stack([mean_r, mean_c], axis=1), var_r, cov_rc


def _row_windows(padded: np.ndarray, width: int) -> np.ndarray:
    """View ``padded`` (rows, W) as (rows, W - width + 1) records of ``width`` values.

    Picking whole records with one fancy index copies each window as one
    item, several times faster than fancy-indexing a sliding-window view.
    """
    rows, cols = padded.shape
    item = padded.dtype.itemsize
    record = np.dtype((np.void, width * item))
    return np.ndarray(
        shape=(rows, cols - width + 1),
        dtype=record,
        buffer=padded,
        strides=(cols * item, item),
    )


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


def hog(images: np.ndarray, *, cell: int = 4, bins: int = 9) -> np.ndarray:
    """Histograms of gradient orientation per cell, for a chunk of images.

    Central-difference gradients (zero outside the image) vote with their
    magnitude into ``bins`` unsigned orientation bins over [0, pi), split
    linearly between the two nearest bin centres, and are summed over
    non-overlapping ``cell`` x ``cell`` cells. Each image's histogram is then
    square-rooted and scaled to unit L2 norm, which makes it insensitive to
    stroke contrast and evens out the few strong gradients.

    Parameters
    ----------
    images : ndarray, shape (n, 28, 28)
        Images, e.g. the output of :func:`deskew`; any intensity scale.
    cell : int, default 4
        Cell side in pixels; must divide 28.
    bins : int, default 9
        Number of orientation bins (at least 2).

    Returns
    -------
    ndarray, shape (n, (28 // cell) ** 2 * bins), float32
        Cell-major, bin-minor descriptors; all zero for a blank image.
    """
    imgs = _check_images(images)
    if cell < 1 or SIDE % cell:
        raise ValueError(f"cell must divide {SIDE}; got {cell!r}")
    if bins < 2:
        raise ValueError(f"bins must be at least 2; got {bins!r}")
    n = imgs.shape[0]
    x = np.zeros((n, SIDE + 2, SIDE + 2), np.float32)
    x[:, 1:-1, 1:-1] = imgs
    gx = x[:, 1:-1, 2:] - x[:, 1:-1, :-2]
    gy = x[:, 2:, 1:-1] - x[:, :-2, 1:-1]
    mag = np.hypot(gx, gy).reshape(-1)
    # Orientation in bin units, in [0, bins): bin b is centred on b + 0.5.
    pos = np.arctan2(gy, gx).reshape(-1)
    pos *= bins / np.pi
    pos -= 0.5
    np.remainder(pos, bins, out=pos)
    lo = pos.astype(np.intp)
    np.minimum(lo, bins - 1, out=lo)
    upper_w = pos - lo
    # One-hot votes (each pixel hits two distinct bins), then cell sums.
    votes = np.zeros((mag.size, bins), np.float32)
    pixel = np.arange(mag.size)
    votes[pixel, lo] = mag * (1.0 - upper_w)
    votes[pixel, (lo + 1) % bins] = mag * upper_w
    k = SIDE // cell
    rows = votes.reshape(n * k, cell, SIDE * bins).sum(axis=1)
    hist = rows.reshape(n, k, k, cell, bins).sum(axis=3).reshape(n, k * k * bins)
    np.sqrt(hist, out=hist)
    norm = np.linalg.norm(hist, axis=1, keepdims=True)
    hist /= np.maximum(norm, 1e-6)
    return hist


def kernel_features(
    images: np.ndarray, *, hog_weight: float = 0.0, cell: int = 4, bins: int = 9
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
    cell, bins : int
        Passed to :func:`hog`.

    Returns
    -------
    ndarray, shape (n, 784) or (n, 784 + hog features), float32
    """
    if hog_weight < 0:
        raise ValueError(f"hog_weight must be >= 0; got {hog_weight!r}")
    straight = deskew(images)
    pixels = straight.reshape(straight.shape[0], SIDE * SIDE)
    pixels *= np.float32(1.0 / 255.0)
    if not hog_weight:
        return pixels
    desc = hog(straight, cell=cell, bins=bins)
    desc *= np.float32(hog_weight)
    return np.concatenate([pixels, desc], axis=1)
