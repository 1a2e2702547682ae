"""Multi-node sweeps on a simulated cluster (head + one worker node, 1 CPU each).

``ray.cluster_utils.Cluster`` starts real raylets on this machine; the test
process is the driver (``ray.init(address=cluster.address)``). These tests
need a Ray of their own, so they do not use conftest's ``ray_session``: the
``cluster`` fixture shuts down any Ray already initialised in this process
(a process holds one Ray connection) and restarts a local one like
``ray_session``'s afterwards, so later tests that rely on it still find Ray up.

Every node process is started in its own working directory (``head-disk``,
``worker-disk``; the driver runs in ``driver-disk``). Ray workers inherit
their raylet's working directory, so a path through ``/proc/self/cwd`` names
a different folder in each "machine": that is how the tests simulate a disk
that is local to each node (see ``test_doctor_fails_when_storage_is_not_shared``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import TINY
from mlflow.tracking import MlflowClient

from liverlab.cli import main
from liverlab.errors import LiverlabError
from liverlab.sweep.doctor import run_doctor
from liverlab.sweep.doctor_table import FAIL, OK
from liverlab.sweep.preflight import quick_check
from liverlab.sweep.runner import SWEEP_FILE, SweepOptions, run_sweep


@dataclass
class SimCluster:
    cluster: Any
    worker: Any
    root: Path

    @property
    def head_id(self) -> str:
        return self.cluster.head_node.node_id

    @property
    def worker_id(self) -> str:
        return self.worker.node_id


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Head + worker node (num_cpus=1 each), each started in its own 'disk' folder."""
    import ray
    from ray.cluster_utils import Cluster

    had_ray = ray.is_initialized()
    if had_ray:  # conftest's ray_session: one connection per process, and we need ours
        ray.shutdown()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    disks = {name: tmp_path / f"{name}-disk" for name in ("head", "worker", "driver")}
    for disk in disks.values():
        (disk / "storage").mkdir(parents=True)
    # Raylets (and the Ray workers they start) keep the working directory they were started in.
    monkeypatch.chdir(disks["head"])
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        monkeypatch.chdir(disks["worker"])
        worker = c.add_node(num_cpus=1)
        monkeypatch.chdir(disks["driver"])
        ray.init(address=c.address, log_to_driver=False)
        yield SimCluster(c, worker, tmp_path)
    finally:
        ray.shutdown()
        c.shutdown()
        if had_ray:  # give ray_session's users back a local Ray like the one we shut down
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)


def _space(tmp_path: Path, phantom_root: Path, name: str, **fields: Any) -> Path:
    base = yaml.safe_load(TINY.read_text())
    base["data"]["root"] = str(phantom_root)
    base["data"].pop("phantom")
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    space = {
        "name": name, "base": "base.yaml", "stage": "unet", "seeds": [0],
        "objective": {"metric": "val/iou", "mode": "max"}, "scheduler": {"type": "none"},
        "arms": {"unet.model.norm": ["batch", "instance"]},
        "budget": {"samples_per_arm": 1, "max_concurrent": 2, "max_failures": 0},
        "resources": {"cpu": 1, "gpu": 0},
        **fields,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def _children(sweep_dir: Path) -> tuple[MlflowClient, Any, list[Any]]:
    info = json.loads((sweep_dir / SWEEP_FILE).read_text())
    client = MlflowClient(info["tracking_uri"])
    parent = client.get_run(info["parent_run_id"])
    children = client.search_runs([info["experiment_id"]],
                                  filter_string=f"tags.mlflow.parentRunId = '{info['parent_run_id']}'")
    return client, parent, children


def test_trials_of_one_sweep_run_on_both_nodes(cluster: SimCluster, phantom_root: Path) -> None:
    space = _space(cluster.root, phantom_root, "two_nodes", set={"unet.iterations": 16, "unet.val_every": 4})
    storage = cluster.root / "shared"
    assert run_sweep(SweepOptions(space=str(space), storage=str(storage), live=False, report=False)) == 0
    _, parent, children = _children(storage / "two_nodes")
    assert parent.info.status == "FINISHED"
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    # Two 1-CPU trials at once on two 1-CPU nodes: one must have run on each.
    assert {c.data.tags["liverlab.node_id"] for c in children} == {cluster.head_id, cluster.worker_id}
    assert not (storage / "two_nodes" / ".liverlab-doctor").exists()  # the preflight cleaned up after itself


def test_losing_a_worker_node_mid_trial_resumes_its_trial_elsewhere(cluster: SimCluster, phantom_root: Path) -> None:
    iterations, val_every = 160, 4  # 40 reports
    space = _space(
        cluster.root,
        phantom_root,
        "node_loss",
        set={"unet.iterations": iterations, "unet.val_every": val_every},
        budget={"samples_per_arm": 1, "max_concurrent": 2, "max_failures": 2},
    )
    storage = cluster.root / "shared"
    sweep_dir = storage / "node_loss"
    removed: dict[str, str] = {}

    def remove_worker_once_it_checkpointed() -> None:
        """Watch MLflow for the trial on the worker node, then its checkpoint in storage, then kill the node."""
        deadline = time.time() + 240
        while time.time() < deadline:
            time.sleep(0.2)
            if not (sweep_dir / SWEEP_FILE).is_file():
                continue
            try:
                _, _, children = _children(sweep_dir)
            except Exception:  # the store is being written by the sweep: ask again
                continue
            for child in children:
                tid = child.data.tags.get("liverlab.trial_id", "")
                if child.data.tags.get("liverlab.node_id") == cluster.worker_id and list(
                        sweep_dir.glob(f"*{tid}*/checkpoint_0*")):
                    removed["at_ms"] = int(time.time() * 1000)
                    cluster.cluster.remove_node(cluster.worker, allow_graceful=False)  # a hard node loss
                    removed["trial_id"] = tid
                    return

    watcher = threading.Thread(target=remove_worker_once_it_checkpointed, daemon=True)
    watcher.start()
    rc = run_sweep(SweepOptions(space=str(space), storage=str(storage), live=False, report=False))
    watcher.join(timeout=5)
    assert removed, "no trial on the worker node reported a checkpoint before the sweep ended"
    assert rc == 0
    client, parent, children = _children(sweep_dir)
    trial_ids = [c.data.tags["liverlab.trial_id"] for c in children]
    assert len(children) == 2 and len(set(trial_ids)) == 2, trial_ids  # nothing lost, nothing duplicated
    assert all(c.info.status == "FINISHED" for c in children), [c.info.status for c in children]
    assert parent.info.status == "FINISHED"
    moved = next(c for c in children if c.data.tags["liverlab.trial_id"] == removed["trial_id"])
    assert moved.data.tags["liverlab.node_id"] == cluster.head_id  # its run was reopened on the surviving node
    history = client.get_metric_history(moved.info.run_id, "val/iou")
    after = sorted(m.step for m in history if m.timestamp > removed["at_ms"])
    assert after and after[0] > val_every, after  # continued from its checkpoint, not retrained from the start
    assert after[-1] == iterations  # MLflow steps are optimiser iterations
    # Not asserted: the reports before the loss are all in MLflow. The tracker sends metrics from a
    # background thread about once a second, so a hard node loss can drop the last second of them.


def test_doctor_passes_on_the_healthy_cluster(cluster: SimCluster, phantom_root: Path, capsys) -> None:
    shared = cluster.root / "shared"
    uri = f"sqlite:///{shared}/mlflow.db"
    checks = run_doctor(storage=str(shared), tracking_uri=uri, data=str(phantom_root))
    assert not [c for c in checks if c.verdict == FAIL], [c.line() for c in checks]
    for kind in ("storage", "tracking", "data", "versions"):
        where = {c.where for c in checks if c.check == kind and c.verdict == OK}
        assert any(cluster.head_id[:8] in w for w in where) and any(cluster.worker_id[:8] in w for w in where), kind
    assert main(["doctor", "--storage", str(shared), "--tracking-uri", uri, "--data", str(phantom_root)]) == 0
    out = capsys.readouterr().out
    assert "0 FAIL" in out and "ready" in out
    assert not (shared / ".liverlab-doctor").exists()


def test_doctor_fails_when_storage_is_not_shared(cluster: SimCluster, capsys) -> None:
    """Simulated per-node local disks: ``node-local`` is a symlink to ``/proc/self/cwd/storage``.

    ``/proc/self`` is resolved by the kernel for the process that opens the
    path, and each process of the simulated cluster has its own working
    directory (the head's workers ``head-disk``, the worker node's
    ``worker-disk``, the driver ``driver-disk``; each holds a ``storage``
    folder). So the very same path names three different folders, exactly as
    ``/data/sweeps`` on three machines that did not mount a shared volume.
    The doctor is not told: it must find out by exchanging files.
    """
    local = cluster.root / "node-local"
    local.symlink_to("/proc/self/cwd/storage")
    checks = run_doctor(storage=str(local))
    bad = {c.where for c in checks if c.check == "storage" and c.verdict == FAIL}
    assert any(cluster.head_id[:8] in w for w in bad) and any(cluster.worker_id[:8] in w for w in bad), bad
    assert all("not shared" in c.detail for c in checks if c.check == "storage" and c.verdict == FAIL)
    # What each "machine" holds: the driver's probe was removed, and no node created one in its local folder.
    for disk in ("head", "worker", "driver"):
        assert list((cluster.root / f"{disk}-disk" / "storage").iterdir()) == []
    assert main(["doctor", "--storage", str(local)]) == 1
    assert "NOT ready" in capsys.readouterr().out
    # The sweep's preflight is the same check: it refuses before any trial starts.
    with pytest.raises(LiverlabError, match="not shared"):
        quick_check(str(local), f"sqlite:///{local}/mlflow.db")


def test_data_digest_ignores_node_local_caches(tmp_path: Path, phantom_root: Path) -> None:
    from liverlab.sweep.node_probe import data_fingerprint

    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(phantom_root, a, ignore=shutil.ignore_patterns(".cache", "*.lock"))
    shutil.copytree(a, b)
    for dataset in ("ct", "mri"):  # what a node that ran trials holds, and a fresh copy does not
        (b / dataset / ".cache" / "0123abcd").mkdir(parents=True)
        (b / dataset / ".cache" / "0123abcd" / "slices.npy").write_bytes(b"x")
        (b / dataset / ".manifest.lock").touch()
    (b / "mri.lock").touch()
    for root in (Path(""), Path("mri")):  # --data as the data root, or as one dataset
        assert data_fingerprint(a / root)["digest"] == data_fingerprint(b / root)["digest"], root
    (b / "mri" / "imagesTr" / "extra_0000.nii.gz").write_bytes(b"")  # a real difference still shows
    assert data_fingerprint(a / "mri")["digest"] != data_fingerprint(b / "mri")["digest"]


def test_preflight_names_the_node_whose_data_differs(cluster: SimCluster, phantom_root: Path) -> None:
    """``data`` is a path through ``/proc/self/cwd``: each simulated machine has its own copy."""
    for disk in ("head", "worker", "driver"):
        shutil.copytree(phantom_root / "mri", cluster.root / f"{disk}-disk" / "mri",
                        ignore=shutil.ignore_patterns(".cache", "*.lock"))
    (cluster.root / "worker-disk" / "mri" / ".cache").mkdir()  # a node-local slice cache: not a difference
    data = str(cluster.root / "data")
    (cluster.root / "data").symlink_to("/proc/self/cwd/mri")
    shared = cluster.root / "shared"
    shared.mkdir()
    checks = quick_check(str(shared), None, data=[data])
    assert {c.verdict for c in checks if c.check == "data"} == {OK}, [c.line() for c in checks]
    (cluster.root / "worker-disk" / "mri" / "labelsTr" / "mri_99.nii.gz").write_bytes(b"")
    with pytest.raises(LiverlabError, match="differs from the driver's copy") as err:
        quick_check(str(shared), None, data=[data])
    assert cluster.worker_id[:8] in str(err.value) and cluster.head_id[:8] not in str(err.value)


def test_doctor_connects_to_a_ray_start_cluster_with_token_auth(tmp_path: Path) -> None:
    """``ray start --head`` with RAY_AUTH_MODE=token, a driver connecting with the token, and without it."""
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(os.urandom(32).hex())  # where Ray looks for it by default
    temp_dir = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths have a length limit
    env = {**os.environ, "HOME": str(home), "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    log = tmp_path / "ray-start.log"
    with log.open("wb") as out:
        head = subprocess.Popen(
            [str(Path(sys.executable).parent / "ray"), "start", "--head", f"--port={_free_port()}", "--num-cpus=1",
             f"--temp-dir={temp_dir}", "--include-dashboard=false", "--block"],
            env=env, start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
    try:
        address_file = temp_dir / "ray_current_cluster"
        deadline = time.time() + 90
        while time.time() < deadline and not address_file.is_file():
            assert head.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
        address = address_file.read_text().strip()
        cmd = [sys.executable, "-m", "liverlab.cli", "doctor", "--address", address,
               "--storage", str(tmp_path / "shared")]
        ok = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-3000:]
        assert "1 node(s) alive" in ok.stdout
        # A wrong token: Ray retries the GCS once a second, 20 times by default; 3 are enough here.
        wrong = subprocess.run(cmd, env={**env, "RAY_AUTH_TOKEN": "0" * 64, "RAY_NUM_REDIS_GET_RETRIES": "3"},
                               cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert wrong.returncode == 2 and "RAY_AUTH_MODE=token" in wrong.stderr, wrong.stderr[-3000:]
    finally:
        # The head and every process it started share its session: stop them all, nothing else.
        _stop_group(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _stop_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pass
    try:  # `ray start --block` leaves the GCS behind on SIGTERM alone
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
