"""``digitbatch predict``: the walk-through's ``clf.predict([digit])`` for image files.

Each file is decoded and normalised exactly as ingest does (grayscale,
polarity, 20x20 box centred by centre of mass) before the model sees it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import SourceNotFoundError
from .modelio import LoadedModel, load_model
from .sources.images import DEFAULT_MAX_MEMBER_BYTES, decode_batch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    path: str
    digit: int | None
    probability: float | None
    margin: float | None
    error: str | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _read(path: Path, limit: int) -> bytes | str:
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except IsADirectoryError:
        return "not-a-file: a directory (use `digitbatch score` for folders and archives)"
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    if len(data) > limit:
        return f"too-large: over the {limit}-byte limit"
    return data


def predict_files(paths: list[str | os.PathLike], *, model: str | os.PathLike | LoadedModel,
                  max_bytes: int = DEFAULT_MAX_MEMBER_BYTES) -> list[Prediction]:
    """Predict the digit of each image file; unreadable files get an ``error``.

    ``model`` is a model directory, or a model :func:`~digitbatch.modelio.load_model` loaded.
    """
    if not paths:
        raise SourceNotFoundError("no image files given: name at least one")
    m = (model if isinstance(model, LoadedModel) else load_model(model)).model
    out: dict[int, Prediction] = {}
    items = []
    for i, p in enumerate(map(Path, paths)):
        if not p.exists():
            out[i] = Prediction(str(p), None, None, None, "not-found: no such file")
            continue
        data = _read(p, max_bytes)
        if isinstance(data, str):
            out[i] = Prediction(str(p), None, None, None, data)
        else:
            items.append((str(i), data, None))
    batch = decode_batch(items)
    for r in batch.rejects:
        out[int(r.key)] = Prediction(str(paths[int(r.key)]), None, None, None, r.reason)
    if len(batch):
        pred, margin, proba = m.score_chunk(batch.images)
        for j, key in enumerate(batch.keys):
            i = int(key)
            digit = int(pred[j])
            p = float(proba[j].max()) if proba is not None else None
            out[i] = Prediction(str(paths[i]), digit, p, float(margin[j]))
    return [out[i] for i in range(len(paths))]


def describe(p: Prediction, *, binary_digit: int | None = None) -> str:
    """One line for a person."""
    if p.error:
        return f"{p.path}: rejected ({p.error})"
    what = str(p.digit) if binary_digit is None else (
        f"a {binary_digit}" if p.digit == 1 else f"not a {binary_digit}")
    conf = f" (probability {p.probability:.3f})" if p.probability is not None else \
        f" (margin {p.margin:.3f})"
    return f"{p.path}: {what}{conf}"


__all__ = ["Prediction", "predict_files", "describe"]
