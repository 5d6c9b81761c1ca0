"""Training augmentation: seeded random distortions of a chunk of digits, in numpy.

:func:`distort` gives each digit of a chunk a small random affine map
(rotation, scale) plus a smooth elastic displacement field (Simard,
Steinkraus and Platt, 2003), resampled bilinearly, with no per-image Python
loop. It makes the "virtual examples" a fit adds to its training rows one
chunk at a time (:mod:`digitbatch.patchlearn`), so memory stays bounded by
the chunk.
"""

from __future__ import annotations

import numpy as np

SIDE = 28
_CENTRE = (SIDE - 1) / 2.0


def _smoothing(sigma: float) -> np.ndarray:
    """(28, 28) Gaussian smoothing matrix (rows sum to 1)."""
    c = np.arange(SIDE, dtype=np.float64)
    g = np.exp(-0.5 * ((c[:, None] - c[None, :]) / sigma) ** 2)
    return (g / g.sum(axis=1, keepdims=True)).astype(np.float32)


def distort(images: np.ndarray, rng: np.random.Generator, *, rotate: float = 10.0,
            scale: float = 0.1, elastic: float = 2.0, sigma: float = 4.0) -> np.ndarray:
    """Randomly distorted copies of a chunk of digits.

    Parameters
    ----------
    images : ndarray, shape (n, 28, 28) or (n, 784), uint8
    rng : numpy Generator
        The source of the random maps (seed it for a reproducible fit).
    rotate : float
        Largest rotation, degrees (uniform in [-rotate, rotate]).
    scale : float
        Largest relative change of size (uniform in [1 - scale, 1 + scale]).
    elastic : float
        Typical displacement, in pixels, of the smooth elastic field (0: none).
    sigma : float
        Smoothness of the elastic field (Gaussian width, pixels).

    Returns
    -------
    ndarray, same shape as ``images``, uint8
    """
    if min(rotate, scale, elastic) < 0 or not scale < 1 or sigma <= 0:
        raise ValueError(f"rotate, scale and elastic must be >= 0, scale < 1 and sigma > 0; got "
                         f"{rotate!r}, {scale!r}, {elastic!r}, {sigma!r}")
    arr = np.asarray(images)
    shape = arr.shape
    imgs = arr.reshape(-1, SIDE, SIDE)
    n = imgs.shape[0]
    if n == 0:
        return arr.copy()
    theta = np.deg2rad(rng.uniform(-rotate, rotate, n)).astype(np.float32)
    zoom = rng.uniform(1 - scale, 1 + scale, n).astype(np.float32)
    cos, sin = np.cos(theta) / zoom, np.sin(theta) / zoom
    grid = np.arange(SIDE, dtype=np.float32) - np.float32(_CENTRE)
    r, c = grid[None, :, None], grid[None, None, :]
    # output pixel (r, c) reads the input at the inverse map of its offset from the centre
    src_r = cos[:, None, None] * r - sin[:, None, None] * c + np.float32(_CENTRE)
    src_c = sin[:, None, None] * r + cos[:, None, None] * c + np.float32(_CENTRE)
    if elastic:
        g = _smoothing(sigma)
        for src in (src_r, src_c):
            field = g @ rng.standard_normal((n, SIDE, SIDE), dtype=np.float32) @ g.T
            # (white noise smoothed this way has std about 1 / (2 sqrt(pi) sigma))
            field *= np.float32(elastic * 2.0 * np.sqrt(np.pi) * sigma)
            src += field
    return _bilinear(imgs, src_r, src_c).reshape(shape)


def _bilinear(imgs: np.ndarray, src_r: np.ndarray, src_c: np.ndarray) -> np.ndarray:
    """Sample each image at (src_r, src_c), zero outside; uint8 out."""
    n = imgs.shape[0]
    padded = np.zeros((n, SIDE + 2, SIDE + 2), np.float32)
    padded[:, 1:-1, 1:-1] = imgs
    flat = padded.reshape(-1)
    r0f, c0f = np.floor(src_r), np.floor(src_c)
    fr, fc = src_r - r0f, src_c - c0f
    # indices into the padded image (offset 1), clipped to its zero border
    r0 = np.clip(r0f.astype(np.intp) + 1, 0, SIDE + 1)
    r1 = np.clip(r0f.astype(np.intp) + 2, 0, SIDE + 1)
    c0 = np.clip(c0f.astype(np.intp) + 1, 0, SIDE + 1)
    c1 = np.clip(c0f.astype(np.intp) + 2, 0, SIDE + 1)
    base = (np.arange(n) * (SIDE + 2) ** 2)[:, None, None]
    w = SIDE + 2

    def at(rr, cc):
        return flat[base + rr * w + cc]

    top = at(r0, c0) * (1 - fc) + at(r0, c1) * fc
    bottom = at(r1, c0) * (1 - fc) + at(r1, c1) * fc
    out = top * (1 - fr) + bottom * fr
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
