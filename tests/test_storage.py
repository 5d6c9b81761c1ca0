"""Object storage: stores, archives, models and outputs at s3:// URLs.

Against moto's S3 server (tests/s3server.py): the same results as local
paths, the same exactly-once guarantees (conditional PUT for the lock,
one PUT per commit record), and missing chunks are errors, never fills.
"""

from __future__ import annotations

import numpy as np
import pytest

from digitbatch import storage
from digitbatch.errors import SourceNotFoundError, StoreError, StoreExistsError
from digitbatch.ingest import ingest
from digitbatch.layout import open_store

from .s3server import s3_server
from .test_ingest import digit_members, make_tar, png_bytes

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def bucket():
    with s3_server() as url:
        yield url


def test_local_paths_stay_pathlib(tmp_path):
    assert type(storage.to_path(str(tmp_path))) is type(tmp_path)
    assert storage.to_path(f"file://{tmp_path}") == tmp_path
    assert not storage.is_url("relative/dir") and not storage.is_url("C:/x")
    assert storage.is_url("s3://b/k") and storage.is_url("gs://b/k")
    assert str(storage.to_path("s3://b/k/")) == "s3://b/k"


def test_primitives_on_s3(bucket):
    p = storage.to_path(f"{bucket}/prims")
    storage.write_atomic(p / "a.json", '{"x": 1}')
    assert (p / "a.json").read_text() == '{"x": 1}'
    storage.create_exclusive(p / ".lock", "me")
    with pytest.raises(FileExistsError):
        storage.create_exclusive(p / ".lock", "you")
    assert (p / ".lock").read_text() == "me"
    assert sorted(storage.listdir(p)) == [".lock", "a.json"]
    # a listing is never served from a cache: a file written by another
    # process (another filesystem instance) shows up at once
    import s3fs

    other = s3fs.S3FileSystem(skip_instance_cache=True)
    other.pipe_file(f"{p.path}/b.json", b"{}")
    assert "b.json" in storage.listdir(p)
    storage.rmtree(p)
    assert storage.listdir(p) == []


def _archive(tmp_path):
    members, x, _ = digit_members(700, seed=5)
    members["bad/broken.png"] = png_bytes(x[0])[:30]
    members["notes.txt"] = b"not an image"
    return make_tar(tmp_path / "digits.tar.gz", members)


def _upload(local, url):
    p = storage.to_path(url)
    p.fs.put_file(str(local), p.path)


def test_ingest_an_archive_in_a_bucket_into_a_bucket(bucket, tmp_path):
    src = _archive(tmp_path)
    _upload(src, f"{bucket}/in/digits.tar.gz")
    local = ingest(src, tmp_path / "local.zarr", chunk_size=256, scheduler="synchronous")
    url = f"{bucket}/stores/s.zarr"
    remote = ingest(f"{bucket}/in/digits.tar.gz", url, chunk_size=256, scheduler="local")
    assert remote.path == url
    assert (remote.n_images, remote.n_rejects, remote.checksum) == \
        (local.n_images, local.n_rejects, local.checksum)
    s, ls = open_store(url), open_store(tmp_path / "local.zarr")
    assert s.meta["source"]["path"] == f"{bucket}/in/digits.tar.gz"
    np.testing.assert_array_equal(s.images[:], ls.images[:])
    np.testing.assert_array_equal(s.keys[:], ls.keys[:])
    assert s.rejects() == ls.rejects()
    # an existing store is refused, and replaced with overwrite
    with pytest.raises(StoreExistsError):
        ingest(f"{bucket}/in/digits.tar.gz", url, chunk_size=256, scheduler="synchronous")
    again = ingest(f"{bucket}/in/digits.tar.gz", url, chunk_size=256, overwrite=True,
                   scheduler="synchronous")
    assert again.checksum == local.checksum and open_store(url).n == local.n_images
    with pytest.raises(SourceNotFoundError):
        ingest(f"{bucket}/in/nothing.tar.gz", f"{bucket}/stores/n.zarr")


def test_ingest_a_folder_prefix_in_a_bucket(bucket, tmp_path):
    members, _, labels = digit_members(300, seed=6)
    fs = storage.to_path(bucket).fs
    for name, data in members.items():
        fs.pipe_file(f"{bucket[5:]}/folder/{name}", data)
    root = tmp_path / "folder"
    for name, data in members.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    a = ingest(f"{bucket}/folder", tmp_path / "a.zarr", chunk_size=256, scheduler="synchronous")
    b = ingest(root, tmp_path / "b.zarr", chunk_size=256, scheduler="synchronous")
    assert a.checksum == b.checksum and a.n_images == 300


def test_a_remote_store_with_a_missing_or_corrupt_chunk_is_an_error(bucket, tmp_path):
    from digitbatch.layout import read_rows

    src = _archive(tmp_path)
    url = f"{bucket}/stores/damaged.zarr"
    ingest(src, url, chunk_size=256, scheduler="synchronous")
    s = open_store(url)
    fs = storage.to_path(url).fs
    fs.rm(f"{url[5:]}/images/c/1/0/0")
    with pytest.raises(StoreError, match="chunk 1 .* missing"):
        read_rows(s.images, 1)
    fs.rm(f"{url[5:]}/keys/c/2")
    with pytest.raises(StoreError, match="chunk 2 .* missing"):
        read_rows(s.keys, 2)
    fs.pipe_file(f"{url[5:]}/images/c/0/0/0", b"garbage")
    with pytest.raises(StoreError, match="chunk 0 .* corrupt"):
        read_rows(s.images, 0)


def test_an_interrupted_remote_store_does_not_open(bucket, tmp_path):
    from digitbatch.layout import StoreWriter

    url = f"{bucket}/stores/partial.zarr"
    w = StoreWriter(url, source={"kind": "test"}, chunk_size=256)
    w.append(np.zeros((300, 28, 28), np.uint8), np.zeros(300, np.int8),
             [f"k{i}" for i in range(300)])
    w._flush(w._buf.n)  # written in place, never finished (a killed ingest)
    with pytest.raises(StoreError, match="not a digitbatch store|incomplete"):
        open_store(url)
    w.abort()
    assert not storage.to_path(url).exists()
