"""Arrow tables of prediction chunks and the files made of them: Parquet and CSV,
written a record batch at a time, to a temporary file put in place whole.

Used by :mod:`digitbatch.export`, which owns what the exported files hold
(columns, metadata, the CSV sidecar); this module owns how they are
written: the Arrow arrays made from the chunks' numpy buffers, the CSV
escaping of text cells against formula injection, the Parquet row groups
(one per record batch), the reader thread ahead of the writer, and the
temporary file renamed (or uploaded) into place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from . import storage
from .digits import UNKNOWN_LABEL
from .errors import ExportError
from .scoring.output import PredictionChunk

PARQUET_COMPRESSION = "zstd"
META_PREFIX = "digitbatch."
# A text cell starting with one of these is escaped with a leading ' (the
# quote itself too, so that the escape can be undone without ambiguity).
FORMULA_START = "=+-@\t\r'\uff1d\uff0b\uff0d\uff20"
_FORMULA_PATTERN = "^[" + FORMULA_START.replace("-", "\\-") + "]"


def record_batch(ch: PredictionChunk, labels_of, schema, *, escape: bool):
    """One chunk as an Arrow record batch (and how many keys were escaped).

    The arrays are made from the numpy buffers (``pa.Array.from_buffers``):
    ``pa.array`` and Python scalars make pyarrow import pandas when it is
    installed, a second of start-up and tens of MB for nothing here.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    keys = _strings(ch.keys)
    n_escaped = 0
    if escape:
        bad = pc.match_substring_regex(keys, pattern=_FORMULA_PATTERN)
        n_escaped = bad.true_count
        if n_escaped:
            keys = pc.if_else(bad, pc.utf8_replace_slice(keys, start=0, stop=0,
                                                         replacement="'"), keys)
    columns = schema.names
    cols = {"key": keys, "pred": _numbers(ch.pred, pa.int8()),
            "margin": _floats(ch.margin, escape)}
    if "label" in columns:
        lab = np.asarray(labels_of(ch))
        cols["label"] = _numbers(lab, pa.int8(), valid=lab != UNKNOWN_LABEL)
    for j, name in enumerate(c for c in columns if c.startswith("proba_")):
        cols[name] = _floats(ch.proba[:, j], escape)
    return pa.RecordBatch.from_arrays([cols[c] for c in columns], schema=schema), n_escaped


def _numbers(x: np.ndarray, type_, valid: np.ndarray | None = None):
    """A numeric Arrow array over ``x``'s bytes; null where ``valid`` is False."""
    import pyarrow as pa

    x = np.ascontiguousarray(x, {"int8": np.int8, "float": np.float32}[str(type_)])
    bitmap = None
    if valid is not None and not valid.all():
        bitmap = pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(type_, x.shape[0], [bitmap, pa.py_buffer(x)])


def _floats(x: np.ndarray, null_non_finite: bool):
    """float32 values; for CSV, a non-finite one is null (an empty cell)."""
    import pyarrow as pa

    return _numbers(x, pa.float32(), np.isfinite(x) if null_non_finite else None)


def _strings(keys: np.ndarray):
    """An Arrow string array of ``keys`` (UTF-8 bytes and offsets)."""
    import pyarrow as pa

    items = np.asarray(keys).tolist()
    text = "".join(items)
    data = text.encode("utf-8")
    if len(data) != len(text):  # not all ASCII: lengths in bytes, one key at a time
        items = [k.encode("utf-8") for k in items]
        data = b"".join(items)
    if len(data) >= 2**31:
        raise ExportError(f"the keys of one chunk hold {len(data):,} bytes, more than a "
                          f"string column takes: score with a smaller chunk size")
    offsets = np.zeros(len(items) + 1, np.int32)
    np.cumsum(np.fromiter(map(len, items), np.int64, len(items)), out=offsets[1:],
              dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), len(items),
                                 [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def schema_of(columns: list[str]):
    """The Arrow schema of an export's columns (``proba_C`` float32)."""
    import pyarrow as pa

    types = {"key": pa.string(), "pred": pa.int8(), "margin": pa.float32(), "label": pa.int8()}
    return pa.schema([pa.field(c, types.get(c, pa.float32()), nullable=c not in ("key", "pred"))
                      for c in columns])


def parquet_kv(meta: dict) -> dict[str, str]:
    """Parquet key-value metadata: the three identifiers apart, and the whole record."""
    kv = {META_PREFIX + k: str(meta[k]) for k in ("run_id", "model_sha256", "input_checksum")
          if meta.get(k) is not None}
    kv[META_PREFIX + "export"] = json.dumps(meta)
    return kv


def write_parquet(path: Path, batches, schema) -> tuple[int, int]:
    """Write ``(batch, n_escaped)`` items as one Parquet row group each; rows written, 0."""
    import pyarrow.parquet as pq

    n = 0
    # dictionaries only where values repeat: a dictionary of the (unique) keys
    # costs a third of the writing and makes the file larger
    small = [c for c in ("pred", "label") if c in schema.names]
    with pq.ParquetWriter(str(path), schema, compression=PARQUET_COMPRESSION,
                          use_dictionary=small) as w:
        for batch, _ in batches:
            w.write_batch(batch, row_group_size=max(batch.num_rows, 1))  # a row group a chunk
            n += batch.num_rows
    return n, 0


def write_csv(path: Path, batches, schema) -> tuple[int, int]:
    """Write ``(batch, n_escaped)`` items as CSV under one header; rows and escaped keys."""
    import pyarrow.csv as pcsv

    n = escaped = 0
    with pcsv.CSVWriter(str(path), schema) as w:
        for batch, k in batches:
            w.write_batch(batch)
            n += batch.num_rows
            escaped += k
    return n, escaped


def read_ahead(items: Iterator, depth: int = 2) -> Iterator:
    """``items``, made by a thread up to ``depth`` ahead of the consumer.

    The next chunk is read and converted while this one is compressed and
    written (which releases the GIL): memory is ``depth + 1`` chunks. An
    error in the thread is raised here; a consumer that stops early stops
    the thread.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((done, None))
        except BaseException as exc:  # handed to the consumer
            q.put((done, exc))

    thread = threading.Thread(target=produce, name="export-reader", daemon=True)
    thread.start()
    try:
        while True:
            item, exc = q.get()
            if item is done:
                if exc is not None:
                    raise exc
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a put waiting on a full queue
            with contextlib.suppress(queue.Empty):
                q.get(timeout=0.1)
        thread.join()


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of a local file, read a MiB at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def staged_file(dest: Path) -> Iterator[Path]:
    """A local temporary file that becomes ``dest`` when the block ends without error.

    Local: a hidden file beside ``dest``, synced and renamed over it. URL: a
    file in the temporary directory, uploaded in one call (an object store
    publishes an object whole). On an error the temporary file is removed.
    """
    local = storage.is_local(dest)
    if local:
        tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
        holder = contextlib.nullcontext()
    else:
        holder = tempfile.TemporaryDirectory(prefix="digitbatch-export-")
    with holder as d:
        if not local:
            tmp = Path(d) / dest.name
        try:
            yield tmp
            if local:
                with open(tmp, "rb+") as fh:
                    os.fsync(fh.fileno())
                os.replace(tmp, dest)
            else:
                fs, path = storage.fs_of(dest)
                fs.put_file(str(tmp), path)
        finally:
            if local:
                with contextlib.suppress(OSError):  # (read-only: even this is refused)
                    tmp.unlink(missing_ok=True)
