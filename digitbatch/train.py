"""Fit a catalogue model on a store's train rows and evaluate it on its test rows."""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from . import kernels, metrics
from .crossval import check_folds, client_or_none, run_cv, run_search
from .errors import TrainingError
from .layout import UNKNOWN_LABEL, open_store
from .modelio import save_model
from .models import build, compact, get_spec, resolve_features, search_grid, target

log = logging.getLogger(__name__)

DEFAULT_SEED = 42


@dataclass(frozen=True)
class TrainResult:
    model_path: str
    name: str
    features: str
    n_train: int
    n_test: int
    fit_seconds: float
    test: dict | None
    seed: int
    cv: dict | None = None
    search: dict | None = None
    pipeline: object = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "pipeline"}


def _labeled_rows(store, split: str) -> tuple[np.ndarray, np.ndarray]:
    rows = store.split_rows(split)
    images, labels, _ = store.read(rows)
    known = labels != UNKNOWN_LABEL
    return images[known], labels[known]


def evaluate(model, images: np.ndarray, labels: np.ndarray) -> dict:
    """Test metrics of a compact model on labelled rows (labels in store terms)."""
    y = model.target(labels)
    cm = kernels.confusion_counts(y, model.predict(images).astype(np.int64), model.n_classes)
    return metrics.summarize(cm)


def train(
    store: str | Path,
    out: str | Path,
    *,
    model: str = "sgd",
    features: str | None = None,
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
    spec = get_spec(model)
    feats = resolve_features(spec, features)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise TrainingError(f"seed must be an integer >= 0, got {seed!r}")
    if Path(out).exists() and not overwrite:
        raise TrainingError(f"{out} already exists: choose another --out or pass --overwrite")
    s = open_store(store)
    train_split = "train" if "train" in s.splits else "all"
    X, labels = _labeled_rows(s, train_split)
    if X.shape[0] == 0:
        raise TrainingError(
            f"store {s.path} has no labelled rows in split {train_split!r}: ingest labelled "
            f"images (folder names or --labels CSV) to train"
        )
    y = target(spec, labels)
    classes = np.unique(y)
    if classes.size < 2:
        raise TrainingError(
            f"store {s.path} has a single class ({classes.tolist()}) in its train rows"
            + (f" for {model}" if spec.binary_digit is not None else "")
            + ": a classifier needs at least two"
        )
    if cv is not None:
        check_folds(cv, y)
    order = np.random.default_rng(seed).permutation(X.shape[0])
    X, y = kernels.flatten(X[order]), y[order]
    pipe = build(model, seed=seed, features=feats)
    cv_result = search_result = None
    with warnings.catch_warnings():
        # A fixed epoch budget is part of a catalogue model's definition.
        warnings.simplefilter("ignore", ConvergenceWarning)
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
    cm_model = compact(model, pipe, features=feats)
    log.info("fitted %s (%s features) on %d rows in %.2f s", model, feats, X.shape[0], fit_seconds)

    test = None
    n_test = 0
    if "test" in s.splits:
        Xt, yt = _labeled_rows(s, "test")
        n_test = int(Xt.shape[0])
        if n_test:
            test = evaluate(cm_model, Xt, yt)
    manifest = {
        "seed": seed,
        "train": {"store": str(s.path), "store_checksum": s.checksum, "split": train_split,
                  "n_rows": int(X.shape[0]), "fit_seconds": round(fit_seconds, 3)},
        "test": test,
        "cv": cv_result.to_dict() if cv_result else None,
        "search": search_result,
    }
    save_model(cm_model, out, manifest=manifest, overwrite=overwrite)
    return TrainResult(str(out), model, feats, int(X.shape[0]), n_test, fit_seconds, test, seed,
                       cv_result.to_dict() if cv_result else None, search_result, pipe)
