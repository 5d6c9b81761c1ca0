"""patchfeatures: the per-chunk patch features equal a plain per-window
reference, on uneven blocks, and refuse bad arrays and settings."""

from __future__ import annotations

import numpy as np
import pytest

from digitbatch import patchfeatures as PF
from digitbatch.features import deskew

from .conftest import synthetic_digits


def reference(images, filters, bias, *, patch, stride, grid, threshold, scale):
    """One window and one cell at a time, the definition in the module docstring."""
    x = deskew(images).astype(np.float64) / 255.0
    s = PF.positions(patch, stride)
    tents = PF.pool_weights(s, grid).astype(np.float64)
    k = filters.shape[1]
    out = np.zeros((x.shape[0], grid, grid, k))
    for i in range(s):
        for j in range(s):
            win = x[:, i * stride:i * stride + patch, j * stride:j * stride + patch]
            r = np.maximum(win.reshape(len(x), -1) @ filters + bias - threshold, 0.0)
            out += tents[i][None, :, None, None] * tents[j][None, None, :, None] * r[:, None, None, :]
    return (np.sqrt(out) * scale).reshape(len(x), -1)


def _filters(k, patch=5, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(patch * patch, k)).astype(np.float32),
            rng.normal(scale=0.3, size=k).astype(np.float32))


@pytest.mark.parametrize("n, patch, stride, grid", [
    (PF.BLOCK_ROWS * 2 + 7, 5, 2, 4),  # three blocks, the last uneven
    (9, 6, 1, 5), (3, 4, 3, 3), (1, 28, 1, 1)])
def test_equals_reference(n, patch, stride, grid):
    x, _ = synthetic_digits(n, seed=n)
    x[0] = 0  # a blank digit
    w, b = _filters(7, patch)
    kw = dict(patch=patch, stride=stride, grid=grid, threshold=0.4, scale=1.7)
    got = PF.patch_features(x, w, b, dtype=np.float64, **kw)
    assert got.shape == (n, grid * grid * 7) and got.dtype == np.float64
    np.testing.assert_allclose(got, reference(x, w.astype(np.float64), b, **kw),
                               rtol=2e-5, atol=2e-5)
    # flattened input, float32 output, one image at a time: the same values
    one = np.concatenate([PF.patch_features(r[None], w, b, **kw) for r in x.reshape(n, -1)])
    np.testing.assert_allclose(one, got, rtol=1e-6, atol=1e-6)


def test_empty_chunk_and_timings():
    w, b = _filters(3)
    timings = {}
    x, _ = synthetic_digits(5)
    assert PF.patch_features(np.zeros((0, 28, 28), np.uint8), w, b).shape == (0, 48)
    PF.patch_features(x, w, b, timings=timings)
    assert set(timings) == set(PF.STEPS) and all(v >= 0 for v in timings.values())


def test_pool_weights_cover_every_position():
    t = PF.pool_weights(12, 4)
    assert t.shape == (12, 4) and (t.sum(axis=1) > 0).all() and (t >= 0).all()


@pytest.mark.parametrize("kw, match", [
    ({"patch": 0}, "integers >= 1"),
    ({"stride": 2.0}, "integers >= 1"),
    ({"grid": True}, "integers >= 1"),
    ({"grid": 13}, "fewer than the grid"),
    ({"patch": 6}, r"filters must be \(36, K\)"),
    ({"scale": 0.0}, "scale finite and > 0"),
    ({"threshold": float("nan")}, "threshold must be finite"),
])
def test_bad_settings(kw, match):
    w, b = _filters(3)
    x, _ = synthetic_digits(2)
    with pytest.raises(ValueError, match=match):
        PF.patch_features(x, w, b, **kw)


def test_bad_arrays_and_images():
    w, b = _filters(3)
    x, _ = synthetic_digits(2)
    with pytest.raises(ValueError, match="bias"):
        PF.patch_features(x, w, b[:2])
    with pytest.raises(ValueError, match="images must have shape"):
        PF.patch_features(x.reshape(2, 28, 28, 1)[:, :20], w, b)
