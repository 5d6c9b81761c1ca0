"""Member references (workers read their own members) agree with streaming."""

from __future__ import annotations

import io
import tarfile
import zipfile

import pytest

from digitbatch.errors import ArchiveError
from digitbatch.sources.archive import Member, iter_members
from digitbatch.sources.base import MemberRef, Reject
from digitbatch.sources.refs import iter_refs, read_refs, seekable_kind

from .test_ingest import digit_members, png_bytes

LIMIT = 1 << 20


def add_member(tar, name, data=b"", **attrs):
    """Add ``name`` to ``tar``: ``data`` as a regular file, or TarInfo ``attrs``."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for k, v in attrs.items():
        setattr(info, k, v)
    tar.addfile(info, io.BytesIO(data) if data else None)


def hostile_members():
    members, x, _ = digit_members(6)
    members["a" * 120 + "/long-name.png"] = png_bytes(x[0])  # needs GNU longname / pax
    members["../up.png"] = png_bytes(x[1])
    members["junk.txt"] = b"hello"
    members["__MACOSX/._x.png"] = b"meta"
    members["big.png"] = bytes(LIMIT + 10)
    return members


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_tar_refs_equal_stream(tmp_path, fmt):
    members = hostile_members()
    if fmt == tarfile.USTAR_FORMAT:  # ustar cannot hold the 135-character name
        members = {k: v for k, v in members.items() if len(k) < 100}
    p = tmp_path / "a.tar"
    with tarfile.open(p, "w", format=fmt) as tar:
        add_member(tar, "dir/", type=tarfile.DIRTYPE)
        for name, data in members.items():
            add_member(tar, name, data)
        add_member(tar, "link.png", type=tarfile.SYMTYPE, linkname="/etc/passwd")
        add_member(tar, "hard.png", type=tarfile.LNKTYPE, linkname="1/x.png")
        add_member(tar, "fifo.png", type=tarfile.FIFOTYPE)
    assert seekable_kind(p, "tar")
    assert _via_refs(p, "tar") == _via_stream(p, "tar")


def test_zip_refs_equal_stream(tmp_path):
    p = tmp_path / "a.zip"
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in hostile_members().items():
            if not name.startswith("../"):
                z.writestr(name, data)
        z.writestr("../up.png", b"x")
    assert _via_refs(p, "zip") == _via_stream(p, "zip")


def test_dir_refs_equal_stream(tmp_path):
    root = tmp_path / "imgs"
    for name, data in hostile_members().items():
        if name.startswith(".."):
            continue
        f = root / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(data)
    (root / "ln.png").symlink_to(root / "big.png")
    assert _via_refs(root, "dir") == _via_stream(root, "dir")


def test_compressed_tar_is_not_seekable(tmp_path):
    p = tmp_path / "a.tar.gz"
    with tarfile.open(p, "w:gz") as tar:
        add_member(tar, "x.png", b"123")
    assert not seekable_kind(p, "tar")


def test_truncated_and_corrupt_plain_tar(tmp_path):
    members, _, _ = digit_members(30)
    p = tmp_path / "a.tar"
    with tarfile.open(p, "w") as tar:
        for name, data in members.items():
            add_member(tar, name, data)
    whole = p.read_bytes()
    p.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ArchiveError, match="truncated"):
        list(iter_refs(p, "tar", limit=LIMIT))
    with tarfile.open(fileobj=io.BytesIO(whole)) as tar:
        third = tar.getmembers()[2].offset
    bad = bytearray(whole)
    bad[third + 10] ^= 0x55  # a name byte of the third header
    p.write_bytes(bytes(bad))
    with pytest.raises(ArchiveError, match="checksum"):
        list(iter_refs(p, "tar", limit=LIMIT))


def _via_stream(p, kind):
    return [_norm(m) for m in iter_members(p, kind=kind, max_member_bytes=LIMIT)]


def _via_refs(p, kind):
    out = []
    for m in iter_refs(p, kind, limit=LIMIT):
        if isinstance(m, MemberRef):
            [m] = read_refs(str(p), kind, [m], limit=LIMIT)
        out.append(_norm(m))
    return out


def _norm(m):
    if isinstance(m, Member):
        return ("member", m.key, m.data, m.folder_label)
    assert isinstance(m, Reject)
    return ("reject", m.key, m.reason.split(":")[0])
