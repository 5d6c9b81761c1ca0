"""The input behind a scoring output's rows, for the report's galleries.

A run records its input (path, kind and checksum, or an archive's
fingerprint) in metrics.json. :func:`open_input` finds it again (as
recorded, beside the output, or where ``--store`` says), checks it is the
same input, and gives a function that fetches the pixels, labels and keys
of chosen rows: from the store's chunks, or by decoding the archive's
members again, by key, as scoring decoded them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import gallery, storage
from .digits import IMAGE_SHAPE
from .errors import StoreError, StoreNotFoundError
from .layout import open_store
from .scoring.output import Predictions
from .sources.base import Reject
from .sources.members import Member


def existing(path: str, beside: Path) -> Path:
    """``path`` as recorded, or relative to the output's folder when that is where it is."""
    if storage.is_url(path):
        return storage.to_path(path)
    p = Path(path)
    if not p.exists() and not p.is_absolute() and (beside / p).exists():
        return beside / p
    return p


@dataclass
class ScoredInput:
    """Where a report's labels and pixels come from: the input a run scored."""

    path: Path
    labels: object  # (N,) int8, sliceable: the store's, or the output's for archive runs
    fetch: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, list[str]]]


def open_input(p: Predictions, override) -> ScoredInput:
    """The run's input (a store, or the archive scored directly), checked against its checksum."""
    want = p.metrics.get("input") or {}
    recorded = want.get("path")
    if override is None and recorded is None:
        raise StoreError(f"{p.path}/metrics.json records no input: pass --store")
    path = (storage.to_path(override) if override is not None
            else existing(recorded, storage.to_path(p.path).parent))
    if not path.exists():
        if override is not None:
            raise StoreNotFoundError(f"--store {path} does not exist")
        raise StoreNotFoundError(f"the input {recorded} recorded in {p.path}/metrics.json does "
                                 f"not exist (moved?): pass --store with its path")
    checksum = want.get("checksum")
    hint = "pass --store with the input this run scored"
    if str(want.get("kind", "store")).startswith("archive"):
        got, images_of = archive_images(path)
        if checksum and got != checksum:
            raise StoreError(f"{path} is not the archive {p.path} was scored from (its listing, "
                             f"size or time changed): {hint}")
        def fetch(rows):
            keys = [str(k) for k in p.keys.oindex[rows]] if len(rows) else []
            labels = np.asarray(p.labels.oindex[rows]) if len(rows) else np.zeros(0, np.int8)
            return images_of(keys), labels, keys

        return ScoredInput(path, p.labels, fetch)
    s = open_store(path)
    if checksum and s.checksum != checksum:
        raise StoreError(f"store {s.path} has checksum {s.checksum[:23]}..., but {p.path} was "
                         f"scored from {checksum[:23]}...: {hint}")
    return ScoredInput(s.path, s.labels, lambda rows: gallery.fetch_rows(s.images, s.labels, s.keys, rows))


def archive_images(path: Path):
    """The archive's fingerprint, and a function decoding members by key (as score does)."""
    from .sources.archive import detect_image_source
    from .sources.images import decode_one
    from .sources.listing import list_archive, read_entries
    from .sources.members import DEFAULT_MAX_MEMBER_BYTES as limit

    identity = keep = None
    if not storage.is_local(path):  # a local copy, kept as long as images_of is
        import tempfile

        identity = storage.identity(path)
        keep = tempfile.TemporaryDirectory(prefix="digitbatch-report-")
        path = storage.download(path, Path(keep.name))
    kind = detect_image_source(path)
    if kind is None:
        raise StoreError(f"{path} is neither a digitbatch store nor an image directory, tar or zip")
    listing = list_archive(path, kind, limit=limit, identity=identity)

    def images_of(keys: list[str], _keep=keep) -> np.ndarray:
        out = np.zeros((len(keys), *IMAGE_SHAPE), np.uint8)
        at = {k: i for i, k in enumerate(keys)}
        chosen = [e for e in listing.entries if e.key in at and not isinstance(e, Reject)]
        for item in read_entries(str(path), kind, chosen, limit=limit):
            img = decode_one(item.data) if isinstance(item, Member) else None
            if isinstance(img, np.ndarray):
                out[at[item.key]] = img
        return out

    return listing.fingerprint, images_of
