"""The one listing of an image container, shared by ingest, scoring and report.

An image directory, tar or zip is listed once, in source order, as
*entries*: a :class:`~.base.MemberRef` where a worker can read the member
itself (a directory, a zip, an uncompressed tar: :mod:`.refs` knows where
its bytes lie; a compressed tar listed for scoring: the member's ordinal,
read by streaming the tar again), a :class:`~.members.Member` holding its
bytes where the container is streamed here (ingest of a compressed tar, or
a local copy of a remote archive the workers cannot see), or a
:class:`~.base.Reject` judged from the header alone.

Keys are unique (:func:`unique_keys`): the first member of a name keeps
it, and every later member of that name (a zip or tar may hold several)
is a ``duplicate-key`` reject, whatever became of the first (:func:`unique_key_batches`
over a listing's lists of entries). Ingest streams the entries into tasks
(:func:`iter_entries`); scoring and report hold the whole :class:`Listing`
(scoring cuts it into slot chunks; report finds members by key).

A task's entries travel as one blob (:func:`pack`): thousands of small
objects in a task's arguments are pickled by the client, again by the
scheduler, and walked one by one by Dask looking for futures. A blob of
references only is a few columns (keys, offsets, sizes), not objects.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import itertools
import operator
import os
import pickle
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .archive import iter_members
from .base import Batch, MemberRef, Reject, label_array, member_refs
from .members import Member
from .refs import iter_ref_batches, read_refs, seekable_kind, stream_refs
from .taskdecode import decode_entries

__all__ = ["Entry", "Listing", "decode_packed", "fingerprint", "iter_entries", "list_archive",
           "pack", "read_entries", "unique_key_batches", "unique_keys", "unpack"]

Entry = MemberRef | Member | Reject

# pack's forms (references only, or any entries) and tags (one per entry kind)
_REFS, _MIXED = "refs", "mixed"
_REF, _MEMBER, _REJECT = 0, 1, 2
_KEY = operator.attrgetter("key")
_REF_FIELDS = tuple(map(operator.attrgetter, ("key", "offset", "size", "name")))


def iter_entries(path: Path, kind: str, *, limit: int, seekable: bool,
                 by_ordinal: bool = False) -> Iterator[Entry]:
    """The entries of ``path`` in source order, keys unique: references where
    ``seekable`` (or, with ``by_ordinal``, a compressed tar's members by
    ordinal), else members with their bytes (at most ``limit`` bytes each)."""
    return itertools.chain.from_iterable(_entry_batches(path, kind, limit=limit, seekable=seekable,
                                                        by_ordinal=by_ordinal))


def _entry_batches(path: Path, kind: str, *, limit: int, seekable: bool,
                   by_ordinal: bool) -> Iterator[list[Entry]]:
    """:func:`iter_entries` as lists of entries."""
    if seekable:
        return unique_key_batches(iter_ref_batches(path, kind, limit=limit))
    if by_ordinal and kind == "tar":
        items = stream_refs(path, limit)
    else:
        items = iter_members(path, kind=kind, max_member_bytes=limit)
    return ([e] for e in unique_keys(items))


def unique_keys(entries: Iterable[Entry]) -> Iterator[Entry]:
    """``entries`` with every later entry of a key seen before made a ``duplicate-key`` reject."""
    first: dict[str, int] = {}
    for i, e in enumerate(entries):
        at = first.setdefault(e.key, i)
        if at != i:
            e = _duplicate(e.key, i, at)
        yield e


def unique_key_batches(batches: Iterable[list[Entry]]) -> Iterator[list[Entry]]:
    """:func:`unique_keys` over lists of entries: until a key comes again,
    the keys are only counted into a set and every list is passed on as it is."""
    seen: set[str] | None = set()
    order: list[str] = []  # every key so far, while none came twice
    first: dict[str, int] = {}  # where each key came first, from the first duplicate on
    i = 0
    for batch in batches:
        keys = list(map(_KEY, batch))
        if seen is not None:
            before = len(seen)
            seen.update(keys)
            if len(seen) == before + len(keys):
                order += keys
                i += len(keys)
                yield batch
                continue
            first, seen, order = dict(zip(order, range(len(order)))), None, []
        batch = list(batch)
        for j, key in enumerate(keys, i):
            at = first.setdefault(key, j)
            if at != j:
                batch[j - i] = _duplicate(key, j, at)
        i += len(keys)
        yield batch


def _duplicate(key: str, i: int, at: int) -> Reject:
    return Reject(key, f"duplicate-key: member {i + 1} has the name of member {at + 1}, "
                       f"which keeps the key")


@dataclass(frozen=True)
class Listing:
    """A container's entries, in source order, what it is, and its fingerprint
    (size and mtime, or a remote archive's size and ETag, as they were when it
    was listed, and the entries' keys)."""

    path: Path
    kind: str
    seekable: bool
    entries: list = field(repr=False)
    fingerprint: str
    identity: str | None = None  # a remote archive's size and ETag, when it is one


def list_archive(path: Path, kind: str, *, limit: int, identity: str | None = None) -> Listing:
    """List every entry of the container at ``path`` (``kind`` as
    :func:`~.archive.detect_image_source` tells).

    ``identity`` (a remote archive's size and ETag) says ``path`` is a local
    copy the workers cannot see: every member is then read here, with its
    bytes, as for a compressed tar (gzip cannot be entered in the middle).
    """
    seekable = identity is None and seekable_kind(path, kind)
    stamp = identity
    if stamp is None:  # the file as it is listed, not as it is when asked later
        st = os.stat(path)
        stamp = f"{st.st_size}:{st.st_mtime_ns}"
    # a compressed tar by ordinal: its bytes are read by the tasks, not held here
    entries: list[Entry] = []
    with _gc_paused():
        for batch in _entry_batches(path, kind, limit=limit, seekable=seekable,
                                    by_ordinal=identity is None):
            entries += batch
    return Listing(path, kind, seekable, entries, fingerprint(path, entries, identity=stamp),
                   identity)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """The cyclic garbage collector paused (where it was running): a listing
    is many small objects that hold no cycles, and each of the collector's
    passes while the listing grows walks every one made so far."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def fingerprint(path: Path, entries: Iterable[Entry], identity: str | None = None) -> str:
    """Identity of an archive for --resume and report: size, mtime and the member listing.

    ``identity`` replaces size and mtime (a remote archive's size and ETag).
    """
    if identity is None:
        st = os.stat(path)
        identity = f"{st.st_size}:{st.st_mtime_ns}"
    h = hashlib.sha256(f"{identity}:".encode())
    keys = list(map(_KEY, entries))
    if keys:  # each key and a newline (one update: the same digest as one per key)
        keys.append("")
        h.update("\n".join(keys).encode("utf-8", "surrogateescape"))
    return "archive-sha256:" + h.hexdigest()


def pack(entries: Iterable[Entry]) -> bytes:
    """``entries`` as one opaque blob for a task (see the module docstring).

    Columns, not objects: a task of references only (the usual case) is
    its keys, offsets and sizes and the stored names that differ from keys.
    """
    entries = list(entries)
    if set(map(type, entries)) <= {MemberRef}:
        keys, offsets, sizes, stored = (list(map(get, entries)) for get in _REF_FIELDS)
        names = ({} if stored.count(None) == len(stored)
                 else {i: name for i, name in enumerate(stored) if name is not None})
        return pickle.dumps((_REFS, keys, offsets, sizes, names), protocol=pickle.HIGHEST_PROTOCOL)
    tags, keys, a, b = [], [], [], []
    names: dict[int, str] = {}  # a reference's stored name, where its key escapes it
    for i, e in enumerate(entries):
        keys.append(e.key)
        if isinstance(e, MemberRef):
            tags.append(_REF), a.append(e.offset), b.append(e.size)
            if e.name is not None:
                names[i] = e.name
        elif isinstance(e, Member):
            tags.append(_MEMBER), a.append(e.data), b.append(e.folder_label)
        else:
            tags.append(_REJECT), a.append(e.reason), b.append(None)
    return pickle.dumps((_MIXED, tags, keys, a, b, names), protocol=pickle.HIGHEST_PROTOCOL)


def unpack(packed: bytes) -> list[Entry]:
    """The entries of :func:`pack` (a blob our own client made for the task)."""
    form, *columns = pickle.loads(packed)
    if form == _REFS:
        keys, offsets, sizes, names = columns
        with _gc_paused():  # (thousands of objects that hold no cycles)
            out: list[Entry] = member_refs(keys, offsets, sizes)
    else:
        tags, keys, a, b, names = columns
        make = {_REF: MemberRef, _MEMBER: Member, _REJECT: lambda k, r, _: Reject(k, r)}
        out = [make[t](k, x, y) for t, k, x, y in zip(tags, keys, a, b)]
    for i, name in names.items():
        out[i] = MemberRef(out[i].key, out[i].offset, out[i].size, name)
    return out


def read_entries(path: str, kind: str, entries: list[Entry], *,
                 limit: int) -> Iterator[Member | Reject]:
    """``entries`` with every reference read (on a worker) and content-checked, in order.

    Lazily: one member's bytes at a time are read and held.
    """
    refs = [e for e in entries if isinstance(e, MemberRef)]
    read = read_refs(path, kind, refs, limit=limit) if refs else iter(())
    for e in entries:
        yield next(read) if isinstance(e, MemberRef) else e


def decode_packed(task: tuple[str, str, bytes, int]) -> Batch:
    """One ingest task: read and decode packed entries into a :class:`~.base.Batch`.

    ``task`` is ``(container path, kind, pack(entries), limit)``. Members
    rejected while reading come first among the batch's rejects, then
    those the decoder refused.
    """
    path, kind, packed, limit = task
    got = decode_entries(path, kind, unpack(packed), limit=limit)
    rejects = ([r for _, r, read in got.rejects if read]
               + [r for _, r, read in got.rejects if not read])
    at = np.flatnonzero(got.ok)
    if not at.size:
        return Batch.empty(rejects)
    return Batch(got.digits[at], label_array([got.folder[j] for j in at], at.size),
                 [got.keys[j] for j in at], rejects)
