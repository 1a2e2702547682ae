"""A tracking-server outage: a real `mlflow server` stopped and started again under a live tracker."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from liverlab.tracking.writer import open_run

pytestmark = pytest.mark.slow
MLFLOW = str(Path(sys.executable).parent / "mlflow")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(db: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(
        [MLFLOW, "server", "--backend-store-uri", f"sqlite:///{db}", "--default-artifact-root",
         (db.parent / "artifacts").as_uri(), "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        assert proc.poll() is None, "mlflow server exited"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc
        except OSError:
            time.sleep(0.5)
    raise AssertionError("mlflow server did not answer /health")


def _stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, 15)  # its own session: the server and its workers
    proc.wait(timeout=60)


@pytest.mark.skipif(not Path(MLFLOW).exists(), reason="the mlflow command is not installed")
def test_metrics_logged_while_the_server_is_down_arrive_after_it_restarts(tmp_path, monkeypatch):
    # MLflow's own HTTP retries (up to minutes of backoff) off: liverlab's tracker retries every second itself.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    port, db = _free_port(), tmp_path / "mlflow.db"
    server = _serve(db, port)
    try:
        uri = f"http://127.0.0.1:{port}"
        tracker = open_run(uri, "outage", run_name="r")
        tracker.log_metrics({"val/iou": 0.1}, step=1)
        tracker.flush()
        _stop(server)
        for step in range(2, 6):  # the training goes on: values are buffered, sends fail and are retried
            tracker.log_metrics({"val/iou": step / 10}, step=step)
        time.sleep(2.0)
        assert tracker.pending() == 4  # not sent, not lost: put back for the next try
        server = _serve(db, port)
        t0 = time.monotonic()
        tracker.finish("FINISHED")
        print(f"outage: 4 buffered values sent {time.monotonic() - t0:.1f} s after the server was back")
        client = MlflowClient(uri)
        assert client.get_run(tracker.run_id).info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(tracker.run_id, "val/iou")] == [1, 2, 3, 4, 5]
    finally:
        if server.poll() is None:
            _stop(server)
