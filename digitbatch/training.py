"""Fit a catalogue model on a store's train rows and evaluate it on its test rows."""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import SGDClassifier
from sklearn.model_selection import ParameterGrid

from . import calibration as CAL
from . import cluster, drift, extrarows, kernels, metrics, storage
from . import fserrors
from .crossval import check_folds, client_or_none, run_cv, run_search
from .errors import TrainingError
from .layout import UNKNOWN_LABEL, open_store
from .modelio import save_model
from .models import build, compact, get_spec, resolve_features, search_grid, target

log = logging.getLogger(__name__)

DEFAULT_SEED = 42
# Bumped when a field of the --json summary is renamed or changes meaning.
SUMMARY_SCHEMA_VERSION = 1


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
    extra: list | None = None  # the manifest's train.extra: stores added by --extra

    def to_dict(self) -> dict:
        return {"schema_version": SUMMARY_SCHEMA_VERSION,
                **{k: v for k, v in self.__dict__.items() if k != "pipeline"}}


def _labeled_rows(store, split: str, *, seed: int = 0, holdout: float = 0.0):
    """The split's labelled images and labels, and those of the rows held out for
    calibration (:func:`digitbatch.calibration.heldout_mask`) apart."""
    rows = store.split_rows(split)
    images, labels, _ = store.read(rows)
    known = labels != UNKNOWN_LABEL
    held = CAL.heldout_mask(np.arange(rows.start, rows.stop), seed, holdout) & known
    fit = known & ~held
    return images[fit], labels[fit], images[held], labels[held]


def _calibrate(model, images: np.ndarray, labels: np.ndarray) -> None:
    """Fit ``model``'s calibration on held-out rows (in place); rows whose target is
    not one of the model's classes are left out. Too few rows: none (logged)."""
    y = model.target(labels)
    classes = np.asarray(model.classes)
    ok = np.isin(y, classes)
    if np.count_nonzero(ok) < CAL.MIN_FIT_ROWS:
        log.warning("%d held-out rows: too few to calibrate %s (at least %d); its "
                    "probabilities are uncalibrated", int(np.count_nonzero(ok)), model.name,
                    CAL.MIN_FIT_ROWS)
        return
    d = model.decision_function(images[ok])
    model.calibration = CAL.fit(d, np.searchsorted(classes, y[ok]))
    c = model.calibration
    log.info("calibrated %s on %d held-out rows: temperature %.4g, ECE %.4f -> %.4f",
             model.name, c["n_rows"], c["temperature"], c["uncalibrated"]["ece"],
             c["calibrated"]["ece"])


def check_classes(classes, where) -> None:
    """A model is only ever built for digit classes 0-9 (a detector's 0/1 are
    digits too): any other label value is a :class:`TrainingError` naming it."""
    bad = [int(c) for c in np.asarray(classes).ravel() if not 0 <= int(c) <= 9]
    if bad:
        raise TrainingError(f"store {where} has training labels {bad[:10]}, not digits 0-9: a "
                            f"model is not built from them; re-ingest the store")


def _split_chunks(store, split: str) -> list[tuple[int, int]]:
    """The store chunks clipped to a split's rows: reads stay chunk-aligned."""
    rows = store.split_rows(split)
    return [(max(a, rows.start), min(b, rows.stop)) for a, b in store.chunks
            if a < rows.stop and b > rows.start]


def evaluate(model, store, split: str = "test") -> dict:
    """Test metrics of a compact model, a chunk at a time (memory bounded by the chunk)."""
    k = model.n_classes
    cm = np.zeros((k, k), dtype=np.int64)
    rel = []
    for a, b in _split_chunks(store, split):
        rows = slice(a, b)
        y = model.target(store.column("labels", rows))
        if model.calibration is None:
            pred = model.predict(store.column("images", rows)).astype(np.int64)
        else:
            sc = model.score_chunk_full(store.column("images", rows), proba=False)
            pred = sc.pred.astype(np.int64)
            known = y != UNKNOWN_LABEL
            rel.append(CAL.reliability_counts(sc.confidence[known], pred[known] == y[known]))
        cm += kernels.confusion_counts(y, pred, k)
    out = metrics.summarize(cm)
    total = CAL.reduce_reliability(rel)
    if total is not None and out["n_labeled"]:
        out["ece"] = round(CAL.ece(total), 6)
    return out


def _fit_incremental(pipe, store, split: str, spec, *, seed: int, epochs: int,
                     holdout: float = 0.0, progress=None, extras=()) -> int:
    """``partial_fit`` over the split's chunks, shuffled (seeded) each epoch.

    Only one chunk is in memory at a time, so a store larger than memory
    trains in memory bounded by the chunk size.
    """
    features, clf = pipe.steps[0][1], pipe.steps[-1][1]
    features.fit(np.zeros((1, 784), np.uint8))  # stateless; fitted for scikit-learn's checks
    classes = np.array([0, 1]) if spec.binary_digit is not None else np.arange(10)
    rng = np.random.default_rng(seed)
    chunks = [(store, a, b) for a, b in _split_chunks(store, split)] + extrarows.chunks(extras)
    if progress is not None:
        progress(0, total=epochs * len(chunks))
    n = 0
    for epoch in range(epochs):
        for i in rng.permutation(len(chunks)):
            st, a, b = chunks[i]
            labels = target(spec, st.column("labels", slice(a, b)))  # (checked 0-9 as read)
            keep = labels != UNKNOWN_LABEL
            if st is store:  # (the rows held out for calibration are the training store's)
                keep &= ~CAL.heldout_mask(np.arange(a, b), seed, holdout)
            known = np.flatnonzero(keep)
            if known.size == 0:
                if progress is not None:
                    progress(1)
                continue
            order = known[rng.permutation(known.size)]
            X = kernels.flatten(st.column("images", slice(a, b))[order])
            clf.partial_fit(features.transform(X), labels[order], classes=classes)
            n += known.size if epoch == 0 else 0
            if progress is not None:
                progress(1)
    return n


def _heldout_rows(store, split: str, *, seed: int, holdout: float):
    """The images and labels of a split's labelled rows held out for calibration,
    read a chunk at a time (at most MAX_CALIBRATION_ROWS of them, by the fraction)."""
    images, labels = [], []
    for a, b in _split_chunks(store, split):
        lab = store.column("labels", slice(a, b))
        sel = np.flatnonzero((lab != UNKNOWN_LABEL)
                             & CAL.heldout_mask(np.arange(a, b), seed, holdout))
        if sel.size:
            images.append(store.column("images", slice(a, b))[sel])
            labels.append(lab[sel])
    if not images:
        return np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.int8)
    return np.concatenate(images), np.concatenate(labels)


@fserrors.boundary(kept="No model was written (a model already at --out is kept)")
def train(
    store: str | Path,
    out: str | Path,
    *,
    model: str = "sgd",
    features: str | None = None,
    seed: int = DEFAULT_SEED,
    cv: int | None = None,
    search: bool = False,
    incremental: bool = False,
    epochs: int = 5,
    scheduler: str | None = None,
    overwrite: bool = False,
    progress=None,
    extra: list | None = None,
) -> TrainResult:
    """Fit catalogue model ``model`` on ``store``'s train rows; save it to ``out``.

    The train rows are shuffled with ``seed`` (recorded in the manifest)
    before fitting, as the walk-through does. With ``cv`` the model is also
    cross-validated (K folds, on the Dask cluster of ``scheduler``); with
    ``search`` a small grid of hyperparameters is searched by the same CV
    (5 folds when ``cv`` is not given) and the best is fitted. With
    ``incremental`` the ``sgd`` model is fitted by ``partial_fit`` over the
    store's chunks in shuffled order for ``epochs`` passes, for stores
    larger than memory (no CV or search then: they need the rows in memory).

    ``progress(n, total=None)``, optional, counts what can be counted
    honestly: with ``incremental``, store chunks fitted (``epochs`` x the
    split's chunks); otherwise model fits (the search's candidates x folds,
    the CV folds, then the final fit), each phase's fits added when the
    phase ends (CV folds run together on the cluster and finish together).

    ``extra``: stores whose labelled rows are added to the training rows
    (:mod:`digitbatch.extrarows`; e.g. ``digitbatch subset``'s reviewed rows);
    the test rows stay ``store``'s.
    """
    spec = get_spec(model)
    feats = resolve_features(spec, features)
    if incremental:
        if model != "sgd" or feats == "kernel":
            raise TrainingError(
                f"--incremental trains the sgd model with pixels or deskew features; got "
                f"{model} with {feats} features")
        if cv is not None or search:
            raise TrainingError("--incremental cannot be combined with --cv or --search: "
                                "they need the training rows in memory")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise TrainingError(f"epochs must be an integer >= 1, got {epochs!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise TrainingError(f"seed must be an integer >= 0, got {seed!r}")
    if storage.to_path(out).exists() and not overwrite:
        raise TrainingError(f"{out} already exists: choose another --out or pass --overwrite")
    if overwrite:  # before any work: only a digitbatch model is ever replaced
        storage.check_replaceable(out, "model")
    if cv is not None or search:
        cluster.check_address(scheduler)
    s = open_store(store)
    extras = extrarows.open_extras(extra, s)
    train_split = "train" if "train" in s.splits else "all"
    split = s.split_rows(train_split)
    holdout = CAL.holdout_fraction(split.stop - split.start)
    if incremental:
        pipe = build(model, seed=seed, features=feats)
        t0 = time.perf_counter()
        n_train = _fit_incremental(pipe, s, train_split, spec, seed=seed, epochs=epochs,
                                   holdout=holdout, progress=progress, extras=extras)
        fit_seconds = time.perf_counter() - t0
        if n_train == 0:
            raise TrainingError(f"store {s.path} has no labelled rows in split {train_split!r}")
        cv_result = search_result = None
    else:
        pipe, n_train, fit_seconds, cv_result, search_result, held = _fit_in_memory(
            s, train_split, spec, model, feats, seed=seed, cv=cv, search=search,
            scheduler=scheduler, progress=progress, holdout=holdout, extras=extras)
    cm_model = compact(model, pipe, features=feats)
    log.info("fitted %s (%s features) on %d rows in %.2f s", model, feats, n_train, fit_seconds)
    if incremental:
        held = _heldout_rows(s, train_split, seed=seed, holdout=holdout)
    _calibrate(cm_model, *held)

    test = None
    n_test = 0
    if "test" in s.splits:
        test = evaluate(cm_model, s, "test")
        n_test = test["n_labeled"]
        test = test if n_test else None
    manifest = {
        "seed": seed,
        "train": {"store": str(s.path), "store_checksum": s.checksum, "split": train_split,
                  "rows": [split.start, split.stop],
                  "n_rows": int(n_train), "fit_seconds": round(fit_seconds, 3),
                  "n_calibration_rows": int(held[1].shape[0]),
                  "calibration_fraction": round(holdout, 6),
                  "incremental": bool(incremental), "epochs": epochs if incremental else None,
                  "extra": [e.manifest_entry() for e in extras]},
        "test": test,
        "cv": cv_result.to_dict() if cv_result else None,
        "search": search_result,
        # the test split's profile, what scoring runs' drift is measured against
        "drift_reference": drift.reference_for(cm_model, s, "test") if test else None,
    }
    save_model(cm_model, out, manifest=manifest, overwrite=overwrite)
    return TrainResult(str(out), model, feats, int(n_train), n_test, fit_seconds, test, seed,
                       cv_result.to_dict() if cv_result else None, search_result, pipe,
                       manifest["train"]["extra"])


def _fit_in_memory(s, train_split, spec, model, feats, *, seed, cv, search, scheduler,
                   progress=None, holdout: float = 0.0, extras=()):
    X, labels, X_held, labels_held = _labeled_rows(s, train_split, seed=seed, holdout=holdout)
    if extras:  # after the store's own rows, before the seeded shuffle
        more_x, more_y = extrarows.labelled_rows(extras)
        X, labels = np.concatenate([X, more_x]), np.concatenate([labels, more_y])
    if X.shape[0] == 0:
        raise TrainingError(
            f"store {s.path} has no labelled rows in split {train_split!r}: ingest labelled "
            f"images (folder names or --labels CSV) to train"
        )
    y = target(spec, labels)
    classes = np.unique(y)
    check_classes(classes, s.path)
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
    grid = search_grid(model, feats) if search else None
    search_fits = len(ParameterGrid(grid)) * (cv or 5) if search else 0
    if progress is not None:
        progress(0, total=search_fits + (cv or 0) + 1)
    with warnings.catch_warnings():
        # A fixed epoch budget is part of a catalogue model's definition.
        warnings.simplefilter("ignore", ConvergenceWarning)
        if cv is not None or search:
            with client_or_none(scheduler) as client:
                if search:
                    best, search_result = run_search(pipe, grid, X, y, k=cv or 5,
                                                     client=client)
                    pipe.set_params(**best)
                    if progress is not None:
                        progress(search_fits)
                if cv is not None:
                    cv_result = run_cv(pipe, X, y, k=cv, client=client)
                    if progress is not None:
                        progress(cv)
        # The final fit runs here, not on the cluster: let one-vs-rest SGD use
        # every core (its per-class seeds do not depend on n_jobs).
        # (one-vs-rest only: a binary SGD has one problem, nothing to share out)
        clf = pipe.steps[-1][1]
        threaded = isinstance(clf, SGDClassifier) and classes.size > 2
        if threaded:
            clf.set_params(n_jobs=-1)
        t0 = time.perf_counter()
        pipe.fit(X, y)
        fit_seconds = time.perf_counter() - t0
        if progress is not None:
            progress(1)
        if threaded:
            clf.set_params(n_jobs=None)
    return pipe, int(X.shape[0]), fit_seconds, cv_result, search_result, (X_held, labels_held)
