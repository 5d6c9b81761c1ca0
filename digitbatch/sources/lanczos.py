"""Pillow's Lanczos resize of 8-bit grey images, reproduced bit for bit over a batch.

MNIST normalisation fits each digit's ink box to 20 px with
``Image.resize(size, LANCZOS)`` (:mod:`.normalise`). Called once per image
that costs a few Python and C round trips per digit; this module does the
same arithmetic for a whole group of images in two batched matrix products.

Pillow (``libImaging/Resample.c``, 8 bits per channel) resizes in two
passes, skipping a pass whose size does not change. Horizontal goes first,
except (Pillow 13 on) when the height shrinks by more than twice as many
pixels as the width: then vertical goes first. Which rule the installed
Pillow follows is asked of Pillow once (:func:`vertical_first_rule`). Each
output pixel is ``clip8((2**21 + sum(pixel * weight)) >> 22)``
where the weights are the filter's, normalised and rounded to 22-bit fixed
point; the horizontal pass is rounded and clipped to 8 bits before the
vertical one. :func:`weights` computes those integer weights with the same
double-precision steps (``math.sin``, as the C library's ``sin``), and
:func:`resize_group` applies them as float64 matrix products: every product
and partial sum is an integer below 2**53, so the sums are exact in any
order and the result equals Pillow's. tests/test_sources_lanczos.py checks
it against Pillow for every pair of sizes normalisation uses.

Only the plain resize is reproduced: Pillow's ``reducing_gap`` first
box-reduces an image 6x or more larger than its target, and callers leave
such images to Pillow (:func:`needs_pillow`).
"""

from __future__ import annotations

import functools
import math
import threading

import numpy as np

PRECISION_BITS = 32 - 8 - 2  # as Resample.c
_ONE = float(1 << PRECISION_BITS)
_HALF = float(1 << (PRECISION_BITS - 1))
_SUPPORT = 3.0  # Lanczos-3
REDUCING_GAP = 3.0  # what normalisation passes to Image.resize
_MAX_OUT = 20  # the longest side normalisation resizes to (the tables' second index)


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


def _lanczos(x: float) -> float:
    if -3.0 <= x < 3.0:
        return _sinc(x) * _sinc(x / 3)
    return 0.0


@functools.cache
def weights(in_size: int, out_size: int) -> np.ndarray:
    """``(in_size, out_size)`` float64: column ``j`` holds the fixed-point
    weights of output pixel ``j`` over the input pixels (Resample.c's
    ``precompute_coeffs`` then ``normalize_coeffs_8bpc``). The identity
    (a pass Pillow skips) when the sizes are equal."""
    m = np.zeros((in_size, out_size))
    if in_size == out_size:
        m[np.arange(in_size), np.arange(in_size)] = _ONE
        m.flags.writeable = False
        return m
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = _SUPPORT * filterscale
    inv_filterscale = 1.0 / filterscale
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        ws = [_lanczos((x + xmin - center + 0.5) * inv_filterscale) for x in range(xmax)]
        ww = 0.0
        for w in ws:
            ww += w
        if ww != 0.0:
            ws = [w / ww for w in ws]
        for x, w in enumerate(ws):
            m[xmin + x, xx] = int(-0.5 + w * _ONE) if w < 0 else int(0.5 + w * _ONE)
    m.flags.writeable = False
    return m


@functools.cache
def vertical_first_rule() -> bool:
    """Whether this Pillow runs the vertical pass first when the height
    shrinks by more than twice as many pixels as the width (Pillow >= 13)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (12, 9), dtype=np.uint8)
    lanczos = Image.Resampling.LANCZOS
    one = np.asarray(Image.fromarray(img).resize((10, 5), lanczos))
    v_first = np.asarray(Image.fromarray(img).resize((9, 5), lanczos).resize((10, 5), lanczos))
    h_first = np.asarray(Image.fromarray(img).resize((10, 12), lanczos).resize((10, 5), lanczos))
    if np.array_equal(one, v_first) == np.array_equal(one, h_first):
        raise RuntimeError("cannot tell the pass order of this Pillow's resize")
    return bool(np.array_equal(one, v_first))


def _stacked(ins: np.ndarray, outs: np.ndarray, n_in: int, n_out: int, *,
             transpose: bool) -> np.ndarray:
    """``(G, n_in, n_out)`` weights (``(G, n_out, n_in)`` transposed), zero padded."""
    keys, which = np.unique(ins.astype(np.int64) * (n_out + 1) + outs, return_inverse=True)
    table = np.zeros((len(keys), n_in, n_out))
    for p, key in enumerate(keys.tolist()):
        a, b = divmod(key, n_out + 1)
        table[p, :a, :b] = weights(a, b)
    if transpose:
        table = table.transpose(0, 2, 1)
    return table[which.ravel()]


def vertical_first(h: np.ndarray, w: np.ndarray, oh: np.ndarray, ow: np.ndarray) -> np.ndarray:
    """Per image: whether Pillow resizes ``(h, w) -> (oh, ow)`` vertically first."""
    first = ((h - oh) > 0) & ((h - oh) > (w - ow) * 2)
    return first if vertical_first_rule() else np.zeros_like(first)


def needs_pillow(in_w: int, in_h: int, out_w: int, out_h: int) -> bool:
    """True when ``Image.resize(..., reducing_gap=3.0)`` would box-reduce first."""
    return (int(in_w / out_w / REDUCING_GAP) > 1) or (int(in_h / out_h / REDUCING_GAP) > 1)


def _clip8(acc: np.ndarray) -> np.ndarray:
    """Resample.c's ``clip8``: ``(acc + 2**21) >> 22`` clipped to 0..255, in place."""
    acc += _HALF
    acc *= 1.0 / _ONE  # a power of two: exact
    np.floor(acc, out=acc)
    np.clip(acc, 0.0, 255.0, out=acc)
    return acc


def resize_group(crops: np.ndarray, in_sizes: np.ndarray, out_sizes: np.ndarray,
                 out_shape: tuple[int, int]) -> np.ndarray:
    """Resize the top-left region of each image, as Pillow's Lanczos would.

    Parameters
    ----------
    crops : (G, H, W) float64
        8-bit values; image ``i`` is ``crops[i, :h_i, :w_i]`` (the rest is
        ignored, and must only be finite).
    in_sizes, out_sizes : (G, 2) int
        ``height, width`` of each image and of its result (at most ``out_shape``).
    out_shape : (int, int)
        The common output shape: each result sits at its top left, zeros
        around it.

    Returns
    -------
    (G, *out_shape) uint8
        ``Image.fromarray(image).resize((w, h), LANCZOS)`` for each image
        (the caller leaves :func:`needs_pillow` cases to Pillow).
    """
    n, ch, cw = crops.shape
    oh, ow = out_shape
    wx = _stacked(in_sizes[:, 1], out_sizes[:, 1], cw, ow, transpose=False)
    wy = _stacked(in_sizes[:, 0], out_sizes[:, 0], ch, oh, transpose=True)
    # Zero weights outside each image and each result's size: the padding
    # adds exact zeros, and the zero rows and columns of a result come out
    # as clip8(2**21) = 0.
    vf = vertical_first(in_sizes[:, 0], in_sizes[:, 1], out_sizes[:, 0], out_sizes[:, 1])
    if not vf.any():
        return _clip8(np.matmul(wy, _clip8(np.matmul(crops, wx)))).astype(np.uint8)
    if vf.all():
        return _clip8(np.matmul(_clip8(np.matmul(wy, crops)), wx)).astype(np.uint8)
    out = np.empty((n, oh, ow), np.uint8)
    hf = ~vf
    out[hf] = _clip8(np.matmul(wy[hf], _clip8(np.matmul(crops[hf], wx[hf]))))
    out[vf] = _clip8(np.matmul(_clip8(np.matmul(wy[vf], crops[vf])), wx[vf]))
    return out


# --- integer band tables (for the compiled resize of .fitjit) ---------------------------


@functools.cache
def band(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output pixel: first input, number of inputs, and their integer
    weights (the nonzero span of :func:`.lanczos.weights`' column)."""
    m = weights(in_size, out_size)
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


class BandTables:
    """The weight tables of every resize seen so far by this process, as flat
    arrays (as the compiled resize of :mod:`.fitjit` reads them), and ``pair_of[n, m]``: the table of ``n -> m``
    pixels (-1: not built yet)."""

    def __init__(self):
        self.pairs: list[tuple[int, int]] = []
        self.pair_of = np.full((1, _MAX_OUT + 1), -1, np.int64)
        self.flat = (np.zeros(0, np.int64),) * 4 + (np.zeros(0, np.int32),)
        self.lock = threading.Lock()

    def ensure(self, ins: np.ndarray, outs: np.ndarray):
        """``(pair_of, p_first, lo, cnt, off, coef)`` covering every ``ins[k] -> outs[k]``."""
        with self.lock:
            top = int(ins.max()) if ins.size else 0
            if top >= self.pair_of.shape[0]:
                grown = np.full((max(top + 1, 2 * self.pair_of.shape[0]), _MAX_OUT + 1), -1, np.int64)
                grown[:self.pair_of.shape[0]] = self.pair_of
                self.pair_of = grown
            missing = self.pair_of[ins, outs] < 0
            if missing.any():
                keys = np.unique(ins[missing] * (_MAX_OUT + 1) + outs[missing])
                for key in keys.tolist():
                    a, b = divmod(key, _MAX_OUT + 1)
                    self.pair_of[a, b] = len(self.pairs)
                    self.pairs.append((a, b))
                self.flat = band_tables(self.pairs)
            return (self.pair_of, *self.flat)


def band_tables(pairs: list[tuple[int, int]]):
    """The bands of ``pairs`` as flat arrays (as the compiled resize of :mod:`.fitjit` reads them)."""
    p_first = np.zeros(len(pairs), np.int64)
    los, cnts, offs, coefs = [], [], [], []
    n_out = n_coef = 0
    for p, (a, b) in enumerate(pairs):
        lo, cnt, coef = band(a, b)
        p_first[p] = n_out
        los.append(lo)
        cnts.append(cnt)
        offs.append(n_coef + np.concatenate([[0], np.cumsum(cnt)[:-1]]).astype(np.int64))
        coefs.append(coef)
        n_out += b
        n_coef += coef.size
    return (p_first, np.concatenate(los), np.concatenate(cnts), np.concatenate(offs),
            np.concatenate(coefs))


# this process's tables, shared by its threads
TABLES = BandTables()
