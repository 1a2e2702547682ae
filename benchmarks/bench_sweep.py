"""Sweep overheads, measured side by side in one run.

1. Tracking cost per report, against a loopback ``mlflow server``:
   - Ray's stock ``MLflowLoggerCallback`` logs from the driver: its time inside
     ``log_trial_result`` is time the scheduler spends per report;
   - liverlab logs from inside the trial through a buffered batch writer: the
     driver runs no tracking code at all, and the trial's ``log_metrics`` cost
     per report is measured.
2. Share of a ~60 s liverlab trial's wall time spent in training steps
   (sum of ``time/train_s`` over epochs / the MLflow run's wall time).

    python benchmarks/bench_sweep.py [--reports 40] [--trial-seconds 60]

Starts its own local Ray and its own MLflow server (stopped by PID); writes
only under a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import ray
from ray import tune
from ray.air.integrations.mlflow import MLflowLoggerCallback

N_KEYS = 10


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(folder: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{folder}/server.db", "--default-artifact-root", str(folder / "artifacts"),
           "--workers", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=1)
            return proc, uri
        except OSError:
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError("mlflow server did not start")


class TimedMLflowLoggerCallback(MLflowLoggerCallback):
    """Ray's stock callback, with the driver time spent per result recorded."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seconds: list[float] = []

    def log_trial_result(self, iteration, trial, result) -> None:  # noqa: ANN001
        t0 = time.perf_counter()
        super().log_trial_result(iteration, trial, result)
        self.seconds.append(time.perf_counter() - t0)


def reporting_trial(config: dict) -> None:
    """A trial that only reports: N reports of N_KEYS metrics, optionally through liverlab's tracker."""
    tracker = None
    if config["mode"] == "liverlab":
        from liverlab.tracking.writer import open_trial_run

        tracker = open_trial_run(
            config["uri"], config["experiment_id"], config["parent"], tune.get_context().get_trial_id(), {}
        )
    spent = 0.0
    for i in range(config["reports"]):
        metrics = {f"val/m{j}": float(i * j) for j in range(N_KEYS)}
        if tracker is not None:
            t0 = time.perf_counter()
            tracker.log_metrics(metrics, step=i)
            spent += time.perf_counter() - t0
        tune.report({**metrics, "tracking_s": spent})
    if tracker is not None:
        tracker.finish("FINISHED")


def bench_tracking(uri: str, folder: Path, reports: int) -> dict[str, float]:
    from liverlab.tracking.writer import open_sweep_run

    out: dict[str, float] = {}
    # Ray's stock callback (driver side).
    cb = TimedMLflowLoggerCallback(tracking_uri=uri, experiment_name="stock")
    t0 = time.perf_counter()
    tune.Tuner(
        reporting_trial,
        param_space={"mode": "stock", "reports": reports},
        run_config=tune.RunConfig(name="stock", storage_path=str(folder / "ray"), callbacks=[cb], verbose=0),
    ).fit()
    out["stock_wall_s"] = time.perf_counter() - t0
    out["stock_driver_ms_per_report"] = 1000 * sum(cb.seconds) / max(1, len(cb.seconds))
    # liverlab: logging inside the trial; no driver callback.
    exp_id, parent = open_sweep_run(uri, "liverlab", {"liverlab.sweep_key": "bench"})
    t0 = time.perf_counter()
    grid = tune.Tuner(reporting_trial, param_space={"mode": "liverlab", "reports": reports, "uri": uri,
                                                    "experiment_id": exp_id, "parent": parent},
                      run_config=tune.RunConfig(name="liverlab", storage_path=str(folder / "ray"), verbose=0)).fit()
    out["liverlab_wall_s"] = time.perf_counter() - t0
    out["liverlab_driver_ms_per_report"] = 0.0  # no tracking code runs on the driver
    out["liverlab_trial_ms_per_report"] = 1000 * grid[0].metrics["tracking_s"] / reports
    return out


def bench_trial_share(folder: Path, seconds: float) -> dict[str, float]:
    """One U-Net trial of about ``seconds`` through `liverlab sweep`; share of wall time in training."""
    import json

    import yaml
    from mlflow.tracking import MlflowClient

    from liverlab.sweep.runner import SWEEP_FILE, SweepOptions, run_sweep

    repo = Path(__file__).resolve().parents[1]
    base = yaml.safe_load((repo / "experiments" / "phantom_unet.yaml").read_text())
    base["data"]["root"] = str(folder / "phantoms")
    # About 4.5 s per 40 steps of 8 slices at 64^2 on 1 CPU; iterations set so the trial lasts ~`seconds`.
    base["unet"].update({"iterations": 40 * max(2, round(seconds / 4.5)), "val_every": 40})
    (folder / "base.yaml").write_text(yaml.safe_dump(base))
    space = {"name": "share", "base": "base.yaml", "stage": "unet", "seeds": [0], "scheduler": {"type": "none"},
             "budget": {"max_concurrent": 1}, "resources": {"cpu": 1}}
    (folder / "share.yaml").write_text(yaml.safe_dump(space))
    # Warm the slice cache first: a sweep's trials share it, only the first builds it.
    from liverlab.config import config_from_dict
    from liverlab.train import data as tdata

    cfg = config_from_dict(base)
    tdata.dataset_dirs(cfg)
    for split in ("train", "val", "test"):
        tdata.load(cfg, cfg.data.mri_dir, "mri", split, all_slices=split != "train")
    t0 = time.perf_counter()
    uri = f"sqlite:///{folder}/share.db"  # explicit: Ray's MLflow callback left MLFLOW_TRACKING_URI set
    run_sweep(SweepOptions(space=str(folder / "share.yaml"), storage=str(folder / "sweeps"), live=False,
                           report=False, tracking_uri=uri))
    sweep_wall = time.perf_counter() - t0
    info = json.loads((folder / "sweeps" / "share" / SWEEP_FILE).read_text())
    client = MlflowClient(info["tracking_uri"])
    run = client.search_runs(
        [info["experiment_id"]], filter_string=f"tags.mlflow.parentRunId = '{info['parent_run_id']}'"
    )[0]
    wall = (run.info.end_time - run.info.start_time) / 1000
    train = sum(m.value for m in client.get_metric_history(run.info.run_id, "time/train_s"))
    val = sum(m.value for m in client.get_metric_history(run.info.run_id, "time/val_s"))
    return {
        "trial_wall_s": wall,
        "sweep_wall_s": sweep_wall,
        "train_s": train,
        "val_s": val,
        "train_share": train / wall,
        "train_val_share": (train + val) / wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reports", type=int, default=40)
    ap.add_argument("--trial-seconds", type=float, default=60)
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="liverlab-bench-sweep-"))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    server, uri = start_server(folder)
    try:
        tr = bench_tracking(uri, folder, args.reports)
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    share = bench_trial_share(folder, args.trial_seconds)
    ray.shutdown()
    print(
        f"\n## Sweep overheads ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, "
        f"{args.reports} reports x {N_KEYS} metrics)\n"
    )
    print("| tracker | scheduler (driver) time per report | trial-side time per report | wall time |")
    print("|---|---:|---:|---:|")
    print(
        f"| Ray MLflowLoggerCallback | {tr['stock_driver_ms_per_report']:.1f} ms | 0 ms | {tr['stock_wall_s']:.1f} s |"
    )
    print(f"| liverlab (batched, in trial) | {tr['liverlab_driver_ms_per_report']:.1f} ms | "
          f"{tr['liverlab_trial_ms_per_report']:.3f} ms | {tr['liverlab_wall_s']:.1f} s |")
    print(f"\nliverlab U-Net trial: wall {share['trial_wall_s']:.1f} s, in training steps {share['train_s']:.1f} s "
          f"({100 * share['train_share']:.1f} % of the trial's run), validation {share['val_s']:.1f} s "
          f"(training + validation {100 * share['train_val_share']:.1f} %); "
          f"whole `run_sweep` call {share['sweep_wall_s']:.1f} s "
          f"({100 * share['train_s'] / share['sweep_wall_s']:.1f} % in training steps, Ray start-up excluded)")


if __name__ == "__main__":
    main()
