"""Peak RSS of a command's whole process tree (its workers included), sampled in a thread.

``ru_maxrss`` and ``VmHWM`` see one process; a job's Dask workers are
other processes, and they die before their parent could read their peaks.
A thread samples the sum of the tree's RSS (``psutil``) while it runs.
"""

from __future__ import annotations

import subprocess
import threading

import psutil


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def run_measured(cmd: list[str], *, timeout: float = 600, interval: float = 0.02,
                 env: dict | None = None) -> tuple[int, str, float]:
    """Run ``cmd``: (exit code, stderr, peak RSS of its process tree in MB)."""
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         env=env)
    ps = psutil.Process(p.pid)
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss(ps))
            done.wait(interval)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        _, err = p.communicate(timeout=timeout)
    finally:
        done.set()
        t.join()
        if p.poll() is None:
            p.kill()
            p.wait()
    return p.returncode, err, peak[0] / 2**20
