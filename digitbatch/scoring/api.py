"""``score()``: the one public entry of the scoring stage.

It validates its arguments, makes the plan (:mod:`.plan`), takes the
output's run lock (:mod:`.lock`), creates or checks the output
(:mod:`.output`), runs the chunks that are not committed yet (:mod:`.runner`
over :mod:`.chunks`), and finally builds the metrics record from the commit
records (:mod:`.record`) and finalises the output. Predictions are never
gathered in one place, and a resumed run counts every chunk exactly once.

Faults on the cluster (tests/faults): a killed worker's chunks are rerun
by Dask (a chunk rewrites the same bytes); a chunk whose workers keep dying
(an image that crashes the decoder) is given up after Dask's
``distributed.scheduler.allowed-failures``, and a chunk running longer than
``task_timeout`` is cancelled; either way the other chunks are still
scored and committed, then :class:`~digitbatch.errors.ChunkFailedError`
names the failed chunks and their image keys, and ``--resume`` redoes only
those.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from .. import cluster, storage
from .. import fserrors
from ..drift import DEFAULT_ALARM, DEFAULT_WARN, Thresholds
from ..determinism import one_blas_thread
from ..errors import IncompleteOutputError, ModelError, ScoreError
from ..layout import DEFAULT_CHUNK_SIZE
from ..logs import log_context
from ..modelio import load_model
from ..pointer import find_model
from ..sources.members import DEFAULT_MAX_MEMBER_BYTES
from .lock import DEFAULT_TTL, check_ttl, run_lock
from .output import (
    OutputSpec, check_resume, clear_output, committed, compact, create_output, finalize, has_spec,
    is_complete, open_metrics, started_with, sweep_temporaries,
)
from .early import EarlyCluster, wanted
from .plan import is_store, make_plan
from .seen import training_rows
from .record import build_record
from .runner import DEFAULT_TASK_TIMEOUT, DefaultTimeout, run
from .tasks import images_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoreResult:
    """The output written and its metrics.json record. ``already_complete``: the
    output was finished by an earlier run and nothing was scored now (the
    metrics are that run's)."""

    out: str
    metrics: dict
    already_complete: bool = False

    @property
    def accuracy(self):
        return self.metrics.get("accuracy")


@fserrors.boundary(kept="What was committed at --out is kept: rerun with --resume to score only the rest")
def score(
    source: str | Path,
    *,
    model: str | Path,
    out: str | Path,
    scheduler: str | None = None,
    resume: bool = False,
    proba: bool = False,
    break_lock: bool = False,
    labels: str | Path | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
    progress=None,
    task_timeout: float | None = DEFAULT_TASK_TIMEOUT,
    lock_ttl: float = DEFAULT_TTL,
    overwrite: bool = False,
    psi_warn: float = DEFAULT_WARN,
    psi_alarm: float = DEFAULT_ALARM,
) -> ScoreResult:
    """Predict every image of ``source`` with ``model`` into the output group ``out``.

    Parameters
    ----------
    source : path or URL
        A digitbatch store, or an image directory / tar / zip scored directly
        (decoded, normalised and labelled as ingest does, no store written).
        URLs (``s3://...``): see :mod:`digitbatch.storage`; an archive at a
        URL is copied to a temporary directory and its members streamed to
        the workers.
    model, out : paths or URLs
        Model directory, output group to create.
    scheduler : str, optional
        See :mod:`digitbatch.cluster`.
    resume : bool
        Continue an interrupted run into ``out`` (same model, input and
        options), scoring only the chunks it had not committed. Without it
        an existing ``out`` is refused.
    proba : bool
        Also write the (N, k) class probabilities.
    break_lock : bool
        Take the output's lock even from a run whose lease looks live
        (a lock left by a run that died is taken over without it: see
        :mod:`digitbatch.scoring.lock`).
    labels : path, optional
        For archives: a key,label CSV, as ``ingest --labels``.
    chunk_size : int
        For archives: members per task and rows per output chunk.
    progress : callable, optional
        ``progress(n, total=None)``: called with ``total`` once, then with the
        images of each chunk as it is committed (for a progress bar).
    task_timeout : float, optional
        On a Dask cluster, seconds a chunk may run on a worker; a chunk
        running longer is cancelled and its worker restarted (it commits
        nothing after). A thread cannot be stopped: on a LocalCluster of
        threads (a store's default) a limit given starts worker processes,
        and the default one is not applied (:func:`runner.timeout_plan`).
        None or 0: no limit.
    lock_ttl : float
        Seconds of the run's lease on ``out``: renewed every quarter of it;
        a lock not renewed for this long is taken over by another run.
    overwrite : bool
        Replace an existing output (only a digitbatch scoring output, or an
        empty directory), under its lock: an output a live run holds is
        refused, not deleted under it.
    psi_warn, psi_alarm : float
        The PSI from which a signal of metrics.json's ``drift`` block is
        ``warn`` and ``alarm`` (:mod:`digitbatch.drift`).

    Raises
    ------
    ChunkFailedError
        Chunks failed on the cluster: their workers died too often while
        running them (``distributed.scheduler.allowed-failures``), or they
        ran past ``task_timeout`` (:class:`~digitbatch.errors.ChunkTimeoutError`).
        Every other chunk is scored and committed first, so ``resume``
        redoes only the failed ones.
    """
    task_timeout = _check_timeout(task_timeout)
    thresholds = Thresholds(psi_warn, psi_alarm)
    lock_ttl = check_ttl(lock_ttl)
    cluster.check_address(scheduler)  # (before anything is created)
    if resume and overwrite:
        raise ScoreError("resume and overwrite exclude each other: resume continues an "
                         "output, overwrite replaces it")
    loaded = load_model(model)
    if resume and loaded.via is not None:
        loaded = _model_of_resumed_run(storage.to_path(out), loaded)
    m = loaded.model
    if proba and not m.has_proba:
        raise ScoreError(f"--proba: model {m.name!r} (loss {m.loss!r}) gives no probabilities")
    out = storage.to_path(out)
    if out.exists() and not resume:
        if not overwrite:
            raise ScoreError(f"output {out} already exists: choose another --out, or --resume it")
        # only a scoring output is replaced (a user's folder never): one rule for all
        storage.check_replaceable(out, "predictions", option="overwrite")
    with contextlib.ExitStack() as stack:
        return _score(stack, source, loaded, out, scheduler=scheduler, resume=resume,
                      proba=proba, break_lock=break_lock, labels=labels,
                      chunk_size=chunk_size, max_member_bytes=max_member_bytes,
                      progress=progress, task_timeout=task_timeout, lock_ttl=lock_ttl,
                      overwrite=overwrite, thresholds=thresholds)


def _score(stack, source, loaded, out, *, scheduler, resume, proba, break_lock, labels,
           chunk_size, max_member_bytes, progress, task_timeout, lock_ttl,
           overwrite, thresholds) -> ScoreResult:
    m = loaded.model
    src = storage.to_path(source)
    early = None
    if wanted(scheduler, storage.is_local(src) and src.exists() and not is_store(src)) and not (
            resume and is_complete(out)):
        early = EarlyCluster(scheduler)  # started while the archive is listed
        stack.callback(early.close)
    plan = make_plan(src, m, out_path=str(out), proba=proba, labels=labels,
                     chunk_size=chunk_size, limit=max_member_bytes, stack=stack)
    spec = OutputSpec(n=plan.n, chunk_size=plan.chunk_size, n_classes=m.n_classes,
                      proba=bool(proba), model_sha256=loaded.sha256,
                      input_checksum=plan.checksum, slot_size=plan.slot_size,
                      first_slot=plan.first_slot)
    t0 = time.perf_counter()
    with run_lock(out, break_lock=break_lock, ttl=lock_ttl) as lease:
        # from here on the run is named by its lock token, as metrics.json names it
        stack.enter_context(log_context(run_id=lease.token, input=str(source)))
        if overwrite and clear_output(out):
            log.info("replaced the earlier scoring output %s", out)
        if resume and has_spec(out):
            check_resume(out, spec)
        else:
            create_output(out, spec, arrays=not plan.archive, partial_ok=resume)
        if is_complete(out):
            log.info("%s is already complete", out)
            return ScoreResult(str(out), open_metrics(out), already_complete=True)
        if plan.prepare is not None:
            plan.prepare(out)
        done = committed(out)
        todo = plan.tasks(set(done))
        log.info("scoring %d of %d chunks (%d committed before)", len(todo), plan.n_chunks,
                 len(done))
        if progress is not None:
            progress(0, total=images_of(todo))
        # the model's own training rows, when this is its training store: counted apart
        train_rows = training_rows(loaded.manifest, plan.input)
        extra = {"train_rows": train_rows} if train_rows is not None else {}
        work = dataclasses.replace(plan.work, kwargs={**plan.work.kwargs, "lease": lease.token,
                                                      **extra})
        try:
            with one_blas_thread():  # (for tasks that run in this process's threads)
                run(todo, work, scheduler=early.address() if early else scheduler,
                    progress=progress,
                    task_timeout=task_timeout, committed=lambda: set(committed(out)))
        except Exception:
            # what a run that lost its lease trips over (its temporaries swept by
            # the run that took over, say) is that loss
            lease.check(now=True)
            raise
        lease.check()
        records = committed(out)
        missing = sorted(set(range(plan.n_chunks)) - set(records))
        if missing:
            raise IncompleteOutputError(f"chunks {missing[:10]} of {out} were not committed")
        sweep_temporaries(out)
        if plan.archive:
            compact(out, chunk_size=plan.chunk_size, n_classes=m.n_classes, proba=proba)
        seconds = time.perf_counter() - t0
        # the images this run scored: its chunks' committed rows (an archive's
        # rejected members are slots, not images)
        mine = {t.index for t in todo}
        n_this_run = sum(int(records[i]["n"]) for i in mine if i in records)
        result = build_record([records[i] for i in sorted(records)], model=m,
                              model_path=str(loaded.path), model_sha256=loaded.sha256,
                              input=plan.input, n_rejected_before=plan.n_rejected,
                              seconds=seconds, n_this_run=n_this_run, resumed=bool(done),
                              run_id=lease.token, thresholds=thresholds,
                              reference=loaded.manifest.get("drift_reference"),
                              model_via=None if loaded.via is None else str(loaded.via),
                              train_rows=train_rows)
        lease.check()
        finalize(out, result)
    log.info("scored %d images in %.2f s (accuracy %s)", n_this_run, seconds, result["accuracy"],
             extra={"images": n_this_run, "rate": result["images_per_second"]})
    return ScoreResult(str(out), result)


def _model_of_resumed_run(out: Path, loaded):
    """A resumed run keeps the model its output was started with, when ``model`` is a
    pointer (``models/current``) promoted past it since and the models folder still
    holds that model; otherwise ``loaded`` (and :func:`check_resume` says what differs)."""
    if not out.exists() or not has_spec(out):
        return loaded
    sha = started_with(out)
    if not sha or sha == loaded.sha256:
        return loaded
    where = find_model(loaded.path.parent, sha)
    if where is None:
        return loaded
    try:
        earlier = load_model(where)
    except ModelError:
        return loaded
    if earlier.sha256 != sha:
        return loaded
    log.info("resuming %s with the model it was started with, %s (%s now names %s)", out,
             where, loaded.via, loaded.path.name)
    return dataclasses.replace(earlier, via=loaded.via)


def _check_timeout(task_timeout) -> float | None:
    if task_timeout is None:
        return None
    if isinstance(task_timeout, bool) or not isinstance(task_timeout, (int, float)) \
            or task_timeout != task_timeout or task_timeout < 0:
        raise ScoreError(f"task_timeout must be a number of seconds >= 0 (0: no limit), "
                         f"got {task_timeout!r}")
    if isinstance(task_timeout, DefaultTimeout):
        return task_timeout  # (the default: runner.timeout_plan tells it from one asked for)
    return float(task_timeout) or None
