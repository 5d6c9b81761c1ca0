"""The promote job step: its spec section, its paths, and a train -> promote run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from digitbatch import jobs
from digitbatch.errors import JobFailedError, JobSpecError, PromotionRefusedError
from digitbatch.jobspec import check_outputs, job_paths, load_job
from digitbatch.modelio import load_model

from .conftest import make_store

REPO = Path(__file__).resolve().parents[1]


def _load(tmp_path, text, **kw):
    p = tmp_path / "job.toml"
    p.write_text(text)
    return load_job(p, cwd=tmp_path, **kw)


def test_the_shipped_specs_promote_and_score_current():
    retrain = load_job(REPO / "jobs" / "retrain.toml", check_files=False, cwd=REPO)
    assert retrain.steps[-1] == "promote"
    p = retrain.params
    assert p["promote"]["candidate"] == p["train"]["out"]
    assert p["promote"]["gate"] == p["ingest"]["out"] and p["promote"]["tolerance"] == 0.002
    nightly = load_job(REPO / "jobs" / "nightly-score.toml", check_files=False, cwd=REPO)
    assert nightly.params["score"]["model"] == Path("/data/models/current")
    assert "promote" not in nightly.steps


def test_promote_section_is_checked(tmp_path):
    with pytest.raises(JobSpecError, match=r"\[promote\] needs models"):
        _load(tmp_path, '[train]\nstore = "s"\n[promote]\ngate = "s"\n')
    with pytest.raises(JobSpecError, match=r"promote.tolerance must be a number, got '0.1'.*"
                                           r"without quotes"):
        _load(tmp_path, '[promote]\ntolerance = "0.1"\n', check_files=False)
    with pytest.raises(JobSpecError, match=r"promote.alpha must be a number from 1e-06 to 0.5, "
                                           r"got 0.9"):
        _load(tmp_path, '[promote]\nalpha = 0.9\n', check_files=False)
    (tmp_path / "cand").mkdir()
    with pytest.raises(JobSpecError, match=r"promote.gate = .*nope.* does not exist"):
        _load(tmp_path, '[promote]\ncandidate = "cand"\nmodels = "m"\ngate = "nope"\n')
    # a candidate inside the models folder it is promoted into is refused too
    with pytest.raises(JobSpecError, match=r"promote.models .* contains promote.candidate"):
        check_outputs(_load(tmp_path, '[promote]\ncandidate = "m/x"\nmodels = "m"\ngate = "g"\n',
                            check_files=False))
    # the models folder is an output: not the model the train step writes
    with pytest.raises(JobSpecError, match=r"train.out and promote.models are the same path"):
        check_outputs(_load(tmp_path, '[train]\nstore = "s"\nout = "m"\n[promote]\n'
                                      'models = "m"\ngate = "s"\n', check_files=False))


def test_promote_paths_are_known_to_the_collision_checks(tmp_path):
    job = _load(tmp_path, '[train]\nstore = "s"\n[promote]\nmodels = "models"\ngate = "g"\n',
                check_files=False)
    outputs, inputs = job_paths(job)
    assert ("promote.models", tmp_path / "models") in [(k, v) for _, k, v in outputs]
    assert {("promote.candidate", tmp_path / "model"), ("promote.gate", tmp_path / "g")} <= \
        {(k, v) for _, k, v in inputs}


def test_a_job_trains_then_promotes_and_a_worse_one_fails_its_step(tmp_path):
    gate = make_store(tmp_path, 700, seed=50, n_test=0)
    good, weak = make_store(tmp_path, 600, seed=1), make_store(tmp_path, 60, seed=3, noise=0.3)
    spec = tmp_path / "retrain.toml"
    spec.write_text(f'[job]\nworkdir = "w"\n[cluster]\nscheduler = "synchronous"\n'
                    f'[train]\nstore = "{good}"\nout = "w/model"\noverwrite = true\n'
                    f'[promote]\nmodels = "w/models"\ngate = "{gate}"\n')
    s = jobs.run_job(load_job(spec, cwd=tmp_path))
    step = s["steps"][-1]
    assert step["name"] == "promote" and step["outcome"] == "succeeded"
    assert step["result"]["decision"] == "promoted" and step["result"]["verdict"] == "first"
    assert step["metrics"] == str(tmp_path / "w/models/history.jsonl")
    live = load_model(tmp_path / "w/models").sha256
    from digitbatch.summaries import step_lines

    assert step_lines("promote", step["result"])[0].startswith("promoted (first): no champion yet")

    job = load_job(spec, [f"train.store={weak}"], cwd=tmp_path)
    with pytest.raises(JobFailedError, match="promote failed") as e:
        jobs.run_job(job)
    assert isinstance(e.value.__cause__, PromotionRefusedError)
    assert e.value.exit_code == 3  # digitbatch run exits 3, as digitbatch promote does
    s = json.loads((tmp_path / "w/retrain.run.json").read_text())
    assert s["error"]["type"] == "PromotionRefusedError" and "champion 1.0000" in s["error"]["message"]
    assert load_model(tmp_path / "w/models").sha256 == live
