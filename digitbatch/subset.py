"""``digitbatch subset``: the rows of a store a labels file names, relabelled, as a new store.

The review loop's way back into training (see :mod:`digitbatch.review`): a
report's ``review.csv`` lists the doubtful rows of a scored store; a person
fills its ``label`` column; :func:`subset` writes the rows whose key has a
label 0-9 in the file, with that label, into a new store (through
:class:`digitbatch.layout.StoreWriter`, so it appears only once complete),
which ``digitbatch train STORE --extra NEW`` adds to its training rows.

Rules: rows with an empty label cell are left out (not labelled yet); a
label that is not a digit 0-9 fails the whole subset, naming the keys
(a hand-edited file is fixed, not half used); keys of the file that match
no row are counted and logged, and when no labelled key matches at all the
store is not the one that was scored: an error. A key that the store holds
more than once gives every such row the label. The new store has no splits
(``train`` fits on all its rows) and its ``source`` records the store, its
checksum and the labels file.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass

import numpy as np

from .digits import N_CLASSES
from .errors import SubsetError
from .layout import StoreWriter, open_store
from .sources.labels import load_labels

log = logging.getLogger(__name__)

# Bumped when a field of the --json summary is renamed or changes meaning.
SUMMARY_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class SubsetResult:
    path: str
    store: str
    store_checksum: str
    labels_file: str
    n_images: int
    label_counts: list
    n_relabelled: int  # rows whose label differs from the store's
    labels_unmatched: int  # labelled keys of the file that match no row
    n_unlabelled: int  # keys of the file with an empty label (left out)
    checksum: str
    seconds: float

    def to_dict(self) -> dict:
        return {"schema_version": SUMMARY_SCHEMA_VERSION, **asdict(self)}


def subset(store: str | os.PathLike, *, labels: str | os.PathLike, out: str | os.PathLike,
           overwrite: bool = False, chunk_size: int | None = None) -> SubsetResult:
    """Write the rows of ``store`` that ``labels`` (a ``key,label`` CSV such as
    ``review.csv``) gives a digit 0-9, with that label, into a new store ``out``.

    Parameters
    ----------
    store : path
        The store the labels' keys come from (the scored input).
    labels : path
        A ``key,label`` CSV (:mod:`digitbatch.sources.labels`).
    out : path
        The store to create (refused if it exists, unless ``overwrite``).
    chunk_size : int, optional
        Rows per chunk of the new store (default: ``store``'s).
    """
    t0 = time.perf_counter()
    s = open_store(store)
    lm = load_labels(labels)
    bad = sorted((k, v) for k, v in lm.labels.items() if isinstance(v, str))
    if bad:
        shown = "; ".join(f"{k!r}: {v}" for k, v in bad[:5])
        raise SubsetError(f"labels file {lm.path} has {len(bad)} label(s) that are not a digit "
                          f"0-9 ({shown}): correct them (or empty the cells) and run again; "
                          f"nothing was written")
    wanted = {k: int(v) for k, v in lm.labels.items() if 0 <= int(v) < N_CLASSES}
    n_unlabelled = len(lm.labels) - len(wanted)
    if not wanted:
        raise SubsetError(f"labels file {lm.path} gives no row a label ({len(lm.labels)} keys, "
                          f"every label cell empty): fill the label column first")
    source = {"kind": "subset", "store": str(s.path), "store_checksum": s.checksum,
              "labels_file": lm.path}
    used: set[str] = set()
    n_relabelled = 0
    with StoreWriter(out, source=source, chunk_size=chunk_size or s.chunk_size,
                     overwrite=overwrite) as w:
        for a, b in s.chunks:
            keys = s.column("keys", slice(a, b))
            hit = [i for i, k in enumerate(keys.tolist()) if k in wanted]
            if not hit:
                continue
            idx = np.asarray(hit, np.int64)
            chosen = [str(keys[i]) for i in hit]
            new = np.asarray([wanted[k] for k in chosen], np.int8)
            old = s.column("labels", slice(a, b))[idx]
            n_relabelled += int(np.count_nonzero(old != new))
            used.update(chosen)
            w.append(s.column("images", slice(a, b))[idx], new, chosen)
        if not used:
            example = next(iter(wanted))
            raise SubsetError(f"none of the {len(wanted)} labelled keys of {lm.path} is a key of "
                              f"store {s.path} (e.g. {example!r}): give the store that was "
                              f"scored (an archive scored directly: `digitbatch ingest ARCHIVE "
                              f"--labels {lm.path} --only-labelled`)")
        new_store = w.finish()
    unmatched = len(wanted) - len(used)
    if unmatched:
        log.warning("%d labelled keys of %s matched no row of %s", unmatched, lm.path, s.path)
    result = SubsetResult(str(new_store.path), str(s.path), s.checksum, lm.path, new_store.n,
                          list(new_store.meta["label_counts"]), n_relabelled, unmatched,
                          n_unlabelled, new_store.checksum, round(time.perf_counter() - t0, 3))
    log.info("wrote %d labelled rows of %s to %s (%d relabelled)", result.n_images, s.path,
             result.path, n_relabelled)
    return result
