"""The report's drift section: tonight's histograms beside the reference, and the figures.

From metrics.json's ``drift`` block (:mod:`digitbatch.drift`), which holds
both profiles: :func:`figures` draws ``drift.png`` (one panel per signal:
prediction, margin, ink fraction, mean intensity; tonight's shares beside
the reference's, PSI and status in each title) and :func:`section` writes
the HTML of the section (status, PSI per signal, expected accuracy, reject
rate, normalisation). Everything shown is escaped.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from . import plots
from .profile import INPUT_EDGES, MARGIN_EDGES

_SIGNAL_TITLES = {"prediction": "predicted class", "margin": "margin (top-1 minus top-2)",
                  "ink": "ink fraction (pixels >= 128)", "intensity": "mean intensity / 255"}
_STATUS_COLOURS = {"ok": "#1b7f3b", "warn": "#b26b00", "alarm": "#b00020"}


def _bin_labels(edges) -> list[str]:
    return [f"{a:.2f}" for a in edges[:-1]]


def figures(metrics: dict, names: list[str], out: Path) -> dict[str, Path]:
    """``{"drift": drift.png}`` when the run has a profile, else nothing."""
    d = metrics.get("drift") or {}
    cur, ref = d.get("profile"), d.get("reference_profile")
    if not cur:
        return {}
    labels = {"prediction": names if len(names) == len(cur["prediction"])
              else list(range(len(cur["prediction"]))),
              "margin": _bin_labels(MARGIN_EDGES), "ink": _bin_labels(INPUT_EDGES),
              "intensity": _bin_labels(INPUT_EDGES)}
    panels = []
    for s, title in _SIGNAL_TITLES.items():
        sig = (d.get("signals") or {}).get(s) or {}
        extra = (f": PSI {sig['psi']:.3f}, {sig['status']}" if sig.get("psi") is not None
                 else "" if ref else " (no reference)")
        panels.append({"title": title + extra, "labels": labels[s], "current": cur[s],
                       "reference": ref[s] if ref else None})
    overall = d.get("overall") or {}
    head = f"drift: {overall.get('status')}"
    if overall.get("psi") is not None:
        head += f" (largest PSI {overall['psi']:.3f}, {overall.get('signal')})"
    return {"drift": plots.draw_histogram_pairs(panels, out / "drift.png", title=head)}


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def _rows(rows) -> str:
    e = html.escape
    return "<table><tbody>" + "".join(
        f"<tr><th>{e(str(k))}</th><td>{e(str(v))}</td></tr>" for k, v in rows) + "</tbody></table>"


def section(metrics: dict, files: dict) -> str:
    """The drift section's HTML ('' for an output scored before drift monitoring)."""
    d = metrics.get("drift")
    if not d:
        return ""
    e = html.escape
    overall = d.get("overall") or {}
    status = str(overall.get("status"))
    colour = _STATUS_COLOURS.get(status, "#555555")
    parts = ["<h2>Drift</h2>",
             f"<p class=headline>drift status <b style=\"color:{colour}\">{e(status)}</b>"
             + (f" (largest PSI {overall['psi']:.3f}, on {e(str(overall.get('signal')))})"
                if overall.get("psi") is not None else "") + "</p>"]
    if d.get("reason"):
        parts.append(f"<p class=note>{e(d['reason'])}</p>")
    thr = d.get("thresholds") or {}
    sig_rows = "".join(
        f"<tr><th>{e(_SIGNAL_TITLES.get(s, s))}</th><td class=num>"
        f"{'n/a' if v.get('psi') is None else format(v['psi'], '.4f')}</td>"
        f"<td>{e(str(v.get('status') or 'n/a'))}</td></tr>"
        for s, v in (d.get("signals") or {}).items())
    parts.append("<table><thead><tr><th>signal</th><th class=num>PSI</th><th>status</th></tr>"
                 f"</thead><tbody>{sig_rows}</tbody></table>")
    parts.append(f"<p>Population stability index of tonight's histogram against the model's "
                 f"reference (its test split); warn from {e(str(thr.get('warn')))}, alarm from "
                 f"{e(str(thr.get('alarm')))}.</p>")
    norm = d.get("normalisation")
    change = d.get("reject_rate_change")
    rows = [("expected accuracy", _pct(d.get("expected_accuracy"))),
            ("measured accuracy", _pct(d.get("measured_accuracy"))),
            ("reject rate", _pct(d.get("reject_rate"))),
            ("reference reject rate", _pct(d.get("reference_reject_rate"))),
            ("reject rate change", "n/a" if change is None else f"{100 * change:+.2f} points"),
            ("inverted by normalisation", _pct(norm["inverted_share"]) if norm else "not known"),
            ("resized by normalisation", _pct(norm["resized_share"]) if norm else "not known")]
    parts.append(_rows(rows))
    parts.append("<p>The expected accuracy is the reference's accuracy in each margin bin, "
                 "weighted by tonight's share of rows in the bin: it assumes the errors per "
                 "margin bin have not changed, which a shift in the images can break.</p>")
    if "drift" in files:
        data = base64.b64encode(Path(files["drift"]).read_bytes()).decode("ascii")
        parts.append(f'<img alt="tonight\'s histograms beside the reference" '
                     f'src="data:image/png;base64,{data}">')
    return "\n".join(parts)
