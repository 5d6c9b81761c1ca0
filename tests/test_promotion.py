"""Promotion into a models folder: the gate, the pointer switch, rollback, the history,
and a scoring run that keeps the model it resolved while a promotion happens."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from digitbatch.errors import ModelPointerError, PromotionError, PromotionRefusedError
from digitbatch.modelio import load_model
from digitbatch.pointer import POINTER_FILE, read_pointer, resolve
from digitbatch.promotion import LOCK_FILE, promote, read_history, rollback

from .conftest import make_store


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """A clean gate store (no model trained on it) and three models: ``good`` and
    ``twin`` (another seed: other weights, the same predictions on the gate) are
    right on every gate row, ``weak`` (60 rows, 30% wrong labels) on about 89%."""
    from digitbatch.training import train

    tmp = tmp_path_factory.mktemp("zoo")
    gate = make_store(tmp, 700, seed=50, n_test=0)
    good_store = make_store(tmp, 600, seed=1)
    out = {"gate": gate, "good_store": good_store,
           "good": Path(train(good_store, tmp / "good", seed=0).model_path),
           "twin": Path(train(good_store, tmp / "twin", seed=5).model_path),
           "weak": Path(train(make_store(tmp, 60, seed=3, noise=0.3), tmp / "weak",
                              seed=0).model_path)}
    return out


def _sha(model) -> str:
    return load_model(model).sha256


def test_first_promotion_then_a_better_candidate_then_rollback(zoo, tmp_path):
    models = tmp_path / "models"
    r = promote(zoo["weak"], models=models, gate=zoo["gate"])
    assert r.decision == "promoted" and r.record["verdict"] == "first"
    head = read_pointer(models / POINTER_FILE)
    assert head["sha256"] == _sha(zoo["weak"]) and head["previous"] == []
    # the live model is a checked copy inside the folder, not the training output
    assert r.current.parent == models and load_model(models / POINTER_FILE).sha256 == \
        _sha(zoo["weak"])

    r = promote(zoo["good"], models=models, gate=zoo["gate"])
    assert r.decision == "promoted" and r.record["verdict"] == "better"
    acc = r.record["accuracy"]
    assert acc["candidate"] == 1.0 and 0.8 < acc["champion"] < 0.95
    t = r.record["mcnemar"]
    assert t["c"] == 0 and t["b"] == round((acc["candidate"] - acc["champion"]) * 700)
    assert t["p"] < 1e-6
    assert load_model(models).sha256 == _sha(zoo["good"])  # DIR resolves as DIR/current
    assert read_pointer(models / POINTER_FILE)["previous"] == [
        {"model": head["model"], "sha256": head["sha256"]}]

    r = rollback(models=models)
    assert r.decision == "rolled back"
    assert load_model(models / POINTER_FILE).sha256 == _sha(zoo["weak"])
    with pytest.raises(PromotionError, match="first champion: there is no earlier one"):
        rollback(models=models)

    hist = read_history(models)
    assert [h["decision"] for h in hist] == ["promoted", "promoted", "rolled back"]
    h = hist[1]
    assert h["candidate"] == {"path": str(zoo["good"].resolve()), "name": "sgd",
                              "sha256": _sha(zoo["good"])}
    assert h["champion"]["sha256"] == _sha(zoo["weak"]) and h["current"]["sha256"] == \
        _sha(zoo["good"])
    assert {"time", "gate", "accuracy", "mcnemar", "tolerance", "alpha", "reason"} <= set(h)
    assert hist[2]["champion"]["sha256"] == _sha(zoo["good"])
    assert hist[2]["current"]["sha256"] == _sha(zoo["weak"])


def test_a_worse_candidate_is_refused_and_nothing_goes_live(zoo, tmp_path):
    models = tmp_path / "models"
    promote(zoo["good"], models=models, gate=zoo["gate"])
    before = (models / POINTER_FILE).read_bytes()
    with pytest.raises(PromotionRefusedError) as e:
        promote(zoo["weak"], models=models, gate=zoo["gate"])
    msg = str(e.value)
    weak_acc = e.value.record["accuracy"]["candidate"]
    assert f"candidate accuracy {weak_acc:.4f}, champion 1.0000" in msg
    assert "beyond the tolerance 0.0000" in msg and "stays live" in msg
    assert e.value.exit_code == 3
    assert (models / POINTER_FILE).read_bytes() == before
    assert [p.name for p in models.iterdir() if not p.name.startswith(".")
            and p.is_dir()] == [read_pointer(models / POINTER_FILE)["model"]]  # no copy made
    assert read_history(models)[-1]["decision"] == "refused"
    # a tolerance wide enough lets it through, recorded as what it is
    r = promote(zoo["weak"], models=models, gate=zoo["gate"], tolerance=0.2)
    assert r.record["verdict"] == "within-tolerance"


def test_a_tie_is_not_a_win_unless_a_tolerance_accepts_it(zoo, tmp_path):
    models = tmp_path / "models"
    promote(zoo["good"], models=models, gate=zoo["gate"])
    assert _sha(zoo["twin"]) != _sha(zoo["good"])  # another model, same predictions
    with pytest.raises(PromotionRefusedError, match=r"b=0 .* c=0 .*a tie is not a win") as e:
        promote(zoo["twin"], models=models, gate=zoo["gate"])
    assert e.value.record["verdict"] == "tie"
    assert load_model(models).sha256 == _sha(zoo["good"])
    r = promote(zoo["twin"], models=models, gate=zoo["gate"], tolerance=0.001)
    assert r.record["verdict"] == "tie" and load_model(models).sha256 == _sha(zoo["twin"])
    # the champion itself again: nothing to do, no gate run
    r = promote(zoo["twin"], models=models, gate=zoo["gate"])
    assert r.decision == "unchanged" and "gate" not in r.record


def test_no_champion_and_min_accuracy(zoo, tmp_path):
    models = tmp_path / "models"
    with pytest.raises(PromotionRefusedError, match=r"below --min-accuracy 0.9500.*nothing "
                                                    r"is live yet") as e:
        promote(zoo["weak"], models=models, gate=zoo["gate"], min_accuracy=0.95)
    assert e.value.exit_code == 3 and not (models / POINTER_FILE).exists()
    r = promote(zoo["good"], models=models, gate=zoo["gate"], min_accuracy=0.95)
    assert r.record["verdict"] == "first" and r.record["accuracy"]["champion"] is None


def test_a_gate_on_a_models_training_store_uses_its_test_split(zoo, tmp_path):
    models = tmp_path / "models"
    r = promote(zoo["good"], models=models, gate=zoo["good_store"])
    assert r.record["gate"]["rows"] == "test split" and r.record["gate"]["n"] == 120


def test_bad_options_and_folders(zoo, tmp_path):
    for kw, match in (({"tolerance": -0.1}, "--tolerance"), ({"tolerance": 1.0}, "--tolerance"),
                      ({"alpha": 0}, "--alpha"), ({"min_accuracy": 1.5}, "--min-accuracy")):
        with pytest.raises(PromotionError, match=match):
            promote(zoo["good"], models=tmp_path / "m", gate=zoo["gate"], **kw)
    (tmp_path / "file").write_text("x")
    with pytest.raises(PromotionError, match="is a file"):
        promote(zoo["good"], models=tmp_path / "file", gate=zoo["gate"])
    with pytest.raises(PromotionError, match="is a model directory, not a models folder"):
        promote(zoo["good"], models=zoo["weak"], gate=zoo["gate"])
    with pytest.raises(PromotionError, match="candidate .*nope.*does not exist"):
        promote(tmp_path / "nope", models=tmp_path / "m", gate=zoo["gate"])
    with pytest.raises(PromotionError, match="has no current model"):
        rollback(models=tmp_path / "empty")


def test_one_promotion_at_a_time(zoo, tmp_path):
    fcntl = pytest.importorskip("fcntl")
    models = tmp_path / "models"
    models.mkdir()
    with open(models / LOCK_FILE, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        with pytest.raises(PromotionError, match="another promotion or rollback is running"):
            promote(zoo["good"], models=models, gate=zoo["gate"])
    promote(zoo["good"], models=models, gate=zoo["gate"])  # released: goes ahead


# --- the pointer -----------------------------------------------------------------------


def test_a_models_folder_copied_elsewhere_points_at_its_own_copy(zoo, tmp_path):
    models = tmp_path / "models"
    promote(zoo["good"], models=models, gate=zoo["gate"])
    copy = tmp_path / "elsewhere" / "models"
    shutil.copytree(models, copy)
    shutil.rmtree(models)
    loaded = load_model(copy / POINTER_FILE)
    assert loaded.path.parent == copy and loaded.via == copy / POINTER_FILE


def test_damaged_or_hostile_pointers_are_named_errors(zoo, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    with pytest.raises(ModelPointerError, match="no model was promoted into .*models yet"):
        load_model(models / POINTER_FILE)
    promote(zoo["good"], models=models, gate=zoo["gate"])
    ptr = models / POINTER_FILE
    doc = json.loads(ptr.read_text())
    for model in ("../../etc", "/abs", ".hidden", ""):
        ptr.write_text(json.dumps({**doc, "model": model}))
        with pytest.raises(ModelPointerError, match="not a folder name inside"):
            load_model(models)
    ptr.write_text(json.dumps({**doc, "model": "gone"}))
    with pytest.raises(ModelPointerError, match="'gone', which is not a folder"):
        load_model(ptr)
    ptr.write_text(json.dumps({**doc, "sha256": "0" * 64}))
    with pytest.raises(ModelPointerError, match="the model in the models folder was replaced"):
        load_model(ptr)
    ptr.write_text('{"kind": "digitbatch-model-pointer", "format_version": 1, "mod')
    with pytest.raises(ModelPointerError, match="not JSON"):
        load_model(ptr)


def test_a_symlink_resolves_to_the_model_it_leads_to_now(zoo, tmp_path):
    link = tmp_path / "current"
    try:
        os.symlink(zoo["good"], link)
    except OSError:
        pytest.skip("no symlinks here")
    r = resolve(link)
    assert r.path == zoo["good"].resolve() and r.via == link
    assert load_model(link).path == zoo["good"].resolve()
    assert resolve(zoo["good"]).via is None  # a model directory is itself


# --- a scoring run started before a promotion keeps the model it resolved ---------------


def test_a_scoring_run_keeps_the_model_it_resolved(zoo, tmp_path):
    from digitbatch.scoring.api import score
    from digitbatch.scoring.output import committed, open_predictions

    models = tmp_path / "models"
    promote(zoo["weak"], models=models, gate=zoo["gate"])
    old, new = _sha(zoo["weak"]), _sha(zoo["good"])
    out = tmp_path / "p.zarr"
    seen = []

    def progress(n, total=None):
        # on progress, never on a clock: once the first chunk's commit record is
        # there, the better model is promoted under the running job
        if total is None and not seen and committed(out):
            seen.append(len(committed(out)))
            promote(zoo["good"], models=models, gate=zoo["gate"])

    r = score(zoo["gate"], model=models / POINTER_FILE, out=out, scheduler="synchronous",
              progress=progress)
    assert seen and seen[0] < 3  # promoted while chunks were still to score (700 rows, 3 chunks)
    assert load_model(models / POINTER_FILE).sha256 == new  # current has moved on ...
    m = r.metrics  # ... the run finished with the model it resolved at its start
    assert m["model"]["sha256"] == old and m["model"]["resolved_from"] == str(models / POINTER_FILE)
    assert Path(m["model"]["path"]) == models / read_history(models)[0]["current"]["model"]
    assert m["accuracy"] == pytest.approx(read_history(models)[1]["accuracy"]["champion"])
    # every row is the old model's prediction, the chunks scored after the switch too
    from digitbatch.layout import open_store

    got = np.concatenate([c.pred for c in open_predictions(out).chunks()])
    images = open_store(zoo["gate"]).column("images")
    want = load_model(zoo["weak"]).model.score_chunk(images, proba=False)[0]
    assert np.array_equal(got, want)
    assert not np.array_equal(got, load_model(zoo["good"]).model.score_chunk(images, proba=False)[0])


class _Stop(Exception):
    """Stands for a run that died after its first chunk commit."""


def test_a_resumed_run_keeps_the_model_its_output_was_started_with(zoo, tmp_path):
    from digitbatch.scoring.api import score
    from digitbatch.scoring.output import committed

    models = tmp_path / "models"
    promote(zoo["weak"], models=models, gate=zoo["gate"])
    out = tmp_path / "p.zarr"

    def die(n, total=None):
        if total is None and committed(out):
            raise _Stop

    with pytest.raises(_Stop):
        score(zoo["gate"], model=models, out=out, scheduler="synchronous", progress=die)
    assert 0 < len(committed(out)) < 3
    promote(zoo["good"], models=models, gate=zoo["gate"])  # between the failure and the rerun
    r = score(zoo["gate"], model=models, out=out, scheduler="synchronous", resume=True)
    assert r.metrics["resumed"] and r.metrics["model"]["sha256"] == _sha(zoo["weak"])
    assert r.metrics["model"]["resolved_from"] == str(models)
    assert r.metrics["accuracy"] < 0.95  # the weak model's figure, on every chunk
    # a fresh output scores with what current names now
    r = score(zoo["gate"], model=models, out=tmp_path / "q.zarr", scheduler="synchronous")
    assert r.metrics["model"]["sha256"] == _sha(zoo["good"]) and r.metrics["accuracy"] == 1.0


def test_a_candidate_at_a_url_is_copied_in(zoo, tmp_path):
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    for f in ("model.npz", "manifest.json"):
        fs.put_file(str(zoo["good"] / f), f"/promote-test/model/{f}")
    try:
        r = promote("memory://promote-test/model", models=tmp_path / "models", gate=zoo["gate"])
    finally:
        fs.rm("/promote-test", recursive=True)
    assert r.record["candidate"]["path"] == "memory://promote-test/model"
    assert load_model(tmp_path / "models").sha256 == _sha(zoo["good"])


def test_a_gate_without_labels_or_of_training_rows_only_is_refused(zoo, tmp_path):
    from digitbatch.layout import StoreWriter
    from digitbatch.training import train

    from .conftest import synthetic_digits

    x, _ = synthetic_digits(300, seed=9)
    with StoreWriter(tmp_path / "unlabelled.zarr", source={"kind": "test"}, chunk_size=256) as w:
        w.append(x, np.full(300, -1, np.int8), [f"k{i}" for i in range(300)])
        w.finish()
    with pytest.raises(PromotionError, match=r"has no labelled rows \(all\): the gate needs labels"):
        promote(zoo["good"], models=tmp_path / "m", gate=tmp_path / "unlabelled.zarr")
    # a model trained on every row of a store: that store cannot be its gate
    with StoreWriter(tmp_path / "all.zarr", source={"kind": "test"}, chunk_size=256) as w:
        w.append(x, synthetic_digits(300, seed=9)[1], [f"k{i}" for i in range(300)])
        w.finish()
    every = Path(train(tmp_path / "all.zarr", tmp_path / "every", seed=0).model_path)
    with pytest.raises(PromotionError, match=r"is the training store of .*every.*a gate on "
                                             r"training rows flatters it"):
        promote(every, models=tmp_path / "m", gate=tmp_path / "all.zarr")
    assert not (tmp_path / "m" / POINTER_FILE).exists()


def test_a_torn_history_line_is_named(zoo, tmp_path):
    models = tmp_path / "models"
    promote(zoo["good"], models=models, gate=zoo["gate"])
    with open(models / "history.jsonl", "a") as fh:
        fh.write('{"time": "2026-12-06T00:00:00+00:00", "act')
    with pytest.raises(PromotionError, match=r"history.jsonl, line 2, is not JSON"):
        read_history(models)
