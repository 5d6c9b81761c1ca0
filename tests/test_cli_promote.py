"""``digitbatch promote``: exit statuses and what it prints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from digitbatch.cli import main
from digitbatch.modelio import load_model

from .conftest import make_store


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A gate store, a model right on all of it and one right on about 89% of it."""
    from digitbatch.training import train

    tmp = tmp_path_factory.mktemp("cli-promote")
    return {"gate": make_store(tmp, 700, seed=50, n_test=0),
            "good": Path(train(make_store(tmp, 600, seed=1), tmp / "good", seed=0).model_path),
            "weak": Path(train(make_store(tmp, 60, seed=3, noise=0.3), tmp / "weak",
                               seed=0).model_path)}


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_promote_refuse_rollback(pair, tmp_path):
    models = tmp_path / "models"
    r = run("promote", pair["weak"], "--models", models, "--gate", pair["gate"])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("promoted: sgd-") and "no champion yet" in r.output
    r = run("promote", pair["good"], "--models", models, "--gate", pair["gate"], "--json")
    assert r.exit_code == 0, r.output
    rec = json.loads(r.output)
    assert rec["decision"] == "promoted" and rec["verdict"] == "better"
    weak_acc = rec["accuracy"]["champion"]

    r = run("promote", pair["weak"], "--models", models, "--gate", pair["gate"])
    assert r.exit_code == 3, r.output
    assert "PromotionRefusedError" in r.output
    assert f"candidate accuracy {weak_acc:.4f}, champion 1.0000" in r.output  # both figures
    assert load_model(models).sha256 == load_model(pair["good"]).sha256

    r = run("promote", "--rollback", "--models", models)
    assert r.exit_code == 0, r.output
    assert r.output.startswith("rolled back: ")
    assert load_model(models).sha256 == load_model(pair["weak"]).sha256
    r = run("promote", "--rollback", "--models", models)
    assert r.exit_code == 1 and "no earlier one to roll back to" in r.output


def test_min_accuracy_without_a_champion_exits_3(pair, tmp_path):
    r = run("promote", pair["weak"], "--models", tmp_path / "m", "--gate", pair["gate"],
            "--min-accuracy", "0.95")
    assert r.exit_code == 3 and "below --min-accuracy 0.9500" in r.output


def test_usage_errors(pair, tmp_path):
    r = run("promote", pair["good"], "--models", tmp_path / "m")
    assert r.exit_code == 2 and "give CANDIDATE and --gate" in r.output
    r = run("promote", pair["good"], "--rollback", "--models", tmp_path / "m")
    assert r.exit_code == 2 and "--rollback takes only --models" in r.output
    r = run("promote", pair["good"], "--models", tmp_path / "m", "--gate", pair["gate"],
            "--alpha", "2")
    assert r.exit_code == 1 and "PromotionError: --alpha must be" in r.output
