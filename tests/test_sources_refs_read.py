"""Reading a plain tar's members by runs (one pread for neighbours) gives what
reading them one at a time gives: same bytes, same rejects, same order."""

from __future__ import annotations

import io
import struct
import tarfile
import zlib

import pytest

from digitbatch.errors import ArchiveError
from digitbatch.sources import refs
from digitbatch.sources.base import MemberRef
from digitbatch.sources.headers import PNG_REFUSED, png_header
from digitbatch.sources.members import Member
from digitbatch.sources.refs import iter_refs, read_refs

from .test_ingest import digit_members

LIMIT = 1 << 20


def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _one_by_one(path, rs):
    out = []
    for r in rs:
        out += list(read_refs(str(path), "tar", [r], limit=LIMIT))
    return out


def _as_tuples(items):
    return [(type(m).__name__, m.key, getattr(m, "data", None), getattr(m, "reason", None))
            for m in items]


def test_runs_cover_every_ref_once_in_order(tmp_path, monkeypatch):
    # small and big members, a gap too wide to bridge, odd counts and a ragged last run
    members, _, _ = digit_members(37)
    members = dict(members)
    members["big/a.png"] = bytes(refs.SMALL_MEMBER + 1)
    members["nested.png"] = b"PK\x03\x04" + bytes(100)  # a nested zip: a content reject
    members["skip.bin"] = bytes(refs.RUN_GAP + 1024)
    members["tail/x.png"] = next(iter(digit_members(1)[0].values()))
    p = tmp_path / "a.tar"
    _tar(p, members)
    monkeypatch.setattr(refs, "RUN_BYTES", 4096)  # several runs in a small tar
    rs = [r for r in iter_refs(p, "tar", limit=LIMIT) if isinstance(r, MemberRef)]
    wanted = [r for r in rs if r.key != "skip.bin"]  # leaves a gap between neighbours
    spans = list(refs.runs(wanted))
    assert [i for i, _ in spans] == [0] + [j for _, j in spans[:-1]] and spans[-1][1] == len(wanted)
    assert len(spans) > 3 and any(j - i > 1 for i, j in spans)
    for i, j in spans:  # a run is one read of at most RUN_BYTES, or one big member alone
        assert (j == i + 1) or wanted[j - 1].offset + wanted[j - 1].size - wanted[i].offset <= 4096
    got = list(read_refs(str(p), "tar", wanted, limit=LIMIT))
    assert _as_tuples(got) == _as_tuples(_one_by_one(p, wanted))
    assert [m.key for m in got] == [r.key for r in wanted]
    assert any(not isinstance(m, Member) for m in got)  # the nested zip is refused


def test_truncated_tar_under_a_run_is_an_error(tmp_path):
    members, _, _ = digit_members(9)
    p = tmp_path / "a.tar"
    _tar(p, members)
    rs = [r for r in iter_refs(p, "tar", limit=LIMIT) if isinstance(r, MemberRef)]
    whole = p.read_bytes()
    p.write_bytes(whole[: rs[-1].offset + rs[-1].size // 2])  # the last member cut in half
    with pytest.raises(ArchiveError, match="changed or was truncated"):
        list(read_refs(str(p), "tar", rs, limit=LIMIT))


@pytest.mark.parametrize("name", PNG_REFUSED)
def test_each_refused_png_chunk_name_leaves_the_file_to_pillow(name):
    """A chunk of a refused type (before or after the image data), or a text
    chunk naming a refused keyword, leaves the file to Pillow; the same words
    inside another chunk's text do not."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    def png(text: bytes, key: str = "Comment") -> bytes:
        info = PngInfo()
        info.add_text(key, text.decode())  # a tEXt chunk the fast path takes
        buf = io.BytesIO()
        Image.new("L", (5, 4), 9).save(buf, "PNG", pnginfo=info)
        return buf.getvalue()

    def chunk(kind: bytes, body: bytes = b"x") -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body))

    assert png_header(png(b"plain words")) is not None
    if name in (b"eXIf", b"acTL"):  # chunk types
        plain = png(b"plain words")
        idat, iend = plain.index(b"IDAT") - 4, plain.index(b"IEND") - 4
        assert png_header(plain[:idat] + chunk(name) + plain[idat:]) is None
        assert png_header(plain[:iend] + chunk(name) + plain[iend:]) is None
        assert png_header(png(name)) is not None  # the word in a comment
    else:  # text keywords (EXIF or XMP held in a text chunk)
        assert png_header(png(b"words", key=name.decode())) is None
        assert png_header(png(name)) is None


def test_a_png_cut_before_iend_or_with_trns_is_left_to_pillow():
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (5, 4), 9).save(buf, "PNG")
    plain = buf.getvalue()
    assert png_header(plain) is not None
    assert png_header(plain[:-12]) is None  # no IEND
    buf = io.BytesIO()
    Image.new("L", (5, 4), 9).save(buf, "PNG", transparency=9)
    assert b"tRNS" in buf.getvalue() and png_header(buf.getvalue()) is None