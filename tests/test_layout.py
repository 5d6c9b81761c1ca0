"""The store layout: atomic writes, validation, chunking."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from digitbatch.errors import StoreError, StoreExistsError, StoreNotFoundError
from digitbatch.layout import (
    ATTRS_KEY, UNKNOWN_LABEL, StoreWriter, chunk_bounds, open_store, validate_chunk_size,
)

from .conftest import synthetic_digits


def _write(path, n=700, chunk=256, **kw):
    x, y = synthetic_digits(n)
    with StoreWriter(path, source={"kind": "test"}, chunk_size=chunk, **kw) as w:
        # uneven appends: the writer must re-block them into whole chunks
        for a, b in ((0, 100), (100, 101), (101, 600), (600, n)):
            a, b = min(a, n), min(b, n)
            w.append(x[a:b], y[a:b], [f"k{i}" for i in range(a, b)])
        store = w.finish(splits={"train": (0, min(500, n)), "test": (min(500, n), n)})
    return store, x, y


def test_round_trip_and_chunks(tmp_path):
    store, x, y = _write(tmp_path / "s.zarr")
    assert store.n == 700 and store.chunk_size == 256
    assert store.chunks == [(0, 256), (256, 512), (512, 700)]
    np.testing.assert_array_equal(store.images[:], x)
    np.testing.assert_array_equal(store.labels[:], y)
    assert store.keys[699] == "k699"
    assert store.split_rows("test") == slice(500, 700)
    assert store.meta["label_counts"] == np.bincount(y, minlength=10).tolist()
    assert store.checksum.startswith("sha256:")
    assert not list(tmp_path.glob(".s.zarr.tmp-*"))


def test_rows_are_copied_when_appended_and_the_chunk_buffer_is_reused(tmp_path):
    """A batch's arrays may be reused by the caller once appended, and every
    chunk is assembled in the same buffer (its memory touched once)."""
    x, y = synthetic_digits(700)
    batch_x, batch_y = x[:300].copy(), y[:300].copy()
    with StoreWriter(tmp_path / "s.zarr", source={}, chunk_size=256) as w:
        w.append(batch_x, batch_y, [f"k{i}" for i in range(300)])
        first = w._buf.images
        batch_x[:] = 0  # the caller's array, reused: the 44 rows waiting are copies
        batch_y[:] = 0
        w.append(x[300:], y[300:], [f"k{i}" for i in range(300, 700)])
        assert w._buf.images is first and w._buf.n == 700 - 512
        store = w.finish()
    np.testing.assert_array_equal(store.images[:], x)
    np.testing.assert_array_equal(store.labels[:], y)


def test_checksum_is_content_not_append_pattern(tmp_path):
    a, x, y = _write(tmp_path / "a.zarr")
    with StoreWriter(tmp_path / "b.zarr", source={}, chunk_size=256) as w:
        w.append(x, y, [f"k{i}" for i in range(700)])
        b = w.finish(splits={"train": (0, 500), "test": (500, 700)})
    assert a.checksum == b.checksum


def test_checksum_is_sha256_of_each_chunks_images_labels_and_keys(tmp_path):
    """The store checksum, computed apart: per chunk, the images' bytes, the
    labels' bytes, then the keys one a line."""
    import hashlib

    store, x, y = _write(tmp_path / "s.zarr")
    h = hashlib.sha256()
    for a, b in store.chunks:
        h.update(x[a:b].tobytes())
        h.update(y[a:b].astype(np.int8).tobytes())
        h.update(("\n".join(f"k{i}" for i in range(a, b)) + "\n").encode())
    assert store.checksum == "sha256:" + h.hexdigest()


def test_refuses_existing_and_overwrites_on_request(tmp_path):
    _write(tmp_path / "s.zarr")
    with pytest.raises(StoreExistsError, match="--overwrite"):
        _write(tmp_path / "s.zarr")
    store, _, _ = _write(tmp_path / "s.zarr", n=300, overwrite=True)
    assert store.n == 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


def test_exception_leaves_nothing(tmp_path):
    x, y = synthetic_digits(10)
    with pytest.raises(RuntimeError):
        with StoreWriter(tmp_path / "s.zarr", source={}, chunk_size=256) as w:
            w.append(x, y, list("abcdefghij"))
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_unfinished_tmp_store_does_not_open(tmp_path):
    x, y = synthetic_digits(300)
    w = StoreWriter(tmp_path / "s.zarr", source={}, chunk_size=256).__enter__()
    w.append(x, y, [str(i) for i in range(300)])
    with pytest.raises(StoreError):
        open_store(w.tmp)
    w.abort()


@pytest.mark.parametrize("bad", [0, 10, 1.5, "big", True])
def test_bad_chunk_size(bad):
    with pytest.raises(StoreError, match="chunk_size"):
        validate_chunk_size(bad)


def test_append_rejects_bad_rows(tmp_path):
    x, y = synthetic_digits(4)
    with StoreWriter(tmp_path / "s.zarr", source={}) as w:
        with pytest.raises(StoreError, match="labels must be 0-9"):
            w.append(x, np.array([1, 2, 11, 3], np.int8), list("abcd"))
        with pytest.raises(StoreError, match="uint8"):
            w.append(x.astype(np.float32), y, list("abcd"))
        with pytest.raises(StoreError, match="4 images"):
            w.append(x, y, list("abc"))


def test_open_missing(tmp_path):
    with pytest.raises(StoreNotFoundError, match="digitbatch ingest"):
        open_store(tmp_path / "nope.zarr")


def test_open_not_zarr(tmp_path):
    (tmp_path / "x.zarr").mkdir()
    with pytest.raises(StoreError):
        open_store(tmp_path / "x.zarr")


def _edit_meta(path, **changes):
    g = zarr.open_group(str(path), mode="r+")
    meta = dict(g.attrs[ATTRS_KEY])
    meta.update(changes)
    g.attrs[ATTRS_KEY] = meta


@pytest.mark.parametrize("changes, match", [
    ({"layout_version": 99}, "layout version 99"),       # from a future digitbatch
    ({"complete": False}, "incomplete"),                 # interrupted write
    ({"n_images": 5}, "attributes say 5"),               # arrays and attrs disagree
    ({"splits": {"train": [0, 9999]}}, "outside"),       # split beyond the rows
])
def test_open_validates_attributes(tmp_path, changes, match):
    _write(tmp_path / "s.zarr")
    _edit_meta(tmp_path / "s.zarr", **changes)
    with pytest.raises(StoreError, match=match):
        open_store(tmp_path / "s.zarr")


def test_open_validates_arrays(tmp_path):
    _write(tmp_path / "s.zarr")
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="r+")
    del g["labels"]
    g.create_array("labels", shape=(700,), chunks=(100,), dtype="int8")
    with pytest.raises(StoreError, match="chunk-aligned"):
        open_store(tmp_path / "s.zarr")
    del g["labels"]
    g.create_array("labels", shape=(700,), chunks=(256,), dtype="float32")
    with pytest.raises(StoreError, match="int8"):
        open_store(tmp_path / "s.zarr")


def test_unknown_labels_and_rejects(tmp_path):
    x, _ = synthetic_digits(3)
    with StoreWriter(tmp_path / "s.zarr", source={}) as w:
        w.append(x, np.full(3, UNKNOWN_LABEL, np.int8), ["a", "b", "c"])
        w.add_rejects([("bad.png", "decode-error: truncated")])
        s = w.finish()
    assert s.meta["n_labeled"] == 0 and s.meta["n_rejects"] == 1
    assert s.rejects() == [("bad.png", "decode-error: truncated")]
    assert s.splits == {}
    with pytest.raises(StoreError, match="no split 'train'"):
        s.split_rows("train")


def test_chunk_bounds_cover_exactly():
    for n in (0, 1, 255, 256, 257, 1000):
        b = chunk_bounds(n, 256)
        assert sum(stop - start for start, stop in b) == n
        assert all(b[i][1] == b[i + 1][0] for i in range(len(b) - 1))


def test_attrs_are_json(tmp_path):
    s, _, _ = _write(tmp_path / "s.zarr")
    json.dumps(s.meta)
    for key in ("layout_version", "source", "checksum", "digitbatch_version", "created", "splits"):
        assert key in s.meta
