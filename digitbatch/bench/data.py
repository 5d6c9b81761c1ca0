"""Benchmark data: large stores made from MNIST by small random shifts."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..layout import DEFAULT_CHUNK_SIZE, IMAGE_CODECS, StoreWriter, open_store
from ..sources.idx import load_idx

log = logging.getLogger(__name__)


def shift_images(images: np.ndarray, rng: np.random.Generator, max_shift: int = 2) -> np.ndarray:
    """Each image moved by a random (dy, dx) in [-max_shift, max_shift], zero-filled."""
    n = images.shape[0]
    pad = max_shift
    padded = np.zeros((n, 28 + 2 * pad, 28 + 2 * pad), np.uint8)
    padded[:, pad:pad + 28, pad:pad + 28] = images
    dy = rng.integers(0, 2 * pad + 1, n)
    dx = rng.integers(0, 2 * pad + 1, n)
    rows = dy[:, None] + np.arange(28)
    cols = dx[:, None] + np.arange(28)
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def make_shifted_store(path: Path, *, n: int, mnist_dir: Path, seed: int = 0,
                       chunk_size: int = DEFAULT_CHUNK_SIZE, train_fraction: float = 6 / 7,
                       codec: str = "lz4"):
    """A store of ``n`` shifted MNIST images (reused when it exists with that size
    and codec)."""
    path = Path(path)
    if path.exists():
        s = open_store(path)
        if s.n == n and s.chunk_size == chunk_size and _codec(s) == codec:
            return s
    data = load_idx(mnist_dir)
    rng = np.random.default_rng(seed)
    n_train = int(n * train_fraction)
    with StoreWriter(path, source={"kind": "bench-shifted-mnist", "n": n, "seed": seed},
                     chunk_size=chunk_size, overwrite=True, codec=codec) as w:
        done = 0
        while done < n:
            take = min(chunk_size, n - done)
            # train rows come from MNIST's train images, test rows from its test images
            rows = np.arange(done, done + take)
            idx = np.where(rows < n_train, rng.integers(0, 60000, take),
                           rng.integers(60000, 70000, take))
            w.append(shift_images(data.images[idx], rng), data.labels[idx],
                     [f"shift:{i}" for i in range(done, done + take)])
            done += take
        store = w.finish(splits={"train": (0, n_train), "test": (n_train, n)})
    log.info("made %s with %d shifted MNIST images", path, n)
    return store


def _codec(store) -> str | None:
    """The name of the images codec a store was written with (None: another one,
    e.g. an earlier default's level: such a store is made again)."""
    def key(codecs):
        return [(type(c).__name__, getattr(c, "cname", None), getattr(c, "clevel", None),
                 getattr(c, "shuffle", None)) for c in codecs]

    have = key(store.images.metadata.codecs[1:])
    return next((name for name, want in IMAGE_CODECS.items() if key(want) == have), None)
