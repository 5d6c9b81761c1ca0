"""Job specs: checked before anything runs, run step by step, summarised."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from digitbatch import cluster, jobs
from digitbatch.cli import main
from digitbatch.errors import JobFailedError, JobSpecError
from digitbatch.training import train

REPO = Path(__file__).resolve().parents[1]


def _spec(tmp_path: Path, text: str, name: str = "job.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.fixture
def model_dir(small_store, tmp_path):
    out = tmp_path / "model"
    train(small_store, out)
    return out


def _run(args):
    return CliRunner().invoke(main, ["run", *map(str, args)], catch_exceptions=False)


def test_train_score_report_job_writes_its_summary_and_reruns(small_store, tmp_path):
    spec = _spec(tmp_path, f"""
[job]
name = "small"
workdir = "{tmp_path / 'work'}"
[cluster]
scheduler = "synchronous"
[train]
store = "{small_store}"
cv = 3
overwrite = true
[score]
overwrite = true
[report]
top = 4
""")
    for attempt in range(2):  # the rerun replaces the outputs
        result = _run([spec])
        assert result.exit_code == 0, result.output
    s = json.loads((tmp_path / "work" / "small.run.json").read_text())
    # what a person sees: the fold scores, the confusion matrix and the accuracy
    folds = " ".join(f"{v:.4f}" for v in s["steps"][0]["result"]["cv"]["scores"])
    assert f"3-fold CV accuracy on the cluster: {folds}" in result.output
    assert "true\\pred" in result.output and "total" in result.output
    acc = s["steps"][1]["result"]["accuracy"]
    # the input is the model's training store: the headline is its 300 unseen rows (issue 15)
    score_result = s["steps"][1]["result"]
    head, seen = score_result["headline"], score_result["training_rows"]
    assert head["n_labeled"] == 300 and seen["n_labeled"] == 700
    assert (f"scored 1000 images; accuracy {head['accuracy']:.4f} on 300 unseen labelled "
            f"(the model's 700 training rows, not counted: {seen['accuracy']:.4f})"
            ) in result.output
    assert acc == (head["n_correct"] + seen["n_correct"]) / 1000
    assert s["outcome"] == "succeeded" and s["error"] is None
    assert [(x["name"], x["outcome"]) for x in s["steps"]] == [
        ("train", "succeeded"), ("score", "succeeded"), ("report", "succeeded")]
    assert all(x["seconds"] >= 0 for x in s["steps"])
    train_, score_, report_ = s["steps"]
    assert train_["result"]["cv"]["k"] == 3
    assert Path(train_["metrics"]).name == "manifest.json" and Path(train_["metrics"]).exists()
    metrics = json.loads(Path(score_["metrics"]).read_text())
    assert metrics["n_images"] == score_["result"]["n_images"] == 1000
    assert Path(report_["outputs"]["html"]).exists()
    assert s["cluster"] == {"scheduler": "synchronous", "tls": False}


def test_relative_paths_resolve_against_the_current_directory(small_store, tmp_path, monkeypatch):
    spec = _spec(tmp_path, '[job]\nworkdir = "out"\n[train]\nstore = "data/s.zarr"\n[score]\n')
    run_dir = tmp_path / "elsewhere"
    (run_dir / "data").mkdir(parents=True)
    (run_dir / "data" / "s.zarr").symlink_to(small_store)
    monkeypatch.chdir(run_dir)
    job = jobs.load_job(spec, ["score.out=p/x.zarr"])
    assert job.workdir == run_dir / "out"
    assert job.params["train"]["store"] == run_dir / "data" / "s.zarr"
    assert job.params["train"]["out"] == run_dir / "out" / "model"  # defaults go in the workdir
    assert job.params["score"]["model"] == job.params["train"]["out"]  # steps chain
    assert job.params["score"]["out"] == run_dir / "p" / "x.zarr"  # --set paths too
    assert job.summary == run_dir / "out" / "job.run.json"
    monkeypatch.chdir(tmp_path)  # from the spec's own directory, data/s.zarr is not there
    with pytest.raises(JobSpecError, match="train.store .* does not exist"):
        jobs.load_job(spec)


@pytest.mark.parametrize("item, value", [
    ("train.cv=3", 3),                                   # a TOML integer
    ("train.search=true", True),                         # a TOML boolean
    ('score.out="/tmp/a b.zarr"', "/tmp/a b.zarr"),      # a quoted TOML string
    ("score.out=/tmp/x.zarr", "/tmp/x.zarr"),            # not TOML: a plain string
    ("cluster.scheduler=tcp://h:8786", "tcp://h:8786"),  # not TOML: a plain string
    ('job.steps=["score"]', ["score"]),                  # a TOML array
    ("score.out=2026", "2026"),                          # a path key keeps the text as given
])
def test_set_values_are_toml_scalars_else_strings(item, value):
    assert jobs.parse_override(item)[2] == value


@pytest.mark.parametrize("text, overrides, match", [
    # unknown section, with the nearest name
    ("[trian]\n", [], r"unknown section \[trian\].*did you mean \[train\]"),
    # unknown key, with the nearest name and the allowed ones
    ("[train]\ncvv = 3\n", [], r"unknown key train.cvv.*did you mean train.cv\?.*takes"),
    # an integer given as a string
    ('[train]\ncv = "3"\n', [], r"train.cv must be an integer.*write cv = 3 without quotes"),
    # a boolean given as a string, by --set
    ("[train]\n", ['train.overwrite="yes"'], r"train.overwrite must be true or false.*--set"),
    # a path given as a number
    ("[score]\nout = 5\n", [], r'score.out must be a path.*quote it: out = "5"'),
    # a value out of range
    ("[train]\ncv = 1\n", [], r"train.cv must be an integer >= 2, got 1"),
    # a choice outside the allowed ones
    ('[ingest]\nsource = "sample"\nkind = "png"\n', [], r"ingest.kind must be one of"),
    ('[ingest]\nsource = "sample"\ncodec = "zstd"\n', [], r"ingest.codec must be one of"),
    # steps naming a step without its section
    ('[job]\nsteps = ["train", "report"]\n[train]\n', [], r"no \[report\] section"),
    # steps naming something that is no step
    ('[job]\nsteps = ["train", "deploy"]\n[train]\n', [], r"each step once, from"),
    # a key outside any section
    ('steps = ["train"]\n[train]\n', [], r"outside any section; put it under \[job\]"),
    # a missing input file
    ('[score]\ninput = "nope.zarr"\nmodel = "nope"\n', [],
     r"score.input .*nope.zarr.* does not exist"),
    # ingest with no source
    ("[ingest]\n", [], r"\[ingest\] needs source"),
    # contradictory options
    ("[train]\nincremental = true\ncv = 3\n", [], r"incremental cannot be combined"),
    # a malformed --set
    ("[train]\n", ["train.cv"], r"expected SECTION.KEY=VALUE"),
    # --set of an unknown key
    ("[train]\n", ["train.folds=3"], r"unknown key train.folds \(--set train.folds=3\)"),
    # a spec with no step at all
    ('[cluster]\nscheduler = "local"\n', [], r"has no steps"),
    # a date that is no date
    ('[job]\ndate = "yesterday"\n[train]\n', [], r"job.date must be a date"),
    # not TOML at all
    ("[train\n", [], r"not valid TOML"),
])
def test_spec_errors_name_the_key_and_the_fix_before_anything_runs(
        tmp_path, monkeypatch, text, overrides, match):
    spec = _spec(tmp_path, text)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(JobSpecError, match=match):
        jobs.load_job(spec, overrides)
    result = CliRunner().invoke(main, ["run", str(spec), *[f"--set={o}" for o in overrides]])
    assert result.exit_code == 2, result.output
    assert "JobSpecError" in result.output
    assert [p.name for p in tmp_path.iterdir()] == ["job.toml"]  # nothing ran


def test_existing_outputs_are_refused_before_anything_runs(small_store, model_dir, tmp_path):
    spec = _spec(tmp_path, f'[train]\nstore = "{small_store}"\nout = "{model_dir}"\n')
    with pytest.raises(JobSpecError, match="train.out .* exists: set overwrite = true"):
        jobs.load_job(spec)
    not_ours = tmp_path / "not-predictions"
    not_ours.mkdir()
    spec = _spec(tmp_path, f'[score]\ninput = "{small_store}"\nmodel = "{model_dir}"\n'
                           f'out = "{not_ours}"\noverwrite = true\n')
    with pytest.raises(JobSpecError, match="not a digitbatch scoring output"):
        jobs.load_job(spec)
    with pytest.raises(JobSpecError, match="contradict"):
        jobs.load_job(spec, ["score.resume=true"])
    assert not_ours.exists()


def test_a_failed_step_is_named_in_the_summary_and_the_rest_skipped(small_store, tmp_path):
    spec = _spec(tmp_path, f"""
[job]
workdir = "{tmp_path / 'work'}"
summary = "{tmp_path / 'run.json'}"
[train]
store = "{small_store}"
cv = 500
[score]
""")
    with pytest.raises(JobFailedError, match="train failed \\(TrainingError") as info:
        jobs.run_job(jobs.load_job(spec), scheduler="synchronous")
    assert type(info.value.__cause__).__name__ == "TrainingError"
    s = json.loads((tmp_path / "run.json").read_text())
    assert s["outcome"] == "failed"
    assert s["error"]["step"] == "train" and s["error"]["type"] == "TrainingError"
    assert "--cv 500" in s["error"]["message"]
    assert [(x["name"], x["outcome"]) for x in s["steps"]] == [("train", "failed"),
                                                              ("score", "skipped")]
    result = CliRunner().invoke(main, ["run", str(spec), "--scheduler", "synchronous"])
    assert result.exit_code == 1
    assert "JobFailedError" in result.output and "TrainingError" in result.output


def test_nightly_score_resumes_and_dates_its_outputs(small_store, model_dir, tmp_path):
    spec = REPO / "jobs" / "nightly-score.toml"
    sets = ["cluster.scheduler=synchronous", "job.date=2026-11-24",
            f"job.workdir={tmp_path}", f"job.summary={tmp_path}/run-{{date}}.json",
            f"score.input={small_store}", f"score.model={model_dir}",
            f"score.out={tmp_path}/pred-{{date}}.zarr", f"report.out={tmp_path}/report-{{date}}",
            f"history.runs={tmp_path}", f"history.out={tmp_path}/history"]
    args = [spec, *[f"--set={s}" for s in sets]]
    for _ in range(2):  # the rerun continues (here: finds the output complete)
        result = _run(args)
        assert result.exit_code == 0, result.output
    s = json.loads((tmp_path / "run-2026-11-24.json").read_text())
    assert s["outcome"] == "succeeded"
    assert s["steps"][0]["outputs"]["predictions"] == str(tmp_path / "pred-2026-11-24.zarr")
    assert (tmp_path / "report-2026-11-24" / "report.html").exists()
    # the rerun's history: the first run's summary holds the output, read once
    assert s["steps"][2]["name"] == "history" and s["steps"][2]["result"]["n_runs"] == 1
    assert (tmp_path / "history" / "history.html").exists()


def test_quickstart_spec_runs_from_a_clean_directory(tmp_path, monkeypatch):
    pytest.importorskip("mlxtend")
    monkeypatch.chdir(tmp_path)
    args = [REPO / "jobs" / "quickstart.toml", "--set=train.cv=2", "--set=report.top=4",
            "--scheduler", "synchronous"]
    for _ in range(2):  # a rerun replaces the outputs
        result = _run(args)
        assert result.exit_code == 0, result.output
    s = json.loads((tmp_path / "demo-output/quickstart/quickstart.run.json").read_text())
    assert [x["name"] for x in s["steps"]] == ["ingest", "train", "score", "report"]
    assert s["steps"][2]["result"]["accuracy"] > 0.8


def test_report_step_unavailable_fails_only_when_asked_for(small_store, model_dir, tmp_path,
                                                           monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "digitbatch.report" else real(name, *a))
    body = f'[score]\ninput = "{small_store}"\nmodel = "{model_dir}"\n'
    jobs.load_job(_spec(tmp_path, body), cwd=tmp_path)
    with pytest.raises(JobSpecError, match="report step is not available"):
        jobs.load_job(_spec(tmp_path, body + "[report]\n"), cwd=tmp_path)


def test_command_line_cluster_options_override_the_spec():
    spec = cluster.ClusterSpec("tcp://from-spec:8786", tls_ca_file="spec-ca.pem")
    merged = cluster.merge(cluster.from_options("tls://cli:8786", tls_cert="c.pem"), spec)
    assert merged == cluster.ClusterSpec("tls://cli:8786", tls_ca_file="spec-ca.pem",
                                         tls_cert="c.pem")
    assert cluster.merge(None, spec) == spec


def test_a_cluster_failure_and_an_interrupt_are_summarised(small_store, tmp_path, monkeypatch):
    spec = _spec(tmp_path, f'[job]\nsummary = "{tmp_path / "run.json"}"\nworkdir = "{tmp_path}"\n'
                           f'[train]\nstore = "{small_store}"\n')
    job = jobs.load_job(spec)
    # TLS files with the local scheduler: refused before any step
    pem = tmp_path / "ca.pem"
    pem.write_text("unused")
    with pytest.raises(JobFailedError, match="cluster failed \\(ClusterError"):
        jobs.run_job(job, scheduler=cluster.ClusterSpec("local", tls_ca_file=str(pem)))
    s = json.loads((tmp_path / "run.json").read_text())
    assert s["error"]["step"] == "cluster" and s["steps"][0]["outcome"] == "skipped"

    def interrupted(params, scheduler, done):
        raise KeyboardInterrupt

    monkeypatch.setitem(jobs.STEP_FUNCS, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        jobs.run_job(job, scheduler="synchronous")
    s = json.loads((tmp_path / "run.json").read_text())
    assert s["outcome"] == "interrupted" and s["steps"][0]["outcome"] == "failed"
