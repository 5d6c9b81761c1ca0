"""digitbatch.sources.pngvouch: a PNG vouched for is one the Python path takes
unchanged, and its pixels are the ones libspng and Pillow decode.

The rules are checked on a corpus of real (Pillow's) and crafted PNGs: every
chunk the header walk refuses or that the kernel leaves to Python, bad CRCs,
tars in disguise, sizes over the limits; every row filter in grey and RGB;
files whose header is vouched for but whose pixel data is not whole; and a
few thousand seeded corruptions of a real file, half of them with their CRCs
made good again so that they reach the zlib stream and the filters. What a
task makes of them is tests/test_sources_taskdecode.py's.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from digitbatch.sources import jitload, pngvouch
from digitbatch.sources.decoders import MAX_PIXELS, MAX_SIDE, decode_grey
from digitbatch.sources.headers import PNG_SIGNATURE, png_header
from digitbatch.sources.members import content_reject

pytestmark = pytest.mark.skipif(not jitload.installed(), reason="numba is not installed")


@pytest.fixture(autouse=True)
def _kernel(monkeypatch):
    monkeypatch.delenv("DIGITBATCH_NO_JIT", raising=False)
    monkeypatch.delenv("DIGITBATCH_FAST_DECODE", raising=False)
    pngvouch.load()


# --- making PNGs ---------------------------------------------------------------------


def _chunk(name: bytes, data: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(name + data) if crc is None else crc
    return struct.pack(">I", len(data)) + name + data + struct.pack(">I", crc)


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def filtered(pixels: np.ndarray, filters) -> bytes:
    """PNG scanlines of ``pixels`` (h, w) or (h, w, 3), row ``y`` filtered with
    ``filters[y % len(filters)]`` (the spec's encoder, written plainly)."""
    h = pixels.shape[0]
    bpp = 1 if pixels.ndim == 2 else 3
    rows = pixels.reshape(h, -1).astype(int)
    out = bytearray()
    for y in range(h):
        f = filters[y % len(filters)]
        out.append(f)
        for x in range(rows.shape[1]):
            a = rows[y, x - bpp] if x >= bpp else 0
            b = rows[y - 1, x] if y else 0
            c = rows[y - 1, x - bpp] if y and x >= bpp else 0
            guess = (0, a, b, (a + b) // 2, _paeth(a, b, c))[f] if f < 5 else 0  # (5: none)
            out.append((rows[y, x] - guess) % 256)
    return bytes(out)


def make_png(pixels: np.ndarray, *, filters=(0, 1, 2, 3, 4), before=(), after_idat=(),
             zdata: bytes | None = None, idats: int = 1, ihdr: dict | None = None,
             tail: bytes = b"") -> bytes:
    h, w = pixels.shape[:2]
    fields = {"depth": 8, "colour": 0 if pixels.ndim == 2 else 2, "interlace": 0, **(ihdr or {})}
    head = struct.pack(">IIBBBBB", w, h, fields["depth"], fields["colour"], 0, 0,
                       fields["interlace"])
    z = zlib.compress(filtered(pixels, filters)) if zdata is None else zdata
    step = -(-len(z) // idats)
    parts = [z[i:i + step] for i in range(0, len(z), step)]
    return (PNG_SIGNATURE + _chunk(b"IHDR", head) + b"".join(before)
            + b"".join(_chunk(b"IDAT", p) for p in parts) + b"".join(after_idat)
            + _chunk(b"IEND", b"") + tail)


def _pixels(seed: int, h=9, w=13, rgb=False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3) if rgb else (h, w), dtype=np.uint8)


def _pillow(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _digit(seed: int, size=(28, 28)) -> Image.Image:
    img = np.zeros((size[1], size[0]), np.uint8)
    img[4:24, 8:20] = np.random.default_rng(seed).integers(0, 256, (20, 12), dtype=np.uint8)
    return Image.fromarray(img)


def _crc_broken(data: bytes, name: bytes) -> bytes:
    at = data.index(name)
    length = struct.unpack(">I", data[at - 4:at])[0]
    end = at + 4 + length
    return data[:end] + bytes([data[end] ^ 1]) + data[end + 1:]


def _disguised_tar() -> bytes:
    """A plain PNG whose bytes 257-261 spell ``ustar`` (its pixels, stored
    uncompressed): a tar header to members.content_reject."""
    pixels = np.zeros((20, 27), np.uint8)
    rows = bytearray(filtered(pixels, (0,)))
    # file offset 257 = zlib data start (8 + 25 + 8 = 41) + 2 (zlib header) + 5 (stored block)
    rows[257 - 48:257 - 48 + 5] = b"ustar"
    return make_png(pixels, zdata=zlib.compress(bytes(rows), 0))


def _info(key: str, value: str):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(key, value)
    return info


def _idats_apart() -> bytes:
    """Two IDAT chunks with a tIME between them."""
    data = make_png(_pixels(17), idats=2)
    second = data.index(b"IDAT", data.index(b"IDAT") + 4) - 4
    return data[:second] + _chunk(b"tIME", bytes(7)) + data[second:]


def _bad_adler(raw: bytes) -> bytes:
    z = bytearray(zlib.compress(raw))
    z[-1] ^= 1
    return bytes(z)


BASE = make_png(_pixels(0, rgb=True))
GREY = _pillow(_digit(1))

# name -> (bytes, vouched for)
CORPUS: dict[str, tuple[bytes, bool]] = {
    "Pillow grey 28x28": (GREY, True),
    "Pillow RGB 13x9": (_pillow(Image.fromarray(_pixels(2, rgb=True))), True),
    "Pillow with dpi (pHYs)": (_pillow(_digit(3), dpi=(300, 300)), True),
    "RGB, every filter": (BASE, True),
    **{f"grey, filter {f}": (make_png(_pixels(10 + f), filters=(f,)), True) for f in range(5)},
    **{f"RGB, filter {f}": (make_png(_pixels(20 + f, rgb=True), filters=(f,)), True)
       for f in range(5)},
    "one pixel": (make_png(_pixels(4, h=1, w=1)), True),
    "gAMA sRGB cHRM tIME before IDAT": (make_png(_pixels(5), before=[
        _chunk(b"gAMA", bytes(4)), _chunk(b"sRGB", b"\x00"), _chunk(b"cHRM", bytes(32)),
        _chunk(b"tIME", bytes(7))]), True),
    "tEXt": (_pillow(_digit(6), pnginfo=_info("Comment", "x")), False),
    "zTXt": (make_png(_pixels(7), before=[_chunk(b"zTXt", b"k\x00\x00" + zlib.compress(b"v"))]),
             False),
    "iTXt": (make_png(_pixels(7), before=[_chunk(b"iTXt", b"k\x00\x00\x00\x00\x00v")]), False),
    "eXIf": (make_png(_pixels(8), before=[_chunk(b"eXIf", b"MM\x00*" + bytes(8))]), False),
    "tRNS": (make_png(_pixels(9), before=[_chunk(b"tRNS", b"\x00\x00")]), False),
    "a private chunk": (make_png(_pixels(9), before=[_chunk(b"prVt", b"x")]), False),
    "pHYs of the wrong length": (make_png(_pixels(9), before=[_chunk(b"pHYs", bytes(8))]), False),
    "a chunk after IDAT": (make_png(_pixels(9), after_idat=[_chunk(b"tIME", bytes(7))]), False),
    "palette": (_pillow(_digit(11).convert("P")), False),
    "grey with alpha": (_pillow(_digit(12).convert("LA")), False),
    "RGBA": (_pillow(_digit(13).convert("RGBA")), False),
    "16-bit": (_pillow(Image.fromarray(_pixels(14).astype(np.uint16) * 257)), False),
    "1-bit": (_pillow(_digit(15).convert("1")), False),
    "interlaced": (make_png(_pixels(16), ihdr={"interlace": 1}), False),
    "two IDATs": (make_png(_pixels(17), idats=2), True),
    "five IDATs": (make_png(_pixels(19, h=20, w=30, rgb=True), idats=5), True),
    "IDATs apart": (_idats_apart(), False),
    "an empty IDAT first": (make_png(_pixels(17), before=[_chunk(b"IDAT", b"")]), False),
    "bad IHDR CRC": (_crc_broken(BASE, b"IHDR"), False),
    "bad IDAT CRC": (_crc_broken(BASE, b"IDAT"), False),
    "bad IEND CRC": (_crc_broken(BASE, b"IEND"), False),
    "bad gAMA CRC": (_crc_broken(make_png(_pixels(18), before=[_chunk(b"gAMA", bytes(4))]),
                                 b"gAMA"), False),
    "bytes after IEND": (BASE + b"\x00", False),
    "cut before IEND": (BASE[:-12], False),
    "cut in IDAT": (BASE[:60], False),
    "no IEND, an IDAT last": (BASE[:-12] + _chunk(b"IDAT", b"x"), False),
    "a tar in disguise": (_disguised_tar(), False),
    "not a PNG": (b"\x89PNX" + BASE[4:], False),
    "a JPEG": (b"\xff\xd8\xff\xe0" + bytes(100), False),
}


# vouched for by its header, but its pixel data is not whole: left to Python
UNDECODABLE: dict[str, bytes] = {
    "filter type 5": make_png(_pixels(30), filters=(0, 5)),
    "bytes after the zlib stream": make_png(_pixels(31), zdata=zlib.compress(
        filtered(_pixels(31), (0,))) + b"\x00"),
    "zlib stream cut": make_png(_pixels(32), zdata=zlib.compress(filtered(_pixels(32), (0,)))[:-6]),
    "a row short": make_png(_pixels(33), zdata=zlib.compress(filtered(_pixels(33), (0,))[:-14])),
    "a byte over": make_png(_pixels(34), zdata=zlib.compress(filtered(_pixels(34), (0,)) + b"\x00")),
    "bad Adler-32": make_png(_pixels(35), zdata=_bad_adler(filtered(_pixels(35), (0,)))),
    "not zlib": make_png(_pixels(36), zdata=b"\x00" * 40),
    "a second zlib stream after the first": make_png(_pixels(37), idats=2, zdata=zlib.compress(
        filtered(_pixels(37), (0,))) + zlib.compress(b"x")),
    "rows over, across IDATs": make_png(_pixels(38), idats=3, zdata=zlib.compress(
        filtered(_pixels(38), (0,)) + bytes(50))),
}


# --- helpers --------------------------------------------------------------------------


def _run(datas: list[bytes]) -> tuple[bytes, list[int]]:
    starts = np.cumsum([0, *map(len, datas)])[:-1].tolist()
    return b"".join(datas), starts


def _vouch(datas: list[bytes], **limits) -> np.ndarray:
    buf, starts = _run(datas)
    limits = {"max_side": MAX_SIDE, "max_pixels": MAX_PIXELS, **limits}
    return pngvouch.vouch(buf, starts, list(map(len, datas)), **limits)


def _decoded(datas: list[bytes], budget: int = 2**24) -> dict[int, np.ndarray]:
    """Member index -> its grey pixels, for the members vouched for that decode."""
    buf, starts = _run(datas)
    plain = _vouch(datas)
    ks = np.flatnonzero(plain[:, 0]).tolist()
    out = {}
    for took, stack in pngvouch.decode(buf, starts, plain, ks, budget=budget):
        assert len(took) == len(stack)
        out.update(zip(took, stack))
    return out


def _python_takes(data: bytes) -> bool:
    """Whether the Python path takes ``data`` (named x.png) as a plain PNG for libspng."""
    hdr = png_header(data)
    return (content_reject("x.png", data) is None and hdr is not None and hdr.bit_depth == 8
            and hdr.colour_type in (0, 2))


def _pillow_grey(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("L"))


# --- tests ----------------------------------------------------------------------------


def test_the_corpus_is_vouched_for_as_labelled():
    names = list(CORPUS)
    plain = _vouch([CORPUS[k][0] for k in names])
    got = {k: bool(row[0]) for k, row in zip(names, plain)}
    assert got == {k: v for k, (_, v) in CORPUS.items()}
    grey = dict(zip(names, plain))["Pillow grey 28x28"]
    assert grey[:3].tolist() == [28, 28, 1]
    assert dict(zip(names, plain))["RGB, every filter"][:3].tolist() == [9, 13, 3]
    assert dict(zip(names, plain))["five IDATs"][5] == 5


def test_every_png_vouched_for_decodes_as_libspng_and_pillow_do():
    datas = [d for d, ok in CORPUS.values() if ok]
    got = _decoded(datas)
    assert sorted(got) == list(range(len(datas)))  # every one of them decodes
    for k, data in enumerate(datas):
        assert _python_takes(data)
        np.testing.assert_array_equal(got[k], decode_grey(data))  # libspng
        np.testing.assert_array_equal(got[k], decode_grey(data, fast=False))  # Pillow
        np.testing.assert_array_equal(got[k], _pillow_grey(data))


def test_a_disguised_tar_is_what_the_python_path_refuses():
    data = CORPUS["a tar in disguise"][0]
    assert data[257:262] == b"ustar" and len(data) >= 512
    assert content_reject("x.png", data).reason.startswith("nested-archive")


def test_pixel_data_that_is_not_whole_is_left_to_python():
    datas = list(UNDECODABLE.values())
    assert _vouch(datas)[:, 0].all()  # (their headers are plain)
    assert _decoded(datas) == {}
    # between plain members, in one run: only they are left out, the rest decode
    mixed = [BASE, *datas, GREY, BASE]
    got = _decoded(mixed)
    assert sorted(got) == [0, len(mixed) - 2, len(mixed) - 1]
    np.testing.assert_array_equal(got[len(mixed) - 2], decode_grey(GREY))


def test_inflate_stops_at_one_byte_over_the_rows():
    """Rows and one byte more in the first IDAT, then a part that would inflate
    to 64 MiB: refused without inflating it (a later IDAT cannot be a bomb)."""
    import tracemalloc

    rows = filtered(_pixels(50), (0,))
    c = zlib.compressobj()
    first = c.compress(rows + b"x") + c.flush(zlib.Z_SYNC_FLUSH)
    bomb = c.compress(bytes(64 * 2**20)) + c.flush()
    tracemalloc.start()
    try:
        assert pngvouch.inflate([first, bomb], 9, 13, 1) is None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20
    assert pngvouch.inflate([zlib.compress(rows)], 9, 13, 1) == rows


def test_sizes_and_limits():
    big = make_png(np.zeros((40, 30), np.uint8))
    assert _vouch([big], max_side=40)[0, 0] == 40
    assert _vouch([big], max_side=39)[0, 0] == 0
    assert _vouch([big], max_pixels=1200)[0, 0] == 40
    assert _vouch([big], max_pixels=1199)[0, 0] == 0


def test_stacks_are_split_by_size_and_budget():
    datas = [make_png(_pixels(40 + k, h=5 + k % 2, w=7)) for k in range(7)]
    got_whole = _decoded(datas)
    stacks = []
    buf, starts = _run(datas)
    plain = _vouch(datas)
    for took, stack in pngvouch.decode(buf, starts, plain, list(range(7)), budget=2 * 35):
        stacks.append((took, stack.shape))
        for k, img in zip(took, stack):
            np.testing.assert_array_equal(img, got_whole[k])
    # two sizes, at most two images of 35 pixels (or one of 42 and more) a stack
    assert sorted(k for took, _ in stacks for k in took) == list(range(7))
    assert all(len(took) <= 2 for took, _ in stacks)
    assert {shape[1:] for _, shape in stacks} == {(5, 7), (6, 7)}


def _with_good_crcs(data: bytes) -> bytes:
    """``data`` with every chunk's CRC made good again, as far as its lengths walk."""
    out = bytearray(data)
    pos = 8
    while pos + 12 <= len(out):
        length = struct.unpack_from(">I", out, pos)[0]
        end = pos + 12 + length
        if end > len(out):
            break
        struct.pack_into(">I", out, end - 4, zlib.crc32(bytes(out[pos + 4:end - 4])))
        pos = end
    return bytes(out)


def test_seeded_corruptions_never_get_past_the_python_path():
    rng = np.random.default_rng(2026)
    datas = []
    for seed in range(3000):
        data = bytearray(BASE if seed % 2 else GREY)
        for _ in range(rng.integers(1, 4)):
            data[rng.integers(0, len(data))] = rng.integers(0, 256)
        datas.append(_with_good_crcs(bytes(data)) if seed % 4 < 2 else bytes(data))
    plain = _vouch(datas)
    got = _decoded(datas)
    assert (plain[:, 0] > 0).sum() > 600 and len(got) > 10  # (many reach the zlib stream)
    for k, img in got.items():
        data = datas[k]
        assert _python_takes(data), k
        np.testing.assert_array_equal(img, decode_grey(data), err_msg=str(k))
        np.testing.assert_array_equal(img, decode_grey(data, fast=False), err_msg=str(k))


def test_run_plain_leaves_short_runs_and_switched_off_kernels_to_python(monkeypatch):
    buf, starts = _run([BASE] * pngvouch.MIN_RUN)
    sizes = [len(BASE)] * pngvouch.MIN_RUN
    assert pngvouch.run_plain(buf, starts, sizes, max_side=MAX_SIDE,
                              max_pixels=MAX_PIXELS)[:, 0].all()
    assert pngvouch.run_plain(buf[:len(BASE)], starts[:1], sizes[:1], max_side=MAX_SIDE,
                              max_pixels=MAX_PIXELS) is None
    monkeypatch.setenv("DIGITBATCH_NO_JIT", "1")
    assert pngvouch.run_plain(buf, starts, sizes, max_side=MAX_SIDE, max_pixels=MAX_PIXELS) is None


def test_random_sizes_and_row_filters_decode_as_libspng_and_pillow_do():
    rng = np.random.default_rng(7)
    datas, bad = [], set()
    for k in range(300):
        h, w = rng.integers(1, 40, 2)
        pixels = _pixels(100 + k, h=h, w=w, rgb=k % 3 == 0)
        filters = rng.integers(0, 5 if k % 5 else 7, h).tolist()  # (5, 6: no such filter)
        if max(filters) > 4:
            bad.add(k)
        datas.append(make_png(pixels, filters=filters))
    got = _decoded(datas, budget=500)
    assert sorted(got) == [k for k in range(300) if k not in bad] and len(bad) > 10
    for k, img in got.items():
        np.testing.assert_array_equal(img, decode_grey(datas[k]), err_msg=str(k))
        np.testing.assert_array_equal(img, _pillow_grey(datas[k]), err_msg=str(k))
