"""The run lock of a scoring output (digitbatch.scoring.lock)."""

from __future__ import annotations

import json

import pytest

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
        assert held == me and held["pid"] == os.getpid() and held["host"] == socket.gethostname()
        assert len(held["token"]) == 32
    assert not (out / LOCK).exists()


def test_lock_taken_over_by_another_run_is_left_to_it(tmp_path):
    """A run whose lock was broken (and taken) by another must not delete the new owner's."""
    from digitbatch.scoring.lock import LOCK, run_lock

    out = tmp_path / "p.zarr"
    with run_lock(out):
        (out / LOCK).write_text(json.dumps({"pid": 1, "host": "elsewhere", "token": "theirs"}))
    assert json.loads((out / LOCK).read_text())["token"] == "theirs"


def test_a_live_lock_is_refused_even_with_break_lock(tmp_path):
    from digitbatch.errors import OutputLockedError
    from digitbatch.scoring.lock import run_lock

    out = tmp_path / "p.zarr"
    with run_lock(out):
        with pytest.raises(OutputLockedError, match=r"pid \d+ on .*wait for it to finish"):
            with run_lock(out, break_lock=True):
                pass
