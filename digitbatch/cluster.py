"""The one place a Dask client is made, and the executors that use it.

``scheduler`` selects where work runs:

- ``None`` / ``"local"``: a LocalCluster of worker processes (one per core,
  one thread each, BLAS pinned to one thread), bound to 127.0.0.1 only; or,
  where the caller asks for it (``processes=False``: scoring a store), of
  worker threads of this process talking over Dask's in-process transport;
- ``"synchronous"``: everything inline in this process (for debugging and
  for tests that need no cluster);
- ``"tcp://host:port"``, ``"tls://host:port"`` (or any address Dask
  accepts): join that cluster.

Every listener of a LocalCluster started here (scheduler, workers, nannies,
dashboards, the workers' HTTP servers) binds the loopback interface only,
unless ``$DIGITBATCH_LOCAL_HOST`` names another interface to listen on.
An address is checked (:func:`check_address`) before anything is started
or created.

When no address is passed, ``$DIGITBATCH_SCHEDULER`` gives it, then Dask's
own ``scheduler-address`` config (``$DASK_SCHEDULER_ADDRESS``, as the Dask
Kubernetes operator and dask-jobqueue set it), then ``"local"``.

``scheduler`` may also be a :class:`ClusterSpec`: an address plus the TLS
files (CA, client certificate, key) to reach a ``tls://`` scheduler. A plain
string stays valid everywhere; only this module turns either into a client.
Without TLS files, Dask's own ``distributed.comm.tls`` config applies.
"""

from __future__ import annotations

import collections
import contextlib
import difflib
import gc
import logging
import os
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import localcluster
from .addresses import (  # noqa: F401  (re-exported: where a LocalCluster listens)
    LOCAL_HOST, LOCAL_HOST_ENV, address_problem, local_host,
)
from .errors import ClusterError, SchedulerAddressError

log = logging.getLogger(__name__)

SCHEDULER_ENV = "DIGITBATCH_SCHEDULER"
SYNCHRONOUS = ("synchronous", "sync", "inline")
CONNECT_TIMEOUT = "20s"


@dataclass(frozen=True)
class ClusterSpec:
    """A scheduler address and the TLS files that reach it.

    Accepted wherever a ``scheduler`` string is; ``ClusterSpec(address)``
    means the same as the string ``address``.

    Parameters
    ----------
    address : str, optional
        ``"local"``, ``"synchronous"`` or a scheduler address; None falls back
        as described in the module docstring.
    tls_ca_file, tls_cert, tls_key : str, optional
        PEM files: the cluster's CA, this client's certificate and its key
        (``tls_key`` may be left out when the key is inside ``tls_cert``).
        Given, encryption is required and the scheduler must be ``tls://``.
    timeout : str
        How long to keep trying to connect to a scheduler address.
    """

    address: str | None = None
    tls_ca_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    timeout: str = CONNECT_TIMEOUT

    @property
    def tls(self) -> bool:
        return any((self.tls_ca_file, self.tls_cert, self.tls_key))

    def security(self) -> Any:
        """A ``distributed.security.Security`` for the TLS files, or None without them."""
        if not self.tls:
            return None
        files = (("--tls-ca-file", self.tls_ca_file), ("--tls-cert", self.tls_cert),
                 ("--tls-key", self.tls_key))
        missing = [flag for flag, path in files[:2] if not path]
        if missing:
            raise ClusterError(f"TLS needs {' and '.join(missing)} as well: give the cluster's CA "
                               f"file and this client's certificate (and --tls-key)")
        for flag, path in files:
            if path and not Path(path).is_file():
                raise ClusterError(f"{flag} {path}: no such file")
        from distributed.security import Security

        return Security(tls_ca_file=str(self.tls_ca_file), tls_client_cert=str(self.tls_cert),
                        tls_client_key=str(self.tls_key) if self.tls_key else None,
                        require_encryption=True)


Scheduler = str | ClusterSpec | None  # what every ``scheduler=`` accepts


def from_options(scheduler: str | None = None, *, tls_ca_file: str | None = None,
                 tls_cert: str | None = None, tls_key: str | None = None) -> Scheduler:
    """What the command line's cluster options mean: ``scheduler``, or a ClusterSpec with TLS."""
    if not any((tls_ca_file, tls_cert, tls_key)):
        return scheduler
    return ClusterSpec(scheduler, tls_ca_file=tls_ca_file and str(tls_ca_file),
                       tls_cert=tls_cert and str(tls_cert), tls_key=tls_key and str(tls_key))


def as_spec(scheduler: Scheduler) -> ClusterSpec:
    """``scheduler`` as a :class:`ClusterSpec` (a string becomes its address)."""
    if isinstance(scheduler, ClusterSpec):
        return scheduler
    if scheduler is None or isinstance(scheduler, str):
        return ClusterSpec(scheduler)
    raise ClusterError(f"scheduler must be an address, 'local', 'synchronous' or a ClusterSpec, "
                       f"got {scheduler!r}")


def merge(first: Scheduler, then: Scheduler) -> ClusterSpec:
    """Field by field, ``first``'s settings where given, else ``then``'s."""
    a, b = as_spec(first), as_spec(then)
    return ClusterSpec(a.address or b.address, tls_ca_file=a.tls_ca_file or b.tls_ca_file,
                       tls_cert=a.tls_cert or b.tls_cert, tls_key=a.tls_key or b.tls_key,
                       timeout=a.timeout if a.timeout != CONNECT_TIMEOUT else b.timeout)


def _config_address() -> str | None:
    import dask.config

    return dask.config.get("scheduler-address", None)


def check_address(scheduler: Scheduler) -> str:
    """The effective scheduler address (see :func:`resolve_scheduler`) if it is
    one Dask can use: ``"local"``, ``"synchronous"`` (or ``"sync"``, ``"inline"``),
    ``SCHEME://HOST:PORT`` for Dask's transports (tcp, tls, ws, wss, ucx),
    ``HOST:PORT`` (tcp), or ``inproc://...``. Anything else (``lokal``, a
    missing or out-of-range port, a path, a bad host) is a
    :class:`SchedulerAddressError` naming it, raised before anything is
    started or created: call it at the top of any command that connects.
    """
    spec = as_spec(scheduler)
    given = spec.address or os.environ.get(SCHEDULER_ENV) or _config_address() or "local"
    source = ("--scheduler" if spec.address else f"${SCHEDULER_ENV}"
              if os.environ.get(SCHEDULER_ENV) else "Dask's scheduler-address config")
    if not isinstance(given, str) or not given.strip():
        raise SchedulerAddressError(
            f"{source} must be an address, 'local' or 'synchronous', got {given!r}")
    address = given.strip()
    if address == "local" or address in SYNCHRONOUS:
        return address
    problem = address_problem(address)
    if problem is None:
        return address
    hint = difflib.get_close_matches(address.lower(), ["local", *SYNCHRONOUS], n=1, cutoff=0.6)
    fix = (f"did you mean {hint[0]!r}?" if hint else
           "give 'local' (a cluster on this machine), 'synchronous' (no cluster), or the "
           "scheduler's address as tcp://HOST:PORT (tls://HOST:PORT with TLS)")
    raise SchedulerAddressError(f"{source} {given!r} is not a scheduler address ({problem}): "
                                f"{fix}")


def resolve_scheduler(scheduler: Scheduler) -> str:
    """The effective address: the option, else the environment, else Dask's config, else local.

    It is checked first (:func:`check_address`).
    """
    spec = as_spec(scheduler)
    address = check_address(spec)
    if spec.tls and (address == "local" or address in SYNCHRONOUS):
        raise ClusterError(
            f"TLS files were given but the scheduler is {address!r}: TLS is for joining a "
            f"tls://host:port scheduler (--scheduler tls://...); the LocalCluster needs none "
            f"(it listens on 127.0.0.1 only)")
    return address


class InlineExecutor:
    """Runs tasks one after the other in this process."""

    n_workers = 1
    client = None

    def map_ordered(self, fn: Callable, items: Iterable, *, window: int | None = None) -> Iterator:
        for item in items:
            yield fn(item)


class DaskExecutor:
    """Runs tasks on a Dask client, a bounded window in flight, results in order.

    :meth:`close` (called by :func:`executor` before its client closes)
    finishes any :meth:`map_ordered` iteration left suspended (the caller
    raised, say): its pending futures are cancelled while the client's event
    loop still runs, not when the generator is collected later ("Exception
    ignored ... IOLoop is closed").
    """

    def __init__(self, client: Any):
        self.client = client
        self.n_workers = max(1, len(client.scheduler_info().get("workers", {})))
        self._live: weakref.WeakSet = weakref.WeakSet()

    def close(self) -> None:
        for gen in list(self._live):
            gen.close()
        self._live.clear()

    def map_ordered(self, fn: Callable, items: Iterable, *, window: int | None = None) -> Iterator:
        gen = self._map_ordered(fn, items, window=window)
        self._live.add(gen)
        return gen

    def _map_ordered(self, fn: Callable, items: Iterable, *, window: int | None) -> Iterator:
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
def executor(scheduler: Scheduler = None, *, n_workers: int | None = None,
             processes: bool = True) -> Iterator:
    """An executor for ``scheduler`` (see module docstring); closes what it started.

    ``processes=False``: a new LocalCluster's workers are threads of this
    process (see :func:`client`).
    """
    if resolve_scheduler(scheduler) in SYNCHRONOUS:
        yield InlineExecutor()
        return
    with client(scheduler, n_workers=n_workers, processes=processes) as c:
        ex = DaskExecutor(c)
        try:
            yield ex
        finally:
            ex.close()


def _quiet_distributed() -> None:
    """distributed logs at INFO on import; keep it to warnings unless we debug."""
    import distributed  # noqa: F401  (imported first: its import sets its log levels)

    if not logging.getLogger("digitbatch").isEnabledFor(logging.DEBUG):
        logging.getLogger("distributed").setLevel(logging.WARNING)


def _connect_hint(address: str, spec: ClusterSpec) -> str:
    if address.startswith("tls://") and not spec.tls:
        return ("a tls:// scheduler needs --tls-ca-file, --tls-cert and --tls-key (or Dask's "
                "distributed.comm.tls config)")
    if spec.tls:
        return ("check the address and that the certificate and key are signed by the "
                "cluster's CA")
    return "check the address (tcp://host:port) or use --scheduler local"


@contextlib.contextmanager
def client(scheduler: Scheduler = None, *, n_workers: int | None = None,
           processes: bool = True) -> Iterator:
    """A ``distributed.Client``: a new loopback LocalCluster, or the given address.

    Parameters
    ----------
    scheduler : str or ClusterSpec, optional
        See the module docstring; TLS files in a :class:`ClusterSpec` are
        passed to the client as a ``Security`` requiring encryption.
    n_workers : int, optional
        Workers of a new LocalCluster (default: one per core).
    processes : bool
        Whether a new LocalCluster's workers are processes (the default:
        a crash in third-party code, such as an image decoder, kills one
        worker, which is restarted) or threads of this process (for work
        that is our own numpy code and releases the GIL: no process start,
        no imports in every worker, no copies between processes).
    """
    from distributed import Client

    _quiet_distributed()
    spec = as_spec(scheduler)
    address = resolve_scheduler(spec)
    if address in SYNCHRONOUS:
        raise ClusterError("a Dask client was asked for with the synchronous scheduler")
    if address == "local":
        with localcluster.local_cluster(n_workers, processes) as cluster, Client(cluster) as c:
            yield c
        return
    security = spec.security()
    try:
        c = Client(address, timeout=spec.timeout, security=security)
    except Exception as exc:
        _drop_half_made_client(exc)
        raise ClusterError(
            f"could not connect to the Dask scheduler at {address!r} "
            f"({type(exc).__name__}: {exc}); {_connect_hint(address, spec)}"
        ) from exc
    with c:
        log.info("joined Dask cluster at %s (%d workers%s); dashboard %s", address,
                 len(c.scheduler_info().get("workers", {})), ", TLS" if spec.tls else "",
                 c.dashboard_link)
        yield c


def hold(obj):
    """A task that returns its argument: data shared with the workers as a task
    result, which the scheduler can recompute when the worker holding it dies
    (scattered data dies with its worker)."""
    return obj


def _drop_half_made_client(exc: BaseException) -> None:
    """Close a Client whose ``__init__`` failed now, in this thread.

    Its tracebacks keep it alive until a later garbage collection, which may
    fire inside the start of the next Client's loop thread: its ``__del__``
    then waits for the loop-runner lock that the starting thread's parent
    holds while it waits for that thread, a deadlock (seen as a rare hang of
    the TLS refusal test). Dropping the tracebacks and collecting here runs
    the ``__del__`` while no lock is held.
    """
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        e.__traceback__ = None
        e = e.__cause__ or e.__context__
    gc.collect()


@contextlib.contextmanager
def shared(scheduler: Scheduler = None, *, n_workers: int | None = None) -> Iterator[Scheduler]:
    """One cluster for several library calls (a job's steps).

    With the local scheduler a LocalCluster is started here, once, and its
    address is yielded for each call to join (it is closed on exit);
    otherwise ``scheduler`` is yielded with its address resolved.
    """
    spec = as_spec(scheduler)
    address = resolve_scheduler(spec)
    if address != "local":
        yield replace(spec, address=address)
        return
    _quiet_distributed()
    with localcluster.local_cluster(n_workers) as cluster:
        yield cluster.scheduler_address
