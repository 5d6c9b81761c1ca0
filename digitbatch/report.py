"""The report of a scoring output: figures and one self-contained HTML page.

:func:`write_report` reads ``PRED.zarr`` (see :mod:`digitbatch.scoring.output`)
and the input it was scored from (a store, or an image archive scored
directly), and writes into a directory::

    confusion.png   counts, row-normalised shading        (labelled rows only)
    per_class.png   precision / recall / F1 per class     (labelled rows only)
    errors.png      the most confident mistakes           (labelled rows only)
    doubtful.png    the lowest-margin predictions: what a person should check
    drift.png       tonight's histograms beside the model's reference (report_drift.py)
    report.html     all of it, images embedded as data: URIs, no external URL
    review.csv, review.html   the N most doubtful rows to label (:mod:`digitbatch.review`)

The galleries are chosen in one pass over the output a chunk at a time
(:class:`TopK`), so the predictions are never loaded whole.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import folderswap, fserrors, gallery, report_calibration, report_drift, storage
from .version import __version__
from .errors import ModelError, ReportError
from .layout import chunk_bounds
from .metrics import format_confusion
from .modelio import manifest_path, read_manifest
from .models import binary_target
from .report_input import ScoredInput, existing, open_input
from .review import DEFAULT_REVIEW, check_review, check_unedited, kept_files, write_review
from .scoring.output import PRED_FILL, Predictions, open_predictions

log = logging.getLogger(__name__)

DEFAULT_TOP_K = 36
MAX_TOP_K = 400
WRONG = "#b00020"
UNKNOWN = "#555555"


class TopK:
    """The ``k`` rows of largest (or smallest) score seen so far, fed a chunk at a time.

    Rows of equal score are ordered by ``tie`` (the decision-value gap: the
    margins of confident rows tie where both probabilities round to 1), in
    the same direction, then go to the lower row, so the result does not
    depend on the chunking; ``n_tied_out`` counts the rows left out that tie
    with the last one kept on both. Memory is ``k`` plus one chunk.
    """

    def __init__(self, k: int, *, largest: bool):
        self.k, self.largest = int(k), largest
        self.rows = np.zeros(0, np.int64)
        self.scores = np.zeros(0, np.float64)
        self.ties = np.zeros(0, np.float64)
        self.n_tied_out = 0

    def push(self, rows: np.ndarray, scores: np.ndarray, tie: np.ndarray | None = None) -> None:
        rows = np.asarray(rows, np.int64)
        scores = np.asarray(scores, np.float64)
        tie = np.zeros_like(scores) if tie is None else np.asarray(tie, np.float64)
        if rows.size == 0:
            return
        sign = -1.0 if self.largest else 1.0
        key = sign * scores
        if key.size > self.k:  # drop what cannot make it before sorting
            keep = key <= np.partition(key, self.k - 1)[self.k - 1]
            rows, scores, tie, key = rows[keep], scores[keep], tie[keep], key[keep]
        rows = np.concatenate([self.rows, rows])
        scores = np.concatenate([self.scores, scores])
        tie = np.concatenate([self.ties, tie])
        order = np.lexsort((rows, sign * tie, sign * scores))
        if order.size > self.k:
            # The threshold only tightens: rows dropped at an earlier, looser one cannot tie.
            last, last_tie = scores[order[self.k - 1]], tie[order[self.k - 1]]
            rest = order[self.k:]
            dropped = int(np.count_nonzero((scores[rest] == last) & (tie[rest] == last_tie)))
            same = (self.rows.size == self.k and self.scores[-1] == last
                    and self.ties[-1] == last_tie)
            self.n_tied_out = (self.n_tied_out if same else 0) + dropped
            order = order[: self.k]
        self.rows, self.scores, self.ties = rows[order], scores[order], tie[order]


@dataclass
class Selection:
    """What one pass over the output found: the galleries' rows and a count of mistakes."""

    errors: TopK
    doubtful: TopK
    n_wrong: int = 0
    n_scored: int = 0
    review: TopK | None = None  # the doubtful ranking's first ``review`` rows, for review.csv


def binary_digit(metrics: dict) -> int | None:
    """The digit of a detect-DIGIT run (target ``is-DIGIT``), else None."""
    target = str(metrics.get("target", "multiclass"))
    return int(target[3:]) if target.startswith("is-") else None


def class_names(metrics: dict) -> list[str]:
    """Display names of the classes: the digits, or ``not D`` / ``D`` for detect-D."""
    digit = binary_digit(metrics)
    if digit is not None:
        return [f"not {digit}", str(digit)]
    classes = metrics.get("classes") or range(len(metrics.get("confusion_matrix") or []) or 10)
    return [str(c) for c in classes]


def _target(labels: np.ndarray, digit: int | None) -> np.ndarray:
    """Store labels as the model's target (:func:`digitbatch.models.binary_target`)."""
    return binary_target(np.asarray(labels), digit).astype(np.int64)


def select_rows(p: Predictions, labels, *, k: int, digit: int | None,
                review: int = 0) -> Selection:
    """Top-``k`` confident mistakes and lowest margins, reading a chunk at a time.

    ``labels`` is the (N,) label array of the scored rows (a Zarr array is
    read a slice at a time). Margins that tie are ordered by the
    decision-value gap (an output of version 2 on). When the input is the
    model's training store, its training rows are no mistakes to show
    (metrics.json's ``training_rows``): they are left out of the mistakes.
    """
    pred_a, margin_a, gap_a = p.pred, p.margin, p.extra("gap")
    train = (p.metrics.get("training_rows") or {}).get("rows")
    sel = Selection(TopK(k, largest=True), TopK(k, largest=False),
                    review=TopK(review, largest=False) if review else None)
    for a, b in chunk_bounds(pred_a.shape[0], int(pred_a.chunks[0])):
        pred = pred_a[a:b].astype(np.int64)
        margin = margin_a[a:b]
        gap = gap_a[a:b] if gap_a is not None else np.zeros(b - a)
        y = _target(np.asarray(labels[a:b]), digit)
        rows = np.arange(a, b)
        scored = (pred != PRED_FILL) & np.isfinite(margin)
        wrong = scored & (y >= 0) & (pred != y)
        if train:
            wrong &= (rows < train[0]) | (rows >= train[1])
        sel.n_scored += int(scored.sum())
        sel.n_wrong += int(wrong.sum())
        sel.errors.push(rows[wrong], margin[wrong], gap[wrong])
        sel.doubtful.push(rows[scored], margin[scored], gap[scored])
        if sel.review is not None:  # (ranked as the doubtful gallery is)
            sel.review.push(rows[scored], margin[scored], gap[scored])
    return sel


def _model_summary(metrics: dict, beside: Path) -> tuple[list[tuple[str, str]], str]:
    """Rows describing the model (from its manifest when the directory still exists), and a note."""
    m = metrics.get("model") or {}
    rows = [("name", m.get("name", "?")), ("path", m.get("path", "?")),
            ("model.npz SHA-256", m.get("sha256", "?")), ("target", metrics.get("target", "?")),
            ("margin", metrics.get("margin", "?"))]
    mdir = existing(str(m.get("path", "")), beside)
    if not m.get("path") or not manifest_path(mdir).is_file():
        return rows, f"The model directory {m.get('path')} no longer exists: no manifest summary."
    try:
        man = read_manifest(mdir)
    except (OSError, ModelError) as exc:
        return rows, f"The model's manifest {manifest_path(mdir)} is unreadable ({exc})."
    train, cv, test = man.get("train") or {}, man.get("cv") or {}, man.get("test") or {}
    rows += [("features", man.get("features", "?")),
             ("train store", f"{train.get('store', '?')} ({train.get('n_rows', '?')} rows, "
                             f"split {train.get('split', '?')})"),
             ("seed", str(man.get("seed", "?"))),
             ("CV accuracy", f"{cv['mean']:.4f} \u00b1 {cv['std']:.4f} ({cv['k']} folds)"
              if cv.get("mean") is not None else "not run"),
             ("test accuracy", f"{test['accuracy']:.4f} on {test.get('n_labeled', '?')} rows"
              if test.get("accuracy") is not None else "no test rows"),
             ("scikit-learn", (man.get("versions") or {}).get("scikit-learn", "?"))]
    note = ""
    if man.get("model_sha256") != m.get("sha256"):
        note = (f"The model directory has changed since this run: its model.npz SHA-256 is now "
                f"{str(man.get('model_sha256'))[:16]}...")
    return rows, note


def _gallery_pages(p, inp: ScoredInput, sel, names, proba_kind, out: Path) -> dict[str, Path]:
    digit = binary_digit(p.metrics)

    def name(v: int) -> str:
        return "?" if v < 0 else (names[v] if v < len(names) else str(v))

    files = {}
    proba_a = p.proba
    for which, top in (("errors", sel.errors), ("doubtful", sel.doubtful)):
        if which == "errors" and not p.metrics.get("n_labeled"):
            continue
        rows = top.rows
        order = np.argsort(rows, kind="stable")  # read in row order, show in rank order
        images, labels, keys = inp.fetch(rows[order])
        back = np.argsort(order)
        images, labels, keys = images[back], labels[back], [keys[i] for i in back]
        y = _target(labels, digit)
        pred = np.asarray(p.pred.oindex[rows], np.int64) if rows.size else rows
        conf = None
        if proba_a is not None and rows.size:
            col = np.searchsorted(np.asarray(p.metrics.get("classes") or range(len(names))), pred)
            conf = np.asarray(proba_a.oindex[rows])[np.arange(rows.size), col]
        titles, colors = [], []
        for i, r in enumerate(rows.tolist()):
            strength = (f"p={conf[i]:.2f}, margin {top.scores[i]:.2f}" if conf is not None
                        else f"margin {top.scores[i]:.3g}")
            truth = f"true {name(int(y[i]))} \u2192 " if y[i] >= 0 else "unlabelled, "
            titles.append(f"row {r}\n{gallery.short_key(keys[i])}\n"
                          f"{truth}pred {name(int(pred[i]))}\n{strength}")
            colors.append(UNKNOWN if y[i] < 0 else (WRONG if y[i] != pred[i] else "black"))
        if which == "errors":
            heading = (f"The {rows.size} most confident mistakes (of {sel.n_wrong:,}), "
                       f"highest {proba_kind} margin first")
            empty = f"no mistakes among {p.metrics.get('n_labeled', 0):,} labelled rows"
        else:
            heading = f"The {rows.size} least certain predictions, lowest {proba_kind} margin first"
            empty = "no scored rows"
        if top.n_tied_out:
            heading += (f"\n({top.n_tied_out:,} more rows tie at margin {top.scores[-1]:.3g}: "
                        f"the first rows are shown)")
        files[which] = gallery.draw_gallery(images, titles, out / f"{which}.png", title=heading,
                                            colors=colors, empty_text=empty)
    return files


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(rows, header=None, numeric_from: int = 1) -> str:
    def cell(tag, i, v):
        cls = ' class="num"' if i >= numeric_from and header is not None else ""
        return f"<{tag}{cls}>{html.escape(str(v))}</{tag}>"

    head = ("<thead><tr>" + "".join(cell("th", i, h) for i, h in enumerate(header))
            + "</tr></thead>") if header else ""
    body = "".join("<tr>" + "".join(cell("th" if i == 0 and header is None else "td", i, v)
                                    for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table>{head}<tbody>{body}</tbody></table>"


CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d1d1f;
       max-width: 1100px; margin: 2em auto; padding: 0 1.2em; background: #fff; }
h1 { font-size: 1.6em; margin-bottom: .1em; } h2 { border-bottom: 1px solid #ddd; margin-top: 1.8em; }
.sub { color: #666; margin-top: 0; } .note { background: #fff6e0; padding: .5em .8em; }
.headline { font-size: 1.25em; margin: 1em 0; } .headline b { font-size: 1.3em; }
table { border-collapse: collapse; margin: .6em 0; font-size: .93em; }
th, td { border: 1px solid #ddd; padding: .25em .7em; text-align: left; vertical-align: top; }
thead th { background: #f3f3f3; } tbody th { background: #fafafa; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td { word-break: break-all; } img { max-width: 100%; height: auto; display: block; margin: .6em 0; }
pre { background: #f7f7f7; padding: .8em; overflow-x: auto; font-size: .85em; }
.grid2 { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
"""


def _fmt(v, spec=",") -> str:
    return "n/a" if v is None else format(v, spec)


def _html(p, inp, store_override, m, names, files, sel, model_rows, model_note, confusion_text,
          report_seconds) -> str:
    e = html.escape
    head = m.get("headline") or m  # (the unseen rows only, of a model's training store)
    acc = head.get("accuracy")
    headline = (f"accuracy <b>{acc:.4f}</b> on {head['n_labeled']:,} labelled images "
                f"({sel.n_wrong:,} wrong) of {m.get('n_images', 0):,} scored"
                if acc is not None else
                f"<b>{m.get('n_images', 0):,}</b> images scored; none labelled, so no accuracy")
    given = m.get("input") or {}
    inputs = [("predictions", str(p.path)), ("input", given.get("path", "?")),
              ("input kind", given.get("kind", "store")),
              ("input checksum", given.get("checksum", "?")),
              ("images", _fmt(m.get("n_images"))), ("labelled", _fmt(m.get("n_labeled"))),
              ("unlabelled", _fmt(m.get("n_unlabeled"))),
              ("rejected at ingest", _fmt(m.get("n_rejected")))]
    if store_override is not None:
        inputs.append(("images read from", str(inp.path)))
    hist = m.get("prediction_histogram") or []
    per = m.get("per_class") or {}
    cls_rows = [(names[i] if i < len(names) else i,
                 *((f"{per[str(i)]['precision']:.4f}", f"{per[str(i)]['recall']:.4f}",
                    f"{per[str(i)]['f1']:.4f}", f"{per[str(i)]['support']:,}")
                   if m.get("n_labeled") and str(i) in per else ("", "", "", "")),
                 f"{hist[i]:,}" if i < len(hist) else "") for i in range(len(names))]
    metrics_rows = [("accuracy", "n/a" if acc is None else f"{acc:.4f}"),
                    ("labelled rows", _fmt(head.get("n_labeled"))), ("mistakes", f"{sel.n_wrong:,}"),
                    ("classes", ", ".join(names)), ("target", m.get("target", "?"))]
    timing = [("scoring time", f"{m.get('seconds', 0):.2f} s"),
              ("images / s", _fmt(m.get("images_per_second"), ",.0f")),
              ("scored in the last run", _fmt(m.get("n_scored_this_run"))),
              ("resumed", "yes" if m.get("resumed") else "no"),
              ("report written in", f"{report_seconds:.2f} s")]
    parts = [f"<h1>digitbatch report</h1><p class=sub>{e(str(p.path))} &middot; written "
             f"{_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')} by digitbatch "
             f"{e(__version__)}</p>", f"<p class=headline>{headline}</p>",
             report_calibration.headline_note(m),
             "<h2>Inputs</h2>", _table(inputs), "<h2>Model</h2>", _table(model_rows)]
    if model_note:
        parts.append(f"<p class=note>{e(model_note)}</p>")
    parts += ["<h2>Metrics</h2>", _table(metrics_rows), "<h3>Per class</h3>",
              _table(cls_rows, ["class", "precision", "recall", "F1", "support", "predicted"])]
    if "per_class" in files:
        parts.append(_img(files["per_class"], "precision, recall and F1 per class"))
    if "confusion" in files:
        parts += ["<h2>Confusion matrix</h2>",
                  "<p>Rows are the true class, columns the prediction; shading is the share of "
                  "the row.</p>", _img(files["confusion"], "confusion matrix"),
                  f"<pre>{e(confusion_text)}</pre>"]
    if "errors" in files:
        parts += ["<h2>Most confident mistakes</h2>",
                  "<p>Wrong predictions the model was surest of: often mislabelled images, or "
                  "digits the model systematically confuses.</p>",
                  _img(files["errors"], "most confident mistakes")]
    parts += ["<h2>Doubtful predictions</h2>",
              "<p>The predictions with the smallest margin between the top two classes: the "
              "images a person should check by hand. Red titles are wrong, grey unlabelled.</p>",
              _img(files["doubtful"], "lowest-margin predictions"),
              report_drift.section(m, files),
              *([f"<p>The {sel.review.rows.size:,} most doubtful rows, with their images, are "
                 f"in review.html beside this page; fill the label column of review.csv and "
                 f"add it to training (see review.html).</p>"] if "review_csv" in files else []),
              *report_calibration.html_parts(m, files, _img),
              "<h2>Timings</h2>", _table(timing)]
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            f"<title>digitbatch report: {e(p.path.name)}</title><style>{CSS}</style></head>"
            "<body>\n" + "\n".join(parts) + "\n</body></html>\n")


@dataclass(frozen=True)
class ReportResult:
    out: str
    html: str
    files: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    confusion_text: str = ""
    n_wrong: int = 0
    seconds: float = 0.0


@fserrors.boundary(kept="A report already at --out is kept as it was")
def write_report(pred: str | os.PathLike, *, out: str | os.PathLike,
                 store: str | os.PathLike | None = None, top_k: int = DEFAULT_TOP_K,
                 review: int = DEFAULT_REVIEW) -> ReportResult:
    """Write the figures and ``report.html`` of scoring output ``pred`` into directory ``out``.

    Parameters
    ----------
    pred : path
        A complete scoring output (``digitbatch score --out``).
    out : path
        Directory to write: absent, empty or a report folder, replaced whole once the new
        report is complete (:func:`digitbatch.folderswap.swapped`); a kill leaves the old one.
    store : path, optional
        The run's input (a store, or the image archive/directory it scored
        directly), for the galleries' images; default: the path recorded in
        metrics.json. Its checksum (or archive fingerprint) must match the run's.
    top_k : int
        Digits in each gallery, 1 to ``MAX_TOP_K``.
    review : int
        Rows in ``review.csv`` and ``review.html`` (:mod:`digitbatch.review`),
        the most doubtful first; 0 writes neither.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) \
            or not 1 <= top_k <= MAX_TOP_K:
        raise ReportError(f"top_k must be an integer from 1 to {MAX_TOP_K}, got {top_k!r}")
    review = check_review(review)
    t0 = time.perf_counter()
    p = open_predictions(pred)
    m = p.metrics
    inp = open_input(p, store)
    final = Path(out)
    if final.exists() and not final.is_dir():
        raise ReportError(f"--out {final} is a file: give a directory for the report")
    check_unedited(final, review=review)  # (the final folder: a filled-in review.csv is kept)
    with folderswap.swapped(final, "report",  # (written whole, or not at all)
                            keep=lambda old: kept_files(old, review=review)) as out:
        files, confusion_text, sel = _write_files(p, inp, store, m, out, int(top_k), t0,
                                                  review, final)
    files = {k: final / Path(v).name for k, v in files.items()}
    seconds = time.perf_counter() - t0
    log.info("wrote the report of %s to %s in %.2f s", p.path, final, seconds)
    return ReportResult(str(final), str(files["html"]), {k: str(v) for k, v in files.items()},
                        m, confusion_text, sel.n_wrong, round(seconds, 3))


def _write_files(p, inp, store, m, out: Path, top_k: int, t0: float, review: int,
                 final: Path):
    """Every file of the report, into the (new, empty) folder ``out`` (to become ``final``)."""
    names = class_names(m)
    sel = select_rows(p, inp.labels, k=top_k, digit=binary_digit(m), review=review)
    files: dict[str, Path] = {}
    confusion_text = ""
    if m.get("n_labeled"):
        cm = np.asarray(m["confusion_matrix"], np.int64)
        confusion_text = format_confusion(cm, names)
        files["confusion"] = gallery.draw_confusion(
            cm, names, out / "confusion.png",
            title=f"{m.get('model', {}).get('name', 'model')}: accuracy {m['accuracy']:.4f} "
                  f"({int(np.trace(cm)):,} of {int(cm.sum()):,} labelled)")
        files["per_class"] = gallery.draw_per_class(
            m.get("per_class") or {}, names, out / "per_class.png",
            title="per class (n = true rows of the class)")
    kind = "probability" if m.get("margin") == "probability" else "decision-value"
    files.update(_gallery_pages(p, inp, sel, names, kind, out))
    files.update(report_calibration.draw(m, out))
    files.update(report_drift.figures(m, names, out))
    if sel.review is not None:
        files.update(write_review(p, inp, sel.review.rows, names, binary_digit(m), out,
                                  n_scored=sel.n_scored, final=final))
    model_rows, note = _model_summary(m, p.path.parent)
    page = _html(p, inp, store, m, names, files, sel, model_rows, note, confusion_text,
                 time.perf_counter() - t0)
    html_path = out / "report.html"
    storage.write_atomic(html_path, page)
    files["html"] = html_path
    return files, confusion_text, sel
