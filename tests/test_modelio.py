"""modelio: save_model / load_model round trip, and every manifest defect refused by name.

The hash is the promise: model.npz is loaded only when the manifest carries
its SHA-256 and the file has it. A manifest whose hash is missing or is not
a SHA-256 is refused like one whose hash is wrong (a ModelError naming the
bad value and what to do), never read as "nothing to check".
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from digitbatch.errors import ModelError, OverwriteRefusedError
from digitbatch.modelio import (
    MANIFEST_FILE, MODEL_FILE, load_model, save_model, sha256_file, sklearn_version,
)

from .conftest import synthetic_digits


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    """A 10-class sgd model saved as training saves one, seeded weights instead of a fit:
    these tests are about the files (tests/test_training.py loads trained ones), and
    `make mutants` sets this fixture up again for every mutant."""
    from digitbatch import folding as FO
    from digitbatch.models import CompactModel

    rng = np.random.default_rng(3)
    head = FO.LinearPredictor(weights=rng.normal(size=(784, 10)) / 255,
                              intercept=rng.normal(size=10), classes=np.arange(10))
    m = CompactModel(name="sgd", features="pixels", head=head, loss="log_loss")
    return save_model(m, tmp_path_factory.mktemp("modelio") / "model",
                      manifest={"test": {"accuracy": 0.5}})


@pytest.fixture
def copy(model_path, tmp_path) -> Path:
    dst = tmp_path / "m"
    shutil.copytree(model_path, dst)
    return dst


def _manifest(p: Path) -> dict:
    return json.loads((p / MANIFEST_FILE).read_text())


def _write_manifest(p: Path, m: dict) -> None:
    (p / MANIFEST_FILE).write_text(json.dumps(m))


def _rewrite_npz(p: Path, **changes) -> None:
    """Replace arrays of model.npz and put the matching hash in the manifest."""
    with np.load(p / MODEL_FILE) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(changes)
    with open(p / MODEL_FILE, "wb") as fh:
        np.savez(fh, **arrays)
    m = _manifest(p)
    m["model_sha256"] = sha256_file(p / MODEL_FILE)
    _write_manifest(p, m)


def test_sha256_file_is_hashlib_sha256(tmp_path):
    f = tmp_path / "f.bin"
    data = bytes(range(256)) * 5000  # > one 1 MiB read block
    f.write_bytes(data)
    assert sha256_file(f) == hashlib.sha256(data).hexdigest()


def test_round_trip_predicts_as_before(model_path, tmp_path):
    loaded = load_model(model_path)
    m = _manifest(model_path)
    assert loaded.sha256 == m["model_sha256"] == sha256_file(model_path / MODEL_FILE)
    assert loaded.path == model_path
    x, _ = synthetic_digits(300, seed=5)
    again = load_model(save_model(loaded.model, tmp_path / "again", manifest={"extra": 1}))
    np.testing.assert_array_equal(again.model.predict(x), loaded.model.predict(x))
    assert again.manifest["extra"] == 1
    assert again.manifest["classes"] == list(range(10))
    assert again.manifest["versions"]["scikit-learn"] == sklearn_version()
    assert again.manifest["model_file"] == MODEL_FILE
    assert again.manifest["input"] == {"shape": [28, 28], "dtype": "uint8",
                                       "preprocessing": "pixels / 255 (folded into the weights)"}


def test_save_refuses_existing_unless_overwrite(model_path, tmp_path):
    loaded = load_model(model_path)
    out = tmp_path / "m"
    save_model(loaded.model, out, manifest={})
    with pytest.raises(ModelError, match="already exists: choose another --out or pass --overwrite"):
        save_model(loaded.model, out, manifest={})
    (out / "stray").write_text("x")  # a user's file in the model folder: never removed
    with pytest.raises(OverwriteRefusedError, match="m is a folder digitbatch did not make"):
        save_model(loaded.model, out, manifest={"second": True}, overwrite=True)
    assert (out / "stray").read_text() == "x"
    (out / "stray").unlink()
    save_model(loaded.model, out, manifest={"second": True}, overwrite=True)
    assert _manifest(out)["second"] is True
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary left


@pytest.mark.parametrize("value", [
    "<missing>",            # the field deleted
    None,                   # null
    "",                     # empty
    "abc123",               # too short
    "A" * 64,               # 64 characters, but not lowercase hex
    "g" * 64,               # 64 characters, not hex
    12345,                  # not a string
    ["0" * 64],             # a list holding a hash
])
def test_missing_or_malformed_hash_is_refused(copy, value):
    m = _manifest(copy)
    if value == "<missing>":
        del m["model_sha256"]
    else:
        m["model_sha256"] = value
    _write_manifest(copy, m)
    shown = repr(None if value == "<missing>" else value)
    with pytest.raises(ModelError, match="model_sha256") as info:
        load_model(copy)
    msg = str(info.value)
    assert shown in msg, msg  # names the bad value
    assert "retrain" in msg and "restore" in msg, msg  # and what to do


def test_missing_hash_is_refused_before_the_arrays_are_read(copy, monkeypatch):
    m = _manifest(copy)
    del m["model_sha256"]
    _write_manifest(copy, m)
    read = []
    real = np.load
    monkeypatch.setattr(np, "load", lambda *a, **k: read.append(a) or real(*a, **k))
    with pytest.raises(ModelError):
        load_model(copy)
    assert read == []


def test_wrong_hash_is_refused_and_names_both(copy):
    m = _manifest(copy)
    m["model_sha256"] = "0" * 64
    _write_manifest(copy, m)
    with pytest.raises(ModelError, match=r"SHA-256 [0-9a-f]{16}\.\.\., the manifest says "
                                         r"0{16}\.\.\.: the file was changed"):
        load_model(copy)


def test_a_changed_byte_is_refused(copy):
    data = bytearray((copy / MODEL_FILE).read_bytes())
    data[len(data) // 2] ^= 1
    (copy / MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(ModelError, match="the file was changed"):
        load_model(copy)


@pytest.mark.parametrize("change, match", [
    # (manifest key, new value or a function of the manifest) -> the error
    (("format_version", 2), "format version 2; this digitbatch reads 1: retrain it"),
    (("format_version", None), "format version None"),
    (("versions", {"scikit-learn": "0.0.1"}), "trained with scikit-learn 0.0.1, this is .*"
                                              "install scikit-learn==0.0.1"),
    (("model_file", "../x.npz"), "names model file '../x.npz'; only model.npz"),
    (("kind", "forest"), "unsupported model kind 'forest'"),
    (("head", {"type": "forest"}), "unsupported model kind"),
    (("classes", list(range(1, 11))), "differ from the manifest's"),
    (("name", "no-such-model"), "no-such-model"),
])
def test_manifest_defects_are_named(copy, change, match):
    key, value = change
    m = _manifest(copy)
    m[key] = value
    _write_manifest(copy, m)
    with pytest.raises(ModelError, match=match):
        load_model(copy)


def test_manifest_missing_field_is_refused(copy):
    m = _manifest(copy)
    del m["loss"]
    _write_manifest(copy, m)
    with pytest.raises(ModelError, match="manifest or arrays incomplete .*'loss'.*retrain it"):
        load_model(copy)


def test_missing_damaged_and_non_directory_models(copy, tmp_path):
    with pytest.raises(ModelError, match="does not exist: train one"):
        load_model(tmp_path / "nope")
    f = tmp_path / "model.pkl"
    f.write_bytes(b"x")
    with pytest.raises(ModelError, match="is a file, not a digitbatch model directory"):
        load_model(f)
    (copy / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(ModelError, match="is not valid JSON .*: the artifact is damaged"):
        load_model(copy)
    (copy / MANIFEST_FILE).unlink()
    with pytest.raises(ModelError, match="has no manifest.json"):
        load_model(copy)


def test_model_file_missing_or_a_link(copy, tmp_path):
    real = tmp_path / "elsewhere.npz"
    shutil.move(copy / MODEL_FILE, real)
    with pytest.raises(ModelError, match="model.npz is missing"):
        load_model(copy)
    (copy / MODEL_FILE).symlink_to(real)
    with pytest.raises(ModelError, match="model.npz is missing .or not a regular file"):
        load_model(copy)


def _weights_and_a_good_copy(copy):
    """The model's weights, and an untouched copy of its directory beside it."""
    with np.load(copy / MODEL_FILE) as z:
        w = z["weights"]
    good = copy.parent / "good"
    shutil.copytree(copy, good)
    return w, good


def test_array_defects_are_named(copy):
    w, good = _weights_and_a_good_copy(copy)
    _rewrite_npz(copy, weights=w.astype(np.float64) * np.nan)
    with pytest.raises(ModelError, match="'weights' holds NaN or infinity: retrain it"):
        load_model(copy)
    shutil.rmtree(copy)
    shutil.copytree(good, copy)
    _rewrite_npz(copy, weights=w[:100])
    with pytest.raises(ModelError, match=r"weights \(100, 10\) do not take 28x28 images"):
        load_model(copy)
    shutil.rmtree(copy)
    shutil.copytree(good, copy)
    _rewrite_npz(copy, weights=w[:, :9])
    with pytest.raises(ModelError, match="do not fit together|9 outputs for 10 classes"):
        load_model(copy)
    shutil.rmtree(copy)
    shutil.copytree(good, copy)
    _rewrite_npz(copy, weights=np.array(["a"] * 10))
    with pytest.raises(ModelError, match="'weights' is <U1, not numbers"):
        load_model(copy)


def test_manifest_on_disk_records_the_model(model_path, tmp_path):
    import dataclasses

    from digitbatch import __version__

    loaded = load_model(model_path)
    m = dataclasses.replace(loaded.model, params={"alpha": 0.5})
    out = save_model(m, tmp_path / "m", manifest={"test": {"accuracy": 0.5}})
    text = (out / MANIFEST_FILE).read_text()
    man = json.loads(text)
    # the file: indented, keys sorted, one trailing newline (diffable, stable bytes)
    assert text == json.dumps(man, indent=2, sort_keys=True) + "\n"
    assert man["binary_digit"] is None and man["params"] == {"alpha": 0.5}
    assert man["versions"] == {"digitbatch": __version__, "scikit-learn": sklearn_version(),
                               "numpy": np.__version__}
    assert man["format_version"] == 1 and man["name"] == "sgd" and man["kind"] == "linear"
    assert man["head"] == {"type": "linear"} and man["loss"] == m.loss
    assert man["test"] == {"accuracy": 0.5}
    assert man["model_sha256"] == sha256_file(out / MODEL_FILE)
    assert load_model(out).model.params == {"alpha": 0.5}


@pytest.mark.parametrize("name, binary_digit, features, text", [
    ("detect-2", 2, "pixels", "raw 0-255 pixels, as the walk-through's detector"),
    ("detect-2", 2, "deskew", "moment deskew, raw 0-255 scale"),
    ("detect-2", 2, "kernel",
     "moment deskew / 255 + HOG, PCA and Nystroem RBF (linear steps folded)"),
    ("sgd", None, "deskew", "moment deskew, then / 255 (folded into the weights)"),
    ("sgd", None, "pixels", "pixels / 255 (folded into the weights)"),
])
def test_manifest_names_the_preprocessing(model_path, tmp_path, name, binary_digit, features,
                                          text):
    import dataclasses

    m = dataclasses.replace(load_model(model_path).model, name=name, features=features,
                            binary_digit=binary_digit)
    man = _manifest(save_model(m, tmp_path / "m", manifest={}))
    assert man["input"]["preprocessing"] == text
    assert man["binary_digit"] == binary_digit and man["features"] == features


def _kernel_model(projection: bool):
    from digitbatch import folding as FO
    from digitbatch.models import CompactModel

    rng = np.random.default_rng(0)
    x, _ = synthetic_digits(4, seed=1)
    probe = CompactModel(name="sgd-kernel", features="kernel", head=None, loss="hinge")
    d = probe.featurize(x).shape[1]
    z = 12 if projection else d
    landmarks = rng.normal(size=(30, z))
    head = FO.KernelPredictor(
        projection=rng.normal(size=(d, z)) / d if projection else None,
        offset=rng.normal(size=z) if projection else None,
        landmarks=landmarks, landmark_sq_norms=(landmarks ** 2).sum(axis=1),
        gamma=0.0625, weights=rng.normal(size=(30, 10)), intercept=rng.normal(size=10),
        classes=np.arange(10))
    return CompactModel(name="sgd-kernel", features="kernel", head=head, loss="hinge")


@pytest.mark.parametrize("projection", [True, False])
def test_kernel_head_round_trip(tmp_path, projection):
    m = _kernel_model(projection)
    loaded = load_model(save_model(m, tmp_path / "k", manifest={}))
    assert loaded.manifest["head"] == {"type": "kernel", "gamma": 0.0625}
    assert loaded.model.kind == "kernel" and loaded.model.head.gamma == 0.0625
    assert (loaded.model.head.projection is None) is (not projection)
    x, _ = synthetic_digits(50, seed=2)
    f = m.featurize(x)
    np.testing.assert_array_equal(loaded.model.head.decision_function(f),
                                  m.head.decision_function(f))


def test_kernel_head_shape_defects(tmp_path):
    m = _kernel_model(True)
    p = save_model(m, tmp_path / "k", manifest={})
    _rewrite_npz(p, weights=np.ones((29, 10)))
    with pytest.raises(ModelError, match=r"30 landmarks but weights \(29, 10\)"):
        load_model(p)
    m2 = save_model(m, tmp_path / "k2", manifest={})
    with np.load(m2 / MODEL_FILE) as z:
        arrays = {k: z[k] for k in z.files if k != "landmarks"}
    with open(m2 / MODEL_FILE, "wb") as fh:
        np.savez(fh, **arrays)
    man = _manifest(m2)
    man["model_sha256"] = sha256_file(m2 / MODEL_FILE)
    _write_manifest(m2, man)
    with pytest.raises(ModelError, match=r"lacks arrays \['landmarks'\]"):
        load_model(m2)


def test_model_at_a_url_round_trips_and_is_checked(model_path):
    """memory:// stands for an object store (no network): upload, download, hash check."""
    import fsspec

    fs = fsspec.filesystem("memory")
    url = "memory://digitbatch-tests/models/m"
    fs.rm("/digitbatch-tests", recursive=True) if fs.exists("/digitbatch-tests") else None
    loaded = load_model(model_path)
    save_model(loaded.model, url, manifest={"where": "bucket"})
    assert sorted(p.rsplit("/", 1)[1] for p in fs.ls("/digitbatch-tests/models/m", detail=False)) \
        == [MANIFEST_FILE, MODEL_FILE]
    again = load_model(url)
    assert str(again.path) == url and again.manifest["where"] == "bucket"
    x, _ = synthetic_digits(100, seed=4)
    np.testing.assert_array_equal(again.model.predict(x), loaded.model.predict(x))
    with pytest.raises(ModelError, match="already exists"):
        save_model(loaded.model, url, manifest={})
    save_model(loaded.model, url, manifest={"where": "again"}, overwrite=True)
    assert load_model(url).manifest["where"] == "again"
    # a changed byte is refused, and the message names the URL, not a temporary copy
    data = bytearray(fs.cat_file("/digitbatch-tests/models/m/" + MODEL_FILE))
    data[100] ^= 1
    fs.pipe_file("/digitbatch-tests/models/m/" + MODEL_FILE, bytes(data))
    with pytest.raises(ModelError, match=rf"model {url}: model.npz has SHA-256") as info:
        load_model(url)
    assert "digitbatch-fetch-" not in str(info.value)
    with pytest.raises(ModelError, match="does not exist: train one"):
        load_model("memory://digitbatch-tests/models/none")
    fs.rm("/digitbatch-tests", recursive=True)


def test_save_makes_missing_parents_and_logs(model_path, tmp_path, caplog):
    import logging

    loaded = load_model(model_path)
    out = tmp_path / "a" / "b" / "m"
    with caplog.at_level(logging.INFO, logger="digitbatch.modelio"):
        save_model(loaded.model, out, manifest={})
    assert load_model(out).sha256 == sha256_file(out / MODEL_FILE)
    assert f"saved model sgd to {out}" in caplog.messages


def test_a_failed_save_leaves_nothing_behind(model_path, tmp_path, monkeypatch):
    import digitbatch.modelio as modelio

    loaded = load_model(model_path)

    def broken(path):
        raise OSError("disk full")

    monkeypatch.setattr(modelio, "sha256_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_model(loaded.model, tmp_path / "m", manifest={})
    assert list(tmp_path.iterdir()) == []  # neither the model nor its temporary


def _linear(tmp_path, *, weights, intercept, classes, name="detect-2", binary_digit=2):
    from digitbatch import folding as FO
    from digitbatch.models import CompactModel

    head = FO.LinearPredictor(weights=weights, intercept=intercept, classes=np.asarray(classes))
    m = CompactModel(name=name, features="pixels", head=head, loss="log_loss",
                     binary_digit=binary_digit)
    return m, save_model(m, tmp_path / f"m-{weights.shape[1]}-{len(classes)}", manifest={})


def test_a_detector_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    m, p = _linear(tmp_path, weights=rng.normal(size=(784, 1)), intercept=np.zeros(1),
                   classes=[0, 1])
    loaded = load_model(p)
    assert loaded.model.binary_digit == 2 and loaded.model.n_classes == 2
    x, _ = synthetic_digits(60, seed=3)
    np.testing.assert_array_equal(loaded.model.predict(x), m.predict(x))


@pytest.mark.parametrize("outputs, classes, match", [
    (9, list(range(10)), "9 outputs for 10 classes: retrain it"),  # one column short
    (1, [0], "1 outputs for 1 classes: retrain it"),                # a single class
    (2, [0, 1, 2], "2 outputs for 3 classes"),
])
def test_outputs_must_fit_the_classes(tmp_path, outputs, classes, match):
    _, p = _linear(tmp_path, weights=np.ones((784, outputs)), intercept=np.zeros(outputs),
                   classes=classes, name="sgd", binary_digit=None)
    with pytest.raises(ModelError, match=match):
        load_model(p)


@pytest.mark.parametrize("key, match", [
    ("classes", r"classes \[0, 1, 2, 3, 4, 5, 6, 7, 8, 9\] differ from the manifest's None"),
    ("name", r"manifest or arrays incomplete \('name'\): retrain it"),
])
def test_manifest_without_a_field_is_refused(copy, key, match):
    m = _manifest(copy)
    del m[key]
    _write_manifest(copy, m)
    with pytest.raises(ModelError, match=match):
        load_model(copy)


def test_manifest_naming_an_unknown_model(copy):
    m = _manifest(copy)
    m["name"] = "no-such-model"
    _write_manifest(copy, m)
    with pytest.raises(ModelError, match="manifest names model 'no-such-model', which this "
                                         "digitbatch's catalogue does not have .*retrain it"):
        load_model(copy)


def test_manifest_classes_are_named_when_they_differ(copy):
    m = _manifest(copy)
    m["classes"] = list(range(1, 11))
    _write_manifest(copy, m)
    with pytest.raises(ModelError, match=r"differ from the manifest's \[1, 2, 3, 4, 5, 6, 7, 8, "
                                         r"9, 10\]: retrain it"):
        load_model(copy)


def test_manifest_without_params_loads_empty_params(copy):
    m = _manifest(copy)
    del m["params"]
    _write_manifest(copy, m)
    assert load_model(copy).model.params == {}


def _zip_members(p: Path, members: dict[str, bytes]) -> None:
    import zipfile

    with zipfile.ZipFile(p / MODEL_FILE, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    m = _manifest(p)
    m["model_sha256"] = sha256_file(p / MODEL_FILE)
    _write_manifest(p, m)


def _npy(a) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


@pytest.mark.parametrize("names, shown", [
    (["weights.npy", "schema.json"], "['schema.json']"),         # not an array
    (["weights.npy", "sub/intercept.npy"], "['sub/intercept.npy']"),  # in a folder
    (["weights.npy", "a\\b.npy"], "['a\\\\b.npy']"),               # a Windows path
    ([f"x{i}.txt" for i in range(7)], str([f"x{i}.txt" for i in range(5)])),  # first 5 named
])
def test_npz_members_other_than_plain_arrays_are_refused(copy, names, shown):
    _zip_members(copy, {n: _npy(np.zeros(3)) for n in names})
    with pytest.raises(ModelError) as info:
        load_model(copy)
    assert f"it holds {shown} (not .npy arrays): retrain it" in str(info.value)


def test_upload_is_logged(model_path, caplog):
    import logging

    import fsspec

    url = "memory://digitbatch-tests-log/m"
    with caplog.at_level(logging.INFO, logger="digitbatch.modelio"):
        save_model(load_model(model_path).model, url, manifest={})
    assert f"uploaded model sgd to {url}" in caplog.messages
    fsspec.filesystem("memory").rm("/digitbatch-tests-log", recursive=True)


def test_manifest_without_versions_or_model_file(copy):
    m = _manifest(copy)
    del m["model_file"]  # the default, model.npz
    _write_manifest(copy, m)
    assert load_model(copy).sha256 == m["model_sha256"]
    del m["versions"]
    _write_manifest(copy, m)
    with pytest.raises(ModelError, match="trained with scikit-learn None"):
        load_model(copy)


def test_errors_name_the_model_directory(copy):
    w, good = _weights_and_a_good_copy(copy)
    cases = [
        (lambda: _rewrite_npz(copy, weights=w * np.nan), "holds NaN"),          # _read_arrays
        (lambda: _rewrite_npz(copy, classes=np.arange(1, 11)), "differ from"),  # _check_shapes
        (lambda: _write_manifest(copy, {**_manifest(copy), "kind": "forest"}), "unsupported"),
    ]
    for damage, what in cases:
        shutil.rmtree(copy)
        shutil.copytree(good, copy)
        damage()
        with pytest.raises(ModelError, match=what) as info:
            load_model(copy)
        assert str(info.value).startswith(f"model {copy}: "), str(info.value)


def test_one_output_for_ten_classes_is_refused(tmp_path):
    _, p = _linear(tmp_path, weights=np.ones((784, 1)), intercept=np.zeros(1),
                   classes=list(range(10)), name="sgd", binary_digit=None)
    with pytest.raises(ModelError, match="1 outputs for 10 classes"):
        load_model(p)


def test_hash_with_letters_past_f_is_refused(copy):
    m = _manifest(copy)
    m["model_sha256"] = "X" * 64
    _write_manifest(copy, m)
    with pytest.raises(ModelError, match="model_sha256 'XXXX"):
        load_model(copy)


def test_manifest_that_is_not_an_object_is_named(copy):
    (copy / MANIFEST_FILE).write_text("[1, 2]")
    with pytest.raises(ModelError, match=r"manifest\.json holds list, not a manifest object"):
        load_model(copy)
