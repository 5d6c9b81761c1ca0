"""Run history: one row per scoring run, the runs whose figures are outliers, and its page.

:func:`history` is the one public entry (``digitbatch history RUNS...`` and
the ``history`` job step): it finds and reads the runs
(:mod:`digitbatch.history_read`), orders them by date, flags outliers
(:func:`flag_outliers`), and with ``out`` writes the trend plots and
``history.html`` (:mod:`digitbatch.history_html`). :func:`table_lines` is
the text table the command prints.

The outlier rule (also in the README and in ``--json``'s ``rule``): for each
run and each figure of :data:`FIGURES` the run recorded, the same figure of
the ``window`` runs before it (those that recorded it) gives a median and a
median absolute deviation (MAD); with at least ``min_history`` of them, the
run is an outlier on that figure when ``|x - median| / scale > threshold``,
where ``scale = max(1.4826 * MAD, floor)`` (1.4826 * MAD estimates the
standard deviation of normal noise; the floor keeps a history of identical
figures from calling any change an outlier: 5% of the median for images/s,
half a point for accuracies, 0.2 points for the reject rate, 0.02 for the
PSI). Defaults: ``window`` 30, ``min_history`` 3, ``threshold`` 3.5 (the
Iglewicz-Hoaglin cut-off). Median and MAD are not moved by an earlier outlier,
so one bad night does not hide the next.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
from dataclasses import dataclass, field

from .errors import HistoryError
from .gallery import printable
from .history_read import ROW_FIELDS, find_runs, read_rows, run_label

log = logging.getLogger(__name__)

HISTORY_VERSION = 1
DEFAULT_WINDOW = 30
DEFAULT_MIN_HISTORY = 3
DEFAULT_THRESHOLD = 3.5
MAD_TO_SIGMA = 1.4826
# figure -> (label, floor of the scale: ("relative", share of the median) or ("absolute", v))
FIGURES = {
    "images_per_second": ("images/s", ("relative", 0.05)),
    "accuracy": ("accuracy", ("absolute", 0.005)),
    "expected_accuracy": ("expected accuracy", ("absolute", 0.005)),
    "reject_rate": ("reject rate", ("absolute", 0.002)),
    "psi": ("drift PSI", ("absolute", 0.02)),
}


def _check(name: str, value, lo, *, integer: bool):
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not math.isfinite(value) or value < lo:
        raise HistoryError(f"{name} must be {'an integer' if integer else 'a number'} >= {lo}, "
                           f"got {value!r}")
    return value


def rule(window: int = DEFAULT_WINDOW, min_history: int = DEFAULT_MIN_HISTORY,
         threshold: float = DEFAULT_THRESHOLD) -> dict:
    """The outlier rule's settings, checked, as ``--json`` reports them."""
    _check("window", window, 1, integer=True)
    _check("min_history", min_history, 1, integer=True)
    _check("threshold", threshold, 0.1, integer=False)
    if min_history > window:
        raise HistoryError(f"min_history ({min_history}) cannot exceed window ({window}): "
                           f"raise the window or lower min_history")
    return {"method": "robust z: |x - median| / max(1.4826 * MAD, floor) > threshold, over the "
                      "previous runs", "window": window, "min_history": min_history,
            "threshold": float(threshold),
            "floors": {k: {"kind": f[0], "value": f[1]} for k, (_, f) in FIGURES.items()}}


def robust_score(x: float, previous: list[float], floor: tuple[str, float]) -> tuple[float, float,
                                                                                      float]:
    """(z, median, MAD) of ``x`` against ``previous``."""
    med = statistics.median(previous)
    mad = statistics.median(abs(v - med) for v in previous)
    kind, v = floor
    scale = max(MAD_TO_SIGMA * mad, v * abs(med) if kind == "relative" else v)
    if scale == 0:  # (a relative floor of a zero median: any change is a change)
        return (0.0 if x == med else float("inf") * (1 if x > med else -1)), med, mad
    return (x - med) / scale, med, mad


def flag_outliers(rows: list[dict], *, window: int = DEFAULT_WINDOW,
                  min_history: int = DEFAULT_MIN_HISTORY,
                  threshold: float = DEFAULT_THRESHOLD) -> None:
    """Set each row's ``flags`` (a list, in :data:`FIGURES` order): the figures on which
    it is an outlier against the runs before it. ``rows`` are in date order."""
    rule(window, min_history, threshold)
    for i, row in enumerate(rows):
        row["flags"] = []
        for fig, (label, floor) in FIGURES.items():
            x = row.get(fig)
            if x is None:
                continue
            previous = [r[fig] for r in rows[:i] if r.get(fig) is not None][-window:]
            if len(previous) < min_history:
                continue
            z, med, mad = robust_score(x, previous, floor)
            if abs(z) > threshold:
                row["flags"].append({
                    "figure": fig, "label": label, "value": x, "median": med, "mad": mad,
                    "z": round(z, 2) if abs(z) != float("inf") else None,
                    "direction": "high" if x > med else "low", "n_previous": len(previous)})


@dataclass(frozen=True)
class HistoryResult:
    """What :func:`history` found: rows in date order, each with its ``flags``."""

    rows: list
    skipped: list = field(default_factory=list)
    rule: dict = field(default_factory=dict)
    out: str | None = None
    html: str | None = None
    plots: dict = field(default_factory=dict)

    @property
    def n_flagged(self) -> int:
        return sum(1 for r in self.rows if r["flags"])

    def to_dict(self) -> dict:
        return {"history_version": HISTORY_VERSION, "n_runs": len(self.rows),
                "n_flagged": self.n_flagged, "rule": self.rule, "runs": self.rows,
                "skipped": self.skipped, "out": self.out, "html": self.html,
                "plots": self.plots}


def history(runs, *, out: str | os.PathLike | None = None, window: int = DEFAULT_WINDOW,
            min_history: int = DEFAULT_MIN_HISTORY,
            threshold: float = DEFAULT_THRESHOLD) -> HistoryResult:
    """The history of scoring runs.

    Parameters
    ----------
    runs : iterable of paths
        Run summaries (``NAME.run.json`` of ``digitbatch run``), finished
        scoring outputs (``PRED.zarr``) or folders holding them.
    out : path, optional
        A folder to write the trend plots and ``history.html`` into (created
        if missing, its history files replaced).
    window, min_history, threshold
        The outlier rule (module docstring).

    Raises
    ------
    HistoryError
        A path is not a run, nothing was found, an option is out of range,
        or ``out`` is a file.
    """
    runs = [runs] if isinstance(runs, (str, os.PathLike)) else list(runs)
    if not runs:
        raise HistoryError("no runs given: give run summaries, scoring outputs or folders")
    settings = rule(window, min_history, threshold)
    rows, skipped = read_rows(find_runs(runs))
    flag_outliers(rows, window=window, min_history=min_history, threshold=threshold)
    for s in skipped:
        log.warning("history: skipped %s: %s", s["path"], s["reason"])
    result = HistoryResult(rows, skipped, settings)
    log.info("history: %d runs, %d flagged", len(rows), result.n_flagged)
    if out is None:
        return result
    from .history_html import write_page

    html, plots = write_page(result.to_dict(), out)
    return HistoryResult(rows, skipped, settings, str(out), html, plots)


# --- the text table -------------------------------------------------------------


def _cut(text, width: int) -> str:
    text = "-" if text is None else printable(text)  # (no terminal escapes from a path)
    return text if len(text) <= width else "\u2026" + text[-(width - 1):]


def _num(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


COLUMNS = (("date", 16), ("run", 18), ("input", 24), ("images", 9), ("rejects", 7),
           ("accuracy", 9), ("psi", 6), ("drift", 6), ("images/s", 9), ("duration", 8),
           ("model", 12), ("flags", 0))


def _cells(r: dict) -> list[str]:
    acc = (_num(r["accuracy"], ".4f") if r["accuracy"] is not None else
           "~" + _num(r["expected_accuracy"], ".4f") if r["expected_accuracy"] is not None
           else "-")
    run = run_label(r)
    if r["outcome"] not in (None, "succeeded"):
        run = f"{run} ({r['outcome']})"
    flags = ", ".join(f"{f['label']} {f['direction']}" for f in r["flags"])
    return [(r["date"] or "-").replace("T", " ")[:16], run, r["input"], _num(r["n_images"], ","),
            _num(r["n_rejected"], ","), acc, _num(r["psi"], ".3f"), r["drift_status"] or "-",
            _num(r["images_per_second"], ",.0f"), _num(r["seconds"], ".1f"),
            (r["model_sha256"] or "-")[:12], ("! " + flags) if flags else ""]


def table_lines(result: dict) -> list[str]:
    """The history as text (``result``: :meth:`HistoryResult.to_dict`): a table, one line a
    run, then each outlier and its reason, and what was skipped."""
    header = [name for name, _ in COLUMNS]
    rows = [_cells(r) for r in result["runs"]]
    widths = [max([len(h)] + [len(_cut(c[i], w or 999)) for c in rows]) if w else 0
              for i, (h, (_, w)) in enumerate(zip(header, COLUMNS))]
    num = {"images", "rejects", "accuracy", "psi", "images/s", "duration"}

    def line(cells) -> str:
        out = []
        for (name, w), c, width in zip(COLUMNS, cells, widths):
            c = _cut(c, w) if w else c
            out.append(c.rjust(width) if name in num else c.ljust(width))
        return "  ".join(out).rstrip()

    lines = [line(header)] + [line(c) for c in rows]
    n = result["n_flagged"]
    lines.append(f"{result['n_runs']} runs; {n} flagged as outliers against the runs before "
                 f"them (robust z over up to {result['rule']['window']} previous runs, "
                 f"threshold {result['rule']['threshold']:g}); ~ = expected accuracy "
                 f"(no labels)")
    for r in result["runs"]:
        for f in r["flags"]:
            z = "inf" if f["z"] is None else f"{f['z']:+.1f}"
            lines.append(f"outlier: {r['date'] or '-'} {printable(r['source'])}: {f['label']} "
                         f"{f['value']:.4g} vs median {f['median']:.4g} of the "
                         f"{f['n_previous']} runs before (MAD {f['mad']:.3g}, z {z})")
    for s in result["skipped"]:
        lines.append(f"skipped {printable(s['path'])}: {printable(s['reason'])}")
    if result.get("html"):
        lines.append(f"history page: {result['html']}")
    return lines


__all__ = ["FIGURES", "ROW_FIELDS", "HistoryResult", "flag_outliers", "history", "robust_score",
           "rule", "table_lines"]
