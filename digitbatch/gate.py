"""The promotion gate: a candidate and the champion scored on the same labelled rows,
McNemar's test on their paired predictions, and the decision.

Both models predict every labelled row of the gate store a chunk at a time
(memory: one chunk and its predictions, whatever the store's size), and each
chunk adds four counts (:func:`paired_counts`): rows both get right, rows only
the candidate gets right (``b``), rows only the champion gets right (``c``),
rows both get wrong. Accuracies come from them, and so does McNemar's test
(:func:`mcnemar`), which looks only at the discordant rows: the exact
two-sided binomial test when ``b + c < 25``, else the chi-square statistic
with continuity correction, 1 degree of freedom.

The decision (:func:`decide`), with ``drop`` = champion's accuracy minus the
candidate's and ``p`` McNemar's p-value:

- ``better``: ``b > c`` and ``p < alpha``: promoted;
- ``worse``: ``drop > tolerance``: refused, whatever ``p`` says (a gate lets no
  model through that measured worse than the stated tolerance);
- ``within-tolerance``: significantly worse (``c > b``, ``p < alpha``) but by
  no more than ``tolerance > 0``: promoted;
- ``tie``: none of these: promoted only when ``tolerance > 0`` (the user accepted a
  model up to that far below the champion); with the default ``tolerance = 0``
  a tie is refused: it is not a win, and a new model that is not shown to be
  better is no reason to change what is live.
- ``first``: no champion yet: promoted, unless ``min_accuracy`` is given and
  not reached. ``min_accuracy`` is a floor in every case.

When the gate store is the training store of either model (same checksum),
only its test split is scored (rows neither trained on), and a store with no
test split is refused: a gate on training rows flatters the model that saw them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .determinism import deterministic_scores, one_blas_thread
from .errors import PromotionError
from .layout import check_labels, open_store, read_rows
from .modelio import LoadedModel, check_model_for_store

# McNemar: the exact binomial test below this many discordant rows, the
# chi-square approximation (with continuity correction) from it on
EXACT_BELOW = 25
DEFAULT_ALPHA = 0.05


def paired_counts(target: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray | None) -> np.ndarray:
    """``[n, a_right, b_right, a_only, b_only]`` over the rows of a chunk with a known
    target (>= 0); ``pred_b`` None: one model, b's counts zero."""
    known = target >= 0
    t = target[known]
    ra = pred_a[known] == t
    if pred_b is None:
        return np.array([t.size, int(ra.sum()), 0, 0, 0], np.int64)
    rb = pred_b[known] == t
    return np.array([t.size, int(ra.sum()), int(rb.sum()), int((ra & ~rb).sum()),
                     int((~ra & rb).sum())], np.int64)


def mcnemar(b: int, c: int) -> dict:
    """McNemar's test of ``b`` vs ``c`` discordant pairs: ``{"b", "c", "method",
    "statistic", "p"}``, p two-sided (1.0 when there is no discordant pair)."""
    b, c = int(b), int(c)
    n = b + c
    if n == 0:
        return {"b": b, "c": c, "method": "exact", "statistic": None, "p": 1.0}
    if n < EXACT_BELOW:
        k = min(b, c)
        tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
        return {"b": b, "c": c, "method": "exact", "statistic": float(k),
                "p": min(1.0, 2 * tail)}
    stat = max(abs(b - c) - 1, 0) ** 2 / n
    return {"b": b, "c": c, "method": "chi-square, continuity corrected", "statistic": stat,
            "p": math.erfc(math.sqrt(stat / 2))}


@dataclass(frozen=True)
class GateResult:
    """What the gate measured: rows, accuracies, McNemar (None without a champion)."""

    store: str
    checksum: str
    rows: str  # "all" or "test split"
    n: int
    candidate_accuracy: float
    champion_accuracy: float | None
    test: dict | None

    def to_dict(self) -> dict:
        return {"store": self.store, "checksum": self.checksum, "rows": self.rows, "n": self.n,
                "accuracy": {"candidate": self.candidate_accuracy,
                             "champion": self.champion_accuracy},
                "mcnemar": self.test}


def _trained_on(loaded: LoadedModel) -> tuple[str | None, str | None]:
    train = loaded.manifest.get("train") or {}
    return train.get("store_checksum"), train.get("split")


def _gate_rows(store, models: list[LoadedModel]) -> tuple[slice, str]:
    """Every row, or the test split when the gate store trained one of the models."""
    seen = [m for m in models if _trained_on(m)[0] == store.checksum]
    if not seen:
        return slice(0, store.n), "all"
    names = ", ".join(str(m.path) for m in seen)
    if any(_trained_on(m)[1] != "train" for m in seen) or "test" not in store.splits:
        raise PromotionError(
            f"gate store {store.path} is the training store of {names}, and it has no test "
            f"split that model did not train on: a gate on training rows flatters it. Give "
            f"--gate a labelled store of rows neither model trained on")
    a, b = store.splits["test"]
    return slice(a, b), "test split"


def compare(candidate: LoadedModel, champion: LoadedModel | None, gate) -> GateResult:
    """Score ``candidate`` (and ``champion``) on the labelled rows of store ``gate``."""
    store = open_store(gate)
    models = [candidate] + ([champion] if champion is not None else [])
    for m in models:
        check_model_for_store(m, store)
    if champion is not None and \
            (candidate.model.binary_digit, [int(v) for v in candidate.model.classes]) != \
            (champion.model.binary_digit, [int(v) for v in champion.model.classes]):
        raise PromotionError(
            f"candidate {candidate.path} predicts {_what(candidate)}, champion {champion.path} "
            f"predicts {_what(champion)}: their accuracies do not compare. Promote a model of "
            f"the same target into its own models folder")
    rows, which = _gate_rows(store, models)
    total = np.zeros(5, np.int64)
    with one_blas_thread():
        for i, (a, b) in enumerate(store.chunks):
            lo, hi = max(a, rows.start), min(b, rows.stop)
            if lo >= hi:
                continue
            images = read_rows(store.images, i)[lo - a:hi - a]
            labels = check_labels(read_rows(store.labels, i), where=f"gate store {store.path}, "
                                                                    f"chunk {i}")[lo - a:hi - a]
            target = candidate.model.target(labels)
            preds = [deterministic_scores(m.model, images, proba=False)[0] for m in models]
            total += paired_counts(target, preds[0], preds[1] if champion is not None else None)
    n, right_a, right_b, b_only, c_only = (int(v) for v in total)
    if n == 0:
        raise PromotionError(f"gate store {store.path} has no labelled rows ({which}): the gate "
                             f"needs labels; ingest a labelled store of held-out rows")
    return GateResult(store=str(store.path), checksum=store.checksum, rows=which, n=n,
                      candidate_accuracy=right_a / n,
                      champion_accuracy=right_b / n if champion is not None else None,
                      test=mcnemar(b_only, c_only) if champion is not None else None)


def _what(m: LoadedModel) -> str:
    d = m.model.binary_digit
    return f"'is it {d}'" if d is not None else f"digits {[int(v) for v in m.model.classes]}"


@dataclass(frozen=True)
class Decision:
    promote: bool
    verdict: str  # better | tie | within-tolerance | worse | first | below-floor
    reason: str


def decide(g: GateResult, *, tolerance: float = 0.0, min_accuracy: float | None = None,
           alpha: float = DEFAULT_ALPHA) -> Decision:
    """The gate's verdict on ``g`` (see the module's docstring)."""
    cand = g.candidate_accuracy
    on = f"on {g.n:,} labelled rows ({g.rows}) of {g.store}"
    if min_accuracy is not None and cand < min_accuracy:
        return Decision(False, "below-floor",
                        f"candidate accuracy {cand:.4f} is below --min-accuracy "
                        f"{min_accuracy:.4f} {on}"
                        + (f" (champion {g.champion_accuracy:.4f})"
                           if g.champion_accuracy is not None else ""))
    if g.champion_accuracy is None:
        return Decision(True, "first", f"no champion yet; candidate accuracy {cand:.4f} {on}")
    champ, t = g.champion_accuracy, g.test
    figures = (f"candidate accuracy {cand:.4f}, champion {champ:.4f} {on}; McNemar b={t['b']} "
               f"(only the candidate right), c={t['c']} (only the champion right), "
               f"p={t['p']:.4g} ({t['method']})")
    drop = champ - cand
    if drop > tolerance:
        return Decision(False, "worse", f"{figures}: the candidate is worse by {drop:.4f}, "
                                        f"beyond the tolerance {tolerance:.4f}")
    if t["b"] > t["c"] and t["p"] < alpha:
        return Decision(True, "better", f"{figures}: better (p < alpha {alpha:g})")
    if tolerance > 0 and t["c"] > t["b"] and t["p"] < alpha:
        return Decision(True, "within-tolerance",
                        f"{figures}: worse (p < alpha {alpha:g}) but by {drop:.4f}, within the "
                        f"tolerance {tolerance:.4f}")
    if tolerance > 0:
        return Decision(True, "tie", f"{figures}: no significant difference at alpha {alpha:g}, "
                                     f"within the tolerance {tolerance:.4f}: promoted as a tie, "
                                     f"not a win")
    return Decision(False, "tie", f"{figures}: no significant difference at alpha {alpha:g}; "
                                  f"a tie is not a win, and with --tolerance 0 only a win "
                                  f"promotes (pass --tolerance T to accept a candidate up to T "
                                  f"below the champion)")
