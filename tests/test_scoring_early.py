"""digitbatch.scoring.early: the LocalCluster started while an archive is listed."""

from __future__ import annotations

import contextlib
import threading

import pytest

from digitbatch import cluster
from digitbatch.errors import ArchiveError, ClusterError
from digitbatch.scoring import early
from digitbatch.scoring.api import score


def _early_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "digitbatch-early-cluster"]


def test_wanted_only_for_a_local_archive_on_a_new_local_cluster():
    assert early.wanted("local", True)
    assert early.wanted(None, True) == (cluster.resolve_scheduler(None) == "local")
    assert not early.wanted("local", False)
    assert not early.wanted("synchronous", True)
    assert not early.wanted("tcp://127.0.0.1:8786", True)


def test_address_then_close(tmp_path):
    from distributed import Client

    e = early.EarlyCluster("local")
    try:
        address = e.address()
        assert address.startswith("tcp://")
        with Client(address, timeout=30) as c:
            assert len(c.scheduler_info()["workers"]) >= 1
            assert c.submit(lambda x: x + 1, 1).result(timeout=60) == 2
    finally:
        e.close()
    assert not _early_threads()
    with pytest.raises(OSError):
        Client(address, timeout=2)


def test_a_failed_start_is_raised_by_address(monkeypatch):
    @contextlib.contextmanager
    def broken(scheduler=None, **kw):
        raise ClusterError("could not start a LocalCluster of 2 workers: no ports")
        yield

    monkeypatch.setattr(cluster, "shared", broken)
    e = early.EarlyCluster("local")
    with pytest.raises(ClusterError, match="no ports"):
        e.address()
    e.close()
    assert not _early_threads()


def test_score_archive_on_local_cluster_closes_it(tmp_path, monkeypatch):
    """A corrupt tar scored on the local scheduler: the listing's error comes
    out and the cluster started meanwhile is closed."""
    from .test_sources_refs_scan import _plain

    data, offsets = _plain(20)
    bad = bytearray(data)
    bad[offsets[3] + 10] ^= 0x21
    src = tmp_path / "a.tar"
    src.write_bytes(bytes(bad))
    started = []
    real = early.EarlyCluster.__init__

    def spy(self, scheduler=None):
        started.append(scheduler)
        real(self, scheduler)

    monkeypatch.setattr(early.EarlyCluster, "__init__", spy)
    from .conftest import trained_model

    model = trained_model(tmp_path / "m", n=300, n_train=200, seed=3)
    with pytest.raises(ArchiveError, match="checksum"):
        score(src, model=model, out=tmp_path / "o.zarr", scheduler="local")
    assert started == ["local"]
    assert not _early_threads()
