"""Plain PNG members of a tar run, vouched for and decoded in compiled passes.

The usual bulk archive of small PNGs (28x28 digits) costs, per member in
Python, a content check (:func:`.members.content_reject`), a header and
chunk walk with CRCs (:func:`.headers.png_header`), the decoder's dispatch
and libspng's per-image setup: several times the decode itself. Here
:func:`run_plain` looks at every member of a run (:func:`.refs.tar_runs`)
in one compiled loop and gives the layout of each member it *vouches
for*; :func:`decode` then inflates each one's pixel data with ``zlib``
and undoes the PNG row filters of many at once in one compiled pass,
straight into a stack of grey images.

A member is vouched for only when all of these hold, each a narrower form
of a Python check, so that the Python path would take it unchanged and
decode the same pixels (PNG decoding is exact; RGB goes to grey by
Pillow's formula, :func:`.decoders.rgb_to_l`):

- it starts with the PNG signature and a 13-byte IHDR (so no archive
  magic of :func:`.members.archive_magic` can match but a tar's), and
  certainly is not a tar (:func:`.tarsniff.maybe_tar`);
- IHDR: 8-bit grey or RGB, compression, filter and interlace methods 0,
  inside the decoder's size limits (:func:`.decoders.fast_limits`);
- its chunks are IHDR, then only the fixed-size ancillary chunks of
  :data:`.headers.PNG_PLAIN_CHUNKS` (no text chunk), then the IDAT
  chunks (none empty), then IEND at the member's last byte, every chunk's
  CRC good (libspng checks the critical ones, Pillow the ones before the
  image data);

and, when it is decoded: its zlib stream is whole, ends exactly at the
end of the last IDAT, and inflates to exactly the filtered rows IHDR says,
each row's filter type 0-4. Checked by the caller in Python: the member
is within the size limit and its name has an image extension. Anything
else takes the whole Python path (libspng or Pillow), which decides:
interlacing, palettes, 16-bit, alpha, text chunks.
tests/test_sources_pngvouch.py checks every member vouched for against
the Python path on a corpus of real and hostile files.

The kernels load like :mod:`.jpegvouch`'s (:mod:`.jitload`), in the
background once a process has asked for :data:`LOAD_AFTER` members;
until then (and without numba) :func:`run_plain` gives None and every
member takes the Python path.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator

import numpy as np

from . import jitload, tarsniff
from .headers import PNG_PLAIN_CHUNKS, PNG_START

# members asked for by this process before the kernels start loading: more
# than an archive's first scoring task (scoring.plan.FIRST_SLOT) and a few
# runs of the next, so that the load does not compete with the first chunk
# (README, "Measured defaults")
LOAD_AFTER = 4096
# a run of one member is not worth the compiled calls
MIN_RUN = 2
# the columns of run_plain's rows
HEIGHT, WIDTH, CHANNELS, IDAT, IDAT_LEN, IDATS = range(6)

_START = np.frombuffer(PNG_START, np.uint8)


def _type_code(name: bytes) -> int:
    return int.from_bytes(name, "big")


_IDAT, _IEND = _type_code(b"IDAT"), _type_code(b"IEND")
# the ancillary chunks allowed before IDAT, and the length each must have
_PLAIN = [(_type_code(k), v) for k, v in PNG_PLAIN_CHUNKS.items() if k != b"IHDR" and v is not None]
_PLAIN_TYPES = np.array([t for t, _ in _PLAIN], np.int64)
_PLAIN_LENGTHS = np.array([v for _, v in _PLAIN], np.int64)


def _crc_table() -> np.ndarray:
    table = np.zeros(256, np.int64)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (0xEDB88320 ^ (c >> 1)) if c & 1 else c >> 1
        table[i] = c
    return table


_CRC = _crc_table()
_maybe_tar = tarsniff.maybe_tar


def _be32(buf, p):
    return ((np.int64(buf[p]) << 24) | (np.int64(buf[p + 1]) << 16)
            | (np.int64(buf[p + 2]) << 8) | np.int64(buf[p + 3]))


def _crc_ok(buf, p, length):
    """Whether the chunk at ``p`` (``length`` data bytes) has a good CRC."""
    c = np.int64(0xFFFFFFFF)
    for i in range(p + 4, p + 8 + length):
        c = _CRC[(c ^ np.int64(buf[i])) & 0xFF] ^ (c >> 8)
    return (c ^ np.int64(0xFFFFFFFF)) == _be32(buf, p + 8 + length)


def _plain_ancillary(t, length):
    for x in range(_PLAIN_TYPES.shape[0]):
        if _PLAIN_TYPES[x] == t:
            return _PLAIN_LENGTHS[x] == length
    return False


def _vouch(buf, starts, sizes, max_side, max_pixels, out):
    """``out[k]`` = (height, width, channels, first IDAT's data offset and
    length, IDAT chunks) of member ``k`` (``sizes[k]`` bytes at ``starts[k]``
    of ``buf``) when it is vouched for, else zeros."""
    for k in range(starts.shape[0]):
        for x in range(6):
            out[k, x] = 0
        a = starts[k]
        n = sizes[k]
        if n < 57:  # signature, IHDR, an IDAT and IEND
            continue
        same = True
        for x in range(16):
            if buf[a + x] != _START[x]:
                same = False
                break
        if not same or _maybe_tar(buf, a, n):
            continue
        w = _be32(buf, a + 16)
        h = _be32(buf, a + 20)
        colour = buf[a + 25]
        if (buf[a + 24] != 8 or (colour != 0 and colour != 2) or buf[a + 26] != 0
                or buf[a + 27] != 0 or buf[a + 28] != 0):
            continue
        if not (0 < w <= max_side and 0 < h <= max_side and w * h <= max_pixels):
            continue
        if not _crc_ok(buf, a + 8, 13):
            continue
        pos = 33
        idat = 0
        idat_len = 0
        idats = 0
        ok = False
        while pos + 12 <= n:
            length = _be32(buf, a + pos)
            end = pos + 12 + length
            if end > n or not _crc_ok(buf, a + pos, length):
                break
            t = _be32(buf, a + pos + 4)
            if t == _IEND:
                ok = idat > 0 and length == 0 and end == n
                break
            if t == _IDAT:  # (one after another: any other chunk after one ends the walk)
                if length == 0:
                    break
                if idat == 0:
                    idat = pos + 8
                    idat_len = length
                idats += 1
            elif idat > 0 or not _plain_ancillary(t, length):
                break
            pos = end
        if ok:
            out[k, 0] = h
            out[k, 1] = w
            out[k, 2] = 1 if colour == 0 else 3
            out[k, 3] = idat
            out[k, 4] = idat_len
            out[k, 5] = idats


def _unfilter(raw, h, w, c, out, ok):
    """Undo the row filters of ``len(out)`` members' inflated rows (``raw``, one
    after another, ``h * (1 + w * c)`` bytes each) into ``out`` (n, h, w) grey;
    ``ok[m]`` False where a row's filter type is not 0-4."""
    stride = w * c
    row = 1 + stride
    prev = np.zeros(stride, np.int64)
    cur = np.zeros(stride, np.int64)
    for m in range(out.shape[0]):
        ok[m] = True
        for x in range(stride):
            prev[x] = 0
        for y in range(h):
            p = (m * h + y) * row
            f = raw[p]
            p += 1
            if f == 0:
                for x in range(stride):
                    cur[x] = raw[p + x]
            elif f == 1:
                for x in range(stride):
                    left = cur[x - c] if x >= c else 0
                    cur[x] = (raw[p + x] + left) & 0xFF
            elif f == 2:
                for x in range(stride):
                    cur[x] = (raw[p + x] + prev[x]) & 0xFF
            elif f == 3:
                for x in range(stride):
                    left = cur[x - c] if x >= c else 0
                    cur[x] = (raw[p + x] + ((left + prev[x]) >> 1)) & 0xFF
            elif f == 4:
                for x in range(stride):
                    left = cur[x - c] if x >= c else 0
                    corner = prev[x - c] if x >= c else 0
                    up = prev[x]
                    base = left + up - corner
                    pa = abs(base - left)
                    pb = abs(base - up)
                    pc = abs(base - corner)
                    if pa <= pb and pa <= pc:
                        guess = left
                    elif pb <= pc:
                        guess = up
                    else:
                        guess = corner
                    cur[x] = (raw[p + x] + guess) & 0xFF
            else:
                ok[m] = False
                break
            if c == 1:
                for x in range(w):
                    out[m, y, x] = cur[x]
            else:  # Pillow's RGB -> L (decoders.rgb_to_l)
                for x in range(w):
                    out[m, y, x] = (cur[3 * x] * 19595 + cur[3 * x + 1] * 38470
                                    + cur[3 * x + 2] * 7471 + 0x8000) >> 16
            prev, cur = cur, prev


_KERNELS = ("_be32", "_crc_ok", "_plain_ancillary", "_maybe_tar", "_vouch", "_unfilter")


def _load() -> None:
    jitload.compile_in(globals(), _KERNELS)  # (_maybe_tar: tarsniff's, compiled here)
    buf = np.frombuffer(bytes(600), np.uint8)
    _vouch(buf, np.zeros(1, np.int64), np.full(1, buf.size, np.int64), 1, 1,
           np.zeros((1, 6), np.int64))
    _unfilter(np.zeros(2, np.uint8), 1, 1, 1, np.zeros((1, 1, 1), np.uint8), np.zeros(1, bool))
    _unfilter(np.zeros(4, np.uint8), 1, 1, 3, np.zeros((1, 1, 1), np.uint8), np.zeros(1, bool))


LOADER = jitload.KernelLoader("the compiled PNG check and decoder", _load)


def ready(n_members: int = 0) -> bool:
    """Whether the kernels are in, for ``n_members`` about to be read; once this
    process has asked for :data:`LOAD_AFTER`, loading starts (background)."""
    return LOADER.ready(n_members, LOAD_AFTER)


def load() -> None:
    """Load the kernels now (tests; a caller that wants them at once)."""
    LOADER.wait()


def vouch(buf: bytes, starts, sizes, *, max_side: int, max_pixels: int) -> np.ndarray:
    """Rows (height, width, channels, first IDAT's data offset and length,
    IDAT chunks) per member of ``buf``, zeros where it is not vouched for:
    ``(k, 6)`` int64. Runs
    compiled once loaded, else as Python (tests)."""
    out = np.zeros((len(starts), 6), np.int64)
    _vouch(np.frombuffer(buf, np.uint8), np.asarray(starts, np.int64),
           np.asarray(sizes, np.int64), max_side, max_pixels, out)
    return out


def run_plain(buf: bytes, starts: list[int], sizes: list[int], *, max_side: int,
              max_pixels: int) -> np.ndarray | None:
    """:func:`vouch` for one run of members, or None when the compiled kernels
    are not in (yet) or the run is too short."""
    if len(starts) < MIN_RUN or not ready(len(starts)):
        return None
    return vouch(buf, starts, sizes, max_side=max_side, max_pixels=max_pixels)


def inflate(parts, height: int, width: int, channels: int) -> bytes | None:
    """The filtered rows of a vouched member's IDAT data ``parts`` (each
    IDAT's, in order): None unless its zlib stream is whole, ends with the
    last part and holds exactly the rows."""
    want = height * (1 + width * channels)
    d = zlib.decompressobj()
    got = []
    n = 0
    try:
        for part in parts:  # (data after the stream's end goes to unused_data)
            got.append(d.decompress(part, want + 1 - n))  # (at most one byte over)
            n += len(got[-1])
            if n > want or d.unconsumed_tail:  # (more rows than the header says)
                return None
    except zlib.error:
        return None
    if n != want or not d.eof or d.unused_data:
        return None
    return got[0] if len(got) == 1 else b"".join(got)


def _idat_parts(view: memoryview, at: int, chunks: int) -> list:
    """The data of ``chunks`` IDAT chunks one after another, the first's data at ``at``."""
    parts = []
    for _ in range(chunks):
        length = int.from_bytes(view[at - 8:at - 4], "big")
        parts.append(view[at:at + length])
        at += length + 12
    return parts


def decode(buf: bytes, starts: list[int], plain: np.ndarray, ks: list[int], *,
           budget: int, told: Callable[[int], object] | None = None
           ) -> Iterator[tuple[list[int], np.ndarray]]:
    """The grey pixels of the vouched members ``ks`` of a run (``plain``:
    :func:`run_plain`'s rows): ``(members, stack)`` per size, at most about
    ``budget`` pixels a stack. A member whose data does not inflate or
    unfilter is left out (the Python path decides). ``told(k)`` is called
    before each member is inflated."""
    view = memoryview(buf)
    rows = plain.tolist()  # (one conversion, not one per member)
    groups: dict[tuple[int, int, int], tuple[list[int], list[bytes]]] = {}
    for k in ks:
        h, w, c, off, length, chunks = rows[k]
        if told is not None:
            told(k)
        a = starts[k] + off
        raw = inflate([view[a:a + length]] if chunks == 1 else _idat_parts(view, a, chunks),
                      h, w, c)
        if raw is None:
            continue
        group = groups.setdefault((h, w, c), ([], []))
        group[0].append(k)
        group[1].append(raw)
        if len(group[0]) * h * w >= budget:
            yield _unfiltered(h, w, c, *groups.pop((h, w, c)))
    for (h, w, c), group in groups.items():
        yield _unfiltered(h, w, c, *group)


def _unfiltered(h: int, w: int, c: int, ks: list[int], raws: list[bytes]
                ) -> tuple[list[int], np.ndarray]:
    out = np.empty((len(ks), h, w), np.uint8)
    ok = np.zeros(len(ks), bool)
    _unfilter(np.frombuffer(b"".join(raws), np.uint8), h, w, c, out, ok)
    if ok.all():
        return ks, out
    keep = np.flatnonzero(ok)
    return [ks[i] for i in keep], out[keep]
