"""A run seen from outside: progress lines in a scheduled run's log, JSON logs,
the Prometheus metrics file, exit codes (logs.py, progressbar.py, metricsfile.py,
cli_observe.py)."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from digitbatch import logs, metricsfile
from digitbatch.cli import main
from digitbatch.errors import MetricsFileError, ScoreError
from digitbatch.layout import StoreWriter
from digitbatch.progressbar import Progress, cleared

from .conftest import synthetic_digits

REPO = Path(__file__).resolve().parents[1]
PROGRESS = re.compile(r"score: ([\d,]+)/([\d,]+) images \((\d+)%\), ([\d,.]+) images/s, "
                      r"ETA (\d+:\d\d:\d\d)")


# --- helpers ----------------------------------------------------------------------


def repeated_store(path: Path, n: int, *, chunk_size: int = 32768) -> Path:
    """``n`` images: one chunk of synthetic digits repeated (noise-free, so LZ4
    makes it small and quick to write), the last chunk ragged."""
    x, y = synthetic_digits(chunk_size, seed=3)
    x[x < 100] = 0
    with StoreWriter(path, source={"kind": "test-repeated"}, chunk_size=chunk_size) as w:
        done = 0
        while done < n:
            take = min(chunk_size, n - done)
            w.append(x[:take], y[:take], [f"r{i}" for i in range(done, done + take)])
            done += take
        w.finish(splits={"all": (0, n)})
    return path


def cli(*args, env=None, cwd=None) -> subprocess.CompletedProcess:
    """The CLI as a scheduler runs it: its own process, stderr a pipe (not a terminal)."""
    return subprocess.run([sys.executable, "-m", "digitbatch", *map(str, args)],
                          capture_output=True, text=True, timeout=240, cwd=cwd,
                          env={**os.environ, **(env or {})})


def read_metrics(path: Path) -> dict:
    """{(name, command, job, step): value} as Prometheus' own parser reads the file."""
    out = {}
    for family in text_string_to_metric_families(path.read_text()):
        assert family.type == "gauge", family
        for s in family.samples:
            out[(s.name, s.labels["command"], s.labels["job"], s.labels.get("step"))] = s.value
    return out


def figures(path: Path, command: str, job: str) -> dict:
    return {k[0].removeprefix("digitbatch_"): v for k, v in read_metrics(path).items()
            if k[1:3] == (command, job) and k[3] is None}


def json_lines(text: str) -> list[dict]:
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines
    return [json.loads(line) for line in lines]  # every line parses, or this fails


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    from .conftest import trained_model

    return trained_model(tmp_path_factory.mktemp("obs-model"), seed=1)


# --- the acceptance: a scheduled score of a large store -----------------------------


def _scheduled_score(tmp_path: Path, model: Path, n: int, interval: float):
    store = repeated_store(tmp_path / "big.zarr", n)
    prom = tmp_path / "score.prom"
    r = cli("score", store, "--model", model, "--out", tmp_path / "p.zarr", "--scheduler",
            "synchronous", "--progress-interval", interval, "--metrics-file", prom)
    assert r.returncode == 0, r.stderr
    lines = [m for m in map(PROGRESS.search, r.stderr.splitlines()) if m]
    assert lines, r.stderr  # progress while it ran: done/total, percent, rate, ETA
    for m in lines:
        done, total = (int(g.replace(",", "")) for g in m.groups()[:2])
        assert total == n and 0 <= done <= n
    assert any(float(m[4].replace(",", "")) > 0 for m in lines), r.stderr
    assert re.search(rf"score: {n:,}/{n:,} images \(100%\), [\d,.]+ images/s, in ", r.stderr)
    metrics = json.loads((tmp_path / "p.zarr" / "metrics.json").read_text())
    f = figures(prom, "score", "score")
    assert f["images_scored"] == metrics["n_scored_this_run"] == n
    assert f["images_rejected"] == metrics["n_rejected"]
    assert f["images_per_second"] == pytest.approx(metrics["images_per_second"])
    assert f["accuracy"] == pytest.approx(metrics["accuracy"])
    assert (f["exit_status"], f["inputs_scored"], f["inputs_failed"]) == (0, 1, 0)
    assert f["last_success_timestamp_seconds"] == f["last_run_timestamp_seconds"]
    assert f["run_duration_seconds"] >= metrics["seconds"]
    return prom


def test_scheduled_score_of_a_million_images(tmp_path, model):
    """The issue's case, in make test: 1M images. An idle machine here scores them in
    about a second, so the interval is 0.1 s to see lines while it runs."""
    _scheduled_score(tmp_path, model, 1_000_000, 0.1)


@pytest.mark.long
def test_scheduled_score_logs_progress_often(tmp_path, model):
    """300,000 images, a line every 0.2 s."""
    _scheduled_score(tmp_path, model, 300_000, 0.2)


def test_json_log_lines_all_parse(tmp_path, model):
    store = repeated_store(tmp_path / "s.zarr", 70_000, chunk_size=8192)
    r = cli("--log-format", "json", "score", store, "--model", model, "--out",
            tmp_path / "p.zarr", "--scheduler", "synchronous", "--progress-interval", "0.05")
    assert r.returncode == 0, r.stderr
    docs = json_lines(r.stderr)
    for d in docs:
        assert {"time", "level", "logger", "message", "run_id", "step"} <= set(d), d
    run_id = json.loads((tmp_path / "p.zarr" / "metrics.json").read_text())["run_id"]
    assert {d["run_id"] for d in docs} == {run_id}  # the run's one name, as metrics.json's
    progress = [d for d in docs if d["logger"] == "digitbatch.progress"]
    assert progress[-1]["progress"] == "ended" and progress[-1]["images"] == 70_000
    assert all(d["step"] == "score" and d["input"] == str(store) and d["unit"] == "images"
               for d in progress)
    assert {"rate", "eta_seconds", "percent", "total"} <= set(progress[-1])
    scored = [d for d in docs if d["message"].startswith("scored ")]
    assert scored[0]["images"] == 70_000 and scored[0]["rate"] > 0
    # the environment variable does the same
    r = cli("score", store, "--model", model, "--out", tmp_path / "p2.zarr", "--scheduler",
            "synchronous", env={"DIGITBATCH_LOG_FORMAT": "json"})
    assert r.returncode == 0 and json_lines(r.stderr)


def test_failed_score_still_writes_the_metrics_file(tmp_path, model, small_store):
    prom = tmp_path / "nightly.prom"
    ok = cli("score", small_store, "--model", model, "--out", tmp_path / "p.zarr",
             "--scheduler", "synchronous", "--metrics-file", prom)
    assert ok.returncode == 0, ok.stderr
    before = figures(prom, "score", "nightly")
    # the same command again: the output exists -> ScoreError, exit 1
    r = cli("score", small_store, "--model", model, "--out", tmp_path / "p.zarr",
            "--scheduler", "synchronous", "--metrics-file", prom)
    assert r.returncode == 1 and "ScoreError" in r.stderr
    after = figures(prom, "score", "nightly")
    assert (after["exit_status"], after["inputs_scored"], after["inputs_failed"]) == (1, 0, 1)
    # what it never measured is left out; the last success is kept for alerts on its age
    assert "images_scored" not in after and "accuracy" not in after
    assert after["last_success_timestamp_seconds"] == before["last_success_timestamp_seconds"]
    assert after["last_run_timestamp_seconds"] > before["last_run_timestamp_seconds"]
    assert not list(tmp_path.glob("nightly.prom.*"))  # the temporary file was renamed


def test_ingest_and_train_metrics_and_progress(tmp_path, idx_dir):
    r = cli("ingest", idx_dir, "--out", tmp_path / "s.zarr", "--scheduler", "synchronous",
            "--metrics-file", tmp_path / "i.prom")
    assert r.returncode == 0, r.stderr
    from digitbatch.layout import open_store

    f = figures(tmp_path / "i.prom", "ingest", "i")
    assert f["images_ingested"] == open_store(tmp_path / "s.zarr").n == 1000
    assert f["images_rejected"] == 0 and f["exit_status"] == 0
    assert "ingest: 1,000/1,000 images (100%)" in r.stderr  # IDX: the total is known
    r = cli("train", tmp_path / "s.zarr", "--out", tmp_path / "m", "--cv", "3", "--scheduler",
            "synchronous", "--metrics-file", tmp_path / "t.prom")
    assert r.returncode == 0, r.stderr
    assert "train: 4/4 fits (100%)" in r.stderr  # 3 folds + the final fit
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    f = figures(tmp_path / "t.prom", "train", "t")
    assert f["accuracy"] == pytest.approx(manifest["test"]["accuracy"])
    assert f["cv_accuracy"] == pytest.approx(manifest["cv"]["mean"])
    assert f["train_rows"] == manifest["train"]["n_rows"]


# --- run: [job] metrics_file, the CLI's --metrics-file, per-step figures -----------------


def _job(tmp_path, store, model, extra="") -> Path:
    spec = tmp_path / "nightly.toml"
    spec.write_text(f"""
[job]
name = "nightly"
workdir = "{tmp_path / 'work'}"
metrics_file = "{tmp_path / 'job.prom'}"
{extra}
[cluster]
scheduler = "synchronous"
[score]
input = "{store}"
model = "{model}"
overwrite = true
""")
    return spec


def test_run_writes_the_job_metrics_file(tmp_path, small_store, model):
    r = cli("run", _job(tmp_path, small_store, model), "--progress-interval", "0.05")
    assert r.returncode == 0, r.stderr
    metrics = json.loads((tmp_path / "work" / "predictions.zarr" / "metrics.json").read_text())
    f = figures(tmp_path / "job.prom", "run", "nightly")
    assert f["images_scored"] == metrics["n_scored_this_run"]
    assert f["accuracy"] == pytest.approx(metrics["accuracy"])
    assert (f["exit_status"], f["inputs_scored"], f["inputs_failed"]) == (0, 1, 0)
    steps = {k[3]: v for k, v in read_metrics(tmp_path / "job.prom").items()
             if k[0] == "digitbatch_step_succeeded"}
    assert steps == {"score": 1}
    assert "score: 1,000/1,000 images (100%)" in r.stderr  # progress in a job's step too


def test_failed_run_writes_exit_status_1(tmp_path, small_store, model):
    broken = tmp_path / "broken.zarr"
    broken.mkdir()  # exists (the spec check passes), but is no store: the step fails
    prom = tmp_path / "cli.prom"
    r = cli("run", _job(tmp_path, broken, model), "--metrics-file", prom)
    assert r.returncode == 1 and "JobFailedError" in r.stderr
    f = figures(prom, "run", "nightly")  # --metrics-file wins over [job] metrics_file
    assert (f["exit_status"], f["inputs_scored"], f["inputs_failed"]) == (1, 0, 1)
    assert "last_success_timestamp_seconds" not in f and not (tmp_path / "job.prom").exists()
    summary = json.loads((tmp_path / "work" / "nightly.run.json").read_text())
    assert f["run_duration_seconds"] == pytest.approx(summary["seconds"], abs=0.5)


def test_run_with_a_bad_spec_exits_2_and_says_so_in_the_metrics_file(tmp_path):
    spec = tmp_path / "bad.toml"
    spec.write_text("[score]\ninputt = 'x'\n")
    r = CliRunner().invoke(main, ["run", str(spec), "--metrics-file", str(tmp_path / "b.prom")])
    assert r.exit_code == 2 and "did you mean score.input" in r.output
    assert figures(tmp_path / "b.prom", "run", "bad")["exit_status"] == 2


def test_job_spec_checks_its_metrics_file(tmp_path, small_store, model):
    from digitbatch.errors import JobSpecError
    from digitbatch.jobs import load_job

    spec = _job(tmp_path, small_store, model)
    assert load_job(spec).metrics_file == tmp_path / "job.prom"
    with pytest.raises(JobSpecError, match="job.metrics_file: .*does not exist"):
        load_job(spec, ["job.metrics_file=/no/such/dir/x.prom"])


# --- exit codes -------------------------------------------------------------------------


def test_exit_codes_are_documented_and_kept(tmp_path):
    r = CliRunner().invoke(main, ["--help"])
    assert r.exit_code == 0
    for line in ("0    success", "1    a failure", "2    bad usage", "3    a quality alarm"):
        assert line in r.output
    readme = (REPO / "README.md").read_text()
    assert "Exit status" in readme and "3    a quality alarm: drift in alarm" in readme
    assert CliRunner().invoke(main, ["score", "--no-such-option"]).exit_code == 2
    assert CliRunner().invoke(main, ["score", "x", "--model", "m", "--out", "o",
                                     "--progress-interval", "0"]).exit_code == 2
    assert CliRunner().invoke(main, ["--log-format", "xml", "models"]).exit_code == 2
    r = CliRunner().invoke(main, ["ingest", "sample", "--out", str(tmp_path / "s.zarr"),
                                  "--metrics-file", str(tmp_path)])
    assert r.exit_code == 2 and "is a directory" in r.output
    assert not (tmp_path / "s.zarr").exists()  # refused before any work
    r = CliRunner().invoke(main, ["train", str(tmp_path / "none.zarr"), "--out",
                                  str(tmp_path / "m"), "--metrics-file",
                                  str(tmp_path / "t.prom")])
    assert r.exit_code == 1 and figures(tmp_path / "t.prom", "train", "t")["exit_status"] == 1


def test_exit_status_mapping():
    import click

    assert metricsfile.exit_status(None) == 0
    assert metricsfile.exit_status(ScoreError("x")) == 1
    assert metricsfile.exit_status(click.UsageError("x")) == 2
    assert metricsfile.exit_status(KeyboardInterrupt()) == 130
    assert metricsfile.exit_status(SystemExit(143)) == 143
    assert metricsfile.exit_status(SystemExit(None)) == 0


# --- the modules on their own ---------------------------------------------------------------


def test_metrics_file_refuses_what_node_exporter_cannot_read(tmp_path, caplog):
    with pytest.raises(MetricsFileError, match="local path"):
        metricsfile.check_path("s3://bucket/x.prom")
    with pytest.raises(MetricsFileError, match="does not exist"):
        metricsfile.check_path(tmp_path / "no" / "x.prom")
    with caplog.at_level(logging.WARNING):
        metricsfile.check_path(tmp_path / "x.txt")
    assert "only *.prom" in caplog.text


def test_metrics_file_keeps_the_last_success_of_its_own_series(tmp_path):
    p = tmp_path / "m.prom"
    metricsfile.write(p, metricsfile.RunFigures("score", "a", 0, 100.0, 160.0,
                                                {"images_scored": 5, "accuracy": None}))
    f = figures(p, "score", "a")
    assert f["last_success_timestamp_seconds"] == 160.0 and f["run_duration_seconds"] == 60.0
    assert "accuracy" not in f  # unlabelled: left out, not 0
    metricsfile.write(p, metricsfile.RunFigures("score", "b", 1, 200.0, 210.0))
    assert "last_success_timestamp_seconds" not in figures(p, "score", "b")  # another series
    metricsfile.write(p, metricsfile.RunFigures("score", "b", 0, 300.0, 310.0))
    metricsfile.write(p, metricsfile.RunFigures("score", "b", 1, 400.0, 410.0))
    assert figures(p, "score", "b")["last_success_timestamp_seconds"] == 310.0
    p.write_text("not prometheus {{{\n")
    metricsfile.write(p, metricsfile.RunFigures("score", "b", 1, 500.0, 510.0))
    assert "last_success_timestamp_seconds" not in figures(p, "score", "b")


def test_json_formatter_fields_context_and_exceptions():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs.ContextFilter())
    log = logging.getLogger("digitbatch.test-observability")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        with logs.log_context(run_id="r1", step="score", input=None):
            log.info("scored %d", 5, extra={"images": 5, "rate": 2.5, "step": "own"})
            with logs.log_context(input="in.tar"):
                try:
                    raise ValueError("boom \"quoted\"\nnewline")
                except ValueError:
                    log.exception("failed")
        log.info("outside")
    finally:
        log.removeHandler(handler)
    a, b, c = json_lines(stream.getvalue())
    assert a["message"] == "scored 5" and a["level"] == "INFO"
    assert a["logger"] == "digitbatch.test-observability" and a["time"].endswith("+00:00")
    assert (a["run_id"], a["step"], a["images"], a["rate"]) == ("r1", "own", 5, 2.5)
    assert "input" not in a  # None fields are dropped
    assert b["input"] == "in.tar" and "ValueError: boom" in b["exception"]
    assert "run_id" not in c


def test_progress_log_lines_carry_the_figures(caplog):
    p = Progress("score", mode="log", interval=3600)
    try:
        p(0, total=1000)
        p(250)
        with caplog.at_level(logging.INFO, logger="digitbatch.progress"):
            p.log_line()
    finally:
        p.close()
    rec = caplog.records[0]
    assert re.match(r"score: 250/1,000 images \(25%\), [\d,.]+ images/s, ETA \d+:\d\d:\d\d",
                    rec.getMessage())
    assert (rec.done, rec.total, rec.percent, rec.images, rec.unit) == (250, 1000, 25.0, 250,
                                                                         "images")
    assert rec.rate > 0 and rec.eta_seconds is not None and rec.eta_seconds >= 0


def test_progress_timer_logs_while_nothing_moves():
    """A chunk that takes longer than the interval still shows the run is alive."""
    seen = threading.Event()

    class Catch(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith("train: 0/7 chunks (0%)"):
                seen.set()

    log = logging.getLogger("digitbatch.progress")
    handler, level = Catch(), log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        with Progress("train", mode="log", interval=0.01, unit="chunks") as p:
            p(0, total=7)
            assert seen.wait(30)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_log_records_never_share_a_line_with_the_bar():
    stream = _Tty()
    handler = logs.BarAwareHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("digitbatch.test-bar")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        with Progress("score", stream=stream, min_interval=0) as p:
            assert p.mode == "bar"
            p(0, total=100)
            p(40)
            log.info("a log line")
            p(60)
    finally:
        log.removeHandler(handler)
    text = stream.getvalue()
    # the bar is cleared before the record, and redrawn after it
    assert "\r\x1b[Ka log line\n\rscore [" in text
    for line in text.split("\n"):
        assert "a log line" not in line or line.rsplit("\r", 1)[-1].startswith("\x1b[Ka log")
    with cleared(stream):  # no bar on screen: nothing written
        pass
    assert stream.getvalue() == text


def test_train_progress_counts_chunks_and_fits(small_store, tmp_path):
    from digitbatch.training import train

    calls = []

    def progress(n, total=None):
        calls.append((n, total))

    train(small_store, tmp_path / "inc", incremental=True, epochs=2, progress=progress)
    assert calls[0] == (0, 2 * 3)  # 700 train rows in chunks of 256: 3 chunks, 2 epochs
    assert sum(n for n, _ in calls) == 6
    calls.clear()
    train(small_store, tmp_path / "cv", cv=3, search=True, scheduler="synchronous",
          progress=progress)
    total = calls[0][1]
    assert total > 3 + 1 and sum(n for n, _ in calls) == total


WORKER_SCRIPT = '''
import logging, sys
from digitbatch import cluster, logs

def warn():
    logging.getLogger("distributed.worker").warning("from a worker")
    logging.getLogger("digitbatch.scoring.chunks").warning("a task's warning")

if __name__ == "__main__":
    logs.setup(fmt=sys.argv[1])
    with cluster.client(None, n_workers=1, processes=True) as c:
        c.run(warn)
'''


def test_worker_processes_log_json_lines_too(tmp_path):
    """A LocalCluster's worker processes write to the same stderr: with JSON logs
    their records are JSON lines as well (logs.worker_environ)."""
    script = tmp_path / "workers.py"
    script.write_text(WORKER_SCRIPT)
    r = subprocess.run([sys.executable, str(script), "json"], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    docs = json_lines(r.stderr)
    assert {(d["logger"], d["message"]) for d in docs} >= {
        ("distributed.worker", "from a worker"),
        ("digitbatch.scoring.chunks", "a task's warning")}


def test_incremental_score_counts_its_inputs(tmp_path, model):
    """score 'GLOB' --out '...{input}...': inputs scored and failed, their images summed,
    progress over every input, and exit 1 with the file still written."""
    from .test_incremental import _land

    inc = tmp_path / "incoming"
    _land(inc, "night-0.tar", n=40, seed=0)
    _land(inc, "night-1.tar", n=30, seed=1)
    (inc / "night-2.tar").write_bytes(b"not a tar archive")
    prom = tmp_path / "inc.prom"
    r = cli("score", inc / "*.tar", "--model", model, "--out", tmp_path / "pred" / "{input}.zarr",
            "--scheduler", "synchronous", "--metrics-file", prom, "--progress-interval", "0.05")
    assert r.returncode == 1 and "InputsFailedError" in r.stderr
    f = figures(prom, "score", "inc")
    assert (f["exit_status"], f["inputs_scored"], f["inputs_failed"]) == (1, 2, 1)
    scored = [json.loads((tmp_path / "pred" / f"night-{i}.zarr" / "metrics.json").read_text())
              for i in range(2)]
    assert f["images_scored"] == sum(m["n_scored_this_run"] for m in scored) == 70
    assert f["images_rejected"] == sum(m["n_rejected"] for m in scored)
    assert "accuracy" not in f  # two inputs: no one accuracy for both
    assert "score: 70/70 images (100%)" in r.stderr  # each input's images join the total


def test_job_scoring_new_inputs_counts_them(tmp_path, model):
    """[score] inputs = a glob in a job spec: the job's metrics file counts the inputs."""
    from .test_incremental import _land

    inc = tmp_path / "in"
    _land(inc, "a.tar", n=20)
    _land(inc, "b.tar", n=25, seed=1)
    (inc / "c.tar").write_bytes(b"\x00" * 2000)
    spec = tmp_path / "nightly.toml"
    spec.write_text(f"""
[job]
name = "nightly"
workdir = "{tmp_path}"
metrics_file = "{tmp_path / 'job.prom'}"
[cluster]
scheduler = "synchronous"
[score]
inputs = "{inc}/*.tar"
model = "{model}"
out = "{tmp_path}/pred/{{input}}.zarr"
""")
    r = CliRunner().invoke(main, ["run", str(spec)])
    assert r.exit_code == 1, r.output
    f = figures(tmp_path / "job.prom", "run", "nightly")
    assert (f["exit_status"], f["inputs_scored"], f["inputs_failed"]) == (1, 2, 1)
    assert f["images_scored"] == 45


def test_sigterm_still_writes_the_metrics_file(tmp_path, model):
    """SIGTERM (Kubernetes, SLURM) once a progress line shows images scored: exit 143,
    and the metrics file says so."""
    import signal

    store = repeated_store(tmp_path / "s.zarr", 300_000)
    prom = tmp_path / "t.prom"
    proc = subprocess.Popen([sys.executable, "-m", "digitbatch", "score", str(store), "--model",
                             str(model), "--out", str(tmp_path / "p.zarr"), "--scheduler",
                             "synchronous", "--progress-interval", "0.02", "--metrics-file",
                             str(prom)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True)
    for line in proc.stderr:  # trigger on progress, not on a clock
        m = PROGRESS.search(line)
        if m and int(m[1].replace(",", "")) > 0:
            proc.send_signal(signal.SIGTERM)
            break
    proc.stderr.read()
    assert proc.wait(timeout=120) == 143
    f = figures(prom, "score", "t")
    assert (f["exit_status"], f["inputs_scored"], f["inputs_failed"]) == (143, 0, 1)
    assert "last_success_timestamp_seconds" not in f


def test_an_output_already_complete_scores_nothing_now(tmp_path, model, small_store):
    prom = tmp_path / "again.prom"
    args = ["score", str(small_store), "--model", str(model), "--out", str(tmp_path / "p.zarr"),
            "--scheduler", "synchronous", "--metrics-file", str(prom)]
    assert CliRunner().invoke(main, args).exit_code == 0
    assert figures(prom, "score", "again")["images_scored"] == 1000
    r = CliRunner().invoke(main, [*args, "--resume"])
    assert r.exit_code == 0, r.output
    f = figures(prom, "score", "again")
    assert f["images_scored"] == 0 and "images_per_second" not in f
    assert (f["exit_status"], f["inputs_scored"]) == (0, 1) and f["accuracy"] > 0
