"""Save and load model artifacts safely, with a manifest.

An artifact is a directory::

    model/
      model.npz       the model's arrays (numpy .npz, loaded with allow_pickle=False)
      manifest.json   name, kind, parameters, classes, input shape, versions,
                      training store checksum, metrics, the test split's drift
                      reference profile (drift_reference: digitbatch.drift), and
                      model.npz's SHA-256

Loading executes no code from the files: the arrays are read without
pickle, the manifest is JSON, and the hash is checked before anything is
read. Pickle / joblib files are never loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import calibration as CAL
from . import pointer, storage
from .version import __version__
from .errors import ModelError, ModelPointerError, TrainingError
from .digits import IMAGE_SHAPE, N_CLASSES
from . import folding as FO
from .models import CompactModel, check_feature_arrays, get_spec
from .npycheck import MAX_MODEL_BYTES, check_array_sizes  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_PREPROCESSING = {
    "pixels": "pixels / 255 (folded into the weights)",
    "deskew": "moment deskew, then / 255 (folded into the weights)",
    "kernel": "moment deskew / 255 + HOG, PCA and Nystroem RBF (linear steps folded)",
    "patches": "moment deskew, learned 5x5 patch filters (features_filters, features_bias), "
               "soft threshold, pooling; PCA and Nystroem RBF (linear steps folded)",
}
# model.npz names of a feature step's own arrays (CompactModel.feature_arrays)
FEATURE_PREFIX = "features_"


def _preprocessing(model: CompactModel) -> str:
    if model.binary_digit is not None and model.features == "pixels":
        return "raw 0-255 pixels, as the walk-through's detector"
    if model.binary_digit is not None and model.features == "deskew":
        return "moment deskew, raw 0-255 scale"
    return _PREPROCESSING[model.features]
MODEL_FILE = "model.npz"
MANIFEST_FILE = "manifest.json"
# The largest manifest read: anything beyond is damage or an attack.
MAX_MANIFEST_BYTES = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _is_sha256(value) -> bool:
    """A SHA-256 as :func:`sha256_file` writes it: 64 lowercase hex digits."""
    return (isinstance(value, str) and len(value) == 64
            and all(c in "0123456789abcdef" for c in value))


@dataclass(frozen=True)
class LoadedModel:
    model: CompactModel
    manifest: dict
    path: Path
    via: Path | None = None  # the pointer (models/current) the model was reached through

    @property
    def sha256(self) -> str:
        return self.manifest["model_sha256"]


_HEADS = {"linear": FO.LinearPredictor, "kernel": FO.KernelPredictor}
_HEAD_SCALARS = ("kind", "gamma")


def _head_arrays(model: CompactModel) -> dict[str, np.ndarray]:
    out = {}
    for name, value in vars(model.head).items():
        if isinstance(value, np.ndarray):
            out[name] = value
    return out


def _head_meta(model: CompactModel) -> dict:
    meta = {"type": model.kind}
    for name in _HEAD_SCALARS:
        if hasattr(model.head, name):
            meta[name] = getattr(model.head, name)
    return meta


def _calibration_arrays(model: CompactModel) -> dict[str, np.ndarray]:
    """The calibration's parameter in model.npz (so the model's hash covers it); its
    method and held-out figures go in the manifest."""
    if model.calibration is None:
        return {}
    return {CAL.TEMPERATURE_ARRAY: np.asarray(float(model.calibration["temperature"]),
                                              np.float64)}


def _calibration(p: Path, manifest: dict, arrays: dict[str, np.ndarray]) -> dict | None:
    """A model's checked calibration, or None for a model trained before calibration."""
    params = manifest.get("calibration")
    temperature = arrays.get(CAL.TEMPERATURE_ARRAY)
    if params is None and temperature is None:
        return None
    try:
        t = CAL.check_params(params, temperature)
    except ValueError as exc:
        raise ModelError(f"model {p}: its calibration is damaged ({exc}): retrain it") from None
    return {**params, "temperature": t}


def sklearn_version() -> str:
    """The installed scikit-learn's version, without importing it (a slow
    import that a worker's first scoring task would pay)."""
    from importlib.metadata import version

    return version("scikit-learn")


def save_model(model: CompactModel, out: str | os.PathLike, *, manifest: dict,
               overwrite: bool = False) -> Path:
    """Write ``model`` and its manifest into directory ``out``, atomically.

    At a URL (``s3://bucket/models/m``) the directory is made locally and
    uploaded: ``model.npz`` first, the manifest last, so a model that is
    half uploaded has no manifest and does not load.
    """
    if storage.is_url(out):
        return _save_remote(model, str(out), manifest=manifest, overwrite=overwrite)
    out = Path(out)
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise ModelError(f"{out} already exists: choose another --out or pass --overwrite")
    if overwrite:
        storage.check_replaceable(out, "model")
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir(parents=True)
    try:
        with open(tmp / MODEL_FILE, "wb") as fh:
            np.savez(fh, **_head_arrays(model),
                     **{FEATURE_PREFIX + k: v for k, v in model.feature_arrays.items()},
                     **_calibration_arrays(model))
        full = {
            "format_version": FORMAT_VERSION,
            "name": model.name,
            "kind": model.kind,
            "features": model.features,
            "binary_digit": model.binary_digit,
            "loss": model.loss,
            "params": model.params,
            "head": _head_meta(model),
            "classes": [int(c) for c in model.classes],
            "input": {"shape": list(IMAGE_SHAPE), "dtype": "uint8",
                      "preprocessing": _preprocessing(model)},
            "versions": {"digitbatch": __version__, "scikit-learn": sklearn_version(),
                         "numpy": np.__version__},
            **manifest,
            "calibration": model.calibration,
            "model_file": MODEL_FILE,
            "model_sha256": sha256_file(tmp / MODEL_FILE),
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
        if out.exists() or out.is_symlink():
            if not overwrite:
                raise ModelError(f"{out} appeared while training: not overwriting it")
            storage.check_replaceable(out, "model")  # only a digitbatch model is replaced
            shutil.rmtree(out)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("saved model %s to %s", model.name, out)
    return out


def _save_remote(model: CompactModel, out: str, *, manifest: dict, overwrite: bool):
    dest = storage.to_path(out)
    if dest.exists():
        if not overwrite:
            raise ModelError(f"{out} already exists: choose another --out or pass --overwrite")
        storage.check_replaceable(dest, "model")
        storage.rmtree(dest)
    with tempfile.TemporaryDirectory(prefix="digitbatch-model-") as d:
        local = save_model(model, Path(d) / "model", manifest=manifest)
        for name in (MODEL_FILE, MANIFEST_FILE):
            dest.fs.put_file(str(local / name), (dest / name).path)
    log.info("uploaded model %s to %s", model.name, out)
    return dest


def manifest_path(model: str | os.PathLike) -> Path:
    """Where the manifest of the model directory ``model`` lies (a path or URL)."""
    return storage.to_path(model) / MANIFEST_FILE


def read_manifest(model: str | os.PathLike) -> dict:
    """The manifest of the model directory ``model``, as JSON, unchecked.

    For describing a model (report, job summaries); :func:`load_model`
    checks it before anything is used.
    """
    mpath = manifest_path(model)
    try:
        size = mpath.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise ModelError(f"{mpath} is {size:,} bytes, more than the {MAX_MANIFEST_BYTES:,} a "
                             f"digitbatch manifest may be: the artifact is damaged; retrain it")
        manifest = json.loads(mpath.read_text())
    except FileNotFoundError:
        raise ModelError(f"model {model} has no {MANIFEST_FILE}: is it a digitbatch model?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{mpath} is not valid JSON ({exc}): the artifact is damaged") from exc
    if not isinstance(manifest, dict):
        raise ModelError(f"{mpath} holds {type(manifest).__name__}, not a manifest object: "
                         f"the artifact is damaged")
    return manifest


def load_model(path: str | os.PathLike) -> LoadedModel:
    """Load an artifact after checking its format, versions and hash.

    A model at a URL is downloaded to a temporary directory and checked
    there, the same way. A models folder's pointer (``DIR/current``, or
    ``DIR``) is resolved once, here (:func:`digitbatch.pointer.resolve`): the
    model it names now is loaded, and ``via`` records the pointer.
    """
    target = pointer.resolve(path)
    if target.via is not None:
        loaded = _load(target.path)  # (resolved once: a pointer to a pointer is no model)
        if target.sha256 is not None and target.sha256 != loaded.sha256:
            raise ModelPointerError(f"{target.via} says model {target.path.name} has SHA-256 "
                             f"{target.sha256[:16]}..., its manifest says {loaded.sha256[:16]}...: "
                             f"the model in the models folder was replaced; promote it again")
        return LoadedModel(model=loaded.model, manifest=loaded.manifest, path=loaded.path,
                           via=target.via)
    return _load(path)


def _load(path: str | os.PathLike) -> LoadedModel:
    if storage.is_url(path):
        try:
            with storage.fetched(str(path)) as local:
                try:
                    loaded = _load(local)
                except ModelError as exc:  # name the URL, not the temporary copy
                    raise ModelError(str(exc).replace(str(local), str(path))) from None
        except FileNotFoundError:
            raise ModelError(f"model {path} does not exist: train one with `digitbatch train`") from None
        return LoadedModel(model=loaded.model, manifest=loaded.manifest,
                           path=storage.to_path(path))
    p = Path(path)
    if not p.exists():
        raise ModelError(f"model {p} does not exist: train one with `digitbatch train`")
    if not p.is_dir() and p.name in (MANIFEST_FILE, MODEL_FILE):
        raise ModelError(f"model {p} is one file of a model: give the model folder "
                         f"{str(p.parent)!r} (the --out of `digitbatch train`), not a file in it")
    if not p.is_dir():
        raise ModelError(
            f"model {p} is a file, not a digitbatch model directory; pickle/joblib files are "
            f"never loaded (they can run code): retrain with `digitbatch train`"
        )
    manifest = read_manifest(p)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ModelError(
            f"model {p} has format version {manifest.get('format_version')!r}; this digitbatch "
            f"reads {FORMAT_VERSION}: retrain it"
        )
    want_sk = manifest.get("versions", {}).get("scikit-learn")
    if want_sk != sklearn_version():
        raise ModelError(
            f"model {p} was trained with scikit-learn {want_sk}, this is {sklearn_version()}: "
            f"retrain it, or install scikit-learn=={want_sk}"
        )
    if manifest.get("model_file", MODEL_FILE) != MODEL_FILE:
        raise ModelError(
            f"model {p}: manifest names model file {manifest.get('model_file')!r}; only "
            f"{MODEL_FILE} inside the model directory is ever read")
    fpath = p / MODEL_FILE
    if fpath.is_symlink() or not fpath.is_file():
        raise ModelError(f"model {p}: {MODEL_FILE} is missing (or not a regular file)")
    want = manifest.get("model_sha256")
    if not _is_sha256(want):
        # a missing or malformed hash must not mean "nothing to check"
        raise ModelError(
            f"model {p}: {MANIFEST_FILE} has model_sha256 {want!r}, not a SHA-256 (64 hex "
            f"digits), so {MODEL_FILE} cannot be checked and is not loaded: retrain the model, "
            f"or restore its manifest.json")
    digest = sha256_file(fpath)
    if digest != want:
        raise ModelError(
            f"model {p}: {MODEL_FILE} has SHA-256 {digest[:16]}..., the manifest says "
            f"{str(manifest.get('model_sha256'))[:16]}...: the file was changed; retrain or restore it"
        )
    arrays = _read_arrays(p, fpath)
    model = _rebuild(p, manifest, arrays)
    return LoadedModel(model=model, manifest=manifest, path=p)


def _read_arrays(p: Path, fpath: Path) -> dict[str, np.ndarray]:
    """The numeric arrays of ``model.npz``; anything else in it is a named error.

    ``np.load`` hands back the raw bytes of a zip member that is not a
    ``.npy`` file (a skops ``schema.json``, say) instead of refusing it, and
    ``allow_pickle=False`` is what keeps object arrays out: both are checked
    here, before any value is used.
    """
    what = f"model {p}: {MODEL_FILE} is not a plain numpy archive"
    try:
        with zipfile.ZipFile(fpath) as zf:
            names = zf.namelist()
            bad = [n for n in names if not n.endswith(".npy") or "/" in n or "\\" in n]
            if bad:
                raise ModelError(f"{what}: it holds {bad[:5]} (not .npy arrays): retrain it")
            check_array_sizes(p, zf)
        with np.load(fpath, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        if isinstance(exc, ModelError):
            raise
        raise ModelError(f"{what} ({exc})") from exc
    for name, value in arrays.items():
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
            kind = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
            raise ModelError(f"{what}: array {name!r} is {kind}, not numbers: retrain it")
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise ModelError(f"model {p}: array {name!r} holds NaN or infinity: retrain it")
    return arrays


def _check_shapes(p: Path, manifest: dict, head) -> None:
    """Shapes that agree with each other and with the manifest, or a named error."""
    w, b, c = head.weights, head.intercept, head.classes
    if w.ndim != 2 or b.shape != (w.shape[1],) or c.ndim != 1:
        raise ModelError(f"model {p}: weights {w.shape}, intercept {b.shape} and classes "
                         f"{c.shape} do not fit together: retrain it")
    outputs = 1 if len(c) == 2 and w.shape[1] == 1 else len(c)
    if w.shape[1] != outputs or len(c) < 2:
        raise ModelError(f"model {p}: {w.shape[1]} outputs for {len(c)} classes: retrain it")
    if [int(v) for v in c] != list(manifest.get("classes", [])):
        raise ModelError(f"model {p}: classes {c.tolist()} differ from the manifest's "
                         f"{manifest.get('classes')}: retrain it")
    values = [int(v) for v in c]
    allowed = range(2) if manifest.get("binary_digit") is not None else range(N_CLASSES)
    if c.dtype.kind not in "iu" or values != sorted(set(values)) or \
            any(v not in allowed for v in values):
        raise ModelError(f"model {p}: classes {values} are not distinct digits "
                         f"{allowed[0]}-{allowed[-1]} in order (they index the confusion "
                         f"matrix): retrain the model on a store with labels 0-9")


def check_model_for_store(loaded: "LoadedModel | CompactModel", store) -> None:
    """Refuse to score ``store`` with a model that cannot count its labels.

    A multi-class model's classes must include every digit that labels rows
    of the store (its attributes' ``label_counts``, checked when the store
    was opened): a model trained on 0-2 only cannot fill a confusion matrix
    of a store labelled 0-9. A detector (``detect-D``) answers "D or not" for
    any label. Unlabelled stores fit every model. Scoring calls this once,
    after loading the model and opening the store and before any output is
    created; a :class:`ModelError` naming both and the missing digits
    otherwise.
    """
    model = loaded.model if isinstance(loaded, LoadedModel) else loaded
    where = getattr(loaded, "path", None) or model.name
    classes = [int(v) for v in model.classes]
    if model.binary_digit is not None:
        if classes != [0, 1]:
            raise ModelError(f"model {where}: detector classes {classes}, not [0, 1]: retrain it")
        return
    counts = list(store.meta.get("label_counts") or [])
    present = [d for d, k in enumerate(counts) if k]
    missing = [d for d in present if d not in classes]
    if missing:
        raise ModelError(
            f"model {where} was trained on digits {classes} but store {store.path} has rows "
            f"labelled {missing} too ({sum(counts[d] for d in missing):,} rows): its confusion "
            f"matrix cannot count them. Score with a model trained on every digit of the store "
            f"(digitbatch train on a store with labels {present}), or a store of those digits")


def _rebuild(p: Path, manifest: dict, arrays: dict[str, np.ndarray]) -> CompactModel:
    """A CompactModel from checked arrays and manifest, or a named error."""
    head_meta = manifest.get("head") or {}
    cls = _HEADS.get(head_meta.get("type"))
    if cls is None or manifest.get("kind") != head_meta.get("type"):
        raise ModelError(f"model {p}: unsupported model kind {manifest.get('kind')!r}")
    try:
        spec = get_spec(manifest["name"])
    except TrainingError as exc:
        raise ModelError(f"model {p}: manifest names model {manifest.get('name')!r}, which this "
                         f"digitbatch's catalogue does not have ({exc}): retrain it") from None
    except KeyError as exc:
        raise ModelError(f"model {p}: manifest or arrays incomplete ({exc}): retrain it") from exc
    try:
        fields = {f: arrays.get(f) for f in cls.__dataclass_fields__ if f not in _HEAD_SCALARS}
        missing = [f for f, v in fields.items()
                   if v is None and f not in ("projection", "offset")]
        if missing:
            raise ModelError(f"model {p}: {MODEL_FILE} lacks arrays {missing}")
        scalars = {f: head_meta[f] for f in _HEAD_SCALARS if f in cls.__dataclass_fields__}
        head = cls(**fields, **scalars)
        model = CompactModel(name=manifest["name"], features=manifest["features"], head=head,
                             loss=manifest["loss"], binary_digit=spec.binary_digit,
                             params=manifest.get("params", {}),
                             feature_arrays={k[len(FEATURE_PREFIX):]: v for k, v in arrays.items()
                                             if k.startswith(FEATURE_PREFIX)},
                             calibration=_calibration(p, manifest, arrays))
    except (KeyError, TypeError) as exc:
        raise ModelError(f"model {p}: manifest or arrays incomplete ({exc}): retrain it") from exc
    _check_shapes(p, manifest, head)
    n_in = head.weights.shape[0] if cls is FO.LinearPredictor else head.landmarks.shape[0]
    if cls is FO.LinearPredictor and n_in != int(np.prod(IMAGE_SHAPE)):
        raise ModelError(f"model {p}: weights {head.weights.shape} do not take 28x28 images")
    if cls is FO.KernelPredictor and n_in != head.weights.shape[0]:
        raise ModelError(f"model {p}: {n_in} landmarks but weights {head.weights.shape}")
    try:
        check_feature_arrays(model)
    except ValueError as exc:
        raise ModelError(f"model {p}: its feature step does not fit its arrays ({exc}): "
                         f"retrain it") from None
    return model
