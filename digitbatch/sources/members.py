"""One archive member: its key, and the safety checks every reader applies to it.

Whichever path reads a member (streamed by :mod:`.archive`, read at random
by :mod:`.refs`), it is judged by these functions, so it gets the same
reject reason. A member comes out either as a :class:`Member` (its bytes)
or as a :class:`~digitbatch.sources.base.Reject` whose reason starts with a
stable code:

``unsafe-path``
    absolute path, ``..`` component or drive letter.
``duplicate-key``
    a later member of a name an earlier member of the container has (see
    :func:`~digitbatch.sources.listing.unique_keys`): the first one keeps the key.
``not-regular-file``
    symlink, hardlink, device, FIFO, socket (symlinks are never followed).
``too-large``
    more than ``max_member_bytes`` (never more than that plus one byte is
    read, whatever a zip header claims), or more bytes than the image its
    header describes can need (:mod:`.proportion`: judged from its first
    bytes, the rest never read).
``nested-archive``
    the member is itself a tar, zip, gzip, bzip2, xz, 7z or rar file.
``not-an-image``
    OS junk (``__MACOSX/``, ``.DS_Store``, ``._*``, ``Thumbs.db``), or an
    unknown extension whose content Pillow does not recognise as an image.
``unreadable-member``
    the container is fine but this member's bytes cannot be read (zip CRC
    error, encrypted or unsupported zip member, permission denied).

Keys are text that is valid UTF-8 whatever the container holds: a name
whose bytes are not UTF-8 (a Latin-1 ``caf\\xe9.png`` in a tar or a
directory) is kept, each byte that is not UTF-8 written as ``\\xNN``
(:func:`escape_name`: the key ``7/caf\\xe9.png``). In a tar or zip a backslash
is a path separator, so in their keys a backslash only ever starts such an
escape, and the name's bytes can be told back exactly.
"""

from __future__ import annotations

import functools
import io
import posixpath
import re
import warnings
from dataclasses import dataclass, field
from typing import BinaryIO

from PIL import Image

from .base import Reject
from .proportion import HEAD_BYTES, SNIFF_ABOVE, out_of_proportion

DEFAULT_MAX_MEMBER_BYTES = 16 * 2**20
IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".pgm", ".ppm"}
)
# The only Pillow formats digitbatch opens: plain raster codecs. Leaving out
# the rest keeps e.g. EPS (which runs Ghostscript) away from untrusted input.
# (JPEG's opener also returns MPO, the multi-picture JPEG of cameras.)
PIL_FORMATS = ("PNG", "JPEG", "BMP", "DIB", "TIFF", "GIF", "WEBP", "PPM")
_JUNK_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini"})
_DIGITS = frozenset("0123456789")
_DRIVE = re.compile(r"^[A-Za-z]:")
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
_OTHER_ARCHIVE_MAGICS = (b"7z\xbc\xaf\x27\x1c", b"Rar!\x1a\x07")
# The first bytes of every magic archive_magic knows (a tar header has none,
# but needs 512 bytes): data starting otherwise, and shorter, is no archive.
_MAGIC_FIRST = frozenset(m[0] for m in (*_ZIP_MAGICS, *_OTHER_ARCHIVE_MAGICS,
                                        b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00"))


@dataclass(frozen=True, slots=True)
class Member:
    """One file read from a source: its key, bytes and folder label."""

    key: str
    data: bytes = field(repr=False)
    folder_label: int | None


# --- detection --------------------------------------------------------------

def looks_like_tar(head: bytes) -> bool:
    """True if ``head`` starts with a tar header (ustar magic or valid checksum)."""
    if len(head) < 512:
        return False
    if head[257:262] == b"ustar":
        return True
    field = head[148:156].replace(b"\x00", b" ").strip()
    if not field or field.translate(None, b"01234567+-_ "):
        return False  # (not a number int() takes: no exception to raise and catch)
    try:  # old v7 tars have no magic: check the header checksum instead
        stored = int(field, 8)
    except ValueError:
        return False
    return stored == sum(head[:148]) + 8 * 32 + sum(head[156:512])

def compression(head: bytes) -> str | None:
    if head.startswith(b"\x1f\x8b"):
        return "gz"
    if head.startswith(b"BZh") and head[3:4].isdigit():
        return "bz2"
    return "xz" if head.startswith(b"\xfd7zXZ\x00") else None

def archive_magic(data: bytes) -> str | None:
    """Name of the archive/compression format ``data`` starts with, if any."""
    if data.startswith(_ZIP_MAGICS):
        return "zip"
    if comp := compression(data):
        return comp
    if data.startswith(_OTHER_ARCHIVE_MAGICS):
        return "7z/rar"
    if looks_like_tar(data[:512]):
        return "tar"
    return None

@functools.cache
def open_formats() -> tuple[str, ...]:
    """The :data:`PIL_FORMATS` this Pillow can open, for ``Image.open(formats=...)``."""
    Image.init()  # Image.open(formats=...) does not load TIFF and WEBP by itself
    return tuple(f for f in PIL_FORMATS if f in Image.OPEN)

def is_image_content(data: bytes) -> bool:
    """True if Pillow identifies ``data`` (or its start) as an allowed format."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data), formats=open_formats()):
                return True
    except Image.DecompressionBombError:
        return True  # an image, if a hostile one: decoding rejects it
    except Exception:  # any parser failure means "not an image we read"
        return False


# --- members ----------------------------------------------------------------

def is_junk(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    junk_folder = "__MACOSX" in name.split("/")[:-1]
    return junk_folder or base.lower() in _JUNK_NAMES or base.startswith("._")

def escape_name(name: str) -> str:
    """``name`` as valid UTF-8 text: each byte that was not UTF-8 (held by
    ``surrogateescape`` as U+DC80-U+DCFF) becomes ``\\xNN``."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return "".join(f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF
                       else f"\\u{ord(c):04x}" if 0xD800 <= ord(c) <= 0xDFFF else c
                       for c in name)

def check_name(raw: str) -> tuple[str, str | None]:
    """``(key, problem)``: the normalised key (:func:`escape_name`), and why it is
    unsafe if it is."""
    key, problem = _check_path(raw)
    return escape_name(key), problem

def _check_path(raw: str) -> tuple[str, str | None]:
    if (raw and raw[0] not in "/." and raw[-1] != "/" and raw[1:2] != ":"
            and "\\" not in raw and "//" not in raw and "/." not in raw):
        return raw, None  # the common case: already normal, nothing to remove or refuse
    name = raw.replace("\\", "/")
    if name.startswith("/"):
        return raw, "unsafe-path: absolute path"
    if _DRIVE.match(name):
        return raw, "unsafe-path: drive letter"
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        return raw, "unsafe-path: member escapes the archive root"
    if not parts:
        return raw, "unsafe-path: empty member name"
    return "/".join(parts), None

# No name in a run that avoids all of these (and starts with none of
# _NOT_FIRST) can be refused or rewritten by check_name or is_junk; see
# plain_names. "\x00" ends each name of the run.
_NOT_IN = ("\\", "//", "/.", ":", "\x00\x00", "\x00/", "\x00.", "/\x00", "__MACOSX")
_NOT_FIRST = ("/", ".", "\x00")
_JUNK_PARTS = tuple(sorted(_JUNK_NAMES))

def plain_names(joined: str) -> bool:
    """True when every name of ``joined`` (valid UTF-8 names, each followed by
    a NUL) is certainly its own key and not junk: :func:`check_name` gives
    ``(name, None)`` and :func:`is_junk` False. False only means "judge each
    name": it is a quick test over the whole run, not a verdict."""
    if joined.startswith(_NOT_FIRST) or any(part in joined for part in _NOT_IN):
        return False
    if not joined.isascii() and escape_name(joined) != joined:
        return False  # a byte that was not UTF-8, escaped in its key
    low = joined.lower()
    return not any(part in low for part in _JUNK_PARTS)

def folder_label(key: str) -> int | None:
    """The digit of a one-digit parent folder (``.../7/name``), else None."""
    end = key.rfind("/")
    if end < 1 or key[end - 1] not in _DIGITS or (end > 1 and key[end - 2] != "/"):
        return None
    return ord(key[end - 1]) - 48

def has_image_extension(key: str) -> bool:
    """Whether ``key``'s extension (as ``posixpath.splitext`` gives it) is in
    :data:`IMAGE_EXTENSIONS`."""
    dot = key.rfind(".")
    if dot > 0 and key[dot - 1] not in "/." and key.find("/", dot) < 0:
        return key[dot:].lower() in IMAGE_EXTENSIONS  # (the usual "name.ext")
    return posixpath.splitext(key)[1].lower() in IMAGE_EXTENSIONS

def content_reject(key: str, data: bytes) -> Reject | None:
    if ((len(data) >= 512 or (data and data[0] in _MAGIC_FIRST))
            and (kind := archive_magic(data)) is not None):
        return Reject(key, f"nested-archive: member is a {kind} file")
    if not has_image_extension(key) and not is_image_content(data):
        return Reject(key, "not-an-image: unknown extension and content is not an image")
    return None

def read_capped(f: BinaryIO, cap: int, hint: int) -> bytes:
    """At most ``cap`` bytes of ``f``; the declared size ``hint`` sizes the first read.

    ``f.read(cap)`` would allocate ``cap`` bytes up front on every member.
    """
    parts: list[bytes] = []
    got = 0
    want = max(0, min(cap, hint + 1))
    while got < cap:
        chunk = f.read(max(1, min(want, cap - got)))
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
        want = 65536
    return b"".join(parts)

def read_member(key: str, f: BinaryIO, size: int, limit: int) -> Member | Reject:
    """Read a member of declared ``size`` from ``f`` and judge it.

    A member over :data:`~.proportion.SNIFF_ABOVE` bytes is judged from its
    first :data:`~.proportion.HEAD_BYTES` before the rest is read: a nested
    archive, or a size out of proportion to its image header, is refused
    without reading it whole.
    """
    if size <= SNIFF_ABOVE:
        return finish_member(key, read_capped(f, limit + 1, size), limit)
    head = read_capped(f, HEAD_BYTES, HEAD_BYTES)
    if (kind := archive_magic(head)) is not None:
        return Reject(key, f"nested-archive: member is a {kind} file")
    if (reason := out_of_proportion(key, head, size, open_formats())) is not None:
        return Reject(key, reason)
    rest = b""
    if len(head) == HEAD_BYTES:
        rest = read_capped(f, limit + 1 - len(head), size - len(head))
    return finish_member(key, head + rest, limit)

def too_large(key: str, size: int | None, limit: int) -> Reject:
    what = f"{size} bytes" if size is not None else "more than its declared size"
    return Reject(key, f"too-large: {what}, over the {limit}-byte limit")

def finish_member(key: str, data: bytes, limit: int) -> Member | Reject:
    if len(data) > limit:
        return too_large(key, None, limit)
    return content_reject(key, data) or Member(key, data, folder_label(key))
