"""Tests of digitbatch.folding: folded predictors against the scikit-learn pipelines.

(tests/test_features.py checks the catalogue's kernel recipe; these cover every
foldable step, the binary and multiclass heads, float32 and the refusals.)
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.kernel_approximation import Nystroem
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.metrics.pairwise import rbf_kernel
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, MinMaxScaler, StandardScaler

from digitbatch import folding as FO

from .conftest import synthetic_digits

TOL = {"rtol": 1e-7, "atol": 1e-7}
# (a few solver iterations are enough: the folded model is compared with the
# fitted one, however well that fits)
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def digits():
    """(n, 196) float64 pixels (every other row and column) and labels 0-9: 260 to
    fit, 137 to score."""
    x, y = synthetic_digits(397, seed=11)
    return x[:, ::2, ::2].reshape(len(x), -1).astype(np.float64), y


def _chunks(n: int, size: int = 64) -> list[slice]:
    """Uneven chunks of rows: 64, 64, ... and a ragged last one."""
    return [slice(s, min(s + size, n)) for s in range(0, n, size)]


def _check(pred, model, x_pred, x_model, *, tol=TOL):
    """``pred`` on ``x_pred`` scores and predicts as ``model`` on ``x_model``,
    a chunk of rows at a time as scoring does."""
    expected = model.decision_function(x_model)
    got = np.concatenate([pred.decision_function(x_pred[s]) for s in _chunks(len(x_pred))])
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, **tol)
    labels = np.concatenate([pred.predict(x_pred[s]) for s in _chunks(len(x_pred))])
    np.testing.assert_array_equal(labels, model.predict(x_model))


# --- fold_linear ----------------------------------------------------------------


def _sgd(**kw):
    return SGDClassifier(loss="log_loss", max_iter=5, tol=None, random_state=0, **kw)


def _logreg():
    return LogisticRegression(max_iter=30)


LINEAR = {
    "scaler-sgd": (lambda: make_pipeline(StandardScaler(), _sgd()), 1 / 255),
    "scaler-logreg": (lambda: make_pipeline(StandardScaler(), _logreg()), 1.0),
    "centre-only": (lambda: make_pipeline(StandardScaler(with_std=False), _sgd()), 1 / 255),
    "neither": (lambda: make_pipeline(StandardScaler(with_mean=False, with_std=False), _sgd()), 1.0),
    "three-scalers": (lambda: make_pipeline(StandardScaler(), StandardScaler(with_std=False),
                                            StandardScaler(), _sgd(average=True)), 1 / 255),
    "skipped-steps": (lambda: Pipeline([("a", "passthrough"), ("s", StandardScaler()), ("b", None),
                                        ("clf", _sgd())]), 1 / 255),
    "bare": (lambda: _sgd(), 1 / 255),
}


@pytest.mark.parametrize("name", list(LINEAR))
def test_fold_linear_equals_the_pipeline(digits, name):
    make, scale = LINEAR[name]
    x, y = digits
    model = make().fit(x[:260] * scale, y[:260])
    pred = FO.fold_linear(model, scale=scale)
    assert isinstance(pred, FO.LinearPredictor)
    assert pred.weights.shape == (196, 10) and pred.intercept.shape == (10,)
    np.testing.assert_array_equal(pred.classes, np.arange(10))
    _check(pred, model, x[260:], x[260:] * scale)


def test_fold_linear_with_a_per_feature_scale(digits):
    x, y = digits
    scale = np.linspace(0.5, 2.0, 196)
    model = make_pipeline(StandardScaler(), _logreg()).fit(x[:260] * scale, y[:260])
    _check(FO.fold_linear(model, scale=scale), model, x[260:], x[260:] * scale)


def test_fold_linear_with_an_uncentred_scaler(digits):
    x, y = digits
    model = make_pipeline(StandardScaler(with_mean=False), _sgd()).fit(x[:260] / 255, y[:260])
    _check(FO.fold_linear(model, scale=1 / 255), model, x[260:], x[260:] / 255)


def test_fold_linear_binary_keeps_the_classes(digits):
    x, y = digits
    target = np.where(y == 4, "four", "other")  # the positive class is classes_[1]
    model = make_pipeline(StandardScaler(), _logreg()).fit(x[:260] / 255, target[:260])
    pred = FO.fold_linear(model, scale=1 / 255)
    assert pred.weights.shape == (196, 1)
    assert pred.decision_function(x[260:]).shape == (137,)
    assert pred.classes.tolist() == ["four", "other"]
    _check(pred, model, x[260:], x[260:] / 255)
    assert set(pred.predict(x[260:]).tolist()) == {"four", "other"}


def test_predict_is_the_argmax_of_the_decision_values():
    pred = FO.LinearPredictor(weights=np.eye(3), intercept=np.array([0.0, 0.5, 0.0]),
                              classes=np.array([7, 8, 9]))
    x = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 2.0], [0.4, 0.0, 0.0]])
    assert pred.predict(x).tolist() == [7, 8, 9, 8]
    binary = FO.LinearPredictor(weights=np.array([[1.0]]), intercept=np.array([-1.0]),
                                classes=np.array(["no", "yes"]))
    # a decision value of exactly 0 is the negative class, as in scikit-learn
    assert binary.predict(np.array([[0.5], [1.0], [1.5]])).tolist() == ["no", "no", "yes"]


# --- fold_kernel ----------------------------------------------------------------


def _nys(**kw):
    return Nystroem(n_components=40, random_state=0, **{"gamma": 0.02, **kw})


KERNEL = {
    # scalers, no PCA, the default gamma (1 / n_features)
    "scaler-nystroem": lambda: make_pipeline(StandardScaler(), Nystroem(n_components=40, random_state=0),
                                             _sgd()),
    # PCA alone before the kernel, a centring scaler after it
    "pca-centre": lambda: make_pipeline(PCA(12, random_state=0), _nys(),
                                        StandardScaler(with_std=False), _logreg()),
    # everything: scalers, whitened PCA, scalers after the kernel
    "everything": lambda: make_pipeline(StandardScaler(), StandardScaler(with_std=False),
                                        PCA(10, whiten=True, random_state=0), _nys(gamma=0.05),
                                        StandardScaler(), _sgd()),
    # the kernel step alone
    "nystroem": lambda: make_pipeline(_nys(gamma=1e-6), _logreg()),
    # skipped steps
    "skipped": lambda: Pipeline([("p", "passthrough"), ("pca", PCA(8, random_state=0)),
                                 ("k", _nys(gamma=None)), ("n", None), ("clf", _sgd())]),
}


@pytest.mark.parametrize("name", list(KERNEL))
def test_fold_kernel_equals_the_pipeline(digits, name):
    x, y = digits
    model = KERNEL[name]().fit(x[:260], y[:260])
    pred = FO.fold_kernel(model)
    assert isinstance(pred, FO.KernelPredictor)
    assert pred.landmarks.shape == (40, model.named_steps[
        next(k for k, s in model.steps if isinstance(s, Nystroem))].n_features_in_)
    assert pred.weights.shape == (40, 10)
    assert (pred.projection is None) == (name == "nystroem")
    _check(pred, model, x[260:], x[260:])
    fast = FO.fold_kernel(model, dtype=np.float32)
    for v in (fast.projection, fast.offset, fast.landmarks, fast.landmark_sq_norms, fast.weights,
              fast.intercept):
        assert v is None or v.dtype == np.float32
    d = model.decision_function(x[260:])
    np.testing.assert_allclose(fast.decision_function(x[260:].astype(np.float32)), d,
                               rtol=1e-3, atol=1e-3 * np.abs(d).max())


def test_fold_kernel_takes_the_feature_steps_output(digits):
    x, y = digits
    feats = FunctionTransformer(lambda a: np.sqrt(a / 255.0))
    model = make_pipeline(feats, PCA(10, random_state=0), _nys(gamma=0.5), _sgd()).fit(x[:260], y[:260])
    pred = FO.fold_kernel(model)
    # the predictor takes the feature step's output; the pipeline the raw pixels
    _check(pred, model, np.sqrt(x[260:] / 255.0), x[260:])


def test_fold_kernel_binary(digits):
    x, y = digits
    target = y == 7
    model = make_pipeline(StandardScaler(), PCA(10, random_state=0), _nys(gamma=0.05),
                          _logreg()).fit(x[:260], target[:260])
    pred = FO.fold_kernel(model)
    assert pred.weights.shape == (40, 1) and pred.decision_function(x[260:]).shape == (137,)
    assert pred.classes.tolist() == [False, True]
    _check(pred, model, x[260:], x[260:])


def test_the_kernel_is_the_rbf_against_the_landmarks(digits):
    x, y = digits
    model = make_pipeline(StandardScaler(), PCA(10, random_state=0), _nys(gamma=0.05),
                          _sgd()).fit(x[:260], y[:260])
    pred = FO.fold_kernel(model)
    scaler, pca, nys = model[0], model[1], model[2]
    z = pca.transform(scaler.transform(x[260:]))
    k = pred.kernel(x[260:])
    np.testing.assert_allclose(k, rbf_kernel(z, nys.components_, gamma=0.05), rtol=1e-9, atol=1e-12)
    # Nystroem's features are the kernel times its normalisation
    np.testing.assert_allclose(k @ nys.normalization_.T, nys.transform(z), rtol=1e-7, atol=1e-9)
    # at a landmark itself the squared distance rounds to about 0, either side
    # of it: the kernel is never above 1
    wide = x * 3.3 + np.random.default_rng(0).normal(0, 0.01, x.shape)
    plain = make_pipeline(Nystroem(gamma=1.0, n_components=40, random_state=0),
                          _sgd()).fit(wide[:260], y[:260])
    near = FO.fold_kernel(plain).kernel(plain[0].components_)
    assert near.max() <= 1.0
    np.testing.assert_allclose(np.diag(near), 1.0, rtol=0, atol=1e-6)


# --- refusals -------------------------------------------------------------------


def test_fold_linear_refuses_what_it_cannot_fold(digits):
    x, y = digits
    with pytest.raises(ValueError, match="last step must be a fitted linear classifier"):
        FO.fold_linear(_sgd())  # not fitted
    with pytest.raises(ValueError, match="last step must be a fitted linear classifier"):
        FO.fold_linear(make_pipeline(StandardScaler()).fit(x))
    minmax = make_pipeline(MinMaxScaler(), _sgd()).fit(x[:100], y[:100])
    with pytest.raises(ValueError, match="cannot fold MinMaxScaler before the classifier"):
        FO.fold_linear(minmax)


def test_fold_kernel_refuses_what_it_cannot_fold(digits):
    x, y = digits
    x, y = x[:100], y[:100]
    with pytest.raises(ValueError, match="exactly one Nystroem step"):
        FO.fold_kernel(make_pipeline(StandardScaler(), _sgd()).fit(x, y))
    with pytest.raises(ValueError, match="exactly one Nystroem step"):
        FO.fold_kernel(make_pipeline(_nys(), _nys(), _sgd()).fit(x, y))
    with pytest.raises(ValueError, match="cannot fold MinMaxScaler after the kernel step"):
        FO.fold_kernel(make_pipeline(_nys(), MinMaxScaler(), _sgd()).fit(x, y))
    with pytest.raises(ValueError, match="cannot fold PCA before the kernel step"):
        FO.fold_kernel(make_pipeline(PCA(5), StandardScaler(), _nys(), _sgd()).fit(x, y))
    with pytest.raises(ValueError, match="cannot fold MinMaxScaler before the kernel step"):
        FO.fold_kernel(make_pipeline(MinMaxScaler(), _nys(), _sgd()).fit(x, y))
    with pytest.raises(ValueError, match="last step must be a fitted linear classifier"):
        FO.fold_kernel(make_pipeline(_nys(), StandardScaler()).fit(x, y))


# --- KernelScorer: the float32 scoring form -------------------------------------


def _scorer_check(scorer, pred, parts_chunks, x64, row_scales=lambda s: ()):
    """The scorer's decision values, a chunk at a time, against the float64 predictor's."""
    d = pred.decision_function(x64)
    d = d[:, None] if d.ndim == 1 else d
    got = np.concatenate([scorer.decision_function(*p, row_scales=row_scales(s))
                          for s, p in parts_chunks])
    assert got.dtype == np.float32 and got.shape == d.shape
    # float32 rounding only: a wrong constant (gamma, offset, a factor, a
    # column) moves decision values by far more than this
    err = np.abs(got - d).max()
    assert err <= 2e-5 * max(1.0, np.abs(d).max()), err
    return got, d


@pytest.mark.parametrize("name", list(KERNEL))
def test_kernel_scorer_equals_the_float64_predictor(digits, name):
    x, y = digits
    model = KERNEL[name]().fit(x[:260], y[:260])
    pred = FO.fold_kernel(model)
    scorer = FO.kernel_scorer(pred)
    assert (scorer.blocks == ()) == (name == "nystroem")
    x32 = x[260:].astype(np.float32)  # 137 rows, in uneven chunks
    got, d = _scorer_check(scorer, pred, [(s, (x32[s],)) for s in _chunks(137)], x[260:])
    assert (np.argmax(got, axis=1) == np.argmax(d, axis=1)).mean() > 0.95
    empty = scorer.decision_function(np.zeros((0, x.shape[1]), np.float32))
    assert empty.shape == (0, 10) and empty.dtype == np.float32


def test_kernel_scorer_blocks_with_factors_row_scales_and_padding(digits):
    """Features ``[x / 255, 3 * r / |r|]`` (r = sqrt(x), a blank row among them),
    fed as the raw x with a padding column after every 14 and the unnormalised
    r with a per-row scale: the scorer folds the factors and skips the padding."""
    x, y = digits
    x = x.copy()
    x[265] = 0.0  # a blank image: r = 0, norm floored
    r = np.sqrt(x)
    norm = np.maximum(np.linalg.norm(r, axis=1), 1e-6)
    feats = np.hstack([x / 255.0, 3.0 * r / norm[:, None]])
    model = make_pipeline(PCA(12, random_state=0), _nys(gamma=0.05), _sgd()).fit(feats[:260], y[:260])
    pred = FO.fold_kernel(model)
    wide = np.zeros((len(x), 14, 15), np.float32)  # 14 columns and one of padding (-1), per row
    wide[:, :, :14] = x.reshape(-1, 14, 14)
    wide[:, :, 14] = 7.0  # whatever the padding holds is ignored
    cols = np.hstack([np.arange(196).reshape(14, 14), np.full((14, 1), -1)]).ravel()
    scorer = FO.kernel_scorer(pred, (cols, np.arange(196, 392)), (1 / 255.0, 3.0))
    wide = wide.reshape(len(x), -1)[260:]
    r32, inv = r[260:].astype(np.float32), (1.0 / norm[260:]).astype(np.float32)
    chunks = [(s, (wide[s], r32[s])) for s in _chunks(137)]
    _scorer_check(scorer, pred, chunks, feats[260:], row_scales=lambda s: (None, inv[s]))


def test_kernel_scorer_binary(digits):
    x, y = digits
    model = make_pipeline(StandardScaler(), PCA(10, random_state=0), _nys(gamma=0.05),
                          _logreg()).fit(x[:260], y[:260] == 7)
    pred = FO.fold_kernel(model)
    scorer = FO.kernel_scorer(pred)
    x32 = x[260:].astype(np.float32)
    got, d = _scorer_check(scorer, pred, [(s, (x32[s],)) for s in _chunks(137)], x[260:])
    assert got.shape == (137, 1)
    np.testing.assert_array_equal(got[:, 0] > 0, d[:, 0] > 0)


def test_kernel_scorer_refuses_blocks_that_do_not_fit(digits):
    x, y = digits
    plain = FO.fold_kernel(make_pipeline(_nys(), _sgd()).fit(x[:100], y[:100]))
    with pytest.raises(ValueError, match="without projection"):
        FO.kernel_scorer(plain, (np.arange(196),), (0.5,))
    pca = FO.fold_kernel(make_pipeline(PCA(5), _nys(), _sgd()).fit(x[:100], y[:100]))
    with pytest.raises(ValueError, match="196 inputs"):
        FO.kernel_scorer(pca, (np.arange(197),))
    with pytest.raises(ValueError, match="196 inputs"):
        FO.kernel_scorer(pca, (np.arange(100), np.arange(100, 196)), (1.0,))


def test_kernel_scorer_refuses_parts_that_do_not_fit(digits):
    x, y = digits
    pred = FO.fold_kernel(make_pipeline(PCA(5), _nys(), _sgd()).fit(x[:100], y[:100]))
    scorer = FO.kernel_scorer(pred, (np.arange(100), np.arange(100, 196)))
    a, b = x[:5, :100].astype(np.float32), x[:5, 100:].astype(np.float32)
    assert scorer.decision_function(a, b).shape == (5, 10)
    for bad in [(a,), (a, b, b), (b, a), (a, b[:4]), (a[0], b)]:
        with pytest.raises(ValueError, match=r"2 block\(s\) of \(100, 96\) columns"):
            scorer.decision_function(*bad)
