"""Start a dask-jobqueue SLURMCluster from jobqueue.yaml, publish its address, hold it.

    python deploy/slurm/launch_cluster.py --jobs 4 --address-file cluster.addr

writes the scheduler's address (tcp://node:port) to --address-file once the
first worker job has joined, and keeps the cluster (the scheduler runs in
this process; the workers are SLURM jobs) until it gets SIGTERM or SIGINT,
then cancels the worker jobs. run_nightly.sbatch shows the use.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import threading
from pathlib import Path

import dask.config
import yaml

HERE = Path(__file__).resolve().parent


def flat(tree: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: dask.config.set then keeps the other defaults."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@contextlib.contextmanager
def slurm_cluster(config: str | os.PathLike = HERE / "jobqueue.yaml", **kwargs):
    """A SLURMCluster configured by ``config`` (dask-jobqueue YAML); ``kwargs`` override it.

    The config stays set while the cluster lives: dask-jobqueue reads it
    whenever it writes a job script.
    """
    from dask_jobqueue import SLURMCluster

    with dask.config.set(flat(yaml.safe_load(Path(config).read_text()))):
        with SLURMCluster(**kwargs) as cluster:
            yield cluster


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(HERE / "jobqueue.yaml"))
    parser.add_argument("--jobs", type=int, default=2, help="SLURM worker jobs to submit")
    parser.add_argument("--address-file", required=True, help="where to write the address")
    parser.add_argument("--wait", type=int, default=1800,
                        help="seconds to wait for the first worker job to start")
    args = parser.parse_args(argv)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with slurm_cluster(args.config) as cluster:
        cluster.scale(jobs=args.jobs)
        print(cluster.job_script(), flush=True)
        from distributed import Client

        with Client(cluster) as client:
            client.wait_for_workers(1, timeout=args.wait)
        tmp = Path(args.address_file + ".tmp")
        tmp.write_text(cluster.scheduler_address + "\n")
        os.replace(tmp, args.address_file)
        print(f"scheduler {cluster.scheduler_address}; dashboard {cluster.dashboard_link}",
              flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
