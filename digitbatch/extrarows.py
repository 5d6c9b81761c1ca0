"""``train STORE --extra STORE2``: labelled rows of other stores added to the training rows.

The review loop (:mod:`digitbatch.review`, :mod:`digitbatch.subset`) ends in
a small store of rows a person labelled; :func:`open_extras` checks such
stores against the training store and :func:`labelled_rows` /
:func:`chunks` give their rows to :mod:`digitbatch.training`, which fits on
the training store's train rows followed by the extra stores' rows (each
store's ``train`` split when it has one, else all its rows; unlabelled rows
are skipped, as in the training store). The test rows stay the training
store's alone. The manifest records each extra store with its checksum
(:meth:`ExtraStore.manifest_entry`).

Checks (a :class:`~digitbatch.errors.TrainingError` naming the store): the
store opens as a digitbatch store (its images are 28x28 uint8 and its labels
0-9 or unknown: :func:`digitbatch.layout.open_store`), it is not the
training store itself nor given twice (same checksum: its rows would count
twice), and it has labelled rows to add.

Rows whose key is a key of the training store's ``test`` split (a review of
the scored training store lists test rows too) are left out of the fit, so
the model's test figure stays a test on unseen rows: logged, and counted in
the manifest entry's ``n_test_rows_left_out``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .digits import IMAGE_SHAPE, UNKNOWN_LABEL
from .errors import TrainingError
from .layout import Store, open_store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtraStore:
    """An extra store of training rows, checked."""

    store: Store
    split: str  # "train", or "all" when the store has no train split
    n_rows: int  # its labelled rows in that split that are fitted on
    test_keys: frozenset = frozenset()  # the training store's test keys: never fitted on
    n_test_rows_left_out: int = 0

    def column(self, name: str, rows: slice) -> np.ndarray:
        """``Store.column``, with the labels of rows whose key is a test key unknown."""
        out = self.store.column(name, rows)
        if name == "labels" and self.test_keys:
            keys = self.store.column("keys", rows).tolist()
            test = np.fromiter((k in self.test_keys for k in keys), bool, len(keys))
            out = np.where(test, UNKNOWN_LABEL, out).astype(out.dtype)
        return out

    def chunks(self) -> list[tuple[int, int]]:
        """The store's chunks clipped to the split's rows."""
        rows = self.store.split_rows(self.split)
        return [(max(a, rows.start), min(b, rows.stop)) for a, b in self.store.chunks
                if a < rows.stop and b > rows.start]

    def manifest_entry(self) -> dict:
        return {"store": str(self.store.path), "store_checksum": self.store.checksum,
                "split": self.split, "n_rows": self.n_rows,
                "n_test_rows_left_out": self.n_test_rows_left_out}


def open_extras(paths: Sequence[str | os.PathLike] | None, main: Store) -> list[ExtraStore]:
    """Open and check the extra stores of a training run on ``main``."""
    if paths is None:
        return []
    if isinstance(paths, (str, os.PathLike)):
        raise TrainingError(f"extra must be a list of stores, got the single path {paths!r}: "
                            f"pass [{str(paths)!r}]")
    out: list[ExtraStore] = []
    seen = {main.checksum: f"the training store {main.path}"}
    test_keys = frozenset(main.column("keys", main.split_rows("test")).tolist()) \
        if paths and "test" in main.splits else frozenset()
    for path in paths:
        s = open_store(path)  # (a StoreError names a missing or invalid store)
        if s.images.shape[1:] != IMAGE_SHAPE or s.images.dtype != np.uint8:
            raise TrainingError(f"extra store {s.path} holds {s.images.shape[1:]} "
                                f"{s.images.dtype} images, not 28x28 uint8: re-ingest it")
        if s.checksum in seen:
            raise TrainingError(f"extra store {s.path} has the same rows as {seen[s.checksum]} "
                                f"(checksum {s.checksum[:23]}...): its rows would count twice; "
                                f"leave it out")
        seen[s.checksum] = f"extra store {s.path}"
        split = "train" if "train" in s.splits else "all"
        n = n_all = 0
        e = ExtraStore(s, split, 0, test_keys)
        for a, b in e.chunks():
            n_all += int(np.count_nonzero(s.column("labels", slice(a, b)) != UNKNOWN_LABEL))
            n += int(np.count_nonzero(e.column("labels", slice(a, b)) != UNKNOWN_LABEL))
        if n == 0:
            raise TrainingError(
                f"extra store {s.path} has no labelled rows in split {split!r}"
                + (f" that are not test rows of {main.path} ({n_all} are)" if n_all else "")
                + ": fill the label column of the review file before `subset`")
        if n_all > n:
            log.warning("extra store %s: %d labelled rows are test rows of %s (same keys): left "
                        "out of the fit, so that the test accuracy stays on unseen rows",
                        s.path, n_all - n, main.path)
        out.append(ExtraStore(s, split, n, test_keys, n_all - n))
        log.info("extra store %s: %d labelled rows (split %s)", s.path, n, split)
    return out


def labelled_rows(extras: Sequence[ExtraStore]) -> tuple[np.ndarray, np.ndarray]:
    """The labelled images and labels of every extra store, in order."""
    images, labels = [np.zeros((0, *IMAGE_SHAPE), np.uint8)], [np.zeros(0, np.int8)]
    for e in extras:
        for a, b in e.chunks():
            y = e.column("labels", slice(a, b))
            known = np.flatnonzero(y != UNKNOWN_LABEL)
            if known.size:
                images.append(e.store.column("images", slice(a, b))[known])
                labels.append(y[known])
    return np.concatenate(images), np.concatenate(labels)


def chunks(extras: Sequence[ExtraStore]) -> list[tuple[ExtraStore, int, int]]:
    """``(extra, start, stop)`` of every extra store's chunks (for ``--incremental``; an
    extra's ``column`` reads them as ``Store.column`` does, test rows unlabelled)."""
    return [(e, a, b) for e in extras for a, b in e.chunks()]
