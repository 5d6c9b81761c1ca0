"""Source -> store, atomically: the ``digitbatch ingest`` library call."""

from __future__ import annotations

import collections
import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import cluster, storage
from . import fserrors
from .errors import SourceError, SourceNotFoundError, TooManyRejectsError
from .layout import (
    DEFAULT_CHUNK_SIZE, DEFAULT_IMAGE_CODEC, StoreWriter, validate_chunk_size, validate_codec,
)
from .sources import Batch, Reject, resolve_kind
from .sources.archive import DEFAULT_MAX_MEMBER_BYTES
from .sources.labels import LabelMap, load_labels

log = logging.getLogger(__name__)

DEFAULT_MAX_REJECTS = 10
# Bumped when a field of the --json summary is renamed or changes meaning.
SUMMARY_SCHEMA_VERSION = 1
# Members per decode task, at most: each task costs the client, the scheduler
# and a worker milliseconds of Python (README, "Measured defaults"). A run's
# first tasks are smaller (FIRST_DECODE_TASK, doubling every second task up
# to the most: decode_task_sizes), so that a small archive still keeps every
# worker busy and the first rows arrive early.
DEFAULT_DECODE_BATCH = 8192
FIRST_DECODE_TASK = 1024
# ...and at most this many member bytes per task (a member larger than this
# goes alone): what bounds memory, whatever the members' sizes. A task's bytes
# are held by this process (streamed members), the scheduler and a worker,
# for the few tasks in flight per worker (cluster.DaskExecutor's window).
TASK_BYTES = 16 * 2**20


@dataclass(frozen=True)
class IngestResult:
    """What an ingest wrote, for the summary line and for machines."""

    path: str
    kind: str
    n_images: int
    n_labeled: int
    n_rejects: int
    rejects_by_reason: dict[str, int]
    label_counts: list[int]
    labels_unmatched: int
    checksum: str
    seconds: float
    splits: dict = field(default_factory=dict)
    n_left_out: int = 0  # --only-labelled: inputs the labels file gives no label

    @property
    def images_per_second(self) -> float:
        return self.n_images / self.seconds if self.seconds > 0 else float("inf")

    def to_dict(self) -> dict:
        d = {"schema_version": SUMMARY_SCHEMA_VERSION, **self.__dict__}
        d["images_per_second"] = round(self.images_per_second, 1)
        return d


def _array_batches(images: np.ndarray, labels: np.ndarray, keys: list[str],
                   size: int) -> Iterator[Batch]:
    for start in range(0, images.shape[0], size):
        stop = start + size
        yield Batch(images[start:stop], labels[start:stop], keys[start:stop])


def decode_task_sizes(batch_size: int) -> Iterator[int]:
    """Members of each decode task in turn: :data:`FIRST_DECODE_TASK` (or
    ``batch_size``, if smaller), doubling every second task up to ``batch_size``."""
    size = min(FIRST_DECODE_TASK, batch_size)
    while True:
        yield size
        yield size
        size = min(2 * size, batch_size)


def _image_batches(path: Path, ex, *, batch_size: int, max_member_bytes: int,
                   stream: bool = False, keep=None) -> Iterator[Batch]:
    """Decode the members of an image container on the executor, in source order.

    The container is listed here (:func:`~digitbatch.sources.listing.iter_entries`)
    and cut into packed tasks of :func:`decode_task_sizes` members (up to
    ``batch_size``) or :data:`TASK_BYTES` bytes, whichever comes first: references that each
    task reads itself where the container is seekable, members with their
    bytes where it is streamed (a compressed tar; every container with
    ``stream``: a local copy of a remote source, which workers cannot see).
    Members refused from their headers alone stay here and join the next batch.
    ``keep(key)``, optional, chooses the members to decode (``--only-labelled``):
    the others are never decoded.
    """
    from .sources.images import detect_image_source
    from .sources.listing import decode_packed, iter_entries, pack
    from .sources.members import Member
    from .sources.refs import seekable_kind

    container = detect_image_source(path)
    seekable = not stream and container is not None and seekable_kind(path, container)
    header_rejects: list[Reject] = []

    def groups() -> Iterator:
        items: list = []
        held = 0
        sizes = decode_task_sizes(batch_size)
        size = next(sizes)
        for m in iter_entries(path, container, limit=max_member_bytes, seekable=seekable):
            if keep is not None and not keep(m.key):
                continue
            if isinstance(m, Reject):
                header_rejects.append(m)
                continue
            nbytes = len(m.data) if isinstance(m, Member) else m.size
            # a task is cut before the member that would take it past its size or bytes
            if items and (len(items) >= size or held + nbytes > TASK_BYTES):
                yield (str(path), container, pack(items), max_member_bytes)
                items, held, size = [], 0, next(sizes)
            items.append(m)
            held += nbytes
        if items:
            yield (str(path), container, pack(items), max_member_bytes)

    # Streamed members travel in their tasks (held here, by the scheduler and by a
    # worker): one task queued per worker beside those running, not the default two.
    window = None if seekable else ex.n_workers + 1
    for batch in ex.map_ordered(decode_packed, groups(), window=window):
        if header_rejects:
            batch.rejects.extend(header_rejects)
            header_rejects.clear()
        yield batch
    if header_rejects:
        yield Batch.empty(header_rejects)


@fserrors.boundary(kept="Nothing was written at --out (a store already there is kept)")
def ingest(
    source: str | Path,
    out: str | Path,
    *,
    kind: str | None = None,
    labels: str | Path | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    overwrite: bool = False,
    max_rejects: int = DEFAULT_MAX_REJECTS,
    data_home: str | Path | None = None,
    scheduler: str | None = None,
    decode_batch_size: int = DEFAULT_DECODE_BATCH,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
    progress=None,
    codec: str = DEFAULT_IMAGE_CODEC,
    only_labelled: bool = False,
) -> IngestResult:
    """Read ``source`` into a new store at ``out``.

    Parameters
    ----------
    source : path, URL or ``"sample"`` / ``"openml"``
        An IDX directory, an image directory / tar / zip, or a named source.
        At a URL (``s3://bucket/archive.tar.gz``, a prefix for a directory)
        it is first copied to a temporary local directory, then streamed
        to the decoders.
    out : path or URL
        The store to create. It appears only once complete.
    kind : {"idx", "openml", "sample", "images"}, optional
        Force a reader instead of detecting it from content.
    labels : path, optional
        A CSV (key,label) whose labels replace the source's, by key.
    chunk_size : int
        Images per chunk along N.
    overwrite : bool
        Replace an existing store at ``out`` (only once the new one is complete).
    max_rejects : int
        Fail (and write nothing) when more inputs than this are rejected.
    data_home : path, optional
        scikit-learn's download cache for ``openml``.
    scheduler : str, optional
        Where image decoding runs (see :mod:`digitbatch.cluster`).
    codec : {"lz4", "none"}
        How image chunks are stored: LZ4-compressed (the default, a third
        of the disk) or raw (``none``: scoring reads them in place, no decode;
        for local stores scored often).
    only_labelled : bool
        Keep only the images ``labels`` gives a label 0-9 (and their rejects):
        a reviewed ``review.csv`` of an archive scored directly becomes the
        store of its labelled rows, for ``train --extra``.
    progress : callable, optional
        ``progress(n, total=None)``: called with the total first (None for
        an image container: it is not listed in advance), then with the
        images (and rejects) of each batch as it is written.

    Returns
    -------
    IngestResult
    """
    t0 = time.perf_counter()
    chunk_size = validate_chunk_size(chunk_size)
    codec = validate_codec(codec)
    if isinstance(max_rejects, bool) or not isinstance(max_rejects, int) or max_rejects < 0:
        raise TooManyRejectsError(f"max_rejects must be an integer >= 0, got {max_rejects!r}")
    if (isinstance(decode_batch_size, bool) or not isinstance(decode_batch_size, int)
            or decode_batch_size < 1):
        raise SourceError(f"decode_batch_size must be an integer >= 1 (members per decode "
                          f"task), got {decode_batch_size!r}")
    if overwrite:  # before any work: only a digitbatch store is ever replaced
        storage.check_replaceable(out, "store")
    cluster.check_address(scheduler)
    if only_labelled and labels is None:
        raise SourceError("only_labelled keeps the images a labels file labels: give labels "
                          "(--labels review.csv)")
    source = str(source)
    with contextlib.ExitStack() as stack:
        origin = None
        if storage.is_url(source):
            origin = source
            try:
                source = str(stack.enter_context(storage.fetched(source)))
            except FileNotFoundError as exc:
                raise SourceNotFoundError(f"source {origin} does not exist ({exc})") from exc
        return _ingest(source, out, origin=origin, kind=kind, labels=labels,
                       chunk_size=chunk_size, overwrite=overwrite, max_rejects=max_rejects,
                       data_home=data_home, scheduler=scheduler,
                       decode_batch_size=decode_batch_size,
                       max_member_bytes=max_member_bytes, progress=progress, t0=t0,
                       codec=codec, only_labelled=only_labelled)


def _ingest(source: str, out, *, origin: str | None, kind, labels, chunk_size, overwrite,
            max_rejects, data_home, scheduler, decode_batch_size, max_member_bytes, progress,
            t0, codec=DEFAULT_IMAGE_CODEC, only_labelled=False) -> IngestResult:
    resolved = resolve_kind(source, kind)
    label_map: LabelMap | None = load_labels(labels) if labels is not None else None
    reasons: collections.Counter = collections.Counter()
    n_left_out = 0
    keep = None
    if only_labelled:  # an image container: the other members are not even decoded
        def keep(key: str) -> bool:
            nonlocal n_left_out
            given = label_map.gives_label(key)
            n_left_out += not given
            return given

    with StoreWriter(out, source={"kind": resolved}, chunk_size=chunk_size,
                     overwrite=overwrite, codec=codec) as writer:
        splits: dict = {}
        with _batches(resolved, source, data_home=data_home, scheduler=scheduler,
                      chunk_size=chunk_size, decode_batch_size=decode_batch_size,
                      max_member_bytes=max_member_bytes, origin=origin,
                      keep=keep) as (batches, meta):
            if progress is not None:
                progress(0, total=meta.get("total"))  # (None for image containers)
            for batch in batches:
                if label_map is not None:
                    batch = label_map.apply(batch)
                seen = len(batch) + len(batch.rejects)
                if only_labelled:
                    batch, left = label_map.only_labelled(batch)
                    n_left_out += left
                writer.append(batch.images, batch.labels, batch.keys)
                if progress is not None:
                    progress(seen)
                if batch.rejects:
                    writer.add_rejects((r.key, r.reason) for r in batch.rejects)
                    reasons.update(r.reason.split(":", 1)[0] for r in batch.rejects)
                    if writer.n_rejects > max_rejects:
                        examples = "; ".join(f"{r.key}: {r.reason}" for r in batch.rejects[:3])
                        raise TooManyRejectsError(
                            f"{writer.n_rejects} inputs rejected, more than --max-rejects "
                            f"{max_rejects} ({dict(reasons)}; e.g. {examples}); nothing was "
                            f"written: fix the input or raise --max-rejects"
                        )
            splits = {} if only_labelled else meta.get("splits", {})  # (rows were left out)
            description = meta["description"]
        if label_map is not None:
            description = {**description, "labels_file": label_map.path}
            if only_labelled:
                description["only_labelled"] = True
                log.info("--only-labelled: left out %d inputs %s gives no label", n_left_out,
                         label_map.path)
                if writer.n_written == 0:
                    raise SourceError(f"--only-labelled: no image of {origin or source} has a "
                                      f"label in {label_map.path} (its keys match none, or "
                                      f"every label cell is empty): nothing was written")
            if label_map.unmatched:
                log.warning("%d keys of %s matched no image", label_map.unmatched, label_map.path)
        writer.source = description
        store = writer.finish(splits=splits)

    seconds = time.perf_counter() - t0
    result = IngestResult(
        path=str(writer.path),
        kind=resolved,
        n_images=store.n,
        n_labeled=store.meta["n_labeled"],
        n_rejects=store.meta["n_rejects"],
        rejects_by_reason=dict(reasons),
        label_counts=store.meta["label_counts"],
        labels_unmatched=label_map.unmatched if label_map else 0,
        checksum=store.checksum,
        seconds=seconds,
        splits=store.meta["splits"],
        n_left_out=n_left_out,
    )
    log.info("ingested %d images (%d rejected) from %s in %.2f s (%.0f images/s)",
             result.n_images, result.n_rejects, origin or source, seconds,
             result.images_per_second)
    return result


class _batches:
    """Context manager yielding ``(batch iterator, meta)`` for a resolved kind.

    ``meta`` holds ``description`` and ``splits`` (filled in as soon as known).
    """

    def __init__(self, kind: str, source: str, *, data_home, scheduler, chunk_size,
                 decode_batch_size, max_member_bytes, origin: str | None = None, keep=None):
        self.kind, self.source, self.origin = kind, source, origin
        self.data_home, self.scheduler = data_home, scheduler
        self.chunk_size = chunk_size
        self.decode_batch_size, self.max_member_bytes = decode_batch_size, max_member_bytes
        self._ex = None
        self.keep = keep

    def __enter__(self):
        if self.kind in ("idx", "openml", "sample"):
            data = self._load_arrays()
            description = dict(data.description)
            if self.origin:
                description["url"] = self.origin
            meta = {"description": description, "splits": data.splits,
                    "total": int(data.images.shape[0])}
            return _array_batches(data.images, data.labels, data.keys, self.chunk_size), meta
        path = Path(self.source)
        self._ex = cluster.executor(self.scheduler)
        ex = self._ex.__enter__()
        meta = {"description": {"kind": "images", "path": self.origin or str(path.resolve())},
                "splits": {}}
        return _image_batches(path, ex, batch_size=self.decode_batch_size,
                              max_member_bytes=self.max_member_bytes,
                              stream=self.origin is not None, keep=self.keep), meta

    def __exit__(self, *exc):
        if self._ex is not None:
            return self._ex.__exit__(*exc)
        return False

    def _load_arrays(self):
        if self.kind == "idx":
            from .sources.idx import load_idx
            return load_idx(self.source)
        if self.kind == "sample":
            from .sources.sample import load_sample
            return load_sample()
        from .sources.openml import load_openml
        return load_openml(data_home=self.data_home)
