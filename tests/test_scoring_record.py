"""metrics.json of real scoring runs against scikit-learn, for every chunk count and path.

Every scoring path (a store inline, a store on a threaded LocalCluster with
chunks batched to Dask tasks, an archive inline, an archive on worker
processes) over outputs of one chunk, odd and even chunk counts and ragged
last chunks: the metrics.json on disk must equal ``sklearn.metrics`` of the
labels and the predictions stored in PRED.zarr, its counts must add up to
the input, and there must be exactly one commit record per chunk. The
commit-record reduction is also checked against a plain sum for 0 to 9
records (odd counts carry a record up the tree).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import zarr

from digitbatch.scoring.api import score
from digitbatch.scoring.output import committed, open_predictions
from digitbatch.scoring.record import reduce_records

from .conftest import STORE_SHAPES
from .test_metrics import assert_matches_sklearn


def _labels_of_store(store) -> np.ndarray:
    return zarr.open_group(str(store), mode="r")["labels"][:].astype(np.int64)


def _check_run(out, labels: np.ndarray, *, n_chunks: int) -> dict:
    """The output's metrics.json against sklearn on its own pred array; returns it."""
    m = json.loads((out / "metrics.json").read_text())
    assert json.loads((out / "_SUCCESS").read_text()) == m
    pred = zarr.open_group(str(out), mode="r")["pred"][:].astype(np.int64)
    assert pred.shape == labels.shape and (pred >= 0).all()  # every row written
    assert_matches_sklearn(m, labels, pred, 10)
    cm = np.array(m["confusion_matrix"])
    assert (cm != cm.T).any() and m["accuracy"] < 0.95  # (precision != recall: a swap shows)
    n = len(labels)
    assert m["n_images"] == m["n_scored"] == m["n_scored_this_run"] == n
    assert m["n_unlabeled"] == 0 and m["resumed"] is False
    assert m["prediction_histogram"] == np.bincount(pred, minlength=10).tolist()
    assert sum(m["prediction_histogram"]) == n
    records = committed(out)
    assert sorted(records) == list(range(n_chunks))
    assert sum(r["n"] for r in records.values()) == n
    assert open_predictions(out).metrics == m
    return m


@pytest.mark.parametrize("scheduler", ["synchronous", "local"])
@pytest.mark.parametrize("shape", list(STORE_SHAPES))
def test_store_metrics_equal_sklearn(shape, scheduler, shaped_stores, shared_model, tmp_path):
    n, c = STORE_SHAPES[shape]
    out = tmp_path / "p.zarr"
    score(shaped_stores[shape], model=shared_model, out=out, scheduler=scheduler)
    _check_run(out, _labels_of_store(shaped_stores[shape]), n_chunks=math.ceil(n / c))


def test_store_metrics_equal_sklearn_batched(tmp_path, shared_model):
    """33 chunks on 2 worker threads: Dask tasks of 2 chunks, and the odd one out."""
    from .conftest import make_store

    store = make_store(tmp_path, 33 * 256 - 7, seed=33, noise=0.2)
    out = tmp_path / "p.zarr"
    score(store, model=shared_model, out=out, scheduler="local")
    _check_run(out, _labels_of_store(store), n_chunks=33)


# members: chunks of 256 slots
ARCHIVE_SHAPES = {
    "1-chunk-short": 100,
    "2-chunks-full": 512,
    "3-chunks-ragged": 600,
    "5-chunks-ragged": 1100,
}


def _archive(tmp_path, n: int):
    """A tar of ``n`` PNG digits labelled by folder, a fifth of the labels wrong."""
    from .conftest import noisy_labels, synthetic_digits
    from .test_ingest import make_tar, png_bytes

    x, y = synthetic_digits(n, seed=n)
    y = noisy_labels(y, noise=0.2, seed=n)
    members = {f"{int(y[i])}/img{i:04d}.png": png_bytes(x[i]) for i in range(n)}
    return make_tar(tmp_path / "a.tar", members, mode="w"), list(members), y


@pytest.mark.parametrize("shape", list(ARCHIVE_SHAPES))
def test_archive_metrics_equal_sklearn(shape, shared_model, tmp_path):
    n = ARCHIVE_SHAPES[shape]
    src, keys, y = _archive(tmp_path, n)
    out = tmp_path / "p.zarr"
    score(src, model=shared_model, out=out, chunk_size=256, scheduler="synchronous")
    got_keys = list(zarr.open_group(str(out), mode="r")["keys"][:])
    label_of = dict(zip(keys, y.astype(np.int64)))
    _check_run(out, np.array([label_of[k] for k in got_keys]), n_chunks=math.ceil(n / 256))


def test_archive_metrics_equal_sklearn_on_worker_processes(shared_model, tmp_path):
    src, keys, y = _archive(tmp_path, 600)  # 3 chunks, the last ragged
    out = tmp_path / "p.zarr"
    score(src, model=shared_model, out=out, chunk_size=256, scheduler="local")
    got_keys = list(zarr.open_group(str(out), mode="r")["keys"][:])
    label_of = dict(zip(keys, y.astype(np.int64)))
    _check_run(out, np.array([label_of[k] for k in got_keys]), n_chunks=3)


def _record(rng, k=10):
    cm = rng.integers(0, 50, (k, k))
    hist = rng.integers(0, 50, k)
    return {"confusion": cm.tolist(), "hist": hist.tolist(), "n": int(rng.integers(1, 500)),
            "n_unlabeled": int(rng.integers(0, 5))}


@pytest.mark.parametrize("count", range(10))
def test_reduce_records_is_the_plain_sum(count):
    rng = np.random.default_rng(count)
    records = [_record(rng) for _ in range(count)]
    total = reduce_records(records, 10)
    want_cm = sum((np.array(r["confusion"]) for r in records), np.zeros((10, 10), np.int64))
    want_hist = sum((np.array(r["hist"]) for r in records), np.zeros(10, np.int64))
    np.testing.assert_array_equal(total["confusion"], want_cm)
    np.testing.assert_array_equal(total["hist"], want_hist)
    assert total["n"] == sum(r["n"] for r in records)
    assert total["n_unlabeled"] == sum(r["n_unlabeled"] for r in records)
    assert total["confusion"].shape == (10, 10) and total["hist"].shape == (10,)
