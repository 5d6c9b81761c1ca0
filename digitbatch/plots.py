"""Drawing digits as the walk-through does (matplotlib, binary colour map), and histograms.

:func:`show_digit` draws one row; :func:`show_grid` a page of them: the
rows from an index on, or the first rows of one class (found by scanning
the labels a chunk at a time, so a large store is never read whole).
:func:`draw_histogram_pairs` draws histograms beside their reference (the
report's drift section).
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from . import fserrors, gallery
from .errors import StoreError
from .layout import UNKNOWN_LABEL, open_store

log = logging.getLogger(__name__)


# A page of more digits than this is unreadable on a screen.
MAX_GRID = 400


def _pyplot():
    return gallery.pyplot()


@contextlib.contextmanager
def _written_whole(out: str | Path) -> Iterator[Path]:
    """A temporary name beside ``out`` (same suffix: it picks the format) renamed to
    ``out`` once written; its missing parent folders are created, as every command does."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}{out.suffix}"
    try:
        yield tmp
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


@fserrors.boundary(kept="Nothing was written (an existing file at --out is kept)", folder=False)
def show_digit(store: str | Path, *, index: int, out: str | Path) -> dict:
    """Draw row ``index`` of ``store`` (28x28, binary cmap, nearest, no axes) to ``out``."""
    s = open_store(store)
    index = _check_index(s, index)
    image = s.images[index]
    label = int(s.labels[index])
    key = str(s.keys[index])
    plt = _pyplot()
    with gallery.literal_text():  # the key is drawn as it is, never as mathtext
        fig, ax = plt.subplots(figsize=(3, 3.3), dpi=100)
        ax.imshow(image, cmap="binary", interpolation="nearest")
        ax.axis("off")
        shown = "?" if label == UNKNOWN_LABEL else str(label)
        ax.set_title(f"row {index}: label {shown}\n{gallery.printable(key)}", fontsize=8)
        fig.tight_layout()
        try:
            with _written_whole(out) as tmp:
                fig.savefig(tmp)
        finally:
            plt.close(fig)
    log.info("drew row %d of %s to %s", index, s.path, out)
    return {"index": index, "label": None if label == UNKNOWN_LABEL else label, "key": key,
            "out": str(out)}


def _check_index(s, index) -> int:
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
        raise StoreError(f"index must be an integer, got {index!r}")
    if not -s.n <= index < s.n:
        raise StoreError(f"index {index} is outside the store's rows 0..{s.n - 1}")
    return int(index) % s.n


def grid_rows(s, *, index: int, label: int | None, count: int) -> np.ndarray:
    """The rows a grid shows: ``count`` rows from ``index`` on, only of ``label`` if given."""
    if label is None:
        return np.arange(index, min(index + count, s.n))
    found: list[np.ndarray] = []
    have = 0
    for start, stop in s.chunks:
        if stop <= index:
            continue
        a = max(start, index)
        hits = np.flatnonzero(s.labels[a:stop] == label) + a
        found.append(hits[: count - have])
        have += len(found[-1])
        if have >= count:
            break
    return np.concatenate(found) if found else np.zeros(0, np.int64)


@fserrors.boundary(kept="Nothing was written (an existing file at --out is kept)", folder=False)
def show_grid(store: str | Path, *, out: str | Path, index: int = 0, label: int | None = None,
              count: int = 100) -> dict:
    """Draw a page of digits of ``store`` to ``out``, each titled with row, label and key.

    Parameters
    ----------
    store : path
    out : PNG path
    index : first row considered
    label : only rows with this label (0-9, or -1 for unlabelled rows); all rows if None
    count : digits on the page, 1 to ``MAX_GRID``
    """
    s = open_store(store)
    index = _check_index(s, index)
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) \
            or not 1 <= count <= MAX_GRID:
        raise StoreError(f"count must be an integer from 1 to {MAX_GRID}, got {count!r}")
    if label is not None and (isinstance(label, bool) or not isinstance(label, (int, np.integer))
                              or label not in (UNKNOWN_LABEL, *range(10))):
        raise StoreError(f"label must be 0-9 or {UNKNOWN_LABEL} (unlabelled), got {label!r}")
    rows = grid_rows(s, index=index, label=label, count=int(count))
    if rows.size == 0:
        raise StoreError(f"store {s.path} has no rows labelled {label} from row {index} on")
    images, labels, keys = gallery.fetch_rows(s.images, s.labels, s.keys, rows)
    titles = [f"row {r}: {'?' if lab == UNKNOWN_LABEL else int(lab)}\n{gallery.short_key(k)}"
              for r, lab, k in zip(rows.tolist(), labels.tolist(), keys)]
    if label is None:
        heading = f"{gallery.printable(s.path.name)}: rows {rows[0]}-{rows[-1]}"
    else:
        what = "unlabelled rows" if label == UNKNOWN_LABEL else f"rows labelled {label}"
        heading = (f"{gallery.printable(s.path.name)}: the first {len(rows)} {what} "
                   f"from row {index}")
    with _written_whole(out) as tmp:
        gallery.draw_gallery(images, titles, tmp, title=heading)
    log.info("drew %d rows of %s to %s", len(rows), s.path, out)
    return {"rows": int(len(rows)), "first": int(rows[0]), "last": int(rows[-1]),
            "label": label, "out": str(out)}


def draw_histogram_pairs(panels: list[dict], out: str | Path, *, title: str = "") -> Path:
    """Histograms side by side, one panel each: ``current`` beside ``reference``.

    Each panel is a dict: ``title``, ``labels`` (one per bin), ``current`` and
    ``reference`` (counts, drawn as shares of their totals; ``reference`` may
    be None). Written as a PNG to ``out``.
    """
    plt = _pyplot()
    n = len(panels)
    cols = 2 if n > 1 else 1
    rows = (n + cols - 1) // cols
    with gallery.literal_text():
        fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 2.9 * rows), dpi=100,
                                 squeeze=False)
        for ax, panel in zip(axes.ravel(), panels):
            cur = np.asarray(panel["current"], np.float64)
            x = np.arange(cur.size)
            ref = panel.get("reference")
            width = 0.42 if ref is not None else 0.8
            ax.bar(x - (width / 2 if ref is not None else 0), cur / max(cur.sum(), 1), width,
                   color="#1f77b4", label="tonight")
            if ref is not None:
                ref = np.asarray(ref, np.float64)
                ax.bar(x + width / 2, ref / max(ref.sum(), 1), width, color="#aaaaaa",
                       label="reference")
            labels = list(panel["labels"])
            step = max(1, len(labels) // 10)
            ax.set_xticks(x[::step], [str(v) for v in labels[::step]], fontsize=7)
            ax.set_ylabel("share of rows", fontsize=8)
            ax.set_title(panel["title"], fontsize=9)
            ax.legend(fontsize=7)
        for ax in axes.ravel()[n:]:
            ax.axis("off")
        if title:
            fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        try:
            fig.savefig(out)
        finally:
            plt.close(fig)
    return Path(out)
