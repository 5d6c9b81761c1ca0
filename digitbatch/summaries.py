"""How a run's result reads to a person: the lines printed after ingest, train and score.

One formatter per step, used by the standalone commands and by ``digitbatch
run`` alike. Each takes the step's result as a dict (``to_dict()`` of an
ingest or train result, a scoring run's metrics, or a job step's
``result``) and skips what the dict does not hold.
"""

from __future__ import annotations

import numpy as np

from .drift import summary_line
from .metrics import format_confusion


def ingest_lines(r: dict) -> list[str]:
    """``ingested N images (L labelled, R rejected)`` and, where known, where, how fast,
    the rejects by reason and the label counts."""
    head = f"ingested {r['n_images']} images ({r['n_labeled']} labelled, {r['n_rejects']} rejected)"
    if "path" in r and "seconds" in r:
        head += (f" into {r['path']} in {r['seconds']:.2f} s "
                 f"({r['images_per_second']:,.0f} images/s)")
    lines = [head]
    if r.get("rejects_by_reason"):
        lines.append("rejects: " + ", ".join(f"{k} {v}"
                                             for k, v in sorted(r["rejects_by_reason"].items())))
    if r.get("label_counts") is not None:
        lines.append("label counts: " + " ".join(str(c) for c in r["label_counts"]))
    if r.get("n_left_out"):
        lines.append(f"left out {r['n_left_out']} inputs the labels file gives no label "
                     f"(--only-labelled)")
    return lines


def train_lines(r: dict) -> list[str]:
    """The search, the CV folds and the test accuracy of a training run."""
    lines = []
    search = r.get("search")
    if search:
        lines.append(f"search: best {search['best_params']} "
                     f"(CV accuracy {search['best_mean']:.4f})")
    cv = r.get("cv")
    if cv:
        folds = " ".join(f"{s:.4f}" for s in cv["scores"])
        line = (f"{cv['k']}-fold CV accuracy on the cluster: {folds}; mean {cv['mean']:.4f} "
                f"+- {cv['std']:.4f}")
        if "fit_time_mean" in cv:
            line += f" (fit {cv['fit_time_mean']:.2f} s a fold, {cv['backend']})"
        lines.append(line)
    name = r.get("name") or r.get("model")
    line = f"trained {name} ({r['features']} features) on {r['n_train']} images"
    if r.get("extra"):
        line += (f" ({sum(e['n_rows'] for e in r['extra'])} of them from "
                 f"{len(r['extra'])} --extra stores)")
    if "fit_seconds" in r:
        line += f" in {r['fit_seconds']:.2f} s"
    if r.get("model_path"):
        line += f" -> {r['model_path']}"
    test = r.get("test")
    accuracy = test["accuracy"] if test else r.get("test_accuracy")
    if accuracy is not None:
        n_test = f" on {r['n_test']} images" if "n_test" in r else ""
        line += f"; test accuracy {accuracy:.4f}{n_test}"
    if test and test.get("ece") is not None:  # a calibrated model's probabilities
        line += f", calibration error (ECE) {100 * test['ece']:.2f} points"
    lines.append(line)
    return lines


def score_lines(m: dict, *, already_complete: bool = False) -> list[str]:
    """The confusion matrix (when labelled) and the headline of a scoring run: what
    this run scored and at what rate, what an earlier run of a resumed output did,
    the rejects."""
    lines = []
    if already_complete:
        lines.append("already complete: nothing was scored now; the figures below are of "
                     "the run that finished it")
    if m.get("n_labeled") and m.get("confusion_matrix"):
        target = str(m.get("target", ""))  # detect-D: the classes are "not D" and "D"
        names = [f"not {target[3:]}", target[3:]] if target.startswith("is-") else None
        lines += format_confusion(np.array(m["confusion_matrix"]), names).splitlines()
    n, n_now = m["n_images"], m.get("n_scored_this_run")
    if m.get("resumed") and n_now is not None and n_now != n and not already_complete:
        line = f"scored {n_now} of {n} images this run (resumed: the rest were committed before)"
    else:
        line = f"scored {n} images"
    if m.get("n_rejected"):
        line += f" ({m['n_rejected']} rejected)"
    if m.get("seconds") is not None and m.get("images_per_second") is not None \
            and not already_complete:
        line += f" in {m['seconds']:.2f} s ({m['images_per_second']:,.0f} images/s)"
    # the headline: the unseen rows only when the input is the model's training store
    head = m.get("headline") or {"accuracy": m.get("accuracy"), "n_labeled": m.get("n_labeled")}
    acc = head.get("accuracy")
    unseen = " unseen" if m.get("training_rows") else ""
    line += (f"; accuracy {acc:.4f} on {head['n_labeled']}{unseen} labelled" if acc is not None
             else "; no labels" if not m.get("n_labeled") else "; no unseen labelled rows")
    t = m.get("training_rows")
    if t:  # the input is the model's training store: its training rows apart
        t_acc = t.get("accuracy")
        line += (f" (the model's {t.get('n_labeled', 0)} training rows, not counted: "
                 f"{'n/a' if t_acc is None else format(t_acc, '.4f')})")
    cal = m.get("calibration")
    if cal:
        lines.append(f"calibration: expected calibration error {100 * cal['ece']:.2f} points "
                     f"on {cal['n_rows']} labelled rows")
    drift_line = summary_line(m)  # (digitbatch.drift; the headline stays the last line)
    if drift_line:
        lines.append(drift_line)
    lines.append(line)
    return lines


def inputs_lines(r: dict) -> list[str]:
    """What an incremental run did: inputs scored, skipped, changed, failed, left."""
    if not (r["scored"] or r["failed"] or r["not_this_run"]):
        return [f"nothing new: {len(r['skipped'])} inputs already scored"
                + (f", {len(r['changed'])} changed since (not scored again)" if r["changed"]
                   else "") + f" (ledger {r['ledger']})"]
    lines = []
    for s in r["scored"]:
        acc = s.get("accuracy")
        lines.append(f"scored {s['input']} -> {s['out']}: {s['n_images']} images"
                     + (f", {s['n_rejected']} rejected" if s.get("n_rejected") else "")
                     + (f", accuracy {acc:.4f}" if acc is not None else ""))
    for f in r["failed"]:
        lines.append(f"FAILED {f['input']}: {f['error']['type']}: {f['error']['message']}")
    for c in r["changed"]:
        lines.append(f"changed since it was scored: {c}")
    lines.append(f"inputs: {len(r['scored'])} scored, {len(r['skipped'])} skipped, "
                 f"{len(r['changed'])} changed, {len(r['failed'])} failed"
                 + (f", {len(r['not_this_run'])} left for the next run" if r["not_this_run"]
                    else "") + f" (ledger {r['ledger']})")
    return lines


def export_lines(r: dict) -> list[str]:
    """``exported N rows -> FILE (format, size) in S s (R rows/s)`` and where its metadata is."""
    line = f"exported {r['n_rows']:,} rows -> {r['out']}" if "out" in r else \
        f"exported {r['n_rows']:,} rows"
    if "format" in r:
        line += f" ({r['format']}"
        line += f", {r['n_bytes'] / 2**20:.1f} MiB)" if "n_bytes" in r else ")"
    if r.get("rows_per_second"):
        line += f" in {r['seconds']:.2f} s ({r['rows_per_second']:,.0f} rows/s)"
    if r.get("sidecar"):
        line += f"; metadata in {r['sidecar']}"
    if r.get("n_escaped"):
        line += f"; {r['n_escaped']:,} keys escaped against formulas"
    return [line]


def promote_lines(r: dict) -> list[str]:
    """A promote step's decision and why (both accuracies and McNemar's figures)."""
    return [f"{r.get('decision')} ({r.get('verdict')}): {r.get('reason')}"]


def history_lines(r: dict) -> list[str]:
    """The history step's: runs shown, outliers flagged (``digitbatch history`` prints the table)."""
    lines = [f"history of {r['n_runs']} runs: {r['n_flagged']} flagged as outliers"]
    lines += [f"outlier: {f['date']} {f['source']}: {', '.join(f['figures'])}"
              for f in r.get("flagged", [])]
    return lines


STEP_LINES = {"ingest": ingest_lines, "train": train_lines, "score": score_lines,
              "export": export_lines, "promote": promote_lines, "history": history_lines}


def step_lines(name: str, r: dict) -> list[str]:
    """The lines of job step ``name`` from its result (none for a step without one)."""
    if name == "score" and "inputs" in r:
        return inputs_lines(r["inputs"])
    fn = STEP_LINES.get(name)
    return fn(r) if fn is not None and r else []
