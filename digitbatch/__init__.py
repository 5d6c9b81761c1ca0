"""digitbatch: handwritten-digit recognition at archive scale (chunked Zarr, Dask, scikit-learn).

The public functions, loaded on first use (so that ``digitbatch predict``
does not import Zarr or Dask)::

    from digitbatch import ingest, train, score, write_report, run_job
    from digitbatch import open_store, open_predictions

Every error is a subclass of :class:`digitbatch.errors.DigitbatchError`.
"""

from __future__ import annotations

import importlib

from .version import __version__

__all__ = ["__version__", "ingest", "open_predictions", "open_store", "run_job", "score",
           "train", "write_report"]

# public name -> the module that defines it
_HOME = {
    "ingest": "digitbatch.ingestion",
    "train": "digitbatch.training",
    "score": "digitbatch.scoring.api",
    "write_report": "digitbatch.report",
    "run_job": "digitbatch.jobs",
    "open_store": "digitbatch.layout",
    "open_predictions": "digitbatch.scoring.output",
}


def __getattr__(name: str):
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'digitbatch' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
