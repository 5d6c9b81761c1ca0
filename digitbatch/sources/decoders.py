"""Image file bytes -> upright 2-D uint8 grey pixels, or a reject reason.

Two decoders, one result:

* fast: libspng (``pyspng``) for 8-bit grey and RGB PNGs, libjpeg-turbo
  (``simplejpeg``) for 8-bit Huffman-coded grey and YCbCr JPEGs, grey
  straight from the decoder. A file goes this way only when its header
  (:mod:`.headers`) shows a plain case with sizes inside every limit.
* Pillow: everything else (other formats and modes, 16-bit, palettes,
  alpha, CMYK, arithmetic JPEG, EXIF blocks the header parser does not
  vouch for), every file the fast decoder refuses, and so every reject
  and its reason.

Where both apply they give the same pixels (tests/test_sources_decoders.py
checks it on a corpus). The grey of a JPEG is its luma channel as the
decoder gives it (Pillow ``draft("L")``), and a JPEG is decoded at the
DCT-domain reduction of :func:`jpeg_reduction` (never decoding pixels
that the 20-px fit would throw away). EXIF orientation is applied as
``PIL.ImageOps.exif_transpose`` does.

Set ``DIGITBATCH_FAST_DECODE=0`` to decode everything with Pillow.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable

import numpy as np
from PIL import Image, UnidentifiedImageError

from .headers import JpegHeader, jpeg_header, png_header
from .members import open_formats

try:  # the fast decoders are dependencies, but a missing wheel only costs speed
    import pyspng
except ImportError:  # pragma: no cover - platform without a wheel
    pyspng = None
# pyspng.load builds a dict of formats on every call; its C module decodes
# straight to grey or RGB (where a pyspng release has it, else load is used).
_SPNG_C = getattr(pyspng, "c", None)
if not all(hasattr(_SPNG_C, a) for a in ("spng_decode_image_bytes", "SPNG_FMT_G8",
                                          "SPNG_FMT_RGB8")):
    _SPNG_C = None
try:
    import simplejpeg
except ImportError:  # pragma: no cover
    simplejpeg = None

MAX_SIDE = 16384
MAX_PIXELS = 2**24  # a 4096x4096 scan; far more than a digit needs
# A JPEG is decoded at 1/2, 1/4 or 1/8 scale (in the DCT, almost free) as
# long as its shorter side stays at least this long: a digit filling ~70% of
# it is still decoded at ~4x the 20 px it is fitted to. Less costs accuracy
# (README, "Decoding").
JPEG_MIN_SIDE = 112
WIDE_MODES = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N"})
ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
MAX_DETAIL = 160
# EXIF orientation -> Pillow transpose (ImageOps.exif_transpose)
TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def fast_enabled() -> bool:
    return os.environ.get("DIGITBATCH_FAST_DECODE", "1") != "0"


def fast_jpeg() -> bool:
    """Whether JPEGs may go the fast way (:func:`jpeg_pixels`)."""
    return simplejpeg is not None and fast_enabled()


def decode_grey(data: bytes, *, fast: bool = True, reduction: int | None = None
                ) -> np.ndarray | str:
    """The upright grey pixels of an image file, or a reject reason.

    ``fast=False`` decodes with Pillow only (the reference path);
    ``reduction`` (1, 2, 4 or 8) overrides :func:`jpeg_reduction` for JPEGs
    (to measure what a reduction costs in accuracy).
    """
    if fast and len(data) > 8:
        head = data[:2]
        out = None
        if head == b"\x89P" and pyspng is not None:
            out = _png_fast(data)
        elif head == b"\xff\xd8" and simplejpeg is not None:
            out = _jpeg_fast(data, reduction)
        if out is not None:
            return out
    return pillow_grey(data, reduction)


def jpeg_reduction(width: int, height: int) -> int:
    """1, 2, 4 or 8: the largest DCT scale-down that keeps the shorter side
    at least :data:`JPEG_MIN_SIDE` pixels (both decoders use it)."""
    side = min(width, height)
    for d in (8, 4, 2):
        if side // d >= JPEG_MIN_SIDE:
            return d
    return 1


def within_limits(width: int, height: int) -> bool:
    """Sizes the fast path may decode (anything else goes to Pillow to be judged)."""
    side, pixels = fast_limits()
    return 0 < width <= side and 0 < height <= side and width * height <= pixels


def _png_fast(data: bytes) -> np.ndarray | None:
    hdr = png_header(data)
    if hdr is None or hdr.bit_depth != 8 or hdr.colour_type not in (0, 2):
        return None
    if not within_limits(hdr.width, hdr.height):  # (png_header refuses a tRNS)
        return None
    grey = hdr.colour_type == 0
    try:
        if _SPNG_C is not None:
            arr = _SPNG_C.spng_decode_image_bytes(
                data, _SPNG_C.SPNG_FMT_G8 if grey else _SPNG_C.SPNG_FMT_RGB8)
            if grey and arr.ndim == 3 and arr.shape[2] == 1:
                arr = arr[:, :, 0]
        else:
            arr = pyspng.load(data, format="L" if grey else "RGB")
    except Exception:  # untrusted input: Pillow decides what is wrong
        return None
    if arr.shape != ((hdr.height, hdr.width) if grey else (hdr.height, hdr.width, 3)) \
            or arr.dtype != np.uint8:
        return None
    return arr if grey else rgb_to_l(arr)


def rgb_to_l(rgb: np.ndarray) -> np.ndarray:
    """Pillow's RGB -> L (ITU-R 601-2 luma in 16-bit fixed point, Convert.c)."""
    c = rgb.astype(np.uint32)
    return ((c[..., 0] * 19595 + c[..., 1] * 38470 + c[..., 2] * 7471 + 0x8000) >> 16).astype(
        np.uint8)


def _jpeg_fast(data: bytes, reduction: int | None = None) -> np.ndarray | None:
    hdr = jpeg_header(data)
    if hdr is None or not within_limits(hdr.width, hdr.height):
        return None
    arr = jpeg_pixels(data, hdr.height, hdr.width, reduction)
    return None if arr is None else orient(arr, hdr)


def jpeg_decoded_size(height: int, width: int, reduction: int | None = None) -> tuple[int, int]:
    """(height, width) of a ``height`` x ``width`` JPEG decoded at
    ``reduction`` (default :func:`jpeg_reduction`)."""
    d = reduction or jpeg_reduction(width, height)
    return -(-height // d), -(-width // d)


def jpeg_pixels(data, height: int, width: int, reduction: int | None = None
                ) -> np.ndarray | None:
    """The grey pixels (as stored, not turned) of a JPEG whose header says
    ``height`` x ``width`` and passed the fast path's checks, decoded at
    :func:`jpeg_reduction` by libjpeg-turbo; None when it fails (Pillow
    decides). ``data``: bytes or a memoryview of them."""
    want = jpeg_decoded_size(height, width, reduction)
    try:
        arr = simplejpeg.decode_jpeg(data, "GRAY", min_height=want[0], min_width=want[1],
                                     strict=True)
    except Exception:  # corrupt, truncated (strict: libjpeg's warnings too): Pillow decides
        return None
    if arr.shape[:2] != want:
        return None
    return arr[..., 0] if arr.ndim == 3 else arr


def jpeg_stack(data, spans: list[tuple[int, int]], out: np.ndarray,
               told: Callable[[int], object] | None = None) -> list[int]:
    """:func:`jpeg_pixels` of many JPEGs of one size, each into the next free
    row of ``out`` (C-contiguous uint8, at least ``len(spans)`` rows of their
    :func:`jpeg_decoded_size`): member ``i`` is ``data[a:a + n]`` for
    ``(a, n) = spans[i]`` (``data``: a memoryview of a run of members).
    Returns the members decoded, in order (row ``r`` holds member
    ``taken[r]``); the others failed (Pillow decides). ``told(i)`` is called
    before member ``i`` is decoded."""
    want = out.shape[1:]
    decode = simplejpeg.decode_jpeg
    taken: list[int] = []
    r = 0
    for i, (a, n) in enumerate(spans):
        if told is not None:
            told(i)
        try:
            arr = decode(data[a:a + n], "GRAY", False, False, want[0], want[1], 1, out[r], True)
        except Exception:  # corrupt, truncated (strict: libjpeg's warnings too): Pillow decides
            continue
        if arr.shape[:2] == want:
            taken.append(i)
            r += 1
    return taken


def fast_limits() -> tuple[int, int]:
    """(longest side, most pixels) the fast path decodes (:func:`within_limits`):
    ours, and Pillow's decompression-bomb limit as it is set now."""
    limit = Image.MAX_IMAGE_PIXELS
    return MAX_SIDE, MAX_PIXELS if limit is None else min(MAX_PIXELS, int(limit))


def orient(arr: np.ndarray, hdr: JpegHeader) -> np.ndarray:
    """``arr`` turned upright as its EXIF orientation says (exif_transpose)."""
    o = hdr.orientation
    if o == 1:
        return arr
    if o in (5, 6, 7, 8):
        arr = arr.T  # then the flips of 5-8 are those of 1-4, on the transpose
        o = {5: 1, 6: 2, 7: 3, 8: 4}[o]
    if o == 2:
        arr = arr[:, ::-1]
    elif o == 3:
        arr = arr[::-1, ::-1]
    elif o == 4:
        arr = arr[::-1]
    return np.ascontiguousarray(arr)


# --- Pillow ---------------------------------------------------------------------


def detail(exc: BaseException) -> str:
    """One short, reproducible line about ``exc``."""
    if isinstance(exc, UnidentifiedImageError):  # its text holds a memory address
        return "not a PNG, JPEG, BMP, TIFF, GIF, WebP or PNM image"
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 3] + "..."


def pillow_grey(data: bytes, reduction: int | None = None) -> np.ndarray | str:
    """Decode with Pillow (every check, every reject reason lives here)."""
    if not data:
        return "empty-image: zero-byte file"
    with warnings.catch_warnings():
        # Pillow's UserWarnings ("Corrupt EXIF data", ...): nothing a user can act on
        warnings.simplefilter("ignore", UserWarning)
        return _pillow_grey(data, reduction)


def _pillow_grey(data: bytes, reduction: int | None) -> np.ndarray | str:
    try:
        img = Image.open(io.BytesIO(data), formats=open_formats())
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return f"decompression-bomb: {detail(exc)}"
    except MemoryError:
        raise
    except Exception as exc:  # untrusted input: any parser failure is a reject
        return f"decode-error: {detail(exc)}"
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
            if img.format in ("JPEG", "MPO"):
                d = reduction or jpeg_reduction(w, h)
                img.draft("L", (w // d, h // d))
            img.load()
            method = _transpose_method(img)
            if method is not None:
                with img.transpose(method) as upright:
                    return grey(upright)
            return grey(img)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            return f"decompression-bomb: {detail(exc)}"
        except MemoryError:
            raise
        except Exception as exc:
            return f"decode-error: {detail(exc)}"


def _transpose_method(img: Image.Image) -> Image.Transpose | None:
    """What ``ImageOps.exif_transpose`` would do; nothing when the EXIF block
    cannot be read (its pixels are still good)."""
    try:
        return TRANSPOSE.get(img.getexif().get(0x0112, 1))
    except MemoryError:
        raise
    except Exception:
        return None


def grey(img: Image.Image) -> np.ndarray:
    """2-D uint8 luminance, alpha composited onto the paper colour."""
    mode = img.mode
    if mode == "L":  # the common case; tobytes is faster than __array_interface__
        return np.frombuffer(img.tobytes(), np.uint8).reshape(img.height, img.width)
    if mode in WIDE_MODES:
        return to_8bit(np.asarray(img), mode)
    if mode in ALPHA_MODES or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"))
        lum = np.asarray(rgba.convert("L"))
        return composite(lum, alpha)
    try:
        return np.asarray(img.convert("L"))
    except ValueError:  # a mode Pillow cannot turn into L directly (LAB, HSV)
        return np.asarray(img.convert("RGB").convert("L"))


def to_8bit(arr: np.ndarray, mode: str) -> np.ndarray:
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


def composite(lum: np.ndarray, alpha: np.ndarray) -> np.ndarray:
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
