"""``--labels FILE.csv``: attach labels to images by key.

The file has a header with the columns ``key`` and ``label`` (others are
ignored); it is UTF-8, with or without the byte-order mark spreadsheet
programs write. A label is exactly one ASCII digit ``0``-``9``, or that
digit float-formatted as a spreadsheet exports a number column (``9.0``);
spaces around it are fine. Anything else (``10``, ``2.5``, ``1e0``, ``+3``,
``03``, the Arabic-Indic ``٣`` or full-width ``３`` that ``int()`` takes)
does not fail the file: the image with that key is rejected with reason
``bad-label`` (a label that is empty means "unknown"). A malformed file (no
header, missing columns, duplicate keys) raises
:class:`~digitbatch.errors.LabelsFileError`.

Keys are read back from the formula escape that ``review.csv`` (and
``export``'s CSV) write: a key starting with ``=``, ``+``, ``-``, ``@``, a
tab, a carriage return, their full-width forms or ``'`` is written with a
``'`` prepended (:func:`escape_key`), so that a spreadsheet shows it as text
instead of running it. A key cell that starts with ``'`` followed by one of
those characters has that one ``'`` dropped (:func:`unescape_key`); a key
saved back by a spreadsheet without the ``'`` is the key itself. (So a real
key that starts with ``'=`` must be written ``''=`` in a labels file.)
"""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import LabelsFileError, SourceNotFoundError
from ..digits import UNKNOWN_LABEL
from .base import Batch, Reject

log = logging.getLogger(__name__)

# One ASCII digit, or that digit float-formatted ("9.0", as spreadsheets export).
_LABEL = re.compile(r"[0-9](\.0+)?", re.ASCII)
# A key cell starting with one of these is written with a ' before it (the
# quote too, so that the escape is undone without ambiguity); the same set as
# export's CSV (digitbatch.tables.FORMULA_START).
ESCAPED_START = "=+-@\t\r'\uff1d\uff0b\uff0d\uff20"


def escape_key(key: str) -> str:
    """``key`` as a CSV cell a spreadsheet shows as text, never runs as a formula."""
    return "'" + key if key[:1] and key[0] in ESCAPED_START else key


def unescape_key(cell: str) -> str:
    """The key a cell written by :func:`escape_key` holds (any other cell as it is)."""
    return cell[1:] if len(cell) > 1 and cell[0] == "'" and cell[1] in ESCAPED_START else cell


@dataclass
class LabelMap:
    """key -> label (int 0-9, UNKNOWN_LABEL, or a reject reason string)."""

    path: str
    labels: dict[str, int | str]
    used: set[str] = field(default_factory=set)

    @property
    def unmatched(self) -> int:
        """Keys of the file that matched no image (so far)."""
        return len(self.labels) - len(self.used)

    def apply(self, batch: Batch) -> Batch:
        """Relabel ``batch`` by key; images with a bad label become rejects."""
        if not self.labels or not len(batch):
            return batch
        labels = batch.labels.copy()
        keep = np.ones(len(batch), dtype=bool)
        rejects = list(batch.rejects)
        for i, key in enumerate(batch.keys):
            if key not in self.labels:
                continue
            self.used.add(key)
            value = self.labels[key]
            if isinstance(value, str):
                keep[i] = False
                rejects.append(Reject(key, value))
            else:
                labels[i] = value
        if keep.all():
            return Batch(batch.images, labels, batch.keys, rejects)
        idx = np.flatnonzero(keep)
        return Batch(batch.images[idx], labels[idx], [batch.keys[i] for i in idx], rejects)

    def gives_label(self, key: str) -> bool:
        """Whether the file gives ``key`` a label (a digit, or a bad label: not empty)."""
        return key in self.labels and self.labels[key] != UNKNOWN_LABEL

    def only_labelled(self, batch: Batch) -> tuple[Batch, int]:
        """The rows (and rejects) of ``batch`` whose key the file gives a label, and how
        many other rows and rejects were left out (``ingest --only-labelled``)."""
        given = self.gives_label
        idx = [i for i, k in enumerate(batch.keys) if given(k)]
        rejects = [r for r in batch.rejects if given(r.key)]
        left = len(batch) - len(idx) + len(batch.rejects) - len(rejects)
        if not left:
            return batch, 0
        ix = np.asarray(idx, np.int64)
        return Batch(batch.images[ix], batch.labels[ix], [batch.keys[i] for i in idx],
                     rejects), left


def parse_label(text: str) -> int | str:
    """A CSV label cell -> 0-9, UNKNOWN_LABEL for empty, or a ``bad-label`` reason."""
    t = text.strip(" \t\r\n")
    if t == "":
        return UNKNOWN_LABEL
    if _LABEL.fullmatch(t):  # (int() and float() also take "٣", "３", "1e0")
        return int(t[0])
    return f"bad-label: {t!r} is not a digit 0-9"


def load_labels(path: str | Path) -> LabelMap:
    """Read a key,label CSV file."""
    p = Path(path)
    if not p.is_file():
        raise SourceNotFoundError(f"labels file {p} does not exist")
    try:
        with open(p, newline="", encoding="utf-8-sig") as fh:  # (a leading BOM is dropped)
            reader = csv.DictReader(fh)
            fields = [f.strip().lower() for f in (reader.fieldnames or [])]
            if "key" not in fields or "label" not in fields:
                raise LabelsFileError(
                    f"labels file {p}: header {reader.fieldnames!r} must name the columns "
                    f"'key' and 'label' (e.g. 'key,label' then '7/img001.png,7')"
                )
            reader.fieldnames = fields
            out: dict[str, int | str] = {}
            for lineno, row in enumerate(reader, start=2):
                key = unescape_key((row.get("key") or "").strip())
                if not key:
                    raise LabelsFileError(f"labels file {p}, line {lineno}: empty key")
                if key in out:
                    raise LabelsFileError(f"labels file {p}, line {lineno}: key {key!r} appears twice")
                out[key] = parse_label(row.get("label") or "")
    except UnicodeDecodeError as exc:
        raise LabelsFileError(f"labels file {p} is not UTF-8 text ({exc}): save it as UTF-8 "
                              f"(a spreadsheet's 'CSV UTF-8')") from exc
    except csv.Error as exc:
        raise LabelsFileError(f"labels file {p} is not valid CSV: {exc}") from exc
    log.info("read %d labels from %s", len(out), p)
    return LabelMap(str(p), out)
