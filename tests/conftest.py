"""Shared fixtures: tiny synthetic data with uneven chunks, and the MNIST location."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def mnist_dir() -> Path | None:
    for c in (os.environ.get("DIGITBATCH_MNIST_DIR"), REPO.parent / "shared" / "data" / "mnist"):
        if c and (Path(c) / "train-images-idx3-ubyte.gz").exists():
            return Path(c)
    return None


@pytest.fixture(scope="session")
def mnist_path() -> Path:
    p = mnist_dir()
    if p is None:
        pytest.skip("full MNIST IDX files not found (../shared/data/mnist or $DIGITBATCH_MNIST_DIR)")
    return p


def synthetic_digits(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Separable fake digits: class k lights a band of rows, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.int8)
    images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for k in range(10):
        rows = labels == k
        images[rows, 2 + 2 * k: 4 + 2 * k, 4:24] = 250
    return images, labels


def write_idx(directory: Path, images: np.ndarray, labels: np.ndarray, *, prefix: str = "train",
              gz: bool = True) -> None:
    """Write an IDX image/label pair (prefix 'train' or 't10k')."""
    directory.mkdir(parents=True, exist_ok=True)
    n = images.shape[0]
    img = (2051).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (n, 28, 28))
    img += images.astype(np.uint8).tobytes()
    lab = (2049).to_bytes(4, "big") + labels.shape[0].to_bytes(4, "big") + labels.astype(np.uint8).tobytes()
    for name, data in ((f"{prefix}-images-idx3-ubyte", img), (f"{prefix}-labels-idx1-ubyte", lab)):
        if gz:
            with gzip.open(directory / (name + ".gz"), "wb") as fh:
                fh.write(data)
        else:
            (directory / name).write_bytes(data)


@pytest.fixture
def idx_dir(tmp_path) -> Path:
    """A small IDX directory: 700 train + 300 test synthetic digits."""
    x, y = synthetic_digits(1000)
    d = tmp_path / "idx"
    write_idx(d, x[:700], y[:700], prefix="train")
    write_idx(d, x[700:], y[700:], prefix="t10k")
    return d


@pytest.fixture
def small_store(tmp_path, idx_dir):
    """A 1,000-image store with uneven chunks (256, 256, 256, 232)."""
    from digitbatch.ingestion import ingest

    out = tmp_path / "small.zarr"
    ingest(idx_dir, out, chunk_size=256)
    return out


def trained_model(tmp: Path, *, n: int = 600, n_train: int = 500, seed: int = 0,
                  chunk_size: int = 256) -> Path:
    """A small sgd model on synthetic digits (IDX -> store -> train) under ``tmp``."""
    from digitbatch.ingestion import ingest
    from digitbatch.training import train

    x, y = synthetic_digits(n, seed=seed)
    write_idx(tmp / "idx", x[:n_train], y[:n_train])
    write_idx(tmp / "idx", x[n_train:], y[n_train:], prefix="t10k")
    ingest(tmp / "idx", tmp / "s.zarr", chunk_size=chunk_size)
    return Path(train(tmp / "s.zarr", tmp / "model", seed=0).model_path)


# --- stores of every chunk count (odd, even, one; ragged last or not) -------------

# name: (images, chunk size). The chunk counts are odd and even, the last
# chunk ragged or full, and one store is a single short chunk: a pairwise
# reduction of commit records that drops an odd one out, an expected-chunk
# count of n // chunk_size, or a ragged-chunk slip shows on some of them.
STORE_SHAPES = {
    "1-chunk-short": (100, 256),     # 1 chunk, shorter than chunk_size
    "2-chunks-ragged": (300, 256),   # even
    "3-chunks-ragged": (700, 256),   # odd: the last record carried once
    "4-chunks-ragged": (1000, 256),  # even, as small_store
    "5-chunks-full": (1280, 256),    # odd, no ragged chunk
    "9-chunks-ragged": (2200, 256),  # odd at two levels of the tree (9 -> 5 -> 3)
}


def noisy_labels(y: np.ndarray, *, noise: float, seed: int) -> np.ndarray:
    """``y`` with a share ``noise`` of its labels replaced at random, each by a
    fixed wrong class (true k -> k + 1 + seed % 3): a model then has confusion
    matrices that are not symmetric, so precision differs from recall."""
    rng = np.random.default_rng(seed + 1000)
    flip = rng.random(y.shape[0]) < noise
    out = y.copy()
    out[flip] = (y[flip].astype(np.int64) + 1 + seed % 3 + (y[flip] % 2)) % 10
    return out.astype(y.dtype)


def make_store(tmp: Path, n: int, *, chunk_size: int = 256, seed: int = 0,
               n_test: int | None = None, noise: float = 0.0) -> Path:
    """A store of ``n`` synthetic digits under ``tmp`` in chunks of ``chunk_size``
    (``noise``: that share of the labels wrong, see :func:`noisy_labels`)."""
    from digitbatch.ingestion import ingest

    x, y = synthetic_digits(n, seed=seed)
    if noise:
        y = noisy_labels(y, noise=noise, seed=seed)
    n_test = n // 5 if n_test is None else n_test
    d = tmp / f"idx-{n}-{chunk_size}-{seed}"
    write_idx(d, x[:n - n_test], y[:n - n_test], prefix="train")
    write_idx(d, x[n - n_test:], y[n - n_test:], prefix="t10k")
    out = tmp / f"store-{n}-{chunk_size}-{seed}.zarr"
    ingest(d, out, chunk_size=chunk_size, scheduler="synchronous")
    return out


@pytest.fixture(scope="session")
def shared_model(tmp_path_factory) -> Path:
    """One small sgd model for the whole session (tests must not change it)."""
    return trained_model(tmp_path_factory.mktemp("shared-model"), seed=7)


@pytest.fixture(scope="session")
def shaped_stores(tmp_path_factory) -> dict[str, Path]:
    """A store of every :data:`STORE_SHAPES` shape, by name, a fifth of the labels
    wrong (tests must not change them)."""
    tmp = tmp_path_factory.mktemp("shaped-stores")
    return {name: make_store(tmp, n, chunk_size=c, seed=i, noise=0.2)
            for i, (name, (n, c)) in enumerate(STORE_SHAPES.items())}


@pytest.fixture
def trained(tmp_path, small_store):
    """An sgd model trained on :func:`small_store` (seed 3): the TrainResult."""
    from digitbatch.training import train

    return train(small_store, tmp_path / "model", seed=3)


@pytest.fixture
def model_dir(trained) -> Path:
    """The directory of :func:`trained`."""
    return Path(trained.model_path)
