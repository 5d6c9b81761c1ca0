"""Score only what is new: every input matching a glob, each into its own output, once.

For a bucket or folder that archives keep landing in (the anchors: Spark's
file source with ``Trigger.AvailableNow``, Databricks Auto Loader).
:func:`score_inputs` lists the inputs matching a pattern (local or
``s3://``), in name order, and for each:

- the ledger (:mod:`digitbatch.ledger`) holds it as scored with the same
  fingerprint (size and mtime, or size and ETag): **skipped**;
- it holds it with another fingerprint: **changed**, named and not scored
  again, unless ``rescore_changed`` (then scored into a new output,
  ``NAME.rescore-FP8``);
- otherwise (new, failed before, or killed mid-way: its output is resumed)
  it is scored into ``out`` with ``{input}`` replaced by the input's name
  without its extensions, and appended to the ledger as scored only after
  the output's ``_SUCCESS``. An input that fails is appended as failed
  with its error, does not stop the others, and is tried again next run.

``max_inputs`` bounds one run. Names that start with ``.`` or end in
``.part``/``.tmp`` (files still being copied in) are left for a later run.
"""

from __future__ import annotations

import glob as _glob
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from . import ledger, storage
from .errors import DigitbatchError, ScoreError

log = logging.getLogger(__name__)

PLACEHOLDER = "{input}"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_IN_TRANSIT = (".part", ".tmp", ".partial", ".crdownload")


@dataclass
class InputsResult:
    """What one incremental run did, input by input (paths as given)."""

    ledger: str
    scored: list[dict] = field(default_factory=list)  # input, out, n_images, accuracy
    skipped: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)  # input, out, error
    not_this_run: list[str] = field(default_factory=list)  # left for a later run (max_inputs)

    @property
    def nothing_new(self) -> bool:
        return not (self.scored or self.failed or self.not_this_run)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def is_pattern(source: str, out: str) -> bool:
    """Whether a score call names many inputs: ``out`` holds ``{input}``."""
    return PLACEHOLDER in str(out)


def input_name(path: str) -> str:
    """The input's name without its extensions, safe as a path component."""
    name = str(path).rstrip("/").rsplit("/", 1)[-1]
    stem = name.split(".", 1)[0] if not name.startswith(".") else name
    safe = _UNSAFE.sub("_", stem).strip("._") or "input"
    return safe[:200]


def default_ledger(out: str) -> Path:
    """``_ledger.jsonl`` beside the outputs: in the folder above ``{input}``."""
    head = str(out).split(PLACEHOLDER, 1)[0]
    folder = head.rsplit("/", 1)[0] if "/" in head else "."
    return storage.to_path(folder or "/") / ledger.LEDGER_FILE


def list_inputs(pattern: str) -> list[str]:
    """Paths (or URLs) matching ``pattern``, in name order; files in transit left out."""
    if storage.is_url(pattern):
        p = storage.to_path(pattern)
        fs = p.fs
        proto = pattern.split("://", 1)[0]
        found = [f"{proto}://{m}" for m in fs.glob(p.path)]
    else:
        found = _glob.glob(os.path.expanduser(pattern))
    keep = [f for f in found
            if not (f.rstrip("/").rsplit("/", 1)[-1].startswith(".")
                    or f.endswith(_IN_TRANSIT))]
    return sorted(keep, key=lambda f: (f.rstrip("/").rsplit("/", 1)[-1], f))


def fingerprint(path: str) -> str:
    """Size and modification time (a remote file: size and ETag)."""
    p = storage.to_path(path)
    if not storage.is_local(p):
        return storage.identity(p)
    st = os.stat(p)
    if p.is_dir():  # an image folder: its files' sizes and times
        h = [f"{st.st_mtime_ns}"]
        for root, dirs, files in os.walk(p):
            dirs.sort()
            for f in sorted(files):
                s = os.stat(os.path.join(root, f))
                h.append(f"{f}:{s.st_size}:{s.st_mtime_ns}")
        import hashlib

        return "dir-sha256:" + hashlib.sha256("\n".join(h).encode()).hexdigest()
    return f"{st.st_size}:{st.st_mtime_ns}"


def score_inputs(pattern: str, *, model, out: str, ledger_path=None, max_inputs: int | None = None,
                 rescore_changed: bool = False, score=None, **score_kw) -> InputsResult:
    """Score the inputs matching ``pattern`` that the ledger does not hold yet.

    Parameters
    ----------
    pattern : str
        A glob of inputs (stores, archives or image folders), local or ``s3://``.
    out : str
        The output of each input, with ``{input}`` in it.
    ledger_path : path, optional
        Default :func:`default_ledger`.
    max_inputs : int, optional
        Score at most this many inputs this run (the rest next run).
    rescore_changed : bool
        Score an input whose fingerprint changed since it was scored again,
        into a new output (default: name it and leave it).
    score : callable, optional
        The scoring function (default :func:`digitbatch.scoring.api.score`).
    **score_kw
        Passed to each scoring call (scheduler, proba, labels, ...).
    """
    if PLACEHOLDER not in str(out):
        raise ScoreError(f"out {str(out)!r} must contain {PLACEHOLDER} when scoring many "
                         f"inputs (e.g. 'pred/{PLACEHOLDER}.zarr'): each input gets its own")
    if max_inputs is not None and (isinstance(max_inputs, bool) or not isinstance(max_inputs, int)
                                   or max_inputs < 1):
        raise ScoreError(f"max_inputs must be a positive integer, got {max_inputs!r}")
    if score is None:
        from .scoring.api import score
    lpath = storage.to_path(ledger_path) if ledger_path is not None else default_ledger(out)
    result = InputsResult(ledger=str(lpath))
    held = ledger.read(lpath)
    inputs = list_inputs(pattern)
    if not inputs:
        log.info("no input matches %s", pattern)
    names: dict[str, str] = {}
    todo = []
    for inp in inputs:
        name = input_name(inp)
        if name in names:
            result.failed.append({"input": inp, "out": None, "error": {
                "type": "ScoreError", "message": f"its output name {name!r} is that of "
                f"{names[name]} too: rename one of them"}})
            continue
        names[name] = inp
        fp = fingerprint(inp)
        entry = held.get(inp)
        if entry is not None and entry.status == ledger.SCORED:
            if entry.fingerprint == fp:
                result.skipped.append(inp)
                continue
            if not rescore_changed:
                log.warning("%s changed since it was scored into %s (fingerprint %s, now %s): "
                            "not scored again (rescore_changed scores it into a new output)",
                            inp, entry.out, entry.fingerprint, fp)
                result.changed.append(inp)
                continue
            result.changed.append(inp)
            name = f"{name}.rescore-{_short(fp)}"
        todo.append((inp, name, fp))
    if max_inputs is not None and len(todo) > max_inputs:
        result.not_this_run = [t[0] for t in todo[max_inputs:]]
        todo = todo[:max_inputs]
    for inp, name, fp in todo:
        dest = str(out).replace(PLACEHOLDER, name)
        resume = storage.to_path(dest).exists()
        log.info("scoring %s -> %s%s", inp, dest, " (resuming)" if resume else "")
        try:
            r = score(inp, model=model, out=dest, resume=resume, **score_kw)
        except (DigitbatchError, OSError) as exc:
            error = {"type": type(exc).__name__, "message": str(exc)}
            log.error("%s failed: %s: %s", inp, error["type"], exc)
            ledger.append(lpath, input=inp, fingerprint=fp, status=ledger.FAILED, out=dest,
                          run_id=None, error=error)
            result.failed.append({"input": inp, "out": dest, "error": error})
            continue
        m = r.metrics
        ledger.append(lpath, input=inp, fingerprint=fp, status=ledger.SCORED, out=r.out,
                      run_id=m.get("run_id"), checksum=(m.get("input") or {}).get("checksum"))
        result.scored.append({"input": inp, "out": r.out, "n_images": m.get("n_images"),
                              "n_rejected": m.get("n_rejected"), "accuracy": m.get("accuracy"),
                              "n_scored_this_run": m.get("n_scored_this_run")})
    log.info("inputs: %d scored, %d skipped, %d changed, %d failed, %d left for later",
             len(result.scored), len(result.skipped), len(result.changed), len(result.failed),
             len(result.not_this_run))
    return result


def _short(fp: str) -> str:
    import hashlib

    return hashlib.sha256(fp.encode()).hexdigest()[:8]
