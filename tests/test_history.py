"""digitbatch history: rows from run summaries and scoring outputs, the outlier rule, the
text, --json and HTML forms (the page checked in headless Chromium), and the job step."""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
from pathlib import Path

import pytest
from click.testing import CliRunner

from digitbatch.cli import main
from digitbatch.errors import HistoryError, JobSpecError
from digitbatch.history import FIGURES, flag_outliers, history, robust_score, table_lines
from digitbatch.scoring.api import score
from digitbatch.scoring.output import finalize, metrics_path, open_metrics

from .browser import check_page
from .conftest import make_store
from .test_report import check_html

DAY = 86400.0
T0 = 1796126400.0  # 2026-12-01T12:00:00Z
PAYLOAD = ("<img src=x onerror=\"document.title='pwned'\">"
           "<script>document.body.setAttribute('data-pwned','1')</script>")


@pytest.fixture(scope="module")
def scored(tmp_path_factory, shared_model) -> Path:
    """One real scoring output of a small labelled store."""
    d = tmp_path_factory.mktemp("history-base")
    store = make_store(d, 700, chunk_size=256)
    out = d / "p.zarr"
    score(store, model=shared_model, out=out, scheduler="synchronous")
    return out


def variant(base: Path, out: Path, day: int, **changes) -> Path:
    """A copy of scoring output ``base`` whose metrics.json has ``changes`` (``drift=...``
    sets the drift block; ``drift=None`` writes a null one, ``"absent"`` none), finished on
    night ``day``."""
    shutil.copytree(base, out)
    m = open_metrics(out)
    drift = changes.pop("drift", "absent")
    m.pop("drift", None)
    if drift != "absent":
        m["drift"] = drift
    for k, v in changes.items():
        if k == "input_path":
            m["input"] = {**m["input"], "path": v}
        else:
            m[k] = v
    finalize(out, m)
    t = T0 + day * DAY
    for name in ("metrics.json", "_SUCCESS"):
        os.utime(out / name, (t, t))
    return out


def drift_block(psi: float, status: str = "ok", expected: float | None = 0.9) -> dict:
    return {"overall": {"psi": psi, "status": status}, "expected_accuracy": expected}


@pytest.fixture(scope="module")
def nights(scored, tmp_path_factory) -> Path:
    """Six nights in a folder: images/s steady but for the sixth night (a third of it),
    older outputs without a drift block (one absent, one null), one unlabelled night with
    an expected accuracy, one input path holding a script."""
    d = tmp_path_factory.mktemp("nights")
    rates = [1000.0, 1040.0, 980.0, 1010.0, 990.0, 330.0]
    drifts = ["absent", None, drift_block(0.03), drift_block(0.04), drift_block(0.035),
              drift_block(0.05, "ok")]
    for i, (rate, drift) in enumerate(zip(rates, drifts)):
        extra = {}
        if i == 3:  # unlabelled: the expected accuracy stands in
            extra = {"accuracy": None, "n_labeled": 0}
        if i == 4:
            extra = {"input_path": f"/data/{PAYLOAD}/night.zarr"}
        variant(scored, d / f"2026-12-0{i + 1}" / "p.zarr", i, images_per_second=rate,
                seconds=round(700 / rate, 3), drift=drift, n_rejected=i % 2, **extra)
    return d


def test_robust_score_is_median_and_mad():
    prev = [10.0, 12.0, 11.0, 30.0, 9.0]
    z, med, mad = robust_score(20.0, prev, ("absolute", 0.0))
    assert med == statistics.median(prev) == 11.0
    assert mad == statistics.median([abs(v - 11.0) for v in prev]) == 1.0
    assert z == pytest.approx(9.0 / 1.4826)
    # a steady history: the floor, not a zero MAD, is the scale
    z, _, mad = robust_score(1.01, [1.0, 1.0, 1.0], ("absolute", 0.005))
    assert mad == 0 and z == pytest.approx(2.0)
    z, _, _ = robust_score(900.0, [1000.0] * 4, ("relative", 0.05))
    assert z == pytest.approx(-2.0)


def rows_of(values: list, figure: str = "images_per_second") -> list[dict]:
    return [{figure: v, **{f: None for f in FIGURES if f != figure}} for v in values]


def test_outlier_needs_min_history_and_looks_back_a_window():
    rows = rows_of([100.0, 5.0, 100.0, 101.0, 99.0, 100.0, 20.0])
    flag_outliers(rows, min_history=3, window=30)
    assert [bool(r["flags"]) for r in rows] == [False] * 6 + [True]  # 5.0 had 1 run before
    f = rows[-1]["flags"][0]
    assert f["figure"] == "images_per_second" and f["direction"] == "low"
    assert f["median"] == 100.0 and f["n_previous"] == 6
    # a window of 2: the runs [20, 5] before the last... are the baseline
    rows = rows_of([5.0, 5.0, 100.0, 100.0, 100.0])
    flag_outliers(rows, min_history=2, window=2)
    assert [bool(r["flags"]) for r in rows] == [False, False, True, False, False]
    rows = rows_of([100.0, 100.0, 100.0, 104.0])  # within the 5% floor's 3.5 scales
    flag_outliers(rows)
    assert not any(r["flags"] for r in rows)


def test_missing_figures_are_not_compared():
    rows = rows_of([0.01, None, 0.012, None, 0.011, 0.3], figure="psi")
    flag_outliers(rows)
    assert [bool(r["flags"]) for r in rows] == [False] * 5 + [True]
    assert rows[-1]["flags"][0]["n_previous"] == 3


@pytest.mark.parametrize("kw", [{"window": 0}, {"min_history": 0}, {"threshold": 0},
                                {"window": 2, "min_history": 3}, {"window": 2.5},
                                {"threshold": "3"}, {"threshold": float("nan")}])
def test_bad_rule_options(nights, kw):
    with pytest.raises(HistoryError):
        history([nights], **kw)


def test_six_nights_one_outlier_text(nights):
    r = CliRunner().invoke(main, ["history", str(nights)])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    head, table = lines[0], [re.split(r"\s{2,}", ln) for ln in lines[1:7]]
    assert re.split(r"\s{2,}", head) == ["date", "run", "input", "images", "rejects", "accuracy",
                                         "psi", "drift", "images/s", "duration", "model", "flags"]
    assert [c[0][:10] for c in table] == [f"2026-12-0{i}" for i in range(1, 7)]
    assert [c[1] for c in table] == [f"2026-12-0{i}/p.zarr" for i in range(1, 7)]
    flagged = [c for c in table if len(c) == 12]
    assert len(flagged) == 1 and flagged[0][0].startswith("2026-12-06")
    assert flagged[0][11] == "! images/s low" and flagged[0][8] == "330"
    assert table[0][6:8] == ["-", "-"]  # no drift block: psi and status "-"
    assert table[1][6:8] == ["-", "-"]  # drift: null
    assert table[2][6:8] == ["0.030", "ok"]
    assert table[3][5] == "~0.9000"  # unlabelled: expected accuracy
    assert [c[4] for c in table] == ["0", "1", "0", "1", "0", "1"]
    assert "6 runs; 1 flagged" in r.output
    assert any(ln.startswith("outlier: ") and "images/s 330 vs median 1000" in ln
               for ln in lines)


def test_six_nights_json(nights, tmp_path):
    r = CliRunner().invoke(main, ["history", str(nights), "--json", "--out", str(tmp_path / "h")])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["html"] == str(tmp_path / "h" / "history.html") and Path(doc["html"]).is_file()
    assert doc == json.loads((tmp_path / "h" / "history.json").read_text())
    assert doc["n_runs"] == 6 and doc["n_flagged"] == 1 and doc["history_version"] == 1
    runs = doc["runs"]
    assert [x["date"][:10] for x in runs] == sorted(x["date"][:10] for x in runs)
    assert [x["flags"] for x in runs[:5]] == [[]] * 5
    (f,) = runs[5]["flags"]
    assert f["figure"] == "images_per_second" and f["value"] == 330.0
    assert f["median"] == 1000.0 and f["direction"] == "low" and f["z"] < -3.5
    assert [x["psi"] for x in runs] == [None, None, 0.03, 0.04, 0.035, 0.05]
    assert [x["drift_status"] for x in runs] == [None, None, "ok", "ok", "ok", "ok"]
    assert runs[3]["accuracy"] is None and runs[3]["expected_accuracy"] == 0.9
    assert [x["n_rejected"] for x in runs] == [0, 1, 0, 1, 0, 1]
    assert runs[1]["reject_rate"] == pytest.approx(1 / (runs[1]["n_images"] + 1))
    m = open_metrics(Path(runs[0]["source"]))
    assert runs[0]["model_sha256"] == m["model"]["sha256"] and runs[0]["n_images"] == 700
    assert runs[0]["seconds"] == m["seconds"] and runs[0]["kind"] == "output"
    assert doc["rule"]["threshold"] == 3.5 and doc["rule"]["window"] == 30


def test_six_nights_html_in_the_browser(nights, tmp_path):
    r = history([nights], out=tmp_path / "h")
    assert Path(r.html) == tmp_path / "h" / "history.html"
    assert set(r.plots) == {"images_per_second", "accuracy", "reject_rate", "psi"}
    page = check_html(r.html)  # parses; no script, no external URL; PNGs as data: URIs
    assert len(page.imgs) == 4
    text = Path(r.html).read_text()
    assert PAYLOAD not in text and "&lt;script&gt;" in text
    seen = check_page(r.html, sections=("runs", "outliers", "trends", "rule"),
                      headings=("digitbatch run history", "Runs", "Outliers", "Trends"),
                      min_images=4)
    assert f"/data/{PAYLOAD}/night.zarr" in seen.text  # shown as text, not run
    assert "images/s 330 is low against the median 1000" in seen.text
    assert json.loads((tmp_path / "h" / "history.json").read_text())["n_flagged"] == 1


def test_run_summaries_and_their_outputs_count_once(nights, scored, tmp_path):
    """A summary naming an output is one row (the output is not read twice); its job name
    (untrusted text) is escaped; the job's wall time is the duration."""
    out = nights / "2026-12-03" / "p.zarr"
    summary = {"job": f"nightly{PAYLOAD}", "spec": "/x.toml", "overrides": [], "workdir": "/w",
               "digitbatch_version": "0.1.0", "started": "2026-12-02T23:00:00+00:00",
               "outcome": "succeeded", "seconds": 42.5, "cluster": {}, "error": None,
               "steps": [{"name": "score", "outcome": "succeeded", "seconds": 1.0,
                          "outputs": {"predictions": str(out)}, "metrics": None, "result": {}}]}
    s = nights / "2026-12-03" / "nightly.run.json"
    s.write_text(json.dumps(summary))
    try:
        r = history([nights, s, out], out=tmp_path / "h")
        assert len(r.rows) == 6
        row = next(x for x in r.rows if x["kind"] == "run")
        assert row["job"] == f"nightly{PAYLOAD}" and row["seconds"] == 42.5
        assert row["date"] == "2026-12-02T23:00:00+00:00" and row["outputs"] == [str(out)]
        assert row["psi"] == 0.03 and row["images_per_second"] == 980.0
        check_page(r.html, sections=("runs",), min_images=4)
        # the output rewritten after the summary was written: not that run's figures
        t = s.stat().st_mtime + 60
        os.utime(metrics_path(out), (t, t))
        r = history([nights])
        assert len(r.rows) == 7
        row = next(x for x in r.rows if x["kind"] == "run")
        assert row["n_images"] is None and row["outputs"] == []
    finally:
        s.unlink()
        t = T0 + 2 * DAY
        os.utime(metrics_path(out), (t, t))


def test_a_run_that_scored_several_inputs(nights, tmp_path):
    """A ``[score] inputs`` run: its outputs' figures summed, accuracy weighted by labelled
    rows, the largest PSI."""
    outs = [nights / "2026-12-01" / "p.zarr", nights / "2026-12-03" / "p.zarr"]
    ms = [open_metrics(o) for o in outs]
    s = tmp_path / "many.run.json"
    s.write_text(json.dumps({
        "job": "many", "started": "2026-12-08T01:00:00+00:00", "outcome": "succeeded",
        "seconds": 9.0, "error": None,
        "steps": [{"name": "score", "outcome": "succeeded", "seconds": 8.0,
                   "outputs": {"predictions": [str(o) for o in outs]}, "result": {}}]}))
    (row,) = history([s]).rows
    assert row["input"] == "2 inputs" and row["outputs"] == [str(o) for o in outs]
    assert row["n_images"] == 1400 and row["n_rejected"] == 0
    assert row["accuracy"] == pytest.approx(
        sum(m["accuracy"] * m["n_labeled"] for m in ms) / sum(m["n_labeled"] for m in ms))
    assert row["psi"] == 0.03 and row["drift_status"] == "ok"
    assert row["images_per_second"] == pytest.approx(1400 / sum(m["seconds"] for m in ms))
    assert row["seconds"] == 9.0 and row["model_sha256"] == ms[0]["model"]["sha256"]


def test_failed_run_and_skipped_output(nights, tmp_path):
    d = tmp_path / "more"
    d.mkdir()
    (d / "bad.run.json").write_text("{not json")
    (d / "nightly.run.json").write_text(json.dumps({
        "job": "nightly", "started": "2026-12-07T01:00:00+00:00", "outcome": "failed",
        "seconds": 3.0, "error": {"step": "score", "type": "ScoreError", "message": "boom"},
        "steps": [{"name": "score", "outcome": "failed", "seconds": 2.0}]}))
    half = d / "half.zarr"
    shutil.copytree(nights / "2026-12-01" / "p.zarr", half)
    (half / "_SUCCESS").unlink()
    r = history([nights, d])
    assert len(r.rows) == 7
    failed = r.rows[-1]
    assert failed["outcome"] == "failed" and failed["error"] == "score: ScoreError: boom"
    assert failed["n_images"] is None and failed["flags"] == []
    reasons = {Path(s["path"]).name: s["reason"] for s in r.skipped}
    assert set(reasons) == {"bad.run.json", "half.zarr"}
    assert "resume" in reasons["half.zarr"]
    lines = table_lines(r.to_dict())
    assert any("nightly (failed)" in ln for ln in lines)
    doc = r.to_dict()
    doc["runs"][0]["input"] = "/in/\x1b[2Jx\ny"  # a terminal escape in a path: shown, not sent
    assert not any("\x1b" in ln or "\n" in ln for ln in table_lines(doc))
    assert any(ln.startswith("skipped ") and "half.zarr" in ln for ln in lines)


def test_bad_paths(tmp_path, small_store):
    with pytest.raises(HistoryError, match="no such file"):
        history([tmp_path / "nope"])
    (tmp_path / "x.json").write_text('{"a": 1}')
    with pytest.raises(HistoryError, match="not a run summary"):
        history([tmp_path / "x.json"])
    (tmp_path / "y.json").write_text("nope")
    with pytest.raises(HistoryError, match="not readable JSON"):
        history([tmp_path / "y.json"])
    with pytest.raises(HistoryError, match="Zarr store"):
        history([small_store])
    (tmp_path / "empty").mkdir()
    with pytest.raises(HistoryError, match="no run to show"):
        history([tmp_path / "empty"])
    with pytest.raises(HistoryError, match="no runs given"):
        history([])
    r = CliRunner().invoke(main, ["history", str(tmp_path / "nope")])
    assert r.exit_code == 1 and "HistoryError" in r.output


def test_out_is_a_file_or_someone_elses_folder(nights, tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(HistoryError, match="is a file"):
        history([nights], out=tmp_path / "f")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "psi.png").write_text("a user's file")
    with pytest.raises(HistoryError, match="not a history folder"):
        history([nights], out=tmp_path / "mine")
    assert (tmp_path / "mine" / "psi.png").read_text() == "a user's file"
    history([nights], out=tmp_path / "h")
    history([nights], out=tmp_path / "h")  # an earlier history is replaced


# --- the job step -------------------------------------------------------------------


def test_history_job_step_over_three_nights(tmp_path, shared_model):
    """Each night scores into its own folder and runs the history step: the third night's
    history has the two earlier run summaries (their outputs once) and its own output."""
    from digitbatch.jobs import load_job, run_job

    store = make_store(tmp_path, 600, chunk_size=256)
    spec = tmp_path / "nightly.toml"
    spec.write_text(f"""
[job]
name = "nightly"
workdir = "{tmp_path / 'w'}"
summary = "{tmp_path / 'w' / '{date}' / 'nightly.run.json'}"
[score]
input = "{store}"
model = "{shared_model}"
out = "{tmp_path / 'w' / '{date}' / 'p.zarr'}"
[history]
""")
    for day in ("2026-12-01", "2026-12-02", "2026-12-03"):
        summary = run_job(load_job(spec, [f"job.date={day}", "cluster.scheduler=synchronous"]))
    step = summary["steps"][-1]
    assert step["name"] == "history" and step["outcome"] == "succeeded"
    # (3 runs: the third has 2 before it, fewer than min_history, so none is judged)
    assert step["result"]["n_runs"] == 3 and step["result"]["n_flagged"] == 0
    html = Path(step["outputs"]["html"])
    assert html == tmp_path / "w" / "history" / "history.html"
    doc = json.loads((html.parent / "history.json").read_text())
    assert [x["kind"] for x in doc["runs"]] == ["run", "run", "output"]
    assert [x["job"] for x in doc["runs"][:2]] == ["nightly", "nightly"]
    assert doc["runs"][2]["source"] == str(tmp_path / "w" / "2026-12-03" / "p.zarr")
    check_page(html, sections=("runs", "trends"), min_images=3)
    r = CliRunner().invoke(main, ["history", str(tmp_path / "w")])
    assert r.exit_code == 0 and "3 runs; 0 flagged" in r.output, r.output


def test_history_job_spec_checks(tmp_path):
    from digitbatch.jobs import load_job

    spec = tmp_path / "h.toml"
    spec.write_text('[history]\nruns = ["missing"]\n')
    with pytest.raises(JobSpecError, match="history.runs"):
        load_job(spec, cwd=tmp_path)
    spec.write_text('[history]\nruns = "missing"\n')
    with pytest.raises(JobSpecError, match="list of paths"):
        load_job(spec, cwd=tmp_path)
    spec.write_text('[history]\nthreshold = "x"\n')
    with pytest.raises(JobSpecError, match="history.threshold"):
        load_job(spec, cwd=tmp_path)
    (tmp_path / "runs").mkdir()
    job = load_job(spec, ["history.threshold=4.5", f"history.runs={tmp_path / 'runs'}"],
                   cwd=tmp_path)
    assert job.params["history"]["runs"] == [tmp_path / "runs"]
    assert job.params["history"]["threshold"] == 4.5
    assert job.params["history"]["out"] == tmp_path / "history"
    (tmp_path / "history").mkdir()
    (tmp_path / "history" / "notes.txt").write_text("mine")
    with pytest.raises(JobSpecError, match="history.out .* not a history"):
        load_job(spec, ["history.threshold=4.5"], cwd=tmp_path)
