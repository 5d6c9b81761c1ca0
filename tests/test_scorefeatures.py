"""Tests of digitbatch.scorefeatures: the float32 scoring form of the kernel
features against digitbatch.features (the fitted pipelines' own)."""

from __future__ import annotations

import numpy as np
import pytest

from digitbatch import features as F
from digitbatch import scorefeatures as SF

from .test_features import strokes


def _images(n: int = 11, seed: int = 7) -> np.ndarray:
    """n stroke digits (an odd count), two of them blank."""
    images, _ = strokes(n, seed=seed)
    images[[1, n - 1]] = 0
    return images


def test_hog_root_is_hog_before_normalisation():
    straight = F.deskew(_images())
    root, norm = SF.hog_root(straight)
    assert root.shape == (11, F.HOG_SIZE) and root.dtype == np.float32 and norm.shape == (11,)
    # the descriptor's sensitivity to rounding near 0 (a square root) allows 1e-5
    np.testing.assert_allclose(root / np.maximum(norm, 1e-6)[:, None], F.hog(straight), rtol=0, atol=1e-5)
    np.testing.assert_allclose(norm, np.linalg.norm(root, axis=1), rtol=1e-5)
    assert not root[[1, 10]].any() and not norm[[1, 10]].any()
    # the (n, 28, 29) form of deskew_wide gives the same
    wide_root, wide_norm = SF.hog_root(F.deskew_wide(_images()))
    np.testing.assert_allclose(wide_root, root, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(wide_norm, norm, rtol=1e-6)


def test_hog_root_empty_and_bad_shapes():
    root, norm = SF.hog_root(np.zeros((0, 28, 28), np.float32))
    assert root.shape == (0, F.HOG_SIZE) and norm.shape == (0,)
    with pytest.raises(ValueError, match="must have shape"):
        SF.hog_root(np.zeros((3, 28, 30), np.float32))


@pytest.mark.parametrize("hog_weight", [0.0, 7.0])
def test_parts_rebuild_kernel_features(hog_weight):
    """Each block, with its factor and row scale, is its slice of kernel_features."""
    images = _images()
    expected = F.kernel_features(images.reshape(11, 784), hog_weight=hog_weight, dtype=np.float64)
    parts, scales = SF.kernel_feature_parts(images, hog_weight=hog_weight)
    cols, factors = SF.block_layout(hog_weight)
    assert len(parts) == len(scales) == len(cols) == len(factors) == (2 if hog_weight else 1)
    np.testing.assert_allclose(factors, (1 / 255.0, hog_weight)[:len(factors)], rtol=1e-7)
    rebuilt = np.zeros_like(expected)
    for part, scale, col, factor in zip(parts, scales, cols, factors):
        assert part.dtype == np.float32 and part.shape == (11, col.shape[0])
        block = part.astype(np.float64) * factor * (1.0 if scale is None else scale[:, None])
        rebuilt[:, col[col >= 0]] = block[:, col >= 0]
        assert not part[:, col < 0].any()  # the padding column is zero
    np.testing.assert_allclose(rebuilt, expected, rtol=0, atol=1e-5 * max(1.0, hog_weight))


def test_parts_empty_and_bad_weight():
    parts, scales = SF.kernel_feature_parts(np.zeros((0, 784), np.uint8), hog_weight=7.0)
    assert [p.shape for p in parts] == [(0, 812), (0, F.HOG_SIZE)] and scales[1].shape == (0,)
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="hog_weight"):
            SF.kernel_feature_parts(_images(), hog_weight=bad)
