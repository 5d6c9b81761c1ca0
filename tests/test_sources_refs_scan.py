"""The header scan of a plain tar (digitbatch.sources.tarscan) against tarfile.

The scan takes plain headers a window at a time and hands pax, GNU
long-name and any odd header to the careful walk; here every listing must
equal what Python's tarfile reads from the same archive, for archives
mixing every member kind, in every format, with windows small enough that
members straddle them; and corruption or truncation anywhere must still be
the careful walk's error, after exactly the members before it.
"""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest

from digitbatch.errors import ArchiveError
from digitbatch.sources import refs, tarscan
from digitbatch.sources.base import MemberRef, Reject

from .test_sources_refs import add_member

LIMIT = 1 << 20
FORMATS = {"gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT, "ustar": tarfile.USTAR_FORMAT}
# small windows put member boundaries everywhere; 2**20 is the default
WINDOWS = [512, 1536, 4096, 2**20]


def _odd_archive(fmt: int, seed: int = 0) -> bytes:
    """Regular files of many sizes, directories, links, a FIFO, names that
    need the ustar prefix, GNU long names or pax records, non-ASCII names and
    pax extras, in a shuffled order."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(40):
        size = int(rng.choice([0, 1, 511, 512, 513, 1500, 5000, 20000]))
        items.append(("file", f"{i % 10}/m{i:03d}.png", rng.bytes(size), {}))
    items += [
        ("file", "d" * 60 + "/" + "e" * 60 + "/prefixed.png", b"p" * 700, {}),  # ustar prefix
        ("dir", "somedir/", b"", {"type": tarfile.DIRTYPE}),
        ("link", "sym.png", b"", {"type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}),
        ("link", "hard.png", b"", {"type": tarfile.LNKTYPE, "linkname": "1/m001.png"}),
        ("fifo", "fifo.png", b"", {"type": tarfile.FIFOTYPE}),
        ("file", "__MACOSX/._junk.png", b"meta", {}),
        ("file", "big.png", bytes(LIMIT + 1), {}),
        ("file", "../escape.png", b"x" * 10, {}),
    ]
    if fmt != tarfile.USTAR_FORMAT:
        items += [
            ("file", "L" * 150 + ".png", b"long" * 100, {}),                 # GNU L / pax path
            ("file", "chiffre-\u00e9t\u00e9/7.png", b"accent" * 50, {}),     # pax (non-ASCII)
            ("file", "withpax.png", b"q" * 900, {"pax_headers": {"comment": "x" * 300}}),
            ("link", "s" * 120 + ".png", b"", {"type": tarfile.SYMTYPE, "linkname": "t" * 120}),
        ]
    order = rng.permutation(len(items))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for k in order:
            _, name, data, attrs = items[k]
            add_member(tar, name, data, **attrs)
    return buf.getvalue()


def _expected(data: bytes) -> list[tuple]:
    """The listing as tarfile reads the archive."""
    out = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for m in tar:
            if m.isdir():
                continue
            if m.name.startswith("../"):
                out.append(("reject", m.name, "unsafe-path"))
            elif not m.isreg():
                out.append(("reject", m.name, "not-regular-file"))
            elif m.name.startswith("__MACOSX/"):
                out.append(("reject", m.name, "not-an-image"))
            elif m.size > LIMIT:
                out.append(("reject", m.name, "too-large"))
            else:
                out.append(("ref", m.name, m.offset_data, m.size))
    return out


def _listing(path) -> list[tuple]:
    return [("ref", e.key, e.offset, e.size) if isinstance(e, MemberRef)
            else ("reject", e.key, e.reason.split(":")[0])
            for e in refs.iter_refs(path, "tar", limit=LIMIT)]


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_scan_equals_tarfile_on_odd_archives(tmp_path, monkeypatch, fmt, window):
    monkeypatch.setattr(tarscan, "WINDOW", window)
    for seed in range(3):
        data = _odd_archive(FORMATS[fmt], seed)
        p = tmp_path / f"{seed}.tar"
        p.write_bytes(data)
        got = _listing(p)
        assert got == _expected(data)
        # the offsets really are the members' bytes
        with tarfile.open(p) as tar:
            for kind, key, *rest in got:
                if kind == "ref":
                    off, size = rest
                    assert data[off:off + size] == tar.extractfile(key).read()


def _set_size_base256(data: bytearray, header_at: int, size: int) -> None:
    """Rewrite a header's size field in GNU base-256, and its checksum."""
    field = bytearray((size).to_bytes(12, "big"))
    field[0] |= 0x80
    data[header_at + 124:header_at + 136] = field
    data[header_at + 148:header_at + 156] = b" " * 8
    chk = sum(data[header_at:header_at + 512])
    data[header_at + 148:header_at + 156] = b"%06o\x00 " % chk


@pytest.mark.parametrize("window", [512, 4096, 2**20])
def test_base256_size_is_read_as_tarfile_reads_it(tmp_path, monkeypatch, window):
    monkeypatch.setattr(tarscan, "WINDOW", window)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for i in range(6):
            add_member(tar, f"{i}/x{i}.png", bytes([i]) * (300 + 700 * i))
    data = bytearray(buf.getvalue())
    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tar:
        third = tar.getmembers()[3]
    _set_size_base256(data, third.offset, third.size)
    p = tmp_path / "b256.tar"
    p.write_bytes(bytes(data))
    assert _listing(p) == _expected(bytes(data))


def _plain(n: int, seed: int = 0) -> tuple[bytes, list[int]]:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(n):
            add_member(tar, f"{i % 10}/{i:04d}.png", rng.bytes(int(rng.integers(1, 3000))))
    data = buf.getvalue()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return data, [m.offset for m in tar.getmembers()]


def _until_error(p) -> tuple[list, Exception | None]:
    got = []
    try:
        for e in refs.iter_refs(p, "tar", limit=LIMIT):
            got.append(e)
    except ArchiveError as exc:
        return got, exc
    return got, None


@pytest.mark.parametrize("window", [512, 1536, 8192, 2**20])
def test_corrupt_header_anywhere_stops_after_the_members_before_it(tmp_path, monkeypatch, window):
    monkeypatch.setattr(tarscan, "WINDOW", window)
    data, offsets = _plain(60)
    p = tmp_path / "bad.tar"
    for k in (0, 1, 17, 31, 59):
        for byte, what in ((10, "checksum"), (124 + 3, "checksum"), (150, "checksum")):
            bad = bytearray(data)
            bad[offsets[k] + byte] = ord("9") if byte == 150 else bad[offsets[k] + byte] ^ 0x21
            p.write_bytes(bytes(bad))
            got, exc = _until_error(p)
            assert exc is not None, (k, byte)
            assert what in str(exc) or "corrupt" in str(exc), (k, byte, exc)
            assert [e.key for e in got] == [f"{i % 10}/{i:04d}.png" for i in range(k)], (k, byte)


@pytest.mark.parametrize("window", [512, 1536, 8192, 2**20])
def test_truncated_anywhere_is_an_error(tmp_path, monkeypatch, window):
    monkeypatch.setattr(tarscan, "WINDOW", window)
    data, offsets = _plain(30, seed=1)
    p = tmp_path / "cut.tar"
    cuts = [offsets[5], offsets[5] + 100, offsets[5] + 512, offsets[20] + 700, offsets[-1] + 512,
            200]
    end_of_data = len(data)
    while data[end_of_data - 512:end_of_data] == bytes(512):
        end_of_data -= 512
    cuts.append(end_of_data)  # every member whole, no end-of-archive blocks
    cuts.append(end_of_data + 100)  # a part of the end-of-archive block
    for cut in cuts:
        p.write_bytes(data[:cut])
        got, exc = _until_error(p)
        assert exc is not None and "truncated" in str(exc), cut
        assert all(isinstance(e, MemberRef) and e.offset + e.size <= cut for e in got), cut


def test_negative_size_is_a_corrupt_header(tmp_path):
    data, offsets = _plain(5)
    bad = bytearray(data)
    at = offsets[2]
    bad[at + 124:at + 136] = b"-0000000001\x00"
    bad[at + 148:at + 156] = b" " * 8
    bad[at + 148:at + 156] = b"%06o\x00 " % sum(bad[at:at + 512])
    p = tmp_path / "neg.tar"
    p.write_bytes(bytes(bad))
    got, exc = _until_error(p)
    assert exc is not None and "corrupt header" in str(exc)
    assert len(got) == 2


def test_many_small_members_span_windows(tmp_path, monkeypatch):
    """Thousands of one-block members over many windows: every one listed once."""
    monkeypatch.setattr(tarscan, "WINDOW", 64 * 512 + 256)  # not a whole number of blocks
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(3000):
            add_member(tar, f"{i % 10}/{i:05d}.png", b"%d" % i)
    p = tmp_path / "many.tar"
    p.write_bytes(buf.getvalue())
    assert _listing(p) == _expected(buf.getvalue())
    assert all(isinstance(e, Reject) is False for e in refs.iter_refs(p, "tar", limit=LIMIT))
