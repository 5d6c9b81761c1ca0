"""metrics.summarize against plain scikit-learn, and the text confusion matrix.

Every number of the record (accuracy, per-class precision / recall / F1,
support, the matrix itself) is compared with ``sklearn.metrics`` computed
from the labels and predictions the confusion matrix came from, on
matrices that are not symmetric (a swap of precision and recall, or of
rows and columns, changes them), with classes never predicted and classes
never present (scikit-learn's ``zero_division=0``).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from sklearn.metrics import (
    accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support,
)

from digitbatch.metrics import format_confusion, summarize


def assert_matches_sklearn(record: dict, y_true, y_pred, k: int) -> None:
    """``record`` (a summarize() result or a metrics.json) equals scikit-learn's numbers."""
    labels = list(range(k))
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    assert record["confusion_matrix"] == cm.tolist()
    assert record["n_labeled"] == len(y_true)
    if len(y_true):
        assert record["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-12)
    else:
        assert record["accuracy"] is None
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels,
                                                 zero_division=0)
    assert sorted(record["per_class"], key=int) == [str(c) for c in labels]
    for c in labels:
        got = record["per_class"][str(c)]
        assert got["precision"] == pytest.approx(p[c], abs=1e-6), (c, "precision")
        assert got["recall"] == pytest.approx(r[c], abs=1e-6), (c, "recall")
        assert got["f1"] == pytest.approx(f[c], abs=1e-6), (c, "f1")
        assert got["support"] == s[c]


def _pairs(rng, n, k, *, p_correct=0.6):
    y = rng.integers(0, k, n)
    wrong = rng.random(n) > p_correct
    pred = np.where(wrong, rng.integers(0, k, n), y)
    return y, pred


@pytest.mark.parametrize("k, n, seed", [
    (10, 5000, 0),   # digits, many rows
    (10, 37, 1),     # digits, few rows: some classes rare
    (2, 400, 2),     # a detector
    (3, 9, 3),       # tiny
])
def test_summarize_equals_sklearn(k, n, seed):
    y, pred = _pairs(np.random.default_rng(seed), n, k)
    cm = confusion_matrix(y, pred, labels=list(range(k)))
    assert_matches_sklearn(summarize(cm), y, pred, k)


def test_precision_and_recall_are_not_swapped():
    # true 0 predicted 1 four times: class 0 recall 1/5, class 1 precision 1/5
    y = np.array([0] * 5 + [1])
    pred = np.array([0] + [1] * 4 + [1])
    rec = summarize(confusion_matrix(y, pred))
    assert rec["per_class"]["0"] == {"precision": 1.0, "recall": 0.2,
                                     "f1": round(2 * 0.2 / 1.2, 6), "support": 5}
    assert rec["per_class"]["1"] == {"precision": 0.2, "recall": 1.0,
                                     "f1": round(2 * 0.2 / 1.2, 6), "support": 1}
    assert rec["accuracy"] == pytest.approx(2 / 6)


def test_classes_never_predicted_or_never_present():
    # class 2 never occurs, class 3 never predicted, class 1 neither
    y = np.array([0, 0, 3, 3, 3])
    pred = np.array([0, 2, 0, 0, 2])
    cm = confusion_matrix(y, pred, labels=[0, 1, 2, 3])
    rec = summarize(cm)
    assert_matches_sklearn(rec, y, pred, 4)
    assert rec["per_class"]["1"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert rec["per_class"]["2"]["precision"] == 0.0 and rec["per_class"]["2"]["support"] == 0
    assert rec["per_class"]["3"]["recall"] == 0.0 and rec["per_class"]["3"]["support"] == 3


def test_empty_matrix_has_no_accuracy():
    rec = summarize(np.zeros((10, 10), np.int64))
    assert rec["accuracy"] is None and rec["n_labeled"] == 0
    assert all(v == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
               for v in rec["per_class"].values())


def test_perfect_and_all_wrong():
    y = np.arange(10).repeat(3)
    assert summarize(confusion_matrix(y, y))["accuracy"] == 1.0
    rec = summarize(confusion_matrix(y, (y + 1) % 10))
    assert rec["accuracy"] == 0.0
    assert all(v["f1"] == 0.0 and v["support"] == 3 for v in rec["per_class"].values())


def test_record_types_are_plain_json():
    rec = summarize(np.array([[3, 1], [2, 4]], dtype=np.int32))
    assert type(rec["accuracy"]) is float and type(rec["n_labeled"]) is int
    assert rec["confusion_matrix"] == [[3, 1], [2, 4]]
    assert all(type(v) is int for row in rec["confusion_matrix"] for v in row)
    for v in rec["per_class"].values():
        assert type(v["support"]) is int and type(v["precision"]) is float


def test_values_are_rounded_to_six_places():
    y = np.array([0, 0, 0, 1, 1, 1, 1])
    pred = np.array([0, 1, 1, 1, 1, 1, 0])
    rec = summarize(confusion_matrix(y, pred))
    assert rec["per_class"]["0"]["recall"] == 0.333333
    assert rec["per_class"]["1"]["precision"] == 0.6
    assert rec["per_class"]["1"]["f1"] == round(f1_score(y, pred, average=None)[1], 6)


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 10).flatmap(lambda k: st.tuples(
    st.just(k),
    st.lists(st.tuples(st.integers(0, k - 1), st.integers(0, k - 1)), min_size=0, max_size=60))))
def test_summarize_equals_sklearn_property(case):
    k, pairs = case
    y = np.array([a for a, _ in pairs], dtype=np.int64)
    pred = np.array([b for _, b in pairs], dtype=np.int64)
    cm = np.zeros((k, k), np.int64)
    np.add.at(cm, (y, pred), 1)
    rec = summarize(cm)
    if len(y):
        assert_matches_sklearn(rec, y, pred, k)
    else:
        assert rec["accuracy"] is None


def test_format_confusion_rows_columns_and_totals():
    cm = np.array([[5, 1, 0], [2, 7, 0], [0, 0, 12345]])
    text = format_confusion(cm)
    lines = text.splitlines()
    assert len(lines) == 5
    head = lines[0].split()
    assert head == ["true\\pred", "0", "1", "2", "total"]
    assert lines[1].split() == ["0", "5", "1", "0", "6"]  # a row is a true label
    assert lines[2].split() == ["1", "2", "7", "0", "9"]
    assert lines[3].split() == ["2", "0", "0", "12345", "12345"]
    assert lines[4].split() == ["total", "7", "8", "12345", "12360"]  # column totals
    # right-aligned columns of one width, wide enough for the grand total
    width = len(lines[1]) - 10
    assert all(len(line) == len(lines[0]) for line in lines)
    assert lines[4].endswith(" 12360") and width >= 6 * 3


def test_format_confusion_names_and_narrow_counts():
    text = format_confusion(np.array([[1, 0], [0, 1]]), labels=["not-2", "2"])
    lines = text.splitlines()
    assert lines[0] == "true\\pred " + "not-2".rjust(5) + "2".rjust(5) + "total".rjust(6)
    assert lines[1] == "not-2     " + "1".rjust(5) + "0".rjust(5) + "1".rjust(6)
    assert lines[3] == "total     " + "1".rjust(5) + "1".rjust(5) + "2".rjust(6)


def test_every_value_is_rounded_to_six_places():
    # class 0: precision 1/3, recall 1/7, f1 1/5; class 1: precision 4/6... all non-terminating
    cm = np.array([[1, 6], [2, 4]])
    rec = summarize(cm)
    assert rec["per_class"]["0"] == {"precision": 0.333333, "recall": 0.142857,
                                     "f1": 0.2, "support": 7}
    assert rec["per_class"]["1"] == {"precision": 0.4, "recall": 0.666667,
                                     "f1": 0.5, "support": 6}
    assert rec["accuracy"] == 5 / 13  # (the accuracy is not rounded)


def test_empty_classes_raise_no_numpy_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 0/0 for a class never predicted nor present
        rec = summarize(np.array([[2, 0, 0], [0, 0, 0], [1, 0, 0]]))
    assert rec["per_class"]["1"]["f1"] == 0.0 and rec["per_class"]["2"]["precision"] == 0.0


def test_a_float_matrix_is_recorded_as_integer_counts():
    rec = summarize(np.array([[3.0, 1.0], [2.0, 4.0]]))  # as np.loadtxt would give it
    assert rec["confusion_matrix"] == [[3, 1], [2, 4]]
    assert all(type(v) is int for row in rec["confusion_matrix"] for v in row)
    assert type(rec["n_labeled"]) is int and rec["per_class"]["0"]["support"] == 4


@pytest.mark.parametrize("cm, width", [
    # the column width is the widest of 5, the largest count + 1, the grand total + 1
    ([[1, 0], [0, 1]], 5),                      # 5
    ([[50000, 1], [1, 1]], 6),                  # count and total both 5 digits: 6
    ([[5000, 5000], [5000, 5000]], 6),          # counts 4 digits, total 20000: 6
    ([[999999, 0], [0, 0]], 7),                 # 6-digit count and total: 7
])
def test_format_confusion_column_width(cm, width):
    cm = np.array(cm)
    lines = format_confusion(cm).splitlines()
    assert lines[0] == "true\\pred ".ljust(10) + "0".rjust(width) + "1".rjust(width) \
        + "total".rjust(width + 1)
    assert lines[1] == "0".ljust(10) + str(cm[0, 0]).rjust(width) + str(cm[0, 1]).rjust(width) \
        + str(cm[0].sum()).rjust(width + 1)
    assert lines[3] == "total".ljust(10) + "".join(str(v).rjust(width) for v in cm.sum(axis=0)) \
        + str(cm.sum()).rjust(width + 1)
