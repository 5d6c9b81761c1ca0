"""MNIST normalisation of scans compiled with numba: polarity, crop, stretch, Lanczos resize, centre.

:func:`fit` does, for a group of same-size raw grey images (not 28x28), all
of :mod:`.normalise`'s work: the polarity (from a histogram of the 2-pixel
frame, which also gives the paper level), the peak, the ink's box, the
contrast stretch (one 256-entry table per image that folds in the
inversion and the paper level), Pillow's Lanczos resize to 20 px and the
paste at the centre of mass. In numpy that is a dozen whole-array passes
plus a resize by matrix products over padded crops; here it is two compiled
loops per image (:func:`_measure`, :func:`_fit`), with no per-image numpy
call, touching each pixel a few times; an inverted image is never written
out inverted. The arithmetic is the same, step for step, so the bytes are
the same (tests/test_sources_fitjit.py compares it with the numpy path,
with the single-image reference and, for the resize, with Pillow):

- integer steps (medians, maxima, thresholds, boxes) are integers here too;
- float steps are the same IEEE operations in the same order (``rint`` of
  ``cw * (20 / max(ch, cw))``, ``255.0 / peak``, the centroid's quotient);
- the resize is Resample.c's own: each output pixel is
  ``clip8((2**21 + sum(pixel * weight)) >> 22)`` over the 22-bit fixed-point
  weights of :func:`.lanczos.weights` (computed in Python, with the C
  library's ``sin``, and cached), in Pillow's pass order
  (:func:`.lanczos.vertical_first_rule`).

Digits Pillow would box-reduce first (:func:`.lanczos.needs_pillow`) are
marked and left to the caller, as in the numpy path.

A process starts loading the kernels (:mod:`.jitload`: on a background
thread, once) only once it has fitted :data:`LOAD_AFTER` scans, and the
numpy path serves until they are in (the bytes are the same either way): a
small job never pays the load, and a large one starts it early in its first
chunk without waiting for it. The kernels
are cached on disk (numba's ``cache=True``: beside this file, or in the
user's cache folder when that is read-only), so a process loads them
rather than compiles them. Without numba, or with ``DIGITBATCH_NO_JIT``
set, the numpy path is the only one.
"""

from __future__ import annotations

import numpy as np

from . import jitload, lanczos

BOX = 20
SIZE = 28
CENTRE = 14.0
MIN_CONTRAST = 32
INK_THRESHOLD = 25

# status of each image after the first pass
BLANK, OURS, PILLOW = 0, 1, 2
# columns of the per-image info table
_STATUS, _PAPER, _PEAK, _TOP, _LEFT, _CH, _CW, _TH, _TW, _INV = range(10)
INFO_COLUMNS = 10
INVERTED = _INV


installed = jitload.installed
available = jitload.available

# the kernels, callees first: compiled (or loaded from numba's cache) by _load
_KERNELS = ("_row_inked", "_measure", "_line_pass", "_pad", "_resize", "_paste", "_fit")
# scans fitted by this process with numpy before the kernels start loading:
# a small job never loads them, and a large one has them early in its first
# chunk (the numpy path costs many times the compiled one per scan)
LOAD_AFTER = 1024


def ready(n_scans: int = 0, *, start: bool = False) -> bool:
    """Whether the kernels are in, for a group of ``n_scans`` scans about to
    be fitted; once this process has asked for :data:`LOAD_AFTER` scans (or
    at once with ``start``), loading starts (a background thread) where
    :func:`available`."""
    return LOADER.ready(n_scans, LOAD_AFTER, start=start)


def load() -> None:
    """Load the kernels now (tests; a caller that wants them at once)."""
    LOADER.wait()


def _load() -> None:
    jitload.compile_in(globals(), _KERNELS)
    # every signature the fit uses, loaded (or compiled) on a tiny group
    grey = np.zeros((2, 24, 30), np.uint8)
    grey[:, 4:20, 10:14] = 200
    grey[1] = 255 - grey[1]
    _fit_compiled(grey)


LOADER = jitload.KernelLoader("the compiled MNIST fit", _load)


# --- first pass: polarity, paper, peak, ink box, target size ---------------------------


def _measure(grey, flat, info):
    """Fill ``info`` (G, INFO_COLUMNS) for each raw image ``grey[i]`` (``flat``: the
    same, (G, h*w)), ink light or dark: the polarity from the frame's
    histogram (:func:`.normalise.frame`'s pixels, duplicates included), then
    paper, peak, ink box and target size of the image as normalisation sees
    it (inverted when its frame is mostly bright). Loops index with their
    own counters (whole rows), so that they vectorise."""
    g, h, w = grey.shape
    k = 2 if min(h, w) > 4 else 1
    hist = np.zeros((4, 256), np.int32)  # four interleaved: repeated values do not stall
    counts = np.zeros(256, np.int64)
    col = np.empty(w, np.int32)
    for i in range(g):
        img = grey[i]
        hist[:] = 0
        for y in range(k):
            for x in range(w):
                hist[x & 3, img[y, x]] += 1
        for y in range(h - k, h):
            for x in range(w):
                hist[x & 3, img[y, x]] += 1
        for y in range(k, h - k):
            for x in range(k):
                hist[(y + x) & 3, img[y, x]] += 1
            for x in range(w - k, w):
                hist[(y + x) & 3, img[y, x]] += 1
        n = 0
        bright = 0
        for v in range(256):
            c = hist[0, v] + hist[1, v] + hist[2, v] + hist[3, v]
            counts[v] = c
            n += c
            if v > 127:
                bright += c
        inv = bright * 2 > n
        info[i, _INV] = 1 if inv else 0
        # int(np.median) of the frame as normalisation sees it (inverted: value 255 - v)
        lo_rank = (n - 1) // 2
        hi_rank = n // 2
        lo = -1
        hi = -1
        seen = 0
        for u in range(256):
            seen += counts[255 - u] if inv else counts[u]
            if lo < 0 and seen > lo_rank:
                lo = u
            if seen > hi_rank:
                hi = u
                break
        paper = (lo + hi) // 2
        # work on raw values: an inverted image's brightest is 255 - the darkest
        # raw value, and its ink (255 - v > thr) is raw v < 255 - thr
        pix = flat[i]
        if inv:
            darkest = np.uint8(255)
            for j in range(h * w):
                v = pix[j]
                darkest = v if v < darkest else darkest
            brightest = 255 - int(darkest)
        else:
            top_v = np.uint8(0)
            for j in range(h * w):
                v = pix[j]
                top_v = v if v > top_v else top_v
            brightest = int(top_v)
        peak = max(0, brightest - paper)
        info[i, _PAPER] = paper
        info[i, _PEAK] = peak
        if peak < MIN_CONTRAST:
            info[i, _STATUS] = BLANK
            continue
        thr = paper + (INK_THRESHOLD * peak) // 255  # ink: (inverted) grey > thr
        # in raw values, ink is key(v) > limit, key being v or 255 - v
        top = 0
        while not _row_inked(img[top], inv, thr):
            top += 1
        bottom = h - 1
        while not _row_inked(img[bottom], inv, thr):
            bottom -= 1
        if inv:
            for x in range(w):
                col[x] = 255
            for y in range(top, bottom + 1):
                row = img[y]
                for x in range(w):
                    col[x] = min(col[x], np.int32(row[x]))  # (int32: vectorises)
            left = 0
            while 255 - col[left] <= thr:
                left += 1
            right = w - 1
            while 255 - col[right] <= thr:
                right -= 1
        else:
            for x in range(w):
                col[x] = 0
            for y in range(top, bottom + 1):
                row = img[y]
                for x in range(w):
                    col[x] = max(col[x], np.int32(row[x]))
            left = 0
            while col[left] <= thr:
                left += 1
            right = w - 1
            while col[right] <= thr:
                right -= 1
        ch = bottom - top + 1
        cw = right - left + 1
        scale = BOX / max(ch, cw)
        th = max(1, int(np.rint(ch * scale)))
        tw = max(1, int(np.rint(cw * scale)))
        info[i, _TOP] = top
        info[i, _LEFT] = left
        info[i, _CH] = ch
        info[i, _CW] = cw
        info[i, _TH] = th
        info[i, _TW] = tw
        reduce = (np.trunc(cw / tw / lanczos.REDUCING_GAP) > 1) or (
            np.trunc(ch / th / lanczos.REDUCING_GAP) > 1)
        info[i, _STATUS] = PILLOW if reduce else OURS


def _row_inked(row, inv, thr):
    """Whether the raw ``row`` holds ink (see :func:`_measure`)."""
    if inv:
        m = np.uint8(255)
        for x in range(row.shape[0]):
            v = row[x]
            m = v if v < m else m
        return 255 - int(m) > thr
    m = np.uint8(0)
    for x in range(row.shape[0]):
        v = row[x]
        m = v if v > m else m
    return int(m) > thr


# --- second pass: stretch, resize, centre ---------------------------------------------


def _line_pass(src, length, lo, cnt, off, coef, n_out, acc, dst, across):
    """One Resample.c 8-bit pass: output line ``j`` (of ``n_out``) is
    ``clip8((2**21 + sum_k src[lo[j] + k, :length] * w_jk) >> 22)``, written to
    ``dst[j, :length]``, or ``dst[:length, j]`` when ``across``. Whole lines of
    ``src`` at a time, so the inner loop runs along a line. The sums are exact
    in any order and grouping: int32 arithmetic wraps modulo 2**32 and every
    result (as every partial sum of Resample.c's int32 loop) is an integer
    under 2**31."""
    for j in range(n_out):
        a = lo[j]
        o = off[j]
        n = cnt[j]
        for x in range(length):
            acc[x] = 1 << 21
        k = 0
        while k + 4 <= n:  # four lines a time: a quarter of the passes over acc
            c0 = coef[o + k]
            c1 = coef[o + k + 1]
            c2 = coef[o + k + 2]
            c3 = coef[o + k + 3]
            l0 = src[a + k]
            l1 = src[a + k + 1]
            l2 = src[a + k + 2]
            l3 = src[a + k + 3]
            for x in range(length):
                acc[x] += l0[x] * c0 + l1[x] * c1 + l2[x] * c2 + l3[x] * c3
            k += 4
        while k < n:
            c = coef[o + k]
            line = src[a + k]
            for x in range(length):
                acc[x] += line[x] * c
            k += 1
        if across:
            for x in range(length):  # clipped in place (vectorised), then scattered
                v = acc[x] >> 22
                acc[x] = 0 if v < 0 else (255 if v > 255 else v)
            for x in range(length):
                dst[x, j] = acc[x]
        else:
            for x in range(length):
                v = acc[x] >> 22
                dst[j, x] = 0 if v < 0 else (255 if v > 255 else v)


def _pad(n):
    """``n`` rounded up to a multiple of 8: the line passes run whole vectors
    (their buffers have the room; the extra lanes are never read back)."""
    return (n + 7) // 8 * 8


def _resize(src, ch, cw, th, tw, vfirst, hp, vp, p_first, lo, cnt, off, coef, acc, tmp, dst):
    """Lanczos-resize a crop into ``dst[:th, :tw]``, as Pillow (int32 arrays).

    Horizontal first: ``src[:cw, :ch]`` holds the crop transposed; else
    ``src[:ch, :cw]`` holds it as is. Both passes are :func:`_line_pass`
    (the first writes its lines across ``tmp``, so the second reads lines
    too); lines are padded to whole vectors (:func:`_pad`), so every buffer
    is ``_pad`` of its side. ``hp``/``vp``: the weight tables of the horizontal (cw -> tw) and
    vertical (ch -> th) passes: table ``p`` covers the outputs
    ``p_first[p]..`` of ``lo`` (first input), ``cnt`` (inputs), ``off``
    (where its weights start in ``coef``).
    """
    hf = p_first[hp]
    vf = p_first[vp]
    if vfirst:
        _line_pass(src, _pad(cw), lo[vf:], cnt[vf:], off[vf:], coef, th, acc, tmp, True)  # tmp[:cw, :th]
        _line_pass(tmp, _pad(th), lo[hf:], cnt[hf:], off[hf:], coef, tw, acc, dst, True)  # dst[:th, :tw]
    else:
        _line_pass(src, _pad(ch), lo[hf:], cnt[hf:], off[hf:], coef, tw, acc, tmp, True)  # tmp[:ch, :tw]
        _line_pass(tmp, _pad(tw), lo[vf:], cnt[vf:], off[vf:], coef, th, acc, dst, False)  # dst[:th, :tw]


def _fit(grey, info, pair_of, vfirst_rule, p_first, lo, cnt, off, coef, out):
    """Stretch, resize and centre every OURS image of ``grey`` (raw, see
    :func:`_measure`) into ``out`` (G, 28, 28) uint8; ``pair_of[n, m]``: the
    weight table of the resize of ``n`` pixels to ``m`` (:data:`.lanczos.TABLES`)."""
    g, h, w = grey.shape
    side = _pad(max(h, w, BOX))
    src = np.zeros((side, side), np.int32)
    tmp = np.zeros((side, side), np.int32)
    acc = np.zeros(side, np.int32)
    dst = np.zeros((side, side), np.int32)
    lut = np.empty(256, np.int32)
    for i in range(g):
        if info[i, _STATUS] != OURS:
            continue
        paper = info[i, _PAPER]
        gain = 255.0 / info[i, _PEAK]
        top = info[i, _TOP]
        left = info[i, _LEFT]
        ch = info[i, _CH]
        cw = info[i, _CW]
        th = info[i, _TH]
        tw = info[i, _TW]
        flip = 255 if info[i, _INV] else 0
        # raw value -> inverted (or not), paper removed, contrast stretched (as numpy's rint)
        for v in range(256):
            d = (v ^ flip) - paper
            lut[v] = np.int32(np.rint((d if d > 0 else 0) * gain))
        vfirst = vfirst_rule and (ch - th) > 0 and (ch - th) > (cw - tw) * 2
        img = grey[i]
        if vfirst:
            for y in range(ch):
                row = img[top + y, left:left + cw]
                line = src[y]
                for x in range(cw):
                    line[x] = lut[row[x]]
        else:  # transposed, four rows at a time (four adjacent stores per column)
            y = 0
            while y + 4 <= ch:
                r0 = img[top + y, left:left + cw]
                r1 = img[top + y + 1, left:left + cw]
                r2 = img[top + y + 2, left:left + cw]
                r3 = img[top + y + 3, left:left + cw]
                for x in range(cw):
                    line = src[x]
                    line[y] = lut[r0[x]]
                    line[y + 1] = lut[r1[x]]
                    line[y + 2] = lut[r2[x]]
                    line[y + 3] = lut[r3[x]]
                y += 4
            while y < ch:
                row = img[top + y, left:left + cw]
                for x in range(cw):
                    src[x, y] = lut[row[x]]
                y += 1
        _resize(src, ch, cw, th, tw, vfirst, pair_of[cw, tw], pair_of[ch, th], p_first, lo, cnt,
                off, coef, acc, tmp, dst)
        _paste(dst, th, tw, out[i])


def _paste(dst, th, tw, field):
    """Paste ``dst[:th, :tw]`` into ``field`` (28, 28) with its centre of mass
    nearest (14, 14), as :func:`.normalise._centre`; a blank digit is left out."""
    total = 0
    sy = 0
    sx = 0
    for y in range(th):
        for x in range(tw):
            v = dst[y, x]
            total += v
            sy += v * y
            sx += v * x
    if total == 0:
        return
    # integer sums below 2**53: the float quotient is numpy's
    cy = float(sy) / float(total)
    cx = float(sx) / float(total)
    top = int(np.floor(CENTRE - cy + 0.5))
    left = int(np.floor(CENTRE - cx + 0.5))
    top = min(max(top, 0), SIZE - th)
    left = min(max(left, 0), SIZE - tw)
    for y in range(th):
        for x in range(tw):
            field[top + y, left + x] = dst[y, x]


# --- the entry point ---------------------------------------------------------------------


def fit(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(When :func:`ready`.) Normalise ``stack`` (G, h, w) uint8 raw grey images of
    one size (not 28x28), ink light or dark: polarity, crop, stretch, resize
    and centre, one compiled pass per image.

    Returns ``(out, info)``: ``out`` (G, 28, 28) uint8 holds every digit but
    those Pillow must resize (``info[:, 0] == PILLOW``, all zeros in ``out``);
    ``info[:, INVERTED]`` is 1 where the image was inverted (dark ink on
    light paper); for the PILLOW ones, ``info`` holds paper, peak, top, left,
    ch, cw, th and tw (of the inverted image) in columns 1..8.
    """
    if not LOADER.loaded.is_set():
        raise RuntimeError("fitjit.fit called before the kernels are loaded (see ready())")
    return _fit_compiled(stack)


def _fit_compiled(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    g, h, w = stack.shape
    stack = np.ascontiguousarray(stack)
    info = np.zeros((g, INFO_COLUMNS), np.int64)
    out = np.zeros((g, SIZE, SIZE), np.uint8)
    _measure(stack, stack.reshape(g, h * w), info)
    ours = info[:, _STATUS] == OURS
    if ours.any():
        sel = info[ours]
        tables = lanczos.TABLES.ensure(np.concatenate([sel[:, _CW], sel[:, _CH]]),
                                np.concatenate([sel[:, _TW], sel[:, _TH]]))
        _fit(stack, info, tables[0], lanczos.vertical_first_rule(), *tables[1:], out)
    return out, info


def resize(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """The compiled Lanczos resize of one uint8 image (for tests): ``(out_h, out_w)`` uint8."""
    load()
    h, w = img.shape
    p_first, lo, cnt, off, coef = lanczos.band_tables([(w, out_w), (h, out_h)])
    side = int(_pad(max(h, w, out_h, out_w)))
    tmp = np.zeros((side, side), np.int32)
    acc = np.zeros(side, np.int32)
    dst = np.zeros((side, side), np.int32)
    vfirst = lanczos.vertical_first_rule() and (h - out_h) > 0 and (h - out_h) > (w - out_w) * 2
    src = np.zeros((side, side), np.int32)
    if vfirst:
        src[:h, :w] = img
    else:
        src[:w, :h] = img.T
    _resize(src, h, w, out_h, out_w, vfirst, 0, 1, p_first, lo, cnt, off, coef, acc, tmp, dst)
    return dst[:out_h, :out_w].astype(np.uint8)
