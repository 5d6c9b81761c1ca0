"""Read image files out of a directory, a tar or a zip, safely, as a stream.

Nothing is ever extracted to disk. Each member comes out either as a
:class:`Member` (its bytes, for :func:`digitbatch.sources.images.decode_batch`)
or as a :class:`~digitbatch.sources.base.Reject` whose reason starts with a
stable code:

``unsafe-path``
    absolute path, ``..`` component or drive letter.
``not-regular-file``
    symlink, hardlink, device, FIFO, socket (symlinks are never followed).
``too-large``
    more than ``max_member_bytes`` (never more than that plus one byte is
    read, whatever a zip header claims).
``nested-archive``
    the member is itself a tar, zip, gzip, bzip2, xz, 7z or rar file.
``not-an-image``
    OS junk (``__MACOSX/``, ``.DS_Store``, ``._*``, ``Thumbs.db``), or an
    unknown extension whose content Pillow does not recognise as an image.
``unreadable-member``
    the container is fine but this member's bytes cannot be read (zip CRC
    error, encrypted or unsupported zip member, permission denied).

A broken container (truncated gzip or tar, corrupt zip central directory,
unreadable directory) raises :class:`~digitbatch.errors.ArchiveError`.
"""

from __future__ import annotations

import bz2
import copy
import functools
import gzip
import io
import logging
import lzma
import os
import posixpath
import re
import stat
import tarfile
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from PIL import Image

from ..errors import ArchiveError, SourceError, SourceNotFoundError, UnknownSourceError
from .base import MemberRef, Reject

log = logging.getLogger(__name__)

CONTAINER_KINDS = ("dir", "tar", "zip")
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
# Enough compressed input to reach the first tar header of any bzip2 block.
_SNIFF_INPUT_LIMIT = 2 * 2**20


@dataclass(frozen=True, slots=True)
class Member:
    """One file read from a source: its key, bytes and folder label."""

    key: str
    data: bytes = field(repr=False)
    folder_label: int | None


# --- detection --------------------------------------------------------------


def _looks_like_tar(head: bytes) -> bool:
    """True if ``head`` starts with a tar header (ustar magic or valid checksum)."""
    if len(head) < 512:
        return False
    if head[257:262] == b"ustar":
        return True
    try:  # old v7 tars have no magic: check the header checksum instead
        stored = int(head[148:156].replace(b"\x00", b" ").strip() or b"x", 8)
    except ValueError:
        return False
    return stored == sum(head[:148]) + 8 * 32 + sum(head[156:512])


def _compression(head: bytes) -> str | None:
    if head.startswith(b"\x1f\x8b"):
        return "gz"
    if head.startswith(b"BZh") and head[3:4].isdigit():
        return "bz2"
    return "xz" if head.startswith(b"\xfd7zXZ\x00") else None


def _decompressed_head(f: BinaryIO, comp: str) -> bytes:
    """The first 512 decompressed bytes of a compressed stream (or fewer)."""
    dec = {
        "gz": lambda: zlib.decompressobj(16 + zlib.MAX_WBITS),
        "bz2": bz2.BZ2Decompressor,
        "xz": lzma.LZMADecompressor,
    }[comp]()
    out = b""
    try:
        while len(out) < 512 and f.tell() < _SNIFF_INPUT_LIMIT and (chunk := f.read(65536)):
            out += dec.decompress(chunk, 512 - len(out))
    except (zlib.error, OSError, lzma.LZMAError, EOFError):
        pass
    return out


def _archive_magic(data: bytes) -> str | None:
    """Name of the archive/compression format ``data`` starts with, if any."""
    if data.startswith(_ZIP_MAGICS):
        return "zip"
    if comp := _compression(data):
        return comp
    if data.startswith(_OTHER_ARCHIVE_MAGICS):
        return "7z/rar"
    if _looks_like_tar(data[:512]):
        return "tar"
    return None


def detect_image_source(path: Path) -> str | None:
    """Detect what kind of image source ``path`` is, by content.

    Parameters
    ----------
    path : Path
        A directory, tar (plain, gzip, bzip2 or xz compressed) or zip file.

    Returns
    -------
    str or None
        ``"dir"`` for a directory holding at least one image file
        (recursively), ``"tar"`` or ``"zip"`` for such archives whatever
        their file name, ``None`` otherwise.

    Raises
    ------
    SourceNotFoundError
        If ``path`` does not exist.
    ArchiveError
        If ``path`` (or a directory below it) cannot be read.
    """
    path = Path(path)
    if not path.exists():
        raise SourceNotFoundError(f"image source {path} does not exist")
    try:
        if path.is_dir():
            return "dir" if _dir_has_image(path) else None
        with open(path, "rb") as f:
            head = f.read(512)
            if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
                return "zip"
            if _looks_like_tar(head):
                return "tar"
            if comp := _compression(head):
                f.seek(0)
                return "tar" if _looks_like_tar(_decompressed_head(f, comp)) else None
    except OSError as exc:
        raise ArchiveError(f"cannot read image source {path}: {exc}") from exc
    return None


def _unlistable(folder, root: Path, exc: OSError) -> ArchiveError:
    return ArchiveError(f"cannot list directory {folder} of image source {root}: {exc}")


def _dir_has_image(root: Path) -> bool:
    def fail(exc: OSError) -> None:
        raise _unlistable(exc.filename, root, exc) from exc

    for dirpath, dirnames, filenames in os.walk(root, onerror=fail):
        dirnames[:] = sorted(d for d in dirnames if d != "__MACOSX")
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if _is_junk(name) or p.is_symlink() or not p.is_file():
                continue
            if p.suffix.lower() in IMAGE_EXTENSIONS:
                return True
            try:
                with open(p, "rb") as f:
                    if _is_image_content(f.read(4096)):
                        return True
            except OSError:
                continue
    return False


@functools.cache
def open_formats() -> tuple[str, ...]:
    """The :data:`PIL_FORMATS` this Pillow can open, for ``Image.open(formats=...)``."""
    Image.init()  # Image.open(formats=...) does not load TIFF and WEBP by itself
    return tuple(f for f in PIL_FORMATS if f in Image.OPEN)


def _is_image_content(data: bytes) -> bool:
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


def _is_junk(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    junk_folder = "__MACOSX" in name.split("/")[:-1]
    return junk_folder or base.lower() in _JUNK_NAMES or base.startswith("._")


def _check_name(raw: str) -> tuple[str, str | None]:
    """``(key, problem)``: the normalised key, and why it is unsafe if it is."""
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


def _folder_label(key: str) -> int | None:
    parent = key.split("/")[-2:-1]
    return int(parent[0]) if parent and parent[0] in _DIGITS else None


def _content_reject(key: str, data: bytes) -> Reject | None:
    if (kind := _archive_magic(data)) is not None:
        return Reject(key, f"nested-archive: member is a {kind} file")
    if posixpath.splitext(key)[1].lower() not in IMAGE_EXTENSIONS and not _is_image_content(data):
        return Reject(key, "not-an-image: unknown extension and content is not an image")
    return None


def _read_capped(f: BinaryIO, cap: int, hint: int) -> bytes:
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


def _too_large(key: str, size: int | None, limit: int) -> Reject:
    what = f"{size} bytes" if size is not None else "more than its declared size"
    return Reject(key, f"too-large: {what}, over the {limit}-byte limit")


def _finish(key: str, data: bytes, limit: int) -> Member | Reject:
    if len(data) > limit:
        return _too_large(key, None, limit)
    return _content_reject(key, data) or Member(key, data, _folder_label(key))


def iter_members(
    path: Path,
    *,
    kind: str | None = None,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
) -> Iterator[Member | Reject]:
    """Yield the files of a directory, tar or zip, in source order.

    Parameters
    ----------
    path : Path
        The image source.
    kind : {"dir", "tar", "zip"}, optional
        What ``path`` is; detected by content (:func:`detect_image_source`)
        when not given.
    max_member_bytes : int, default 16 MiB
        Members larger than this are rejected as ``too-large``; no more than
        ``max_member_bytes + 1`` bytes of a member are ever held in memory.

    Yields
    ------
    Member or Reject
        Archive order for tar and zip, sorted relative paths for a
        directory. Directories are skipped silently.

    Raises
    ------
    SourceNotFoundError
        If ``path`` does not exist.
    UnknownSourceError
        If ``kind`` is not one of :data:`CONTAINER_KINDS`, or cannot be detected.
    ArchiveError
        If the container is truncated, corrupt or unreadable (raised while
        iterating).
    """
    path = Path(path)
    if type(max_member_bytes) is not int or max_member_bytes < 1:
        raise SourceError(f"max_member_bytes must be a positive integer, got {max_member_bytes!r}")
    if not path.exists():
        raise SourceNotFoundError(f"image source {path} does not exist")
    if kind is None:
        kind = detect_image_source(path)
        if kind is None:
            raise UnknownSourceError(
                f"{path} is not a directory of images, a tar or a zip file "
                f"(detected by content; supported kinds: {', '.join(CONTAINER_KINDS)})"
            )
    elif kind not in CONTAINER_KINDS:
        raise UnknownSourceError(f"kind must be one of {CONTAINER_KINDS}, got {kind!r}")
    reader = {"dir": _iter_dir, "tar": _iter_tar, "zip": _iter_zip}[kind]
    return reader(path, max_member_bytes)


def _iter_dir(root: Path, limit: int, read: bool = True) -> Iterator[Member | MemberRef | Reject]:
    """Files of ``root``; with ``read=False`` a :class:`MemberRef` instead of the bytes."""
    if not root.is_dir():
        raise ArchiveError(f"image source {root} is not a directory")
    entries: list[tuple[str, os.DirEntry]] = []
    stack = [(root, "")]
    while stack:
        folder, prefix = stack.pop()
        try:
            with os.scandir(folder) as it:
                for entry in it:
                    rel = prefix + entry.name
                    if entry.is_dir(follow_symlinks=False):
                        stack.append((Path(entry.path), rel + "/"))
                    else:
                        entries.append((rel, entry))
        except OSError as exc:
            raise _unlistable(folder, root, exc) from exc
    entries.sort(key=lambda e: e[0])
    log.debug("image directory %s: %d files", root, len(entries))
    for key, entry in entries:
        if entry.is_symlink():
            yield Reject(key, "not-regular-file: symlink (not followed)")
        elif not entry.is_file(follow_symlinks=False):
            yield Reject(key, "not-regular-file: device, FIFO or socket")
        elif _is_junk(key):
            yield Reject(key, "not-an-image: OS metadata file")
        elif read:
            yield _read_dir_file(key, entry.path, limit)
        else:
            yield MemberRef(key, -1, 0)


def _read_dir_file(key: str, path: str, limit: int) -> Member | Reject:
    # O_NOFOLLOW and the fstat re-check close the race of a file swapped for
    # a symlink or FIFO after listing; O_NONBLOCK keeps a FIFO from hanging.
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        return Reject(key, f"unreadable-member: {exc.strerror or exc}")
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return Reject(key, "not-regular-file: changed while reading")
        if st.st_size > limit:
            return _too_large(key, st.st_size, limit)
        try:
            data = _read_capped(f, limit + 1, st.st_size)
        except OSError as exc:
            return Reject(key, f"unreadable-member: {exc.strerror or exc}")
    return _finish(key, data, limit)


_TAR_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError)
# tarfile reads a GNU long-name or pax header whole before we see it: a
# gzip-compressed 1 GiB "name" is a memory bomb (3.1 GB peak, measured).
_META_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE,
               tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)
MAX_META_BYTES = 2**20


class _BoundedTarInfo(tarfile.TarInfo):
    """A TarInfo that refuses extended headers over :data:`MAX_META_BYTES`."""

    def _proc_member(self, tf):
        if self.type in _META_TYPES and self.size > MAX_META_BYTES:
            raise tarfile.ReadError(f"extended header of {self.size} bytes "
                                    f"(more than {MAX_META_BYTES})")
        return super()._proc_member(tf)


def _iter_tar(path: Path, limit: int) -> Iterator[Member | Reject]:
    try:
        raw = open(path, "rb")
    except OSError as exc:
        raise ArchiveError(f"cannot open tar archive {path}: {exc}") from exc
    n = 0
    with raw:
        try:
            comp = _compression(raw.read(6))
            raw.seek(0)
            # Our own decompressors check CRCs and the end-of-stream marker,
            # which tarfile's stream mode does not.
            gz = lambda f: gzip.GzipFile(fileobj=f, mode="rb")  # noqa: E731
            opener = {"gz": gz, "bz2": bz2.BZ2File, "xz": lzma.LZMAFile}.get(comp)
            stream = opener(raw) if opener else raw
            with tarfile.open(fileobj=stream, mode="r|", tarinfo=_BoundedTarInfo) as tf:
                while (info := tf.next()) is not None:
                    tf.members.clear()  # stream mode keeps every header otherwise
                    n += 1
                    if (item := _tar_member(tf, info, limit)) is not None:
                        yield item
                # tarfile ends quietly on a short header; a complete archive
                # ends on a full block of zeros.
                if tf.offset and tf.fileobj.tell() < tf.offset + tarfile.BLOCKSIZE:
                    raise tarfile.ReadError("archive ends without an end-of-archive marker")
            while stream is not raw and stream.read(2**20):
                pass  # to the end of the stream, so that its CRC and length are checked
        except _TAR_ERRORS as exc:
            raise ArchiveError(
                f"tar archive {path} is truncated or corrupt after {n} members ({exc}): "
                "re-create or re-download it"
            ) from exc
    log.debug("tar archive %s: %d members", path, n)


def _tar_member(tf: tarfile.TarFile, info: tarfile.TarInfo, limit: int) -> Member | Reject | None:
    if info.isdir():
        return None
    key, problem = _check_name(info.name)
    if problem:
        return Reject(key, problem)
    if not info.isreg():
        what = "symlink" if info.issym() else "hardlink" if info.islnk() else "device or FIFO"
        return Reject(key, f"not-regular-file: {what}")
    if _is_junk(key):
        return Reject(key, "not-an-image: OS metadata file")
    if info.size > limit:
        return _too_large(key, info.size, limit)
    f = tf.extractfile(info)
    data = _read_capped(f, limit + 1, info.size) if f is not None else b""
    return _finish(key, data, limit)


def open_zip(path: Path) -> zipfile.ZipFile:
    """Open a zip archive, or raise :class:`ArchiveError` saying it is broken."""
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise ArchiveError(
            f"zip archive {path} is truncated or corrupt ({exc}): re-create or re-download it"
        ) from exc


def _iter_zip(path: Path, limit: int) -> Iterator[Member | Reject]:
    with open_zip(path) as zf:
        infos = zf.infolist()
        log.debug("zip archive %s: %d entries", path, len(infos))
        for info in infos:
            checked = zip_entry_check(info, limit)
            if checked is None:
                continue
            key, reject = checked
            yield reject if reject is not None else _read_zip_member(zf, info, key, limit)


def zip_entry_check(info: zipfile.ZipInfo, limit: int) -> tuple[str, Reject | None] | None:
    """``(key, reject or None)`` judged from a zip entry's header; None for a directory."""
    if info.is_dir() or stat.S_ISDIR(info.external_attr >> 16):
        return None
    key, problem = _check_name(info.filename)
    if problem:
        return key, Reject(key, problem)
    mode = stat.S_IFMT(info.external_attr >> 16)
    if mode and mode != stat.S_IFREG:
        what = "symlink" if mode == stat.S_IFLNK else "device or FIFO"
        return key, Reject(key, f"not-regular-file: {what}")
    if _is_junk(key):
        return key, Reject(key, "not-an-image: OS metadata file")
    if info.file_size > limit:
        return key, _too_large(key, info.file_size, limit)
    return key, None


def _read_zip_member(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, key: str, limit: int
) -> Member | Reject:
    # zipfile stops at the size the header declares, and a header that lies
    # (a zip bomb) then shows up as a CRC error. Lifting that cap shows the
    # real size instead; the read below is what bounds memory.
    probe = copy.copy(info)
    probe.file_size = 1 << 62
    try:
        with zf.open(probe) as f:
            data = _read_capped(f, limit + 1, info.file_size)
    except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError,
            RuntimeError, NotImplementedError) as exc:  # the last two: encrypted, unknown method
        return Reject(key, f"unreadable-member: {exc}")
    if len(data) <= limit and len(data) != info.file_size:
        size = info.file_size
        return Reject(key, f"unreadable-member: {len(data)} bytes but its header says {size}")
    return _finish(key, data, limit)
