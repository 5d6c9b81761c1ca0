"""Every catalogue model meets its accuracy on full MNIST's 10,000 test rows.

The cheap fits run in ``make test``; the ones of a minute or more (the
kernel feature head) in ``make test-long``. Needs the MNIST IDX files
(../shared/data/mnist or $DIGITBATCH_MNIST_DIR): skipped, with that reason,
where they are absent. The floors are the README's figures (seed 42, this
machine) less a little for other BLAS builds; the figure itself is checked
against the model's manifest, which is what `digitbatch train` reports.
"""

from __future__ import annotations

import json

import pytest

from digitbatch.training import train

# sgd-patches: issue 17's target, 99.3% (at most 70 errors in 10,000)
PATCH_FLOOR = 0.993

pytestmark = pytest.mark.mnist

# (model, features): the test-row accuracy it must reach. A comment per case
# gives the README figure.
CHEAP = {
    ("sgd", "pixels"): 0.912,     # 91.68%, fit 2.5 s
    ("sgd", "deskew"): 0.948,     # 95.13%
    ("detect-2", "pixels"): 0.978,  # 98.08%, the walk-through's detector
}
LONG = {
    ("sgd-kernel", "kernel"): 0.987,  # 98.89%, fit 68 s
    ("detect-2", "kernel"): 0.995,    # 99.63%
    ("sgd", "kernel"): 0.975,         # sgd-kernel's features under the log-loss head
    ("sgd-patches", "patches"): PATCH_FLOOR,  # the flagship (README figure)
}


@pytest.fixture(scope="module")
def mnist_store(tmp_path_factory, mnist_path):
    from digitbatch.ingestion import ingest

    out = tmp_path_factory.mktemp("mnist") / "mnist.zarr"
    ingest(mnist_path, out, scheduler="synchronous")
    return out


def _check(mnist_store, tmp_path, name, features, floor):
    r = train(mnist_store, tmp_path / "m", model=name, features=features, seed=42,
              scheduler="synchronous")
    acc = r.test["accuracy"]
    assert acc >= floor, f"{name} ({features}): test accuracy {acc:.4f} < {floor}"
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["test"]["accuracy"] == acc
    assert sum(map(sum, manifest["test"]["confusion_matrix"])) == 10_000


@pytest.mark.parametrize("name, features", list(CHEAP))
def test_cheap_catalogue_model_meets_its_accuracy(mnist_store, tmp_path, name, features):
    _check(mnist_store, tmp_path, name, features, CHEAP[(name, features)])


@pytest.mark.long
@pytest.mark.timeout(2400)
@pytest.mark.parametrize("name, features", list(LONG))
def test_catalogue_model_meets_its_accuracy(mnist_store, tmp_path, name, features):
    _check(mnist_store, tmp_path, name, features, LONG[(name, features)])
