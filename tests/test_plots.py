"""show_digit and show --grid: the rows chosen, the PNGs written, the errors."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from digitbatch.cli import main
from digitbatch.errors import StoreError
from digitbatch.layout import open_store
from digitbatch.plots import MAX_GRID, grid_rows, show_digit, show_grid

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_png(path, *, min_side=150, max_side=4000, min_bytes=4000) -> tuple[int, int]:
    """A valid PNG of sane size: signature, IHDR width/height in bounds, not tiny."""
    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR", f"{path}: first chunk is not IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert min_side <= width <= max_side and min_side <= height <= max_side, (path, width, height)
    assert len(data) > min_bytes, f"{path} is only {len(data)} bytes"
    return width, height


def test_show_digit_keeps_its_signature(tmp_path, small_store):
    r = show_digit(small_store, index=5, out=tmp_path / "d.png")
    assert r["index"] == 5 and r["out"] == str(tmp_path / "d.png")
    check_png(tmp_path / "d.png", min_bytes=1000)


@pytest.mark.parametrize("index, label, count", [
    (0, 3, 12),     # a class from the first row
    (250, 7, 30),   # starts inside chunk 0 and crosses into chunks 1-3
    (990, 1, 50),   # fewer rows left than asked for
    (100, None, 40),  # no label: consecutive rows across a chunk boundary (256)
    (980, None, 40),  # runs off the end of the store
])
def test_grid_rows_match_brute_force(small_store, index, label, count):
    s = open_store(small_store)
    labels = s.labels[:]
    rows = np.arange(s.n)
    want = rows[index:] if label is None else rows[index:][labels[index:] == label]
    assert grid_rows(s, index=index, label=label, count=count).tolist() == want[:count].tolist()


def test_show_grid_of_a_class(tmp_path, small_store):
    r = show_grid(small_store, label=3, count=12, out=tmp_path / "g.png")
    labels = open_store(small_store).labels[:]
    assert r["rows"] == 12 and r["first"] == int(np.flatnonzero(labels == 3)[0])
    check_png(tmp_path / "g.png")


def test_show_grid_from_an_index(tmp_path, small_store):
    r = show_grid(small_store, index=250, count=10, out=tmp_path / "g.png")
    assert (r["rows"], r["first"], r["last"]) == (10, 250, 259)
    check_png(tmp_path / "g.png")


@pytest.mark.parametrize("kwargs, message", [
    ({"count": 0}, "count must be an integer from 1"),
    ({"count": MAX_GRID + 1}, "count must be an integer from 1"),
    ({"label": 10}, "label must be 0-9 or -1"),
    ({"label": True}, "label must be 0-9 or -1"),
    ({"label": -1}, "no rows labelled -1"),  # the synthetic store is fully labelled
    ({"index": 1000}, "outside the store's rows"),
])
def test_show_grid_errors(tmp_path, small_store, kwargs, message):
    with pytest.raises(StoreError, match=message):
        show_grid(small_store, out=tmp_path / "g.png", **kwargs)
    assert not (tmp_path / "g.png").exists()


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_show_grid(tmp_path, small_store):
    r = run("show", small_store, "--grid", "--label", 3, "--count", 6, "--out", tmp_path / "g.png")
    assert r.exit_code == 0, r.output
    assert "6 rows" in r.output
    check_png(tmp_path / "g.png")


@pytest.mark.parametrize("args, message", [
    ([], "'--index': required without --grid"),
    (["--index", 3, "--label", 3], "'--label': only with --grid"),
    (["--grid", "--label", 12], "--label"),  # outside click's IntRange(-1, 9)
])
def test_cli_show_bad_options(tmp_path, small_store, args, message):
    r = run("show", small_store, "--out", tmp_path / "g.png", *args)
    assert r.exit_code == 2, r.output
    assert message in r.output
