"""The header scan of an uncompressed tar: where each member's bytes lie.

:func:`tar_ref_batches` lists a tar without reading member data, in source
order, as lists of :class:`~.base.MemberRef` (or :class:`~.base.Reject`,
judged from the header alone) a window of headers at a time. Three walks
give the same entries:

- the *window* walk (:func:`_window_prefix`) takes, with numpy over a
  whole window, the run of headers from the window's start that are plain
  in every field (octal numbers in their usual form, a regular file,
  directory, link or device, the checksum right, the member inside the
  file); when the names of the run are plain too (:func:`.members.plain_names`)
  their references are made in bulk, else each member is judged alone;
- the *plain* walk (:func:`_plain_headers`) goes on from the first header
  the window walk left, header by header, to the window's end;
- the *careful* walk (:func:`_careful_member`) reads one member and its
  extended headers (pax, GNU long names), base-256 numbers, and reports a
  corrupt or truncated archive.

Each is an optimisation of the next: a header the faster walk does not
take goes to the slower one, so a member is judged the same whichever walk
read it, by the checks of :mod:`.members`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import ArchiveError
from . import members
from .base import MemberRef, Reject, member_refs

BLOCK = 512
_REGULAR = (b"0", b"\x00", b"7")
_LINKS = {b"1": "hardlink", b"2": "symlink"}
_SPECIAL = {b"3": "character device", b"4": "block device", b"6": "FIFO"}
_META = (b"x", b"g", b"L", b"K")  # pax, pax global, GNU long name, GNU long link name
# pax and GNU long-name headers are read whole: real ones are a few hundred
# bytes; a (sparse) gigabyte one would be read into memory.
MAX_META_BYTES = 2**20

# the member types the plain walks take (anything else goes to _careful_member)
_PLAIN = frozenset(_REGULAR) | {b"5"} | set(_LINKS) | set(_SPECIAL)
_ZERO = bytes(BLOCK)
# the scan reads this much at a time (see _plain_headers: one block past big
# members, more where headers are dense, from _SMALL on after the careful walk)
WINDOW = 2**20
_SMALL = 4 * BLOCK
# the window walk's numpy pays from this many blocks on (or a whole WINDOW)
_WALK_BLOCKS = 32
# a window holding a header per _DENSE_SPAN bytes or more is followed by
# windows of up to _DENSE * WINDOW bytes
_DENSE_SPAN, _DENSE = 16 * 2**10, 4

# by type byte: is it a type the plain walks take, a regular file's
_PLAIN_CODES = np.zeros(256, bool)
_PLAIN_CODES[[t[0] for t in _PLAIN]] = True
_REGULAR_CODES = np.zeros(256, bool)
_REGULAR_CODES[[t[0] for t in _REGULAR]] = True
_DIR_CODE = ord("5")
_OCTAL_WEIGHTS = 8 ** np.arange(10, -1, -1, dtype=np.int64)  # 11 digits


def tar_refs(path: Path, limit: int) -> Iterator[MemberRef | Reject]:
    """References (or rejects) of an uncompressed tar, one at a time."""
    for batch in tar_ref_batches(path, limit):
        yield from batch


def tar_ref_batches(path: Path, limit: int) -> Iterator[list[MemberRef | Reject]]:
    """The entries of an uncompressed tar in source order, as lists (a window's
    worth at a time, or one member's from the careful walk)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        end = os.fstat(fd).st_size
        offset, n, want = 0, 0, WINDOW
        while True:
            offset, n = yield from _plain_headers(fd, end, offset, n, limit, want)
            if offset is None:
                return
            header, offset, n = _careful_member(fd, path, end, offset, n)
            if header is None:
                return
            entry = judge(*header, limit)
            if entry is not None:
                yield [entry]
            # (after an extended header the next is often one too: read a
            # little first, not a whole window per member)
            want = _SMALL
    finally:
        os.close(fd)


def judge(name: str, typ: bytes, data_at: int, size: int, limit: int) -> MemberRef | Reject | None:
    """One member from its header alone: its reference, a reject, or None (a directory)."""
    if typ == b"5" or (typ in _REGULAR and name.endswith("/")):
        return None  # a directory entry
    key, problem = members.check_name(name)
    if problem:
        return Reject(key, problem)
    if typ in _LINKS or typ in _SPECIAL:
        what = _LINKS.get(typ) or "device or FIFO"
        return Reject(key, f"not-regular-file: {what}")
    if typ not in _REGULAR:
        return Reject(key, f"not-regular-file: tar member type {typ!r}")
    if members.is_junk(key):
        return Reject(key, "not-an-image: OS metadata file")
    if size > limit:
        return members.too_large(key, size, limit)
    return MemberRef(key, data_at, size)


# --- the plain and careful walks -----------------------------------------------


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


def _plain_headers(fd: int, end: int, offset: int, n: int, limit: int, want: int):
    """The plain headers from ``offset`` on, judged (see the module docstring).

    Yields lists of entries; returns ``(offset, n)`` of the first header it
    leaves to the careful walk, or ``(None, n)`` at the end-of-archive
    block. Checksums are checked a window at a time (with numpy): only
    headers up to the first bad one are taken, and the careful walk then
    reports it. ``want``: how much to read first.
    """
    want = min(want, WINDOW)
    while True:
        buf = os.pread(fd, want, offset)
        base = offset
        count = 0
        if len(buf) >= min(WINDOW, _WALK_BLOCKS * BLOCK):
            taken, count, offset = _window_prefix(buf, base, end, limit)
            if count:
                n += count
                yield taken
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
        judged = [e for e in (judge(*h, limit) for h in found[:good]) if e is not None]
        if judged:
            yield judged
        n += good
        if good < len(found):
            return base + rows[good] * BLOCK, n
        if status == "end":
            return None, n
        if status == "careful" or len(buf) < want:
            return offset, n  # (a window cut short by the end of the file: truncated)
        # The next read: one block where the next header lies more than a
        # window past this one (members that big are stepped over, not read);
        # a window (of up to _DENSE windows where headers are dense: fewer numpy
        # passes); growing to it after an extended header.
        cap = _DENSE * WINDOW if count * _DENSE_SPAN >= len(buf) else WINDOW
        if offset - base - len(buf) > WINDOW:
            want = BLOCK
        elif want <= BLOCK or want >= WINDOW:
            want = cap
        else:
            want = min(cap, 4 * want)


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


# --- the window walk ----------------------------------------------------------


def _digits(fields: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each byte's value as an octal digit, and whether it is one."""
    v = fields - np.uint8(48)
    return v, v < 8


def _sizes(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every block's size field read as a header's, as ``int(field up to its
    first NUL, 8)`` reads it, where it has a usual form: ``(ok, value)``.
    The usual forms: 11 octal digits and a NUL or space, or 12 digits. Only
    blocks whose field starts with a digit and ends with a digit, NUL or
    space are parsed (in a window of member data few do)."""
    first, last = blocks[:, 124], blocks[:, 135]
    maybe = np.flatnonzero((first >= 48) & (first <= 55) & (
        (last == 0) | (last == 32) | ((last >= 48) & (last <= 55))))
    d = blocks[maybe, 124:136]
    v, isd = _digits(d)
    value = v[:, :11].astype(np.int64) @ _OCTAL_WEIGHTS
    value = np.where(isd[:, 11], value * 8 + v[:, 11], value)
    ok = np.zeros(len(blocks), bool)
    ok[maybe] = isd[:, :11].all(axis=1) & ((d[:, 11] == 0) | (d[:, 11] == 32) | isd[:, 11])
    size = np.zeros(len(blocks), np.int64)
    size[maybe] = value
    return ok, size


def _checksums(heads: np.ndarray) -> np.ndarray:
    """True where a header's checksum field is in a usual form (6 octal digits
    and a NUL, or 7 digits and a NUL or space) and matches its bytes."""
    field = heads[:, 148:156]
    v, isd = _digits(field)
    six = isd[:, :6].all(axis=1)
    ok6 = six & (field[:, 6] == 0)
    ok7 = six & isd[:, 6] & ((field[:, 7] == 0) | (field[:, 7] == 32))
    stored = v[:, :6].astype(np.int64) @ _OCTAL_WEIGHTS[5:]
    stored = np.where(ok7, stored * 8 + v[:, 6], stored)
    # (by halves: 256 bytes cannot overflow 16 bits, and 16-bit sums are quick)
    sums = (heads[:, :256].sum(axis=1, dtype=np.uint16).astype(np.int64)
            + heads[:, 256:].sum(axis=1, dtype=np.uint16)
            - field.sum(axis=1, dtype=np.int64) + 8 * 32)
    return (ok6 | ok7) & (sums == stored)


def _window_prefix(buf: bytes, base: int, end: int, limit: int):
    """The run of plain headers at the start of ``buf`` (read at ``base``):
    ``(entries, count, next offset)``, count 0 when the first is not one."""
    nb = len(buf) // BLOCK
    if nb == 0:
        return [], 0, base
    blocks = np.frombuffer(buf, np.uint8, count=nb * BLOCK).reshape(nb, BLOCK)
    ok, size = _sizes(blocks)
    steps = np.where(ok, 1 + (size + (BLOCK - 1)) // BLOCK, 0).tolist()
    rows = []
    i = 0
    while i < nb:
        s = steps[i]
        if not s:
            break
        rows.append(i)
        i += s
    if not rows:
        return [], 0, base
    h = np.array(rows, np.intp)
    heads = blocks[h]
    sizes = size[h]
    data_at = base + (h + 1) * BLOCK
    following = data_at + (sizes + (BLOCK - 1)) // BLOCK * BLOCK
    good = _PLAIN_CODES[heads[:, 156]] & _checksums(heads) & (following <= end)
    if not good.all():
        k = int(np.argmin(good))
        if k == 0:
            return [], 0, base
        heads, data_at, sizes, following = heads[:k], data_at[:k], sizes[:k], following[:k]
    return _judge_run(heads, data_at, sizes, limit), len(heads), int(following[-1])


def _names(heads: np.ndarray) -> tuple[list[str], str | None]:
    """The headers' names (the ustar prefix left out), and the same names each
    followed by a NUL as one text, or None where a name is not UTF-8."""
    k = len(heads)
    field = heads[:, :100]
    nul = field == 0
    region = field.tobytes()
    if region.isascii():  # the usual case: cut the names from one text
        text = region.decode("ascii")
        ends = np.where(nul.any(axis=1), nul.argmax(axis=1), 100) + np.arange(0, 100 * k, 100)
        names = list(map(text.__getitem__, map(slice, range(0, 100 * k, 100), ends.tolist())))
        return names, "\x00".join(names) + "\x00"
    keep = np.ones((k, 101), bool)
    keep[:, :100] = ~np.logical_or.accumulate(nul, axis=1)
    padded = np.zeros((k, 101), np.uint8)
    padded[:, :100] = field
    raw = padded[keep].tobytes()
    try:
        joined = raw.decode("utf-8")
    except UnicodeDecodeError:
        joined = None
    names = (joined if joined is not None
             else raw.decode("utf-8", "surrogateescape")).split("\x00")[:-1]
    return names, joined


def _judge_run(heads: np.ndarray, data_at: np.ndarray, sizes: np.ndarray,
               limit: int) -> list[MemberRef | Reject]:
    """The entries of a run of plain headers: made in bulk when every one is a
    regular file within ``limit`` with a plain name, else judged one by one."""
    files = heads[:, 156] != _DIR_CODE  # directory entries are left out
    if not files.all():
        heads, data_at, sizes = heads[files], data_at[files], sizes[files]
        if not len(heads):
            return []
    names, joined = _names(heads)
    ustar = (heads[:, 257:262] == np.frombuffer(b"ustar", np.uint8)).all(axis=1)
    prefixed = np.flatnonzero(ustar & (heads[:, 345] != 0)).tolist()
    for i in prefixed:
        prefix = bytes(heads[i, 345:500]).partition(b"\x00")[0]
        names[i] = prefix.decode("utf-8", "surrogateescape") + "/" + names[i]
    typs = heads[:, 156]
    if (joined is not None and not prefixed and _REGULAR_CODES[typs].all()
            and int(sizes.max()) <= limit and members.plain_names(joined)):
        return member_refs(names, data_at.tolist(), sizes.tolist())
    out = []
    for name, typ, at, size in zip(names, typs.tolist(), data_at.tolist(), sizes.tolist()):
        entry = judge(name, bytes((typ,)), at, size, limit)
        if entry is not None:
            out.append(entry)
    return out
