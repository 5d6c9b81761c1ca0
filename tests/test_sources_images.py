"""Tests of digitbatch.sources.images and .archive on tiny synthetic files.

Digits are random anti-aliased strokes drawn with numpy (:func:`_digit`);
containers are built in ``tmp_path`` by :func:`_write_source`. Rejects are
checked by their reason code, the part before ``":"``.
"""

from __future__ import annotations

import gzip
import io
import os
import stat
import struct
import tarfile
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image

from digitbatch.errors import ArchiveError, SourceError, SourceNotFoundError, UnknownSourceError
from digitbatch.layout import UNKNOWN_LABEL
from digitbatch.sources import members as members_mod
from digitbatch.sources.base import Batch, Reject
from digitbatch.sources.images import (
    Member,
    decode_batch,
    detect_image_source,
    iter_members,
    to_mnist,
)

# --- helpers ----------------------------------------------------------------


def _digit(seed: int) -> np.ndarray:
    """A 28x28 uint8 MNIST-like image: bright strokes on black, dark border."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:28, :28]
    img = np.zeros((28, 28))
    pts = rng.uniform(7, 21, size=(4, 2))
    for (y0, x0), (y1, x1) in zip(pts[:-1], pts[1:]):
        for t in np.linspace(0, 1, 12):
            cy, cx = y0 + t * (y1 - y0), x0 + t * (x1 - x0)
            img = np.maximum(img, np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 2.0))
    return np.rint(img * 255).astype(np.uint8)


def _png(img: Image.Image | np.ndarray) -> bytes:
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _bmp(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "BMP")
    return buf.getvalue()


def _black_on_white_rgba(digit: np.ndarray) -> Image.Image:
    rgb = np.repeat((255 - digit)[..., None], 3, axis=2)
    alpha = np.full(digit.shape + (1,), 255, np.uint8)
    return Image.fromarray(np.concatenate([rgb, alpha], axis=2))


def _tar_entry(tf: tarfile.TarFile, name: str, data: bytes | None = None,
               type_: bytes = tarfile.REGTYPE, linkname: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = type_
    info.linkname = linkname
    info.size = len(data) if data is not None else 0
    tf.addfile(info, io.BytesIO(data) if data is not None else None)


def _write_source(path, members: dict[str, bytes], kind: str):
    """Write ``members`` as a directory, a zip or a tar (``tar``, ``tar.gz`` ...)."""
    if kind == "dir":
        for name, data in members.items():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).write_bytes(data)
    elif kind == "zip":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in members.items():
                zf.writestr(name, data)
    else:
        comp = kind.partition(".")[2]
        with tarfile.open(path, "w:" + comp) as tf:
            for name, data in members.items():
                _tar_entry(tf, name, data)
    return path


def _codes(items) -> dict[str, str]:
    """{key: reason code} of the rejects among ``items``."""
    return {r.key: r.reason.split(":")[0] for r in items if isinstance(r, Reject)}


def _decode_all(items) -> Batch:
    members = [m for m in items if isinstance(m, Member)]
    return decode_batch([(m.key, m.data, m.folder_label) for m in members])


def _png_header_only(width: int, height: int) -> bytes:
    """A valid-looking PNG claiming ``width`` x ``height`` with a tiny payload."""
    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def _centre_of_mass(img: np.ndarray) -> tuple[float, float]:
    total = img.astype(float).sum()
    return (img.sum(axis=1) @ np.arange(28)) / total, (img.sum(axis=0) @ np.arange(28)) / total


# --- round trip and detection ---------------------------------------------


@pytest.mark.parametrize("kind", [
    "dir",      # sorted relative paths
    "zip",
    "tar",      # plain tar
    "tar.gz",
    "tar.bz2",
    "tar.xz",
])
def test_round_trip_28x28_is_exact(tmp_path, kind):
    a, b, c = _digit(1), _digit(2), _digit(3)
    members = {
        "3/a.png": _png(a),                        # white on black, mode L
        "3/b.png": _png(_black_on_white_rgba(b)),  # black on white, RGBA
        "misc/c.png": _png(c),                     # no digit folder: unknown label
    }
    src = _write_source(tmp_path / ("src" if kind == "dir" else f"src.{kind}"), members, kind)
    expected_kind = "tar" if kind.startswith("tar") else kind
    assert detect_image_source(src) == expected_kind

    items = list(iter_members(src))
    assert all(isinstance(m, Member) for m in items)
    assert [m.folder_label for m in items] == [3, 3, None]
    batch = _decode_all(items)
    assert batch.keys == ["3/a.png", "3/b.png", "misc/c.png"]
    assert batch.labels.tolist() == [3, 3, UNKNOWN_LABEL]
    for got, want in zip(batch.images, (a, b, c)):
        assert np.abs(got.astype(int) - want).max() <= 1
    assert batch.rejects == []


def test_archive_order_and_directories_skipped(tmp_path):
    path = tmp_path / "x.tar"
    with tarfile.open(path, "w") as tf:
        _tar_entry(tf, "9", type_=tarfile.DIRTYPE)
        _tar_entry(tf, "9/z.png", _png(_digit(0)))
        _tar_entry(tf, "./a.png", _png(_digit(1)))  # "./" dropped from the key
    assert [m.key for m in iter_members(path)] == ["9/z.png", "a.png"]

    zpath = tmp_path / "x.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("7/", b"")
        zf.writestr("7/b.png", _png(_digit(2)))
        zf.writestr("train/7/a.png", _png(_digit(3)))
    items = list(iter_members(zpath))
    assert [(m.key, m.folder_label) for m in items] == [("7/b.png", 7), ("train/7/a.png", 7)]


def test_detection_by_content_not_extension(tmp_path):
    png = _png(_digit(0))
    zip_named_tar = _write_source(tmp_path / "really_a_zip.tar", {"a.png": png}, "zip")
    tgz_named_zip = _write_source(tmp_path / "really_a_tgz.zip", {"a.png": png}, "tar.gz")
    gzipped_png = tmp_path / "a.tar.gz"
    gzipped_png.write_bytes(zlib.compress(png))  # not gzip framing, not a tar
    gz_png = tmp_path / "b.tar.gz"
    gz_png.write_bytes(gzip.compress(png))       # gzip, but no tar inside
    empty_zip = tmp_path / "empty.zip"
    zipfile.ZipFile(empty_zip, "w").close()      # just PK\x05\x06
    text = tmp_path / "notes.zip"
    text.write_text("hello")
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "txt_dir").mkdir()
    (tmp_path / "txt_dir" / "a.txt").write_text("x")
    (tmp_path / "noext_dir" / "sub").mkdir(parents=True)
    (tmp_path / "noext_dir" / "sub" / "scan").write_bytes(png)  # image by content

    assert detect_image_source(zip_named_tar) == "zip"
    assert detect_image_source(tgz_named_zip) == "tar"
    assert detect_image_source(gzipped_png) is None
    assert detect_image_source(gz_png) is None
    assert detect_image_source(empty_zip) == "zip"
    assert detect_image_source(text) is None
    assert detect_image_source(tmp_path / "empty_dir") is None
    assert detect_image_source(tmp_path / "txt_dir") is None
    assert detect_image_source(tmp_path / "noext_dir") == "dir"
    assert [m.key for m in iter_members(zip_named_tar)] == ["a.png"]
    assert list(iter_members(empty_zip)) == []


def test_old_v7_tar_without_magic_is_detected(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        _tar_entry(tf, "a.png", _png(_digit(0)))
    raw = bytearray(buf.getvalue())
    raw[257:265] = bytes(8)  # drop "ustar\x0000", then fix the checksum
    raw[148:156] = b" " * 8
    raw[148:156] = b"%06o\x00 " % sum(raw[:512])
    path = tmp_path / "v7"
    path.write_bytes(bytes(raw))
    assert detect_image_source(path) == "tar"


# --- to_mnist ----------------------------------------------------------------


def _scan(h: int = 120, w: int = 200) -> np.ndarray:
    """Dark ellipse (a blob of ink) on white paper, off-centre."""
    yy, xx = np.mgrid[:h, :w]
    inside = ((yy - 0.42 * h) / (0.25 * h)) ** 2 + ((xx - 0.65 * w) / (0.075 * w)) ** 2 < 1
    return np.where(inside, 20, 245).astype(np.uint8)


def test_to_mnist_large_scan_is_cropped_fitted_and_centred():
    out = to_mnist(Image.fromarray(_scan()))
    assert out.shape == (28, 28) and out.dtype == np.uint8
    assert out[14, 14] > 200 and out[0, 0] == 0  # light ink on black
    rows, cols = np.flatnonzero(out.any(axis=1)), np.flatnonzero(out.any(axis=0))
    assert rows[-1] - rows[0] + 1 <= 20 and cols[-1] - cols[0] + 1 <= 20
    # the central 20x20 box, give or take the half pixel that centring
    # the mass on (14, 14) rather than (13.5, 13.5) costs, as in MNIST
    assert rows[0] >= 3 and rows[-1] <= 24 and cols[0] >= 3 and cols[-1] <= 24
    cy, cx = _centre_of_mass(out)
    assert abs(cy - 14) <= 1 and abs(cx - 14) <= 1


def test_to_mnist_same_for_both_polarities():
    scan = _scan()
    dark_on_white = to_mnist(Image.fromarray(scan))
    light_on_black = to_mnist(Image.fromarray(255 - scan))
    assert np.abs(dark_on_white.astype(int) - light_on_black).max() <= 1


def _modes() -> list[tuple[str, Image.Image]]:
    scan = _scan(60, 90)                 # dark on white
    ink = (scan < 128)
    base = Image.fromarray(scan)
    rgba_dark = np.zeros(scan.shape + (4,), np.uint8)
    rgba_dark[..., 3] = np.where(ink, 255, 0)   # black ink, transparent paper
    rgba_light = rgba_dark.copy()
    rgba_light[..., :3] = 255                    # white ink, transparent paper
    la = np.stack([np.zeros_like(scan), np.where(ink, 255, 0).astype(np.uint8)], axis=2)
    p_trans = base.convert("P")
    p_trans.info["transparency"] = p_trans.getpixel((0, 0))  # paper index
    return [
        ("L", base),
        ("1 bilevel", base.convert("1", dither=Image.Dither.NONE)),
        ("RGB", base.convert("RGB")),
        ("RGBA opaque", base.convert("RGBA")),
        ("RGBA dark ink, transparent paper", Image.fromarray(rgba_dark)),
        ("RGBA light ink, transparent paper", Image.fromarray(rgba_light)),
        ("LA dark ink, transparent paper",
         Image.merge("LA", [Image.fromarray(la[..., 0]), Image.fromarray(la[..., 1])])),
        ("P palette", base.convert("P")),
        ("P palette, paper transparent", p_trans),
        ("CMYK", base.convert("RGB").convert("CMYK")),
        ("I;16 (16-bit)", Image.fromarray(scan.astype(np.uint16) * 257)),
        ("I (32-bit, 16-bit range)", Image.fromarray(scan.astype(np.int32) * 257)),
        ("F (float 0..1)", Image.fromarray(scan.astype(np.float32) / 255)),
        ("F (float 0..255)", Image.fromarray(scan.astype(np.float32))),
    ]


@pytest.mark.parametrize("name,img", _modes(), ids=[n for n, _ in _modes()])
def test_to_mnist_every_mode(name, img):
    reference = to_mnist(Image.fromarray(_scan(60, 90)))
    out = to_mnist(img)
    assert out.shape == (28, 28) and out.dtype == np.uint8
    assert out[0, 0] == 0 and out[14, 14] > 200, name
    # the same digit, whatever the mode (bilevel and alpha lose the grey edge)
    assert np.abs(out.astype(int) - reference).mean() < 12, name


def test_to_mnist_28x28_already_mnist_is_unchanged_and_16bit_scaled():
    d = _digit(5)
    assert np.array_equal(to_mnist(Image.fromarray(d)), d)
    wide = Image.fromarray(d.astype(np.uint16) * 257)  # I;16
    assert np.abs(to_mnist(wide).astype(int) - d).max() <= 1


def test_to_mnist_blank_and_tiny_images():
    assert not to_mnist(Image.new("L", (50, 40), 255)).any()  # blank paper
    assert not to_mnist(Image.new("L", (50, 40), 0)).any()
    assert not to_mnist(Image.new("RGBA", (50, 40), (0, 0, 0, 0))).any()  # all transparent
    assert to_mnist(Image.new("L", (1, 1), 200)).shape == (28, 28)


# --- iter_members rejects ---------------------------------------------------


def test_tar_safety_rejects(tmp_path):
    png = _png(_digit(0))
    nested = io.BytesIO()
    with zipfile.ZipFile(nested, "w") as zf:
        zf.writestr("x.png", png)
    inner_tar = io.BytesIO()
    with tarfile.open(fileobj=inner_tar, mode="w") as tf:
        _tar_entry(tf, "x.png", png)
    path = tmp_path / "bad.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        _tar_entry(tf, "../up.png", png)                              # escapes the root
        _tar_entry(tf, "/abs.png", png)                               # absolute
        _tar_entry(tf, "C:/drive.png", png)                           # drive letter
        _tar_entry(tf, "ok/../../deep.png", png)                      # escapes after a detour
        _tar_entry(tf, "sym.png", type_=tarfile.SYMTYPE, linkname="/etc/passwd")
        _tar_entry(tf, "hard.png", type_=tarfile.LNKTYPE, linkname="good.png")
        _tar_entry(tf, "chr.png", type_=tarfile.CHRTYPE)              # device
        _tar_entry(tf, "blk.png", type_=tarfile.BLKTYPE)
        _tar_entry(tf, "fifo.png", type_=tarfile.FIFOTYPE)
        _tar_entry(tf, "big.png", png + bytes(20000))                 # over the limit
        _tar_entry(tf, "inner.zip", nested.getvalue())                # nested archives
        _tar_entry(tf, "inner.tar", inner_tar.getvalue())
        _tar_entry(tf, "disguised.png", gzip.compress(png))           # gzip named .png
        _tar_entry(tf, "notes.txt", b"just some text\n")              # not an image
        _tar_entry(tf, "__MACOSX/._good.png", b"\x00\x05\x16\x07")    # OS junk
        _tar_entry(tf, ".DS_Store", b"Bud1")
        _tar_entry(tf, "scan.dat", png)                               # images by content
        _tar_entry(tf, "scan.bin", _bmp(_digit(1)))
        _tar_entry(tf, "good.png", png)
    items = list(iter_members(path, max_member_bytes=12000))  # a small tar is 10 KiB
    assert _codes(items) == {
        "../up.png": "unsafe-path",
        "/abs.png": "unsafe-path",
        "C:/drive.png": "unsafe-path",
        "ok/../../deep.png": "unsafe-path",
        "sym.png": "not-regular-file",
        "hard.png": "not-regular-file",
        "chr.png": "not-regular-file",
        "blk.png": "not-regular-file",
        "fifo.png": "not-regular-file",
        "big.png": "too-large",
        "inner.zip": "nested-archive",
        "inner.tar": "nested-archive",
        "disguised.png": "nested-archive",
        "notes.txt": "not-an-image",
        "__MACOSX/._good.png": "not-an-image",
        ".DS_Store": "not-an-image",
    }
    assert [m.key for m in items if isinstance(m, Member)] == ["scan.dat", "scan.bin", "good.png"]
    assert all(":" in r.reason for r in items if isinstance(r, Reject))


def test_zip_safety_rejects(tmp_path):
    png = _png(_digit(0))
    path = tmp_path / "bad.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("../up.png", png)
        zf.writestr("/abs.png", png)
        zf.writestr("a\\..\\..\\win.png", png)                        # backslash separators
        link = zipfile.ZipInfo("link.png")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16             # unix symlink
        zf.writestr(link, "good.png")
        zf.writestr("big.png", png + bytes(5000))
        zf.writestr("nested.zip", b"PK\x05\x06" + bytes(18))        # an empty zip
        zf.writestr("._good.png", b"junk")
        zf.writestr("good.png", png)
    items = list(iter_members(path, max_member_bytes=len(png) + 100))
    assert _codes(items) == {
        "../up.png": "unsafe-path",
        "/abs.png": "unsafe-path",
        "a\\..\\..\\win.png": "unsafe-path",
        "link.png": "not-regular-file",
        "big.png": "too-large",
        "nested.zip": "nested-archive",
        "._good.png": "not-an-image",
    }
    assert [m.key for m in items if isinstance(m, Member)] == ["good.png"]


def _lying_zip(path, payload: bytes, claimed: int):
    """A zip whose headers claim ``claimed`` bytes for a deflated ``payload``."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("bomb.png", payload)
    raw = bytearray(path.read_bytes())
    assert raw[:4] == b"PK\x03\x04"
    struct.pack_into("<I", raw, 22, claimed)          # local header: uncompressed size
    central = raw.rindex(b"PK\x01\x02")
    struct.pack_into("<I", raw, central + 24, claimed)  # central directory: same
    path.write_bytes(bytes(raw))
    return path


def test_zip_bomb_with_lying_header_reads_at_most_the_limit(tmp_path, monkeypatch):
    path = _lying_zip(tmp_path / "bomb.zip", bytes(2**20), claimed=100)
    assert zipfile.ZipFile(path).getinfo("bomb.png").file_size == 100
    reads = []
    original = zipfile.ZipExtFile.read

    def spy(self, n=-1):
        data = original(self, n)
        reads.append(len(data))
        return data

    monkeypatch.setattr(zipfile.ZipExtFile, "read", spy)
    (item,) = list(iter_members(path, max_member_bytes=1000))
    assert item.reason.startswith("too-large")
    assert sum(reads) <= 1001


def test_zip_honest_bomb_rejected_from_header_and_corrupt_member(tmp_path):
    path = tmp_path / "z.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.png", bytes(2**20))
    (item,) = list(iter_members(path, max_member_bytes=1000))
    assert item.reason.startswith("too-large")

    png = _png(_digit(0))
    small = _lying_zip(tmp_path / "small.zip", png, claimed=len(png) - 10)  # header says less
    (item,) = list(iter_members(small))
    assert item.reason.startswith("unreadable-member")

    flipped = tmp_path / "crc.zip"
    with zipfile.ZipFile(flipped, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("a.png", png)
        zf.writestr("b.png", png)
    raw = bytearray(flipped.read_bytes())
    raw[30 + len("a.png") + 40] ^= 0xFF  # one byte of a.png's data: CRC error
    flipped.write_bytes(bytes(raw))
    items = list(iter_members(flipped))
    assert _codes(items) == {"a.png": "unreadable-member"}
    assert [m.key for m in items if isinstance(m, Member)] == ["b.png"]


def test_directory_rejects(tmp_path):
    png = _png(_digit(0))
    root = tmp_path / "d"
    _write_source(root, {"3/good.png": png, "big.png": png + bytes(5000),
                         "notes.txt": b"text", ".DS_Store": b"Bud1"}, "dir")
    (root / "link.png").symlink_to(root / "3" / "good.png")
    (root / "linkdir").symlink_to(root / "3")                # not followed
    if hasattr(os, "mkfifo"):
        os.mkfifo(root / "fifo.png")                         # must not block
    items = list(iter_members(root, max_member_bytes=len(png) + 100))
    expected = {"big.png": "too-large", "notes.txt": "not-an-image", ".DS_Store": "not-an-image",
                "link.png": "not-regular-file", "linkdir": "not-regular-file"}
    if hasattr(os, "mkfifo"):
        expected["fifo.png"] = "not-regular-file"
    assert _codes(items) == expected
    assert [(m.key, m.folder_label) for m in items if isinstance(m, Member)] == [("3/good.png", 3)]
    keys = [i.key for i in items]
    assert keys == sorted(keys)


# --- decode_batch ------------------------------------------------------------


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95)
    return buf.getvalue()


def test_decode_batch_rejects_and_accepts():
    d = _digit(7)
    png, jpeg = _png(d), _jpeg(Image.fromarray(d).resize((56, 56)))
    ico = io.BytesIO()
    Image.fromarray(d).save(ico, "ICO")
    cmyk = _jpeg(Image.fromarray(255 - d).resize((40, 40)).convert("RGB").convert("CMYK"))
    items = [
        ("trunc.png", png[: len(png) // 2], 1),
        ("trunc.jpg", jpeg[: len(jpeg) // 2], 1),
        ("zero.png", b"", 1),
        ("text.png", b"not an image at all", 1),
        ("icon.ico", ico.getvalue(), 1),                         # a format we do not open
        ("huge.png", _png_header_only(60000, 60000), 1),         # Pillow's own bomb limit
        ("wide.png", _png_header_only(20000, 10), 1),            # a side over MAX_SIDE
        ("big.png", _png_header_only(5000, 5000), 1),            # over MAX_PIXELS
        ("ok.png", png, 4),
        ("sixteen.png", _png(Image.fromarray(d.astype(np.uint16) * 257)), None),
        ("cmyk.jpg", cmyk, 2),
        ("one.png", _png(np.full((1, 1), 255, np.uint8)), 0),   # 1x1: kept (blank)
        ("ok.jpg", jpeg, 5),
    ]
    batch = decode_batch(items)
    assert _codes(batch.rejects) == {
        "trunc.png": "decode-error",
        "trunc.jpg": "decode-error",
        "zero.png": "empty-image",
        "text.png": "decode-error",
        "icon.ico": "decode-error",
        "huge.png": "decompression-bomb",
        "wide.png": "bad-dimensions",
        "big.png": "bad-dimensions",
    }
    assert batch.keys == ["ok.png", "sixteen.png", "cmyk.jpg", "one.png", "ok.jpg"]
    text_reject = next(r for r in batch.rejects if r.key == "text.png")
    assert text_reject.reason == "decode-error: not a PNG, JPEG, BMP, TIFF, GIF, WebP or PNM image"
    assert batch.labels.tolist() == [4, UNKNOWN_LABEL, 2, 0, 5]
    assert np.array_equal(batch.images[0], d)
    assert np.abs(batch.images[1].astype(int) - d).max() <= 1
    assert batch.images[2][0, 0] == 0 and batch.images[2].max() > 200  # inverted, fitted
    assert not batch.images[3].any()
    assert batch.images[4].max() > 200


@pytest.mark.parametrize("fmt,options,tolerance", [
    ("PNG", {}, 0),
    ("BMP", {}, 0),
    ("TIFF", {}, 0),
    ("GIF", {}, 0),                        # grey palette
    ("WEBP", {"lossless": True}, 0),
    ("PPM", {}, 0),                        # written as PGM for an L image
    ("JPEG", {"quality": 95}, 40),         # lossy
])
def test_decode_every_allowed_format(fmt, options, tolerance):
    d = _digit(11)
    buf = io.BytesIO()
    Image.fromarray(d).save(buf, fmt, **options)
    batch = decode_batch([(f"a.{fmt.lower()}", buf.getvalue(), 1)])
    assert batch.rejects == []
    assert np.abs(batch.images[0].astype(int) - d).max() <= tolerance


@pytest.mark.parametrize("side", [
    40,  # 1,600 pixels: between the limit and twice it, Pillow only warns
    50,  # 2,500 pixels: over twice the limit, Pillow raises
])
def test_decode_batch_decompression_bomb_limit(monkeypatch, side):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    batch = decode_batch([("b.png", _png(np.zeros((side, side), np.uint8)), 1),
                          ("ok.png", _png(_digit(0)), 1)])
    assert _codes(batch.rejects) == {"b.png": "decompression-bomb"}
    assert batch.keys == ["ok.png"]


def test_decode_batch_empty_input():
    batch = decode_batch([])
    assert len(batch) == 0 and batch.images.shape == (0, 28, 28) and batch.rejects == []


# --- container breakage and bad arguments ----------------------------------


def _truncated(path, keep: int):
    raw = path.read_bytes()
    path.write_bytes(raw[:keep])
    return path


@pytest.mark.parametrize("kind,cut", [
    ("tar.gz", 0.5),    # gzip stream ends early
    ("tar.gz", -8),     # gzip trailer (CRC, size) missing
    ("tar.xz", 0.5),
    ("tar", 1636),      # inside the second member's data
    ("tar", 2048),      # at a header boundary: no end-of-archive marker
    ("tar", 2148),      # inside the third member's header
    ("zip", 0.5),       # central directory lost
])
def test_truncated_containers_raise_archive_error(tmp_path, kind, cut):
    members = {f"{i}/x.png": _png(_digit(i)) for i in range(4)}
    path = _write_source(tmp_path / f"s.{kind}", members, kind)
    size = path.stat().st_size
    _truncated(path, int(size * cut) if isinstance(cut, float) else cut % size)
    with pytest.raises(ArchiveError, match=str(path)):
        list(iter_members(path, kind="zip" if kind == "zip" else "tar"))


def test_corrupt_zip_central_directory(tmp_path):
    path = _write_source(tmp_path / "c.zip", {"a.png": _png(_digit(0))}, "zip")
    raw = bytearray(path.read_bytes())
    central = raw.rindex(b"PK\x01\x02")
    raw[central : central + 4] = b"XXXX"
    path.write_bytes(bytes(raw))
    with pytest.raises(ArchiveError, match="corrupt"):
        list(iter_members(path))


def test_missing_unknown_and_bad_arguments(tmp_path):
    with pytest.raises(SourceNotFoundError):
        iter_members(tmp_path / "nope.tar")
    with pytest.raises(SourceNotFoundError):
        detect_image_source(tmp_path / "nope")
    text = tmp_path / "t.bin"
    text.write_bytes(b"hello")
    with pytest.raises(UnknownSourceError, match="supported kinds"):
        iter_members(text)
    with pytest.raises(UnknownSourceError, match="'rar'"):
        iter_members(text, kind="rar")
    with pytest.raises(SourceError, match="max_member_bytes"):
        iter_members(text, kind="tar", max_member_bytes=0)
    with pytest.raises(ArchiveError):
        list(iter_members(text, kind="tar"))
    with pytest.raises(ArchiveError, match="not a directory"):
        list(iter_members(text, kind="dir"))


def test_unreadable_directory(tmp_path, monkeypatch):
    root = tmp_path / "d"
    _write_source(root, {"a/x.png": _png(_digit(0))}, "dir")
    real_scandir = os.scandir

    def scandir(path):  # chmod 0 would not stop root, so fake the refusal
        if os.fspath(path).endswith(os.sep + "a"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(ArchiveError, match="cannot list directory .*Permission denied"):
        list(iter_members(root))


def test_looks_like_tar_rejects_noise():
    assert not members_mod.looks_like_tar(bytes(512))
    assert not members_mod.looks_like_tar(_png(_digit(0)))
