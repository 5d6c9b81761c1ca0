"""Calibration, margins and the honest headline end to end on the embedded sample
(demo-sized: 4,000 train rows, 1,000 test rows), and on full MNIST where present.

Bounds on the sample: its test split has 1,000 rows in 15 bins, and the
model's temperature is fitted on ~330 held-out rows; the sampling error of an
ECE on 1,000 rows alone is about 1-2 points, and a temperature fitted on 320
rows is itself uncertain. The sample-sized bound is 5 points (measured: 3.3 on
the test rows for sgd after calibration, against 9.3 uncalibrated on the
held-out rows), so an uncalibrated or broken calibration still fails it. On full MNIST the
issue's bound holds: 2 points.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from digitbatch import calibration as CAL
from digitbatch.ingestion import ingest
from digitbatch.layout import open_store
from digitbatch.modelio import load_model
from digitbatch.predict import describe, predict_files
from digitbatch.report import write_report
from digitbatch import score
from digitbatch.scoring.output import open_predictions
from digitbatch.summaries import score_lines
from digitbatch.training import train

from .test_ingest import png_bytes

SAMPLE_ECE_BOUND = 0.05
MNIST_ECE_BOUND = 0.02


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo's steps: ingest the sample, train sgd, score the training store."""
    tmp = tmp_path_factory.mktemp("calsample")
    ingest("sample", tmp / "s.zarr", scheduler="synchronous")
    tr = train(tmp / "s.zarr", tmp / "m")
    sc = score(tmp / "s.zarr", model=tmp / "m", out=tmp / "p.zarr", scheduler="synchronous",
               proba=True)
    return {"tmp": tmp, "train": tr, "score": sc}


def test_sample_model_is_calibrated(demo):
    t = demo["train"].test
    assert t["ece"] <= SAMPLE_ECE_BOUND, f"test ECE {t['ece']:.4f} on the sample"
    man = json.loads((demo["tmp"] / "m" / "manifest.json").read_text())
    c = man["calibration"]
    assert c["calibrated"]["brier"] < c["uncalibrated"]["brier"]
    assert c["uncalibrated"]["ece"] > SAMPLE_ECE_BOUND  # the bound is not met without it


def test_metrics_calibration_block_is_that_of_the_unseen_rows(demo):
    m = demo["score"].metrics
    p = open_predictions(demo["score"].out)
    labels = open_store(demo["tmp"] / "s.zarr").labels[:].astype(int)
    proba = p.proba[:]
    test = slice(4000, 5000)  # the sample's test split: the rows the model never saw
    conf, pred = proba[test].max(axis=1), p.pred[test]
    counts = CAL.reliability_counts(conf, pred == labels[test])
    block = m["calibration"]
    assert block["count"] == counts["count"].tolist() and block["n_rows"] == 1000
    assert block["n_correct"] == counts["n_correct"].tolist()
    assert block["ece"] == pytest.approx(CAL.ece(counts), abs=1e-5)  # float32 proba
    assert block["ece"] == pytest.approx(demo["train"].test["ece"], abs=1e-4)


def test_headline_accuracy_of_the_training_store_is_the_unseen_rows(demo):
    """The demo's headline is the test accuracy (~0.88), not that of every row (~0.93)."""
    m = demo["score"].metrics
    test_acc = demo["train"].test["accuracy"]
    h = m["headline"]
    assert h["accuracy"] == test_acc and 0.85 < test_acc < 0.91
    assert h["n_labeled"] == 1000 and h["of"].startswith("unseen rows")
    t = m["training_rows"]
    labels = open_store(demo["tmp"] / "s.zarr").labels[:]
    pred = open_predictions(demo["score"].out).pred[:]
    assert t["rows"] == [0, 4000] and t["n_labeled"] == 4000
    assert t["accuracy"] == pytest.approx(float((pred[:4000] == labels[:4000]).mean()))
    # accuracy and the matrix still count every labelled row (their meaning is unchanged)
    assert m["accuracy"] == pytest.approx(float((pred == labels).mean())) and m["accuracy"] > test_acc
    assert m["n_labeled"] == 5000
    line = score_lines(m)[-1]
    assert f"accuracy {test_acc:.4f} on 1000 unseen labelled" in line
    assert "4000 training rows, not counted" in line


def test_report_headline_reliability_and_no_saturation_ties(demo):
    rep = write_report(demo["score"].out, out=demo["tmp"] / "rep", top_k=400)
    html = open(rep.html).read()
    test_acc = demo["train"].test["accuracy"]
    assert f"accuracy <b>{test_acc:.4f}</b> on 1,000 labelled" in html
    assert "the model's own training store" in html and "4,000 training rows" in html
    assert "Calibration" in html and "reliability diagram" in html
    assert "reliability" in rep.files
    assert "more rows tie" not in html  # the doubtful ranking has no saturation ties
    # the mistakes shown are unseen rows only
    h = rep.metrics["headline"]
    assert rep.n_wrong == h["n_labeled"] - h["n_correct"]


def test_rows_tie_only_where_their_decision_values_tie(demo):
    """Every row of the sample ranks: equal (margin, gap) only for equal decision values."""
    p = open_predictions(demo["score"].out)
    margin, gap = p.margin[:], p.extra("gap")[:]
    assert np.isfinite(gap).all() and (gap >= 0).all()
    second = p.extra("second")[:]
    assert (second != p.pred[:]).all() and (second >= 0).all()
    order = np.lexsort((gap, margin))
    same = (np.diff(margin[order]) == 0) & (np.diff(gap[order]) == 0)
    model = load_model(demo["tmp"] / "m").model
    images = open_store(demo["tmp"] / "s.zarr").images
    for j in np.flatnonzero(same):
        a, b = sorted(order[j:j + 2])
        d = model.decision_function(images[[a, b]])
        top = np.sort(d, axis=1)[:, -2:]
        assert top[0, 1] - top[0, 0] == pytest.approx(top[1, 1] - top[1, 0], rel=1e-6), (a, b)
    # and the margins themselves hardly saturate: under 1% of rows share a margin
    assert np.unique(margin).size > 0.99 * margin.size


def test_predict_prints_calibrated_probabilities(demo, tmp_path):
    s = open_store(demo["tmp"] / "s.zarr")
    files = []
    for i in range(4000, 4040):
        f = tmp_path / f"d{i}.png"
        f.write_bytes(png_bytes(s.images[i]))
        files.append(f)
    got = predict_files(files, model=demo["tmp"] / "m")
    model = load_model(demo["tmp"] / "m").model
    want = model.predict_proba(s.images[4000:4040]).max(axis=1)
    np.testing.assert_allclose([g.probability for g in got], want, rtol=1e-5)
    lines = [describe(g) for g in got]
    assert sum("(probability 1.000)" in ln for ln in lines) < 30  # not "1.000" for nearly all


# --- sample-sized sgd-kernel, and full MNIST ------------------------------------------


@pytest.mark.long
@pytest.mark.timeout(1800)
def test_sample_kernel_model_is_calibrated(demo, tmp_path):
    r = train(demo["tmp"] / "s.zarr", tmp_path / "k", model="sgd-kernel")
    assert r.test["ece"] <= SAMPLE_ECE_BOUND


@pytest.mark.mnist  # (in make test: issue 15's acceptance; about a minute for sgd-kernel)
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("name", ["sgd", "sgd-kernel"])
def test_mnist_ece_within_two_points(mnist_path, tmp_path, name):
    ingest(mnist_path, tmp_path / "m.zarr", scheduler="synchronous")
    r = train(tmp_path / "m.zarr", tmp_path / "model", model=name, seed=42,
              scheduler="synchronous")
    assert r.test["n_labeled"] == 10_000
    assert r.test["ece"] <= MNIST_ECE_BOUND, f"{name}: test ECE {r.test['ece']:.4f}"
