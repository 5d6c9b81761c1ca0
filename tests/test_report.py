"""digitbatch report: the figures, the self-contained HTML, and the chunked top-k selection."""

from __future__ import annotations

import base64
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from click.testing import CliRunner

from digitbatch.cli import main
from digitbatch.errors import StoreError, StoreNotFoundError
from digitbatch.ingestion import ingest
from digitbatch.layout import UNKNOWN_LABEL, StoreWriter
from digitbatch.errors import IncompleteOutputError
from digitbatch.scoring.output import open_predictions
from digitbatch.report import ReportError, TopK, class_names, select_rows, write_report
from digitbatch.scoring.api import score
from digitbatch.training import train

from .conftest import synthetic_digits, write_idx
from .test_plots import PNG_SIGNATURE, check_png

K = 12  # gallery size in the tests: small pages render fast


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 1,000-image labelled run with 4% flipped labels (so there are confident mistakes)."""
    d = tmp_path_factory.mktemp("run")
    x, y = synthetic_digits(1000)
    flip = np.random.default_rng(1).random(1000) < 0.04
    y[flip] = (y[flip] + 1) % 10
    write_idx(d / "idx", x[:700], y[:700], prefix="train")
    write_idx(d / "idx", x[700:], y[700:], prefix="t10k")
    ingest(d / "idx", d / "s.zarr", chunk_size=256)
    train(d / "s.zarr", d / "m", seed=0)
    score(d / "s.zarr", model=d / "m", out=d / "p.zarr", scheduler="synchronous", proba=True)
    return d


@pytest.fixture(scope="module")
def labelled(run):
    return write_report(run / "p.zarr", out=run / "report", top_k=K)


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.imgs, self.urls, self.text = [], [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(attrs.get("src", ""))
        for name in ("src", "href", "action", "srcset", "data"):
            if attrs.get(name) is not None:
                self.urls.append((tag, name, attrs[name]))

    def handle_data(self, data):
        self.text.append(data)


def check_html(path) -> _Page:
    """Parses; no external URL of any kind; every <img> is an embedded PNG."""
    text = Path(path).read_text(encoding="utf-8")
    page = _Page()
    page.feed(text)
    page.close()
    assert "http://" not in text and "https://" not in text
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    assert "url(" not in text and "@import" not in text  # CSS fetches nothing either
    for tag, name, url in page.urls:
        assert tag == "img" and name == "src" and not url.startswith("//"), (tag, name, url[:40])
    assert page.imgs, "no images"
    for src in page.imgs:
        assert src.startswith("data:image/png;base64,"), src[:40]
        assert base64.b64decode(src.split(",", 1)[1])[:8] == PNG_SIGNATURE
    return page


def test_labelled_report_writes_every_figure(run, labelled):
    out = run / "report"
    assert set(labelled.files) == {"confusion", "per_class", "errors", "doubtful", "drift",
                                   "reliability", "html", "review_csv", "review_html"}
    for name in ("confusion", "per_class", "errors", "doubtful", "drift", "reliability"):
        check_png(out / f"{name}.png")
    page = check_html(out / "report.html")
    assert len(page.imgs) == 6
    text = " ".join(page.text)
    for expected in ("accuracy", "Per class", "precision", "Most confident mistakes",
                     "Doubtful predictions", "Drift", "expected accuracy", "images / s", str(run / "s.zarr"),
                     labelled.metrics["input"]["checksum"], labelled.metrics["model"]["sha256"],
                     "CV accuracy", "test accuracy", "features"):
        assert expected in text, expected
    assert "true\\pred" in labelled.confusion_text
    # the input is the model's training store: the mistakes counted are the unseen rows'
    head = labelled.metrics["headline"]
    assert labelled.n_wrong == head["n_labeled"] - head["n_correct"] > 0
    assert head["n_labeled"] == 300 and labelled.metrics["training_rows"]["n_labeled"] == 700
    assert "the model's own training store" in text


def test_galleries_hold_the_chunked_top_k(run):
    """The one-pass chunked selection equals a sort of the whole output."""
    p = open_predictions(run / "p.zarr")
    from digitbatch.layout import open_store

    s = open_store(run / "s.zarr")
    sel = select_rows(p, s.labels, k=K, digit=None)
    pred, margin, y = p.group["pred"][:], p.group["margin"][:], s.labels[:]
    gap = p.group["gap"][:].astype(float)
    rows = np.arange(s.n)
    # the input is the model's training store: its 700 training rows are no mistakes to show
    wrong = (y >= 0) & (pred != y) & (rows >= 700)
    order = np.lexsort((rows[wrong], -gap[wrong], -margin[wrong].astype(float)))
    assert sel.errors.rows.tolist() == rows[wrong][order][:K].tolist()
    assert sel.n_wrong == int(wrong.sum())
    order = np.lexsort((rows, gap, margin.astype(float)))  # margin ties ordered by the gap
    assert sel.doubtful.rows.tolist() == rows[order][:K].tolist()


def test_topk_orders_equal_scores_by_the_tie_key():
    top = TopK(3, largest=False)
    top.push(np.arange(4), np.zeros(4), np.array([3.0, 1.0, 2.0, 1.0]))
    top.push(np.arange(4, 6), np.zeros(2), np.array([0.5, 1.0]))
    assert top.rows.tolist() == [4, 1, 3] and top.n_tied_out == 1  # row 5 ties row 3


@pytest.mark.parametrize("n, k, chunk, largest", [
    (1000, 36, 256, True),   # uneven last chunk
    (1000, 36, 1000, False),  # one chunk
    (50, 36, 7, True),       # fewer rows than k
    (500, 1, 3, False),      # k = 1, tiny chunks
    (300, 20, 64, True),     # many ties (scores rounded): lower row wins
])
def test_topk_matches_a_full_sort(n, k, chunk, largest):
    rng = np.random.default_rng(n + k)
    scores = np.round(rng.random(n), 1 if chunk == 64 else 6)
    top = TopK(k, largest=largest)
    for a in range(0, n, chunk):
        top.push(np.arange(a, min(a + chunk, n)), scores[a:a + chunk])
    want = np.lexsort((np.arange(n), -scores if largest else scores))[:k]
    assert top.rows.tolist() == want.tolist()
    assert top.scores.tolist() == scores[want].tolist()
    tied = np.count_nonzero(scores == scores[want[-1]]) - np.count_nonzero(
        scores[want] == scores[want[-1]])
    assert top.n_tied_out == tied


@settings(max_examples=60, deadline=None)
@given(scores=st.lists(st.integers(0, 5), max_size=80), k=st.integers(1, 12),
       chunk=st.integers(1, 30), largest=st.booleans())
def test_topk_property(scores, k, chunk, largest):
    scores = np.asarray(scores, float)
    n = scores.size
    top = TopK(k, largest=largest)
    for a in range(0, n, chunk):
        top.push(np.arange(a, min(a + chunk, n)), scores[a:a + chunk])
    want = np.lexsort((np.arange(n), -scores if largest else scores))[:k]
    assert top.rows.tolist() == want.tolist()
    if n:
        last = scores[want[-1]]
        assert top.n_tied_out == np.count_nonzero(scores == last) - np.count_nonzero(
            scores[want] == last)


def test_detect_digit_report_is_2x2(run, tmp_path):
    train(run / "s.zarr", tmp_path / "m3", model="detect-3", seed=0)
    score(run / "s.zarr", model=tmp_path / "m3", out=tmp_path / "p.zarr", scheduler="synchronous")
    r = write_report(tmp_path / "p.zarr", out=tmp_path / "rep", top_k=K)
    assert class_names(r.metrics) == ["not 3", "3"]
    assert np.asarray(r.metrics["confusion_matrix"]).shape == (2, 2)
    assert "not 3" in r.confusion_text
    w, h = check_png(tmp_path / "rep" / "confusion.png")
    assert w < 700 and h < 700  # sized for two classes, not ten
    check_png(tmp_path / "rep" / "errors.png", min_bytes=2000)
    check_html(tmp_path / "rep" / "report.html")


def test_unlabelled_report(run, tmp_path):
    x, _ = synthetic_digits(300, seed=5)
    with StoreWriter(tmp_path / "u.zarr", source={}, chunk_size=256) as w:
        w.append(x, np.full(300, UNKNOWN_LABEL, np.int8), [f"scan/{i}.png" for i in range(300)])
        w.finish()
    score(tmp_path / "u.zarr", model=run / "m", out=tmp_path / "p.zarr", scheduler="synchronous")
    r = write_report(tmp_path / "p.zarr", out=tmp_path / "rep", top_k=K)
    assert set(r.files) == {"doubtful", "drift", "html", "review_csv", "review_html"}
    assert r.confusion_text == ""
    check_png(tmp_path / "rep" / "doubtful.png")
    page = check_html(tmp_path / "rep" / "report.html")
    assert "none labelled" in " ".join(page.text)
    assert "probability" in " ".join(page.text)  # margin kind: the model gives probabilities


def test_archive_run_reads_images_from_the_archive(run, tmp_path):
    """An image folder scored directly: labels from the output, pixels decoded by key."""
    from PIL import Image

    x, y = synthetic_digits(30, seed=7)
    shown = (y + np.isin(np.arange(30), [0, 1]).astype(np.int8)) % 10  # two wrong folders
    for i in range(30):
        (tmp_path / "imgs" / str(shown[i])).mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i]).save(tmp_path / "imgs" / str(shown[i]) / f"img{i:03d}.png")
    score(tmp_path / "imgs", model=run / "m", out=tmp_path / "p.zarr", scheduler="synchronous")
    r = write_report(tmp_path / "p.zarr", out=tmp_path / "rep", top_k=4)
    assert r.n_wrong == 2
    check_png(tmp_path / "rep" / "errors.png", min_side=100, min_bytes=2000)
    page = check_html(tmp_path / "rep" / "report.html")
    assert "archive (dir)" in " ".join(page.text)
    (tmp_path / "imgs" / "extra").mkdir()  # the folder changed since the run
    with pytest.raises(StoreError, match="not the archive"):
        write_report(tmp_path / "p.zarr", out=tmp_path / "rep", top_k=4)


def test_moved_store_needs_store_option(run, tmp_path):
    moved = tmp_path / "moved.zarr"
    shutil.copytree(run / "s.zarr", moved)
    pred = tmp_path / "p.zarr"
    shutil.copytree(run / "p.zarr", pred)
    (pred / "metrics.json").write_text((pred / "metrics.json").read_text().replace(
        str(run / "s.zarr"), str(tmp_path / "gone.zarr")))
    (pred / "_SUCCESS").write_text((pred / "metrics.json").read_text())
    with pytest.raises(StoreNotFoundError, match="pass --store"):
        write_report(pred, out=tmp_path / "rep", top_k=K)
    r = write_report(pred, out=tmp_path / "rep", store=moved, top_k=4)
    assert "images read from" in Path(r.html).read_text()


def test_other_store_is_refused(run, tmp_path, small_store):
    with pytest.raises(StoreError, match="checksum"):
        write_report(run / "p.zarr", out=tmp_path / "rep", store=small_store)


def test_model_directory_gone_is_noted(run, tmp_path):
    pred = tmp_path / "p.zarr"
    shutil.copytree(run / "p.zarr", pred)
    for name in ("metrics.json", "_SUCCESS"):
        (pred / name).write_text((pred / name).read_text().replace(str(run / "m"), "/no/model"))
    r = write_report(pred, out=tmp_path / "rep", top_k=4)
    assert "no longer exists" in Path(r.html).read_text()


def test_incomplete_output_is_refused(run, tmp_path):
    pred = tmp_path / "p.zarr"
    shutil.copytree(run / "p.zarr", pred)
    (pred / "_SUCCESS").unlink()
    with pytest.raises(IncompleteOutputError, match="--resume"):
        write_report(pred, out=tmp_path / "rep")


def test_out_must_be_a_directory(run, tmp_path):
    (tmp_path / "f").write_text("")
    from digitbatch.errors import OutputPathError

    with pytest.raises(OutputPathError, match="is a file"):  # (fserrors.check_out, first)
        write_report(run / "p.zarr", out=tmp_path / "f")


@pytest.mark.parametrize("top_k", [0, 401, 2.5, True])
def test_bad_top_k(run, tmp_path, top_k):
    with pytest.raises(ReportError, match="top_k must be an integer from 1 to 400"):
        write_report(run / "p.zarr", out=tmp_path / "rep", top_k=top_k)


def test_cli_report_prints_the_confusion_matrix(run, tmp_path):
    r = CliRunner().invoke(main, ["report", str(run / "p.zarr"), "--out", str(tmp_path / "rep"),
                                  "--top", "4"])
    assert r.exit_code == 0, r.output
    assert "true\\pred" in r.output and "report.html" in r.output
    r = CliRunner().invoke(main, ["report", str(tmp_path / "none.zarr"), "--out", "x"])
    assert r.exit_code == 1 and "Traceback" not in r.output
