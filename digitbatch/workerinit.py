"""What every worker process of a LocalCluster that digitbatch starts runs first
(a Dask preload, :data:`digitbatch.localcluster.WORKER_PRELOAD`).

Ctrl-C in a terminal sends SIGINT to the whole foreground process group: the
run and its worker processes. The run handles it (it stops, closes its
cluster, keeps what was committed, and exits 130 with one line); a worker
that handled it too would die printing a page of tracebacks of its event
loop. So the workers ignore SIGINT, and are stopped by their cluster.

A task makes many short-lived objects (a member, its header, its decoded
pixels), and each of the collector's full passes walked every object the
worker's imports had made as well: frozen (``gc.freeze``) at start, those
are never walked again, and an archive member costs about a fifth less.
They are module-level objects that live as long as the worker anyway.
"""

from __future__ import annotations

import gc
import os
import signal
import sys


def dask_setup(worker=None) -> None:
    """Ignore SIGINT in this worker process (see the module docstring), and
    move every object made so far (the imports, the worker itself) out of
    the garbage collector's reach (see the module docstring)."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # (not the main thread: nothing to do there)
        pass
    _reread_fsspec_config()
    gc.freeze()


def _reread_fsspec_config() -> None:
    """fsspec reads its configuration (``FSSPEC_S3_ENDPOINT_URL`` and the files
    in ``FSSPEC_CONFIG_DIR``) when it is imported, which for a worker forked
    from the forkserver was when the forkserver started: read it again from
    this worker's environment, as a newly started process would."""
    conf = sys.modules.get("fsspec.config")
    if conf is None:  # (not imported yet: its import will read it)
        return
    conf.conf.clear()
    conf.set_conf_files(os.environ.get("FSSPEC_CONFIG_DIR", conf.default_conf_dir), conf.conf)
    conf.set_conf_env(conf.conf)
