"""Hostile-input corpus: every kind of bad input, generated here, and what must happen to it.

Nothing is downloaded or copied: each case builds its corpus in ``tmp_path``
(a few good digits plus the hostile members). One parametrized case per
kind; "trials" are the hostile members / variants inside it.

Image containers (ingested; hostile members become rejects, good ones are kept):

================== ======================================================= =====================================
kind               trials                                                  expected outcome
================== ======================================================= =====================================
truncated-png      6 cuts inside the pixel data (tar.gz, streamed)         ``decode-error`` each; a cut that
                   + 1 cut that only loses the IEND trailer                only loses the trailer is accepted,
                                                                           pixels identical (Pillow's rule)
truncated-jpeg     8 cuts, header to last byte (zip, read by refs)         ``decode-error`` each
zero-byte          .png, .jpg, no extension (directory)                    ``empty-image`` / ``not-an-image``
decompression-bomb 100 Mpx (Pillow warns) and 196 Mpx (Pillow raises)      ``decompression-bomb``, RSS < cap
                   PNGs of a few KB (plain tar)
huge-dims-header   PNG 60000x60000 / 20000x1 / 4000x4000 and JPEG          ``decompression-bomb`` /
                   65500x65500 headers with a tiny payload (tar.gz)        ``bad-dimensions`` / ``decode-error``,
                                                                           RSS < cap
gzip-bomb-tar-gz   a 1 GiB member in a 1 MB tar.gz; a .png.gz member       ``too-large`` (from the header, data
                                                                           skipped) / ``nested-archive``, RSS < cap
zip-bomb           1 GiB deflated member with an honest header and with    ``too-large`` both (at most limit+1
                   a header that lies (claims 1000 bytes)                  bytes read), RSS < cap
nested-archive     zip, tar, tar.gz, bz2, xz, 7z, rar members, and a zip   ``nested-archive`` each
                   named .png (zip)
dotdot-member      ``../``, ``a/../../``, ``./../``, backslash ``..``      ``unsafe-path``, nothing written
                   (plain tar)                                             outside the output
absolute-member    ``/abs/x.png``, ``C:/x.png``, ``//x.png`` (zip)          ``unsafe-path``
symlink-member     tar symlinks to /etc/passwd and to a member; zip        ``not-regular-file``
                   symlink (tar.gz + zip)
symlink-in-dir     symlinks to an image outside the source, to a          ``not-regular-file`` (never followed)
                   directory, dangling (directory)
hardlink-member    tar hardlinks to a member and to /etc/passwd            ``not-regular-file``
device-fifo-member tar CHRTYPE, BLKTYPE, FIFOTYPE headers; zip FIFO mode   ``not-regular-file``
fifo-in-dir        a real FIFO in a directory source                       ``not-regular-file``, no hang
non-image          txt, csv, py, pdf, html, svg, eps; an EPS named .png;   ``not-an-image`` / ``decode-error``
                   __MACOSX / .DS_Store junk (directory)
16bit-cmyk         16-bit PNG, TIFF and PGM, CMYK TIFF and JPEG            accepted, converted to grey: exact
                                                                           for lossless files
one-pixel          1x1 white, 1x1 black, 1x1 BMP, 1x300 (directory)        accepted as blank (all-zero) digits
bad-labels-csv     --labels cells 42, -1, x, 3.5, nan, inf, 1e1, 0x3       ``bad-label`` each; empty cell:
                                                                           kept, unlabelled
bad-labels-folder  folders 10, -1, x, 3.0, 03, ٣ (non-ASCII digit)         accepted, unlabelled (-1): only a
                                                                           one-ASCII-digit folder is a label
non-utf8-name      a Latin-1 ``7/caf\\xe9.png`` in a tar, tar.gz, zip (no    accepted, key ``7/caf\\xe9.png`` (tar,
                   UTF-8 flag) and a directory                             dir) or cp437 ``7/cafΘ.png`` (zip)
escaped-name-      a Latin-1 name and a UTF-8 name spelling its escape     ``duplicate-key`` (the later one)
collision-dir      with a literal backslash (directory)
duplicate-names    one name thrice in a zip; one name (and ``./`` form)     ``duplicate-key`` for the later ones,
                   thrice in a tar                                         the first kept
zero-filled-       N.png members of 3 MiB of zeros (tar.gz): the           ``decode-error`` from the head, the
members            many-member bomb in small (full size: test_member_bombs) rest not read, RSS < cap
padded-png / -jpeg 28x28 PNG, JPEG, GIF padded with zeros to 3 MiB           ``too-large`` (out of proportion to
                   (plain tar; zip)                                        the header), RSS < cap
big-non-image      3 MiB of text / zeros, unknown extension (directory)    ``not-an-image`` from the head
big-nested-archive a 3 MiB zip named .png, a tar named .tar.png            ``nested-archive`` from the head
encrypted-zip-     zip member with the encryption flag; a bad CRC; methods ``unreadable-member``
member, zip-bad-   99 (AES) and 97 (WavPack)
crc, zip-unknown-
method
png-bad-crc        bad IHDR CRC; bad IDAT CRC                              ``decode-error``; IDAT: accepted
                                                                           (Pillow's rule, pixels as stored)
jpeg-no-sof        SOF segment removed; SOI+EOI only (zip)                 ``decode-error``
wrong-extension    PNG named .jpg, JPEG named .png, BMP named .gif, none   accepted by content
================== ======================================================= =====================================

Containers and stores that are broken as a whole (a named error; nothing written):

================== ======================================================= =====================================
idx-wrong-magic    labels magic in the images file, byte-swapped, float    ``IdxFormatError`` (magic)
                   dtype byte
idx-wrong-dims     (n, 28, 27), (n, 32, 32)                                ``IdxFormatError`` (dimensions)
idx-wrong-count    payload one image short / long; 10 images, 9 labels     ``IdxFormatError``
idx-huge-count     header claims 2^31 images, tiny payload                 ``IdxFormatError`` (refusing)
idx-gzip-bomb      10-image header then 1 GiB of zeros in a 1 MB .gz       ``IdxFormatError`` (padded), RSS < cap
pax-zero-length    a pax record of length 0 (plain tar)                    ``ArchiveError``, no endless loop
longname-sparse    a 1 GiB GNU long-name header in a sparse plain tar      ``ArchiveError``, RSS < cap
longname-gzip-bomb a 1 GiB GNU long-name header in a 1 MB tar.gz           ``ArchiveError``, RSS < cap
labels-csv-bomb    a 200 KB field; no header                               ``LabelsFileError``
too-many-rejects   11 bad members, --max-rejects 10 (CLI)                  ``TooManyRejectsError``, exit 1
non-utf8-name-zip- Latin-1 names flagged UTF-8 in a zip                    ``ArchiveError`` (not UTF-8), ingest
flagged                                                                    and direct scoring
tar-truncated,     a tar cut short; a header byte changed; a tar.gz whose   ``ArchiveError``, ingest and direct
tar-bad-checksum,  trailer CRC is wrong; a zip cut inside its central       scoring
tar-gz-bad-crc,    directory
zip-truncated
store-damage       images / labels / keys chunk missing, corrupt,          ``StoreError`` when read, scored or
                   truncated x read / score / train                        trained on; never fill values
================== ======================================================= =====================================

For every case: the outcome above; no file appears anywhere in ``tmp_path``
but the output (tree snapshots before/after) and nothing is removed; for
accepted stores, scoring the store and scoring the container directly give
one prediction per accepted image, in the same order, and no row for a
rejected key; cases marked "RSS < cap" also run ``python -m digitbatch
ingest`` in a subprocess whose peak RSS (``os.wait4``) must stay under
:data:`RSS_CAP_MB`, and check its exit code and message.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import os
import signal
import stat
import struct
import subprocess
import sys
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import zarr
from PIL import Image

from digitbatch.errors import (
    ArchiveError, DigitbatchError, IdxFormatError, LabelsFileError, StoreError,
    TooManyRejectsError,
)
from digitbatch.ingestion import ingest
from digitbatch.layout import UNKNOWN_LABEL, open_store
from digitbatch.scoring.api import score
from digitbatch.training import train

from ..conftest import trained_model

RSS_CAP_MB = 600
GIB_MIB = 1024  # the bombs expand to 1 GiB
RSS_SEEN: dict[str, float] = {}

# --- corpus helpers -----------------------------------------------------------


def _digit(seed: int) -> np.ndarray:
    """A 28x28 digit-like stroke, light on dark."""
    img = np.zeros((28, 28), np.uint8)
    rng = np.random.default_rng(seed)
    r, c = rng.integers(6, 10), rng.integers(8, 14)
    img[r:r + 14, c:c + 4] = 255
    img[r:r + 3, c:c + 10] = 200
    return img


def _enc(img, fmt: str, **kw) -> bytes:
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _good(n: int = 3, folder: str = "3") -> dict[str, bytes]:
    return {f"{folder}/good{i}.png": _enc(_digit(i), "PNG") for i in range(n)}


def _tar_bytes(members: dict[str, bytes], *, extra: tuple = (), end: bool = True) -> bytes:
    """Plain tar bytes: regular members, then ``extra`` (TarInfo, data) entries."""
    out = io.BytesIO()
    for name, data in members.items():
        _add(out, _info(name, size=len(data)), data)
    for info, data in extra:
        _add(out, info, data)
    if end:
        out.write(bytes(2 * tarfile.BLOCKSIZE))
    return out.getvalue()


def _info(name: str, *, size: int = 0, type_: bytes = tarfile.REGTYPE, linkname: str = "",
          mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.linkname, info.mode = size, type_, linkname, mode
    return info


def _add(out: io.BytesIO, info: tarfile.TarInfo, data: bytes | None) -> None:
    out.write(info.tobuf(tarfile.GNU_FORMAT))
    if data:
        out.write(data + bytes(-len(data) % tarfile.BLOCKSIZE))


def _gz(data: bytes) -> bytes:
    co = zlib.compressobj(6, zlib.DEFLATED, 31)
    return co.compress(data) + co.flush()


@functools.cache
def _zeros_deflate(mib: int) -> tuple[bytes, int]:
    """(raw deflate stream, CRC-32) of ``mib`` MiB of zeros, built in well under a second.

    After a full flush the compressor's state is reset, so every further MiB
    of zeros compresses to the same bytes: repeat them.
    """
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = bytes(2**20)
    first = co.compress(block) + co.flush(zlib.Z_FULL_FLUSH)
    again = co.compress(block) + co.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(block, crc)
    return first + again * (mib - 1) + co.flush(), crc


def _gz_zeros(mib: int) -> bytes:
    """One gzip member holding ``mib`` MiB of zeros (about 1 KB a MiB)."""
    body, crc = _zeros_deflate(mib)
    return (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + body
            + struct.pack("<II", crc, (mib << 20) & 0xFFFFFFFF))


def _zip_raw(path: Path, entries: list[tuple]) -> None:
    """A zip by hand: (name, method, stored bytes, crc, claimed uncompressed size[, flags])
    entries; a name given as bytes is stored as they are."""
    out, central = io.BytesIO(), io.BytesIO()
    for name, method, data, crc, claimed, *flags in entries:
        flag = flags[0] if flags else 0
        offset, raw = out.tell(), name if isinstance(name, bytes) else name.encode()
        out.write(struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, flag, method, 0, 0, crc, len(data),
                              claimed, len(raw), 0) + raw + data)
        central.write(struct.pack("<4s6H3I5H2I", b"PK\x01\x02", 20, 20, flag, method, 0, 0, crc,
                                  len(data), claimed, len(raw), 0, 0, 0, 0, 0o644 << 16, offset)
                      + raw)
    cd = central.getvalue()
    out.write(cd + struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, len(entries), len(entries),
                               len(cd), out.tell(), 0))
    path.write_bytes(out.getvalue())


def _zip(path: Path, members: dict[str, bytes], extra: tuple = ()) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for info, data in extra:
            zf.writestr(info, data)
    return path


def _dir(path: Path, members: dict[str, bytes]) -> Path:
    for name, data in members.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    return path


def _png_header(width: int, height: int) -> bytes:
    """A valid-looking PNG that claims ``width`` x ``height`` over a 64-byte payload."""
    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b""))


def _jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(_enc(_digit(5), "JPEG"))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


# --- the cases ------------------------------------------------------------------


@dataclass
class Case:
    build: Callable[[Path], Path]                # makes the source under the given folder
    rejects: dict[str, str] = field(default_factory=dict)  # key -> reason code
    accepted: int = 3                            # images in the store
    error: tuple[type, str] | None = None        # (named error, message pattern)
    labels: Callable[[Path], Path] | None = None  # makes a --labels CSV
    check: Callable | None = None                # extra checks on the store
    rss: bool = False                            # also ingest in a subprocess, peak RSS < cap
    max_rejects: int = 100
    marks: tuple = ()
    direct: bool = False                         # the error also when scored directly
    n_rejects: int | None = None                 # when keys repeat in rejects (duplicates)
    deadline: int = 60                           # seconds before the case counts as hung


def _png_data() -> bytes:
    return _enc(np.kron(_digit(9), np.ones((8, 8), np.uint8)), "PNG")


def _png_cuts() -> list[int]:
    return [1, 8, 20, 40, 100, len(_png_data()) // 2]


def _truncated_png(d: Path) -> Path:
    data = _png_data()
    iend = data.rindex(b"IEND") - 4
    members = _good()
    for cut in _png_cuts():
        members[f"cut{cut}.png"] = data[:cut]
    members["5/trailer-cut.png"] = data[:iend]
    members["5/whole.png"] = data
    (d / "src.tar.gz").write_bytes(_gz(_tar_bytes(members)))
    return d / "src.tar.gz"


def _check_trailer_cut(store, r) -> None:
    x, _, keys = store.read()
    keys = list(keys)
    np.testing.assert_array_equal(x[keys.index("5/trailer-cut.png")], x[keys.index("5/whole.png")])


def _truncated_jpeg(d: Path) -> Path:
    data = _enc(np.kron(_digit(4), np.ones((8, 8), np.uint8)), "JPEG", quality=90)
    members = _good()
    for cut in (1, 8, 20, 40, 100, len(data) // 2, len(data) - 2, len(data) - 1):
        members[f"jcut{cut}.jpg"] = data[:cut]
    return _zip(d / "src.zip", members)


def _jpeg_cuts() -> list[str]:
    n = len(_enc(np.kron(_digit(4), np.ones((8, 8), np.uint8)), "JPEG", quality=90))
    return [f"jcut{c}.jpg" for c in (1, 8, 20, 40, 100, n // 2, n - 2, n - 1)]


def _zero_byte(d: Path) -> Path:
    return _dir(d / "src", {**_good(), "0/empty.png": b"", "empty.jpg": b"", "empty": b""})


def _bomb_png(d: Path) -> Path:
    members = {**_good(),
               "warn.png": _enc(Image.new("1", (10000, 10000)), "PNG"),   # 100 Mpx, 12 KB
               "error.png": _enc(Image.new("1", (14000, 14000)), "PNG")}  # 196 Mpx, 24 KB
    (d / "src.tar").write_bytes(_tar_bytes(members))
    return d / "src.tar"


def _huge_dims(d: Path) -> Path:
    members = {**_good(), "h60000.png": _png_header(60000, 60000),
               "h20000x1.png": _png_header(20000, 1), "h4000.png": _png_header(4000, 4000),
               "h65500.jpg": _jpeg_claiming(65500, 65500)}
    (d / "src.tar.gz").write_bytes(_gz(_tar_bytes(members)))
    return d / "src.tar.gz"


def _gzip_bomb_tar(d: Path) -> Path:
    small_bomb = _gz_zeros(64)  # a .png.gz member: 64 MiB of zeros in 66 KB
    head = _tar_bytes({**_good(), "inner.png.gz": small_bomb}, end=False)
    bomb_header = _info("bomb.png", size=GIB_MIB << 20).tobuf(tarfile.GNU_FORMAT)
    tail = _tar_bytes({"7/after.png": _enc(_digit(7), "PNG")})
    # a multi-member gzip file: one gzip stream, as gzip and tarfile read it
    (d / "src.tar.gz").write_bytes(_gz(head + bomb_header) + _gz_zeros(GIB_MIB) + _gz(tail))
    return d / "src.tar.gz"


def _zip_bomb(d: Path) -> Path:
    body, crc = _zeros_deflate(GIB_MIB)
    entries = [(name, 0, data, zlib.crc32(data), len(data)) for name, data in _good().items()]
    entries += [("honest.png", 8, body, crc, GIB_MIB << 20),   # header says 1 GiB
                ("liar.png", 8, body, crc, 1000)]               # header says 1000 bytes
    _zip_raw(d / "src.zip", entries)
    return d / "src.zip"


def _nested(d: Path) -> Path:
    png = _enc(_digit(1), "PNG")
    inner_zip = io.BytesIO()
    with zipfile.ZipFile(inner_zip, "w") as zf:
        zf.writestr("x.png", png)
    import bz2
    import lzma
    inner_tar = _tar_bytes({"x.png": png})
    members = {**_good(), "inner.zip": inner_zip.getvalue(), "inner.tar": inner_tar,
               "inner.tar.gz": _gz(inner_tar), "inner.tar.bz2": bz2.compress(inner_tar),
               "inner.tar.xz": lzma.compress(inner_tar), "inner.7z": b"7z\xbc\xaf\x27\x1c" + bytes(40),
               "inner.rar": b"Rar!\x1a\x07\x00" + bytes(40), "disguised.png": inner_zip.getvalue()}
    return _zip(d / "src.zip", members)


_DOTDOT = ("../evil.png", "a/../../evil.png", "./../evil.png", "a\\..\\..\\evil.png")
_ABSOLUTE = ("/abs/evil.png", "C:/evil.png", "//evil.png")


def _dotdot(d: Path) -> Path:
    png = _enc(_digit(2), "PNG")
    extra = tuple((_info(n, size=len(png)), png) for n in _DOTDOT)
    (d / "src.tar").write_bytes(_tar_bytes(_good(), extra=extra))
    return d / "src.tar"


def _absolute(d: Path) -> Path:
    png = _enc(_digit(2), "PNG")
    extra = []
    for name in _ABSOLUTE:
        info = zipfile.ZipInfo("placeholder")
        info.filename = name  # ZipInfo() itself strips a leading "/"
        extra.append((info, png))
    return _zip(d / "src.zip", _good(), tuple(extra))


def _symlink_tar(d: Path) -> Path:
    extra = ((_info("sym-passwd.png", type_=tarfile.SYMTYPE, linkname="/etc/passwd"), None),
             (_info("sym-member.png", type_=tarfile.SYMTYPE, linkname="3/good0.png"), None),
             (_info("symdir", type_=tarfile.SYMTYPE, linkname="/"), None))
    (d / "src.tar.gz").write_bytes(_gz(_tar_bytes(_good(), extra=extra)))
    return d / "src.tar.gz"


def _symlink_zip(d: Path) -> Path:
    link = zipfile.ZipInfo("ziplink.png")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    return _zip(d / "src.zip", _good(), ((link, "/etc/passwd"),))


def _symlink_dir(d: Path) -> Path:
    outside = d / "outside.png"
    outside.write_bytes(_enc(_digit(8), "PNG"))
    src = _dir(d / "src", _good())
    (src / "out.png").symlink_to(outside)
    (src / "rootdir").symlink_to("/")
    (src / "dangling.png").symlink_to(d / "nowhere.png")
    return src


def _hardlink(d: Path) -> Path:
    extra = ((_info("hard-member.png", type_=tarfile.LNKTYPE, linkname="3/good0.png"), None),
             (_info("hard-passwd.png", type_=tarfile.LNKTYPE, linkname="/etc/passwd"), None))
    (d / "src.tar").write_bytes(_tar_bytes(_good(), extra=extra))
    return d / "src.tar"


def _devices(d: Path) -> Path:
    extra = tuple((_info(n, type_=t), None) for n, t in (
        ("chr.png", tarfile.CHRTYPE), ("blk.png", tarfile.BLKTYPE), ("fifo.png", tarfile.FIFOTYPE)))
    (d / "src.tar").write_bytes(_tar_bytes(_good(), extra=extra))
    return d / "src.tar"


def _devices_zip(d: Path) -> Path:
    fifo = zipfile.ZipInfo("zfifo.png")
    fifo.create_system = 3
    fifo.external_attr = (stat.S_IFIFO | 0o644) << 16
    return _zip(d / "src.zip", _good(), ((fifo, b""),))


def _fifo_dir(d: Path) -> Path:
    src = _dir(d / "src", _good())
    os.mkfifo(src / "fifo.png")
    return src


_EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\nshowpage\n"


def _non_image(d: Path) -> Path:
    return _dir(d / "src", {
        **_good(), "notes.txt": b"these are not digits\n", "data.csv": b"a,b\n1,2\n",
        "run.py": b"import os; os.system('touch PWNED')\n", "doc.pdf": b"%PDF-1.4\n%%EOF\n",
        "page.html": b"<html><body>7</body></html>", "pic.svg": b"<svg xmlns='x'/>",
        "pic.eps": _EPS, "eps-named.png": _EPS, "__MACOSX/3/._good0.png": b"\x00\x05\x16\x07",
        ".DS_Store": b"Bud1"})


def _wide_modes(d: Path) -> Path:
    x = _digit(6)
    wide = Image.fromarray(x.astype(np.uint16) * 257)
    cmyk = Image.fromarray(x).convert("CMYK")
    return _dir(d / "src", {"3/gray16.png": _enc(wide, "PNG"), "3/gray16.tif": _enc(wide, "TIFF"),
                            "3/gray16.pgm": _pgm16(x), "3/cmyk.tif": _enc(cmyk, "TIFF"),
                            "3/cmyk.jpg": _enc(cmyk, "JPEG", quality=95)})


def _pgm16(x: np.ndarray) -> bytes:
    return b"P5\n28 28\n65535\n" + (x.astype(">u2") * 257).tobytes()


def _check_wide(store, r) -> None:
    x, y, keys = store.read()
    want = _digit(6)
    got = dict(zip(keys, x))
    for key in ("3/gray16.png", "3/gray16.tif", "3/gray16.pgm", "3/cmyk.tif"):
        np.testing.assert_array_equal(got[key], want, err_msg=key)
    assert np.abs(got["3/cmyk.jpg"].astype(int) - want).mean() < 8
    assert (y == 3).all()


def _one_pixel(d: Path) -> Path:
    stroke = np.zeros((1, 300), np.uint8)
    stroke[0, 100:200] = 255
    return _dir(d / "src", {"1/white.png": _enc(Image.new("L", (1, 1), 255), "PNG"),
                            "1/black.png": _enc(Image.new("L", (1, 1), 0), "PNG"),
                            "1/one.bmp": _enc(Image.new("RGB", (1, 1), (9, 9, 9)), "BMP"),
                            "1/wide.png": _enc(stroke, "PNG")})


def _check_blank_1x1(store, r) -> None:
    x, y, keys = store.read()
    got = dict(zip(keys, x))
    for key in ("1/white.png", "1/black.png", "1/one.bmp"):
        assert not got[key].any(), key
    assert got["1/wide.png"].shape == (28, 28)


_BAD_CELLS = ("42", "-1", "x", "3.5", "nan", "inf", "1e1", "0x3")


def _flat_zip(d: Path) -> Path:
    members = {f"s{i}.png": _enc(_digit(i), "PNG") for i in range(len(_BAD_CELLS) + 3)}
    return _zip(d / "src.zip", members)


def _bad_labels_csv(d: Path) -> Path:
    p = d / "labels.csv"
    rows = [("s0.png", "1"), ("s1.png", "")] + [(f"s{i + 2}.png", c) for i, c in enumerate(_BAD_CELLS)]
    with open(p, "w", newline="") as fh:
        csv.writer(fh).writerows([("key", "label"), *rows])
    return p


def _check_csv_labels(store, r) -> None:
    _, y, keys = store.read()
    assert dict(zip(keys, y.tolist())) == {"s0.png": 1, "s1.png": UNKNOWN_LABEL,
                                            f"s{len(_BAD_CELLS) + 2}.png": UNKNOWN_LABEL}


_FOLDERS = ("10", "-1", "x", "3.0", "03", "\u0663")


def _bad_label_folders(d: Path) -> Path:
    members = {f"{f}/img.png": _enc(_digit(i), "PNG") for i, f in enumerate(_FOLDERS)}
    return _dir(d / "src", {**members, "7/ok.png": _enc(_digit(9), "PNG")})


def _check_folder_labels(store, r) -> None:
    _, y, keys = store.read()
    assert dict(zip(keys, y.tolist())) == {**{f"{f}/img.png": UNKNOWN_LABEL for f in _FOLDERS},
                                            "7/ok.png": 7}
    assert r.n_labeled == 1


# IDX directories ---------------------------------------------------------------


def _idx_header(magic: int, *dims: int) -> bytes:
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)


def _idx(d: Path, images: bytes, labels: bytes) -> Path:
    src = d / "idx"
    src.mkdir()
    (src / "train-images-idx3-ubyte").write_bytes(images)
    (src / "train-labels-idx1-ubyte").write_bytes(labels)
    return src


_LABELS10 = _idx_header(2049, 10) + bytes(10)
_IMAGES10 = _idx_header(2051, 10, 28, 28) + bytes(10 * 784)


def _idx_case(images: bytes, labels: bytes = _LABELS10):
    return lambda d: _idx(d, images, labels)


def _idx_gzip_bomb(d: Path) -> Path:
    src = d / "idx"
    src.mkdir()
    (src / "train-images-idx3-ubyte.gz").write_bytes(_gz(_IMAGES10) + _gz_zeros(GIB_MIB))
    (src / "train-labels-idx1-ubyte.gz").write_bytes(_gz(_LABELS10))
    return src


# Broken tars -------------------------------------------------------------------


def _pax_zero(d: Path) -> Path:
    meta = b"0 path=x.png\n"
    extra = ((_info("././@PaxHeader", size=len(meta), type_=tarfile.XHDTYPE), meta),)
    (d / "src.tar").write_bytes(_tar_bytes(_good(), extra=extra))
    return d / "src.tar"


def _longname_sparse(d: Path) -> Path:
    p = d / "src.tar"
    with open(p, "wb") as fh:
        fh.write(_tar_bytes(_good(), end=False))
        fh.write(_info("././@LongLink", size=GIB_MIB << 20,
                       type_=tarfile.GNUTYPE_LONGNAME).tobuf(tarfile.USTAR_FORMAT))
        fh.seek(GIB_MIB << 20, os.SEEK_CUR)  # a hole: 1 GiB that takes no disk
        fh.write(_tar_bytes({"x.png": _enc(_digit(1), "PNG")}))
    return p


def _longname_gzip_bomb(d: Path) -> Path:
    head = _tar_bytes(_good(), end=False) + _info(
        "././@LongLink", size=GIB_MIB << 20, type_=tarfile.GNUTYPE_LONGNAME).tobuf(tarfile.USTAR_FORMAT)
    tail = _tar_bytes({"x.png": _enc(_digit(1), "PNG")})
    (d / "src.tar.gz").write_bytes(_gz(head) + _gz_zeros(GIB_MIB) + _gz(tail))
    return d / "src.tar.gz"


def _csv_bomb(d: Path) -> Path:
    p = d / "labels.csv"
    p.write_text("key,label\n" + "s0.png," + "7" * 200_000 + "\n")
    return p


def _too_many(d: Path) -> Path:
    return _dir(d / "src", {**_good(), **{f"junk{i}.png": b"\x89PNG junk" for i in range(11)}})


# Names, duplicates and member sizes (issue 18) ------------------------------------

_LATIN1 = b"7/caf\xe9.png"  # a Latin-1 name: not UTF-8
_LATIN1_KEY = "7/caf\\xe9.png"  # its key: the byte escaped


def _raw_tar(members: list[tuple[bytes, bytes]]) -> bytes:
    """A plain tar of (name bytes, data) members, names stored as they are."""
    out = io.BytesIO()
    for name, data in members:
        _add(out, _info(name.decode("utf-8", "surrogateescape"), size=len(data)), data)
    out.write(bytes(2 * tarfile.BLOCKSIZE))
    return out.getvalue()


def _latin1_members() -> list[tuple[bytes, bytes]]:
    return [(k.encode(), v) for k, v in _good().items()] + [(_LATIN1, _enc(_digit(7), "PNG"))]


def _latin1_tar(d: Path) -> Path:
    (d / "src.tar").write_bytes(_raw_tar(_latin1_members()))
    return d / "src.tar"


def _latin1_tar_gz(d: Path) -> Path:
    (d / "src.tar.gz").write_bytes(_gz(_raw_tar(_latin1_members())))
    return d / "src.tar.gz"


def _latin1_zip(d: Path) -> Path:
    """Latin-1 bytes without the UTF-8 flag: the zip rule reads them as IBM code page 437."""
    entries = [(name, 0, data, zlib.crc32(data), len(data)) for name, data in _latin1_members()]
    _zip_raw(d / "src.zip", entries)
    return d / "src.zip"


def _latin1_zip_flagged(d: Path) -> Path:
    """Latin-1 bytes flagged as UTF-8 (bit 11): the zip lies about its names."""
    entries = [(name, 0, data, zlib.crc32(data), len(data), 0x800)
               for name, data in _latin1_members()]
    _zip_raw(d / "src.zip", entries)
    return d / "src.zip"


def _latin1_dir(d: Path) -> Path:
    src = _dir(d / "src", _good())
    os.makedirs(os.path.join(os.fsencode(src), b"7"), exist_ok=True)
    with open(os.path.join(os.fsencode(src), _LATIN1), "wb") as fh:
        fh.write(_enc(_digit(7), "PNG"))
    return src


def _check_keys(*want: str):
    def check(store, r) -> None:
        x, y, keys = store.read()
        got = dict(zip([str(k) for k in keys], y.tolist()))
        for k in want:
            assert k in got, (k, sorted(got))
            if k.startswith("7/"):
                assert got[k] == 7
    return check


def _escaped_collision_dir(d: Path) -> Path:
    """A Latin-1 name, and a UTF-8 name spelling its escape with a literal backslash."""
    src = _latin1_dir(d)
    (src / "7" / "caf\\xe9.png").write_bytes(_enc(_digit(8), "PNG"))
    return src


def _duplicate_zip(d: Path) -> Path:
    png = [_enc(_digit(i), "PNG") for i in range(3)]
    entries = [(k, 0, v, zlib.crc32(v), len(v)) for k, v in _good().items()]
    entries += [("4/dup.png", 0, p, zlib.crc32(p), len(p)) for p in png]  # thrice
    _zip_raw(d / "src.zip", entries)
    return d / "src.zip"


def _duplicate_tar(d: Path) -> Path:
    png = _enc(_digit(4), "PNG")
    extra = ((_info("4/dup.png", size=len(png)), png), (_info("./4/dup.png", size=len(png)), png))
    (d / "src.tar").write_bytes(_tar_bytes({**_good(), "4/dup.png": png}, extra=extra))
    return d / "src.tar"


def _check_first_duplicate_kept(store, r) -> None:
    x, _, keys = store.read()
    keys = [str(k) for k in keys]
    assert keys.count("4/dup.png") == 1
    assert [k for k, _ in store.rejects()] == ["4/dup.png", "4/dup.png"]


_BIG = 3 * 2**20  # over proportion.SNIFF_ABOVE: judged from its head


def _zero_filled(d: Path) -> Path:
    """The many-member bomb in small: N.png members of zeros (tar.gz)."""
    members = {**_good(), **{f"{i}.png": bytes(_BIG) for i in range(4)}}
    (d / "src.tar.gz").write_bytes(_gz(_tar_bytes(members)))
    return d / "src.tar.gz"


def _padded(data: bytes) -> bytes:
    return data + bytes(_BIG - len(data))


def _padded_png(d: Path) -> Path:
    members = {**_good(), "pad28.png": _padded(_enc(_digit(3), "PNG")),
               "pad28-rgb.png": _padded(_enc(Image.fromarray(_digit(3)).convert("RGB"), "PNG"))}
    (d / "src.tar").write_bytes(_tar_bytes(members))
    return d / "src.tar"


def _padded_jpeg_zip(d: Path) -> Path:
    return _zip(d / "src.zip", {**_good(), "pad.jpg": _padded(_enc(_digit(3), "JPEG")),
                                "pad.gif": _padded(_enc(_digit(3), "GIF"))})


def _big_unknown(d: Path) -> Path:
    return _dir(d / "src", {**_good(), "notes.dat": b"x" * _BIG, "zeros.bin": bytes(_BIG)})


def _big_nested(d: Path) -> Path:
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("noise.bin", np.random.default_rng(0).bytes(_BIG))
    return _dir(d / "src", {**_good(), "big.png": inner.getvalue(),
                            "big.tar.png": _tar_bytes({"x.bin": bytes(_BIG)})})


def _encrypted_zip(d: Path) -> Path:
    png = _enc(_digit(1), "PNG")
    entries = [(k, 0, v, zlib.crc32(v), len(v)) for k, v in _good().items()]
    entries.append(("locked.png", 0, bytes(12) + png, zlib.crc32(png), len(png), 0x1))
    _zip_raw(d / "src.zip", entries)
    return d / "src.zip"


def _zip_bad_crc(d: Path) -> Path:
    png = _enc(_digit(1), "PNG")
    entries = [(k, 0, v, zlib.crc32(v), len(v)) for k, v in _good().items()]
    entries.append(("badcrc.png", 0, png, zlib.crc32(png) ^ 1, len(png)))
    _zip_raw(d / "src.zip", entries)
    return d / "src.zip"


def _zip_unknown_method(d: Path) -> Path:
    png = _enc(_digit(1), "PNG")
    entries = [(k, 0, v, zlib.crc32(v), len(v)) for k, v in _good().items()]
    entries += [("aes.png", 99, png, zlib.crc32(png), len(png)),
                ("wavpack.png", 97, png, zlib.crc32(png), len(png))]
    _zip_raw(d / "src.zip", entries)
    return d / "src.zip"


def _png_bad_crc(d: Path) -> Path:
    data = bytearray(_enc(_digit(5), "PNG"))
    data[29] ^= 0xFF  # the IHDR chunk's CRC
    idat = bytearray(_enc(_digit(6), "PNG"))
    at = idat.index(b"IDAT")
    n = struct.unpack(">I", idat[at - 4:at])[0]
    idat[at + 4 + n] ^= 0xFF  # the IDAT chunk's CRC
    return _dir(d / "src", {**_good(), "ihdr-crc.png": bytes(data), "idat-crc.png": bytes(idat)})


def _jpeg_no_sof(d: Path) -> Path:
    data = _enc(_digit(5), "JPEG")
    sof = data.index(b"\xff\xc0")
    n = struct.unpack(">H", data[sof + 2:sof + 4])[0]
    return _zip(d / "src.zip", {**_good(), "nosof.jpg": data[:sof] + data[sof + 2 + n:],
                                "soi-only.jpg": b"\xff\xd8\xff\xd9"})


def _wrong_extension(d: Path) -> Path:
    return _dir(d / "src", {"3/png-as.jpg": _enc(_digit(1), "PNG"),
                            "3/jpeg-as.png": _enc(_digit(2), "JPEG", quality=95),
                            "3/bmp-as.gif": _enc(_digit(3), "BMP"),
                            "3/noext": _enc(_digit(4), "PNG")})


def _tar_truncated(d: Path) -> Path:
    data = _tar_bytes(_good())
    (d / "src.tar").write_bytes(data[:-2 * tarfile.BLOCKSIZE - 100])
    return d / "src.tar"


def _tar_bad_checksum(d: Path) -> Path:
    data = bytearray(_tar_bytes(_good()))
    data[tarfile.BLOCKSIZE * 2 + 10] ^= 0x20  # a byte of the second header's name
    (d / "src.tar").write_bytes(bytes(data))
    return d / "src.tar"


def _tar_gz_bad_crc(d: Path) -> Path:
    data = bytearray(_gz(_tar_bytes(_good())))
    data[-8] ^= 0xFF  # the gzip trailer's CRC-32
    (d / "src.tar.gz").write_bytes(bytes(data))
    return d / "src.tar.gz"


def _zip_truncated(d: Path) -> Path:
    _zip(d / "full.zip", _good())
    data = (d / "full.zip").read_bytes()
    (d / "full.zip").unlink()
    (d / "src.zip").write_bytes(data[:-30])
    return d / "src.zip"


CASES: dict[str, Case] = {
    "truncated-png": Case(_truncated_png, accepted=5, check=_check_trailer_cut,
                          rejects={f"cut{c}.png": "decode-error" for c in _png_cuts()}),
    "truncated-jpeg": Case(_truncated_jpeg, rejects={k: "decode-error" for k in _jpeg_cuts()}),
    "zero-byte": Case(_zero_byte, rejects={"0/empty.png": "empty-image", "empty.jpg": "empty-image",
                                           "empty": "not-an-image"}),
    "decompression-bomb": Case(_bomb_png, rss=True, rejects={"warn.png": "decompression-bomb",
                                                              "error.png": "decompression-bomb"}),
    "huge-dims-header": Case(_huge_dims, rss=True, rejects={
        "h60000.png": "decompression-bomb", "h20000x1.png": "bad-dimensions",
        "h4000.png": "decode-error", "h65500.jpg": "decompression-bomb"}),
    # (scored directly, a compressed tar is streamed by the listing and again by each
    # task: three passes over its 1 GiB with ingest's, minutes on a loaded machine)
    "gzip-bomb-tar-gz": Case(_gzip_bomb_tar, rss=True, accepted=4, deadline=300, rejects={
        "bomb.png": "too-large", "inner.png.gz": "nested-archive"}),
    "zip-bomb": Case(_zip_bomb, rss=True, rejects={"honest.png": "too-large",
                                                   "liar.png": "too-large"}),
    "nested-archive": Case(_nested, rejects={k: "nested-archive" for k in (
        "inner.zip", "inner.tar", "inner.tar.gz", "inner.tar.bz2", "inner.tar.xz", "inner.7z",
        "inner.rar", "disguised.png")}),
    "dotdot-member": Case(_dotdot, rss=True, rejects={k: "unsafe-path" for k in _DOTDOT}),
    "absolute-member": Case(_absolute, rejects={k: "unsafe-path" for k in _ABSOLUTE}),
    "symlink-member": Case(_symlink_tar, rejects={k: "not-regular-file" for k in (
        "sym-passwd.png", "sym-member.png", "symdir")}),
    "symlink-member-zip": Case(_symlink_zip, rejects={"ziplink.png": "not-regular-file"}),
    "symlink-in-dir": Case(_symlink_dir, rejects={k: "not-regular-file" for k in (
        "out.png", "rootdir", "dangling.png")}),
    "hardlink-member": Case(_hardlink, rejects={"hard-member.png": "not-regular-file",
                                                "hard-passwd.png": "not-regular-file"}),
    "device-fifo-member": Case(_devices, rejects={k: "not-regular-file" for k in (
        "chr.png", "blk.png", "fifo.png")}),
    "device-fifo-member-zip": Case(_devices_zip, rejects={"zfifo.png": "not-regular-file"}),
    "fifo-in-dir": Case(_fifo_dir, rejects={"fifo.png": "not-regular-file"}),
    "non-image": Case(_non_image, rejects={
        **{k: "not-an-image" for k in ("notes.txt", "data.csv", "run.py", "doc.pdf", "page.html",
                                       "pic.svg", "pic.eps", "__MACOSX/3/._good0.png",
                                       ".DS_Store")},
        "eps-named.png": "decode-error"}),
    "16bit-cmyk": Case(_wide_modes, accepted=5, check=_check_wide),
    "one-pixel": Case(_one_pixel, accepted=4, check=_check_blank_1x1),
    "bad-labels-csv": Case(_flat_zip, labels=_bad_labels_csv, check=_check_csv_labels,
                           rejects={f"s{i + 2}.png": "bad-label" for i in range(len(_BAD_CELLS))}),
    "bad-labels-folder": Case(_bad_label_folders, accepted=len(_FOLDERS) + 1,
                              check=_check_folder_labels),
    # broken as a whole: a named error, nothing written
    "idx-wrong-magic": Case(_idx_case(_idx_header(2049, 10, 28, 28) + bytes(7840)),
                            error=(IdxFormatError, "magic number 2049")),
    "idx-byteswapped-magic": Case(_idx_case((2051).to_bytes(4, "little") + _IMAGES10[4:]),
                                  error=(IdxFormatError, "magic number")),
    "idx-float-dtype": Case(_idx_case(_idx_header(0x0D03, 10, 28, 28) + bytes(7840 * 4)),
                            error=(IdxFormatError, "magic number")),
    "idx-wrong-dims": Case(_idx_case(_idx_header(2051, 10, 28, 27) + bytes(10 * 28 * 27)),
                           error=(IdxFormatError, "dimensions")),
    "idx-wrong-dims-32": Case(_idx_case(_idx_header(2051, 10, 32, 32) + bytes(10 * 1024)),
                              error=(IdxFormatError, "dimensions")),
    "idx-short-payload": Case(_idx_case(_IMAGES10[:-784]), error=(IdxFormatError, "truncated")),
    "idx-long-payload": Case(_idx_case(_IMAGES10 + bytes(784)), error=(IdxFormatError, "padded")),
    "idx-count-mismatch": Case(_idx_case(_IMAGES10, _idx_header(2049, 9) + bytes(9)),
                               error=(IdxFormatError, "10 images but .* 9 labels")),
    "idx-huge-count": Case(_idx_case(_idx_header(2051, 2**31, 28, 28) + bytes(784)),
                           error=(IdxFormatError, "refusing")),
    "idx-gzip-bomb": Case(_idx_gzip_bomb, rss=True, error=(IdxFormatError, "padded")),
    "pax-zero-length": Case(_pax_zero, error=(ArchiveError, "pax")),
    "longname-sparse": Case(_longname_sparse, rss=True, error=(ArchiveError, "extended header")),
    "longname-gzip-bomb": Case(_longname_gzip_bomb, rss=True, error=(ArchiveError, "")),
    "labels-csv-bomb": Case(_flat_zip, labels=_csv_bomb, error=(LabelsFileError, "CSV")),
    "labels-csv-no-header": Case(_flat_zip, labels=lambda d: _write(d / "l.csv", "s0.png,1\n"),
                                 error=(LabelsFileError, "header")),
    "too-many-rejects": Case(_too_many, max_rejects=10, rss=True,
                             error=(TooManyRejectsError, "--max-rejects 10")),
    # names, duplicates and member sizes (issue 18)
    "non-utf8-name-tar": Case(_latin1_tar, accepted=4, check=_check_keys(_LATIN1_KEY)),
    "non-utf8-name-tar-gz": Case(_latin1_tar_gz, accepted=4, check=_check_keys(_LATIN1_KEY)),
    "non-utf8-name-zip": Case(_latin1_zip, accepted=4, check=_check_keys("7/caf\u0398.png")),
    "non-utf8-name-dir": Case(_latin1_dir, accepted=4, check=_check_keys(_LATIN1_KEY)),
    "non-utf8-name-zip-flagged": Case(_latin1_zip_flagged, error=(ArchiveError, "not UTF-8"), direct=True),
    "escaped-name-collision-dir": Case(_escaped_collision_dir, accepted=4,
                                       rejects={_LATIN1_KEY: "duplicate-key"}),
    "duplicate-names-zip": Case(_duplicate_zip, accepted=4, check=_check_first_duplicate_kept,
                                n_rejects=2,
                                rejects={"4/dup.png": "duplicate-key"}),
    "duplicate-names-tar": Case(_duplicate_tar, accepted=4, check=_check_first_duplicate_kept,
                                n_rejects=2,
                                rejects={"4/dup.png": "duplicate-key"}),
    "zero-filled-members": Case(_zero_filled, rss=True,
                                rejects={f"{i}.png": "decode-error" for i in range(4)}),
    "padded-png": Case(_padded_png, rss=True, rejects={"pad28.png": "too-large",
                                                       "pad28-rgb.png": "too-large"}),
    "padded-jpeg-gif-zip": Case(_padded_jpeg_zip, rejects={"pad.jpg": "too-large",
                                                           "pad.gif": "too-large"}),
    "big-non-image": Case(_big_unknown, rejects={"notes.dat": "not-an-image",
                                                 "zeros.bin": "not-an-image"}),
    "big-nested-archive": Case(_big_nested, rejects={"big.png": "nested-archive",
                                                     "big.tar.png": "nested-archive"}),
    "encrypted-zip-member": Case(_encrypted_zip, rejects={"locked.png": "unreadable-member"}),
    "zip-bad-crc": Case(_zip_bad_crc, rejects={"badcrc.png": "unreadable-member"}),
    "zip-unknown-method": Case(_zip_unknown_method, rejects={"aes.png": "unreadable-member",
                                                             "wavpack.png": "unreadable-member"}),
    # (a bad IDAT CRC is accepted, pixels as stored: Pillow's rule, and the fast decoder's)
    "png-bad-crc": Case(_png_bad_crc, accepted=4, rejects={"ihdr-crc.png": "decode-error"}),
    "jpeg-no-sof": Case(_jpeg_no_sof, rejects={"nosof.jpg": "decode-error",
                                               "soi-only.jpg": "decode-error"}),
    "wrong-extension": Case(_wrong_extension, accepted=4),
    "tar-truncated": Case(_tar_truncated, error=(ArchiveError, "truncated"), direct=True),
    "tar-bad-checksum": Case(_tar_bad_checksum, error=(ArchiveError, "corrupt|checksum"), direct=True),
    "tar-gz-bad-crc": Case(_tar_gz_bad_crc, error=(ArchiveError, "corrupt"), direct=True),
    "zip-truncated": Case(_zip_truncated, error=(ArchiveError, "truncated or corrupt"), direct=True),
}


def _write(p: Path, text: str) -> Path:
    p.write_text(text)
    return p


# --- machinery ------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return trained_model(tmp_path_factory.mktemp("hostile_model"), seed=2)


def _tree(root: Path) -> set[str]:
    """Every path under ``root`` (files, folders, links), relative; links not followed."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            out.add(os.path.relpath(os.path.join(dirpath, name), root))
    return out


def _assert_only_new(before: set[str], after: set[str], *outputs: str) -> None:
    assert before <= after, f"removed: {sorted(before - after)[:5]}"
    stray = [p for p in after - before
             if not any(p == o or p.startswith(o + os.sep) for o in outputs)]
    assert not stray, f"files written outside the output: {stray[:5]}"


@contextlib.contextmanager
def _deadline(seconds: int):
    """Fail (instead of hanging the suite) when the block runs longer than ``seconds``."""
    def boom(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: an endless loop or a blocking read?")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _cli_ingest(src: Path, out: Path, labels: Path | None, max_rejects: int) -> tuple[int, str, float]:
    """``python -m digitbatch ingest`` in a child: (exit code, stderr, peak RSS in MB)."""
    cmd = [sys.executable, "-m", "digitbatch", "-q", "ingest", str(src), "--out", str(out),
           "--scheduler", "synchronous", "--max-rejects", str(max_rejects)]
    if labels is not None:
        cmd += ["--labels", str(labels)]
    # A child of pytest starts with pytest's own peak RSS (fork), so the ingest runs
    # as a grandchild of a small launcher that reports that grandchild's peak alone.
    launcher = ("import os, subprocess, sys\n"
                "p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
                "_, status, usage = os.wait4(p.pid, 0)\n"
                "p.returncode = 0\n"
                "print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)\n")
    proc = subprocess.run([sys.executable, "-c", launcher, *cmd], capture_output=True, text=True,
                          timeout=120)
    code, maxrss_kb = proc.stdout.split()
    return int(code), proc.stderr, int(maxrss_kb) / 1024


def _codes(pairs) -> dict[str, str]:
    return {str(k): str(r).split(":", 1)[0] for k, r in pairs}


def test_the_suite_counts_at_least_50_kinds():
    assert len(CASES) >= 50, len(CASES)


@pytest.mark.parametrize("kind", [pytest.param(k, marks=c.marks) for k, c in CASES.items()])
def test_hostile_input(kind, tmp_path, model):
    case = CASES[kind]
    src_dir = tmp_path / "in"
    src_dir.mkdir()
    src = case.build(src_dir)
    labels = case.labels(src_dir) if case.labels else None
    out = tmp_path / "out.zarr"
    before = _tree(tmp_path)
    kw = dict(scheduler="synchronous", max_rejects=case.max_rejects, labels=labels)

    if case.rss:  # first, so that a memory bomb never runs inside pytest itself
        cli_out = tmp_path / "cli.zarr"
        code, err, rss = _cli_ingest(src, cli_out, labels, case.max_rejects)
        RSS_SEEN[kind] = rss
        print(f"peak RSS of `digitbatch ingest` for {kind}: {rss:.0f} MB")
        assert rss < RSS_CAP_MB, f"{kind}: peak RSS {rss:.0f} MB"
        if case.error is not None:
            assert code == 1 and f"{case.error[0].__name__}:" in err, (code, err)
            assert not cli_out.exists()
        else:
            assert code == 0, err
        _assert_only_new(before, _tree(tmp_path), "cli.zarr")

    with _deadline(case.deadline):
        if case.error is not None:
            cls, match = case.error
            with pytest.raises(cls, match=match):
                ingest(src, out, **kw)
            _assert_only_new(before, _tree(tmp_path), "cli.zarr")
            if case.direct:
                with pytest.raises(cls, match=match):
                    score(src, model=model, out=tmp_path / "pred-direct.zarr",
                          scheduler="synchronous")
                _assert_only_new(before, _tree(tmp_path), "cli.zarr")
        else:
            r = ingest(src, out, **kw)
            _assert_only_new(before, _tree(tmp_path), "out.zarr", "cli.zarr")
            _check_store(case, src, out, r, labels, model, tmp_path, before)
            if case.rss:
                assert list(open_store(tmp_path / "cli.zarr").keys[:]) == list(open_store(out).keys[:])
    assert not (tmp_path.parent / "evil.png").exists() and not Path("/abs/evil.png").exists()


def _check_store(case, src, out, r, labels, model, tmp_path, before) -> None:
    store = open_store(out)
    rejected = _codes(store.rejects())
    assert rejected == case.rejects
    assert r.n_rejects == (case.n_rejects or len(case.rejects)) and r.n_images == case.accepted == store.n
    keys = [str(k) for k in store.keys[:]]
    # (a duplicate-key reject has the name of the member that kept the key)
    assert not set(keys) & {k for k, c in rejected.items() if c != "duplicate-key"}
    if case.check is not None:
        case.check(store, r)

    # scoring the store: one prediction per accepted image, none for a reject
    score(out, model=model, out=tmp_path / "pred.zarr", scheduler="synchronous")
    g = zarr.open_group(str(tmp_path / "pred.zarr"), mode="r")
    assert [str(k) for k in g["keys"][:]] == keys
    assert g["pred"].shape == (store.n,)
    pred = g["pred"][:]

    # scoring the container directly: the same rows, the same rejects
    direct = score(src, model=model, out=tmp_path / "pred-direct.zarr", labels=labels,
                   scheduler="synchronous", chunk_size=256)
    g2 = zarr.open_group(str(tmp_path / "pred-direct.zarr"), mode="r")
    assert [str(k) for k in g2["keys"][:]] == keys
    np.testing.assert_array_equal(g2["pred"][:], pred)
    np.testing.assert_array_equal(g2["labels"][:], store.labels[:])
    assert direct.metrics["n_scored"] == store.n
    assert _codes(direct.metrics["rejects"]) == case.rejects
    _assert_only_new(before, _tree(tmp_path), "out.zarr", "pred.zarr", "pred-direct.zarr",
                     "cli.zarr")


def test_cli_reports_a_named_error_for_a_broken_idx(tmp_path):
    """The CLI: exit code 1, the error's class and the fault in one line, nothing written."""
    from click.testing import CliRunner

    from digitbatch.cli import main

    src = _idx(tmp_path, _idx_header(2049, 10, 28, 28) + bytes(7840), _LABELS10)
    r = CliRunner().invoke(main, ["-q", "ingest", str(src), "--out", str(tmp_path / "o.zarr")])
    assert r.exit_code == 1
    assert "IdxFormatError" in r.output and "magic number 2049" in r.output
    assert not (tmp_path / "o.zarr").exists()


def test_cli_counts_rejects_and_exits_zero(tmp_path):
    from click.testing import CliRunner

    from digitbatch.cli import main

    src = _dotdot(tmp_path)
    r = CliRunner().invoke(main, ["-q", "ingest", str(src), "--out", str(tmp_path / "o.zarr"),
                                  "--scheduler", "synchronous"])
    assert r.exit_code == 0, r.output
    assert "rejects: unsafe-path 4" in r.output
    assert "3 images" in r.output


# --- damaged stores -----------------------------------------------------------------



def _damage_params():
    for array in ("images", "labels", "keys"):
        for damage in ("missing", "corrupt", "truncated"):
            for op in ("read", "score", "train"):
                if array == "keys" and op == "train":
                    continue  # training never reads keys it could get wrong
                yield pytest.param(array, damage, op,
                                   id=f"store-{array}-chunk-{damage}-{op}")


@pytest.fixture(scope="module")
def clean_store(model) -> Path:
    return model.parent / "s.zarr"


@pytest.mark.parametrize("array, damage, op", list(_damage_params()))
def test_damaged_store(array, damage, op, clean_store, model, tmp_path):
    import shutil

    store = tmp_path / "s.zarr"
    shutil.copytree(clean_store, store)
    chunk = store / array / "c" / "1"
    if array == "images":
        chunk = chunk / "0" / "0"
    data = chunk.read_bytes()
    if damage == "missing":
        chunk.unlink()
    elif damage == "corrupt":
        chunk.write_bytes(b"\x02\x01garbage" * 10)
    else:
        chunk.write_bytes(data[: len(data) // 2])
    before = _tree(tmp_path)
    with pytest.raises(StoreError, match="chunk 1 of .* is (missing|corrupt)"):
        if op == "read":
            s = open_store(store)
            s.read()
        elif op == "score":
            score(store, model=model, out=tmp_path / "p.zarr", scheduler="synchronous")
        else:
            train(store, tmp_path / "m", seed=0)
    assert not (tmp_path / "p.zarr" / "_SUCCESS").exists()
    assert not (tmp_path / "m").exists()
    assert all(p.startswith("p.zarr") for p in _tree(tmp_path) - before)
