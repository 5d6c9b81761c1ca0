"""Tests of digitbatch.sources.listing: the one listing of an image container."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from digitbatch.sources.archive import iter_members
from digitbatch.sources.base import MemberRef, Reject
from digitbatch.sources.images import decode_batch
from digitbatch.sources.listing import (
    Listing,
    decode_packed,
    fingerprint,
    iter_entries,
    list_archive,
    pack,
    read_entries,
    unpack,
)
from digitbatch.sources.members import Member

from .conftest import synthetic_digits

LIMIT = 4096  # bytes a member; big.png is over it, the digits far under


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _members() -> dict[str, bytes]:
    """Members in source order (deliberately not sorted): four digits, a PNG that
    does not decode, a text file, a PNG over LIMIT."""
    x, _ = synthetic_digits(4, seed=3)
    noise = np.random.default_rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    big = _png(noise)
    assert len(big) > LIMIT
    return {
        "3/a.png": _png(x[0]),
        "1/b.png": _png(x[1]),
        "bad.png": b"\x89PNG\r\n\x1a\n but then nothing a decoder can read",
        "notes.txt": b"just some notes, not an image\n" * 4,
        "big.png": big,
        "0/c.png": _png(x[2]),
        "d.png": _png(x[3]),
    }


MEMBERS = _members()
ORDER = list(MEMBERS)
GOOD = ["3/a.png", "1/b.png", "0/c.png", "d.png"]
LABELS = {"3/a.png": 3, "1/b.png": 1, "0/c.png": 0, "d.png": None}


def _tar(path: Path, mode: str) -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in MEMBERS.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tf.addfile(info, io.BytesIO(data))
    return path


def _zip(path: Path, names: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in (names or MEMBERS).items():
            zf.writestr(name, data)
    return path


def _dir(path: Path) -> Path:
    for name, data in MEMBERS.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    return path


@pytest.fixture(scope="module")
def containers(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    tmp = tmp_path_factory.mktemp("listing")
    return {
        "tar": (_tar(tmp / "a.tar", "w"), "tar"),
        "tar.gz": (_tar(tmp / "a.tar.gz", "w:gz"), "tar"),
        "zip": (_zip(tmp / "a.zip"), "zip"),
        "dir": (_dir(tmp / "pngs"), "dir"),
    }


# --- the listing ------------------------------------------------------------------


@pytest.mark.parametrize("fmt, seekable", [("tar", True), ("tar.gz", False), ("zip", True),
                                           ("dir", True)])
def test_entries_are_refs_where_seekable_else_members_in_source_order(containers, fmt, seekable):
    path, kind = containers[fmt]
    listing = list_archive(path, kind, limit=LIMIT)
    assert isinstance(listing, Listing)
    assert (listing.path, listing.kind, listing.seekable, listing.identity) == (path, kind, seekable, None)
    keys = [e.key for e in listing.entries]
    # a directory is listed in sorted order; an archive in its own order
    assert keys == (sorted(ORDER) if fmt == "dir" else ORDER)
    by_key = {e.key: e for e in listing.entries}
    if seekable:
        # every member a worker can read is a reference; only header rejects are judged here
        header_rejects = {"big.png"} if fmt != "dir" else set()
        assert {k for k, e in by_key.items() if isinstance(e, Reject)} == header_rejects
        assert all(isinstance(e, MemberRef) for k, e in by_key.items() if k not in header_rejects)
        assert not any(isinstance(e, Member) for e in listing.entries)
    else:
        # a compressed tar is listed by ordinal (its headers read, no bytes held): the
        # tasks stream it; header rejects are known here, content rejects when read
        assert {k for k, e in by_key.items() if isinstance(e, Reject)} == {"big.png"}
        assert [e.offset for e in listing.entries if isinstance(e, MemberRef)] == [
            i for i, k in enumerate(ORDER) if k != "big.png"]
        assert not any(isinstance(e, Member) for e in listing.entries)
        # ingest streams it here: members carry their bytes, content rejects are known
        streamed = {e.key: e for e in iter_entries(path, kind, limit=LIMIT, seekable=False)}
        assert {k for k, e in streamed.items() if isinstance(e, Reject)} == {"notes.txt", "big.png"}
        for k in GOOD + ["bad.png"]:
            assert isinstance(streamed[k], Member)
            assert streamed[k].data == MEMBERS[k]
            assert streamed[k].folder_label == LABELS.get(k)
    if not seekable or fmt != "dir":
        assert by_key["big.png"].reason.startswith("too-large")
    # the listing is what iter_entries yields
    assert list(iter_entries(path, kind, limit=LIMIT, seekable=seekable,
                             by_ordinal=True)) == listing.entries


def test_refs_say_where_the_bytes_are(containers):
    tar, _ = containers["tar"]
    blob = tar.read_bytes()
    refs = [e for e in list_archive(tar, "tar", limit=LIMIT).entries if isinstance(e, MemberRef)]
    for r in refs:  # tar: the data offset and size
        assert blob[r.offset: r.offset + r.size] == MEMBERS[r.key]
    zpath, _ = containers["zip"]
    infos = zipfile.ZipFile(zpath).infolist()
    for r in (e for e in list_archive(zpath, "zip", limit=LIMIT).entries if isinstance(e, MemberRef)):
        assert infos[r.offset].filename == r.key and r.size == len(MEMBERS[r.key])  # zip: entry index
    d, _ = containers["dir"]
    refs = [e for e in list_archive(d, "dir", limit=LIMIT).entries if isinstance(e, MemberRef)]
    # a file: read by its key; its size is for the byte budget of ingest tasks
    assert {(r.offset, r.size) for r in refs} == {(-1, len(MEMBERS[r.key])) for r in refs}


@pytest.mark.parametrize("fmt", ["tar", "zip", "dir"])
def test_an_identity_means_members_with_bytes_even_for_seekable_containers(containers, fmt):
    path, kind = containers[fmt]
    listing = list_archive(path, kind, limit=LIMIT, identity="1234:etag-1")
    assert not listing.seekable and listing.identity == "1234:etag-1"
    assert not any(isinstance(e, MemberRef) for e in listing.entries)
    assert [e.key for e in listing.entries] == [e.key for e in
                                                 iter_members(path, kind=kind, max_member_bytes=LIMIT)]
    members = {e.key: e for e in listing.entries if isinstance(e, Member)}
    assert set(members) == set(GOOD) | {"bad.png"}
    assert all(members[k].data == MEMBERS[k] for k in members)


# --- fingerprint --------------------------------------------------------------------


def _fp(path: Path, **kw) -> str:
    return list_archive(path, "zip", limit=LIMIT, **kw).fingerprint


def test_fingerprint_is_stable_and_follows_names_and_mtime(tmp_path):
    path = _zip(tmp_path / "a.zip")
    os.utime(path, ns=(10**18, 10**18))
    listing = list_archive(path, "zip", limit=LIMIT)
    first = listing.fingerprint
    assert first.startswith("archive-sha256:")
    assert first == _fp(path) == fingerprint(path, listing.entries)
    # the file's mtime changes: so does the fingerprint
    os.utime(path, ns=(10**18, 10**18 + 10**9))  # one second later
    assert _fp(path) != first
    os.utime(path, ns=(10**18, 10**18))
    assert _fp(path) == first
    # one member renamed, same size and mtime: the fingerprint changes
    renamed = dict(MEMBERS)
    renamed["3/z.png"] = renamed.pop("3/a.png")
    other = _zip(tmp_path / "b.zip", renamed)
    os.utime(other, ns=(10**18, 10**18))
    assert other.stat().st_size == path.stat().st_size
    assert _fp(other) != first
    # same names, same size and mtime, elsewhere: the same archive
    copy = tmp_path / "c.zip"
    shutil.copyfile(path, copy)
    os.utime(copy, ns=(10**18, 10**18))
    assert _fp(copy) == first
    # the order of the members counts too
    assert fingerprint(path, listing.entries[::-1]) != first
    # a directory: a file renamed changes it as well
    d = _dir(tmp_path / "pngs")
    before = list_archive(d, "dir", limit=LIMIT).fingerprint
    (d / "d.png").rename(d / "e.png")
    os.utime(d, ns=(1, 1))
    assert list_archive(d, "dir", limit=LIMIT).fingerprint != before


def test_a_listing_fingerprint_is_the_file_as_listed(tmp_path):
    path = _zip(tmp_path / "a.zip")
    os.utime(path, ns=(10**18, 10**18))
    listing = list_archive(path, "zip", limit=LIMIT)
    as_listed = fingerprint(path, listing.entries)
    os.utime(path, ns=(10**18, 10**18 + 10**9))  # changed after the listing
    assert listing.fingerprint == as_listed


def test_an_identity_replaces_size_and_mtime(tmp_path):
    path = _zip(tmp_path / "a.zip")
    a = list_archive(path, "zip", limit=LIMIT, identity="99:etag-a")
    fp = a.fingerprint
    os.utime(path, ns=(1, 1))
    assert _fp(path, identity="99:etag-a") == fp
    assert fingerprint(tmp_path / "gone.zip", a.entries, identity="99:etag-a") == fp
    assert _fp(path, identity="99:etag-b") != fp
    assert _fp(path) != fp


# --- pack / unpack / read_entries / decode_packed ---------------------------------


def test_pack_unpack_round_trips_every_entry_kind():
    entries = [
        MemberRef("x/0.png", 1536, 812),
        Member("1/a.png", b"\x89PNG bytes", 1),
        Reject("big.png", "too-large: 9000 bytes, over the 4096-byte limit"),
        Member("b.png", b"", None),
        MemberRef("d.png", -1, 0),
        Reject("caf\udce9.png", "unsafe-path: absolute path"),  # a key that is not UTF-8
    ]
    blob = pack(entries)
    assert isinstance(blob, bytes)
    back = unpack(blob)
    assert back == entries
    assert [type(e) for e in back] == [type(e) for e in entries]
    assert unpack(pack([])) == []
    assert unpack(pack(iter(entries[:2]))) == entries[:2]  # any iterable


@pytest.mark.parametrize("fmt", ["tar", "tar.gz", "zip", "dir"])
def test_read_entries_reads_refs_in_order_as_the_stream_does(containers, fmt):
    path, kind = containers[fmt]
    entries = list_archive(path, kind, limit=LIMIT).entries
    got = list(read_entries(str(path), kind, unpack(pack(entries)), limit=LIMIT))
    streamed = list(iter_members(path, kind=kind, max_member_bytes=LIMIT))
    assert got == streamed
    assert [e.key for e in got] == [e.key for e in entries]
    assert not any(isinstance(e, MemberRef) for e in got)
    rejects = {e.key: e.reason for e in got if isinstance(e, Reject)}
    assert set(rejects) == {"notes.txt", "big.png"}
    assert rejects["notes.txt"].startswith("not-an-image")
    assert rejects["big.png"].startswith("too-large")
    # a slice of the listing (one task's share), header rejects kept in place
    part = entries[2:6]
    assert list(read_entries(str(path), kind, part, limit=LIMIT)) == streamed[2:6]


def test_read_entries_without_refs_returns_the_entries():
    entries = [Member("a.png", b"x", None), Reject("b", "not-an-image: junk")]
    out = list(read_entries("/nonexistent", "tar", entries, limit=LIMIT))
    assert out == entries


@pytest.mark.parametrize("fmt", ["tar", "tar.gz", "zip", "dir"])
def test_decode_packed_read_rejects_come_before_decode_rejects(containers, fmt):
    path, kind = containers[fmt]
    listing = list_archive(path, kind, limit=LIMIT)
    batch = decode_packed((str(path), kind, pack(listing.entries), LIMIT))
    order = sorted(ORDER) if fmt == "dir" else ORDER
    assert batch.keys == [k for k in order if k in GOOD]
    # bad.png comes before notes.txt and big.png in every source order, yet its
    # decode reject follows the read rejects
    assert order.index("bad.png") < order.index("notes.txt")
    assert [r.key for r in batch.rejects] == [k for k in order if k in ("notes.txt", "big.png")] \
        + ["bad.png"]
    assert batch.rejects[-1].reason.startswith("decode-error")
    # the images and labels are what the decoder makes of the members' bytes
    ref = decode_batch([(k, MEMBERS[k], LABELS[k]) for k in batch.keys])
    np.testing.assert_array_equal(batch.images, ref.images)
    np.testing.assert_array_equal(batch.labels, ref.labels)
    assert batch.labels.tolist() == [-1 if LABELS[k] is None else LABELS[k] for k in batch.keys]


def test_decode_packed_of_a_task_with_rejects_only(containers):
    path, kind = containers["tar"]
    rejects = [e for e in list_archive(path, kind, limit=LIMIT).entries if isinstance(e, Reject)]
    batch = decode_packed((str(path), kind, pack(rejects), LIMIT))
    assert len(batch) == 0 and batch.rejects == rejects
