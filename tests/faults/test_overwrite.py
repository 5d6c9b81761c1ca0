"""``--overwrite`` replaces only what digitbatch itself made.

================== ============================================================ ==========================
kind               trials                                                       expected outcome
================== ============================================================ ==========================
overwrite-foreign  ``--out`` a user's folder of notes, a user's file, a link to  ``OverwriteRefusedError``
                   a store, an empty folder, a folder of model files plus a     naming the path, before
                   note, a plain Zarr group: ingest, train, a job's score step  any work; all kept as is
overwrite-kind     ingest over a model, train over a store, a job's score over  ``OverwriteRefusedError``
                   a store                                                      / ``JobSpecError``
overwrite-ours     a store, a model (and a scoring output, by a job) replaced   replaced
================== ============================================================ ==========================

:func:`digitbatch.storage.made_by_digitbatch` is checked on the real
artifacts of each writer: a store (and one being written), a model, a
scoring output, a report.
"""

from __future__ import annotations

import os
import shutil

import pytest
from click.testing import CliRunner

from digitbatch import jobs, storage
from digitbatch.cli import main
from digitbatch.errors import JobFailedError, JobSpecError, OverwriteRefusedError, ScoreError
from digitbatch.ingestion import ingest
from digitbatch.jobspec import load_job
from digitbatch.layout import StoreWriter
from digitbatch.training import train

from .snapshots import assert_unchanged, tree


def _notes(tmp_path):
    d = tmp_path / "somedir"
    d.mkdir()
    (d / "notes.txt").write_text("my notes, years of them")
    (d / "sub").mkdir()
    (d / "sub" / "draft.md").write_text("draft")
    return d


def _file(tmp_path):
    f = tmp_path / "thing.zarr"
    f.write_text("a user's file")
    return f


def _link(tmp_path, small_store):
    link = tmp_path / "link.zarr"
    link.symlink_to(small_store)
    return link


def _empty(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    return d


def _model_plus_note(tmp_path, shared_model):
    d = tmp_path / "m"
    shutil.copytree(shared_model, d)
    (d / "README.txt").write_text("my notes about this model")
    return d


def _plain_group(tmp_path):
    import zarr

    g = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    g.attrs["owner"] = "someone else"
    return tmp_path / "plain.zarr"


FOREIGN = {"user-folder": _notes, "user-file": _file, "empty-folder": _empty,
           "plain-zarr-group": _plain_group}


@pytest.mark.parametrize("what", list(FOREIGN), ids=lambda w: f"ingest-over-{w}")
def test_ingest_overwrite_refuses_what_digitbatch_did_not_make(what, tmp_path, idx_dir):
    out = FOREIGN[what](tmp_path)
    before = tree(tmp_path)
    with pytest.raises(OverwriteRefusedError, match=f"--overwrite: {out} is .*not a digitbatch "
                                                    f"store.*left as it is"):
        ingest(idx_dir, out, overwrite=True, scheduler="synchronous")
    assert_unchanged(before, tmp_path)


@pytest.mark.parametrize("what", ["user-folder", "user-file", "empty-folder"],
                         ids=lambda w: f"train-over-{w}")
def test_train_overwrite_refuses_before_training(what, tmp_path, small_store, monkeypatch):
    import digitbatch.training as T

    out = FOREIGN[what](tmp_path)

    def no_fit(*a, **k):
        raise AssertionError("training started before --out was checked")
    monkeypatch.setattr(T, "build", no_fit)
    before = tree(tmp_path)
    with pytest.raises(OverwriteRefusedError, match="not a digitbatch model"):
        train(small_store, out, overwrite=True, scheduler="synchronous")
    assert_unchanged(before, tmp_path)


def test_links_and_model_folders_with_user_files_are_refused(tmp_path, small_store, idx_dir,
                                                             shared_model):
    link = _link(tmp_path, small_store)
    annotated = _model_plus_note(tmp_path, shared_model)
    before = tree(tmp_path)
    with pytest.raises(OverwriteRefusedError, match="is a symbolic link"):
        ingest(idx_dir, link, overwrite=True, scheduler="synchronous")
    with pytest.raises(OverwriteRefusedError, match="folder digitbatch did not make"):
        train(small_store, annotated, overwrite=True, scheduler="synchronous")
    assert_unchanged(before, tmp_path)
    assert storage.made_by_digitbatch(small_store) == "store"


def test_a_digitbatch_output_of_another_kind_is_refused(tmp_path, small_store, shared_model,
                                                       idx_dir):
    model = tmp_path / "model"
    shutil.copytree(shared_model, model)
    store = tmp_path / "s.zarr"
    shutil.copytree(small_store, store)
    before = tree(tmp_path)
    with pytest.raises(OverwriteRefusedError, match="is a digitbatch model, not a digitbatch "
                                                    "store"):
        ingest(idx_dir, model, overwrite=True, scheduler="synchronous")
    with pytest.raises(OverwriteRefusedError, match="is a digitbatch store, not a digitbatch "
                                                    "model"):
        train(store, store, overwrite=True, scheduler="synchronous")
    assert_unchanged(before, tmp_path)


def test_what_digitbatch_made_is_still_replaced(tmp_path, idx_dir, small_store):
    out = tmp_path / "s.zarr"
    ingest(idx_dir, out, chunk_size=256, scheduler="synchronous")
    first = (out / "zarr.json").read_text()
    ingest(idx_dir, out, chunk_size=512, overwrite=True, scheduler="synchronous")
    assert (out / "zarr.json").read_text() != first
    m = tmp_path / "m"
    train(small_store, m, scheduler="synchronous")
    train(small_store, m, seed=3, overwrite=True, scheduler="synchronous")
    assert '"seed": 3' in (m / "manifest.json").read_text()
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n or ".old-" in n]


def test_cli_refuses_a_users_folder_by_name_with_exit_1(tmp_path, idx_dir):
    d = _notes(tmp_path)
    before = tree(tmp_path)
    r = CliRunner().invoke(main, ["ingest", str(idx_dir), "--out", str(d), "--overwrite",
                                  "--scheduler", "synchronous"])
    assert r.exit_code == 1, r.output
    assert "OverwriteRefusedError" in r.output and str(d) in r.output
    assert "Traceback" not in r.output
    assert_unchanged(before, tmp_path)


def test_job_score_overwrite_of_a_foreign_folder_is_refused(tmp_path, small_store, shared_model):
    d = _notes(tmp_path)
    spec = tmp_path / "job.toml"
    spec.write_text(f'[job]\nworkdir = "{tmp_path / "w"}"\n[cluster]\nscheduler = "synchronous"\n'
                    f'[score]\ninput = "{small_store}"\nmodel = "{shared_model}"\nout = "{d}"\n'
                    f'overwrite = true\n')
    before = tree(tmp_path)
    with pytest.raises(JobSpecError, match="score.overwrite: .*somedir is a folder digitbatch "
                                           "did not make"):
        load_job(spec)
    # a spec checked elsewhere: the score step itself refuses before removing anything
    job = load_job(spec, check_files=False)
    with pytest.raises(JobFailedError) as info:
        jobs.run_job(job)
    # (scoring's own overwrite check, under its lock: a named error either way)
    assert isinstance(info.value.__cause__, (OverwriteRefusedError, ScoreError))
    assert "not a digitbatch scoring output" in str(info.value.__cause__)
    assert_unchanged(before, tmp_path, "w")


def test_the_recogniser_knows_each_writers_output(tmp_path, small_store, shared_model):
    from digitbatch.report import write_report
    from digitbatch.scoring.api import score

    assert storage.made_by_digitbatch(small_store) == "store"
    assert storage.made_by_digitbatch(shared_model) == "model"
    score(small_store, model=shared_model, out=tmp_path / "p.zarr", scheduler="synchronous")
    assert storage.made_by_digitbatch(tmp_path / "p.zarr") == "predictions"
    write_report(tmp_path / "p.zarr", out=tmp_path / "rep", top_k=4)
    assert storage.made_by_digitbatch(tmp_path / "rep") == "report"
    (tmp_path / "rep" / "mine.txt").write_text("x")
    assert storage.made_by_digitbatch(tmp_path / "rep") is None
    assert storage.made_by_digitbatch(tmp_path / "nothing") is None
    with StoreWriter(tmp_path / "w.zarr", source={"kind": "test"}, chunk_size=256) as w:
        assert storage.made_by_digitbatch(w.tmp) == "store"  # being written: its owner record
    assert storage.check_replaceable(tmp_path / "absent", "store") is None


def test_a_store_holding_a_users_file_is_not_replaced(tmp_path, small_store, idx_dir):
    store = tmp_path / "s.zarr"
    shutil.copytree(small_store, store)
    (store / "my-notes.txt").write_text("notes kept with the data")
    before = tree(tmp_path)
    with pytest.raises(OverwriteRefusedError, match="s.zarr is a folder digitbatch did not make"):
        ingest(idx_dir, store, overwrite=True, scheduler="synchronous")
    assert_unchanged(before, tmp_path)
