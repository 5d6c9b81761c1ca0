"""The catalogue: every model's compact form predicts as its scikit-learn pipeline,
and survives the artifact round trip."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from digitbatch.errors import TrainingError
from digitbatch.modelio import load_model, save_model
from digitbatch.models import build, compact, get_spec, resolve_features, target

from .conftest import synthetic_digits

CASES = [
    ("sgd", "pixels"),        # the walk-through's multiclass model
    ("sgd", "deskew"),
    ("sgd", "kernel"),
    ("sgd-kernel", None),
    ("sgd-patches", None),    # the flagship: learned patch filters, kernel head
    ("detect-2", "pixels"),   # the walk-through's binary detector
    ("detect-7", "kernel"),
]


@pytest.fixture(scope="module")
def data():
    x, y = synthetic_digits(500, seed=4)
    return x.reshape(500, -1), y


@pytest.fixture
def small_patch_settings(monkeypatch):
    """sgd-patches with 16 filters and 100 landmarks: the fold and round trip
    are what is tested here (its accuracy: test_catalogue_accuracy.py)."""
    from digitbatch import models

    monkeypatch.setitem(models.PATCH_PARAMS, "n_filters", 16)
    monkeypatch.setattr(models, "PATCH_HEAD", {**models.PATCH_HEAD, "n_components": 100})


@pytest.mark.parametrize("name, feats", CASES)
def test_compact_equals_pipeline_and_round_trips(tmp_path, data, name, feats,
                                                  small_patch_settings):
    X, y = data
    spec = get_spec(name)
    yt = target(spec, y)
    pipe = build(name, seed=0, features=feats)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny data: convergence / n_components notices
        pipe.fit(X[:400], yt[:400])
    cm = compact(name, pipe, features=feats)
    Xt = X[400:]
    expected = pipe.predict(Xt)
    np.testing.assert_array_equal(cm.predict(Xt.reshape(-1, 28, 28)), expected)
    if hasattr(pipe, "decision_function"):
        np.testing.assert_allclose(cm.decision_function(Xt), pipe.decision_function(Xt),
                                   rtol=1e-6, atol=1e-6)
    if cm.loss in ("log_loss", "logistic"):
        np.testing.assert_allclose(cm.predict_proba(Xt), pipe.predict_proba(Xt), atol=1e-9)
    save_model(cm, tmp_path / "m", manifest={})
    loaded = load_model(tmp_path / "m").model
    np.testing.assert_array_equal(loaded.predict(Xt), expected)
    assert loaded.features == cm.features and loaded.kind == cm.kind


def test_detect_target():
    y = np.array([2, 3, -1, 2], np.int8)
    assert target(get_spec("detect-2"), y).tolist() == [1, 0, -1, 1]


@pytest.mark.parametrize("name", ["resnet", "detect-10", "detect-", "", None])
def test_unknown_models(name):
    with pytest.raises(TrainingError, match="unknown model"):
        get_spec(name)


def test_feature_choices():
    with pytest.raises(TrainingError, match="not available for sgd-kernel"):
        resolve_features(get_spec("sgd-kernel"), "pixels")
    with pytest.raises(TrainingError, match="choose one of"):
        resolve_features(get_spec("sgd"), "hog")
    assert resolve_features(get_spec("detect-3"), None) == "pixels"


@pytest.mark.parametrize("shape", [(7, 28, 28), (5, 784), (0, 784)])
def test_sparse_scaled_pixels_hold_the_dense_scaled_values(shape):
    """sgd's features: a CSR matrix equal to pixels / 255 in float64, empty
    and all-zero rows included, with the int32 indices SGD uses uncopied."""
    from digitbatch.models import PIXEL_SCALE, pixels_scaled_sparse

    rng = np.random.default_rng(3)
    X = (rng.integers(0, 256, size=shape) * (rng.random(shape) < 0.2)).astype(np.uint8)
    if shape[0]:
        X[1] = 0  # an all-zero row
    S = pixels_scaled_sparse(X)
    dense = X.reshape(shape[0], 784).astype(np.float64) * PIXEL_SCALE
    assert S.shape == dense.shape and S.dtype == np.float64
    assert S.indices.dtype == np.int32 and S.indptr.dtype == np.int32
    assert S.nnz == np.count_nonzero(X)
    assert np.array_equal(S.toarray(), dense)
    assert S.has_sorted_indices


@pytest.mark.parametrize("name, feats", [("sgd-kernel", None), ("detect-7", "kernel"),
                                         ("sgd-patches", None)])
def test_kernel_models_score_in_float32_as_in_float64(data, name, feats, small_patch_settings):
    """score_chunk_full's float32 scorer: the float64 predictions exactly, and
    its decision-value gap to float32 rounding, on an odd chunk with blank images."""
    from digitbatch import kernels

    X, y = data
    pipe = build(name, seed=0, features=feats)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe.fit(X[:400], target(get_spec(name), y)[:400])
    cm = compact(name, pipe, features=feats)
    chunk = X[400:497].copy()  # 97 rows
    chunk[[0, 50]] = 0
    s = cm.score_chunk_full(chunk.reshape(-1, 28, 28), proba=False)
    np.testing.assert_array_equal(s.pred, pipe.predict(chunk))
    d64 = cm.decision_function(chunk)
    gap64 = np.abs(d64) if d64.ndim == 1 else kernels.top2_margin(d64)
    assert s.gap.dtype == np.float32
    np.testing.assert_allclose(s.gap, gap64, rtol=0, atol=1e-4 * max(1.0, np.abs(d64).max()))


def test_bench_breaks_down_the_kernel_models_scoring(data):
    """bench/featurecost.py times sgd-kernel as scoring runs it: the float32 feature
    blocks, then the head's scorer (figures only in bench output, never asserted)."""
    from digitbatch.bench import featurecost

    X, y = data
    pipe = build("sgd-kernel", seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe.fit(X[:300], y[:300])
    cm = compact("sgd-kernel", pipe)
    scorer, blocks = cm.scorer32()
    assert blocks and cm.scorer32()[0] is scorer  # made once
    steps = featurecost.breakdown(cm, X[:71].reshape(-1, 28, 28), repeats=1)
    assert list(steps) == ["features (float32 column blocks)",
                           "head: projection, RBF kernel, weights"]
    assert all(v > 0 for v in steps.values())
