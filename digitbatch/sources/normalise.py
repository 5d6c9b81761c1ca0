"""Grey images -> MNIST-form digits, a batch at a time.

What MNIST normalisation is (one image at a time, as it is documented in
:func:`digitbatch.sources.images.to_mnist`): invert dark-on-light images
(a mostly bright 2-pixel border means paper); a 28x28 image is then kept
as is; any other size has its paper level subtracted and its contrast
stretched to a peak of 255, is cropped to the bounding box of its ink,
resized (Lanczos, aspect kept) so that its longer side is 20 px, and pasted
into a 28x28 field with its centre of mass at (14, 14); an image without
ink becomes all zeros.

This module does that for many images at once: images are grouped by
size. A group of 28x28 images is one copy (the stack), its frames read
through a fixed index and the inversion one xor in place. Other sizes go
to the compiled kernels of :mod:`.fitjit` once they are loaded (one
compiled pass per image), and until then each step is one numpy operation
over the group, the Lanczos resize included (:mod:`.lanczos`,
bit-identical to Pillow's). The few digits whose ink box is 6x or more
larger than 20 px (which Pillow box-reduces before resampling) are resized
by Pillow itself. :func:`normalise_flagged` also tells, per image, whether
it was inverted and resized (the drift flags of scoring), from the same
frames. The result is bit-identical to normalising each image alone
(tests/test_sources_normalise.py compares it with the single-image
reference on a corpus of modes, sizes, polarities and alpha cases).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from . import fitjit, lanczos

BOX = 20  # MNIST fits each digit's longer side to 20 px ...
SIZE = 28  # ... and centres its mass in a 28x28 field
CENTRE = 14.0
# Below this peak (after removing the paper level) an image counts as blank,
# so that paper noise is not stretched into a digit.
MIN_CONTRAST = 32
INK_THRESHOLD = 25  # ~10% of full ink: what counts for the bounding box
# Images of one size are fitted this many pixels at a time, which bounds
# the float64 work arrays (8 bytes a pixel, a few of them) whatever the batch.
FIT_PIXELS = 2**20
# Groups that need no float work arrays (28x28 images, and scans once the
# compiled fit is in) are taken this many pixels at a time: the copy of
# their stack is the only extra memory, and each part costs a few calls.
STACK_PIXELS = 2**22
# Crops are resized this many at a time, sorted by size.
RUN = 64


def normalise(greys: list[np.ndarray]) -> np.ndarray:
    """MNIST-form digits of 2-D uint8 grey images.

    Parameters
    ----------
    greys : list of (h, w) uint8 arrays
        Any sizes, in any mix; ink light or dark.

    Returns
    -------
    (N, 28, 28) uint8
        In input order, light ink on black.
    """
    return normalise_flagged(greys)[0]


def normalise_flagged(greys: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """:func:`normalise`, and ``(N, 2)`` bool: per image, whether it was inverted
    (dark ink on light paper) and whether it was resized (not 28x28), as
    :func:`polarity_and_size` tells for one image."""
    n = len(greys)
    flags = np.zeros((n, 2), bool)
    shapes = {g.shape for g in greys}
    if len(shapes) == 1:  # one size (the usual archive): no regrouping
        (h, w), = shapes
        step = _part_size(h, w)
        if n <= step:
            out = _normalise_part(greys, h, w, flags)
            return out, flags
        groups = {(h, w): list(range(n))}
    else:
        groups = {}
        for i, g in enumerate(greys):
            groups.setdefault(g.shape, []).append(i)
    out = np.empty((n, SIZE, SIZE), np.uint8)
    for (h, w), idx in groups.items():
        step = _part_size(h, w)
        for a in range(0, len(idx), step):
            part = idx[a:a + step]
            part_flags = np.zeros((len(part), 2), bool)
            out[part] = _normalise_part([greys[i] for i in part], h, w, part_flags)
            flags[part] = part_flags
    return out, flags


def normalise_stack(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`normalise_flagged` of ``stack`` (N, h, w) uint8 grey images of one
    size, without a step per image (``stack`` may be changed)."""
    n, h, w = stack.shape
    flags = np.zeros((n, 2), bool)
    out = np.empty((n, SIZE, SIZE), np.uint8)
    step = _part_size(h, w)
    for a in range(0, n, step):
        out[a:a + step] = _normalise_part(stack[a:a + step], h, w, flags[a:a + step])
    return out, flags


def _part_size(h: int, w: int) -> int:
    """How many ``(h, w)`` images :func:`normalise_flagged` takes at a time."""
    light = (h, w) == (SIZE, SIZE) or fitjit.ready()
    return max(1, (STACK_PIXELS if light else FIT_PIXELS) // (h * w))


def _normalise_part(greys: list[np.ndarray] | np.ndarray, h: int, w: int,
                    flags: np.ndarray) -> np.ndarray:
    """``(G, 28, 28)`` digits of ``G`` grey images of one size ``(h, w)`` (a list,
    or a stack it may change); fills ``flags`` (G, 2)."""
    if isinstance(greys, np.ndarray):
        stack = greys
    else:
        stack = np.concatenate(greys).reshape(len(greys), h, w) if len(greys) > 1 else greys[0][None]
    if (h, w) == (SIZE, SIZE):
        # the fast path: one copy (the stack), the frame through an index, xor in place
        edge = stack.reshape(len(greys), SIZE * SIZE)[:, _FRAME28]
        invert = np.count_nonzero(edge > 127, axis=1) * 2 > _FRAME28.size
        flags[:, 0] = invert
        if len(greys) == 1:
            stack = stack.copy()
        np.bitwise_xor(stack, (invert.view(np.uint8) * np.uint8(255))[:, None, None], out=stack)
        return stack
    flags[:, 1] = True
    if fitjit.ready(len(greys)):
        out, info = fitjit.fit(stack)
        flags[:, 0] = info[:, fitjit.INVERTED] != 0
        _pillow_rest(stack, out, info)
        return out
    out, invert = normalise_group(stack, with_invert=True)
    flags[:, 0] = invert
    return out


def frame(stack: np.ndarray) -> np.ndarray:
    """``(G, F)``: the outer 2-pixel frame of each image (1 pixel for images
    with a side of 4 or less; the same pixels as the single-image frame)."""
    g, h, w = stack.shape
    k = 2 if min(h, w) > 4 else 1
    return np.concatenate([stack[:, :k].reshape(g, -1), stack[:, -k:].reshape(g, -1),
                           stack[:, k:-k, :k].reshape(g, -1),
                           stack[:, k:-k, -k:].reshape(g, -1)], axis=1)


# where the frame of a 28x28 image lies in its 784 pixels
_FRAME28 = frame(np.arange(SIZE * SIZE).reshape(1, SIZE, SIZE))[0]


def polarity_and_size(grey: np.ndarray) -> tuple[bool, bool]:
    """Whether :func:`normalise` inverts the 2-D grey image ``grey`` (dark ink on
    light paper) and whether it resizes it (not 28x28): its frame only, cheap.
    (:func:`normalise_flagged` tells both for a batch.)"""
    edge = frame(grey[None])[0]
    return bool(np.count_nonzero(edge > 127) * 2 > edge.size), grey.shape != (SIZE, SIZE)


def normalise_group(stack: np.ndarray, *, with_invert: bool = False):
    """``(G, 28, 28)`` digits of ``G`` grey images of one size ``(G, h, w)`` uint8,
    in numpy (and, ``with_invert``, which of them were inverted)."""
    edge = frame(stack)
    invert = np.count_nonzero(edge > 127, axis=1) * 2 > edge.shape[1]
    flip = np.where(invert, 255, 0).astype(np.uint8)  # 255 - x is x ^ 255 in uint8
    grey = stack ^ flip[:, None, None]
    if stack.shape[1:] != (SIZE, SIZE):
        edge ^= flip[:, None]
        grey = fit_numpy(grey, edge)
    return (grey, invert) if with_invert else grey


def _pillow_rest(stack: np.ndarray, out: np.ndarray, info: np.ndarray) -> None:
    """The digits the compiled fit left to Pillow (box-reduced before resampling)."""
    rest = np.flatnonzero(info[:, 0] == fitjit.PILLOW)
    if not rest.size:
        return
    paper, peak, top, left, ch, cw, th, tw = info[rest, 1:9].T
    digits = np.zeros((rest.size, BOX, BOX), np.uint8)
    for k, j in enumerate(rest.tolist()):
        img = stack[j] ^ np.uint8(255) if info[j, fitjit.INVERTED] else stack[j]
        _pillow_resize(img, int(paper[k]), int(peak[k]), int(top[k]), int(left[k]),
                       int(ch[k]), int(cw[k]), int(th[k]), int(tw[k]), digits[k])
    _centre(digits, th, tw, out, rest)


def _pillow_resize(img: np.ndarray, paper: int, peak: int, top: int, left: int, ch: int,
                   cw: int, th: int, tw: int, into: np.ndarray) -> None:
    """A digit Pillow box-reduces before resampling, resized by Pillow into ``into``."""
    ink = np.maximum(img[top:top + ch, left:left + cw], np.uint8(paper)) - np.uint8(paper)
    crop = np.rint(ink * (255.0 / peak)).astype(np.uint8)
    small = Image.fromarray(crop).resize((tw, th), Image.Resampling.LANCZOS,
                                         reducing_gap=lanczos.REDUCING_GAP)
    into[:th, :tw] = np.asarray(small)


def fit_numpy(grey: np.ndarray, edge: np.ndarray) -> np.ndarray:
    """:func:`fit` in numpy: each step one operation over the group."""
    g, h, w = grey.shape
    out = np.zeros((g, SIZE, SIZE), np.uint8)
    paper = np.median(edge, axis=1).astype(np.uint8)  # (int() of the median)
    # ink above the paper level, clipped at 0 (in uint8: max(grey, paper) - paper)
    ink = np.maximum(grey, paper[:, None, None])
    ink -= paper[:, None, None]
    peak = ink.reshape(g, -1).max(axis=1).astype(np.int64)
    live = np.flatnonzero(peak >= MIN_CONTRAST)
    if not live.size:
        return out
    if live.size < g:
        ink, peak = ink[live], peak[live]
    # ink > 25 * peak / 255 in integers (the float quotient is never within
    # rounding of an integer it is not equal to)
    inked = ink > ((INK_THRESHOLD * peak) // 255).astype(np.uint8)[:, None, None]
    rows, cols = inked.any(axis=2), inked.any(axis=1)
    top = rows.argmax(axis=1)
    left = cols.argmax(axis=1)
    ch = h - rows[:, ::-1].argmax(axis=1) - top
    cw = w - cols[:, ::-1].argmax(axis=1) - left
    scale = BOX / np.maximum(ch, cw)
    tw = np.maximum(1, np.rint(cw * scale)).astype(np.int64)
    th = np.maximum(1, np.rint(ch * scale)).astype(np.int64)
    gain = 255.0 / peak  # the contrast stretch: rint(crop * (255.0 / peak)), as per image
    digits = np.zeros((live.size, BOX, BOX), np.uint8)
    by_pillow = (np.trunc(cw / tw / lanczos.REDUCING_GAP) > 1) | (
        np.trunc(ch / th / lanczos.REDUCING_GAP) > 1)
    ours = np.flatnonzero(~by_pillow)
    # sorted by crop size and resized a run at a time: each run's crops pad
    # to nearly one size
    ours = ours[np.lexsort((cw[ours], ch[ours]))]
    boxes = np.stack([top, left, ch, cw], axis=1).tolist()
    for a in range(0, ours.size, RUN):
        run = ours[a:a + RUN]
        crops = np.zeros((run.size, int(ch[run].max()), int(cw[run].max())))
        for k, j in enumerate(run.tolist()):
            t, lf, hh, ww = boxes[j]
            crops[k, :hh, :ww] = ink[j, t:t + hh, lf:lf + ww]
        crops *= gain[run, None, None]
        np.rint(crops, out=crops)
        digits[run] = lanczos.resize_group(crops, np.stack([ch[run], cw[run]], axis=1),
                                           np.stack([th[run], tw[run]], axis=1), (BOX, BOX))
    for j in np.flatnonzero(by_pillow).tolist():
        t, lf, hh, ww = int(top[j]), int(left[j]), int(ch[j]), int(cw[j])
        crop = np.rint(ink[j, t:t + hh, lf:lf + ww] * gain[j]).astype(np.uint8)
        small = Image.fromarray(crop).resize((int(tw[j]), int(th[j])), Image.Resampling.LANCZOS,
                                             reducing_gap=lanczos.REDUCING_GAP)
        digits[j, :th[j], :tw[j]] = np.asarray(small)
    _centre(digits, th, tw, out, live)
    return out


def _centre(digits: np.ndarray, th: np.ndarray, tw: np.ndarray, out: np.ndarray,
            live: np.ndarray) -> None:
    """Paste each ``(th, tw)`` digit (top left of ``digits``) into ``out[live]``
    with its centre of mass nearest (14, 14); blank digits stay zeros."""
    mass = digits.astype(np.float64)  # integer sums: exact in any order
    pos = np.arange(BOX, dtype=np.float64)
    by_row = mass.sum(axis=2)
    total = by_row.sum(axis=1)
    cy = (by_row @ pos) / np.where(total > 0, total, 1.0)
    cx = (mass @ pos).sum(axis=1) / np.where(total > 0, total, 1.0)
    top = np.clip(np.floor(CENTRE - cy + 0.5).astype(np.int64), 0, SIZE - th)
    left = np.clip(np.floor(CENTRE - cx + 0.5).astype(np.int64), 0, SIZE - tw)
    for i, j, t, lf, h, w in zip(np.flatnonzero(total > 0).tolist(), live[total > 0].tolist(),
                                 top[total > 0].tolist(), left[total > 0].tolist(),
                                 th[total > 0].tolist(), tw[total > 0].tolist()):
        out[j, t:t + h, lf:lf + w] = digits[i, :h, :w]
