"""The ``current`` pointer of a models folder: which model is live (this module alone
reads and writes it).

A models folder (``digitbatch promote --models DIR``) holds copies of the models
promoted into it and one small JSON file naming the live one::

    DIR/
      current            {"kind": "digitbatch-model-pointer", "format_version": 1,
                          "model": "sgd-3f2a1b0c9d8e", "sha256": "<model.npz SHA-256>",
                          "since": "2026-12-06T09:00:00+00:00",
                          "previous": [{"model": ..., "sha256": ...}, ...]}
      sgd-3f2a1b0c9d8e/  a model directory (model.npz + manifest.json)
      history.jsonl      every decision (digitbatch.promotion)

``current`` is a regular file, not a symlink: it works on filesystems and
systems without symlinks, and a models folder copied or moved elsewhere (with
``cp -r``, ``rsync``, an object-store sync) still points at its own copy,
since ``model`` is a name inside ``DIR``, never a path. It is replaced with
``os.replace`` after the new content is written and synced, so a reader sees
the old pointer or the new one, never a torn one. ``previous`` is the stack
of earlier champions that a rollback pops.

:func:`resolve` turns what a user gives as a model (``DIR/current``, ``DIR``,
a symlink, or a plain model directory) into one model directory, once:
:func:`digitbatch.modelio.load_model` calls it first, so a scoring run
resolves the pointer at its start and keeps that model whatever a promotion
does meanwhile.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass
from pathlib import Path

from . import storage
from .errors import ModelPointerError

POINTER_FILE = "current"
POINTER_KIND = "digitbatch-model-pointer"
POINTER_VERSION = 1
# a pointer is a few hundred bytes; anything much larger is not one
MAX_POINTER_BYTES = 1 << 20
MANIFEST_FILE = "manifest.json"  # (what makes a folder a model directory: modelio's format)


@dataclass(frozen=True)
class Resolved:
    """A model directory, and the pointer it was reached through (None: given directly)."""

    path: Path
    via: Path | None = None
    sha256: str | None = None  # what the pointer says model.npz hashes to


def folder_name(name: str, sha256: str) -> str:
    """The folder of a promoted model inside a models folder: its catalogue name and the
    first 12 hex digits of its model.npz SHA-256 (``sgd-3f2a1b0c9d8e``)."""
    return check_name(f"{name}-{sha256[:12]}", "the model's folder name")


def find_model(models: str | os.PathLike, sha256: str) -> Path | None:
    """The folder in ``models`` named for a model of SHA-256 ``sha256`` (unchecked:
    load it to check), or None."""
    suffix = f"-{sha256[:12]}"
    try:
        names = sorted(n for n in os.listdir(models) if n.endswith(suffix)
                       and not n.startswith("."))
    except OSError:
        return None
    return Path(models) / names[0] if names else None


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def check_name(name, where) -> str:
    """A model's name inside a models folder: one plain path component."""
    if (not isinstance(name, str) or not name or name in (".", "..") or name.startswith(".")
            or "/" in name or "\\" in name or "\0" in name):
        raise ModelPointerError(
            f"{where} names model {name!r}, not a folder name inside the models folder: the "
            f"pointer is damaged or was edited by hand; run `digitbatch promote --rollback` or "
            f"promote a model again")
    return name


def _entry(value, where) -> dict:
    if not isinstance(value, dict) or not isinstance(value.get("sha256"), str):
        raise ModelPointerError(f"{where} holds {value!r}, not a model entry with a sha256: the "
                                f"pointer is damaged; promote a model again")
    return {"model": check_name(value.get("model"), where), "sha256": value["sha256"]}


def read_pointer(path: str | os.PathLike) -> dict:
    """The checked content of pointer file ``path``."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_POINTER_BYTES:
            raise ModelPointerError(f"{p} is {size:,} bytes: not a model pointer")
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelPointerError(f"{p} does not exist: promote a model first "
                                f"(digitbatch promote MODEL --models {p.parent} --gate STORE)"
                                ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelPointerError(f"{p} is not a model pointer (not JSON: {exc})") from None
    if not isinstance(doc, dict) or doc.get("kind") != POINTER_KIND:
        raise ModelPointerError(f"{p} is not a model pointer (no kind {POINTER_KIND!r})")
    if doc.get("format_version") != POINTER_VERSION:
        raise ModelPointerError(f"{p} has pointer format {doc.get('format_version')!r}; this "
                                f"digitbatch reads {POINTER_VERSION}: upgrade digitbatch")
    head = _entry(doc, str(p))
    prev = doc.get("previous", [])
    if not isinstance(prev, list):
        raise ModelPointerError(f"{p}: previous is {type(prev).__name__}, not a list: the "
                                f"pointer is damaged; promote a model again")
    return {**doc, **head, "previous": [_entry(v, f"{p} (previous)") for v in prev]}


def current_of(models: str | os.PathLike) -> dict | None:
    """The pointer of models folder ``models``, or None when no model was promoted yet."""
    p = Path(models) / POINTER_FILE
    if not p.exists():
        return None
    return read_pointer(p)


def write_pointer(models: str | os.PathLike, model: str, sha256: str,
                  previous: list[dict]) -> Path:
    """Point ``models/current`` at ``models/model``, atomically (written, synced, replaced)."""
    p = Path(models) / POINTER_FILE
    doc = {"kind": POINTER_KIND, "format_version": POINTER_VERSION,
           "model": check_name(model, "the new pointer"), "sha256": sha256, "since": now(),
           "previous": [_entry(v, "the new pointer (previous)") for v in previous]}
    storage.write_atomic(p, json.dumps(doc, indent=2) + "\n")
    sync_dir(p.parent)
    return p


def sync_dir(d: Path) -> None:
    """Make a rename in ``d`` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def resolve(model: str | os.PathLike) -> Resolved:
    """The model directory ``model`` names, resolved once.

    - a pointer file (``DIR/current``): the model it names inside ``DIR``;
    - a models folder (``DIR``, no manifest of its own, a ``current`` inside):
      the same as ``DIR/current``;
    - a symlink: the folder it leads to now;
    - anything else (a model directory, a URL, a path that does not exist):
      itself, for :func:`~digitbatch.modelio.load_model` to check.
    """
    if storage.is_url(model):
        return Resolved(storage.to_path(model))
    p = Path(model)
    if p.is_dir() and not (p / MANIFEST_FILE).exists() and (p / POINTER_FILE).is_file():
        p = p / POINTER_FILE
    if p.is_file() and p.stat().st_size <= MAX_POINTER_BYTES and _looks_like_pointer(p):
        doc = read_pointer(p)
        target = p.parent / doc["model"]
        if not target.is_dir():
            raise ModelPointerError(
                f"{p} points at {doc['model']!r}, which is not a folder in {p.parent}: the "
                f"model was moved or deleted; restore it, or run `digitbatch promote "
                f"--rollback --models {p.parent}`")
        return Resolved(Path(os.path.abspath(target)), via=Path(model), sha256=doc["sha256"])
    if p.is_symlink():
        return Resolved(Path(os.path.realpath(p)), via=Path(model))
    if p.name == POINTER_FILE and not p.exists() and p.parent.is_dir():
        raise ModelPointerError(
            f"{p} does not exist: no model was promoted into {p.parent} yet; promote one "
            f"(digitbatch promote MODEL --models {p.parent} --gate STORE), or give a model "
            f"directory")
    return Resolved(p)


def _looks_like_pointer(p: Path) -> bool:
    """A file that claims to be a pointer (its errors are then the pointer's errors)."""
    try:
        with open(p, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    return POINTER_KIND.encode() in head
