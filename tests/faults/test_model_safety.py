"""Model safety: a model artifact from elsewhere never runs code and never loads when changed.

Every case builds its hostile artifact in ``tmp_path`` (nothing downloaded,
skops not needed) and expects :class:`~digitbatch.errors.ModelError`:

- ``pickle-file``: a bare ``model.pkl`` whose ``__reduce__`` would create a
  sentinel file, given as the model path.
- ``pickle-as-npz``: that pickle in place of ``model.npz``, the manifest's
  SHA-256 updated to match (so only the format check stands in the way).
- ``object-array-npz``: an ``.npz`` holding an object array (needs
  ``allow_pickle``, which is never given), hash updated.
- ``skops-file``: a skops-style zip (``schema.json`` naming ``os.system`` /
  ``builtins.eval``) given as the model path.
- ``skops-as-npz``: that zip in place of ``model.npz``, hash updated
  (``np.load`` would hand ``schema.json`` back as raw bytes).
- ``skops-dir``: a directory holding only the skops files, no manifest.
- ``hash-mismatch``: one byte of ``model.npz`` flipped.
- ``sklearn-version``: the manifest says another scikit-learn version.
- ``model-file-escape``: the manifest points ``model_file`` outside the directory.
- ``string-weights`` / ``bad-shapes`` / ``nan-weights``: plain arrays that
  could not be a model, hash updated.

and in every case: the sentinel file is absent and neither ``os.system``
nor ``builtins.eval`` nor ``pickle.load(s)`` was called (0 executions).
"""

from __future__ import annotations

import builtins
import hashlib
import io
import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from digitbatch.errors import ModelError
from digitbatch.modelio import load_model

from ..conftest import trained_model

SENTINEL = "PWNED_SENTINEL"


class _Payload:
    """Unpickling this would create the sentinel file."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.fixture(scope="module")
def good_model(tmp_path_factory) -> Path:
    return trained_model(tmp_path_factory.mktemp("model_safety"), seed=1)


def _skops_zip(sentinel: Path) -> bytes:
    """A zip laid out as skops writes it, whose schema asks for os.system and eval."""
    schema = {
        "__class__": "system", "__module__": "os", "__loader__": "ObjectNode",
        "_skops_version": "0.10", "protocol": 2,
        "content": {
            "__class__": "eval", "__module__": "builtins", "__loader__": "ObjectNode",
            "args": [f"__import__('os').system('touch {sentinel}')"],
        },
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("schema.json", json.dumps(schema))
        arr = io.BytesIO()
        np.save(arr, np.zeros((784, 10)))
        zf.writestr("weights.npy", arr.getvalue())
    return buf.getvalue()


def _replace_npz(model: Path, blob: bytes) -> None:
    """Put ``blob`` in place of model.npz and make the manifest's hash match it."""
    (model / "model.npz").write_bytes(blob)
    m = json.loads((model / "manifest.json").read_text())
    m["model_sha256"] = hashlib.sha256(blob).hexdigest()
    (model / "manifest.json").write_text(json.dumps(m))


def _npz(model: Path, **changes) -> bytes:
    with np.load(model / "model.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(changes)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _edit_manifest(model: Path, fn) -> None:
    m = json.loads((model / "manifest.json").read_text())
    fn(m)
    (model / "manifest.json").write_text(json.dumps(m))


def _pickle_file(model: Path, tmp: Path) -> Path:
    p = tmp / "model.pkl"
    p.write_bytes(pickle.dumps(_Payload(str(tmp / SENTINEL))))
    return p


def _pickle_as_npz(model, tmp):
    _replace_npz(model, pickle.dumps(_Payload(str(tmp / SENTINEL))))
    return model


def _object_array(model, tmp):
    buf = io.BytesIO()
    np.savez(buf, weights=np.array([_Payload(str(tmp / SENTINEL))], dtype=object))
    _replace_npz(model, buf.getvalue())
    return model


def _skops_file(model, tmp):
    p = tmp / "model.skops"
    p.write_bytes(_skops_zip(tmp / SENTINEL))
    return p


def _skops_as_npz(model, tmp):
    _replace_npz(model, _skops_zip(tmp / SENTINEL))
    return model


def _skops_dir(model, tmp):
    d = tmp / "skops_model"
    with zipfile.ZipFile(io.BytesIO(_skops_zip(tmp / SENTINEL))) as zf:
        zf.extractall(d)
    return d


def _hash_mismatch(model, tmp):
    data = bytearray((model / "model.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (model / "model.npz").write_bytes(bytes(data))
    return model


def _sklearn_version(model, tmp):
    _edit_manifest(model, lambda m: m["versions"].update({"scikit-learn": "0.20.0"}))
    return model


def _model_file_escape(model, tmp):
    outside = tmp / "elsewhere"
    outside.mkdir()
    shutil.copy(model / "model.npz", outside / "model.npz")
    _edit_manifest(model, lambda m: m.update({"model_file": "../elsewhere/model.npz"}))
    return model


def _string_weights(model, tmp):
    _replace_npz(model, _npz(model, weights=np.full((784, 10), "x")))
    return model


def _bad_shapes(model, tmp):
    _replace_npz(model, _npz(model, intercept=np.zeros(3)))
    return model


def _nan_weights(model, tmp):
    _replace_npz(model, _npz(model, weights=np.full((784, 10), np.nan)))
    return model


CASES = {
    "pickle-file": (_pickle_file, "never loaded"),
    "pickle-as-npz": (_pickle_as_npz, "not a plain numpy archive"),
    "object-array-npz": (_object_array, "not a plain numpy archive"),
    "skops-file": (_skops_file, "never loaded"),
    "skops-as-npz": (_skops_as_npz, "schema.json"),
    "skops-dir": (_skops_dir, "no manifest.json"),
    "hash-mismatch": (_hash_mismatch, "SHA-256"),
    "sklearn-version": (_sklearn_version, "scikit-learn 0.20.0"),
    "model-file-escape": (_model_file_escape, "only model.npz"),
    "string-weights": (_string_weights, "not numbers"),
    "bad-shapes": (_bad_shapes, "do not fit together"),
    "nan-weights": (_nan_weights, "NaN"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_model_is_refused_and_runs_nothing(case, good_model, tmp_path, monkeypatch):
    model = tmp_path / "model"
    shutil.copytree(good_model, model)
    make, match = CASES[case]
    target = make(model, tmp_path)
    calls = []

    def spy(module, name):
        real = getattr(module, name)
        monkeypatch.setattr(module, name,
                            lambda *a, **k: calls.append((name, a)) or real(*a, **k))

    # what a pickle / skops payload would need; none may run, even refused later
    for module, name in ((os, "system"), (builtins, "eval"), (pickle, "load"),
                         (pickle, "loads")):
        spy(module, name)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError, match=match):
        load_model(target)
    monkeypatch.undo()
    assert calls == []
    assert not (tmp_path / SENTINEL).exists()
    assert not list(tmp_path.rglob(SENTINEL))


def test_untouched_model_still_loads(good_model):
    loaded = load_model(good_model)
    assert loaded.model.n_classes == 10


def test_refused_model_fails_the_cli_cleanly(good_model, tmp_path):
    """``digitbatch score`` with a pickle model: exit code 1, the error named, nothing run."""
    from click.testing import CliRunner

    from digitbatch.cli import main

    pkl = _pickle_file(good_model, tmp_path)
    store = good_model.parent / "s.zarr"
    r = CliRunner().invoke(main, ["-q", "score", str(store), "--model", str(pkl),
                                  "--out", str(tmp_path / "p.zarr"), "--scheduler", "synchronous"])
    assert r.exit_code == 1
    assert "ModelError" in r.output and "never loaded" in r.output
    assert not (tmp_path / SENTINEL).exists() and not (tmp_path / "p.zarr").exists()
