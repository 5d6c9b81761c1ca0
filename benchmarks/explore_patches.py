"""Which settings make the ``sgd-patches`` flagship? A record of the search (issue 17).

Reads the MNIST IDX files from ``$DIGITBATCH_MNIST_DIR`` (default
``../shared/data/mnist``) and splits the 60,000 training rows with a seeded
permutation (``np.random.default_rng(0)``): candidates fit on the first
``--train`` rows of it (20,000 while exploring, 50,000 to confirm) and are
scored on its last 10,000, the validation split. The test rows are never
read here: the chosen settings are tested once, by ``digitbatch bench train``.

Usage::

    python benchmarks/explore_patches.py [--train N] NAME ...

where NAME is one of :data:`CANDIDATES`. Results are in
docs/patch-model.md.
"""

from __future__ import annotations

import argparse
import gzip
import os
import time
from pathlib import Path

import numpy as np

from digitbatch.patchlearn import make_patch_pipeline

# name -> make_patch_pipeline overrides (the catalogue's PATCH_PARAMS / PATCH_HEAD otherwise)
CANDIDATES = {
    "k128-s2-g4-gamma0.02": {"gamma": 0.02},
    "k128-s2-g4-gamma0.05": {"gamma": 0.05},
    "k128-s2-g4-gamma0.1": {"gamma": 0.1},
    "k128-s2-g4": {},  # the catalogue: gamma 0.2
    "k64-s1-g5": {"n_filters": 64, "stride": 1, "grid": 5},
    "k128-s2-g4-aug2": {"copies": 2, "max_iter": 20},
    "k128-s2-g4-aug1": {"copies": 1, "max_iter": 30},
    # cheaper points for the scoring target (fewer filters, fewer landmarks)
    "k96-s2-g4": {"n_filters": 96},
    "k64-s2-g4": {"n_filters": 64},
    "k128-s2-g4-l1500": {"n_components": 1500},
    "k64-s2-g4-l1500": {"n_filters": 64, "n_components": 1500},
}


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path) as fh:
        raw = fh.read()
    nd = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(nd)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * nd).reshape(shape)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("names", nargs="+", choices=sorted(CANDIDATES))
    ap.add_argument("--train", type=int, default=20000)
    args = ap.parse_args()
    d = Path(os.environ.get("DIGITBATCH_MNIST_DIR", "../shared/data/mnist"))
    X = _idx(d / "train-images-idx3-ubyte.gz").reshape(-1, 784)
    y = _idx(d / "train-labels-idx1-ubyte.gz")
    perm = np.random.default_rng(0).permutation(60000)
    tr, va = perm[:args.train], perm[50000:]
    for name in args.names:
        pipe = make_patch_pipeline(random_state=0, **CANDIDATES[name])
        pipe.steps[-1][1].set_params(n_jobs=2)
        t0, c0 = time.perf_counter(), time.process_time()
        pipe.fit(X[tr], y[tr])
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        pred = pipe.predict(X[va])
        print(f"{name:24s} train {args.train:6d}  validation {100 * (pred == y[va]).mean():.2f}% "
              f"({int((pred != y[va]).sum())} errors)  fit {wall:.0f} s wall, {cpu:.0f} s CPU",
              flush=True)


if __name__ == "__main__":
    main()
