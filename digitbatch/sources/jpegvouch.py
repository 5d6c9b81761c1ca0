"""Plain JPEG members of a tar run, vouched for in one compiled pass.

A plain tar's small members are read by runs (:func:`.refs.runs`: one
``pread`` for hundreds of them). For the usual bulk archive of JPEG scans
each member then costs, in Python, a content check
(:func:`.members.content_reject`), a header walk (:func:`.headers.jpeg_header`)
and the decoder's dispatch, on top of the decode itself.
:func:`run_sizes` looks at every member of a run in one compiled loop
and gives the frame size of each member it *vouches for*: one whose
bytes the Python path would accept unchanged, so that it may be decoded
straight away (:func:`.decoders.jpeg_stack`). A member is vouched for
only when all of these hold, each a narrower form of a Python check:

- it starts with a JPEG's ``FF D8 FF`` (so no archive magic of
  :func:`.members.archive_magic` can match but a tar's), and certainly
  is not a tar (:func:`.tarsniff.maybe_tar`);
- its header, up to the start of scan, holds only the segments
  :func:`.headers.jpeg_header` steps over unread (tables, restart
  interval, comments, application segments but APP1 and APP14) and one
  Huffman frame (baseline, extended or progressive) of 8-bit samples
  with 1 or 3 components, inside the decoder's size limits. So there is
  no EXIF block: orientation 1, nothing to turn;
- the run holds no ``tiff:Orientation`` (Pillow reads XMP's orientation);

and, checked by the caller in Python: the member is within the size
limit and its name has an image extension. Anything else (and any member
whose fast decode fails) takes the whole Python path, which decides.
tests/test_sources_jpegvouch.py checks that every member vouched for is
one the Python path takes with the same size, on a corpus of hostile
headers.

The kernel loads like :mod:`.fitjit`'s (:mod:`.jitload`): in the
background once a process has asked for :data:`LOAD_AFTER` members;
until then (and without numba) :func:`run_sizes` gives None and every
member takes the Python path.
"""

from __future__ import annotations

import numpy as np

from . import jitload, tarsniff

# members asked for by this process before the kernel starts loading
LOAD_AFTER = 1024
# a run of one member is not worth the compiled call (README, "Measured defaults")
MIN_RUN = 2
XMP_ORIENTATION = b"tiff:Orientation"


def _plain_marker(m):
    """Segments :func:`.headers.jpeg_header` steps over without reading them."""
    return m == 0xDB or m == 0xC4 or m == 0xDD or m == 0xFE or (
        0xE0 <= m <= 0xEF and m != 0xE1 and m != 0xEE)


_maybe_tar = tarsniff.maybe_tar


def _vouch(buf, starts, sizes, max_side, max_pixels, out):
    """``out[k] = (height, width)`` of member ``k`` (``sizes[k]`` bytes at
    ``starts[k]`` of ``buf``) when it is vouched for, else ``(0, 0)``."""
    for k in range(starts.shape[0]):
        out[k, 0] = 0
        out[k, 1] = 0
        a = starts[k]
        n = sizes[k]
        if n < 4 or buf[a] != 0xFF or buf[a + 1] != 0xD8 or buf[a + 2] != 0xFF:
            continue
        if _maybe_tar(buf, a, n):
            continue
        pos = 2
        frames = 0
        h = 0
        w = 0
        comps = 0
        ok = False
        while True:
            if pos + 4 > n or buf[a + pos] != 0xFF:
                break
            m = buf[a + pos + 1]
            if m == 0xFF:  # fill byte
                pos += 1
                continue
            length = (np.int64(buf[a + pos + 2]) << 8) | np.int64(buf[a + pos + 3])
            if length < 2 or pos + 2 + length > n:
                break
            if m == 0xDA:
                ok = frames == 1
                break
            if _plain_marker(m):
                pos += 2 + length
                continue
            if m == 0xC0 or m == 0xC1 or m == 0xC2:
                if frames != 0 or length < 8 or buf[a + pos + 4] != 8:
                    break
                h = (np.int64(buf[a + pos + 5]) << 8) | np.int64(buf[a + pos + 6])
                w = (np.int64(buf[a + pos + 7]) << 8) | np.int64(buf[a + pos + 8])
                comps = buf[a + pos + 9]
                frames = 1
                pos += 2 + length
                continue
            break  # any other marker: the Python path decides
        if (ok and (comps == 1 or comps == 3) and 0 < h <= max_side and 0 < w <= max_side
                and h * w <= max_pixels):
            out[k, 0] = h
            out[k, 1] = w


_KERNELS = ("_plain_marker", "_maybe_tar", "_vouch")


def _load() -> None:
    jitload.compile_in(globals(), _KERNELS)  # (_maybe_tar: tarsniff's, compiled here)
    buf = np.frombuffer(b"\xff\xd8\xff\xe0" + bytes(600), np.uint8)
    _vouch(buf, np.zeros(1, np.int64), np.full(1, buf.size, np.int64), 1, 1,
           np.zeros((1, 2), np.int64))


LOADER = jitload.KernelLoader("the compiled JPEG header check", _load)


def ready(n_members: int = 0) -> bool:
    """Whether the kernel is in, for ``n_members`` about to be read; once this
    process has asked for :data:`LOAD_AFTER`, loading starts (background)."""
    return LOADER.ready(n_members, LOAD_AFTER)


def load() -> None:
    """Load the kernel now (tests; a caller that wants it at once)."""
    LOADER.wait()


def vouch(buf: bytes, starts: np.ndarray, sizes: np.ndarray, *, max_side: int,
          max_pixels: int) -> np.ndarray:
    """(height, width) per member of ``buf`` it vouches for, else (0, 0):
    ``(k, 2)`` int64. Runs compiled once loaded, else as Python (tests)."""
    out = np.zeros((len(starts), 2), np.int64)
    _vouch(np.frombuffer(buf, np.uint8), np.asarray(starts, np.int64),
           np.asarray(sizes, np.int64), max_side, max_pixels, out)
    return out


def run_sizes(buf: bytes, starts: list[int], sizes: list[int], *, max_side: int,
              max_pixels: int) -> np.ndarray | None:
    """:func:`vouch` for one run of members, or None when the compiled kernel
    is not in (yet) or the run is too short or holds an XMP orientation."""
    if len(starts) < MIN_RUN or not ready(len(starts)) or XMP_ORIENTATION in buf:
        return None
    return vouch(buf, starts, sizes, max_side=max_side, max_pixels=max_pixels)
