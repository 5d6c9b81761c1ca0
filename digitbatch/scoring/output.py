"""PRED.zarr, the scoring output: its arrays, staging, commit records, metrics and markers.

This module is the only one that reads or writes an output's files::

    PRED.zarr/
      pred     (N,) int8, fill -1 (not a label): rows of uncommitted chunks read -1
      margin   (N,) float32: top-1 minus top-2 probability (decision value for
               models without probabilities), for finding doubtful images
      gap      (N,) float32: top-1 minus top-2 (calibrated) decision value: orders
               rows whose margins tie (both probabilities round to 1)
      second   (N,) int8, fill -1: the runner-up class
      proba    (N, k) float32, only with --proba
      keys     (N,) string, copied from the input
      labels   (N,) int8, archive inputs only (a store holds its own)
      _staging/                    archive inputs: one row per member slot (see below)
      _commits/chunk-000012.json   one per chunk, written (atomically) only after
               the chunk's rows are completely written: its counts live here
      metrics.json, _SUCCESS       written last, from the commit records
      .lock                        while a run writes: its lease (digitbatch.scoring.lock)

A chunk's rows are deterministic, so a retried or resumed task rewrites the
same bytes; a chunk counts once because its commit record has one name.
:func:`open_predictions` refuses an output without ``_SUCCESS`` or with a
missing commit, so rows never written are never read as predictions.

An archive is scored into ``_staging/`` first: one row per member slot,
with a ``valid`` flag (rejected members stay unset). When every slot chunk
is committed, :func:`compact` copies the valid rows, in order, into the
output arrays, so the result equals ingest-then-score row for row; the
staging group is then removed. A run killed while compacting compacts again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import storage
from ..chunkio import read_rows, read_strings, stored
from ..digits import UNKNOWN_LABEL
from ..errors import IncompleteOutputError, NotAnOutputError, ScoreError, StoreError
from ..layout import COMPRESSORS, chunk_bounds, write_span
from .handles import forget_handles, open_array_cached
from .lock import LOCK, check_owner

log = logging.getLogger(__name__)

PRED_FILL = -1
COMMITS = "_commits"
SUCCESS = "_SUCCESS"
METRICS = "metrics.json"
STAGING = "_staging"
ATTRS_KEY = "digitbatch_predictions"
# 2: the gap and second arrays (an output of version 1 still opens: it has neither)
OUTPUT_VERSION = 2
# the per-row arrays of a run's chunks beside pred and margin (version 2 on)
EXTRA_ARRAYS = (("gap", "float32", np.nan), ("second", "int8", PRED_FILL))


@dataclass(frozen=True)
class OutputSpec:
    """What a run writes; a resumed run must match it exactly."""

    n: int
    chunk_size: int
    n_classes: int
    proba: bool
    model_sha256: str
    input_checksum: str
    # An archive's members per slot chunk, when not chunk_size (commit records
    # count slot chunks; outputs written before slots could be smaller have
    # no such key, and a run cutting slots differently cannot resume them).
    slot_size: int | None = None
    # An archive's first slot chunk, when it holds fewer members than the
    # others (outputs written before that have no such key, and cannot be
    # resumed by a run that cuts them so).
    first_slot: int | None = None

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        if d["slot_size"] in (None, self.chunk_size):
            del d["slot_size"]
        if d["first_slot"] is None:
            del d["first_slot"]
        return d


def create_output(out: Path, spec: OutputSpec, *, arrays: bool = True,
                  partial_ok: bool = False) -> None:
    """Create a new output (its directory already holds only the lock).

    ``arrays=False`` (archive inputs) leaves the arrays to compaction.
    ``partial_ok``: the output may be a creation that was killed before its
    spec attribute (written last) landed; no chunk can have been committed to
    it, so its arrays are made afresh.
    """
    out = storage.to_path(out)
    g = storage.open_group(out, mode="a")
    if ATTRS_KEY in g.attrs or ("pred" in g and not partial_ok):
        raise ScoreError(f"{out} already holds predictions: pass --resume to continue it")
    if partial_ok and committed(out):
        raise ScoreError(f"{out} has commit records but no output settings: it is damaged; "
                         f"score into a new --out")
    for name in ("pred", "margin", "proba", "keys", *(e[0] for e in EXTRA_ARRAYS)):
        if name in g:
            del g[name]
    storage.mkdir(out / COMMITS)
    if not arrays:
        g.attrs[ATTRS_KEY] = {"version": OUTPUT_VERSION, **spec.to_dict()}
        return
    c = spec.chunk_size
    g.create_array("pred", shape=(spec.n,), chunks=(c,), dtype="int8", fill_value=PRED_FILL,
                   compressors=COMPRESSORS)
    g.create_array("margin", shape=(spec.n,), chunks=(c,), dtype="float32",
                   fill_value=np.nan, compressors=COMPRESSORS)
    for name, dtype, fill in EXTRA_ARRAYS:
        g.create_array(name, shape=(spec.n,), chunks=(c,), dtype=dtype, fill_value=fill,
                       compressors=COMPRESSORS)
    if spec.proba:
        g.create_array("proba", shape=(spec.n, spec.n_classes), chunks=(c, spec.n_classes),
                       dtype="float32", fill_value=np.nan, compressors=COMPRESSORS)
    g.create_array("keys", shape=(spec.n,), chunks=(c,), dtype=str,
                   config={"write_empty_chunks": True})
    storage.mkdir(out / COMMITS)
    g.attrs[ATTRS_KEY] = {"version": OUTPUT_VERSION, **spec.to_dict()}


def started_with(out: Path) -> str | None:
    """The model SHA-256 an existing output was started with (None: unknown)."""
    with contextlib.suppress(Exception):
        return (storage.open_group(out, mode="r").attrs.get(ATTRS_KEY) or {}).get("model_sha256")
    return None


def check_resume(out: Path, spec: OutputSpec) -> None:
    """A resumed output must come from the same model, input and options."""
    try:
        have = dict(storage.open_group(out, mode="r").attrs.get(ATTRS_KEY) or {})
    except Exception as exc:
        raise ScoreError(f"cannot resume {out}: it is not a digitbatch output ({exc})") from exc
    want = {"version": OUTPUT_VERSION, **spec.to_dict()}
    keys = list(want) + [k for k in have if k not in want]  # (a slot_size only one side has)
    diff = {k: (have.get(k), want.get(k)) for k in keys if have.get(k) != want.get(k)}
    if diff:
        detail = "; ".join(f"{k}: output has {a!r}, this run {b!r}" for k, (a, b) in diff.items())
        raise ScoreError(f"cannot resume {out} with different settings ({detail}): "
                         f"score into a new --out")


def commit_path(out: Path, i: int) -> Path:
    return storage.to_path(out) / COMMITS / f"chunk-{i:06d}.json"


def committed(out: Path) -> dict[int, dict]:
    """The commit records present: chunk index -> counts."""
    d = storage.to_path(out) / COMMITS
    records = {}
    for name in storage.listdir(d):
        if not (name.startswith("chunk-") and name.endswith(".json")):
            continue
        p = d / name
        try:
            records[int(p.stem.split("-")[1])] = json.loads(p.read_text())
        except (ValueError, json.JSONDecodeError) as exc:
            raise ScoreError(f"commit record {p} is damaged ({exc}): delete it and --resume") from exc
    return records


def write_chunk(out_path: str, i: int, start: int, stop: int, *, pred: np.ndarray,
                margin: np.ndarray, proba: np.ndarray | None, keys: np.ndarray | None,
                counts: dict, prefix: str = "", lease: str | None = None,
                gap: np.ndarray | None = None, second: np.ndarray | None = None,
                offset: int = 0) -> None:
    """Write one chunk's rows (arrays under ``prefix``), then (only then) its commit record.

    The rows go to ``[start + offset, stop + offset)`` of the arrays (an
    archive's staging layout); the record names ``[start, stop)``.

    ``lease``: the token of the run's lock, checked just before the commit
    (:func:`digitbatch.scoring.lock.check_owner`): a run that lost its
    lease to another commits nothing more.
    """
    a, b = start + offset, stop + offset
    for name, rows in (("pred", pred), ("margin", margin), ("proba", proba), ("keys", keys),
                       ("gap", gap), ("second", second)):
        if rows is None:  # (keys None: the caller copied the keys chunk already)
            continue
        write_span(open_array_cached(out_path, prefix + name), a, b, rows)
    record = {"chunk": i, "start": start, "stop": stop,
              **{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in counts.items()}}
    check_owner(out_path, lease)
    storage.write_atomic(commit_path(out_path, i), json.dumps(record))


def finalize(out: Path, metrics: dict) -> None:
    """metrics.json, then _SUCCESS (with the same metrics): the last writes of a run."""
    text = json.dumps(metrics, indent=2) + "\n"
    storage.write_atomic(out / METRICS, text)
    storage.write_atomic(out / SUCCESS, text)


def clear_output(out: Path) -> int:
    """Remove everything of an output but its lock (the caller holds it): an
    overwrite. Returns the entries removed."""
    out = storage.to_path(out)
    n = 0
    for name in storage.listdir(out):
        if name == LOCK or name.startswith(LOCK + "."):
            continue
        p = out / name
        if storage.is_local(out) and p.is_file() and not p.is_symlink():
            p.unlink()
        elif storage.is_local(out) and p.is_symlink():
            p.unlink()
        else:
            storage.rmtree(p)
            if not storage.is_local(out):
                with contextlib.suppress(FileNotFoundError):
                    p.fs.rm_file(p.path)
        n += 1
    forget_handles()
    return n


def metrics_path(out: Path) -> Path:
    """Where an output's metrics.json lies."""
    return storage.to_path(out) / METRICS


def is_output(path: Path) -> bool:
    """Whether ``path`` is a digitbatch scoring output (complete or not)."""
    try:
        meta = json.loads((storage.to_path(path) / "zarr.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and ATTRS_KEY in (meta.get("attributes") or {})


def is_complete(out: Path) -> bool:
    """Whether the run into ``out`` finished (its ``_SUCCESS`` marker exists)."""
    return (storage.to_path(out) / SUCCESS).exists()


def open_metrics(out: Path) -> dict:
    """The metrics of a finished output (as its ``_SUCCESS`` marker holds them)."""
    return json.loads((storage.to_path(out) / SUCCESS).read_text())


def has_spec(out: Path) -> bool:
    """Whether ``out`` is an output whose settings were written (see :func:`create_output`)."""
    out = storage.to_path(out)
    return (out / "zarr.json").exists() and ATTRS_KEY in storage.open_group(out, mode="r").attrs


def sweep_temporaries(out: Path) -> int:
    """Remove the temporary files of writers killed before their rename.

    A chunk file or commit record is written to ``.NAME.tmp-ID`` and renamed;
    a worker killed in between leaves the temporary behind (the rerun task
    writes its own). Called when every chunk is committed, so no writer of
    this run is left.
    """
    n = 0
    if not storage.is_local(storage.to_path(out)):
        return 0  # object stores publish each object whole: no temporaries
    for p in Path(out).rglob(".*.tmp-*"):
        if p.is_file():
            p.unlink(missing_ok=True)
            n += 1
    if n:
        log.info("removed %d temporary files left by killed workers in %s", n, out)
    return n


# --- archive inputs: staging and compaction -------------------------------------------


def create_staging(out: Path, *, n: int, chunk_size: int, n_classes: int, proba: bool) -> None:
    """The staging arrays of an archive input: one row per member slot."""
    g = storage.open_group(out, mode="a")
    st = g.require_group(STAGING)
    c = chunk_size
    for name, dtype, fill in (("pred", "int8", PRED_FILL), ("margin", "float32", np.nan),
                              ("valid", "int8", 0), ("labels", "int8", UNKNOWN_LABEL),
                              *EXTRA_ARRAYS):
        if name not in st:
            st.create_array(name, shape=(n,), chunks=(c,), dtype=dtype, fill_value=fill,
                            compressors=COMPRESSORS)
    if proba and "proba" not in st:
        st.create_array("proba", shape=(n, n_classes), chunks=(c, n_classes), dtype="float32",
                        fill_value=np.nan, compressors=COMPRESSORS)
    if "keys" not in st:
        st.create_array("keys", shape=(n,), chunks=(c,), dtype=str)


def write_slots(out_path: str, i: int, start: int, *, valid: np.ndarray, labels: np.ndarray,
                pred: np.ndarray, margin: np.ndarray, proba: np.ndarray | None,
                keys: np.ndarray, counts: dict, lease: str | None = None,
                gap: np.ndarray | None = None, second: np.ndarray | None = None,
                offset: int = 0) -> None:
    """Write one archive slot chunk (members ``start...``) into staging, then (only then) commit it.

    Member ``m`` is staging row ``m + offset`` (the plan's layout,
    :func:`digitbatch.scoring.plan.slot_layout`); rows no member fills stay
    invalid, and :func:`compact` skips them.
    """
    n = valid.shape[0]
    for name, rows in (("valid", valid.astype(np.int8)), ("labels", labels)):
        write_span(open_array_cached(out_path, f"{STAGING}/{name}"), start + offset,
                    start + offset + n, rows)
    write_chunk(out_path, i, start, start + n, pred=pred, margin=margin, proba=proba, keys=keys,
                counts=counts, prefix=f"{STAGING}/", lease=lease, gap=gap, second=second,
                offset=offset)


def compact(out: Path, *, chunk_size: int, n_classes: int, proba: bool) -> int:
    """Copy the valid staging rows, in order, into the output arrays; drop staging.

    The ``valid`` flags are read first (a byte a slot), so each output array
    is made at its final size and written one whole chunk at a time: no
    resize, no chunk written twice. Staging chunks are read, and output
    chunks written, a chunk at a time straight from and to their stored
    bytes (:mod:`digitbatch.chunkio`: zarr's own path costs milliseconds a
    call, and compaction runs after the last chunk, with the workers idle).
    """
    g = storage.open_group(out, mode="r+")
    st = g[STAGING]
    valid = st["valid"]
    names = ["pred", "margin", "keys", "labels"] + [e[0] for e in EXTRA_ARRAYS
                                                    if e[0] in st] + (["proba"] if proba else [])
    c = chunk_size
    try:
        keeps = [_staged_rows(valid, k).astype(bool) for k in range(_n_chunks(valid))]
    except StoreError as exc:
        raise _damaged_staging(out, exc) from exc
    total = sum(int(np.count_nonzero(k)) for k in keeps)
    for name in names:
        if name in g:
            del g[name]
    copies = []
    for name in names:
        src = st[name]
        kw = {"dtype": str} if name == "keys" else {
            "dtype": src.dtype, "fill_value": src.fill_value, "compressors": COMPRESSORS}
        dst = g.create_array(name, shape=(total, n_classes) if name == "proba" else (total,),
                             chunks=(c, n_classes) if name == "proba" else (c,), **kw)
        copies.append((src, dst))
    for src, dst in copies:
        try:
            _copy_valid(src, dst, keeps, c)
        except StoreError as exc:
            raise _damaged_staging(out, exc) from exc
    del g[STAGING]
    storage.rmtree(storage.to_path(out) / STAGING)
    return total


def _damaged_staging(out: Path, exc: StoreError) -> IncompleteOutputError:
    return IncompleteOutputError(f"{out}: a scored chunk's staged rows cannot be read ({exc}); "
                                 f"the output is damaged: score again into a new --out")


def _n_chunks(arr) -> int:
    return -(-arr.shape[0] // arr.chunks[0])


def _staged_rows(arr, k: int) -> np.ndarray:
    """Staging chunk ``k`` of ``arr``; fill values where it was never stored (zarr
    leaves out a chunk of fill values written through it: a slot chunk whose
    members were all rejected, say)."""
    if not stored(arr, k):
        c = arr.chunks[0]
        n = min(c, arr.shape[0] - k * c)
        return np.full((n, *arr.shape[1:]), arr.fill_value,
                       dtype=object if arr.dtype.kind in "TOU" else arr.dtype)
    return read_strings(arr, k) if arr.dtype.kind in "TOU" else read_rows(arr, k)


def _copy_valid(src, dst, keeps: list[np.ndarray], c: int) -> None:
    """The rows of ``src`` that ``keeps`` (one array per staging chunk) marks, in
    order, into ``dst``, a whole chunk of ``c`` rows at a time."""
    buf: list[np.ndarray] = []
    pending = written = 0
    for k, keep in enumerate(keeps):
        if not keep.any():
            continue
        vals = _staged_rows(src, k)
        buf.append(vals if keep.all() else vals[keep])
        pending += len(buf[-1])
        while pending >= c:
            arr = np.concatenate(buf) if len(buf) > 1 else buf[0]
            write_span(dst, written, written + c, arr[:c])
            buf = [arr[c:]] if len(arr) > c else []
            written += c
            pending -= c
    if pending:
        write_span(dst, written, written + pending, np.concatenate(buf) if len(buf) > 1 else buf[0])


@dataclass(frozen=True)
class PredictionChunk:
    """Rows ``[start, stop)`` of a finished output, read whole (see :meth:`Predictions.chunks`)."""

    start: int
    stop: int
    pred: np.ndarray
    margin: np.ndarray
    keys: np.ndarray
    proba: np.ndarray | None
    labels: np.ndarray | None
    gap: np.ndarray | None = None  # None in an output of version 1
    second: np.ndarray | None = None


@dataclass(frozen=True)
class Predictions:
    path: Path
    group: object
    metrics: dict

    @property
    def n(self) -> int:
        """Rows of the output (an archive's decoded members)."""
        return int(self.group["pred"].shape[0])

    def chunk_bounds(self) -> list[tuple[int, int]]:
        """The rows ``[start, stop)`` of each chunk of the arrays, the last one ragged."""
        return chunk_bounds(self.n, int(self.group["pred"].chunks[0]))

    def chunks(self, *, proba: bool = False):
        """The output a chunk at a time, in row order: memory is one chunk.

        Yields :class:`PredictionChunk`; ``proba`` also reads the probabilities
        (None when the run wrote none); ``labels`` are an archive output's own
        (None for a store input, whose labels are in the store).
        """
        g = self.group
        names = ["pred", "margin", "keys"] + (["labels"] if "labels" in g else []) + (
            ["proba"] if proba and "proba" in g else []) + [
            e[0] for e in EXTRA_ARRAYS if e[0] in g]
        arrays = {name: g[name] for name in names}
        for i, (a, b) in enumerate(self.chunk_bounds()):
            got = {name: self._chunk(arr, name, i, b - a) for name, arr in arrays.items()}
            yield PredictionChunk(a, b, got["pred"], got["margin"], got["keys"],
                                  got.get("proba"), got.get("labels"), got.get("gap"),
                                  got.get("second"))

    def _chunk(self, arr, name: str, i: int, n: int) -> np.ndarray:
        """Chunk ``i`` of one array, through chunkio's direct reads (zarr's read path costs
        several times more)."""
        try:
            if name == "keys":
                return read_strings(arr, i)
            if name == "labels" and not stored(arr, i):  # all unknown: left out by zarr
                return np.full(n, arr.fill_value, arr.dtype)
            return read_rows(arr, i)
        except StoreError as exc:
            raise IncompleteOutputError(f"{self.path}: {name} cannot be read ({exc}); the "
                                        f"output is damaged: score again into a new "
                                        f"--out") from exc

    @property
    def pred(self):
        return self.group["pred"]

    @property
    def margin(self):
        return self.group["margin"]

    @property
    def keys(self):
        return self.group["keys"]

    def extra(self, name: str):
        """Array ``gap`` or ``second`` (EXTRA_ARRAYS), or None in an output of version 1."""
        return self.group[name] if name in self.group else None

    @property
    def proba(self):
        """The (N, k) probabilities, or None when the run was not asked for them."""
        return self.group["proba"] if "proba" in self.group else None

    @property
    def labels(self):
        """The labels an archive input was scored with (a store input holds its own: None)."""
        return self.group["labels"] if "labels" in self.group else None


def open_predictions(out: str | os.PathLike) -> Predictions:
    """Open a complete output; refuse one with missing chunks or no _SUCCESS, and
    anything that is not a digitbatch output (its settings say how many chunks to expect)."""
    p = storage.to_path(out)
    if not (p / SUCCESS).exists():
        if (kind := storage.made_by_digitbatch(p)) != "predictions":  # (a store given, say)
            raise NotAnOutputError(f"{p} is {storage.what_is(p, kind)}, not a scoring output: "
                                   f"give the --out of a `digitbatch score` run (score a store "
                                   f"first: digitbatch score STORE --model MODEL --out PRED.zarr)")
        raise IncompleteOutputError(
            f"{p} has no {SUCCESS} marker: the run did not finish; rerun `digitbatch score` "
            f"with --resume")
    try:
        g = storage.open_group(p, mode="r")
        spec = dict(g.attrs[ATTRS_KEY])
        n, chunk_size = int(spec["n"]), int(spec["chunk_size"])
    except Exception as exc:  # not a Zarr group, no settings, or settings without the counts
        raise NotAnOutputError(
            f"{p} has a {SUCCESS} marker but no digitbatch output settings ({exc!r}): it is not "
            f"the --out of a `digitbatch score` run, or it was damaged; score into a new --out"
        ) from exc
    expected = len(chunk_bounds(n, chunk_size))
    # (for archive inputs n counts member slots: commits are per slot chunk)
    missing = sorted(set(range(expected)) - set(committed(p)))
    if missing:
        raise IncompleteOutputError(f"{p} is missing committed chunks {missing[:10]}: rerun with --resume")
    return Predictions(p, g, json.loads((p / SUCCESS).read_text()))
