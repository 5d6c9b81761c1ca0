"""digitbatch.sources.decoders and .headers: the fast decoders against Pillow.

Where the fast path (libspng, libjpeg-turbo) takes a file it must give the
pixels Pillow gives; every file it refuses, and every broken file, must get
Pillow's verdict (the same reject reason, or the same pixels). EXIF
orientation is applied on both paths as ``ImageOps.exif_transpose`` does.
"""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps, PngImagePlugin

from digitbatch.sources import decoders as D
from digitbatch.sources.headers import exif_orientation, jpeg_header, png_header
from digitbatch.sources.images import decode_batch, decode_one

pyspng = pytest.importorskip("pyspng")
pytest.importorskip("simplejpeg")


def _figure(h: int, w: int, seed: int = 0, *, dark_on_light: bool = True) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    img = np.zeros((h, w))
    pts = np.stack([rng.uniform(0.15 * h, 0.85 * h, 4), rng.uniform(0.15 * w, 0.85 * w, 4)], 1)
    width = max(0.7, min(h, w) / 14)
    for (y0, x0), (y1, x1) in zip(pts[:-1], pts[1:]):
        for t in np.linspace(0, 1, 16):
            cy, cx = y0 + t * (y1 - y0), x0 + t * (x1 - x0)
            img = np.maximum(img, np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * width**2)))
    out = np.rint(img * 255).astype(np.uint8)
    return 255 - out if dark_on_light else out


def _save(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def _spy(monkeypatch) -> list:
    """Calls that reached the Pillow path."""
    calls: list = []
    real = D.pillow_grey

    def spy(data, reduction=None):
        calls.append(data)
        return real(data, reduction)

    monkeypatch.setattr(D, "pillow_grey", spy)
    return calls


def _same(data: bytes) -> np.ndarray | str:
    fast, slow = D.decode_grey(data), D.decode_grey(data, fast=False)
    if isinstance(slow, str):
        assert fast == slow
    else:
        assert isinstance(fast, np.ndarray) and fast.dtype == np.uint8
        assert fast.shape == slow.shape and np.array_equal(fast, slow)
    return fast


# --- PNG ----------------------------------------------------------------------


def _with_chunks(png: bytes, chunks: list[tuple[bytes, bytes]]) -> bytes:
    """``png`` with ancillary chunks inserted after IHDR."""
    import zlib

    body = b"".join(struct.pack(">I", len(b)) + t + b + struct.pack(">I", zlib.crc32(t + b))
                    for t, b in chunks)
    return png[:33] + body + png[33:]


def _png_corpus() -> list[tuple[str, bytes]]:
    d = _figure(37, 53, 1)
    rgb = np.stack([d, 255 - d // 3, (d.astype(int) * 7 % 256).astype(np.uint8)], axis=2)
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "scanned")
    return [
        ("L", _save(Image.fromarray(d), "PNG")),
        ("L 28x28", _save(Image.fromarray(_figure(28, 28, 2, dark_on_light=False)), "PNG")),
        ("RGB", _save(Image.fromarray(rgb), "PNG")),
        ("L interlaced", pyspng.encode(d, progressive=pyspng.ProgressiveMode.PROGRESSIVE)),
        ("RGB interlaced", pyspng.encode(rgb, progressive=pyspng.ProgressiveMode.PROGRESSIVE)),
        ("L with text", _save(Image.fromarray(d), "PNG", pnginfo=info)),
        ("L with gAMA and sRGB", _with_chunks(_save(Image.fromarray(d), "PNG"),
                                              [(b"gAMA", struct.pack(">I", 45455)),
                                               (b"sRGB", b"\x00")])),
        ("RGB with gAMA", _with_chunks(_save(Image.fromarray(rgb), "PNG"),
                                       [(b"gAMA", struct.pack(">I", 100000))])),
        ("L no compression", _save(Image.fromarray(d), "PNG", compress_level=0)),
        ("1x1", _save(Image.new("L", (1, 1), 9), "PNG")),
    ]


def _png_refused() -> list[tuple[str, bytes]]:
    d = _figure(30, 20, 3)
    return [
        ("L with tRNS", _save(Image.fromarray(d), "PNG", transparency=255)),
        ("RGB with tRNS", _save(Image.fromarray(d).convert("RGB"), "PNG", transparency=(1, 2, 3))),
        ("LA", _save(Image.fromarray(d).convert("LA"), "PNG")),
        ("RGBA", _save(Image.fromarray(d).convert("RGBA"), "PNG")),
        ("P", _save(Image.fromarray(d).convert("P"), "PNG")),
        ("16-bit", _save(Image.fromarray(d.astype(np.uint16) * 257), "PNG")),
        ("1-bit", _save(Image.fromarray(d).convert("1"), "PNG")),
    ]


@pytest.mark.parametrize("via", ["spng C module", "pyspng.load"])
@pytest.mark.parametrize("name,data", _png_corpus(), ids=[n for n, _ in _png_corpus()])
def test_png_fast_path_equals_pillow(monkeypatch, name, data, via):
    """Both ways into libspng (its C module where pyspng has it, else pyspng.load)."""
    if via == "pyspng.load":
        monkeypatch.setattr(D, "_SPNG_C", None)
    else:
        assert D._SPNG_C is not None, "this pyspng has no C module to call: the slower load serves"
    calls = _spy(monkeypatch)
    out = D.decode_grey(data)
    assert calls == [], f"{name}: the fast path refused it"
    assert out.dtype == np.uint8 and out.ndim == 2
    assert np.array_equal(out, D.decode_grey(data, fast=False))


@pytest.mark.parametrize("name,data", _png_refused(), ids=[n for n, _ in _png_refused()])
def test_png_cases_left_to_pillow(monkeypatch, name, data):
    calls = _spy(monkeypatch)
    _same(data)
    assert len(calls) == 2, f"{name} should be decoded by Pillow"


def test_rgb_to_l_is_pillows():
    rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert np.array_equal(D.rgb_to_l(rgb), np.asarray(Image.fromarray(rgb).convert("L")))


# --- JPEG ---------------------------------------------------------------------


def _jpeg_corpus() -> list[tuple[str, bytes]]:
    out = []
    for h, w in [(1, 1), (8, 8), (28, 28), (47, 95), (57, 83), (96, 96), (112, 112),
                 (200, 120), (401, 388), (800, 600)]:
        d = _figure(h, w, h * w)
        g = Image.fromarray(d)
        colour = Image.fromarray(np.stack([d, 255 - d // 2, d // 2 + 60], axis=2))
        out += [
            (f"grey {h}x{w}", _save(g, "JPEG", quality=90)),
            (f"grey progressive {h}x{w}", _save(g, "JPEG", quality=75, progressive=True)),
            (f"colour 4:2:0 {h}x{w}", _save(colour, "JPEG", quality=85, subsampling=2)),
            (f"colour 4:4:4 {h}x{w}", _save(colour, "JPEG", quality=95, subsampling=0)),
        ]
    return out


@pytest.mark.parametrize("name,data", _jpeg_corpus(), ids=[n for n, _ in _jpeg_corpus()])
def test_jpeg_fast_path_equals_pillow(monkeypatch, name, data):
    calls = _spy(monkeypatch)
    out = D.decode_grey(data)
    assert calls == [], f"{name}: the fast path refused it"
    slow = D.decode_grey(data, fast=False)
    assert out.shape == slow.shape and np.array_equal(out, slow), name
    w, h = Image.open(io.BytesIO(data)).size
    d = D.jpeg_reduction(w, h)
    assert out.shape == (-(-h // d), -(-w // d))


def test_jpeg_cases_left_to_pillow(monkeypatch):
    d = _figure(64, 64, 5)
    cmyk = _save(Image.fromarray(d).convert("CMYK"), "JPEG")
    calls = _spy(monkeypatch)
    out = _same(cmyk)
    assert len(calls) == 2 and out.shape == (64 // D.jpeg_reduction(64, 64),) * 2


def test_jpeg_reduction():
    assert D.jpeg_reduction(28, 28) == 1
    assert D.jpeg_reduction(112, 112) == 1
    assert D.jpeg_reduction(223, 500) == 1
    assert D.jpeg_reduction(224, 224) == 2
    assert D.jpeg_reduction(4000, 3000) == 8
    smallest = D.JPEG_MIN_SIDE
    for side in range(1, 1000, 7):
        r = D.jpeg_reduction(side, side)
        assert side // r >= smallest or r == 1
        assert r == 8 or side // (2 * r) < smallest


# --- broken files: the fast path never accepts what Pillow refuses -------------


def _cuts(data: bytes) -> list[int]:
    n = len(data)
    return sorted({1, 2, 8, 16, 20, 24, 33, 40, n // 4, n // 2, 3 * n // 4, n - 12, n - 4,
                   n - 2, n - 1} - {0, n})


@pytest.mark.parametrize("fmt", ["PNG", "PNG-RGB", "JPEG", "JPEG-progressive"])
def test_truncated_and_corrupt_files_get_pillows_verdict(fmt):
    d = _figure(60, 45, 9)
    img = Image.fromarray(d) if fmt != "PNG-RGB" else Image.fromarray(d).convert("RGB")
    data = _save(img, fmt.split("-")[0], **({"progressive": True} if "progressive" in fmt else {}))
    for cut in _cuts(data):
        _same(data[:cut])
    rng = np.random.default_rng(0)
    for _ in range(150):
        bad = bytearray(data)
        for pos in rng.integers(0, len(data), rng.integers(1, 4)):
            bad[pos] = int(rng.integers(0, 256))
        _same(bytes(bad))
    _same(data + b"trailing junk")


def test_bad_crc_in_ancillary_png_chunk_gets_pillows_verdict():
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "x" * 20)
    data = bytearray(_save(Image.fromarray(_figure(20, 20)), "PNG", pnginfo=info))
    at = data.index(b"tEXt") + 4 + 28  # the CRC after the text
    data[at] ^= 0xFF
    _same(bytes(data))


def _png_header_claiming(width: int, height: int) -> bytes:
    import zlib

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def _jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(_save(Image.fromarray(_figure(16, 16)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.mark.parametrize("make", [_png_header_claiming, _jpeg_claiming])
@pytest.mark.parametrize("size,code", [((60000, 60000), "decompression-bomb"),
                                       ((20000, 10), "bad-dimensions"),
                                       ((5000, 5000), "bad-dimensions")])
def test_sizes_from_the_header_are_refused_before_decoding(monkeypatch, make, size, code):
    calls = _spy(monkeypatch)
    out = D.decode_grey(make(*size))
    assert isinstance(out, str) and out.split(":")[0] == code
    assert len(calls) == 1


def test_pillow_pixel_limit_applies_to_fast_path(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    for data in (_save(Image.fromarray(_figure(50, 50)), "PNG"),
                 _save(Image.fromarray(_figure(50, 50)), "JPEG")):
        batch = decode_batch([("b", data, 1)])
        assert [r.reason.split(":")[0] for r in batch.rejects] == ["decompression-bomb"]


def test_fast_decoding_can_be_switched_off(monkeypatch):
    calls = _spy(monkeypatch)
    data = _save(Image.fromarray(_figure(28, 28)), "PNG")
    monkeypatch.setenv("DIGITBATCH_FAST_DECODE", "0")
    decode_batch([("a", data, 1)])
    assert len(calls) == 1
    monkeypatch.setenv("DIGITBATCH_FAST_DECODE", "1")
    decode_batch([("a", data, 1)])
    assert len(calls) == 1


# --- EXIF orientation -----------------------------------------------------------


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("size", [(40, 70), (130, 100)])
def test_jpeg_exif_orientation_both_paths(monkeypatch, orientation, size):
    h, w = size
    d = _figure(h, w, orientation)
    data = _save(Image.fromarray(d), "JPEG", quality=92, exif=_exif(orientation))
    hdr = jpeg_header(data)
    assert hdr is not None and hdr.orientation == orientation
    calls = _spy(monkeypatch)
    out = _same(data)
    assert len(calls) == 1  # only the fast=False call
    with Image.open(io.BytesIO(data)) as img:
        r = D.jpeg_reduction(w, h)
        img.draft("L", (w // r, h // r))
        want = np.asarray(ImageOps.exif_transpose(img).convert("L"))
    assert np.array_equal(out, want)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_png_and_tiff_exif_orientation(orientation):
    d = _figure(30, 50, orientation)
    for fmt in ("PNG", "TIFF", "WEBP"):
        data = _save(Image.fromarray(d), fmt, exif=_exif(orientation),
                     **({"lossless": True} if fmt == "WEBP" else {}))
        out = _same(data)
        want = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("L"))
        assert np.array_equal(out, want), fmt


def _seven(size: int = 112) -> np.ndarray:
    """A dark-on-white '7' as a phone would photograph it, upright."""
    img = np.full((size, size), 235.0)
    s = size / 28
    yy, xx = np.mgrid[:size, :size] / s
    bar = (np.abs(yy - 6.5) < 1.4) & (xx > 6) & (xx < 21)
    t = np.clip((yy - 6.5) / 16, 0, 1)
    stem = (np.abs(xx - (20.5 - 9 * t)) < 1.5) & (yy > 6) & (yy < 23)
    img[bar | stem] = 25
    return img.astype(np.uint8)


def test_rotated_phone_jpeg_comes_out_upright():
    upright = _seven()
    # a phone held upright stores the sensor's picture turned a quarter turn
    # anticlockwise and says Orientation=6 (turn it clockwise to view)
    stored = np.rot90(upright, 1)
    phone = _save(Image.fromarray(stored), "JPEG", quality=90, exif=_exif(6))
    sideways = _save(Image.fromarray(stored), "JPEG", quality=90)
    plain = _save(Image.fromarray(upright), "JPEG", quality=90)
    batch = decode_batch([("phone.jpg", phone, 7), ("sideways.jpg", sideways, 7),
                          ("plain.jpg", plain, 7)])
    got, wrong, want = batch.images.astype(int)
    assert np.abs(got - want).mean() < 3        # upright, up to JPEG noise
    assert np.abs(wrong - want).mean() > 15     # (without the tag it is not)
    rows = np.flatnonzero((got > 128).any(axis=1))
    spread = [np.ptp(np.flatnonzero(got[r] > 128)) for r in (rows[0], rows[-1])]
    assert spread[0] > 3 * max(spread[1], 1)  # the 7's bar is on top, its foot below
    assert np.array_equal(decode_one(phone), got.astype(np.uint8))
    assert np.array_equal(D.decode_grey(phone), D.decode_grey(phone, fast=False))


def _with_app1(data: bytes, payload: bytes) -> bytes:
    seg = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return data[:2] + seg + data[2:]


def test_xmp_orientation_is_applied():
    d = _figure(40, 60, 11)
    plain = _save(Image.fromarray(d), "JPEG", quality=95)
    xmp = (b"http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta><rdf:Description "
           b'tiff:Orientation="6"/></x:xmpmeta>')
    data = _with_app1(plain, xmp)
    assert jpeg_header(data) is None  # left to Pillow
    out = _same(data)
    assert out.shape == (60, 40)


@pytest.mark.parametrize("tiff", [
    b"II*\x00\x08\x00\x00\x00\x01\x00\x12\x01\x03\x00\x01\x00\x00\x00\x06\x00",  # no next-IFD
    b"II*\x00\xff\x00\x00\x00",                                                 # IFD past the end
    b"MM\x00*\x00\x00\x00\x08\x00\x01\x01\x12\x00\x04\x00\x00\x00\x01\x00\x00\x00\x06\x00\x00\x00\x00",
    b"II*\x00\x08\x00\x00\x00\x02\x00\x12\x01\x03\x00\x01\x00\x00\x00\x06\x00\x00\x00"
    b"\x12\x01\x03\x00\x01\x00\x00\x00\x03\x00\x00\x00\x00\x00\x00\x00",          # tag twice
    b"XX*\x00\x08\x00\x00\x00",
    b"II*\x00\x08\x00\x00\x00\x01\x00\x12\x01\x03\x00\x01\x00\x00\x00\x09\x00\x00\x00\x00\x00",
])
def test_odd_exif_blocks_get_pillows_verdict(tiff):
    assert exif_orientation(tiff) is None
    data = _with_app1(_save(Image.fromarray(_figure(30, 50, 2)), "JPEG"), b"Exif\x00\x00" + tiff)
    out = _same(data)
    assert isinstance(out, np.ndarray)  # a bad EXIF block costs the orientation, not the image


def test_exif_orientation_parser():
    le = b"II*\x00\x08\x00\x00\x00\x01\x00\x12\x01\x03\x00\x01\x00\x00\x00\x06\x00\x00\x00\x00\x00\x00\x00"
    be = b"MM\x00*\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01\x00\x03\x00\x00\x00\x00\x00\x00"
    none = b"II*\x00\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00"
    assert exif_orientation(le) == 6 and exif_orientation(be) == 3 and exif_orientation(none) == 1
    assert exif_orientation(Image.Exif().tobytes()[6:] if Image.Exif().tobytes().startswith(b"Exif")
                            else Image.Exif().tobytes()) in (1, None)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_header_parsers_never_raise(blob):
    for prefix in (b"", b"\xff\xd8", b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR"):
        png_header(prefix + blob)
        jpeg_header(prefix + blob)
        exif_orientation(prefix + blob)


def test_forced_reduction_same_on_both_paths():
    data = _save(Image.fromarray(_figure(112, 112, 3)), "JPEG", quality=90)
    for r in (1, 2, 4, 8):
        fast, slow = D.decode_grey(data, reduction=r), D.decode_grey(data, fast=False, reduction=r)
        assert fast.shape == (-(-112 // r),) * 2 and np.array_equal(fast, slow)
