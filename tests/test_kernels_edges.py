"""kernels at their edges: empty and one-row chunks, one and two columns, saturated
sigmoids, against plain numpy / scikit-learn (mutation testing found these unpinned)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.linear_model import SGDClassifier

from digitbatch import kernels

from .conftest import synthetic_digits


def _no_warnings(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy overflow / 0-by-0 warnings are failures
        return fn(*args, **kw)


def test_expit_equals_the_logistic_function_and_saturates_quietly():
    x = np.array([-1000.0, -30.0, -1.5, 0.0, 0.25, 3.0, 1000.0])
    got = _no_warnings(kernels.expit, x)
    with np.errstate(over="ignore"):
        want = 1.0 / (1.0 + np.exp(-x))
    np.testing.assert_allclose(got, want, rtol=1e-15, atol=0)
    assert got[3] == 0.5 and got[0] == 0.0 and got[-1] == 1.0
    x32 = x.astype(np.float32)
    assert _no_warnings(kernels.expit, x32).dtype == np.float32
    assert x32[0] == -1000.0  # the input is not changed in place


@pytest.fixture(scope="module")
def log_loss_models():
    x, y = synthetic_digits(400, seed=8)
    X = x.reshape(400, -1).astype(np.float64) / 255
    multi = SGDClassifier(loss="log_loss", random_state=0, max_iter=5, tol=None).fit(X, y)
    binary = SGDClassifier(loss="log_loss", random_state=0, max_iter=5, tol=None).fit(X, y == 2)
    return X, multi, binary


def test_ovr_proba_equals_sklearn_predict_proba(log_loss_models):
    X, multi, binary = log_loss_models
    for clf in (multi, binary):
        np.testing.assert_allclose(kernels.ovr_proba(clf.decision_function(X)),
                                   clf.predict_proba(X), rtol=1e-12, atol=1e-15)
    d1 = binary.decision_function(X)
    np.testing.assert_array_equal(kernels.ovr_proba(d1[:, None]), kernels.ovr_proba(d1))


def test_ovr_proba_rows_whose_sigmoids_all_underflow_are_uniform():
    d = np.array([[-1000.0, -2000.0, -1500.0], [1.0, 0.0, -1.0]])
    p = _no_warnings(kernels.ovr_proba, d)
    np.testing.assert_array_equal(p[0], np.full(3, 1 / 3))
    assert p[1].sum() == pytest.approx(1.0) and np.argmax(p[1]) == 0


@pytest.mark.parametrize("k", [1, 2, 3, 10])
def test_ovr_margin_of_one_row_and_of_no_rows(k):
    rng = np.random.default_rng(k)
    d = rng.normal(size=(1, k)).astype(np.float32) * 4
    got = kernels.ovr_margin(d)
    want = kernels.top2_margin(kernels.ovr_proba(d.astype(np.float64)))
    assert got.shape == (1,) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6)
    empty = kernels.ovr_margin(d[:0])
    assert empty.shape == (0,) and empty.dtype == np.float32


def test_ovr_margin_rows_whose_sigmoids_all_underflow_are_zero():
    d = np.array([[-1000.0, -2000.0, -1500.0]], np.float32)
    got = _no_warnings(kernels.ovr_margin, d)
    assert got.tolist() == [0.0] and got.dtype == np.float32


def test_ovr_margin_uses_the_given_top2():
    d = np.array([[3.0, 1.0, -2.0]], np.float32)
    assert kernels.ovr_margin(d, kernels.Top2.of(d)) == kernels.ovr_margin(d)


@pytest.mark.parametrize("shape", [(5,), (5, 1)])  # one decision column, flat or not
def test_top2_margin_of_one_column_is_its_absolute_value(shape):
    v = np.array([-3.0, -0.5, 0.0, 2.0, 7.0]).reshape(shape)
    got = kernels.top2_margin(v)
    assert got.shape == (5,)
    np.testing.assert_array_equal(got, [3.0, 0.5, 0.0, 2.0, 7.0])


@pytest.mark.parametrize("k", [2, 3, 10])
def test_top2_margin_is_first_minus_second(k):
    rng = np.random.default_rng(k)
    v = rng.normal(size=(7, k)).astype(np.float32)
    srt = np.sort(v, axis=1)
    np.testing.assert_array_equal(kernels.top2_margin(v), srt[:, -1] - srt[:, -2])
    one = kernels.top2_margin(v[:1])
    assert one.shape == (1,) and one[0] == srt[0, -1] - srt[0, -2]
    empty = kernels.top2_margin(v[:0])
    assert empty.shape == (0,) and empty.dtype == np.float32


def test_top2_margin_three_columns_is_not_the_first_two():
    v = np.array([[0.1, 0.2, 0.7]])  # |p1 - p0| = 0.1, top-1 minus top-2 = 0.5
    assert kernels.top2_margin(v)[0] == pytest.approx(0.5)


def test_prediction_histogram_has_every_class():
    assert kernels.prediction_histogram(np.array([0, 0, 1], np.int8)).tolist() == \
        [2, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    assert kernels.prediction_histogram(np.array([1, 1], np.int8), 2).tolist() == [0, 2]
    assert kernels.prediction_histogram(np.zeros(0, np.int8)).tolist() == [0] * 10


def test_binary_linear_scores_equal_float64_signs():
    rng = np.random.default_rng(5)
    X = rng.integers(0, 256, (300, 784)).astype(np.uint8)
    w = rng.normal(size=(784, 1)) * 1e-3
    b = np.array([-np.median(X @ w)])  # about half the rows on each side
    d, idx = kernels.linear_scores(X, w, b)
    want = (X.astype(np.float64) @ w + b)[:, 0] > 0
    assert d.shape == (300, 1) and d.dtype == np.float32
    np.testing.assert_array_equal(idx, want.astype(np.intp))
    assert 50 < idx.sum() < 250
    # a decision value of exactly 0 (and 0.5) is the negative (positive) class, as sklearn's
    z = np.zeros((2, 784), np.uint8)
    z[1, 0] = 1
    _, idx = kernels.linear_scores(z, np.r_[[[0.5]], np.zeros((783, 1))], np.zeros(1))
    assert idx.tolist() == [0, 1]


def test_binary_ties_are_resolved_in_float64():
    x = np.zeros((2, 784), np.uint8)
    x[:, 0] = 200
    w = np.zeros((784, 1))
    w[0, 0] = 1e-12  # float32 decision 200e-12 + b rounds to b's float32
    b = np.array([-200e-12 + 1e-13, -200e-12 - 1e-13])
    for bi, want in zip(b, [1, 0]):
        _, idx = kernels.linear_scores(x[:1], w, np.array([bi]))
        assert idx.tolist() == [want]


def test_linear_scores_with_top2():
    rng = np.random.default_rng(6)
    X = rng.integers(0, 256, (20, 784)).astype(np.uint8)
    w = rng.normal(size=(784, 10))
    d, idx, top = kernels.linear_scores(X, w, np.zeros(10), with_top2=True)
    np.testing.assert_array_equal(top.first, d.max(axis=1))
    assert len(kernels.linear_scores(X, w, np.zeros(10))) == 2
    out = kernels.linear_scores(X, w[:, :1], np.zeros(1), with_top2=True)
    assert len(out) == 3 and out[2] is None  # one column: no top-2
    assert len(kernels.linear_scores(X, w[:, :1], np.zeros(1))) == 2
    empty = kernels.linear_scores(X[:0], w, np.zeros(10), with_top2=True)
    assert len(empty) == 3 and empty[2] is None and empty[1].shape == (0,)
    assert len(kernels.linear_scores(X[:0], w, np.zeros(10))) == 2


def test_close_rows_are_judged_relative_to_their_size():
    """Decision values near 1e4 whose float32 rounding (~1e-3) exceeds their float64
    gap: the tie margin grows with the values, so every row is recomputed in float64."""
    rng = np.random.default_rng(7)
    X = rng.integers(0, 256, (400, 784)).astype(np.uint8)
    w0 = rng.normal(size=784) * 10
    w = np.column_stack([w0, w0 + rng.normal(size=784) * 1e-5])
    b = np.array([1e4, 1e4])
    _, idx = kernels.linear_scores(X, w, b)
    want = np.argmax(X.astype(np.float64) @ w + b, axis=1)
    np.testing.assert_array_equal(idx, want)
    # (the float32 product alone gets some of these rows wrong)
    d32 = kernels.linear_decision(X, w, b)
    assert (np.argmax(d32, axis=1) != want).any()


def test_binary_rows_near_zero_get_their_sign_from_float64():
    """Decision values ~700 cancelled by the intercept to within 1e-5: float32 rounding
    (~1e-4) picks the wrong sign for some rows; those are within the tie margin and
    recomputed in float64."""
    rng = np.random.default_rng(9)
    X = rng.integers(0, 256, (200, 784)).astype(np.uint8)
    w = rng.normal(size=(784, 1)) * 0.1
    exact = (X.astype(np.float64) @ w)[:, 0]
    wrong32 = 0
    for i in range(200):
        delta = 1e-5 if i % 2 else -1e-5
        b = np.array([-exact[i] + delta])
        d, idx = kernels.linear_scores(X[i:i + 1], w, b)
        assert idx.tolist() == [int(delta > 0)], i
        wrong32 += int((d[0, 0] > 0) != (delta > 0))
    assert wrong32 > 0  # (float32 alone gets some signs wrong)
