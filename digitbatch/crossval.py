"""Cross-validation and grid search on the Dask cluster, through joblib.

scikit-learn parallelises CV folds and search candidates with joblib; with
joblib's dask backend those tasks run on the Dask workers, and the training
arrays are sent to the cluster once instead of with every task (joblib#1154,
dask-ml#114). Arrays stay uint8 until a pipeline's first step scales them,
so what is shipped is 784 bytes an image, not 6,272.

A worker may die mid-search (tests/faults/test_workers.py). joblib's own
``scatter=[X, y]`` makes X and y *scattered* data, and it scatters each
fold's index arrays (any argument over 1 kB) to a single worker: data with
no lineage, so the death of the worker holding it cancels every fold that
needs it (a raw ``FutureCancelledError``; joblib#875). Here X and y are the
results of tasks instead (as scoring shares its model), which the
scheduler recomputes after a worker dies, and the fold indices travel
inside their tasks; Dask then reruns the dead worker's folds and the
results equal a fault-free run. A fold whose workers keep dying is given up
by Dask (``allowed-failures``): that, or any other loss of the cluster's
work, is a :class:`~digitbatch.errors.CrossValidationError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
import warnings
from concurrent.futures import CancelledError
from dataclasses import dataclass

import joblib
import numpy as np
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_validate

from . import cluster
from .errors import CrossValidationError, TrainingError

log = logging.getLogger(__name__)


def check_folds(cv: int, y: np.ndarray) -> int:
    """Return ``cv`` if every class has at least ``cv`` rows; else a named error."""
    if isinstance(cv, bool) or not isinstance(cv, (int, np.integer)):
        raise TrainingError(f"--cv must be an integer >= 2, got {cv!r}")
    if cv < 2:
        raise TrainingError(f"--cv {cv}: cross-validation needs at least 2 folds (or leave --cv out)")
    classes, counts = np.unique(y, return_counts=True)
    if counts.min() < cv:
        worst = classes[np.argmin(counts)]
        raise TrainingError(
            f"--cv {cv} is larger than the {counts.min()} training rows of class {worst}: "
            f"use at most --cv {counts.min()}"
        )
    return int(cv)


@dataclass(frozen=True)
class CVResult:
    k: int
    scores: list[float]
    fit_times: list[float]
    seconds: float
    backend: str

    @property
    def mean(self) -> float:
        return float(np.mean(self.scores))

    @property
    def std(self) -> float:
        return float(np.std(self.scores))

    def to_dict(self) -> dict:
        return {"k": self.k, "scoring": "accuracy", "scores": self.scores, "mean": self.mean,
                "std": self.std, "fit_times": self.fit_times,
                "fit_time_mean": float(np.mean(self.fit_times)),
                "fit_time_std": float(np.std(self.fit_times)),
                "seconds": round(self.seconds, 3), "backend": self.backend}


def _recoverable_backend(client, data: list):
    """joblib's dask backend, with ``data`` shared as recomputable task results.

    ``data_futures`` (id -> future) is what joblib's own ``scatter=`` fills:
    arguments that are these very objects are replaced by the futures. With
    ``call_data_futures`` None, joblib does not scatter other large
    arguments (the fold indices) to one worker; they go inside the task.
    """
    from joblib._dask import DaskDistributedBackend

    class RecoverableDaskBackend(DaskDistributedBackend):
        def __init__(self):
            super().__init__(client=client, wait_for_workers_timeout=60)
            self._scatter = list(data)  # keeps the ids valid
            with warnings.catch_warnings():
                # The arrays are in the graph on purpose, once (distributed warns over 10 MB).
                warnings.filterwarnings("ignore", "Sending large graph", UserWarning)
                self.data_futures = {
                    id(x): client.submit(cluster.hold, x, key=f"digitbatch-cv-data-{uuid.uuid4().hex}",
                                         pure=False)
                    for x in data}

        def start_call(self):
            super().start_call()
            self.call_data_futures = None

        async def _collect(self):
            # joblib's own, except that a batch whose future erred (KilledWorker:
            # its workers kept dying) also reaches its callback, which is where
            # joblib registers a batch's outcome: without it Parallel waits for
            # that batch forever (joblib#875; found by tests/faults).
            while self._continue:
                async for future, result in self.waiting_futures:
                    cf_future = self._results.pop(future)
                    callback = self._callbacks.pop(future)
                    if future.status == "error":
                        _typ, exc, _tb = result
                        cf_future.set_exception(exc)
                        callback(exc)  # (registers the error; Parallel raises it)
                    else:
                        cf_future.set_result(result)
                        callback(result)
                await asyncio.sleep(0.01)

        def stop_call(self):
            self.call_data_futures = {}  # (joblib clears it)
            super().stop_call()

    return RecoverableDaskBackend()


def _lost_work(exc: BaseException) -> bool:
    """True for the errors of work lost on the cluster, not of the estimator."""
    from distributed import KilledWorker
    from distributed.comm import CommClosedError

    # (distributed's FutureCancelledError is a CancelledError)
    return isinstance(exc, (KilledWorker, CommClosedError, CancelledError))


@contextlib.contextmanager
def joblib_backend(client, X, y):
    """The dask backend with X and y shared once (recomputably), or the sequential one."""
    if client is None:
        with joblib.parallel_config(backend="sequential"):
            yield "sequential", 1
        return
    backend = _recoverable_backend(client, [X, y])
    try:
        with joblib.parallel_config(backend=backend):
            yield "dask", -1
    except Exception as exc:
        if not _lost_work(exc):
            raise
        raise CrossValidationError(
            f"cross-validation lost its work on the Dask cluster ({type(exc).__name__}: "
            f"{exc}): a fold's workers died repeatedly (a crash, out of memory, or killed "
            f"workers); check the workers' logs, or run with --scheduler synchronous"
        ) from exc
    finally:
        for f in backend.data_futures.values():
            f.release()


# Threads a fold's one-vs-rest classifier may use on a cluster worker. 5 folds
# on 2 single-threaded workers run in 3 rounds, the last with one worker
# idle: at most 5/3 = 1.67x over n_jobs=1. With the per-class fits of a fold
# in threads, a fold alone on the cluster still uses both cores; the fold
# scores stay byte-identical (scikit-learn draws the per-class seeds before
# it parallelises).
FOLD_THREADS = 2


class ThreadedFit:
    """An estimator whose ``fit`` runs its inner joblib work on threads.

    Inside a Dask worker joblib's active backend is still the dask one, under
    which scikit-learn's ``Parallel(require="sharedmem")`` over the classes
    runs one class after another; here it gets ``FOLD_THREADS`` threads.
    """

    def __init__(self, estimator, n_threads: int = FOLD_THREADS):
        self.estimator = estimator
        self.n_threads = n_threads

    def get_params(self, deep: bool = True) -> dict:
        out = {"estimator": self.estimator, "n_threads": self.n_threads}
        if deep:
            out.update({f"estimator__{k}": v for k, v in self.estimator.get_params().items()})
        return out

    def set_params(self, **params):
        for k in ("estimator", "n_threads"):
            if k in params:
                setattr(self, k, params.pop(k))
        # the inner estimator's own keys (a search grid's "clf__alpha"), with or
        # without the "estimator__" prefix
        inner = {k.removeprefix("estimator__"): v for k, v in params.items()}
        if inner:
            self.estimator.set_params(**inner)
        return self

    def fit(self, X, y):
        with joblib.parallel_config(backend="threading", n_jobs=self.n_threads):
            self.estimator.fit(X, y)
        return self

    def predict(self, X):
        return self.estimator.predict(X)

    def score(self, X, y):
        return self.estimator.score(X, y)

    @property
    def classes_(self):
        return self.estimator.classes_

    def __sklearn_tags__(self):
        return self.estimator.__sklearn_tags__()


def on_cluster(estimator, client, y: np.ndarray | None = None):
    """``estimator`` for the fold tasks of a cluster: its final step's
    ``n_jobs`` (threads over the classes of a one-vs-rest fit) set to
    :data:`FOLD_THREADS` and its fit run on threads, unless the caller chose
    an ``n_jobs``. Only a one-vs-rest SGD over more than two classes has
    per-class fits to share out: a binary problem is one fit, and
    LogisticRegression's ``n_jobs`` does nothing since scikit-learn 1.8 (it
    warns in every fold), so those are left as they are."""
    if client is None:
        return estimator
    from sklearn.base import clone
    from sklearn.linear_model import SGDClassifier

    last = estimator.steps[-1] if hasattr(estimator, "steps") else None
    final = last[1] if last is not None else estimator
    if not isinstance(final, SGDClassifier) or (y is not None and np.unique(y).size <= 2):
        return estimator
    params = estimator.get_params()
    key = f"{last[0]}__n_jobs" if last is not None else "n_jobs"
    if key not in params or params[key] is not None:
        return estimator
    return ThreadedFit(clone(estimator).set_params(**{key: FOLD_THREADS}))


def run_cv(estimator, X: np.ndarray, y: np.ndarray, *, k: int, client=None) -> CVResult:
    """K-fold accuracy (stratified, unshuffled: rows arrive shuffled with the seed)."""
    k = check_folds(k, y)
    estimator = on_cluster(estimator, client, y)
    t0 = time.perf_counter()
    with joblib_backend(client, X, y) as (backend, n_jobs):
        res = cross_validate(estimator, X, y, cv=StratifiedKFold(n_splits=k), scoring="accuracy",
                             n_jobs=n_jobs, error_score="raise")
    seconds = time.perf_counter() - t0
    out = CVResult(k, [float(s) for s in res["test_score"]],
                   [float(t) for t in res["fit_time"]], seconds, backend)
    log.info("%d-fold CV on %s: %.4f +- %.4f in %.1f s", k, backend, out.mean, out.std, seconds)
    return out


def run_search(estimator, grid: dict, X: np.ndarray, y: np.ndarray, *, k: int,
               client=None) -> tuple[object, dict]:
    """Grid search (K-fold accuracy) on the cluster; returns (best estimator, summary)."""
    k = check_folds(k, y)
    estimator = on_cluster(estimator, client, y)
    t0 = time.perf_counter()
    with joblib_backend(client, X, y) as (backend, n_jobs):
        gs = GridSearchCV(estimator, grid, cv=StratifiedKFold(n_splits=k), scoring="accuracy",
                          n_jobs=n_jobs, refit=False, error_score="raise")
        gs.fit(X, y)
    seconds = time.perf_counter() - t0
    cands = [
        {"params": {key: _plain(v) for key, v in p.items()},
         "mean": float(m), "std": float(s)}
        for p, m, s in zip(gs.cv_results_["params"], gs.cv_results_["mean_test_score"],
                           gs.cv_results_["std_test_score"])
    ]
    best = {key: _plain(v) for key, v in gs.best_params_.items()}
    log.info("grid search over %d candidates on %s: best %s (%.4f) in %.1f s",
             len(cands), backend, best, gs.best_score_, seconds)
    return best, {"k": k, "grid": {key: [_plain(v) for v in vals] for key, vals in grid.items()},
                  "candidates": cands, "best_params": best, "best_mean": float(gs.best_score_),
                  "seconds": round(seconds, 3), "backend": backend}


def _plain(v):
    return v.item() if isinstance(v, np.generic) else v


def client_or_none(scheduler: str | None):
    """A context yielding a Dask client, or None for the synchronous scheduler."""
    if cluster.resolve_scheduler(scheduler) in cluster.SYNCHRONOUS:
        return contextlib.nullcontext(None)
    return cluster.client(scheduler)
