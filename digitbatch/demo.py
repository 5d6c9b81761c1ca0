"""Ingest, train and score end to end on the embedded sample: ``digitbatch demo``.

(`make demo` runs the same steps as a job spec, jobs/quickstart.toml.)
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from .ingestion import ingest
from .scoring.api import score
from .training import train

log = logging.getLogger(__name__)


def run_demo(workdir: str | Path, *, scheduler: str | None = None) -> dict:
    """ingest (sample) -> train (sgd, 5-fold CV) -> score, in ``workdir`` (replaced if present)."""
    w = Path(workdir)
    for name in ("sample.zarr", "model", "predictions.zarr"):
        target = w / name
        if target.exists():
            shutil.rmtree(target)
    w.mkdir(parents=True, exist_ok=True)
    ing = ingest("sample", w / "sample.zarr")
    tr = train(w / "sample.zarr", w / "model", cv=5, scheduler=scheduler)
    sc = score(w / "sample.zarr", model=w / "model", out=w / "predictions.zarr",
               scheduler=scheduler)
    return {"ingest": ing, "train": tr, "score": sc}
