"""The paths a job writes, against each other and what it reads: checked before any work.

A job's steps write over each other when two outputs are one path (or one
holds the other), or when an output is, holds or lies inside an input a
step reads; and a run dies late when an output cannot be written at all.
:func:`check_paths` refuses all of these by the keys involved, before the
first step runs (``digitbatch run --check`` and every run).
"""

from __future__ import annotations

import os
from pathlib import Path

from . import storage
from .errors import JobSpecError

# Outputs that are one file (the others are folders).
FILE_OUTPUTS = ("job.summary", "job.metrics_file", "export.out", "score.ledger")


def _ident(path) -> tuple[bool, object]:
    """(local?, what to compare): the resolved path, or the URL without a trailing /."""
    if storage.is_url(str(path)):
        return False, str(path).rstrip("/")
    return True, Path(os.path.realpath(path))


def _within(a, b) -> bool:
    """Whether path ``a`` is ``b`` or inside it (both from :func:`_ident`)."""
    (la, va), (lb, vb) = a, b
    if la != lb:
        return False
    return va == vb or (va.is_relative_to(vb) if la else va.startswith(vb + "/"))


def check_paths(outputs: list, inputs: list) -> None:
    """Every path the run will write, checked before any work starts.

    No output is another's, or inside another's (``score.out`` equal to
    ``ingest.out`` would delete the store just built), no output is or holds
    or lies inside a path a step reads, except the very path an earlier step
    makes for a later one (``train.store`` = ``ingest.out``); and each local
    output can be written: no file where a folder must be, a writable folder
    to make it in, and the summary not a folder. A :class:`JobSpecError`
    naming both keys otherwise. ``outputs`` and ``inputs`` are
    ``(step index, "section.key", path)`` (:func:`digitbatch.jobspec.job_paths`).
    """
    ids = {id(v): _ident(v) for _, _, v in outputs + inputs}
    for n, (i, key, out) in enumerate(outputs):
        for j, other, path in outputs[n + 1:]:
            if _within(ids[id(out)], ids[id(path)]) or _within(ids[id(path)], ids[id(out)]):
                same = ids[id(out)] == ids[id(path)]
                raise JobSpecError(
                    f"{key} and {other} {'are the same path' if same else 'contain one another'} "
                    f"({str(out)!r}, {str(path)!r}): one step would write over the other's "
                    f"output; give each its own path")
        for j, other, path in inputs:
            a, b = ids[id(out)], ids[id(path)]
            if a == b and j > i:
                continue  # what an earlier step makes for a later one
            if _within(a, b) or _within(b, a):
                how = ("is" if a == b else "is inside" if _within(a, b) else "contains")
                raise JobSpecError(
                    f"{key} {str(out)!r} {how} {other} {str(path)!r}, which "
                    f"{'an earlier step or the same step reads' if a == b else 'a step reads'}: "
                    f"writing it would destroy or change that input; give {key} another path")
    for _, key, out in outputs:
        _check_writable(key, out, file=key in FILE_OUTPUTS)


def _check_writable(key: str, out, *, file: bool) -> None:
    if not storage.is_local(out):
        return
    if file and (out.is_dir() or (out.exists() and not out.is_file())):
        raise JobSpecError(f"{key} {str(out)!r} is a directory (or not a regular file): "
                           f"{key} is written as one file; give a file name, e.g. "
                           f"{str(out / ('run.json' if key == 'job.summary' else out.name))!r}")
    if not file and out.exists() and not out.is_dir():
        raise JobSpecError(f"{key} {str(out)!r} is a file: the step writes a folder there; "
                           f"choose another out")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise JobSpecError(f"{key} {str(out)!r} cannot be made: {str(parent)!r} is a file, "
                           f"not a folder; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise JobSpecError(f"{key} {str(out)!r} cannot be written: folder {str(parent)!r} is "
                           f"not writable by this user; choose another path or fix its "
                           f"permissions")
