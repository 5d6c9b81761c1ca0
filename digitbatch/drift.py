"""Drift of a scoring run against its model's reference, and the expected accuracy.

The model's manifest holds a reference profile (:mod:`digitbatch.profile`)
of its test split, recorded at training time (:func:`reference_entry`); a
scoring run sums its chunks' profiles. :func:`drift_block` compares the two
and makes the ``drift`` block of ``metrics.json`` (docs/schemas.md):

- the population stability index of each signal (prediction, margin, ink,
  intensity): ``PSI = sum_i (p_i - q_i) * ln(p_i / q_i)`` over the bins,
  ``q`` the reference's shares and ``p`` tonight's, each share at least
  :data:`EPSILON` (an empty bin would make the logarithm infinite; with
  1e-4 a bin empty on one side and holding 1% on the other adds ~0.05);
  overall: the largest of them (the status is the worst signal's);
- the status of each: ``ok`` below ``warn``, ``warn`` from ``warn``,
  ``alarm`` from ``alarm`` (:class:`Thresholds`, defaults 0.1 and 0.25, the
  usual PSI rule of thumb);
- ``expected_accuracy``: the reference's accuracy in each margin bin,
  weighted by tonight's share of rows in that bin. It assumes the errors per
  margin bin do not change between the reference and tonight (a shift that
  makes confident mistakes breaks it); a bin without labelled reference
  rows takes the accuracy of the nearest bin that has some;
- the reject rate (members refused by decoding or ingest) and its change
  against the reference's (the training store's).

:func:`raise_on_alarm` is what ``--fail-on drift-alarm`` runs after every
output is written: a :class:`~digitbatch.errors.DriftAlarmError` (exit
status 3) naming each output and signal in alarm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import profile as P
from .errors import DriftAlarmError, MonitorError

EPSILON = 1e-4
DEFAULT_WARN = 0.1
DEFAULT_ALARM = 0.25
# the values of --fail-on (and [monitor] fail_on)
FAIL_ON = ("drift-alarm", "never")
NO_REFERENCE = "no reference"


@dataclass(frozen=True)
class Thresholds:
    """PSI from which a signal is ``warn`` and ``alarm``."""

    warn: float = DEFAULT_WARN
    alarm: float = DEFAULT_ALARM

    def __post_init__(self):
        for name in ("warn", "alarm"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or v <= 0:
                raise MonitorError(f"PSI {name} threshold must be a number > 0, got {v!r} "
                                   f"(defaults: warn {DEFAULT_WARN}, alarm {DEFAULT_ALARM})")
        if self.alarm < self.warn:
            raise MonitorError(f"PSI alarm threshold {self.alarm} is below the warn threshold "
                               f"{self.warn}: give alarm >= warn")

    def status(self, psi: float | None) -> str | None:
        if psi is None:
            return None
        return "alarm" if psi >= self.alarm else "warn" if psi >= self.warn else "ok"


def check_fail_on(value) -> str:
    """``value`` if it is one of :data:`FAIL_ON` (None: ``never``)."""
    if value is None:
        return "never"
    if value not in FAIL_ON:
        raise MonitorError(f"fail_on must be one of {list(FAIL_ON)}, got {value!r}")
    return value


def psi(reference, current, eps: float = EPSILON) -> float | None:
    """Population stability index of the counts ``current`` against ``reference``
    (None when either has no rows)."""
    q = np.asarray(reference, np.float64)
    p = np.asarray(current, np.float64)
    if q.shape != p.shape:
        raise ValueError(f"histograms of {q.size} and {p.size} bins are not compared")
    if q.sum() <= 0 or p.sum() <= 0:
        return None
    q = np.maximum(q / q.sum(), eps)
    p = np.maximum(p / p.sum(), eps)
    return float(np.sum((p - q) * np.log(p / q)))


def expected_accuracy(reference: dict, current: dict) -> tuple[float | None, float | None]:
    """``(expected accuracy, coverage)``: the reference's accuracy per margin bin
    weighted by ``current``'s margin histogram; coverage is the share of
    ``current``'s rows in bins where the reference had labelled rows (the
    others take the nearest such bin's accuracy). None without labelled
    reference rows or current rows."""
    acc = P.accuracy_by_margin(reference)
    have = [i for i, a in enumerate(acc) if a is not None]
    counts = np.asarray(current["margin"], np.float64)
    if not have or counts.sum() <= 0:
        return None, None
    filled = np.array([acc[min(have, key=lambda j: (abs(j - i), j))] for i in range(len(acc))])
    share = counts / counts.sum()
    coverage = float(share[[a is not None for a in acc]].sum())
    return float(share @ filled), coverage


def reference_entry(prof: dict, *, split: str, store: str, store_checksum: str,
                    n_rejected: int, n_images: int, margin: str) -> dict:
    """The manifest's ``drift_reference``: a test split's profile and where it came from."""
    n_in = n_rejected + n_images
    return {"split": split, "store": store, "store_checksum": store_checksum,
            "margin": margin, "reject_rate": round(n_rejected / n_in, 6) if n_in else None,
            "profile": prof}


def reference_for(model, store, split: str = "test") -> dict | None:
    """The ``drift_reference`` of compact ``model`` on ``store``'s ``split`` rows
    (read a chunk at a time, as scoring reads them), or None when the split
    has no labelled rows."""
    rows = store.split_rows(split)
    total = None
    for a, b in store.chunks:
        a, b = max(a, rows.start), min(b, rows.stop)
        if a >= b:
            continue
        images = store.column("images", slice(a, b))
        pred, margin, _ = model.score_chunk(images, proba=False)
        target = model.target(store.column("labels", slice(a, b)))
        part = P.chunk_profile(images, pred, margin, target, model.classes)
        total = part if total is None else P.add(total, part)
    if total is None or not sum(total["margin_labelled"]):
        return None
    return reference_entry(total, split=split, store=str(store.path),
                           store_checksum=store.checksum,
                           n_rejected=int(store.meta.get("n_rejects", 0)), n_images=store.n,
                           margin="probability" if model.has_proba else "decision value")


def _rate(x: float | None) -> float | None:
    return None if x is None else round(float(x), 6)


def drift_block(current: dict | None, reference: dict | None, thresholds: Thresholds, *,
                n_rejected: int, accuracy: float | None = None, margin: str | None = None,
                n_classes: int | None = None) -> dict:
    """The ``drift`` block of metrics.json.

    ``current``: the run's profile (None when a chunk was committed without
    one); ``reference``: the manifest's ``drift_reference`` (None: the model
    has none); ``n_rejected``: members refused (before and while scoring);
    ``accuracy``: the run's measured accuracy, if labelled; ``margin``: what
    the run's margins are (the reference's must be the same).
    """
    n = current["n"] if current else None
    n_in = (n or 0) + n_rejected
    block = {
        "thresholds": {"warn": thresholds.warn, "alarm": thresholds.alarm},
        "epsilon": EPSILON,
        "reference": None,
        "reason": None,
        "signals": {s: {"psi": None, "status": None} for s in P.SIGNALS},
        "overall": {"psi": None, "status": NO_REFERENCE, "signal": None},
        "expected_accuracy": None,
        "expected_accuracy_coverage": None,
        "measured_accuracy": accuracy,
        "reject_rate": _rate(n_rejected / n_in) if n_in else None,
        "reference_reject_rate": None,
        "reject_rate_change": None,
        "normalisation": _normalisation(current),
        "profile": current,
        "reference_profile": None,
    }
    reason = None
    ref_prof = reference.get("profile") if isinstance(reference, dict) else None
    if reference is None:
        reason = ("the model has no reference profile (trained without a test split, or by a "
                  "digitbatch before drift monitoring): retrain it to monitor drift")
    elif current is None:
        reason = ("a chunk was committed without a profile (by an earlier digitbatch): score "
                  "the input again into a new output to monitor drift")
    elif (why := P.check(ref_prof, n_classes)) is not None:
        reason = f"the model's reference profile is not usable ({why}): retrain it"
    elif margin is not None and reference.get("margin") not in (None, margin):
        reason = (f"the reference's margins are {reference.get('margin')!r} and this run's "
                  f"{margin!r}: retrain the model")
    if reason is not None:
        block["reason"] = reason
        return block
    block["reference"] = {k: reference.get(k) for k in ("split", "store", "store_checksum")}
    block["reference"]["n"] = ref_prof["n"]
    block["reference_profile"] = ref_prof
    ref_rate = reference.get("reject_rate")
    block["reference_reject_rate"] = _rate(ref_rate)
    if ref_rate is not None and block["reject_rate"] is not None:
        block["reject_rate_change"] = _rate(block["reject_rate"] - ref_rate)
    if not current["n"]:
        block["overall"]["status"] = "no rows"
        block["reason"] = "no row was scored: nothing to compare"
        return block
    for s in P.SIGNALS:
        v = psi(ref_prof[s], current[s])
        block["signals"][s] = {"psi": None if v is None else round(v, 6),
                               "status": thresholds.status(v)}
    scored = {s: v["psi"] for s, v in block["signals"].items() if v["psi"] is not None}
    if scored:
        worst = max(scored, key=scored.get)
        block["overall"] = {"psi": scored[worst], "status": thresholds.status(scored[worst]),
                            "signal": worst}
    exp, cov = expected_accuracy(ref_prof, current)
    block["expected_accuracy"] = None if exp is None else round(exp, 6)
    block["expected_accuracy_coverage"] = None if cov is None else round(cov, 6)
    return block


def _normalisation(current: dict | None) -> dict | None:
    norm = (current or {}).get("normalisation")
    if not norm or not norm.get("n"):
        return None
    return {"n": norm["n"], "inverted_share": _rate(norm["inverted"] / norm["n"]),
            "resized_share": _rate(norm["resized"] / norm["n"])}


def headline(block: dict | None) -> dict | None:
    """The drift block without its histograms (for run summaries)."""
    if not block:
        return None
    return {k: block.get(k) for k in ("overall", "signals", "expected_accuracy", "reason")}


def summary_line(metrics: dict) -> str | None:
    """One line on a run's drift for the CLI's summary (None before drift monitoring)."""
    d = metrics.get("drift")
    if not d:
        return None
    o = d.get("overall") or {}
    if o.get("psi") is None:
        return f"drift: {o.get('status')}" + (f" ({d['reason']})" if d.get("reason") else "")
    moved = [f"{s} {v['status']}" for s, v in d["signals"].items()
             if v.get("status") not in (None, "ok")]
    exp = d.get("expected_accuracy")
    return (f"drift: {o['status']} (largest PSI {o['psi']:.3f}, {o['signal']}"
            + (f"; {', '.join(moved)}" if moved else "") + ")"
            + (f"; expected accuracy {exp:.4f}" if exp is not None else ""))


def alarms(metrics: dict) -> list[str]:
    """The signals of a metrics.json record in alarm, as ``"name PSI x"``."""
    d = metrics.get("drift") or {}
    return [f"{s} PSI {v['psi']:.3f}" for s, v in (d.get("signals") or {}).items()
            if v.get("status") == "alarm"]


def raise_on_alarm(outputs: list[tuple[str, dict]], fail_on: str | None, *,
                   result=None) -> None:
    """With ``fail_on`` ``drift-alarm``: a :class:`DriftAlarmError` (exit status 3)
    naming each output whose metrics (``(output, metrics.json record)``) are in
    alarm. Called after every output is written and committed. ``result``: the
    command's result, kept on the error (for the metrics file)."""
    if check_fail_on(fail_on) != "drift-alarm":
        return
    bad = [(out, alarms(m), (m.get("drift") or {}).get("thresholds", {}).get("alarm"))
           for out, m in outputs]
    bad = [b for b in bad if b[1]]
    if bad:
        err = DriftAlarmError(
            "drift alarm: " + "; ".join(f"{out}: {', '.join(sig)} (alarm at {thr})"
                                        for out, sig, thr in bad)
            + ". Every output is written; see the report's drift section. Rerun without "
              "--fail-on drift-alarm (or [monitor] fail_on) to accept the run, or raise "
              "--psi-alarm")
        err.result = result
        raise err
