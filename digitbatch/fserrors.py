"""OS errors at a command's file boundary, as named errors; the output path checked first.

Every public function that writes (``ingest``, ``train``, ``score``,
``write_report``, ``export_predictions``, ``show_digit``/``show_grid``) is
wrapped in :func:`boundary`:

- before any work, its output path is checked (:func:`check_out`): a file
  where a folder is wanted or the reverse, a parent that is a file, a folder
  this user cannot write, is an :class:`~digitbatch.errors.OutputPathError`
  naming it. A missing parent folder is not an error: every command creates
  the folders above its output (one rule for all, as ``mkdir -p``).
- an ``OSError`` that escapes it (disk full, a read-only file system,
  permission denied, an I/O error ...) becomes a
  :class:`~digitbatch.errors.FileSystemError` naming the path, the cause, what
  to do, and what stayed as it was (each command says that itself: nothing
  half-written is ever left, see the writers). Network errors
  (``ConnectionError``, ``TimeoutError``) are not file-system faults and pass.
"""

from __future__ import annotations

import errno
import functools
import inspect
import os
from pathlib import Path

from . import storage
from .errors import DigitbatchError, FileSystemError, OutputPathError

# errno -> (what happened, what to do)
CAUSES = {
    errno.ENOSPC: ("no space left on the device",
                   "free space on that file system (or write --out to another) and rerun"),
    errno.EDQUOT: ("the disk quota is used up",
                   "free space within the quota (or write --out elsewhere) and rerun"),
    errno.EROFS: ("the file system is read-only", "give a path on a writable file system"),
    errno.EACCES: ("permission denied", "fix its permissions or choose another path"),
    errno.EPERM: ("operation not permitted", "fix its permissions or choose another path"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "check the path"),
    errno.EISDIR: ("it is a folder where a file is wanted", "give a file name"),
    errno.ENOENT: ("no such file or folder", "check the path"),
    errno.EEXIST: ("something is already there", "move it away or choose another path"),
    errno.ENAMETOOLONG: ("the name is too long", "choose a shorter path"),
    errno.EIO: ("an input/output error", "check the disk (or network file system) and rerun"),
    errno.EMFILE: ("too many open files", "raise the open-file limit (ulimit -n) and rerun"),
    errno.ENFILE: ("too many open files on the system", "rerun when fewer files are open"),
}


def describe(exc: OSError, *, kept: str = "", out=None) -> FileSystemError:
    """A :class:`FileSystemError` for ``exc``: the path, the cause, what to do, what was
    kept. ``out``: the output being written (named when ``exc`` names no file: a write
    that finds the disk full does not say which file)."""
    if exc.filename is not None:
        path = str(exc.filename)
        within = f" (writing --out {out})" if out is not None and \
            not path.startswith(str(out)) else ""
    else:
        path, within = (f"--out {out}" if out is not None else "a file"), ""
    cause, fix = CAUSES.get(exc.errno, (exc.strerror or str(exc) or type(exc).__name__,
                                        "check the path and the file system, then rerun"))
    code = f" ({errno.errorcode[exc.errno]})" if exc.errno in errno.errorcode else ""
    err = FileSystemError(f"cannot write or read {path}{within}: {cause}{code}; {fix}"
                          + (f". {kept}" if kept else ""))
    err.cause_errno, err.path = exc.errno, exc.filename  # (not errno: str() would use it)
    return err


def is_fs_error(exc: BaseException) -> bool:
    """An ``OSError`` of the file system (not a network error, not one of ours)."""
    return (isinstance(exc, OSError) and not isinstance(exc, DigitbatchError)
            and not isinstance(exc, (ConnectionError, TimeoutError))
            and (exc.errno is not None or exc.filename is not None))


def check_out(out, *, folder: bool, option: str = "--out", replacing: bool = False) -> None:
    """Refuse a local output path that cannot be made (see the module docstring);
    ``replacing``: what is at ``out`` is left to the ``--overwrite`` rule."""
    if out is None or "{input}" in str(out):  # (an incremental template: each is checked)
        return
    p = storage.to_path(out)
    if not storage.is_local(p):
        return
    if folder and not replacing and p.exists() and not p.is_dir():
        raise OutputPathError(f"{option} {p} is a file: this command writes a folder there; "
                              f"give a new path (or a folder)")
    if not folder and not replacing and p.is_dir():
        raise OutputPathError(f"{option} {p} is a folder: this command writes one file; give "
                              f"a file name, e.g. {p / 'out.png' if p.suffix == '' else p}")
    parent = Path(os.path.abspath(p)).parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputPathError(f"{option} {p} cannot be made: {parent} is a file, not a folder; "
                              f"choose another path")
    if hasattr(os, "statvfs") and os.statvfs(parent).f_flag & os.ST_RDONLY:
        raise OutputPathError(f"{option} {p} cannot be written: {parent} is on a read-only "
                              f"file system; give a path on a writable one")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"{option} {p} cannot be written: this user cannot write folder "
                              f"{parent}; choose another path or fix its permissions")


def boundary(*, kept: str, out: str | None = "out", folder: bool = True):
    """Decorate a command's public function: check its ``out`` argument first, and
    turn a file-system ``OSError`` into a :class:`FileSystemError` saying ``kept``."""
    def deco(fn):
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            target, given = None, {}
            if out is not None:
                try:
                    given = sig.bind_partial(*args, **kwargs).arguments
                except TypeError:
                    given = {}
                target = given.get(out)
                # (with overwrite, what is there is named by the command's own rule:
                # storage.check_replaceable)
                check_out(target, folder=folder, replacing=given.get("overwrite") is True)
            try:
                return fn(*args, **kwargs)
            except OSError as exc:
                if not is_fs_error(exc):
                    raise
                raise describe(exc, kept=kept, out=target) from exc
        return wrapper
    return deco
