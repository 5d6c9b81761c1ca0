"""Promotion into a models folder: the gate, the switch of ``current``, rollback, and the
folder's history (this module alone reads and writes ``history.jsonl``).

:func:`promote` scores a candidate against the live model (the champion) on a
labelled gate store (:mod:`digitbatch.gate`); when the gate lets it through,
the candidate is copied into the models folder as ``NAME-SHA12/`` (its
``model.npz`` and ``manifest.json``, checked after the copy), and the folder's
pointer ``current`` (:mod:`digitbatch.pointer`) is switched to it in one
atomic replace. A refused candidate changes nothing but the history.
:func:`rollback` points ``current`` back at the previous champion. Nothing
in the folder is ever deleted: every champion stays there for a rollback.

``history.jsonl``: one JSON object a line, appended (and synced) after each
decision, refusals included (docs/schemas.md lists the fields): the time,
the action, the decision and verdict, the candidate's path, name and SHA-256,
the champion before and the model live after, both accuracies, the gate rows
and McNemar's b, c and p.

One promotion or rollback at a time per folder: each holds ``.promote.lock``
(``flock``; a second one is refused at once, not queued). Models folders are
local (or mounted) paths.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from . import pointer, storage
from .errors import ModelError, PromotionError, PromotionRefusedError
from .gate import DEFAULT_ALPHA, compare, decide
from .modelio import MANIFEST_FILE, MODEL_FILE, LoadedModel, load_model
from .version import __version__

log = logging.getLogger(__name__)

HISTORY_FILE = "history.jsonl"
LOCK_FILE = ".promote.lock"


@dataclass(frozen=True)
class PromotionResult:
    """What :func:`promote` or :func:`rollback` did; ``record`` is its history line."""

    decision: str  # promoted | unchanged | rolled back
    current: Path  # the live model directory after
    record: dict = field(repr=False)

    def to_dict(self) -> dict:
        return dict(self.record)


def _check_options(tolerance, min_accuracy, alpha) -> None:
    def num(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v

    if not num(tolerance) or not 0 <= tolerance < 1:
        raise PromotionError(f"--tolerance must be an accuracy difference from 0 to below 1 "
                             f"(0.005: half a point), got {tolerance!r}")
    if min_accuracy is not None and (not num(min_accuracy) or not 0 <= min_accuracy <= 1):
        raise PromotionError(f"--min-accuracy must be an accuracy from 0 to 1 (0.9), "
                             f"got {min_accuracy!r}")
    if not num(alpha) or not 0 < alpha < 1:
        raise PromotionError(f"--alpha must be a significance level between 0 and 1 "
                             f"(0.05), got {alpha!r}")


def _models_dir(models) -> Path:
    if storage.is_url(models):
        raise PromotionError(f"--models {models}: a models folder is a local or mounted path "
                             f"(its pointer is replaced atomically there); give a path")
    d = Path(models)
    if d.exists() and not d.is_dir():
        raise PromotionError(f"--models {d} is a file: give a folder (made if absent)")
    if (d / MANIFEST_FILE).exists():
        raise PromotionError(f"--models {d} is a model directory, not a models folder: give "
                             f"the folder that holds the promoted models (e.g. {d.parent / 'models'})")
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PromotionError(f"--models {d} cannot be made ({exc}): choose another folder") from None
    return d


@contextlib.contextmanager
def _locked(d: Path):
    """One promotion or rollback at a time in models folder ``d``."""
    fd = os.open(d / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl
        except ImportError:  # (no flock: the lock file alone is the lock)
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise PromotionError(f"another promotion or rollback is running in {d} (it holds "
                                     f"{d / LOCK_FILE}): wait for it, then try again") from None
        yield
    finally:
        os.close(fd)  # (releases the flock)


def history_path(models) -> Path:
    return Path(models) / HISTORY_FILE


def read_history(models) -> list[dict]:
    """Every line of ``models/history.jsonl``, oldest first ([] when there is none)."""
    p = history_path(models)
    if not p.exists():
        return []
    out = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise PromotionError(f"{p}, line {n}, is not JSON ({exc}): the history is damaged "
                                 f"(a line torn by a full disk?); remove that line") from None
    return out


def _append(d: Path, record: dict) -> None:
    line = json.dumps(record, sort_keys=True) + "\n"
    with open(history_path(d), "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def _store_copy(d: Path, loaded: LoadedModel) -> Path:
    """``loaded`` copied into ``d`` (once: a copy already there is checked, not replaced)."""
    name = pointer.folder_name(str(loaded.manifest.get("name", "model")), loaded.sha256)
    dest = d / name
    if dest.exists():
        try:
            have = load_model(dest)
        except ModelError as exc:
            raise PromotionError(f"{dest} is already in the models folder but does not load "
                                 f"({exc}): move it away, then promote again") from None
        if have.sha256 != loaded.sha256:
            raise PromotionError(f"{dest} is already in the models folder with another SHA-256: "
                                 f"move it away, then promote again")
        return dest
    tmp = d / f".{name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for f in (MODEL_FILE, MANIFEST_FILE):
            shutil.copyfile(loaded.path / f, tmp / f)
            with open(tmp / f, "rb") as fh:
                os.fsync(fh.fileno())
        copy = load_model(tmp)  # the copy's hash checked before it can go live
        if copy.sha256 != loaded.sha256:
            raise PromotionError(f"the copy of {loaded.path} changed while copying: promote again")
        os.rename(tmp, dest)
        pointer.sync_dir(d)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _entry(loaded: LoadedModel | None, name: str | None = None) -> dict | None:
    if loaded is None:
        return None
    return {"model": name or loaded.path.name, "name": loaded.manifest.get("name"),
            "sha256": loaded.sha256, "path": str(loaded.path)}


def promote(candidate, *, models, gate, tolerance: float = 0.0,
            min_accuracy: float | None = None, alpha: float = DEFAULT_ALPHA) -> PromotionResult:
    """Gate ``candidate`` against the champion of models folder ``models`` and make it live.

    Parameters
    ----------
    candidate : path
        The model directory to promote (``digitbatch train``'s output).
    models : path
        The models folder (made if absent): its copies, ``current`` and
        ``history.jsonl``.
    gate : path
        A labelled store the candidate and the champion are both scored on;
        a model's own training store gives only its test split.
    tolerance : float
        How far below the champion's accuracy the candidate may be (0.005:
        half a point). With 0, only a significantly better candidate passes.
    min_accuracy : float, optional
        A floor the candidate must reach, champion or not.
    alpha : float
        McNemar's significance level.

    Returns
    -------
    PromotionResult
        ``decision`` "promoted", or "unchanged" when the candidate is the
        champion already (same SHA-256).

    Raises
    ------
    PromotionRefusedError
        The gate refused the candidate (both accuracies and McNemar's figures
        in the message); ``current`` is unchanged, the refusal is in the history.
    PromotionError
        A bad option, folder, gate store or candidate.
    """
    _check_options(tolerance, min_accuracy, alpha)
    d = _models_dir(models)
    if storage.is_url(candidate):  # (copied into the folder from a local copy)
        with storage.fetched(str(candidate)) as local:
            return _promote(local, str(candidate), d, gate, tolerance, min_accuracy, alpha)
    return _promote(candidate, os.path.abspath(candidate), d, gate, tolerance, min_accuracy,
                    alpha)


def _promote(candidate, shown: str, d: Path, gate, tolerance, min_accuracy, alpha):
    try:
        cand = load_model(candidate)
    except ModelError as exc:
        raise PromotionError(f"candidate {shown}: {exc}") from None
    with _locked(d):
        head = pointer.current_of(d)
        try:
            champ = load_model(d / pointer.POINTER_FILE) if head is not None else None
        except ModelError as exc:
            raise PromotionError(f"the live model of {d} does not load, so the candidate cannot "
                                 f"be compared with it ({exc}); restore it, roll back, or start "
                                 f"a new models folder") from None
        record = {"time": pointer.now(), "action": "promote", "models": str(d),
                  "candidate": {"path": shown,
                                "name": cand.manifest.get("name"), "sha256": cand.sha256},
                  "champion": _entry(champ, head and head["model"]),
                  "tolerance": tolerance, "min_accuracy": min_accuracy, "alpha": alpha,
                  "digitbatch_version": __version__}
        if champ is not None and champ.sha256 == cand.sha256:
            record.update({"decision": "unchanged", "verdict": "same model", "current":
                           record["champion"], "reason": f"the candidate is the champion "
                           f"already ({head['model']}, same SHA-256): nothing to do"})
            _append(d, record)
            log.info("%s", record["reason"])
            return PromotionResult("unchanged", champ.path, record)
        g = compare(cand, champ, gate)
        verdict = decide(g, tolerance=tolerance, min_accuracy=min_accuracy, alpha=alpha)
        record.update({"gate": g.to_dict(), "accuracy": g.to_dict()["accuracy"],
                       "mcnemar": g.test, "verdict": verdict.verdict})
        if not verdict.promote:
            record.update({"decision": "refused", "current": record["champion"],
                           "reason": verdict.reason})
            _append(d, record)
            stays = f"; {head['model']} stays live" if head else "; nothing is live yet"
            raise PromotionRefusedError(f"candidate {shown} refused: {verdict.reason}{stays}",
                                        record)
        dest = _store_copy(d, cand)
        stack = ([{"model": head["model"], "sha256": head["sha256"]}] + head["previous"]
                 if head else [])
        pointer.write_pointer(d, dest.name, cand.sha256, stack)
        record.update({"decision": "promoted", "reason": verdict.reason,
                       "current": {"model": dest.name, "name": cand.manifest.get("name"),
                                   "sha256": cand.sha256, "path": str(dest)}})
        _append(d, record)
    log.info("promoted %s to %s/current: %s", shown, d, verdict.reason)
    return PromotionResult("promoted", dest, record)


def rollback(*, models) -> PromotionResult:
    """Point ``models/current`` back at the champion before it (recorded in the history).

    Repeated rollbacks walk further back; a :class:`PromotionError` when
    there is no earlier champion (or its copy is missing or damaged).
    """
    d = _models_dir(models)
    with _locked(d):
        head = pointer.current_of(d)
        if head is None:
            raise PromotionError(f"{d} has no current model: nothing to roll back")
        if not head["previous"]:
            raise PromotionError(f"{d}/current ({head['model']}) is the first champion: there is "
                                 f"no earlier one to roll back to")
        back, rest = head["previous"][0], head["previous"][1:]
        try:
            loaded = load_model(d / back["model"])
        except ModelError as exc:
            raise PromotionError(f"the previous champion {back['model']} does not load ({exc}): "
                                 f"restore it in {d}, then roll back again") from None
        if loaded.sha256 != back["sha256"]:
            raise PromotionError(f"{d / back['model']} has SHA-256 {loaded.sha256[:16]}..., the "
                                 f"pointer recorded {back['sha256'][:16]}...: it was replaced; "
                                 f"restore it, then roll back again")
        pointer.write_pointer(d, back["model"], back["sha256"], rest)
        record = {"time": pointer.now(), "action": "rollback", "models": str(d),
                  "decision": "rolled back", "digitbatch_version": __version__,
                  "champion": {"model": head["model"], "sha256": head["sha256"]},
                  "current": {**_entry(loaded, back["model"])},
                  "reason": f"rolled back from {head['model']} to {back['model']}"}
        _append(d, record)
    log.info("%s in %s", record["reason"], d)
    return PromotionResult("rolled back", loaded.path, record)


def describe(result: PromotionResult) -> list[str]:
    """The lines ``digitbatch promote`` prints."""
    r = result.record
    cur = r.get("current") or {}
    lines = [f"{r['decision']}: {cur.get('model')} is live "
             f"(sha256 {str(cur.get('sha256'))[:16]}...)", f"  {r.get('reason', '')}"]
    lines.append(f"  history: {history_path(r['models'])}")
    return lines
