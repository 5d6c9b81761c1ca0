"""The single-image MNIST normalisation as it was before batching: the reference.

A frozen copy of ``decode_one`` and ``to_mnist`` (and their helpers) from
digitbatch/sources/images.py before decoding and normalisation were done a
batch at a time (issue 16). The tests compare the batch path with it, bit for
bit, on a corpus of modes, sizes, polarities and alpha cases; do not change it
to make a test pass.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from digitbatch.sources.members import open_formats

MAX_SIDE = 16384
MAX_PIXELS = 2**24
BOX = 20
SIZE = 28
CENTRE = 14.0
MIN_CONTRAST = 32
INK_THRESHOLD = 25
_WIDE_MODES = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
_MAX_DETAIL = 160


def _detail(exc: BaseException) -> str:
    """One short, reproducible line about ``exc``."""
    if isinstance(exc, UnidentifiedImageError):  # its text holds a memory address
        return "not a PNG, JPEG, BMP, TIFF, GIF, WebP or PNM image"
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 3] + "..."


def decode_one(data: bytes) -> np.ndarray | str:
    """The MNIST-form image, or a reject reason."""
    if not data:
        return "empty-image: zero-byte file"
    try:
        img = Image.open(io.BytesIO(data), formats=open_formats())
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return f"decompression-bomb: {_detail(exc)}"
    except MemoryError:
        raise
    except Exception as exc:  # untrusted input: any parser failure is a reject
        return f"decode-error: {_detail(exc)}"
    with img:
        w, h = img.size
        if w <= 0 or h <= 0:
            return f"empty-image: size {w}x{h}"
        limit = Image.MAX_IMAGE_PIXELS
        if limit is not None and w * h > limit:
            return f"decompression-bomb: {w}x{h} is over Pillow's {limit}-pixel limit"
        if w > MAX_SIDE or h > MAX_SIDE or w * h > MAX_PIXELS:
            return f"bad-dimensions: {w}x{h} (at most {MAX_SIDE} a side, {MAX_PIXELS} pixels)"
        try:
            img.load()
            return to_mnist(img)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            return f"decompression-bomb: {_detail(exc)}"
        except MemoryError:
            raise
        except Exception as exc:
            return f"decode-error: {_detail(exc)}"


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
    """
    grey = _ink_on_dark(_grey(img))
    if grey.shape == (SIZE, SIZE):
        return np.array(grey, dtype=np.uint8, order="C")
    return _fit(grey)


def _grey(img: Image.Image) -> np.ndarray:
    """2-D uint8 luminance, alpha composited onto the paper colour."""
    mode = img.mode
    if mode == "L":  # the common case; tobytes is faster than __array_interface__
        return np.frombuffer(img.tobytes(), np.uint8).reshape(img.height, img.width)
    if mode in _WIDE_MODES:
        return _to_8bit(np.asarray(img), mode)
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"))
        lum = np.asarray(rgba.convert("L"))
        return _composite(lum, alpha)
    try:
        return np.asarray(img.convert("L"))
    except ValueError:  # a mode Pillow cannot turn into L directly (LAB, HSV)
        return np.asarray(img.convert("RGB").convert("L"))


def _to_8bit(arr: np.ndarray, mode: str) -> np.ndarray:
    """Scale 16-bit, 32-bit integer or float pixels to 0..255."""
    if mode == "F":
        arr = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    else:
        arr = arr.astype(np.int64)
    lo, hi = arr.min(), arr.max()
    if mode.startswith("I;16"):
        return ((arr * 255 + 32767) // 65535).astype(np.uint8)
    if mode == "F" and lo >= 0 and hi <= 1:  # float images in [0, 1]
        return np.rint(arr * 255).astype(np.uint8)
    if lo >= 0 and hi <= 255:  # 8-bit data in a wide container
        return np.rint(arr).astype(np.uint8)
    if mode == "I" and lo >= 0 and hi <= 65535:  # how Pillow often holds 16-bit data
        return ((arr * 255 + 32767) // 65535).astype(np.uint8)
    if hi == lo:
        return np.zeros(arr.shape, np.uint8)
    return np.rint((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _composite(lum: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Fill transparency with paper: white behind dark ink, black behind light."""
    if alpha.min() == 255:
        return lum
    a = alpha.astype(np.float32) / 255.0
    weight = float(a.sum())
    if weight == 0.0:
        return np.zeros(lum.shape, np.uint8)
    mean = float((lum * a).sum()) / weight
    # Mostly transparent: what shows is the ink, so paper is its opposite.
    # Mostly opaque: what shows is mostly paper, so transparency matches it.
    if a.mean() < 0.5:
        paper = 255.0 if mean < 128 else 0.0
    else:
        paper = 255.0 if mean >= 128 else 0.0
    return np.rint(lum * a + paper * (1.0 - a)).astype(np.uint8)


def _frame_mask_28() -> np.ndarray:
    mask = np.ones((SIZE, SIZE), bool)
    mask[2:-2, 2:-2] = False
    return mask


_FRAME_28 = _frame_mask_28()


def _frame(grey: np.ndarray) -> np.ndarray:
    """The outer 2-pixel frame (1 pixel for tiny images), flattened."""
    if grey.shape == (SIZE, SIZE):
        return grey[_FRAME_28]
    k = 2 if min(grey.shape) > 4 else 1
    return np.concatenate(
        [grey[:k].ravel(), grey[-k:].ravel(), grey[k:-k, :k].ravel(), grey[k:-k, -k:].ravel()]
    )


def _ink_on_dark(grey: np.ndarray) -> np.ndarray:
    """Invert dark-on-light images (a mostly bright border means paper)."""
    frame = _frame(grey)
    if np.count_nonzero(frame > 127) * 2 > frame.size:
        return 255 - grey
    return grey


def _fit(grey: np.ndarray) -> np.ndarray:
    """Crop to the ink, fit to 20 px, centre the mass in 28x28 (as MNIST)."""
    out = np.zeros((SIZE, SIZE), np.uint8)
    paper = int(np.median(_frame(grey)))
    ink = np.clip(grey.astype(np.int16) - paper, 0, None)
    peak = int(ink.max())
    if peak < MIN_CONTRAST:
        return out
    rows = np.flatnonzero((ink > INK_THRESHOLD * peak / 255).any(axis=1))
    cols = np.flatnonzero((ink > INK_THRESHOLD * peak / 255).any(axis=0))
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    crop = np.rint(crop * (255.0 / peak)).astype(np.uint8)
    h, w = crop.shape
    scale = BOX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = Image.fromarray(crop).resize(
        size, Image.Resampling.LANCZOS, reducing_gap=3.0
    )
    digit = np.asarray(small)
    total = float(digit.sum())
    if total == 0.0:
        return out
    h, w = digit.shape
    cy = float(digit.sum(axis=1) @ np.arange(h)) / total
    cx = float(digit.sum(axis=0) @ np.arange(w)) / total
    top = min(max(int(np.floor(CENTRE - cy + 0.5)), 0), SIZE - h)
    left = min(max(int(np.floor(CENTRE - cx + 0.5)), 0), SIZE - w)
    out[top : top + h, left : left + w] = digit
    return out
