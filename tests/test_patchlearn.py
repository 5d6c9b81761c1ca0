"""patchlearn: k-means filters on whitened windows, the fitted feature step
and the sgd-patches pipeline, against plain scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone

from digitbatch import patchfeatures as PF
from digitbatch.patchlearn import (PatchFeatures, fold_centroids, learn_filters,
                                   make_patch_pipeline, whitening)

from .conftest import synthetic_digits


@pytest.fixture(scope="module")
def digits():
    x, y = synthetic_digits(300, seed=5)
    return x.reshape(300, -1), y


def test_whitening_and_folded_centroids():
    rng = np.random.default_rng(0)
    windows = rng.normal(size=(5000, 9)) @ rng.normal(size=(9, 9)) + rng.normal(size=9)
    mean, whiten = whitening(windows, 1e-9)
    z = (windows - mean) @ whiten
    np.testing.assert_allclose(np.cov(z, rowvar=False), np.eye(9), atol=1e-6)
    np.testing.assert_allclose(whiten, whiten.T)  # ZCA: symmetric, no rotation
    # with eps the small variances are damped, never amplified
    damped = (windows - mean) @ whitening(windows, 1.0)[1]
    assert (np.linalg.eigvalsh(np.cov(damped, rowvar=False)) < 1.0).all()
    centres = rng.normal(size=(4, 9)) * [[1.0], [2.0], [0.5], [3.0]]
    w, b = fold_centroids(centres, mean, whiten)
    unit = centres / np.linalg.norm(centres, axis=1, keepdims=True)
    np.testing.assert_allclose(windows @ w + b, z @ unit.T, rtol=1e-4, atol=1e-4)


def test_filters_are_seeded(digits):
    X, _ = digits
    w, b = learn_filters(X, n_filters=6, patch=4, n_images=120, n_patches=3000, random_state=1)
    assert w.shape == (16, 6) and b.shape == (6,) and w.dtype == b.dtype == np.float32
    w2, b2 = learn_filters(X, n_filters=6, patch=4, n_images=120, n_patches=3000, random_state=1)
    np.testing.assert_array_equal(w, w2)
    np.testing.assert_array_equal(b, b2)
    w3, _ = learn_filters(X, n_filters=6, patch=4, n_images=120, n_patches=3000, random_state=2)
    assert not np.array_equal(w, w3)


@pytest.mark.parametrize("kw, match", [
    ({"n_filters": 1}, "n_filters must be an integer >= 2"),
    ({"n_filters": 4, "whiten_eps": 0.0}, "whiten_eps must be > 0"),
])
def test_bad_settings(digits, kw, match):
    with pytest.raises(ValueError, match=match):
        learn_filters(digits[0][:10], **kw)


def test_blank_images_have_no_windows_to_learn_from():
    with pytest.raises(ValueError, match="windows with ink"):
        learn_filters(np.zeros((5, 784), np.uint8), n_filters=4)


def test_transformer_sets_the_norm_and_clones(digits):
    X, _ = digits
    t = PatchFeatures(n_filters=8, grid=3, norm=2.5, random_state=3).fit(X)
    f = t.transform(X)
    assert f.shape == (300, PF.n_features(8, 3)) and f.dtype == np.float64
    assert np.linalg.norm(f, axis=1).mean() == pytest.approx(2.5, rel=1e-6)
    np.testing.assert_array_equal(
        f, PF.patch_features(X, t.filters_, t.bias_, dtype=np.float64, **t.settings()))
    c = clone(t)
    assert c.get_params() == t.get_params() and not hasattr(c, "filters_")


def test_pipeline_predicts_the_synthetic_classes(digits):
    X, y = digits
    pipe = make_patch_pipeline(random_state=0, n_filters=8, n_components=100, max_iter=10)
    pipe.fit(X[:250], y[:250])
    assert [n for n, _ in pipe.steps] == ["features", "pca", "nystroem", "sgd"]
    assert pipe.score(X[250:], y[250:]) > 0.9
