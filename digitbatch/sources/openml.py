"""MNIST from OpenML, fetched and cached by scikit-learn.

:func:`load_openml` calls :func:`sklearn.datasets.fetch_openml` the way the
original MNIST walk-through does (``fetch_openml('mnist_784', version=1)``),
with ``as_frame=False, parser="liac-arff"`` so that pandas is not needed.
scikit-learn caches every response under ``data_home/openml``, so a
second call with the same ``data_home`` needs no network. The result is
checked (784 integral pixels in 0..255 per row, labels '0'..'9') and
converted to the store's form: (n, 28, 28) uint8 images and int8 labels.
"""

from __future__ import annotations

import http.client
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from urllib.error import HTTPError, URLError

import numpy as np

from ..errors import OpenMLError
from ..digits import IMAGE_SHAPE, LABEL_DTYPE, N_CLASSES
from .base import Batch

log = logging.getLogger(__name__)

N_PIXELS = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
OPENML_SITE = "https://www.openml.org"
# The MNIST convention: of mnist_784's 70,000 rows, the first 60,000 are the
# original training set and the last 10,000 the original test set.
MNIST_N = 70_000
MNIST_N_TRAIN = 60_000
# Pixels are checked this many rows at a time: the temporaries for all of
# MNIST at once would add about 0.7 GB to the 0.44 GB of float64 pixels.
CHECK_ROWS = 8192
OFFLINE_HINT = (
    "to work offline, pass --data-home pointing at a directory that already "
    "holds a cached copy (scikit-learn keeps it in DATA_HOME/openml), or ingest the "
    "MNIST IDX files instead: `digitbatch ingest DIR_WITH_IDX_FILES`"
)


@dataclass(frozen=True, eq=False)
class OpenMLData:
    """An OpenML digit data set in MNIST form.

    Attributes
    ----------
    images : ndarray of shape (n, 28, 28), dtype uint8
        Pixel intensities, in OpenML row order.
    labels : ndarray of shape (n,), dtype int8
        Digit labels 0..9.
    keys : list of str
        ``"openml:<data_id>:<row>"`` for each row.
    description : dict
        ``kind`` ("openml"), ``name``, ``version`` (the one served, also
        for ``"active"``), ``data_id``, ``url``, ``n``: the source
        description a store records.
    splits : dict
        ``{"train": (0, 60000), "test": (60000, 70000)}`` for the 70,000
        rows of MNIST, else ``{}``.
    """

    images: np.ndarray
    labels: np.ndarray
    keys: list[str]
    description: dict[str, Any]
    splits: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def n(self) -> int:
        """Number of rows."""
        return int(self.images.shape[0])

    def to_batch(self) -> Batch:
        """All rows as one :class:`~digitbatch.sources.base.Batch`."""
        return Batch(self.images, self.labels, list(self.keys))


def load_openml(
    *,
    name: str = "mnist_784",
    version: int | str = 1,
    data_home: str | os.PathLike | None = None,
) -> OpenMLData:
    """Fetch an MNIST-like data set from OpenML and check it.

    Parameters
    ----------
    name : str, default="mnist_784"
        OpenML data set name.
    version : int or "active", default=1
        Data set version; ``"active"`` takes the oldest active version.
    data_home : str or path-like, optional
        scikit-learn's download cache (``~/scikit_learn_data`` if None).
        Once it holds the data set, no network is needed.

    Returns
    -------
    OpenMLData
        Images (n, 28, 28) uint8, labels (n,) int8, keys, description and
        splits.

    Raises
    ------
    OpenMLError
        If an argument is invalid, the download fails, OpenML refuses the
        request, or the data are not 28x28 images of integral pixels in
        0..255 with labels '0'..'9'.
    """
    name = _check_name(name)
    version = _check_version(version)
    data_home_str = _check_data_home(data_home)

    # Imported here: scikit-learn's datasets package is slow to import and
    # only this source needs it.
    from sklearn.datasets import fetch_openml

    where = f"OpenML data set {name!r} version {version}"
    log.info("fetching %s (cache: %s)", where, data_home_str or "scikit-learn default")
    try:
        bunch = fetch_openml(
            name,
            version=version,
            data_home=data_home_str,
            as_frame=False,
            parser="liac-arff",
        )
    except (URLError, TimeoutError, ConnectionError, http.client.HTTPException) as exc:
        # HTTPError is a URLError; 412 is turned into a ValueError by
        # scikit-learn itself and handled below.
        url = getattr(exc, "url", None) or getattr(exc, "filename", None) or OPENML_SITE
        reason = f"HTTP {exc.code} {exc.reason}" if isinstance(exc, HTTPError) else str(
            getattr(exc, "reason", None) or exc
        )
        raise OpenMLError(
            f"downloading {where} from {url} failed ({reason}); {OFFLINE_HINT}"
        ) from exc
    except OSError as exc:
        raise OpenMLError(
            f"could not read or write the OpenML cache in data_home "
            f"{data_home_str or '(scikit-learn default)'} for {where}: {exc}"
        ) from exc
    except ValueError as exc:
        # Data set not found (OpenML HTTP 412), checksum mismatch, string
        # attributes ...: scikit-learn's message says what went wrong.
        raise OpenMLError(f"{where} could not be loaded: {exc}") from exc

    data_id = int(bunch.details["id"])
    # Record the version actually served, so that "active" stays reproducible.
    served_version = bunch.details.get("version")
    version = int(served_version) if str(served_version).isdigit() else version
    images = _convert_pixels(bunch.data, where, bunch.get("feature_names"))
    n = images.shape[0]
    labels = _convert_labels(bunch.target, n, where)
    url = str(bunch.get("url") or f"{OPENML_SITE}/d/{data_id}")
    description = {
        "kind": "openml",
        "name": name,
        "version": version,
        "data_id": data_id,
        "url": url,
        "n": n,
    }
    log.info("loaded %s (data_id %d): %d images", where, data_id, n)
    return OpenMLData(
        images=images,
        labels=labels,
        keys=[f"openml:{data_id}:{i}" for i in range(n)],
        description=description,
        splits=mnist_splits(n),
    )


def mnist_splits(n: int) -> dict[str, tuple[int, int]]:
    """The MNIST train/test rows for ``n`` rows: only for n == 70,000.

    >>> mnist_splits(70000)
    {'train': (0, 60000), 'test': (60000, 70000)}
    >>> mnist_splits(12)
    {}
    """
    if n == MNIST_N:
        return {"train": (0, MNIST_N_TRAIN), "test": (MNIST_N_TRAIN, MNIST_N)}
    return {}


# --- argument checks ---------------------------------------------------------


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise OpenMLError(f"name must be a non-empty string such as 'mnist_784', got {name!r}")
    return name


def _check_version(version: Any) -> int | str:
    if version == "active" and isinstance(version, str):
        return version
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version < 1:
        raise OpenMLError(
            f"version must be a positive integer or 'active', got {version!r}"
        )
    return int(version)


def _check_data_home(data_home: Any) -> str | None:
    if data_home is None:
        return None
    if not isinstance(data_home, (str, os.PathLike)):
        raise OpenMLError(f"data_home must be a path or None, got {data_home!r}")
    return str(Path(data_home).expanduser())


# --- conversion --------------------------------------------------------------


def _convert_pixels(X: Any, where: str, feature_names: Any = None) -> np.ndarray:
    """(n, 784) float pixels -> (n, 28, 28) uint8, refusing anything lossy."""
    if hasattr(X, "toarray"):  # a sparse_arff data set
        X = X.toarray()
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] != N_PIXELS:
        raise OpenMLError(
            f"{where} has data of shape {X.shape}, not (n, {N_PIXELS}): it is not a data "
            f"set of 28x28 images; use an MNIST-like data set such as 'mnist_784'"
        )
    if X.dtype.kind not in "biuf":
        raise OpenMLError(f"{where} has non-numeric pixel columns (dtype {X.dtype})")
    for start in range(0, X.shape[0], CHECK_ROWS):
        _check_pixel_block(X[start:start + CHECK_ROWS], start, where, feature_names)
    return X.astype(np.uint8).reshape(X.shape[0], *IMAGE_SHAPE)


def _check_pixel_block(X: np.ndarray, start: int, where: str, feature_names: Any) -> None:
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(X) | (X < 0) | (X > 255) | (X != np.floor(X))
    if bad.any():
        row, col = divmod(int(np.argmax(bad)), N_PIXELS)
        column = f"column {col}"
        if feature_names is not None and len(feature_names) == N_PIXELS:
            column += f" ({feature_names[col]})"
        raise OpenMLError(
            f"{where}: pixel value {X[row, col].item()!r} at row {start + row}, {column} is "
            f"not an integer in 0..255; the data set is not 8-bit grayscale images"
        )


def _label_value(v: Any) -> int | None:
    """The digit a label value stands for, or None."""
    if isinstance(v, (bool, np.bool_)):
        return None
    if isinstance(v, bytes):
        v = v.decode("ascii", "replace")
    if isinstance(v, str):
        s = v.strip()
        return int(s) if len(s) == 1 and s in "0123456789" else None
    if isinstance(v, (int, np.integer)):
        return int(v) if 0 <= v < N_CLASSES else None
    if isinstance(v, (float, np.floating)):
        return int(v) if np.isfinite(v) and v == int(v) and 0 <= v < N_CLASSES else None
    return None


def _convert_labels(y: Any, n: int, where: str) -> np.ndarray:
    """Labels '0'..'9' (strings, ints or integral floats) -> int8."""
    if y is None:
        raise OpenMLError(f"{where} has no target column: it carries no digit labels")
    y = np.asarray(y)
    if y.shape != (n,):
        raise OpenMLError(
            f"{where} has labels of shape {y.shape} for {n} images; expected one label per image"
        )
    if y.dtype.kind in "biuf":  # a numeric target column
        digits = np.asarray(y, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(digits) | (digits < 0) | (digits >= N_CLASSES)
            bad |= digits != np.floor(digits)
        if y.dtype.kind == "b":
            bad[:] = True
        if bad.any():
            row = int(np.argmax(bad))
            _bad_label(where, y[row].item(), row, len(np.unique(y[bad])))
        return digits.astype(LABEL_DTYPE)
    values = [v.item() if isinstance(v, np.generic) else v for v in y.tolist()]
    # MNIST has 10 distinct labels: map each distinct value once.
    lut = {v: _label_value(v) for v in set(values)}
    bad_values = [v for v, d in lut.items() if d is None]
    if bad_values:
        row = next(i for i, v in enumerate(values) if lut[v] is None)
        _bad_label(where, values[row], row, len(bad_values))
    return np.fromiter((lut[v] for v in values), dtype=LABEL_DTYPE, count=n)


def _bad_label(where: str, value: Any, row: int, n_bad: int) -> NoReturn:
    raise OpenMLError(
        f"{where}: label {value!r} at row {row} is not a digit '0'..'9' "
        f"({n_bad} distinct bad label value(s)); the data set is not digit-labelled"
    )
