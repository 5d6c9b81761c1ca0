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


def _small(copies=0, **kw):
    return make_patch_pipeline(random_state=0, n_filters=8, n_components=60, max_iter=5,
                               copies=copies, **kw)


def test_augmented_fit_adds_distorted_rows(digits, monkeypatch):
    """The classifier sees each row and its copies, transformed by the steps
    fitted on the rows as given; with copies=0 the fit is the plain Pipeline's."""
    from sklearn.linear_model import SGDClassifier
    from sklearn.pipeline import Pipeline

    X, y = digits
    seen = {}
    fit = SGDClassifier.fit

    def spy(self, Z, t, *a, **kw):
        seen["Z"], seen["y"] = Z, t
        return fit(self, Z, t, *a, **kw)

    monkeypatch.setattr(SGDClassifier, "fit", spy)
    pipe = _small(copies=2)
    pipe.set_params(chunk=64)  # uneven chunks: 64, 64, 64, 58
    pipe.fit(X[:250], y[:250])
    Z, t = seen["Z"], seen["y"]
    assert Z.shape[0] == 750 and Z.dtype == np.float64
    np.testing.assert_array_equal(t, np.tile(y[:250], 3))
    before = Pipeline(pipe.steps[:-1])
    np.testing.assert_allclose(Z[:250], before.transform(X[:250]))
    assert not np.allclose(Z[250:500], Z[:250])  # copies differ from the rows
    plain = _small(copies=0).fit(X[:250], y[:250])
    ref = Pipeline([(n, s) for n, s in _small().steps]).fit(X[:250], y[:250])
    np.testing.assert_array_equal(plain.predict(X[250:]), ref.predict(X[250:]))
    with pytest.raises(ValueError, match="copies must be an integer >= 0"):
        _small(copies=-1).fit(X[:50], y[:50])


def test_cv_on_the_cluster_equals_sequential(digits):
    from digitbatch import cluster
    from digitbatch.crossval import run_cv

    X, y = digits
    seq = run_cv(_small(copies=1), X, y, k=3, client=None)
    with cluster.client("local", n_workers=2) as c:
        dsk = run_cv(_small(copies=1), X, y, k=3, client=c)
    assert dsk.backend == "dask" and seq.scores == dsk.scores and min(seq.scores) > 0.8


def test_train_score_predict_end_to_end(tmp_path, small_store, monkeypatch):
    """sgd-patches through train (with --cv), the score CLI and predict, like any
    model (a small head and few filters: the wiring is tested here, the
    catalogue settings' accuracy in test_catalogue_accuracy.py)."""
    import json

    from digitbatch import models

    from click.testing import CliRunner

    from digitbatch.cli import main
    from digitbatch.layout import open_store
    from digitbatch.modelio import load_model
    from digitbatch.models import PATCH_FEATURES
    from digitbatch.training import train

    monkeypatch.setitem(models.PATCH_PARAMS, "n_filters", 8)
    monkeypatch.setattr(models, "PATCH_HEAD", {**models.PATCH_HEAD, "n_components": 60,
                                                "max_iter": 5})
    r = train(small_store, tmp_path / "m", model="sgd-patches", cv=2, scheduler="synchronous")
    assert r.features == PATCH_FEATURES and r.cv["k"] == 2 and r.test["accuracy"] > 0.9
    loaded = load_model(tmp_path / "m")
    assert loaded.manifest["params"]["patch_grid"] == 4
    assert loaded.manifest["input"]["preprocessing"].startswith("moment deskew, learned")
    res = CliRunner().invoke(main, ["score", str(small_store), "--model", str(tmp_path / "m"),
                                    "--out", str(tmp_path / "p.zarr"), "--json",
                                    "--scheduler", "synchronous"])
    assert res.exit_code == 0, res.output
    s = open_store(small_store)
    images, labels, _ = s.read()
    pred = loaded.model.predict(images)
    metrics = json.loads(res.output[res.output.index("{"):])
    assert metrics["accuracy"] == pytest.approx((pred == labels).mean())


def test_bench_breaks_down_each_scoring_step(digits):
    """bench/featurecost.py: every patch step and the kernel head's parts, for the
    compact model scoring uses (figures only in bench output, never asserted)."""
    from digitbatch.bench import featurecost
    from digitbatch.models import compact

    X, y = digits
    m = compact("sgd-patches", _small().fit(X[:200], y[:200]))
    steps = featurecost.breakdown(m, X[:70].reshape(-1, 28, 28), repeats=1)
    assert list(steps) == [f"features: {s}" for s in PF.STEPS] + [
        "head: projection, RBF kernel, weights"]  # (the KernelScorer scoring runs)
    text = "\n".join(featurecost.lines(m, X[:70].reshape(-1, 28, 28), repeats=1))
    assert "sgd-patches per chunk of 70 images" in text and "features: filters" in text


@pytest.mark.parametrize("defect, match", [
    ({"features_filters": np.zeros((25, 7), np.float32)}, r"bias \(8,\) do not fit"),
    ({"features_filters": np.zeros((36, 8), np.float32)}, r"must be \(25, K\)"),
    ({"features_bias": None}, r"need \['bias'\]"),
])
def test_damaged_feature_arrays_do_not_load(tmp_path, digits, defect, match):
    """modelio checks the filters against the settings and the head, by name."""
    import hashlib
    import json

    from digitbatch.errors import ModelError
    from digitbatch.modelio import load_model, save_model
    from digitbatch.models import compact

    X, y = digits
    path = save_model(compact("sgd-patches", _small().fit(X[:200], y[:200])), tmp_path / "m",
                      manifest={})
    with np.load(path / "model.npz") as z:
        arrays = {k: z[k] for k in z.files}
    for k, v in defect.items():
        if v is None:
            del arrays[k]
        else:
            arrays[k] = v
    with open(path / "model.npz", "wb") as fh:
        np.savez(fh, **arrays)
    man = json.loads((path / "manifest.json").read_text())
    man["model_sha256"] = hashlib.sha256((path / "model.npz").read_bytes()).hexdigest()
    (path / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ModelError, match="feature step does not fit its arrays") as e:
        load_model(path)
    assert e.match(match)
