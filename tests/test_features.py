"""Tests of digitbatch.features: vectorised kernels against per-image references."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import affine_transform
from sklearn.decomposition import PCA
from sklearn.kernel_approximation import Nystroem
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from digitbatch import features as F
from digitbatch import folding as FO


def strokes(n: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n synthetic digits: one or two thick slanted strokes each, and a class 0-3."""
    rng = np.random.default_rng(seed)
    r, c = np.mgrid[:28, :28].astype(np.float64)
    images = np.zeros((n, 28, 28))
    labels = rng.integers(0, 4, n)
    for part in range(2):
        top = np.stack([rng.uniform(3, 9, n), rng.uniform(6, 22, n)], axis=1)
        slant = rng.uniform(-0.6, 0.6, n) + 0.3 * labels
        length = rng.uniform(10, 18, n)
        bottom = top + np.stack([length, slant * length], axis=1)
        if part:  # a crossbar on classes 2 and 3
            top = np.stack([top[:, 0] + 6, top[:, 1] - 5], axis=1)
            bottom = top + np.stack([rng.uniform(-1, 1, n), np.full(n, 10.0)], axis=1)
        d = bottom - top
        t = ((r - top[:, 0, None, None]) * d[:, 0, None, None] + (c - top[:, 1, None, None]) * d[:, 1, None, None]) / (
            d**2
        ).sum(1)[:, None, None]
        t = np.clip(t, 0, 1)
        dist = np.hypot(r - top[:, 0, None, None] - t * d[:, 0, None, None], c - top[:, 1, None, None] - t * d[:, 1, None, None])
        ink = np.clip(1.8 - dist, 0, 1) * 255
        if part:
            ink *= (labels >= 2)[:, None, None]
        images = np.maximum(images, ink)
    return np.round(images).astype(np.uint8), labels


def deskew_reference(image: np.ndarray) -> np.ndarray:
    """The classic per-image deskew (scipy affine_transform), bilinear."""
    img = image.astype(np.float64)
    rows, cols = np.mgrid[:28, :28]
    total = img.sum()
    if total == 0:
        return img
    mr, mc = (rows * img).sum() / total, (cols * img).sum() / total
    var_r = ((rows - mr) ** 2 * img).sum() / total
    cov = ((rows - mr) * (cols - mc) * img).sum() / total
    affine = np.array([[1.0, 0.0], [cov / var_r, 1.0]])
    offset = np.array([mr, mc]) - affine @ np.array([14.0, 14.0])
    return affine_transform(img, affine, offset=offset, order=1, mode="grid-constant")


def hog_reference(image: np.ndarray) -> np.ndarray:
    """Brute-force HOG: explicit loops over pixels and cells."""
    half = image.astype(np.float64).reshape(14, 2, 14, 2).sum(axis=(1, 3))
    pad = np.pad(half, 1)
    axes = [(1, 0), (0, 1), (np.sqrt(0.5), np.sqrt(0.5)), (np.sqrt(0.5), -np.sqrt(0.5))]
    hist = np.zeros((8, 7, 7))
    for y in range(14):
        for x in range(14):
            gx = pad[y + 1, x + 2] - pad[y + 1, x]
            gy = pad[y + 2, x + 1] - pad[y, x + 1]
            for a, (ux, uy) in enumerate(axes):
                p = ux * gx + uy * gy
                for ch, vote in ((a, max(p, 0.0)), (a + 4, max(-p, 0.0))):
                    for cy in range(7):
                        for cx in range(7):
                            w = max(0, 1 - abs(y - (2 * cy + 0.5)) / 2) * max(0, 1 - abs(x - (2 * cx + 0.5)) / 2)
                            hist[ch, cy, cx] += 2 * vote * w
    hist = np.sqrt(hist).ravel()
    norm = np.linalg.norm(hist)
    return hist / norm if norm > 0 else hist


# --- deskew ----------------------------------------------------------------


def test_deskew_matches_per_image_scipy_reference():
    images, _ = strokes(60)
    got = F.deskew(images)
    ref = np.stack([deskew_reference(im) for im in images])
    assert got.dtype == np.float32 and got.shape == images.shape
    assert np.abs(got - ref).max() < 1e-3  # on the 0-255 scale


def test_deskew_removes_slant_and_centres():
    images, _ = strokes(40, seed=1)
    before = F.image_moments(images)[2] / F.image_moments(images)[1]
    centroid, var_r, cov = F.image_moments(F.deskew(images))
    assert np.abs(before).max() > 0.5  # the strokes were slanted
    # Bilinear resampling leaves a little slant, and a steep stroke whose
    # ends are sheared past the border keeps more.
    after = np.abs(cov / var_r)
    assert np.median(after) < 0.01 and np.quantile(after, 0.9) < 0.05
    assert np.median(np.abs(centroid - 14.0)) < 0.2 and np.abs(centroid - 14.0).max() < 1.0


@pytest.mark.parametrize(
    "images",
    [
        np.zeros((3, 28, 28), np.uint8),  # blank images stay blank
        np.zeros((0, 28, 28), np.uint8),  # an empty chunk
    ],
)
def test_deskew_blank_and_empty(images):
    out = F.deskew(images)
    assert out.shape == images.shape and not out.any()


def test_deskew_accepts_flat_rows_and_float_input():
    images, _ = strokes(10, seed=2)
    expected = F.deskew(images)
    np.testing.assert_allclose(F.deskew(images.reshape(10, 784)), expected)
    np.testing.assert_allclose(F.deskew(images.astype(np.float64)), expected, atol=1e-3)


def test_deskew_single_row_of_ink_is_only_centred():
    image = np.zeros((1, 28, 28), np.uint8)
    image[0, 5, 3:20] = 200  # no vertical spread: no slant is defined
    out = F.deskew(image)
    assert np.isfinite(out).all() and out[0, 14].sum() == pytest.approx(200 * 17, rel=1e-4)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
def test_deskew_wide_is_deskew_with_a_zero_column(dtype):
    """Same float32 operations: bit-equal to deskew, blank images and an odd count included."""
    images, _ = strokes(13, seed=6)
    images[[0, 7]] = 0
    images = images.astype(dtype)
    wide = F.deskew_wide(images)
    assert wide.shape == (13, 28, 29) and wide.dtype == np.float32
    assert np.array_equal(wide[:, :, :28], F.deskew(images))
    assert not wide[:, :, 28].any() and not wide[[0, 7]].any()
    assert F.deskew_wide(images[:0]).shape == (0, 28, 29)


@pytest.mark.parametrize("shape", [(28, 28), (4, 28, 27), (4, 783)])
def test_bad_shapes_are_refused(shape):
    with pytest.raises(ValueError, match="must have shape"):
        F.deskew(np.zeros(shape, np.uint8))


# --- hog ---------------------------------------------------------------------


def test_hog_matches_brute_force_reference():
    images, _ = strokes(4, seed=3)
    straight = F.deskew(images)
    got = F.hog(straight)
    ref = np.stack([hog_reference(im) for im in straight])
    assert got.shape == (4, F.HOG_SIZE)
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_hog_unit_norm_and_blank():
    images, _ = strokes(5, seed=4)
    images[2] = 0
    h = F.hog(images)
    norms = np.linalg.norm(h, axis=1)
    np.testing.assert_allclose(np.delete(norms, 2), 1.0, rtol=1e-5)
    assert not h[2].any()


def test_kernel_features_blocks():
    images, _ = strokes(6, seed=5)
    plain = F.kernel_features(images)
    assert plain.shape == (6, 784) and plain.dtype == np.float32 and plain.max() <= 1.0 + 1e-6
    both = F.kernel_features(images, hog_weight=3.0)
    np.testing.assert_allclose(both[:, :784], plain)
    np.testing.assert_allclose(np.linalg.norm(both[:, 784:], axis=1), 3.0, rtol=1e-5)
    with pytest.raises(ValueError, match="hog_weight"):
        F.kernel_features(images, hog_weight=-1.0)


# --- folding -----------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    images, labels = strokes(400, seed=6)
    return images, labels


@pytest.mark.parametrize(
    "model, scale",
    [
        (make_pipeline(StandardScaler(), SGDClassifier(loss="log_loss", random_state=0)), 1.0),  # the `sgd` model
        (make_pipeline(StandardScaler(), SGDClassifier(loss="log_loss", random_state=0)), 1 / 255),  # fitted on /255
        (make_pipeline(StandardScaler(), StandardScaler(), SGDClassifier(random_state=0)), 1 / 255),  # chained
        (SGDClassifier(random_state=0), 1 / 255),  # a bare classifier
    ],
)
def test_fold_linear_multiclass(digits, model, scale):
    images, labels = digits
    x = images.reshape(len(images), -1).astype(np.float64)
    model.fit(x * scale, labels)
    pred = FO.fold_linear(model, scale=scale)
    np.testing.assert_allclose(pred.decision_function(x), model.decision_function(x * scale), rtol=1e-8, atol=1e-8)
    np.testing.assert_array_equal(pred.predict(x), model.predict(x * scale))


def test_fold_linear_binary_detector(digits):
    images, labels = digits
    x = images.reshape(len(images), -1) / 255.0
    model = make_pipeline(StandardScaler(), LogisticRegression(tol=0.1, max_iter=1000)).fit(x, labels == 2)
    pred = FO.fold_linear(model)
    assert pred.decision_function(x).shape == (len(x),)
    np.testing.assert_allclose(pred.decision_function(x), model.decision_function(x), rtol=1e-8, atol=1e-8)
    np.testing.assert_array_equal(pred.predict(x), model.predict(x))


def test_fold_linear_refuses_other_steps(digits):
    images, labels = digits
    x = images.reshape(len(images), -1) / 255.0
    model = make_pipeline(PCA(5), SGDClassifier(random_state=0)).fit(x, labels)
    with pytest.raises(ValueError, match="cannot fold PCA"):
        FO.fold_linear(model)


def _kernel_cases():
    return [
        # the flagship recipe, small
        F.make_kernel_pipeline(hog_weight=4.0, pca_components=20, n_components=60, gamma=0.05, max_iter=5),
        # no PCA, no HOG
        F.make_kernel_pipeline(hog_weight=0.0, pca_components=None, n_components=60, gamma=0.02, max_iter=5),
        # scalers around the kernel step, logistic regression head
        make_pipeline(
            FunctionTransformer(F.kernel_features, kw_args={"dtype": np.float64}),
            StandardScaler(),
            PCA(10, whiten=True, random_state=0),
            Nystroem(gamma=0.05, n_components=50, random_state=0),
            StandardScaler(),
            LogisticRegression(max_iter=300),
        ),
    ]


@pytest.mark.parametrize(
    "case, f32_tol",
    [
        (0, 1e-3),
        (1, 1e-3),
        # scaling Nystroem's outputs by 1/std makes the folded weights large
        # and float32 scoring correspondingly less exact
        (2, 5e-2),
    ],
)
def test_fold_kernel_matches_pipeline(digits, case, f32_tol):
    images, labels = digits
    model = _kernel_cases()[case].fit(images[:300], labels[:300])
    test = images[300:]
    feats = F.kernel_features(test, **(model[0].kw_args or {}))
    expected = model.decision_function(test)
    pred = FO.fold_kernel(model)
    got = pred.decision_function(feats)
    np.testing.assert_allclose(got, expected, rtol=1e-7, atol=1e-7)
    np.testing.assert_array_equal(got.argmax(1), expected.argmax(1))
    np.testing.assert_array_equal(pred.predict(feats), model.predict(test))
    fast = FO.fold_kernel(model, dtype=np.float32)
    assert fast.weights.dtype == np.float32
    np.testing.assert_allclose(fast.decision_function(feats), expected, rtol=f32_tol, atol=f32_tol)


def test_fold_kernel_binary_detector(digits):
    images, labels = digits
    model = make_pipeline(
        FunctionTransformer(F.kernel_features, kw_args={"dtype": np.float64}),
        Nystroem(gamma=0.02, n_components=50, random_state=0),
        LogisticRegression(tol=0.1, max_iter=1000),
    ).fit(images[:300], labels[:300] == 2)
    pred = FO.fold_kernel(model)
    feats = F.kernel_features(images[300:], dtype=np.float64)
    np.testing.assert_allclose(pred.decision_function(feats), model.decision_function(images[300:]), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(pred.predict(feats), model.predict(images[300:]))


def test_fold_kernel_refuses_other_kernels(digits):
    images, labels = digits
    model = make_pipeline(
        Nystroem(kernel="poly", n_components=20, random_state=0), SGDClassifier(random_state=0, max_iter=5, tol=None)
    ).fit(images[:100].reshape(100, -1) / 255.0, labels[:100])
    with pytest.raises(ValueError, match="kernel='rbf'"):
        FO.fold_kernel(model)
