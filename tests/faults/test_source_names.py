"""Untrusted member names and sizes (issue 18): names that are not UTF-8, duplicate
names, members out of proportion to their image, and the byte budget of a task.

The hostile-input suite (test_hostile.py) ingests and scores each kind; here are
the rules themselves, the rerun after direct scoring, the report's gallery of a
duplicated name, and the memory rules (lazy reads, budgeted tasks).
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from digitbatch import ingestion
from digitbatch.errors import ArchiveError
from digitbatch.scoring.api import score
from digitbatch.scoring.output import open_predictions
from digitbatch.sources import listing, proportion
from digitbatch.sources.archive import iter_members
from digitbatch.sources.base import MemberRef, Reject
from digitbatch.sources.members import Member, check_name, escape_name, read_member

from ..conftest import trained_model
from .test_hostile import (
    _LATIN1, _LATIN1_KEY, _digit, _enc, _gz, _latin1_dir, _latin1_tar_gz, _raw_tar, _zip_raw,
)


def _unescape(key: str) -> bytes:
    return re.sub(rb"\\x([0-9a-f]{2})", lambda m: bytes([int(m[1], 16)]), key.encode())


@pytest.mark.parametrize("raw", [b"7/caf\xe9.png", b"\xff\xfe.png", "7/café.png".encode(),
                                 b"a/\xe2\x82.png", b"plain.png", b"\xc3(\xa0\xa1/x.png"])
def test_escaped_keys_are_utf8_and_give_the_name_back(raw):
    key, problem = check_name(raw.decode("utf-8", "surrogateescape"))
    assert problem is None
    key.encode("utf-8")  # (strict: valid UTF-8 text)
    assert _unescape(key) == raw


def test_an_escaped_unsafe_name_is_still_unsafe():
    key, problem = check_name(b"../caf\xe9.png".decode("utf-8", "surrogateescape"))
    assert problem.startswith("unsafe-path") and key == "../caf\\xe9.png"
    assert escape_name("\ud800x") == "\\ud800x"  # a lone surrogate of another origin


def test_later_duplicates_are_rejects_naming_both_positions():
    got = list(listing.unique_keys([MemberRef("a", 0, 1), Reject("b", "too-large: x"),
                                    MemberRef("a", 2, 1), MemberRef("b", 3, 1),
                                    MemberRef("c", 4, 1)]))
    assert got[:2] == [MemberRef("a", 0, 1), Reject("b", "too-large: x")]
    assert got[2] == Reject("a", "duplicate-key: member 3 has the name of member 1, which "
                                 "keeps the key")
    assert got[3].reason.startswith("duplicate-key: member 4 has the name of member 2")
    assert got[4] == MemberRef("c", 4, 1)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return trained_model(tmp_path_factory.mktemp("names_model"), seed=2)


@pytest.mark.parametrize("build", [_latin1_tar_gz, _latin1_dir])
def test_direct_scoring_of_a_latin1_name_completes_and_reruns(build, model, tmp_path):
    src = build(tmp_path)
    out = tmp_path / "p.zarr"
    r = score(src, model=model, out=out, scheduler="synchronous")
    assert r.metrics["n_scored"] == 4
    p = open_predictions(out)
    assert _LATIN1_KEY in [str(k) for k in p.keys[:]]
    assert not (out / "_staging").exists()
    again = score(src, model=model, out=out, scheduler="synchronous", resume=True)
    assert again.metrics["n_scored"] == 4
    score(src, model=model, out=out, scheduler="synchronous", overwrite=True)
    assert {x.name for x in tmp_path.iterdir()} == {src.name, "p.zarr"}


def test_the_report_gallery_of_a_duplicated_name_shows_the_first_member(tmp_path):
    from digitbatch.report_input import archive_images

    first, second = _enc(_digit(1), "PNG"), _enc(_digit(9), "PNG")
    _zip_raw(tmp_path / "d.zip", [("4/dup.png", 0, d, zlib.crc32(d), len(d))
                                  for d in (first, second)])
    _, images_of = archive_images(tmp_path / "d.zip")
    got = images_of(["4/dup.png"])[0]
    from digitbatch.sources.images import decode_one
    np.testing.assert_array_equal(got, decode_one(first))
    assert got.any()


# --- sizes in proportion ---------------------------------------------------------------


def _png(size=(28, 28)) -> bytes:
    return _enc(Image.new("L", size, 0), "PNG")


def test_the_bound_of_an_image_of_some_size():
    assert proportion.max_image_bytes(28, 28) == 2**20 + 16 * 784
    assert proportion.max_image_bytes(2000, 2000) > 16 * 2**20


@pytest.mark.parametrize("key, head, size, code", [
    ("x.png", _png(), 2**20, None),                        # up to 1 MiB: never judged
    ("x.png", _png(), 2**20 + 1, None),                    # 28x28 may take 1 MiB + 12,544 bytes
    ("x.png", _png(), 3 * 2**20, "too-large"),
    ("x.png", _png((2000, 2000)), 16 * 2**20, None),       # 2000x2000 may take 16 MiB
    ("x.png", bytes(4096), 3 * 2**20, "decode-error"),     # no header at all
    ("x.dat", bytes(4096), 3 * 2**20, "not-an-image"),
    ("x.jpg", b"\xff\xd8\xff\xe1" + b"\xff" * 100, 3 * 2**20, None),  # cannot tell: read whole
])
def test_out_of_proportion(key, head, size, code):
    from digitbatch.sources.members import open_formats

    got = proportion.out_of_proportion(key, head, size, open_formats())
    assert (got.split(":", 1)[0] if got else None) == code


def test_a_tiff_whose_directory_is_at_its_end_is_read_whole():
    """Its head cannot say its size: it is read and decoded, not refused."""
    img = np.random.default_rng(0).integers(0, 255, (1200, 1200), np.uint8)
    pixels = img.tobytes()
    # a little-endian TIFF: header, the strip, then the directory at the end
    ifd_at = 8 + len(pixels)
    entries = [(256, 4, 1, 1200), (257, 4, 1, 1200), (258, 3, 1, 8), (259, 3, 1, 1),
               (262, 3, 1, 1), (273, 4, 1, 8), (277, 3, 1, 1), (278, 4, 1, 1200),
               (279, 4, 1, len(pixels))]
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHII", t, typ, n, v) if typ == 4 else struct.pack("<HHIHH", t, typ, n, v, 0)
        for t, typ, n, v in entries) + struct.pack("<I", 0)
    data = b"II*\x00" + struct.pack("<I", ifd_at) + pixels + ifd
    assert len(data) > proportion.SNIFF_ABOVE
    item = read_member("scan.tif", io.BytesIO(data), len(data), 16 * 2**20)
    assert isinstance(item, Member) and len(item.data) == len(data)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(item.data))), img)


def test_a_member_refused_from_its_head_is_not_read_further():
    class Counting(io.BytesIO):
        taken = 0

        def read(self, n=-1):
            out = super().read(n)
            Counting.taken += len(out)
            return out

    f = Counting(_png() + bytes(8 * 2**20))
    item = read_member("x.png", f, 8 * 2**20 + len(_png()), 16 * 2**20)
    assert isinstance(item, Reject) and item.reason.startswith("too-large")
    assert Counting.taken <= proportion.HEAD_BYTES


# --- memory: lazy reads, budgeted tasks ---------------------------------------------------


def test_a_compressed_tar_is_listed_by_ordinal_and_read_back(tmp_path):
    members = [(f"{i % 10}/m{i}.png".encode(), _enc(_digit(i), "PNG")) for i in range(12)]
    members.insert(3, (b"../bad.png", b"x"))
    src = tmp_path / "a.tar.gz"
    src.write_bytes(_gz(_raw_tar(members)))
    lst = listing.list_archive(src, "tar", limit=16 * 2**20)
    assert all(isinstance(e, MemberRef) for i, e in enumerate(lst.entries) if i != 3)
    streamed = list(iter_members(src))
    assert lst.entries[3] == streamed[3]
    pick = [lst.entries[i] for i in (1, 5, 9)]
    got = list(listing.read_entries(str(src), "tar", pick, limit=16 * 2**20))
    assert got == [streamed[i] for i in (1, 5, 9)]
    # the archive changed since it was listed: named, not misread
    src.write_bytes(_gz(_raw_tar(members[:4])))
    with pytest.raises(ArchiveError, match="changed since it was listed"):
        list(listing.read_entries(str(src), "tar", pick, limit=16 * 2**20))


def test_read_entries_holds_one_member_at_a_time(tmp_path):
    members = [(f"m{i}.png".encode(), _enc(_digit(i), "PNG")) for i in range(4)]
    (tmp_path / "a.tar").write_bytes(_raw_tar(members))
    lst = listing.list_archive(tmp_path / "a.tar", "tar", limit=2**20)
    it = listing.read_entries(str(tmp_path / "a.tar"), "tar", lst.entries, limit=2**20)
    assert not isinstance(it, list)
    assert next(it).key == "m0.png"


def test_ingest_tasks_are_cut_at_the_byte_budget(tmp_path, monkeypatch):
    data = {f"3/m{i}.png": _enc(_digit(i), "PNG") for i in range(9)}
    for k, v in data.items():
        (tmp_path / "src" / k).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / k).write_bytes(v)
    sizes = sorted(len(v) for v in data.values())
    monkeypatch.setattr(ingestion, "TASK_BYTES", 3 * sizes[-1])
    seen = []
    real = listing.decode_packed

    def counting(task):
        seen.append(len(listing.unpack(task[2])))
        return real(task)

    monkeypatch.setattr(listing, "decode_packed", counting)
    r = ingestion.ingest(tmp_path / "src", tmp_path / "s.zarr", scheduler="synchronous")
    assert r.n_images == 9
    assert sum(seen) == 9 and max(seen) <= 3 and len(seen) >= 3


@pytest.mark.parametrize("command", ["ingest", "score"])
def test_cli_of_a_latin1_name_exits_zero(command, model, tmp_path):
    from click.testing import CliRunner

    from digitbatch.cli import main

    src = _latin1_tar_gz(tmp_path)
    out = tmp_path / "o.zarr"
    args = ["-q", command, str(src), "--out", str(out), "--scheduler", "synchronous"]
    if command == "score":
        args += ["--model", str(model)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output
    assert {x.name for x in tmp_path.iterdir()} == {src.name, "o.zarr"}
