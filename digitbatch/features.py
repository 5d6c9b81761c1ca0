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
    imgs = _check_images(images).astype(np.float32, copy=False)
    # Row sums and column-weighted row sums of uint8 images are integers far
    # below 2**24, so float32 gives them exactly; the rest is float64.
    row_sum = imgs.sum(axis=2, dtype=np.float64)
    row_csum = (imgs @ _COORDS.astype(np.float32)).astype(np.float64)
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


def deskew(images: np.ndarray) -> np.ndarray:
    """Deskew a chunk of digits by the moment-based shear, without a per-image loop.

    Each image is sheared horizontally so that its row/column covariance
    becomes zero, and shifted so that its centre of mass lands on (14, 14).
    It is the classic ``scipy.ndimage.affine_transform(image, [[1, 0],
    [alpha, 1]], offset=centroid - affine @ (14, 14))`` deskew with
    ``alpha = mu11 / mu02``, computed with bilinear interpolation and zero
    outside the image (``order=1, mode='grid-constant'``).

    The shear moves whole rows by a per-row amount and the vertical shift is
    one amount per image, so the interpolation is separable: a gather of
    shifted rows blended vertically, then a gather of shifted row windows
    blended horizontally.

    Parameters
    ----------
    images : ndarray, shape (n, 28, 28)
        A chunk of images (uint8 in MNIST form, or float).

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
    centroid, var_r, cov_rc = image_moments(imgs)
    # A single row of ink has no vertical spread, hence no defined slant.
    alpha = np.divide(cov_rc, var_r, out=np.zeros_like(cov_rc), where=var_r > 1e-6)
    src = imgs.astype(np.float32, copy=False)

    # Vertical: output row r reads input rows r + k and r + k + 1.
    dy = centroid[:, 0] - CENTRE
    ky = np.floor(dy)
    fy = (dy - ky).astype(np.float32)[:, None, None]
    rows = ky.astype(np.intp)[:, None] + np.arange(SIDE + 1)
    valid = ((rows >= 0) & (rows < SIDE)).astype(np.float32)[:, :, None]
    gathered = src[np.arange(n)[:, None], np.clip(rows, 0, SIDE - 1)] * valid
    vert = gathered[:, :-1] * (1.0 - fy)
    vert += fy * gathered[:, 1:]

    # Horizontal: row r of the output reads columns c + s_r, one shift per row.
    shift = alpha[:, None] * (_COORDS - CENTRE) + (centroid[:, 1:2] - CENTRE)
    np.clip(shift, -SIDE, SIDE, out=shift)
    kx = np.floor(shift)
    fx = (shift - kx).astype(np.float32).reshape(-1, 1)
    padded = np.zeros((n * SIDE, SIDE + 2 * _PAD), np.float32)
    padded[:, _PAD : _PAD + SIDE] = vert.reshape(n * SIDE, SIDE)
    windows = np.lib.stride_tricks.sliding_window_view(padded, SIDE + 1, axis=1)
    picked = windows[np.arange(n * SIDE), kx.astype(np.intp).ravel() + _PAD]
    out = picked[:, :-1] * (1.0 - fx)
    out += fx * picked[:, 1:]
    return out.reshape(n, SIDE, SIDE)
