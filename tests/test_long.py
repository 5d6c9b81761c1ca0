"""Long variants (``make test-long``): full-MNIST runs and many kill points."""

from __future__ import annotations

import numpy as np
import pytest

from digitbatch.ingestion import ingest
from digitbatch.layout import open_store
from digitbatch.scoring.api import score
from digitbatch.training import train

pytestmark = pytest.mark.long


@pytest.mark.mnist
def test_full_mnist_sgd_meets_its_target(tmp_path, mnist_path):
    ingest(mnist_path, tmp_path / "m.zarr")
    r = train(tmp_path / "m.zarr", tmp_path / "sgd", model="sgd")
    assert r.test["accuracy"] >= 0.915
    s = score(tmp_path / "m.zarr", model=tmp_path / "sgd", out=tmp_path / "p.zarr",
              scheduler="local")
    assert s.metrics["n_images"] == 70000


def test_resume_at_every_chunk_boundary(tmp_path, small_store):
    from digitbatch.modelio import load_model
    from digitbatch.scoring.chunks import score_store_chunk
    from digitbatch.scoring.output import OutputSpec, create_output
    from digitbatch.scoring.tasks import ChunkTask
    import zarr

    train(small_store, tmp_path / "m", seed=0)
    ref = score(small_store, model=tmp_path / "m", out=tmp_path / "ref.zarr",
                scheduler="synchronous")
    s = open_store(small_store)
    loaded = load_model(tmp_path / "m")
    for k in range(len(s.chunks) + 1):
        out = tmp_path / f"k{k}.zarr"
        out.mkdir()
        create_output(out, OutputSpec(s.n, s.chunk_size, 10, False, loaded.sha256, s.checksum))
        for i, (a, b) in enumerate(s.chunks[:k]):
            score_store_chunk(ChunkTask(i, a, b), store_path=str(small_store), out_path=str(out),
                        model=loaded.model, proba=False)
        r = score(small_store, model=tmp_path / "m", out=out, resume=True,
                  scheduler="synchronous")
        assert r.metrics["confusion_matrix"] == ref.metrics["confusion_matrix"]
        np.testing.assert_array_equal(zarr.open_group(str(out))["pred"][:],
                                      zarr.open_group(str(tmp_path / "ref.zarr"))["pred"][:])


@pytest.mark.mnist
@pytest.mark.timeout(1200)
def test_bench_score_runs_end_to_end_at_small_scale(tmp_path, mnist_path):
    """The scoring benchmark's code path (not its figures: no timed tests)."""
    from digitbatch.bench.score import run

    lines = list(run(mnist_dir=mnist_path, workdir=tmp_path, n=70_000, n_small=35_000,
                     n_naive=35_000, n_kernel=8_192))
    text = "\n".join(lines)
    for row in ("ceiling, blocked form", "digitbatch score (CLI process), LocalCluster, 70k",
                "cluster already running", "CLI process with --scheduler", "naive numpy",
                "sgd-kernel: digitbatch score", "sgd-patches: digitbatch score",
                "sgd-patches per chunk of", "features: filters",
                "end to end / ceiling"):
        assert row in text, row
