"""What :func:`~digitbatch.layout.open_store` checks of a store's content, and labels as read.

A store's metadata is not trusted: its shape, chunking and label counts
are checked against each other and against the chunks that exist (one
listing), with sane limits, when the store is opened, before any work is
planned on it; label values are checked chunk by chunk as they are read
(:func:`check_labels`), since they index confusion matrices.
"""

from __future__ import annotations

import os

import numpy as np

from .digits import IMAGE_SHAPE, LABEL_DTYPE, N_CLASSES, UNKNOWN_LABEL
from .errors import StoreError

MIN_CHUNK_SIZE = 256
# A chunk is decoded whole into memory by one task (784 bytes an image): more
# rows than this would not fit two tasks a core. And no store holds more
# images than MAX_IMAGES (7.8 TB of pixels): an N beyond is damaged metadata.
MAX_CHUNK_SIZE = 1 << 20
MAX_IMAGES = 10**10


def check_labels(labels: np.ndarray, *, where: str, classes=None) -> np.ndarray:
    """Return ``labels`` if every value is a digit 0-9 or UNKNOWN_LABEL; else a
    :class:`StoreError` naming the values and ``where`` they were read.

    Label values index confusion matrices and class counts, so every chunk of
    labels read from a store passes here first (:meth:`Store.column` does;
    scoring tasks call it on the labels chunk they read). With ``classes``
    (a model's), the known labels must also be among them.
    """
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise StoreError(f"{where}: labels are {labels.dtype}, not integers: re-ingest the store")
    known = labels != UNKNOWN_LABEL
    bad = known & ((labels < 0) | (labels >= N_CLASSES))
    if bad.any():
        values = sorted(set(labels[bad].tolist()))
        raise StoreError(f"{where}: labels {values[:10]} are not digits 0-9 (or "
                         f"{UNKNOWN_LABEL}, unknown): the store is damaged or was not written by "
                         f"digitbatch; re-ingest it")
    if classes is not None:
        outside = np.setdiff1d(labels[known], np.asarray(classes))
        if outside.size:
            raise StoreError(f"{where}: labels {outside[:10].tolist()} are not among the model's "
                             f"classes {np.asarray(classes).tolist()}: score with a model trained "
                             f"on every digit of the store")
    return labels


def validate_arrays(store) -> None:
    """Shapes, dtypes, chunking, splits, label counts and the chunks that exist
    of an opened :class:`~digitbatch.layout.Store`; a :class:`StoreError` naming
    the first fault."""
    p = store.path
    members = set(store.group.array_keys())
    for name in ("images", "labels", "keys"):
        if name not in members:
            raise StoreError(f"store {p} has no '{name}' array: re-ingest it")
    images, labels, keys = store.images, store.labels, store.keys
    if images.dtype != np.uint8 or images.ndim != 3 or tuple(images.shape[1:]) != IMAGE_SHAPE:
        raise StoreError(
            f"store {p}: images must be (N, 28, 28) uint8, got {images.shape} {images.dtype}"
        )
    n = images.shape[0]
    if labels.dtype != LABEL_DTYPE or labels.shape != (n,):
        raise StoreError(f"store {p}: labels must be ({n},) int8, got {labels.shape} {labels.dtype}")
    if keys.shape != (n,) or keys.dtype.kind not in "TUO":
        raise StoreError(f"store {p}: keys must be ({n},) strings, got {keys.shape} {keys.dtype}")
    if tuple(images.chunks[1:]) != IMAGE_SHAPE:
        raise StoreError(f"store {p}: images must be chunked along N only, got chunks {images.chunks}")
    c = images.chunks[0]
    if labels.chunks[0] != c or keys.chunks[0] != c:
        raise StoreError(
            f"store {p}: arrays are not chunk-aligned (images {c}, labels {labels.chunks[0]}, "
            f"keys {keys.chunks[0]}): re-ingest it"
        )
    if meta_n := store.meta.get("n_images"):
        if meta_n != n:
            raise StoreError(f"store {p}: attributes say {meta_n} images but arrays hold {n}")
    for name, (start, stop) in store.splits.items():
        if not 0 <= start <= stop <= n:
            raise StoreError(f"store {p}: split {name!r} rows [{start}, {stop}) outside [0, {n})")
    if not MIN_CHUNK_SIZE <= c <= MAX_CHUNK_SIZE:
        raise StoreError(f"store {p}: chunks of {c:,} rows, outside {MIN_CHUNK_SIZE}-"
                         f"{MAX_CHUNK_SIZE:,} (a chunk is read whole into memory): the metadata is "
                         f"damaged or the store was not written by digitbatch; re-ingest it")
    if n > MAX_IMAGES:
        raise StoreError(f"store {p}: its metadata claims {n:,} images, more than the "
                         f"{MAX_IMAGES:,} a store may hold: the metadata is damaged; re-ingest it")
    for name in ("images", "labels", "keys"):
        _check_chunks_exist(store, name)
    _check_label_counts(store)


def _check_label_counts(store) -> None:
    """The label counts of the attributes: 10 counts >= 0 summing to ``n_labeled`` <= N."""
    p, meta = store.path, store.meta
    if "label_counts" not in meta and "n_labeled" not in meta:
        return
    counts, n_labeled = meta.get("label_counts"), meta.get("n_labeled")
    ok = (isinstance(counts, list) and len(counts) == N_CLASSES
          and all(isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in counts)
          and isinstance(n_labeled, int) and sum(counts) == n_labeled <= store.n)
    if not ok:
        raise StoreError(
            f"store {p}: its attributes count labels {counts!r} ({n_labeled!r} labelled of "
            f"{store.n}); a store counts rows of each digit 0-9 ({N_CLASSES} counts that sum to "
            f"n_labeled): the metadata is damaged or was edited; re-ingest it")


def _chunk_indices(arr) -> set[int]:
    """The first-axis indices of the chunks of ``arr`` that exist, from one listing
    of its chunk keys (never one request per expected chunk: N may lie)."""
    from zarr.core.sync import sync

    rest = (0,) * (arr.ndim - 1)
    k0, k1 = (arr.metadata.encode_chunk_key((i, *rest)) for i in (0, 1))
    lead = os.path.commonprefix([k0, k1])  # "c/" with the default encoding
    tail = k0[len(lead) + 1:]              # "/0/0" for the images
    base = arr.store_path.path
    prefix = f"{base}/{lead}" if base else lead

    async def listing() -> set[int]:
        found = set()
        async for key in arr.store_path.store.list_prefix(prefix):
            head = key[len(prefix):]
            head = head[: len(head) - len(tail)] if head.endswith(tail) else ""
            if head.isdigit() and head.isascii():
                found.add(int(head))
        return found

    return sync(listing())


def _check_chunks_exist(store, name: str) -> None:
    """Every chunk the shape implies exists, and no other: checked when a store
    is opened, so a damaged or edited N is refused before any work is planned."""
    arr = store.group[name]
    n, c = store.n, store.chunk_size
    expected = -(-n // c)
    found = _chunk_indices(arr)
    where = f"{store.path}/{name}"
    beyond = sorted(i for i in found if i >= expected)
    if beyond:
        raise StoreError(f"store {store.path}: {name} has chunk {beyond[0]} beyond its {n:,} "
                         f"rows ({expected} chunks of {c}): the metadata was edited or the store "
                         f"is damaged; re-ingest it")
    if len(found) == expected:
        return
    if expected > 2 * len(found) + 1000:
        raise StoreError(
            f"store {store.path}: its metadata claims {n:,} rows ({expected:,} chunks of {c:,}) "
            f"but {name} has {len(found):,} chunks: the metadata is damaged or was edited; "
            f"re-ingest the store")
    i = min(set(range(expected)) - found)
    raise StoreError(f"chunk {i} of {where} is missing (rows {i * c}-{min((i + 1) * c, n) - 1}): "
                     f"the store is damaged; ingest it again")
