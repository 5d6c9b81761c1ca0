"""Tests of digitbatch.summaries: the lines printed after ingest, train, score and job steps."""

from __future__ import annotations

import re

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix

from digitbatch import jobs
from digitbatch.ingestion import ingest
from digitbatch.layout import open_store
from digitbatch.metrics import format_confusion
from digitbatch.scoring.api import score
from digitbatch.scoring.output import open_predictions
from digitbatch.summaries import (
    STEP_LINES,
    ingest_lines,
    score_lines,
    step_lines,
    train_lines,
)
from digitbatch.training import train

from .conftest import noisy_labels, synthetic_digits, write_idx

N, N_TEST, CHUNK = 700, 180, 256  # chunks of 256, 256 and 188


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Real results of ingest, train and score on 700 synthetic digits, a fifth of
    the labels wrong (so the confusion matrix is not diagonal)."""
    tmp = tmp_path_factory.mktemp("summaries")
    x, y = synthetic_digits(N, seed=4)
    y = noisy_labels(y, noise=0.2, seed=4)
    write_idx(tmp / "idx", x[:N - N_TEST], y[:N - N_TEST])
    write_idx(tmp / "idx", x[N - N_TEST:], y[N - N_TEST:], prefix="t10k")
    ing = ingest(tmp / "idx", tmp / "s.zarr", chunk_size=CHUNK, scheduler="synchronous")
    tr = train(tmp / "s.zarr", tmp / "model", seed=0)
    sc = score(tmp / "s.zarr", model=tmp / "model", out=tmp / "p.zarr", scheduler="synchronous")
    return {"tmp": tmp, "labels": y, "ingest": ing, "train": tr, "score": sc}


# --- from real results ---------------------------------------------------------------


def test_ingest_lines_of_a_real_ingest(run):
    r = run["ingest"].to_dict()
    lines = ingest_lines(r)
    assert len(lines) == 2
    m = re.fullmatch(r"ingested 700 images \(700 labelled, 0 rejected\) into (.+) in "
                     r"(\d+\.\d\d) s \(([\d,]+) images/s\)", lines[0])
    assert m, lines[0]
    assert m.group(1) == str(run["tmp"] / "s.zarr")
    assert float(m.group(2)) == pytest.approx(r["seconds"], abs=0.005)
    assert int(m.group(3).replace(",", "")) == pytest.approx(r["images_per_second"], abs=0.5)
    counts = np.bincount(run["labels"], minlength=10)
    assert lines[1] == "label counts: " + " ".join(str(c) for c in counts)


def test_train_lines_of_a_real_training(run):
    r = run["train"].to_dict()
    (line,) = train_lines(r)
    assert line.startswith(f"trained sgd (pixels features) on {N - N_TEST} images in ")
    assert f" -> {run['tmp'] / 'model'}; " in line
    acc = r["test"]["accuracy"]
    assert 0.5 < acc < 1.0  # the wrong labels show
    assert line.endswith(f"; test accuracy {acc:.4f} on {N_TEST} images")


def test_score_lines_of_a_real_scoring_equal_scikit_learns_confusion(run):
    m = run["score"].metrics
    lines = score_lines(m)
    pred = open_predictions(run["score"].out).pred[:]
    truth = open_store(run["tmp"] / "s.zarr").labels[:]
    np.testing.assert_array_equal(truth, run["labels"])
    cm = confusion_matrix(truth, pred, labels=list(range(10)))
    assert lines[:-2] == format_confusion(cm).splitlines()
    # the input is the model's training store: the headline counts the unseen (test) rows
    test = slice(N - N_TEST, N)
    assert len(lines) == 14  # header, ten classes, totals, drift, the headline
    assert lines[-2].startswith("drift: ")
    assert lines[-1].startswith(f"scored {N} images in ")
    assert re.search(r" in \d+\.\d\d s \([\d,]+ images/s\); ", lines[-1])
    seen = slice(0, N - N_TEST)
    assert lines[-1].endswith(
        f"; accuracy {accuracy_score(truth[test], pred[test]):.4f} on {N_TEST} unseen labelled "
        f"(the model's {N - N_TEST} training rows, not counted: "
        f"{accuracy_score(truth[seen], pred[seen]):.4f})")


def test_job_steps_print_their_lines(run, tmp_path, monkeypatch):
    """A job's step results hold fewer keys than the commands' results: each step
    still prints its headline."""
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "job.toml"
    spec.write_text(f'[ingest]\nsource = "{run["tmp"] / "idx"}"\nchunk_size = {CHUNK}\n'
                    f'[train]\ncv = 2\n[score]\n')
    summary = jobs.run_job(jobs.load_job(spec), scheduler="synchronous")
    steps = {s["name"]: s.get("result") for s in summary["steps"]}
    assert list(steps) == ["ingest", "train", "score"]
    ing = step_lines("ingest", steps["ingest"])
    assert ing == ["ingested 700 images (700 labelled, 0 rejected)"]
    tr = step_lines("train", steps["train"])
    assert len(tr) == 2 and tr[0].startswith("2-fold CV accuracy on the cluster: ")
    assert tr[0].endswith(f"+- {steps['train']['cv']['std']:.4f}")  # no fit times in a job's result
    assert tr[1] == (f"trained sgd (pixels features) on {N - N_TEST} images; "
                     f"test accuracy {steps['train']['test_accuracy']:.4f}")
    sc = step_lines("score", steps["score"])
    assert len(sc) == 14
    assert sc[-1].startswith(f"scored {N} images; accuracy "
                             f"{steps['score']['headline']['accuracy']:.4f} on "
                             f"{N_TEST} unseen labelled (the model's {N - N_TEST} training rows")
    assert sc[:-1] == score_lines(run["score"].metrics)[:-1]  # the same model, the same matrix


# --- every branch, from hand-made results ------------------------------------------


def test_ingest_lines_skip_what_the_result_does_not_hold():
    base = {"n_images": 12345, "n_labeled": 0, "n_rejects": 3}
    assert ingest_lines(base) == ["ingested 12345 images (0 labelled, 3 rejected)"]
    # where without how long: still only the counts
    assert ingest_lines({**base, "path": "/s.zarr"}) == ingest_lines(base)
    full = {**base, "path": "/data/s.zarr", "seconds": 2.0, "images_per_second": 6172.5,
            "rejects_by_reason": {"too-large": 1, "decode-error": 2}, "label_counts": None}
    assert ingest_lines(full) == [
        "ingested 12345 images (0 labelled, 3 rejected) into /data/s.zarr in 2.00 s (6,172 images/s)",
        "rejects: decode-error 2, too-large 1",  # by reason, sorted
    ]
    assert ingest_lines({**full, "rejects_by_reason": {}, "label_counts": [0] * 10})[1:] == \
        ["label counts: 0 0 0 0 0 0 0 0 0 0"]


def test_train_lines_of_search_cv_and_fallbacks():
    r = {"name": "sgd-kernel", "features": "kernel", "n_train": 60000, "n_test": 10000,
         "fit_seconds": 12.345, "model_path": "/m", "test": {"accuracy": 0.98765},
         "search": {"best_params": {"sgd__alpha": 1e-06}, "best_mean": 0.97651},
         "cv": {"k": 3, "scores": [0.9, 0.95, 0.925], "mean": 0.925, "std": 0.0204,
                "fit_time_mean": 3.5, "backend": "dask"}}
    assert train_lines(r) == [
        "search: best {'sgd__alpha': 1e-06} (CV accuracy 0.9765)",
        ("3-fold CV accuracy on the cluster: 0.9000 0.9500 0.9250; mean 0.9250 +- 0.0204 "
         "(fit 3.50 s a fold, dask)"),
        ("trained sgd-kernel (kernel features) on 60000 images in 12.35 s -> /m; "
         "test accuracy 0.9877 on 10000 images"),
    ]
    # a job's result: "model" for the name, test_accuracy, no n_test, no times
    job = {"model": "detect-2", "features": "pixels", "n_train": 500, "test_accuracy": 0.5}
    assert train_lines(job) == ["trained detect-2 (pixels features) on 500 images; test accuracy 0.5000"]
    # no test rows: no accuracy; an empty model path: no arrow
    assert train_lines({**job, "test_accuracy": None, "model_path": ""}) == \
        ["trained detect-2 (pixels features) on 500 images"]
    assert train_lines({**r, "test": None, "search": None, "cv": None})[-1] == \
        "trained sgd-kernel (kernel features) on 60000 images in 12.35 s -> /m"


def test_score_lines_without_labels_or_times():
    m = {"n_images": 1500000, "n_labeled": 0, "accuracy": None, "seconds": 100.0,
         "images_per_second": 15000.0, "confusion_matrix": [[0] * 10] * 10}
    assert score_lines(m) == ["scored 1500000 images in 100.00 s (15,000 images/s); no labels"]
    assert score_lines({**m, "seconds": None}) == ["scored 1500000 images; no labels"]
    assert score_lines({"n_images": 5}) == ["scored 5 images; no labels"]
    cm = np.diag([2, 1, 0, 0, 0, 0, 0, 0, 0, 1])
    cm[1, 0] = 1
    labelled = {"n_images": 5, "n_labeled": 5, "accuracy": 0.8, "confusion_matrix": cm.tolist()}
    lines = score_lines(labelled)
    assert lines[:-1] == format_confusion(cm).splitlines()
    assert lines[-1] == "scored 5 images; accuracy 0.8000 on 5 labelled"
    # labelled, but no matrix kept: the headline alone
    assert score_lines({**labelled, "confusion_matrix": None}) == lines[-1:]


def test_step_lines_dispatch_by_step():
    assert set(STEP_LINES) == {"ingest", "train", "score", "export", "promote", "history"}
    h = {"n_runs": 6, "n_flagged": 1,
         "flagged": [{"date": "2026-12-06", "source": "/n/p.zarr", "figures": ["psi"]}]}
    assert step_lines("history", h) == ["history of 6 runs: 1 flagged as outliers",
                                        "outlier: 2026-12-06 /n/p.zarr: psi"]
    r = {"n_images": 3, "n_labeled": 3, "n_rejects": 0}
    assert step_lines("ingest", r) == ingest_lines(r)
    assert step_lines("score", {"n_images": 3}) == ["scored 3 images; no labels"]
    assert step_lines("report", {"n_wrong": 4}) == []  # a step without lines
    assert step_lines("ingest", {}) == []  # a step without a result (failed, skipped)
    assert step_lines("train", None) == []
