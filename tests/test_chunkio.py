"""Tests of digitbatch.chunkio: direct chunk reads and writes against zarr's own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import ZstdCodec
from zarr.storage import LocalStore, MemoryStore

from digitbatch.chunkio import copy_chunk, read_rows, write_rows, write_span
from digitbatch.errors import StoreError
from digitbatch.layout import COMPRESSORS, IMAGE_CODECS

from .conftest import synthetic_digits

EVERY = {"write_empty_chunks": True}  # as the store writer: every chunk on disk
C = 64  # rows a chunk

# (rows, chunk): one short chunk; 2 (even) and 3 (odd) chunks, the last ragged;
# 5 full chunks (odd, none ragged)
SHAPES = [(40, C), (100, C), (150, C), (5 * C, C)]


def _data(n: int, kind: str) -> np.ndarray:
    """Digit-like images (they compress) or noise (Blosc stores it uncompressed)."""
    if kind == "digits":
        return synthetic_digits(n, seed=n)[0]
    return np.random.default_rng(n).integers(0, 256, (n, 28, 28), dtype=np.uint8)


def _group(where: Path | None):
    store = LocalStore(where) if where is not None else MemoryStore()
    return zarr.open_group(store, mode="w")


def _images(g, data: np.ndarray, chunk: int, codec: str = "lz4", name: str = "images"):
    arr = g.create_array(name, shape=data.shape, chunks=(chunk, *data.shape[1:]), dtype=data.dtype,
                         compressors=IMAGE_CODECS[codec], fill_value=0, config=EVERY)
    arr[:] = data  # zarr's own write
    return arr


def _keys(g, n: int, chunk: int, name: str = "keys"):
    arr = g.create_array(name, shape=(n,), chunks=(chunk,), dtype=str, config=EVERY)
    arr[:] = np.array([f"member-{i:05d}.png" for i in range(n)])
    return arr


def _bounds(n: int, c: int) -> list[tuple[int, int]]:
    return [(s, min(s + c, n)) for s in range(0, n, c)]


def _chunk_path(root: Path, name: str, i: int, ndim: int) -> Path:
    return root / name / "c" / "/".join([str(i)] + ["0"] * (ndim - 1))


# --- read_rows -------------------------------------------------------------------


@pytest.mark.parametrize("n, c", SHAPES)
@pytest.mark.parametrize("codec", ["lz4", "none"])
@pytest.mark.parametrize("kind", ["digits", "noise"])
def test_read_rows_equals_zarrs_read(tmp_path, n, c, codec, kind):
    data = _data(n, kind)
    arr = _images(_group(tmp_path / "s.zarr"), data, c, codec)
    for i, (a, b) in enumerate(_bounds(n, c)):
        expected = arr[a:b]
        np.testing.assert_array_equal(expected, data[a:b])
        got = read_rows(arr, i)
        assert got.shape == (b - a, 28, 28) and got.dtype == np.uint8
        np.testing.assert_array_equal(got, expected)
        reused = read_rows(arr, i, reuse=True)
        assert reused.shape == (b - a, 28, 28)
        np.testing.assert_array_equal(reused, expected)
        if codec == "none":  # read in place from the mapped file, not decoded into a copy
            assert not reused.flags.writeable


def test_reuse_reads_of_several_chunks_each_hold_their_own_rows(tmp_path):
    data = _data(5 * C, "digits")
    arr = _images(_group(tmp_path / "s.zarr"), data, C)
    copies = [read_rows(arr, i, reuse=True).copy() for i in range(5)]
    np.testing.assert_array_equal(np.concatenate(copies), data)
    plain = [read_rows(arr, i) for i in range(5)]  # without reuse: independent arrays
    np.testing.assert_array_equal(np.concatenate(plain), data)


@pytest.mark.parametrize("dtype", ["int8", "float32", "uint16"])
def test_read_rows_of_other_dtypes_and_shapes(tmp_path, dtype):
    rng = np.random.default_rng(1)
    data = (rng.normal(0, 40, (150, 10)) if dtype == "float32" else
            rng.integers(-1, 10, (150, 10)) if dtype == "int8" else
            rng.integers(0, 60000, (150, 10))).astype(dtype)
    g = _group(tmp_path / "s.zarr")
    arr = g.create_array("x", shape=data.shape, chunks=(C, 10), dtype=dtype, compressors=COMPRESSORS,
                         fill_value=0, config=EVERY)
    arr[:] = data
    labels = g.create_array("labels", shape=(150,), chunks=(C,), dtype="int8",
                            compressors=COMPRESSORS, fill_value=-1, config=EVERY)
    labels[:] = data[:, 0].astype("int8")
    for i, (a, b) in enumerate(_bounds(150, C)):
        np.testing.assert_array_equal(read_rows(arr, i), arr[a:b])
        np.testing.assert_array_equal(read_rows(arr, i, reuse=True), data[a:b])
        np.testing.assert_array_equal(read_rows(labels, i), labels[a:b])


def test_read_rows_through_the_store_and_at_the_root(tmp_path):
    # a store that is no local directory (as S3): the chunk is a key of the store
    data = _data(150, "digits")
    arr = _images(_group(None), data, C)
    for i, (a, b) in enumerate(_bounds(150, C)):
        np.testing.assert_array_equal(read_rows(arr, i), data[a:b])
        np.testing.assert_array_equal(read_rows(arr, i, reuse=True), data[a:b])
    # an array at the root of a local store (no group path before its chunk keys)
    root = zarr.create_array(LocalStore(tmp_path / "root.zarr"), shape=data.shape,
                             chunks=(C, 28, 28), dtype="uint8", compressors=IMAGE_CODECS["none"],
                             fill_value=0, config=EVERY)
    root[:] = data
    for i, (a, b) in enumerate(_bounds(150, C)):
        np.testing.assert_array_equal(read_rows(root, i, reuse=True), data[a:b])


def test_read_rows_of_other_codecs_goes_through_zarr(tmp_path):
    g = _group(tmp_path / "s.zarr")
    keys = _keys(g, 150, C)
    data = np.arange(150 * 3, dtype="int32").reshape(150, 3)
    z = g.create_array("z", shape=data.shape, chunks=(C, 3), dtype="int32",
                       compressors=(ZstdCodec(level=3),), fill_value=0, config=EVERY)
    z[:] = data
    for i, (a, b) in enumerate(_bounds(150, C)):
        assert read_rows(keys, i).tolist() == [f"member-{j:05d}.png" for j in range(a, b)]
        np.testing.assert_array_equal(read_rows(z, i), data[a:b])


# --- damage -----------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["lz4", "none"])
@pytest.mark.parametrize("reuse", [False, True])
def test_a_missing_chunk_is_a_store_error_naming_it(tmp_path, codec, reuse):
    root = tmp_path / "s.zarr"
    g = _group(root)
    arr = _images(g, _data(150, "digits"), C, codec)
    _chunk_path(root, "images", 2, 3).unlink()  # the ragged last chunk, rows 128-149
    with pytest.raises(StoreError, match=r"chunk 2 of .*s\.zarr/images is missing \(rows 128-149\)"
                                         r".*ingest it again"):
        read_rows(arr, 2, reuse=reuse)
    _chunk_path(root, "images", 1, 3).unlink()
    with pytest.raises(StoreError, match=r"chunk 1 .* missing \(rows 64-127\)"):
        read_rows(arr, 1, reuse=reuse)
    np.testing.assert_array_equal(read_rows(arr, 0, reuse=reuse), arr[:C])  # the others read
    keys = _keys(g, 150, C)
    _chunk_path(root, "keys", 1, 1).unlink()
    with pytest.raises(StoreError, match=r"chunk 1 of .*s\.zarr/keys is missing \(rows 64-127\)"):
        read_rows(keys, 1)
    # zarr alone would read fill values there
    assert arr[C: 2 * C].max() == 0 and set(keys[C: 2 * C].tolist()) == {""}


def test_a_missing_chunk_in_a_remote_like_store(tmp_path):
    g = _group(None)
    arr = _images(g, _data(150, "digits"), C)
    zarr.core.sync.sync(arr.store.delete("images/c/1/0/0"))
    with pytest.raises(StoreError, match=r"chunk 1 of memory://.*images is missing"):
        read_rows(arr, 1)


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[:-10])


def _garbage(p: Path) -> None:
    p.write_bytes(b"garbage")


def _empty(p: Path) -> None:
    p.write_bytes(b"")


def _header_lies(p: Path) -> None:
    raw = bytearray(p.read_bytes())
    raw[4:8] = (int.from_bytes(raw[4:8], "little") // 2).to_bytes(4, "little")  # decoded size
    p.write_bytes(bytes(raw))


def _from_other_array(p: Path) -> None:
    # an intact Blosc chunk of another shape (chunk size 32, not 64)
    other = p.parents[5] / "other.zarr"  # (p is .../s.zarr/images/c/1/0/0)
    _images(_group(other), _data(40, "digits"), 32)
    p.write_bytes(_chunk_path(other, "images", 0, 3).read_bytes())


@pytest.mark.parametrize("damage", [_truncate, _garbage, _empty, _header_lies, _from_other_array])
@pytest.mark.parametrize("codec", ["lz4", "none"])
@pytest.mark.parametrize("reuse", [False, True])
def test_a_corrupt_chunk_is_a_store_error_naming_it(tmp_path, damage, codec, reuse):
    root = tmp_path / "s.zarr"
    data = _data(150, "digits")
    arr = _images(_group(root), data, C, codec)
    damage(_chunk_path(root, "images", 1, 3))
    with pytest.raises(StoreError, match=r"chunk 1 of .*s\.zarr/images is corrupt .*ingest it again"):
        read_rows(arr, 1, reuse=reuse)
    for i in (0, 2):  # the other chunks still read
        np.testing.assert_array_equal(read_rows(arr, i, reuse=reuse), data[i * C: (i + 1) * C])


def test_a_corrupt_chunk_says_what_is_wrong(tmp_path):
    root = tmp_path / "s.zarr"
    arr = _images(_group(root), _data(150, "digits"), C)
    _garbage(_chunk_path(root, "images", 0, 3))
    with pytest.raises(StoreError, match=r"corrupt \(7 bytes is shorter than a Blosc header\)"):
        read_rows(arr, 0)
    _truncate(_chunk_path(root, "images", 1, 3))
    with pytest.raises(StoreError, match=r"bytes stored, header says \d+ \(decoded 50176, expected 50176\)"):
        read_rows(arr, 1, reuse=True)


def test_a_corrupt_chunk_of_another_codec_is_a_store_error(tmp_path):
    root = tmp_path / "s.zarr"
    keys = _keys(_group(root), 150, C)
    _garbage(_chunk_path(root, "keys", 0, 1))
    with pytest.raises(StoreError, match=r"chunk 0 of .*keys is corrupt"):
        read_rows(keys, 0)


# --- write_rows ---------------------------------------------------------------------


@pytest.mark.parametrize("n, c", SHAPES)
@pytest.mark.parametrize("codec", ["lz4", "none"])
def test_write_rows_round_trips_through_zarr(tmp_path, n, c, codec):
    data = _data(n, "digits")
    g = _group(tmp_path / "s.zarr")
    arr = g.create_array("images", shape=data.shape, chunks=(c, 28, 28), dtype="uint8",
                         compressors=IMAGE_CODECS[codec], fill_value=0, config=EVERY)
    bounds = _bounds(n, c)
    for i, (a, b) in reversed(list(enumerate(bounds))):  # any order, the ragged one first
        write_rows(arr, i, data[a:b])
    np.testing.assert_array_equal(arr[:], data)  # zarr's own read
    for i, (a, b) in enumerate(bounds):
        np.testing.assert_array_equal(read_rows(arr, i), data[a:b])
    # the bytes are what zarr writes for the same rows (same codec, same padding)
    ref = _images(g, data, c, codec, name="ref")
    for i in range(len(bounds)):
        assert _chunk_path(tmp_path / "s.zarr", "images", i, 3).read_bytes() == \
            _chunk_path(tmp_path / "s.zarr", "ref", i, 3).read_bytes()
    assert ref.metadata.codecs == arr.metadata.codecs


def test_write_rows_pads_the_ragged_chunk_with_the_fill_value(tmp_path):
    g = _group(tmp_path / "s.zarr")
    labels = g.create_array("labels", shape=(150,), chunks=(C,), dtype="int8",
                            compressors=COMPRESSORS, fill_value=-1, config=EVERY)
    y = synthetic_digits(150)[1]
    for i, (a, b) in enumerate(_bounds(150, C)):
        write_rows(labels, i, y[a:b])
    np.testing.assert_array_equal(labels[:], y)
    # grown, the array shows the padding as the fill value (as zarr pads)
    labels.resize((3 * C,))
    assert labels[150:].tolist() == [-1] * (3 * C - 150)


def test_write_rows_of_other_codecs_and_stores(tmp_path):
    data = _data(150, "digits")
    mem = _group(None)
    remote = mem.create_array("images", shape=data.shape, chunks=(C, 28, 28), dtype="uint8",
                              compressors=IMAGE_CODECS["lz4"], fill_value=0, config=EVERY)
    g = _group(tmp_path / "s.zarr")
    z = g.create_array("z", shape=data.shape, chunks=(C, 28, 28), dtype="uint8",
                       compressors=(ZstdCodec(level=1),), fill_value=0, config=EVERY)
    keys = g.create_array("keys", shape=(150,), chunks=(C,), dtype=str, config=EVERY)
    names = np.array([f"k{i}" for i in range(150)])
    for i, (a, b) in enumerate(_bounds(150, C)):
        write_rows(remote, i, data[a:b])
        write_rows(z, i, data[a:b])
        write_rows(keys, i, names[a:b])
    np.testing.assert_array_equal(remote[:], data)
    np.testing.assert_array_equal(z[:], data)
    assert keys[:].tolist() == names.tolist()


@pytest.mark.parametrize("n, c", SHAPES)
def test_write_rows_of_strings_stores_the_bytes_zarr_stores(tmp_path, n, c):
    # (an archive's member keys: written directly, as zarr would write them)
    names = [f"{i % 10}/scan-{i:05d}{'é' * (i % 3)}.png" if i % 7 else "" for i in range(n)]
    g = _group(tmp_path / "s.zarr")
    keys = g.create_array("keys", shape=(n,), chunks=(c,), dtype=str, config=EVERY)
    ref = g.create_array("ref", shape=(n,), chunks=(c,), dtype=str, config=EVERY)
    bounds = _bounds(n, c)
    for i, (a, b) in reversed(list(enumerate(bounds))):  # any order, the ragged one first
        write_rows(keys, i, np.array(names[a:b], dtype=object))
        ref[a:b] = np.array(names[a:b], dtype=object)  # zarr's own write
    for i in range(len(bounds)):
        assert _chunk_path(tmp_path / "s.zarr", "keys", i, 1).read_bytes() == \
            _chunk_path(tmp_path / "s.zarr", "ref", i, 1).read_bytes()
    assert keys[:].tolist() == names


def test_write_rows_of_strings_with_other_codecs_goes_through_zarr(tmp_path):
    names = np.array([f"k{i}" for i in range(150)], dtype=object)
    g = _group(tmp_path / "s.zarr")
    summed = g.create_array("summed", shape=(150,), chunks=(C,), dtype=str, config=EVERY,
                            compressors=(ZstdCodec(level=1, checksum=True),))
    plain = g.create_array("plain", shape=(150,), chunks=(C,), dtype=str, config=EVERY,
                           compressors=None)
    remote = _group(None).create_array("keys", shape=(150,), chunks=(C,), dtype=str,
                                       config=EVERY)
    for i, (a, b) in enumerate(_bounds(150, C)):
        for arr in (summed, plain, remote):
            write_rows(arr, i, names[a:b])
    for arr in (summed, plain, remote):
        assert arr[:].tolist() == names.tolist()


def test_write_span_writes_whole_chunks_directly_and_other_spans_through_zarr(tmp_path):
    data = _data(150, "digits")
    g = _group(tmp_path / "s.zarr")
    arr = g.create_array("images", shape=data.shape, chunks=(C, 28, 28), dtype="uint8",
                         compressors=IMAGE_CODECS["lz4"], fill_value=0, config=EVERY)
    ref = _images(g, data, C, name="ref")
    write_span(arr, 128, 150, data[128:150])  # the ragged last chunk
    write_span(arr, 0, 64, data[0:64])  # a whole chunk
    write_span(arr, 64, 100, data[64:100])  # part of one: through zarr
    write_span(arr, 100, 128, data[100:128])
    np.testing.assert_array_equal(arr[:], data)
    for i in range(3):
        assert _chunk_path(tmp_path / "s.zarr", "images", i, 3).read_bytes() == \
            _chunk_path(tmp_path / "s.zarr", "ref", i, 3).read_bytes()
    assert ref.metadata.codecs == arr.metadata.codecs


def test_write_rows_refuses_the_wrong_number_of_rows(tmp_path):
    data = _data(150, "digits")
    arr = _images(_group(tmp_path / "s.zarr"), data, C)
    with pytest.raises(ValueError):
        write_rows(arr, 1, data[C: C + 10])  # chunk 1 holds 64 rows, not 10
    np.testing.assert_array_equal(arr[:], data)  # nothing lost
    keys = _keys(_group(tmp_path / "k.zarr"), 150, C)  # (the direct string write too)
    names = keys[:].tolist()
    with pytest.raises(StoreError, match="chunk 2 holds rows 128-149"):
        write_rows(keys, 2, np.array(["x"] * 5, dtype=object))
    assert keys[:].tolist() == names


# --- copy_chunk ---------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["lz4", "none"])
def test_copy_chunk_copies_the_stored_bytes(tmp_path, codec):
    data = _data(150, "digits")
    src_root, dst_root = tmp_path / "src.zarr", tmp_path / "dst.zarr"
    sg = _group(src_root)
    src, src_keys = _images(sg, data, C, codec), _keys(sg, 150, C)
    dg = _group(dst_root)
    dst = dg.create_array("images", shape=data.shape, chunks=(C, 28, 28), dtype="uint8",
                          compressors=IMAGE_CODECS[codec], fill_value=0, config=EVERY)
    dst_keys = dg.create_array("keys", shape=(150,), chunks=(C,), dtype=str, config=EVERY)
    for i in range(3):
        copy_chunk(src, dst, i)
        copy_chunk(src_keys, dst_keys, i)  # the last one ragged: checked by its item count
        for name, ndim in (("images", 3), ("keys", 1)):
            assert _chunk_path(dst_root, name, i, ndim).read_bytes() == \
                _chunk_path(src_root, name, i, ndim).read_bytes()
    np.testing.assert_array_equal(dst[:], data)
    assert dst_keys[:].tolist() == src_keys[:].tolist()


def test_copy_chunk_between_unlike_arrays_and_stores(tmp_path):
    data = _data(150, "digits")
    src = _images(_group(tmp_path / "src.zarr"), data, C, "lz4")
    # another codec, another chunk size: copied through zarr, the values the same
    dg = _group(tmp_path / "dst.zarr")
    unlike = dg.create_array("images", shape=data.shape, chunks=(C, 28, 28), dtype="uint8",
                             compressors=IMAGE_CODECS["none"], fill_value=0, config=EVERY)
    halves = dg.create_array("halves", shape=data.shape, chunks=(C // 2, 28, 28), dtype="uint8",
                             compressors=IMAGE_CODECS["lz4"], fill_value=0, config=EVERY)
    # the same layout in a store that is no directory: the bytes through the store
    remote = _group(None).create_array(
        "images", shape=data.shape, chunks=(C, 28, 28), dtype="uint8",
        compressors=IMAGE_CODECS["lz4"], fill_value=0, config=EVERY)
    for i in (2, 0, 1):
        copy_chunk(src, unlike, i)
        copy_chunk(src, halves, i)
        copy_chunk(src, remote, i)
    np.testing.assert_array_equal(unlike[:], data)
    np.testing.assert_array_equal(halves[:], data)
    _images(dg, data, C, "none", name="ref")  # zarr's write in the destination's codec
    for i in range(3):
        assert _chunk_path(tmp_path / "dst.zarr", "images", i, 3).read_bytes() == \
            _chunk_path(tmp_path / "dst.zarr", "ref", i, 3).read_bytes()
    np.testing.assert_array_equal(remote[:], data)
    back = _images(_group(tmp_path / "back.zarr"), np.zeros_like(data), C, "lz4")
    for i in range(3):
        copy_chunk(remote, back, i)
    np.testing.assert_array_equal(back[:], data)


def test_copy_chunk_refuses_a_missing_or_damaged_chunk(tmp_path):
    data = _data(150, "digits")
    src_root, dst_root = tmp_path / "src.zarr", tmp_path / "dst.zarr"
    sg = _group(src_root)
    src, src_keys = _images(sg, data, C), _keys(sg, 150, C)
    dg = _group(dst_root)
    dst = dg.create_array("images", shape=data.shape, chunks=(C, 28, 28), dtype="uint8",
                          compressors=IMAGE_CODECS["lz4"], fill_value=0, config=EVERY)
    dst_keys = dg.create_array("keys", shape=(150,), chunks=(C,), dtype=str, config=EVERY)

    _chunk_path(src_root, "images", 2, 3).unlink()
    with pytest.raises(StoreError, match=r"chunk 2 of .*src\.zarr/images is missing \(rows 128-149\)"):
        copy_chunk(src, dst, 2)
    _truncate(_chunk_path(src_root, "images", 1, 3))
    with pytest.raises(StoreError, match=r"chunk 1 of .*src\.zarr/images is corrupt"):
        copy_chunk(src, dst, 1)
    _garbage(_chunk_path(src_root, "keys", 0, 1))
    with pytest.raises(StoreError, match=r"chunk 0 of .*src\.zarr/keys is corrupt"):
        copy_chunk(src_keys, dst_keys, 0)
    # an intact zstd frame of keys, but of another chunk size: the wrong item count
    other = tmp_path / "other.zarr"
    _keys(_group(other), 40, 32)
    _chunk_path(src_root, "keys", 1, 1).write_bytes(_chunk_path(other, "keys", 0, 1).read_bytes())
    with pytest.raises(StoreError, match=r"chunk 1 of .*keys is corrupt \(holds 32 items, expected 64\)"):
        copy_chunk(src_keys, dst_keys, 1)
    # damage is not carried into the copy: nothing was written
    for name, ndim in (("images", 3), ("keys", 1)):
        assert not any(_chunk_path(dst_root, name, i, ndim).exists() for i in range(3))
    copy_chunk(src, dst, 0)  # an intact chunk still copies
    np.testing.assert_array_equal(dst[:C], data[:C])
