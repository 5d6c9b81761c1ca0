"""Running a scoring run's chunk tasks: inline, or on a Dask cluster.

The runner executes a :class:`~digitbatch.scoring.tasks.Work` over
:class:`~digitbatch.scoring.tasks.ChunkTask` s through
:func:`digitbatch.cluster.executor` and knows nothing of what a task
reads. The Dask wiring of scoring lives here: the model (and labels) shared with
the workers once as recomputable task results, retries, per-chunk time
limits (``task_timeout``: a wedged decoder is cancelled and its worker
restarted), and turning chunks the cluster gave up into one
:class:`~digitbatch.errors.ChunkFailedError` that names them and their
image keys, raised only after every other chunk has been committed.
"""

from __future__ import annotations

import logging
import queue
import time
import uuid

from .. import cluster
from ..errors import ChunkFailedError, ChunkTimeoutError
from .tasks import MAX_KEYS_LISTED, ChunkTask, Work, batches, images_of, run_batch

log = logging.getLogger(__name__)

TASK_RETRIES = 2


class DefaultTimeout(float):
    """The default ``task_timeout`` (a float that says it was not asked for)."""


# Seconds a chunk may run on a worker before it is cancelled (None or 0: no limit).
# Far above what scoring or decoding a chunk takes, so only a wedged task (a
# decoder stuck on a hostile image, a hung network read) gets near this.
DEFAULT_TASK_TIMEOUT = DefaultTimeout(1800.0)
# How a chunk failed on the cluster (ChunkFailedError.failures[i]["kind"]).
KILLED, TIMED_OUT, CANCELLED = "workers-died", "timed-out", "cancelled"


def _executing(dask_worker=None) -> dict:
    """On a worker: seconds each task it is executing has run (for ``task_timeout``)."""
    from distributed.metrics import time as now

    t = now()
    tasks = dask_worker.state.tasks
    return {str(k): t - tasks[k].start_time for k in list(dask_worker.active_keys)
            if k in tasks and tasks[k].start_time is not None}


def run(todo: list[ChunkTask], work: Work, *, scheduler=None, progress=None,
        task_timeout: float | None = None, committed=None) -> None:
    """Run ``work.fn(task, **work.kwargs, **work.broadcast)`` for every task.

    See the module docstring. ``task_timeout`` applies per chunk (a batch
    of chunks gets that many times it). ``committed``: returns the chunk
    indices committed so far, so that a failed batch does not report its
    chunks that were.
    """
    if not todo:
        return
    fn, kwargs, broadcast = work.fn, work.kwargs, work.broadcast
    stuck_on = work.stuck_on
    task_timeout, processes = timeout_plan(task_timeout, work.processes, scheduler)
    with cluster.executor(scheduler, processes=processes) as ex:
        if ex.client is None:
            for task in todo:
                fn(*work.filled([task]), **kwargs, **broadcast)
                if progress is not None:
                    progress(task.n_images)
            return
        client = ex.client
        # The model (and labels) go to each worker once and tasks refer to them
        # (dask-ml#842). Not with scatter: scattered data dies with the worker
        # that holds it ("lost dependencies", found by tests/faults). As the
        # result of a task, the scheduler can recompute it after a worker dies;
        # other workers fetch it from a peer once.
        shared = {k: client.submit(cluster.hold, v, key=f"digitbatch-{k}-{uuid.uuid4().hex}",
                                   pure=False) if v is not None else None
                  for k, v in broadcast.items()}
        # ... and to every worker before the first chunk starts: a worker busy with
        # its first chunk (loading compiled kernels holds the GIL for long
        # stretches) can take seconds to answer a peer that asks for the model.
        held = [f for f in shared.values() if f is not None]
        if held:
            client.replicate(held)
        grouped = batches(todo, ex.n_workers, batch=work.batch)
        # In chunk order (the first commits first): tasks of equal priority run
        # in the order of their (random) keys.
        futures = [client.submit(run_batch, work.filled(g), fn=fn, **kwargs, **shared, pure=False,
                                 retries=TASK_RETRIES, priority=len(grouped) - k)
                   for k, g in enumerate(grouped)]
        failures = _gather_commits(client, futures, grouped, progress=progress,
                                   task_timeout=task_timeout, stuck_on=stuck_on)
        killed = [f for f in failures if f[2] == KILLED]
        if len(killed) > 1 or any(len(f[0]) > 1 for f in killed):
            # A worker's death counts against every task it held, queued ones too,
            # so a chunk can be given up for dying beside the one that kills its
            # workers (or in its batch). Run the given-up chunks again one at a
            # time: alone, a chunk fails only by itself.
            retry = sorted((t for f in killed for t in f[0]), key=lambda t: t.index)
            log.warning("%d chunks were given up after their workers died; running them "
                        "again one at a time to find those that kill their workers",
                        len(retry))
            failures = [f for f in failures if f[2] != KILLED]
            for task in retry:
                fut = client.submit(run_batch, work.filled([task]), fn=fn, **kwargs, **shared,
                                    pure=False,
                                    retries=TASK_RETRIES)
                failures += [(t, r + ", running alone too" if k == KILLED else r, k)
                             for t, r, k in _gather_commits(client, [fut], [[task]],
                                                            progress=progress,
                                                            task_timeout=task_timeout,
                                                            stuck_on=stuck_on)]
        # one entry per chunk, less those of a failed batch that were committed
        done = committed() if committed is not None and failures else set()
        failures = [(t, r, k) for ts, r, k in failures for t in ts if t.index not in done]
        if failures:
            raise _failed_error(failures, work.describe, n_tasks=len(todo))


def timeout_plan(task_timeout, processes: bool, scheduler) -> tuple[float | None, bool]:
    """The time limit a run enforces, and whether its LocalCluster has worker processes.

    A limit means one thing everywhere: a chunk past it is stopped (its worker
    restarted), so it commits nothing after it is reported failed. A worker
    thread cannot be stopped, so on a LocalCluster of threads (a store's
    default) a limit the caller asks for starts worker processes instead, and
    the default limit is not applied (None) rather than half-applied.
    """
    if task_timeout is None or processes or cluster.resolve_scheduler(scheduler) != "local":
        return task_timeout, processes
    if isinstance(task_timeout, DefaultTimeout):
        return None, False
    log.info("task_timeout %g s: the LocalCluster's workers are processes (a thread running "
             "past the limit could not be stopped; a process is restarted)", task_timeout)
    return task_timeout, True


def _gather_commits(client, futures, todo, *, progress, task_timeout, stuck_on=None) -> list[tuple]:
    """Wait for every batch; returns ``(batch, reason, kind)`` of those that failed.

    A task that raises re-raises here at once (a bug, or a bad input the
    task names itself). A task the scheduler gives up (KilledWorker: its
    workers died ``allowed-failures`` + 1 times) or cancels, or one running
    past ``task_timeout``, is recorded and the others are still waited for,
    so every chunk that can be committed is.
    """
    from distributed import KilledWorker

    task_of = {f.key: t for f, t in zip(futures, todo)}
    pending = {f.key: f for f in futures}
    # Each future reports itself when done (distributed.wait(FIRST_COMPLETED)
    # in a loop re-registers every pending future on each call: quadratic in
    # the number of chunks).
    finished: queue.SimpleQueue = queue.SimpleQueue()
    for f in futures:
        f.add_done_callback(finished.put)
    failures: list[tuple] = []
    poll = None if task_timeout is None else min(max(task_timeout / 10, 0.2), 10.0)
    first_seen: dict[tuple, float] = {}  # (key, worker) -> when first seen processing there
    next_check = 0.0
    while pending:
        try:
            done = [finished.get(timeout=poll)]
        except queue.Empty:
            done = []
        while True:
            try:
                done.append(finished.get_nowait())
            except queue.Empty:
                break
        for fut in done:
            if pending.pop(fut.key, None) is None:
                continue  # cancelled for its time limit already
            task = task_of[fut.key]
            if fut.status == "finished":
                if progress is not None:
                    progress(images_of(task))
                continue
            if fut.status == "error":
                exc = fut.exception()
                if not isinstance(exc, KilledWorker):
                    fut.result()  # raises the task's own error, with its traceback
                allowed = getattr(exc, "allowed_failures", None)
                reason = (f"the workers running it died {allowed + 1} times (a crash, e.g. an "
                          f"image that kills the decoder, or killed workers; "
                          f"distributed.scheduler.allowed-failures is {allowed})"
                          if allowed is not None else f"its workers died ({exc})")
                kind = KILLED
            else:
                reason, kind = f"the scheduler {fut.status} it", CANCELLED
            failures.append((task, reason, kind))
        if task_timeout is not None and pending and time.monotonic() >= next_check:
            next_check = time.monotonic() + poll
            limits = {k: task_timeout * len(task_of[k]) for k in pending}
            for fut, worker, secs in _overdue(client, set(pending.values()), limits,
                                              first_seen):
                chunks = [t.index for t in task_of[fut.key]]
                i = chunks[0]
                log.warning("chunks %s have run %.0f s on %s (task_timeout %g s): cancelling "
                            "them", chunks, secs, worker, task_timeout)
                stuck = _ask(client, worker, stuck_on, i) if stuck_on is not None else None
                pending.pop(fut.key, None)
                fut.cancel()
                n = len(task_of[fut.key])
                failures.append((task_of[fut.key],
                                 f"it ran longer than task_timeout={task_timeout:g} s"
                                 + (f" per chunk for its batch of {n} chunks" if n > 1 else "")
                                 + f" on worker "
                                 f"{worker}" + (f", stuck decoding {stuck!r}," if stuck else "")
                                 + " and was cancelled", TIMED_OUT))
                _restart(client, worker)
    return failures


def _overdue(client, pending, limits, first_seen) -> list[tuple]:
    """``(future, worker, seconds)`` of pending tasks executing longer than ``task_timeout``.

    The workers say how long each task has been executing; a worker that
    does not answer (its event loop is blocked) is judged by when the
    scheduler was first seen to have handed it the task.
    """
    keys = {f.key: f for f in pending}
    now = time.monotonic()
    on = {}
    for worker, ks in client.processing().items():
        for k in ks:
            if k in keys:
                on[k] = worker
                first_seen.setdefault((k, worker), now)
    # (a task cannot have executed for longer than it was seen processing)
    if not any(now - first_seen[(k, w)] > limits[k] for k, w in on.items()):
        return []
    try:
        running = client.run(_executing, workers=sorted(set(on.values())), on_error="return",
                             callback_timeout=min(min(limits.values()), 30.0))
    except Exception as exc:  # a worker does not answer
        log.debug("workers did not say what they are executing: %s", exc)
        running = {}
    out = []
    for k, w in on.items():
        report = running.get(w)
        if isinstance(report, dict):
            secs = report.get(str(k))
            if secs is not None and secs > limits[k]:
                out.append((keys[k], w, secs))
        elif now - first_seen[(k, w)] > limits[k]:
            out.append((keys[k], w, now - first_seen[(k, w)]))
    return out


def _ask(client, worker: str, fn, *args):
    """``fn(*args)`` run on ``worker``; None if it fails or does not answer in 10 s."""
    try:
        answer = client.run(fn, *args, workers=[worker], on_error="return",
                            callback_timeout=10).get(worker)
    except Exception as exc:
        log.debug("worker %s did not answer: %s", worker, exc)
        return None
    return None if isinstance(answer, BaseException) else answer


def _restart(client, worker: str) -> None:
    """Restart the worker of a cancelled, stuck task: cancelling does not stop its thread."""
    try:
        client.restart_workers([worker], timeout=60, raise_for_error=False)
    except Exception as exc:  # no nanny, or it is gone already: the task stays cancelled
        log.warning("could not restart worker %s after cancelling its task: %s", worker, exc)


def _failed_error(failures, describe, *, n_tasks: int) -> ChunkFailedError:
    items = []
    for task, reason, kind in sorted(failures, key=lambda f: f[0].index):
        keys = describe(task) if describe is not None else []
        items.append({"chunk": task.index, "start": task.start, "stop": task.stop,
                      "keys": keys, "reason": reason, "kind": kind})

    def one(f):
        n = f["stop"] - f["start"]
        if not f["keys"]:
            keys = ""
        elif len(f["keys"]) == 2 and n > MAX_KEYS_LISTED:
            keys = f", keys {f['keys'][0]!r} ... {f['keys'][1]!r}"
        else:
            keys = ", keys " + ", ".join(repr(k) for k in f["keys"])
        return f"chunk {f['chunk']} (rows {f['start']}-{f['stop'] - 1}{keys}): {f['reason']}"

    cls = ChunkTimeoutError if all(f["kind"] == TIMED_OUT for f in items) else ChunkFailedError
    return cls(f"{len(items)} of {n_tasks} chunks failed on the cluster (the other "
               f"{n_tasks - len(items)} are committed): " + "; ".join(one(f) for f in items)
               + ". Remove or fix those images and rerun with --resume: only the failed "
                 "chunks are redone", items)
