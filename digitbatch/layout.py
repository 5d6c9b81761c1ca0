"""The one module that knows the Zarr layout of a digitbatch store.

A store is a Zarr v3 group::

    store.zarr/
      images   (N, 28, 28) uint8, chunked along N only
      labels   (N,) int8, UNKNOWN_LABEL (-1) where the label is unknown
      keys     (N,) string, where each image came from ("idx:train:123",
               "archive.tar.gz!7/img001.png", ...)
      rejects/keys, rejects/reasons   (R,) string: what ingest refused and why
      attrs["digitbatch"]: layout version, source description, content
               checksum, digitbatch version, creation time, splits, counts

Stores are written under a temporary sibling name and renamed into place by
:class:`StoreWriter`, so an interrupted write never leaves a store that
:func:`open_store` accepts (it also requires ``complete: true``, written
last). A store may live at a URL (``s3://bucket/store.zarr``, see
:mod:`digitbatch.storage`); object stores have no rename, so there the store
is written in place and ``complete: true``, written last, is what makes it
valid.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import os
import shutil
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from . import storage
from .version import __version__
from .digits import IMAGE_SHAPE, LABEL_DTYPE, N_CLASSES, UNKNOWN_LABEL  # noqa: F401
from .errors import StoreError, StoreExistsError, StoreNotFoundError
from .storecheck import (  # noqa: F401  (re-exported: the store's limits and label check)
    MAX_CHUNK_SIZE, MAX_IMAGES, MIN_CHUNK_SIZE, check_labels, validate_arrays,
)
from .tempstores import TEMP_INFIX, owner_record, remove_stale_temps

log = logging.getLogger(__name__)

LAYOUT_VERSION = 1
# (the digit constants live in digits.py, without Zarr; re-exported here)
# Large enough that per-task overhead is small against the work, small
# enough for two tasks per core in memory.
DEFAULT_CHUNK_SIZE = 32_768
# LZ4 decodes MNIST chunks several times faster than zstd at a somewhat lower
# ratio; scoring is decode-bound, disk is cheap. Level 9 (Blosc: LZ4's slowest
# "fast" setting) compresses better than 5 and decodes faster at about the
# same encoding speed; LZ4HC decodes faster still but encodes several times
# slower, which ingest pays (README, "Measured defaults").
COMPRESSORS = (BloscCodec(cname="lz4", clevel=9, shuffle="noshuffle"),)
# Codecs of the images array a store can be written with (``ingest --codec``).
# "none" keeps Blosc's framing (header, checks) around the raw bytes: several
# times the disk, but a scoring task maps the chunk and reads it in place
# instead of decoding it.
IMAGE_CODECS = {
    "lz4": COMPRESSORS,
    "none": (BloscCodec(cname="lz4", clevel=0, shuffle="noshuffle"),),
}
DEFAULT_IMAGE_CODEC = "lz4"
ATTRS_KEY = storage.STORE_ATTRS  # "digitbatch"


def validate_chunk_size(chunk_size: int) -> int:
    """Return ``chunk_size`` if it is a usable chunk length along N."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)):
        raise StoreError(f"chunk_size must be an integer, got {chunk_size!r}")
    if chunk_size < MIN_CHUNK_SIZE:
        raise StoreError(
            f"chunk_size {chunk_size} is too small: use at least {MIN_CHUNK_SIZE} "
            f"(default {DEFAULT_CHUNK_SIZE})"
        )
    if chunk_size > MAX_CHUNK_SIZE:
        raise StoreError(
            f"chunk_size {chunk_size} is too large: a chunk is read whole into memory; use at "
            f"most {MAX_CHUNK_SIZE} (default {DEFAULT_CHUNK_SIZE})"
        )
    return int(chunk_size)


def validate_codec(codec: str) -> str:
    """Return ``codec`` if it names an images codec (:data:`IMAGE_CODECS`)."""
    if codec not in IMAGE_CODECS:
        raise StoreError(f"codec {codec!r} is not one of {', '.join(sorted(IMAGE_CODECS))}: "
                         f"lz4 (compressed, the default) or none (3x the disk, faster to score)")
    return codec


def chunk_bounds(n: int, chunk_size: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` of the chunks of an axis of length ``n``."""
    return [(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]


@dataclass(frozen=True)
class Store:
    """An opened, validated digitbatch store (read-only view)."""

    path: Path
    group: Any
    meta: dict

    @property
    def images(self):
        return self.group["images"]

    @property
    def labels(self):
        return self.group["labels"]

    @property
    def keys(self):
        return self.group["keys"]

    @property
    def n(self) -> int:
        return int(self.images.shape[0])

    @property
    def chunk_size(self) -> int:
        return int(self.images.chunks[0])

    @property
    def chunks(self) -> list[tuple[int, int]]:
        return chunk_bounds(self.n, self.chunk_size)

    @property
    def splits(self) -> dict[str, tuple[int, int]]:
        return {k: (int(v[0]), int(v[1])) for k, v in self.meta.get("splits", {}).items()}

    @property
    def checksum(self) -> str:
        return self.meta["checksum"]

    def split_rows(self, split: str) -> slice:
        """Row slice of a named split (``train``, ``test`` or ``all``)."""
        if split == "all":
            return slice(0, self.n)
        if split not in self.splits:
            raise StoreError(
                f"store {self.path} has no split {split!r}; it has "
                f"{sorted(self.splits) or 'none'} (use 'all' for every row)"
            )
        start, stop = self.splits[split]
        return slice(start, stop)

    def column(self, name: str, rows: slice = slice(None)) -> np.ndarray:
        """``images``, ``labels`` or ``keys`` of a contiguous row slice, chunk by chunk
        through :func:`read_rows`, so a missing or damaged chunk is a
        :class:`StoreError`, never fill values."""
        arr = self.group[name]
        start, stop, step = rows.indices(self.n)
        if step != 1:
            raise StoreError(f"rows must be a contiguous slice, got step {step}")
        c = self.chunk_size
        parts = [read_rows(arr, i)[max(start - i * c, 0): stop - i * c]
                 for i in range(start // c, -(-stop // c))] if stop > start else []
        out = np.concatenate(parts) if parts else arr[0:0]
        if name == "labels":
            check_labels(out, where=f"store {self.path}, rows {start}-{stop - 1}")
        return out

    def read(self, rows: slice = slice(None)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Images, labels and keys of ``rows``, in memory (damage is a StoreError)."""
        return (self.column("images", rows), self.column("labels", rows),
                np.asarray(self.column("keys", rows), dtype=object))

    def rejects(self) -> list[tuple[str, str]]:
        """``[(key, reason), ...]`` of the inputs ingest refused."""
        if self.meta.get("n_rejects", 0) == 0:
            return []
        keys = self.group["rejects/keys"][:]
        reasons = self.group["rejects/reasons"][:]
        return [(str(k), str(r)) for k, r in zip(keys, reasons)]

    def to_dask(self):
        """``(images, labels)`` as Dask arrays chunked like the store."""
        import dask.array as da

        return (
            da.from_zarr(self.images),
            da.from_zarr(self.labels),
        )

def open_store(path: str | os.PathLike) -> Store:
    """Open and validate a store; raise :class:`StoreError` naming the fault."""
    p = storage.to_path(path)
    if not p.exists():
        raise StoreNotFoundError(f"store {p} does not exist: create it with `digitbatch ingest`")
    try:
        group = storage.open_group(p, mode="r")
    except Exception as exc:  # zarr raises several types for a non-group
        raise StoreError(f"{p} is not a Zarr group ({exc}); is it a digitbatch store?") from exc
    meta = dict(group.attrs.get(ATTRS_KEY) or {})
    if not meta:
        raise StoreError(f"{p} is a Zarr group but not a digitbatch store (no '{ATTRS_KEY}' attributes)")
    version = meta.get("layout_version")
    if version != LAYOUT_VERSION:
        raise StoreError(
            f"store {p} has layout version {version!r}; this digitbatch reads version "
            f"{LAYOUT_VERSION}: re-ingest it with this version"
        )
    if meta.get("complete") is not True:
        raise StoreError(f"store {p} is incomplete (an interrupted write?): ingest it again")
    store = Store(path=p, group=group, meta=meta)
    validate_arrays(store)
    return store

class _ChunkBuffer:
    """The rows of the chunk being filled, in arrays of a whole chunk made on
    first use and reused chunk after chunk: their memory is touched once,
    not once per chunk as a concatenation of the batches would."""

    def __init__(self, size: int):
        self.size = size
        self.images: np.ndarray | None = None
        self.labels: np.ndarray | None = None
        self.keys: list[str] = []
        self.n = 0

    def put(self, images: np.ndarray, labels: np.ndarray, keys: Sequence[str], at: int) -> int:
        """Copy rows ``at:`` of a batch, as many as the chunk has room for;
        returns the batch row after the last one taken."""
        if self.images is None:
            self.images = np.empty((self.size, *IMAGE_SHAPE), np.uint8)
            self.labels = np.empty(self.size, LABEL_DTYPE)
        take = min(images.shape[0] - at, self.size - self.n)
        self.images[self.n:self.n + take] = images[at:at + take]
        self.labels[self.n:self.n + take] = labels[at:at + take]
        self.keys.extend(str(k) for k in keys[at:at + take])
        self.n += take
        return at + take

    def clear(self) -> None:
        self.keys = []
        self.n = 0


class StoreWriter:
    """Build a store under a temporary name; :meth:`finish` renames it in.

    Use as a context manager: an exception inside the block removes the
    temporary directory, so nothing half-written remains.

    >>> with StoreWriter("out.zarr", source={"kind": "idx"}) as w:  # doctest: +SKIP
    ...     w.append(images, labels, keys)
    ...     store = w.finish(splits={"train": (0, 60000)})
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        source: dict,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        overwrite: bool = False,
        codec: str = DEFAULT_IMAGE_CODEC,
    ):
        self.path = storage.to_path(path)
        self.local = storage.is_local(self.path)
        self.source = source
        self.chunk_size = validate_chunk_size(chunk_size)
        self.codec = validate_codec(codec)
        self.overwrite = overwrite
        if self.local and storage.parent_exists(self.path):
            remove_stale_temps(self.path)
        if self.path.exists() and not overwrite:
            raise StoreExistsError(
                f"{self.path} already exists: choose another --out or pass --overwrite"
            )
        if overwrite:
            storage.check_replaceable(self.path, "store")
        if self.local:  # missing parent folders are created, by every command
            self.path.parent.mkdir(parents=True, exist_ok=True)
        elif not storage.parent_exists(self.path):
            raise StoreError(f"the bucket of {self.path} does not exist: create it first")
        # object stores cannot rename: there the store is written in place
        # (invalid until ``complete``); an overwritten one is removed first
        self.token = uuid.uuid4().hex[:12]
        self.tmp = (self.path.parent / f".{self.path.name}{TEMP_INFIX}{self.token}"
                    if self.local else self.path)
        self._buf = _ChunkBuffer(self.chunk_size)
        self._written = 0
        self._hash = hashlib.sha256()
        self._counts = np.zeros(N_CLASSES + 1, dtype=np.int64)  # last slot: unknown
        self._rejects: list[tuple[str, str]] = []
        self._group = None
        self._done = False

    # -- context manager ---------------------------------------------------
    def __enter__(self) -> StoreWriter:
        self._open()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._done:
            self.abort()

    def _open(self) -> None:
        if self._group is not None:
            return
        if not self.local and self.path.exists():
            storage.check_replaceable(self.path, "store")
            log.warning("removing %s to overwrite it", self.path)
            storage.rmtree(self.path)
        g = storage.open_group(self.tmp, mode="w-")
        # first of all: whose it is, so a rerun after this process is killed
        # can prove the temporary store is a dead run's and remove it
        self._owner = owner_record(self.path, self.token)
        g.attrs[ATTRS_KEY] = {"layout_version": LAYOUT_VERSION, "complete": False,
                              "writer": self._owner}
        c = self.chunk_size
        # Every chunk is written, even one equal to the fill value, so that a
        # missing chunk file always means damage (see read_rows).
        # (a runtime setting of these handles, so writes go through them)
        every = {"write_empty_chunks": True}
        self._arrays = {
            "images": g.create_array("images", shape=(0, *IMAGE_SHAPE), chunks=(c, *IMAGE_SHAPE),
                                     dtype="uint8", compressors=IMAGE_CODECS[self.codec],
                                     fill_value=0,
                                     config=every),
            "labels": g.create_array("labels", shape=(0,), chunks=(c,), dtype=LABEL_DTYPE,
                                     compressors=COMPRESSORS, fill_value=UNKNOWN_LABEL,
                                     config=every),
            "keys": g.create_array("keys", shape=(0,), chunks=(c,), dtype=str, config=every),
        }
        self._group = g

    # -- writing -----------------------------------------------------------
    def append(self, images: np.ndarray, labels: np.ndarray, keys: Sequence[str]) -> None:
        """Append rows in source order; they are written a whole chunk at a time."""
        self._open()
        images = np.asarray(images)
        labels = np.asarray(labels)
        n = images.shape[0]
        if images.dtype != np.uint8 or images.shape[1:] != IMAGE_SHAPE:
            raise StoreError(f"images must be (n, 28, 28) uint8, got {images.shape} {images.dtype}")
        if labels.shape != (n,) or len(keys) != n:
            raise StoreError(f"got {n} images, {labels.shape[0]} labels and {len(keys)} keys")
        if n == 0:
            return
        bad = (labels != UNKNOWN_LABEL) & ((labels < 0) | (labels >= N_CLASSES))
        if bad.any():
            raise StoreError(f"labels must be 0-9 or {UNKNOWN_LABEL}, got {labels[bad][:5].tolist()}")
        at = 0
        while at < n:
            at = self._buf.put(images, labels, keys, at)
            if self._buf.n == self.chunk_size:
                self._flush()

    def add_rejects(self, rejects: Iterable[tuple[str, str]]) -> None:
        """Record inputs that were refused, with the reason, in the store."""
        self._rejects.extend((str(k), str(r)) for k, r in rejects)

    @property
    def n_written(self) -> int:
        return self._written + self._buf.n

    @property
    def n_rejects(self) -> int:
        return len(self._rejects)

    def _flush(self) -> None:
        """Write the rows buffered (a whole chunk, or the last rows)."""
        count = self._buf.n
        head_i, head_l, head_k = self._buf.images[:count], self._buf.labels[:count], self._buf.keys
        start, stop = self._written, self._written + count
        arrays = self._arrays
        for arr in arrays.values():
            arr.resize((stop, *arr.shape[1:]))
        # (a flush is one whole chunk, or the last rows: written as chunks directly)
        for name, rows in (("images", head_i), ("labels", head_l),
                           ("keys", np.array(head_k, dtype=object))):
            write_span(arrays[name], start, stop, rows)
        # (the arrays' own bytes, not copies of them: the same digest)
        self._hash.update(memoryview(np.ascontiguousarray(head_i)).cast("B"))
        self._hash.update(memoryview(np.ascontiguousarray(head_l)).cast("B"))
        self._hash.update("\n".join(head_k).encode("utf-8") + b"\n")
        self._counts += np.bincount(np.where(head_l < 0, N_CLASSES, head_l), minlength=N_CLASSES + 1)
        self._written = stop
        self._buf.clear()

    def finish(self, *, splits: dict[str, tuple[int, int]] | None = None,
               extra: dict | None = None) -> Store:
        """Flush, write the attributes last, and rename into place."""
        self._open()
        if self._buf.n:
            self._flush()
        n = self._written
        g = self._group
        if self._rejects:
            rg = g.create_group("rejects")
            rk = rg.create_array("keys", shape=(len(self._rejects),), dtype=str)
            rr = rg.create_array("reasons", shape=(len(self._rejects),), dtype=str)
            rk[:] = np.array([k for k, _ in self._rejects], dtype=object)
            rr[:] = np.array([r for _, r in self._rejects], dtype=object)
        splits = dict(splits or {})
        for name, (start, stop) in splits.items():
            if not 0 <= start <= stop <= n:
                raise StoreError(f"split {name!r} rows [{start}, {stop}) outside [0, {n})")
        meta = {
            "layout_version": LAYOUT_VERSION,
            "digitbatch_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "source": self.source,
            "checksum": "sha256:" + self._hash.hexdigest(),
            "n_images": n,
            "n_labeled": int(self._counts[:N_CLASSES].sum()),
            "label_counts": self._counts[:N_CLASSES].tolist(),
            "n_rejects": len(self._rejects),
            "splits": {k: [int(a), int(b)] for k, (a, b) in splits.items()},
            "complete": True,
            # (kept: a run killed after this write but before its rename is still known)
            "writer": self._owner if self.local else None,
            **(extra or {}),
        }
        g.attrs[ATTRS_KEY] = meta
        self._commit()
        self._done = True
        log.info("wrote store %s: %d images, %d rejects", self.path, n, len(self._rejects))
        return open_store(self.path)

    def _commit(self) -> None:
        if not self.local:
            return  # written in place; ``complete: true`` made it valid
        trash = None
        if self.path.exists():
            if not self.overwrite:
                raise StoreExistsError(f"{self.path} appeared while writing: not overwriting it")
            storage.check_replaceable(self.path, "store")  # (it may have changed meanwhile)
            trash = self.path.parent / f".{self.path.name}.old-{uuid.uuid4().hex[:12]}"
            os.rename(self.path, trash)
        os.rename(self.tmp, self.path)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)

    def abort(self) -> None:
        """Remove the temporary directory; nothing is left behind."""
        self._done = True
        if self._group is not None or self.local:
            storage.rmtree(self.tmp)


# chunk-level reads and writes (re-exported: callers import them from here)
from .chunkio import copy_chunk, read_rows, write_rows, write_span  # noqa: E402
