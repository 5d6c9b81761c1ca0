"""Tests of digitbatch.jobspec: reading, overriding, checking and describing job specs.

(Running jobs, and the commonest spec errors through the CLI, are tests/test_jobs.py's.)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.util
import os
from pathlib import Path

import pytest

from digitbatch.cluster import ClusterSpec
from digitbatch.errors import JobSpecError
from digitbatch.jobspec import (
    DEFAULT_OUTPUTS,
    SCHEMA,
    STEPS,
    describe,
    load_job,
    parse_override,
)


def _spec(tmp_path: Path, text: str, name: str = "job.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _load(tmp_path: Path, text: str, overrides=(), **kw):
    """The spec ``text`` loaded with relative paths resolved against ``tmp_path``."""
    return load_job(_spec(tmp_path, text), overrides, cwd=tmp_path, **kw)


# --- defaults and resolution ------------------------------------------------------------


def test_each_step_reads_what_the_one_before_writes(tmp_path):
    job = _load(tmp_path, '[job]\nworkdir = "w"\n[ingest]\nsource = "sample"\n[train]\n[score]\n'
                          '[report]\n', check_files=False)
    w = tmp_path / "w"
    p = job.params
    assert job.name == "job" and job.workdir == w and job.summary == w / "job.run.json"
    present = tuple(s for s in STEPS if s not in ("export", "promote", "history"))  # the spec's sections
    assert job.steps == present
    assert {s: p[s]["out"] for s in present} == {s: w / DEFAULT_OUTPUTS[s] for s in present}
    assert p["ingest"]["source"] == "sample"  # a named source is no path
    assert p["train"]["store"] == p["ingest"]["out"]
    assert p["score"]["input"] == p["train"]["store"]
    assert p["score"]["model"] == p["train"]["out"]
    assert p["report"]["predictions"] == p["score"]["out"]
    assert job.cluster == ClusterSpec(None)
    assert job.path == tmp_path / "job.toml" and job.overrides == ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.name = "other"


def test_given_paths_replace_the_defaults_downstream(tmp_path):
    job = _load(tmp_path, '[train]\nstore = "data/s.zarr"\nout = "models/m"\n[score]\n'
                          'out = "/abs/p.zarr"\n[report]\n', check_files=False)
    p = job.params
    assert job.steps == ("train", "score", "report")
    assert p["score"]["input"] == tmp_path / "data/s.zarr"
    assert p["score"]["model"] == tmp_path / "models/m"
    assert p["report"]["predictions"] == Path("/abs/p.zarr")
    assert p["report"]["out"] == tmp_path / "report"  # workdir "." is cwd


def test_relative_paths_resolve_against_cwd_normalised_and_home_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    elsewhere = tmp_path / "elsewhere"
    spec = _spec(tmp_path, '[job]\nworkdir = "a/../b"\nsummary = "~/runs/s.json"\n'
                           '[score]\ninput = "./in/../s.zarr"\nmodel = "~/m"\n')
    job = load_job(spec, cwd=elsewhere, check_files=False)
    assert job.workdir == elsewhere / "b"
    assert job.summary == tmp_path / "home/runs/s.json"
    assert job.params["score"]["input"] == elsewhere / "s.zarr"
    assert job.params["score"]["model"] == tmp_path / "home/m"
    assert job.params["score"]["out"] == elsewhere / "b/predictions.zarr"
    # without cwd: the current directory
    monkeypatch.chdir(elsewhere.parent)
    assert load_job(spec, check_files=False).workdir == tmp_path / "b"


def test_date_fills_in_paths(tmp_path):
    text = ('[job]\nworkdir = "runs/{date}"\ndate = 2026-11-24\n'
            '[score]\ninput = "in/{date}.zarr"\nmodel = "m"\nout = "s3://bucket/{date}/p.zarr"\n')
    job = _load(tmp_path, text, check_files=False)
    assert job.workdir == tmp_path / "runs/2026-11-24"
    assert job.summary == tmp_path / "runs/2026-11-24/job.run.json"
    assert job.params["score"]["input"] == tmp_path / "in/2026-11-24.zarr"
    assert str(job.params["score"]["out"]) == "s3://bucket/2026-11-24/p.zarr"  # a URL stays one
    # a quoted date, and a date given by --set, the same
    rerun = _load(tmp_path, text.replace("2026-11-24", '"2026-11-24"'), ["job.date=2026-11-01"],
                  check_files=False)
    assert rerun.workdir == tmp_path / "runs/2026-11-01"
    # no date: today
    today = dt.date.today().isoformat()
    job = _load(tmp_path, '[job]\nworkdir = "{date}"\n[report]\npredictions = "p"\n', check_files=False)
    assert job.workdir == tmp_path / today


def test_steps_run_in_pipeline_order_whatever_order_they_are_given(tmp_path):
    body = '[ingest]\nsource = "openml"\n[train]\n[score]\n'
    assert _load(tmp_path, '[job]\nsteps = ["score", "train"]\n' + body,
                 check_files=False).steps == ("train", "score")
    # steps name a subset: the other sections are not run (nor checked)
    job = _load(tmp_path, '[job]\nsteps = ["ingest"]\n' + body + 'resume = true\noverwrite = true\n',
                check_files=False)
    assert job.steps == ("ingest",)
    assert describe(job) == [f"ingest: openml -> {tmp_path / 'store.zarr'}"]


def test_an_image_source_is_a_path_named_sources_are_not(tmp_path):
    job = _load(tmp_path, '[ingest]\nsource = "pngs/{date}"\n[job]\ndate = "2026-01-31"\n',
                check_files=False)
    assert job.params["ingest"]["source"] == tmp_path / "pngs/2026-01-31"
    for named in ("sample", "openml"):
        job = _load(tmp_path, f'[ingest]\nsource = "{named}"\n', check_files=False)
        assert job.params["ingest"]["source"] == named


def test_cluster_section_makes_the_cluster_spec(tmp_path):
    for f in ("ca.pem", "cert.pem"):
        (tmp_path / f).write_text("x")
    job = _load(tmp_path, '[cluster]\nscheduler = "tls://h:8786"\ntls_ca_file = "ca.pem"\n'
                          'tls_cert = "cert.pem"\n[report]\npredictions = "p"\n', check_files=False)
    assert job.cluster == ClusterSpec("tls://h:8786", tls_ca_file=str(tmp_path / "ca.pem"),
                                      tls_cert=str(tmp_path / "cert.pem"))


# --- --set ------------------------------------------------------------------------------


@pytest.mark.parametrize("item, expected", [
    (" train.cv =3", ("train", "cv", 3)),                        # spaces around the key
    ("score.out=a=b.zarr", ("score", "out", "a=b.zarr")),         # '=' in the value
    ("score.out=true", ("score", "out", "true")),                 # a path stays the text
    ("job.name=2026", ("job", "name", "2026")),                   # a string too
    ("train.model=sgd-kernel", ("train", "model", "sgd-kernel")),
    ("job.date=2026-11-24", ("job", "date", dt.date(2026, 11, 24))),
    ("train.search=false", ("train", "search", False)),
    ("train.cv=three", ("train", "cv", "three")),                 # not TOML: the text (refused later)
])
def test_parse_override(item, expected):
    assert parse_override(item) == expected


@pytest.mark.parametrize("item, match", [
    ("train=3", r"expected SECTION.KEY=VALUE"),
    ("train.=3", r"expected SECTION.KEY=VALUE"),
    (".cv=3", r"expected SECTION.KEY=VALUE"),
    ("=3", r"expected SECTION.KEY=VALUE"),
    ("trian.cv=3", r"unknown section \[trian\] \(--set trian.cv=3\): did you mean \[train\]\?"),
    ("train.sede=1", r"unknown key train.sede \(--set train.sede=1\): did you mean train.seed\?"),
    ("zzz.q=1", r"unknown section \[zzz\] \(--set zzz.q=1\) Sections are \[job\], \[cluster\]"),
])
def test_parse_override_refuses(item, match):
    with pytest.raises(JobSpecError, match=match):
        parse_override(item)


def test_overrides_apply_in_order_and_replace_the_files_values(tmp_path):
    # the file's cv = 1 is out of range, but --set replaces it before the checks
    spec = '[train]\ncv = 1\nstore = "s.zarr"\n'
    job = _load(tmp_path, spec, ["train.cv=3", "train.cv=4", "train.seed=9"], check_files=False)
    assert job.params["train"]["cv"] == 4 and job.params["train"]["seed"] == 9
    assert job.overrides == ("train.cv=3", "train.cv=4", "train.seed=9")
    # where each bad value came from: the file, or the --set
    with pytest.raises(JobSpecError, match=rf"train.cv must be an integer >= 2, got 1 \({tmp_path / 'job.toml'}\)"):
        _load(tmp_path, spec, check_files=False)
    with pytest.raises(JobSpecError, match=r"train.cv must be an integer >= 2, got 0 \(--set train.cv=0\)"):
        _load(tmp_path, spec, ["train.cv=3", "train.cv=0"], check_files=False)


# --- values -----------------------------------------------------------------------------


@pytest.mark.parametrize("text, match", [
    ("[train]\novertwrite = true\n", r"did you mean train.overwrite\?"),
    ("[train]\noverwrite = 1\n", r"train.overwrite must be true or false, got 1 \(int, .*\): give true or false"),
    ("[train]\ncv = true\n", r"train.cv must be an integer, got True \(bool"),
    ("[train]\ncv = 3.0\n", r"train.cv must be an integer, got 3.0 \(float, .*\): give an integer"),
    ('[train]\nmodel = ["sgd"]\n', r"train.model must be a string, got \['sgd'\] .*: give a string"),
    ('[train]\nmodel = ""\n', r"train.model is empty .*: give a value or leave the key out"),
    ('[score]\nout = "  "\n', r"score.out is empty"),
    ('[job]\nsteps = "score"\n[score]\n',
     r"job.steps must be a list of step names .*write steps = \[\"score\"\] \(on the command line"),
    ('[job]\nsteps = ["score", "score"]\n[score]\n', r"each step once"),
    ('[job]\nsteps = []\n[score]\n', r"has no steps"),
    ("[job]\ndate = 2026-11-24T10:00:00\n[score]\n", r"job.date must be a date \(2026-11-24\), got datetime"),
    ('[job]\nname = "a/b"\n[score]\n', r"job.name 'a/b' must not contain a path separator"),
    ("[report]\ntop = 0\n", r"report.top must be an integer from 1 to 400, got 0"),
    ("[report]\ntop = 401\n", r"report.top must be an integer from 1 to 400, got 401"),
    ('[train]\nfeatures = "hog"\n', r"train.features must be one of \['pixels', 'deskew', 'patches', 'kernel'\], got 'hog'"),
    ("[train]\nepochs = 0\n", r"train.epochs must be an integer >= 1"),
    ("[score]\ntask_timeout = -1\n", r"score.task_timeout must be an integer >= 0"),
    ("[train]\ncv = 3\n[train.more]\nx = 1\n", r"unknown key train.more"),
    ('[job]\nname = "n"\n', r"has no steps: add a section of"),
])
def test_bad_values_name_the_key_and_the_fix(tmp_path, text, match):
    with pytest.raises(JobSpecError, match=match):
        _load(tmp_path, text, check_files=False)


# a right value for the string keys without a fixed set of choices
FREE_TEXT = {"job.name": "nightly", "cluster.scheduler": "local", "ingest.source": "sample",
             "train.model": "sgd"}


def _good(name: str, kind: str, extra) -> tuple[str, object]:
    """A right value for key ``name``: as TOML text, and as read."""
    if kind == "str":
        v = extra[-1] if extra else FREE_TEXT[name]
        return f'"{v}"', v
    if kind in ("int", "float"):
        lo, hi = extra if extra else (0, None)
        return str(hi if hi is not None else lo), hi if hi is not None else lo
    return {"path": (f'"p/{name}"', None), "bool": ("false", False), "date": ("2026-11-24", None),
            "steps": ('["report", "ingest", "train", "score"]', None),
            "paths": (f'["p/{name}.1", "p/{name}.2"]', None), "float": ("0.5", 0.5)}[kind]


def test_every_schema_key_is_accepted(tmp_path):
    """A value of the right kind for every key of every section passes the checks
    (the largest where there is a maximum, else the smallest)."""
    lines = []
    for section, keys in SCHEMA.items():
        lines.append(f"[{section}]")
        for key, (kind, extra) in keys.items():
            lines.append(f"{key} = {_good(f'{section}.{key}', kind, extra)[0]}")
    job = _load(tmp_path, "\n".join(lines) + "\n", check_files=False)
    for section in STEPS:
        for key, (kind, extra) in SCHEMA[section].items():
            _, value = _good(f"{section}.{key}", kind, extra)
            got = job.params[section][key]
            if kind == "paths":
                assert got == [tmp_path / f"p/{section}.{key}.{i}" for i in (1, 2)], key
                continue
            assert got == (tmp_path / f"p/{section}.{key}" if kind == "path" else value), key
    assert job.name == "nightly" and job.steps == STEPS[:4]
    assert job.summary == tmp_path / "p/job.summary" and job.workdir == tmp_path / "p/job.workdir"
    assert job.cluster == ClusterSpec("local", **{k: str(tmp_path / f"p/cluster.{k}")
                                                  for k in ("tls_ca_file", "tls_cert", "tls_key")})


def test_contradictory_or_unknown_training_options(tmp_path):
    with pytest.raises(JobSpecError, match=r"\[train\] model/features: unknown model 'nosuch'"):
        _load(tmp_path, '[train]\nmodel = "nosuch"\n', check_files=False)
    with pytest.raises(JobSpecError, match=r"\[train\] model/features: .*'pixels' is not available for sgd-kernel"):
        _load(tmp_path, '[train]\nmodel = "sgd-kernel"\nfeatures = "pixels"\n', check_files=False)
    with pytest.raises(JobSpecError, match="incremental cannot be combined"):
        _load(tmp_path, "[train]\nincremental = true\nsearch = true\n", check_files=False)
    # a section that is not a step is not checked
    _load(tmp_path, '[job]\nsteps = ["score"]\n[train]\nmodel = "nosuch"\n[score]\n', check_files=False)


def test_a_spec_that_is_missing_or_not_toml(tmp_path):
    with pytest.raises(JobSpecError, match=r"job spec .*nope.toml not found: give the path"):
        load_job(tmp_path / "nope.toml")
    bad = tmp_path / "latin1.toml"
    bad.write_bytes('[job]\nname = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(JobSpecError, match=r"latin1.toml is not valid TOML"):
        load_job(bad)


# --- files on this machine --------------------------------------------------------------


def test_inputs_may_be_made_by_an_earlier_step(tmp_path):
    (tmp_path / "idx").mkdir()
    job = _load(tmp_path, '[ingest]\nsource = "idx"\n[train]\n[score]\n[report]\n')
    assert job.steps == STEPS[:4]  # store, model and predictions do not exist yet: made on the way
    # without the step that makes it, the default input must exist
    with pytest.raises(JobSpecError, match=r"score.model = '.*model' \(the default\) does not exist: "
                                           r"fix the path, or add the step"):
        _load(tmp_path, '[ingest]\nsource = "idx"\n[score]\n')
    with pytest.raises(JobSpecError, match=r"ingest.source = '.*nope' \(.*job.toml\) does not exist"):
        _load(tmp_path, '[ingest]\nsource = "nope"\n')


def test_optional_inputs_are_checked_when_given(tmp_path):
    (tmp_path / "s.zarr").mkdir()
    (tmp_path / "m").mkdir()
    base = '[score]\ninput = "s.zarr"\nmodel = "m"\n'
    _load(tmp_path, base)
    with pytest.raises(JobSpecError, match=r"score.labels = '.*labels.csv' \(--set score.labels=labels.csv\) does not exist"):
        _load(tmp_path, base, ["score.labels=labels.csv"])
    with pytest.raises(JobSpecError, match=r"report.store = '.*other.zarr' .* does not exist"):
        _load(tmp_path, base + '[report]\nstore = "other.zarr"\n')
    with pytest.raises(JobSpecError, match=r"ingest.labels = .* does not exist"):
        _load(tmp_path, '[ingest]\nsource = "s.zarr"\nlabels = "l.csv"\nout = "o.zarr"\n')
    # none of it on this machine: the spec alone is checked
    _load(tmp_path, '[score]\ninput = "x.zarr"\nmodel = "y"\nlabels = "z.csv"\n', check_files=False)


def test_existing_outputs_need_overwrite_or_resume(tmp_path):
    (tmp_path / "idx").mkdir()
    (tmp_path / "store.zarr").mkdir()
    with pytest.raises(JobSpecError, match=r"ingest.out '.*store.zarr' exists: set overwrite = true in "
                                           r"\[ingest\] \(or --set ingest.overwrite=true\) to replace the store"):
        _load(tmp_path, '[ingest]\nsource = "idx"\n')
    # overwrite replaces only a digitbatch store: not an empty (or a user's) folder
    with pytest.raises(JobSpecError, match=r"ingest.overwrite: .*store.zarr is a folder "
                                           r"digitbatch did not make"):
        _load(tmp_path, '[ingest]\nsource = "idx"\n', ["ingest.overwrite=true"])
    (tmp_path / "store.zarr" / "zarr.json").write_text(
        '{"zarr_format": 3, "node_type": "group", "attributes": '
        '{"digitbatch": {"layout_version": 1, "complete": true}}}')
    _load(tmp_path, '[ingest]\nsource = "idx"\n', ["ingest.overwrite=true"])
    (tmp_path / "m").mkdir()
    (tmp_path / "predictions.zarr").mkdir()
    score = '[score]\ninput = "store.zarr"\nmodel = "m"\n'
    with pytest.raises(JobSpecError, match=r"score.out .* exists: set resume = true to continue it"):
        _load(tmp_path, score)
    assert _load(tmp_path, score, ["score.resume=true"]).params["score"]["resume"] is True


def test_tls_files_must_exist(tmp_path):
    (tmp_path / "p").mkdir()
    spec = '[cluster]\nscheduler = "tls://h:8786"\ntls_ca_file = "ca.pem"\n[report]\npredictions = "p"\n'
    with pytest.raises(JobSpecError, match=r"cluster.tls_ca_file = '.*ca.pem' does not exist"):
        _load(tmp_path, spec)
    (tmp_path / "ca.pem").write_text("x")
    _load(tmp_path, spec)


def test_the_sample_source_needs_its_extra(tmp_path, monkeypatch):
    real = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name == "mlxtend" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(JobSpecError, match=r"needs the sample extra: pip install 'digitbatch\[sample\]'"):
        _load(tmp_path, '[ingest]\nsource = "sample"\n')
    _load(tmp_path, '[ingest]\nsource = "openml"\n')  # the other named source needs nothing


# --- describe ---------------------------------------------------------------------------


def test_describe_says_what_each_step_reads_and_writes(tmp_path):
    job = _load(tmp_path, '[ingest]\nsource = "sample"\n[train]\nmodel = "sgd-kernel"\ncv = 3\n'
                          '[score]\nresume = true\n[report]\n', check_files=False)
    t = tmp_path
    assert describe(job) == [
        f"ingest: sample -> {t / 'store.zarr'}",
        f"train: sgd-kernel on {t / 'store.zarr'} -> {t / 'model'} (3-fold CV)",
        f"score: {t / 'store.zarr'} with {t / 'model'} -> {t / 'predictions.zarr'} (resume)",
        f"report: {t / 'predictions.zarr'} -> {t / 'report'}",
    ]
    job = _load(tmp_path, '[score]\ninput = "s.zarr"\nmodel = "m"\n', ["score.out=out/{date}.zarr",
                                                                      "job.date=2026-02-03"],
                check_files=False)
    assert describe(job) == [f"score: {t / 's.zarr'} with {t / 'm'} -> {t / 'out/2026-02-03.zarr'}"]
    job = _load(tmp_path, '[train]\nstore = "s.zarr"\n', check_files=False)
    assert describe(job) == [f"train: sgd on {t / 's.zarr'} -> {t / 'model'}"]  # the default model, no CV
    assert os.getcwd() != str(t)  # (nothing above depended on the current directory)
