"""Where bytes live: local paths, or fsspec URLs (``s3://bucket/x``, ``gs://``, ...).

Cluster workers rarely share a disk, so stores, models, archives and
scoring outputs may live in object storage. This module is the one place
that knows the difference:

- :func:`to_path` gives a :class:`pathlib.Path` for a local path and a
  ``universal_pathlib`` ``UPath`` (the pathlib API over fsspec) for a URL, so
  the rest of the code uses one vocabulary (``/``, ``exists``, ``read_text``).
- :func:`open_group` opens a Zarr group at either.
- :func:`made_by_digitbatch` recognises what digitbatch wrote (a store, a
  model, a scoring output, a report) by its own metadata, and
  :func:`check_replaceable` is what every ``--overwrite`` asks before it
  removes anything: whatever else is at the path is refused by name.
- :func:`write_atomic` and :func:`create_exclusive` give the two guarantees
  the exactly-once output needs: a reader sees a file whole or not at all
  (local: temporary file + rename; object stores: a single PUT), and a lock
  file is created only if absent (local: ``O_EXCL``; S3: a conditional PUT,
  ``If-None-Match: *``).

Credentials and endpoints come from the usual places, read by each worker
process: ``AWS_*`` variables, ``~/.aws``, or fsspec's own configuration
(``FSSPEC_S3_ENDPOINT_URL=http://minio:9000`` and friends; see
https://filesystem-spec.readthedocs.io/en/latest/features.html#configuration).
Directory listings are never cached (``use_listings_cache=False``): a
listing cached before workers committed their chunks would hide them.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import OverwriteRefusedError, StorageError

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
# never cache directory listings: commit records appear while we run
_OPTIONS = {"use_listings_cache": False}


def is_url(x: Any) -> bool:
    """True for an fsspec URL other than ``file://``."""
    s = str(x)
    return bool(_URL.match(s)) and not s.startswith("file://")


def storage_options(url: str) -> dict:
    """Options for the filesystem of ``url`` (only for remote protocols)."""
    proto = str(url).split("://", 1)[0]
    return dict(_OPTIONS) if proto not in ("memory", "file") else {}


def to_path(x: str | os.PathLike) -> Path:
    """A ``Path`` for a local path, a ``UPath`` for a URL (same API)."""
    if is_path(x):
        return x
    s = os.fspath(x)
    if s.startswith("file://"):
        return Path(s[len("file://"):])
    if not is_url(s):
        return Path(s)
    try:
        from upath import UPath
    except ImportError as exc:  # pragma: no cover - a core dependency
        raise StorageError(f"{s}: URLs need universal_pathlib: pip install digitbatch") from exc
    try:
        return UPath(s.rstrip("/"), **storage_options(s))
    except (ImportError, ValueError) as exc:
        proto = s.split("://", 1)[0]
        hint = " (pip install 'digitbatch[s3]')" if proto in ("s3", "s3a") else ""
        raise StorageError(f"cannot open {s}: {exc}{hint}") from exc


def is_path(x: Any) -> bool:
    """A ``Path`` or a ``UPath`` (what :func:`to_path` returns)."""
    return isinstance(x, Path) or type(x).__module__.startswith("upath")


def is_local(p: Path) -> bool:
    return not is_url(str(p)) and type(p).__module__.startswith("pathlib")


def url(p: Path) -> str:
    """The string to hand to Zarr, fsspec or another process."""
    return str(p)


def open_group(p: str | os.PathLike, mode: str = "r"):
    """A Zarr group at a local path or URL (``mode`` as :func:`zarr.open_group`)."""
    import zarr

    s = str(to_path(p))
    if is_url(s):
        return zarr.open_group(s, mode=mode, storage_options=storage_options(s))
    return zarr.open_group(s, mode=mode)


def fs_of(p: Path):
    """The fsspec filesystem and in-filesystem path of a URL path."""
    return p.fs, p.path


def write_atomic(p: Path, data: bytes | str) -> None:
    """Write ``p`` so that readers see all of it or none of it."""
    data = data.encode("utf-8") if isinstance(data, str) else data
    if not is_local(p):
        p.write_bytes(data)  # one PUT: object stores publish objects whole
        return
    tmp = p.parent / f".{p.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(OSError):  # (a read-only file system refuses even that)
            tmp.unlink(missing_ok=True)  # disk full, say: nothing half-written is left
        raise
    try:
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)  # (a directory at ``p``, say): no stray temporary file
        raise


def create_exclusive(p: Path, data: bytes | str) -> None:
    """Create ``p`` holding ``data``; ``FileExistsError`` if it exists."""
    data = data.encode("utf-8") if isinstance(data, str) else data
    if is_local(p):
        fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return
    fs, path = fs_of(p)
    try:
        fs.pipe_file(path, data, mode="create")
    except FileExistsError:
        raise
    except (NotImplementedError, TypeError) as exc:
        raise StorageError(
            f"{p}: this filesystem cannot create a file only if it is absent ({exc}), "
            f"so a run lock cannot be held there: write the output to S3 or a local path"
        ) from exc


def listdir(p: Path) -> list[str]:
    """Names directly under ``p`` (fresh: never from a cached listing); [] if absent."""
    if is_local(p):
        try:
            return os.listdir(p)
        except FileNotFoundError:
            return []
    fs, path = fs_of(p)
    fs.invalidate_cache(path)
    try:
        return [e.rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(path, detail=False)]
    except FileNotFoundError:
        return []


def mkdir(p: Path) -> None:
    """Make a directory (object stores have none: nothing to do)."""
    if is_local(p):
        p.mkdir(parents=True, exist_ok=True)


def rmtree(p: Path) -> None:
    """Remove a directory tree or prefix; missing is fine."""
    if is_local(p):
        shutil.rmtree(p, ignore_errors=True)
        return
    fs, path = fs_of(p)
    try:
        fs.rm(path, recursive=True)
    except FileNotFoundError:
        pass


def parent_exists(p: Path) -> bool:
    """Whether ``p`` can be created: its directory (local) or bucket (remote) exists."""
    if is_local(p):
        return p.parent.exists()
    fs, path = fs_of(p)
    bucket = path.split("/", 1)[0]
    try:
        return bool(fs.exists(bucket))
    except PermissionError:
        return True  # listing buckets may be forbidden while writing into one is allowed


@contextlib.contextmanager
def fetched(source: str) -> Iterator[Path]:
    """A local copy of a remote file or prefix (:func:`download`), removed on exit.

    ``FileNotFoundError`` when nothing is there.
    """
    with tempfile.TemporaryDirectory(prefix="digitbatch-fetch-") as d:
        yield download(to_path(source), Path(d))


def download(p: Path, into: Path) -> Path:
    """Copy the remote file or prefix ``p`` to ``into/NAME`` and return that path.

    Its name is the source's last component, so content detection and
    member keys (``archive.tar.gz!img/1.png``) are what the source's are.
    """
    fs, path = fs_of(p)
    if not fs.exists(path):
        raise FileNotFoundError(str(p))
    dest = into / (p.name or "source")
    if fs.isdir(path):
        dest.mkdir()
        remote, local = [], []
        for rel in sorted(fs.find(path)):
            sub = rel[len(path.rstrip("/")) + 1:]
            if not sub or ".." in Path(sub).parts:
                continue
            (dest / sub).parent.mkdir(parents=True, exist_ok=True)
            remote.append(rel)
            local.append(str(dest / sub))
        if remote:
            fs.get(remote, local)  # one call: async filesystems fetch concurrently
    else:
        fs.get_file(path, str(dest))
    return dest


def identity(p: Path) -> str:
    """Size and version of a remote file (ETag or modification time), for --resume."""
    fs, path = fs_of(p)
    fs.invalidate_cache(path)
    info = fs.info(path)
    version = next((str(info[k]) for k in ("ETag", "etag", "LastModified", "mtime", "updated")
                    if info.get(k) is not None), "")
    return f"{info.get('size')}:{version}"


# --- what digitbatch made ---------------------------------------------------------
#
# The metadata each format's owner writes, by which its outputs are known
# (the owners: layout.ATTRS_KEY, predictions.ATTRS_KEY, modelio.MANIFEST_FILE
# and the report's page; tests/faults/test_overwrite.py makes each for real
# and checks that it is recognised). Kept here, not imported from the
# owners, because every one of them imports this module.
STORE_ATTRS = "digitbatch"
PREDICTIONS_ATTRS = "digitbatch_predictions"
MODEL_MANIFEST = "manifest.json"
MODEL_FILES = frozenset({"model.npz", MODEL_MANIFEST})
STORE_ENTRIES = frozenset({"zarr.json", "images", "labels", "keys", "rejects"})
REPORT_PAGE = "report.html"
REPORT_SIGNATURE = b"<title>digitbatch report: "
REPORT_FILES = frozenset({REPORT_PAGE, "confusion.png", "per_class.png", "errors.png",
                          "doubtful.png", "drift.png", "reliability.png", "review.csv",
                          "review.html"})
KINDS = {"store": "a digitbatch store", "model": "a digitbatch model",
         "predictions": "a digitbatch scoring output", "report": "a digitbatch report folder"}
_MAX_META_BYTES = 16 << 20


def _head(p: Path, limit: int = _MAX_META_BYTES, *, whole: bool = True) -> bytes | None:
    """File ``p``'s bytes, or None (absent, unreadable, or ``whole`` and over
    ``limit`` bytes); with ``whole=False`` its first ``limit`` bytes."""
    try:
        if is_local(p):
            if not p.is_file() or (whole and p.stat().st_size > limit):
                return None
            with open(p, "rb") as fh:
                return fh.read(limit)
        with p.open("rb") as fh:
            data = fh.read(limit + 1)
        return None if whole and len(data) > limit else data[:limit]
    except (OSError, ValueError):
        return None


def _json_object(p: Path) -> dict | None:
    import json

    data = _head(p)
    try:
        value = json.loads(data) if data is not None else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def made_by_digitbatch(path: str | os.PathLike) -> str | None:
    """What digitbatch output is at ``path``: ``"store"``, ``"model"``,
    ``"predictions"``, ``"report"``, or None (nothing there, or anything else).

    Each is recognised by the metadata its writer puts there: a Zarr group
    whose attributes hold a digitbatch store's (also while it is being
    written) or a scoring output's; a folder holding only ``model.npz`` and a
    ``manifest.json`` with a format version and the model's SHA-256; a folder
    holding only report files whose ``report.html`` is a digitbatch report.
    A store, model or report folder that also holds anything its writer does
    not put there (a user's notes) is None, as are a symbolic link, a plain
    file and a folder of anything else.
    """
    p = to_path(path)
    if is_local(p) and (p.is_symlink() or not p.is_dir()):
        return None
    group = _json_object(p / "zarr.json")
    if group is not None and group.get("node_type") == "group":
        attrs = group.get("attributes") or {}
        if isinstance(attrs.get(PREDICTIONS_ATTRS), dict):
            return "predictions"
        if isinstance(attrs.get(STORE_ATTRS), dict) and "layout_version" in attrs[STORE_ATTRS] \
                and set(listdir(p)) <= STORE_ENTRIES:
            return "store"
        return None
    names = set(listdir(p))
    manifest = _json_object(p / MODEL_MANIFEST) if MODEL_MANIFEST in names else None
    if manifest is not None and names <= MODEL_FILES and \
            {"format_version", "model_sha256"} <= set(manifest):
        return "model"
    if REPORT_PAGE in names and names <= REPORT_FILES:
        page = _head(p / REPORT_PAGE, 4096, whole=False)
        if page is not None and REPORT_SIGNATURE in page:
            return "report"
    return None


def what_is(path: str | os.PathLike, kind: str | None = None) -> str:
    """What is at ``path``, said for a message: "a digitbatch store", "a file",
    "a folder digitbatch did not make", "nothing" ... (``kind``: made_by_digitbatch's,
    when known)."""
    p = to_path(path)
    local = is_local(p)
    kind = kind or made_by_digitbatch(p)
    if kind is not None:
        return KINDS[kind]
    if local and p.is_symlink():
        return "a symbolic link"
    if not p.exists():
        return "nothing (it does not exist)"
    if local and not p.is_dir():
        return "a file"
    return "a folder digitbatch did not make"


def check_replaceable(path: str | os.PathLike, kinds: tuple[str, ...] | str, *,
                      option: str = "--overwrite") -> str | None:
    """What ``option`` may replace at ``path``, or :class:`OverwriteRefusedError`.

    Returns None when nothing is at ``path``, the kind (one of ``kinds``) when
    it is a digitbatch output of that kind; anything else (a user's folder or
    file, a link, a digitbatch output of another kind) is refused by name and
    left as it is. Call it before any work, and again just before removing.
    """
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    p = to_path(path)
    local = is_local(p)
    if local and not p.is_symlink() and not p.exists():
        return None
    if not local and not p.exists():
        return None
    kind = made_by_digitbatch(p)
    if kind in kinds:
        return kind
    wanted = " or ".join(KINDS[k] for k in kinds)
    what = what_is(p, kind)
    raise OverwriteRefusedError(
        f"{option}: {p} is {what}, not {wanted}; {option} only replaces what digitbatch itself "
        f"wrote (recognised by its metadata), so it is left as it is. Move it away, or choose "
        f"another --out")
