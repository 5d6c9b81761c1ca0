"""Member references: where each member's bytes lie in a seekable container.

Streaming a container member by member (:func:`~.archive.iter_members`)
keeps the client process busy reading and pickling bytes while the workers
wait; on 2 cores that alone was most of the ingest time. For
containers that can be read at random (an uncompressed tar, a zip, a
directory) the client only lists where members are (:func:`iter_refs`), and
each worker reads its batch itself (:func:`read_refs`). Compressed tars
still stream, since gzip cannot be entered in the middle: listed by
ordinal (:func:`stream_refs`), a task streams the tar from its start to
its members.

The per-member safety checks are the ones of :mod:`.members`: names,
member types, sizes and content are judged by the same functions, so a
member gets the same reject reason whichever path read it.
"""

from __future__ import annotations

import functools
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import ArchiveError
from . import archive, members
from .base import MemberRef, Reject

BLOCK = 512
_REGULAR = (b"0", b"\x00", b"7")
_LINKS = {b"1": "hardlink", b"2": "symlink"}
_SPECIAL = {b"3": "character device", b"4": "block device", b"6": "FIFO"}
_META = (b"x", b"g", b"L", b"K")  # pax, pax global, GNU long name, GNU long link name
# pax and GNU long-name headers are read whole: real ones are a few hundred
# bytes; a (sparse) gigabyte one would be read into memory.
MAX_META_BYTES = 2**20


def stream_refs(path: Path, limit: int) -> Iterator[MemberRef | Reject]:
    """References by ordinal into a compressed tar (its headers read, no member kept)."""
    return archive.iter_tar_stream(path, limit, read=False)


def seekable_kind(path: Path, kind: str) -> bool:
    """True when members of ``path`` can be read at random by the workers."""
    if kind in ("dir", "zip"):
        return True
    with open(path, "rb") as fh:
        return members.compression(fh.read(6)) is None


def iter_refs(path: Path, kind: str, *, limit: int) -> Iterator[MemberRef | Reject]:
    """References (or rejects, judged from headers alone) in source order."""
    if kind == "tar":
        yield from _tar_refs(path, limit)
    elif kind == "zip":
        yield from _zip_refs(path, limit)
    else:
        yield from _dir_refs(path, limit)


def read_refs(path: str, kind: str, refs: list[MemberRef], *,
              limit: int) -> Iterator[members.Member | Reject]:
    """Read the referenced members (on a worker) and apply the content checks.

    Lazily, one member at a time: a task holds one member's bytes, not its
    chunk's. References into a compressed tar (ordinals) are read by
    streaming it from its start (gzip cannot be entered in the middle).
    """
    if kind == "dir":
        root = Path(path)
        for r in refs:
            yield archive.read_dir_file(r.key, str(root / (r.name or r.key)), limit)
    elif kind == "zip":
        zf = _open_zip(path, os.stat(path).st_mtime_ns)
        infos = zf.infolist()
        for r in refs:
            yield archive.read_zip_member(zf, infos[r.offset], r.key, limit)
    elif not seekable_kind(Path(path), kind):
        yield from _stream_refs(path, refs, limit)
    else:
        fd = os.open(path, os.O_RDONLY)
        try:
            yield from _read_tar(fd, path, refs, limit)
        finally:
            os.close(fd)


# Small members that lie close together in a tar are read together, by one
# pread of at most RUN_BYTES (a few hundred bytes each, one read per member
# cost more than decoding them); a member over SMALL_MEMBER bytes is read alone.
RUN_BYTES = 2**20
SMALL_MEMBER = 2**16
# ... as long as the bytes between two of them (headers, skipped members) stay under this
RUN_GAP = 2**14


def runs(refs: list[MemberRef]) -> Iterator[tuple[int, int]]:
    """``(i, j)``: the refs ``refs[i:j]`` read by one pread (:data:`RUN_BYTES`)."""
    i, n = 0, len(refs)
    while i < n:
        r = refs[i]
        j = i + 1
        if r.size <= SMALL_MEMBER:
            start, end = r.offset, r.offset + r.size
            while j < n:
                q = refs[j]
                if (q.size > SMALL_MEMBER or q.offset < end or q.offset - end > RUN_GAP
                        or q.offset + q.size - start > RUN_BYTES):
                    break
                end = q.offset + q.size
                j += 1
        yield i, j
        i = j


def _read_tar(fd: int, path: str, refs: list[MemberRef], limit: int) -> Iterator:
    changed = f"tar archive {path} changed or was truncated while reading"
    for i, j in runs(refs):
        r = refs[i]
        if j == i + 1 and r.size > SMALL_MEMBER:
            span = _Span(fd, r.offset, r.size)
            item = members.read_member(r.key, span, r.size, limit)
            if isinstance(item, members.Member) and span.left:
                raise ArchiveError(changed)
            yield item
            continue
        start, last = r.offset, refs[j - 1]
        buf = os.pread(fd, last.offset + last.size - start, start)
        if len(buf) < last.offset + last.size - start:
            raise ArchiveError(changed)
        for k in range(i, j):
            q = refs[k]
            a = q.offset - start
            yield members.finish_member(q.key, buf[a:a + q.size], limit)


class _Span:
    """``size`` bytes of a file at ``offset``, as a file to read (by ``pread``)."""

    def __init__(self, fd: int, offset: int, size: int):
        self.fd, self.pos, self.left = fd, offset, size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n is None or n < 0 else min(n, self.left)
        data = os.pread(self.fd, n, self.pos) if n else b""
        self.pos += len(data)
        self.left -= len(data)
        return data


def _stream_refs(path: str, refs: list[MemberRef], limit: int) -> Iterator:
    want = {r.offset: r for r in refs}
    got = archive.iter_tar_stream(Path(path), limit, want=set(want))
    for r in refs:
        item = next(got, None)
        if item is None or item.key != r.key:
            raise ArchiveError(f"tar archive {path} changed since it was listed (member "
                               f"{r.offset + 1} is no longer {r.key!r}): score it again")
        yield item
    got.close()


@functools.lru_cache(maxsize=4)
def _open_zip(path: str, mtime_ns: int) -> zipfile.ZipFile:
    # Parsing the central directory once per worker, not once per task.
    return zipfile.ZipFile(path)


# --- directories --------------------------------------------------------------


def _dir_refs(root: Path, limit: int) -> Iterator[MemberRef | Reject]:
    yield from archive.iter_dir(root, limit, read=False)


# --- zip --------------------------------------------------------------------


def _zip_refs(path: Path, limit: int) -> Iterator[MemberRef | Reject]:
    with archive.open_zip(path) as zf:
        for i, info in enumerate(zf.infolist()):
            checked = archive.zip_entry_check(info, limit)
            if checked is not None:
                key, reject = checked
                yield reject if reject is not None else MemberRef(key, i, info.file_size)


# --- uncompressed tar: a header scan ------------------------------------------


def _number(field: bytes) -> int:
    """A tar numeric field: octal text, or GNU base-256 when the high bit is set."""
    if field and field[0] & 0x80:
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.split(b"\x00", 1)[0].strip()
    value = int(text, 8) if text else 0
    if value < 0:
        raise ValueError(f"negative number {text[:20]!r}")
    return value


def _text(field: bytes) -> str:
    return field.split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")


def _pax_path(data: bytes) -> tuple[str | None, int | None]:
    """``path`` and ``size`` of a pax extended header; ValueError if it is malformed.

    Each record is ``"LENGTH KEY=VALUE\\n"`` where LENGTH counts the whole
    record. A record that does not cover its own length field (``0 ...``,
    negative) or runs past the header is refused: walking by such a length
    would never end.
    """
    path = size = None
    pos = 0
    while pos < len(data):
        if data[pos:] == bytes(len(data) - pos):
            break  # NUL padding after the last record
        space = data.index(b" ", pos)
        digits = data[pos:space]
        if not digits.isdigit():
            raise ValueError(f"pax record length {digits[:20]!r} at byte {pos} is not a number")
        length = int(digits)
        end = pos + length
        if end <= space + 1 or end > len(data) or data[end - 1:end] != b"\n":
            raise ValueError(f"pax record at byte {pos} has a bad length {length}")
        key, _, value = data[space + 1: end - 1].partition(b"=")
        if key == b"path":
            path = value.decode("utf-8", "surrogateescape")
        elif key == b"size":
            if not value.isdigit():
                raise ValueError(f"pax size {value[:20]!r} is not a number")
            size = int(value)
        pos = end
    return path, size


def _tar_refs(path: Path, limit: int) -> Iterator[MemberRef | Reject]:
    """Walk the headers of an uncompressed tar without reading member data."""
    fd = os.open(path, os.O_RDONLY)
    try:
        for name, typ, data_at, size in _tar_headers(fd, path):
            if typ == b"5" or (typ in _REGULAR and name.endswith("/")):
                continue  # a directory entry
            key, problem = members.check_name(name)
            if problem:
                yield Reject(key, problem)
            elif typ in _LINKS or typ in _SPECIAL:
                what = _LINKS.get(typ) or "device or FIFO"
                yield Reject(key, f"not-regular-file: {what}")
            elif typ not in _REGULAR:
                yield Reject(key, f"not-regular-file: tar member type {typ!r}")
            elif members.is_junk(key):
                yield Reject(key, "not-an-image: OS metadata file")
            elif size > limit:
                yield members.too_large(key, size, limit)
            else:
                yield MemberRef(key, data_at, size)
    finally:
        os.close(fd)


def _tar_headers(fd: int, path: Path) -> Iterator[tuple[str, bytes, int, int]]:
    """``(name, type, data offset, size)`` of every member header, in order.

    Plain headers (one 512-byte block, a regular file, directory, link or
    device, octal fields) are taken a window at a time by
    :func:`_plain_headers`; at the first header it does not take (pax or
    GNU long-name headers, a base-256 number, anything corrupt or
    truncated), :func:`_careful_member` reads that one member and its
    extended headers, or raises the archive's error; then the fast scan
    goes on.
    """
    end = os.fstat(fd).st_size
    offset, n = 0, 0
    while True:
        offset, n = yield from _plain_headers(fd, end, offset, n)
        if offset is None:
            return
        entry, offset, n = _careful_member(fd, path, end, offset, n)
        if entry is None:
            return
        yield entry


# the member types the fast scan takes (anything else goes to _careful_member)
_PLAIN = frozenset(_REGULAR) | {b"5"} | set(_LINKS) | set(_SPECIAL)
_ZERO = bytes(BLOCK)
# the fast scan reads this much at a time (and one block when members are bigger)
WINDOW = 2**20


def _plain_headers(fd: int, end: int, offset: int, n: int):
    """The plain headers from ``offset`` on (see :func:`_tar_headers`).

    Yields ``(name, type, data offset, size)``; returns ``(offset, n)`` of
    the first header it leaves to the careful walk, or ``(None, n)`` at the
    end-of-archive block. Checksums are checked a window at a time (with
    numpy): only headers up to the first bad one are yielded, and the
    careful walk then reports it.
    """
    want = WINDOW
    while True:
        buf = os.pread(fd, want, offset)
        base = offset
        found: list[tuple[str, bytes, int, int]] = []
        rows: list[int] = []
        stored: list[int] = []
        status = "window"  # ran out of the window; or "careful", "end"
        last = len(buf) - BLOCK
        while offset - base <= last:
            p = offset - base
            typ = buf[p + 156:p + 157]
            if typ not in _PLAIN:
                status = "careful"
                break
            if typ == b"\x00" and buf[p:p + BLOCK] == _ZERO:
                status = "end"
                break
            size_field = buf[p + 124:p + 136]
            try:
                if size_field[0] & 0x80:
                    raise ValueError("base-256")
                size = int(size_field.partition(b"\x00")[0] or b"0", 8)
                checksum = int(buf[p + 148:p + 156].partition(b"\x00")[0] or b"0", 8)
            except ValueError:
                status = "careful"
                break
            data_at = offset + BLOCK
            following = data_at + -(-size // BLOCK) * BLOCK
            if size < 0 or following > end:
                status = "careful"
                break
            name = buf[p:p + 100].partition(b"\x00")[0].decode("utf-8", "surrogateescape")
            if buf[p + 257:p + 262] == b"ustar":
                prefix = buf[p + 345:p + 500].partition(b"\x00")[0]
                if prefix:
                    name = prefix.decode("utf-8", "surrogateescape") + "/" + name
            found.append((name, typ, data_at, size))
            rows.append(p // BLOCK)
            stored.append(checksum)
            offset = following
        good = _checksums_ok(buf, rows, stored)
        yield from found[:good]
        n += good
        if good < len(found):
            return base + rows[good] * BLOCK, n
        if status == "end":
            return None, n
        if status == "careful" or len(buf) < want:
            return offset, n  # (a window cut short by the end of the file: truncated)
        want = BLOCK if offset - base > WINDOW else WINDOW


def _checksums_ok(buf: bytes, rows: list[int], stored: list[int]) -> int:
    """How many of the headers at block ``rows`` of ``buf`` have their ``stored``
    checksum, counting from the first (the sum of the header's bytes, its
    checksum field counted as 8 spaces)."""
    if not rows:
        return 0
    blocks = np.frombuffer(buf, np.uint8, count=len(buf) // BLOCK * BLOCK).reshape(-1, BLOCK)
    heads = blocks[rows]
    sums = heads.sum(axis=1, dtype=np.int64) - heads[:, 148:156].sum(axis=1, dtype=np.int64) + 8 * 32
    bad = np.flatnonzero(sums != np.asarray(stored, np.int64))
    return int(bad[0]) if bad.size else len(rows)


def _careful_member(fd: int, path: Path, end: int, offset: int, n: int):
    """One member from ``offset`` with its extended headers, every field
    checked: ``(entry or None at the end, next offset, n)``."""
    long_name: str | None = None
    pax_size: int | None = None
    while True:
        header = os.pread(fd, BLOCK, offset)
        if len(header) < BLOCK:
            raise ArchiveError(
                f"tar archive {path} is truncated after {n} members (no end-of-archive "
                f"marker): re-create or re-download it")
        if header == _ZERO:
            return None, offset, n
        try:
            checksum = _number(header[148:156])
            size = _number(header[124:136])
        except ValueError as exc:
            raise ArchiveError(f"tar archive {path}: corrupt header at byte {offset} ({exc})") from exc
        # (the checksum field itself counts as 8 spaces)
        computed = sum(header) - sum(header[148:156]) + 8 * 32
        if checksum != computed:
            raise ArchiveError(
                f"tar archive {path}: header checksum mismatch at byte {offset}: the archive "
                f"is corrupt; re-create or re-download it")
        typ = header[156:157]
        data_at = offset + BLOCK
        if pax_size is not None and typ not in _META:
            size = pax_size
        offset = data_at + -(-size // BLOCK) * BLOCK
        if offset > end:
            raise ArchiveError(f"tar archive {path} is truncated inside member {n + 1}")
        if typ in _META:
            if size > MAX_META_BYTES:
                raise ArchiveError(
                    f"tar archive {path}: extended header of {size} bytes at byte "
                    f"{data_at - BLOCK} (more than {MAX_META_BYTES}): the archive is "
                    f"corrupt or hostile; re-create it")
            if typ in (b"g", b"K"):
                continue  # a global pax header, a GNU long link target: nothing we use
            meta = os.pread(fd, size, data_at)
            if typ == b"L":
                long_name = _text(meta)
            elif typ == b"x":
                try:
                    pax_name, pax_size = _pax_path(meta)
                except ValueError as exc:
                    raise ArchiveError(f"tar archive {path}: corrupt pax header ({exc})") from exc
                long_name = pax_name or long_name
            continue
        n += 1
        name = long_name
        if name is None:
            name = _text(header[:100])
            prefix = _text(header[345:500]) if header[257:262] == b"ustar" else ""
            name = f"{prefix}/{name}" if prefix else name
        return (name, typ, data_at, size), offset, n
