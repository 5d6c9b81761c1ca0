"""train -> model artifact: manifest, determinism, errors, --incremental, against plain scikit-learn."""

from __future__ import annotations

import json

import numpy as np
import pytest

from digitbatch.errors import StoreError, TrainingError
from digitbatch.layout import StoreWriter, UNKNOWN_LABEL, open_store
from digitbatch.training import train

from .conftest import synthetic_digits


def test_train_writes_manifest(tmp_path, small_store, model_dir):
    m = json.loads((model_dir / "manifest.json").read_text())
    assert m["name"] == "sgd" and m["seed"] == 3
    assert m["train"]["store_checksum"] == open_store(small_store).checksum
    # ~1/12 of the 700 train rows are held out to calibrate the probabilities
    assert m["train"]["n_rows"] + m["train"]["n_calibration_rows"] == 700
    assert 40 <= m["train"]["n_calibration_rows"] <= 80
    assert m["train"]["rows"] == list(open_store(small_store).splits["train"])
    assert m["calibration"]["n_rows"] == m["train"]["n_calibration_rows"]
    assert 0.9 <= m["test"]["accuracy"] <= 1.0
    assert len(m["test"]["confusion_matrix"]) == 10


def test_train_is_deterministic(tmp_path, small_store, model_dir):
    train(small_store, tmp_path / "again", seed=3)
    assert (model_dir / "model.npz").read_bytes() == (tmp_path / "again" / "model.npz").read_bytes()


def test_train_errors(tmp_path):
    x, y = synthetic_digits(300)
    with StoreWriter(tmp_path / "nolabels.zarr", source={}) as w:
        w.append(x, np.full(300, UNKNOWN_LABEL, np.int8), [str(i) for i in range(300)])
        w.finish()
    with pytest.raises(TrainingError, match="no labelled rows"):
        train(tmp_path / "nolabels.zarr", tmp_path / "m")
    with StoreWriter(tmp_path / "one.zarr", source={}) as w:
        w.append(x, np.full(300, 4, np.int8), [str(i) for i in range(300)])
        w.finish()
    with pytest.raises(TrainingError, match="single class"):
        train(tmp_path / "one.zarr", tmp_path / "m")
    with pytest.raises(TrainingError, match="unknown model"):
        train(tmp_path / "one.zarr", tmp_path / "m", model="resnet")
    with pytest.raises(StoreError):
        train(tmp_path / "missing.zarr", tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_incremental_matches_chunks_and_is_bounded(tmp_path, small_store):
    r = train(small_store, tmp_path / "inc", incremental=True, epochs=3, seed=1)
    m = json.loads((tmp_path / "inc" / "manifest.json").read_text())
    # the incremental fit holds out the same rows as the in-memory one (same seed)
    assert r.n_train + m["train"]["n_calibration_rows"] == 700 and r.test["accuracy"] > 0.8
    assert m["calibration"]["temperature"] > 0
    assert m["train"]["incremental"] is True and m["train"]["epochs"] == 3
    again = train(small_store, tmp_path / "inc2", incremental=True, epochs=3, seed=1)
    assert (tmp_path / "inc" / "model.npz").read_bytes() == (tmp_path / "inc2" / "model.npz").read_bytes()
    assert again.test == r.test


@pytest.mark.parametrize("kw, match", [
    ({"model": "sgd-kernel"}, "--incremental trains the sgd model"),
    ({"features": "kernel"}, "--incremental trains the sgd model"),
    ({"cv": 3}, "cannot be combined"),
    ({"epochs": 0}, "epochs must be"),
])
def test_incremental_errors(tmp_path, small_store, kw, match):
    with pytest.raises(TrainingError, match=match):
        train(small_store, tmp_path / "m", incremental=True, **kw)


def test_same_model_bytes_local_cluster_and_threads(tmp_path, small_store):
    a = train(small_store, tmp_path / "a", cv=2, scheduler="local", seed=5)
    b = train(small_store, tmp_path / "b", cv=2, scheduler="synchronous", seed=5)
    assert (tmp_path / "a" / "model.npz").read_bytes() == (tmp_path / "b" / "model.npz").read_bytes()
    assert a.cv["scores"] == b.cv["scores"] and a.test == b.test
