"""The report's calibration and training-rows parts: a reliability diagram, the ECE,
and the note that says what the headline accuracy counts.

Reads only what ``metrics.json`` holds (its ``calibration`` block, made by
:mod:`digitbatch.calibration`, and its ``training_rows`` block, made by
:mod:`digitbatch.scoring.seen`); :mod:`digitbatch.report` calls
:func:`draw` and :func:`html_parts`.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from . import gallery

DPI = 100


def draw_reliability(block: dict, out: str | Path, *, title: str) -> Path:
    """A reliability diagram: accuracy against mean confidence per bin of the top
    probability, the diagonal of perfect calibration, and the rows per bin below."""
    plt = gallery.pyplot()
    from matplotlib.ticker import FuncFormatter, NullFormatter

    n = np.asarray(block["count"], np.float64)
    k = int(block["n_bins"])
    edges = np.asarray(block["bin_edges"], np.float64)
    centers = (edges[:-1] + edges[1:]) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(n > 0, np.asarray(block["n_correct"]) / n, np.nan)
        conf = np.where(n > 0, np.asarray(block["confidence_sum"]) / n, np.nan)
    with gallery.literal_text():
        fig, (ax, axn) = plt.subplots(2, 1, figsize=(5.2, 6.0), dpi=DPI, sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1]})
        try:
            w = 1.0 / k
            ax.bar(centers, np.nan_to_num(acc), width=w * 0.95, color="#4c72b0",
                   label="accuracy of the bin's rows")
            ax.plot(conf, acc, "o", color="#dd8452", ms=4, label="mean confidence, accuracy")
            ax.plot([0, 1], [0, 1], "--", color="#555555", lw=1, label="perfect calibration")
            ax.set_ylim(0, 1)
            ax.set_xlim(0, 1)
            ax.set_ylabel("accuracy")
            ax.legend(loc="upper left", fontsize=8)
            ax.set_title(title, fontsize=10)
            axn.bar(centers, n, width=w * 0.95, color="#8c8c8c")
            axn.set_yscale("symlog")
            # (plain numbers: text is drawn literally, so no mathtext powers of ten)
            axn.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
            axn.yaxis.set_minor_formatter(NullFormatter())
            axn.set_ylabel("rows")
            axn.set_xlabel("top probability (confidence)")
            fig.tight_layout()
            fig.savefig(out)
        finally:
            plt.close(fig)
    return Path(out)


def draw(metrics: dict, out: Path) -> dict[str, Path]:
    """``reliability.png`` when the run has a calibration block (labelled rows and a
    calibrated model), else nothing."""
    block = metrics.get("calibration")
    if not block:
        return {}
    name = (metrics.get("model") or {}).get("name", "model")
    return {"reliability": draw_reliability(
        block, out / "reliability.png",
        title=f"{name}: ECE {100 * block['ece']:.2f} points on {block['n_rows']:,} rows")}


def headline_note(metrics: dict) -> str:
    """What the headline accuracy counts when the input is the model's training store
    (HTML, escaped), or an empty string."""
    t = metrics.get("training_rows")
    if not t:
        return ""
    acc = t.get("accuracy")
    rows = t.get("rows") or ["?", "?"]
    head = metrics.get("headline") or {}
    every = metrics.get("accuracy")
    return ("<p class=note>The input is the model's own training store: the headline counts "
            f"only the {head.get('n_labeled', 0):,} labelled rows it was not trained on. "
            f"Its {t.get('n_labeled', 0):,} training rows (rows {html.escape(str(rows[0]))}-"
            f"{html.escape(str(rows[1]))}) score "
            f"{'n/a' if acc is None else format(acc, '.4f')} apart, and their mistakes are "
            "not shown: they are no evidence of the model's accuracy. The confusion matrix "
            "and per-class figures count every labelled row (accuracy "
            f"{'n/a' if every is None else format(every, '.4f')}).</p>")


def html_parts(metrics: dict, files: dict, img) -> list[str]:
    """The report's calibration section; ``img(path, alt)`` embeds a figure."""
    block = metrics.get("calibration")
    if not block:
        if metrics.get("n_labeled") and metrics.get("margin") != "probability":
            return ["<h2>Calibration</h2>", "<p>The model gives no probabilities (trained "
                    "before calibration existed): retrain it for calibrated ones.</p>"]
        return []
    parts = ["<h2>Calibration</h2>",
             f"<p>Expected calibration error <b>{100 * block['ece']:.2f} points</b> over "
             f"{block['n_rows']:,} labelled rows in {block['n_bins']} bins of the top "
             "probability: the rows' share-weighted mean gap between a bin's accuracy and "
             "its mean confidence. Bars on the diagonal are calibrated; below it the model is "
             "overconfident.</p>"]
    if "reliability" in files:
        parts.append(img(files["reliability"], "reliability diagram"))
    return parts
