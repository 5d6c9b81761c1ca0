"""What every source yields: batches of MNIST-form images, and rejects.

A source turns some outside data into an iterator of :class:`Batch`
(images already in MNIST form: (n, 28, 28) uint8, light ink on a dark
background) in source order, together with the :class:`Reject` records of
the inputs it refused. Container-level breakage (a truncated IDX file, a
corrupt zip) raises a :class:`~digitbatch.errors.SourceError` instead.
"""

from __future__ import annotations

import collections
import itertools
from dataclasses import dataclass, field

import numpy as np

from ..digits import IMAGE_SHAPE, LABEL_DTYPE, UNKNOWN_LABEL


@dataclass(frozen=True)
class Reject:
    """One input that was refused, and why (a short stable reason code + detail)."""

    key: str
    reason: str


@dataclass(frozen=True, slots=True)
class MemberRef:
    """Where one member's bytes lie: tar data offset, zip entry index, -1 (a file),
    or the member's ordinal in a compressed tar (read by streaming it).

    ``name`` is the member's name as stored when ``key`` is an escaped form
    of it (a file name that is not UTF-8: :func:`~.members.escape_name`).
    """

    key: str
    offset: int
    size: int
    name: str | None = None


def member_refs(keys: list[str], offsets: list[int], sizes: list[int]) -> list[MemberRef]:
    """``[MemberRef(k, o, s) for ...]`` (``name`` None), made in bulk: the
    slots are filled by their descriptors, as the frozen dataclass's own
    ``__init__`` fills them, without a Python call per member."""
    refs = list(map(object.__new__, itertools.repeat(MemberRef, len(keys))))
    for slot, values in ((MemberRef.key, keys), (MemberRef.offset, offsets),
                         (MemberRef.size, sizes), (MemberRef.name, itertools.repeat(None))):
        collections.deque(map(slot.__set__, refs, values), maxlen=0)
    return refs


@dataclass
class Batch:
    """Rows ready for the store, in source order."""

    images: np.ndarray  # (n, 28, 28) uint8
    labels: np.ndarray  # (n,) int8, UNKNOWN_LABEL where unknown
    keys: list[str]
    rejects: list[Reject] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.keys)
        if self.images.shape != (n, *IMAGE_SHAPE) or self.images.dtype != np.uint8:
            raise ValueError(f"batch images {self.images.shape} {self.images.dtype} for {n} keys")
        if self.labels.shape != (n,):
            raise ValueError(f"batch labels {self.labels.shape} for {n} keys")

    @classmethod
    def empty(cls, rejects: list[Reject] | None = None) -> Batch:
        return cls(
            np.zeros((0, *IMAGE_SHAPE), np.uint8),
            np.zeros((0,), LABEL_DTYPE),
            [],
            list(rejects or []),
        )

    def __len__(self) -> int:
        return len(self.keys)


def label_array(labels, n: int) -> np.ndarray:
    """int8 label array of length n; ``None`` entries become UNKNOWN_LABEL."""
    out = np.full(n, UNKNOWN_LABEL, dtype=LABEL_DTYPE)
    for i, v in enumerate(labels):
        if v is not None:
            out[i] = v
    return out
