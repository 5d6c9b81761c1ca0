"""The many-member memory bomb (issue 18): a small tar.gz or zip of many members, each
just under the per-member byte limit, ingested and scored directly.

Two kinds of member, ``n`` of them in one archive (1-2 MB compressed):

- ``zeros``: ``N.png`` of 16 MiB of zeros (the issue's bomb: about 5 GB ingest and
  6 GB direct scoring before). No image header in its first bytes: refused from
  its head, the rest never read (``decode-error``).
- ``padded``: a real 2000x2000 PNG followed by zeros up to 16 MiB. Its size is in
  proportion to its dimensions, so it is read whole and decoded (a blank digit):
  what bounds memory is the byte budget per task, and, when scoring a compressed
  tar, tasks that stream the archive themselves instead of the listing holding
  every member's bytes up front.

The job runs as the CLI does, on its LocalCluster (worker processes), and the peak
RSS of its whole process tree (workers included, sampled by :mod:`.treerss`) must
stay under :data:`CAP_MB`. Nothing may be left beside the output, and the output must
be complete (no ``_staging``/``_commits`` of an unfinished run).
"""

from __future__ import annotations

import io
import os
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from digitbatch.layout import open_store
from digitbatch.scoring.output import open_predictions

from ..conftest import trained_model
from .test_hostile import _assert_only_new, _gz, _gz_zeros, _info, _tree, _zeros_deflate, _zip_raw
from .treerss import run_measured

CAP_MB = 1024
MIB = 16  # the default per-member limit, in MiB: members of exactly that many bytes pass it
SIZE = MIB << 20


def _padded_png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (2000, 2000), 0).save(buf, "PNG")
    return buf.getvalue()


def _tar_gz(path: Path, n: int, member: str) -> Path:
    png = _padded_png()
    parts = []
    for i in range(n):
        head = _info(f"{i % 10}/{i}.png", size=SIZE).tobuf(tarfile.GNU_FORMAT)
        if member == "zeros":
            parts.append(_gz(head) + _gz_zeros(MIB))
        else:  # the PNG, then zeros up to 16 MiB: whole MiB of zeros from _gz_zeros
            pad = (1 << 20) - len(png)
            parts.append(_gz(head + png + bytes(pad)) + _gz_zeros(MIB - 1))
    path.write_bytes(b"".join(parts) + _gz(bytes(2 * tarfile.BLOCKSIZE)))
    return path


def _zip(path: Path, n: int) -> Path:
    body, crc = _zeros_deflate(MIB)
    _zip_raw(path, [(f"{i % 10}/{i}.png", 8, body, crc, SIZE) for i in range(n)])
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return trained_model(tmp_path_factory.mktemp("bomb_model"), seed=2)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "digitbatch", "-q", *args]


def _run(op: str, src: Path, out: Path, model: Path) -> tuple[int, str, float]:
    if op == "ingest":
        cmd = _cli("ingest", str(src), "--out", str(out), "--max-rejects", "1000")
    else:
        cmd = _cli("score", str(src), "--model", str(model), "--out", str(out))
    env = {**os.environ, "DIGITBATCH_SCHEDULER": ""}
    env.pop("DIGITBATCH_SCHEDULER")
    return run_measured(cmd, env=env)


def _check(op: str, out: Path, n: int, member: str) -> None:
    if op == "ingest":
        s = open_store(out)
        codes = [r.split(":", 1)[0] for _, r in s.rejects()]
        if member == "zeros":
            assert s.n == 0 and codes == ["decode-error"] * n
        else:
            assert s.n == n and codes == []
            assert not s.images[:].any()  # blank pages: blank digits
    else:
        p = open_predictions(out)
        rejects = p.metrics["rejects"]
        if member == "zeros":
            assert p.metrics["n_scored"] == 0 and len(rejects) == n
            assert all("no image header" in r for _, r in rejects)
        else:
            assert p.metrics["n_scored"] == n and rejects == []
        left = {x.name for x in out.iterdir()}
        assert "_staging" not in left, left


# (the padded members are decoded: minutes on a loaded machine, so make test-long only)
CASES = [("zeros", "tar.gz", 60), ("zeros", "zip", 60),
         pytest.param("padded", "tar.gz", 60, marks=pytest.mark.long),
         pytest.param("zeros", "tar.gz", 120, marks=pytest.mark.long),
         pytest.param("zeros", "zip", 120, marks=pytest.mark.long),
         pytest.param("padded", "tar.gz", 120, marks=pytest.mark.long)]


@pytest.mark.timeout(900)
@pytest.mark.parametrize("op", ["ingest", "score"])
@pytest.mark.parametrize("member, container, n", CASES)
def test_many_members_under_the_limit_stay_under_a_gigabyte(op, member, container, n, model,
                                                             tmp_path):
    src = (_tar_gz(tmp_path / "bomb.tar.gz", n, member) if container == "tar.gz"
           else _zip(tmp_path / "bomb.zip", n))
    assert src.stat().st_size < 2 * 2**20 + n * 70_000
    out = tmp_path / "out.zarr"
    before = _tree(tmp_path)
    code, err, rss = _run(op, src, out, model)
    print(f"{op} of {n} {member} members in a {container}: peak RSS of the job {rss:.0f} MB")
    assert code == 0, err
    assert rss < CAP_MB, f"peak RSS {rss:.0f} MB"
    _check(op, out, n, member)
    _assert_only_new(before, _tree(tmp_path), "out.zarr")


def test_a_padded_png_is_decoded_as_its_image():
    """The padded member is a real image: decoded (not refused) when read whole."""
    from digitbatch.sources.members import read_member

    data = _padded_png() + bytes(SIZE - len(_padded_png()))
    item = read_member("0/x.png", io.BytesIO(data), len(data), SIZE)
    assert len(item.data) == SIZE
    from digitbatch.sources.images import decode_one
    assert isinstance(decode_one(item.data), np.ndarray)
