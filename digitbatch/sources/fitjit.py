"""The MNIST fit step compiled with numba: crop, stretch, Lanczos resize, centre.

:func:`.normalise.fit` does, for a group of same-size grey images, the paper
level, the contrast stretch, the crop to the ink's box, Pillow's Lanczos
resize to 20 px and the paste at the centre of mass. In numpy that is a
dozen whole-array passes plus a resize by matrix products over padded
crops; here it is one compiled loop per image touching each pixel a few
times. The arithmetic is the same, step for step, so the bytes are the
same (tests/test_sources_fitjit.py compares it with the numpy path, with
the single-image reference and, for the resize, with Pillow):

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

Importing numba and loading the kernels costs a worker process about a
second of CPU, which the compiled fit wins back only over some tens of
thousands of scans; so a process starts loading it (on a background
thread) only once it has fitted :data:`LOAD_AFTER` scans, and the numpy
path serves until the kernels are in (the bytes are the same either way):
a small job never pays the load, nor does any job's first chunk. The kernels are cached on disk (numba's ``cache=True``: beside
this file, or in the user's cache folder when that is read-only), so a
process loads them rather than compiles them. :func:`available` is False
when numba is not installed, or when ``DIGITBATCH_NO_JIT`` is set: the numpy
path is then the only one.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import threading

import numpy as np

from . import lanczos

log = logging.getLogger(__name__)

BOX = 20
SIZE = 28
CENTRE = 14.0
MIN_CONTRAST = 32
INK_THRESHOLD = 25

# status of each image after the first pass
BLANK, OURS, PILLOW = 0, 1, 2
# columns of the per-image info table
_STATUS, _PAPER, _PEAK, _TOP, _LEFT, _CH, _CW, _TH, _TW = range(9)
INFO_COLUMNS = 9


@functools.cache
def installed() -> bool:
    """Whether numba can be imported (without importing it)."""
    return importlib.util.find_spec("numba") is not None


def available() -> bool:
    """Whether the compiled fit may be used (numba installed, not switched off)."""
    return installed() and not os.environ.get("DIGITBATCH_NO_JIT")


# the kernels, callees first: compiled (or loaded from numba's cache) by _load
_KERNELS = ("_median_trunc", "_measure", "_dot_pass", "_line_pass", "_resize", "_paste", "_fit")
_loaded = threading.Event()
_start_lock = threading.Lock()
_loader: list[threading.Thread] = []
# scans fitted by this process with numpy before the kernels start loading
LOAD_AFTER = 4096
_fitted = [0]


def ready(n_scans: int = 0, *, start: bool = False) -> bool:
    """Whether the kernels are in, for a group of ``n_scans`` scans about to
    be fitted; once this process has asked for :data:`LOAD_AFTER` scans (or
    at once with ``start``), loading starts (a background thread) where
    :func:`available`."""
    if not available():
        return False
    if _loaded.is_set():
        return True
    _fitted[0] += n_scans
    if _fitted[0] < LOAD_AFTER and not start:
        return False
    with _start_lock:
        if not _loader:
            t = threading.Thread(target=_load_logged, name="digitbatch-fitjit", daemon=True)
            _loader.append(t)
            t.start()
    return False


def load() -> None:
    """Load the kernels now (tests; a caller that wants them at once)."""
    ready(start=True)
    if _loader:
        _loader[0].join()
    if not _loaded.is_set():
        raise RuntimeError("the compiled fit could not be loaded (see the log)")


def _load_logged() -> None:
    try:
        _load()
    except Exception:  # the numpy path goes on serving
        log.warning("the compiled MNIST fit could not be loaded; using numpy", exc_info=True)


def _load() -> None:
    import numba

    g = globals()
    for name in _KERNELS:
        g[name] = numba.njit(cache=True, nogil=True)(g[name])
    # every signature the fit uses, loaded (or compiled) on a tiny group
    grey = np.zeros((2, 24, 30), np.uint8)
    grey[:, 4:20, 10:14] = 200
    grey[1, 2:22, 3:27] = 255 - grey[1, 2:22, 3:27]
    edge = np.zeros((2, 8), np.uint8)
    _fit_compiled(grey, edge)
    _loaded.set()


# --- first pass: paper, peak, ink box, target size ------------------------------------


def _median_trunc(edge_row):
    """``int(np.median(edge_row))`` for uint8 values (a counting sort)."""
    counts = np.zeros(256, np.int64)
    for v in edge_row:
        counts[v] += 1
    n = edge_row.shape[0]
    lo_rank = (n - 1) // 2
    hi_rank = n // 2
    lo = -1
    hi = -1
    seen = 0
    for v in range(256):
        seen += counts[v]
        if lo < 0 and seen > lo_rank:
            lo = v
        if seen > hi_rank:
            hi = v
            break
    return (lo + hi) // 2


def _measure(grey, edge, info):
    """Fill ``info`` (G, INFO_COLUMNS) for each image of ``grey`` (G, h, w) uint8."""
    g, h, w = grey.shape
    for i in range(g):
        img = grey[i]
        paper = _median_trunc(edge[i])
        brightest = 0
        for y in range(h):
            for x in range(w):
                if img[y, x] > brightest:
                    brightest = img[y, x]
        peak = max(0, int(brightest) - paper)
        info[i, _PAPER] = paper
        info[i, _PEAK] = peak
        if peak < MIN_CONTRAST:
            info[i, _STATUS] = BLANK
            continue
        thr = paper + (INK_THRESHOLD * peak) // 255  # ink > thr  <=>  grey > paper + thr
        top = -1
        bottom = -1
        left = w
        right = -1
        for y in range(h):
            first = -1
            for x in range(w):
                if img[y, x] > thr:
                    first = x
                    break
            if first < 0:
                continue
            if top < 0:
                top = y
            bottom = y
            if first < left:
                left = first
            for x in range(w - 1, max(first, right) - 1, -1):
                if img[y, x] > thr:
                    if x > right:
                        right = x
                    break
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


# --- second pass: stretch, resize, centre ---------------------------------------------


def _dot_pass(src, rows, lo, cnt, off, coef, n_out, dst):
    """One Resample.c 8-bit pass along the rows: for each of ``rows`` rows,
    ``dst[r, j] = clip8((2**21 + sum_k src[r, lo[j] + k] * w_jk) >> 22)``.

    The sums are exact (every partial sum is an integer under 2**31, as in
    Resample.c's int32 arithmetic)."""
    for r in range(rows):
        for j in range(n_out):
            acc = 1 << 21
            a = lo[j]
            o = off[j]
            for k in range(cnt[j]):
                acc += src[r, a + k] * coef[o + k]
            v = acc >> 22
            dst[r, j] = 0 if v < 0 else (255 if v > 255 else v)


def _line_pass(src, length, lo, cnt, off, coef, n_out, acc, dst):
    """The same pass across the rows: ``dst[j, :length]`` from the rows
    ``lo[j]..`` of ``src`` (whole rows at a time, so the inner loop runs
    along a row)."""
    for j in range(n_out):
        a = lo[j]
        o = off[j]
        for x in range(length):
            acc[x] = 1 << 21
        for k in range(cnt[j]):
            c = coef[o + k]
            line = src[a + k]
            for x in range(length):
                acc[x] += line[x] * c
        for x in range(length):
            v = acc[x] >> 22
            dst[j, x] = 0 if v < 0 else (255 if v > 255 else v)


def _resize(src, ch, cw, th, tw, vfirst, hp, vp, p_first, lo, cnt, off, coef, acc, tmp, dst):
    """Lanczos-resize a crop into ``dst[:th, :tw]``, as Pillow (int32 arrays).

    Horizontal first: ``src[:cw, :ch]`` holds the crop transposed; else
    ``src[:ch, :cw]`` holds it as is. The first pass, over the whole crop,
    runs along rows (:func:`_line_pass`); the second, on at most 20 lines,
    is :func:`_dot_pass`. ``hp``/``vp``: the weight tables of the
    horizontal (cw -> tw) and vertical (ch -> th) passes: table ``p``
    covers the outputs ``p_first[p]..`` of ``lo`` (first input), ``cnt``
    (inputs), ``off`` (where its weights start in ``coef``).
    """
    hf = p_first[hp]
    vf = p_first[vp]
    if vfirst:
        _line_pass(src, cw, lo[vf:], cnt[vf:], off[vf:], coef, th, acc, tmp)  # tmp[:th, :cw]
        _dot_pass(tmp, th, lo[hf:], cnt[hf:], off[hf:], coef, tw, dst)
    else:
        _line_pass(src, ch, lo[hf:], cnt[hf:], off[hf:], coef, tw, acc, tmp)  # tmp[:tw, :ch]
        _dot_pass(tmp, tw, lo[vf:], cnt[vf:], off[vf:], coef, th, dst.T)  # dst[:th, :tw]


def _fit(grey, info, hpair, vpair, vfirst_rule, p_first, lo, cnt, off, coef, out):
    """Resize and centre every OURS image of ``grey`` into ``out`` (G, 28, 28) uint8."""
    g, h, w = grey.shape
    side = max(h, w, BOX)
    src = np.empty((side, side), np.int32)
    tmp = np.empty((side, side), np.int32)
    acc = np.empty(side, np.int32)
    dst = np.empty((BOX, BOX), np.int32)
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
        vfirst = vfirst_rule and (ch - th) > 0 and (ch - th) > (cw - tw) * 2
        img = grey[i]
        for y in range(ch):
            for x in range(cw):
                v = int(img[top + y, left + x]) - paper
                if v < 0:
                    v = 0
                px = np.int32(np.rint(v * gain))  # the contrast stretch, as numpy's
                if vfirst:
                    src[y, x] = px
                else:
                    src[x, y] = px
        _resize(src, ch, cw, th, tw, vfirst, hpair[i], vpair[i], p_first, lo, cnt, off, coef,
                acc, tmp, dst)
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


# --- the weight tables ------------------------------------------------------------------


@functools.cache
def _band(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output pixel: first input, number of inputs, and their integer
    weights (the nonzero span of :func:`.lanczos.weights`' column)."""
    m = lanczos.weights(in_size, out_size)
    lo = np.zeros(out_size, np.int64)
    cnt = np.zeros(out_size, np.int64)
    parts = []
    for j in range(out_size):
        nz = np.flatnonzero(m[:, j])
        if nz.size:
            lo[j], cnt[j] = nz[0], nz[-1] - nz[0] + 1
            parts.append(m[nz[0]:nz[-1] + 1, j].astype(np.int64))
    coef = np.concatenate(parts).astype(np.int32) if parts else np.zeros(0, np.int32)
    return lo, cnt, coef


def _tables(pairs: list[tuple[int, int]]):
    """The bands of ``pairs`` as flat arrays (see :func:`_resize`)."""
    p_first = np.zeros(len(pairs), np.int64)
    los, cnts, offs, coefs = [], [], [], []
    n_out = n_coef = 0
    for p, (a, b) in enumerate(pairs):
        lo, cnt, coef = _band(a, b)
        p_first[p] = n_out
        los.append(lo)
        cnts.append(cnt)
        offs.append(n_coef + np.concatenate([[0], np.cumsum(cnt)[:-1]]).astype(np.int64))
        coefs.append(coef)
        n_out += b
        n_coef += coef.size
    return (p_first, np.concatenate(los), np.concatenate(cnts), np.concatenate(offs),
            np.concatenate(coefs))


def _pair_ids(ins: np.ndarray, outs: np.ndarray, pairs: dict) -> np.ndarray:
    ids = np.zeros(ins.size, np.int64)
    for k, key in enumerate(zip(ins.tolist(), outs.tolist())):
        ids[k] = pairs.setdefault(key, len(pairs))
    return ids


# --- the entry point ---------------------------------------------------------------------


def fit(grey: np.ndarray, edge: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(When :func:`ready`.) Crop, stretch, resize and centre ``grey`` (G, h, w) uint8, ink light;
    ``edge`` its frame (:func:`.normalise.frame`), ink light too.

    Returns ``(out, info)``: ``out`` (G, 28, 28) uint8 holds every digit but
    those Pillow must resize (``info[:, 0] == PILLOW``, all zeros in ``out``);
    for those, ``info`` holds paper, peak, top, left, ch, cw, th and tw in
    columns 1..8.
    """
    if not _loaded.is_set():
        raise RuntimeError("fitjit.fit called before the kernels are loaded (see ready())")
    return _fit_compiled(grey, edge)


def _fit_compiled(grey: np.ndarray, edge: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    g = grey.shape[0]
    grey = np.ascontiguousarray(grey)
    edge = np.ascontiguousarray(edge)
    info = np.zeros((g, INFO_COLUMNS), np.int64)
    out = np.zeros((g, SIZE, SIZE), np.uint8)
    _measure(grey, edge, info)
    ours = info[:, _STATUS] == OURS
    if ours.any():
        pairs: dict[tuple[int, int], int] = {}
        hpair = np.zeros(g, np.int64)
        vpair = np.zeros(g, np.int64)
        hpair[ours] = _pair_ids(info[ours, _CW], info[ours, _TW], pairs)
        vpair[ours] = _pair_ids(info[ours, _CH], info[ours, _TH], pairs)
        tables = _tables(list(pairs))
        _fit(grey, info, hpair, vpair, lanczos.vertical_first_rule(), *tables, out)
    return out, info


def resize(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """The compiled Lanczos resize of one uint8 image (for tests): ``(out_h, out_w)`` uint8."""
    load()
    h, w = img.shape
    p_first, lo, cnt, off, coef = _tables([(w, out_w), (h, out_h)])
    side = max(h, w, out_h, out_w)
    tmp = np.empty((side, side), np.int32)
    acc = np.empty(side, np.int32)
    dst = np.empty((out_h, out_w), np.int32)
    vfirst = lanczos.vertical_first_rule() and (h - out_h) > 0 and (h - out_h) > (w - out_w) * 2
    src = np.ascontiguousarray(img if vfirst else img.T, dtype=np.int32)
    _resize(src, h, w, out_h, out_w, vfirst, 0, 1, p_first, lo, cnt, off, coef, acc, tmp, dst)
    return dst.astype(np.uint8)
