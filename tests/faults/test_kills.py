"""Killed jobs: scoring output stays exactly-once.

Every kill here is triggered on progress, never on a clock: the test
watches the output's commit records (``PRED.zarr/_commits/``) or the run's
lock, and kills when it sees the count it
waits for. Each test then asserts that the kill landed while work was left
(the process died by SIGKILL, fewer commit records than chunks, no
``_SUCCESS``) and FAILS, never skips, when the run ended first.

- job death (``digitbatch score`` of a store, 157 chunks of 256 images;
  of a tar of PNGs scored directly, 13 slot chunks; and ``digitbatch run``
  of the nightly job spec): the process is SIGKILLed once k commit records
  exist (k = 0: as soon as it holds its lock), then rerun with ``--resume
  --break-lock``: metrics.json says ``resumed`` (when anything had been
  committed) and ``n_scored_this_run`` is exactly the rows of the chunks
  that were not committed when it died; the chunk files are byte-identical
  to an uninterrupted run's, no temporary file or lock remains (3 kill
  points here, 20 in ``make test-long``).
- concurrent runs: a second run into an output a running one holds is
  refused (with --break-lock too: the owner is alive), while the first
  still has chunks to commit; the first finishes byte-identical.

A worker killed mid-run (at a quarter, half and three quarters of the
images) is tests/faults/test_workers.py's ``test_worker_killed_while_scoring``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from digitbatch.errors import OutputLockedError
from digitbatch.scoring.output import committed
from digitbatch.scoring.api import score

from ..conftest import REPO, trained_model

N_IMAGES = 40_000
CHUNK = 256
N_CHUNKS = -(-N_IMAGES // CHUNK)  # 157, the last one ragged (64 images)
N_MEMBERS = 3_100  # the archive: 13 slot chunks of 256, the last ragged (28)
# a guard against a hung run, never the trigger of a kill
HANG = 240.0


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kills")
    trained_model(tmp, n=N_IMAGES, n_train=N_IMAGES - 4_000, seed=11, chunk_size=CHUNK)
    _score(tmp, tmp / "ref.zarr").check_returncode()
    return tmp


@pytest.fixture(scope="module")
def archive(job):
    from ..test_ingest import digit_members, make_tar

    members, _, _ = digit_members(N_MEMBERS, seed=12)
    src = make_tar(job / "night.tar", members, mode="w")
    ref = job / "archive-ref.zarr"
    subprocess.run(_cmd(job, ref, src=src), capture_output=True, text=True,
                   timeout=300).check_returncode()
    return src, ref


def _cmd(tmp: Path, out: Path, *extra: str, src: Path | None = None) -> list[str]:
    if src is not None:
        # an archive in slot chunks of CHUNK members: the library's score() in a
        # process of its own (the CLI scores archives in chunks of 32,768)
        kw = dict(model=str(tmp / "model"), out=str(out), proba=True, chunk_size=CHUNK,
                  scheduler="synchronous", resume="--resume" in extra,
                  break_lock="--break-lock" in extra)
        return [sys.executable, "-c", "import sys; from digitbatch.scoring.api import score; "
                f"score({str(src)!r}, **{kw!r})"]
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


def _n_commits(out: Path) -> int:
    try:
        return sum(1 for n in os.listdir(out / "_commits") if n.startswith("chunk-"))
    except FileNotFoundError:
        return 0


def _rows(records: dict) -> int:
    return sum(r["stop"] - r["start"] for r in records.values())


def kill_on_progress(cmd: list[str], out: Path, *, at: int, total: int) -> dict:
    """Run ``cmd``; SIGKILL it once ``out`` holds ``at`` commit records (0: once it
    holds its lock). Fails unless the kill landed mid-work; returns the commit
    records the dead run left."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + HANG
    try:
        while not ((out / ".lock").exists() if at == 0 else _n_commits(out) >= at):
            if proc.poll() is not None:
                pytest.fail(f"the run ended (exit {proc.returncode}) before {at} of {total} "
                            f"commit records were seen: no kill landed mid-work; "
                            f"{proc.stderr.read().decode()[-2000:]}")
            assert time.monotonic() < deadline, f"no progress to {at} commits in {HANG} s"
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, \
        f"the run finished (exit {proc.returncode}) before the kill landed"
    records = committed(out) if (out / "_commits").exists() else {}
    assert at <= len(records) < total, (at, len(records), total)  # landed with work left
    assert not (out / "_SUCCESS").exists() and not (out / "metrics.json").exists()
    return records


def _check_resumed(out: Path, ref: Path, before: dict, *, n: int, total: int) -> dict:
    """The resumed run scored exactly the rows not committed before, to the reference bytes."""
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_scored_this_run"] == n - _rows(before), (m["n_scored_this_run"], _rows(before))
    assert m["resumed"] is bool(before)
    assert m["n_images"] == n
    assert m["confusion_matrix"] == json.loads((ref / "metrics.json").read_text())[
        "confusion_matrix"]
    assert len(committed(out)) == total
    assert _files(out) == _files(ref)
    assert json.loads((out / "_SUCCESS").read_text()) == m
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    assert not (out / ".lock").exists()
    return m


def _kill_points(seed: int, count: int, total: int) -> list[int]:
    """0 (at the lock), then commit counts spread over the run, leaving work after each."""
    rng = random.Random(seed)
    return [0] + sorted(rng.randint(1, total * 4 // 5) for _ in range(count - 1))


def _store_trial(job: Path, out: Path, at: int) -> None:
    before = kill_on_progress(_cmd(job, out), out, at=at, total=N_CHUNKS)
    r = _score(job, out, "--resume", "--break-lock")
    assert r.returncode == 0, r.stderr
    _check_resumed(out, job / "ref.zarr", before, n=N_IMAGES, total=N_CHUNKS)


@pytest.mark.parametrize("at", _kill_points(0, 3, N_CHUNKS))
def test_job_killed_then_resumed(job, tmp_path, at):
    _store_trial(job, tmp_path / "out.zarr", at)


@pytest.mark.long
@pytest.mark.parametrize("at", _kill_points(100, 20, N_CHUNKS))
def test_job_killed_then_resumed_long(job, tmp_path, at):
    _store_trial(job, tmp_path / "out.zarr", at)


def test_job_killed_twice_then_resumed(job, tmp_path):
    """Killed, resumed and killed again further on: the last resume scores only the rest."""
    out = tmp_path / "out.zarr"
    kill_on_progress(_cmd(job, out), out, at=N_CHUNKS // 4, total=N_CHUNKS)
    before = kill_on_progress(_cmd(job, out, "--resume", "--break-lock"), out,
                              at=N_CHUNKS // 2, total=N_CHUNKS)
    r = _score(job, out, "--resume", "--break-lock")
    assert r.returncode == 0, r.stderr
    _check_resumed(out, job / "ref.zarr", before, n=N_IMAGES, total=N_CHUNKS)


@pytest.mark.parametrize("at", [0, 5])  # at the lock; 5 of the 13 slot chunks
def test_archive_job_killed_then_resumed(job, archive, tmp_path, at):
    src, ref = archive
    out = tmp_path / "a.zarr"
    total = -(-N_MEMBERS // CHUNK)
    before = kill_on_progress(_cmd(job, out, src=src), out, at=at, total=total)
    r = subprocess.run(_cmd(job, out, "--resume", "--break-lock", src=src),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    _check_resumed(out, ref, before, n=N_MEMBERS, total=total)
    assert not (out / "_staging").exists()


def _nightly(job: Path, tmp_path: Path, *extra_sets: str) -> list[str]:
    sets = ["cluster.scheduler=synchronous", "job.date=2026-11-24", 'job.steps=["score"]',
            f"job.workdir={tmp_path}", f"job.summary={tmp_path}/run-{{date}}.json",
            f"score.input={job / 's.zarr'}", f"score.model={job / 'model'}",
            "score.proba=true", f"score.out={tmp_path}/pred-{{date}}.zarr", *extra_sets]
    return [sys.executable, "-m", "digitbatch", "-q", "run",
            str(REPO / "jobs" / "nightly-score.toml"), *[f"--set={s}" for s in sets]]


def test_job_spec_killed_then_rerun_with_break_lock_resumes(job, tmp_path):
    """The cron rerun of a killed nightly job resumes by itself (score.break_lock = true)."""
    out = tmp_path / "pred-2026-11-24.zarr"
    cmd = _nightly(job, tmp_path, "score.break_lock=true")
    first = _nightly(job, tmp_path)
    before = kill_on_progress(first, out, at=N_CHUNKS // 3, total=N_CHUNKS)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    _check_resumed(out, job / "ref.zarr", before, n=N_IMAGES, total=N_CHUNKS)


def test_job_spec_killed_then_rerun_resumes(job, tmp_path):
    """`digitbatch run jobs/nightly-score.toml`, killed mid-score, rerun as cron would."""
    out = tmp_path / "pred-2026-11-24.zarr"
    cmd = _nightly(job, tmp_path)
    before = kill_on_progress(cmd, out, at=N_CHUNKS // 3, total=N_CHUNKS)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "OutputLockedError" in r.stdout + r.stderr  # (without score.break_lock)
    (out / ".lock").unlink()  # the dead run's lock, removed by hand here
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    _check_resumed(out, job / "ref.zarr", before, n=N_IMAGES, total=N_CHUNKS)
    s = json.loads((tmp_path / "run-2026-11-24.json").read_text())
    assert s["outcome"] == "succeeded"


def test_concurrent_run_is_refused_and_the_running_one_is_unaffected(job, tmp_path):
    """While one `digitbatch score` runs (a commit record seen, chunks left), a second
    into the same output is refused (with --resume, and with --break-lock too: the
    owner is alive on this host); the first finishes with the reference bytes."""
    out = tmp_path / "busy.zarr"
    first = subprocess.Popen(_cmd(job, out), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + HANG
        while _n_commits(out) < 1:
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.001)
        for break_lock in (False, True):
            with pytest.raises(OutputLockedError, match="being written by another run"):
                score(job / "s.zarr", model=job / "model", out=out, proba=True, resume=True,
                      break_lock=break_lock, scheduler="synchronous")
        left = N_CHUNKS - _n_commits(out)
        assert first.poll() is None and left > 0, \
            "the first run ended before the second was refused: the refusal was not mid-run"
        assert first.wait(timeout=300) == 0, first.stderr.read()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert _files(out) == _files(job / "ref.zarr")
    assert (out / "_SUCCESS").exists() and not (out / ".lock").exists()
