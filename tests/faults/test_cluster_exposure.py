"""The cluster: what it listens on, the addresses it accepts, and the noise it makes.

================== ============================================================== ======================
kind               trials                                                         expected outcome
================== ============================================================== ======================
listeners          every listening socket of the process tree while a store is    loopback only
                   scored on the threaded LocalCluster, and on worker processes
scheduler-address  ``lokal``, ``synchronus``, no port, port 99999, a path, an     ``SchedulerAddressError``
                   http:// URL, a host with a space, ``:8786``, blank; from       naming it, before
                   ``--scheduler`` and from ``$DIGITBATCH_SCHEDULER``              anything is created
shutdown-noise     TooManyRejectsError with decode tasks still pending (CLI, 2    no "Exception ignored",
                   worker processes); an executor left mid-iteration              no traceback
library-warnings   ``train --model detect-2 --cv 5`` on worker processes          no n_jobs warning
================== ============================================================== ======================
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys

import numpy as np
import psutil
import pytest
from PIL import Image

from digitbatch import cluster
from digitbatch.errors import ClusterError, SchedulerAddressError

from .snapshots import assert_unchanged, tree


def _listening() -> list[tuple[int, str, int]]:
    """(pid, address, port) of every listening TCP socket of this process and its children."""
    me = psutil.Process()
    out = []
    for p in [me, *me.children(recursive=True)]:
        try:
            for c in p.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    out.append((p.pid, c.laddr.ip, c.laddr.port))
        except psutil.Error:
            pass
    return out


def _assert_loopback(seen) -> None:
    assert seen, "no listening socket seen: the check saw nothing"
    outside = [s for s in seen if not ipaddress.ip_address(s[1]).is_loopback]
    assert not outside, f"listening beyond loopback: {outside}"


def test_scoring_on_the_threaded_cluster_listens_on_loopback_only(small_store, shared_model,
                                                                   tmp_path):
    from digitbatch.scoring.api import score

    seen: list = []

    def progress(n, total=None):
        if not seen:  # during the run, with the cluster up
            seen.extend(_listening())
    score(small_store, model=shared_model, out=tmp_path / "p.zarr", progress=progress)
    _assert_loopback(seen)
    assert len({port for _, _, port in seen}) >= 3  # scheduler, dashboard, workers' HTTP


@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
def test_every_listener_of_a_local_cluster_is_loopback(processes):
    with cluster.client("local", n_workers=2, processes=processes) as c:
        seen = _listening()
        assert len(c.scheduler_info()["workers"]) == 2
    _assert_loopback(seen)


def test_the_listening_interface_can_be_chosen(monkeypatch):
    monkeypatch.setenv(cluster.LOCAL_HOST_ENV, "not a host")
    with pytest.raises(SchedulerAddressError, match="DIGITBATCH_LOCAL_HOST 'not a host'"):
        cluster.local_host()
    monkeypatch.setenv(cluster.LOCAL_HOST_ENV, "0.0.0.0")
    assert cluster.local_host() == "0.0.0.0"
    monkeypatch.delenv(cluster.LOCAL_HOST_ENV)
    assert cluster.local_host() == "127.0.0.1"


BAD_ADDRESSES = {
    "lokal": "did you mean 'local'",
    "synchronus": "did you mean 'synchronous'",
    "tcp://sched.example.org": "no :PORT",
    "tcp://sched:99999": "port '99999' is not a number from 1 to 65535",
    "tcp://sched:8786/status": "path after HOST:PORT",
    "http://sched:8786": "'http://' is not one of Dask's transports",
    "tcp://bad host:8786": "host 'bad host' is not a host name",
    ":8786": "host '' is not a host name",
    "tcp://sched:-1": "port '-1'",
    "   ": "must be an address",
}


@pytest.mark.parametrize("address", list(BAD_ADDRESSES), ids=lambda a: f"address-{a.strip()}")
def test_bad_scheduler_addresses_are_named(address):
    with pytest.raises(SchedulerAddressError, match=BAD_ADDRESSES[address]):
        cluster.check_address(address)
    assert issubclass(SchedulerAddressError, ClusterError)


@pytest.mark.parametrize("address", ["local", "synchronous", "sync", "tcp://127.0.0.1:8786",
                                     "tls://sched.example.org:8786", "sched-0.svc:8786",
                                     "tcp://[::1]:8786", "ws://10.0.0.1:8786", "inproc://a/1/2"])
def test_good_scheduler_addresses_pass(address):
    assert cluster.check_address(address) == address


def test_the_environments_address_is_checked_and_named(monkeypatch):
    monkeypatch.setenv(cluster.SCHEDULER_ENV, "lokal")
    with pytest.raises(SchedulerAddressError, match=r"\$DIGITBATCH_SCHEDULER 'lokal'"):
        cluster.check_address(None)


def test_a_bad_address_creates_nothing(tmp_path, idx_dir, small_store):
    from digitbatch.ingestion import ingest
    from digitbatch.training import train

    before = tree(tmp_path)
    with pytest.raises(SchedulerAddressError, match="lokal"):
        ingest(idx_dir, tmp_path / "s.zarr", scheduler="lokal")
    with pytest.raises(SchedulerAddressError, match="lokal"):
        train(small_store, tmp_path / "m", cv=3, scheduler="lokal")
    assert_unchanged(before, tmp_path)


def test_cli_bad_address_exits_1_and_creates_nothing(tmp_path, idx_dir):
    from click.testing import CliRunner

    from digitbatch.cli import main

    before = tree(tmp_path)
    r = CliRunner().invoke(main, ["ingest", str(idx_dir), "--out", str(tmp_path / "s.zarr"),
                                  "--scheduler", "lokal"])
    assert r.exit_code == 1, r.output
    assert "SchedulerAddressError" in r.output and "did you mean 'local'" in r.output
    assert "Traceback" not in r.output
    assert_unchanged(before, tmp_path)


def test_score_with_a_bad_address_creates_no_output(small_store, shared_model, tmp_path):
    from digitbatch.scoring.api import score

    before = tree(tmp_path)
    with pytest.raises(SchedulerAddressError):
        score(small_store, model=shared_model, out=tmp_path / "p.zarr", scheduler="lokal")
    assert_unchanged(before, tmp_path)


# --- noise at shutdown ---------------------------------------------------------------


def test_too_many_rejects_on_worker_processes_prints_no_ioloop_noise(tmp_path):
    """40 bad members first, 2,060 good after: the error comes while decode tasks are pending."""
    src = tmp_path / "src"
    src.mkdir()
    png = tmp_path / "g.png"
    Image.fromarray(np.full((28, 28), 9, np.uint8)).save(png)
    data = png.read_bytes()
    for i in range(40):
        (src / f"a{i:03d}-bad.png").write_bytes(b"not an image")
    for i in range(2060):
        (src / f"g{i:04d}.png").write_bytes(data)
    r = subprocess.run([sys.executable, "-m", "digitbatch", "-q", "ingest", str(src), "--out",
                        str(tmp_path / "s.zarr"), "--max-rejects", "10"],
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "TooManyRejectsError" in r.stderr
    for noise in ("Exception ignored", "IOLoop is closed", "Traceback"):
        assert noise not in r.stderr, r.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.png", "src"]


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_an_executor_left_mid_iteration_cancels_its_tasks_before_closing():
    import gc
    import time

    def slow(x):
        time.sleep(0.2)
        return x

    with cluster.executor("local", n_workers=1, processes=False) as ex:
        gen = ex.map_ordered(slow, range(10), window=4)
        assert next(gen) == 0
        client = ex.client
    # (the generator was closed while the client ran: its futures were cancelled then)
    assert gen.gi_frame is None and client.status == "closed"
    del gen
    gc.collect()


# --- library warnings ------------------------------------------------------------------


@pytest.mark.long
def test_detect2_cv_on_worker_processes_prints_no_n_jobs_warning(small_store, tmp_path):
    r = subprocess.run([sys.executable, "-m", "digitbatch", "-q", "train", str(small_store),
                        "--out", str(tmp_path / "m"), "--model", "detect-2", "--cv", "5"],
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "n_jobs" not in r.stderr and "FutureWarning" not in r.stderr, r.stderr[-3000:]


def test_per_class_threads_only_where_there_are_classes_to_share():
    from digitbatch.crossval import ThreadedFit, on_cluster
    from digitbatch.models import build

    ten, two = np.arange(10).repeat(3), np.array([0, 1] * 5)
    det = build("detect-2", seed=0)
    assert on_cluster(det, client=object(), y=two) is det  # LogisticRegression: nothing to thread
    det_k = build("detect-2", seed=0, features="deskew")
    assert on_cluster(det_k, client=object(), y=two) is det_k
    sgd = build("sgd", seed=0)
    assert on_cluster(sgd, client=object(), y=two) is sgd  # binary SGD: one problem
    assert isinstance(on_cluster(sgd, client=object(), y=ten), ThreadedFit)
