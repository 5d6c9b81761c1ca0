"""Read image files out of a directory, a tar or a zip, safely, as a stream.

Nothing is ever extracted to disk. What kind of container a path is
(:func:`detect_image_source`), and the streaming readers
(:func:`iter_members`); each member is judged by the checks of
:mod:`.members`, whose docstring lists the reject reasons. A broken
container (truncated gzip or tar, corrupt zip central directory,
unreadable directory) raises :class:`~digitbatch.errors.ArchiveError`.
"""

from __future__ import annotations

import bz2
import copy
import gzip
import io
import logging
import lzma
import os
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ..errors import ArchiveError, SourceError, SourceNotFoundError, UnknownSourceError
from .base import MemberRef, Reject
from .members import (
    DEFAULT_MAX_MEMBER_BYTES, IMAGE_EXTENSIONS, Member, check_name, compression, escape_name,
    is_image_content, is_junk, looks_like_tar, read_member, too_large,
)

__all__ = ["CONTAINER_KINDS", "DEFAULT_MAX_MEMBER_BYTES", "MAX_META_BYTES", "Member",
           "detect_image_source", "iter_dir", "iter_members", "iter_tar_stream", "open_zip", "read_dir_file",
           "read_zip_member", "zip_entry_check"]

log = logging.getLogger(__name__)

CONTAINER_KINDS = ("dir", "tar", "zip")
# Enough compressed input to reach the first tar header of any bzip2 block.
_SNIFF_INPUT_LIMIT = 2 * 2**20


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
            if looks_like_tar(head):
                return "tar"
            if comp := compression(head):
                f.seek(0)
                return "tar" if looks_like_tar(_decompressed_head(f, comp)) else None
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
            if is_junk(name) or p.is_symlink() or not p.is_file():
                continue
            if p.suffix.lower() in IMAGE_EXTENSIONS:
                return True
            try:
                with open(p, "rb") as f:
                    if is_image_content(f.read(4096)):
                        return True
            except OSError:
                continue
    return False


# --- members ----------------------------------------------------------------


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
    reader = {"dir": iter_dir, "tar": _iter_tar, "zip": _iter_zip}[kind]
    return reader(path, max_member_bytes)


def iter_dir(root: Path, limit: int, read: bool = True) -> Iterator[Member | MemberRef | Reject]:
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
    for rel, entry in entries:
        key = escape_name(rel)  # (a name that is not UTF-8: an escaped key)
        if entry.is_symlink():
            yield Reject(key, "not-regular-file: symlink (not followed)")
        elif not entry.is_file(follow_symlinks=False):
            yield Reject(key, "not-regular-file: device, FIFO or socket")
        elif is_junk(key):
            yield Reject(key, "not-an-image: OS metadata file")
        elif read:
            yield read_dir_file(key, entry.path, limit)
        else:
            try:
                size = entry.stat(follow_symlinks=False).st_size
            except OSError:
                size = 0  # (reading it says why)
            yield MemberRef(key, -1, size, None if key == rel else rel)


def read_dir_file(key: str, path: str, limit: int) -> Member | Reject:
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
            return too_large(key, st.st_size, limit)
        try:
            return read_member(key, f, st.st_size, limit)
        except OSError as exc:
            return Reject(key, f"unreadable-member: {exc.strerror or exc}")


_TAR_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError)
# tarfile reads a GNU long-name or pax header whole before we see it: a
# gzip-compressed 1 GiB "name" is a memory bomb (3.1 GB peak, measured).
_META_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE,
               tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)
MAX_META_BYTES = 2**20
_STREAM_BUFSIZE = 2**20


class _BoundedTarInfo(tarfile.TarInfo):
    """A TarInfo that refuses extended headers over :data:`MAX_META_BYTES`."""

    def _proc_member(self, tf):
        if self.type in _META_TYPES and self.size > MAX_META_BYTES:
            raise tarfile.ReadError(f"extended header of {self.size} bytes "
                                    f"(more than {MAX_META_BYTES})")
        return super()._proc_member(tf)


def _iter_tar(path: Path, limit: int) -> Iterator[Member | Reject]:
    return iter_tar_stream(path, limit)


def iter_tar_stream(path: Path, limit: int, *, read: bool = True,
                    want: set[int] | None = None) -> Iterator[Member | MemberRef | Reject]:
    """The members of a (compressed) tar as a stream, in archive order.

    ``read=False``: a :class:`MemberRef` holding the member's ordinal (its
    place among the archive's non-directory members) instead of its bytes.
    ``want``: only the members of those ordinals (read), the others
    skipped; the stream stops after the last one wanted.
    """
    try:
        raw = open(path, "rb")
    except OSError as exc:
        raise ArchiveError(f"cannot open tar archive {path}: {exc}") from exc
    n = 0
    j = -1  # ordinal of the last non-directory member
    last = max(want) if want else -1
    with raw:
        try:
            comp = compression(raw.read(6))
            raw.seek(0)
            # Our own decompressors check CRCs and the end-of-stream marker,
            # which tarfile's stream mode does not.
            gz = lambda f: gzip.GzipFile(fileobj=f, mode="rb")  # noqa: E731
            opener = {"gz": gz, "bz2": bz2.BZ2File, "xz": lzma.LZMAFile}.get(comp)
            stream = opener(raw) if opener else raw
            # (bufsize: tarfile skips a member's data by reads of that size)
            with tarfile.open(fileobj=stream, mode="r|", tarinfo=_BoundedTarInfo,
                              bufsize=_STREAM_BUFSIZE) as tf:
                while (info := tf.next()) is not None:
                    tf.members.clear()  # stream mode keeps every header otherwise
                    n += 1
                    if (checked := _tar_header_check(info, limit)) is None:
                        continue
                    j += 1
                    if want is not None and j not in want:
                        continue
                    key, reject = checked
                    if reject is not None:
                        yield reject
                    elif not read:
                        yield MemberRef(key, j, info.size)
                    else:
                        f = tf.extractfile(info)
                        yield read_member(key, f if f is not None else io.BytesIO(), info.size,
                                          limit)
                    if want is not None and j >= last:
                        return
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


def _tar_header_check(info: tarfile.TarInfo, limit: int) -> tuple[str, Reject | None] | None:
    """``(key, reject or None)`` judged from a tar header; None for a directory."""
    if info.isdir():
        return None
    key, problem = check_name(info.name)
    if problem:
        return key, Reject(key, problem)
    if not info.isreg():
        what = "symlink" if info.issym() else "hardlink" if info.islnk() else "device or FIFO"
        return key, Reject(key, f"not-regular-file: {what}")
    if is_junk(key):
        return key, Reject(key, "not-an-image: OS metadata file")
    if info.size > limit:
        return key, too_large(key, info.size, limit)
    return key, None


def open_zip(path: Path) -> zipfile.ZipFile:
    """Open a zip archive, or raise :class:`ArchiveError` saying it is broken."""
    try:
        return zipfile.ZipFile(path)
    except UnicodeDecodeError as exc:
        raise ArchiveError(
            f"zip archive {path} flags a member name as UTF-8, but its bytes "
            f"{exc.object[:80]!r} are not UTF-8: the zip is corrupt; re-create it (a name "
            f"in another encoding must be stored without that flag)") from exc
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
            yield reject if reject is not None else read_zip_member(zf, info, key, limit)


def zip_entry_check(info: zipfile.ZipInfo, limit: int) -> tuple[str, Reject | None] | None:
    """``(key, reject or None)`` judged from a zip entry's header; None for a directory."""
    if info.is_dir() or stat.S_ISDIR(info.external_attr >> 16):
        return None
    key, problem = check_name(info.filename)
    if problem:
        return key, Reject(key, problem)
    mode = stat.S_IFMT(info.external_attr >> 16)
    if mode and mode != stat.S_IFREG:
        what = "symlink" if mode == stat.S_IFLNK else "device or FIFO"
        return key, Reject(key, f"not-regular-file: {what}")
    if is_junk(key):
        return key, Reject(key, "not-an-image: OS metadata file")
    if info.file_size > limit:
        return key, too_large(key, info.file_size, limit)
    return key, None


def read_zip_member(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, key: str, limit: int
) -> Member | Reject:
    # zipfile stops at the size the header declares, and a header that lies
    # (a zip bomb) then shows up as a CRC error. Lifting that cap shows the
    # real size instead; the read below is what bounds memory.
    probe = copy.copy(info)
    probe.file_size = 1 << 62
    try:
        with zf.open(probe) as f:
            item = read_member(key, f, info.file_size, limit)
    except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError,
            RuntimeError, NotImplementedError) as exc:  # the last two: encrypted, unknown method
        return Reject(key, f"unreadable-member: {exc}")
    if isinstance(item, Member) and len(item.data) != info.file_size:
        got, size = len(item.data), info.file_size
        return Reject(key, f"unreadable-member: {got} bytes but its header says {size}")
    return item
