"""Ctrl-C and SIGTERM on real `liverlab sweep` / `liverlab train` processes, and two sweeps on one new store.

Each test runs the command as a subprocess on the tiny phantoms (shortened with
--set), sends the signal to its PID once a trial has reported a checkpoint,
and reads the MLflow runs back. The resume runs the exact command the
interrupted process printed.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import TINY
from mlflow.tracking import MlflowClient
from test_sweep import _runs, _write_space

from liverlab.tracking.reader import read_runs

pytestmark = pytest.mark.slow
LIVERLAB = [sys.executable, "-m", "liverlab.cli"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def _start(cmd: list[str], cwd: Path) -> subprocess.Popen:
    # Own session: nothing else in the test's process group sees the signal.
    return subprocess.Popen(LIVERLAB + cmd, cwd=cwd, env=ENV, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait_for(proc: subprocess.Popen, pattern: str, root: Path, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and not list(root.glob(pattern)):
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        time.sleep(0.3)
    assert list(root.glob(pattern)), f"no {pattern} under {root} in {timeout} s"


def _resume_line(out: str) -> tuple[str, list[str]]:
    lines = [line for line in out.splitlines() if "resume with: liverlab " in line]
    assert len(lines) == 1, out[-3000:]
    command = lines[0].split("resume with: ", 1)[1].split(" (log: ")[0]
    return lines[0], shlex.split(command)[1:]  # without the leading `liverlab`


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_the_sweep_cleanly_and_resume_runs_each_trial_once(tmp_path, phantom_root, sig):
    space = _write_space(tmp_path, phantom_root, "sig", arms={"unet.model.norm": ["batch", "instance"]},
                         set={"unet.iterations": 80, "unet.val_every": 4})
    storage = tmp_path / "s"
    proc = _start(["sweep", str(space), "--storage", str(storage)], tmp_path)
    _wait_for(proc, "sig/*/checkpoint_0*", storage)
    t0 = time.monotonic()
    proc.send_signal(sig)
    out = proc.communicate(timeout=180)[0].decode()
    stop_s = time.monotonic() - t0

    assert proc.returncode == 128 + sig, out[-3000:]  # 130 / 143
    line, resume = _resume_line(out)
    assert resume == ["sweep", str(space), "--storage", str(storage), "--resume"]
    assert f"interrupted by {signal.Signals(sig).name}" in line and "of 2 planned trials finished" in line
    after = out.split(f"liverlab: {signal.Signals(sig).name} received", 1)[1]  # what the signal made appear
    for noise in ("Tuner.restore", "logging.cc", "SIGTERM received at", "Traceback"):
        assert noise not in after, noise
    sweep_dir = storage / "sig"
    assert not (sweep_dir / "report").exists()
    log = Path(line.rsplit("(log: ", 1)[1].rstrip(")"))
    assert log.parent == sweep_dir and log.is_file()
    _, parent, children = _runs(sweep_dir)
    assert parent.info.status == "KILLED"
    assert children and all(c.info.status != "RUNNING" for c in children), [c.info.status for c in children]
    assert "KILLED" in {c.info.status for c in children}
    print(f"{signal.Signals(sig).name}: exit {proc.returncode} {stop_s:.1f} s after the signal; "
          f"runs {[c.info.status for c in children]}; {line}")

    t0 = time.monotonic()
    resumed = subprocess.run(LIVERLAB + resume, cwd=tmp_path, env=ENV, check=False, capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "2 of 2 planned trials finished" in resumed.stdout
    info = json.loads((sweep_dir / "liverlab_sweep.json").read_text())
    runs = read_runs(info["tracking_uri"], parent_run_id=info["parent_run_id"])
    assert runs.height == 2 and runs["status"].to_list() == ["FINISHED", "FINISHED"]
    assert sorted(zip(runs["arm"], runs["seed"], runs["sample"])) == [
        ("unet.model.norm=batch", 0, "0"), ("unet.model.norm=instance", 0, "0")]
    everything = read_runs(info["tracking_uri"], parent_run_id=info["parent_run_id"], include_replaced=True)
    others = everything.filter(everything["status"] != "FINISHED")
    assert others.height == 0 or others["replaced_by"].null_count() == 0  # any other run names its replacement
    client = MlflowClient(info["tracking_uri"])
    assert client.get_run(info["parent_run_id"]).info.status == "FINISHED"
    print(f"resume: exit 0 in {time.monotonic() - t0:.0f} s, {runs.height} FINISHED runs, {everything.height} in all")


def test_two_sweeps_started_together_on_one_new_sqlite_store(tmp_path, phantom_root):
    store = tmp_path / "shared.db"
    procs = []
    for name in ("one", "two"):
        space = _write_space(tmp_path, phantom_root, name, budget={"samples_per_arm": 1, "max_concurrent": 1,
                                                                     "max_failures": 0})
        procs.append(_start(["sweep", str(space), "--storage", str(tmp_path / "s"), "--no-report",
                             "--tracking-uri", f"sqlite:///{store}"], tmp_path))
    outs = [p.communicate(timeout=400)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n----\n".join(o[-2000:] for o in outs)
    client = MlflowClient(f"sqlite:///{store}")
    for name in ("one", "two"):
        exp = client.get_experiment_by_name(name)
        runs = client.search_runs([exp.experiment_id])
        assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]  # parent + one trial


def test_sigterm_stops_train_and_the_same_command_resumes_its_run(tmp_path, phantom_root):
    base = yaml.safe_load(TINY.read_text())
    base["data"]["root"] = str(phantom_root)
    base["data"].pop("phantom")
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(base))
    out = tmp_path / "run"
    proc = _start(["train", str(exp), "--set", "unet.iterations=60", "--out", str(out)], tmp_path)
    _wait_for(proc, "checkpoint/state.pt", out)
    proc.send_signal(signal.SIGTERM)
    text = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 143, text[-3000:]
    line, resume = _resume_line(text)
    assert resume == ["train", str(exp), "--set", "unet.iterations=60", "--out", str(out)]
    assert f"last checkpoint {out / 'checkpoint' / 'state.pt'}" in line and "Traceback" not in text
    saved = json.loads((out / "liverlab_run.json").read_text())
    client = MlflowClient(saved["tracking_uri"])
    assert client.get_run(saved["run_id"]).info.status == "KILLED"

    resumed = subprocess.run(LIVERLAB + resume, cwd=tmp_path, env=ENV, check=False, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert [r.info.run_id for r in runs] == [saved["run_id"]] and runs[0].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(saved["run_id"], "val/iou")]
    assert steps == sorted(set(steps)) and steps[-1] == 60  # continued, not restarted
    assert "liverlab.error" not in runs[0].data.tags
