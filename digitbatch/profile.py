"""The fixed-bin profile of scored images: what drift is measured on (pure numpy).

A profile counts, in bins fixed here once for every model and run, what a
chunk of scored rows looks like:

``prediction``
    rows per predicted class (the model's classes, in order);
``margin``
    rows per margin bin: :data:`MARGIN_BINS` equal bins of the margin (top-1
    minus top-2 probability, in [0, 1]; a model without probabilities has
    decision-value margins, which are clipped into the same bins);
``margin_labelled`` / ``margin_correct``
    rows with a known label, and those predicted right, per margin bin
    (what the expected accuracy is made of);
``ink``
    rows per bin of their ink fraction: the share of the 784 pixels at
    :data:`INK_LEVEL` or more (bins :data:`INPUT_EDGES`);
``intensity``
    rows per bin of their mean pixel value / 255 (bins :data:`INPUT_EDGES`);
    both are measured on the rows whose index in the input is a multiple
    of ``input_every``: 1 for a reference profile and for archives (whose
    decoding costs far more), and for a store :func:`input_every` of its
    size: a pass over every pixel of every row costs a linear model's chunk
    about a third of its numpy work, so a large store measures one row in
    up to :data:`MAX_INPUT_EVERY`, keeping at least :data:`INPUT_ROWS` rows
    measured (the PSI of a small sample is noise). The sample depends on
    the row's index and the store's size only, so a run's profile does not
    depend on its chunking;
``normalisation``
    for inputs decoded from image files in the job (archives): the images
    normalisation inverted (dark ink on light paper) and resized (not
    28x28), out of ``n`` decoded; None where it is not known (a store's rows
    were normalised by ingest, which does not record it per row).

Profiles are plain JSON objects (lists of counts), so a chunk's commit
record carries its own and the run's profile is their sum
(:func:`add`, :func:`reduce_profiles`, pairwise as the confusion counts);
no row is ever gathered. :func:`check` validates one read from a file.
Drift between two profiles is :mod:`digitbatch.drift`'s.
"""

from __future__ import annotations

import numpy as np

from .digits import UNKNOWN_LABEL

# Bumped when a bin or a field changes: profiles of another version are not compared.
PROFILE_VERSION = 1
MARGIN_BINS = 20
MARGIN_EDGES = np.linspace(0.0, 1.0, MARGIN_BINS + 1)
# A pixel at this level or more counts as ink (half of full ink).
INK_LEVEL = 128
# Ink fractions and mean intensities of MNIST digits lie between ~0.02 and
# ~0.35: 20 bins of 0.02 up to 0.4, and one bin for everything above.
INPUT_EDGES = np.concatenate([np.linspace(0.0, 0.4, 21), [1.0]])
INPUT_BINS = INPUT_EDGES.size - 1
# Scoring a store measures the input statistics of one row in up to
# MAX_INPUT_EVERY (by row index), keeping at least INPUT_ROWS rows.
MAX_INPUT_EVERY = 32
INPUT_ROWS = 16384
# The histogram signals of a profile (drift compares each), in order.
SIGNALS = ("prediction", "margin", "ink", "intensity")
_COUNT_FIELDS = ("prediction", "margin", "margin_labelled", "margin_correct", "ink", "intensity")


def margin_bins(margin: np.ndarray) -> np.ndarray:
    """The margin bin (0 .. MARGIN_BINS - 1) of each margin; NaN and values
    below 0 go to the first bin, values above 1 to the last."""
    v = np.multiply(margin, MARGIN_BINS, dtype=np.float64)
    np.fmax(v, 0.0, out=v)  # (NaN -> 0)
    np.minimum(v, MARGIN_BINS - 1, out=v)
    return v.astype(np.intp)


def _input_bins(values: np.ndarray) -> np.ndarray:
    """Bins of :data:`INPUT_EDGES` (left-closed; the last bin takes 1.0)."""
    return np.clip(np.searchsorted(INPUT_EDGES, values, side="right") - 1, 0, INPUT_BINS - 1)


def input_every(n_rows: int) -> int:
    """One row in how many a store of ``n_rows`` rows measures the input statistics of."""
    return int(min(MAX_INPUT_EVERY, max(1, n_rows // INPUT_ROWS)))


def input_statistics(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ink fraction, mean intensity / 255)`` of each image of ``(n, 28, 28)`` uint8."""
    x = np.asarray(images)
    x = x.reshape(x.shape[0], int(np.prod(x.shape[1:])))  # (also for no rows)
    if x.dtype != np.uint8:
        x = np.clip(x, 0, 255).astype(np.uint8)
    px = x.shape[1] or 1
    # (x >> 7 is 1 exactly for x >= 128: summed in uint16, no boolean array)
    dt = np.uint16 if px < 1 << 16 else np.uint32
    ink = np.add.reduce(np.right_shift(x, 7), axis=1, dtype=dt) / px
    mean = np.add.reduce(x, axis=1, dtype=np.uint32) / (255.0 * px)
    return ink, mean


def chunk_profile(images: np.ndarray, pred: np.ndarray, margin: np.ndarray,
                  target: np.ndarray, classes, *, rows: np.ndarray | None = None,
                  input_every: int = 1,
                  normalisation: tuple[int, int, int] | None = None) -> dict:
    """The profile of one chunk of scored rows, as JSON-ready counts.

    Parameters
    ----------
    images : (n, 28, 28) uint8
        The rows as the model saw them.
    pred : (n,) int
        Each row's predicted class (one of ``classes``).
    margin : (n,) float
        Each row's margin.
    target : (n,) int
        Each row's label in the model's target (``UNKNOWN_LABEL``: unknown).
    classes : sequence of int
        The model's classes, in order (a detector's are 0 and 1).
    rows : (n,) int, or int, optional
        Each row's index in the input, or the first one's when they follow
        each other (default 0).
    input_every : int
        Measure the input statistics of the rows whose index is a multiple
        of this (1: every row).
    normalisation : (decoded, inverted, resized), optional
        Counts from decoding image files; None where not known.
    """
    classes = np.asarray(classes, np.int64)
    n_classes = classes.size
    pred = np.asarray(pred).astype(np.int64, copy=False)
    n = int(pred.shape[0])
    target = np.asarray(target)
    if not (len(images) == len(margin) == len(target) == n):
        raise ValueError(f"a profile needs one image, margin and label per row: got "
                         f"{len(images)}, {len(margin)}, {len(target)} for {n} predictions")
    # one bincount of margin bin x (0 unlabelled, 1 wrong, 2 right)
    mb = margin_bins(margin)
    mb *= 3
    mb += target != UNKNOWN_LABEL
    mb += target == pred
    by = np.bincount(mb, minlength=3 * MARGIN_BINS).reshape(MARGIN_BINS, 3)
    if input_every > 1 and (rows is None or np.ndim(rows) == 0):  # consecutive rows
        ink, mean = input_statistics(np.ascontiguousarray(  # (a copy reduces faster)
            np.asarray(images)[(-int(rows or 0)) % input_every::input_every]))
    elif input_every > 1:
        sample = np.flatnonzero(np.asarray(rows) % input_every == 0)
        ink, mean = input_statistics(np.asarray(images)[sample])
    else:
        ink, mean = input_statistics(images)
    # (a model of digits 0..k-1 predicts the class index itself)
    index = pred if np.array_equal(classes, np.arange(n_classes)) else \
        np.clip(np.searchsorted(classes, pred), 0, n_classes - 1)
    prof = {
        "version": PROFILE_VERSION,
        "n": n,
        "prediction": np.bincount(index, minlength=n_classes)[:n_classes],
        "margin": by.sum(axis=1),
        "margin_labelled": by[:, 1] + by[:, 2],
        "margin_correct": by[:, 2],
        "ink": np.bincount(_input_bins(ink), minlength=INPUT_BINS),
        "intensity": np.bincount(_input_bins(mean), minlength=INPUT_BINS),
        "normalisation": (None if normalisation is None else
                          dict(zip(("n", "inverted", "resized"), map(int, normalisation)))),
    }
    return to_json(prof)


def to_json(prof: dict) -> dict:
    """``prof`` with its count arrays as lists of ints."""
    return {k: ([int(v) for v in prof[k]] if k in _COUNT_FIELDS else prof[k]) for k in prof}


def add(a: dict, b: dict) -> dict:
    """The profile of the rows of two profiles. ``normalisation`` is known for
    the sum only where both know it."""
    if a["version"] != b["version"] or len(a["prediction"]) != len(b["prediction"]):
        raise ValueError(f"profiles of version {a['version']} and {b['version']} with "
                         f"{len(a['prediction'])} and {len(b['prediction'])} classes do not add")
    out = {"version": a["version"], "n": int(a["n"]) + int(b["n"])}
    for k in _COUNT_FIELDS:
        out[k] = [int(x) + int(y) for x, y in zip(a[k], b[k])]
    na, nb = a.get("normalisation"), b.get("normalisation")
    out["normalisation"] = (None if na is None or nb is None else
                            {k: int(na[k]) + int(nb[k]) for k in ("n", "inverted", "resized")})
    return out


def reduce_profiles(profiles: list[dict | None]) -> dict | None:
    """The sum of ``profiles`` pairwise (a tree sum); None if any is None (a chunk
    committed without one, by an earlier digitbatch) or there are none."""
    if not profiles or any(p is None for p in profiles):
        return None
    parts = list(profiles)
    while len(parts) > 1:
        nxt = [add(parts[j], parts[j + 1]) for j in range(0, len(parts) - 1, 2)]
        if len(parts) % 2:
            nxt.append(parts[-1])
        parts = nxt
    return parts[0]


def check(prof, n_classes: int | None = None) -> str | None:
    """Why ``prof`` (read from a manifest or a commit record) is not a usable
    profile, or None when it is."""
    if not isinstance(prof, dict):
        return f"a profile is a JSON object, got {type(prof).__name__}"
    if prof.get("version") != PROFILE_VERSION:
        return f"profile version {prof.get('version')!r}, this digitbatch compares {PROFILE_VERSION}"
    sizes = {"margin": MARGIN_BINS, "margin_labelled": MARGIN_BINS, "margin_correct": MARGIN_BINS,
             "ink": INPUT_BINS, "intensity": INPUT_BINS,
             "prediction": n_classes if n_classes is not None else len(prof.get("prediction") or [])}
    for k, size in sizes.items():
        v = prof.get(k)
        if not isinstance(v, list) or len(v) != size or not all(
                isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v):
            return f"profile field {k!r} is not {size} counts"
    n = prof.get("n")
    if not isinstance(n, int) or isinstance(n, bool) or n < 0 or sum(prof["margin"]) != n \
            or sum(prof["prediction"]) != n:
        return f"profile count n={n!r} does not match its histograms"
    if sum(prof["ink"]) != sum(prof["intensity"]) or sum(prof["ink"]) > n:
        return "profile input histograms count other rows than each other, or more than n"
    if any(c > lab for c, lab in zip(prof["margin_correct"], prof["margin_labelled"])):
        return "profile has more correct rows than labelled rows in a margin bin"
    norm = prof.get("normalisation")
    if norm is not None and not (isinstance(norm, dict) and all(
            isinstance(norm.get(k), int) and norm.get(k) >= 0 for k in ("n", "inverted", "resized"))):
        return "profile field 'normalisation' is not counts n, inverted, resized"
    return None


def accuracy_by_margin(prof: dict) -> list[float | None]:
    """Per margin bin: the share of labelled rows predicted right (None: no labelled row)."""
    return [c / lab if lab else None for c, lab in zip(prof["margin_correct"],
                                                        prof["margin_labelled"])]
