"""Scoring an archive directly equals ingest-then-score, with rejects and resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from digitbatch.ingestion import ingest
from digitbatch.scoring.output import commit_path, open_predictions
from digitbatch.scoring.api import score

from .test_ingest import digit_members, make_tar, make_zip, png_bytes


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from .conftest import trained_model

    return trained_model(tmp_path_factory.mktemp("m"), n=900, n_train=700, seed=9)


def _container(tmp_path, kind):
    members, x, _ = digit_members(600, seed=3)
    members["bad/broken.png"] = png_bytes(x[0])[:30]
    members["../evil.png"] = png_bytes(x[1])
    members["notes.txt"] = b"not an image"
    if kind == "tar.gz":
        return make_tar(tmp_path / "a.tar.gz", members)
    if kind == "tar":
        return make_tar(tmp_path / "a.tar", members, mode="w")
    if kind == "zip":
        return make_zip(tmp_path / "a.zip", members)
    root = tmp_path / "dir"
    for name, data in members.items():
        if name.startswith(".."):
            continue
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def _outputs(out):
    g = zarr.open_group(str(out), mode="r")
    return {n: g[n][:] for n in ("pred", "margin", "proba", "keys") if n in g}


@pytest.mark.parametrize("kind", ["tar.gz", "tar", "zip", "dir"])
def test_archive_equals_ingest_then_score(tmp_path, model, kind):
    src = _container(tmp_path, kind)
    ingest(src, tmp_path / "in.zarr", chunk_size=256, max_rejects=10, scheduler="synchronous")
    a = score(tmp_path / "in.zarr", model=model, out=tmp_path / "a.zarr", proba=True,
              scheduler="synchronous")
    b = score(src, model=model, out=tmp_path / "b.zarr", proba=True, chunk_size=256,
              scheduler="synchronous")
    for name, want in _outputs(tmp_path / "a.zarr").items():
        got = _outputs(tmp_path / "b.zarr")[name]
        if name == "keys":
            assert list(got) == list(want)
        else:
            np.testing.assert_array_equal(got, want)
    assert b.metrics["confusion_matrix"] == a.metrics["confusion_matrix"]
    assert b.metrics["n_images"] == a.metrics["n_images"] == 600
    assert b.metrics["n_rejected"] == a.metrics["n_rejected"]
    assert {k for k, _ in b.metrics["rejects"]} >= {"bad/broken.png", "notes.txt"}
    assert not (tmp_path / "b.zarr" / "_staging").exists()
    assert open_predictions(tmp_path / "b.zarr").metrics["n_images"] == 600


def test_archive_on_local_cluster_with_labels_csv(tmp_path, model):
    src = _container(tmp_path, "zip")
    members, _, _ = digit_members(600, seed=3)
    first, second = list(members)[:2]
    csv = tmp_path / "l.csv"
    csv.write_text(f"key,label\n{first},7\n{second},12\n")
    r = score(src, model=model, out=tmp_path / "p.zarr", labels=csv, chunk_size=256,
              scheduler="local")
    reasons = {k: v.split(":")[0] for k, v in r.metrics["rejects"]}
    assert reasons[second] == "bad-label"
    assert r.metrics["n_images"] == 599 and r.metrics["n_rejected"] == 4
    keys = list(zarr.open_group(str(tmp_path / "p.zarr"))["keys"][:])
    assert first in keys and second not in keys


@pytest.mark.parametrize("kill_after", [0, 1, 2])
def test_archive_resume_is_identical(tmp_path, model, kill_after):
    import contextlib

    from digitbatch.modelio import load_model
    from digitbatch.scoring.output import OutputSpec, create_output
    from digitbatch.scoring.plan import make_plan

    src = _container(tmp_path, "tar")
    score(src, model=model, out=tmp_path / "ref.zarr", chunk_size=256, scheduler="synchronous")
    loaded = load_model(model)
    out = tmp_path / "k.zarr"
    plan = make_plan(src, loaded.model, out_path=str(out), proba=False, labels=None,
                     chunk_size=256, limit=1 << 24, stack=contextlib.ExitStack())
    out.mkdir()
    create_output(out, OutputSpec(plan.n, 256, 10, False, loaded.sha256, plan.checksum),
                  arrays=False)
    plan.prepare(out)
    for t in plan.tasks(set())[:kill_after]:
        plan.work.fn(plan.work.fill(t), model=loaded.model, labels=None, **plan.work.kwargs)
    r = score(src, model=model, out=out, chunk_size=256, resume=True, scheduler="synchronous")
    ref = json.loads((tmp_path / "ref.zarr" / "_SUCCESS").read_text())
    assert r.metrics["confusion_matrix"] == ref["confusion_matrix"]
    for name, want in _outputs(tmp_path / "ref.zarr").items():
        got = _outputs(out)[name]
        assert list(got) == list(want) if name == "keys" else np.array_equal(got, want,
                                                                                equal_nan=True)


def test_archive_rejects_are_counted_apart_from_the_images_scored(tmp_path, model):
    """n_scored_this_run and the rate count images, never rejected members, and the
    summary line names the rejects."""
    from digitbatch.summaries import score_lines

    src = _container(tmp_path, "tar")
    r = score(src, model=model, out=tmp_path / "p.zarr", chunk_size=256, scheduler="synchronous")
    m = r.metrics
    assert m["n_rejected"] > 0
    assert m["n_scored_this_run"] == m["n_images"]  # rejected members are not images
    assert f"({m['n_rejected']} rejected)" in score_lines(m)[-1]


def test_archive_chunk_scores_its_images_a_block_at_a_time(tmp_path, model, monkeypatch):
    """A slot chunk's images go to the model SCORE_ROWS at a time (a worker's memory
    does not grow with the slot), with the outputs of one call for the whole chunk."""
    from digitbatch.scoring import chunks

    src = _container(tmp_path, "tar")
    score(src, model=model, out=tmp_path / "whole.zarr", proba=True, chunk_size=256,
          scheduler="synchronous")
    seen = []
    real = chunks.deterministic_scores

    def spy(m, images, **kw):
        seen.append(images.shape[0])
        return real(m, images, **kw)

    monkeypatch.setattr(chunks, "SCORE_ROWS", 7)
    monkeypatch.setattr(chunks, "deterministic_scores", spy)
    r = score(src, model=model, out=tmp_path / "blocks.zarr", proba=True, chunk_size=256,
              scheduler="synchronous")
    assert max(seen) == 7 and sum(seen) == 600 and len(seen) > 600 // 7
    whole, blocks = _outputs(tmp_path / "whole.zarr"), _outputs(tmp_path / "blocks.zarr")
    for name in ("pred", "margin", "proba"):  # (a linear model: row by row, the same bytes)
        np.testing.assert_array_equal(blocks[name], whole[name])
    ref = json.loads((tmp_path / "whole.zarr" / "_SUCCESS").read_text())
    for k in ("confusion_matrix", "calibration", "accuracy"):
        assert r.metrics[k] == ref[k]
