"""Image files (directory, tar, zip) -> MNIST-form images: the public entry points.

Reading the containers lives in :mod:`digitbatch.sources.archive` (some of
it re-exported here); decoding in :mod:`.decoders` (fast decoders, Pillow
for the rest and for every reject, EXIF orientation applied) and the MNIST
normalisation in :mod:`.normalise` (a batch at a time, grouped by size).
:func:`decode_batch` is pure and runs on Dask workers. Its reject reason
codes:

``decode-error``
    Pillow cannot read the bytes (truncated, corrupt, not an allowed format).
``decompression-bomb``
    more pixels than ``PIL.Image.MAX_IMAGE_PIXELS``.
``bad-dimensions``
    a side over :data:`MAX_SIDE` or more than :data:`MAX_PIXELS` pixels,
    refused from the header before any pixel is decoded.
``empty-image``
    a zero-byte file or an image with a zero-length side. Blank images
    (no ink) are kept, as all-zero digits.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Iterator
from typing import TypeVar

import numpy as np
from PIL import Image

from .archive import CONTAINER_KINDS, detect_image_source, iter_members
from .base import Batch, Reject, label_array
from .decoders import MAX_PIXELS, MAX_SIDE, decode_grey, fast_enabled, grey
from .members import DEFAULT_MAX_MEMBER_BYTES, IMAGE_EXTENSIONS, Member
from .normalise import normalise, normalise_flagged

__all__ = [
    "DEFAULT_MAX_MEMBER_BYTES",
    "IMAGE_EXTENSIONS",
    "CONTAINER_KINDS",
    "MAX_PIXELS",
    "MAX_SIDE",
    "Member",
    "decode_batch",
    "decode_one",
    "decode_stream",
    "detect_image_source",
    "iter_members",
    "to_mnist",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
# Grey pixels decoded and waiting to be normalised, at most (16 MiB of them):
# a batch of large scans is normalised in blocks.
PENDING_PIXELS = 2**24


def decode_batch(items: list[tuple[str, bytes, int | None]]) -> Batch:
    """Decode image files into a :class:`Batch` of MNIST-form digits.

    Parameters
    ----------
    items : list of (key, data, label)
        Encoded image files, with labels 0-9 or ``None`` (unknown).

    Returns
    -------
    Batch
        The decoded images in input order, and a
        :class:`~digitbatch.sources.base.Reject` for each item that could
        not be decoded (see the module docstring for the reason codes).
    """
    images: list[np.ndarray] = []
    labels: list[int | None] = []
    keys: list[str] = []
    rejects: list[Reject] = []
    with warnings.catch_warnings():
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that. The
        # explicit size checks of the decoders decide even where another
        # thread's catch_warnings has changed the filters under us.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        for (key, label), out in decode_stream(((key, label), data) for key, data, label in items):
            if isinstance(out, str):
                rejects.append(Reject(key, out))
            else:
                images.append(out)
                labels.append(label)
                keys.append(key)
    if rejects:
        log.debug("decode_batch: %d of %d items rejected", len(rejects), len(items))
    if not keys:
        return Batch.empty(rejects)
    return Batch(np.stack(images), label_array(labels, len(keys)), keys, rejects)


def decode_stream(items: Iterable[tuple[T, bytes]], *, note=None
                  ) -> Iterator[tuple[T, np.ndarray | str]]:
    """``(tag, digit or reject reason)`` for each ``(tag, file bytes)``, in order.

    Files are decoded one at a time (a caller can tell which one is being
    decoded: the last it handed over) and normalised together in blocks of
    at most :data:`PENDING_PIXELS` grey pixels, which bounds the memory of
    large scans. The caller sets the warning filters (see :func:`decode_batch`).
    ``note(tag, inverted, resized)``, optional, is told for each decoded
    image whether normalisation inverted it and resized it
    (:func:`~digitbatch.sources.normalise.normalise_flagged`), when its
    block is normalised, just before its digit is yielded.
    """
    fast = fast_enabled()
    pending: list[tuple[T, np.ndarray | str]] = []
    greys: list[np.ndarray] = []
    pixels = 0
    for tag, data in items:
        out = decode_grey(data, fast=fast)
        pending.append((tag, out))
        if not isinstance(out, str):
            greys.append(out)
            pixels += out.size
            if pixels >= PENDING_PIXELS:
                yield from _normalised(pending, greys, note)
                pending, greys, pixels = [], [], 0
    yield from _normalised(pending, greys, note)


def _normalised(pending: list, greys: list[np.ndarray], note) -> Iterator:
    """The block's results in order; ``note`` told each decoded image's flags
    (computed with the block, from the frames normalisation reads anyway)."""
    if greys:
        digits, flags = normalise_flagged(greys)
        flags = flags.tolist()
    k = 0
    for tag, out in pending:
        if isinstance(out, str):
            yield tag, out
            continue
        if note is not None:
            note(tag, *flags[k])
        yield tag, digits[k]
        k += 1


def decode_one(data: bytes) -> np.ndarray | str:
    """The MNIST-form image of one file, or a reject reason (as :func:`decode_batch`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        out = decode_grey(data, fast=fast_enabled())
    return out if isinstance(out, str) else normalise([out])[0]


def to_mnist(img: Image.Image) -> np.ndarray:
    """Normalise one image the way MNIST was made.

    Parameters
    ----------
    img : PIL.Image.Image
        Any mode: L, LA, RGB, RGBA, P (with or without transparency), CMYK,
        I;16, I, F, 1 ...

    Returns
    -------
    numpy.ndarray
        (28, 28) uint8, light ink (255) on a dark background (0).

    Notes
    -----
    The image is turned to grey (transparent pixels become paper), then
    inverted if its 2-pixel border is mostly bright (dark ink on white
    paper). A 28x28 image is then returned as is. Any other size has its
    paper level subtracted and its contrast stretched to a peak of 255, is
    cropped to the bounding box of its ink, resized (Lanczos, aspect kept)
    so that its longer side is 20 px, and pasted into a 28x28 field with
    its centre of mass at (14, 14). An image without ink becomes all zeros.
    (:func:`decode_batch` does the same for many images at once.)
    """
    return normalise([grey(img)])[0]
