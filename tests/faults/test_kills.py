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
  exist (k = 0: as soon as it holds its lock), then rerun with ``--resume``
  and no other flag (the dead run's lock is taken over: its process is
  gone): metrics.json says ``resumed`` (when anything had been
  committed) and ``n_scored_this_run`` is exactly the rows of the chunks
  that were not committed when it died; the chunk files are byte-identical
  to an uninterrupted run's, no temporary file or lock remains (3 kill
  points here, 20 in ``make test-long``).
- concurrent runs: a second run into an output a running one holds is
  refused while the first still has chunks to commit; the first finishes
  byte-identical. With --break-lock the second takes over: the first stops
  at its next commit (its lease is lost) and the second finishes the
  output byte-identical.

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
    r = _score(job, out, "--resume")
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
    before = kill_on_progress(_cmd(job, out, "--resume"), out,
                              at=N_CHUNKS // 2, total=N_CHUNKS)
    r = _score(job, out, "--resume")
    assert r.returncode == 0, r.stderr
    _check_resumed(out, job / "ref.zarr", before, n=N_IMAGES, total=N_CHUNKS)


@pytest.mark.parametrize("at", [0, 5])  # at the lock; 5 of the 13 slot chunks
def test_archive_job_killed_then_resumed(job, archive, tmp_path, at):
    src, ref = archive
    out = tmp_path / "a.zarr"
    total = -(-N_MEMBERS // CHUNK)
    before = kill_on_progress(_cmd(job, out, src=src), out, at=at, total=total)
    r = subprocess.run(_cmd(job, out, "--resume", src=src),
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


@pytest.mark.parametrize("at", [0, N_CHUNKS // 3, N_CHUNKS * 3 // 4])
def test_job_spec_killed_then_rerun_resumes(job, tmp_path, at):
    """`digitbatch run jobs/nightly-score.toml`, killed mid-score, rerun as cron would,
    with no flag and no manual step: the dead run's lock is taken over."""
    out = tmp_path / "pred-2026-11-24.zarr"
    cmd = _nightly(job, tmp_path)
    before = kill_on_progress(cmd, out, at=at, total=N_CHUNKS)
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
        with pytest.raises(OutputLockedError, match="being written by another run"):
            score(job / "s.zarr", model=job / "model", out=out, proba=True, resume=True,
                  scheduler="synchronous")
        left = N_CHUNKS - _n_commits(out)
        assert first.poll() is None and left > 0, \
            "the first run ended before the second was refused: the refusal was not mid-run"
        assert first.wait(timeout=300) == 0, first.stderr.read()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    _assert_finished_as_reference(job, out)


def test_break_lock_takes_over_a_live_run_which_then_commits_nothing(job, tmp_path):
    """--break-lock forces: the second run takes the lock of a live first run (held
    still by SIGSTOP, its lease fresh), which stops at its next commit
    (LeaseLostError, exit 1) instead of writing on; the second finishes the output
    byte-identical."""
    out = tmp_path / "forced.zarr"
    first = subprocess.Popen(_cmd(job, out), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        _wait_commits(first, out, N_CHUNKS // 4)
        first.send_signal(signal.SIGSTOP)
        assert _score(job, out, "--resume").returncode == 1  # live: refused without the flag
        r = _score(job, out, "--resume", "--break-lock")
        assert r.returncode == 0, r.stderr
        records = _snapshot(out)
        first.send_signal(signal.SIGCONT)
        assert first.wait(timeout=300) == 1
        assert "LeaseLostError" in first.stderr.read()
    finally:
        _reap_paused(first)
    assert _snapshot(out) == records
    _assert_finished_as_reference(job, out)


# --- SIGTERM, pauses, pid namespaces, other hosts: the lease (scoring/lock.py) ---------


def _wait_commits(proc: subprocess.Popen, out: Path, at: int) -> None:
    deadline = time.monotonic() + HANG
    while _n_commits(out) < at:
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before {at} commit records: "
                        f"no signal landed mid-work; {proc.stderr.read()[-2000:]}")
        assert time.monotonic() < deadline, f"no progress to {at} commits in {HANG} s"
        time.sleep(0.001)


def _snapshot(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "_commits").iterdir())}


def _reap_paused(proc) -> None:
    """A run the test paused (SIGSTOP) and left running: woken, killed, reaped."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait()


def _assert_finished_as_reference(job, out) -> None:
    """The output is complete, unlocked, and has the files of the uninterrupted run."""
    assert _files(out) == _files(job / "ref.zarr")
    assert (out / "_SUCCESS").exists() and not (out / ".lock").exists()


@pytest.mark.parametrize("at", [1, N_CHUNKS // 3, N_CHUNKS * 2 // 3])
def test_sigterm_stops_cleanly_and_the_rerun_completes(job, tmp_path, at):
    """SIGTERM (Kubernetes, SLURM, docker stop) mid-run: exit 143, one line, the lock
    released, what was committed kept; the same command again resumes the rest."""
    out = tmp_path / "out.zarr"
    proc = subprocess.Popen(_cmd(job, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        _wait_commits(proc, out, at)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 143
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Terminated" in err and "Traceback" not in err, err
    before = committed(out)
    assert at <= len(before) < N_CHUNKS  # it stopped with work left
    assert not (out / ".lock").exists() and not (out / "_SUCCESS").exists()
    r = _score(job, out, "--resume")
    assert r.returncode == 0, r.stderr
    _check_resumed(out, job / "ref.zarr", before, n=N_IMAGES, total=N_CHUNKS)


def test_sigterm_of_a_job_writes_a_terminated_summary(job, tmp_path):
    out = tmp_path / "pred-2026-11-24.zarr"
    cmd = _nightly(job, tmp_path)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_commits(proc, out, N_CHUNKS // 3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 143, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    s = json.loads((tmp_path / "run-2026-11-24.json").read_text())
    assert s["outcome"] == "terminated" and s["steps"][0]["outcome"] == "terminated"
    assert s["error"]["type"] == "RunTerminated"
    before = committed(out)
    assert len(before) < N_CHUNKS and not (out / ".lock").exists()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    _check_resumed(out, job / "ref.zarr", before, n=N_IMAGES, total=N_CHUNKS)


def test_a_paused_run_that_lost_its_lease_commits_nothing_more(job, tmp_path):
    """SIGSTOP past the lease's ttl: the rerun takes over (no flag) and finishes; the
    paused run, continued, stops at its next commit (LeaseLostError, exit 1) and the
    output stays byte-identical, with the records the rerun wrote."""
    out = tmp_path / "out.zarr"
    first = subprocess.Popen(_cmd(job, out, "--lock-ttl", "1"), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        _wait_commits(first, out, N_CHUNKS // 4)
        first.send_signal(signal.SIGSTOP)
        lock = json.loads((out / ".lock").read_text())
        assert lock["pid"] == first.pid
        # the pause lasts past the ttl: the lease (renewed every 0.25 s until the
        # stop) runs out; watched on the lock's own timestamp
        import datetime as dt

        renewed = dt.datetime.fromisoformat(lock["renewed"])
        while (dt.datetime.now(dt.timezone.utc) - renewed).total_seconds() <= 1.2:
            time.sleep(0.05)
        assert json.loads((out / ".lock").read_text()) == lock  # the paused run renewed nothing
        r = _score(job, out, "--resume", "--lock-ttl", "1")  # waits out the lease if needed
        assert r.returncode == 0, r.stderr
        records = _snapshot(out)
        assert len(records) == N_CHUNKS
        first.send_signal(signal.SIGCONT)
        assert first.wait(timeout=60) == 1
        assert "LeaseLostError" in first.stderr.read()
    finally:
        _reap_paused(first)
    assert _snapshot(out) == records  # nothing committed after the lease was lost
    _assert_finished_as_reference(job, out)


def test_overwrite_of_an_output_a_live_run_holds_is_refused(job, tmp_path):
    """score.overwrite = true must not delete an output under a live run: refused by
    its lock; the live run then finishes byte-identical."""
    out = tmp_path / "pred-2026-11-24.zarr"
    first = subprocess.Popen(_nightly(job, tmp_path), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        _wait_commits(first, out, N_CHUNKS // 4)
        first.send_signal(signal.SIGSTOP)
        before = _snapshot(out)
        r = subprocess.run(_nightly(job, tmp_path, "score.overwrite=true", "score.resume=false",
                                    f"job.summary={tmp_path}/other.json"),
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 1 and "OutputLockedError" in r.stdout + r.stderr, r.stderr
        assert _snapshot(out) == before and (out / "pred").exists()  # nothing deleted
        first.send_signal(signal.SIGCONT)
        assert first.wait(timeout=300) == 0, first.stderr.read()
    finally:
        _reap_paused(first)
    assert _files(out) == _files(job / "ref.zarr")


def _unshare(*flags: str) -> list[str]:
    probe = subprocess.run(["unshare", *flags, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"unshare {' '.join(flags)} is not permitted here (needs root): "
                    f"{probe.stderr.strip()}")
    return ["unshare", *flags]


def test_killed_as_pid_1_of_its_own_namespace_then_rerun_as_pid_1_completes(job, tmp_path):
    """A container's entrypoint is pid 1 in every run: the killed run's lock names pid
    1, and so does the rerun. The owner is told apart by its token, machine and start
    time; the lease runs out and the rerun takes over without a flag."""
    ns = _unshare("--pid", "--fork", "--mount-proc", "--kill-child")
    out = tmp_path / "out.zarr"
    cmd = [*ns, *_cmd(job, out, "--lock-ttl", "2")]
    before = kill_on_progress(cmd, out, at=N_CHUNKS // 3, total=N_CHUNKS)
    lock = json.loads((out / ".lock").read_text())
    assert lock["pid"] == 1  # (the dead run's lock is still there)
    r = subprocess.run([*ns, *_cmd(job, out, "--resume", "--lock-ttl", "2")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    _check_resumed(out, job / "ref.zarr", before, n=N_IMAGES, total=N_CHUNKS)


def test_killed_on_one_host_then_rerun_on_another_completes(job, tmp_path):
    """Each run with a host name of its own (unshare --uts), as pods on nodes."""
    uts = _unshare("--uts", "--fork", "--kill-child")
    out = tmp_path / "out.zarr"

    def on(host: str, *extra: str) -> list[str]:
        inner = " ".join(f"'{a}'" for a in _cmd(job, out, *extra))
        return [*uts, "sh", "-c", f"hostname {host} && exec {inner}"]

    before = kill_on_progress(on("node-a", "--lock-ttl", "2"), out, at=N_CHUNKS // 3,
                              total=N_CHUNKS)
    assert json.loads((out / ".lock").read_text())["host"] == "node-a"
    r = subprocess.run(on("node-b", "--resume", "--lock-ttl", "2"), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    _check_resumed(out, job / "ref.zarr", before, n=N_IMAGES, total=N_CHUNKS)
