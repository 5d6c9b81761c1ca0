"""Killed jobs and killed workers: scoring output stays exactly-once.

- job death: the whole ``digitbatch score`` process is SIGKILLed at random
  points, then rerun with ``--resume --break-lock``: the output's chunk files
  are byte-identical to an uninterrupted run's, no temporary files remain,
  and ``_SUCCESS`` exists only on complete outputs (3 trials here, 20 in
  ``make test-long``).
- concurrent runs: a second `digitbatch score` into an output that a running
  one holds is refused (even with --break-lock: the owner is alive), and the
  running one finishes byte-identical.
- worker death: one of three LocalCluster workers is SIGKILLed while a
  score runs; Dask reruns its tasks and the output is byte-identical.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


from ..conftest import trained_model


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kills")
    trained_model(tmp, n=24_000, n_train=20_000, seed=11, chunk_size=512)  # 47 chunks
    ref = tmp / "ref.zarr"
    _score(tmp, ref).check_returncode()
    return tmp


def _cmd(tmp: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "digitbatch", "-q", "score", str(tmp / "s.zarr"),
            "--model", str(tmp / "model"), "--out", str(out), "--scheduler", "synchronous",
            "--proba", *extra]


def _score(tmp, out, *extra):
    return subprocess.run(_cmd(tmp, out, *extra), capture_output=True, text=True, timeout=300)


def _files(out: Path) -> dict[str, bytes]:
    """Every stored chunk file and the output's arrays' metadata, by relative path."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and ("/c/" in p.as_posix() or p.name == "zarr.json")
            and "_commits" not in p.as_posix()}


def _kill_trial(job: Path, out: Path, delay: float) -> None:
    proc = subprocess.Popen(_cmd(job, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if proc.returncode == -signal.SIGKILL:
        assert not (out / "_SUCCESS").exists() or (out / "metrics.json").exists()
    r = _score(job, out, "--resume", "--break-lock")
    assert r.returncode == 0, r.stderr
    assert _files(out) == _files(job / "ref.zarr")
    assert (out / "_SUCCESS").read_text() != ""
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    assert not (out / ".lock").exists()


@pytest.mark.parametrize("trial", range(3))
def test_job_killed_then_resumed(job, tmp_path, trial):
    # the process needs ~1.5 s to import; kill between then and the end of the run
    _kill_trial(job, tmp_path / "out.zarr", random.Random(trial).uniform(1.0, 4.0))


@pytest.mark.long
@pytest.mark.parametrize("trial", range(20))
def test_job_killed_then_resumed_long(job, tmp_path, trial):
    _kill_trial(job, tmp_path / "out.zarr", random.Random(100 + trial).uniform(0.5, 6.0))


def test_worker_killed_mid_run(job, tmp_path):
    import threading

    from digitbatch import cluster
    from digitbatch.score import score

    with cluster.client("local", n_workers=3) as c:
        pids = list(c.run(os.getpid).values())
        killed = []

        def kill_one():
            time.sleep(0.4)
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

        t = threading.Thread(target=kill_one)
        t.start()
        out = tmp_path / "w.zarr"
        r = score(job / "s.zarr", model=job / "model", out=out, proba=True,
                  scheduler=c.scheduler.address)
        t.join()
    assert killed
    assert _files(out) == _files(job / "ref.zarr")
    ref = (job / "ref.zarr" / "_SUCCESS").read_text()
    import json
    assert r.metrics["confusion_matrix"] == json.loads(ref)["confusion_matrix"]
    assert r.metrics["n_images"] == 24_000


def test_concurrent_run_is_refused_and_the_running_one_is_unaffected(job, tmp_path):
    """While one `digitbatch score` runs, a second into the same output is
    refused (with --resume, and with --break-lock too: the owner is alive on
    this host); the first finishes with the reference bytes."""
    out = tmp_path / "busy.zarr"
    first = subprocess.Popen(_cmd(job, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    try:
        deadline = time.monotonic() + 60
        while not (out / ".lock").exists():
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        from digitbatch.predictions import OutputLockedError
        from digitbatch.score import score

        for break_lock in (False, True):
            with pytest.raises(OutputLockedError, match="being written by another run"):
                score(job / "s.zarr", model=job / "model", out=out, proba=True, resume=True,
                      break_lock=break_lock, scheduler="synchronous")
            if first.poll() is not None:
                pytest.skip("the first run ended before the second was refused: too fast")
        assert first.wait(timeout=300) == 0, first.stderr.read()
    finally:
        if first.poll() is None:
            first.kill()
    assert _files(out) == _files(job / "ref.zarr")
    assert (out / "_SUCCESS").exists() and not (out / ".lock").exists()
