"""Job specs whose steps would write over each other, or write where they cannot.

=================== ============================================================ ==================
kind                trials                                                       expected outcome
=================== ============================================================ ==================
step-collision      score.out = ingest.out (overwrite), train.out = ingest.out,  ``JobSpecError`` at
                    score.out inside ingest.out, report.out holding score.out,   ``--check`` naming
                    summary inside an output                                     both keys
output-on-input     score.out = score.input, ingest.out inside ingest.source,    ``JobSpecError``
                    train.out = ingest.source, report.out = score.model,
                    ingest.out holding ingest.labels
unwritable-output   summary is a folder; summary's parent is a file; train.out   ``JobSpecError``
                    is a file; an unwritable folder (not as root)
=================== ============================================================ ==================

Each is refused by ``--check`` (exit 2) and by a run before any step starts:
nothing is created or changed, and no temporary file is left.
"""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from digitbatch import jobs
from digitbatch.cli import main
from digitbatch.errors import JobSpecError
from digitbatch.jobspec import load_job
from digitbatch.storage import write_atomic

from .snapshots import assert_unchanged, tree


def _spec(tmp_path, body: str):
    p = tmp_path / "job.toml"
    p.write_text(f'[job]\nname = "j"\nworkdir = "{tmp_path / "work"}"\n'
                 f'[cluster]\nscheduler = "synchronous"\n{body}')
    return p


def _check(tmp_path, spec, match):
    before = tree(tmp_path)
    with pytest.raises(JobSpecError, match=match):
        load_job(spec)
    r = CliRunner().invoke(main, ["run", str(spec), "--check"])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    assert_unchanged(before, tmp_path)


@pytest.fixture
def src(tmp_path, idx_dir):
    return idx_dir


COLLISIONS = {
    "score-out-is-ingest-out": (
        '[ingest]\nsource = "{src}"\nout = "{w}/s.zarr"\noverwrite = true\n[train]\n'
        '[score]\nout = "{w}/s.zarr"\noverwrite = true\n',
        r"ingest.out and score.out are the same path"),
    "train-out-is-ingest-out": (
        '[ingest]\nsource = "{src}"\nout = "{w}/x"\n[train]\nout = "{w}/x"\n',
        r"ingest.out and train.out are the same path"),
    "score-out-inside-ingest-out": (
        '[ingest]\nsource = "{src}"\nout = "{w}/s.zarr"\n[train]\n'
        '[score]\nout = "{w}/s.zarr/p.zarr"\n',
        r"ingest.out and score.out contain one another"),
    "report-out-holds-score-out": (
        '[ingest]\nsource = "{src}"\n[train]\n[score]\nout = "{w}/r/p.zarr"\n'
        '[report]\nout = "{w}/r"\n',
        r"score.out and report.out contain one another"),
    "summary-inside-an-output": (
        '[ingest]\nsource = "{src}"\nout = "{w}/s.zarr"\n',
        r"ingest.out and job.summary contain one another"),
}


@pytest.mark.parametrize("case", list(COLLISIONS), ids=lambda c: f"collision-{c}")
def test_outputs_that_collide_are_refused_by_check(case, tmp_path, src):
    body, match = COLLISIONS[case]
    body = body.format(src=src, w=tmp_path / "work")
    spec = _spec(tmp_path, body)
    if case == "summary-inside-an-output":
        text = spec.read_text().replace(
            "[cluster]", f'summary = "{tmp_path / "work" / "s.zarr" / "run.json"}"\n[cluster]')
        spec.write_text(text)
    _check(tmp_path, spec, match)


def test_overwriting_steps_are_refused_when_the_store_exists(tmp_path, small_store, src):
    """The issue's case: score.out = ingest.out with overwrite = true, the store already there."""
    spec = _spec(tmp_path, f'[ingest]\nsource = "{src}"\nout = "{small_store}"\noverwrite = true\n'
                           f'[train]\n[score]\nout = "{small_store}"\noverwrite = true\n')
    _check(tmp_path, spec, "the same path")


ON_INPUTS = {
    "score-out-is-score-input": (
        '[score]\ninput = "{store}"\nmodel = "{model}"\nout = "{store}"\noverwrite = true\n',
        r"score.out .* is score.input"),
    "ingest-out-inside-source": (
        '[ingest]\nsource = "{src}"\nout = "{src}/store.zarr"\n',
        r"ingest.out .* is inside ingest.source"),
    "train-out-is-ingest-source": (
        '[ingest]\nsource = "{src}"\n[train]\nout = "{src}"\noverwrite = true\n',
        r"train.out .* is ingest.source"),
    "report-out-is-score-model": (
        '[score]\ninput = "{store}"\nmodel = "{model}"\n[report]\nout = "{model}"\n',
        r"report.out .* is score.model"),
    "ingest-out-holds-labels": (
        '[ingest]\nsource = "{src}"\nout = "{w}/lab"\nlabels = "{w}/lab/labels.csv"\n',
        r"ingest.out .* contains ingest.labels"),
}


@pytest.mark.parametrize("case", list(ON_INPUTS), ids=lambda c: f"on-input-{c}")
def test_outputs_over_inputs_are_refused_by_check(case, tmp_path, src, shared_model,
                                                  small_store):
    body, match = ON_INPUTS[case]
    (tmp_path / "work" / "lab").mkdir(parents=True)
    (tmp_path / "work" / "lab" / "labels.csv").write_text("key,label\n")
    body = body.format(src=src, w=tmp_path / "work", store=small_store, model=shared_model)
    _check(tmp_path, _spec(tmp_path, body), match)


def test_summary_that_is_a_folder_is_refused_before_any_step(tmp_path, src):
    (tmp_path / "work" / "j.run.json").mkdir(parents=True)
    spec = _spec(tmp_path, f'[ingest]\nsource = "{src}"\n')
    _check(tmp_path, spec, r"job.summary .* is a directory")
    # a job checked elsewhere (check_files=False) is refused by the run itself, before any step
    job = load_job(spec, check_files=False)
    before = tree(tmp_path)
    with pytest.raises(JobSpecError, match="is a directory"):
        jobs.run_job(job)
    assert_unchanged(before, tmp_path)


def test_summary_under_a_file_is_refused(tmp_path, src):
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "notes").write_text("mine")
    p = tmp_path / "job.toml"
    p.write_text(f'[job]\nworkdir = "{tmp_path / "work"}"\n'
                 f'summary = "{tmp_path / "work" / "notes" / "run.json"}"\n'
                 f'[ingest]\nsource = "{src}"\n')
    _check(tmp_path, p, r"is a file, not a folder")


def test_train_out_that_is_a_file_is_refused(tmp_path, small_store):
    (tmp_path / "model").write_text("not a model")
    spec = _spec(tmp_path, f'[train]\nstore = "{small_store}"\nout = "{tmp_path / "model"}"\n'
                           f'overwrite = true\n')
    _check(tmp_path, spec, r"train.out .*model. is a file: the step writes a folder there")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write any folder: no unwritable "
                    "folder to try")
def test_unwritable_output_folder_is_refused(tmp_path, small_store):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        spec = _spec(tmp_path, f'[train]\nstore = "{small_store}"\nout = "{ro / "m"}"\n')
        _check(tmp_path, spec, "not writable")
    finally:
        ro.chmod(0o755)


def test_the_usual_data_flow_still_passes(tmp_path, src):
    """train reads what ingest makes, score what train makes: not collisions."""
    spec = _spec(tmp_path, f'[ingest]\nsource = "{src}"\n[train]\n[score]\n[report]\n')
    job = load_job(spec)
    assert job.params["score"]["input"] == job.params["ingest"]["out"]


def test_a_failed_summary_write_leaves_no_temporary_file(tmp_path):
    (tmp_path / "summary.json").mkdir()
    before = tree(tmp_path)
    with pytest.raises(OSError):
        write_atomic(tmp_path / "summary.json", json.dumps({"a": 1}))
    assert_unchanged(before, tmp_path)


def test_scheduler_typo_in_a_spec_is_refused_by_check(tmp_path, src):
    p = tmp_path / "job.toml"
    p.write_text(f'[cluster]\nscheduler = "lokal"\n[ingest]\nsource = "{src}"\n'
                 f'out = "{tmp_path / "s.zarr"}"\n[job]\nworkdir = "{tmp_path / "w"}"\n')
    _check(tmp_path, p, r"cluster.scheduler .*'lokal' is not a scheduler address.*did you mean "
                        r"'local'")
