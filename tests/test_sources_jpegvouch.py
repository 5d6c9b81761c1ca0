"""digitbatch.sources.jpegvouch: a member vouched for is one the Python path
takes unchanged, and reading with ``decode`` gives the same digits, rejects
and reasons as reading the bytes.

The rules are checked on a corpus of real and crafted JPEG headers (every
segment the header walk refuses, tars in disguise, sizes over the limits)
and on a few thousand seeded corruptions of a real header; the read path on
a plain tar whose runs mix plain JPEGs with everything that must take the
Python path, by ``read_entries``, by ingest's task and by a scoring chunk.
"""

from __future__ import annotations

import io
import json
import struct
import tarfile

import numpy as np
import pytest
import zarr
from PIL import Image

from digitbatch.modelio import load_model
from digitbatch.scoring.chunks import score_archive_chunk
from digitbatch.scoring.output import (
    OutputSpec,
    commit_path,
    create_output,
    create_staging,
)
from digitbatch.scoring.tasks import ChunkTask
from digitbatch.sources import jitload, jpegvouch
from digitbatch.sources.decoders import MAX_SIDE, within_limits
from digitbatch.sources.headers import jpeg_header
from digitbatch.sources.images import decode_stream
from digitbatch.sources.listing import decode_packed, list_archive, pack, read_entries
from digitbatch.sources.members import content_reject

pytestmark = pytest.mark.skipif(not jitload.installed(), reason="numba is not installed")


@pytest.fixture(autouse=True)
def _kernel(monkeypatch):
    monkeypatch.delenv("DIGITBATCH_NO_JIT", raising=False)
    monkeypatch.delenv("DIGITBATCH_FAST_DECODE", raising=False)
    jpegvouch.load()


# --- a corpus of headers ---------------------------------------------------------------


def _scan(seed: int, size=(40, 36), mode="L") -> Image.Image:
    rng = np.random.default_rng(seed)
    img = np.full((size[1], size[0]), 235, np.uint8)
    img[6:30, 12:22] = rng.integers(0, 60, (24, 10), dtype=np.uint8)
    im = Image.fromarray(img)
    return im.convert(mode) if mode != "L" else im


def _jpeg(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def _after_soi(data: bytes, extra: bytes) -> bytes:
    return data[:2] + extra + data[2:]


def _sof_at(data: bytes) -> int:
    for m in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2"):
        if (p := data.find(m)) > 0:
            return p
    raise AssertionError("no frame")


def _with_sof(data: bytes, **change) -> bytes:
    """``data`` with its frame's marker, precision, height or width changed."""
    p = _sof_at(data)
    b = bytearray(data)
    if "marker" in change:
        b[p + 1] = change["marker"]
    if "precision" in change:
        b[p + 4] = change["precision"]
    if "height" in change:
        b[p + 5:p + 7] = struct.pack(">H", change["height"])
    if "width" in change:
        b[p + 7:p + 9] = struct.pack(">H", change["width"])
    if "components" in change:
        b[p + 9] = change["components"]
    return bytes(b)


def _exif(orientation: int) -> bytes:
    ifd = struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + bytes(4)
    return b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + ifd


def _comment_at(data: bytes, at: int, text: bytes) -> bytes:
    """A comment right after SOI whose bytes put ``text`` at offset ``at`` of the file."""
    pad = at - 6
    return _after_soi(data, _segment(0xFE, b"." * pad + text + b"." * 8))


BASE = _jpeg(_scan(0))

# name -> (bytes, vouched?)
CORPUS = {
    "grey baseline": (BASE, True),
    "colour 4:2:0": (_jpeg(_scan(1, mode="RGB")), True),
    "colour 4:4:4": (_jpeg(_scan(2, mode="RGB"), subsampling=0), True),
    "progressive": (_jpeg(_scan(3), progressive=True), True),
    "optimised tables": (_jpeg(_scan(4), optimize=True), True),
    "restart interval": (_after_soi(BASE, _segment(0xDD, b"\x00\x04")), True),
    "comment": (_after_soi(BASE, _segment(0xFE, b"a comment")), True),
    "APP2": (_after_soi(BASE, _segment(0xE2, b"ICC_PROFILE\x00junk")), True),
    "fill bytes": (BASE[:2] + b"\xff\xff" + BASE[2:], True),
    "extended frame": (_with_sof(BASE, marker=0xC1), True),
    "long file": (_after_soi(BASE, _segment(0xFE, bytes(2000))), True),
    # refused: the Python path decides
    "EXIF orientation 1": (_after_soi(BASE, _segment(0xE1, _exif(1))), False),
    "EXIF orientation 6": (_after_soi(BASE, _segment(0xE1, _exif(6))), False),
    "XMP in APP1": (_after_soi(BASE, _segment(0xE1, b"http://ns.adobe.com/xap/1.0/\x00x")), False),
    "Adobe APP14": (_after_soi(BASE, _segment(0xEE, b"Adobe\x00\x64\x00\x00\x00\x00\x01")), False),
    "CMYK": (_jpeg(_scan(5, mode="CMYK")), False),
    "lossless frame": (_with_sof(BASE, marker=0xC3), False),
    "arithmetic frame": (_with_sof(BASE, marker=0xC9), False),
    "12-bit": (_with_sof(BASE, precision=12), False),
    "two components": (_with_sof(BASE, components=2), False),
    "zero width": (_with_sof(BASE, width=0), False),
    "zero height": (_with_sof(BASE, height=0), False),
    "over the side limit": (_with_sof(BASE, width=MAX_SIDE + 1), False),
    "two frames": (_after_soi(BASE, BASE[_sof_at(BASE):_sof_at(BASE) + 2 + 11]), False),
    "restart marker in the header": (_after_soi(BASE, b"\xff\xd0"), False),
    "reserved marker": (_after_soi(BASE, _segment(0x02, b"xx")), False),
    "cut in the header": (BASE[:_sof_at(BASE) + 6], False),
    "cut before the scan": (BASE[:BASE.find(b"\xff\xda")], False),
    "a segment past the end": (BASE[:2] + b"\xff\xfe\xff\xff" + BASE[2:40], False),
    "no SOI": (b"\xff\xd9\xff" + BASE[3:], False),
    "SOI then no marker": (b"\xff\xd8\x00" + BASE[3:], False),
    "tiny": (b"\xff\xd8\xff", False),
    "ustar at 257": (_comment_at(BASE, 257, b"ustar"), False),
    "a tar checksum field": (_comment_at(BASE, 148, b"0012345\x00"), False),
    "PNG": (b"\x89PNG\r\n\x1a\n" + bytes(600), False),
}


def _vouch(datas: list[bytes], **limits) -> list[tuple[int, int]]:
    """Each of ``datas`` in one buffer (a few bytes apart, as tar members are not)."""
    starts, sizes, buf = [], [], b""
    for d in datas:
        buf += b"\x00" * 3
        starts.append(len(buf))
        sizes.append(len(d))
        buf += d
    lim = {"max_side": MAX_SIDE, "max_pixels": 2**24, **limits}
    return [tuple(x) for x in jpegvouch.vouch(buf, starts, sizes, **lim).tolist()]


def _python_takes(data: bytes) -> tuple[int, int] | None:
    """(height, width) when the Python path takes ``data`` as a plain fast JPEG."""
    if content_reject("a/1.jpg", data) is not None:
        return None
    hdr = jpeg_header(data)
    if hdr is None or hdr.orientation != 1 or not within_limits(hdr.width, hdr.height):
        return None
    return hdr.height, hdr.width


def test_the_corpus_is_vouched_for_as_labelled():
    names = list(CORPUS)
    got = _vouch([CORPUS[n][0] for n in names])
    assert {n: g != (0, 0) for n, g in zip(names, got)} == {n: CORPUS[n][1] for n in names}


def test_every_member_vouched_for_is_taken_alike_by_the_python_path():
    for name, (data, _) in CORPUS.items():
        (h, w), = _vouch([data])
        if (h, w) != (0, 0):
            assert _python_takes(data) == (h, w), name
    # ... and the tars in disguise are what the Python path refuses as archives
    for name in ("ustar at 257",):
        assert content_reject("a/1.jpg", CORPUS[name][0]).reason.startswith("nested-archive")


def test_seeded_corruptions_of_a_header_never_get_past_the_python_rules():
    rng = np.random.default_rng(7)
    head = BASE.find(b"\xff\xda") + 4
    datas = []
    for _ in range(3000):
        b = bytearray(BASE)
        for _ in range(int(rng.integers(1, 4))):
            b[int(rng.integers(2, head))] = int(rng.choice([0x00, 0x01, 0x08, 0xC0, 0xC2, 0xC3, 0xD0,
                                                           0xD8, 0xDA, 0xE1, 0xEE, 0xFF,
                                                           rng.integers(0, 256)]))
        datas.append(bytes(b))
    got = _vouch(datas)
    vouched = 0
    for d, hw in zip(datas, got):
        if hw != (0, 0):
            vouched += 1
            assert _python_takes(d) == hw
    assert 100 < vouched < len(datas)  # (the corruptions hit both sides)


def test_the_pixel_limit_is_the_callers():
    (hw,) = _vouch([BASE], max_pixels=36 * 40)
    assert hw == (36, 40)
    assert _vouch([BASE], max_pixels=36 * 40 - 1) == [(0, 0)]
    assert _vouch([BASE], max_side=39) == [(0, 0)]


def test_run_sizes_leaves_short_runs_and_runs_with_an_xmp_orientation_to_python():
    datas = [BASE] * jpegvouch.MIN_RUN
    buf = b"".join(datas)
    starts = [k * len(BASE) for k in range(len(datas))]
    sizes = [len(BASE)] * len(datas)
    kw = {"max_side": MAX_SIDE, "max_pixels": 2**24}
    assert jpegvouch.run_sizes(buf, starts, sizes, **kw) is not None
    assert jpegvouch.run_sizes(buf, starts[:-1], sizes[:-1], **kw) is None
    assert jpegvouch.run_sizes(buf + b"tiff:Orientation", starts, sizes, **kw) is None


# --- reading with decode ---------------------------------------------------------------


def _tar(path, members: list[tuple[str, bytes]]):
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _nested_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("x.png")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"abc"))
    return buf.getvalue()[:1024]  # (its first header is what gives it away)


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _mixed_members() -> list[tuple[str, bytes]]:
    """Plain JPEGs (grey and colour) among everything the Python path must judge."""
    out = [(f"{k % 10}/{k:03d}.jpg", _jpeg(_scan(k, mode="RGB" if k % 3 == 0 else "L")))
           for k in range(11)]
    out[2] = ("2/002.jpg", CORPUS["EXIF orientation 6"][0])
    out[4] = ("4/004.jpeg", _nested_tar())  # a tar in disguise
    out[5] = ("5/005.bin", _jpeg(_scan(5)))  # no image extension: judged by content
    out[7] = ("7/007.jpg", BASE[:len(BASE) - 40])  # vouched header, pixels cut short
    out[8] = ("8/008.jpg", _png(_scan(8)))
    out[9] = ("9/009.jpg", CORPUS["progressive"][0])
    out.append(("huge/000.jpg", _jpeg(_scan(11)) + bytes(5000)))  # over a small limit
    return out


def _read(path, limit, decode, busy=None):
    listing = list_archive(path, "tar", limit=limit)
    got = []
    for m in read_entries(str(path), "tar", listing.entries, limit=limit, decode=decode, busy=busy):
        got.append(m)
    return got


def _digits(items):
    tags = [(m.key, m.data) for m in items if hasattr(m, "data")]
    return [(k, out) for k, out in decode_stream(tags)]


def test_reading_with_decode_gives_the_same_digits_rejects_and_reasons(tmp_path):
    path = _tar(tmp_path / "a.tar", _mixed_members())
    limit = 4000
    plain = _read(path, limit, decode=False)
    seen = []
    fast = _read(path, limit, decode=True, busy=seen.append)
    assert [type(m) for m in fast] == [type(m) for m in plain]
    assert [m.key for m in fast] == [m.key for m in plain]
    rejects = [m for m in fast if not hasattr(m, "data")]
    assert rejects == [m for m in plain if not hasattr(m, "data")]
    assert {r.key: r.reason.split(":")[0] for r in rejects} == {
        "4/004.jpeg": "nested-archive", "huge/000.jpg": "too-large"}
    decoded = [m.key for m in fast if isinstance(getattr(m, "data", None), np.ndarray)]
    # the plain JPEGs (not the EXIF one, the disguised one, the .bin, the PNG, the
    # cut one: its fast decode fails and it is read as bytes)
    assert decoded == ["0/000.jpg", "1/001.jpg", "3/003.jpg", "6/006.jpg", "9/009.jpg",
                       "0/010.jpg"]
    # told before each decode, the failed one too
    assert seen == decoded[:4] + ["7/007.jpg"] + decoded[4:]
    a, b = _digits(plain), _digits(fast)
    assert [k for k, _ in a] == [k for k, _ in b]
    for (k, x), (_, y) in zip(a, b):
        if isinstance(x, str):
            assert x == y, k
        else:
            np.testing.assert_array_equal(x, y, err_msg=k)
    assert [m.folder_label for m in fast if hasattr(m, "data")] == \
        [m.folder_label for m in plain if hasattr(m, "data")]


def test_without_the_kernel_or_the_fast_decoder_every_member_is_read_as_bytes(tmp_path, monkeypatch):
    path = _tar(tmp_path / "a.tar", _mixed_members())
    monkeypatch.setenv("DIGITBATCH_FAST_DECODE", "0")
    assert not any(isinstance(getattr(m, "data", None), np.ndarray)
                   for m in _read(path, 4000, decode=True))
    monkeypatch.delenv("DIGITBATCH_FAST_DECODE")
    monkeypatch.setenv("DIGITBATCH_NO_JIT", "1")
    assert not any(isinstance(getattr(m, "data", None), np.ndarray)
                   for m in _read(path, 4000, decode=True))


def test_ingest_task_is_the_same_with_the_kernel_or_without(tmp_path, monkeypatch):
    path = _tar(tmp_path / "a.tar", _mixed_members())
    task = (str(path), "tar", pack(list_archive(path, "tar", limit=4000).entries), 4000)
    fast = decode_packed(task)
    monkeypatch.setenv("DIGITBATCH_NO_JIT", "1")
    slow = decode_packed(task)
    np.testing.assert_array_equal(fast.images, slow.images)
    np.testing.assert_array_equal(fast.labels, slow.labels)
    assert fast.keys == slow.keys and fast.rejects == slow.rejects
    assert len(fast.keys) == 9 and [r.reason.split(":")[0] for r in fast.rejects] == [
        "nested-archive", "too-large", "decode-error"]  # read rejects first


def test_scoring_chunk_is_the_same_with_the_kernel_or_without(tmp_path, monkeypatch,
                                                             shared_model):
    loaded = load_model(shared_model)
    path = _tar(tmp_path / "a.tar", _mixed_members())
    entries = list_archive(path, "tar", limit=4000).entries
    n = len(entries)

    def staged(name):
        out = tmp_path / name
        create_output(out, OutputSpec(n, 256, 10, False, loaded.sha256, "x"), arrays=False)
        create_staging(out, n=n, chunk_size=256, n_classes=10, proba=False)
        score_archive_chunk(ChunkTask(0, 0, n, pack(entries)), out_path=str(out),
                            model=loaded.model, proba=False, container=str(path), kind="tar",
                            limit=4000, labels=None)
        st = zarr.open_group(str(out), mode="r")["_staging"]
        rec = json.loads(commit_path(out, 0).read_text())
        return {k: st[k][:] for k in ("valid", "pred", "margin", "labels")}, rec

    fast, frec = staged("fast.zarr")
    monkeypatch.setenv("DIGITBATCH_NO_JIT", "1")
    slow, srec = staged("slow.zarr")
    for k in fast:
        np.testing.assert_array_equal(fast[k], slow[k], err_msg=k)
    assert frec["rejects"] == srec["rejects"] and frec["n"] == srec["n"] == 9
