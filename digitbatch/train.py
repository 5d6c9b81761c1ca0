"""Fit a catalogue model on a store's train rows and evaluate it on its test rows."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import kernels, metrics
from .errors import TrainingError
from .layout import UNKNOWN_LABEL, open_store
from .modelio import save_model
from .crossval import check_folds, client_or_none, run_cv, run_search
from .models import build, compact, get_spec, search_grid

log = logging.getLogger(__name__)

DEFAULT_SEED = 42


@dataclass(frozen=True)
class TrainResult:
    model_path: str
    name: str
    n_train: int
    n_test: int
    fit_seconds: float
    test: dict | None
    seed: int
    cv: dict | None = None
    search: dict | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _labeled_rows(store, split: str) -> tuple[np.ndarray, np.ndarray]:
    rows = store.split_rows(split)
    images, labels, _ = store.read(rows)
    known = labels != UNKNOWN_LABEL
    return images[known], labels[known]


def train(
    store: str | Path,
    out: str | Path,
    *,
    model: str = "sgd",
    seed: int = DEFAULT_SEED,
    cv: int | None = None,
    search: bool = False,
    scheduler: str | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Fit catalogue model ``model`` on ``store``'s train rows; save it to ``out``.

    The train rows are shuffled with ``seed`` (recorded in the manifest)
    before fitting, as the walk-through does. With ``cv`` the model is also
    cross-validated (K folds, on the Dask cluster of ``scheduler``); with
    ``search`` a small grid of hyperparameters is searched by the same CV
    (5 folds when ``cv`` is not given) and the best is fitted.
    """
    get_spec(model)
    if Path(out).exists() and not overwrite:
        raise TrainingError(f"{out} already exists: choose another --out or pass --overwrite")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise TrainingError(f"seed must be an integer >= 0, got {seed!r}")
    s = open_store(store)
    train_split = "train" if "train" in s.splits else "all"
    X, y = _labeled_rows(s, train_split)
    if X.shape[0] == 0:
        raise TrainingError(
            f"store {s.path} has no labelled rows in split {train_split!r}: ingest labelled "
            f"images (folder names or --labels CSV) to train"
        )
    classes = np.unique(y)
    if classes.size < 2:
        raise TrainingError(
            f"store {s.path} has a single class ({classes.tolist()}) in its train rows: "
            f"a classifier needs at least two"
        )
    if cv is not None:
        check_folds(cv, y)
    order = np.random.default_rng(seed).permutation(X.shape[0])
    X, y = kernels.flatten(X[order]), y[order]
    pipe = build(model, seed=seed)
    cv_result = search_result = None
    if cv is not None or search:
        with client_or_none(scheduler) as client:
            if search:
                best, search_result = run_search(pipe, search_grid(model), X, y, k=cv or 5,
                                                 client=client)
                pipe.set_params(**best)
            if cv is not None:
                cv_result = run_cv(pipe, X, y, k=cv, client=client)
    t0 = time.perf_counter()
    pipe.fit(X, y)
    fit_seconds = time.perf_counter() - t0
    lm = compact(model, pipe)
    log.info("fitted %s on %d rows in %.2f s", model, X.shape[0], fit_seconds)

    test = None
    n_test = 0
    if "test" in s.splits:
        Xt, yt = _labeled_rows(s, "test")
        n_test = int(Xt.shape[0])
        if n_test:
            cm = kernels.confusion_counts(yt, lm.predict(Xt).astype(np.int64))
            test = metrics.summarize(cm)
    manifest = {
        "seed": seed,
        "train": {"store": str(s.path), "store_checksum": s.checksum, "split": train_split,
                  "n_rows": int(X.shape[0]), "fit_seconds": round(fit_seconds, 3)},
        "test": test,
        "cv": cv_result.to_dict() if cv_result else None,
        "search": search_result,
    }
    save_model(lm, out, manifest=manifest, overwrite=overwrite)
    return TrainResult(str(out), model, int(X.shape[0]), n_test, fit_seconds, test, seed,
                       cv_result.to_dict() if cv_result else None, search_result)
