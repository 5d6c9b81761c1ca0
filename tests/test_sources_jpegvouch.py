"""digitbatch.sources.jpegvouch: a member vouched for is one the Python path
takes unchanged.

The rules are checked on a corpus of real and crafted JPEG headers (every
segment the header walk refuses, tars in disguise, sizes over the limits)
and on a few thousand seeded corruptions of a real header. What decoding
the members vouched for gives is tests/test_sources_taskdecode.py's.
"""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image

from digitbatch.sources import jitload, jpegvouch
from digitbatch.sources.decoders import MAX_SIDE, within_limits
from digitbatch.sources.headers import jpeg_header
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
