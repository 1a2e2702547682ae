"""A quieter first hour: no MLflow chatter in `liverlab train` unless --verbose; the runs address is printed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import TINY
from liverlab.tracking.ui import runs_address, ui_hint

MLFLOW_CHATTER = ("Creating initial MLflow database tables", "Updating database tables", "Context impl",
                  "Will assume", "INFO mlflow", "Downloading artifacts")


def _train(tmp_path: Path, phantom_root: Path, *extra: str) -> str:
    raw = yaml.safe_load(TINY.read_text())
    raw["data"]["root"] = str(phantom_root)
    raw["data"].pop("phantom")
    experiment = tmp_path / "tiny.yaml"
    experiment.write_text(yaml.safe_dump(raw))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_AIR"))}
    cmd = [sys.executable, "-m", "liverlab.cli", "train", str(experiment), "--out", str(tmp_path / "run"),
           "--set", "unet.iterations=2", "--set", "unet.val_every=2", *extra]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout + done.stderr


def test_train_prints_liverlab_lines_but_no_mlflow_chatter(tmp_path, phantom_root):
    out = _train(tmp_path, phantom_root)
    assert not [line for line in out.splitlines() if any(c in line for c in MLFLOW_CHATTER)], out
    assert "run folder:" in out and "test/iou" in out  # liverlab's own lines stay
    db = (tmp_path / "run" / "mlflow.db").resolve()
    assert f"mlflow ui --backend-store-uri sqlite:///{db}" in out
    assert "http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning" in out


def test_verbose_shows_the_mlflow_lines_again(tmp_path, phantom_root):
    out = _train(tmp_path, phantom_root, "--verbose")
    assert "Creating initial MLflow database tables" in out


def test_runs_address_for_a_server_and_for_a_local_store():
    assert runs_address("http://10.0.0.5:5000/", "7") == "http://10.0.0.5:5000/#/experiments/7/runs?workflowType=machine_learning"
    assert ui_hint("http://10.0.0.5:5000", "7") == "MLflow runs: " + runs_address("http://10.0.0.5:5000", "7")
    local = ui_hint("sqlite:////tmp/x/mlflow.db", "3")
    assert local.splitlines() == ["MLflow: mlflow ui --backend-store-uri sqlite:////tmp/x/mlflow.db",
                                  "  then open http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning"]
