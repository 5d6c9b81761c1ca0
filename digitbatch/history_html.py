"""The run history's trend plots and its one self-contained page, ``history.html``.

:func:`write_page` takes the history as :meth:`digitbatch.history.HistoryResult.to_dict`
gives it and writes into a folder::

    images_per_second.png  accuracy.png  reject_rate.png  psi.png   (a figure no run
                           recorded is left out; outliers are drawn red)
    history.html           the table, the outliers and why, the plots as data: URIs
    history.json           the same history, as ``digitbatch history --json`` prints it

Every string on the page (paths, job names, statuses: they come from users'
folders and archives) is HTML-escaped; the page loads nothing (no script, no
external URL), and text in the plots is drawn literally.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import logging
from pathlib import Path

from . import gallery, storage
from .errors import HistoryError
from .history_read import run_label
from .version import __version__

log = logging.getLogger(__name__)

RED = "#b00020"
# plot file -> (title, [(figure, legend)], y label)
PLOTS = {
    "images_per_second": ("throughput", [("images_per_second", "images/s")], "images / s"),
    "accuracy": ("accuracy", [("accuracy", "measured (labelled rows)"),
                              ("expected_accuracy", "expected (drift block, no labels)")],
                 "accuracy"),
    "reject_rate": ("reject rate", [("reject_rate", "rejected / (scored + rejected)")],
                    "share rejected"),
    "psi": ("drift: overall PSI", [("psi", "PSI")], "PSI"),
}


def _date(r: dict):
    try:
        return _dt.datetime.fromisoformat(r["date"]) if r["date"] else None
    except ValueError:
        return None


def draw_trend(rows: list[dict], name: str, out: Path) -> Path | None:
    """One trend plot of :data:`PLOTS` ``name`` over the dated rows, outliers red;
    None when no row recorded its figures."""
    title, series, ylabel = PLOTS[name]
    dated = [(d, r) for r in rows if (d := _date(r)) is not None]
    if not any(r.get(fig) is not None for _, r in dated for fig, _ in series):
        return None
    plt = gallery.pyplot()
    with gallery.literal_text():
        fig, ax = plt.subplots(figsize=(7.5, 2.8), dpi=100)
        try:
            for (figure, legend), marker in zip(series, ("o", "s")):
                pts = [(d, r[figure]) for d, r in dated if r.get(figure) is not None]
                if not pts:
                    continue
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, ms=4, lw=1,
                        label=legend)
                bad = [(d, r[figure]) for d, r in dated if r.get(figure) is not None
                       and any(f["figure"] == figure for f in r.get("flags", []))]
                if bad:
                    ax.scatter([p[0] for p in bad], [p[1] for p in bad], s=90, facecolors="none",
                               edgecolors=RED, linewidths=2, zorder=3, label="outlier")
            ax.set_title(title, fontsize=10)
            ax.set_ylabel(ylabel, fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="best")
            fig.autofmt_xdate()
            fig.tight_layout()
            path = out / f"{name}.png"
            fig.savefig(path)
        finally:
            plt.close(fig)
    return path


CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d1d1f;
       max-width: 1250px; margin: 2em auto; padding: 0 1.2em; background: #fff; }
h2 { border-bottom: 1px solid #ddd; margin-top: 1.8em; } .sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: .6em 0; font-size: .85em; }
th, td { border: 1px solid #ddd; padding: .2em .5em; text-align: left; vertical-align: top; }
thead th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.flag { background: #fde7ea; color: #b00020; font-weight: 600; } td.path { word-break: break-all; }
tr.failed td { color: #777; } img { max-width: 100%; height: auto; display: block; margin: .6em 0; }
.note { background: #fff6e0; padding: .5em .8em; }
"""


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _runs_table(rows: list[dict]) -> str:
    e = html.escape
    head = ("date", "run", "outcome", "input", "images", "rejects", "reject rate", "accuracy",
            "expected accuracy", "PSI", "drift", "images/s", "duration (s)", "model SHA-256")
    out = ["<table id=runs-table><thead><tr>" + "".join(f"<th>{h}</th>" for h in head)
           + "</tr></thead><tbody>"]
    for r in rows:
        flagged = {f["figure"]: f for f in r.get("flags", [])}

        def cell(v, figure=None, num=True, path=False):
            cls = "flag" if figure in flagged else ("path" if path else ("num" if num else ""))
            tip = ""
            if figure in flagged:
                f = flagged[figure]
                tip = (f' title="{e(f["direction"])} against the median {f["median"]:.4g} of '
                       f'the {f["n_previous"]} runs before"')
            return f"<td class={cls or 'txt'}{tip}>{e(str(v))}</td>"

        run = run_label(r)
        cls = "" if r.get("outcome") in (None, "succeeded") else " class=failed"
        out.append(
            f"<tr{cls}>" + cell((r["date"] or "-").replace("T", " "), num=False)
            + f"<td class=path title=\"{e(str(r['source']))}\">{e(run)}</td>"
            + cell(r.get("outcome") or "-", num=False) + cell(r.get("input") or "-", path=True)
            + cell(_fmt(r["n_images"], ",")) + cell(_fmt(r["n_rejected"], ","))
            + cell(_fmt(r["reject_rate"], ".4f"), "reject_rate")
            + cell(_fmt(r["accuracy"], ".4f"), "accuracy")
            + cell(_fmt(r["expected_accuracy"], ".4f"), "expected_accuracy")
            + cell(_fmt(r["psi"], ".3f"), "psi") + cell(r.get("drift_status") or "-", num=False)
            + cell(_fmt(r["images_per_second"], ",.0f"), "images_per_second")
            + cell(_fmt(r["seconds"], ".1f"))
            + cell((r.get("model_sha256") or "-")[:16], num=False) + "</tr>")
    return "".join(out) + "</tbody></table>"


def _outliers(rows: list[dict]) -> str:
    e = html.escape
    items = []
    for r in rows:
        for f in r.get("flags", []):
            z = "infinite" if f["z"] is None else f"{f['z']:+.1f}"
            items.append(f"<li><b>{e(r['date'] or '-')}</b> {e(str(r['source']))}: "
                         f"{e(f['label'])} {f['value']:.4g} is {e(f['direction'])} against the "
                         f"median {f['median']:.4g} of the {f['n_previous']} runs before it "
                         f"(MAD {f['mad']:.3g}, robust z {z})</li>")
    if not items:
        return "<p>No run is an outlier against the runs before it.</p>"
    return "<ul id=outlier-list>" + "".join(items) + "</ul>"


def _rule(rule: dict) -> str:
    floors = ", ".join(f"{html.escape(k)} {v['value']:g}" + (" of the median" if v["kind"] ==
                                                              "relative" else "")
                       for k, v in rule["floors"].items())
    return (f"<p>For each run and each figure it recorded, the same figure of up to "
            f"{rule['window']} runs before it gives a median and a median absolute deviation "
            f"(MAD). With at least {rule['min_history']} earlier runs, the run is an outlier "
            f"when |value - median| / max(1.4826 &times; MAD, floor) &gt; {rule['threshold']:g}. "
            f"Floors (so a steady history does not call every change an outlier): {floors}. "
            f"Runs are ordered by the time they started.</p>")


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def write_page(result: dict, out) -> tuple[str, dict]:
    """Write the plots, ``history.html`` and ``history.json`` into folder ``out``;
    ``(html path, {plot name: path})``."""
    out = storage.to_path(out)
    if not storage.is_local(out):
        raise HistoryError(f"--out {out}: the history page is written to a local folder")
    if out.exists() and not out.is_dir():
        raise HistoryError(f"--out {out} is a file: give a folder for the history page")
    if out.is_dir() and any(out.iterdir()) and not (out / "history.html").is_file():
        raise HistoryError(f"--out {out} holds files but no history.html: it is not a history "
                           f"folder, and its files are not replaced; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    rows = result["runs"]
    plots: dict[str, str] = {}
    for name in PLOTS:
        stale = out / f"{name}.png"
        path = draw_trend(rows, name, out)
        if path is not None:
            plots[name] = str(path)
        elif stale.exists():
            stale.unlink()  # (an earlier page's plot of a figure these runs lack)
    e = html.escape
    dates = [r["date"] for r in rows if r["date"]]
    span = f" from {e(dates[0])} to {e(dates[-1])}" if dates else ""
    n = result["n_flagged"]
    parts = [f"<h1>digitbatch run history</h1><p class=sub>written "
             f"{_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')} by digitbatch "
             f"{e(__version__)}</p>",
             f"<p class=headline><b>{result['n_runs']}</b> runs{span}; <b>{n}</b> "
             f"{'is' if n == 1 else 'are'} an outlier against the runs before.</p>",
             "<section id=runs><h2>Runs</h2>", _runs_table(rows),
             "<p>Red cells are outliers. PSI and drift are the drift block's overall figures; "
             "'-' where a run did not record them (outputs written before the drift block, or "
             "a run that scored nothing). Expected accuracy assumes the errors per margin bin "
             "did not change since training.</p></section>",
             "<section id=outliers><h2>Outliers</h2>", _outliers(rows), "</section>",
             "<section id=trends><h2>Trends</h2>"]
    for name, path in plots.items():
        parts.append(_img(Path(path), PLOTS[name][0]))
    missing = [PLOTS[k][0] for k in PLOTS if k not in plots]
    if missing:
        parts.append(f"<p class=note>No run recorded: {e(', '.join(missing))}.</p>")
    parts += ["</section>", "<section id=rule><h2>How outliers are found</h2>",
              _rule(result["rule"]), "</section>"]
    if result["skipped"]:
        parts += ["<section id=skipped><h2>Skipped</h2><ul>"]
        parts += [f"<li>{e(s['path'])}: {e(s['reason'])}</li>" for s in result["skipped"]]
        parts += ["</ul></section>"]
    page = ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            "<title>digitbatch run history</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
    html_path = out / "history.html"
    storage.write_atomic(html_path, page)
    doc = {**result, "out": str(out), "html": str(html_path), "plots": plots}
    storage.write_atomic(out / "history.json", json.dumps(doc, indent=2) + "\n")
    log.info("wrote the history of %d runs to %s", len(rows), html_path)
    return str(html_path), plots
