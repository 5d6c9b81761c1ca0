"""The run lock of a scoring output: one writer at a time.

``PRED.zarr/.lock`` holds its owner (pid, host, start time and a random
token) while a run writes. It is made with an exclusive create (a
conditional write on object storage), so two runs cannot both take it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

from .. import storage
from ..errors import OutputLockedError

log = logging.getLogger(__name__)

LOCK = ".lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def run_lock(out: Path, *, break_lock: bool = False) -> Iterator[dict]:
    """Hold ``out/.lock`` for the duration of a run; refuse if another run holds it."""
    out = storage.to_path(out)
    storage.mkdir(out)
    lock = out / LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
          "token": uuid.uuid4().hex}
    for _ in range(2):
        try:
            storage.create_exclusive(lock, json.dumps(me))
        except FileExistsError:
            try:
                owner = json.loads(lock.read_text() or "{}")
            except (OSError, json.JSONDecodeError):
                owner = {}
            same_host = owner.get("host") == me["host"]
            stale = same_host and isinstance(owner.get("pid"), int) and not _pid_alive(owner["pid"])
            if break_lock and (stale or not same_host):
                log.warning("breaking lock %s held by %s", lock, owner)
                lock.unlink(missing_ok=True)
                continue
            hint = ("its process is gone: rerun with --break-lock" if stale else
                    "wait for it to finish" + ("" if same_host else
                                               ", or --break-lock if that host is down"))
            raise OutputLockedError(
                f"{out} is being written by another run (pid {owner.get('pid')} on "
                f"{owner.get('host')}, since {owner.get('started')}): {hint}")
        break
    try:
        yield me
    finally:
        with contextlib.suppress(OSError, json.JSONDecodeError):
            if json.loads(lock.read_text()).get("token") == me["token"]:
                lock.unlink()
