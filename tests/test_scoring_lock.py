"""The run lock of a scoring output (digitbatch.scoring.lock)."""

from __future__ import annotations

import json

import pytest

from digitbatch.errors import LeaseLostError
from digitbatch.scoring.api import score


def test_overlapping_runs_refused(tmp_path, small_store, model_dir):
    from digitbatch.errors import OutputLockedError
    from digitbatch.scoring.lock import run_lock

    out = tmp_path / "p.zarr"
    with run_lock(out):
        with pytest.raises(OutputLockedError, match="being written by another run"):
            score(small_store, model=model_dir, out=out, resume=True, scheduler="synchronous")
    r = score(small_store, model=model_dir, out=out, resume=True, scheduler="synchronous")
    assert r.metrics["n_images"] == 1000


def test_stale_lock_needs_break_lock(tmp_path, small_store, model_dir):
    import socket
    from digitbatch.errors import OutputLockedError

    out = tmp_path / "p.zarr"
    out.mkdir()
    dead = subprocess_dead_pid()
    (out / ".lock").write_text(json.dumps({"pid": dead, "host": socket.gethostname(),
                                           "started": "then"}))
    with pytest.raises(OutputLockedError, match="--break-lock"):
        score(small_store, model=model_dir, out=out, resume=True, scheduler="synchronous")
    r = score(small_store, model=model_dir, out=out, resume=True, break_lock=True,
              scheduler="synchronous")
    assert r.metrics["n_images"] == 1000


def subprocess_dead_pid() -> int:
    import subprocess
    import sys
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_lock_names_its_owner_and_is_released(tmp_path):
    import os
    import socket

    from digitbatch.scoring.lock import LOCK, run_lock

    out = tmp_path / "p.zarr"
    with run_lock(out) as me:
        held = json.loads((out / LOCK).read_text())
        assert held == me.owner and held["pid"] == os.getpid() and held["host"] == socket.gethostname()
        assert len(held["token"]) == 32
    assert not (out / LOCK).exists()


def test_lock_taken_over_by_another_run_is_left_to_it(tmp_path):
    """A run whose lock was broken (and taken) by another must not delete the new owner's."""
    from digitbatch.scoring.lock import LOCK, run_lock

    out = tmp_path / "p.zarr"
    with run_lock(out):
        (out / LOCK).write_text(json.dumps({"pid": 1, "host": "elsewhere", "token": "theirs"}))
    assert json.loads((out / LOCK).read_text())["token"] == "theirs"


def _foreign(out, *, machine="another-machine", age=0.0, ttl=2.0, pid=1, pid_start=1.0,
             token="f" * 32):
    """A lock file of another run, last renewed ``age`` seconds ago."""
    import datetime as dt

    renewed = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=age)).isoformat()
    owner = {"token": token, "host": "node-b", "machine": machine, "pid": pid,
             "pid_start": pid_start, "started": renewed, "renewed": renewed, "ttl": ttl}
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".lock.tmp-test"
    tmp.write_text(json.dumps(owner))
    tmp.replace(out / ".lock")  # atomically, as a run writes it
    return owner


def test_a_live_lock_of_this_machine_is_refused_and_break_lock_forces(tmp_path, caplog):
    from digitbatch.errors import OutputLockedError
    from digitbatch.scoring.lock import run_lock

    out = tmp_path / "p.zarr"
    with run_lock(out) as first:
        with pytest.raises(OutputLockedError,
                           match=r"another run [0-9a-f]{8} \(pid \d+ on .*last renewed \d+ s ago"):
            with run_lock(out):
                pass
        with caplog.at_level("WARNING"), run_lock(out, break_lock=True) as second:
            assert json.loads((out / ".lock").read_text())["token"] == second.token
        assert "--break-lock" in caplog.text and first.token[:8] in caplog.text
        first.renew()  # the first run notices at its next renewal
        with pytest.raises(LeaseLostError, match="lost its lease"):
            first.check()


def test_a_dead_process_of_this_machine_is_taken_over_at_once(tmp_path, caplog):
    """No flag needed: the owner ran here and its pid is gone, or is another
    process now (a reused pid: a container's entrypoint is pid 1 every time)."""
    import os

    from digitbatch.scoring import lock as L

    out = tmp_path / "p.zarr"
    for pid, start in ((dead_pid(), 1.0), (os.getpid(), 12.5)):  # gone; pid reused
        _foreign(out, machine=machine_id(), pid=pid, pid_start=start,
                 ttl=3600, age=1)
        with caplog.at_level("WARNING"), L.run_lock(out, ttl=60) as lease:
            assert lease.owner["pid"] == os.getpid()
        assert "its process is gone" in caplog.text and "ffffffff" in caplog.text
        caplog.clear()


def test_an_expired_lease_of_another_machine_is_taken_over(tmp_path, caplog):
    from digitbatch.scoring.lock import run_lock

    out = tmp_path / "p.zarr"
    _foreign(out, age=10, ttl=2)
    with caplog.at_level("WARNING"), run_lock(out, wait=False):
        pass
    assert "its lease expired" in caplog.text and "last renewed 10 s ago" in caplog.text


def test_a_lease_of_another_machine_is_watched_until_it_runs_out(tmp_path, caplog):
    """A rerun right after a kill on another node: the lease is fresh, nobody renews
    it; the new run waits it out (at most ttl) and takes over, no flag needed."""
    import time

    from digitbatch.scoring.lock import run_lock

    out = tmp_path / "p.zarr"
    _foreign(out, age=0, ttl=1.5)
    t0 = time.monotonic()
    with caplog.at_level("INFO"), run_lock(out):
        waited = time.monotonic() - t0
    assert waited > 1.0, waited  # it waited the lease out (an upper bound would be a clock test)
    assert "ran out while waiting" in caplog.text and "its lease expired" in caplog.text


def test_a_renewed_lease_of_another_machine_is_refused(tmp_path):
    import threading

    from digitbatch.errors import OutputLockedError
    from digitbatch.scoring.lock import run_lock

    out = tmp_path / "p.zarr"
    stop = threading.Event()

    def renew():  # the other node's run, alive
        while not stop.wait(0.2):
            _foreign(out, age=0, ttl=10)

    _foreign(out, age=0, ttl=10)
    t = threading.Thread(target=renew)
    t.start()
    try:
        with pytest.raises(OutputLockedError, match="run ffffffff .* on node-b"):
            with run_lock(out):
                pass
    finally:
        stop.set()
        t.join()
    assert json.loads((out / ".lock").read_text())["token"] == "f" * 32  # left alone


def test_renewal_moves_the_lease_and_a_lost_lease_stops_commits(tmp_path):
    import time

    from digitbatch.scoring.lock import check_owner, run_lock

    out = tmp_path / "p.zarr"
    with run_lock(out, ttl=1) as lease:
        first = json.loads((out / ".lock").read_text())["renewed"]
        deadline = time.monotonic() + 10
        while json.loads((out / ".lock").read_text())["renewed"] == first:
            assert time.monotonic() < deadline, "never renewed"
            time.sleep(0.05)
        check_owner(str(out), lease.token)  # ours: fine
        check_owner(str(out), None)  # no lease to check
        _foreign(out, age=0)  # another run took over
        with pytest.raises(LeaseLostError, match="no longer locked by run"):
            check_owner(str(out), lease.token)
        while lease.lost is None:
            assert time.monotonic() < deadline, "the loss was never noticed"
            time.sleep(0.05)
    assert json.loads((out / ".lock").read_text())["token"] == "f" * 32  # not removed


def test_two_runs_taking_over_one_stale_lock_race_for_one_claim(tmp_path):
    from digitbatch.errors import OutputLockedError
    from digitbatch.scoring.lock import CLAIM, run_lock

    out = tmp_path / "p.zarr"
    _foreign(out, age=100, ttl=2)
    (out / f"{CLAIM}{'f' * 32}").write_text("another taker")
    with pytest.raises(OutputLockedError, match="taking over the stale lock .* right now"):
        with run_lock(out, wait=False):
            pass


@pytest.mark.parametrize("ttl", [0, 0.5, -1, float("nan"), float("inf"), "60", True])
def test_bad_ttl_is_named(tmp_path, ttl):
    from digitbatch.errors import ScoreError
    from digitbatch.scoring.lock import run_lock

    with pytest.raises(ScoreError, match="lock_ttl must be a number of seconds"):
        with run_lock(tmp_path / "p.zarr", ttl=ttl):
            pass


def dead_pid() -> int:
    return subprocess_dead_pid()


def machine_id() -> str:
    from digitbatch.scoring.lock import current_machine

    return current_machine()


def test_a_dead_owner_not_reaped_yet_is_gone(tmp_path, caplog):
    """A killed run's process can linger as a zombie until its parent reaps it: dead."""
    import subprocess
    import sys
    import time

    import psutil

    from digitbatch.scoring.lock import run_lock

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    start = psutil.Process(child.pid).create_time()
    deadline = time.monotonic() + 30
    while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:
        _foreign(tmp_path / "p.zarr", machine=machine_id(), pid=child.pid, pid_start=start,
                 ttl=3600)
        with caplog.at_level("WARNING"), run_lock(tmp_path / "p.zarr"):
            pass
        assert "its process is gone" in caplog.text
    finally:
        child.wait()
