"""Pages of digits and the report's charts (matplotlib, Agg backend).

The drawing functions take plain numpy arrays and strings and write one PNG;
they know nothing of stores or predictions, so :mod:`digitbatch.plots` (the
``show --grid`` page) and :mod:`digitbatch.report` share them.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .digits import IMAGE_SHAPE

log = logging.getLogger(__name__)

# Inches: the width of a gallery panel (its image is square) and the page heading.
PANEL_W = 1.35
HEADER_IN = 0.45
TITLE_FONT = 7
MAX_COLS = 12
DPI = 100


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display is ever needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _literal(draw):
    """Run a drawing function inside :func:`literal_text`."""
    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        with literal_text():
            return draw(*args, **kwargs)
    return wrapper


@contextlib.contextmanager
def literal_text():
    """Every text drawn inside is drawn literally.

    Keys, file names and model names come from users' archives: ``$x^$`` in
    one would be parsed as mathtext (a ``ParseFatalException`` at save) and,
    with a user's ``text.usetex``, handed to LaTeX. Text objects take these
    settings when they are made, and the figure is saved inside too.
    """
    import matplotlib

    with matplotlib.rc_context({"text.usetex": False, "text.parse_math": False}):
        yield


def printable(text: str) -> str:
    """``text`` with its control characters (newlines, tabs, escapes) shown as
    ``\\n``-style escapes, so an untrusted string is one line, drawn as it is."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


def short_key(key: str, width: int = 24) -> str:
    """``key`` cut to ``width`` characters, keeping its end (the file name), on
    one line (:func:`printable`)."""
    key = printable(key)
    return key if len(key) <= width else "\u2026" + key[-(width - 1):]


def fetch_rows(images, labels, keys, rows: Sequence[int]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images, labels and keys of a few ``rows`` of Zarr arrays, read by orthogonal index."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return np.zeros((0, *IMAGE_SHAPE), np.uint8), np.zeros(0, np.int8), []
    return (np.asarray(images.oindex[rows]), np.asarray(labels.oindex[rows]),
            [str(k) for k in keys.oindex[rows]])


@_literal
def draw_gallery(images: np.ndarray, titles: Sequence[str], out: str | Path, *, title: str,
                 colors: Sequence[str] | None = None, ncols: int | None = None,
                 empty_text: str = "nothing to show") -> Path:
    """A page of digits (binary cmap, nearest, no axes), one title per panel, to ``out``.

    Parameters
    ----------
    images : (n, 28, 28) uint8
    titles : n strings, a few short lines each
    out : PNG path
    title : the page's heading
    colors : optional colour per panel title (e.g. red for mistakes)
    ncols : panels a row (default: about square, at most 12)
    empty_text : written on the page when ``images`` is empty
    """
    plt = pyplot()
    images = np.asarray(images)
    n = int(images.shape[0])
    if len(titles) != n:
        raise ValueError(f"got {n} images but {len(titles)} titles")
    if n == 0:
        fig = plt.figure(figsize=(6, 1.6), dpi=DPI)
        fig.text(0.5, 0.7, title, ha="center", va="center", fontsize=11, weight="bold")
        fig.text(0.5, 0.35, empty_text, ha="center", va="center", fontsize=10, color="0.3")
        try:
            fig.savefig(out)
        finally:
            plt.close(fig)
        return Path(out)
    ncols = max(1, min(n, ncols or min(MAX_COLS, math.ceil(math.sqrt(n)))))
    nrows = math.ceil(n / ncols)
    # Placed by hand in inches (tight/constrained layout costs seconds at 100 panels):
    # each panel is its title lines over a square image.
    lines = max(str(t).count("\n") + 1 for t in titles)
    title_in = lines * TITLE_FONT * 1.22 / 72 + 0.06
    cell_h = PANEL_W + title_in
    # about 0.09 in a character of the 11 pt bold heading
    heading_lines = title.split("\n")
    width = max(ncols * PANEL_W, 4.5, 0.09 * max(map(len, heading_lines)) + 0.4)
    header = HEADER_IN + 0.2 * (len(heading_lines) - 1)
    height = header + nrows * cell_h + 0.05
    fig = plt.figure(figsize=(width, height), dpi=DPI)
    fig.text(0.5, 1 - 0.1 / height, title, ha="center", va="top", fontsize=11, weight="bold")
    x0 = (width - ncols * PANEL_W) / 2
    side = PANEL_W - 0.1
    for i in range(n):
        r, c = divmod(i, ncols)
        top = header + r * cell_h + title_in
        ax = fig.add_axes(((x0 + c * PANEL_W + 0.05) / width, 1 - (top + side) / height,
                           side / width, side / height))
        ax.axis("off")
        ax.imshow(images[i], cmap="binary", interpolation="nearest", vmin=0, vmax=255)
        ax.set_title(titles[i], fontsize=TITLE_FONT, color=(colors[i] if colors else "black"),
                     linespacing=1.15, pad=2)
    try:
        fig.savefig(out)
    finally:
        plt.close(fig)
    log.debug("drew %d digits to %s", n, out)
    return Path(out)


@_literal
def draw_confusion(cm: np.ndarray, names: Sequence[str], out: str | Path, *, title: str) -> Path:
    """Heatmap of ``cm`` (rows true, columns predicted): counts in the cells, row-normalised shading."""
    plt = pyplot()
    cm = np.asarray(cm, dtype=np.int64)
    k = cm.shape[0]
    rows = cm.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(rows > 0, cm / np.maximum(rows, 1), 0.0)
    side = 2.2 + 0.55 * k
    fig, ax = plt.subplots(figsize=(side + 1.2, side), dpi=DPI)
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("share of the true class's row", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    font = 10 if k <= 4 else (8 if cm.max(initial=0) < 10_000 else 6.5)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{cm[i, j]:,}", ha="center", va="center", fontsize=font,
                    color="white" if share[i, j] > 0.5 else "black",
                    weight="bold" if i == j else "normal")
    ax.set_xticks(range(k), names, fontsize=9)
    ax.set_yticks(range(k), names, fontsize=9)
    ax.set_xlabel("predicted", fontsize=10)
    ax.set_ylabel("true", fontsize=10)
    ax.set_title(title, fontsize=10)
    ax.tick_params(length=0)
    fig.tight_layout()
    try:
        fig.savefig(out)
    finally:
        plt.close(fig)
    return Path(out)


@_literal
def draw_per_class(per_class: dict, names: Sequence[str], out: str | Path, *, title: str) -> Path:
    """Grouped bars of precision, recall and F1 per class; support under each class name."""
    plt = pyplot()
    k = len(names)
    keys = [str(i) for i in range(k)]
    x = np.arange(k)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.0 + 0.75 * k), 3.8), dpi=DPI)
    w = 0.27
    for off, metric, color in ((-w, "precision", "#4c72b0"), (0.0, "recall", "#dd8452"),
                               (w, "f1", "#55a868")):
        vals = [per_class.get(c, {}).get(metric, 0.0) for c in keys]
        ax.bar(x + off, vals, width=w, label="F1" if metric == "f1" else metric, color=color)
    ax.set_xticks(x, [f"{n}\nn={per_class.get(c, {}).get('support', 0):,}"
                      for n, c in zip(names, keys)], fontsize=8)
    ax.set_ylim(0, 1.16)  # room for the legend above the bars
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("score", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(fontsize=8, ncols=3, loc="upper center", frameon=False)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    try:
        fig.savefig(out)
    finally:
        plt.close(fig)
    return Path(out)
