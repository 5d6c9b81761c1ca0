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

import numpy as np
from PIL import Image

from .archive import CONTAINER_KINDS, detect_image_source, iter_members
from .base import Batch, label_array
from .decoders import MAX_PIXELS, MAX_SIDE, decode_grey, fast_enabled, grey
from .members import DEFAULT_MAX_MEMBER_BYTES, IMAGE_EXTENSIONS, Member
from .normalise import normalise
from .taskdecode import decode_members

__all__ = [
    "DEFAULT_MAX_MEMBER_BYTES",
    "IMAGE_EXTENSIONS",
    "CONTAINER_KINDS",
    "MAX_PIXELS",
    "MAX_SIDE",
    "Member",
    "decode_batch",
    "decode_one",
    "detect_image_source",
    "iter_members",
    "to_mnist",
]

log = logging.getLogger(__name__)

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
    got = decode_members([Member(key, data, label) for key, data, label in items])
    rejects = [r for _, r, _ in got.rejects]
    if rejects:
        log.debug("decode_batch: %d of %d items rejected", len(rejects), len(items))
    at = np.flatnonzero(got.ok)
    if not at.size:
        return Batch.empty(rejects)
    return Batch(got.digits[at], label_array([got.folder[j] for j in at], at.size),
                 [got.keys[j] for j in at], rejects)


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
