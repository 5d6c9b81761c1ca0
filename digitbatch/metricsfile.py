"""The metrics file: a run's figures in Prometheus text format, for node_exporter.

``--metrics-file PATH`` (``ingest``, ``train``, ``score``, ``run``) and
``[job] metrics_file`` name it; it is (re)written at the end of every run,
success or failure, atomically (``prometheus_client.write_to_textfile``: a
temporary file beside it, renamed over it), from a registry of its own.
Every series carries the labels ``command`` (``ingest``, ``train``,
``score``, ``run``) and ``job`` (the job spec's name for ``run``, else the
file's name without ``.prom``), so two runs writing two files into one
textfile directory never export the same series. Gauges (docs/schemas.md):

``digitbatch_exit_status``, ``digitbatch_last_run_timestamp_seconds``,
``digitbatch_run_duration_seconds``, ``digitbatch_last_success_timestamp_seconds``
(carried over from the previous file when this run failed, so an alert on
its age keeps working), and what the run measured: ``digitbatch_images_scored``
(this run's), ``digitbatch_images_rejected``, ``digitbatch_images_ingested``,
``digitbatch_images_per_second``, ``digitbatch_accuracy`` (when labelled;
train: on the test rows), ``digitbatch_train_rows``, ``digitbatch_cv_accuracy``,
``digitbatch_inputs_scored`` and ``digitbatch_inputs_failed`` (0/1 for a
single input), ``digitbatch_drift_psi``, ``digitbatch_drift_alarm`` and
``digitbatch_expected_accuracy`` (a scoring run's drift), and for ``run`` ``digitbatch_step_duration_seconds{step}`` and
``digitbatch_step_succeeded{step}``. A figure a failed run never measured
is left out rather than written as 0.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from . import storage
from .errors import MetricsFileError

log = logging.getLogger(__name__)

PREFIX = "digitbatch"
LABELS = ("command", "job")
COMMANDS = ("ingest", "train", "score", "run")
# name -> help; every gauge is labelled with LABELS
GAUGES = {
    "exit_status": "Exit status of the last run: 0 success, 1 failure, 2 bad usage, "
                   "3 a quality alarm, 130/143 interrupted/terminated.",
    "last_run_timestamp_seconds": "When the last run ended (Unix time).",
    "last_success_timestamp_seconds": "When the last successful run ended (Unix time).",
    "run_duration_seconds": "Wall time of the last run.",
    "images_scored": "Images scored by the last run (a resumed run: those it scored).",
    "images_rejected": "Images (archive members) rejected, as metrics.json n_rejected or "
                       "the store's n_rejects.",
    "images_ingested": "Images written to the store by the last ingest.",
    "images_per_second": "Throughput of the last run, as its summary reports it.",
    "accuracy": "Accuracy on the labelled images (score) or the test rows (train).",
    "train_rows": "Rows the last train fitted on.",
    "cv_accuracy": "Mean cross-validation accuracy of the last train.",
    "inputs_scored": "Inputs the last run scored to completion.",
    "inputs_failed": "Inputs the last run failed to score.",
    "drift_psi": "Largest PSI of the last scoring run's drift signals against the model's "
                 "reference profile.",
    "drift_alarm": "1 when the last scoring run's drift was in alarm, else 0 (left out when "
                   "the model has no reference profile).",
    "expected_accuracy": "The last scoring run's expected accuracy (the reference's accuracy "
                         "per margin bin weighted by the run's margins).",
}
STEP_GAUGES = {
    "step_duration_seconds": "Wall time of each step of the last job run.",
    "step_succeeded": "1 when the step succeeded in the last job run, 0 when it failed "
                      "or was skipped.",
}


@dataclass
class RunFigures:
    """What one run puts in its metrics file (None: not measured, left out)."""

    command: str
    job: str
    exit_status: int
    started: float
    ended: float
    values: dict = field(default_factory=dict)
    steps: dict = field(default_factory=dict)  # step -> (seconds or None, succeeded)


def check_path(path: str | os.PathLike) -> Path:
    """The metrics file's path, checked before a run starts (a local file, its folder there)."""
    text = os.fspath(path)
    if storage.is_url(text):
        raise MetricsFileError(f"metrics file {text}: node_exporter reads a local file; give a "
                               f"local path (its textfile collector's directory)")
    p = Path(text).expanduser()
    if p.is_dir():
        raise MetricsFileError(f"metrics file {p} is a directory: give a file path such as "
                               f"{p / 'digitbatch.prom'}")
    if not p.parent.is_dir():
        raise MetricsFileError(f"metrics file {p}: folder {p.parent} does not exist; create it "
                               f"(node_exporter's --collector.textfile.directory)")
    if not os.access(p.parent, os.W_OK):
        raise MetricsFileError(f"metrics file {p}: folder {p.parent} is not writable")
    if p.suffix != ".prom":
        log.warning("metrics file %s: node_exporter's textfile collector reads only *.prom "
                    "files", p)
    return p


def default_job(path: Path) -> str:
    return Path(path).name.removesuffix(".prom")


def ingest_values(result: dict) -> dict:
    return {"images_ingested": result.get("n_images"), "images_rejected": result.get("n_rejects"),
            "images_per_second": result.get("images_per_second")}


def train_values(result: dict) -> dict:
    test = result.get("test") or {}
    cv = result.get("cv") or {}
    return {"train_rows": result.get("n_train"),
            "accuracy": test.get("accuracy", result.get("test_accuracy")),
            "cv_accuracy": cv.get("mean")}


def score_values(metrics: dict | None, *, failed: bool = False) -> dict:
    """From a metrics.json record (None when the run failed before finishing one)."""
    values = {"inputs_scored": 0 if failed else 1, "inputs_failed": 1 if failed else 0}
    if metrics:
        values.update({"images_scored": metrics.get("n_scored_this_run"),
                       "images_rejected": metrics.get("n_rejected"),
                       "images_per_second": metrics.get("images_per_second"),
                       "accuracy": metrics.get("accuracy")})
        overall = (metrics.get("drift") or {}).get("overall") or {}
        if overall.get("psi") is not None:  # (digitbatch.drift)
            values.update({"drift_psi": overall["psi"],
                           "drift_alarm": int(overall.get("status") == "alarm"),
                           "expected_accuracy": metrics["drift"].get("expected_accuracy")})
    return values


def inputs_values(result: dict, *, seconds: float) -> dict:
    """An incremental run's (``digitbatch score 'glob' --out '...{input}...'``): its inputs
    scored and failed, their images; accuracy only when one input was scored (the
    record of each input holds no labelled count to weigh them by)."""
    scored = result.get("scored") or []
    images = sum(s.get("n_scored_this_run") or 0 for s in scored)
    values = {"inputs_scored": len(scored), "inputs_failed": len(result.get("failed") or []),
              "images_scored": images,
              "images_rejected": sum(s.get("n_rejected") or 0 for s in scored),
              "images_per_second": images / seconds if seconds > 0 else None}
    if len(scored) == 1:
        values["accuracy"] = scored[0].get("accuracy")
    return values


def previous_success(path: Path, command: str, job: str) -> float | None:
    """``last_success_timestamp_seconds`` of the same series in the file already there."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    name = f"{PREFIX}_last_success_timestamp_seconds"
    try:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and s.labels == {"command": command, "job": job}:
                    return float(s.value)
    except ValueError as exc:
        log.warning("metrics file %s was not readable (%s): its last success time is lost",
                    path, exc)
    return None


def _good(value) -> bool:
    return (value is not None and not isinstance(value, bool)
            and isinstance(value, (int, float)) and math.isfinite(value))


def write(path: str | os.PathLike, figures: RunFigures) -> Path:
    """Write ``figures`` to ``path`` atomically; returns the path."""
    from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

    path = Path(os.fspath(path)).expanduser()
    if figures.command not in COMMANDS:
        raise MetricsFileError(f"command must be one of {COMMANDS}, got {figures.command!r}")
    registry = CollectorRegistry(auto_describe=True)
    labels = {"command": figures.command, "job": figures.job}
    values = dict(figures.values)
    values["exit_status"] = figures.exit_status
    values["last_run_timestamp_seconds"] = figures.ended
    values["run_duration_seconds"] = max(figures.ended - figures.started, 0.0)
    values["last_success_timestamp_seconds"] = (
        figures.ended if figures.exit_status == 0
        else previous_success(path, figures.command, figures.job))
    for name, help_text in GAUGES.items():
        if _good(values.get(name)):
            Gauge(f"{PREFIX}_{name}", help_text, LABELS, registry=registry) \
                .labels(**labels).set(values[name])
    if figures.steps:
        gauges = {name: Gauge(f"{PREFIX}_{name}", help_text, (*LABELS, "step"),
                              registry=registry) for name, help_text in STEP_GAUGES.items()}
        for step, (seconds, ok) in figures.steps.items():
            if _good(seconds):
                gauges["step_duration_seconds"].labels(**labels, step=step).set(seconds)
            gauges["step_succeeded"].labels(**labels, step=step).set(1 if ok else 0)
    try:
        write_to_textfile(str(path), registry)
    except OSError as exc:
        raise MetricsFileError(f"metrics file {path} could not be written ({exc}); check the "
                               f"folder's space and permissions") from exc
    log.info("metrics file %s written (exit status %d)", path, figures.exit_status)
    return path


def exit_status(exc: BaseException | None) -> int:
    """The status the CLI exits with after ``exc`` (None: success), as the README lists them."""
    if exc is None:
        return 0
    if isinstance(exc, KeyboardInterrupt):
        return 130
    if isinstance(exc, SystemExit):
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    code = getattr(exc, "exit_code", None)  # click.ClickException, click.exceptions.Exit
    if isinstance(code, int):
        return code
    return 1


def job_figures(summary: dict, *, name: str, ended: float, status: int) -> RunFigures:
    """A ``run``'s figures from its run summary (and its score step's metrics.json)."""
    values: dict = {}
    steps = {}
    for step in summary.get("steps", []):
        ok = step.get("outcome") == "succeeded"
        steps[step["name"]] = (step.get("seconds"), ok)
        result = step.get("result") or {}
        if step["name"] == "ingest" and ok:
            found = ingest_values(result)
        elif step["name"] == "train" and ok:
            found = train_values(result)
        elif step["name"] == "score" and "inputs" in result:  # [score] inputs: a glob
            found = inputs_values(result["inputs"], seconds=step.get("seconds") or 0.0)
        elif step["name"] == "score" and step.get("outcome") in ("succeeded", "failed",
                                                                  "terminated"):
            found = score_values(_score_metrics(step) if ok else None, failed=not ok)
        else:
            continue
        values.update({k: v for k, v in found.items() if v is not None})
    seconds = summary.get("seconds") or 0.0
    return RunFigures("run", name, status, ended - seconds, ended, values, steps)


def _score_metrics(step: dict) -> dict | None:
    from .scoring.output import open_metrics

    out = (step.get("outputs") or {}).get("predictions")
    try:
        return open_metrics(out) if out else None
    except (OSError, ValueError) as exc:
        log.warning("metrics of %s not readable for the metrics file (%s)", out, exc)
        return None


def command_figures(command: str, result, *, path: Path, status: int, started: float,
                    ended: float, job: str | None = None) -> RunFigures:
    """A command's figures from its result (None when it failed): ``IngestResult``,
    ``TrainResult``, ``ScoreResult``; ``run`` here only when its spec did not load."""
    if command == "score" and hasattr(result, "scored"):  # an incremental run's InputsResult
        values = inputs_values(result.to_dict(), seconds=ended - started)
    elif command == "score":
        values = score_values(result.metrics if result is not None else None,
                              failed=result is None)
        if getattr(result, "already_complete", False):  # finished earlier: nothing scored now
            values.update(images_scored=0, images_per_second=None)
    elif result is not None and command in ("ingest", "train"):
        values = (ingest_values if command == "ingest" else train_values)(result.to_dict())
    else:
        values = {}
    name = Path(job).stem if command == "run" and job else default_job(path)
    return RunFigures(command, name, status, started, ended, values)
