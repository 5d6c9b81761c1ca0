"""Per-chunk patch features: learned 5 x 5 filters, soft threshold, pooled on a grid.

The feature step of ``sgd-patches``, after the single-layer networks of
Coates, Lee and Ng (2011): each digit is deskewed (:func:`digitbatch.features.deskew`),
every ``patch`` x ``patch`` window at a ``stride`` is matched against K filters
(k-means centroids of whitened training patches, with the whitening folded
into the filters: :mod:`digitbatch.patchlearn` learns them), each response
is soft-thresholded, ``max(0, response - threshold)``, and the maps are
pooled over a ``grid`` x ``grid`` of soft cells (tent weights, as
:func:`digitbatch.features.hog` pools). Square roots of the pooled values,
times a fixed ``scale``, are the features.

Everything here is numpy on a whole chunk, a block of rows at a time so
the intermediate maps stay in cache, with the windows in position-major
order so that both poolings are one matrix product; nothing imports
scikit-learn, so a scoring worker loads this module only.
"""

from __future__ import annotations

import time

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .features import SIDE, deskew

# Images a block: a block's response map (positions x filters, float32) stays near
# the cache (the block sizes measured: README).
BLOCK_ROWS = 32
STEPS = ("deskew", "patches", "filters", "threshold", "pool", "sqrt")


def positions(patch: int, stride: int) -> int:
    """Window positions along each side of a 28-pixel digit."""
    return (SIDE - patch) // stride + 1


def pool_weights(n_in: int, grid: int) -> np.ndarray:
    """(n_in, grid) tent weights of ``n_in`` positions around ``grid`` cell centres."""
    coords = np.arange(n_in, dtype=np.float64)
    width = n_in / grid
    centres = width * np.arange(grid) + (width - 1) / 2.0
    return np.maximum(0.0, 1.0 - np.abs(coords[:, None] - centres[None, :]) / width).astype(np.float32)


def check_arrays(filters: np.ndarray, bias: np.ndarray, *, patch: int, stride: int,
                 grid: int) -> int:
    """The number of filters, after checking the arrays and settings agree (else ValueError)."""
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1
               for v in (patch, stride, grid)):
        raise ValueError(f"patch, stride and grid must be integers >= 1; got {patch!r}, "
                         f"{stride!r}, {grid!r}")
    if patch > SIDE or grid > positions(patch, stride):
        raise ValueError(f"patch {patch} / stride {stride} gives {positions(patch, stride)} "
                         f"positions a side, fewer than the grid's {grid} cells")
    filters, bias = np.asarray(filters), np.asarray(bias)
    if filters.ndim != 2 or filters.shape[0] != patch * patch or bias.shape != filters.shape[1:]:
        raise ValueError(f"filters {filters.shape} and bias {bias.shape} do not fit "
                         f"{patch} x {patch} patches: filters must be ({patch * patch}, K), bias (K,)")
    return int(filters.shape[1])


def n_features(n_filters: int, grid: int) -> int:
    return grid * grid * n_filters


def patch_features(images: np.ndarray, filters: np.ndarray, bias: np.ndarray, *,
                   patch: int = 5, stride: int = 2, grid: int = 4, threshold: float = 1.0,
                   scale: float = 1.0, dtype: np.dtype | type = np.float32,
                   timings: dict | None = None) -> np.ndarray:
    """The patch features of a chunk of digits.

    Parameters
    ----------
    images : ndarray, shape (n, 28, 28) or (n, 784)
        A chunk in MNIST form (uint8, 0-255).
    filters : ndarray, shape (patch * patch, K)
        Filters on the deskewed pixels / 255 of a window (row-major), whitening
        folded in (:func:`digitbatch.patchlearn.learn_filters`).
    bias : ndarray, shape (K,)
        Added to each response (the folded patch mean).
    patch, stride, grid : int
        Window side, window step, and pooling cells a side.
    threshold : float
        Subtracted before the rectification (the soft threshold).
    scale : float
        Applied to the square-rooted pooled values (fitted so the features
        have a typical norm the RBF kernel after them expects).
    dtype : numpy dtype
        Of the result; the arithmetic is float32.
    timings : dict, optional
        When given, seconds spent in each of :data:`STEPS` are added to it
        (the bench's per-chunk breakdown).

    Returns
    -------
    ndarray, shape (n, grid * grid * K)
        Cell-major (row, column), then filter.
    """
    k = check_arrays(filters, bias, patch=patch, stride=stride, grid=grid)
    if not np.isfinite(threshold) or not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"threshold must be finite and scale finite and > 0; got "
                         f"{threshold!r}, {scale!r}")
    clock = _Clock(timings)
    straight = deskew(images)  # (validates the shape)
    clock.lap("deskew")
    n, s = straight.shape[0], positions(patch, stride)
    # the deskewed pixels are 0-255: fold the / 255 into the filters
    # and the bias and threshold into the product: a column of ones after
    # each window's pixels meets them as one more filter row
    d = patch * patch
    w = np.empty((d + 1, k), np.float32)
    w[:d] = np.asarray(filters, np.float32) * np.float32(1.0 / 255.0)
    w[d] = np.asarray(bias, np.float32) - np.float32(threshold)
    # both poolings as one (grid * grid, s * s) matrix, with scale**2 folded
    # in (sqrt(scale**2 * x) = scale * sqrt(x))
    tents = pool_weights(s, grid)
    pool = np.einsum("ia,jb->abij", tents, tents).reshape(grid * grid, s * s)
    pool *= np.float32(scale) ** 2
    out = np.empty((n, grid * grid * k), np.float32)
    m0 = min(n, BLOCK_ROWS)
    cols = np.ones((m0 * s * s, d + 1), np.float32)
    resp = np.empty((m0 * s * s, k), np.float32)
    for a in range(0, n, BLOCK_ROWS):
        x = straight[a:a + BLOCK_ROWS]
        m = x.shape[0]
        win = sliding_window_view(x, (patch, patch), axis=(1, 2))[:, ::stride, ::stride]
        c, r = cols[:m * s * s], resp[:m * s * s]
        # im2col, straight into the buffer's pixel columns: row (image, i, j)
        np.copyto(c[:, :d].reshape(m, s, s, patch, patch), win)
        clock.lap("patches")
        np.matmul(c, w, out=r)
        clock.lap("filters")
        np.maximum(r, 0.0, out=r)
        clock.lap("threshold")
        cells = out[a:a + m].reshape(m, grid * grid, k)
        np.matmul(pool, r.reshape(m, s * s, k), out=cells)
        clock.lap("pool")
        np.sqrt(cells, out=cells)
        clock.lap("sqrt")
    return out if out.dtype == dtype else out.astype(dtype)


class _Clock:
    """Adds the seconds since the last lap to ``timings[step]`` (no-op without a dict)."""

    def __init__(self, timings: dict | None):
        self.timings = timings
        self.t = time.perf_counter() if timings is not None else 0.0

    def lap(self, step: str) -> None:
        if self.timings is None:
            return
        now = time.perf_counter()
        self.timings[step] = self.timings.get(step, 0.0) + now - self.t
        self.t = now
