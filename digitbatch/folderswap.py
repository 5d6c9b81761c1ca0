"""Folders written whole: built beside their target, then swapped in.

A command that writes a folder of files (``report``, and whatever later adds
files to a report) must not leave a mix of new and old files when it is
killed. :func:`swapped` gives it a new, empty folder beside the target
(``.NAME.swap-TOKEN``) to write into; once the body has finished, the old
folder is moved aside (``.NAME.old-TOKEN``), the new one renamed into place,
and only then the old one removed. A kill before the swap leaves the old
folder as it was; a kill between the two renames leaves it aside, and the
next run puts it back before it does anything else.

Beside the temporary folder lies its owner record
(``.NAME.swap-TOKEN.owner.json``: pid, process start time, host, token,
target; :func:`digitbatch.tempstores.owner_record`), written before the
folder exists and removed after the swap. The next run at the same target
removes the temporary folders it can prove are a dead run's
(:func:`digitbatch.tempstores.owner_gone`) and says so in the log, as
ingest does for its temporary stores.

What may be replaced is the rule of every ``--overwrite``
(:func:`digitbatch.storage.check_replaceable`), plus an empty folder; it is
checked before the body runs and again just before the old folder is moved.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from . import storage, tempstores

log = logging.getLogger(__name__)

SWAP_INFIX = ".swap-"
OLD_INFIX = ".old-"
OWNER_SUFFIX = ".owner.json"


def _names(target: Path, token: str) -> tuple[Path, Path, Path]:
    base = target.parent / f".{target.name}"
    return (Path(f"{base}{SWAP_INFIX}{token}"), Path(f"{base}{OLD_INFIX}{token}"),
            Path(f"{base}{SWAP_INFIX}{token}{OWNER_SUFFIX}"))


def check_target(target: str | os.PathLike, kind: str, *, option: str = "--out") -> None:
    """Refuse (by name) a ``target`` that is not absent, an empty folder or a
    digitbatch output of ``kind`` (:func:`digitbatch.storage.check_replaceable`)."""
    p = Path(target)
    if p.is_dir() and not p.is_symlink() and not any(os.scandir(p)):
        return
    storage.check_replaceable(p, kind, option=option)


def remove_stale(target: str | os.PathLike) -> list[Path]:
    """Undo what killed runs of :func:`swapped` left beside ``target``.

    For each owner record that proves a dead run's: its old folder is put
    back if the target is missing (the run died between the two renames)
    and removed otherwise, and its temporary folder and record are removed.
    Anything else is left, with a warning. Returns the paths removed.
    """
    target = Path(target)
    removed: list[Path] = []
    try:
        names = sorted(os.listdir(target.parent))
    except OSError:
        return removed
    prefix = f".{target.name}{SWAP_INFIX}"
    for name in names:
        if not (name.startswith(prefix) and name.endswith(OWNER_SUFFIX)):
            continue
        record = target.parent / name
        token = name[len(prefix):-len(OWNER_SUFFIX)]
        tmp, old, _ = _names(target, token)
        try:
            rec = json.loads(record.read_text("utf-8"))
        except (OSError, ValueError):
            rec = None
        if not tempstores.owner_gone(rec, target, f"{target.name}{SWAP_INFIX}{token}",
                                     SWAP_INFIX):
            log.warning("left %s: nothing proves it belongs to a dead run of this host (another "
                        "run may be writing %s); remove it yourself once none does", tmp, target)
            continue
        if old.is_dir() and not old.is_symlink():
            if not os.path.lexists(target):
                os.rename(old, target)
                log.warning("put back %s: a run writing it was killed while swapping in "
                            "its new version", target)
            else:
                shutil.rmtree(old)
                removed.append(old)
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp)
            removed.append(tmp)
        record.unlink(missing_ok=True)
        removed.append(record)
        log.warning("removed %s: the temporary folder of a run writing %s that was killed "
                    "(pid %s on %s, started %s)", tmp, target, rec["pid"], rec["host"],
                    _dt.datetime.fromtimestamp(rec["started"], _dt.timezone.utc)
                    .isoformat(timespec="seconds"))
    return removed


@contextlib.contextmanager
def swapped(target: str | os.PathLike, kind: str, *, option: str = "--out",
            keep: Callable[[Path], Iterable[str]] | None = None) -> Iterator[Path]:
    """A new empty folder to write ``target``'s content into, swapped in whole on success.

    ``target`` must be absent, an empty folder or a digitbatch output of
    ``kind`` (else :class:`~digitbatch.errors.OverwriteRefusedError`, before
    the body runs). Missing parent folders are created. If the body raises
    (or the process is killed), ``target`` is left exactly as it was.
    ``keep(old_folder)``: names of files of the old folder to carry into the
    new one (one a person edited, say), each unless the body wrote that name.
    """
    target = Path(target)
    check_target(target, kind, option=option)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target)
    token = uuid.uuid4().hex[:12]
    tmp, old, record = _names(target, token)
    storage.write_atomic(record, json.dumps(tempstores.owner_record(target, token)))
    try:
        tmp.mkdir()
        yield tmp
        check_target(target, kind, option=option)  # (it may have changed meanwhile)
        had_old = os.path.lexists(target)
        for name in (keep(target) if keep is not None and had_old else ()):
            if not os.path.lexists(tmp / name) and (target / name).is_file():
                shutil.copy2(target / name, tmp / name)  # (the old stays whole until the swap)
        if had_old:
            os.rename(target, old)
        try:
            os.rename(tmp, target)
        except BaseException:
            if had_old:
                os.rename(old, target)
            raise
        if had_old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        record.unlink(missing_ok=True)
