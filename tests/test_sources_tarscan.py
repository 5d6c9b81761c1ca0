"""The window walk of digitbatch.sources.tarscan against the header-by-header walks.

The window walk (numpy over a window of headers, names judged a run at a
time, references made in bulk) is an optimisation: whatever it takes must
list exactly as the plain and careful walks list on their own, entry for
entry (keys, offsets, sizes, rejects and reasons), and so must listing's
batched unique keys, fingerprint and pack. Archives here mix plain names
with pax and GNU long names, ustar prefixes, unsafe names, junk, links,
devices, directories, non-UTF-8 names, duplicates, numbers written in
every form tar writers use, odd member counts and windows that cut
headers and members anywhere.
"""

from __future__ import annotations

import hashlib
import io
import tarfile

import numpy as np
import pytest

from digitbatch.errors import ArchiveError
from digitbatch.sources import listing, members, refs, tarscan
from digitbatch.sources.base import MemberRef, Reject, member_refs
from digitbatch.sources.members import Member

from .test_sources_refs import add_member

LIMIT = 3000
WINDOWS = [512, 1536, 64 * 512 + 256, 2**20]

# names no check refuses, and names some check refuses or rewrites
PLAIN = ["{d}/{i:05d}.png", "scans/{d}/img-{i}.jpg", "{d}/{i}.PNG", "deep/a/b/c/{d}/{i}.png",
         "chiffre-\u00e9t\u00e9/{d}/{i}.png", "{d}/x y ({i}).png", "{d}/a.b.{i}.png", "{i}"]
ODD = ["../{i}.png", "/abs/{i}.png", "C:/{i}.png", "c:{i}.png", "a\\{i}.png", "a//{i}.png",
       "./{i}.png", "a/./{i}.png", "a/../{i}.png", "{i}/", "__MACOSX/{i}.png", "a/.DS_Store",
       "Thumbs.db", "x/THUMBS.DB", "a/._{i}.png", "desktop.ini", "a:{i}.png", "x/1:{i}.png",
       "caf\udce9/{i}.png", "\udcff{i}.png", ".hidden{i}.png", "a/.b/{i}.png", "__MACOSX",
       "x/__MACOSX/{i}.png", "x/__macosx/{i}.png"]


def _mixed_tar(seed: int, n: int, fmt: int, odd: float) -> bytes:
    """``n`` members: mostly plain names, a share ``odd`` of everything else."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    names: list[str] = []
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8",
                      errors="surrogateescape") as tar:
        for i in range(n):
            size = int(rng.choice([0, 1, 300, 511, 512, 513, 2000, LIMIT, LIMIT + 1]))
            data = rng.bytes(size)
            r = rng.random()
            if r >= odd:
                name = PLAIN[int(rng.integers(len(PLAIN)))].format(d=i % 10, i=i)
                add_member(tar, name, data)
            elif r < odd * 0.15 and names:
                add_member(tar, names[int(rng.integers(len(names)))], data)  # a duplicate key
                continue
            elif r < odd * 0.3:
                kind = int(rng.integers(5))
                name = f"k{i}.png"
                if kind == 0:
                    add_member(tar, f"dir{i}/", type=tarfile.DIRTYPE)
                elif kind == 1:
                    add_member(tar, name, type=tarfile.SYMTYPE, linkname="/etc/passwd")
                elif kind == 2:
                    add_member(tar, name, type=tarfile.LNKTYPE, linkname="x")
                elif kind == 3:
                    add_member(tar, name, type=tarfile.CHRTYPE)
                else:
                    add_member(tar, name, type=tarfile.FIFOTYPE)
            elif r < odd * 0.45 and fmt != tarfile.USTAR_FORMAT:
                add_member(tar, f"{i % 10}/" + "L" * int(rng.integers(90, 300)) + f"{i}.png", data)
            elif r < odd * 0.55:
                add_member(tar, "p" * 80 + f"/{i % 10}/{i}.png", data)  # a ustar prefix
            elif r < odd * 0.6 and fmt == tarfile.PAX_FORMAT:
                add_member(tar, f"{i % 10}/{i}.png", data, pax_headers={"comment": "c" * 200})
            else:
                name = ODD[int(rng.integers(len(ODD)))].format(i=i)
                if fmt == tarfile.USTAR_FORMAT and len(name.encode("utf-8", "surrogateescape")) > 99:
                    name = name[-99:]
                add_member(tar, name, data)
            names.append(tar.getmembers()[-1].name)
    return buf.getvalue()


def _rows(entries) -> list[tuple]:
    return [(type(e).__name__, e.key, e.offset, e.size, e.name) if isinstance(e, MemberRef)
            else (type(e).__name__, e.key, e.reason) for e in entries]


def _listed(path) -> tuple[list[tuple], str | None]:
    """Every entry up to the archive's error, and the error (or None)."""
    got = []
    try:
        for e in refs.iter_refs(path, "tar", limit=LIMIT):
            got.append(e)
    except ArchiveError as exc:
        return _rows(got), str(exc)
    return _rows(got), None


def _reference(path, monkeypatch) -> tuple[list[tuple], str | None]:
    """The listing by the header-by-header walks alone (no window walk)."""
    with monkeypatch.context() as m:
        m.setattr(tarscan, "_window_prefix", lambda buf, base, end, limit: ([], 0, base))
        return _listed(path)


def _per_member(path, monkeypatch) -> tuple[list[tuple], str | None]:
    """The listing with the window walk on, but every run's names judged one by one."""
    with monkeypatch.context() as m:
        m.setattr(members, "plain_names", lambda joined: False)
        return _listed(path)


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
@pytest.mark.parametrize("odd", [0.0, 0.01, 0.3])
def test_window_walk_lists_as_the_header_walks_do(tmp_path, monkeypatch, fmt, odd):
    for seed, n in ((0, 1), (1, 97), (2, 601)):
        p = tmp_path / f"{seed}.tar"
        p.write_bytes(_mixed_tar(seed, n, fmt, odd))
        for window in WINDOWS if n < 600 else WINDOWS[1:]:
            monkeypatch.setattr(tarscan, "WINDOW", window)
            want = _reference(p, monkeypatch)
            assert want[1] is None and len(want[0]) > 0
            assert _listed(p) == want, (seed, window)
            assert _per_member(p, monkeypatch) == want, (seed, window)


def _set_field(data: bytearray, at: int, lo: int, hi: int, text: bytes) -> None:
    data[at + lo:at + hi] = text
    data[at + 148:at + 156] = b" " * 8
    data[at + 148:at + 156] = b"%06o\x00 " % sum(data[at:at + 512])


def _offsets(data: bytes) -> list[tuple[int, int]]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [(m.offset, m.size) for m in tar.getmembers()]


@pytest.mark.parametrize("window", WINDOWS)
def test_numbers_in_every_form_list_alike(tmp_path, monkeypatch, window):
    """Size and checksum fields as various tar writers write them (NUL or space
    ended, 12 digits, leading spaces or zeros, short fields, base-256):
    whichever walk takes a header, its size and checksum read the same."""
    monkeypatch.setattr(tarscan, "WINDOW", window)
    data = bytearray(_mixed_tar(5, 400, tarfile.GNU_FORMAT, 0.0))
    rng = np.random.default_rng(5)
    for k, (at, size) in enumerate(_offsets(bytes(data))):
        form = k % 8
        if form == 1:
            _set_field(data, at, 124, 136, b"%011o " % size)
        elif form == 2:
            _set_field(data, at, 124, 136, b"%012o" % size)
        elif form == 3:
            _set_field(data, at, 124, 136, b"%11o\x00" % size)  # leading spaces
        elif form == 4:
            _set_field(data, at, 124, 136, (b"%o\x00" % size).ljust(12, b"\x00"))
        elif form == 5:
            field = bytearray(size.to_bytes(12, "big"))
            field[0] |= 0x80
            _set_field(data, at, 124, 136, bytes(field))
        elif form == 6:  # the checksum as 7 digits and a NUL, or and a space
            chk = sum(data[at:at + 148]) + 8 * 32 + sum(data[at + 156:at + 512])
            data[at + 148:at + 156] = b"%07o" % chk + (b"\x00" if rng.random() < 0.5 else b" ")
        elif form == 7:
            _set_field(data, at, 124, 136, b"%011o\x00" % size)
    p = tmp_path / "forms.tar"
    p.write_bytes(bytes(data))
    want = _reference(p, monkeypatch)
    assert want[1] is None and len(want[0]) == 400
    assert _listed(p) == want


@pytest.mark.parametrize("window", [1536, 2**20])
def test_corruption_anywhere_is_the_same_error_after_the_same_members(tmp_path, monkeypatch,
                                                                         window):
    monkeypatch.setattr(tarscan, "WINDOW", window)
    data = _mixed_tar(7, 120, tarfile.PAX_FORMAT, 0.1)
    offsets = _offsets(data)
    rng = np.random.default_rng(7)
    p = tmp_path / "bad.tar"
    for k in [0, 1, 59, 119, *rng.integers(0, 120, 3).tolist()]:
        at, size = offsets[k]
        for byte, value in ((3, 0x41), (125, ord("9")), (130, 0), (150, ord("8")), (156, ord("Z")),
                            (124, 0x80)):
            bad = bytearray(data)
            bad[at + byte] = value
            p.write_bytes(bytes(bad))
            want = _reference(p, monkeypatch)
            assert _listed(p) == want, (k, byte)
    for cut in [700, len(data) // 3, offsets[-1][0] + 512, *rng.integers(1, len(data), 5)]:
        p.write_bytes(data[:int(cut)])
        want = _reference(p, monkeypatch)
        assert _listed(p) == want, cut
        assert want[1] is not None or cut > offsets[-1][0] + 512 + offsets[-1][1], cut


def test_listing_unique_keys_fingerprint_and_pack_as_before(tmp_path, monkeypatch):
    """The whole listing against one made entry by entry: duplicates rejected
    with the same member numbers, the fingerprint of the same keys."""
    monkeypatch.setattr(tarscan, "WINDOW", 64 * 512 + 256)
    p = tmp_path / "a.tar"
    p.write_bytes(_mixed_tar(11, 2501, tarfile.PAX_FORMAT, 0.2))
    got = listing.list_archive(p, "tar", limit=LIMIT)
    plain = list(listing.unique_keys(refs.iter_refs(p, "tar", limit=LIMIT)))
    assert _rows(got.entries) == _rows(plain)
    assert any(isinstance(e, Reject) and e.reason.startswith("duplicate-key") for e in plain)
    st = p.stat()
    h = hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}:".encode())
    for e in plain:
        h.update(e.key.encode("utf-8", "surrogateescape") + b"\n")
    assert got.fingerprint == "archive-sha256:" + h.hexdigest()
    assert listing.fingerprint(p, [], identity="x") == (
        "archive-sha256:" + hashlib.sha256(b"x:").hexdigest())
    for a in range(0, len(plain), 777):
        part = got.entries[a:a + 777]
        assert listing.unpack(listing.pack(part)) == part


def test_unique_key_batches_equals_unique_keys():
    rng = np.random.default_rng(3)
    for _ in range(50):
        keys = [f"k{int(v)}" for v in rng.integers(0, 60, int(rng.integers(0, 80)))]
        entries = [MemberRef(k, i, 1) if i % 3 else Reject(k, "x") for i, k in enumerate(keys)]
        cuts = sorted(rng.integers(0, len(entries) + 1, 4).tolist())
        batches = [entries[a:b] for a, b in zip([0, *cuts], [*cuts, len(entries)])]
        got = [e for b in listing.unique_key_batches(iter(batches)) for e in b]
        assert got == list(listing.unique_keys(entries))


def test_pack_round_trips_every_kind_of_entry():
    refs_only = [MemberRef(f"{i}.png", i * 512, i) for i in range(7)]
    named = [*refs_only[:3], MemberRef("caf\\xe9.png", 9, 9, "caf\udce9.png"), *refs_only[3:]]
    mixed = [*named, Member("m.png", b"\x89PNG", 3), Reject("r.png", "unsafe-path: x"),
             Member("n.png", b"", None)]
    for entries in ([], refs_only, named, mixed, mixed[-2:]):
        back = listing.unpack(listing.pack(iter(entries)))
        assert back == entries and [type(e) for e in back] == [type(e) for e in entries]


def test_member_refs_are_the_dataclass_s_own():
    keys, offsets, sizes = ["a", "b/c.png"], [0, 1024], [5, 0]
    made = member_refs(keys, offsets, sizes)
    assert made == [MemberRef(k, o, s) for k, o, s in zip(keys, offsets, sizes)]
    assert [hash(m) for m in made] == [hash(MemberRef(k, o, s))
                                       for k, o, s in zip(keys, offsets, sizes)]
    assert made[0].name is None and member_refs([], [], []) == []
    with pytest.raises(AttributeError):
        made[0].key = "x"  # still frozen
    # member_refs fills the slots without __init__: a check added to the class
    # (a __post_init__) would be skipped by it
    assert not hasattr(MemberRef, "__post_init__")
    assert set(MemberRef.__slots__) == {"key", "offset", "size", "name"}


def test_plain_names_never_passes_a_name_a_check_would_judge():
    """Random names over an alphabet of every character the checks look at:
    whenever a run is passed as plain, each of its names is its own key,
    safe and not junk; and one refused name anywhere fails its run."""
    alphabet = list("ab/.:\\_ MACOSXdstoreTHUMBSthumbs.dbdesktop.ini") + ["\u00e9", "\udce9"]
    rng = np.random.default_rng(0)
    passed = 0
    for _ in range(4000):
        names = ["".join(rng.choice(alphabet, int(rng.integers(0, 12))))
                 for _ in range(int(rng.integers(1, 4)))]
        judged = [(members.check_name(n), members.is_junk(n)) for n in names]
        all_plain = all(c == (n, None) and not junk for n, (c, junk) in zip(names, judged))
        if members.plain_names("".join(n + "\x00" for n in names)):
            passed += 1
            assert all_plain, names
    assert passed > 100  # the test does exercise the plain case
    for odd in ODD:
        name = odd.format(i=1)
        if members.check_name(name) != (name, None) or members.is_junk(name):
            assert not members.plain_names(f"0/1.png\x00{name}\x002/3.png\x00"), name


def test_extended_headers_on_every_member_are_not_read_a_window_each(tmp_path, monkeypatch):
    """After each pax header the scan reads a little first: the bytes it reads
    stay proportional to the archive, not a whole window per member."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(300):
            add_member(tar, f"{i % 10}/{i:04d}.png", b"x" * 300, pax_headers={"atime": "1.5"})
        for i in range(300, 2300):  # then a long run of plain headers
            add_member(tar, f"{i % 10}/{i:04d}.png", b"y" * 300)
    p = tmp_path / "pax.tar"
    p.write_bytes(buf.getvalue())
    read = []
    real = tarscan.os.pread
    monkeypatch.setattr(tarscan.os, "pread", lambda fd, n, at: read.append(n) or real(fd, n, at))
    got = _listed(p)
    assert sum(read) < 4 * len(buf.getvalue())
    assert got == _reference(p, monkeypatch) and len(got[0]) == 2300


def test_listing_leaves_the_garbage_collector_as_it_found_it(tmp_path):
    import gc

    p = tmp_path / "a.tar"
    p.write_bytes(_mixed_tar(1, 50, tarfile.GNU_FORMAT, 0.0))
    bad = tmp_path / "bad.tar"
    bad.write_bytes(p.read_bytes()[:3000])
    try:
        for enabled in (True, False):
            gc.enable() if enabled else gc.disable()
            assert len(listing.list_archive(p, "tar", limit=LIMIT).entries) == 50
            assert gc.isenabled() == enabled
            with pytest.raises(ArchiveError):
                listing.list_archive(bad, "tar", limit=LIMIT)
            assert gc.isenabled() == enabled
    finally:
        gc.enable()


def test_members_bigger_than_a_window_are_skipped_not_read(tmp_path, monkeypatch):
    """Windows grow only where headers are dense: members of one to a few
    windows each are stepped over (a block read per header), not read."""
    monkeypatch.setattr(tarscan, "WINDOW", 8 * 512)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(40):
            add_member(tar, f"small/{i}.png", b"s" * 100)  # dense: windows grow
        for i in range(60):
            add_member(tar, f"big/{i}.png", bytes(5000 + 3000 * (i % 4)))
    p = tmp_path / "big.tar"
    p.write_bytes(buf.getvalue())
    read = []
    real = tarscan.os.pread
    monkeypatch.setattr(tarscan.os, "pread", lambda fd, n, at: read.append(n) or real(fd, n, at))
    got = _listed(p)
    assert sum(read) < len(buf.getvalue()) // 3
    assert got == _reference(p, monkeypatch) and len(got[0]) == 100
