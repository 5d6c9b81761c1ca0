"""Disk full, read-only file systems and unwritable outputs: named errors, data kept.

How the faults are made (decided for this suite):

- **real file systems** where the machine allows it: a tmpfs mounted with a
  tiny ``size=`` fills up for real (``ENOSPC`` from the kernel, wherever the
  writer happens to be), and one mounted ``ro`` is read-only for root too
  (``chmod`` does not stop root). Mounting needs root with CAP_SYS_ADMIN (the
  dev container and CI run as root); elsewhere these tests skip, saying so.
- **on progress**, on any machine: the writer's own file boundary
  (``storage.write_atomic``, through which every commit record, metrics file,
  report page and manifest goes) raises ``OSError(ENOSPC/EROFS)`` after the
  k-th write, so a fault lands in the middle of a run, after work was done.

Every case runs the CLI and checks: exit status 1, one line naming
``FileSystemError`` (or ``OutputPathError``) with the path and what to do, no
traceback, and nothing half-written (an earlier output kept as it was; a
scoring run's committed chunks kept and finished by ``--resume``).

================== ================================================ ===========================
kind               trial                                            expected outcome
================== ================================================ ===========================
disk-full          ingest, train, score, report, export, show onto  ``FileSystemError`` (ENOSPC)
                   a 40 KiB tmpfs                                   naming --out; no temp left
read-only-fs       each command's --out on a read-only tmpfs         ``OutputPathError`` before
                                                                    any work
fault-mid-score    commit records fail (ENOSPC, EROFS) after 2       ``FileSystemError``; the
                   chunks                                           2 chunks kept; --resume
                                                                    finishes byte-identical
fault-mid-report   the report page write fails (EROFS)              the old report kept whole
unwritable-out     --out under a file; a file where a folder goes   ``OutputPathError``, exit 1
================== ================================================ ===========================
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from digitbatch import storage
from digitbatch.cli import main
from digitbatch.scoring.output import committed

from .snapshots import assert_unchanged, tree


def _cli(*args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    out = r.output
    assert "Traceback" not in out, out
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    return r.exit_code, out


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a tmpfs (``size``, optionally read-only) under ``tmp_path``; unmounted after."""
    mounted = []

    def make(size: str = "40k", *, ro: bool = False) -> Path:
        d = tmp_path / f"fs{len(mounted)}"
        d.mkdir()
        opts = f"size={size}" + (",ro" if ro else "")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(d)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): "
                        f"{r.stderr.strip()}; the on-progress cases below still run")
        mounted.append(d)
        return d

    yield make
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


@pytest.fixture
def pred(tmp_path, small_store, shared_model):
    out = tmp_path / "p.zarr"
    code, text = _cli("score", small_store, "--model", shared_model, "--out", out,
                      "--scheduler", "synchronous")
    assert code == 0, text
    return out


def _full(code, text, out):
    assert code == 1 and "FileSystemError" in text and "ENOSPC" in text, text
    assert str(out) in text and "free space" in text


def test_disk_full_is_named_for_every_command(tmpfs, idx_dir, small_store, shared_model, pred):
    cases = [  # (each output is larger than its file system)
        ("40k", "ingest", idx_dir, "--out", "s.zarr", "--scheduler", "synchronous"),
        ("8k", "train", small_store, "--out", "m", "--scheduler", "synchronous"),
        ("40k", "report", pred, "--out", "rep"),
        ("8k", "export", pred, "--out", "x.csv"),
        ("8k", "show", small_store, "--grid", "--out", "g.png"),
    ]
    for size, *args in cases:
        fs = tmpfs(size)
        i = args.index("--out") + 1
        args[i] = out = fs / args[i]
        code, text = _cli(*args)
        _full(code, text, out)
        assert os.listdir(fs) == [], (args[0], os.listdir(fs))  # nothing half-written


def test_disk_full_while_scoring_keeps_what_was_committed(tmpfs, small_store, shared_model,
                                                          tmp_path):
    fs = tmpfs("48k")
    out = fs / "p.zarr"
    code, text = _cli("score", small_store, "--model", shared_model, "--out", out,
                      "--scheduler", "synchronous")
    _full(code, text, out)
    assert "--resume" in text and not (out / "_SUCCESS").exists()
    kept = sorted(committed(out))
    # room again: the same output, resumed, finishes with only the rest scored
    subprocess.run(["mount", "-o", "remount,size=4m", str(fs)], check=True)
    code, text = _cli("score", small_store, "--model", shared_model, "--out", out, "--resume",
                      "--scheduler", "synchronous")
    assert code == 0, text
    assert sorted(committed(out)) == [0, 1, 2, 3] and (out / "_SUCCESS").exists()
    assert set(kept) <= {0, 1, 2, 3}


def test_a_read_only_file_system_is_refused_before_any_work(tmpfs, idx_dir, small_store,
                                                            shared_model, pred):
    fs = tmpfs("1m", ro=True)
    for args in [("ingest", idx_dir, "--out", fs / "s.zarr", "--scheduler", "synchronous"),
                 ("train", small_store, "--out", fs / "m", "--scheduler", "synchronous"),
                 ("score", small_store, "--model", shared_model, "--out", fs / "p.zarr",
                  "--scheduler", "synchronous"),
                 ("report", pred, "--out", fs / "sub" / "rep"),
                 ("export", pred, "--out", fs / "x.parquet"),
                 ("show", small_store, "--index", "3", "--out", fs / "d.png")]:
        code, text = _cli(*args)
        assert code == 1 and "OutputPathError" in text and "read-only" in text, (args[0], text)


def _failing_writes(monkeypatch, after: int, err: int, match: str = ""):
    """``storage.write_atomic`` raises OSError(err) from its ``after``-th call on a
    path containing ``match`` (a fault on progress, at the writers' file boundary)."""
    real = storage.write_atomic
    calls = []

    def write_atomic(p, data):
        if match in str(p):
            calls.append(p)
            if len(calls) > after:
                raise OSError(err, os.strerror(err), str(p))
        return real(p, data)

    monkeypatch.setattr(storage, "write_atomic", write_atomic)
    return calls


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS], ids=["ENOSPC", "EROFS"])
def test_commit_fails_mid_score_then_resume_finishes(err, monkeypatch, tmp_path, small_store,
                                                     shared_model):
    ref = tmp_path / "ref.zarr"
    assert _cli("score", small_store, "--model", shared_model, "--out", ref,
                "--scheduler", "synchronous")[0] == 0
    out = tmp_path / "p.zarr"
    calls = _failing_writes(monkeypatch, 2, err, "_commits")
    code, text = _cli("score", small_store, "--model", shared_model, "--out", out,
                      "--scheduler", "synchronous")
    assert len(calls) == 3  # the fault landed on the third chunk's commit
    assert code == 1 and "FileSystemError" in text and errno.errorcode[err] in text, text
    assert "_commits" in text and "--resume" in text
    assert sorted(committed(out)) == [0, 1] and not (out / "_SUCCESS").exists()
    assert not [n for n in os.listdir(out / "_commits") if ".tmp-" in n]  # no temp left
    monkeypatch.undo()
    code, text = _cli("score", small_store, "--model", shared_model, "--out", out, "--resume",
                      "--scheduler", "synchronous")
    assert code == 0, text
    for name in ("pred", "margin"):
        assert tree(out / name) == tree(ref / name)


def test_report_page_write_fails_the_old_report_is_kept(monkeypatch, tmp_path, pred):
    rep = tmp_path / "rep"
    assert _cli("report", pred, "--out", rep, "--top", "4")[0] == 0
    before = tree(tmp_path)
    _failing_writes(monkeypatch, 0, errno.EROFS, "report.html")
    code, text = _cli("report", pred, "--out", rep, "--top", "9")
    assert code == 1 and "FileSystemError" in text and "EROFS" in text, text
    assert_unchanged(before, tmp_path)


def test_unwritable_outs_are_named(tmp_path, small_store, shared_model, pred):
    f = tmp_path / "afile"
    f.write_text("a user's file")
    before = tree(tmp_path)
    for args in [("show", small_store, "--index", "1", "--out", f / "x.png"),
                 ("score", small_store, "--model", shared_model, "--out", f,
                  "--resume", "--scheduler", "synchronous"),
                 ("score", small_store, "--model", shared_model, "--out", f / "p.zarr",
                  "--scheduler", "synchronous"),
                 ("ingest", small_store, "--out", f / "s.zarr"),
                 ("report", pred, "--out", f / "rep"),
                 ("export", pred, "--out", tmp_path / "p.zarr")]:
        code, text = _cli(*args)
        assert code == 1 and "OutputPathError" in text and str(args[-1] if args[0] != "score"
                                                              else "afile") in text, text
    assert_unchanged(before, tmp_path)
