"""``digitbatch bench train``: the catalogue on full MNIST beside the walk-through.

Prints, for each catalogue model, test accuracy, CV mean, fit seconds and
peak memory, next to the walk-through's own in-memory runs (raw pixels,
scikit-learn defaults) measured in the same process; then 5-fold CV of
``sgd`` on a 2-worker LocalCluster against ``n_jobs=1``; then ``--incremental``
on a large shifted-MNIST store.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from . import HEADER, find_mnist, measure, scratch

ROW = "{:30s} {:>9s} {:>9s} {:>9s} {:>10s}  {}"


def _row(label, acc, cv, m, note=""):
    fmt = lambda v: "-" if v is None else f"{100 * v:.2f}%"  # noqa: E731
    return ROW.format(label, fmt(acc), fmt(cv), f"{m.seconds:.1f} s",
                      f"{m.peak_rss / 2**20:.0f} MiB", note)


def run(*, mnist_dir=None, workdir=None, cv: int = 3, reference: bool = True,
        incremental_n: int = 4_000_000, models=None, cv_speedup: bool = True) -> Iterator[str]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression, SGDClassifier

    from .. import cluster
    from ..crossval import run_cv
    from ..ingestion import ingest
    from ..layout import open_store
    from ..models import build
    from ..training import train
    from .data import make_shifted_store

    mnist = find_mnist(mnist_dir)
    with scratch(workdir) as work:
        store = work / "mnist.zarr"
        if not store.exists():
            ingest(mnist, store)
        s = open_store(store)
        X, y, _ = s.read()
        X = X.reshape(len(X), -1)
        Xtr, ytr, Xte, yte = X[:60000], y[:60000], X[60000:], y[60000:]
        perm = np.random.default_rng(42).permutation(60000)
        yield f"full MNIST from {mnist}: 60,000 train / 10,000 test rows; CV folds: {cv}"
        yield ROW.format("model", "test acc", "CV mean", "fit", "peak RSS", "")
        if reference:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                with measure("walk-through detect-2") as m:
                    ref = LogisticRegression(tol=0.1, solver="lbfgs", max_iter=70000)
                    ref.fit(Xtr[perm], ytr[perm] == 2)
                yield _row("walk-through: LogReg is-2 (raw)", ref.score(Xte, yte == 2), None, m,
                           "in memory, raw 0-255 pixels")
                with measure("walk-through sgd") as m:
                    ref = SGDClassifier(loss="log_loss", random_state=42).fit(Xtr[perm], ytr[perm])
                yield _row("walk-through: SGD (raw)", ref.score(Xte, yte), None, m,
                           "in memory, raw 0-255 pixels")
        cases = models or [("detect-2", "pixels"), ("detect-2", "kernel"), ("sgd", "pixels"),
                           ("sgd", "deskew"), ("sgd-kernel", None), ("sgd-patches", None)]
        for name, feats in cases:
            out = work / f"model-{name}-{feats}"
            shutil.rmtree(out, ignore_errors=True)
            with measure(name) as m:
                r = train(store, out, model=name, features=feats, cv=cv or None)
            fit = json.loads((out / "manifest.json").read_text())["train"]["fit_seconds"]
            yield _row(f"digitbatch {name} ({r.features})", r.test["accuracy"],
                       r.cv["mean"] if r.cv else None, m,
                       f"final fit {fit:.1f} s; total incl. CV on LocalCluster")
            if name in ("sgd-kernel", "sgd-patches"):
                yield from _kernel_model_lines(name, out, r, Xte)

        # 5-fold CV of sgd: 2-worker LocalCluster against n_jobs=1
        if cv_speedup:
            yield from _cv_speedup(Xtr[perm], ytr[perm])

        if incremental_n:
            big = work / f"shifted-{incremental_n}.zarr"
            bs = make_shifted_store(big, n=incremental_n, mnist_dir=mnist)
            out = work / "model-incremental"
            shutil.rmtree(out, ignore_errors=True)
            with measure("incremental", bs.n) as m:
                r = train(big, out, incremental=True, epochs=1)
            yield ""
            yield HEADER
            yield m.row() + f"  sgd --incremental, 1 epoch over {bs.n:,} images; " \
                            f"test accuracy {100 * r.test['accuracy']:.2f}%"


def _kernel_model_lines(name, out, r, Xte) -> Iterator[str]:
    """A kernel model's errors, confusion matrix, in-memory scoring rate and
    (sgd-patches) the per-chunk cost of each scoring step."""
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    from ..metrics import format_confusion
    from ..modelio import load_model
    from . import featurecost

    model = load_model(out).model
    cm = np.asarray(r.test["confusion_matrix"])
    yield (f"  {name} test errors: {int(cm.sum() - np.trace(cm))} of {int(cm.sum()):,}; "
           f"confusion matrix (rows: true digit):")
    yield from ("    " + line for line in format_confusion(cm).splitlines())
    parts = [Xte[a:a + 2500].reshape(-1, 28, 28) for a in range(0, 10000, 2500)]
    with threadpool_limits(1), ThreadPoolExecutor(2) as pool:
        list(pool.map(model.predict, parts[:2]))  # warm up
        with measure("score") as sm:
            list(pool.map(model.predict, parts))
    yield (f"  {name} scoring in memory, 2 threads: {10000 / sm.seconds:,.0f} "
           f"images/s (10,000 test images, features + kernel + predict)")
    if name == "sgd-patches":
        yield from featurecost.lines(model, Xte[:8192].reshape(-1, 28, 28))


def _cv_speedup(Xs, ys, rounds: int = 2) -> Iterator[str]:
    """5-fold CV of sgd with n_jobs=1 and on a 2-worker LocalCluster, interleaved.

    Each round runs the sequential CV, then the cluster's: a slow spell of
    this (noisy, shared) machine hits both sides of a round's ratio. The
    cluster starts before the first round, and its workers load the
    libraries a fold runs before anything is timed.
    """
    from .. import cluster
    from ..crossval import run_cv
    from ..models import build

    seq_s, dsk_s, scores, rss = [], [], [], [0, 0]
    with cluster.client("local", n_workers=2) as c:
        # The sequential side runs in this process, which imported
        # scikit-learn long before; a new worker imports it when its first
        # fold arrives (1.5-2 s of the first CV here). Both sides are timed
        # with the libraries loaded.
        t0 = time.perf_counter()
        c.run(_import_fit_modules)
        load_s = time.perf_counter() - t0
        for _ in range(rounds):
            with measure("cv-seq") as m:
                scores.append(run_cv(build("sgd", seed=42), Xs, ys, k=5, client=None).scores)
            seq_s.append(m.seconds)
            rss[0] = max(rss[0], m.peak_rss)
            with measure("cv-dask") as m:
                scores.append(run_cv(build("sgd", seed=42), Xs, ys, k=5, client=c).scores)
            dsk_s.append(m.seconds)
            rss[1] = max(rss[1], m.peak_rss)
    yield ""
    per_round = "; ".join(
        f"round {i + 1}: n_jobs=1 {a:.1f} s, "
        f"cluster {b:.1f} s -> {a / b:.2f}x" for i, (a, b) in enumerate(zip(seq_s, dsk_s)))
    yield (f"5-fold CV of sgd, n_jobs=1 vs a 2-worker LocalCluster, {rounds} interleaved "
           f"rounds: {sum(seq_s):.1f} s vs {sum(dsk_s):.1f} s -> "
           f"{sum(seq_s) / sum(dsk_s):.2f}x")
    yield f"  {per_round}"
    yield (f"  (the new cluster's workers imported scikit-learn first, as this process "
           f"had: {load_s:.1f} s, not timed)")
    yield (f"  fold scores identical in every run: {all(s == scores[0] for s in scores)} "
           f"({', '.join(f'{v:.4f}' for v in scores[0])})")
    yield (f"  peak RSS (process tree): sequential {rss[0] / 2**20:.0f} MiB, "
           f"cluster {rss[1] / 2**20:.0f} MiB (the idle cluster's processes count in both)")


def _import_fit_modules() -> None:
    """On a worker: import what a CV fold of a catalogue model runs."""
    import scipy.sparse  # noqa: F401
    import sklearn.linear_model  # noqa: F401
    import sklearn.model_selection  # noqa: F401
    import sklearn.pipeline  # noqa: F401

    from .. import models  # noqa: F401
