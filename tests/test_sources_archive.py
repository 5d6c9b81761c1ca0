"""Tests of digitbatch.sources.archive beyond tests/test_sources_images.py: exact reasons.

test_sources_images.py checks every reject by its code; here the whole
reason is checked (the kind of link, the sizes, the limit), members at the
size limit and one byte over it in every container, what detection skips
in a directory, the listing of a directory without reading it, where an
unlistable directory is named, and how much a compressed tar's sniff reads.
"""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
import zipfile
import zlib

import pytest
from PIL import Image

from digitbatch.errors import ArchiveError
from digitbatch.sources import archive as A
from digitbatch.sources.base import MemberRef, Reject
from digitbatch.sources.members import Member


def _png(size=(28, 28)) -> bytes:
    buf = io.BytesIO()
    Image.new("L", size, 0).save(buf, "PNG")
    return buf.getvalue()


PNG = _png()


def _tar(path, entries) -> None:
    """``entries``: (name, data or None, type, linkname)."""
    with tarfile.open(path, "w") as tf:
        for name, data, type_, link in entries:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = type_, link
            info.size = len(data) if data is not None else 0
            tf.addfile(info, io.BytesIO(data) if data is not None else None)


def _reasons(items) -> dict[str, str]:
    return {r.key: r.reason for r in items if isinstance(r, Reject)}


def test_tar_link_and_junk_reasons(tmp_path):
    p = tmp_path / "a.tar"
    _tar(p, [("s.png", None, tarfile.SYMTYPE, "/etc/passwd"),
             ("h.png", None, tarfile.LNKTYPE, "ok.png"),
             ("c.png", None, tarfile.CHRTYPE, ""),
             ("f.png", None, tarfile.FIFOTYPE, ""),
             ("__MACOSX/._ok.png", b"\x00\x05", tarfile.REGTYPE, ""),
             ("ok.png", PNG, tarfile.REGTYPE, "")])
    items = list(A.iter_members(p))
    assert _reasons(items) == {
        "s.png": "not-regular-file: symlink",
        "h.png": "not-regular-file: hardlink",
        "c.png": "not-regular-file: device or FIFO",
        "f.png": "not-regular-file: device or FIFO",
        "__MACOSX/._ok.png": "not-an-image: OS metadata file",
    }
    assert [m for m in items if isinstance(m, Member)] == [Member("ok.png", PNG, None)]


def _zip_entry(zf, name, data, mode):
    info = zipfile.ZipInfo(name)
    info.external_attr = mode << 16
    zf.writestr(info, data)


def test_zip_link_device_directory_and_junk_reasons(tmp_path):
    p = tmp_path / "a.zip"
    with zipfile.ZipFile(p, "w") as zf:
        _zip_entry(zf, "s.png", b"/etc/passwd", stat.S_IFLNK | 0o777)
        _zip_entry(zf, "f.png", b"", stat.S_IFIFO | 0o644)
        _zip_entry(zf, "d", b"", stat.S_IFDIR | 0o755)       # a directory by its mode alone
        _zip_entry(zf, "plain.png", PNG, 0)                   # no mode (a DOS zip): a file
        _zip_entry(zf, "reg.png", PNG, stat.S_IFREG | 0o644)
        _zip_entry(zf, "Thumbs.db", b"x", stat.S_IFREG | 0o644)
    items = list(A.iter_members(p))
    assert _reasons(items) == {"s.png": "not-regular-file: symlink",
                               "f.png": "not-regular-file: device or FIFO",
                               "Thumbs.db": "not-an-image: OS metadata file"}
    assert [m.key for m in items if isinstance(m, Member)] == ["plain.png", "reg.png"]
    with zipfile.ZipFile(p) as zf:
        assert A.zip_entry_check(zf.getinfo("d"), 100) is None
        assert A.zip_entry_check(zf.getinfo("reg.png"), 10**6) == ("reg.png", None)


def test_zip_entry_check_reads_the_unix_mode_from_the_high_16_bits():
    info = zipfile.ZipInfo("x.png")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16 | 0x20  # + a DOS attribute byte
    assert A.zip_entry_check(info, 100)[1].reason == "not-regular-file: symlink"
    info.external_attr = (stat.S_IFDIR | 0o755) << 16 | 0x10
    assert A.zip_entry_check(info, 100) is None


def _dir(root, members: dict[str, bytes]):
    for name, data in members.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_directory_link_fifo_and_junk_reasons(tmp_path):
    root = _dir(tmp_path / "d", {"ok.png": PNG, "._ok.png": b"\x00\x05"})
    os.symlink(root / "ok.png", root / "s.png")
    os.mkfifo(root / "f.png")
    items = list(A.iter_members(root))
    assert _reasons(items) == {"s.png": "not-regular-file: symlink (not followed)",
                               "f.png": "not-regular-file: device, FIFO or socket",
                               "._ok.png": "not-an-image: OS metadata file"}
    assert [m for m in items if isinstance(m, Member)] == [Member("ok.png", PNG, None)]


def test_directory_listing_without_reading_gives_refs_in_key_order(tmp_path):
    root = _dir(tmp_path / "d", {"b/3/x.png": PNG, "a.png": PNG, ".DS_Store": b"x",
                                 "b/1.png": b"not read"})
    os.symlink(root / "a.png", root / "link.png")
    items = list(A.iter_dir(root, 10, read=False))  # (a 10-byte limit: nothing is read)
    n = len(PNG)  # (a reference holds the file's size, for the per-task byte budget)
    assert items == [Reject(".DS_Store", "not-an-image: OS metadata file"),
                     MemberRef("a.png", -1, n), MemberRef("b/1.png", -1, 8),
                     MemberRef("b/3/x.png", -1, n),
                     Reject("link.png", "not-regular-file: symlink (not followed)")]


def test_directory_symlinked_subdirectory_is_not_followed(tmp_path):
    outside = _dir(tmp_path / "outside", {"secret.png": PNG})
    root = _dir(tmp_path / "d", {"ok.png": PNG})
    os.symlink(outside, root / "linked")
    items = list(A.iter_members(root))
    assert _reasons(items) == {"linked": "not-regular-file: symlink (not followed)"}
    assert [m.key for m in items if isinstance(m, Member)] == ["ok.png"]


@pytest.mark.parametrize("kind", ["dir", "tar", "zip"])
def test_members_at_the_limit_and_one_byte_over(tmp_path, kind):
    limit = len(PNG)
    members = {"at.png": PNG, "over.png": PNG + b"\x00"}
    if kind == "dir":
        src = _dir(tmp_path / "d", members)
    elif kind == "tar":
        src = tmp_path / "a.tar"
        _tar(src, [(k, v, tarfile.REGTYPE, "") for k, v in members.items()])
    else:
        src = tmp_path / "a.zip"
        with zipfile.ZipFile(src, "w") as zf:
            for k, v in members.items():
                zf.writestr(k, v)
    items = list(A.iter_members(src, max_member_bytes=limit))
    assert [m for m in items if isinstance(m, Member)] == [Member("at.png", PNG, None)]
    assert _reasons(items) == {
        "over.png": f"too-large: {limit + 1} bytes, over the {limit}-byte limit"}


def test_directory_file_that_grew_after_its_size_was_read(tmp_path, monkeypatch):
    """The size is checked before reading; a file longer than it says is cut at limit + 1."""
    root = _dir(tmp_path / "d", {"a.png": PNG + bytes(50)})
    real = os.fstat

    def fstat(fd):  # the file looks small when its size is checked
        st = real(fd)
        return os.stat_result((*st[:6], 10, *st[7:]))

    monkeypatch.setattr(os, "fstat", fstat)
    r = A.read_dir_file("a.png", str(root / "a.png"), len(PNG))
    assert r == Reject("a.png", f"too-large: more than its declared size, over the "
                                f"{len(PNG)}-byte limit")


def test_directory_file_that_became_a_fifo(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    os.mkfifo(root / "a.png")  # (O_NONBLOCK: opening it does not hang)
    assert A.read_dir_file("a.png", str(root / "a.png"), 100) == Reject(
        "a.png", "not-regular-file: changed while reading")


def test_directory_file_that_became_a_symlink(tmp_path):
    root = _dir(tmp_path / "d", {"real.png": PNG})
    os.symlink(root / "real.png", root / "a.png")
    r = A.read_dir_file("a.png", str(root / "a.png"), 10**6)  # O_NOFOLLOW: not followed
    assert r.key == "a.png" and r.reason.startswith("unreadable-member: ")
    assert "symbolic links" in r.reason or "loop" in r.reason.lower()


def test_directory_file_unreadable(tmp_path, monkeypatch):
    root = _dir(tmp_path / "d", {"a.png": PNG})
    r = A.read_dir_file("gone.png", str(root / "gone.png"), 100)
    assert r == Reject("gone.png", "unreadable-member: No such file or directory")

    def failing_read(key, f, size, limit):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(A, "read_member", failing_read)
    assert A.read_dir_file("a.png", str(root / "a.png"), 10**6) == Reject(
        "a.png", "unreadable-member: Input/output error")


# --- detection --------------------------------------------------------------------


@pytest.mark.parametrize("members, kind", [
    ({"__MACOSX/x.png": PNG}, None),          # only junk folders: not a directory of images
    ({"._x.png": PNG}, None),                 # AppleDouble files named like images
    ({"._a.png": PNG, "b.png": PNG}, "dir"),  # junk first, then an image
    ({"x.png": b"garbage"}, "dir"),           # an image by its name (decoding judges it)
    ({"x.PNG": b"garbage"}, "dir"),
    ({"x.dat": PNG}, "dir"),                  # by content
    ({"x.dat": b"garbage"}, None),
    ({"sub/deeper/x.png": PNG}, "dir"),
])
def test_detect_directory(tmp_path, members, kind):
    assert A.detect_image_source(_dir(tmp_path / "d", members)) == kind


def test_detect_directory_skips_symlinks_and_unreadable_files(tmp_path, monkeypatch):
    outside = _dir(tmp_path / "o", {"x.png": PNG})
    root = tmp_path / "d"
    root.mkdir()
    os.symlink(outside / "x.png", root / "link.png")
    assert A.detect_image_source(root) is None  # a link to an image is not followed
    _dir(root, {"a.dat": PNG, "b.dat": PNG})
    real_open = open

    def open_(p, *a, **k):
        if str(p).endswith("a.dat"):
            raise PermissionError(13, "Permission denied")
        return real_open(p, *a, **k)

    monkeypatch.setattr(A, "open", open_, raising=False)
    assert A.detect_image_source(root) == "dir"  # a.dat unreadable: b.dat still looked at


def test_unlistable_subdirectory_is_named_with_its_source(tmp_path, monkeypatch):
    root = _dir(tmp_path / "d", {"sub/x.png": PNG})
    real = os.scandir

    def scandir(p):
        if str(p).endswith("sub"):
            raise PermissionError(13, "Permission denied", str(p))
        return real(p)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(ArchiveError) as e:
        list(A.iter_members(root, kind="dir"))
    assert str(e.value).startswith(f"cannot list directory {root / 'sub'} of image source {root}: ")
    assert "Permission denied" in str(e.value)
    with pytest.raises(ArchiveError) as e:  # os.walk lists with os.scandir too
        A.detect_image_source(root)
    assert str(e.value).startswith(f"cannot list directory {root / 'sub'} of image source {root}: ")


_DECOMPRESSOBJ = zlib.decompressobj


class _CountingDecompressor:
    """zlib's decompressor, counting the bytes it gives."""

    given = 0

    def __init__(self, *a):
        self.d = _DECOMPRESSOBJ(*a)

    def decompress(self, data, max_length=0):
        out = self.d.decompress(data, max_length)
        _CountingDecompressor.given += len(out)
        return out


def _gz_with_comment(payload: bytes, comment_len: int) -> bytes:
    """A gzip member whose header carries a comment of ``comment_len`` bytes, stored
    (uncompressed) deflate blocks after it: the payload lies at a known offset."""
    header = b"\x1f\x8b\x08\x10" + bytes(6) + b"c" * (comment_len - 1) + b"\x00"
    co = zlib.compressobj(0, zlib.DEFLATED, -15)
    body = co.compress(payload) + co.flush()
    trailer = zlib.crc32(payload).to_bytes(4, "little") + len(payload).to_bytes(4, "little")
    return header + body + trailer


def _tar_bytes(n_members=1) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for i in range(n_members):
            info = tarfile.TarInfo(f"{i}.png")
            info.size = len(PNG)
            tf.addfile(info, io.BytesIO(PNG))
    return buf.getvalue()


def test_detect_compressed_tar_decompresses_only_its_first_block(tmp_path, monkeypatch):
    p = tmp_path / "a.tgz"
    p.write_bytes(gzip.compress(_tar_bytes(50) + bytes(2**20)))
    monkeypatch.setattr(zlib, "decompressobj", _CountingDecompressor)
    _CountingDecompressor.given = 0
    assert A.detect_image_source(p) == "tar"
    assert _CountingDecompressor.given == 512


def test_detect_compressed_tar_whose_header_spans_two_reads(tmp_path, monkeypatch):
    """A long gzip header comment: the first read gives 100 bytes of the tar, the next the rest."""
    data = _gz_with_comment(_tar_bytes(), 65536 - 10 - 5 - 100)  # (10: gzip header, 5: block)
    (tmp_path / "a.tgz").write_bytes(data)
    assert gzip.decompress(data) == _tar_bytes()
    monkeypatch.setattr(zlib, "decompressobj", _CountingDecompressor)
    _CountingDecompressor.given = 0
    assert A.detect_image_source(tmp_path / "a.tgz") == "tar"
    assert _CountingDecompressor.given == 512


@pytest.mark.parametrize("before, kind", [(600, "tar"), (0, None)])
def test_detect_compressed_tar_reads_at_most_2_mib_of_input(tmp_path, before, kind):
    """A tar header ``before`` bytes before the 2 MiB mark of the compressed input is
    found; one just after it is not looked for."""
    data = _gz_with_comment(_tar_bytes(), 2 * 2**20 - 10 - 5 - before)
    (tmp_path / "a.tgz").write_bytes(data)
    assert A.detect_image_source(tmp_path / "a.tgz") == kind
