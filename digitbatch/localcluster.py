"""Starting a LocalCluster on this machine: its worker processes and what they run with.

:func:`local_cluster` is the one place a LocalCluster is made
(:func:`digitbatch.cluster.client` asks for it): single-threaded workers,
one per core (:func:`n_cores`), every listener on the loopback interface
(:func:`~digitbatch.addresses.local_host`), BLAS on one thread
(:data:`WORKER_ENV`), no worker profiler (:data:`LOCAL_CLUSTER_CONFIG`),
and Ctrl-C left to the run (:data:`WORKER_PRELOAD`). Worker processes fork
from a forkserver that has imported Dask and our task modules once
(:func:`start_forkserver`, :data:`WORKER_IMPORTS`).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.forkserver
import os
from collections.abc import Iterator

from .addresses import local_host
from .errors import ClusterError
from .logs import worker_environ

log = logging.getLogger(__name__)

# One BLAS thread per worker process: workers = cores, so more would oversubscribe.
WORKER_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "VECLIB_MAXIMUM_THREADS": "1",
}


# Dask config of the LocalClusters started here. The worker's statistical
# profiler (the dashboard's "Profile" page) samples the task threads' stacks
# on the worker's event loop, and during a cross-validation fold fit that
# CPU is taken from the task threads of a small machine (README, "Measured
# defaults"). A user who wants the
# profile runs their own scheduler (--scheduler ADDRESS) with their config.
# Every Dask server (the scheduler and each Nanny here, each worker) also
# wakes every 20 ms to time its event loop and every 0.5 s to sample the
# system for the dashboard: an idle cluster of two workers spent about a
# tenth of a core on them, CPU a busy one takes from decoding (README,
# "Measured defaults"). A blocked loop is still reported (Dask warns past
# 3 s), and the dashboard's system page updates every 5 s.
LOCAL_CLUSTER_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "5s",
}

# A LocalCluster's worker processes are forked from a forkserver that has
# imported Dask and the modules our tasks run (by name: this module imports
# none of them), rather than each spawned as a new interpreter that imports
# them again: the workers are ready sooner, which is most of the time to an
# archive run's first committed chunk, and a worker restarted after a crash
# (a hostile image) is forked in milliseconds. A worker is still a process
# of its own: a decoder crash kills that worker only.
START_METHOD = "forkserver"
WORKER_IMPORTS = ("distributed", "digitbatch.workerinit", "digitbatch.scoring.chunks",
                  "digitbatch.sources.listing")


def n_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


WORKER_PRELOAD = "digitbatch.workerinit"  # (Ctrl-C is the run's, not its workers')


@contextlib.contextmanager
def local_cluster(n_workers: int | None, processes: bool = True) -> Iterator:
    """A LocalCluster of single-threaded workers, on 127.0.0.1 only: worker
    processes, or (``processes=False``) worker threads of this process."""
    import dask
    from distributed import LocalCluster

    workers = n_workers or n_cores()
    # threads talk over Dask's in-process transport (inproc://: no sockets, no
    # serialisation); processes over TCP on the loopback interface only
    # (config= too: a worker process the cluster starts again later, e.g. after
    # Client.restart, gets it from its Nanny, not from this block's dask.config)
    host = local_host()
    # A forked worker starts with the forkserver's environment, which is this
    # process's as it was when the forkserver started: the Nanny gives it this
    # process's environment as it is now (credentials set since, say), as a
    # spawned worker would have it (less Dask's MALLOC_TRIM_THRESHOLD_, which
    # _pre_spawn_environ has just taken out of it); what a library read from
    # the environment at its import is read again by workerinit.
    pre_spawn = {**_pre_spawn_environ(), **worker_environ()}  # (JSON logs in workers too)
    options = ({"env": {**os.environ, **WORKER_ENV}, "host": host, "config": LOCAL_CLUSTER_CONFIG,
                "preload": [WORKER_PRELOAD]} if processes else
               # in-process workers still start an HTTP server (/metrics, /health),
               # on every interface unless told where
               {"worker_dashboard_address": f"{host}:0"})
    method = {}
    if processes and start_forkserver():
        method = {"distributed.worker.multiprocessing-method": START_METHOD}
        _keep_our_preload()
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ": pre_spawn,
                              **LOCAL_CLUSTER_CONFIG, **method}):
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=processes,
                dashboard_address=f"{host}:0",
                **options,
            )
    except Exception as exc:
        raise ClusterError(f"could not start a LocalCluster of {workers} workers: {exc}") from exc
    with cluster:
        log.info("LocalCluster with %d worker %s at %s; dashboard %s", workers,
                 "processes" if processes else "threads", cluster.scheduler_address,
                 cluster.dashboard_link)
        yield cluster


def start_forkserver() -> bool:
    """Start this process's forkserver, if it is not running, and say whether
    LocalCluster workers will fork from it (:data:`START_METHOD`).

    It imports :data:`WORKER_IMPORTS` (not pandas and the rest of Dask's
    default list, which our tasks never use) in a process of its own, in
    the environment of a worker: one BLAS thread (numpy is imported there,
    before any fork) and Dask's fixed hash seed; this process's environment
    is left as it was. A run that lists an archive first calls this before
    listing, so those imports overlap the listing. Idempotent.
    """
    if START_METHOD not in multiprocessing.get_all_start_methods():
        return False
    ctx = multiprocessing.get_context(START_METHOD)
    ctx.set_forkserver_preload(list(WORKER_IMPORTS))
    env = {**_pre_spawn_environ(), **worker_environ(), **WORKER_ENV}
    if env.get("PYTHONHASHSEED") in (None, "0"):
        env["PYTHONHASHSEED"] = "6640"  # (what a Nanny gives the processes it spawns)
    with _environ(env):
        multiprocessing.forkserver.ensure_running()
    return True


def _keep_our_preload() -> None:
    """Stop Dask from setting its own forkserver preload list.

    On its first worker start, Dask sets the forkserver's preload to its
    own list, and imports every module of it here first (pandas among
    them, 0.3 s of a run's start on this process, in the thread the
    cluster starts on, beside the listing: README, "Measured defaults").
    Our forkserver already runs with :data:`WORKER_IMPORTS`, so that list
    would change nothing but this process's imports. Dask keeps whether it
    has set the list in a module flag of ``distributed.utils`` (2026.7 has
    it); without the flag this does nothing, and tests/test_localcluster.py
    fails if starting a cluster imports pandas here again.
    """
    import distributed.utils

    if hasattr(distributed.utils, "_forkserver_preload_set"):
        distributed.utils._forkserver_preload_set = True


@contextlib.contextmanager
def _environ(env: dict) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update({k: str(v) for k, v in env.items()})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _pre_spawn_environ() -> dict:
    """Dask's pre-spawn environment for worker processes, without MALLOC_TRIM_THRESHOLD_.

    Dask sets glibc's trim threshold to 64 KiB so workers hand freed memory
    back at once; that also turns off glibc's adaptive mmap threshold, so
    every array over 128 KiB is a fresh mmap whose pages fault in again, a
    measurable share of every scoring task (README, "Measured defaults").
    Our tasks reuse their big buffers and hold at most a chunk, so memory
    stays bounded without it (peak RSS in `digitbatch bench score`).
    """
    import dask

    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    dask_value = env.pop("MALLOC_TRIM_THRESHOLD_", None)
    # A Nanny also copies that environment into its parent's os.environ (an
    # earlier cluster of this process did): drop Dask's value, not a user's.
    if dask_value is not None and os.environ.get("MALLOC_TRIM_THRESHOLD_") == str(dask_value):
        del os.environ["MALLOC_TRIM_THRESHOLD_"]
    return env
