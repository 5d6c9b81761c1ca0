"""Metadata that lies about sizes and labels: refused by name before anything is allocated.

===================== ============================================================ ==================
kind                  trials                                                       named error
===================== ============================================================ ==================
npy-huge-header       model.npz arrays whose .npy header claims hundreds of GiB,   ``ModelError``
                      2 GiB (past the cap) or twice what the member holds, stored
                      and deflated; a .npy header numpy cannot read
manifest-oversized    a 2 MiB manifest.json; a manifest that is a JSON list        ``ModelError``
model-classes         an 11-class model (class 12); classes out of order; a        ``ModelError``
                      detector with classes [0, 2]
store-absurd-n        N = 1e11, 1e12 (past the limit), N three chunks too many,    ``StoreError``
                      N shrunk below its chunks, chunk length 2^30
store-label-counts    11 counts; a negative count; counts that do not sum          ``StoreError``
store-bad-labels      label values 12 and -5 written into a chunk: read, train     ``StoreError`` /
                                                                                   ``TrainingError``
model-vs-store        a model of digits 0-2 against a 0-9 store; detector and      ``ModelError``
                      unlabelled store accepted
===================== ============================================================ ==================

Every refused case leaves the folder as it was (no model, no output, no
temporary file).
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import zarr

from digitbatch.errors import DigitbatchError, ModelError, StoreError, TrainingError
from digitbatch.layout import check_labels, open_store
from digitbatch.modelio import check_model_for_store, load_model
from digitbatch.training import train

from ..conftest import synthetic_digits, write_idx
from .snapshots import assert_unchanged, tree


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A 1,000-image store (chunks 256 x 3 + 232) and an sgd model trained on it."""
    from digitbatch.ingestion import ingest

    tmp = tmp_path_factory.mktemp("metadata")
    x, y = synthetic_digits(1000, seed=3)
    write_idx(tmp / "idx", x[:800], y[:800])
    write_idx(tmp / "idx", x[800:], y[800:], prefix="t10k")
    ingest(tmp / "idx", tmp / "s.zarr", chunk_size=256, scheduler="synchronous")
    train(tmp / "s.zarr", tmp / "model", seed=0, scheduler="synchronous")
    return tmp


@pytest.fixture
def model(base, tmp_path) -> Path:
    shutil.copytree(base / "model", tmp_path / "model")
    return tmp_path / "model"


@pytest.fixture
def store(base, tmp_path) -> Path:
    shutil.copytree(base / "s.zarr", tmp_path / "s.zarr")
    return tmp_path / "s.zarr"


# --- model files ------------------------------------------------------------------------


def _npy(shape, dtype="<f8", payload: bytes = b"\0" * 64) -> bytes:
    """A .npy file whose header claims ``shape`` over ``payload``."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": dtype, "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue() + payload


def _put_npz(model: Path, members: dict[str, bytes], method=zipfile.ZIP_STORED) -> None:
    """Replace model.npz by ``members`` (name -> .npy bytes) and make the manifest's hash match."""
    with np.load(model / "model.npz") as z:
        arrays = {k: z[k] for k in z.files}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, arr in arrays.items():
            if f"{name}.npy" not in members:
                b = io.BytesIO()
                np.save(b, arr)
                zf.writestr(f"{name}.npy", b.getvalue())
        for name, data in members.items():
            zf.writestr(name, data)
    blob = buf.getvalue()
    (model / "model.npz").write_bytes(blob)
    m = json.loads((model / "manifest.json").read_text())
    m["model_sha256"] = hashlib.sha256(blob).hexdigest()
    (model / "manifest.json").write_text(json.dumps(m))


def _arrays(model: Path) -> dict[str, np.ndarray]:
    with np.load(model / "model.npz") as z:
        return {k: z[k] for k in z.files}


def _save_arrays(model: Path, manifest_classes=None, **arrays) -> None:
    members = {}
    for name, arr in arrays.items():
        b = io.BytesIO()
        np.save(b, arr)
        members[f"{name}.npy"] = b.getvalue()
    _put_npz(model, members)
    if manifest_classes is not None:
        m = json.loads((model / "manifest.json").read_text())
        m["classes"] = manifest_classes
        (model / "manifest.json").write_text(json.dumps(m))


NPY_CASES = {
    # name: (members, method, message)
    "hundreds-of-gib": ({"weights.npy": _npy((400_000, 100_000))}, zipfile.ZIP_STORED,
                        "declares shape .*beyond the"),
    "past-the-cap": ({"weights.npy": _npy((1 << 28,))}, zipfile.ZIP_STORED, "beyond the"),
    "twice-what-it-holds": ({"weights.npy": _npy((784, 20), payload=b"\0" * (784 * 10 * 8))},
                            zipfile.ZIP_STORED, r"declares shape \(784, 20\).*but holds"),
    "deflated-huge": ({"weights.npy": _npy((400_000, 100_000))}, zipfile.ZIP_DEFLATED,
                      "declares shape"),
    "deflated-short": ({"intercept.npy": _npy((1000,), payload=b"\0" * 80)},
                       zipfile.ZIP_DEFLATED, "but holds 80 bytes"),
    "object-dtype-header": ({"weights.npy": _npy((3,), dtype="|O")}, zipfile.ZIP_STORED,
                            "not numbers"),
    "unreadable-header": ({"weights.npy": b"\x93NUMPY\x01\x00\x08\x00{'descr'"},
                          zipfile.ZIP_STORED, "header numpy cannot read"),
}


@pytest.mark.parametrize("case", list(NPY_CASES), ids=lambda c: f"npy-{c}")
def test_npy_header_lies_are_refused_before_allocating(case, model, tmp_path):
    members, method, message = NPY_CASES[case]
    _put_npz(model, members, method)
    before = tree(tmp_path)
    with pytest.raises(ModelError, match=message):
        load_model(model)
    assert_unchanged(before, tmp_path)


def test_npy_huge_header_in_a_subprocess_stays_small(model, tmp_path):
    """The CLI path: a named error and exit 1, in a process whose peak RSS stays small."""
    _put_npz(model, {"weights.npy": _npy((400_000, 100_000))})
    # (peak RSS from VmHWM: ru_maxrss keeps the forking pytest process's)
    code = ("import sys\n"
            "from digitbatch.modelio import load_model\n"
            "from digitbatch.errors import ModelError\n"
            "try:\n    load_model(sys.argv[1])\nexcept ModelError as e:\n"
            "    print('refused:', e)\n"
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
            "print('rss_mb', int(hwm.split()[1]) / 1024)\n")
    r = subprocess.run([sys.executable, "-c", code, str(model)], capture_output=True, text=True,
                       timeout=120)
    assert "refused:" in r.stdout and "declares shape" in r.stdout, r.stdout + r.stderr
    assert float(r.stdout.split("rss_mb")[-1]) < 400


def test_oversized_and_non_object_manifests_are_refused(model):
    m = json.loads((model / "manifest.json").read_text())
    (model / "manifest.json").write_text(json.dumps({**m, "padding": "x" * (2 << 20)}))
    with pytest.raises(ModelError, match="more than the .* a digitbatch manifest may be"):
        load_model(model)
    (model / "manifest.json").write_text(json.dumps([m]))
    with pytest.raises(ModelError, match="holds list, not a manifest object"):
        load_model(model)


def test_model_classes_must_be_distinct_digits(model):
    a = _arrays(model)
    w, b, c = a["weights"], a["intercept"], a["classes"]
    _save_arrays(model, manifest_classes=[*range(10), 12], weights=np.hstack([w, w[:, :1]]),
                 intercept=np.append(b, b[0]), classes=np.append(c, 12).astype(c.dtype))
    with pytest.raises(ModelError, match=r"classes \[0, 1, .*12\] are not distinct digits 0-9"):
        load_model(model)
    _save_arrays(model, manifest_classes=[1, 0, *range(2, 10)], weights=w, intercept=b,
                 classes=np.array([1, 0, *range(2, 10)], c.dtype))
    with pytest.raises(ModelError, match="not distinct digits 0-9 in order"):
        load_model(model)


# --- stores whose metadata lies ------------------------------------------------------------


def _edit_json(path: Path, fn) -> None:
    meta = json.loads(path.read_text())
    fn(meta)
    path.write_text(json.dumps(meta))


def _set_n(store: Path, n: int, chunk: int | None = None) -> None:
    """Claim ``n`` rows (and chunks of ``chunk``) in every array and the attributes."""
    for name in ("images", "labels", "keys"):
        def edit(m):
            m["shape"][0] = n
            if chunk is not None:
                m["chunk_grid"]["configuration"]["chunk_shape"][0] = chunk
        _edit_json(store / name / "zarr.json", edit)

    def attrs(m):
        a = m["attributes"]["digitbatch"]
        a["n_images"] = n
        a["splits"] = {k: [min(s, n), min(e, n)] for k, (s, e) in a["splits"].items()}
        a["n_labeled"] = sum(a["label_counts"])
    _edit_json(store / "zarr.json", attrs)


ABSURD_N = {
    "n-1e11": (dict(n=10**11), "claims 100,000,000,000 images, more than the 10,000,000,000"),
    "n-1e9": (dict(n=10**9), r"claims 1,000,000,000 rows \(3,906,250 chunks of 256\) "
                             r"but images has 4 chunks"),
    "n-three-chunks-more": (dict(n=1000 + 3 * 256), "chunk 4 of .*images is missing"),
    "n-shrunk": (dict(n=300), "images has chunk 2 beyond its 300 rows"),
    "chunk-2^30": (dict(n=1000, chunk=1 << 30), "chunks of 1,073,741,824 rows"),
}


@pytest.mark.parametrize("case", list(ABSURD_N), ids=lambda c: f"store-{c}")
def test_store_claiming_rows_it_does_not_have_is_refused_when_opened(case, store, model,
                                                                     tmp_path):
    kw, message = ABSURD_N[case]
    _set_n(store, **kw)
    before = tree(tmp_path)
    with pytest.raises(StoreError, match=message):
        open_store(store)
    with pytest.raises(StoreError, match=message):
        train(store, tmp_path / "m2", scheduler="synchronous")
    assert_unchanged(before, tmp_path)


def test_store_n_1e9_is_refused_by_score_without_planning_tasks(store, model, tmp_path):
    from digitbatch.scoring.api import score

    _set_n(store, 10**9)
    before = tree(tmp_path)
    with pytest.raises(StoreError, match="claims 1,000,000,000 rows"):
        score(store, model=model, out=tmp_path / "p.zarr", scheduler="synchronous")
    assert_unchanged(before, tmp_path)


LABEL_COUNTS = {
    "eleven-counts": (lambda a: a["label_counts"].append(0)),
    "negative-count": (lambda a: a["label_counts"].__setitem__(0, -5)),
    "sum-mismatch": (lambda a: a.__setitem__("n_labeled", a["n_labeled"] + 7)),
    "not-a-list": (lambda a: a.__setitem__("label_counts", "lots")),
}


@pytest.mark.parametrize("case", list(LABEL_COUNTS), ids=lambda c: f"label-counts-{c}")
def test_store_label_counts_are_checked_when_opened(case, store):
    _edit_json(store / "zarr.json", lambda m: LABEL_COUNTS[case](m["attributes"]["digitbatch"]))
    with pytest.raises(StoreError, match="count labels .* re-ingest it"):
        open_store(store)


def _poison_labels(store: Path, values=(12, -5)) -> None:
    arr = zarr.open_array(str(store / "labels"), mode="r+", config={"write_empty_chunks": True})
    for i, v in enumerate(values):
        arr[300 + i] = v  # chunk 1, a train row


def test_store_labels_outside_0_9_are_refused_as_read(store):
    _poison_labels(store)
    s = open_store(store)  # the attributes still look right: the values are checked as read
    with pytest.raises(StoreError, match=r"labels \[-5, 12\] are not digits 0-9"):
        s.read()
    with pytest.raises(StoreError, match=r"rows 256-300: labels \[12\] are not"):
        s.column("labels", slice(256, 301))
    assert s.column("labels", slice(0, 256)).shape == (256,)


@pytest.mark.parametrize("incremental", [False, True], ids=["in-memory", "incremental"])
def test_train_refuses_labels_outside_0_9(store, tmp_path, incremental):
    _poison_labels(store)
    before = tree(tmp_path)
    with pytest.raises((StoreError, TrainingError), match=r"12\]? .*not digits 0-9"):
        train(store, tmp_path / "m2", incremental=incremental, scheduler="synchronous")
    assert_unchanged(before, tmp_path)


def test_train_check_classes_names_the_label():
    from digitbatch.training import check_classes

    check_classes(np.arange(10), "s.zarr")
    with pytest.raises(TrainingError, match=r"training labels \[12, -5\], not digits 0-9"):
        check_classes(np.array([0, 12, -5]), "s.zarr")


def test_check_labels_against_a_models_classes():
    labels = np.array([0, 1, -1, 2, 7], np.int8)
    check_labels(labels, where="x")
    with pytest.raises(StoreError, match=r"x: labels \[7\] are not among the model's classes"):
        check_labels(labels, where="x", classes=[0, 1, 2])
    with pytest.raises(StoreError, match="not integers"):
        check_labels(np.array([0.5]), where="x")


# --- a model against a store ----------------------------------------------------------------


@pytest.fixture(scope="module")
def subset_model(tmp_path_factory) -> Path:
    """An sgd model trained on digits 0-2 only."""
    from digitbatch.ingestion import ingest

    tmp = tmp_path_factory.mktemp("subset")
    x, y = synthetic_digits(900, seed=5)
    keep = y <= 2
    write_idx(tmp / "idx", x[keep], y[keep])
    ingest(tmp / "idx", tmp / "s.zarr", chunk_size=256, scheduler="synchronous")
    train(tmp / "s.zarr", tmp / "m", seed=0, scheduler="synchronous")
    return tmp / "m"


def test_model_of_fewer_digits_than_the_store_is_refused(subset_model, base):
    loaded = load_model(subset_model)
    assert loaded.model.classes.tolist() == [0, 1, 2]
    with pytest.raises(ModelError, match=r"trained on digits \[0, 1, 2\] but store .* has rows "
                                         r"labelled \[3, 4, 5, 6, 7, 8, 9\]"):
        check_model_for_store(loaded, open_store(base / "s.zarr"))
    check_model_for_store(load_model(base / "model"), open_store(base / "s.zarr"))


def test_detector_and_unlabelled_store_fit_any_model(subset_model, base, tmp_path):
    from digitbatch.layout import StoreWriter

    x, _ = synthetic_digits(300, seed=9)
    with StoreWriter(tmp_path / "u.zarr", source={"kind": "test"}, chunk_size=256) as w:
        w.append(x, np.full(300, -1, np.int8), [f"u{i}" for i in range(300)])
        w.finish()
    check_model_for_store(load_model(subset_model), open_store(tmp_path / "u.zarr"))
    det = train(base / "s.zarr", tmp_path / "det", model="detect-2", scheduler="synchronous")
    check_model_for_store(load_model(det.model_path), open_store(base / "s.zarr"))


def test_scoring_a_store_with_a_model_of_fewer_digits_is_a_named_error(subset_model, base,
                                                                        tmp_path):
    from digitbatch.scoring.api import score

    before = tree(tmp_path)
    with pytest.raises(DigitbatchError, match="trained on digits"):
        score(base / "s.zarr", model=subset_model, out=tmp_path / "p.zarr",
              scheduler="synchronous")
    assert_unchanged(before, tmp_path)


def test_scoring_a_store_with_labels_outside_0_9_is_a_named_error(store, model, tmp_path):
    from digitbatch.scoring.api import score

    _poison_labels(store)
    with pytest.raises(StoreError, match="not digits 0-9"):
        score(store, model=model, out=tmp_path / "p.zarr", scheduler="synchronous")
    assert not (tmp_path / "p.zarr" / "_SUCCESS").exists()


def test_npy_header_reader_matches_numpy_on_real_models(base):
    """The size check reads exactly what numpy writes: every member of a real model passes."""
    from digitbatch.modelio import check_array_sizes

    with zipfile.ZipFile(base / "model" / "model.npz") as zf:
        sizes = check_array_sizes(base / "model", zf)
    arrays = _arrays(base / "model")
    assert sizes == {k: v.nbytes for k, v in arrays.items()}
    with zipfile.ZipFile(base / "model" / "model.npz") as zf:
        with pytest.raises(ModelError, match="beyond the 1,000 bytes"):
            check_array_sizes(base / "model", zf, max_bytes=1000)
