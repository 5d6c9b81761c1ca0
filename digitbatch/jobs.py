"""Job specs -> runs: what ``digitbatch run JOB.toml [--set KEY=VALUE ...]`` does.

A job spec is a TOML file naming the steps of a pipeline and their options,
which are the commands' options (``jobs/quickstart.toml``)::

    [job]
    name = "quickstart"
    workdir = "demo-output/quickstart"

    [ingest]
    source = "sample"
    overwrite = true

    [train]
    cv = 5
    overwrite = true

    [score]
    overwrite = true

    [report]

Sections and keys (all optional unless marked; anything else is an error):

``[job]``
    ``name`` (the file's stem), ``workdir`` (``"."``), ``summary``
    (``<workdir>/<name>.run.json``), ``steps`` (a list of ``"ingest"``,
    ``"train"``, ``"score"``, ``"report"``, ``"export"``, ``"promote"``, ``"history"``; default: the step sections the
    spec has; steps always run in that order), ``date`` (``YYYY-MM-DD``,
    default today: what ``{date}`` in a path becomes, so a nightly job
    writes each night's output apart and a rerun for a past night can say
    ``--set job.date=2026-11-24``), ``metrics_file`` (a Prometheus text file
    for node_exporter's textfile collector, written at the end of every run,
    success or failure: :mod:`digitbatch.metricsfile`).
``[cluster]``
    ``scheduler``, ``tls_ca_file``, ``tls_cert``, ``tls_key``: as the
    commands' ``--scheduler`` and ``--tls-*`` options, which override them.
``[ingest]``
    ``source`` (required: a path, ``"sample"`` or ``"openml"``), ``out``
    (``<workdir>/store.zarr``), ``kind``, ``labels``, ``chunk_size``,
    ``overwrite``, ``max_rejects``, ``data_home``, ``codec``.
``[train]``
    ``store`` (``[ingest] out``), ``out`` (``<workdir>/model``), ``model``,
    ``features``, ``cv``, ``seed``, ``search``, ``incremental``, ``epochs``,
    ``overwrite``, ``extra`` (a list of stores: ``train --extra``).
``[score]``
    ``input`` (``[train] store``), ``model`` (``[train] out``), ``out``
    (``<workdir>/predictions.zarr``), ``resume``, ``overwrite`` (replace an
    earlier scoring output), ``proba``, ``labels``, ``task_timeout`` (seconds;
    0: no limit).
``[report]``
    ``predictions`` (``[score] out``), ``out`` (``<workdir>/report``),
    ``store``, ``top``, ``review`` (rows in review.csv / review.html; 0: none).
``[export]``
    ``predictions`` (``[score] out``), ``out`` (``<workdir>/predictions.parquet``;
    ``.parquet`` or ``.csv``), ``proba``, ``store``, ``labels`` (false: no
    label column), ``overwrite``.
``[promote]``
    ``models`` (required: the models folder), ``gate`` (required: a labelled
    store), ``candidate`` (``[train] out``), ``tolerance``, ``min_accuracy``,
    ``alpha`` (:func:`digitbatch.promotion.promote`). A refused candidate
    fails the step (the run summary names the refusal); ``current`` is unchanged.
``[history]``
    ``runs`` (a list of run summaries, scoring outputs or folders of them;
    default ``[<workdir>]``; this run's scoring output is always added),
    ``out`` (``<workdir>/history``: the trend plots and ``history.html``),
    ``window``, ``min_history``, ``threshold`` (the outlier rule,
    :mod:`digitbatch.history`).
``[monitor]``
    drift monitoring of the score step (:mod:`digitbatch.drift`): ``warn``
    and ``alarm`` (the PSI thresholds, defaults 0.1 and 0.25; as ``--psi-warn``
    and ``--psi-alarm``), ``fail_on`` (``"never"``, the default, or
    ``"drift-alarm"``: when a scored output's drift is in alarm the run ends,
    after every step, with :class:`~digitbatch.errors.DriftAlarmError` and exit
    status 3; the run summary's outcome is ``alarm``).

Relative paths, in the file and in ``--set`` values alike, resolve against
the current directory, as a command's arguments do: run jobs from the
directory their paths are written for (the repository root for ``jobs/``).
``{date}`` in a path is replaced by ``[job] date``.

``--set SECTION.KEY=VALUE`` replaces or adds one key; VALUE is read as a TOML
value (``3``, ``true``, ``'["score"]'``), and as a plain string when it is not
one (``/tmp/x.zarr``, ``tcp://host:8786``).

:func:`load_job` checks the whole spec before anything runs (sections, keys,
types, ranges, inputs that must exist, outputs that would be refused) and
raises :class:`~digitbatch.errors.JobSpecError` naming the key and the fix.
:func:`run_job` runs the steps on one cluster and writes the run summary
JSON (see docs/schemas.md) whether it succeeds or fails.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import time
from pathlib import Path

from . import cluster, metricsfile, storage
from .logs import context_fields, log_context, new_run_id
from .version import __version__
from .errors import (DriftAlarmError, InputsFailedError, JobFailedError, PromotionRefusedError,
                     RunTerminated)
from .drift import headline
from .jobspec import SCHEMA, STEPS, Job, check_outputs, describe, load_job, parse_override
from .modelio import manifest_path

__all__ = ["SCHEMA", "STEPS", "Job", "check_outputs", "describe", "load_job",
           "parse_override", "run_job"]

log = logging.getLogger(__name__)


# --- steps: each calls one library function ----------------------------------


def _given(params: dict, *drop: str) -> dict:
    """The keys the spec gave (library defaults for the rest), paths as strings."""
    return {k: str(v) if storage.is_path(v) else v for k, v in params.items() if k not in drop}


def _step_ingest(params: dict, scheduler, done: dict) -> dict:
    from .ingestion import ingest

    kw = _given(params, "source", "out")
    r = ingest(str(params["source"]), params["out"], scheduler=scheduler, **kw)
    return {"outputs": {"store": r.path}, "metrics": None,
            "result": {k: r.to_dict()[k] for k in ("n_images", "n_labeled", "n_rejects",
                                                    "checksum", "images_per_second")}}


def _step_train(params: dict, scheduler, done: dict) -> dict:
    from .training import train

    kw = _given(params, "store", "out")
    r = train(params["store"], params["out"], scheduler=scheduler, **kw)
    result = {"model": r.name, "features": r.features, "n_train": r.n_train,
              "test_accuracy": r.test["accuracy"] if r.test else None}
    if r.cv:
        result["cv"] = {k: r.cv[k] for k in ("k", "scores", "mean", "std")}
    return {"outputs": {"model": r.model_path}, "result": result,
            "metrics": str(manifest_path(r.model_path))}


def _step_score(params: dict, scheduler, done: dict) -> dict:
    from .scoring.api import score
    from .scoring.output import metrics_path

    if params.get("inputs") is not None:
        return _score_inputs(params, scheduler)
    out = params["out"]
    # (overwrite replaces the output under its lock: never under a live run)
    kw = _given(params, "input", "out")
    r = score(params["input"], out=out, scheduler=scheduler, **kw)
    m = r.metrics
    return {"outputs": {"predictions": r.out}, "metrics": str(metrics_path(r.out)),
            "result": {**{k: m.get(k) for k in ("n_images", "n_scored_this_run", "n_rejected",
                                                "n_labeled",
                                                "accuracy", "images_per_second", "resumed",
                                                "confusion_matrix", "headline", "training_rows",
                                                "calibration")},
                       "drift": headline(m.get("drift"))}}


def _score_inputs(params: dict, scheduler) -> dict:
    """[score] inputs: every new input of a glob, each into its own output."""
    from .incremental import score_inputs

    kw = _given(params, "input", "inputs", "out", "ledger", "max_inputs", "rescore_changed",
                "resume", "overwrite")
    r = score_inputs(str(params["inputs"]), out=str(params["out"]),
                     ledger_path=params.get("ledger"), max_inputs=params.get("max_inputs"),
                     rescore_changed=bool(params.get("rescore_changed")), scheduler=scheduler,
                     **kw)
    return {"outputs": {"predictions": [s["out"] for s in r.scored]}, "metrics": r.ledger,
            "result": {"inputs": r.to_dict()}}


def _step_report(params: dict, scheduler, done: dict) -> dict:
    from .incremental import PLACEHOLDER, input_name
    from .report import write_report

    kw = _given(params, "predictions", "top", "out")
    if "top" in params:
        kw["top_k"] = params["top"]
    if PLACEHOLDER not in str(params["predictions"]):
        r = write_report(params["predictions"], out=params["out"], **kw)
        return {"outputs": {"report": r.out, "html": r.html}, "metrics": r.html,
                "result": {"n_wrong": r.n_wrong}}
    # one report per input the score step scored in this run
    scored = (((done.get("score") or {}).get("result") or {}).get("inputs") or {}).get("scored", [])
    reports = []
    for s in scored:
        name = input_name(s["input"]) if ".rescore-" not in s["out"] else \
            storage.to_path(s["out"]).name.rsplit(".", 1)[0]
        out = str(params["out"])
        out = out.replace(PLACEHOLDER, name) if PLACEHOLDER in out else \
            str(storage.to_path(out) / name)
        r = write_report(s["out"], out=out, **kw)
        reports.append({"input": s["input"], "report": r.out, "html": r.html,
                        "n_wrong": r.n_wrong})
    return {"outputs": {"reports": [x["report"] for x in reports]},
            "metrics": reports[0]["html"] if len(reports) == 1 else None,
            "result": {"reports": reports}}


def _step_export(params: dict, scheduler, done: dict) -> dict:
    from .export import export_predictions

    r = export_predictions(params["predictions"], **_given(params, "predictions"))
    d = r.to_dict()
    return {"outputs": {"export": r.out, **({"sidecar": r.sidecar} if r.sidecar else {})},
            "metrics": None, "result": {k: d[k] for k in ("n_rows", "format", "n_bytes",
                                                          "seconds", "rows_per_second",
                                                          "n_escaped", "labels")}}


def _step_promote(params: dict, scheduler, done: dict) -> dict:
    from .promotion import history_path, promote

    kw = {k: float(params[k]) for k in ("tolerance", "min_accuracy", "alpha") if k in params}
    r = promote(str(params["candidate"]), models=str(params["models"]),
                gate=str(params["gate"]), **kw)
    rec = r.record
    return {"outputs": {"current": str(r.current)}, "metrics": str(history_path(rec["models"])),
            "result": {k: rec.get(k) for k in ("decision", "verdict", "accuracy", "mcnemar",
                                               "current", "reason")}}


def _step_history(params: dict, scheduler, done: dict) -> dict:
    from .history import history

    runs = [str(r) for r in params["runs"]]
    mine = ((done.get("score") or {}).get("outputs") or {}).get("predictions")
    runs += [mine] if isinstance(mine, str) else list(mine or [])  # this run's, not summed yet
    r = history(runs, out=params["out"], **_given(params, "runs", "out"))
    return {"outputs": {"history": r.out, "html": r.html}, "metrics": r.html,
            "result": {"n_runs": len(r.rows), "n_flagged": r.n_flagged,
                       "flagged": [{"date": x["date"], "source": x["source"],
                                    "figures": [f["figure"] for f in x["flags"]]}
                                   for x in r.rows if x["flags"]]}}


def _check_drift(record: dict, fail_on: str) -> None:
    """[monitor] fail_on: the score step's outputs' drift (their metrics.json)."""
    from .drift import raise_on_alarm
    from .scoring.output import open_metrics

    outs = record["outputs"]["predictions"]
    outs = outs if isinstance(outs, list) else [outs]
    raise_on_alarm([(o, open_metrics(storage.to_path(o))) for o in outs], fail_on)


# step -> fn(params, scheduler, done): done holds the records of the steps run before
STEP_FUNCS = {"ingest": _step_ingest, "train": _step_train, "score": _step_score,
              "report": _step_report, "export": _step_export, "promote": _step_promote,
              "history": _step_history}


def _write_summary(path: Path, summary: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    storage.write_atomic(path, json.dumps(summary, indent=2, default=str) + "\n")


def progress_unit(step: str, params: dict) -> str | None:
    """What a step's progress counts (None: it takes no ``progress=``); see training.train."""
    if step == "train":
        return "chunks" if params.get("incremental") else "fits"
    return "images" if step in ("ingest", "score") else None


def _write_metrics(job: Job, summary: dict, failure: BaseException | None) -> None:
    """``[job] metrics_file``, if any; a failure to write it fails a run that succeeded."""
    if job.metrics_file is None:
        return
    status = metricsfile.exit_status(failure)
    try:
        metricsfile.write(job.metrics_file, metricsfile.job_figures(
            summary, name=job.name, ended=time.time(), status=status))
    except Exception:
        if failure is None:
            raise
        log.exception("job %s: the metrics file %s was not written", job.name, job.metrics_file)


def run_job(job: Job, *, scheduler: cluster.Scheduler = None, progress=None) -> dict:
    """Run ``job``'s steps in order on one cluster and write its run summary.

    Parameters
    ----------
    job : Job
        From :func:`load_job`.
    scheduler : str or ClusterSpec, optional
        Overrides the spec's ``[cluster]``, setting by setting (the
        command line's ``--scheduler`` and ``--tls-*``).
    progress : callable, optional
        ``progress(step, unit)`` -> a context manager giving the step's
        ``progress(n, total=None)`` callback (the CLI's
        :class:`~digitbatch.progressbar.Progress`), for the steps of
        :func:`progress_unit`.

    Returns
    -------
    dict
        The run summary, also written to ``job.summary``.

    Raises
    ------
    JobFailedError
        When a step (or the cluster) fails, after the summary is written
        (and ``job.metrics_file``); the step's own exception is its ``__cause__``.
    """
    fields = {"job": job.name}
    if "run_id" not in context_fields():  # (the CLI names its runs itself)
        fields["run_id"] = new_run_id()
    with log_context(**fields):
        return _run_job(job, scheduler=scheduler, progress=progress)


def _run_job(job: Job, *, scheduler, progress) -> dict:
    check_outputs(job)  # (again: a spec checked elsewhere, or things moved since)
    spec = cluster.merge(scheduler, job.cluster)
    cluster.check_address(spec)
    summary = {
        "job": job.name, "spec": str(job.path), "overrides": list(job.overrides),
        "workdir": str(job.workdir), "digitbatch_version": __version__,
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "outcome": "running", "seconds": None,
        "cluster": {"scheduler": spec.address, "tls": spec.tls},
        "steps": [{"name": s, "outcome": "pending"} for s in job.steps], "error": None,
    }
    t0 = time.perf_counter()
    failure: BaseException | None = None
    where = "setup"
    done: dict[str, dict] = {}
    try:
        job.workdir.mkdir(parents=True, exist_ok=True)
        where = "cluster"
        with cluster.shared(spec) as sched:
            summary["cluster"]["scheduler"] = cluster.as_spec(sched).address
            for record in summary["steps"]:
                where = record["name"]
                log.info("job %s: %s", job.name, where)
                t = time.perf_counter()
                try:
                    params = job.params[where]
                    with log_context(step=where), contextlib.ExitStack() as stack:
                        unit = progress_unit(where, params)
                        if progress is not None and unit is not None:
                            params = {**params, "progress": stack.enter_context(
                                progress(where, unit))}
                        record.update(STEP_FUNCS[where](params, sched, done))
                    record["outcome"] = "succeeded"
                    done[where] = record
                finally:
                    record["seconds"] = round(time.perf_counter() - t, 3)
                    if record["outcome"] != "succeeded":
                        record["outcome"] = "failed"
            where = "cluster"
        failed = ((done.get("score") or {}).get("result") or {}).get("inputs", {}).get("failed")
        if failed:  # after every other input and step: the run fails
            where = "score"
            done["score"]["outcome"] = "failed"
            raise InputsFailedError(
                f"{len(failed)} inputs failed (recorded in the ledger, tried again next run): "
                + "; ".join(f"{f['input']}: {f['error']['type']}: {f['error']['message']}"
                            for f in failed))
        if job.fail_on != "never" and "score" in done:  # after every step: exit status 3
            where = "score"
            _check_drift(done["score"], job.fail_on)
    except BaseException as exc:  # the summary says what happened, then it propagates
        failure = exc
        summary["error"] = {"step": where, "type": type(exc).__name__,
                            "module": type(exc).__module__, "message": str(exc)}
    for record in summary["steps"]:
        if record["outcome"] == "pending":
            record["outcome"] = "skipped"
        elif (record["outcome"] == "failed" and record["name"] == where
              and isinstance(failure, RunTerminated)):
            record["outcome"] = "terminated"
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    summary["outcome"] = ("succeeded" if failure is None else
                          "alarm" if isinstance(failure, DriftAlarmError) else
                          "failed" if isinstance(failure, Exception) else
                          "terminated" if isinstance(failure, RunTerminated) else "interrupted")
    _write_summary(job.summary, summary)
    _write_metrics(job, summary, failure)
    if failure is None:
        log.info("job %s succeeded in %.1f s; summary %s", job.name, summary["seconds"],
                 job.summary)
        return summary
    if not isinstance(failure, Exception) or isinstance(failure, DriftAlarmError):
        raise failure
    err = JobFailedError(f"job {job.name!r}: {where} failed ({type(failure).__name__}: "
                         f"{failure}); run summary in {job.summary}")
    if isinstance(failure, PromotionRefusedError):  # a quality alarm: `run` exits 3 as promote does
        err.exit_code = failure.exit_code
    raise err from failure
