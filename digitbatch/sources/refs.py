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
member gets the same reject reason whichever path read it. The header
scan of an uncompressed tar is :mod:`.tarscan`'s.
"""

from __future__ import annotations

import functools
import itertools
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import ArchiveError
from . import archive, members, tarscan
from .base import MemberRef, Reject


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
    return itertools.chain.from_iterable(iter_ref_batches(path, kind, limit=limit))


def iter_ref_batches(path: Path, kind: str, *, limit: int) -> Iterator[list[MemberRef | Reject]]:
    """:func:`iter_refs` as lists of entries (an uncompressed tar is listed a
    window of headers at a time: :mod:`.tarscan`)."""
    if kind == "tar":
        return tarscan.tar_ref_batches(path, limit)
    # (one entry a list: every entry before a broken one is handed on first)
    return ([e] for e in (_zip_refs(path, limit) if kind == "zip" else _dir_refs(path, limit)))


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


def tar_runs(fd: int, path: str, refs: list[MemberRef], limit: int
             ) -> Iterator[tuple[int, int, bytes | members.Member | Reject]]:
    """``(i, j, buf)``: the members ``refs[i:j]`` of a plain tar (open as ``fd``)
    read by one ``pread`` (:func:`runs`; member ``q`` is ``buf[q.offset -
    refs[i].offset:][:q.size]``, not yet judged), or ``(i, i + 1, item)``: a
    large member read alone and judged (:func:`.members.read_member`)."""
    changed = f"tar archive {path} changed or was truncated while reading"
    for i, j in runs(refs):
        r = refs[i]
        if j == i + 1 and r.size > SMALL_MEMBER:
            span = _Span(fd, r.offset, r.size)
            item = members.read_member(r.key, span, r.size, limit)
            if isinstance(item, members.Member) and span.left:
                raise ArchiveError(changed)
            yield i, j, item
            continue
        start, last = r.offset, refs[j - 1]
        buf = os.pread(fd, last.offset + last.size - start, start)
        if len(buf) < last.offset + last.size - start:
            raise ArchiveError(changed)
        yield i, j, buf


def _read_tar(fd: int, path: str, refs: list[MemberRef], limit: int) -> Iterator:
    for i, j, got in tar_runs(fd, path, refs, limit):
        if not isinstance(got, bytes):
            yield got
            continue
        start = refs[i].offset
        for k in range(i, j):
            q = refs[k]
            a = q.offset - start
            yield members.finish_member(q.key, got[a:a + q.size], limit)


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
