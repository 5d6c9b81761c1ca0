"""The review files of a report: ``review.csv`` and ``review.html``.

:func:`write_review` writes, into the report's directory, the N most
doubtful rows of a scoring output (the report's doubtful ranking, most
doubtful first) for a person to label:

``review.csv``
    columns ``key,pred,second,margin,label``: the image's key, the predicted
    class, the second choice (empty when the output cannot tell), the
    stored margin and the input's label (empty where unknown). It is the
    ``key,label`` form ``--labels`` reads (:mod:`digitbatch.sources.labels`
    ignores the other columns): fill or correct ``label`` and give the file
    to ``digitbatch subset STORE --labels review.csv`` (a scored store) or
    ``digitbatch ingest ARCHIVE --labels review.csv --only-labelled`` (an
    archive scored directly), then ``digitbatch train STORE --extra ...``.
    UTF-8 with a byte-order mark (so spreadsheet programs read it as
    UTF-8). Keys are untrusted text: a key starting with ``=``, ``+``,
    ``-``, ``@``, a tab, a carriage return, their full-width forms or ``'``
    is written with a ``'`` before it (:func:`~digitbatch.sources.labels.escape_key`),
    which ``--labels`` drops again when it reads the file.

``review.html``
    the same rows, each with its image, self-contained (images as data:
    URIs, a Content-Security-Policy that allows no script and no fetch),
    every string HTML-escaped.

A filled-in ``review.csv`` is never lost to the next report into the same
folder: ``review.html`` records the SHA-256 of the ``review.csv`` written
beside it, and :func:`check_unedited` (called on the report's folder before
anything is written) refuses to replace a ``review.csv`` that no longer
matches it.

The second choice comes from the output's ``second`` array when it has
one, else from the stored probabilities (the most probable class other
than the prediction), else it is left empty.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import html
import re
import shlex
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import gallery, storage
from .errors import ReportError
from .sources.labels import escape_key

log = logging.getLogger(__name__)

REVIEW_CSV = "review.csv"
REVIEW_HTML = "review.html"
COLUMNS = ("key", "pred", "second", "margin", "label")
DEFAULT_REVIEW = 200
MAX_REVIEW = 10_000
# Shown 3x, pixel for pixel: an upscaled PNG would cost 9x the page.
SCALE = 3


def check_review(n) -> int:
    """``n`` if it is a usable number of review rows (0 writes no review files)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= n <= MAX_REVIEW:
        raise ReportError(f"review must be an integer from 0 (no review files) to {MAX_REVIEW}, "
                          f"got {n!r}")
    return int(n)


@dataclass(frozen=True)
class ReviewRow:
    """One row of the review files."""

    row: int
    key: str
    pred: str
    second: str
    margin: float
    label: int  # the input's label, -1 where unknown
    wrong: bool = False  # labelled, and the prediction disagrees with the label

    def cells(self) -> list[str]:
        """The CSV cells, in :data:`COLUMNS` order (the key escaped)."""
        return [escape_key(self.key), escape_key(self.pred), escape_key(self.second),
                _number(self.margin), "" if self.label < 0 else str(self.label)]


def _number(x: float) -> str:
    """A margin as the shortest text that reads back to the same float32 (empty if not finite)."""
    x = np.float32(x)
    return np.format_float_positional(x, unique=True, trim="-") if np.isfinite(x) else ""


def class_name(value: int, names: list[str], digit: int | None) -> str:
    """A class value of the output as the report names it; empty when unknown (< 0)."""
    if value < 0:
        return ""
    if digit is not None:  # a detect-D model: 0 = not D, 1 = D
        return names[value] if value < len(names) else str(value)
    return str(value)


def second_choice(p, rows: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """The second most likely class of ``rows`` (-1 where the output cannot tell).

    From the output's ``second`` array when it has one, else from its stored
    probabilities (the most probable class other than ``pred``; ties go to
    the lower class), else all -1.
    """
    n = rows.size
    if n == 0:
        return np.zeros(0, np.int64)
    second = p.extra("second")  # (an output of version 2 on: the runner-up class)
    if second is not None:
        out = np.asarray(second.oindex[rows], np.int64)
        return np.where(pred < 0, -1, out)
    proba = p.proba
    if proba is None:
        return np.full(n, -1, np.int64)
    classes = np.asarray(p.metrics.get("classes") or range(proba.shape[1]), np.int64)
    probs = np.asarray(proba.oindex[rows], np.float64)
    col = np.searchsorted(classes, pred).clip(0, classes.size - 1)
    probs[np.arange(n), col] = -np.inf
    out = classes[np.argmax(probs, axis=1)]
    # an unscored row, or a row whose probabilities were not written, has no second choice
    unknown = (pred < 0) | ~np.isfinite(probs).any(axis=1) | (classes.size < 2)
    return np.where(unknown, -1, out)


def review_rows(p, inp, rows: np.ndarray, names: list[str], digit: int | None):
    """The review rows of output rows ``rows`` (in that order) and their images."""
    rows = np.asarray(rows, np.int64)
    order = np.argsort(rows, kind="stable")  # read in row order, keep the ranking
    images, labels, keys = inp.fetch(rows[order])
    back = np.argsort(order)
    images, labels, keys = images[back], np.asarray(labels)[back], [keys[i] for i in back]
    if rows.size:
        pred = np.asarray(p.pred.oindex[rows], np.int64)
        margin = np.asarray(p.margin.oindex[rows], np.float64)
    else:
        pred = margin = np.zeros(0)
    second = second_choice(p, rows, pred)
    labels = np.asarray(labels, np.int64)
    truth = labels if digit is None else (labels == digit).astype(np.int64)  # the model's target
    wrong = (labels >= 0) & (truth != pred)
    out = [ReviewRow(int(r), str(keys[i]), class_name(int(pred[i]), names, digit),
                     class_name(int(second[i]), names, digit), float(margin[i]),
                     int(labels[i]), bool(wrong[i]))
           for i, r in enumerate(rows.tolist())]
    return out, images


def csv_text(rows: list[ReviewRow]) -> str:
    """``review.csv``'s text (without its byte-order mark)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow(r.cells())
    return buf.getvalue()


def _png(image: np.ndarray) -> str:
    """A 28x28 digit as a data: URI (dark ink on white, as the galleries draw it)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(255 - np.asarray(image, np.uint8), mode="L").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d1d1f;
       max-width: 1100px; margin: 2em auto; padding: 0 1.2em; }
table { border-collapse: collapse; font-size: .93em; }
th, td { border: 1px solid #ddd; padding: .2em .6em; text-align: left; vertical-align: middle; }
thead th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.key { word-break: break-all; max-width: 28em; } code { background: #f3f3f3; padding: 0 .2em; }
img { image-rendering: pixelated; width: %dpx; height: %dpx; display: block; }
tr.differs td { background: #fff0f0; }
""" % (28 * SCALE, 28 * SCALE)

_SHA_META = "digitbatch-review-csv-sha256"
_SHA_RE = re.compile(rb'<meta name="' + _SHA_META.encode() + rb'" content="([0-9a-f]{64})">')

# No script, no fetch: only the page's own style and data: images.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def next_steps(input_path: str, input_kind: str, csv_path: str) -> list[str]:
    """The commands that turn the filled-in review file into training rows (shell-quoted)."""
    q = shlex.quote
    if str(input_kind).startswith("archive"):
        first = (f"digitbatch ingest {q(input_path)} --labels {q(csv_path)} --only-labelled "
                 f"--out fixes.zarr")
    else:
        first = f"digitbatch subset {q(input_path)} --labels {q(csv_path)} --out fixes.zarr"
    return [first, "digitbatch train TRAIN.zarr --extra fixes.zarr --out MODEL2"]


def html_text(rows: list[ReviewRow], images: np.ndarray, *, pred_path: str, input_path: str,
              margin_kind: str, n_scored: int, csv_sha256: str = "",
              steps: list[str] = ()) -> str:
    """``review.html``'s text: every string escaped, every image embedded."""
    e = html.escape
    body = []
    for rank, (r, img) in enumerate(zip(rows, images), start=1):
        key = e(gallery.printable(r.key))
        differs = " class=differs" if r.wrong else ""
        body.append(
            f"<tr{differs}><td class=num>{rank}</td><td class=num>{r.row}</td>"
            f"<td><img alt=\"row {r.row}\" src=\"{_png(img)}\"></td><td class=key>{key}</td>"
            f"<td>{e(r.pred)}</td><td>{e(r.second)}</td>"
            f"<td class=num>{e(_number(r.margin))}</td>"
            f"<td>{'' if r.label < 0 else r.label}</td></tr>")
    table = ("<table><thead><tr><th>rank</th><th>row</th><th>image</th><th>key</th><th>pred</th>"
             "<th>second</th><th>margin</th><th>label</th></tr></thead><tbody>"
             + "".join(body) + "</tbody></table>") if rows else "<p>No scored rows.</p>"
    how = ("<p>Fill or correct the <code>label</code> column of <code>review.csv</code> "
           "(a digit 0-9; leave it empty when unsure; rows whose label disagrees with the "
           "prediction are shaded), then turn the labelled rows into a store and add it to the "
           "training rows (TRAIN.zarr: the model's training store):</p>"
           f"<pre>{e(chr(10).join(steps))}</pre>")
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">"
            f"<meta name=\"{_SHA_META}\" content=\"{e(csv_sha256)}\">"
            f"<title>digitbatch review: {e(Path(pred_path).name)}</title>"
            f"<style>{CSS}</style></head><body>\n"
            f"<h1>Rows to review</h1><p>The {len(rows):,} least certain of {n_scored:,} scored "
            f"rows of {e(pred_path)} (input {e(input_path)}), lowest {e(margin_kind)} margin "
            f"first.</p>\n{how}\n{table}\n</body></html>\n")


def write_review(p, inp, rows: np.ndarray, names: list[str], digit: int | None, out: Path, *,
                 n_scored: int, final: Path | None = None) -> dict[str, Path]:
    """Write ``review.csv`` and ``review.html`` of ranked output ``rows`` into directory ``out``
    (``final``: the folder it will be swapped into, which the page's commands name)."""
    out = Path(out)
    final = out if final is None else Path(final)
    items, images = review_rows(p, inp, rows, names, digit)
    csv_path, html_path = out / REVIEW_CSV, out / REVIEW_HTML
    data = ("\ufeff" + csv_text(items)).encode("utf-8")
    storage.write_atomic(csv_path, data)
    kind = "probability" if p.metrics.get("margin") == "probability" else "decision-value"
    storage.write_atomic(html_path, html_text(
        items, images, pred_path=str(p.path), input_path=str(inp.path), margin_kind=kind,
        n_scored=n_scored, csv_sha256=hashlib.sha256(data).hexdigest(),
        steps=next_steps(str(inp.path), (p.metrics.get("input") or {}).get("kind", "store"),
                         str(final / REVIEW_CSV))))
    log.info("wrote the %d most doubtful rows, for review, to %s and %s", len(items), csv_path,
             html_path)
    return {"review_csv": csv_path, "review_html": html_path}


def _edited(out: Path) -> bool:
    """Whether ``out/review.csv`` differs from the one the report wrote there (or cannot be
    matched to it)."""
    csv_path, html_path = out / REVIEW_CSV, out / REVIEW_HTML
    try:
        page = html_path.read_bytes()[:8192]
    except OSError:
        return True
    m = _SHA_RE.search(page)
    return m is None or hashlib.sha256(csv_path.read_bytes()).hexdigest() != m.group(1).decode()


def check_unedited(out: str | Path, *, review: int) -> None:
    """Refuse to write a report into ``out`` whose ``review.csv`` a person has changed
    (its labels would be lost). With ``review`` 0 the changed file is carried into
    the new report folder instead (:func:`kept_files`); review files nobody changed
    go with the old folder when the new one is swapped in."""
    out = storage.to_path(out)
    csv_path = out / REVIEW_CSV
    if not storage.is_local(out) or not csv_path.is_file():
        return
    if _edited(out) and review:
        raise ReportError(
            f"{csv_path} has been changed since the report wrote it (labels filled in?): "
            f"the report would replace it. Move it out of {out} (or write the report "
            f"into another --out) first")


def kept_files(old: Path, *, review: int) -> list[str]:
    """Files of the old report folder ``old`` to carry into the new one: a
    ``review.csv`` a person changed, when this report writes no review."""
    csv_path = old / REVIEW_CSV
    if review or not storage.is_local(old) or not csv_path.is_file() or not _edited(old):
        return []
    log.warning("keeping %s (changed since the report wrote it) beside the new report", csv_path)
    return [REVIEW_CSV]
