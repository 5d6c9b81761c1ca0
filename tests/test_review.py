"""The review loop: review.csv / review.html written by the report, read back as labels,
turned into a store (subset, ingest --only-labelled) and added to training (train --extra)."""

from __future__ import annotations

import base64
import csv
import json
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from digitbatch import tables
from digitbatch.cli import main
from digitbatch.errors import ReportError, SourceError, SubsetError, TrainingError
from digitbatch.ingestion import ingest
from digitbatch.layout import UNKNOWN_LABEL, StoreWriter, open_store
from digitbatch.report import write_report
from digitbatch.review import COLUMNS, REVIEW_CSV, REVIEW_HTML, second_choice
from digitbatch.scoring.api import score
from digitbatch.scoring.output import open_predictions
from digitbatch.sources.labels import ESCAPED_START, escape_key, load_labels, unescape_key
from digitbatch.subset import subset
from digitbatch.training import train

from .browser import FLAGS, chromium
from .conftest import synthetic_digits
from .test_ingest import make_tar, png_bytes
from .test_plots import PNG_SIGNATURE

CHUNK = 256  # (the least a store takes) uneven: 700 rows -> 256, 256, 188
NB = 600  # rows of the scored store B: 256, 256, 88
INJECTED = {
    "formula": "=cmd|' /C calc'!A0",
    "plus": "+1+1",
    "minus": "-2+3",
    "at": "@SUM(A1)",
    "tab": "\t=1",
    "cr": "\r=1",
    "fullwidth": "\uff1dcmd",
    "quote": "'=already",
    "script": "<script>alert('key')</script>",
    "img": "\"><img src=x onerror=alert(1)>",
    "amp": "a&b<c>\"d'",
    "title_img": "<img src=x onerror=\"document.title='pwned'\">",
    "title_script": "<script>document.title='pwned'</script>",
}


def _write_store(path: Path, images, labels, keys, *, splits=None, chunk=CHUNK) -> Path:
    with StoreWriter(path, source={"kind": "test"}, chunk_size=chunk) as w:
        w.append(images, np.asarray(labels, np.int8), keys)
        w.finish(splits=splits)
    return path


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    """A training store A (train/test), model M1 on it, and an unlabelled store B with
    hostile keys scored by M1 (with probabilities) into P."""
    d = tmp_path_factory.mktemp("review")
    x, y = synthetic_digits(700, seed=21)
    _write_store(d / "a.zarr", x, y, [f"a/{i}" for i in range(700)],
                 splits={"train": (0, 560), "test": (560, 700)})
    train(d / "a.zarr", d / "m1", seed=0)
    xb, yb = synthetic_digits(NB, seed=22)
    # blur the bands a little, so margins spread and some rows are doubtful
    xb = ((xb.astype(np.int32) + np.roll(xb, 3, axis=1)) // 2).astype(np.uint8)
    keys = [f"b/{i:03d}.png" for i in range(NB)]
    for j, key in enumerate(INJECTED.values()):
        keys[7 + 13 * j] = key
    labels = np.full(NB, UNKNOWN_LABEL, np.int8)
    labels[::10] = yb[::10]  # a few rows labelled already
    _write_store(d / "b.zarr", xb, labels, keys)
    score(d / "b.zarr", model=d / "m1", out=d / "p.zarr", scheduler="synchronous", proba=True)
    return SimpleNamespace(d=d, keys=keys, labels=labels, yb=yb)


def _read_csv(path: Path) -> list[list[str]]:
    raw = Path(path).read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # UTF-8 byte-order mark, for spreadsheets
    with open(path, newline="", encoding="utf-8-sig") as fh:
        return list(csv.reader(fh))


def _write_csv(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)
    return path


def test_review_csv_holds_the_most_doubtful_rows(loop):
    r = write_report(loop.d / "p.zarr", out=loop.d / "r25", top_k=4, review=25)
    assert Path(r.files["review_csv"]).name == REVIEW_CSV
    rows = _read_csv(loop.d / "r25" / REVIEW_CSV)
    assert rows[0] == list(COLUMNS) and len(rows) == 26
    g = zarr.open_group(str(loop.d / "p.zarr"), mode="r")
    margin, pred, proba = g["margin"][:], g["pred"][:], g["proba"][:]
    want = np.lexsort((np.arange(NB), margin))[:25]  # lowest margin first, ties by row
    for cells, row in zip(rows[1:], want):
        key, p, second, m, label = cells
        assert unescape_key(key) == loop.keys[row]
        assert p == str(pred[row])
        assert np.float32(m) == margin[row]
        others = proba[row].astype(np.float64)
        others[pred[row]] = -np.inf
        assert second == str(int(np.argmax(others))) and second != p
        assert label == ("" if loop.labels[row] < 0 else str(loop.labels[row]))
    page = (loop.d / "r25" / "report.html").read_text(encoding="utf-8")
    assert "review.html" in page and "review.csv" in page


def test_injected_keys_are_neutralised_and_read_back(loop):
    write_report(loop.d / "p.zarr", out=loop.d / "rall", top_k=4, review=NB)
    rows = _read_csv(loop.d / "rall" / REVIEW_CSV)
    assert len(rows) == NB + 1
    for cells in rows[1:]:
        for cell in cells:  # no cell a spreadsheet would run
            assert not cell or cell[0] not in "=+-@\t\r\uff1d\uff0b\uff0d\uff20", cells
    keys = [c[0] for c in rows[1:]]
    assert "'=cmd|' /C calc'!A0" in keys and "=cmd|' /C calc'!A0" not in keys
    assert "''=already" in keys and "'\t=1" in keys and "'\uff1dcmd" in keys
    assert "b/007.png" not in keys and "b/000.png" in keys  # plain keys as they are
    # read back as a labels file: every key is the store's key again
    lm = load_labels(loop.d / "rall" / REVIEW_CSV)
    assert set(lm.labels) == set(loop.keys)


def test_review_html_escapes_every_string(loop):
    write_report(loop.d / "p.zarr", out=loop.d / "rall", top_k=4, review=NB)
    text = (loop.d / "rall" / REVIEW_HTML).read_text(encoding="utf-8")

    class Page(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags, self.attrs, self.data = [], [], []

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)
            self.attrs.extend((tag, k, v) for k, v in attrs)

        def handle_data(self, data):
            self.data.append(data)

    page = Page()
    page.feed(text)
    page.close()
    allowed = {"html", "head", "meta", "title", "style", "body", "h1", "p", "pre", "code",
               "table", "thead", "tbody", "tr", "th", "td", "img"}
    assert set(page.tags) <= allowed, set(page.tags) - allowed
    assert not any(k.startswith("on") for _, k, _ in page.attrs)
    srcs = [v for t, k, v in page.attrs if t == "img" and k == "src"]
    assert len(srcs) == NB
    for src in srcs[:5]:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1])
        assert png[:8] == PNG_SIGNATURE and png[12:16] == b"IHDR"
        assert png[16:24] == (28).to_bytes(4, "big") * 2  # the digit, pixel for pixel
    assert all(k in ("alt", "src") for t, k, _ in page.attrs if t == "img")
    assert "&lt;script&gt;alert(&#x27;key&#x27;)&lt;/script&gt;" in text
    assert "<script" not in text.lower() and "onerror=alert(1)>" not in text
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in text
    assert "default-src 'none'" in text  # a CSP as a second line of defence
    assert f"digitbatch subset {loop.d / 'b.zarr'} --labels {loop.d / 'rall' / REVIEW_CSV}" in text
    # rows labelled already whose prediction disagrees are shaded
    pred = zarr.open_group(str(loop.d / "p.zarr"), mode="r")["pred"][:]
    n_wrong = int(((loop.labels >= 0) & (loop.labels != pred)).sum())
    assert n_wrong and text.count("<tr class=differs>") == n_wrong
    # the text a browser shows is the key (control characters shown as escapes)
    shown = "".join(page.data)
    assert "<script>alert('key')</script>" in shown and "\\t=1" in shown


def test_second_choice_sources():
    """From a `second` array when the output has one; else from proba; else empty."""
    class Arr:
        def __init__(self, a):
            self.a = np.asarray(a)
            self.shape = self.a.shape

        @property
        def oindex(self):
            return self.a

    rows, pred = np.array([0, 2]), np.array([3, 1])
    probs = np.zeros((3, 4), np.float32)
    probs[0] = [0.1, 0.3, 0.2, 0.4]
    probs[2] = [0.5, 0.5, 0.0, 0.0]  # a tie beside the prediction: the lower class
    def output(second=None, proba=None, metrics=None):
        return SimpleNamespace(extra=lambda name: second if name == "second" else None,
                               proba=proba, metrics=metrics or {})

    with_second = output(Arr([2, 9, 0]), Arr(probs))
    assert second_choice(with_second, rows, pred).tolist() == [2, 0]
    assert second_choice(with_second, rows, np.array([3, -1])).tolist() == [2, -1]  # unscored
    from_proba = output(proba=Arr(probs), metrics={"classes": [0, 1, 2, 3]})
    assert second_choice(from_proba, rows, pred).tolist() == [1, 0]
    neither = output()
    assert second_choice(neither, rows, pred).tolist() == [-1, -1]


def test_without_proba_the_second_column_comes_from_the_second_array(loop, tmp_path):
    score(loop.d / "b.zarr", model=loop.d / "m1", out=tmp_path / "p.zarr",
          scheduler="synchronous")
    write_report(tmp_path / "p.zarr", out=tmp_path / "r", top_k=4, review=10)
    rows = _read_csv(tmp_path / "r" / REVIEW_CSV)
    p = open_predictions(tmp_path / "p.zarr")
    second = {k: int(v) for k, v in zip(p.keys[:], p.extra("second")[:])}
    assert len(rows) == 11 and all(r[1] for r in rows[1:])
    assert all(r[2] == str(second[r[0]]) and r[2] != r[1] for r in rows[1:])


def test_review_zero_writes_none_and_bad_counts_fail(loop, tmp_path):
    r = write_report(loop.d / "p.zarr", out=tmp_path / "r0", top_k=4, review=0)
    assert "review_csv" not in r.files and not (tmp_path / "r0" / REVIEW_CSV).exists()
    assert not (tmp_path / "r0" / REVIEW_HTML).exists()
    assert "review.csv" not in (tmp_path / "r0" / "report.html").read_text(encoding="utf-8")
    for bad in (-1, 10_001, True, 2.5, "10"):
        with pytest.raises(ReportError, match="review"):
            write_report(loop.d / "p.zarr", out=tmp_path / "rbad", top_k=4, review=bad)


def test_escape_is_undone_for_every_key():
    assert ESCAPED_START == tables.FORMULA_START  # export and review write the same escape
    for key in [*INJECTED.values(), "plain", "'", "''", "'x", "=", "a=b", "", "\uff20x"]:
        assert unescape_key(escape_key(key)) == key
        assert escape_key(key)[:1] not in "=+-@\t\r\uff1d\uff0b\uff0d\uff20" or not key
    assert unescape_key("'abc") == "'abc"  # a quote before anything else is the key's own


def _edited(loop, out_dir: Path, n: int, *, drop_quote_for=()) -> tuple[Path, list]:
    """review.csv of ``n`` rows, labelled by "a person": every row gets the model's second
    choice (a deliberately flipped label). Keys in ``drop_quote_for`` are saved without
    their escape, as a spreadsheet saves them."""
    write_report(loop.d / "p.zarr", out=out_dir, top_k=4, review=n)
    rows = _read_csv(out_dir / REVIEW_CSV)
    edited, chosen = [rows[0]], []
    for key, p, second, m, _ in rows[1:]:
        if unescape_key(key) in drop_quote_for:
            key = unescape_key(key)
        edited.append([key, p, second, m, second])
        chosen.append((unescape_key(key), int(second), int(p)))
    return _write_csv(out_dir / "edited.csv", edited), chosen


def test_round_trip_subset_then_train_extra_uses_the_rows(loop, tmp_path):
    csv_path, chosen = _edited(loop, tmp_path / "r", 60, drop_quote_for=(INJECTED["formula"],))
    res = subset(loop.d / "b.zarr", labels=csv_path, out=tmp_path / "b2.zarr")
    s2 = open_store(tmp_path / "b2.zarr")
    want = {k: lab for k, lab, _ in chosen}
    assert res.n_images == s2.n == 60 and res.labels_unmatched == 0
    assert res.n_relabelled == sum(loop.labels[loop.keys.index(k)] != v for k, v in want.items())
    got = dict(zip(s2.column("keys").tolist(), s2.column("labels").tolist()))
    assert got == want
    assert s2.meta["source"]["kind"] == "subset"
    assert s2.meta["source"]["store_checksum"] == open_store(loop.d / "b.zarr").checksum
    # the images are the store's rows
    b = open_store(loop.d / "b.zarr")
    rows = [loop.keys.index(k) for k in s2.column("keys").tolist()]
    np.testing.assert_array_equal(s2.column("images"), b.images.oindex[np.array(rows)])

    r2 = train(loop.d / "a.zarr", tmp_path / "m2", seed=0, extra=[tmp_path / "b2.zarr"])
    man = json.loads((tmp_path / "m2" / "manifest.json").read_text())
    assert man["train"]["n_rows"] == 560 + 60 == r2.n_train
    assert man["train"]["extra"] == [{"store": str(s2.path), "store_checksum": s2.checksum,
                                      "split": "all", "n_rows": 60,
                                      "n_test_rows_left_out": 0}]
    assert r2.extra == man["train"]["extra"]
    # the flipped labels moved the model: rows it predicted as `pred` now lean to `second`
    score(tmp_path / "b2.zarr", model=tmp_path / "m2", out=tmp_path / "p2.zarr",
          scheduler="synchronous")
    score(tmp_path / "b2.zarr", model=loop.d / "m1", out=tmp_path / "p1.zarr",
          scheduler="synchronous")
    before = zarr.open_group(str(tmp_path / "p1.zarr"))["pred"][:]
    after = zarr.open_group(str(tmp_path / "p2.zarr"))["pred"][:]
    flipped = s2.column("labels")
    assert (before == flipped).sum() == 0  # the labels given all disagree with M1
    assert (after == flipped).sum() >= 15, (after == flipped).sum()


def test_train_extra_equals_training_on_the_rows_together(loop, tmp_path, monkeypatch):
    """train A --extra B2 fits exactly what training on one store of A's train rows
    followed by B2's rows (and A's test rows) fits (no rows held out for calibration:
    they would be A's rows in one and A's and B2's in the other)."""
    import digitbatch.calibration as CAL

    monkeypatch.setattr(CAL, "holdout_fraction", lambda n: 0.0)
    csv_path, _ = _edited(loop, tmp_path / "r", 40)
    subset(loop.d / "b.zarr", labels=csv_path, out=tmp_path / "b2.zarr")
    a, b2 = open_store(loop.d / "a.zarr"), open_store(tmp_path / "b2.zarr")
    xa, ya, ka = a.read()
    xb, yb, kb = b2.read()
    _write_store(tmp_path / "both.zarr", np.concatenate([xa[:560], xb, xa[560:]]),
                 np.concatenate([ya[:560], yb, ya[560:]]),
                 [*ka[:560], *kb, *ka[560:]], splits={"train": (0, 600), "test": (600, 740)},
                 chunk=300)
    r1 = train(loop.d / "a.zarr", tmp_path / "m-extra", seed=5, extra=[tmp_path / "b2.zarr"])
    r2 = train(tmp_path / "both.zarr", tmp_path / "m-both", seed=5)
    assert r1.n_train == r2.n_train == 600 and r1.test == r2.test
    with np.load(tmp_path / "m-extra" / "model.npz") as f1, \
            np.load(tmp_path / "m-both" / "model.npz") as f2:
        assert sorted(f1.files) == sorted(f2.files)
        for name in f1.files:
            np.testing.assert_array_equal(f1[name], f2[name], err_msg=name)
    # --incremental takes them too
    r3 = train(loop.d / "a.zarr", tmp_path / "m-inc", seed=5, incremental=True, epochs=1,
               extra=[tmp_path / "b2.zarr"])
    assert r3.n_train == 600 and r3.extra[0]["n_rows"] == 40


def test_subset_refuses_what_it_cannot_use(loop, tmp_path):
    empty = _write_csv(tmp_path / "empty.csv", [["key", "label"], ["b/000.png", ""]])
    with pytest.raises(SubsetError, match="no row a label"):
        subset(loop.d / "b.zarr", labels=empty, out=tmp_path / "x.zarr")
    bad = _write_csv(tmp_path / "bad.csv", [["key", "label"], ["b/001.png", "12"],
                                            ["b/002.png", "3"]])
    with pytest.raises(SubsetError, match="b/001.png"):
        subset(loop.d / "b.zarr", labels=bad, out=tmp_path / "x.zarr")
    other = _write_csv(tmp_path / "other.csv", [["key", "label"], ["nope/1.png", "3"]])
    with pytest.raises(SubsetError, match="none of the 1 labelled keys"):
        subset(loop.d / "b.zarr", labels=other, out=tmp_path / "x.zarr")
    assert not (tmp_path / "x.zarr").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".x.zarr")]


def test_train_extra_refuses_bad_stores(loop, tmp_path):
    with pytest.raises(TrainingError, match="count twice"):
        train(loop.d / "a.zarr", tmp_path / "m", extra=[loop.d / "a.zarr"])
    one = _write_csv(tmp_path / "one.csv", [["key", "label"], ["b/000.png", "4"]])
    subset(loop.d / "b.zarr", labels=one, out=tmp_path / "one.zarr")
    with pytest.raises(TrainingError, match="count twice"):
        train(loop.d / "a.zarr", tmp_path / "m", extra=[tmp_path / "one.zarr"] * 2)
    x, _ = synthetic_digits(270, seed=1)
    _write_store(tmp_path / "unl.zarr", x, np.full(270, UNKNOWN_LABEL),
                 [f"u{i}" for i in range(270)])
    with pytest.raises(TrainingError, match="no labelled rows"):
        train(loop.d / "a.zarr", tmp_path / "m", extra=[tmp_path / "unl.zarr"])
    with pytest.raises(TrainingError, match="list of stores"):
        train(loop.d / "a.zarr", tmp_path / "m", extra=str(tmp_path / "one.zarr"))
    from digitbatch.errors import StoreNotFoundError
    with pytest.raises(StoreNotFoundError):
        train(loop.d / "a.zarr", tmp_path / "m", extra=[tmp_path / "missing.zarr"])
    assert not (tmp_path / "m").exists()


def test_archive_review_ingest_only_labelled(tmp_path):
    """An archive scored directly: its review.csv, labelled, ingested with --only-labelled."""
    from .conftest import trained_model

    model = trained_model(tmp_path / "m", n=600, n_train=500, seed=4)
    x, y = synthetic_digits(150, seed=5)
    members = {f"in/{i:03d}.png": png_bytes(x[i]) for i in range(150)}
    members["in/broken.png"] = png_bytes(x[0])[:30]  # a reject, not reviewed: left out
    arc = make_tar(tmp_path / "a.tar.gz", members)
    score(arc, model=model, out=tmp_path / "p.zarr", scheduler="synchronous", proba=True)
    write_report(tmp_path / "p.zarr", out=tmp_path / "r", top_k=4, review=20)
    assert "--only-labelled" in (tmp_path / "r" / REVIEW_HTML).read_text(encoding="utf-8")
    rows = _read_csv(tmp_path / "r" / REVIEW_CSV)
    edited = [rows[0]] + [[k, p, s, m, s if i % 2 else ""] for i, (k, p, s, m, _)
                          in enumerate(rows[1:])]
    _write_csv(tmp_path / "edited.csv", edited)
    decoded = []
    res = ingest(arc, tmp_path / "fix.zarr", labels=tmp_path / "edited.csv", only_labelled=True,
                 chunk_size=CHUNK, scheduler="synchronous",
                 progress=lambda n, total=None: decoded.append(n))
    assert sum(decoded) == 10  # the other members were never decoded
    s = open_store(tmp_path / "fix.zarr")
    want = {unescape_key(k): int(lab) for k, _, _, _, lab in edited[1:] if lab}
    assert res.n_images == s.n == 10 and res.n_rejects == 0
    assert res.n_left_out == 150 + 1 - 10
    assert dict(zip(s.column("keys").tolist(), s.column("labels").tolist())) == want
    assert s.meta["source"]["only_labelled"] is True and s.splits == {}
    from digitbatch.summaries import ingest_lines
    assert f"left out {150 + 1 - 10} inputs" in "\n".join(ingest_lines(res.to_dict()))
    r = train(tmp_path / "m" / "s.zarr", tmp_path / "m2", seed=0, extra=[tmp_path / "fix.zarr"])
    assert r.n_train == 500 + 10
    with pytest.raises(SourceError, match="labels"):
        ingest(arc, tmp_path / "x.zarr", only_labelled=True)


def test_cli_review_loop(loop, tmp_path):
    runner = CliRunner()
    out = runner.invoke(main, ["report", str(loop.d / "p.zarr"), "--out", str(tmp_path / "r"),
                               "--top", "4", "--review", "30"])
    assert out.exit_code == 0, out.output
    rows = _read_csv(tmp_path / "r" / REVIEW_CSV)
    assert len(rows) == 31
    _write_csv(tmp_path / "e.csv", [rows[0]] + [[k, p, s, m, s] for k, p, s, m, _ in rows[1:]])
    out = runner.invoke(main, ["subset", str(loop.d / "b.zarr"), "--labels",
                               str(tmp_path / "e.csv"), "--out", str(tmp_path / "b2.zarr"),
                               "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["n_images"] == 30
    out = runner.invoke(main, ["train", str(loop.d / "a.zarr"), "--out", str(tmp_path / "m2"),
                               "--extra", str(tmp_path / "b2.zarr"), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["n_train"] == 590
    out = runner.invoke(main, ["train", str(loop.d / "a.zarr"), "--out", str(tmp_path / "m3"),
                               "--extra", str(tmp_path / "b2.zarr")])
    assert out.exit_code == 0, out.output
    assert "on 590 images (30 of them from 1 --extra stores)" in out.output
    out = runner.invoke(main, ["subset", str(loop.d / "b.zarr"), "--labels",
                               str(tmp_path / "e.csv"), "--out", str(tmp_path / "b2.zarr")])
    assert out.exit_code == 1 and "already exists" in out.output


def test_a_filled_in_review_csv_is_never_replaced(loop, tmp_path):
    from digitbatch.storage import check_replaceable, made_by_digitbatch

    out = tmp_path / "r"
    write_report(loop.d / "p.zarr", out=out, top_k=4, review=10)
    assert made_by_digitbatch(out) == "report"  # (a job may write its report there again)
    write_report(loop.d / "p.zarr", out=out, top_k=4, review=12)  # unchanged: replaced
    assert len(_read_csv(out / REVIEW_CSV)) == 13
    rows = _read_csv(out / REVIEW_CSV)
    rows[1][4] = "7"
    _write_csv(out / REVIEW_CSV, rows)
    before = (out / REVIEW_CSV).read_bytes()
    for review in (12, 5):
        with pytest.raises(ReportError, match="changed since the report wrote it"):
            write_report(loop.d / "p.zarr", out=out, top_k=4, review=review)
    assert (out / REVIEW_CSV).read_bytes() == before
    write_report(loop.d / "p.zarr", out=out, top_k=4, review=0)  # not replaced: kept
    assert (out / REVIEW_CSV).read_bytes() == before
    (out / REVIEW_CSV).rename(tmp_path / "mine.csv")
    write_report(loop.d / "p.zarr", out=out, top_k=4, review=3)
    assert len(_read_csv(out / REVIEW_CSV)) == 4
    write_report(loop.d / "p.zarr", out=out, top_k=4, review=0)  # stale, unchanged: removed
    assert not (out / REVIEW_CSV).exists() and not (out / REVIEW_HTML).exists()
    assert check_replaceable(out, "report") == "report"


def test_report_step_of_a_job_takes_review(loop, tmp_path):
    from digitbatch.jobs import load_job, run_job

    spec = tmp_path / "job.toml"
    spec.write_text(f'[job]\nname = "rev"\nworkdir = "{tmp_path}"\nsteps = ["report"]\n'
                    f'[report]\npredictions = "{loop.d / "p.zarr"}"\nout = "{tmp_path / "rep"}"\n'
                    f'top = 4\nreview = 7\n')
    summary = run_job(load_job(spec), scheduler="synchronous")
    assert summary["outcome"] == "succeeded", summary.get("error")
    assert len(_read_csv(tmp_path / "rep" / REVIEW_CSV)) == 8


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.names, self.attrs = [], []

    def handle_starttag(self, tag, attrs):
        self.names.append(tag)
        self.attrs.extend(k for k, _ in attrs)


@pytest.mark.parametrize("csp", [True, False], ids=["as-written", "without-its-csp"])
def test_review_html_in_a_real_browser_runs_no_key(loop, tmp_path, csp):
    """Chromium loads review.html (also with its CSP removed, so that the escaping alone is
    tested): keys that set document.title when run are shown as text and never run."""
    write_report(loop.d / "p.zarr", out=tmp_path / "r", top_k=4, review=NB)
    page = tmp_path / "r" / REVIEW_HTML
    if not csp:
        text = page.read_text(encoding="utf-8")
        start = text.index('<meta http-equiv="Content-Security-Policy"')
        page = tmp_path / "no-csp.html"
        page.write_text(text[:start] + text[text.index(">", start) + 1:], encoding="utf-8")
    dom = subprocess.run(
        [chromium(),  # (fails, never skips, without the browser make test installs)
         *(f for f in FLAGS if f != "--remote-debugging-pipe"),
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=3000", "--dump-dom",
         page.as_uri()], capture_output=True, text=True, timeout=120, check=True).stdout
    assert "<title>digitbatch review: p.zarr</title>" in dom  # no key set the title
    assert dom.count('src="data:image/png;base64,') == NB and dom.count("<tr") == NB + 1
    tags = _Tags()
    tags.feed(dom)
    assert "script" not in tags.names and not [a for a in tags.attrs if a.startswith("on")]
    assert "&lt;script&gt;document.title='pwned'&lt;/script&gt;" in dom


def test_train_step_of_a_job_takes_extra_stores(loop, tmp_path):
    from digitbatch.errors import JobSpecError
    from digitbatch.jobs import load_job, run_job

    one = _write_csv(tmp_path / "one.csv", [["key", "label"], ["b/000.png", "4"],
                                            ["b/001.png", "5"]])
    subset(loop.d / "b.zarr", labels=one, out=tmp_path / "fix.zarr")
    spec = tmp_path / "job.toml"
    spec.write_text(f'[job]\nname = "re"\nworkdir = "{tmp_path}"\nsteps = ["train"]\n'
                    f'[train]\nstore = "{loop.d / "a.zarr"}"\nout = "{tmp_path / "m"}"\n'
                    f'extra = ["{tmp_path / "fix.zarr"}"]\n')
    summary = run_job(load_job(spec), scheduler="synchronous")
    assert summary["outcome"] == "succeeded", summary.get("error")
    assert summary["steps"][0]["result"]["n_train"] == 560 + 2
    man = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert [e["n_rows"] for e in man["train"]["extra"]] == [2]
    with pytest.raises(JobSpecError, match="train.extra .*missing.zarr.* does not exist"):
        load_job(spec, [f'train.extra=["{tmp_path / "missing.zarr"}"]', "train.overwrite=true"])
    with pytest.raises(JobSpecError, match="train.extra must be a list of paths"):
        load_job(spec, ["train.extra=3", "train.overwrite=true"])


def test_extra_rows_that_are_test_rows_are_left_out(loop, tmp_path):
    """A review of the training store itself lists test rows too: they are not fitted on
    (the test accuracy stays on unseen rows), and the manifest says how many were left out."""
    keys = [f"a/{i}" for i in (1, 2, 3, 600, 601)]  # 3 train rows, 2 test rows
    labels = _write_csv(tmp_path / "l.csv", [["key", "label"]] + [[k, "1"] for k in keys])
    subset(loop.d / "a.zarr", labels=labels, out=tmp_path / "sub.zarr")
    for incremental in (False, True):
        r = train(loop.d / "a.zarr", tmp_path / f"m{incremental}", seed=0,
                  extra=[tmp_path / "sub.zarr"], incremental=incremental, epochs=1)
        assert r.n_train == 560 + 3
        assert r.extra[0]["n_rows"] == 3 and r.extra[0]["n_test_rows_left_out"] == 2
    only_test = _write_csv(tmp_path / "t.csv", [["key", "label"], ["a/600", "1"]])
    subset(loop.d / "a.zarr", labels=only_test, out=tmp_path / "t.zarr")
    with pytest.raises(TrainingError, match="that are not test rows"):
        train(loop.d / "a.zarr", tmp_path / "mt", extra=[tmp_path / "t.zarr"])
