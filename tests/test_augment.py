"""augment: distortions equal scipy's bilinear resampling of the same maps,
are seeded, and keep the chunk's shape and dtype."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from digitbatch.augment import distort

from .conftest import synthetic_digits


def test_no_distortion_is_the_identity():
    x, _ = synthetic_digits(13)
    out = distort(x, np.random.default_rng(0), rotate=0, scale=0, elastic=0)
    np.testing.assert_array_equal(out, x)


def test_rotation_and_scale_equal_scipy():
    x, _ = synthetic_digits(9, seed=2)
    rng = np.random.default_rng(7)
    out = distort(x.reshape(9, -1), rng, rotate=15, scale=0.2, elastic=0)
    assert out.shape == (9, 784) and out.dtype == np.uint8
    same = np.random.default_rng(7)  # the draws distort made
    theta = np.deg2rad(same.uniform(-15, 15, 9))
    zoom = same.uniform(0.8, 1.2, 9)
    g = np.arange(28) - 13.5
    r, c = np.meshgrid(g, g, indexing="ij")
    for i in range(9):
        cos, sin = np.cos(theta[i]) / zoom[i], np.sin(theta[i]) / zoom[i]
        coords = [cos * r - sin * c + 13.5, sin * r + cos * c + 13.5]
        want = ndimage.map_coordinates(x[i].astype(np.float64), coords, order=1,
                                       mode="grid-constant", cval=0.0)
        diff = np.abs(out[i].reshape(28, 28).astype(int) - np.rint(want).astype(int))
        assert diff.max() <= 1  # float32 maps against float64


def test_elastic_field_moves_ink_by_about_its_size():
    x, _ = synthetic_digits(200, seed=3)
    a = distort(x, np.random.default_rng(1), rotate=0, scale=0, elastic=2.0)
    b = distort(x, np.random.default_rng(1), rotate=0, scale=0, elastic=2.0)
    np.testing.assert_array_equal(a, b)  # seeded
    assert not np.array_equal(a, x)
    # total ink is about kept (a smooth field moves strokes, it does not erase them)
    assert abs(a.astype(float).sum() / x.astype(float).sum() - 1) < 0.1


def test_empty_and_bad_settings():
    rng = np.random.default_rng(0)
    assert distort(np.zeros((0, 28, 28), np.uint8), rng).shape == (0, 28, 28)
    for kw in ({"rotate": -1}, {"scale": 1.0}, {"sigma": 0}, {"elastic": -0.5}):
        with pytest.raises(ValueError, match="must be"):
            distort(np.zeros((1, 784), np.uint8), rng, **kw)
