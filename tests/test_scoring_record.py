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
from digitbatch.scoring.record import build_record, chunk_counts, reduce_records

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


@pytest.mark.e2e
@pytest.mark.parametrize("scheduler", ["synchronous", "local"])
@pytest.mark.parametrize("shape", list(STORE_SHAPES))
def test_store_metrics_equal_sklearn(shape, scheduler, shaped_stores, shared_model, tmp_path):
    n, c = STORE_SHAPES[shape]
    out = tmp_path / "p.zarr"
    score(shaped_stores[shape], model=shared_model, out=out, scheduler=scheduler)
    _check_run(out, _labels_of_store(shaped_stores[shape]), n_chunks=math.ceil(n / c))


@pytest.mark.e2e
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


@pytest.mark.e2e
@pytest.mark.parametrize("shape", list(ARCHIVE_SHAPES))
def test_archive_metrics_equal_sklearn(shape, shared_model, tmp_path):
    n = ARCHIVE_SHAPES[shape]
    src, keys, y = _archive(tmp_path, n)
    out = tmp_path / "p.zarr"
    score(src, model=shared_model, out=out, chunk_size=256, scheduler="synchronous")
    got_keys = list(zarr.open_group(str(out), mode="r")["keys"][:])
    label_of = dict(zip(keys, y.astype(np.int64)))
    _check_run(out, np.array([label_of[k] for k in got_keys]), n_chunks=math.ceil(n / 256))


@pytest.mark.e2e
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


# --- the functions of record.py on their own (fast: `make mutants` runs these) ------


def test_reduce_records_of_nothing_is_zero_of_the_model_size():
    total = reduce_records([], 3)
    assert total["confusion"].dtype == np.int64 and total["confusion"].shape == (3, 3)
    assert total["hist"].dtype == np.int64 and total["hist"].shape == (3,)
    assert not total["confusion"].any() and not total["hist"].any()
    assert total["n"] == 0 and total["n_unlabeled"] == 0


def test_reduce_records_of_one_record_is_that_record_as_int64():
    rec = {"confusion": [[1, 2], [3, 4]], "hist": [4, 6], "n": 10, "n_unlabeled": 1,
           "chunk": 0, "start": 0, "stop": 10}
    total = reduce_records([rec], 2)
    assert total["confusion"].dtype == np.int64 and total["hist"].dtype == np.int64
    assert total["confusion"].tolist() == [[1, 2], [3, 4]] and total["hist"].tolist() == [4, 6]
    assert total["n"] == 10 and total["n_unlabeled"] == 1
    assert set(total) == {"confusion", "hist", "n", "n_unlabeled"}


def test_chunk_counts_against_sklearn_with_unknown_labels_skipped():
    from sklearn.metrics import confusion_matrix

    rng = np.random.default_rng(5)
    target = rng.integers(-1, 4, 57).astype(np.int8)  # -1: unknown label
    pred = rng.integers(0, 4, 57).astype(np.int8)
    counts = chunk_counts(target, pred, 4)
    known = target >= 0
    want = confusion_matrix(target[known], pred[known], labels=range(4))
    np.testing.assert_array_equal(counts["confusion"], want)
    np.testing.assert_array_equal(counts["hist"], np.bincount(pred, minlength=4))
    assert counts["n"] == 57 and type(counts["n"]) is int
    assert counts["n_unlabeled"] == int((~known).sum()) > 0
    assert type(counts["n_unlabeled"]) is int
    assert set(counts) == {"confusion", "hist", "n", "n_unlabeled"}  # no rejects for a store


def test_chunk_counts_of_an_archive_slot_chunk_carry_its_rejects():
    rejects = [["a.txt", "not-an-image: ..."], ["../b.png", "unsafe-path: ..."]]
    counts = chunk_counts(np.array([1, 0], np.int8), np.array([1, 1], np.int8), 2,
                          rejects=rejects)
    assert counts["n_rejected"] == 2 and counts["rejects"] == rejects
    assert counts["confusion"].tolist() == [[0, 1], [0, 1]]
    none = chunk_counts(np.array([], np.int8), np.array([], np.int8), 2, rejects=[])
    assert none["n_rejected"] == 0 and none["rejects"] == []  # a chunk without rejects says so
    assert none["n"] == 0 and none["hist"].tolist() == [0, 0]


def _model(*, classes=range(10), loss="log_loss", binary_digit=None, name="sgd"):
    from digitbatch import folding as FO
    from digitbatch.models import CompactModel

    classes = np.asarray(list(classes))
    k = 1 if len(classes) == 2 else len(classes)
    head = FO.LinearPredictor(weights=np.zeros((784, k)), intercept=np.zeros(k), classes=classes)
    return CompactModel(name=name, features="pixels", head=head, loss=loss,
                        binary_digit=binary_digit)


def _build(records, model=None, **kw):
    args = dict(model=model or _model(), model_path="/m", model_sha256="ab" * 32,
                input={"path": "/in.zarr", "checksum": "x"}, n_rejected_before=0, seconds=2.0,
                n_this_run=sum(r["n"] for r in records), resumed=False, run_id="c0ffee" * 5 + "ab")
    args.update(kw)
    return build_record(records, **args)


def _records(rng, n_chunks, k=10):
    out = []
    for i in range(n_chunks):
        t = rng.integers(-1, k, 40).astype(np.int8)
        p = rng.integers(0, k, 40).astype(np.int8)
        rec = chunk_counts(t, p, k)
        out.append({"chunk": i, "start": 40 * i, "stop": 40 * i + 40,
                    **{a: (b.tolist() if isinstance(b, np.ndarray) else b) for a, b in rec.items()},
                    "_t": t, "_p": p})
    return out


@pytest.mark.parametrize("n_chunks", [1, 2, 3])
def test_build_record_fields_and_per_class_figures_against_sklearn(n_chunks):
    from digitbatch.scoring.record import SCHEMA_VERSION

    records = _records(np.random.default_rng(n_chunks), n_chunks)
    t = np.concatenate([r["_t"] for r in records])
    p = np.concatenate([r["_p"] for r in records])
    m = _build(records, seconds=0.4567891, n_this_run=40, resumed=True)
    known = t >= 0
    assert_matches_sklearn(m, t[known], p[known], 10)
    assert m["schema_version"] == SCHEMA_VERSION == 1
    assert m["n_images"] == m["n_scored"] == 40 * n_chunks
    assert m["n_unlabeled"] == int((~known).sum())
    assert m["n_rejected"] == 0 and m["rejects"] == []
    assert m["prediction_histogram"] == np.bincount(p, minlength=10).tolist()
    assert m["classes"] == list(range(10)) and all(type(c) is int for c in m["classes"])
    assert m["target"] == "multiclass" and m["margin"] == "probability"
    assert m["seconds"] == 0.457
    assert m["n_scored_this_run"] == 40
    assert m["images_per_second"] == round(40 / 0.4567891, 1) == 87.6
    assert m["resumed"] is True
    assert m["model"] == {"path": "/m", "name": "sgd", "sha256": "ab" * 32}
    assert m["run_id"] == "c0ffee" * 5 + "ab"  # the run that finished the output
    assert m["input"] == {"path": "/in.zarr", "checksum": "x"}
    json.dumps(m)  # every field is JSON


def test_build_record_of_a_detector_with_decision_values():
    records = _records(np.random.default_rng(0), 2, k=2)
    model = _model(classes=[0, 1], loss="hinge", binary_digit=7, name="detect-7")
    m = _build(records, model=model)
    assert m["target"] == "is-7" and m["margin"] == "decision value"
    assert m["classes"] == [0, 1] and len(m["confusion_matrix"]) == 2
    assert m["model"]["name"] == "detect-7"
    assert m["images_per_second"] == 40.0 and m["resumed"] is False


def test_build_record_of_a_run_that_took_no_time():
    records = _records(np.random.default_rng(1), 1)
    assert _build(records, seconds=0.0)["images_per_second"] is None
    assert _build(records, seconds=1e-9)["images_per_second"] == round(40 / 1e-9, 1)
    assert _build(records, seconds=0.0)["seconds"] == 0.0


def test_build_record_counts_every_reject_and_lists_the_first_thousand():
    from digitbatch.scoring.record import MAX_REJECTS_LISTED

    assert MAX_REJECTS_LISTED == 1000
    records = _records(np.random.default_rng(2), 2)
    records[0]["rejects"] = [[f"a{i}", "not-an-image: x"] for i in range(600)]
    records[1]["rejects"] = [[f"b{i}", "too-large: x"] for i in range(500)]
    m = _build(records, n_rejected_before=7)
    assert m["n_rejected"] == 7 + 1100
    assert len(m["rejects"]) == 1000
    assert m["rejects"][:600] == records[0]["rejects"]  # in chunk order
    assert m["rejects"][600:] == records[1]["rejects"][:400]
    few = _build(records[1:], n_rejected_before=3)
    assert few["n_rejected"] == 503 and few["rejects"] == records[1]["rejects"]


def test_build_record_of_no_chunks():
    m = _build([], model=_model(classes=range(4)))
    assert m["confusion_matrix"] == [[0] * 4] * 4 and m["accuracy"] is None
    assert m["n_images"] == 0 and m["prediction_histogram"] == [0] * 4
