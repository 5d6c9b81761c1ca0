"""Drawing digits as the walk-through does (matplotlib, binary colour map)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .errors import StoreError
from .layout import UNKNOWN_LABEL, open_store

log = logging.getLogger(__name__)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def show_digit(store: str | Path, *, index: int, out: str | Path) -> dict:
    """Draw row ``index`` of ``store`` (28x28, binary cmap, nearest, no axes) to ``out``."""
    s = open_store(store)
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
        raise StoreError(f"index must be an integer, got {index!r}")
    if not -s.n <= index < s.n:
        raise StoreError(f"index {index} is outside the store's rows 0..{s.n - 1}")
    index = int(index) % s.n
    image = s.images[index]
    label = int(s.labels[index])
    key = str(s.keys[index])
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(3, 3.3), dpi=100)
    ax.imshow(image, cmap="binary", interpolation="nearest")
    ax.axis("off")
    shown = "?" if label == UNKNOWN_LABEL else str(label)
    ax.set_title(f"row {index}: label {shown}\n{key}", fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    log.info("drew row %d of %s to %s", index, s.path, out)
    return {"index": index, "label": None if label == UNKNOWN_LABEL else label, "key": key,
            "out": str(out)}
