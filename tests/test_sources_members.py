"""Tests of digitbatch.sources.members: the per-member checks, function by function.

Every reader (streamed, random access) judges a member by these functions,
so each is tested at its edges here on bytes made in memory: tar headers
with and without the ustar magic, every compression and archive magic,
member names that escape the root, sizes at the limit and one over it, and
reads that must never take more than the cap.
"""

from __future__ import annotations

import bz2
import gzip
import io
import itertools
import lzma
import posixpath
import tarfile
import warnings
import zipfile

import pytest
from PIL import Image

from digitbatch.sources import members as M
from digitbatch.sources.base import Reject


def _png(size=(28, 28)) -> bytes:
    buf = io.BytesIO()
    Image.new("L", size, 0).save(buf, "PNG")
    return buf.getvalue()


def _tar_header(name: str = "a.png", size: int = 3) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        info = tarfile.TarInfo(name)
        info.size = size
        tf.addfile(info, io.BytesIO(b"x" * size))
    return buf.getvalue()[:512]


def _v7(header: bytes, *, checksum_field: bytes | None = None) -> bytes:
    """``header`` without the ustar magic and version, checksum recomputed as tar does."""
    h = bytearray(header)
    h[257:265] = bytes(8)
    h[148:156] = b" " * 8
    field = checksum_field if checksum_field is not None else b"%06o\x00 " % sum(h)
    h[148:156] = field
    return bytes(h)


# --- looks_like_tar ----------------------------------------------------------


def test_ustar_header_is_a_tar_and_needs_512_bytes():
    h = _tar_header()
    assert h[257:262] == b"ustar"
    assert M.looks_like_tar(h)
    assert M.looks_like_tar(h + b"more")
    assert not M.looks_like_tar(h[:511])
    assert not M.looks_like_tar(b"")


def test_magic_alone_makes_a_tar_even_with_a_bad_checksum():
    h = bytearray(_tar_header())
    h[148:156] = b"0000000\x00"  # a wrong checksum: the magic is enough
    assert M.looks_like_tar(bytes(h))
    h[257:262] = b"ustaR"
    assert not M.looks_like_tar(bytes(h))


@pytest.mark.parametrize("field", [
    None,                 # tar's own "%06o\0 "
    "spaces",             # the checksum padded with spaces, no NUL
    "leading-nul",        # NUL-padded on the left ("\0" counts as a blank)
    "left-aligned",       # no leading zeros: the first digit is the field's first byte
])
def test_v7_header_is_a_tar_by_its_checksum(field):
    h = _v7(_tar_header())
    total = sum(h[:148]) + 8 * 32 + sum(h[156:512])
    if field == "spaces":
        h = _v7(h, checksum_field=b"%7o " % total)
    elif field == "leading-nul":
        h = _v7(h, checksum_field=b"\x00" + b"%06o" % total + b"\x00")
    elif field == "left-aligned":
        assert len(b"%o" % total) >= 4 and not (b"%o" % total).startswith(b"0")
        h = _v7(h, checksum_field=(b"%o" % total).ljust(7, b"\x00") + b" ")
    assert h[257:262] != b"ustar"
    assert M.looks_like_tar(h)
    assert M.looks_like_tar(h + b"\xff" * 100)  # what follows the header is not summed


@pytest.mark.parametrize("where", [0, 100, 147, 156, 300, 511])
def test_v7_header_with_any_byte_changed_is_not_a_tar(where):
    h = bytearray(_v7(_tar_header()))
    h[where] = (h[where] + 1) % 256
    assert not M.looks_like_tar(bytes(h))


@pytest.mark.parametrize("field", [b"\x00" * 8, b" " * 8, b"12x4567\x00", b"9999999\x00"])
def test_v7_header_with_a_checksum_field_that_is_not_octal_is_not_a_tar(field):
    assert not M.looks_like_tar(_v7(_tar_header(), checksum_field=field))


def test_zero_block_is_not_a_tar():
    assert not M.looks_like_tar(bytes(512))
    assert not M.looks_like_tar(_png())


# --- compression, archive_magic ------------------------------------------------


def test_compression_by_magic():
    assert M.compression(gzip.compress(b"x")) == "gz"
    assert M.compression(bz2.compress(b"x")) == "bz2"
    assert M.compression(lzma.compress(b"x")) == "xz"
    assert M.compression(b"\x1f\x8b") == "gz"
    assert M.compression(b"BZh9") == "bz2"
    assert M.compression(bz2.compress(b"")) == "bz2"  # level digit, then no block: "BZh9\x17"
    assert M.compression(b"BZhx rest") is None  # bzip2's block size is a digit
    assert M.compression(b"BZh") is None
    assert M.compression(b"\xfd7zXZ") is None   # xz's magic is six bytes
    assert M.compression(b"\xfd7zXZ\x00") == "xz"
    assert M.compression(b"\x1f") is None
    assert M.compression(b"") is None
    assert M.compression(_png()) is None


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.png", b"x")
    return buf.getvalue()


@pytest.mark.parametrize("data, kind", [
    (_zip_bytes(), "zip"),
    (b"PK\x03\x04rest", "zip"),
    (b"PK\x05\x06" + bytes(18), "zip"),   # an empty zip: only the end record
    (b"PK\x07\x08rest", "zip"),           # a spanned zip
    (gzip.compress(b"x"), "gz"),
    (bz2.compress(b"x"), "bz2"),
    (lzma.compress(b"x"), "xz"),
    (b"7z\xbc\xaf\x27\x1c" + bytes(26), "7z/rar"),
    (b"Rar!\x1a\x07\x00" + bytes(10), "7z/rar"),
    (b"Rar!\x1a\x07\x01\x00" + bytes(10), "7z/rar"),  # RAR 5
    (_tar_header() + bytes(512), "tar"),
    (_v7(_tar_header()) + bytes(512), "tar"),
    (_png(), None),
    (b"PK\x01\x02", None),                 # a central directory entry alone
    (b"7z\xbc\xaf", None),
    (b"", None),
])
def test_archive_magic(data, kind):
    assert M.archive_magic(data) == kind
    # content_reject's quick test (first byte, length) lets every archive through
    r = M.content_reject("a.png", data)
    assert (r.reason if r else None) == (f"nested-archive: member is a {kind} file" if kind
                                         else None)


def test_archive_magic_looks_for_a_tar_header_only_at_the_start():
    assert M.archive_magic(b"x" * 512 + _tar_header()) is None


# --- open_formats, is_image_content ------------------------------------------


def test_open_formats_are_the_allowed_ones_pillow_can_open():
    got = M.open_formats()
    assert isinstance(got, tuple)
    assert set(got) <= set(M.PIL_FORMATS)
    assert list(got) == [f for f in M.PIL_FORMATS if f in got]  # in PIL_FORMATS order
    assert {"PNG", "JPEG", "BMP", "TIFF", "GIF", "PPM"} <= set(got)  # TIFF: needs Image.init()
    assert "EPS" not in got and "PDF" not in got


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "TIFF", "GIF", "PPM"])
def test_is_image_content_for_every_allowed_format(fmt):
    buf = io.BytesIO()
    Image.new("L", (8, 8), 0).save(buf, fmt)
    assert M.is_image_content(buf.getvalue())


def test_is_image_content_refuses_other_formats_and_noise():
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n"
    assert not M.is_image_content(eps)   # an image format, but not one digitbatch opens
    buf = io.BytesIO()
    Image.new("L", (8, 8), 0).save(buf, "ICO")
    assert not M.is_image_content(buf.getvalue())
    assert not M.is_image_content(b"just text")
    assert not M.is_image_content(b"")


def test_is_image_content_of_a_bomb_is_true(monkeypatch):
    """A decompression bomb is an image (decoding rejects it), not "not-an-image"."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    assert M.is_image_content(_png((28, 28)))  # over twice the limit: Pillow raises


def test_is_image_content_is_quiet_about_pillow_warnings(monkeypatch):
    """A large image makes Pillow warn; under warnings-as-errors it is still an image."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    data = _png((28, 28))  # 784 pixels: over the limit, under twice it: a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert M.is_image_content(data)


# --- names ----------------------------------------------------------------------


@pytest.mark.parametrize("name, junk", [
    ("__MACOSX/a.png", True),
    ("x/__MACOSX/y/a.png", True),
    ("__MACOSX", False),              # a file of that name, not the folder
    ("x/__MACOSX.png", False),
    (".DS_Store", True),
    ("a/.ds_store", True),
    ("Thumbs.db", True),
    ("a/THUMBS.DB", True),
    ("desktop.ini", True),
    ("a/Desktop.INI", True),
    ("a/._b.png", True),
    ("a/b/._c.png", True),
    ("._b.png", True),
    ("a._b.png", False),
    ("._/b.png", False),              # only the base name counts
    ("a/b.png", False),
    (".hidden.png", False),
])
def test_is_junk(name, junk):
    assert M.is_junk(name) is junk


@pytest.mark.parametrize("raw, key", [
    ("a.png", "a.png"),
    ("3/a.png", "3/a.png"),
    ("a..b.png", "a..b.png"),
    ("./a.png", "a.png"),
    ("a/./b.png", "a/b.png"),
    ("a//b.png", "a/b.png"),
    ("a/b/", "a/b"),
    ("abc/", "abc"),
    ("a\\b.png", "a/b.png"),          # Windows separators
    (".hidden.png", ".hidden.png"),
    ("a/.hidden.png", "a/.hidden.png"),
    ("1:b.png", "1:b.png"),           # a colon after a digit: not a drive
    ("ab:c.png", "ab:c.png"),
])
def test_check_name_normalises_safe_names(raw, key):
    assert M.check_name(raw) == (key, None)


@pytest.mark.parametrize("raw, problem", [
    ("/etc/passwd", "unsafe-path: absolute path"),
    ("\\evil.png", "unsafe-path: absolute path"),
    ("C:/x.png", "unsafe-path: drive letter"),
    ("c:x.png", "unsafe-path: drive letter"),
    ("C:\\x.png", "unsafe-path: drive letter"),
    ("../x.png", "unsafe-path: member escapes the archive root"),
    ("a/../../x.png", "unsafe-path: member escapes the archive root"),
    ("a\\..\\x.png", "unsafe-path: member escapes the archive root"),
    ("..", "unsafe-path: member escapes the archive root"),
    ("", "unsafe-path: empty member name"),
    (".", "unsafe-path: empty member name"),
    ("./", "unsafe-path: empty member name"),
])
def test_check_name_refuses_unsafe_names_keeping_the_raw_name(raw, problem):
    assert M.check_name(raw) == (raw, problem)


@pytest.mark.parametrize("key, label", [
    ("3/a.png", 3), ("train/7/a.png", 7), ("0/x/a.png", None), ("a.png", None),
    ("13/a.png", None), ("x/a.png", None), ("3", None), ("a/0/b.png", 0),
])
def test_folder_label(key, label):
    assert M.folder_label(key) == label


def _names():
    parts = ["", "/", ".", "7", "77", "a", ".png", ".PNG", "x.jpg", "..", "/3/", "..png", "a.b"]
    return ["".join(p) for p in itertools.product(parts, repeat=4)]


def test_folder_label_and_extension_as_split_paths_give_them():
    """The quick string tests equal the path splits they stand for, on crafted keys."""
    for key in _names():
        parent = key.split("/")[-2:-1]
        assert M.folder_label(key) == (int(parent[0]) if parent and parent[0] in "0123456789"
                                       and len(parent[0]) == 1 else None), key
        want = posixpath.splitext(key)[1].lower() in M.IMAGE_EXTENSIONS
        assert M.has_image_extension(key) == want, key


# --- content, sizes ----------------------------------------------------------------


def test_content_reject_reasons():
    png = _png()
    r = M.content_reject("a.png", gzip.compress(png))
    assert r == Reject("a.png", "nested-archive: member is a gz file")
    assert M.content_reject("a.png", _zip_bytes()).reason == "nested-archive: member is a zip file"
    assert M.content_reject("a.png", png) is None
    assert M.content_reject("scan.DAT", png) is None            # unknown extension, image content
    assert M.content_reject("b.PNG", b"garbage") is None        # a known extension is decoded later
    assert M.content_reject("b.jpeg", b"garbage") is None
    assert M.content_reject("b.txt", b"garbage") == Reject(
        "b.txt", "not-an-image: unknown extension and content is not an image")
    assert M.content_reject("noext", b"garbage").reason.startswith("not-an-image:")


class _Reader:
    """A file that records the size of every read."""

    def __init__(self, data: bytes):
        self.f = io.BytesIO(data)
        self.sizes: list[int] = []

    def read(self, n: int) -> bytes:
        self.sizes.append(n)
        return self.f.read(n)


def test_read_capped_sizes_its_first_read_from_the_hint():
    r = _Reader(b"x" * 10)
    assert M.read_capped(r, 100, 10) == b"x" * 10
    assert r.sizes == [11, 90]  # the declared size plus one (a longer member shows), then the rest


def test_read_capped_never_reads_past_the_cap():
    data = b"y" * 200_000
    r = _Reader(data)
    got = M.read_capped(r, 150_000, 10)
    assert got == data[:150_000]
    assert r.sizes[0] == 11
    assert r.sizes[1:] == [65536, 65536, 150_000 - 11 - 2 * 65536]
    assert sum(r.sizes) == 150_000


def test_read_capped_with_a_lying_or_missing_hint():
    r = _Reader(b"z" * 50)
    assert M.read_capped(r, 20, 10**9) == b"z" * 20  # the hint never raises the cap
    assert r.sizes == [20]
    r = _Reader(b"z" * 5)
    assert M.read_capped(r, 20, -7) == b"z" * 5      # a negative hint still reads
    assert r.sizes[0] == 1
    assert M.read_capped(_Reader(b""), 20, 0) == b""
    assert M.read_capped(_Reader(b"abc"), 0, 3) == b""


def test_too_large_messages():
    assert M.too_large("k", 20, 10) == Reject("k", "too-large: 20 bytes, over the 10-byte limit")
    assert M.too_large("k", None, 10) == Reject(
        "k", "too-large: more than its declared size, over the 10-byte limit")


def test_finish_member_at_the_limit_and_one_over():
    png = _png()
    m = M.finish_member("4/a.png", png, len(png))
    assert m == M.Member("4/a.png", png, 4)
    assert M.finish_member("4/a.png", png, len(png) - 1) == Reject(
        "4/a.png", f"too-large: more than its declared size, over the {len(png) - 1}-byte limit")
    assert M.finish_member("a.png", gzip.compress(png), 10**6).reason.startswith("nested-archive")
    assert M.finish_member("a.png", png, 10**6).folder_label is None


def test_looks_like_tar_reads_the_v7_checksum_as_int_does():
    """The checksum field is parsed without raising where int() would refuse it,
    with the same answers: octal digits with spaces and NULs, signs and
    underscores as int() takes them, anything else not a tar."""
    import random

    from digitbatch.sources.members import looks_like_tar

    def reference(head):
        try:
            stored = int(head[148:156].replace(b"\x00", b" ").strip() or b"x", 8)
        except ValueError:
            return False
        return stored == sum(head[:148]) + 8 * 32 + sum(head[156:512])

    rng = random.Random(1)
    alphabet = b"0123456789 \x00+-_xa\t"
    tars = 0
    for i in range(20_000):
        head = bytearray(rng.randbytes(512) if i % 2 else bytes(512))
        head[257:262] = b"xxxxx"  # (no ustar magic: the checksum decides)
        head[148:156] = bytes(rng.choice(alphabet) for _ in range(8))
        if i % 5 == 0:  # a right checksum, as v7 tar writes it
            total = sum(head[:148]) + 256 + sum(head[156:512])
            head[148:156] = (oct(total)[2:].rjust(6, "0") + "\0 ").encode()
        if i % 11 == 0:  # ... or with a sign or an underscore int() accepts
            total = sum(head[:148]) + 256 + sum(head[156:512])
            head[148:156] = ("+" + oct(total)[2:].rjust(6, "0") + " ").encode()[:8]
        head = bytes(head)
        assert looks_like_tar(head) == reference(head), head[148:156]
        tars += reference(head)
    assert tars > 2000
