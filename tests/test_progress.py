"""Progress in images: a bar on a terminal (none with --quiet), log lines in pipes
(tests/test_observability.py has the scheduled runs' progress lines)."""

from __future__ import annotations

import io
import logging
import os
import pty
import re
import subprocess
import sys

import pytest

from digitbatch.progressbar import Progress


def test_progress_counts_images():
    out = io.StringIO()
    p = Progress("score", enabled=True, stream=out, min_interval=0)
    p(0, total=1000)
    p(256)
    p(744)
    p.close()
    text = out.getvalue()
    assert "1,000/1,000 images (100%)" in text and "images/s" in text


def test_no_bar_when_not_a_tty_but_log_lines(caplog):
    out = io.StringIO()
    with caplog.at_level(logging.INFO, logger="digitbatch.progress"):
        with Progress("ingest", stream=out) as p:
            assert p.mode == "log"
            p(10)
    assert out.getvalue() == ""
    assert "ingest: 10 images (total not known yet)" in caplog.text
    with Progress("ingest", stream=out, enabled=False) as p:
        assert p.mode == "off"


def _run_on_tty(args, cwd):
    """Run the CLI with stderr on a pseudo-terminal; return what it wrote there."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "digitbatch", *args], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=120)
    os.close(master)
    assert proc.returncode == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.parametrize("quiet", [False, True])
def test_cli_progress_on_tty(tmp_path, small_store, quiet):
    from digitbatch.training import train

    train(small_store, tmp_path / "m", seed=0)
    args = (["-q"] if quiet else []) + ["score", str(small_store), "--model", str(tmp_path / "m"),
                                        "--out", str(tmp_path / "p.zarr"),
                                        "--scheduler", "synchronous"]
    err = _run_on_tty(args, tmp_path)
    if quiet:
        assert "images/s" not in err
    else:
        assert "1,000/1,000 images (100%)" in err
        # a log record never lands on the bar's line (issue 18): the bar is cleared first
        assert " INFO digitbatch.scoring.api: scored 1000 images" in err
        for line in err.split("\n"):
            shown = line.rstrip("\r").split("\r")[-1]  # (a pty ends lines with \\r\\n)
            if " INFO " in shown:
                assert re.match(r"(\x1b\[K)?\d{4}-\d\d-\d\d ", shown), repr(line)
