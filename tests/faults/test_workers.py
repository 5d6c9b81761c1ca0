"""Worker faults on a Dask LocalCluster: what each does, and what passing means.

1. **Worker death while scoring** (``test_worker_killed_while_scoring``, at
   25 %, 50 % and 75 % of progress). 200,000 images in 98 store chunks are
   scored on 3 worker processes; when the progress callback has seen the
   fraction committed, a worker that is running chunk tasks is SIGKILLed
   (its nanny starts a new one). Pass: the run ends normally; the output's
   chunk files are byte-identical to a fault-free run's; the confusion
   matrix is identical; ``n_images`` is 200,000; the commit records cover
   every chunk exactly once, with the store's row bounds, tiling the rows
   with no gap and no overlap (0 lost, 0 duplicated rows); the output keys
   equal the store's keys.
2. **Worker death during cross-validation** (joblib's dask backend;
   ``test_worker_killed_during_cv``). Once one fold of ``train(..., cv=4)``
   has finished (a scheduler plugin records fold results), a worker that is
   executing another fold is SIGKILLed. Pass: that fold finishes only after
   the kill (rerun on another worker), the CV scores equal a fault-free
   run's, within the test's time limit (never a hang, joblib#875).
   ``test_cv_fold_that_kills_its_workers`` makes every fold kill its worker:
   pass is a :class:`~digitbatch.errors.CrossValidationError` (a named error,
   not a raw ``distributed`` one) in bounded time.
3. **A poison image when scoring an archive directly**
   (``test_poison_image``, crash and hang). A Pillow PNG opener installed in
   every worker process (a WorkerPlugin: no hook in digitbatch) makes one
   PNG of a directory of 600 (3 chunks of 256) kill its worker
   (``os._exit``) or hang forever. Pass: the run ends, after Dask's bounded
   retries (``distributed.scheduler.allowed-failures``, default 3) or after
   ``task_timeout``, with a :class:`~digitbatch.errors.ChunkFailedError`
   (``ChunkTimeoutError`` for the hang) naming the chunk and its key range
   (which holds the poison image; the hang names the very image it is stuck
   on); every other chunk is committed; ``resume`` once the poison is gone
   scores only the failed chunk, and the output then equals a fault-free
   run's.

Every test has a timeout and closes its cluster on failure too (the
clusters are context managers).
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import threading
import time
import types
from pathlib import Path

import cloudpickle
import numpy as np
import psutil
import pytest
import zarr
from distributed import WorkerPlugin
from sklearn.base import BaseEstimator, ClassifierMixin

from digitbatch import cluster
from digitbatch.errors import ChunkFailedError, ChunkTimeoutError, CrossValidationError
from digitbatch.ingestion import ingest
from digitbatch.layout import open_store
from digitbatch.scoring.output import committed
from digitbatch.scoring.api import score
from digitbatch.training import train

from ..conftest import synthetic_digits, write_idx
from .test_kills import _files

# Workers unpickle this module's plugin and estimator by value: no need for
# the tests to be importable on them.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

N_IMAGES = 200_000
CHUNK = 2048  # 98 chunks


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A 200,000-image store, a small model, and a fault-free (synchronous) scoring of it."""
    tmp = tmp_path_factory.mktemp("workers")
    x, y = synthetic_digits(N_IMAGES, seed=21)
    write_idx(tmp / "idx", x, y, gz=False)
    del x, y
    ingest(tmp / "idx", tmp / "s.zarr", chunk_size=CHUNK, scheduler="synchronous")
    xs, ys = synthetic_digits(3000, seed=22)
    write_idx(tmp / "small", xs[:2000], ys[:2000])
    write_idx(tmp / "small", xs[2000:], ys[2000:], prefix="t10k")
    ingest(tmp / "small", tmp / "small.zarr", chunk_size=512, scheduler="synchronous")
    train(tmp / "small.zarr", tmp / "m", seed=0)
    score(tmp / "s.zarr", model=tmp / "m", out=tmp / "ref.zarr", proba=True,
          scheduler="synchronous")
    return tmp


def _busy_worker(c) -> str | None:
    """A worker the scheduler has chunk tasks on, preferring one executing them now."""
    proc = {w: [k for k in ks if "run_batch" in str(k)] for w, ks in c.processing().items()}
    busy = [w for w, ks in proc.items() if ks]
    return busy[0] if busy else None


def _check_exactly_once(out: Path, store_path: Path) -> None:
    store = open_store(store_path)
    records = committed(out)
    assert sorted(records) == list(range(len(store.chunks)))  # every chunk, once (0 lost)
    spans = []
    for i, rec in records.items():
        assert rec["chunk"] == i
        assert (rec["start"], rec["stop"]) == tuple(store.chunks[i])
        assert rec["n"] == rec["stop"] - rec["start"]
        spans.append((rec["start"], rec["stop"]))
    spans.sort()
    assert spans[0][0] == 0 and spans[-1][1] == store.n
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # no gap, no overlap
    assert sum(r["n"] for r in records.values()) == store.n  # 0 duplicated rows
    out_keys = zarr.open_group(str(out), mode="r")["keys"][:]
    assert np.array_equal(out_keys, store.keys[:])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.75])
def test_worker_killed_while_scoring(big, tmp_path, fraction):
    out = tmp_path / "w.zarr"
    t0 = time.perf_counter()
    with cluster.client("local", n_workers=3) as c:
        pids = c.run(os.getpid)
        seen = {"total": None, "done": 0}
        killed: list[tuple] = []

        def progress(n, total=None):
            if total is not None:
                seen["total"] = total
                return
            seen["done"] += n
            if not killed and seen["done"] >= fraction * seen["total"]:
                w = _busy_worker(c)
                victim = w if w in pids else next(iter(pids))
                os.kill(pids[victim], signal.SIGKILL)
                killed.append((victim, w is not None, seen["done"]))

        r = score(big / "s.zarr", model=big / "m", out=out, proba=True,
                  scheduler=c.scheduler.address, progress=progress)
    seconds = time.perf_counter() - t0
    assert killed, "the kill never fired"
    victim, was_busy, at = killed[0]
    assert was_busy, "no worker had chunk tasks when the kill fired"
    assert at < N_IMAGES  # killed mid-run, not after the last chunk
    assert seen["done"] == N_IMAGES
    ref = json.loads((big / "ref.zarr" / "_SUCCESS").read_text())
    assert _files(out) == _files(big / "ref.zarr")
    assert r.metrics["confusion_matrix"] == ref["confusion_matrix"]
    assert r.metrics["n_images"] == N_IMAGES and r.metrics["n_scored_this_run"] == N_IMAGES
    _check_exactly_once(out, big / "s.zarr")
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    assert (out / "_SUCCESS").exists() and not (out / ".lock").exists()
    print(f"killed {victim} at {at / N_IMAGES:.0%} of {N_IMAGES} images; run {seconds:.1f} s")


# --- cross-validation ------------------------------------------------------------


@pytest.fixture(scope="module")
def cv_store(tmp_path_factory):
    """6,000 train rows with 10% of labels scrambled (fold scores not all 1.0)."""
    tmp = tmp_path_factory.mktemp("cv")
    x, y = synthetic_digits(6500, seed=31)
    rng = np.random.default_rng(0)
    flip = rng.random(y.size) < 0.1
    y[flip] = rng.integers(0, 10, int(flip.sum()))
    write_idx(tmp / "idx", x[:6000], y[:6000])
    write_idx(tmp / "idx", x[6000:], y[6000:], prefix="t10k")
    ingest(tmp / "idx", tmp / "s.zarr", chunk_size=1024, scheduler="synchronous")
    ref = train(tmp / "s.zarr", tmp / "ref-model", seed=0, cv=4, scheduler="synchronous")
    return tmp, ref.cv


def _record_folds_done(dask_scheduler) -> None:
    """Install, on the scheduler, a record of every fold task that finished (in order)."""
    from distributed.diagnostics.plugin import SchedulerPlugin

    class FoldsDone(SchedulerPlugin):
        name = "digitbatch-test-folds-done"

        def __init__(self):
            self.keys: list[str] = []

        def transition(self, key, start, finish, *args, **kwargs):
            if finish == "memory" and "fit_and_score" in str(key):
                self.keys.append(str(key))

    dask_scheduler.add_plugin(FoldsDone())


def _folds_done(dask_scheduler) -> list[str]:
    return list(dask_scheduler.plugins["digitbatch-test-folds-done"].keys)


def _folds_executing(dask_worker) -> list[str]:
    """The fold tasks this worker has started (running in its thread now)."""
    return [str(ts.key) for ts in dask_worker.state.executing if "fit_and_score" in str(ts.key)]


@pytest.mark.timeout(120)
def test_worker_killed_during_cv(cv_store, tmp_path):
    """Killed on progress: once a fold has finished and another has started on a worker.

    4 folds on 3 workers: the trigger is a fold result in memory (work done)
    while a fold task executes on a worker (work left); that worker is
    SIGKILLed. The fold it ran must then finish only after the kill (it was
    not done: the kill landed mid-fold) and be rerun elsewhere.
    """
    store, ref = cv_store
    with cluster.client("local", n_workers=3) as c:
        pids = c.run(os.getpid)
        c.run_on_scheduler(_record_folds_done)
        stop = threading.Event()
        killed: list[tuple] = []

        def killer():
            while not stop.is_set():
                done = c.run_on_scheduler(_folds_done)
                if done:
                    running = {w: ks for w, ks in c.run(_folds_executing).items() if ks}
                    if running:
                        victim, keys = next(iter(running.items()))
                        os.kill(pids[victim], signal.SIGKILL)
                        killed.append((victim, keys[0], len(done)))
                        return
                stop.wait(0.02)  # (a polling interval, not the trigger)

        th = threading.Thread(target=killer, daemon=True)
        th.start()
        try:
            r = train(store / "s.zarr", tmp_path / "m", seed=0, cv=4,
                      scheduler=c.scheduler.address)
        finally:
            stop.set()
            th.join(10)
        done = c.run_on_scheduler(_folds_done)
    assert killed, "no fold was seen running after another had finished"
    victim, key, done_at_kill = killed[0]
    assert 1 <= done_at_kill < 4  # work done and work left when the kill fired
    assert key not in done[:done_at_kill], "the killed fold had finished before the kill"
    assert key in done[done_at_kill:], "the killed fold was never rerun to the end"
    assert not psutil.pid_exists(pids[victim]) or (
        psutil.Process(pids[victim]).status() == psutil.STATUS_ZOMBIE)  # the worker is gone
    assert r.cv["backend"] == "dask"
    assert r.cv["scores"] == ref["scores"]  # identical to the fault-free run
    assert len(set(r.cv["scores"])) > 1  # (not trivially all equal)


class KillsItsWorker(ClassifierMixin, BaseEstimator):
    """An estimator whose ``fit`` kills the Dask worker process it runs in."""

    def fit(self, X, y):
        from distributed import get_worker

        try:
            get_worker()
        except ValueError:  # not on a worker: behave
            self.classes_ = np.unique(y)
            return self
        os._exit(70)

    def predict(self, X):
        return np.zeros(len(X), dtype=int)


@pytest.mark.timeout(120)
@pytest.mark.timeout(600)  # never a hang: the fold is given up (not a clock on its speed)
def test_cv_fold_that_kills_its_workers():
    from digitbatch.crossval import run_cv

    x, y = synthetic_digits(600, seed=3)
    t0 = time.perf_counter()
    with cluster.client("local", n_workers=2) as c:
        # Dask gives a fold up once its workers died allowed-failures (3) + 1 times.
        with pytest.raises(CrossValidationError, match="workers died repeatedly") as err:
            run_cv(KillsItsWorker(), x.reshape(600, -1), y, k=3, client=c)
    assert "KilledWorker" in str(err.value)
    print(f"CrossValidationError after {time.perf_counter() - t0:.1f} s")


# --- a poison image in an archive ------------------------------------------------

POISON = b"digitbatch-fault"


class PoisonPNG(WorkerPlugin):
    """A Dask WorkerPlugin: in each worker, PNGs carrying a ``POISON`` text chunk
    crash the process (``mode='crash'``) or hang the decoder (``'hang'``),
    in Pillow's PNG opener and in libspng's (the fast path) alike."""

    name = "digitbatch-poison-png"

    def __init__(self, mode: str):
        self.mode = mode

    def setup(self, worker):
        from PIL import Image, PngImagePlugin

        Image.init()
        factory, accept = Image.OPEN["PNG"]
        mode = self.mode

        def poisoned(fp, filename=None):
            data = fp.read()
            fp.seek(0)
            if POISON in data:
                if mode == "crash":
                    os._exit(71)
                time.sleep(3600)
            return factory(fp, filename)

        Image.register_open(PngImagePlugin.PngImageFile.format, poisoned, accept)
        try:
            import pyspng
        except ImportError:
            return
        load = pyspng.load

        def poisoned_load(data, *args, **kwargs):
            if POISON in data:
                if mode == "crash":
                    os._exit(71)
                time.sleep(3600)
            return load(data, *args, **kwargs)

        pyspng.load = poisoned_load
        from digitbatch.sources import decoders

        c = decoders._SPNG_C  # (the fast path calls pyspng's C module where it can)
        if c is not None:
            def poisoned_decode(data, fmt):
                poisoned_load(data)  # (crashes or hangs on the poison, else decodes once more)
                return c.spng_decode_image_bytes(data, fmt)

            decoders._SPNG_C = types.SimpleNamespace(
                spng_decode_image_bytes=poisoned_decode, SPNG_FMT_G8=c.SPNG_FMT_G8,
                SPNG_FMT_RGB8=c.SPNG_FMT_RGB8)


def _png(img: np.ndarray, text: bytes | None = None) -> bytes:
    from PIL import Image, PngImagePlugin

    info = None
    if text is not None:
        info = PngImagePlugin.PngInfo()
        info.add_text(text.decode(), "1")
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


N_PNG = 600
PNG_CHUNK = 256  # (the smallest chunk size): chunks of 256, 256 and 88 members


@pytest.fixture(scope="module")
def poison_dir(tmp_path_factory, big):
    """600 digit PNGs in label folders, one of them marked; and a fault-free scoring of it."""
    from digitbatch.sources.archive import DEFAULT_MAX_MEMBER_BYTES
    from digitbatch.sources.listing import list_archive

    tmp = tmp_path_factory.mktemp("poison")
    root = tmp / "pngs"
    x, y = synthetic_digits(N_PNG, seed=41)
    paths = [root / str(int(label)) / f"{j:04d}.png" for j, label in enumerate(y)]
    for img, p in zip(x, paths):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(_png(img))
    entries = list_archive(root, "dir", limit=DEFAULT_MAX_MEMBER_BYTES).entries
    order = [e.key for e in entries]
    poison_key = order[300]  # in chunk 1
    poisoned = root / poison_key
    img = np.asarray(__import__("PIL.Image").Image.open(poisoned))
    poisoned.write_bytes(_png(img, POISON))
    os.utime(root, ns=(1, 1))
    score(root, model=big / "m", out=tmp / "ref.zarr", chunk_size=PNG_CHUNK,
          scheduler="synchronous")
    return root, order, poison_key, 300 // PNG_CHUNK, tmp / "ref.zarr"


@pytest.mark.timeout(150)
@pytest.mark.parametrize("mode", ["crash", "hang"])
def test_poison_image(big, poison_dir, tmp_path, mode):
    root, order, poison_key, chunk, ref = poison_dir
    out = tmp_path / "p.zarr"
    t0 = time.perf_counter()
    with cluster.client("local", n_workers=3) as c:
        c.register_plugin(PoisonPNG(mode))
        exc = ChunkTimeoutError if mode == "hang" else ChunkFailedError
        with pytest.raises(exc) as err:
            score(root, model=big / "m", out=out, chunk_size=PNG_CHUNK,
                  scheduler=c.scheduler.address, task_timeout=4 if mode == "hang" else None)
        seconds = time.perf_counter() - t0
    e = err.value
    assert e.chunks == [chunk] and f"chunk {chunk} " in str(e)
    first, last = e.failures[0]["keys"]  # a long chunk: its first and last key
    assert (first, last) == (order[chunk * PNG_CHUNK], order[(chunk + 1) * PNG_CHUNK - 1])
    assert order.index(first) <= order.index(poison_key) <= order.index(last)
    if mode == "hang":
        assert f"stuck decoding {poison_key!r}" in str(e) and "task_timeout" in str(e)
    else:
        assert "died 4 times" in str(e)
    n_chunks = 3
    assert sorted(committed(out)) == [i for i in range(n_chunks) if i != chunk]
    assert not (out / "_SUCCESS").exists() and not (out / ".lock").exists()
    # Without the poison (the decoder fixed), resume scores only the failed chunk.
    totals = []
    r = score(root, model=big / "m", out=out, chunk_size=PNG_CHUNK, resume=True,
              scheduler="synchronous",
              progress=lambda n, total=None: totals.append(total) if total is not None else None)
    assert totals == [PNG_CHUNK]
    assert r.metrics["n_scored_this_run"] == PNG_CHUNK and r.metrics["resumed"]
    assert _files(out) == _files(ref)
    print(f"{mode}: {type(e).__name__} after {seconds:.1f} s: {e}")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("bad", [-1, "10", True, float("nan")])
def test_task_timeout_must_be_seconds(big, tmp_path, bad):
    from digitbatch.errors import ScoreError

    with pytest.raises(ScoreError, match="task_timeout must be a number of seconds"):
        score(big / "s.zarr", model=big / "m", out=tmp_path / "o.zarr", task_timeout=bad,
              scheduler="synchronous")
    assert not (tmp_path / "o.zarr").exists()
