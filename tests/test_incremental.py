"""Score only what is new (digitbatch.incremental): inputs by glob, the ledger, failures, kills."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from digitbatch import ledger
from digitbatch.cli import main
from digitbatch.errors import LedgerError, ScoreError
from digitbatch.incremental import default_ledger, input_name, list_inputs, score_inputs

from .test_ingest import digit_members, make_tar

SYNC = {"scheduler": "synchronous"}


def _land(folder, name: str, n: int = 40, seed: int = 0):
    folder.mkdir(parents=True, exist_ok=True)
    members, _, _ = digit_members(n, seed=seed)
    return make_tar(folder / name, members, mode="w")


def _arrays(out) -> dict:
    import zarr

    g = zarr.open_group(str(out), mode="r")
    return {k: g[k][:].tolist() for k in ("pred", "margin", "keys", "labels")}


@pytest.mark.parametrize("path, name", [
    ("/in/2026-12-06.tar", "2026-12-06"), ("/in/night.tar.gz", "night"),  # extensions go
    ("s3://b/in/scan 7.zip", "scan_7"), ("/in/folder/", "folder"),  # unsafe chars, a folder
    ("/in/$(rm -rf ~).tar", "rm_-rf"), ("/in/..tar", "..tar"),
])
def test_input_names_are_safe_path_components(path, name):
    got = input_name(path)
    assert got == name or (name == "..tar" and "/" not in got and got not in ("", ".", ".."))


def test_the_ledger_defaults_to_the_folder_of_the_outputs():
    assert str(default_ledger("/data/pred/{input}.zarr")) == "/data/pred/_ledger.jsonl"
    assert str(default_ledger("/data/pred/{input}/p.zarr")) == "/data/pred/_ledger.jsonl"


def test_files_in_transit_and_hidden_files_wait(tmp_path):
    for n in ("b.tar", "a.tar", ".c.tar", "d.tar.part", "e.tmp"):
        (tmp_path / n).write_bytes(b"x")
    assert [os.path.basename(p) for p in list_inputs(str(tmp_path / "*"))] == ["a.tar", "b.tar"]


def test_new_inputs_only_changed_named_failures_retried(tmp_path, shared_model):
    inc, pred = tmp_path / "incoming", tmp_path / "pred"
    for i in range(3):
        _land(inc, f"night-{i}.tar", seed=i)
    out = str(pred / "{input}.zarr")
    run = {"model": shared_model, "out": out, **SYNC}
    r = score_inputs(str(inc / "*.tar"), **run)
    assert [os.path.basename(s["input"]) for s in r.scored] == [f"night-{i}.tar" for i in range(3)]
    assert sorted(p.name for p in pred.glob("*.zarr")) == [f"night-{i}.zarr" for i in range(3)]
    assert all((pred / f"night-{i}.zarr" / "_SUCCESS").exists() for i in range(3))
    first = _arrays(pred / "night-0.zarr")

    # two more land: only those are scored
    _land(inc, "night-3.tar", seed=3)
    _land(inc, "night-4.tar", seed=4)
    r = score_inputs(str(inc / "*.tar"), **run)
    assert [os.path.basename(s["input"]) for s in r.scored] == ["night-3.tar", "night-4.tar"]
    assert len(r.skipped) == 3 and not r.failed and not r.nothing_new

    # nothing new
    r = score_inputs(str(inc / "*.tar"), **run)
    assert r.nothing_new and len(r.skipped) == 5

    # a changed archive is named, not scored again; its output stays
    _land(inc, "night-0.tar", seed=9)
    r = score_inputs(str(inc / "*.tar"), **run)
    assert [os.path.basename(c) for c in r.changed] == ["night-0.tar"] and not r.scored
    assert _arrays(pred / "night-0.zarr") == first

    # a broken archive fails alone, is recorded, and is retried next run
    (inc / "night-5.tar").write_bytes(b"\x00" * 2000)
    _land(inc, "night-6.tar", seed=6)
    r = score_inputs(str(inc / "*.tar"), **run)
    assert [os.path.basename(f["input"]) for f in r.failed] == ["night-5.tar"]
    assert [os.path.basename(s["input"]) for s in r.scored] == ["night-6.tar"]
    assert ledger.read(default_ledger(out))[str(inc / "night-5.tar")].status == "failed"
    _land(inc, "night-5.tar", seed=5)  # fixed
    r = score_inputs(str(inc / "*.tar"), **run)
    assert [os.path.basename(s["input"]) for s in r.scored] == ["night-5.tar"]
    held = ledger.read(default_ledger(out))
    assert all(e.status == "scored" for e in held.values()) and len(held) == 7

    # rescore_changed: the changed archive goes into a new output
    r = score_inputs(str(inc / "*.tar"), rescore_changed=True, **run)
    [s] = r.scored
    assert ".rescore-" in s["out"] and _arrays(pred / "night-0.zarr") == first


def test_max_inputs_leaves_the_rest_for_the_next_run(tmp_path, shared_model):
    inc = tmp_path / "in"
    for i in range(3):
        _land(inc, f"{i}.tar", seed=i)
    run = {"model": shared_model, "out": str(tmp_path / "p" / "{input}.zarr"), **SYNC}
    r = score_inputs(str(inc / "*.tar"), max_inputs=2, **run)
    assert len(r.scored) == 2 and [os.path.basename(p) for p in r.not_this_run] == ["2.tar"]
    r = score_inputs(str(inc / "*.tar"), max_inputs=2, **run)
    assert len(r.scored) == 1 and len(r.skipped) == 2


def test_two_inputs_with_one_output_name_do_not_share_it(tmp_path, shared_model):
    inc = tmp_path / "in"
    _land(inc, "a.tar")
    _land(inc, "a.tar.gz", seed=1)
    r = score_inputs(str(inc / "a.*"), model=shared_model, out=str(tmp_path / "{input}.zarr"),
                     **SYNC)
    assert len(r.scored) == 1 and "rename one of them" in r.failed[0]["error"]["message"]


@pytest.mark.parametrize("kw, match", [
    ({"out": "pred.zarr"}, "must contain {input}"), ({"max_inputs": 0}, "positive integer"),
])
def test_bad_arguments_are_named(tmp_path, shared_model, kw, match):
    args = {"model": shared_model, "out": str(tmp_path / "{input}.zarr"), **kw}
    with pytest.raises(ScoreError, match=match):
        score_inputs(str(tmp_path / "*.tar"), **args)


def test_ledger_torn_last_line_is_ignored_and_a_damaged_one_is_named(tmp_path):
    p = tmp_path / "_ledger.jsonl"
    ledger.append(p, input="/a.tar", fingerprint="1:2", status="scored", out="/a.zarr",
                  run_id="r")
    with open(p, "a") as fh:
        fh.write('{"input": "/b.tar", "fing')  # a run killed mid-append
    assert list(ledger.read(p)) == ["/a.tar"]
    ledger.append(p, input="/b.tar", fingerprint="3:4", status="failed", out=None, run_id=None,
                  error={"type": "ArchiveError", "message": "truncated"})
    got = ledger.read(p)
    assert got["/b.tar"].status == "failed" and got["/b.tar"].error["type"] == "ArchiveError"
    lines = p.read_text().splitlines()
    assert len(lines) == 3 and lines[1].startswith('{"input": "/b.tar", "fing')  # kept apart
    with pytest.raises(LedgerError, match="status"):
        ledger.append(p, input="x", fingerprint="f", status="done", out=None, run_id=None)


def test_cli_says_nothing_new_and_exits_1_when_an_input_failed(tmp_path, shared_model):
    inc = tmp_path / "in"
    _land(inc, "a.tar")
    args = ["score", str(inc / "*.tar"), "--model", str(shared_model), "--out",
            str(tmp_path / "p" / "{input}.zarr"), "--scheduler", "synchronous"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "scored" in r.output and "1 scored, 0 skipped" in r.output
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0 and "nothing new: 1 inputs already scored" in r.output
    (inc / "b.tar").write_bytes(b"junk" * 300)
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1 and "FAILED" in r.output and "InputsFailedError" in r.output


def test_killed_mid_input_then_rerun_every_output_identical_ledger_once(tmp_path, shared_model):
    """A run killed while scoring its second input (on progress: that input's lock
    appeared), rerun as cron would: it resumes that input, scores the rest, and every
    output equals a run that was never killed; the ledger holds each input once."""
    inc = tmp_path / "in"
    for i in range(3):
        _land(inc, f"n{i}.tar", n=900, seed=i)  # 4 slot chunks of 256 each

    def cmd(out_dir):
        code = ("import sys; from digitbatch.incremental import score_inputs; "
                f"score_inputs({str(inc / '*.tar')!r}, model={str(shared_model)!r}, "
                f"out={str(out_dir / '{input}.zarr')!r}, scheduler='synchronous', "
                "chunk_size=256)")
        return [sys.executable, "-c", code]

    ref = tmp_path / "ref"
    subprocess.run(cmd(ref), check=True, capture_output=True, timeout=300)
    out = tmp_path / "pred"
    proc = subprocess.Popen(cmd(out), stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    second = out / "n1.zarr" / "_commits"
    while not (second.exists() and len(os.listdir(second)) >= 1):
        if proc.poll() is not None:
            pytest.fail(f"the run ended before its second input was under way: "
                        f"{proc.stderr.read().decode()[-1500:]}")
        assert time.monotonic() < deadline
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "n1.zarr" / "_SUCCESS").exists()  # killed mid-input
    held = ledger.read(out / "_ledger.jsonl")
    assert [os.path.basename(k) for k in held] == ["n0.tar"]
    subprocess.run(cmd(out), check=True, capture_output=True, timeout=300)
    for i in range(3):
        assert _arrays(out / f"n{i}.zarr") == _arrays(ref / f"n{i}.zarr")
    lines = [json.loads(line) for line in (out / "_ledger.jsonl").read_text().splitlines()]
    assert sorted(os.path.basename(x["input"]) for x in lines) == ["n0.tar", "n1.tar", "n2.tar"]


def test_nightly_job_over_a_folder_of_archives(tmp_path, shared_model):
    """[score] inputs in a job spec: new archives scored, one report each, the summary
    lists what was scored, skipped and failed, and a failed input fails the run (exit 1)
    after the others are scored and reported."""
    from digitbatch.cli import main as cli

    inc = tmp_path / "in"
    _land(inc, "a.tar")
    _land(inc, "b.tar", seed=1)
    spec = tmp_path / "nightly.toml"
    spec.write_text(f"""
[job]
name = "nightly"
workdir = "{tmp_path}"
steps = ["score", "report"]
[cluster]
scheduler = "synchronous"
[score]
inputs = "{inc}/*.tar"
model = "{shared_model}"
out = "{tmp_path}/pred/{{input}}.zarr"
[report]
out = "{tmp_path}/reports/{{input}}"
""")
    r = CliRunner().invoke(cli, ["run", str(spec)])
    assert r.exit_code == 0, r.output
    assert "2 scored, 0 skipped" in r.output
    assert (tmp_path / "reports" / "a" / "report.html").exists()
    assert (tmp_path / "reports" / "b" / "report.html").exists()
    s = json.loads((tmp_path / "nightly.run.json").read_text())
    assert len(s["steps"][0]["result"]["inputs"]["scored"]) == 2
    (inc / "c.tar").write_bytes(b"junk" * 300)
    _land(inc, "d.tar", seed=3)
    r = CliRunner().invoke(cli, ["run", str(spec)])
    assert r.exit_code == 1 and "InputsFailedError" in r.output
    s = json.loads((tmp_path / "nightly.run.json").read_text())
    got = s["steps"][0]["result"]["inputs"]
    assert [os.path.basename(x["input"]) for x in got["scored"]] == ["d.tar"]
    assert [os.path.basename(x["input"]) for x in got["failed"]] == ["c.tar"]
    assert len(got["skipped"]) == 2 and s["outcome"] == "failed"
    assert (tmp_path / "reports" / "d" / "report.html").exists()  # reported before failing
    r = CliRunner().invoke(cli, ["run", str(spec), "--check"])
    assert r.exit_code == 0 and "the new inputs of" in r.output
