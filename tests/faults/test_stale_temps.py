"""A killed ingest leaves its temporary store; the next run at that target removes it, and says so.

================== =============================================================== ======================
kind               trials                                                          expected outcome
================== =============================================================== ======================
killed-ingest      SIGKILL and SIGTERM of an ingest, each on progress (after 2 of  the rerun removes the
                   4 chunks were written: its own progress callback sends the      ``.tmp-`` store, logs
                   signal); killed twice, then rerun                               it, writes the store
stale-not-proven   a live writer's temporary store; another target's; another      left alone, with a
                   host's; a record whose token is not the folder's; a folder      warning
                   without a record (a user's)
pid-reused         a record naming a live pid whose start time differs             removed
================== =============================================================== ======================
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from digitbatch.ingestion import ingest
from digitbatch.layout import StoreWriter, open_store
from digitbatch.tempstores import remove_stale_temps

from ..conftest import synthetic_digits, write_idx

N = 1024  # 4 chunks of 256


@pytest.fixture
def src(tmp_path) -> Path:
    x, y = synthetic_digits(N, seed=2)
    write_idx(tmp_path / "idx", x, y, gz=False)
    return tmp_path / "idx"


KILLER = textwrap.dedent("""
    import os, signal, sys
    from digitbatch.ingestion import ingest
    src, out, sig, at = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    seen = 0
    def progress(n=0, total=None):
        global seen
        seen += n
        if seen >= at:  # killed on progress, with work left
            os.kill(os.getpid(), sig)
    ingest(src, out, chunk_size=256, scheduler="synchronous", progress=progress)
    print("FINISHED")
""")


def _killed_ingest(src: Path, out: Path, sig: int) -> Path:
    """Run an ingest that is killed by ``sig`` after 512 of 1,024 images; its temporary store."""
    before = set(os.listdir(out.parent))
    r = subprocess.run([sys.executable, "-c", KILLER, str(src), str(out), str(int(sig)), "512"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == -sig, (r.returncode, r.stdout, r.stderr[-2000:])
    assert "FINISHED" not in r.stdout and not out.exists()
    new = [n for n in set(os.listdir(out.parent)) - before if ".tmp-" in n]
    assert len(new) == 1, new
    tmp = out.parent / new[0]
    assert (tmp / "images" / "c" / "1").exists()  # work was done, and work was left
    return tmp


def _tmps(parent: Path, name: str) -> list[str]:
    return sorted(n for n in os.listdir(parent) if n.startswith(f".{name}.tmp-"))


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_rerun_removes_the_killed_runs_temporary_store(sig, src, tmp_path, caplog):
    out = tmp_path / "s.zarr"
    tmp = _killed_ingest(src, out, sig)
    meta = json.loads((tmp / "zarr.json").read_text())["attributes"]["digitbatch"]
    assert meta["complete"] is False and meta["writer"]["target"] == str(out)
    with caplog.at_level(logging.WARNING, logger="digitbatch"):
        r = ingest(src, out, chunk_size=256, scheduler="synchronous")
    assert r.n_images == N and open_store(out).n == N
    assert not tmp.exists() and _tmps(tmp_path, "s.zarr") == []
    said = [m for m in caplog.messages if "removed" in m and tmp.name in m]
    assert said and "killed" in said[0] and f"pid {meta['writer']['pid']}" in said[0]


def test_killed_twice_then_rerun_by_the_cli(src, tmp_path):
    out = tmp_path / "s.zarr"
    first = _killed_ingest(src, out, signal.SIGKILL)
    second = _killed_ingest(src, out, signal.SIGKILL)  # (its start removed the first's temp)
    assert _tmps(tmp_path, "s.zarr") == [second.name] and not first.exists()
    r = subprocess.run([sys.executable, "-m", "digitbatch", "ingest", str(src), "--out", str(out),
                        "--chunk-size", "256", "--scheduler", "synchronous"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert second.name in r.stderr and "killed" in r.stderr
    assert _tmps(tmp_path, "s.zarr") == [] and open_store(out).n == N


def test_refused_rerun_still_cleans_up(src, tmp_path):
    """A rerun refused because the store exists (no --overwrite) still removes the dead run's temp."""
    out = tmp_path / "s.zarr"
    ingest(src, out, chunk_size=256, scheduler="synchronous")
    tmp = _killed_ingest(src, tmp_path / "t.zarr", signal.SIGKILL)
    os.rename(tmp, tmp_path / tmp.name.replace(".t.zarr", ".s.zarr"))
    _edit_writer(tmp_path / tmp.name.replace(".t.zarr", ".s.zarr"), target=str(out))
    from digitbatch.errors import StoreExistsError

    with pytest.raises(StoreExistsError):
        ingest(src, out, chunk_size=256, scheduler="synchronous")
    assert _tmps(tmp_path, "s.zarr") == []


def _edit_writer(tmp: Path, **changes) -> None:
    p = tmp / "zarr.json"
    meta = json.loads(p.read_text())
    meta["attributes"]["digitbatch"]["writer"].update(changes)
    p.write_text(json.dumps(meta))


def test_what_cannot_be_proven_a_dead_runs_is_left(src, tmp_path, caplog):
    out = tmp_path / "s.zarr"
    other = _killed_ingest(src, tmp_path / "other.zarr", signal.SIGKILL)
    # another host's, a forged token, a folder without a record (a user's): all beside s.zarr
    host = _killed_ingest(src, out, signal.SIGKILL)
    _edit_writer(host, host="another-host")
    token = _killed_ingest(src, out, signal.SIGKILL)
    _edit_writer(token, token="0123456789ab")
    user = tmp_path / ".s.zarr.tmp-mine"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with caplog.at_level(logging.WARNING, logger="digitbatch"):
        with StoreWriter(out, source={"kind": "test"}, chunk_size=256) as live:
            # a live writer's temporary store is never taken for a dead one's
            assert remove_stale_temps(out) == []
            assert live.tmp.exists()
    assert sorted([host.name, token.name, user.name]) == _tmps(tmp_path, "s.zarr")
    assert (user / "notes.txt").read_text() == "mine" and other.exists()
    assert any("left" in m and user.name in m for m in caplog.messages)
    # the other target's own rerun removes its temp
    assert remove_stale_temps(tmp_path / "other.zarr") == [other]


def test_a_reused_pid_does_not_keep_a_temp_alive(src, tmp_path):
    """The record's pid now belongs to a live process started later: still a dead run's."""
    out = tmp_path / "s.zarr"
    tmp = _killed_ingest(src, out, signal.SIGKILL)
    _edit_writer(tmp, pid=os.getpid(), started=1_000_000_000.0)  # 2001: not this process
    assert remove_stale_temps(out) == [tmp]
    assert not tmp.exists()


FINISHED_NOT_RENAMED = textwrap.dedent("""
    import os, signal, sys
    from digitbatch import layout
    from digitbatch.ingestion import ingest
    def killed(self):  # the attributes are written (complete), the rename never happens
        os.kill(os.getpid(), signal.SIGKILL)
    layout.StoreWriter._commit = killed
    ingest(sys.argv[1], sys.argv[2], chunk_size=256, scheduler="synchronous")
""")


def test_a_run_killed_between_finishing_and_renaming_is_cleaned_up(src, tmp_path):
    out = tmp_path / "s.zarr"
    r = subprocess.run([sys.executable, "-c", FINISHED_NOT_RENAMED, str(src), str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    (name,) = _tmps(tmp_path, "s.zarr")
    meta = json.loads((tmp_path / name / "zarr.json").read_text())["attributes"]["digitbatch"]
    assert meta["complete"] is True and meta["writer"]["token"] in name
    ingest(src, out, chunk_size=256, scheduler="synchronous")
    assert _tmps(tmp_path, "s.zarr") == [] and open_store(out).meta["writer"]["pid"] == os.getpid()
