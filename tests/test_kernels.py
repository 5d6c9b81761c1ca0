"""Per-chunk numpy kernels against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import SGDClassifier
from sklearn.metrics import confusion_matrix

from digitbatch import kernels
from digitbatch.layout import UNKNOWN_LABEL

from .conftest import synthetic_digits


@pytest.fixture(scope="module")
def fitted():
    x, y = synthetic_digits(600, seed=1)
    clf = SGDClassifier(loss="log_loss", random_state=0, max_iter=5, tol=None).fit(
        x.reshape(600, -1).astype(np.float64), y)
    return x, y, clf


def test_linear_predict_equals_sklearn(fitted):
    x, y, clf = fitted
    got = kernels.linear_predict(x, clf.coef_, clf.intercept_, clf.classes_)
    np.testing.assert_array_equal(got, clf.predict(x.reshape(len(x), -1).astype(np.float64)))


def test_ties_resolved_in_float64():
    # two classes whose float32 scores tie but float64 scores differ
    coef = np.zeros((2, 784))
    coef[0, 0] = 1.0
    coef[1, 0] = 1.0 + 1e-9
    x = np.zeros((1, 28, 28), np.uint8)
    x[0, 0, 0] = 200
    got = kernels.linear_predict(x, coef, np.zeros(2), np.array([0, 1]))
    assert got.tolist() == [1]


def test_empty_chunk(fitted):
    _, _, clf = fitted
    got = kernels.linear_predict(np.zeros((0, 28, 28), np.uint8), clf.coef_, clf.intercept_,
                                 clf.classes_)
    assert got.shape == (0,)


def test_confusion_counts_skip_unknown():
    y = np.array([0, 1, 2, UNKNOWN_LABEL, 9], np.int8)
    p = np.array([0, 2, 2, 5, 9], np.int8)
    cm = kernels.confusion_counts(y, p)
    known = y != UNKNOWN_LABEL
    np.testing.assert_array_equal(cm, confusion_matrix(y[known], p[known], labels=range(10)))
    assert kernels.prediction_histogram(p).tolist() == [1, 0, 2, 0, 0, 1, 0, 0, 0, 1]


@pytest.mark.parametrize("k", [1, 2, 10])
def test_ovr_margin_is_the_top2_margin_of_the_probabilities(k):
    from digitbatch.kernels import ovr_margin, ovr_proba, top2_margin

    rng = np.random.default_rng(k)
    d = (rng.normal(size=(3001, k)) * 12).astype(np.float32)
    d[:5] = 0.0  # ties
    want = top2_margin(ovr_proba(d.astype(np.float64)))
    got = ovr_margin(d)
    assert got.dtype == np.float32 and got.shape == (3001,)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)
    assert ovr_margin(d[:0]).shape == (0,)


@pytest.mark.parametrize("n", [1, 511, 512, 2 * 512 + 37])
def test_blocked_decision_equals_float64(n, monkeypatch):
    # uneven row counts around the block size: the last block is a partial one
    monkeypatch.setattr(kernels, "BLOCK_ROWS", 512)
    rng = np.random.default_rng(n)
    x = rng.integers(0, 256, (n, 784)).astype(np.uint8)
    w = rng.normal(size=(784, 10))
    b = rng.normal(size=10)
    d = kernels.linear_decision(x, w, b)
    assert d.dtype == np.float32 and d.shape == (n, 10)
    want = x.astype(np.float64) @ w + b
    np.testing.assert_allclose(d, want, rtol=1e-4, atol=1e-2)
    _, idx = kernels.linear_scores(x, w, b)
    np.testing.assert_array_equal(idx, np.argmax(want, axis=1))


@pytest.mark.parametrize("k", [2, 3, 10])
def test_top2_matches_argmax_and_sort_with_ties(k):
    rng = np.random.default_rng(k)
    v = rng.integers(-3, 4, size=(4099, k)).astype(np.float32)  # many ties
    v[0] = 5.0  # every column ties: argmax takes the first
    v[1, -1] = 9.0  # the last column wins
    t = kernels.Top2.of(v)
    np.testing.assert_array_equal(t.index, np.argmax(v, axis=1))
    srt = np.sort(v, axis=1)
    np.testing.assert_array_equal(t.first, srt[:, -1])
    np.testing.assert_array_equal(t.second, srt[:, -2])
    np.testing.assert_array_equal(t.columns, v.T)
    assert t.index[0] == 0 and t.index[1] == k - 1
