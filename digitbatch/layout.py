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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from . import __version__, storage
from .errors import StoreError, StoreExistsError, StoreNotFoundError

log = logging.getLogger(__name__)

LAYOUT_VERSION = 1
IMAGE_SHAPE = (28, 28)
LABEL_DTYPE = np.dtype("int8")
UNKNOWN_LABEL = -1
N_CLASSES = 10
# 32,768 images = 25.7 MB raw per chunk: large enough that per-task overhead
# is small against the work, small enough for two tasks per core in memory.
DEFAULT_CHUNK_SIZE = 32_768
MIN_CHUNK_SIZE = 256
# LZ4 decodes MNIST chunks about 1.7x faster than Zarr's default zstd
# (34 ms vs 60 ms per 60k images here) at a 3.1x instead of 4.7x ratio;
# scoring is decode-bound, disk is cheap.
COMPRESSORS = (BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle"),)
ATTRS_KEY = "digitbatch"


def validate_chunk_size(chunk_size: int) -> int:
    """Return ``chunk_size`` if it is a usable chunk length along N."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)):
        raise StoreError(f"chunk_size must be an integer, got {chunk_size!r}")
    if chunk_size < MIN_CHUNK_SIZE:
        raise StoreError(
            f"chunk_size {chunk_size} is too small: use at least {MIN_CHUNK_SIZE} "
            f"(default {DEFAULT_CHUNK_SIZE})"
        )
    return int(chunk_size)


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
        return np.concatenate(parts) if parts else arr[0:0]

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
    _validate_arrays(store)
    return store


def _validate_arrays(store: Store) -> None:
    p = store.path
    members = set(store.group.array_keys())
    for name in ("images", "labels", "keys"):
        if name not in members:
            raise StoreError(f"store {p} has no '{name}' array: re-ingest it")
    images, labels, keys = store.images, store.labels, store.keys
    if images.dtype != np.uint8 or images.ndim != 3 or tuple(images.shape[1:]) != IMAGE_SHAPE:
        raise StoreError(
            f"store {p}: images must be (N, 28, 28) uint8, got {images.shape} {images.dtype}"
        )
    n = images.shape[0]
    if labels.dtype != LABEL_DTYPE or labels.shape != (n,):
        raise StoreError(f"store {p}: labels must be ({n},) int8, got {labels.shape} {labels.dtype}")
    if keys.shape != (n,) or keys.dtype.kind not in "TUO":
        raise StoreError(f"store {p}: keys must be ({n},) strings, got {keys.shape} {keys.dtype}")
    if tuple(images.chunks[1:]) != IMAGE_SHAPE:
        raise StoreError(f"store {p}: images must be chunked along N only, got chunks {images.chunks}")
    c = images.chunks[0]
    if labels.chunks[0] != c or keys.chunks[0] != c:
        raise StoreError(
            f"store {p}: arrays are not chunk-aligned (images {c}, labels {labels.chunks[0]}, "
            f"keys {keys.chunks[0]}): re-ingest it"
        )
    if meta_n := store.meta.get("n_images"):
        if meta_n != n:
            raise StoreError(f"store {p}: attributes say {meta_n} images but arrays hold {n}")
    for name, (start, stop) in store.splits.items():
        if not 0 <= start <= stop <= n:
            raise StoreError(f"store {p}: split {name!r} rows [{start}, {stop}) outside [0, {n})")


@dataclass
class _Buffer:
    images: list = field(default_factory=list)
    labels: list = field(default_factory=list)
    keys: list = field(default_factory=list)
    n: int = 0


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
    ):
        self.path = storage.to_path(path)
        self.local = storage.is_local(self.path)
        self.source = source
        self.chunk_size = validate_chunk_size(chunk_size)
        self.overwrite = overwrite
        if self.path.exists() and not overwrite:
            raise StoreExistsError(
                f"{self.path} already exists: choose another --out or pass --overwrite"
            )
        if not storage.parent_exists(self.path):
            raise StoreError(f"parent directory {self.path.parent} of {self.path} does not exist")
        # object stores cannot rename: there the store is written in place
        # (invalid until ``complete``); an overwritten one is removed first
        self.tmp = (self.path.parent / f".{self.path.name}.tmp-{uuid.uuid4().hex[:12]}"
                    if self.local else self.path)
        self._buf = _Buffer()
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
            log.warning("removing %s to overwrite it", self.path)
            storage.rmtree(self.path)
        g = storage.open_group(self.tmp, mode="w-")
        c = self.chunk_size
        # Every chunk is written, even one equal to the fill value, so that a
        # missing chunk file always means damage (see read_rows).
        # (a runtime setting of these handles, so writes go through them)
        every = {"write_empty_chunks": True}
        self._arrays = {
            "images": g.create_array("images", shape=(0, *IMAGE_SHAPE), chunks=(c, *IMAGE_SHAPE),
                                     dtype="uint8", compressors=COMPRESSORS, fill_value=0,
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
        self._buf.images.append(images)
        self._buf.labels.append(labels.astype(LABEL_DTYPE, copy=False))
        self._buf.keys.extend(str(k) for k in keys)
        self._buf.n += n
        while self._buf.n >= self.chunk_size:
            self._flush(self.chunk_size)

    def add_rejects(self, rejects: Iterable[tuple[str, str]]) -> None:
        """Record inputs that were refused, with the reason, in the store."""
        self._rejects.extend((str(k), str(r)) for k, r in rejects)

    @property
    def n_written(self) -> int:
        return self._written + self._buf.n

    @property
    def n_rejects(self) -> int:
        return len(self._rejects)

    def _flush(self, count: int) -> None:
        images = np.concatenate(self._buf.images) if len(self._buf.images) > 1 else self._buf.images[0]
        labels = np.concatenate(self._buf.labels) if len(self._buf.labels) > 1 else self._buf.labels[0]
        keys = self._buf.keys
        head_i, head_l, head_k = images[:count], labels[:count], keys[:count]
        rest = _Buffer()
        if images.shape[0] > count:
            rest = _Buffer([images[count:]], [labels[count:]], keys[count:], images.shape[0] - count)
        self._buf = rest
        start, stop = self._written, self._written + count
        arrays = self._arrays
        for arr in arrays.values():
            arr.resize((stop, *arr.shape[1:]))
        arrays["images"][start:stop] = head_i
        arrays["labels"][start:stop] = head_l
        arrays["keys"][start:stop] = np.array(head_k, dtype=object)
        self._hash.update(np.ascontiguousarray(head_i).tobytes())
        self._hash.update(head_l.tobytes())
        self._hash.update("\n".join(head_k).encode("utf-8") + b"\n")
        self._counts += np.bincount(np.where(head_l < 0, N_CLASSES, head_l), minlength=N_CLASSES + 1)
        self._written = stop

    def finish(self, *, splits: dict[str, tuple[int, int]] | None = None,
               extra: dict | None = None) -> Store:
        """Flush, write the attributes last, and rename into place."""
        self._open()
        if self._buf.n:
            self._flush(self._buf.n)
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


# --- fast chunk I/O -------------------------------------------------------------
# Scoring is I/O-bound: zarr's general read path costs about twice a direct
# decode of one of our chunks. For local arrays with our own codec
# (bytes + Blosc) a chunk file is decoded straight with numcodecs; anything
# else (other codecs, other stores) goes through zarr.


def _chunk_key(arr, i: int) -> str:
    """Chunk ``i``'s key relative to the store's root."""
    key = arr.metadata.encode_chunk_key((i,) + (0,) * (arr.ndim - 1))
    base = arr.store_path.path
    return f"{base}/{key}" if base else key


def _chunk_file(arr, i: int) -> Path | None:
    """The chunk's file for a local store, else None."""
    from zarr.storage import LocalStore

    store = arr.store
    if not isinstance(store, LocalStore):
        return None
    return Path(store.root) / _chunk_key(arr, i)


def _where(arr) -> str:
    from zarr.storage import LocalStore

    store = arr.store
    root = store.root if isinstance(store, LocalStore) else getattr(store, "path", store)
    return f"{root}/{arr.store_path.path}"


def _store_call(arr, method: str, *args):
    from zarr.core.sync import sync

    return sync(getattr(arr.store_path.store, method)(*args))


def _get_chunk(arr, i: int) -> bytes | None:
    """The stored bytes of chunk ``i`` (None when it is missing)."""
    path = _chunk_file(arr, i)
    if path is not None:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
    from zarr.core.buffer import default_buffer_prototype

    buf = _store_call(arr, "get", _chunk_key(arr, i), default_buffer_prototype())
    return None if buf is None else buf.to_bytes()


def _put_chunk(arr, i: int, data: bytes) -> None:
    """Store chunk ``i``'s bytes whole (local: temporary file + rename)."""
    path = _chunk_file(arr, i)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return
    from zarr.core.buffer import default_buffer_prototype

    _store_call(arr, "set", _chunk_key(arr, i), default_buffer_prototype().buffer.from_bytes(data))


def _missing(arr, i: int, start: int, stop: int) -> StoreError:
    return StoreError(f"chunk {i} of {_where(arr)} is missing (rows {start}-{stop - 1}): the "
                      f"store is damaged; ingest it again")


def _fast_codec(arr) -> bool:
    from zarr.codecs import BloscCodec, BytesCodec

    codecs = getattr(arr.metadata, "codecs", ())
    return (len(codecs) == 2 and isinstance(codecs[0], BytesCodec)
            and isinstance(codecs[1], BloscCodec) and arr.dtype.kind in "uif")


_BUFFERS: dict[tuple[int, int], np.ndarray] = {}


def _decode_buffer(nbytes: int) -> np.ndarray:
    """A per-thread reusable decode buffer: a fresh 25 MB allocation per chunk
    costs page faults on every task (workers return freed memory to the OS)."""
    import threading

    key = (threading.get_ident(), nbytes)
    buf = _BUFFERS.get(key)
    if buf is None:
        if len(_BUFFERS) > 8:
            _BUFFERS.clear()
        buf = _BUFFERS[key] = np.empty(nbytes, np.uint8)
    return buf


def read_rows(arr, i: int, *, reuse: bool = False) -> np.ndarray:
    """The rows of chunk ``i`` of a store array (chunked along axis 0 only), decoded.

    A missing or undecodable chunk raises :class:`StoreError`: stores write
    every chunk, so neither is ever read as fill values. With ``reuse`` the
    result is a view of a per-thread buffer that the next ``reuse`` read of
    the same size overwrites (the scoring kernel's hot path).
    """
    c = arr.chunks[0]
    start, stop = i * c, min((i + 1) * c, arr.shape[0])
    if not _fast_codec(arr):
        if not _store_call(arr, "exists", _chunk_key(arr, i)):
            raise _missing(arr, i, start, stop)
        try:
            return arr[start:stop]
        except Exception as exc:  # zarr and numcodecs raise several types
            raise _corrupt(arr, i, exc) from exc
    from numcodecs import Blosc

    raw = _get_chunk(arr, i)
    if raw is None:
        raise _missing(arr, i, start, stop)
    try:
        nbytes = int(np.prod(arr.chunks)) * arr.dtype.itemsize
        # a truncated chunk stored without compression would "decode" past
        # its end: check the Blosc header against the stored and wanted sizes
        if len(raw) < 16:
            raise ValueError(f"{len(raw)} bytes is shorter than a Blosc header")
        # Blosc header: nbytes (decoded) at bytes 4-8, cbytes (stored) at 12-16
        declared = int.from_bytes(raw[4:8], "little")
        cbytes = int.from_bytes(raw[12:16], "little")
        if cbytes != len(raw) or declared != nbytes:
            raise ValueError(f"{len(raw)} bytes stored, header says {cbytes} "
                             f"(decoded {declared}, expected {nbytes})")
        decoded = Blosc().decode(raw, out=_decode_buffer(nbytes)) if reuse else Blosc().decode(raw)
        data = np.frombuffer(decoded, dtype=arr.dtype).reshape(arr.chunks)
    except (RuntimeError, ValueError) as exc:
        raise _corrupt(arr, i, exc) from exc
    return data[: stop - start]


def _corrupt(arr, i: int, exc: Exception) -> StoreError:
    return StoreError(f"chunk {i} of {_where(arr)} is corrupt ({exc}): the store is damaged; "
                      f"ingest it again")


def _check_chunk(arr, i: int, raw: bytes) -> None:
    """Raise StoreError unless ``raw`` is an intact chunk ``i`` of ``arr``.

    Keys chunks (vlen-utf8 + zstd) are checked cheaply: the zstd frame
    decompresses and its item count is the chunk's (a full decode of 32k
    strings costs 8 ms, a sixth of a scoring task); other codecs decode.
    """
    from numcodecs import Zstd
    from zarr.codecs import VLenUTF8Codec, ZstdCodec

    codecs = arr.metadata.codecs
    c = arr.chunks[0]
    if len(codecs) == 2 and isinstance(codecs[0], VLenUTF8Codec) and isinstance(codecs[1], ZstdCodec):
        try:
            plain = Zstd().decode(raw)
            count = int.from_bytes(bytes(plain[:4]), "little") if len(plain) >= 4 else -1
        except (RuntimeError, ValueError) as exc:
            raise _corrupt(arr, i, exc) from exc
        if count != c:
            raise _corrupt(arr, i, ValueError(f"holds {count} items, expected {c}"))
        return
    read_rows(arr, i)


def copy_chunk(src, dst, i: int) -> None:
    """Copy chunk ``i`` of ``src`` to ``dst``: the stored bytes when both are alike."""
    same = (src.metadata.codecs == dst.metadata.codecs and src.chunks == dst.chunks
            and src.dtype == dst.dtype and src.shape == dst.shape)
    if not same:
        c = src.chunks[0]
        dst[i * c: min((i + 1) * c, src.shape[0])] = src[i * c: min((i + 1) * c, src.shape[0])]
        return
    raw = _get_chunk(src, i)
    if raw is None:
        c = src.chunks[0]
        raise _missing(src, i, i * c, min((i + 1) * c, src.shape[0]))
    _check_chunk(src, i, raw)  # damage is not carried into the copy
    _put_chunk(dst, i, raw)


def write_rows(arr, i: int, rows: np.ndarray) -> None:
    """Write the rows of chunk ``i`` (the whole chunk), directly when the codec allows."""
    c = arr.chunks[0]
    start, stop = i * c, min((i + 1) * c, arr.shape[0])
    if not _fast_codec(arr):
        arr[start:stop] = rows
        return
    from numcodecs import Blosc

    codec = arr.metadata.codecs[1]
    full = np.asarray(rows, dtype=arr.dtype)
    if full.shape[0] != c:  # the last chunk is stored at full chunk shape
        pad = np.full((c - full.shape[0], *full.shape[1:]), arr.fill_value, dtype=arr.dtype)
        full = np.concatenate([full, pad])
    blosc = Blosc(cname=codec.cname.value, clevel=codec.clevel, shuffle=Blosc.NOSHUFFLE
                  if codec.shuffle.value == "noshuffle" else Blosc.SHUFFLE)
    _put_chunk(arr, i, blosc.encode(np.ascontiguousarray(full)))
