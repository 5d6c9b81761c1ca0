"""Ctrl-C (SIGINT) during ``digitbatch run``: one line, exit 130, nothing half-written.

A terminal's Ctrl-C reaches the whole foreground process group: the run and
the worker processes of its LocalCluster. The kill is sent on progress: once
the run's log says its LocalCluster is up (its workers started), during the
train step's 5-fold CV.

==================== ================================================= =========================
kind                 trial                                             expected outcome
==================== ================================================= =========================
ctrl-c-group         SIGINT to the process group during CV             exit 130, the one line
                                                                       "interrupted", no worker
                                                                       traceback, no model or
                                                                       temp folder, workers gone
ctrl-c-run-only      SIGINT to the run process alone (``kill -INT``)   the same
==================== ================================================= =========================
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

HANG = 240.0  # a guard against a hung run, never the trigger of the signal
READY = "LocalCluster with"


def _job(tmp_path, store):
    spec = tmp_path / "job.toml"
    spec.write_text(f"""
[job]
name = "ctrlc"
workdir = "{tmp_path / 'work'}"
steps = ["train"]
[cluster]
scheduler = "local"
[train]
store = "{store}"
out = "{tmp_path / 'work' / 'model'}"
model = "sgd"
cv = 5
""")
    return spec


def _terminal_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt(spec, *, group: bool):
    # SIGINT's default disposition in the run, as a terminal's foreground job has it: a
    # test run started in the background by a shell without job control (a CI script
    # with `&`) inherits SIGINT ignored, and the run would rightly ignore it too
    proc = subprocess.Popen([sys.executable, "-m", "digitbatch", "run", str(spec)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=_terminal_signals)
    lines, sent = [], False
    deadline = time.monotonic() + HANG
    try:
        for line in proc.stderr:
            lines.append(line)
            if READY in line:
                (os.killpg if group else os.kill)(proc.pid, signal.SIGINT)
                sent = True
                break
            if time.monotonic() > deadline:
                break
        out, err = proc.communicate(timeout=HANG)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert sent, "the run never started its LocalCluster: nothing was tested\n" + "".join(lines)
    return proc, err


@pytest.mark.timeout(300)
@pytest.mark.parametrize("group", [True, False], ids=["ctrl-c-group", "ctrl-c-run-only"])
def test_ctrl_c_during_run_is_one_line_and_exit_130(group, tmp_path, small_store):
    spec = _job(tmp_path, small_store)
    proc, err = _interrupt(spec, group=group)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    # one line of its own (the rest are log records: time, level, logger)
    said = [ln for ln in err.splitlines() if ln.strip() and not ln[:4].isdigit()]
    assert said == ["interrupted"], err[-3000:]
    work = tmp_path / "work"
    assert not (work / "model").exists()
    assert not [n for n in os.listdir(work) if ".tmp-" in n], os.listdir(work)
    for name in os.listdir(work):  # (the run summary, if any, is whole)
        if name.endswith(".json"):
            json.loads((work / name).read_text())
    deadline = time.monotonic() + HANG  # the workers went with the run
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail("worker processes outlived the interrupted run")
