"""The one place a Dask client is made, and the executors that use it.

``scheduler`` selects where work runs:

- ``None`` / ``"local"``: a LocalCluster of worker processes (one per core,
  one thread each, BLAS pinned to one thread), bound to 127.0.0.1 only;
- ``"synchronous"``: everything inline in this process (for debugging and
  for tests that need no cluster);
- ``"tcp://host:port"`` (or any address Dask accepts): join that cluster.

``$DIGITBATCH_SCHEDULER`` gives the default when no option is passed.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .errors import DigitbatchError

log = logging.getLogger(__name__)

SCHEDULER_ENV = "DIGITBATCH_SCHEDULER"
SYNCHRONOUS = ("synchronous", "sync", "inline")
# One BLAS thread per worker process: workers = cores, so more would oversubscribe.
WORKER_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "VECLIB_MAXIMUM_THREADS": "1",
}


class ClusterError(DigitbatchError, RuntimeError):
    """The Dask cluster could not be started or joined."""


def resolve_scheduler(scheduler: str | None) -> str:
    """The effective scheduler spec: the option, else the environment, else local."""
    spec = scheduler or os.environ.get(SCHEDULER_ENV) or "local"
    if not isinstance(spec, str) or not spec.strip():
        raise ClusterError(f"scheduler must be an address, 'local' or 'synchronous', got {spec!r}")
    return spec.strip()


def n_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class InlineExecutor:
    """Runs tasks one after the other in this process."""

    n_workers = 1
    client = None

    def map_ordered(self, fn: Callable, items: Iterable, *, window: int | None = None) -> Iterator:
        for item in items:
            yield fn(item)


class DaskExecutor:
    """Runs tasks on a Dask client, a bounded window in flight, results in order."""

    def __init__(self, client: Any):
        self.client = client
        self.n_workers = max(1, len(client.scheduler_info().get("workers", {})))

    def map_ordered(self, fn: Callable, items: Iterable, *, window: int | None = None) -> Iterator:
        window = window or 2 * self.n_workers + 2
        pending: collections.deque = collections.deque()
        try:
            for item in items:
                pending.append(self.client.submit(fn, item, pure=False))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for fut in pending:
                fut.cancel()


@contextlib.contextmanager
def executor(scheduler: str | None = None, *, n_workers: int | None = None) -> Iterator:
    """An executor for ``scheduler`` (see module docstring); closes what it started."""
    spec = resolve_scheduler(scheduler)
    if spec in SYNCHRONOUS:
        yield InlineExecutor()
        return
    with client(spec, n_workers=n_workers) as c:
        yield DaskExecutor(c)


def _quiet_distributed() -> None:
    """distributed logs at INFO on import; keep it to warnings unless we debug."""
    if not logging.getLogger("digitbatch").isEnabledFor(logging.DEBUG):
        logging.getLogger("distributed").setLevel(logging.WARNING)


@contextlib.contextmanager
def client(scheduler: str | None = None, *, n_workers: int | None = None) -> Iterator:
    """A ``distributed.Client``: a new loopback LocalCluster, or the given address."""
    from distributed import Client, LocalCluster

    _quiet_distributed()
    spec = resolve_scheduler(scheduler)
    if spec in SYNCHRONOUS:
        raise ClusterError("a Dask client was asked for with the synchronous scheduler")
    if spec == "local":
        workers = n_workers or n_cores()
        try:
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address="127.0.0.1:0",
                env=dict(WORKER_ENV),
            )
        except Exception as exc:
            raise ClusterError(f"could not start a LocalCluster of {workers} workers: {exc}") from exc
        with cluster, Client(cluster) as c:
            log.info("LocalCluster with %d workers at %s; dashboard %s",
                     workers, cluster.scheduler_address, c.dashboard_link)
            yield c
        return
    try:
        c = Client(spec, timeout="20s")
    except Exception as exc:
        raise ClusterError(
            f"could not connect to the Dask scheduler at {spec!r}: {exc}; check the address "
            f"(tcp://host:port) or use --scheduler local"
        ) from exc
    with c:
        log.info("joined Dask cluster at %s (%d workers)", spec,
                 len(c.scheduler_info().get("workers", {})))
        yield c
