"""Object-store sweep storage: a real S3 API (moto's server on 127.0.0.1) through pyarrow."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from test_sweep import _write_space

from liverlab import storage

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def test_join_keeps_the_uri_query_and_plain_paths():
    uri = "s3://bucket/sweeps?endpoint_override=127.0.0.1:9000&scheme=http"
    assert storage.join(uri, "name", "cache") == "s3://bucket/sweeps/name/cache?endpoint_override=127.0.0.1:9000&scheme=http"
    assert storage.join("/data/sweeps", "name") == "/data/sweeps/name"
    assert storage.is_uri(uri) and not storage.is_uri("/data") and not storage.is_uri("file:///data")


@pytest.fixture(scope="module")
def s3_endpoint():
    pytest.importorskip("moto", reason="moto[server] (dev extra) provides the local S3 API")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    old = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    try:
        import pyarrow.fs as pafs

        fs = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", region="us-east-1",
                               allow_bucket_creation=True)
        for _ in range(60):
            try:
                fs.create_dir("liverlab")
                break
            except OSError:
                time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_pipeline_sweep_on_object_storage_and_resume(tmp_path, phantom_root, s3_endpoint):
    uri = f"s3://liverlab/sweeps?endpoint_override={s3_endpoint}&scheme=http&region=us-east-1"
    space = _write_space(tmp_path, phantom_root, "s3", stage="pipeline", arms={"synthesis": ["essnet"]},
                         budget={"samples_per_arm": 2, "max_concurrent": 2, "max_failures": 0},
                         params={"unet.mixing_ratio": {"type": "float", "low": 0.5, "high": 1.5}})
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    cmd = [sys.executable, "-m", "liverlab.cli", "sweep", str(space), "--storage", uri, "--tracking-uri", tracking,
           "--no-report"]
    env = {**os.environ, **CREDENTIALS, "LIVERLAB_NODE_CACHE": str(tmp_path / "node-cache")}
    # A fresh driver (and local Ray) per run, so the trial workers inherit the credentials.
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    sweep = storage.join(uri, "s3")
    info = json.loads(storage.read_text(storage.join(sweep, "liverlab_sweep.json")))
    assert info["storage"] == sweep
    # Tune's experiment state, the translator and the synthetic set all live in the bucket.
    assert storage.exists(storage.join(sweep, "cache"))
    import pyarrow.fs as pafs

    fs, root = storage.filesystem(sweep)
    names = [i.path for i in fs.get_file_info(pafs.FileSelector(root, recursive=True))]
    assert sum(p.endswith("/done.json") and "/cache/essnet/" in p for p in names) == 1
    assert sum(p.endswith("/provenance.json") and "/cache/synthetic/" in p for p in names) == 1
    assert any(Path(p).name.startswith("experiment_state") for p in names)
    # Trial working files stay in node-local scratch (removed when the trial ends): the bucket holds
    # Tune's state, the reported checkpoints, the pipeline cache and liverlab_sweep.json only.
    assert not [p for p in names if "/work/" in p or p.endswith("/work")], [p for p in names if "/work" in p][:5]
    assert not [p for p in names if ".tmp-" in p], [p for p in names if ".tmp-" in p][:5]
    assert "Saving experiment state" not in run.stdout + run.stderr, run.stderr[-3000:]
    assert not list((tmp_path / "node-cache" / "trials").rglob("*")), "trial scratch left behind"

    client = MlflowClient(tracking)
    children = client.search_runs([info["experiment_id"]],
                                  filter_string=f"tags.mlflow.parentRunId = '{info['parent_run_id']}'")
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    assert sorted(c.data.tags["liverlab.synthetic_reused"] for c in children) == ["false", "true"]

    # --resume finds the sweep in the bucket, reruns nothing, duplicates no run.
    again = subprocess.run(cmd + ["--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    after = client.search_runs([info["experiment_id"]],
                               filter_string=f"tags.mlflow.parentRunId = '{info['parent_run_id']}'")
    assert sorted(c.info.run_id for c in after) == sorted(c.info.run_id for c in children)


def test_object_storage_without_a_tracking_server_is_refused(tmp_path, phantom_root, capsys, monkeypatch):
    from liverlab.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    space = _write_space(tmp_path, phantom_root, "s3bad")
    assert main(["sweep", str(space), "--storage", "s3://liverlab/x?endpoint_override=127.0.0.1:1&scheme=http"]) == 2
    assert "needs --tracking-uri" in capsys.readouterr().err


def test_doctor_probes_object_storage_from_the_nodes(s3_endpoint, tmp_path):
    """The token exchange through the bucket: the driver writes, each node (a Ray task) reads and writes."""
    from liverlab.sweep.probe_storage import PROBE_ROOT, node_write

    good = f"s3://liverlab/doctor?endpoint_override={s3_endpoint}&scheme=http&region=us-east-1"
    bad = f"s3://no-such-bucket/x?endpoint_override={s3_endpoint}&scheme=http&region=us-east-1"
    # A fresh driver and local Ray, so the node's processes get the credentials from their own environment.
    env = {**os.environ, **CREDENTIALS, "COLUMNS": "250"}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "liverlab.cli", "doctor", "--storage"]
    ok = subprocess.run(cmd + [good], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-3000:]
    storage_rows = [line for line in ok.stdout.splitlines() if line.startswith("│ storage")]
    assert len(storage_rows) == 2 and all("OK" in line for line in storage_rows), ok.stdout
    assert "0 FAIL" in ok.stdout and "1/1 node(s)" in ok.stdout, ok.stdout
    assert not storage.exists(storage.join(good, PROBE_ROOT))  # the probe objects are removed
    no = subprocess.run(cmd + [bad], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert no.returncode == 1 and "no-such-bucket" in no.stdout, no.stdout[-3000:]
    # A node that does not see the driver's probe object (another bucket or endpoint, or no access) says so.
    seen = node_write(storage.join(good, PROBE_ROOT, "nothing-here"), "c" * 32, "n1")
    assert not seen["ok"] and "cannot read the driver's probe object" in seen["error"]
