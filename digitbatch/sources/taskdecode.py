"""A task's archive entries -> MNIST digits in entry order: what every archive worker runs.

Ingest's task (:func:`.listing.decode_packed`) and a scoring chunk
(:func:`digitbatch.scoring.chunks.score_archive_chunk`) both call
:func:`decode_entries`: read the entries' members (:mod:`.refs`), judge
them (:mod:`.members`), decode (:mod:`.decoders`) and normalise them
(:mod:`.normalise`) a block at a time, at most :data:`PENDING_PIXELS`
grey pixels waiting, which bounds the memory of large scans.
:func:`decode_members` does the same for members that hold their bytes
(:func:`.images.decode_batch`: predict's files).

A plain tar is read by runs of neighbouring members (:func:`.refs.tar_runs`),
and the plain JPEGs (:mod:`.jpegvouch`) or PNGs (:mod:`.pngvouch`) of a run,
as its first member's kind says, are decoded straight into one stack per
size and normalised as a stack: no bytes object, header walk, content
check or array per member. Every other member, and any whose fast decode
fails, is judged and decoded one at a time as before. The digits,
rejects and reasons are the same either way
(tests/test_sources_taskdecode.py).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..digits import IMAGE_SHAPE
from . import decoders, jpegvouch, members, pngvouch, refs
from .base import MemberRef, Reject
from .normalise import normalise_flagged, normalise_stack

# Grey pixels decoded and waiting to be normalised, at most (16 MiB of them):
# a batch of large scans is normalised in blocks.
PENDING_PIXELS = 2**24
# sizes of plain JPEGs stacked at once; a task with more flushes its blocks
MAX_STACKS = 8


@dataclass
class TaskDigits:
    """What :func:`decode_entries` made of ``n`` entries, in entry order."""

    keys: list[str]
    digits: np.ndarray  # (n, 28, 28) uint8; zeros where ``ok`` is False
    ok: np.ndarray  # (n,) bool: the entry gave a digit
    flags: np.ndarray  # (n, 2) bool: normalisation inverted it, resized it
    folder: list[int | None]  # each member's folder label (None: none, or not read)
    # (entry index, reject, whether it was refused when read rather than decoded),
    # in entry order
    rejects: list[tuple[int, Reject, bool]]


def decode_entries(path: str, kind: str, entries: list, *, limit: int,
                   busy: Callable[[str], object] | None = None) -> TaskDigits:
    """Read, judge, decode and normalise ``entries`` (member references,
    members or rejects, as :func:`.listing.read_entries` takes them).

    ``busy(key)`` is told before each member is decoded (what a task that
    hangs is stuck on). Pillow's decompression-bomb warning is an error here.
    """
    n = len(entries)
    out = TaskDigits([e.key for e in entries], np.zeros((n, *IMAGE_SHAPE), np.uint8),
                     np.zeros(n, bool), np.zeros((n, 2), bool), [None] * n, [])
    block = _Block(out, busy)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        at = [j for j, e in enumerate(entries) if isinstance(e, MemberRef)]
        for j, e in enumerate(entries):
            if not isinstance(e, MemberRef):
                block.member(j, e)
        if at and kind == "tar" and block.fast and refs.seekable_kind(Path(path), kind):
            _plain_tar(path, [entries[j] for j in at], at, limit, block)
        elif at:
            for j, item in zip(at, refs.read_refs(path, kind, [entries[j] for j in at], limit=limit),
                               strict=True):
                block.member(j, item)
        block.flush()
    out.rejects.sort(key=lambda r: r[0])
    return out


def decode_members(items: list, *, busy: Callable[[str], object] | None = None) -> TaskDigits:
    """:func:`decode_entries` of members that hold their bytes, and rejects:
    no container is read."""
    if any(isinstance(e, MemberRef) for e in items):
        raise ValueError("decode_members takes members with their bytes, not references")
    return decode_entries("", "", items, limit=0, busy=busy)


def _plain_tar(path: str, run_refs: list[MemberRef], at: list[int], limit: int,
               block: _Block) -> None:
    max_side, max_pixels = decoders.fast_limits()
    jpegs = decoders.fast_jpeg()
    fd = os.open(path, os.O_RDONLY)
    try:
        for i, j, got in refs.tar_runs(fd, path, run_refs, limit):
            if not isinstance(got, bytes):  # a large member, read and judged alone
                block.member(at[i], got)
                continue
            start = run_refs[i].offset
            run = run_refs[i:j]
            starts = [q.offset - start for q in run]
            lens = [q.size for q in run]
            done: set[int] = set()
            first = got[0] if got else None  # (the run's first member says which kind)
            if first == 0xFF and jpegs:
                done = _plain_jpegs(got, starts, lens, run, at[i:j], limit, block, max_side,
                                    max_pixels)
            elif first == 0x89:
                done = _plain_pngs(got, starts, lens, run, at[i:j], limit, block, max_side,
                                   max_pixels)
            for k, q in enumerate(run):
                if k not in done:
                    a = starts[k]
                    block.member(at[i + k], members.finish_member(q.key, got[a:a + q.size], limit))
    finally:
        os.close(fd)


def _plain_pngs(got: bytes, starts: list[int], lens: list[int], run: list[MemberRef],
                at: list[int], limit: int, block: _Block, max_side: int, max_pixels: int
                ) -> set[int]:
    """Decode the plain PNGs of a run (:mod:`.pngvouch`) into the block; the
    members (indices in ``run``) it took."""
    plain = pngvouch.run_plain(got, starts, lens, max_side=max_side, max_pixels=max_pixels)
    if plain is None:
        return set()
    ks = [k for k in np.flatnonzero(plain[:, pngvouch.HEIGHT]).tolist()
          if run[k].size <= limit and members.has_image_extension(run[k].key)]
    done: set[int] = set()
    told = None if block.busy is None else (lambda k: block.busy(run[k].key))
    for took, stack in pngvouch.decode(got, starts, plain, ks, budget=PENDING_PIXELS, told=told):
        block.stacked([at[k] for k in took], [run[k].key for k in took], stack)
        done.update(took)
    return done


def _plain_jpegs(got: bytes, starts: list[int], lens: list[int], run: list[MemberRef],
                 at: list[int], limit: int, block: _Block, max_side: int, max_pixels: int
                 ) -> set[int]:
    """Decode the plain JPEGs of a run (:mod:`.jpegvouch`) into the block's
    stacks, those of one size together; the members (indices in ``run``) it
    took (a member whose fast decode fails is left to be judged as bytes)."""
    sizes = jpegvouch.run_sizes(got, starts, lens, max_side=max_side, max_pixels=max_pixels)
    if sizes is None:
        return set()
    ks = [k for k in np.flatnonzero(sizes[:, 0]).tolist()
          if lens[k] <= limit and members.has_image_extension(run[k].key)]
    by_size: dict[tuple[int, int], list[int]] = {}
    if ks and (sizes[ks] == sizes[ks[0]]).all():  # (the usual run: one size)
        by_size[tuple(sizes[ks[0]].tolist())] = ks
    else:
        for k, hw in zip(ks, sizes[ks].tolist()):
            by_size.setdefault(tuple(hw), []).append(k)
    view = memoryview(got)
    done: set[int] = set()
    for hw, group in by_size.items():
        done.update(block.jpegs(view, [(starts[k], lens[k]) for k in group],
                                [at[k] for k in group], [run[k].key for k in group], hw, group))
    return done


class _Block:
    """Decoded grey images waiting to be normalised together: single images,
    and one stack per size of plain JPEGs (plain PNGs come as stacks of their
    own, :meth:`stacked`)."""

    def __init__(self, out: TaskDigits, busy: Callable[[str], object] | None):
        self.out = out
        self.busy = busy
        self.fast = decoders.fast_enabled()
        self.greys: list[np.ndarray] = []
        self.grey_at: list[int] = []
        self.stacks: dict[tuple[int, int], tuple[np.ndarray, list[int]]] = {}
        self.decoded: dict[tuple[int, int], tuple[int, int]] = {}  # frame -> decoded size
        self.pixels = 0

    def member(self, j: int, item) -> None:
        """Judge and decode one read member (or take its reject)."""
        out = self.out
        if isinstance(item, Reject):
            out.rejects.append((j, item, True))
            return
        out.folder[j] = item.folder_label
        if self.busy is not None:
            self.busy(item.key)
        grey = decoders.decode_grey(item.data, fast=self.fast)
        if isinstance(grey, str):
            out.rejects.append((j, Reject(item.key, grey), False))
            return
        self.greys.append(grey)
        self.grey_at.append(j)
        self._added(grey.size)

    def stacked(self, at: list[int], keys: list[str], stack: np.ndarray) -> None:
        """Normalise grey images of one size decoded together (:mod:`.pngvouch`)."""
        digits, flags = normalise_stack(stack)
        self._put(at, digits, flags)
        folder = self.out.folder
        for j, key in zip(at, keys, strict=True):
            folder[j] = members.folder_label(key)

    def jpegs(self, view: memoryview, spans: list[tuple[int, int]], at: list[int],
              keys: list[str], hw: tuple[int, int], ids: list) -> list:
        """Decode plain JPEGs of one frame size ``hw`` (:mod:`.jpegvouch`)
        into their size's stack, a stack's room at a time; ``ids`` of those
        decoded (the others' fast decode failed: they must be judged as bytes)."""
        size = self.decoded.get(hw)
        if size is None:
            size = self.decoded[hw] = decoders.jpeg_decoded_size(*hw)
        busy = self.busy
        folder = self.out.folder
        taken_ids = []
        p = 0
        while p < len(spans):
            stack, stacked = self.stacks.get(size) or self._stack(size)
            part = spans[p:p + len(stack) - len(stacked)]
            told = None if busy is None else (lambda i, q=p: busy(keys[q + i]))
            took = decoders.jpeg_stack(view, part, stack[len(stacked):], told)
            for i in took:
                j = at[p + i]
                stacked.append(j)
                folder[j] = members.folder_label(keys[p + i])
                taken_ids.append(ids[p + i])
            p += len(part)
            self.pixels += len(took) * size[0] * size[1]
            if self.pixels >= PENDING_PIXELS:
                self.flush()
            elif len(stacked) == len(stack):
                self._flush_stack(size)
        return taken_ids

    def _stack(self, size: tuple[int, int]) -> tuple[np.ndarray, list[int]]:
        if len(self.stacks) >= MAX_STACKS:
            self.flush()
            self.stacks.clear()
        # (np.empty: pages are only committed as rows are written)
        rows = max(1, PENDING_PIXELS // (size[0] * size[1]))
        self.stacks[size] = entry = (np.empty((rows, *size), np.uint8), [])
        return entry

    def _added(self, pixels: int) -> None:
        self.pixels += pixels
        if self.pixels >= PENDING_PIXELS:
            self.flush()

    def _flush_stack(self, size: tuple[int, int]) -> None:
        stack, at = self.stacks[size]
        if at:
            digits, flags = normalise_stack(stack[:len(at)])
            self._put(at, digits, flags)
            self.pixels -= len(at) * size[0] * size[1]
            at.clear()

    def flush(self) -> None:
        """Normalise everything waiting."""
        if self.greys:
            digits, flags = normalise_flagged(self.greys)
            self._put(self.grey_at, digits, flags)
            self.greys, self.grey_at = [], []
        for size in self.stacks:
            self._flush_stack(size)
        self.pixels = 0

    def _put(self, at: list[int], digits: np.ndarray, flags: np.ndarray) -> None:
        out = self.out
        out.digits[at] = digits
        out.flags[at] = flags
        out.ok[at] = True
