"""score(): a store or archive scored end to end, against plain scikit-learn; resume, refusals, codecs."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import zarr
from sklearn.metrics import confusion_matrix

from digitbatch.errors import ModelError, ScoreError, StoreError
from digitbatch.layout import StoreWriter, UNKNOWN_LABEL, open_store
from digitbatch.modelio import load_model
from digitbatch.scoring.api import score
from digitbatch.scoring.output import PRED_FILL
from digitbatch.training import train

from .conftest import synthetic_digits


def _score_on(scheduler, *args, **kwargs):
    """score() on "synchronous", "local" (a LocalCluster of worker threads,
    what a store gets) or "processes" (a LocalCluster of worker processes)."""
    if scheduler != "processes":
        return score(*args, scheduler=scheduler, **kwargs)
    from digitbatch import cluster

    with cluster.client("local", n_workers=2) as c:
        return score(*args, scheduler=c.scheduler.address, **kwargs)


@pytest.mark.parametrize("scheduler", ["synchronous", "local", "processes", "local-batched"])
def test_score_equals_sklearn(tmp_path, small_store, trained, model_dir, scheduler, monkeypatch):
    out = tmp_path / "pred.zarr"
    if scheduler == "local-batched":  # two chunks per Dask task: (0, 1), (2, 3)
        from digitbatch.scoring import tasks as score_tasks

        monkeypatch.setattr(score_tasks, "MIN_BATCHES_PER_WORKER", 1)
        scheduler = "local"
    r = _score_on(scheduler, small_store, model=model_dir, out=out)
    s = open_store(small_store)
    x, y, keys = s.read()
    expected = trained.pipeline.predict(x.reshape(len(x), -1))
    g = zarr.open_group(str(out), mode="r")
    np.testing.assert_array_equal(g["pred"][:], expected)
    assert list(g["keys"][:]) == list(keys)
    assert r.metrics["confusion_matrix"] == confusion_matrix(y, expected, labels=range(10)).tolist()
    assert r.metrics["n_images"] == 1000
    assert r.accuracy == pytest.approx(float((expected == y).mean()))
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["accuracy"] == r.accuracy


def test_score_unlabeled_rows(tmp_path, model_dir):
    x, y = synthetic_digits(300, seed=5)
    y[::3] = UNKNOWN_LABEL
    with StoreWriter(tmp_path / "u.zarr", source={}, chunk_size=256) as w:
        w.append(x, y, [str(i) for i in range(300)])
        w.finish()
    r = score(tmp_path / "u.zarr", model=model_dir, out=tmp_path / "p.zarr",
              scheduler="synchronous")
    assert r.metrics["n_unlabeled"] == 100
    assert r.metrics["n_labeled"] == 200
    assert sum(r.metrics["prediction_histogram"]) == 300
    pred = zarr.open_group(str(tmp_path / "p.zarr"))["pred"][:]
    assert (pred != PRED_FILL).all()


def test_score_refuses_existing_output(tmp_path, small_store, model_dir):
    (tmp_path / "p.zarr").mkdir()
    with pytest.raises(ScoreError, match="already exists"):
        score(small_store, model=model_dir, out=tmp_path / "p.zarr", scheduler="synchronous")


def test_tampered_model_refused(tmp_path, small_store, model_dir):
    data = bytearray((model_dir / "model.npz").read_bytes())
    data[-100] ^= 0xFF
    (model_dir / "model.npz").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="SHA-256"):
        load_model(model_dir)


def test_version_mismatch_refused(model_dir):
    m = json.loads((model_dir / "manifest.json").read_text())
    m["versions"]["scikit-learn"] = "0.20.0"
    (model_dir / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ModelError, match="scikit-learn 0.20.0"):
        load_model(model_dir)


class _Payload:
    def __reduce__(self):
        import os
        return (os.system, ("touch SENTINEL_SHOULD_NOT_EXIST",))


def test_pickle_payload_never_runs(tmp_path, model_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # a pickle in place of the arrays, with a matching hash in the manifest
    blob = pickle.dumps(_Payload())
    (model_dir / "model.npz").write_bytes(blob)
    m = json.loads((model_dir / "manifest.json").read_text())
    import hashlib
    m["model_sha256"] = hashlib.sha256(blob).hexdigest()
    (model_dir / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ModelError):
        load_model(model_dir)
    # and a bare pickle file given as the model
    (tmp_path / "model.pkl").write_bytes(blob)
    with pytest.raises(ModelError, match="never loaded"):
        load_model(tmp_path / "model.pkl")
    assert not (tmp_path / "SENTINEL_SHOULD_NOT_EXIST").exists()


def test_detector_scoring_confusion_is_binary(tmp_path, small_store):
    train(small_store, tmp_path / "d", model="detect-2")
    r = score(small_store, model=tmp_path / "d", out=tmp_path / "p.zarr", scheduler="synchronous")
    cm = np.array(r.metrics["confusion_matrix"])
    assert cm.shape == (2, 2) and cm.sum() == 1000
    labels = open_store(small_store).labels[:]
    assert cm[1].sum() == int((labels == 2).sum())


def _arrays(out):
    g = zarr.open_group(str(out), mode="r")
    return {name: g[name][:] for name in ("pred", "margin", "proba", "keys") if name in g}


def _chunk_files(out):
    return {p.relative_to(out).as_posix(): p.read_bytes()
            for p in sorted(out.rglob("*")) if p.is_file() and "/c/" in p.as_posix()}


@pytest.mark.parametrize("resume_on", ["synchronous", "local-batched"])
@pytest.mark.parametrize("done_before", [[], [0], [1, 3], [0, 1, 2]])
def test_resume_after_kill_is_byte_identical(tmp_path, small_store, model_dir, done_before,
                                             resume_on, monkeypatch):
    from digitbatch.scoring import tasks as score_tasks
    from digitbatch.scoring.chunks import score_store_chunk
    from digitbatch.scoring.output import OutputSpec, commit_path, create_output
    from digitbatch.scoring.tasks import ChunkTask

    if resume_on == "local-batched":  # the chunks left run two to a Dask task
        monkeypatch.setattr(score_tasks, "MIN_BATCHES_PER_WORKER", 1)

    ref = score(small_store, model=model_dir, out=tmp_path / "ref.zarr", proba=True,
                scheduler="synchronous")
    # a run killed after committing `done_before`, with one chunk half written
    s = open_store(small_store)
    loaded = load_model(model_dir)
    out = tmp_path / "killed.zarr"
    out.mkdir()
    create_output(out, OutputSpec(s.n, s.chunk_size, 10, True, loaded.sha256, s.checksum))
    for i in done_before:
        a, b = s.chunks[i]
        score_store_chunk(ChunkTask(i, a, b), store_path=str(small_store), out_path=str(out),
                    model=loaded.model, proba=True)
    half = [i for i in range(len(s.chunks)) if i not in done_before][0]
    a, b = s.chunks[half]
    zarr.open_group(str(out), mode="r+")["pred"][a:a + 10] = 7  # written, never committed
    assert not commit_path(out, half).exists()
    with pytest.raises(ScoreError, match="--resume"):
        score(small_store, model=model_dir, out=out, proba=True, scheduler="synchronous")
    r = score(small_store, model=model_dir, out=out, proba=True, resume=True,
              scheduler="synchronous" if resume_on == "synchronous" else "local")
    assert r.metrics["confusion_matrix"] == ref.metrics["confusion_matrix"]
    assert r.metrics["n_images"] == ref.metrics["n_images"] == 1000
    assert r.metrics["n_scored_this_run"] == 1000 - sum(s.chunks[i][1] - s.chunks[i][0]
                                                        for i in done_before)
    assert _chunk_files(out) == _chunk_files(tmp_path / "ref.zarr")
    got, want = _arrays(out), _arrays(tmp_path / "ref.zarr")
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    assert not list(out.rglob("*.tmp-*")) and not (out / ".lock").exists()


def test_resume_of_a_creation_killed_before_its_settings(tmp_path, small_store, model_dir):
    """Killed after some arrays were made but before the spec attribute: --resume starts it."""
    ref = score(small_store, model=model_dir, out=tmp_path / "ref.zarr", scheduler="synchronous")
    out = tmp_path / "p.zarr"
    g = zarr.open_group(str(out), mode="w")
    g.create_array("pred", shape=(3,), chunks=(2,), dtype="int8")
    with pytest.raises(ScoreError, match="--resume"):
        score(small_store, model=model_dir, out=out, scheduler="synchronous")
    r = score(small_store, model=model_dir, out=out, resume=True, scheduler="synchronous")
    assert r.metrics["confusion_matrix"] == ref.metrics["confusion_matrix"]
    assert _chunk_files(out) == _chunk_files(tmp_path / "ref.zarr")


def test_resume_refuses_other_model(tmp_path, small_store, model_dir):
    score(small_store, model=model_dir, out=tmp_path / "p.zarr", scheduler="synchronous")
    train(small_store, tmp_path / "other", seed=99)
    with pytest.raises(ScoreError, match="model_sha256"):
        score(small_store, model=tmp_path / "other", out=tmp_path / "p.zarr", resume=True,
              scheduler="synchronous")


def test_incomplete_output_is_refused_when_read(tmp_path, small_store, model_dir):
    from digitbatch.errors import IncompleteOutputError
    from digitbatch.scoring.output import commit_path, open_predictions

    out = tmp_path / "p.zarr"
    score(small_store, model=model_dir, out=out, scheduler="synchronous")
    assert open_predictions(out).metrics["n_images"] == 1000
    commit_path(out, 2).unlink()
    with pytest.raises(IncompleteOutputError, match="missing committed chunks \\[2\\]"):
        open_predictions(out)
    (out / "_SUCCESS").unlink()
    with pytest.raises(IncompleteOutputError, match="_SUCCESS"):
        open_predictions(out)


def test_proba_and_margin(tmp_path, small_store, trained, model_dir):
    out = tmp_path / "p.zarr"
    score(small_store, model=model_dir, out=out, proba=True, scheduler="synchronous")
    g = zarr.open_group(str(out), mode="r")
    x = open_store(small_store).images[:].reshape(1000, -1)
    want = trained.pipeline.predict_proba(x)
    np.testing.assert_allclose(g["proba"][:], want, atol=2e-5)
    top2 = np.sort(want, axis=1)[:, -2:]
    np.testing.assert_allclose(g["margin"][:], top2[:, 1] - top2[:, 0], atol=2e-5)


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_damaged_store_chunk_is_an_error(tmp_path, small_store, model_dir, damage):
    import shutil
    store = tmp_path / "copy.zarr"
    shutil.copytree(small_store, store)
    chunk = store / "images" / "c" / "1" / "0" / "0"
    if damage == "missing":
        chunk.unlink()
    else:
        chunk.write_bytes(b"\x02\x01garbage" * 10)
    with pytest.raises(StoreError, match=f"chunk 1 of .* is {damage}"):
        score(store, model=model_dir, out=tmp_path / "p.zarr", scheduler="synchronous")
    assert not (tmp_path / "p.zarr" / "_SUCCESS").exists()


@pytest.mark.parametrize("scheduler", ["synchronous", "local", "processes"])
def test_raw_codec_store_scores_byte_identically(tmp_path, idx_dir, small_store, model_dir,
                                                 scheduler):
    """A store written with codec "none" (chunks read in place) gives the same
    output bytes as the LZ4 store, on every scheduler."""
    from digitbatch.ingestion import ingest

    raw = tmp_path / "raw.zarr"
    ingest(idx_dir, raw, chunk_size=256, codec="none")
    chunk = raw / "images" / "c" / "0" / "0" / "0"
    assert chunk.stat().st_size == 16 + 256 * 784  # Blosc header + the raw bytes
    assert open_store(raw).checksum == open_store(small_store).checksum
    a = score(small_store, model=model_dir, out=tmp_path / "a.zarr", scheduler="synchronous")
    b = _score_on(scheduler, raw, model=model_dir, out=tmp_path / "b.zarr")
    ga, gb = (zarr.open_group(str(tmp_path / n), mode="r") for n in ("a.zarr", "b.zarr"))
    for name in ("pred", "margin", "keys"):
        np.testing.assert_array_equal(ga[name][:], gb[name][:])
    assert a.metrics["confusion_matrix"] == b.metrics["confusion_matrix"]


def test_raw_codec_truncated_chunk_is_a_store_error(tmp_path, idx_dir, model_dir):
    from digitbatch.ingestion import ingest

    raw = tmp_path / "raw.zarr"
    ingest(idx_dir, raw, chunk_size=256, codec="none")
    chunk = raw / "images" / "c" / "1" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-784])
    with pytest.raises(StoreError, match="chunk 1 .* is corrupt"):
        score(raw, model=model_dir, out=tmp_path / "p.zarr", scheduler="synchronous")


def test_run_figures_say_what_they_count(tmp_path, small_store, model_dir):
    """A resumed run counts the images it scored itself, and its rate from them; a
    finished output resumed again says so instead of replaying the old run as new."""
    from click.testing import CliRunner

    from digitbatch.cli import main
    from digitbatch.layout import open_store
    from digitbatch.scoring.chunks import score_store_chunk
    from digitbatch.scoring.output import OutputSpec, create_output
    from digitbatch.scoring.tasks import ChunkTask

    s, loaded = open_store(small_store), load_model(model_dir)
    out = tmp_path / "p.zarr"
    out.mkdir()
    create_output(out, OutputSpec(s.n, s.chunk_size, 10, False, loaded.sha256, s.checksum))
    a, b = s.chunks[0]
    score_store_chunk(ChunkTask(0, a, b), store_path=str(small_store), out_path=str(out),
                      model=loaded.model, proba=False)
    args = ["score", str(small_store), "--model", str(model_dir), "--out", str(out),
            "--resume", "--scheduler", "synchronous"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_scored_this_run"] == 1000 - 256 and m["resumed"] is True
    # the rate is of the 744 images this run scored (seconds are rounded to 1 ms)
    assert abs(m["images_per_second"] * m["seconds"] - 744) <= m["images_per_second"] * 5e-4 + 1
    assert "scored 744 of 1000 images this run (resumed" in r.output
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0 and "already complete: nothing was scored now" in r.output
    assert "images/s" not in r.output  # no rate for a run that scored nothing
