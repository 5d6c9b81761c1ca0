"""Cross-validation on the dask backend equals the sequential backend."""

from __future__ import annotations

import numpy as np
import pytest

from digitbatch import cluster
from digitbatch.crossval import check_folds, run_cv, run_search
from digitbatch.errors import TrainingError
from digitbatch.models import build
from digitbatch.training import train

from .conftest import synthetic_digits


@pytest.fixture(scope="module")
def data():
    x, y = synthetic_digits(400, seed=2)
    return x.reshape(400, -1), y


def test_dask_cv_equals_sequential(data):
    X, y = data
    seq = run_cv(build("sgd", seed=0), X, y, k=3, client=None)
    with cluster.client("local", n_workers=2) as c:
        dsk = run_cv(build("sgd", seed=0), X, y, k=3, client=c)
        best, summary = run_search(build("sgd", seed=0), {"clf__alpha": [1e-4, 1e3]}, X, y,
                                   k=3, client=c)
    assert seq.backend == "sequential" and dsk.backend == "dask"
    assert seq.scores == dsk.scores  # byte-identical fold scores
    assert len(dsk.fit_times) == 3
    best_seq, summary_seq = run_search(build("sgd", seed=0), {"clf__alpha": [1e-4, 1e3]}, X, y,
                                       k=3, client=None)
    assert best == best_seq
    means = [c["mean"] for c in summary["candidates"]]
    assert means == [c["mean"] for c in summary_seq["candidates"]]
    assert means[0] != means[1]  # the grid's alpha reached the folds' estimators


@pytest.mark.parametrize("k, match", [
    (1, "at least 2 folds"),        # --cv 1
    (0, "at least 2 folds"),
    (6, "larger than the 5 training rows of class 3"),   # more folds than a class has rows
    (2.5, "must be an integer"),
])
def test_bad_folds(k, match):
    y = np.array([0] * 10 + [3] * 5)
    with pytest.raises(TrainingError, match=match):
        check_folds(k, y)


def test_train_cv_manifest(tmp_path, small_store):
    r = train(small_store, tmp_path / "m", cv=3, scheduler="synchronous")
    assert r.cv["k"] == 3 and len(r.cv["scores"]) == 3
    assert r.cv["mean"] == pytest.approx(np.mean(r.cv["scores"]))
    import json
    m = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert m["cv"]["scores"] == r.cv["scores"] and "mean" in m["cv"]


def test_train_bad_cv_writes_nothing(tmp_path, small_store):
    with pytest.raises(TrainingError, match="--cv 1"):
        train(small_store, tmp_path / "m", cv=1, scheduler="synchronous")
    assert not (tmp_path / "m").exists()


def test_cluster_folds_use_two_threads_unless_chosen():
    """On a cluster a fold's one-vs-rest fit gets FOLD_THREADS threads (a fold
    alone in the last round still uses both cores); a caller's n_jobs stays."""
    from digitbatch.crossval import FOLD_THREADS, on_cluster
    from digitbatch.models import build

    est = build("sgd", seed=1)
    assert on_cluster(est, client=None) is est
    on = on_cluster(est, client=object())
    assert on.estimator.steps[-1][1].n_jobs == FOLD_THREADS and est.steps[-1][1].n_jobs is None
    assert on.get_params()["estimator__clf__n_jobs"] == FOLD_THREADS
    est.steps[-1][1].set_params(n_jobs=1)
    assert on_cluster(est, client=object()).steps[-1][1].n_jobs == 1
