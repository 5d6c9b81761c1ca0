"""Finding past scoring runs and reading each into one history row.

A run is given as a run summary of ``digitbatch run`` (the JSON
:mod:`digitbatch.jobs` writes), a finished scoring output ``PRED.zarr``
(its metrics, read through :func:`digitbatch.scoring.output.open_metrics`),
or a folder searched for both (:data:`MAX_DEPTH` levels deep; scoring
outputs and stores are not entered). :func:`find_runs` lists them and
:func:`read_rows` makes one row each: a plain dict of the figures a person
compares night after night (:data:`ROW_FIELDS`, docs/schemas.md "history").

A scoring output that a run summary given names is that run's: it is read
once, as the summary's row. What cannot be read is never dropped silently:
a path given that is neither is an error; what a folder holds that looks like
a run but cannot be read (an output still being written, a summary that is
not valid JSON) is listed as skipped, with the reason.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from . import storage
from .errors import HistoryError
from .scoring.output import is_complete, is_output, metrics_path, open_metrics

log = logging.getLogger(__name__)

# Folders given are searched this many levels deep (an input archive of a
# million images beside the outputs is never listed whole).
MAX_DEPTH = 4
SUMMARY_SUFFIX = ".run.json"
# The fields of a row, in table order (None where the run did not record the figure).
ROW_FIELDS = ("date", "kind", "source", "job", "outcome", "input", "n_images", "n_rejected",
              "reject_rate", "accuracy", "n_labeled", "expected_accuracy", "psi",
              "drift_status", "images_per_second", "seconds", "model_sha256", "model_name",
              "run_id", "outputs", "error")


@dataclass
class Found:
    """What :func:`find_runs` found: run summaries and scoring outputs (absolute
    paths as strings, in the order found), and what it skipped and why."""

    summaries: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)


def _ident(p) -> str:
    return str(p).rstrip("/") if storage.is_url(str(p)) else os.path.realpath(p)


def _read_json(p: Path):
    return json.loads(p.read_text(encoding="utf-8"))


def is_summary(doc) -> bool:
    """Whether a parsed JSON document is a ``digitbatch run`` summary."""
    return (isinstance(doc, dict) and isinstance(doc.get("steps"), list)
            and isinstance(doc.get("job"), str) and "started" in doc and "outcome" in doc)


def _is_zarr(p: Path) -> bool:
    return (p / "zarr.json").exists()


def find_runs(paths) -> Found:
    """The run summaries and finished scoring outputs of ``paths`` (files, outputs, folders).

    Raises
    ------
    HistoryError
        A path does not exist, or is neither a run summary, a scoring output
        nor a folder.
    """
    found = Found()
    seen: set[str] = set()

    def add(kind: str, p: Path) -> None:
        key = _ident(p)
        if key not in seen:
            seen.add(key)
            getattr(found, kind).append(str(p))

    for given in paths:
        p = storage.to_path(given)
        if not p.exists():
            raise HistoryError(f"{given}: no such file or folder; give run summaries "
                               f"(NAME.run.json), scoring outputs (PRED.zarr) or folders of them")
        if is_output(p):
            if is_complete(p):
                add("outputs", p)
            else:
                found.skipped.append({"path": str(p), "reason": _INCOMPLETE})
        elif p.is_dir():
            if _is_zarr(p):
                raise HistoryError(f"{given} is a Zarr store, not a scoring output: give the "
                                   f"PRED.zarr that `digitbatch score` wrote")
            before = len(found.summaries) + len(found.outputs) + len(found.skipped)
            _walk(p, 0, add, found)
            if len(found.summaries) + len(found.outputs) + len(found.skipped) == before:
                log.warning("history: no run summary or scoring output in %s", p)
        else:
            try:
                doc = _read_json(p)
            except (OSError, ValueError) as exc:
                raise HistoryError(f"{given} is not a run summary: not readable JSON ({exc}); "
                                   f"give a NAME.run.json written by `digitbatch run`") from None
            if not is_summary(doc):
                raise HistoryError(f"{given} is JSON but not a run summary of `digitbatch run` "
                                   f"(no job, started, outcome and steps): give a NAME.run.json, "
                                   f"a scoring output or a folder")
            add("summaries", p)
    return found


_INCOMPLETE = ("incomplete scoring output (no _SUCCESS): a run is writing it or died; "
               "finish it with `digitbatch score --resume`")


def _entries(folder: Path) -> list[tuple[Path, bool]]:
    """(path, is a folder) of ``folder``'s entries, by name; a local folder is read with
    ``os.scandir`` (no stat per entry: an archive of a million images beside the runs
    is listed, not examined)."""
    if storage.is_local(folder):
        with os.scandir(folder) as it:
            got = [(Path(e.path), e.is_dir(follow_symlinks=False)) for e in it]
    else:
        got = [(e, e.is_dir()) for e in folder.iterdir()]
    return sorted(got, key=lambda x: x[0].name)


def _walk(folder: Path, depth: int, add, found: Found) -> None:
    try:
        entries = _entries(folder)
    except OSError as exc:
        found.skipped.append({"path": str(folder), "reason": f"folder not readable: {exc}"})
        return
    for e, is_dir in entries:
        if e.name.startswith("."):
            continue
        if e.name.endswith(".json") and not is_dir:
            try:
                doc = _read_json(e)
            except (OSError, ValueError) as exc:
                if e.name.endswith(SUMMARY_SUFFIX):
                    found.skipped.append({"path": str(e),
                                          "reason": f"run summary not readable JSON: {exc}"})
                continue
            if is_summary(doc):
                add("summaries", e)
        elif is_dir:
            if is_output(e):
                if is_complete(e):
                    add("outputs", e)
                else:
                    found.skipped.append({"path": str(e), "reason": _INCOMPLETE})
            elif depth + 1 < MAX_DEPTH and not _is_zarr(e):
                _walk(e, depth + 1, add, found)


# --- rows ---------------------------------------------------------------------


def run_label(row: dict) -> str:
    """What names a run in a table: its job, else the output's folder and name."""
    return row.get("job") or "/".join(str(row["source"]).rstrip("/").split("/")[-2:])


def _number(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _drift(m: dict) -> tuple[float | None, str | None, float | None]:
    """(overall PSI, its status, expected accuracy) of a metrics record; None where the
    record has no drift block (outputs written before it existed)."""
    drift = m.get("drift")
    if not isinstance(drift, dict):
        return None, None, None
    overall = drift.get("overall") if isinstance(drift.get("overall"), dict) else {}
    status = overall.get("status")
    return (_number(overall.get("psi")), status if isinstance(status, str) else None,
            _number(drift.get("expected_accuracy")))


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except (OSError, AttributeError):
        return float("-inf")


def _iso(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).isoformat(timespec="seconds")


def _utc(date) -> str | None:
    """An ISO date as UTC to the second (None when it is not one)."""
    try:
        d = _dt.datetime.fromisoformat(str(date))
    except ValueError:
        return None
    d = d if d.tzinfo else d.replace(tzinfo=_dt.timezone.utc)
    return d.astimezone(_dt.timezone.utc).isoformat(timespec="seconds")


def _row(**values) -> dict:
    row = dict.fromkeys(ROW_FIELDS)
    row.update(values)
    row["date"] = _utc(row["date"]) if row["date"] is not None else None
    n, rej = row["n_images"], row["n_rejected"]
    if n is not None and rej is not None and n + rej > 0:
        row["reject_rate"] = rej / (n + rej)
    return row


def metrics_figures(m: dict) -> dict:
    """The row figures a metrics.json record holds."""
    psi, status, expected = _drift(m)
    model = m.get("model") if isinstance(m.get("model"), dict) else {}
    given = m.get("input") if isinstance(m.get("input"), dict) else {}
    return {"input": given.get("path"), "n_images": m.get("n_images"),
            "n_rejected": m.get("n_rejected"), "accuracy": _number(m.get("accuracy")),
            "n_labeled": m.get("n_labeled"), "expected_accuracy": expected, "psi": psi,
            "drift_status": status, "images_per_second": _number(m.get("images_per_second")),
            "seconds": _number(m.get("seconds")), "model_sha256": model.get("sha256"),
            "model_name": model.get("name"), "run_id": m.get("run_id")}


def output_row(out: str) -> dict:
    """The row of a finished scoring output; its date is when the run started
    (metrics.json's time, less the run's seconds)."""
    p = storage.to_path(out)
    m = open_metrics(p)
    fig = metrics_figures(m)
    try:
        ended = metrics_path(p).stat().st_mtime
        date = _iso(ended - (fig["seconds"] or 0.0))
    except (OSError, AttributeError):
        date = None
    return _row(date=date, kind="output", source=str(out), outcome="succeeded",
                outputs=[str(out)], **fig)


def _combine(parts: list[dict]) -> dict:
    """One run's figures from the metrics of the several inputs it scored."""
    def total(k):
        vals = [p[k] for p in parts if p[k] is not None]
        return sum(vals) if vals else None

    labelled = [p for p in parts if p["accuracy"] is not None and p["n_labeled"]]
    n_lab = sum(p["n_labeled"] for p in labelled)
    acc = sum(p["accuracy"] * p["n_labeled"] for p in labelled) / n_lab if n_lab else None
    weighted = [p for p in parts if p["expected_accuracy"] is not None and p["n_images"]]
    n_w = sum(p["n_images"] for p in weighted)
    expected = (sum(p["expected_accuracy"] * p["n_images"] for p in weighted) / n_w
                if n_w else None)
    psis = [p for p in parts if p["psi"] is not None]
    worst = max(psis, key=lambda p: p["psi"]) if psis else None
    seconds = total("seconds")
    n = total("n_images")
    shas = sorted({p["model_sha256"] for p in parts if p["model_sha256"]})
    return {"input": f"{len(parts)} inputs", "n_images": n, "n_rejected": total("n_rejected"),
            "accuracy": acc, "n_labeled": n_lab if labelled else None,
            "expected_accuracy": expected, "psi": worst["psi"] if worst else None,
            "drift_status": worst["drift_status"] if worst else None,
            "images_per_second": n / seconds if n and seconds else None, "seconds": seconds,
            "model_sha256": shas[0] if len(shas) == 1 else (",".join(shas) or None),
            "model_name": parts[0]["model_name"], "run_id": None}


def summary_row(path: str) -> dict:
    """The row of a ``digitbatch run`` summary: the job's outcome and wall time, and
    its score step's figures (from the outputs' metrics.json, else from the step's
    result when an output is gone)."""
    doc = _read_json(storage.to_path(path))
    step = next((s for s in doc["steps"] if isinstance(s, dict) and s.get("name") == "score"),
                None)
    err = doc.get("error") if isinstance(doc.get("error"), dict) else None
    base = {"date": doc.get("started"), "kind": "run", "source": str(path), "job": doc.get("job"),
            "outcome": doc.get("outcome"),
            "error": f"{err.get('step')}: {err.get('type')}: {err.get('message')}" if err else None}
    if step is None:
        return _row(**base, outputs=[], seconds=_number(doc.get("seconds")))
    outs = (step.get("outputs") or {}).get("predictions")
    outs = [outs] if isinstance(outs, str) else list(outs or [])
    parts, rewritten = [], []
    try:
        written = storage.to_path(path).stat().st_mtime
    except (OSError, AttributeError):
        written = float("inf")  # (a store that keeps no times: every output counts)
    for out in outs:
        p = storage.to_path(out)
        if is_output(p) and is_complete(p):
            if _mtime(metrics_path(p)) > written + 1:
                rewritten.append(out)  # a later run replaced it: not this run's figures
                continue
            parts.append(metrics_figures(open_metrics(p)))
    outs = [o for o in outs if o not in rewritten]
    result = step.get("result") if isinstance(step.get("result"), dict) else {}
    if len(parts) == 1 and len(outs) == 1 and not rewritten:
        fig = parts[0]
    elif parts:
        fig = _combine(parts)
    else:  # the output is gone (or the step failed): what the summary itself recorded
        fig = {"n_images": result.get("n_images"), "n_rejected": result.get("n_rejected"),
               "accuracy": _number(result.get("accuracy")), "n_labeled": result.get("n_labeled"),
               "images_per_second": _number(result.get("images_per_second")),
               "seconds": _number(step.get("seconds"))}
    fig = dict(fig)
    fig["seconds"] = _number(doc.get("seconds"))  # a run's duration: the whole job's
    return _row(**base, outputs=outs, **fig)


def read_rows(found: Found) -> tuple[list[dict], list[dict]]:
    """(rows, skipped): one row per run summary and per output no summary names."""
    rows, skipped = [], list(found.skipped)
    claimed: set[str] = set()
    for s in found.summaries:
        try:
            row = summary_row(s)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            skipped.append({"path": s, "reason": f"run summary not readable: {exc}"})
            continue
        rows.append(row)
        claimed.update(_ident(o) for o in row["outputs"] if storage.is_url(o) or
                       os.path.exists(o))
    for o in found.outputs:
        if _ident(o) in claimed:
            log.debug("history: %s is read as its run summary's", o)
            continue
        try:
            rows.append(output_row(o))
        except (OSError, ValueError, TypeError) as exc:
            skipped.append({"path": o, "reason": f"metrics.json not readable: {exc}"})
    if not rows:
        raise HistoryError("no run to show: none of the paths given is or holds a run summary "
                           "(NAME.run.json) or a finished scoring output"
                           + (f" ({len(skipped)} skipped: {skipped[0]['path']}: "
                              f"{skipped[0]['reason']})" if skipped else ""))
    rows.sort(key=lambda r: (r["date"] is None, r["date"] or "", r["source"]))
    return rows, skipped
