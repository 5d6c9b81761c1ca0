"""Chunk-level I/O of Zarr arrays chunked along axis 0: the scoring hot path.

Scoring is I/O-bound: zarr's general read path costs about twice a direct
decode of one of our chunks. For arrays with our own codec (bytes + Blosc)
a chunk's stored bytes are fetched (a file for local stores, a key of the
Zarr store otherwise: S3 and friends) and decoded straight with numcodecs;
other codecs go through zarr. Writes of whole chunks go the same way, and
so do those of string arrays with zarr's default codecs (vlen-utf8 and
zstd: member keys), encoded with numcodecs into the bytes zarr stores;
zarr's own write of a small chunk costs milliseconds of its async machinery. Every read checks that the chunk exists and
is intact: stores write every chunk, so a missing or damaged one is a
:class:`~digitbatch.errors.StoreError`, never fill values.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np

from .errors import StoreError


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


def _get_chunk(arr, i: int, *, reuse: bool = False) -> bytes | mmap.mmap | None:
    """The stored bytes of chunk ``i`` (None when it is missing).

    With ``reuse`` a local file is mapped read-only instead of read: the
    decoder reads the page cache directly, with no copy into a buffer
    (README, "Measured defaults").
    """
    path = _chunk_file(arr, i)
    if path is not None:
        try:
            if not reuse:
                return path.read_bytes()
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            if os.fstat(fd).st_size == 0:
                return b""
            return mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
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


def _fast_strings(arr) -> bool:
    """A 1-d string array with zarr's default codecs (vlen-utf8, then zstd)."""
    from zarr.codecs import VLenUTF8Codec, ZstdCodec

    codecs = getattr(arr.metadata, "codecs", ())
    return (arr.ndim == 1 and len(codecs) == 2 and isinstance(codecs[0], VLenUTF8Codec)
            and isinstance(codecs[1], ZstdCodec) and not codecs[1].checksum
            and arr.dtype.kind in "TOU")


def _encode_strings(arr, rows, c: int) -> bytes:
    """A string chunk's stored bytes, as zarr encodes them (padded with the
    fill value to the chunk's length)."""
    from numcodecs import VLenUTF8, Zstd

    full = np.asarray(rows)
    if full.dtype != object:  # (numpy strings: str objects; an object array holds them)
        full = full.astype(object)
    if len(full) != c:  # the last chunk is stored at full chunk shape
        full = np.concatenate([full, np.full(c - len(full), str(arr.fill_value), dtype=object)])
    data = VLenUTF8().encode(full)
    return Zstd(level=arr.metadata.codecs[1].level).encode(data)


_BUFFERS: dict[tuple, np.ndarray] = {}


# Blosc header flag: the chunk's bytes follow the 16-byte header uncompressed.
_BLOSC_MEMCPYED = 0x02


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

    raw = _get_chunk(arr, i, reuse=reuse)
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
        if isinstance(raw, mmap.mmap) and raw[2] & _BLOSC_MEMCPYED:
            # stored raw (``ingest --codec none``): read in place, no copy; the
            # array keeps the mapping open (it is unmapped when the array goes)
            data = np.frombuffer(raw, dtype=arr.dtype, count=nbytes // arr.dtype.itemsize,
                                 offset=16).reshape(arr.chunks)
            return data[: stop - start]
        decoded = Blosc().decode(raw, out=_decode_buffer(nbytes)) if reuse else Blosc().decode(raw)
        data = np.frombuffer(decoded, dtype=arr.dtype).reshape(arr.chunks)
    except (RuntimeError, ValueError) as exc:
        raise _corrupt(arr, i, exc) from exc
    if isinstance(raw, mmap.mmap):
        raw.close()
    return data[: stop - start]


def stored(arr, i: int) -> bool:
    """Whether chunk ``i`` of ``arr`` is stored (zarr leaves out a chunk of fill values
    when the array was written through it)."""
    path = _chunk_file(arr, i)
    if path is not None:
        return path.exists()
    return bool(_store_call(arr, "exists", _chunk_key(arr, i)))


def read_strings(arr, i: int) -> np.ndarray:
    """Chunk ``i`` of a string array (chunked along axis 0) as an object array of str.

    Keys are stored vlen-utf8 + zstd: decoded straight with numcodecs, at
    half the cost of zarr's read path; other codecs go through zarr. A
    missing or damaged chunk raises :class:`StoreError`, as :func:`read_rows`.
    """
    from numcodecs import VLenUTF8, Zstd
    from zarr.codecs import VLenUTF8Codec, ZstdCodec

    c = arr.chunks[0]
    start, stop = i * c, min((i + 1) * c, arr.shape[0])
    codecs = arr.metadata.codecs
    if not (len(codecs) == 2 and isinstance(codecs[0], VLenUTF8Codec)
            and isinstance(codecs[1], ZstdCodec)):
        if not stored(arr, i):
            raise _missing(arr, i, start, stop)
        return np.asarray(arr[start:stop], dtype=object)
    raw = _get_chunk(arr, i)
    if raw is None:
        raise _missing(arr, i, start, stop)
    try:
        items = VLenUTF8().decode(Zstd().decode(raw))
    except (RuntimeError, ValueError) as exc:
        raise _corrupt(arr, i, exc) from exc
    if len(items) != c:
        raise _corrupt(arr, i, ValueError(f"holds {len(items)} items, expected {c}"))
    return items[: stop - start]


def _corrupt(arr, i: int, exc: Exception) -> StoreError:
    return StoreError(f"chunk {i} of {_where(arr)} is corrupt ({exc}): the store is damaged; "
                      f"ingest it again")


def _check_chunk(arr, i: int, raw: bytes) -> None:
    """Raise StoreError unless ``raw`` is an intact chunk ``i`` of ``arr``.

    Keys chunks (vlen-utf8 + zstd) are checked cheaply: the zstd frame
    decompresses and its item count is the chunk's (a full decode of a
    chunk's strings would cost a large share of a scoring task); other
    codecs decode.
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


def write_span(arr, a: int, b: int, rows: np.ndarray) -> None:
    """Rows ``[a, b)`` of ``arr``: one whole chunk (or the last one's rows)
    written directly (:func:`write_rows`), any other span through zarr."""
    c = arr.chunks[0]
    if a % c == 0 and (b - a == c or b == arr.shape[0]):
        write_rows(arr, a // c, rows)
    else:
        arr[a:b] = rows


def write_rows(arr, i: int, rows: np.ndarray) -> None:
    """Write the rows of chunk ``i`` (the whole chunk), directly when the codec
    allows (ours, and zarr's default for strings): the bytes zarr would store."""
    c = arr.chunks[0]
    start, stop = i * c, min((i + 1) * c, arr.shape[0])
    if np.shape(rows)[:1] != (stop - start,):
        raise StoreError(f"{_where(arr)}: chunk {i} holds rows {start}-{stop - 1} "
                         f"({stop - start} rows), got {np.shape(rows)[0] if np.ndim(rows) else 0} "
                         f"rows to write: write a whole chunk")
    if _fast_strings(arr):
        _put_chunk(arr, i, _encode_strings(arr, rows, c))
        return
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
