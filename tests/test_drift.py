"""Drift against the model's reference profile: PSI, status, expected accuracy, exit status 3.

The unit tests check the arithmetic on small hand-made histograms; the
MNIST tests show it on real shifts of real images (transformed here):
MNIST test rows are ``ok``; two digits only, inverted images, blurred and
thickened strokes are ``alarm`` on the signal that moved, and the CLI exits
with 3 under ``--fail-on drift-alarm`` (0 without), after every output is
written. The expected accuracy of the MNIST test set is within 1 point of
its measured accuracy, the reference being rows the model never saw that
are not the scored rows (held-out MNIST training rows).
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from digitbatch import drift as D
from digitbatch import profile as P
from digitbatch.cli import main
from digitbatch.digits import UNKNOWN_LABEL
from digitbatch.errors import DriftAlarmError, JobSpecError, MonitorError
from digitbatch.scoring.api import score

from .conftest import make_store, mnist_dir, write_idx


# --- arithmetic ------------------------------------------------------------------


def test_psi_is_the_textbook_formula_with_epsilon_for_empty_bins():
    ref, cur = np.array([50, 30, 20]), np.array([40, 40, 20])
    q, p = ref / 100, cur / 100
    assert D.psi(ref, cur) == pytest.approx(float(np.sum((p - q) * np.log(p / q))))
    assert D.psi(ref, ref * 7) == pytest.approx(0.0)
    # an empty bin counts as EPSILON of the rows, not as an infinite logarithm
    got = D.psi([100, 0], [99, 1])
    q, p = np.array([1.0, D.EPSILON]), np.array([0.99, 0.01])
    assert got == pytest.approx(float(np.sum((p - q) * np.log(p / q))))
    assert D.psi([0, 0], [1, 2]) is None and D.psi([1, 2], [0, 0]) is None
    with pytest.raises(ValueError, match="3 and 2 bins"):
        D.psi([1, 2, 3], [1, 2])


def test_thresholds_and_status():
    t = D.Thresholds()
    assert (t.warn, t.alarm) == (0.1, 0.25)
    assert [t.status(v) for v in (0.0, 0.0999, 0.1, 0.2499, 0.25, 9.0, None)] == \
        ["ok", "ok", "warn", "warn", "alarm", "alarm", None]
    for bad in (0, -1, float("nan"), float("inf"), "0.2", True):
        with pytest.raises(MonitorError, match="must be a number > 0"):
            D.Thresholds(bad, 0.3)
    with pytest.raises(MonitorError, match="alarm threshold 0.1 is below the warn threshold 0.2"):
        D.Thresholds(0.2, 0.1)
    assert D.check_fail_on(None) == "never"
    with pytest.raises(MonitorError, match="fail_on must be one of"):
        D.check_fail_on("alarm")


def _profile(margin_counts, correct=None, labelled=None, k=10):
    """A profile with the given margin histogram (the other signals: one bin)."""
    m = list(margin_counts) + [0] * (P.MARGIN_BINS - len(margin_counts))
    n = sum(m)
    lab = list(labelled if labelled is not None else m) + [0] * (P.MARGIN_BINS - len(
        labelled if labelled is not None else m))
    cor = list(correct or [0]) + [0] * (P.MARGIN_BINS - len(correct or [0]))
    one = [n] + [0] * (P.INPUT_BINS - 1)
    return {"version": P.PROFILE_VERSION, "n": n, "prediction": [n] + [0] * (k - 1),
            "margin": m, "margin_labelled": lab, "margin_correct": cor, "ink": one,
            "intensity": list(one), "normalisation": None}


def test_expected_accuracy_weights_the_reference_by_tonights_margins():
    # reference: bin 0 half right, bin 1 empty, bin 2 all right
    ref = _profile([10, 0, 30], correct=[5, 0, 30])
    cur = _profile([20, 20, 60])
    exp, cov = D.expected_accuracy(ref, cur)
    # bin 1 takes its nearest labelled bin's accuracy (bin 0 and 2 tie: the lower)
    assert exp == pytest.approx(0.2 * 0.5 + 0.2 * 0.5 + 0.6 * 1.0)
    assert cov == pytest.approx(0.8)
    assert D.expected_accuracy(_profile([10], labelled=[0]), cur) == (None, None)


def _block(cur, ref, **kw):
    entry = None if ref is None else D.reference_entry(
        ref, split="test", store="s.zarr", store_checksum="sha256:x", n_rejected=5,
        n_images=95, margin="probability")
    return D.drift_block(cur, entry, D.Thresholds(), n_rejected=kw.pop("n_rejected", 0),
                         margin="probability", n_classes=10, **kw)


def test_drift_block_fields_and_the_reasons_it_is_not_computed():
    ref = _profile([10, 0, 30], correct=[5, 0, 30])
    b = _block(_profile([10, 0, 30]), ref, n_rejected=10, accuracy=0.5)
    assert b["overall"] == {"psi": 0.0, "status": "ok", "signal": "prediction"}
    assert b["expected_accuracy"] == pytest.approx(35 / 40)
    assert b["measured_accuracy"] == 0.5
    assert b["reject_rate"] == pytest.approx(0.2)
    assert b["reference_reject_rate"] == pytest.approx(0.05)
    assert b["reject_rate_change"] == pytest.approx(0.15)
    assert b["reference"]["n"] == 40 and b["reason"] is None
    assert b["normalisation"] is None
    json.dumps(b)  # (it goes into metrics.json)
    # the model has no reference: no crash, and the block says so
    none = _block(_profile([10]), None)
    assert none["overall"]["status"] == D.NO_REFERENCE and none["overall"]["psi"] is None
    assert none["expected_accuracy"] is None and "retrain it" in none["reason"]
    # a chunk committed without a profile (an earlier digitbatch)
    assert "without a profile" in _block(None, ref)["reason"]
    bad = dict(ref, margin=[1])
    assert "not usable" in _block(_profile([10]), bad)["reason"]
    entry = D.reference_entry(ref, split="test", store="s", store_checksum="c", n_rejected=0,
                              n_images=1, margin="decision value")
    mixed = D.drift_block(_profile([10]), entry, D.Thresholds(), n_rejected=0,
                          margin="probability")
    assert "'decision value'" in mixed["reason"]
    assert _block(_profile([0]), ref)["overall"]["status"] == "no rows"


def test_raise_on_alarm_names_each_output_in_alarm():
    ref = _profile([40])
    shifted = dict(_profile([40]), prediction=[0, 40] + [0] * 8)
    ok = {"drift": _block(_profile([40]), ref)}
    bad = {"drift": _block(shifted, ref)}
    assert bad["drift"]["overall"]["status"] == "alarm"
    D.raise_on_alarm([("a", ok), ("b", bad)], "never")
    D.raise_on_alarm([("a", ok)], "drift-alarm")
    with pytest.raises(DriftAlarmError, match=r"drift alarm: b: prediction PSI .* \(alarm at "
                                              r"0.25\)") as info:
        D.raise_on_alarm([("a", ok), ("b", bad)], "drift-alarm")
    assert info.value.exit_code == 3 and "a:" not in str(info.value)


# --- scoring: every chunk's profile, the run's block -----------------------------


def test_scoring_sums_the_chunk_profiles_into_the_drift_block(tmp_path, shared_model,
                                                              shaped_stores):
    from digitbatch.layout import open_store
    from digitbatch.modelio import load_model
    from digitbatch.scoring.output import committed

    store = shaped_stores["9-chunks-ragged"]
    r = score(store, model=shared_model, out=tmp_path / "p.zarr", scheduler="synchronous")
    d = r.metrics["drift"]
    assert d["reference"]["split"] == "test" and d["overall"]["status"] in ("ok", "warn", "alarm")
    records = committed(tmp_path / "p.zarr")
    assert len(records) == 9 and all("profile" in rec for rec in records.values())
    # the run's profile is the whole store's, as one profile of every row would be
    m = load_model(shared_model).model
    s = open_store(store)
    images = s.images[:]
    pred, margin, _ = m.score_chunk(images, proba=False)
    whole = P.chunk_profile(images, pred, margin, m.target(s.labels[:]), m.classes,
                            input_every=P.input_every(s.n))
    assert d["profile"] == whole
    assert d["measured_accuracy"] == r.metrics["accuracy"]
    assert d["expected_accuracy"] is not None
    # thresholds from the caller
    r2 = score(store, model=shared_model, out=tmp_path / "q.zarr", scheduler="synchronous",
               psi_warn=0.5, psi_alarm=0.6)
    assert r2.metrics["drift"]["thresholds"] == {"warn": 0.5, "alarm": 0.6}
    with pytest.raises(MonitorError, match="below the warn"):
        score(store, model=shared_model, out=tmp_path / "z.zarr", psi_warn=0.5, psi_alarm=0.2)
    assert not (tmp_path / "z.zarr").exists()


def test_a_model_without_a_reference_scores_with_no_reference(tmp_path, shared_model,
                                                              shaped_stores):
    old = tmp_path / "old-model"
    shutil.copytree(shared_model, old)
    manifest = json.loads((old / "manifest.json").read_text())
    assert manifest["drift_reference"]["profile"]["n"] > 0
    del manifest["drift_reference"]  # as a model trained before drift monitoring
    (old / "manifest.json").write_text(json.dumps(manifest))
    args = ["score", str(shaped_stores["3-chunks-ragged"]), "--model", str(old),
            "--scheduler", "synchronous", "--fail-on", "drift-alarm"]
    r = CliRunner().invoke(main, args + ["--out", str(tmp_path / "p.zarr")])
    assert r.exit_code == 0, r.output
    d = json.loads((tmp_path / "p.zarr" / "metrics.json").read_text())["drift"]
    assert d["overall"]["status"] == "no reference" and d["expected_accuracy"] is None
    assert d["profile"]["n"] == 700 and "retrain it" in d["reason"]


def _png(path: Path, image: np.ndarray) -> None:
    Image.fromarray(image).save(path)


def test_an_archive_reports_what_normalisation_inverted_and_resized(tmp_path, shared_model):
    from .conftest import synthetic_digits

    x, y = synthetic_digits(30, seed=2)
    folder = tmp_path / "scans"
    for i in range(30):
        d = folder / str(int(y[i]))
        d.mkdir(parents=True, exist_ok=True)
        img = x[i]
        if i % 3 == 0:  # dark ink on paper: inverted by normalisation
            img = 255 - img
        if i % 5 == 0:  # a larger scan: resized
            img = np.kron(img, np.ones((2, 2), np.uint8))
        _png(d / f"{i:03d}.png", img)
    (folder / "0" / "broken.png").write_bytes(b"not a png")
    r = score(folder, model=shared_model, out=tmp_path / "p.zarr", scheduler="synchronous")
    d = r.metrics["drift"]
    assert d["normalisation"] == {"n": 30, "inverted_share": round(10 / 30, 6),
                                  "resized_share": round(6 / 30, 6)}
    assert d["reject_rate"] == pytest.approx(1 / 31, abs=1e-6)
    assert d["profile"]["n"] == 30


# --- job specs: [monitor] ------------------------------------------------------------


def test_monitor_section_is_checked(tmp_path):
    from digitbatch.jobs import load_job

    spec = tmp_path / "j.toml"
    spec.write_text('[score]\ninput = "x"\nmodel = "m"\n[monitor]\nwarn = 0.3\nalarm = 0.2\n')
    with pytest.raises(JobSpecError, match=r"\[monitor\] warn/alarm: .*below the warn"):
        load_job(spec, check_files=False)
    spec.write_text('[score]\n[monitor]\nfail_on = "always"\n')
    with pytest.raises(JobSpecError, match="monitor.fail_on must be one of"):
        load_job(spec, check_files=False)
    spec.write_text('[score]\n[monitor]\nwarn = "0.1"\n')
    with pytest.raises(JobSpecError, match="monitor.warn must be a number, got '0.1'.*without quotes"):
        load_job(spec, check_files=False)
    spec.write_text('[score]\n[monitor]\nwarn = 0.05\nalarm = 1\nfail_on = "drift-alarm"\n')
    job = load_job(spec, check_files=False)
    assert job.fail_on == "drift-alarm"
    assert (job.params["score"]["psi_warn"], job.params["score"]["psi_alarm"]) == (0.05, 1.0)
    job = load_job(spec, ["monitor.fail_on=never", "monitor.alarm=0.4"], check_files=False)
    assert job.fail_on == "never" and job.params["score"]["psi_alarm"] == 0.4


# --- real shifts on real MNIST images ---------------------------------------------


def _idx(directory: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(directory / f"{prefix}-images-idx3-ubyte.gz") as fh:
        x = np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(directory / f"{prefix}-labels-idx1-ubyte.gz") as fh:
        y = np.frombuffer(fh.read(), np.uint8, offset=8)
    return x, y


def _box_blur(x: np.ndarray) -> np.ndarray:
    p = np.pad(x.astype(np.float32), ((0, 0), (1, 1), (1, 1)))
    return np.rint(sum(p[:, i:i + 28, j:j + 28] for i in range(3) for j in range(3)) / 9
                   ).astype(np.uint8)


def _dilate(x: np.ndarray) -> np.ndarray:
    p = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    return np.max(np.stack([p[:, i:i + 28, j:j + 28] for i in range(3) for j in range(3)]), 0)


@pytest.fixture(scope="module")
def mnist_drift(tmp_path_factory):
    """An sgd model trained on 6,000 MNIST training rows whose reference is 10,000
    other training rows (its test split), and the MNIST test set."""
    d = mnist_dir()
    if d is None:
        pytest.skip("full MNIST IDX files not found (../shared/data/mnist or "
                    "$DIGITBATCH_MNIST_DIR): the drift cases need real digits")
    from digitbatch.ingestion import ingest
    from digitbatch.training import train

    tmp = tmp_path_factory.mktemp("mnist-drift")
    xt, yt = _idx(d, "train")
    write_idx(tmp / "ref", xt[:6000], yt[:6000], gz=False)
    write_idx(tmp / "ref", xt[50000:], yt[50000:], prefix="t10k", gz=False)
    ingest(tmp / "ref", tmp / "ref.zarr", chunk_size=3000, scheduler="synchronous")
    model = Path(train(tmp / "ref.zarr", tmp / "model", model="sgd").model_path)
    return tmp, model, _idx(d, "t10k")


def _shift(name: str, x: np.ndarray, y: np.ndarray):
    if name == "two-digits":
        keep = np.isin(y, (3, 8))
        return x[keep], y[keep]
    if name == "inverted":  # ingested with the wrong polarity
        return 255 - x, y
    if name == "blurred":  # a 3x3 box blur, twice: soft strokes, the same ink in total
        return _box_blur(_box_blur(x)), y
    if name == "thickened":  # a 3x3 dilation: thick strokes
        return _dilate(x), y
    return x, y


# case: (the signals that must be in alarm, the signals that must stay ok)
SHIFTS = {
    "mnist": ((), P.SIGNALS),
    "two-digits": (("prediction",), ()),
    "inverted": (("intensity", "ink"), ()),
    "blurred": (("ink",), ("prediction", "intensity")),
    "thickened": (("ink", "intensity"), ("prediction",)),
}


@pytest.mark.parametrize("case", list(SHIFTS))
def test_real_shifts_alarm_on_the_signal_that_moved(mnist_drift, case):
    from digitbatch.ingestion import ingest

    tmp, model, (xs, ys) = mnist_drift
    x, y = _shift(case, xs, ys)
    write_idx(tmp / case, x, y, gz=False)
    store = tmp / f"{case}.zarr"
    ingest(tmp / case, store, chunk_size=2500, scheduler="synchronous")
    base = ["score", str(store), "--model", str(model), "--scheduler", "synchronous"]
    prom = tmp / f"{case}.prom"
    gated = CliRunner().invoke(main, base + ["--out", str(tmp / f"{case}-gated.zarr"),
                                             "--fail-on", "drift-alarm",
                                             "--metrics-file", str(prom)])
    plain = CliRunner().invoke(main, base + ["--out", str(tmp / f"{case}.pred.zarr")])
    alarm, calm = SHIFTS[case]
    assert plain.exit_code == 0, plain.output
    assert gated.exit_code == (3 if alarm else 0), gated.output
    # exit 3 comes after the output is written and committed
    assert (tmp / f"{case}-gated.zarr" / "_SUCCESS").exists()
    gauges = {line.split("{")[0]: float(line.rsplit(" ", 1)[1])
              for line in prom.read_text().splitlines() if not line.startswith("#")}
    assert gauges["digitbatch_exit_status"] == (3 if alarm else 0)
    assert gauges["digitbatch_drift_alarm"] == (1 if alarm else 0)
    assert gauges["digitbatch_images_scored"] == len(y)
    m = json.loads((tmp / f"{case}.pred.zarr" / "metrics.json").read_text())
    d = m["drift"]
    status = {s: v["status"] for s, v in d["signals"].items()}
    assert d["overall"]["status"] == ("alarm" if alarm else "ok"), status
    for s in alarm:
        assert status[s] == "alarm", (s, d["signals"])
        assert s in gated.output
    for s in calm:
        assert status[s] == "ok", (s, d["signals"])
    if alarm:
        assert "DriftAlarmError: drift alarm" in gated.output
    if case == "mnist":
        # the expected accuracy of the full MNIST test set, from the reference's
        # accuracy per margin bin, is within 1 point of its measured accuracy
        assert m["n_labeled"] == 10_000
        assert abs(d["expected_accuracy"] - m["accuracy"]) <= 0.01, (d["expected_accuracy"],
                                                                     m["accuracy"])


def test_a_job_with_fail_on_writes_everything_then_exits_3(mnist_drift, tmp_path):
    """[monitor] fail_on: the report is written, the summary says alarm, the exit status is 3."""
    from digitbatch.ingestion import ingest

    tmp, model, (xs, ys) = mnist_drift
    x, y = _shift("inverted", xs[:2000], ys[:2000])
    write_idx(tmp_path / "inv", x, y, gz=False)
    ingest(tmp_path / "inv", tmp_path / "inv.zarr", chunk_size=700, scheduler="synchronous")
    spec = tmp_path / "nightly.toml"
    spec.write_text(f'[job]\nworkdir = "{tmp_path / "w"}"\n[score]\ninput = "{tmp_path / "inv.zarr"}"'
                    f'\nmodel = "{model}"\n[report]\ntop = 4\n[monitor]\nfail_on = "drift-alarm"\n')
    r = CliRunner().invoke(main, ["run", str(spec), "--scheduler", "synchronous"])
    assert r.exit_code == 3, r.output
    assert "DriftAlarmError" in r.output and "intensity PSI" in r.output
    summary = json.loads((tmp_path / "w" / "nightly.run.json").read_text())
    assert summary["outcome"] == "alarm"
    assert [s["outcome"] for s in summary["steps"]] == ["succeeded", "succeeded"]
    assert summary["error"]["type"] == "DriftAlarmError"
    html = (tmp_path / "w" / "report" / "report.html").read_text()
    assert "<h2>Drift</h2>" in html and "alarm" in html and "expected accuracy" in html
    assert (tmp_path / "w" / "report" / "drift.png").stat().st_size > 1000
    # the option overrides the spec: the same run without the gate exits 0 (the
    # report folder, drift.png and all, is a digitbatch report: replaced)
    r = CliRunner().invoke(main, ["run", str(spec), "--scheduler", "synchronous",
                                  "--fail-on", "never", "--set", "score.overwrite=true",
                                  "--set", 'job.steps=["score"]'])
    assert r.exit_code == 0, r.output
    from digitbatch.storage import made_by_digitbatch

    assert made_by_digitbatch(tmp_path / "w" / "report") == "report"
