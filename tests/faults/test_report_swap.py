"""A report is written whole: built in a folder beside ``--out`` and swapped in.

============================ ========================================== ============================
kind                         trial                                      expected outcome
============================ ========================================== ============================
report-killed-mid-write      ``digitbatch report`` SIGKILLed once its   the old report folder is
                             first figure is written (on progress)      byte-identical; the rerun
                                                                        removes the dead run's temp
                                                                        folder (and says so) and
                                                                        writes a whole new report
report-killed-mid-swap       killed between moving the old folder       the next run puts the old
                             aside and renaming the new one in          folder back first, then
                                                                        swaps its own in
report-over-a-users-folder   ``--out`` a folder of a user's notes       ``OverwriteRefusedError``,
                                                                        kept as is, no temp left
report-live-temp             a live run's temporary folder beside       left alone (warning)
                             ``--out``
============================ ========================================== ============================
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from digitbatch import folderswap, storage, tempstores
from digitbatch.errors import OverwriteRefusedError
from digitbatch.report import write_report
from digitbatch.scoring.api import score

from .snapshots import assert_unchanged, tree

HANG = 120.0  # a guard against a hung run, never the trigger of a kill


@pytest.fixture
def pred(tmp_path, small_store, shared_model):
    out = tmp_path / "p.zarr"
    score(small_store, model=shared_model, out=out, scheduler="synchronous")
    return out


def _side(parent: Path, name: str) -> list[str]:
    return sorted(n for n in os.listdir(parent) if n.startswith(f".{name}."))


def test_report_killed_after_its_first_figure_leaves_the_old_report(pred, tmp_path, caplog):
    rep = tmp_path / "rep"
    write_report(pred, out=rep, top_k=4)
    before = tree(tmp_path / "rep")
    proc = subprocess.Popen([sys.executable, "-m", "digitbatch", "report", str(pred), "--out",
                             str(rep), "--top", "9"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    seen, deadline = None, time.monotonic() + HANG
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            swaps = [tmp_path / n for n in _side(tmp_path, "rep")
                     if ".swap-" in n and not n.endswith(".owner.json")]
            pngs = [f for d in swaps if d.is_dir() for f in os.listdir(d) if f.endswith(".png")]
            if pngs:
                seen = pngs
                proc.kill()
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert seen and proc.returncode == -signal.SIGKILL, (
        f"the report ended before the kill (rc {proc.returncode}): nothing was tested")
    assert_unchanged(before, rep)  # not one old file replaced, none added
    left = _side(tmp_path, "rep")
    assert any(n.endswith(".owner.json") for n in left) and any(
        n.startswith(".rep.swap-") and not n.endswith(".json") for n in left), left
    with caplog.at_level(logging.WARNING, logger="digitbatch"):
        r = write_report(pred, out=rep, top_k=9)
    assert _side(tmp_path, "rep") == []
    assert any("removed" in m and "killed" in m and ".rep.swap-" in m for m in caplog.messages)
    assert Path(r.html) == rep / "report.html"
    assert set(os.listdir(rep)) == {Path(f).name for f in r.files.values()}
    assert all(Path(f).parent == rep and Path(f).is_file() for f in r.files.values())
    assert storage.made_by_digitbatch(rep) == "report"


KILL_MID_SWAP = r"""
import os, signal, sys
from digitbatch import folderswap
from digitbatch.report import write_report

real = os.rename
def rename(a, b):
    real(a, b)
    if ".old-" in str(b):  # the old folder is aside, the new one not yet in
        os.kill(os.getpid(), signal.SIGKILL)
folderswap.os.rename = rename
write_report(sys.argv[1], out=sys.argv[2], top_k=5)
print("FINISHED")
"""


def test_report_killed_between_the_renames_gets_its_old_folder_back(pred, tmp_path, caplog):
    rep = tmp_path / "rep"
    write_report(pred, out=rep, top_k=4)
    before = tree(rep)
    r = subprocess.run([sys.executable, "-c", KILL_MID_SWAP, str(pred), str(rep)],
                       capture_output=True, text=True, timeout=HANG)
    assert r.returncode == -signal.SIGKILL and "FINISHED" not in r.stdout, r.stderr[-2000:]
    assert not rep.exists()  # the kill landed in the window
    with caplog.at_level(logging.WARNING, logger="digitbatch"):
        folderswap.remove_stale(rep)
    assert_unchanged(before, rep)  # the old report, whole
    assert tree(rep) == before and _side(tmp_path, "rep") == []
    assert any("put back" in m for m in caplog.messages)
    # and a plain rerun after such a kill writes the new report
    subprocess.run([sys.executable, "-c", KILL_MID_SWAP, str(pred), str(rep)],
                   capture_output=True, text=True, timeout=HANG)
    res = write_report(pred, out=rep, top_k=6)
    assert _side(tmp_path, "rep") == [] and Path(res.html).is_file()


def test_report_over_a_users_folder_is_refused_and_kept(pred, tmp_path):
    d = tmp_path / "notes"
    d.mkdir()
    (d / "notes.txt").write_text("my notes")
    before = tree(tmp_path)
    with pytest.raises(OverwriteRefusedError, match="notes"):
        write_report(pred, out=d, top_k=4)
    assert_unchanged(before, tmp_path)


def test_report_into_an_empty_folder_and_a_new_nested_one(pred, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert Path(write_report(pred, out=empty, top_k=4).html).is_file()
    nested = tmp_path / "a" / "b" / "rep"
    assert Path(write_report(pred, out=nested, top_k=4).html).is_file()
    assert _side(tmp_path, "empty") == [] and _side(nested.parent, "rep") == []


def test_a_live_runs_temporary_folder_is_left(tmp_path, caplog):
    target = tmp_path / "rep"
    token = "0123456789ab"
    tmp = tmp_path / f".rep.swap-{token}"
    tmp.mkdir()
    (tmp / "confusion.png").write_bytes(b"x")
    record = tmp_path / f".rep.swap-{token}.owner.json"
    record.write_text(json.dumps(tempstores.owner_record(target, token)))  # this live process
    with caplog.at_level(logging.WARNING, logger="digitbatch"):
        assert folderswap.remove_stale(target) == []
    assert tmp.is_dir() and record.is_file()
    assert any("left" in m for m in caplog.messages)


def test_files_the_caller_keeps_are_carried_into_the_new_folder(tmp_path):
    """``keep``: a file of the old folder a person edited (a filled-in review list, say)
    goes into the new folder; a name the new content writes itself is the new one's."""
    target = tmp_path / "rep"
    with folderswap.swapped(target, "report") as d:
        (d / "report.html").write_text("<title>digitbatch report: x</title> old")
        (d / "errors.png").write_bytes(b"edited by a person")
    with folderswap.swapped(target, "report",
                            keep=lambda old: ["errors.png", "report.html", "absent.png"]) as d:
        (d / "report.html").write_text("<title>digitbatch report: x</title> new")
    assert (target / "errors.png").read_bytes() == b"edited by a person"
    assert (target / "report.html").read_text().endswith(" new")
    assert sorted(os.listdir(target)) == ["errors.png", "report.html"]
    assert _side(tmp_path, "rep") == []
