"""What a PNG or JPEG file says about itself before any pixel is decoded.

The fast decoders (:mod:`.decoders`) take a file only when its header
shows a plain case they decode exactly as Pillow would; these parsers
find that out from the first bytes: size, pixel layout and, for JPEG, the
EXIF orientation. They never raise on hostile bytes: anything unexpected
gives ``None``, and the file goes to Pillow, which decides (and gives
the reject reason).
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# a PNG's first 16 bytes: the signature, then a 13-byte IHDR's length and type
PNG_START = PNG_SIGNATURE + b"\x00\x00\x00\x0dIHDR"
_IHDR = struct.Struct(">IIBBBBB")
# PNG chunks that carry an orientation Pillow would apply (EXIF, or XMP's
# tiff:Orientation), or make Pillow show another picture than the IDAT one
# (an animation's first frame). Their names are never compressed.
PNG_REFUSED = (b"eXIf", b"Raw profile type exif", b"XML:com.adobe.xmp", b"acTL")
# ... as chunk types (and tRNS: transparency, which Pillow composites), and as
# the keywords of text chunks
_REFUSED_TYPES = frozenset({k for k in PNG_REFUSED if len(k) == 4} | {b"tRNS"})
_REFUSED_KEYWORDS = tuple(k for k in PNG_REFUSED if len(k) != 4)
_TEXT_TYPES = frozenset({b"tEXt", b"zTXt", b"iTXt"})
_CHUNK = struct.Struct(">I4s")
# Chunks before the image data that Pillow and libspng both read or skip
# alike (name -> the length it must have, None for any).
PNG_PLAIN_CHUNKS = {b"IHDR": 13, b"gAMA": 4, b"sRGB": 1, b"pHYs": 9, b"cHRM": 32,
                    b"tEXt": None, b"tIME": 7}
# JPEG start-of-frame markers libjpeg-turbo and Pillow both decode with
# Huffman coding: baseline, extended, progressive.
_JPEG_SOF = {0xC0: "baseline", 0xC1: "extended", 0xC2: "progressive"}
_OTHER_SOF = frozenset(range(0xC3, 0xD0)) - {0xC4, 0xC8, 0xCC}
ORIENTATION_TAG = 0x0112
# Segments the header parse steps over without reading: quantisation and
# Huffman tables, restart interval, JFIF and other application segments
# (not APP1, which may be EXIF, nor APP14, Adobe's colour transform).
_PLAIN_SEGMENTS = frozenset({0xDB, 0xC4, 0xDD, 0xFE} | set(range(0xE0, 0xF0)) - {0xE1, 0xEE})


class PngHeader(NamedTuple):  # (a tuple: made for every member, and cheaply)
    width: int
    height: int
    bit_depth: int
    colour_type: int


class JpegHeader(NamedTuple):
    width: int
    height: int
    components: int
    coding: str
    orientation: int  # 1 (none) to 8, as EXIF


def png_header(data: bytes) -> PngHeader | None:
    """The IHDR of a PNG without chunks that need Pillow, or None.

    Every chunk up to IEND is looked at (its type, and a text chunk's
    keyword): none may be :data:`PNG_REFUSED` or a ``tRNS``. A file cut
    before IEND is left to Pillow.
    """
    n = len(data)
    if n < 45 or data[:16] != PNG_START:  # (the signature, then a 13-byte IHDR)
        return None
    width, height, depth, colour, _comp, _filter, _interlace = _IHDR.unpack_from(data, 16)
    # Pillow reads the chunks before the image data strictly (a bad CRC, a
    # corrupt compressed text is a broken file) where libspng skips them:
    # only chunks both treat alike, with good CRCs, go the fast way.
    pos = 8
    while True:
        if pos + 12 > n:
            return None
        length, name = _CHUNK.unpack_from(data, pos)
        if name == b"IDAT":
            break
        want = PNG_PLAIN_CHUNKS.get(name, -1)
        end = pos + 12 + length
        if want == -1 or (want is not None and length != want) or end > n:
            return None
        crc, = struct.unpack_from(">I", data, end - 4)
        if zlib.crc32(data[pos + 4:end - 4]) != crc or _refused_text(name, data, pos, length):
            return None
        pos = end
    # the image data and what follows it, to IEND: types only (the usual
    # file is IDAT, then IEND)
    while name != b"IEND":
        if name in _REFUSED_TYPES or _refused_text(name, data, pos, length):
            return None
        pos += 12 + length
        if pos + 12 > n:
            return None
        length, name = _CHUNK.unpack_from(data, pos)
    return PngHeader(width, height, depth, colour)


def _refused_text(name: bytes, data: bytes, pos: int, length: int) -> bool:
    """Whether the chunk at ``pos`` is a text chunk naming EXIF or XMP."""
    return name in _TEXT_TYPES and any(k in data[pos + 8:pos + 8 + length]
                                       for k in _REFUSED_KEYWORDS)


def jpeg_header(data: bytes) -> JpegHeader | None:
    """Frame size, components, coding and EXIF orientation of a JPEG, or None.

    None also for what the fast path leaves to Pillow: arithmetic, lossless
    or hierarchical coding, Adobe colour transforms other than YCbCr,
    several EXIF segments, an orientation in XMP, a malformed segment.
    """
    if not data.startswith(b"\xff\xd8"):
        return None
    pos, n = 2, len(data)
    frame: tuple[int, int, int, str] | None = None
    exif: bytes | None = None
    adobe_transform: int | None = None
    while True:
        if pos + 4 > n or data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = (data[pos + 2] << 8) | data[pos + 3]
        if length < 2 or pos + 2 + length > n:
            return None
        if marker == 0xDA:  # start of scan: the header is over
            break
        if marker in _PLAIN_SEGMENTS:  # (most segments: nothing to read in them)
            pos += 2 + length
            continue
        seg = data[pos + 4:pos + 2 + length]
        if marker in _JPEG_SOF:
            if frame is not None or len(seg) < 6 or seg[0] != 8:
                return None
            height, width = struct.unpack_from(">HH", seg, 1)
            frame = (width, height, seg[5], _JPEG_SOF[marker])
        elif marker in _OTHER_SOF:
            return None
        elif marker == 0xE1 and seg.startswith(b"Exif\x00\x00"):
            if exif is not None:
                return None  # Pillow joins several: leave that to it
            exif = seg[6:]
        elif marker == 0xEE and seg.startswith(b"Adobe") and len(seg) >= 12:
            adobe_transform = seg[11]
        elif marker in (0xD8, 0xD9) or 0xD0 <= marker <= 0xD7 or marker == 0x01:
            return None  # a standalone marker inside the header
        pos += 2 + length
    if frame is None:
        return None
    width, height, components, coding = frame
    if width == 0 or height == 0 or components not in (1, 3):
        return None
    if components == 3 and adobe_transform not in (None, 1):
        return None  # RGB stored as is, not YCbCr
    orientation = exif_orientation(exif) if exif is not None else 1
    if orientation is None:
        return None
    if orientation == 1 and b"tiff:Orientation" in data:
        return None  # Pillow reads XMP's orientation when EXIF has none
    return JpegHeader(width, height, components, coding, orientation)


def exif_orientation(tiff: bytes) -> int | None:
    """The Orientation of IFD0 of an EXIF block (1 when absent), or None
    when the block is anything but plainly well formed (Pillow decides)."""
    if len(tiff) < 8:
        return None
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None:
        return None
    magic, ifd = struct.unpack_from(order + "HI", tiff, 2)
    if magic != 42 or ifd < 8:
        return None
    if ifd + 2 > len(tiff):
        return None
    count, = struct.unpack_from(order + "H", tiff, ifd)
    end = ifd + 2 + 12 * count
    if end + 4 > len(tiff):  # the entries and the next-IFD offset
        return None
    found = None
    for i in range(count):
        tag, typ, n = struct.unpack_from(order + "HHI", tiff, ifd + 2 + 12 * i)
        if tag != ORIENTATION_TAG:
            continue
        if found is not None or typ != 3 or n != 1:
            return None
        found, = struct.unpack_from(order + "H", tiff, ifd + 2 + 12 * i + 8)
    if found is None:
        return 1
    return found if 1 <= found <= 8 else None
