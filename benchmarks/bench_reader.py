"""Benchmark: read 10,000 runs from a SQLite tracking store and aggregate them per arm.

Setup (not measured): a sweep parent and ``--templates`` trial runs are
written through liverlab's own writer (open_sweep_run / open_trial_run /
log_params / log_metrics / finish), so the schema and the rows are exactly
what a real sweep produces. The remaining runs are cloned from those
templates with plain SQL inserts in one transaction (new run ids, seeds,
trial ids and jittered metric values), because creating 10,000 runs through
MLflow one request at a time would take minutes and is not what is measured.

Measured: ``read_runs`` (every column: tags, typed params, latest and best
metrics) + per-arm aggregation (``select_units`` would collapse Optuna
samples; here every run is aggregated: n, mean, SD, t and bootstrap
intervals with 10,000 resamples for IoU and Dice).

    python benchmarks/bench_reader.py [--runs 10000] [--epochs 20] [--compare-client]
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import polars as pl  # noqa: E402

from liverlab.config import config_from_dict, flatten  # noqa: E402
from liverlab.report.stats import arm_summary  # noqa: E402
from liverlab.report.units import with_arm  # noqa: E402
from liverlab.tracking.reader import read_runs  # noqa: E402
from liverlab.tracking.writer import finish_sweep_run, open_sweep_run, open_trial_run  # noqa: E402

ARMS = (
    "synthesis=none",
    "synthesis=cyclegan,unet.mixing_ratio=1.0",
    "synthesis=essnet,unet.mixing_ratio=0.5",
    "synthesis=essnet,unet.mixing_ratio=1.0",
    "synthesis=essnet,unet.mixing_ratio=2.0",
)
EPOCH_KEYS = ("val/iou", "val/dice", "train/loss", "train/loss_dice")
TEST_KEYS = ("test/iou", "test/dice", "test/ravd", "test/assd", "test/mssd")


def build_store(root: Path, n_runs: int, n_templates: int, epochs: int) -> tuple[str, str, str]:
    """Create the store; returns (uri, experiment name, parent run id)."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    exp_id, parent = open_sweep_run(uri, "bench", {"liverlab.sweep_key": "bench-key"})
    templates: list[str] = []
    for i in range(n_templates):
        arm = ARMS[i % len(ARMS)]
        synth = arm.split(",")[0].split("=")[1]
        cfg = config_from_dict(
            {"data": {"root": str(root / "data")}, "stage": "pipeline", "synthesis": synth, "seed": i})
        tr = open_trial_run(uri, exp_id, parent, f"t{i:05d}",
                            {"liverlab.arm": arm, "liverlab.seed": str(i), "liverlab.stage": "pipeline"})
        tr.log_params(flatten(cfg.model_dump(mode="json")))
        for e in range(epochs):
            tr.log_metrics({k: random.random() for k in EPOCH_KEYS}, step=e)
        tr.log_metrics({k: random.random() for k in TEST_KEYS}, step=epochs)
        tr.finish()
        templates.append(tr.run_id)
    finish_sweep_run(uri, parent)

    con = sqlite3.connect(root / "mlflow.db")
    rng = random.Random(0)
    with con:
        for i in range(n_runs - n_templates):
            src = templates[i % n_templates]
            arm = ARMS[i % len(ARMS)]
            new = uuid.uuid4().hex
            seed = str(n_templates + i)
            con.execute(
                "INSERT INTO runs SELECT ?, name, source_type, source_name, entry_point_name, user_id, status, "
                "start_time + ?, end_time + ?, source_version, lifecycle_stage, replace(artifact_uri, run_uuid, ?), "
                "experiment_id, deleted_time FROM runs WHERE run_uuid = ?",
                (new, i, i, new, src),
            )
            con.execute(
                "INSERT INTO tags SELECT key, CASE key WHEN 'liverlab.seed' THEN ? WHEN 'liverlab.trial_id' THEN ? "
                "WHEN 'liverlab.arm' THEN ? ELSE value END, ? FROM tags WHERE run_uuid = ?",
                (seed, f"t{seed}", arm, new, src),
            )
            con.execute("INSERT INTO params SELECT key, value, ? FROM params WHERE run_uuid = ?", (new, src))
            jitter = rng.uniform(-0.05, 0.05)
            con.execute(
                "INSERT INTO metrics SELECT key, value + ?, timestamp, ?, step, is_nan FROM metrics WHERE run_uuid = ?",
                (jitter, new, src),
            )
            con.execute(
                "INSERT INTO latest_metrics SELECT key, value + ?, timestamp, step, is_nan, ? "
                "FROM latest_metrics WHERE run_uuid = ?",
                (jitter, new, src),
            )
    con.close()
    return uri, "bench", parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--templates", type=int, default=25)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions (best and all are printed)")
    ap.add_argument("--compare-client", action="store_true", help="also time MlflowClient.search_runs")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="liverlab-bench-") as tmp:
        t0 = time.perf_counter()
        uri, exp, parent = build_store(Path(tmp), args.runs, args.templates, args.epochs)
        print(f"setup: {args.runs} runs x ({args.epochs} epochs x {len(EPOCH_KEYS)} keys + {len(TEST_KEYS)} test) "
              f"in {time.perf_counter() - t0:.1f} s")
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            runs = read_runs(uri, exp, parent_run_id=parent)
            t_read = time.perf_counter() - t0
            summary = arm_summary(with_arm(runs), metrics=("iou", "dice"), n_boot=10_000, seed=0)
            total = time.perf_counter() - t0
            times.append((t_read, total))
            print(f"read_runs: {runs.height} rows x {runs.width} columns in {t_read:.2f} s; "
                  f"+ per-arm aggregation: {total:.2f} s total")
        assert runs.height == args.runs, runs.height
        with pl.Config(tbl_rows=20, tbl_cols=10):
            print(summary.select("arm", "metric", "n", "mean", "t_lo", "t_hi", "boot_lo", "boot_hi"))
        best = min(t for _, t in times)
        print(f"RESULT: {args.runs} runs read + aggregated in {best:.2f} s (best of {args.repeat}); "
              f"{'PASS' if best < 10 else 'FAIL'} (< 10 s)")
        if args.compare_client:
            from liverlab.tracking.client import client_for

            t0 = time.perf_counter()
            client = client_for(uri)
            got = client.search_runs([runs["experiment_id"][0]], max_results=50000)
            print(f"for comparison, MlflowClient.search_runs (latest metrics only, no best values): "
                  f"{len(got)} runs in {time.perf_counter() - t0:.2f} s")
        return 0 if best < 10 else 1


if __name__ == "__main__":
    sys.exit(main())
