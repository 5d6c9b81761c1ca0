"""``--task-timeout`` means the same on worker threads and processes.

A chunk past its limit is stopped (its worker process restarted), so what a
run reports as failed is exactly what is not committed, and ``--resume``
scores it. A thread cannot be stopped: on a LocalCluster of threads (a
store's default) a limit the user asks for starts worker processes, and the
default limit is not applied there (:func:`digitbatch.scoring.runner.timeout_plan`).
The hanging chunk itself is tests/test_scoring_runner.py's
``test_batch_timed_out_reports_only_its_uncommitted_chunks`` (worker processes,
a chunk that never ends until its worker is restarted).

=================== ============================================ ===============================
kind                trial                                        expected outcome
=================== ============================================ ===============================
timeout-on-threads  ``score STORE --task-timeout 0.5`` (the      worker processes; no "requires
                    threaded LocalCluster by default)            a nanny" warning; all committed
timeout-plan        explicit / default limit; threads /          processes for an explicit limit
                    processes; local / synchronous / an address  on local threads; no default
                                                                 limit there; else unchanged
=================== ============================================ ===============================
"""

from __future__ import annotations

import logging

import pytest
from click.testing import CliRunner

from digitbatch.cli import main
from digitbatch.scoring.output import committed
from digitbatch.scoring.runner import DEFAULT_TASK_TIMEOUT, timeout_plan


@pytest.mark.timeout(300)
def test_task_timeout_on_the_threaded_local_cluster_uses_processes(tmp_path, small_store,
                                                                   shared_model, caplog):
    out = tmp_path / "p.zarr"
    with caplog.at_level(logging.INFO):
        r = CliRunner().invoke(main, ["score", str(small_store), "--model", str(shared_model),
                                      "--out", str(out), "--task-timeout", "30"])
    assert r.exit_code == 0, r.output
    text = r.output + "\n".join(caplog.messages)
    assert "requires a nanny" not in text and "could not restart" not in text
    assert any("LocalCluster with 2 worker processes" in m or "worker processes" in m
               for m in caplog.messages), caplog.messages
    assert sorted(committed(out)) == [0, 1, 2, 3]


@pytest.mark.parametrize("given,processes,scheduler,expected", [
    (0.5, False, None, (0.5, True)),             # asked for, threads: processes
    (0.5, False, "local", (0.5, True)),
    (DEFAULT_TASK_TIMEOUT, False, None, (None, False)),  # the default: not on threads
    (DEFAULT_TASK_TIMEOUT, True, None, (DEFAULT_TASK_TIMEOUT, True)),  # archives: processes
    (0.5, True, None, (0.5, True)),
    (None, False, None, (None, False)),
    (0.5, False, "synchronous", (0.5, False)),   # inline: no cluster, no limit to enforce
    (0.5, False, "tcp://127.0.0.1:8786", (0.5, False)),  # a cluster of its own
])
def test_timeout_plan(given, processes, scheduler, expected):
    assert timeout_plan(given, processes, scheduler) == expected
