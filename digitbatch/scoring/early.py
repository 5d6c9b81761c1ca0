"""Starting the LocalCluster while an archive is listed.

Scoring an archive lists it on the client (:func:`~digitbatch.sources.listing.list_archive`:
every member's header) before the first chunk can go out, and a new
LocalCluster takes a second or more to start its worker processes. The
two do not depend on each other: :class:`EarlyCluster` starts the cluster
(:func:`digitbatch.cluster.shared`, the one place a LocalCluster is made)
on a thread of its own as soon as the run is known to need one, and the
run joins it by address once the plan is made. The cluster is closed by
the thread that started it, when the run ends (or fails).
"""

from __future__ import annotations

import logging
import threading

from .. import cluster, localcluster

log = logging.getLogger(__name__)


class EarlyCluster:
    """A LocalCluster starting in the background; :meth:`address` waits for it."""

    def __init__(self, scheduler=None):
        self._scheduler = scheduler
        # the workers' imports, in a process of their own, overlap the listing too
        localcluster.start_forkserver()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._address: str | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="digitbatch-early-cluster",
                                        daemon=True)
        self._thread.start()

    def _main(self) -> None:
        try:
            with cluster.shared(self._scheduler) as address:
                self._address = address
                self._ready.set()
                self._stop.wait()
        except BaseException as exc:  # handed to the caller by address()
            self._error = exc
        finally:
            self._ready.set()

    def address(self) -> str:
        """The scheduler's address, once the cluster is up (its start error, if it failed)."""
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self._address

    def close(self) -> None:
        """Stop the cluster and wait for it to close."""
        self._stop.set()
        self._thread.join()
        if self._error is not None and self._address is not None:
            log.warning("the LocalCluster did not close cleanly: %s", self._error)


def wanted(scheduler, source_is_local_archive: bool) -> bool:
    """Whether a run should start its cluster early: a local archive scored on
    a new LocalCluster (a given cluster is already up; a store's scoring
    uses threads of this process)."""
    return source_is_local_archive and cluster.resolve_scheduler(scheduler) == "local"
