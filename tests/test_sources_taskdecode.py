"""digitbatch.sources.taskdecode: a task's entries give the same digits, flags,
folder labels, rejects and reasons whether plain JPEGs and PNGs are stacked
or every member is judged and decoded one at a time.

The tar's runs mix plain JPEGs (grey and colour, two sizes) with everything
that must take the one-at-a-time path: an EXIF-turned JPEG, a tar in
disguise, a JPEG without an image extension, one whose pixels are cut short
(its header is vouched for, its fast decode fails), a PNG, a member over the
size limit; the entries also hold a member with its bytes and a reject.
Checked by decode_entries itself, small blocks and few stacks, a gzip tar,
ingest's task and a scoring chunk. A run of PNGs mixes plain ones (grey and
RGB, two sizes) with a text chunk, a tar in disguise, a PNG without an
image extension, one vouched for whose rows have an unknown filter, a
palette PNG, a JPEG and a member over the size limit.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile

import numpy as np
import pytest
import zarr

from digitbatch.modelio import load_model
from digitbatch.scoring.chunks import score_archive_chunk
from digitbatch.scoring.output import (
    OutputSpec,
    commit_path,
    create_output,
    create_staging,
)
from digitbatch.scoring.tasks import ChunkTask
from digitbatch.sources import decoders, jitload, jpegvouch, pngvouch, taskdecode
from digitbatch.sources.base import Reject
from digitbatch.sources.listing import decode_packed, list_archive, pack
from digitbatch.sources.members import Member
from digitbatch.sources.taskdecode import decode_entries

from .test_sources_jpegvouch import BASE, CORPUS, _jpeg, _scan
from .test_sources_pngvouch import CORPUS as PNGS
from .test_sources_pngvouch import UNDECODABLE, make_png

pytestmark = pytest.mark.skipif(not jitload.installed(), reason="numba is not installed")

LIMIT = 4000


@pytest.fixture(autouse=True)
def _kernel(monkeypatch):
    monkeypatch.delenv("DIGITBATCH_NO_JIT", raising=False)
    monkeypatch.delenv("DIGITBATCH_FAST_DECODE", raising=False)
    jpegvouch.load()
    pngvouch.load()


def _no_stacks(monkeypatch):
    """Every member judged and decoded one at a time (no run is vouched for)."""
    monkeypatch.setattr(jpegvouch, "MIN_RUN", 10**9)
    monkeypatch.setattr(pngvouch, "MIN_RUN", 10**9)


def _tar(path, members: list[tuple[str, bytes]], compress: bool = False):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    path.write_bytes(gzip.compress(buf.getvalue()) if compress else buf.getvalue())
    return path


def _nested_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("x.png")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"abc"))
    return buf.getvalue()[:1024]  # (its first header is what gives it away)


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    _scan(seed).save(buf, format="PNG")
    return buf.getvalue()


def _mixed() -> list[tuple[str, bytes]]:
    out = [(f"{k % 10}/{k:03d}.jpg",
            _jpeg(_scan(k, size=(40, 36) if k % 2 else (32, 44),
                        mode="RGB" if k % 3 == 0 else "L")))
           for k in range(13)]
    out[2] = ("2/002.jpg", CORPUS["EXIF orientation 6"][0])
    out[4] = ("4/004.jpeg", _nested_tar())
    out[5] = ("5/005.bin", _jpeg(_scan(5)))  # no image extension: judged by its content
    out[7] = ("7/007.jpg", BASE[:len(BASE) - 40])  # vouched for, pixels cut short
    out[8] = ("8/008.jpg", _png(8))
    out.append(("huge/000.jpg", _jpeg(_scan(13)) + bytes(5000)))  # over the size limit
    return out


PLAIN = ["0/000.jpg", "1/001.jpg", "3/003.jpg", "6/006.jpg", "7/007.jpg", "9/009.jpg",
         "0/010.jpg", "1/011.jpg", "2/012.jpg"]  # (7: vouched for, its fast decode fails)


def _entries(path):
    entries = list_archive(path, "tar", limit=LIMIT).entries
    # ... and, as a streamed task holds them, a member with its bytes and a reject
    return [*entries, Member("5/x.jpg", _jpeg(_scan(20)), 5), Reject("link.jpg", "link: a symlink")]


def _same(a, b):
    assert a.keys == b.keys
    np.testing.assert_array_equal(a.digits, b.digits)
    np.testing.assert_array_equal(a.ok, b.ok)
    np.testing.assert_array_equal(a.flags[a.ok], b.flags[b.ok])
    assert a.folder == b.folder
    assert a.rejects == b.rejects


def _spy(monkeypatch) -> list[str]:
    """Keys told busy, and stacked decodes (``+``, each right after the
    member is told busy), in order."""
    calls = []
    real = decoders.jpeg_stack

    def spy(data, spans, out, told=None):
        def tell(i):
            if told is not None:
                told(i)
            calls.append("+")
        return real(data, spans, out, tell)

    monkeypatch.setattr(decoders, "jpeg_stack", spy)
    return calls


def test_stacked_and_one_at_a_time_give_the_same(tmp_path, monkeypatch):
    path = _tar(tmp_path / "a.tar", _mixed())
    entries = _entries(path)
    calls = _spy(monkeypatch)
    told: list[str] = []
    fast = decode_entries(str(path), "tar", entries, limit=LIMIT,
                          busy=lambda k: told.append(k) or calls.append(k))
    assert calls.count("+") == len(PLAIN)  # the plain JPEGs went to the stacks
    # (each told busy right before it; a run's members of one size together)
    assert sorted(k for k, nxt in zip(calls, [*calls[1:], None])
                  if k != "+" and nxt == "+") == sorted(PLAIN)
    with monkeypatch.context() as m:
        _no_stacks(m)
        slow = decode_entries(str(path), "tar", entries, limit=LIMIT)
    _same(fast, slow)
    assert fast.ok.sum() == len(entries) - 4
    assert {r.key: (r.reason.split(":")[0], read) for _, r, read in fast.rejects} == {
        "4/004.jpeg": ("nested-archive", True), "huge/000.jpg": ("too-large", True),
        "link.jpg": ("link", True), "7/007.jpg": ("decode-error", False)}
    assert fast.flags[fast.ok, 1].all() and fast.flags[fast.ok, 0].all()  # scans, dark on light
    assert fast.folder[:4] == [0, 1, 2, 3] and fast.folder[-2:] == [5, None]
    # every member decoded was told busy (7 twice: stacked, then judged as bytes)
    assert sorted(told) == sorted([e.key for e in entries if e.key not in (
        "4/004.jpeg", "huge/000.jpg", "link.jpg")] + ["7/007.jpg"])


def test_small_blocks_and_few_stacks_change_nothing(tmp_path, monkeypatch):
    path = _tar(tmp_path / "a.tar", _mixed())
    entries = _entries(path)
    whole = decode_entries(str(path), "tar", entries, limit=LIMIT)
    flushed = []
    real = taskdecode.normalise_stack
    monkeypatch.setattr(taskdecode, "normalise_stack", lambda s: flushed.append(len(s)) or real(s))
    monkeypatch.setattr(taskdecode, "PENDING_PIXELS", 3 * 40 * 36)  # stacks of 2 or 3 rows
    monkeypatch.setattr(taskdecode, "MAX_STACKS", 1)  # a new size flushes the other
    _same(decode_entries(str(path), "tar", entries, limit=LIMIT), whole)
    assert len(flushed) >= 4 and max(flushed) <= 3 and sum(flushed) == len(PLAIN) - 1


def test_a_gzip_tar_and_the_pillow_only_switch_give_the_same(tmp_path, monkeypatch):
    plain = _tar(tmp_path / "a.tar", _mixed())
    gz = _tar(tmp_path / "a.tar.gz", _mixed(), compress=True)
    want = decode_entries(str(plain), "tar", _entries(plain), limit=LIMIT)
    _same(decode_entries(str(gz), "tar", _entries(gz), limit=LIMIT), want)
    monkeypatch.setenv("DIGITBATCH_FAST_DECODE", "0")
    calls = _spy(monkeypatch)
    _same(decode_entries(str(plain), "tar", _entries(plain), limit=LIMIT), want)
    assert "+" not in calls


def test_ingest_task_is_the_same_stacked_or_not(tmp_path, monkeypatch):
    path = _tar(tmp_path / "a.tar", _mixed())
    task = (str(path), "tar", pack(_entries(path)), LIMIT)
    fast = decode_packed(task)
    _no_stacks(monkeypatch)
    slow = decode_packed(task)
    np.testing.assert_array_equal(fast.images, slow.images)
    np.testing.assert_array_equal(fast.labels, slow.labels)
    assert fast.keys == slow.keys and fast.rejects == slow.rejects
    assert len(fast.keys) == 12 and fast.labels[:2].tolist() == [0, 1]
    # read rejects first, in entry order, then those the decoder refused
    assert [r.reason.split(":")[0] for r in fast.rejects] == [
        "nested-archive", "too-large", "link", "decode-error"]


def test_scoring_chunk_is_the_same_stacked_or_not(tmp_path, monkeypatch, shared_model):
    loaded = load_model(shared_model)
    path = _tar(tmp_path / "a.tar", _mixed())
    entries = _entries(path)
    n = len(entries)

    def staged(name):
        out = tmp_path / name
        create_output(out, OutputSpec(n, 256, 10, False, loaded.sha256, "x"), arrays=False)
        create_staging(out, n=n, chunk_size=256, n_classes=10, proba=False)
        score_archive_chunk(ChunkTask(0, 0, n, pack(entries)), out_path=str(out),
                            model=loaded.model, proba=False, container=str(path), kind="tar",
                            limit=LIMIT, labels=None)
        st = zarr.open_group(str(out), mode="r")["_staging"]
        return ({k: st[k][:] for k in ("valid", "pred", "margin", "labels")},
                json.loads(commit_path(out, 0).read_text()))

    fast, frec = staged("fast.zarr")
    _no_stacks(monkeypatch)
    slow, srec = staged("slow.zarr")
    for k in fast:
        np.testing.assert_array_equal(fast[k], slow[k], err_msg=k)
    assert frec["rejects"] == srec["rejects"] and frec["n"] == srec["n"] == 12
    assert frec["profile"] == srec["profile"]


def test_a_tar_cut_after_listing_stops_the_chunk_before_anything_is_staged(tmp_path, shared_model):
    """The runs are read by one pread each: a tar that shrank since it was listed
    raises ArchiveError naming it, and the chunk stages and commits nothing."""
    from digitbatch.errors import ArchiveError

    loaded = load_model(shared_model)
    path = _tar(tmp_path / "a.tar", _mixed())
    entries = list_archive(path, "tar", limit=LIMIT).entries
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size // 2)
    with pytest.raises(ArchiveError, match="changed or was truncated"):
        decode_entries(str(path), "tar", entries, limit=LIMIT)
    out = tmp_path / "p.zarr"
    n = len(entries)
    create_output(out, OutputSpec(n, 256, 10, False, loaded.sha256, "x"), arrays=False)
    create_staging(out, n=n, chunk_size=256, n_classes=10, proba=False)
    with pytest.raises(ArchiveError, match=str(path)):
        score_archive_chunk(ChunkTask(0, 0, n, pack(entries)), out_path=str(out),
                            model=loaded.model, proba=False, container=str(path), kind="tar",
                            limit=LIMIT, labels=None)
    assert not commit_path(out, 0).exists()
    assert not zarr.open_group(str(out), mode="r")["_staging"]["valid"][:].any()


# --- runs of PNGs ---------------------------------------------------------------------


def _digit_pixels(k: int, rgb: bool, size=(28, 28)) -> np.ndarray:
    rng = np.random.default_rng(k)
    img = np.zeros((*size, 3) if rgb else size, np.uint8)
    img[4:22, 9:19] = rng.integers(0, 256, img[4:22, 9:19].shape, dtype=np.uint8)
    return img


def _png_mixed() -> list[tuple[str, bytes]]:
    out = [(f"{k % 10}/{k:03d}.png",
            make_png(_digit_pixels(k, k % 3 == 0, (28, 28) if k % 2 else (30, 24))))
           for k in range(14)]
    out[2] = ("2/002.png", PNGS["tEXt"][0])
    out[4] = ("4/004.png", PNGS["a tar in disguise"][0])
    out[5] = ("5/005.bin", PNGS["Pillow grey 28x28"][0])  # judged by its content
    out[7] = ("7/007.png", UNDECODABLE["filter type 5"])  # vouched for, decode fails
    out[9] = ("9/009.png", PNGS["palette"][0])
    out[10] = ("0/010.jpg", _jpeg(_scan(10)))
    out.append(("huge/000.png", make_png(_digit_pixels(99, False, (60, 60)), filters=(0,))
                + bytes(4000)))  # over the size limit
    return out


PLAIN_PNGS = ["0/000.png", "1/001.png", "3/003.png", "6/006.png", "8/008.png", "1/011.png",
              "2/012.png", "3/013.png"]


def test_a_run_of_pngs_is_the_same_stacked_or_not(tmp_path, monkeypatch):
    path = _tar(tmp_path / "p.tar", _png_mixed())
    entries = list_archive(path, "tar", limit=LIMIT).entries
    decoded = []
    real = pngvouch.decode

    def spy(buf, starts, plain, ks, **kw):
        for took, stack in real(buf, starts, plain, ks, **kw):
            decoded.extend(took)
            yield took, stack

    monkeypatch.setattr(pngvouch, "decode", spy)
    told: list[str] = []
    fast = decode_entries(str(path), "tar", entries, limit=LIMIT, busy=told.append)
    assert sorted(entries[k].key for k in decoded) == sorted(PLAIN_PNGS)
    with monkeypatch.context() as m:
        _no_stacks(m)
        slow = decode_entries(str(path), "tar", entries, limit=LIMIT)
    _same(fast, slow)
    assert {r.key: (r.reason.split(":")[0], read) for _, r, read in fast.rejects} == {
        "4/004.png": ("nested-archive", True), "huge/000.png": ("too-large", True),
        "7/007.png": ("decode-error", False)}
    assert fast.folder[:4] == [0, 1, 2, 3]
    # every member decoded was told busy (7 twice: inflated, then judged as bytes)
    assert sorted(told) == sorted([e.key for e in entries if e.key not in (
        "4/004.png", "huge/000.png")] + ["7/007.png"])
    # the same with stacks of one or two images
    monkeypatch.setattr(taskdecode, "PENDING_PIXELS", 2 * 28 * 28)
    _same(decode_entries(str(path), "tar", entries, limit=LIMIT), fast)


def test_ingest_task_of_pngs_is_the_same_stacked_or_not(tmp_path, monkeypatch):
    path = _tar(tmp_path / "p.tar", _png_mixed())
    task = (str(path), "tar", pack(list_archive(path, "tar", limit=LIMIT).entries), LIMIT)
    fast = decode_packed(task)
    _no_stacks(monkeypatch)
    slow = decode_packed(task)
    np.testing.assert_array_equal(fast.images, slow.images)
    np.testing.assert_array_equal(fast.labels, slow.labels)
    assert fast.keys == slow.keys and fast.rejects == slow.rejects and len(fast.keys) == 12
