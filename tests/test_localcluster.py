"""A LocalCluster's worker processes fork from a forkserver that imported
our task modules once, in a worker's environment, without changing ours."""

from __future__ import annotations

import os
import sys

from digitbatch import cluster, localcluster


def _worker_variable(name):
    return os.environ.get(name)  # (the worker's os.environ: os.environ.get would pickle ours)


def _worker_facts():
    import threadpoolctl

    blas = [p["num_threads"] for p in threadpoolctl.threadpool_info()
            if p.get("user_api") == "blas"]
    return (os.getppid(), sorted(m for m in localcluster.WORKER_IMPORTS if m in sys.modules),
            os.environ.get("OMP_NUM_THREADS"), blas, "pandas" in sys.modules,
            __import__("gc").get_freeze_count())


def test_workers_fork_from_a_forkserver_with_our_imports_done():
    before = dict(os.environ)
    assert localcluster.start_forkserver() is True
    assert dict(os.environ) == before  # the worker environment is the forkserver's only
    with cluster.client(None, n_workers=2) as c:
        facts = list(c.run(_worker_facts).values())
    assert len(facts) == 2
    for parent, imported, omp, blas, pandas, frozen in facts:
        assert parent != os.getpid()  # forked by the forkserver, not spawned by a Nanny here
        assert imported == sorted(localcluster.WORKER_IMPORTS)  # before any task asked for them
        assert omp == "1" and set(blas) <= {1}
        assert not pandas  # Dask's own preload list (pandas and more) is not used
        assert frozen > 10_000  # the imports' objects, out of the collector's passes
    assert len({f[0] for f in facts}) == 1  # both from the one forkserver


def test_workers_see_this_process_environment_as_it_is_when_the_cluster_starts(monkeypatch):
    """Variables set after the forkserver started (credentials for a bucket,
    say) reach the workers, as they would reach spawned ones."""
    localcluster.start_forkserver()
    monkeypatch.setenv("DIGITBATCH_TEST_SET_LATER", "after the forkserver")
    with cluster.client(None, n_workers=1) as c:
        seen = list(c.run(_worker_variable, "DIGITBATCH_TEST_SET_LATER").values())
    assert seen == ["after the forkserver"]


def _worker_fsspec_endpoint():
    import fsspec.config

    return fsspec.config.conf.get("s3", {}).get("endpoint_url")


def test_workers_read_fsspec_config_from_the_environment_they_start_with(monkeypatch):
    """fsspec reads FSSPEC_* at its import, which for a forked worker was the
    forkserver's: a worker reads it again (an S3 endpoint set since reaches it)."""
    localcluster.start_forkserver()
    monkeypatch.setenv("FSSPEC_S3_ENDPOINT_URL", "http://127.0.0.1:9")
    with cluster.client(None, n_workers=1) as c:
        seen = list(c.run(_worker_fsspec_endpoint).values())
    assert seen == ["http://127.0.0.1:9"]


def test_starting_a_cluster_leaves_pandas_unimported_here():
    """Dask's own forkserver preload list would import pandas (and more) in
    this process as the first worker starts; ours is already running."""
    import subprocess

    code = ("import sys\n"
            "from digitbatch import cluster\n"
            "if __name__ == '__main__':\n"
            "    with cluster.client(None, n_workers=1) as c:\n"
            "        assert len(c.scheduler_info()['workers']) == 1\n"
            "    print('pandas' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def _intervals(dask_worker=None, dask_scheduler=None):
    server = dask_worker or dask_scheduler
    return {name: server.periodic_callbacks[name].callback_time for name in ("tick", "monitor")}


def test_servers_time_their_loop_and_sample_the_system_seldom():
    """The scheduler, each Nanny and each worker: event-loop ticks every second
    and system samples every 5 s (Dask's 20 ms and 0.5 s cost an idle cluster
    a tenth of a core); the worker's memory monitor is left as Dask has it."""
    want = {"tick": 1000, "monitor": 5000}
    with localcluster.local_cluster(2) as lc, cluster.client(lc.scheduler_address) as c:
        assert list(c.run(_intervals).values()) == [want, want]
        assert c.run_on_scheduler(_intervals) == want
        assert [_intervals(n) for n in lc.workers.values()] == [want, want]  # the Nannies
