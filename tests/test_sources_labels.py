"""--labels CSV parsing and application by key."""

from __future__ import annotations

import numpy as np
import pytest

from digitbatch.errors import LabelsFileError, SourceNotFoundError
from digitbatch.layout import UNKNOWN_LABEL
from digitbatch.sources.base import Batch
from digitbatch.sources.labels import load_labels, parse_label


@pytest.mark.parametrize("cell, expected", [
    ("7", 7), (" 3 ", 3), ("0", 0), ("9.0", 9),   # digits, padded, float-formatted
    ("", UNKNOWN_LABEL),                          # empty: unknown
])
def test_parse_label_ok(cell, expected):
    assert parse_label(cell) == expected


@pytest.mark.parametrize("cell", ["10", "-1", "seven", "2.5", "nan"])
def test_parse_label_bad(cell):
    assert parse_label(cell).startswith("bad-label")


def test_apply_relabels_and_rejects(tmp_path):
    p = tmp_path / "labels.csv"
    p.write_text("key,label,comment\na.png,3,x\nb.png,12,y\nzzz.png,1,\n")
    lm = load_labels(p)
    batch = Batch(np.zeros((3, 28, 28), np.uint8), np.array([-1, 5, 6], np.int8),
                  ["a.png", "b.png", "c.png"])
    out = lm.apply(batch)
    assert out.keys == ["a.png", "c.png"]
    assert out.labels.tolist() == [3, 6]
    assert [r.key for r in out.rejects] == ["b.png"]
    assert out.rejects[0].reason.startswith("bad-label")
    assert lm.unmatched == 1


@pytest.mark.parametrize("text, match", [
    ("name,digit\na,1\n", "must name the columns"),   # wrong header
    ("", "must name the columns"),                    # empty file
    ("key,label\na,1\na,2\n", "appears twice"),       # duplicate key
    ("key,label\n,1\n", "empty key"),                 # missing key
])
def test_malformed_files(tmp_path, text, match):
    p = tmp_path / "l.csv"
    p.write_text(text)
    with pytest.raises(LabelsFileError, match=match):
        load_labels(p)


def test_not_utf8(tmp_path):
    p = tmp_path / "l.csv"
    p.write_bytes(b"key,label\n\xff\xfe,1\n")
    with pytest.raises(LabelsFileError, match="UTF-8"):
        load_labels(p)


def test_missing_file(tmp_path):
    with pytest.raises(SourceNotFoundError):
        load_labels(tmp_path / "none.csv")


def test_escaped_keys_are_read_back(tmp_path):
    """review.csv's formula escape is undone; a key saved without it is the key itself; a
    quote before anything else is part of the key; an escaped key given twice is a duplicate."""
    p = tmp_path / "labels.csv"
    p.write_text("key,label\n'=x,1\n''y,2\n'abc,3\n=z,4\n'\uff20w,5\n\"'-1\",6\n", encoding="utf-8")
    assert load_labels(p).labels == {"=x": 1, "'y": 2, "'abc": 3, "=z": 4, "\uff20w": 5, "-1": 6}
    p.write_text("key,label\n'=x,1\n=x,2\n")
    with pytest.raises(LabelsFileError, match="twice"):
        load_labels(p)


def test_only_labelled_keeps_the_rows_the_file_labels(tmp_path):
    from digitbatch.sources.base import Reject

    p = tmp_path / "labels.csv"
    p.write_text("key,label\na.png,3\nb.png,\nbad.png,4\n")
    lm = load_labels(p)
    imgs = np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28)
    batch = lm.apply(Batch(imgs, np.array([1, 2, -1], np.int8), ["a.png", "b.png", "c.png"],
                           [Reject("bad.png", "undecodable"), Reject("x.png", "too-big")]))
    kept, left = lm.only_labelled(batch)
    assert kept.keys == ["a.png"] and kept.labels.tolist() == [3] and left == 3
    np.testing.assert_array_equal(kept.images[0], imgs[0])
    assert [r.key for r in kept.rejects] == ["bad.png"]  # a labelled row that failed stays told
