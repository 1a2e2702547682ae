"""`liverlab sweep` end to end: real Ray Tune trials, real MLflow runs read back."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import TINY
from mlflow.tracking import MlflowClient

from liverlab.cli import main
from liverlab.errors import LiverlabError
from liverlab.sweep.runner import SWEEP_FILE, SweepOptions, run_sweep


def _write_space(tmp_path: Path, phantom_root: Path, name: str, **fields) -> Path:
    base = yaml.safe_load(TINY.read_text())
    base["data"]["root"] = str(phantom_root)
    base["data"].pop("phantom")
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    space = {
        "name": name,
        "base": "base.yaml",
        "stage": "unet",
        "seeds": [0],
        "objective": {"metric": "val/iou", "mode": "max"},
        "scheduler": {"type": "none"},
        "budget": {"samples_per_arm": 1, "max_concurrent": 2, "max_failures": 0},
        "resources": {"cpu": 1, "gpu": 0},
        **fields,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def _runs(sweep_dir: Path) -> tuple[MlflowClient, object, list]:
    info = json.loads((sweep_dir / SWEEP_FILE).read_text())
    client = MlflowClient(info["tracking_uri"])
    parent = client.get_run(info["parent_run_id"])
    children = client.search_runs(
        [info["experiment_id"]], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    return client, parent, children


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path, phantom_root, capsys):
    space = _write_space(tmp_path, phantom_root, "dry", arms={"unet.model.norm": ["batch", "instance"]}, seeds=[0, 1],
                         params={"unet.optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}})
    assert main(["sweep", str(space), "--dry-run", "--storage", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "unet.model.norm=batch" in out and "unet.model.norm=instance" in out
    assert "unet.optim.lr ~ float[0.0001, 0.01] log" in out
    assert "trials: 4" in out
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(("max_t", "grace"), [(1, 1), (2, 1), (3, 1), (6, 2), (15, 5), (20, 7)])
def test_default_asha_grace_period_is_a_third_of_max_t(max_t, grace):
    from liverlab.sweep.space import default_grace

    assert default_grace(max_t) == grace


def test_dry_run_shows_the_asha_grace_period_in_use(tmp_path, phantom_root, capsys):
    # 24 U-Net iterations validated every 4: max_t 6, default grace period 2; a grace period in the space wins.
    for scheduler, shown in (({"type": "asha"}, "(max_t 6, grace 2, "), ({"type": "asha", "grace_period": 3},
                                                                        "(max_t 6, grace 3, ")):
        space = _write_space(tmp_path, phantom_root, "graced", scheduler=scheduler,
                             set={"unet.iterations": 24, "unet.val_every": 4})
        assert main(["sweep", str(space), "--dry-run", "--storage", str(tmp_path / "s")]) == 0
        assert shown in capsys.readouterr().out


def test_unknown_key_in_space_names_file_and_key(tmp_path, phantom_root, capsys):
    space = _write_space(tmp_path, phantom_root, "bad", arms={"unet.nonsense": [1, 2]})
    assert main(["sweep", str(space), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert str(space) in err and "arms.unet.nonsense: unknown config key" in err


def test_preflight_refuses_gpus_the_cluster_does_not_have(tmp_path, phantom_root, ray_session):
    space = _write_space(tmp_path, phantom_root, "gpu", resources={"cpu": 1, "gpu": 1})
    with pytest.raises(LiverlabError, match="GPU"):
        run_sweep(SweepOptions(space=str(space), storage=str(tmp_path / "s"), live=False, report=False))


def test_pipeline_sweep_tracks_parent_and_children(tmp_path, phantom_root, ray_session, capfd):
    space = _write_space(
        tmp_path, phantom_root, "e2e", stage="pipeline", arms={"synthesis": ["none", "essnet"]}, seeds=[0],
        params={"unet.mixing_ratio": {"type": "float", "low": 0.5, "high": 1.5, "when": {"synthesis": ["essnet"]}}},
        budget={"samples_per_arm": 2, "max_concurrent": 2, "max_failures": 0},
    )
    rc = run_sweep(SweepOptions(space=str(space), storage=str(tmp_path / "s"), live=False, report=False))
    assert rc == 0
    client, parent, children = _runs(tmp_path / "s" / "e2e")
    assert parent.info.status == "FINISHED" and parent.data.tags["liverlab.sweep"] == "e2e"
    assert len(children) == 4
    by_arm = {c.data.tags["liverlab.arm"]: c for c in children}
    assert set(by_arm) == {"synthesis=none", "synthesis=essnet"}
    # The two EssNet trials (same data, settings and seed) share one translator and one synthetic set.
    cache = tmp_path / "s" / "e2e" / "cache"
    assert len(list((cache / "essnet").glob("*/done.json"))) == 1
    assert len(list((cache / "synthetic").glob("*/provenance.json"))) == 1
    # Trial working files live in node-local scratch, not in the trial folders Tune syncs to storage.
    assert not list((tmp_path / "s" / "e2e").rglob("work")) and not list((tmp_path / "s").rglob("*.tmp-*"))
    assert "Saving experiment state" not in capfd.readouterr().err
    essnet_runs = [c for c in children if c.data.tags["liverlab.arm"] == "synthesis=essnet"]
    assert sorted(c.data.tags["liverlab.synthetic_reused"] for c in essnet_runs) == ["false", "true"]
    for child in children:
        tags = child.data.tags
        assert child.info.status == "FINISHED"
        for key in ("liverlab.seed", "liverlab.stage", "liverlab.trial_id", "liverlab.git_commit", "liverlab.git_dirty",
                    "liverlab.manifest_hash", "liverlab.space_file", "liverlab.version", "liverlab.node_id"):
            assert tags.get(key), key
        assert tags["liverlab.stage"] == "pipeline" and tags["liverlab.space_file"] == str(space.resolve())
        history = client.get_metric_history(child.info.run_id, "val/iou")
        assert [m.step for m in history] == [4, 8]  # optimiser iterations (tiny: 8, validated every 4)
        assert "test/iou" in child.data.metrics
        assert child.data.params["synthesis"] == child.data.tags["liverlab.arm"].split("=")[1]
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"per_patient.parquet", "config.yaml"} <= artifacts
    essnet = by_arm["synthesis=essnet"]
    assert 0.5 <= float(essnet.data.params["unet.mixing_ratio"]) <= 1.5
    assert "val/shape_dice" in essnet.data.metrics  # the translator's figures travel with the trial
    assert any(a.path == "panels" for a in client.list_artifacts(essnet.info.run_id))


def test_asha_trials_that_reach_max_t_run_their_test_evaluation(tmp_path, phantom_root, ray_session):
    # max_t is the U-Net's last report; Ray's ASHA stops trials at max_t by default, which cut
    # every trial off before the test evaluation that follows that report.
    space = _write_space(
        tmp_path, phantom_root, "asha", set={"unet.iterations": 12, "unet.val_every": 4},
        params={"unet.optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2},
        budget={"samples_per_arm": 3, "max_concurrent": 2, "max_failures": 0},
    )
    assert run_sweep(SweepOptions(space=str(space), storage=str(tmp_path / "s"), live=False, report=False)) == 0
    client, _, children = _runs(tmp_path / "s" / "asha")
    assert len(children) == 3
    finished = [c for c in children if c.data.tags.get("liverlab.stopped_early") != "true"]
    assert finished  # the first trial at a rung has nothing to be cut against
    for child in finished:
        assert [m.step for m in client.get_metric_history(child.info.run_id, "val/iou")] == [4, 8, 12]
        assert "test/iou" in child.data.metrics


def test_a_failing_trial_is_recorded_failed_and_others_finish(tmp_path, phantom_root, ray_session):
    # data.size 34 is valid config but not divisible by the U-Net's 2**(depth-1): that trial raises.
    space = _write_space(tmp_path, phantom_root, "fail", arms={"data.size": [32, 34]})
    rc = run_sweep(SweepOptions(space=str(space), storage=str(tmp_path / "s"), live=False, report=False))
    assert rc == 0  # not every trial failed
    _, parent, children = _runs(tmp_path / "s" / "fail")
    status = {c.data.tags["liverlab.arm"]: c for c in children}
    assert status["data.size=32"].info.status == "FINISHED"
    failed = status["data.size=34"]
    assert failed.info.status == "FAILED" and "34" in failed.data.tags["liverlab.error"]
    assert parent.info.status == "FINISHED"


def _state_names_a_checkpoint(sweep_dir: Path) -> bool:
    """Tune's newest saved experiment state names a trial checkpoint (a restore would read it)."""
    states = sorted(sweep_dir.glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    try:
        return bool(states) and "checkpoint_0" in states[-1].read_text()
    except OSError:  # being replaced
        return False


@pytest.mark.parametrize("checkpoints", ["kept", "lost"])
def test_sigkill_of_the_driver_resumes_with_one_run_per_trial(tmp_path, phantom_root, checkpoints):
    """``lost``: the checkpoints Tune's saved state names are gone, as when ``num_to_keep`` deleted them
    after the last state save and before a ``kill -9`` (issue 21). Ray refuses such a restore before
    the trial starts; the resume runs the slot again from the start, and its old run is marked replaced."""
    space = _write_space(tmp_path, phantom_root, "killed", arms={"unet.model.norm": ["batch", "instance"]},
                         set={"unet.iterations": 160, "unet.val_every": 4})
    storage = tmp_path / "s"
    cmd = [sys.executable, "-m", "liverlab.cli", "sweep", str(space), "--storage", str(storage), "--no-report"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # Own session: SIGKILL reaches the driver and the Ray processes it started, nothing else.
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def ready() -> bool:
        found = list(storage.glob("killed/*/checkpoint_0*"))
        return bool(found) and (checkpoints == "kept" or _state_names_a_checkpoint(storage / "killed"))

    deadline = time.time() + 240
    while time.time() < deadline and not ready():
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        time.sleep(0.5)
    assert ready(), "no trial reported a checkpoint in time"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(2)
    if checkpoints == "lost":
        for ckpt in storage.glob("killed/*/checkpoint_0*"):
            shutil.rmtree(ckpt)

    resumed = subprocess.run(cmd + ["--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    client, parent, every = _runs(storage / "killed")
    replaced = [c for c in every if "liverlab.replaced_by" in c.data.tags]
    children = [c for c in every if "liverlab.replaced_by" not in c.data.tags]
    assert len(children) == 2, [c.data.tags.get("liverlab.trial_id") for c in children]
    assert len({c.data.tags["liverlab.trial_id"] for c in children}) == 2
    assert all(c.info.status == "FINISHED" for c in children), [
        (c.info.status, c.data.tags.get("liverlab.error")) for c in children] + [resumed.stdout[-2000:]]
    assert parent.info.status == "FINISHED"
    ids = {c.info.run_id for c in children}
    assert all(r.info.status == "KILLED" and r.data.tags["liverlab.replaced_by"] in ids for r in replaced)
    if checkpoints == "lost":
        assert replaced, [(c.info.status, c.data.tags.get("liverlab.trial_id")) for c in every]
        assert "lost before they could run" in resumed.stdout + resumed.stderr, resumed.stdout[-3000:]


def test_exit_code_is_non_zero_when_every_trial_failed(tmp_path, phantom_root, ray_session):
    space = _write_space(tmp_path, phantom_root, "allfail", set={"data.size": 34})
    rc = run_sweep(SweepOptions(space=str(space), storage=str(tmp_path / "s"), live=False, report=False))
    assert rc == 1
    _, parent, children = _runs(tmp_path / "s" / "allfail")
    assert [c.info.status for c in children] == ["FAILED"] and parent.info.status == "FAILED"


def test_existing_sweep_needs_resume_and_resume_needs_a_sweep(tmp_path, phantom_root, ray_session):
    space = _write_space(tmp_path, phantom_root, "again")
    storage = str(tmp_path / "s")
    with pytest.raises(LiverlabError, match="no sweep state"):
        run_sweep(SweepOptions(space=str(space), storage=storage, resume=True, live=False, report=False))
    assert run_sweep(SweepOptions(space=str(space), storage=storage, live=False, report=False)) == 0
    with pytest.raises(LiverlabError, match="--resume"):
        run_sweep(SweepOptions(space=str(space), storage=storage, live=False, report=False))
    # Resuming a finished sweep reruns nothing and keeps one run per trial.
    assert run_sweep(SweepOptions(space=str(space), storage=storage, resume=True, live=False, report=False)) == 0
    _, _, children = _runs(tmp_path / "s" / "again")
    assert len(children) == 1 and children[0].info.status == "FINISHED"


def test_relative_data_paths_mean_the_directory_the_sweep_ran_from(tmp_path, phantom_root, monkeypatch):
    """A trial runs in Ray's working directory; relative paths must still mean the driver's."""
    from liverlab.sweep.space import load_space

    base = yaml.safe_load(TINY.read_text())
    base["data"].pop("phantom")
    base["data"]["root"] = "phantoms"  # relative, like the shipped CHAOS experiments
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    space = {"name": "rel", "base": "base.yaml", "stage": "unet", "seeds": [0], "set": {"data.cache_dir": "cache"},
             "objective": {"metric": "val/iou", "mode": "max"}, "scheduler": {"type": "none"}}
    (tmp_path / "rel.yaml").write_text(yaml.safe_dump(space))
    monkeypatch.chdir(tmp_path)
    loaded = load_space("rel.yaml")
    elsewhere = tmp_path / "ray-trial-dir"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # what a Ray worker sees
    cfg = loaded.config({}, 0)
    assert cfg.data.root == str(tmp_path / "phantoms")
    assert cfg.data.cache_dir == str(tmp_path / "cache")
