"""The kernel models' features in the form the float32 scorer takes.

:func:`digitbatch.features.kernel_features` is what the pipelines were fitted
on (float64, and the reference); here are the same features for scoring, in
float32 and in column blocks before their fixed factors (1/255 for the pixels,
``hog_weight`` for HOG), which :func:`digitbatch.folding.kernel_scorer` folds
into its projection. So scoring makes no scaled, concatenated copy: the
pixels stay in the (n, 28, 29) form of :func:`~digitbatch.features.deskew_wide`
(the projection has zero rows for the padding column), and HOG stays
unnormalised (the scorer divides its (n, 80) product by the norm instead).
"""

from __future__ import annotations

import numpy as np

from .features import (
    HALF,
    HOG_CELLS,
    HOG_CHANNELS,
    HOG_SIZE,
    SIDE,
    WIDE,
    check_hog_weight,
    check_images,
    deskew_wide,
)

# (28 or 29, 14): sums of column pairs (a 29th, padding column weighs 0)
_PAIRS = np.repeat(np.eye(HALF, dtype=np.float32), 2, axis=0)
_PAIRS_WIDE = np.vstack([_PAIRS, np.zeros((1, HALF), np.float32)])


def pixel_columns() -> np.ndarray:
    """(812,) int: for each column of the flattened (n, 28, 29) pixels, its
    column in :func:`~digitbatch.features.kernel_features` (-1 for padding)."""
    cols = np.arange(SIDE * SIDE).reshape(SIDE, SIDE)
    return np.hstack([cols, np.full((SIDE, 1), -1)]).ravel()


def block_layout(hog_weight: float) -> tuple[tuple[np.ndarray, ...], tuple[float, ...]]:
    """The blocks of :func:`kernel_feature_parts` as :func:`~digitbatch.folding.kernel_scorer` takes them.

    Returns
    -------
    columns : tuple of int ndarray
        For each block, the column of :func:`~digitbatch.features.kernel_features`
        each of its columns is (-1 for padding).
    factors : tuple of float
        Each block's fixed factor: ``kernel_features``' own float32 1/255
        for the pixels, ``hog_weight`` for HOG.
    """
    n_pix = SIDE * SIDE
    pixels = float(np.float32(1.0 / 255.0))
    if not hog_weight:
        return (pixel_columns(),), (pixels,)
    return (pixel_columns(), np.arange(n_pix, n_pix + HOG_SIZE)), (pixels, float(np.float32(hog_weight)))


def hog_root(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`~digitbatch.features.hog` before its normalisation: the square-rooted descriptor and its norm.

    ``root / max(norm, 1e-6)`` is :func:`~digitbatch.features.hog` up to
    float32 rounding (the training path keeps ``hog``'s own arithmetic).
    Computed with the images along the last axis, so that every step runs
    over long contiguous rows instead of 14-wide ones: the tent pooling
    (weights 0.75, 0.75, 0.25, 0.25, here times 4) is a few strided sums,
    with no matrix product or transposition in between. ``root`` and
    ``norm`` are a constant multiple of ``hog``'s unnormalised ones.

    Parameters
    ----------
    images : ndarray, shape (n, 28, 28), or (n, 28, 29) from :func:`~digitbatch.features.deskew_wide`

    Returns
    -------
    root : ndarray, shape (n, 392), float32
        In ``hog``'s order; a transposed view (Fortran-ordered).
    norm : ndarray, shape (n,), float32
        Of ``root``, i.e. ``sqrt(sum(hist))``.
    """
    arr = np.asarray(images)
    wide = arr.ndim == 3 and arr.shape[1:] == (SIDE, WIDE)
    imgs = (arr if wide else check_images(arr)).astype(np.float32, copy=False)
    n, width = imgs.shape[0], imgs.shape[2]
    # 2 x 2 sums: pairs of rows, then of columns (a matrix product), images last
    rows = (imgs[:, 0::2] + imgs[:, 1::2]).reshape(n * HALF, width)
    x = np.zeros((HALF + 2, HALF + 2, n), np.float32)
    x[1:-1, 1:-1] = (rows @ (_PAIRS_WIDE if wide else _PAIRS)).reshape(n, HALF, HALF).transpose(1, 2, 0)
    # the 8 channels: max(p, 0) and max(-p, 0) of the 4 projections p (half
    # hog's, a factor the normalisation removes); p is made in the second four
    ch = np.empty((HOG_CHANNELS, HALF, HALF, n), np.float32)
    pos, proj = ch[:4], ch[4:]
    np.subtract(x[1:-1, 2:], x[1:-1, :-2], out=proj[0])
    np.subtract(x[2:, 1:-1], x[:-2, 1:-1], out=proj[1])
    np.add(proj[0], proj[1], out=proj[2])
    np.subtract(proj[0], proj[1], out=proj[3])
    proj[2:] *= np.float32(np.sqrt(0.5))
    np.maximum(proj, np.float32(0.0), out=pos)
    np.subtract(pos, proj, out=proj)
    # cell b of a row: 3 (x[2b] + x[2b+1]) + x[2b-1] + x[2b+2], zero outside
    k = HOG_CELLS
    cb = np.empty((HOG_CHANNELS, HALF, k, n), np.float32)
    np.add(ch[:, :, 0::2], ch[:, :, 1::2], out=cb)
    cb *= np.float32(3.0)
    cb[:, :, 1:] += ch[:, :, 1:-2:2]
    cb[:, :, :-1] += ch[:, :, 2::2]
    # then the same over rows
    hist = np.empty((HOG_CHANNELS, k, k, n), np.float32)
    np.add(cb[:, 0::2], cb[:, 1::2], out=hist)
    hist *= np.float32(3.0)
    hist[:, 1:] += cb[:, 1:-2:2]
    hist[:, :-1] += cb[:, 2::2]
    hist = hist.reshape(HOG_SIZE, n)
    norm = np.sqrt(hist.sum(axis=0))
    return np.sqrt(hist, out=hist).T, norm


def kernel_feature_parts(images: np.ndarray, *, hog_weight: float = 0.0
                         ) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray | None, ...]]:
    """:func:`~digitbatch.features.kernel_features` in float32 as column blocks, before their fixed factors.

    Parameters
    ----------
    images : ndarray, shape (n, 28, 28) or (n, 784)
        A chunk in MNIST form (uint8).
    hog_weight : float
        As for ``kernel_features``; 0 leaves HOG out.

    Returns
    -------
    parts : tuple of ndarray
        The deskewed pixels on the 0-255 scale, (n, 812) (rows of 29, the
        last zero: :func:`pixel_columns`); with ``hog_weight`` > 0 also the
        square-rooted HOG descriptor (n, 392) of :func:`hog_root`.
    row_scales : tuple of (ndarray or None)
        Per part, None or an (n,) factor of each row: ``1 / max(norm, 1e-6)``
        for HOG.
    """
    check_hog_weight(hog_weight)
    straight = deskew_wide(images)
    pixels = straight.reshape(straight.shape[0], SIDE * WIDE)
    if not hog_weight:
        return (pixels,), (None,)
    root, norm = hog_root(straight)
    np.maximum(norm, np.float32(1e-6), out=norm)
    return (pixels, root), (None, np.reciprocal(norm, out=norm))
