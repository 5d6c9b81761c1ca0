"""Calibrated probabilities (digitbatch.calibration) and what scoring and the report
make of them: the temperature fit, scores without cancellation, the reliability
counts and their reduction, a model's calibration saved and checked, the ECE of
trained catalogue models, margins that rank every row, and the headline accuracy
of a model's own training store."""

from __future__ import annotations

import json

import numpy as np
import pytest

from digitbatch import calibration as CAL
from digitbatch import folding as FO
from digitbatch.errors import ModelError
from digitbatch.modelio import load_model, save_model
from digitbatch.models import CompactModel

from .conftest import synthetic_digits


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


# --- the fit and the scores -------------------------------------------------------------


@pytest.mark.parametrize("k, t0", [(10, 3.0), (10, 0.4), (1, 2.5)])
def test_fit_recovers_the_temperature_of_calibrated_data(k, t0):
    """Labels drawn from softmax(d / t0) (sigmoid for one column): the fitted T is t0."""
    rng = np.random.default_rng(0)
    d = rng.normal(scale=4.0, size=(20_000, k))
    if k == 1:
        y = (rng.random(d.shape[0]) < 1 / (1 + np.exp(-d[:, 0] / t0))).astype(int)
    else:
        p = _softmax(d / t0)
        y = (p.cumsum(axis=1) > rng.random((d.shape[0], 1))).argmax(axis=1)
    t = CAL.fit_temperature(d, y)
    assert t == pytest.approx(t0, rel=0.08)
    c = CAL.fit(d, y)
    assert c["calibrated"]["ece"] < 0.02 and c["calibrated"]["brier"] <= c["uncalibrated"]["brier"]


def test_scores_equal_the_softmax_and_keep_the_prediction():
    rng = np.random.default_rng(1)
    d = rng.normal(scale=3.0, size=(500, 10)).astype(np.float32)
    idx = np.argmax(d, axis=1)
    s = CAL.scores(d, idx, 1.7, proba=True)
    p = _softmax(d.astype(np.float64) / 1.7)
    np.testing.assert_allclose(s.proba, p, rtol=1e-12, atol=1e-15)
    assert (np.argmax(s.proba, axis=1) == idx).all()
    top2 = np.sort(p, axis=1)[:, -2:]
    np.testing.assert_allclose(s.margin, (top2[:, 1] - top2[:, 0]).astype(np.float32), rtol=1e-6)
    np.testing.assert_allclose(s.confidence, top2[:, 1], rtol=1e-12)
    masked = np.where(np.arange(10) == idx[:, None], -np.inf, d)
    assert (s.second == np.argmax(masked, axis=1)).all()
    np.testing.assert_allclose(s.gap, (d.max(1) - masked.max(1)) / 1.7, rtol=1e-6)


def test_binary_scores_and_no_cancellation():
    d = np.array([[-40.0], [-3.0], [0.0], [1e-6], [2.0], [40.0]])
    idx = (d[:, 0] > 0).astype(int)
    s = CAL.scores(d, idx, 2.0, proba=True)
    p1 = 1 / (1 + np.exp(-d[:, 0] / 2.0))
    np.testing.assert_allclose(s.proba[:, 1], p1, rtol=1e-12)
    np.testing.assert_allclose(s.confidence, np.maximum(p1, 1 - p1), rtol=1e-12)
    np.testing.assert_allclose(s.margin, np.tanh(np.abs(d[:, 0]) / 4.0).astype(np.float32))
    assert s.margin[3] > 0  # 1e-6 apart: no cancellation to 0
    assert (s.second == 1 - idx).all() and s.gap[0] == s.gap[-1] == 20.0


def test_margins_of_far_apart_scores_do_not_cancel():
    """Top-2 gaps of 1e-12 to 30: every margin positive and ordered as the gaps."""
    gaps = np.array([1e-12, 1e-9, 1e-6, 1e-3, 1.0, 10.0, 30.0])
    d = np.zeros((gaps.size, 10))
    d[:, 3] = gaps
    s = CAL.scores(d, np.full(gaps.size, 3), 1.0)
    assert (s.margin > 0).all() and (np.diff(s.margin) > 0).all()
    naive = _softmax(d)[:, 3] - _softmax(d)[:, 0]
    np.testing.assert_allclose(s.margin[2:], naive[2:], rtol=1e-5)


def test_heldout_mask_is_deterministic_and_independent_of_chunking():
    rows = np.arange(120_000)
    m = CAL.heldout_mask(rows, 42, 1 / 12)
    assert m.mean() == pytest.approx(1 / 12, abs=0.003)
    parts = np.concatenate([CAL.heldout_mask(rows[a:a + 7001], 42, 1 / 12)
                            for a in range(0, rows.size, 7001)])
    assert (parts == m).all()
    assert (CAL.heldout_mask(rows, 43, 1 / 12) != m).any()
    assert CAL.holdout_fraction(500) == 0.0  # too few for MIN_CALIBRATION_ROWS
    assert CAL.holdout_fraction(60_000) == pytest.approx(1 / 12)
    assert CAL.holdout_fraction(10_000_000) * 10_000_000 == pytest.approx(CAL.MAX_CALIBRATION_ROWS)


def test_reliability_counts_reduce_pairwise_to_the_whole():
    rng = np.random.default_rng(2)
    conf = rng.random(1003)
    correct = rng.random(1003) < conf
    whole = CAL.reliability_counts(conf, correct)
    cuts = [0, 100, 101, 500, 1003]  # uneven, one of a single row
    parts = [CAL.reliability_counts(conf[a:b], correct[a:b]) for a, b in zip(cuts, cuts[1:])]
    total = CAL.reduce_reliability(parts)
    assert (total["count"] == whole["count"]).all()
    assert (total["n_correct"] == whole["n_correct"]).all()
    np.testing.assert_allclose(total["confidence_sum"], whole["confidence_sum"])
    bins = np.minimum((conf * CAL.N_BINS).astype(int), CAL.N_BINS - 1)
    want = sum(abs(correct[bins == b].sum() - conf[bins == b].sum()) for b in range(CAL.N_BINS))
    assert CAL.ece(total) == pytest.approx(want / conf.size)
    block = CAL.reliability_block(total)
    assert block["n_rows"] == 1003 and len(block["bin_edges"]) == CAL.N_BINS + 1
    assert CAL.reduce_reliability([parts[0], None]) is None
    assert CAL.reliability_block(None) is None


# --- a model's calibration on disk ------------------------------------------------------


def _linear(calibration=None, loss="hinge"):
    rng = np.random.default_rng(3)
    head = FO.LinearPredictor(weights=rng.normal(scale=0.02, size=(784, 10)),
                              intercept=rng.normal(scale=0.5, size=10), classes=np.arange(10))
    return CompactModel(name="sgd", features="pixels", head=head, loss=loss,
                        calibration=calibration)


def test_calibration_saved_in_the_hashed_arrays_and_loaded(tmp_path):
    cal = {"method": "temperature", "temperature": 2.5, "n_rows": 100}
    save_model(_linear(cal), tmp_path / "m", manifest={})
    got = load_model(tmp_path / "m").model
    assert got.calibration["temperature"] == 2.5 and got.has_proba  # a hinge model too
    x, _ = synthetic_digits(50, seed=1)
    pred, margin, proba = got.score_chunk(x)
    d = got.decision_function(x)
    np.testing.assert_allclose(proba, _softmax(d / 2.5), rtol=2e-5, atol=1e-6)
    assert (pred == got.predict(x)).all()
    # the manifest's temperature must agree with the hashed array
    mp = tmp_path / "m" / "manifest.json"
    m = json.loads(mp.read_text())
    m["calibration"]["temperature"] = 0.01
    mp.write_text(json.dumps(m))
    with pytest.raises(ModelError, match="calibration is damaged"):
        load_model(tmp_path / "m")


def test_a_model_without_calibration_scores_as_before(tmp_path):
    save_model(_linear(loss="hinge"), tmp_path / "h", manifest={})
    m = load_model(tmp_path / "h").model
    assert m.calibration is None and not m.has_proba
    x, _ = synthetic_digits(40, seed=2)
    s = m.score_chunk_full(x)
    d = m.decision_function(x)
    top2 = np.sort(d, axis=1)[:, -2:]
    np.testing.assert_allclose(s.margin, top2[:, 1] - top2[:, 0], rtol=1e-4, atol=1e-4)
    assert s.proba is None and s.confidence is None
    np.testing.assert_allclose(s.gap, s.margin, rtol=1e-4, atol=1e-4)
    assert json.loads((tmp_path / "h" / "manifest.json").read_text())["calibration"] is None
