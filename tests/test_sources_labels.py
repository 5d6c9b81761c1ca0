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
