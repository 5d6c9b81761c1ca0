"""Temporary stores of killed runs: whose they are, and removing a dead run's.

:class:`~digitbatch.layout.StoreWriter` builds a store under a temporary
sibling name (``.NAME.tmp-TOKEN``) and first of all records in its
attributes who writes it (:func:`owner_record`): pid, process start time,
host, the random token of its name and the target. A run killed by SIGKILL
or SIGTERM cannot remove it; the next run at the same target removes the
ones it can prove are a dead run's (:func:`remove_stale_temps`) and says so.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import shutil
from pathlib import Path

from . import storage

log = logging.getLogger(__name__)

TEMP_INFIX = ".tmp-"


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), or None if there is none."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.Error:  # (access denied: it exists)
        return -1.0


def owner_record(target: Path, token: str) -> dict:
    """Who writes a temporary store: this process (pid, start time, host), the
    random token its name ends with, and the store it will become."""
    import socket

    return {"pid": os.getpid(), "started": _process_start(os.getpid()),
            "host": socket.gethostname(), "token": token, "target": str(target.absolute())}


def stale_temp_owner(tmp: Path, target: Path) -> dict | None:
    """The owner record of ``tmp`` if it proves ``tmp`` is a dead run's temporary
    store of ``target`` (same target, same host, its process gone or its pid
    reused by a later process), else None: anything unproven is left alone."""
    try:
        meta = (storage.open_group(tmp, mode="r").attrs.get(storage.STORE_ATTRS) or {})
    except Exception:  # not a group, unreadable: nothing proves it is ours
        return None
    rec = meta.get("writer") if isinstance(meta, dict) else None
    return rec if owner_gone(rec, target, tmp.name, TEMP_INFIX) else None


def owner_gone(rec, target: Path, name: str, infix: str) -> bool:
    """Whether owner record ``rec`` (:func:`owner_record`) proves that the temporary
    ``name`` (ending ``infix`` + its token) beside ``target`` is a dead run's: same
    target, same host, its process gone or its pid reused by a later process."""
    import socket

    if not isinstance(rec, dict):
        return False
    pid, started = rec.get("pid"), rec.get("started")
    if (rec.get("target") != str(target.absolute()) or rec.get("host") != socket.gethostname()
            or not isinstance(rec.get("token"), str) or not rec["token"]
            or not name.endswith(f"{infix}{rec['token']}")
            or isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0
            or not isinstance(started, (int, float))):
        return False
    now = _process_start(pid)
    return not (now is not None and (now == -1.0 or abs(now - started) < 0.5))


def remove_stale_temps(target: str | os.PathLike) -> list[Path]:
    """Remove the temporary stores that killed runs left beside ``target``.

    A run killed by SIGKILL or SIGTERM cannot remove its ``.NAME.tmp-*``
    directory; the next run at the same target removes those it can prove
    are a dead run's (:func:`stale_temp_owner`), says so in the log, and
    leaves any other (a live run's, another host's, one without a record)
    with a warning. Returns the paths removed.
    """
    target = Path(target)
    removed = []
    try:
        names = os.listdir(target.parent)
    except OSError:
        return removed
    for name in sorted(names):
        if not name.startswith(f".{target.name}{TEMP_INFIX}"):
            continue
        tmp = target.parent / name
        if tmp.is_symlink() or not tmp.is_dir():
            continue
        rec = stale_temp_owner(tmp, target)
        if rec is None:
            log.warning("left %s: nothing proves it is the temporary store of a dead run of "
                        "this host (another run may be writing it); remove it yourself once "
                        "no ingest writes %s", tmp, target)
            continue
        shutil.rmtree(tmp, ignore_errors=True)
        log.warning("removed %s: the temporary store of an ingest into %s that was killed "
                    "(pid %s on %s, started %s)", tmp, target, rec["pid"], rec["host"],
                    _dt.datetime.fromtimestamp(rec["started"], _dt.timezone.utc)
                    .isoformat(timespec="seconds"))
        removed.append(tmp)
    return removed
