"""Scoring outputs as tables: ``digitbatch export PRED.zarr --out FILE.parquet|FILE.csv``.

This module owns what the exported files hold (the writing itself is
:mod:`digitbatch.tables`). One row per scored image, in the
output's row order, with the columns (docs/schemas.md, "Exported predictions")::

    key       string   the image's key, as the input holds it
    pred      int8     the predicted class (0/1 for a detect-D model)
    margin    float32  top-1 minus top-2 (probabilities, or decision values)
    label     int8     the input's label, null where it has none
                       (left out with ``labels=False``)
    proba_C   float32  one per class C, with ``proba=True``

Labels: an archive scored directly holds its own in the output; a store's
are read from the store the run scored (``metrics.json``'s ``input``, found
as :mod:`digitbatch.report_input` finds it, or ``store=``), which must have
the recorded checksum.

The file is written a chunk of the output at a time (one Parquet row group,
or one CSV record batch, per chunk: memory is one chunk whatever N is), to
a temporary file renamed into place when complete (an object store gets it
in one upload), so a reader never sees half an export. An output without
``_SUCCESS`` is refused (:func:`~digitbatch.scoring.output.open_predictions`).

Metadata (the model's SHA-256, the input's checksum, the run id, and the
rest of :func:`metadata`): Parquet keeps it in the file's key-value metadata
(``digitbatch.run_id``, ``digitbatch.model_sha256``,
``digitbatch.input_checksum`` and the whole record as JSON under
``digitbatch.export``); a CSV stays plain (a header line and rows, what any
reader takes) and its metadata goes to the sidecar ``FILE.csv.json``, which
also holds the CSV's SHA-256 and is written last: a CSV without its sidecar
is an export that did not finish.

CSV and spreadsheets: a text cell (only ``key`` is text) starting with
``=``, ``+``, ``-``, ``@``, a tab or a carriage return (or the full-width
``＝＋－＠``) would be run as a formula by a spreadsheet, so it gets a leading
``'`` (OWASP's advice); a key starting with ``'`` gets one too, so dropping
one leading ``'`` of an escaped cell always gives the key back. Numeric
columns are written as numbers (``-0.25``), which spreadsheets read as
numbers, never as formulas, so they are not escaped; a non-finite number is
an empty cell. Parquet is typed and holds the keys as they are.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import storage, tables
from . import fserrors
from .digits import UNKNOWN_LABEL
from .errors import DigitbatchError, ExportError, ExportExistsError, OverwriteRefusedError
from .layout import open_store, read_rows
from .report_input import existing
from .scoring.output import Predictions, is_output, open_predictions
from .version import __version__

log = logging.getLogger(__name__)

FORMATS = {".parquet": "parquet", ".csv": "csv"}
EXPORT_VERSION = 1
SIDECAR_SUFFIX = ".json"


@dataclass
class ExportResult:
    """What :func:`export_predictions` wrote."""

    out: Path
    format: str
    n_rows: int
    n_chunks: int
    columns: list[str]
    metadata: dict
    seconds: float
    n_bytes: int
    sidecar: Path | None = None
    n_escaped: int = 0
    labels: str = "none"  # where the label column came from: store, output, none, omitted

    @property
    def rows_per_second(self) -> float | None:
        return round(self.n_rows / self.seconds, 1) if self.seconds else None

    def to_dict(self) -> dict:
        return {"out": str(self.out), "format": self.format, "n_rows": self.n_rows,
                "n_chunks": self.n_chunks, "columns": self.columns,
                "sidecar": None if self.sidecar is None else str(self.sidecar),
                "n_escaped": self.n_escaped, "labels": self.labels, "n_bytes": self.n_bytes,
                "seconds": round(self.seconds, 3), "rows_per_second": self.rows_per_second,
                "metadata": self.metadata}


def export_format(out: str | os.PathLike) -> str:
    """``parquet`` or ``csv``, from the suffix of ``out``; ExportError for any other."""
    suffix = storage.to_path(out).suffix.lower()
    if suffix not in FORMATS:
        raise ExportError(f"cannot export to {str(out)!r}: the format comes from the file's "
                          f"suffix, and export writes {' or '.join(FORMATS)} (e.g. "
                          f"--out predictions.parquet)")
    return FORMATS[suffix]


def sidecar_path(out: str | os.PathLike) -> Path:
    """Where a CSV export's metadata goes: ``FILE.csv.json``."""
    p = storage.to_path(out)
    return p.parent / (p.name + SIDECAR_SUFFIX)


@fserrors.boundary(kept="No file was written (a file already at --out is kept)", folder=False)
def export_predictions(pred: str | os.PathLike, *, out: str | os.PathLike, proba: bool = False,
                       store: str | os.PathLike | None = None, labels: bool = True,
                       overwrite: bool = False) -> ExportResult:
    """Write the scoring output ``pred`` as a Parquet or CSV table, a chunk at a time.

    Parameters
    ----------
    pred : path or URL
        A finished scoring output (``PRED.zarr`` with ``_SUCCESS``).
    out : path or URL
        ``FILE.parquet`` or ``FILE.csv``: the suffix chooses the format.
    proba : bool
        Add ``proba_C`` for each class C (the run must have written them).
    store : path, optional
        Where the store a store input's labels come from is now (default: the
        path in ``metrics.json``); its checksum must be the recorded one.
    labels : bool
        False leaves the ``label`` column out, and the input is not read.
    overwrite : bool
        Replace an existing ``out`` (it is replaced only once the new file is whole).

    Returns
    -------
    ExportResult

    Raises
    ------
    ExportError
        Another suffix, ``proba`` without probabilities in the output, an
        input whose labels cannot be found, ``out`` inside ``pred``.
    ExportExistsError
        ``out`` exists and ``overwrite`` is not given.
    IncompleteOutputError
        ``pred`` has no ``_SUCCESS`` or misses a committed chunk.
    """
    t0 = time.perf_counter()
    fmt = export_format(out)
    src, dest = storage.to_path(pred), storage.to_path(out)
    if not src.exists():
        raise ExportError(f"{src} does not exist: give the scoring output (PRED.zarr) to export")
    if not is_output(src):
        raise ExportError(f"{src} is not a digitbatch scoring output: give the --out of a "
                          f"`digitbatch score` run")
    p = open_predictions(src)
    if proba and p.proba is None:
        raise ExportError(f"{src} has no probabilities (it was scored without --proba): "
                          f"export without --proba, or score again with --proba")
    _check_out(src, dest, overwrite)
    if not labels and store is not None:
        raise ExportError(f"store {str(store)!r} is given, but labels are left out: the store "
                          f"is only read for the label column; drop one of the two")
    label_source, labels_of = _labels(p, store) if labels else ("omitted", None)
    meta = metadata(p, label_source=label_source)
    columns = ["key", "pred", "margin"] + (["label"] if labels_of else []) + (
        [f"proba_{c}" for c in meta["classes"]] if proba else [])
    meta["columns"] = columns
    log.info("exporting %s (%d rows, %d chunks) to %s (%s)", src, p.n, len(p.chunk_bounds()),
             dest, fmt)
    schema = tables.schema_of(columns)
    batches = tables.read_ahead(tables.record_batch(ch, labels_of, schema, escape=fmt == "csv")
                                for ch in p.chunks(proba=proba))
    storage.mkdir(dest.parent)  # (as score and report make their outputs' folders)
    with tables.staged_file(dest) as tmp:
        if fmt == "parquet":
            n_rows, n_escaped = tables.write_parquet(
                tmp, batches, schema.with_metadata(tables.parquet_kv(meta)))
            digest = None
        else:
            n_rows, n_escaped = tables.write_csv(tmp, batches, schema)
            digest = tables.sha256_file(tmp)
        if n_rows != p.n:  # (a defect, never a user error: the chunks must cover the output)
            raise ExportError(f"wrote {n_rows} rows of {p.n} from {src}: report this defect")
        n_bytes = tmp.stat().st_size
        side = None
        if fmt == "csv":
            side = sidecar_path(dest)
            if side.exists():
                side.unlink()  # (an old sidecar must never describe the new CSV)
    # staged_file has renamed (or uploaded) the file: only now the sidecar, last
    if side is not None:
        body = {**meta, "file": dest.name, "sha256": digest, "bytes": n_bytes,
                "types": {f.name: str(f.type) for f in schema},
                "csv": {"header": True, "delimiter": ",", "quote": '"', "null": "",
                        "formula_escape": f"a key starting with one of "
                                          f"{tables.FORMULA_START!r} has a ' prepended: drop "
                                          f"one leading ' to read it"}}
        storage.write_atomic(side, json.dumps(body, indent=2) + "\n")
    seconds = time.perf_counter() - t0
    if n_escaped:
        log.warning("%d keys of %s start with a formula character (=, +, -, @ ...): written "
                    "with a leading ' in %s", n_escaped, src, dest)
    log.info("exported %d rows to %s in %.2f s", n_rows, dest, seconds)
    return ExportResult(out=dest, format=fmt, n_rows=n_rows, n_chunks=len(p.chunk_bounds()),
                        columns=columns, metadata=meta, seconds=seconds, n_bytes=n_bytes,
                        sidecar=side, n_escaped=n_escaped, labels=label_source)


def metadata(p: Predictions, *, label_source: str) -> dict:
    """What an export records of the run it came from (Parquet metadata, CSV sidecar)."""
    m = p.metrics
    model, inp = m.get("model") or {}, m.get("input") or {}
    return {"export_version": EXPORT_VERSION, "digitbatch_version": __version__,
            "exported": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "predictions": str(p.path.resolve() if storage.is_local(p.path) else p.path),
            "run_id": m.get("run_id"),
            "model_sha256": model.get("sha256"), "input_checksum": inp.get("checksum"),
            "model": model, "input": inp, "classes": list(m.get("classes") or range(10)),
            "target": m.get("target"), "margin": m.get("margin"), "n_rows": p.n,
            "labels": label_source}


# --- checks and labels -------------------------------------------------------------


def _check_out(src: Path, dest: Path, overwrite: bool) -> None:
    if storage.is_local(src) and storage.is_local(dest):
        if dest.resolve().is_relative_to(src.resolve()):
            raise ExportError(f"{dest} is inside the scoring output {src}: write the export "
                              f"beside it, not into it")
    if dest.exists():
        if dest.is_dir():
            raise ExportError(f"{dest} is a directory: give a file name ending in "
                              f"{' or '.join(FORMATS)}")
        if not overwrite:
            raise ExportExistsError(f"{dest} exists: pass --overwrite to replace it, or "
                                    f"choose another --out")
        if not is_export(dest):  # (the rule of every --overwrite: storage.check_replaceable)
            raise OverwriteRefusedError(
                f"--overwrite: {dest} is {storage.what_is(dest)} digitbatch did not export ("
                + (f"no {sidecar_path(dest).name} describing it as it is now"
                   if export_format(dest) == "csv" else "no export record in its metadata")
                + "), so it is left as it is. Move it away, or choose another --out")
    side = sidecar_path(dest)
    if export_format(dest) == "csv" and side.exists() and _record(side) is None:
        raise OverwriteRefusedError(f"{side} exists and is not a digitbatch export's sidecar: "
                                    f"the CSV's metadata would replace it; move it away, or "
                                    f"choose another --out")


def _record(sidecar: Path) -> dict | None:
    """A CSV sidecar's export record, or None (unreadable, not one)."""
    try:
        rec = json.loads(sidecar.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and "export_version" in rec else None


def is_export(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file :func:`export_predictions` wrote: a Parquet file whose
    metadata holds the export record, or a CSV whose sidecar names it with its size."""
    p = storage.to_path(path)
    try:
        if storage.is_local(p) and (p.is_symlink() or not p.is_file()):
            return False
        if export_format(p) == "csv":
            rec = _record(sidecar_path(p))
            return rec is not None and rec.get("file") == p.name and \
                rec.get("bytes") == p.stat().st_size
        import pyarrow.parquet as pq

        with p.open("rb") as fh:
            kv = pq.read_schema(fh).metadata or {}
        rec = json.loads(kv.get((tables.META_PREFIX + "export").encode(), b"null"))
        return isinstance(rec, dict) and "export_version" in rec
    except Exception:  # (an unreadable or foreign file: not an export)
        return False


def _labels(p: Predictions, override):
    """Where the label column comes from, and a function giving rows [a, b) of it (or None)."""
    m = p.metrics
    inp = m.get("input") or {}
    if str(inp.get("kind", "store")).startswith("archive"):
        if override is not None:
            raise ExportError(f"{p.path} was scored from an archive, whose labels the output "
                              f"holds: drop the store {str(override)!r}")
        return "output", lambda ch: ch.labels
    if m.get("n_labeled") == 0:  # no row has a label: nothing to read
        return "none", lambda ch: np.full(ch.stop - ch.start, UNKNOWN_LABEL, np.int8)
    recorded = inp.get("path")
    if override is None and recorded is None:
        raise ExportError(f"{p.path}/metrics.json records no input store: pass --store, or "
                          f"--no-labels to leave the label column out")
    path = (storage.to_path(override) if override is not None
            else existing(recorded, storage.to_path(p.path).parent))
    if not path.exists():
        where = (f"--store {path} does not exist" if override is not None else
                 f"the store {recorded} recorded in {p.path}/metrics.json does not exist "
                 f"(moved or deleted?)")
        raise ExportError(f"{where}: pass --store with the store this run scored, or "
                          f"--no-labels to leave the label column out")
    try:
        s = open_store(path)
    except DigitbatchError as exc:
        raise ExportError(f"the labels' store: {exc}") from exc
    want = inp.get("checksum")
    if (want and s.checksum != want) or s.n != p.n:
        raise ExportError(f"store {s.path} ({s.n} rows, checksum {s.checksum[:23]}...) is not "
                          f"the store {p.path} was scored from ({p.n} rows, "
                          f"{str(want)[:23]}...): pass --store with that store, or --no-labels")
    arr = s.labels  # (one handle: a group lookup per chunk costs more than the read)
    if s.chunk_size == p.pred.chunks[0]:  # (always, for outputs of this digitbatch)
        return "store", lambda ch: read_rows(arr, ch.start // s.chunk_size)
    return "store", lambda ch: s.column("labels", slice(ch.start, ch.stop))


# --- writing -----------------------------------------------------------------------
