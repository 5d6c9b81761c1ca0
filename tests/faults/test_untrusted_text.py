"""Untrusted strings: labels CSV cells and keys drawn on figures.

================== =========================================================== =========================
kind               trials                                                      expected outcome
================== =========================================================== =========================
labels-csv-bom     a UTF-8 BOM (as spreadsheets write it), with CRLF lines;     labels applied; a UTF-16
                   a UTF-16 file                                               file: ``LabelsFileError``
labels-csv-digits  ``1e0``, ``+3``, ``03``, ``٣`` (Arabic-Indic), ``３``         ``bad-label`` rejects;
                   (full-width), ``7\u00a0`` (no-break space), ``9.``            ``9.0`` and `` 4 `` kept
mathtext-keys      keys ``$x^$``, ``$\\frac$``, ``a\\b\\c``, a newline, a tab,   ``show`` (digit and grid),
                   ``$$``; a store folder named ``$x^$.zarr``; a user's         the report: PNGs written,
                   matplotlibrc with ``text.usetex``                            text drawn literally
================== =========================================================== =========================
"""

from __future__ import annotations

import io

import matplotlib
import numpy as np
import pytest
from PIL import Image

from digitbatch import gallery
from digitbatch.errors import LabelsFileError
from digitbatch.layout import StoreWriter, open_store
from digitbatch.sources.labels import load_labels, parse_label

from ..conftest import synthetic_digits
from .snapshots import assert_unchanged, tree

# --- labels CSV --------------------------------------------------------------------


def test_labels_csv_with_a_byte_order_mark_is_read(tmp_path):
    p = tmp_path / "labels.csv"
    p.write_bytes("key,label\r\na.png,3\r\nb.png,7\r\n".encode("utf-8-sig"))
    lm = load_labels(p)
    assert lm.labels == {"a.png": 3, "b.png": 7}


def test_labels_csv_with_a_bom_applies_to_an_ingest(tmp_path):
    from digitbatch.ingestion import ingest

    src = tmp_path / "src"
    src.mkdir()
    x, _ = synthetic_digits(3, seed=1)
    for i in range(3):
        Image.fromarray(x[i]).save(src / f"d{i}.png")
    p = tmp_path / "labels.csv"
    p.write_bytes("\ufeffkey,label\nd0.png,4\nd1.png,\u0663\nd2.png,1e0\n".encode("utf-8"))
    r = ingest(src, tmp_path / "s.zarr", labels=p, scheduler="synchronous")
    s = open_store(tmp_path / "s.zarr")
    assert r.n_images == 1 and s.read()[1].tolist() == [4]
    assert dict(s.rejects()) == {"d1.png": "bad-label: '\u0663' is not a digit 0-9",
                                 "d2.png": "bad-label: '1e0' is not a digit 0-9"}


def test_labels_csv_in_utf16_is_a_named_error(tmp_path):
    p = tmp_path / "labels.csv"
    p.write_bytes("key,label\na.png,3\n".encode("utf-16"))
    with pytest.raises(LabelsFileError, match="not UTF-8 text .*save it as UTF-8"):
        load_labels(p)


@pytest.mark.parametrize("cell", ["1e0", "+3", "03", "\u0663", "\uff13", "7\u00a0", "9.",
                                  "\u00b3", "0x3", "3\u0301"])
def test_only_ascii_digits_are_labels(cell):
    assert parse_label(cell) == f"bad-label: {cell.strip(' ')!r} is not a digit 0-9"


@pytest.mark.parametrize("cell, value", [("9.0", 9), (" 4 ", 4), ("0", 0), ("7.00", 7),
                                         ("\t5", 5)])
def test_plain_and_float_formatted_digits_are_labels(cell, value):
    assert parse_label(cell) == value


# --- strings drawn on figures -------------------------------------------------------

HOSTILE_KEYS = ["$x^$", "$\\frac$", "a\\b\\c.png", "line1\nline2.png", "tab\there.png", "$$",
                "\\$x^$", "_{$}^{"]


@pytest.fixture
def hostile_store(tmp_path):
    """A store whose keys (and whose folder name) are mathtext bait."""
    n = 300
    x, y = synthetic_digits(n, seed=4)
    keys = [HOSTILE_KEYS[i % len(HOSTILE_KEYS)] + f"#{i}" for i in range(n)]
    path = tmp_path / "$x^$.zarr"
    with StoreWriter(path, source={"kind": "test"}, chunk_size=256) as w:
        w.append(x, y, keys)
        w.finish(splits={"train": (0, 200), "test": (200, n)})
    return path


def _png_ok(path) -> None:
    with Image.open(path) as im:
        assert im.size[0] > 50 and im.size[1] > 50


@pytest.mark.parametrize("index", range(len(HOSTILE_KEYS)),
                         ids=[f"key-{i}" for i in range(len(HOSTILE_KEYS))])
def test_show_digit_draws_hostile_keys_literally(hostile_store, tmp_path, index):
    from digitbatch.plots import show_digit

    r = show_digit(hostile_store, index=index, out=tmp_path / "d.png")
    assert r["key"].startswith(HOSTILE_KEYS[index])
    _png_ok(tmp_path / "d.png")


def test_show_grid_draws_hostile_keys_and_folder_name(hostile_store, tmp_path):
    from digitbatch.plots import show_grid

    show_grid(hostile_store, out=tmp_path / "g.png", count=16)
    _png_ok(tmp_path / "g.png")
    show_grid(hostile_store, out=tmp_path / "g3.png", label=3, count=5)
    _png_ok(tmp_path / "g3.png")


def test_a_users_usetex_setting_is_not_used_for_our_figures(tmp_path):
    """With text.usetex on (a user's matplotlibrc), LaTeX (absent here) is never called."""
    images = np.zeros((3, 28, 28), np.uint8)
    with matplotlib.rc_context({"text.usetex": True}):
        gallery.draw_gallery(images, HOSTILE_KEYS[:3], tmp_path / "g.png", title="$\\frac$")
        gallery.draw_confusion(np.eye(2, dtype=np.int64), ["$x^$", "\\"], tmp_path / "c.png",
                               title="$x^$")
        gallery.draw_per_class({"0": {"precision": 1.0}}, ["$x^$", "b"], tmp_path / "p.png",
                               title="$\\frac$")
    for name in ("g.png", "c.png", "p.png"):
        _png_ok(tmp_path / name)


def test_titles_are_drawn_as_given():
    """The text objects hold the string itself, with math parsing off."""
    plt = gallery.pyplot()
    with gallery.literal_text():
        fig = plt.figure()
        t = fig.text(0.5, 0.5, "$x^$")
        assert t.get_parse_math() is False
        fig.savefig(io.BytesIO(), format="png")
        plt.close(fig)
    assert gallery.printable("a\nb\tc\x1b") == "a\\nb\\tc\\x1b"
    assert gallery.short_key("dir/line1\nline2.png", width=12) == "\u2026\\nline2.png"


def test_report_of_hostile_keys_is_written_whole(hostile_store, shared_model, tmp_path):
    from digitbatch.report import write_report
    from digitbatch.scoring.api import score

    score(hostile_store, model=shared_model, out=tmp_path / "p.zarr", scheduler="synchronous")
    before = tree(tmp_path)
    r = write_report(tmp_path / "p.zarr", out=tmp_path / "rep", top_k=12)
    assert (tmp_path / "rep" / "report.html").is_file()
    for name in ("errors.png", "doubtful.png", "confusion.png"):
        _png_ok(tmp_path / "rep" / name)
    assert r.html.endswith("report.html")
    assert_unchanged(before, tmp_path, "rep")


def test_cli_show_of_a_hostile_key_exits_zero(hostile_store, tmp_path):
    from click.testing import CliRunner

    from digitbatch.cli import main

    r = CliRunner().invoke(main, ["-q", "show", str(hostile_store), "--index", "1", "--out",
                                  str(tmp_path / "d.png")])
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output
    _png_ok(tmp_path / "d.png")
