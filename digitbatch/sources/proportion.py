"""Whether a member's declared size is in proportion to the image its header describes.

A member may be up to ``max_member_bytes`` long, but an image file only
ever needs so many bytes for its pixels: a PNG whose header says 28x28
cannot need 16 MiB (a zero-filled or padded "image" is a memory bomb: its
bytes would be read, packed and sent to a worker for nothing). Before a
member larger than :data:`SNIFF_ABOVE` is read whole, its first
:data:`HEAD_BYTES` are read and judged here:

- an image header Pillow can read there gives the width and height, and a
  member larger than :func:`max_image_bytes` of them is refused
  (``too-large``), its remaining bytes never read;
- no image header at all (no magic number of a format we decode) refuses
  it too: ``decode-error`` for an image extension, ``not-an-image`` for
  another (the reasons a small file of such bytes gets from decoding);
- a header of a format we decode that the head alone cannot parse (a TIFF
  whose directory lies at its end, a JPEG with a long EXIF block) is read
  whole, as before: the per-task byte budget of the callers bounds it.

The bound is generous: :data:`BYTES_PER_PIXEL` per pixel (more than any
codec we accept needs: 16-bit RGBA stored raw is 8) plus
:data:`METADATA_SLACK` for metadata (EXIF, ICC profiles, thumbnails). A
multi-frame file (an animated GIF, a multi-page TIFF) is judged by its
first frame, the one decoded.
"""

from __future__ import annotations

import io
import posixpath
import warnings

from PIL import Image

__all__ = ["BYTES_PER_PIXEL", "HEAD_BYTES", "METADATA_SLACK", "SNIFF_ABOVE",
           "max_image_bytes", "out_of_proportion"]

METADATA_SLACK = 2**20
BYTES_PER_PIXEL = 16
# Members up to this size are read whole anyway (the bound can refuse none of them).
SNIFF_ABOVE = METADATA_SLACK
HEAD_BYTES = 256 * 2**10
# Magic numbers of the formats the decoders open (members.PIL_FORMATS).
_MAGICS = (b"\x89PNG", b"\xff\xd8", b"BM", b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+",
           b"GIF8", b"RIFF", b"P1", b"P2", b"P3", b"P4", b"P5", b"P6", b"P7", b"Pf", b"PF",
           b"\x0c\x00\x00\x00", b"\x28\x00\x00\x00", b"\x40\x00\x00\x00",
           b"\x6c\x00\x00\x00", b"\x7c\x00\x00\x00")  # (the last five: DIB headers)
_IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".pgm", ".ppm"})


def max_image_bytes(width: int, height: int) -> int:
    """The most bytes a file of one ``width`` x ``height`` image may take."""
    return METADATA_SLACK + BYTES_PER_PIXEL * width * height


def _dimensions(head: bytes, formats: tuple[str, ...]) -> tuple[int, int] | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(head), formats=formats) as im:
                return im.size
    except Image.DecompressionBombError:
        return None  # huge dimensions: decoding refuses it by name
    except Exception:  # the head alone does not parse: judged whole
        return None


def out_of_proportion(key: str, head: bytes, size: int, formats: tuple[str, ...]) -> str | None:
    """The reject reason of a ``size``-byte member starting with ``head``, or None.

    Only members over :data:`SNIFF_ABOVE` bytes are judged; ``formats`` are
    the Pillow formats the decoders open.
    """
    if size <= SNIFF_ABOVE:
        return None
    if not head.startswith(_MAGICS):
        ext = posixpath.splitext(key)[1].lower()
        code = "decode-error" if ext in _IMAGE_EXTENSIONS else "not-an-image"
        return (f"{code}: {size} bytes with no image header in the first {len(head)} "
                f"(the rest was not read)")
    dims = _dimensions(head, formats)
    if dims is None:
        return None
    width, height = dims
    bound = max_image_bytes(width, height)
    if size > bound:
        return (f"too-large: {size} bytes for a {width}x{height} image, which needs at most "
                f"{bound} (the rest was not read)")
    return None
