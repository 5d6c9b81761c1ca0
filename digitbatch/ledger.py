"""The ledger of incremental scoring: which inputs were scored, into what, as what.

``_ledger.jsonl`` (one JSON object per line, appended, never rewritten
locally) records each input a run finished or failed::

    {"input": "/data/incoming/night-01.tar", "name": "night-01",
     "fingerprint": "12345:1733443200000000000", "checksum": "archive-sha256:...",
     "status": "scored", "out": "/data/predictions/night-01.zarr", "error": null,
     "run_id": "...", "time": "2026-12-06T06:00:00+00:00"}

``status`` is ``scored`` (appended only after the output's ``_SUCCESS``) or
``failed`` (with ``error``: type and message). The latest line of an input
is what counts. A torn line (a run killed mid-append; the next append
starts a fresh line) is ignored with a warning: its input counts as not
scored, and its finished output is found complete and recorded again.
Only this module reads or writes the ledger.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from . import storage
from .errors import LedgerError

log = logging.getLogger(__name__)

LEDGER_FILE = "_ledger.jsonl"
SCORED, FAILED = "scored", "failed"


@dataclass(frozen=True)
class Entry:
    """The latest ledger line of one input."""

    input: str
    fingerprint: str
    status: str
    out: str | None
    checksum: str | None = None
    error: dict | None = None


def read(path: Path) -> dict[str, Entry]:
    """Input -> its latest entry; {} when there is no ledger yet."""
    path = storage.to_path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise LedgerError(f"ledger {path} is unreadable ({exc}): fix or move it; it records "
                          f"which inputs were scored") from exc
    latest: dict[str, Entry] = {}
    lines = text.split("\n")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            entry = Entry(input=d["input"], fingerprint=d["fingerprint"], status=d["status"],
                          out=d.get("out"), checksum=d.get("checksum"), error=d.get("error"))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            # a line torn by a run killed while appending it (the next append starts
            # a fresh line): its input is taken as not scored, and a finished output
            # of it is found complete and recorded again
            log.warning("ledger %s, line %d is torn or damaged (%s): ignored", path, n, exc)
            continue
        if entry.status not in (SCORED, FAILED):
            raise LedgerError(f"ledger {path}, line {n}: status {entry.status!r} is not "
                              f"{SCORED!r} or {FAILED!r}: fix or delete that line")
        latest[entry.input] = entry
    return latest


def append(path: Path, *, input: str, fingerprint: str, status: str, out: str | None,
           run_id: str | None, checksum: str | None = None, error: dict | None = None) -> None:
    """Add one line (locally with O_APPEND, flushed to disk; an object store
    rewrites the object: one writer at a time there)."""
    if status not in (SCORED, FAILED):
        raise LedgerError(f"status must be {SCORED!r} or {FAILED!r}, got {status!r}")
    line = json.dumps({"input": input, "name": Path(str(input)).name, "fingerprint": fingerprint,
                       "checksum": checksum, "status": status, "out": out, "error": error,
                       "run_id": run_id,
                       "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
    path = storage.to_path(path)
    if not storage.is_local(path):
        try:
            old = path.read_text()
        except FileNotFoundError:
            old = ""
        storage.write_atomic(path, old + ("" if not old or old.endswith("\n") else "\n")
                             + line + "\n")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        lead = b""
        if size:  # a torn last line (a killed append) must not swallow this one
            with open(path, "rb") as fh:
                fh.seek(size - 1)
                lead = b"" if fh.read(1) == b"\n" else b"\n"
        os.write(fd, lead + line.encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
