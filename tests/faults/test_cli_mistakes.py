"""Ordinary mistakes a new user makes at the command line: named, on one line, no traceback.

=========================== ============================================== ==========================
kind                        trial                                          expected outcome
=========================== ============================================== ==========================
model-typo                  ``train --model sgd-kernal`` (and detect-22)   did you mean 'sgd-kernel'
quiet-after-command         ``train ... -q``, ``score ... -v``              accepted, as before the
                                                                           command name
show-label-without-grid     ``show --label 3`` (with and without --index)  names --label and --grid
epochs-without-incremental  ``train --epochs 3`` (and ``--epochs 5``);     usage error, exit 2;
                            a spec's ``epochs``                            the spec: a warning
spec-hint                   ``cv = "abc"``, ``cv = "3"``, ``incremental =  "without quotes" only
                            "yes"``                                        where it would parse
detect-confusion            detect-2's text confusion matrix               rows "not 2" and "2"
model-file-given            ``--model M/manifest.json``, ``M/model.npz``   give the model folder M
one-idx-file                ``ingest train-images-idx3-ubyte.gz`` (and an  give the directory of
                            IDX file by content only)                      the four IDX files
report-not-predictions      ``report STORE``, ``report MODEL``, a file,    says what it is and what
                            nothing, export of a store                     report wants
export-overwrite-foreign    ``export --overwrite`` over a user's CSV,      OverwriteRefusedError,
                            Parquet, an edited export, a user's sidecar     kept; ours is replaced
missing-parent              ``show --out nodir/d.png``, ``ingest --out     created (one rule for
                            nodir/s.zarr``, report, export                 every command)
train-over-a-file           ``train --out FILE --overwrite``               refused before training
bar-and-log-lines           a Dask-style handler logs while a bar is drawn the bar cleared first;
                                                                           a drawn bar's line ended
=========================== ============================================== ==========================
"""

from __future__ import annotations

import gzip
import io
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from digitbatch import training
from digitbatch.cli import main
from digitbatch.progressbar import Progress

from .snapshots import assert_unchanged, tree


def _cli(*args, code=None):
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in r.output, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    if code is not None:
        assert r.exit_code == code, r.output
    return r.output


@pytest.fixture
def pred(tmp_path, small_store, shared_model):
    out = tmp_path / "p.zarr"
    _cli("score", small_store, "--model", shared_model, "--out", out, "--scheduler",
         "synchronous", code=0)
    return out


def test_a_misspelt_model_gets_did_you_mean(tmp_path, small_store):
    out = _cli("train", small_store, "--out", tmp_path / "m", "--model", "sgd-kernal", code=1)
    assert "TrainingError" in out and "did you mean 'sgd-kernel'?" in out
    out = _cli("train", small_store, "--out", tmp_path / "m", "--model", "detect-22", code=1)
    assert "did you mean 'detect-2'?" in out
    out = _cli("train", small_store, "--out", tmp_path / "m", "--model", "zzzz", code=1)
    assert "did you mean" not in out and "sgd-kernel" in out
    assert not (tmp_path / "m").exists()


def test_quiet_and_verbose_after_the_command_name(tmp_path, small_store, shared_model):
    _cli("train", small_store, "--out", tmp_path / "m", "--scheduler", "synchronous", "-q",
         code=0)
    _cli("score", small_store, "--model", shared_model, "--out", tmp_path / "p.zarr",
         "--scheduler", "synchronous", "-v", code=0)
    _cli("models", "-q", code=0)


def test_show_label_without_grid_names_label(small_store, tmp_path):
    for extra in ([], ["--index", "3"]):
        out = _cli("show", small_store, "--label", "3", *extra, "--out", tmp_path / "d.png",
                   code=2)
        assert "'--label'" in out and "--grid" in out and "'--index'" not in out
    assert not (tmp_path / "d.png").exists()


@pytest.mark.parametrize("epochs", ["3", "5"])
def test_epochs_without_incremental_is_refused(epochs, tmp_path, small_store, monkeypatch):
    monkeypatch.setattr(training, "_fit_in_memory", lambda *a, **k: pytest.fail("trained"))
    out = _cli("train", small_store, "--out", tmp_path / "m", "--epochs", epochs, code=2)
    assert "'--epochs'" in out and "--incremental" in out
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("line,hint,no_hint", [
    ('cv = "abc"', "write a whole number, not 'abc'", "without quotes"),
    ('cv = "3"', "write cv = 3 without quotes", None),
    ('cv = "3.5"', "write a whole number", "without quotes"),
    ('search = "yes"', "write true or false, not 'yes'", "without quotes"),
    ('search = "true"', "write search = true without quotes", None),
])
def test_the_spec_hint_without_quotes_only_for_what_would_parse(line, hint, no_hint, tmp_path):
    from digitbatch.errors import JobSpecError
    from digitbatch.jobspec import load_job

    spec = tmp_path / "job.toml"
    spec.write_text(f'[job]\nname = "x"\nworkdir = "{tmp_path}"\nsteps = ["train"]\n'
                    f'[train]\nstore = "{tmp_path}"\nout = "{tmp_path / "m"}"\n{line}\n')
    with pytest.raises(JobSpecError) as err:
        load_job(spec)
    assert hint in str(err.value)
    if no_hint:
        assert no_hint not in str(err.value)


def test_detect_confusion_text_names_its_classes():
    from digitbatch.summaries import score_lines

    m = {"n_labeled": 10, "confusion_matrix": [[6, 1], [2, 1]], "n_images": 10,
         "target": "is-2", "accuracy": 0.7}
    rows = [ln.split()[0:2] for ln in score_lines(m)[:4]]
    assert rows[1] == ["not", "2"] and rows[2][0] == "2", score_lines(m)
    assert "not 2" in score_lines(m)[0]
    multi = score_lines({**m, "target": "multiclass"})
    assert "not" not in "\n".join(multi)


def test_a_file_of_a_model_given_as_the_model(tmp_path, small_store, shared_model):
    for name in ("manifest.json", "model.npz"):
        out = _cli("score", small_store, "--model", shared_model / name, "--out",
                   tmp_path / "p.zarr", code=1)
        assert "ModelError" in out and "give the model folder" in out
        assert str(shared_model) in out and "pickle" not in out
    assert not (tmp_path / "p.zarr").exists()


def test_one_idx_file_says_give_the_directory(tmp_path, idx_dir):
    gz = tmp_path / "train-images-idx3-ubyte.gz"
    raw = next(p for p in idx_dir.iterdir() if "images" in p.name)
    data = raw.read_bytes() if raw.suffix != ".gz" else gzip.decompress(raw.read_bytes())
    gz.write_bytes(gzip.compress(data))
    anon = tmp_path / "download.bin"  # an IDX file known by its content only
    anon.write_bytes(data)
    for src in (gz, anon):
        out = _cli("ingest", src, "--out", tmp_path / "s.zarr", code=1)
        assert "UnknownSourceError" in out and "give the directory holding the four IDX" in out
        assert "cannot tell" not in out
    assert not (tmp_path / "s.zarr").exists()


def test_report_of_what_is_not_predictions_says_what_it_is(tmp_path, small_store,
                                                          shared_model):
    f = tmp_path / "afile"
    f.write_text("x")
    (tmp_path / "folder").mkdir()
    for given, what in [(small_store, "is a digitbatch store"),
                        (shared_model, "is a digitbatch model"), (f, "is a file"),
                        (tmp_path / "folder", "a folder digitbatch did not make"),
                        (tmp_path / "nothing", "does not exist")]:
        out = _cli("report", given, "--out", tmp_path / "rep", code=1)
        assert "NotAnOutputError" in out and what in out and "not a scoring output" in out
        assert "--resume" not in out
    out = _cli("export", small_store, "--out", tmp_path / "x.csv", code=1)
    assert "not a digitbatch scoring output" in out
    assert not (tmp_path / "rep").exists() and not (tmp_path / "x.csv").exists()


def test_export_overwrite_replaces_only_a_digitbatch_export(tmp_path, pred):
    user_csv, user_pq = tmp_path / "mine.csv", tmp_path / "mine.parquet"
    user_csv.write_text("key,value\na,1\n")
    user_pq.write_bytes(b"PAR1 not really")
    side = tmp_path / "side.csv.json"
    side.write_text('{"mine": true}')
    before = tree(tmp_path)
    for dest in (user_csv, user_pq):
        out = _cli("export", pred, "--out", dest, "--overwrite", code=1)
        assert "OverwriteRefusedError" in out and dest.name in out
    out = _cli("export", pred, "--out", tmp_path / "side.csv", code=1)
    assert "OverwriteRefusedError" in out and "side.csv.json" in out
    assert_unchanged(before, tmp_path)
    for dest in (tmp_path / "ours.csv", tmp_path / "ours.parquet"):
        _cli("export", pred, "--out", dest, code=0)
        _cli("export", pred, "--out", dest, "--overwrite", code=0)  # ours: replaced
    with open(tmp_path / "ours.csv", "a") as fh:  # edited by hand since: not ours any more
        fh.write("x,1,2,3\n")
    out = _cli("export", pred, "--out", tmp_path / "ours.csv", "--overwrite", code=1)
    assert "OverwriteRefusedError" in out


def test_missing_parent_folders_are_created_by_every_command(tmp_path, small_store, idx_dir,
                                                            pred):
    _cli("show", small_store, "--index", "3", "--out", tmp_path / "a" / "d.png", code=0)
    _cli("show", small_store, "--grid", "--out", tmp_path / "b" / "c" / "g.png", code=0)
    _cli("ingest", idx_dir, "--out", tmp_path / "c" / "s.zarr", "--scheduler", "synchronous",
         code=0)
    _cli("report", pred, "--out", tmp_path / "d" / "rep", "--top", "4", code=0)
    _cli("export", pred, "--out", tmp_path / "e" / "x.parquet", code=0)
    for p in ("a/d.png", "b/c/g.png", "c/s.zarr/zarr.json", "d/rep/report.html",
              "e/x.parquet"):
        assert (tmp_path / p).is_file(), p
    assert not [p for p in tree(tmp_path) if ".tmp-" in p or ".swap-" in p]


def test_train_over_a_file_is_refused_before_training(tmp_path, small_store, monkeypatch):
    f = tmp_path / "afile"
    f.write_text("mine")
    monkeypatch.setattr(training, "_fit_in_memory", lambda *a, **k: pytest.fail("trained"))
    out = _cli("train", small_store, "--out", f, "--overwrite", "--scheduler", "synchronous",
               code=1)
    assert "OverwriteRefusedError" in out and "afile" in out and "is a file" in out
    assert f.read_text() == "mine"


def test_a_bar_is_cleared_for_other_libraries_log_lines(monkeypatch):
    stream = io.StringIO()
    lib = logging.getLogger("fake-distributed")  # (Dask keeps its own stderr handler)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    lib.addHandler(handler)
    lib.propagate = False
    try:
        with Progress("score", mode="bar", stream=stream) as bar:
            bar(5, total=10)
            lib.warning("a worker left")
            bar(5)
        text = stream.getvalue()
    finally:
        lib.removeHandler(handler)
    before, after = text.split("fake-distributed a worker left", 1)
    assert before.endswith("\r\x1b[K"), repr(text)  # the bar's line cleared first
    assert "score [" in after and text.endswith("\n")
    # a bar drawn with nothing done still ends its line
    stream = io.StringIO()
    with Progress("ingest", mode="bar", stream=stream) as bar:
        bar(0, total=10)
    assert stream.getvalue().endswith("\n")


def test_a_job_specs_epochs_without_incremental_is_warned(tmp_path, small_store, caplog):
    """In a spec (which may set every key for the record) a warning, not a refusal."""
    from digitbatch.jobspec import load_job

    spec = tmp_path / "job.toml"
    spec.write_text(f'[job]\nname = "x"\nworkdir = "{tmp_path}"\nsteps = ["train"]\n'
                    f'[train]\nstore = "{small_store}"\nout = "{tmp_path / "m"}"\nepochs = 3\n')
    with caplog.at_level(logging.WARNING, logger="digitbatch"):
        load_job(spec)
    assert any("train.epochs = 3 has no effect" in m for m in caplog.messages)
    caplog.clear()
    spec.write_text(spec.read_text() + "incremental = true\n")
    with caplog.at_level(logging.WARNING, logger="digitbatch"):
        load_job(spec)
    assert not any("epochs" in m for m in caplog.messages)
