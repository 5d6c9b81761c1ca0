"""``export``: a scoring output as Parquet or CSV, read back by DuckDB as a consumer would.

Every table is compared with the Zarr output it came from (row count, keys,
predictions, margins, probabilities, labels), the counts by (label, pred)
with metrics.json's confusion matrix, and the Parquet row groups with the
output's chunks (the ragged last one too). CSV keys that a spreadsheet would
run as formulas come out escaped, and undo to the keys.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from digitbatch import tables
from digitbatch.cli import main
from digitbatch.digits import UNKNOWN_LABEL
from digitbatch.errors import ExportError, ExportExistsError, IncompleteOutputError, JobSpecError
from digitbatch.export import export_predictions
from digitbatch.jobs import describe, load_job, run_job
from digitbatch.layout import StoreWriter, open_store
from digitbatch.scoring.api import score
from digitbatch.scoring.output import open_predictions

from .conftest import STORE_SHAPES, synthetic_digits
from .test_ingest import digit_members, make_tar, png_bytes

duckdb = pytest.importorskip("duckdb")

INJECTED = "=cmd|' /C calc'!A0"
# keys a spreadsheet would take for a formula (or that start with the escape itself)
DANGEROUS = [INJECTED, "+1+2", "-2+3", "@SUM(A1:A2)", "'quoted", "\tTAB=1", "\rCR",
             "\uff1dFULLWIDTH()", "a=safe", "3-4", " =leading space"]


def _sql(query: str, *args):
    return duckdb.sql(query, params=list(args) or None).fetchall() if args else \
        duckdb.sql(query).fetchall()


def _table(path: Path) -> dict[str, list]:
    """Every column of an export, as DuckDB reads the file plainly (in file order)."""
    rel = duckdb.sql(f"select * from '{path}'")
    rows = rel.fetchall()
    return {name: [r[i] for r in rows] for i, name in enumerate(rel.columns)}


def _unescape(cell: str) -> str:
    return cell[1:] if cell.startswith("'") else cell


def _confusion(path: Path, k: int, where: str = "label is not null", label: str = "label"):
    m = np.zeros((k, k), np.int64)
    for t, p, c in _sql(f"select {label}, pred, count(*) from '{path}' where {where} "
                        f"group by all"):
        m[int(t), int(p)] = c
    return m.tolist()


@pytest.fixture(scope="module")
def scored(tmp_path_factory, shaped_stores, shared_model):
    """The 4-chunk store (ragged last chunk, a fifth of the labels wrong) scored with --proba."""
    out = tmp_path_factory.mktemp("export") / "pred.zarr"
    score(shaped_stores["4-chunks-ragged"], model=shared_model, out=out, proba=True,
          scheduler="synchronous")
    return out


@pytest.fixture(scope="module")
def archive_scored(tmp_path_factory, shared_model):
    """An archive scored directly, with a member named as a formula and unlabelled members."""
    tmp = tmp_path_factory.mktemp("export-archive")
    members, x, _ = digit_members(600, seed=5)
    members[INJECTED] = png_bytes(x[0])  # top level: no folder label
    members["@SUM(1+1)*cmd|' -C calc'!A0.png"] = png_bytes(x[1])
    members["3/+1.png"] = png_bytes(x[2])
    members["bad/broken.png"] = png_bytes(x[3])[:30]  # a reject: not a row
    src = make_tar(tmp / "scans.tar", members, mode="w")
    out = tmp / "pred.zarr"
    score(src, model=shared_model, out=out, chunk_size=256, scheduler="synchronous")
    return out


# --- the table equals the output -----------------------------------------------------


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_duckdb_reads_the_export_and_it_equals_the_output(scored, shaped_stores, tmp_path,
                                                          fmt):
    out = tmp_path / f"pred.{fmt}"
    r = export_predictions(scored, out=out, proba=True)
    p = open_predictions(scored)
    s = open_store(shaped_stores["4-chunks-ragged"])
    t = _table(out)
    classes = p.metrics["classes"]
    assert list(t) == ["key", "pred", "margin", "label"] + [f"proba_{c}" for c in classes]
    assert r.n_rows == len(t["key"]) == _sql(f"select count(*) from '{out}'")[0][0] == 1000
    assert t["key"] == [str(k) for k in p.keys[:]]
    assert t["pred"] == p.pred[:].tolist()
    # float32 values: Parquet holds them, CSV writes each so that it reads back exactly
    np.testing.assert_array_equal(np.asarray(t["margin"], np.float32), p.margin[:])
    for j, c in enumerate(classes):
        np.testing.assert_array_equal(np.asarray(t[f"proba_{c}"], np.float32), p.proba[:, j])
    labels = s.labels[:]
    assert t["label"] == [None if v == UNKNOWN_LABEL else int(v) for v in labels]
    assert r.labels == "store" and r.n_chunks == 4 and r.format == fmt


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
@pytest.mark.parametrize("shape", ["1-chunk-short", "5-chunks-full", "9-chunks-ragged"])
def test_counts_by_label_and_pred_are_the_confusion_matrix(shaped_stores, shared_model,
                                                           tmp_path, shape, fmt):
    pred = tmp_path / "p.zarr"
    m = score(shaped_stores[shape], model=shared_model, out=pred,
              scheduler="synchronous").metrics
    out = tmp_path / f"p.{fmt}"
    export_predictions(pred, out=out)
    k = len(m["classes"])
    assert _confusion(out, k) == m["confusion_matrix"]
    assert _sql(f"select count(*) from '{out}'")[0][0] == m["n_images"] == STORE_SHAPES[shape][0]
    assert np.trace(m["confusion_matrix"]) < m["n_labeled"]  # (the labels are noisy)


def test_one_row_group_per_output_chunk_the_last_ragged(shaped_stores, shared_model, tmp_path):
    pred = tmp_path / "p.zarr"
    score(shaped_stores["9-chunks-ragged"], model=shared_model, out=pred,
          scheduler="synchronous")
    out = tmp_path / "p.parquet"
    export_predictions(pred, out=out)
    groups = _sql(f"select distinct row_group_id, row_group_num_rows "
                  f"from parquet_metadata('{out}') order by 1")
    bounds = open_predictions(pred).chunk_bounds()
    assert [n for _, n in groups] == [b - a for a, b in bounds] == [256] * 8 + [152]


def test_detect_digit_counts_are_the_binary_confusion_matrix(shaped_stores, tmp_path):
    from digitbatch.training import train

    store = shaped_stores["4-chunks-ragged"]
    model = train(store, tmp_path / "detect-3", model="detect-3").model_path
    pred = tmp_path / "p.zarr"
    m = score(store, model=model, out=pred, proba=True, scheduler="synchronous").metrics
    out = tmp_path / "p.parquet"
    r = export_predictions(pred, out=out, proba=True)
    assert r.columns == ["key", "pred", "margin", "label", "proba_0", "proba_1"]
    # label is the digit the input holds; pred is the model's class (1 = "is 3")
    assert _confusion(out, 2, label="(label = 3)::int") == m["confusion_matrix"]
    assert r.metadata["target"] == "is-3"


# --- metadata ------------------------------------------------------------------------


def test_parquet_metadata_names_the_run_model_and_input(scored, tmp_path):
    out = tmp_path / "p.parquet"
    export_predictions(scored, out=out)
    m = open_predictions(scored).metrics
    kv = {k.decode(): v.decode() for k, v in
          _sql(f"select key, value from parquet_kv_metadata('{out}')")}
    assert kv["digitbatch.run_id"] == m["run_id"] and len(m["run_id"]) == 32
    assert kv["digitbatch.model_sha256"] == m["model"]["sha256"]
    assert kv["digitbatch.input_checksum"] == m["input"]["checksum"]
    whole = json.loads(kv["digitbatch.export"])
    assert whole["run_id"] == m["run_id"] and whole["input"] == m["input"]
    assert whole["columns"] == ["key", "pred", "margin", "label"]
    assert whole["predictions"] == str(Path(scored).resolve())


def test_csv_stays_plain_and_its_sidecar_holds_the_metadata(scored, tmp_path):
    out = tmp_path / "p.csv"
    r = export_predictions(scored, out=out)
    m = open_predictions(scored).metrics
    text = out.read_text()
    assert text.splitlines()[0] == '"key","pred","margin","label"'  # a header, then rows
    assert r.sidecar == tmp_path / "p.csv.json"
    side = json.loads(r.sidecar.read_text())
    assert (side["run_id"], side["model_sha256"], side["input_checksum"]) == (
        m["run_id"], m["model"]["sha256"], m["input"]["checksum"])
    assert side["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert side["n_rows"] == 1000 and side["file"] == "p.csv"
    assert side["types"] == {"key": "string", "pred": "int8", "margin": "float",
                             "label": "int8"}


# --- formula injection ---------------------------------------------------------------


def test_archive_keys_that_are_formulas_are_neutralised_in_csv(archive_scored, tmp_path):
    out = tmp_path / "p.csv"
    r = export_predictions(archive_scored, out=out)
    p = open_predictions(archive_scored)
    keys = [str(k) for k in p.keys[:]]
    assert INJECTED in keys
    with open(out, newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    cells = [row[0] for row in rows]
    assert f"'{INJECTED}" in cells and INJECTED not in cells
    assert not [c for c in cells if c[:1] in "=+-@\t\r"]
    assert [_unescape(c) for c in cells] == keys
    assert r.n_escaped == 2  # the =cmd and @SUM members; 3/+1.png is not one
    # DuckDB sees the same escaped text; Parquet keeps the key itself
    assert f"'{INJECTED}" in _table(out)["key"]
    export_predictions(archive_scored, out=tmp_path / "p.parquet")
    assert _table(tmp_path / "p.parquet")["key"] == keys


def test_archive_labels_come_from_the_output(archive_scored, tmp_path):
    out = tmp_path / "p.parquet"
    r = export_predictions(archive_scored, out=out)
    p = open_predictions(archive_scored)
    t = _table(out)
    assert r.labels == "output"
    assert t["label"] == [None if v == UNKNOWN_LABEL else int(v) for v in p.labels[:]]
    assert t["label"][t["key"].index(INJECTED)] is None  # no folder: no label
    assert _confusion(out, 10) == p.metrics["confusion_matrix"]
    assert len(t["key"]) == p.metrics["n_images"] == 603  # the broken member is no row


def _store_with_keys(path: Path, keys: list[str], chunk_size: int = 256) -> Path:
    n = 300
    x, y = synthetic_digits(n, seed=11)
    names = keys + [f"k{i}" for i in range(n - len(keys))]
    with StoreWriter(path, source={"kind": "test"}, chunk_size=chunk_size) as w:
        w.append(x, y, names)
        w.finish()
    return path


def test_store_keys_that_are_formulas_are_neutralised_and_undo(tmp_path, shared_model):
    store = _store_with_keys(tmp_path / "s.zarr", DANGEROUS)
    pred = tmp_path / "p.zarr"
    score(store, model=shared_model, out=pred, scheduler="synchronous")
    out = tmp_path / "p.csv"
    r = export_predictions(pred, out=out)
    with open(out, newline="") as fh:
        cells = [row[0] for row in list(csv.reader(fh))[1:]]
    want = {INJECTED: "'" + INJECTED, "+1+2": "'+1+2", "-2+3": "'-2+3",
            "@SUM(A1:A2)": "'@SUM(A1:A2)", "'quoted": "''quoted", "\tTAB=1": "'\tTAB=1",
            "\rCR": "'\rCR", "\uff1dFULLWIDTH()": "'\uff1dFULLWIDTH()", "a=safe": "a=safe",
            "3-4": "3-4", " =leading space": " =leading space"}
    assert cells[:len(DANGEROUS)] == [want[k] for k in DANGEROUS]
    assert [_unescape(c) for c in cells[:len(DANGEROUS)]] == DANGEROUS
    assert r.n_escaped == 8
    # numeric cells are numbers, never escaped
    with open(out, newline="") as fh:
        for row in list(csv.reader(fh))[1:]:
            int(row[1]), float(row[2])


# --- refusals ------------------------------------------------------------------------


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_unfinished_output_is_refused_and_nothing_written(scored, tmp_path, fmt):
    pred = _copy(scored, tmp_path / "p.zarr")
    (pred / "_SUCCESS").unlink()
    out = tmp_path / f"x.{fmt}"
    with pytest.raises(IncompleteOutputError, match="_SUCCESS"):
        export_predictions(pred, out=out)
    pred2 = _copy(scored, tmp_path / "q.zarr")
    (pred2 / "_commits" / "chunk-000003.json").unlink()  # the ragged last chunk
    with pytest.raises(IncompleteOutputError, match=r"\[3\]"):
        export_predictions(pred2, out=out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.zarr", "q.zarr"]


def test_proba_refused_when_the_run_wrote_none(archive_scored, tmp_path):
    with pytest.raises(ExportError, match="scored without --proba"):
        export_predictions(archive_scored, out=tmp_path / "p.parquet", proba=True)
    assert not (tmp_path / "p.parquet").exists()


@pytest.mark.parametrize("name", ["p.xlsx", "p.json", "p", "p.parquet.gz"])
def test_other_formats_are_refused_by_name(scored, tmp_path, name):
    with pytest.raises(ExportError, match=rf"/{re.escape(name)}'.*\.parquet or \.csv"):
        export_predictions(scored, out=tmp_path / name)


def test_existing_out_needs_overwrite_and_is_replaced_whole(scored, archive_scored, tmp_path):
    out = tmp_path / "p.csv"
    export_predictions(scored, out=out)
    with pytest.raises(ExportExistsError, match="--overwrite"):
        export_predictions(archive_scored, out=out)
    r = export_predictions(archive_scored, out=out, overwrite=True)
    assert r.n_rows == 603 == len(_table(out)["key"])
    side = json.loads((tmp_path / "p.csv.json").read_text())
    assert side["run_id"] == open_predictions(archive_scored).metrics["run_id"]
    (tmp_path / "d.parquet").mkdir()
    with pytest.raises(ExportError, match="is a directory"):
        export_predictions(scored, out=tmp_path / "d.parquet", overwrite=True)


def test_out_inside_the_output_or_a_missing_output_is_refused(scored, tmp_path):
    with pytest.raises(ExportError, match="inside the scoring output"):
        export_predictions(scored, out=Path(scored) / "x.parquet")
    export_predictions(scored, out=tmp_path / "new" / "x.parquet")  # folders are made
    with pytest.raises(ExportError, match="does not exist: give the scoring output"):
        export_predictions(tmp_path / "nothing.zarr", out=tmp_path / "x.parquet")
    with pytest.raises(ExportError, match="not a digitbatch scoring output"):
        export_predictions(tmp_path, out=tmp_path / "x.parquet")


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_a_failure_midway_leaves_no_file_and_the_old_one_intact(scored, tmp_path, monkeypatch,
                                                                fmt):
    out = tmp_path / f"p.{fmt}"
    export_predictions(scored, out=out)
    before = out.read_bytes()
    side = tmp_path / "p.csv.json"
    side_before = side.read_bytes() if fmt == "csv" else None
    real = tables.record_batch
    calls = []

    def fail_on_third(*a, **k):
        calls.append(1)
        if len(calls) == 3:  # on progress: the third chunk
            raise OSError("disk full (injected)")
        return real(*a, **k)

    monkeypatch.setattr(tables, "record_batch", fail_on_third)
    with pytest.raises(OSError, match="injected"):
        export_predictions(scored, out=out, overwrite=True)
    assert out.read_bytes() == before
    if fmt == "csv":
        assert side.read_bytes() == side_before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [out.name] + ([side.name] if fmt == "csv" else []))


# --- the labels' store ---------------------------------------------------------------


def test_moved_store_needs_store_or_no_labels(shaped_stores, shared_model, tmp_path):
    store = shutil.copytree(shaped_stores["2-chunks-ragged"], tmp_path / "s.zarr")
    pred = tmp_path / "p.zarr"
    score(store, model=shared_model, out=pred, scheduler="synchronous")
    moved = tmp_path / "moved.zarr"
    store.rename(moved)
    with pytest.raises(ExportError, match=r"does not exist \(moved or deleted\?\).*--store.*"
                                          r"--no-labels"):
        export_predictions(pred, out=tmp_path / "a.parquet")
    r = export_predictions(pred, out=tmp_path / "a.parquet", store=moved)
    assert r.labels == "store" and None not in _table(tmp_path / "a.parquet")["label"]
    r = export_predictions(pred, out=tmp_path / "b.parquet", labels=False)
    assert r.columns == ["key", "pred", "margin"] and r.labels == "omitted"
    assert list(_table(tmp_path / "b.parquet")) == ["key", "pred", "margin"]
    with pytest.raises(ExportError, match="is not the store"):
        export_predictions(pred, out=tmp_path / "c.parquet",
                           store=shaped_stores["3-chunks-ragged"])
    with pytest.raises(ExportError, match="drop one of the two"):
        export_predictions(pred, out=tmp_path / "c.parquet", store=moved, labels=False)


def test_archive_output_refuses_a_store(archive_scored, scored, tmp_path):
    with pytest.raises(ExportError, match="holds: drop the store"):
        export_predictions(archive_scored, out=tmp_path / "a.csv", store=scored)


def test_unlabelled_input_gives_an_empty_label_column(tmp_path, shared_model):
    x, _ = synthetic_digits(300, seed=2)
    with StoreWriter(tmp_path / "u.zarr", source={"kind": "test"}, chunk_size=256) as w:
        w.append(x, np.full(300, UNKNOWN_LABEL, np.int8), [f"u{i}" for i in range(300)])
        w.finish()
    pred = tmp_path / "p.zarr"
    score(tmp_path / "u.zarr", model=shared_model, out=pred, scheduler="synchronous")
    shutil.rmtree(tmp_path / "u.zarr")  # not read: no row has a label
    r = export_predictions(pred, out=tmp_path / "p.csv")
    assert r.labels == "none"
    assert _sql(f"select count(*), count(label) from '{tmp_path / 'p.csv'}'")[0] == (300, 0)


# --- the command and the job step ----------------------------------------------------


def test_cli_export_prints_one_line_and_exits_by_outcome(scored, tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["export", str(scored), "--out", str(tmp_path / "p.csv"),
                             "--proba"])
    assert r.exit_code == 0, r.output
    assert r.output.count("\n") == 1
    assert r.output.startswith(f"exported 1,000 rows -> {tmp_path / 'p.csv'} (csv, ")
    assert "metadata in" in r.output
    r = runner.invoke(main, ["export", str(scored), "--out", str(tmp_path / "p.csv")])
    assert r.exit_code == 1 and "ExportExistsError" in r.output
    r = runner.invoke(main, ["export", str(scored)])
    assert r.exit_code == 2 and "--out" in r.output
    pred = _copy(scored, tmp_path / "u.zarr")
    (pred / "_SUCCESS").unlink()
    r = runner.invoke(main, ["export", str(pred), "--out", str(tmp_path / "u.parquet")])
    assert r.exit_code == 1 and "IncompleteOutputError" in r.output


def _job(tmp_path: Path, store: Path, model: Path, export: str) -> Path:
    spec = tmp_path / "job.toml"
    spec.write_text(f"""
[job]
workdir = "{tmp_path / 'work'}"
[cluster]
scheduler = "synchronous"
[score]
input = "{store}"
model = "{model}"
proba = true
overwrite = true
[export]
{export}
""")
    return spec


def test_export_job_step_writes_the_table(shaped_stores, shared_model, tmp_path):
    store = shaped_stores["3-chunks-ragged"]
    spec = _job(tmp_path, store, shared_model, 'out = "{}"\nproba = true\noverwrite = true'
                .format(tmp_path / "work" / "p.csv"))
    job = load_job(spec)
    assert describe(job)[-1] == (f"export: {tmp_path / 'work' / 'predictions.zarr'} -> "
                                 f"{tmp_path / 'work' / 'p.csv'} (with proba)")
    for _ in range(2):  # the rerun replaces it
        s = run_job(load_job(spec))
    step = s["steps"][-1]
    assert (step["name"], step["outcome"]) == ("export", "succeeded")
    assert step["result"]["n_rows"] == 700 and step["result"]["format"] == "csv"
    assert step["outputs"]["sidecar"] == tmp_path / "work" / "p.csv.json"
    m = json.loads((tmp_path / "work" / "predictions.zarr" / "metrics.json").read_text())
    assert _confusion(tmp_path / "work" / "p.csv", 10) == m["confusion_matrix"]
    assert "proba_9" in _table(tmp_path / "work" / "p.csv")
    r = CliRunner().invoke(main, ["run", str(spec), "--set", "export.overwrite=false"])
    assert r.exit_code == 2 and "export.out" in r.output and "overwrite" in r.output


@pytest.mark.parametrize("export, message", [
    ('out = "p.xlsx"', r"export.out: .*\.parquet or \.csv"),
    ('labels = false\nstore = "/tmp"', "drop one of the two"),
    ('predictions = "/nonexistent/p.zarr"\n', r"export.predictions .* does not exist"),
    ('out = "{tmp}/d.csv"', "export.out .* is a directory"),
    ('proba = "yes"', "export.proba must be true or false"),
    ('top = 3', r"unknown key export.top"),
])
def test_export_job_step_is_checked_before_anything_runs(shaped_stores, shared_model, tmp_path,
                                                         export, message):
    (tmp_path / "d.csv").mkdir()
    spec = _job(tmp_path, shaped_stores["1-chunk-short"], shared_model,
                export.replace("{tmp}", str(tmp_path)))
    with pytest.raises(JobSpecError, match=message):
        load_job(spec)
    assert not (tmp_path / "work").exists()


def test_export_to_a_url_is_uploaded_whole(scored, tmp_path):
    import fsspec

    fs = fsspec.filesystem("memory")
    r = export_predictions(scored, out="memory://exports/t/p.csv")
    assert r.sidecar is not None and str(r.sidecar) == "memory://exports/t/p.csv.json"
    local = tmp_path / "p.csv"
    local.write_bytes(fs.cat("/exports/t/p.csv"))
    assert len(_table(local)["key"]) == 1000
    side = json.loads(fs.cat("/exports/t/p.csv.json"))
    assert side["sha256"] == hashlib.sha256(local.read_bytes()).hexdigest()
    with pytest.raises(ExportExistsError):
        export_predictions(scored, out="memory://exports/t/p.csv")
    fs.rm("/exports", recursive=True)
