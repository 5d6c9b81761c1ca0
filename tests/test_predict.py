"""digitbatch predict: a few image files, normalised as ingest does."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from digitbatch.cli import main
from digitbatch.errors import SourceNotFoundError
from digitbatch.layout import open_store
from digitbatch.predict import predict_files
from digitbatch.training import train

from .test_ingest import png_bytes


@pytest.fixture
def model_and_files(tmp_path, small_store):
    r = train(small_store, tmp_path / "m", seed=0)
    s = open_store(small_store)
    files = []
    for i in (700, 701, 702):
        f = tmp_path / f"d{i}.png"
        f.write_bytes(png_bytes(s.images[i], "RGBA" if i % 2 else "L"))
        files.append(f)
    expected = r.pipeline.predict(s.images[700:703].reshape(3, -1))
    return tmp_path / "m", files, expected


def test_predict_files_equal_pipeline(model_and_files, tmp_path):
    model, files, expected = model_and_files
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG broken")
    got = predict_files([*files, bad, tmp_path / "missing.png"], model=model)
    assert [g.digit for g in got[:3]] == expected.tolist()
    assert all(0 < g.probability <= 1 for g in got[:3])
    assert got[3].error.startswith("decode-error") and got[3].digit is None
    assert got[4].error.startswith("not-found")


def test_predict_cli(model_and_files):
    model, files, expected = model_and_files
    r = CliRunner().invoke(main, ["predict", *map(str, files), "--model", str(model), "--json"])
    assert r.exit_code == 0, r.output
    assert [d["digit"] for d in json.loads(r.output)] == expected.tolist()
    r = CliRunner().invoke(main, ["predict", str(files[0]), "--model", str(model)])
    assert r.exit_code == 0 and f": {expected[0]} (probability" in r.output


def test_predict_no_files(model_and_files):
    with pytest.raises(SourceNotFoundError):
        predict_files([], model=model_and_files[0])


def test_predict_does_not_import_zarr_or_dask():
    """`digitbatch predict` is for a person holding a few files: it starts without
    importing Zarr (a third of a second) or Dask."""
    import subprocess
    import sys

    code = ("import sys, digitbatch.predict; "
            "print(sorted(m for m in ('zarr', 'dask', 'distributed') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
