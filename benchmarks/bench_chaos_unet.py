"""Patient-level k-fold cross-validation of experiments/chaos_unet.yaml on the CHAOS MR sample.

The experiment trains one model on all five shared patients; this benchmark
measures what its recipe scores on patients it has not seen. When the
experiment sets no ``data.split.folds``, ``--k`` folds (default 5) with no
validation patient are added. For every fold k (``data.split.fold = k``):
train the experiment's U-Net on the other patients (``unet.keep: last``),
then score the fold's test
patient on its own original grid and spacing with the checkpoint, exactly as
``liverlab evaluate --checkpoint best.pt --data data/chaos/mri`` does
(``liverlab.infer.segment.segment_dataset``, post-processing included).

Prints per-patient IoU / Dice, their mean with a 95 % t-interval over
patients, the per-fold wall time and process CPU time (the machine may be
shared: CPU seconds / threads is the uncontended wall time), and writes a
JSON of everything. Finished folds are kept in ``OUT/fold<k>/result.json``
and reused, so an interrupted run continues where it stopped.

Import the data first (README), then::

    python benchmarks/bench_chaos_unet.py [--out runs/bench-chaos-unet] [--folds 0,1,2,3,4] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from liverlab.config import ExperimentConfig, load_config  # noqa: E402
from liverlab.data.atomic import write_with  # noqa: E402

IMPORT_HINT = (
    "liverlab data import-nifti --images '../shared/data/chaos-mr-t2spir/image_*.nii.gz' "
    "--labels '../shared/data/chaos-mr-t2spir/label_*.nii.gz' --modality mri --liver-label 1 --out data/chaos/mri"
)


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi): Student-t interval of the mean over ``values`` (patients)."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, mean - half, mean + half


def _write_json(path: Path, obj: Any) -> None:
    write_with(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2)), suffix=".json")


def run_fold(cfg: ExperimentConfig, workdir: Path) -> dict[str, Any]:
    """Train one fold, evaluate its test patient(s) on the native grid; times in seconds."""
    import torch

    from liverlab.infer.segment import segment_dataset
    from liverlab.train.unet import train_unet

    done = workdir / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    wall0, cpu0 = time.perf_counter(), time.process_time()
    in_loop = train_unet(cfg, workdir=workdir)
    train_wall, train_cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    wall1 = time.perf_counter()
    rows = segment_dataset(workdir / "best.pt", cfg.data.mri_dir, workdir / "predictions", split="test")
    result = {
        "fold": cfg.data.split.fold,
        "rows": rows,
        "train_wall_s": train_wall,
        "train_cpu_s": train_cpu,
        "eval_wall_s": time.perf_counter() - wall1,
        "threads": torch.get_num_threads(),
        "in_loop_test_iou": in_loop.get("test/iou"),
        "final_train_loss": in_loop.get("train/loss"),
    }
    _write_json(done, result)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default=str(REPO / "experiments" / "chaos_unet.yaml"))
    ap.add_argument("--out", default=str(REPO / "runs" / "bench-chaos-unet"))
    ap.add_argument("--folds", help="comma-separated folds to run (default: all of data.split.folds)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted override of the experiment")
    ap.add_argument("--json", help="results JSON (default OUT/results.json)")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    ap.add_argument("--k", type=int, default=5,
                    help="folds when the experiment sets no data.split.folds (it trains on every patient); default 5")
    args = ap.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    first = load_config(args.experiment, args.set)
    if first.data.split.folds is None:
        # The experiment trains one model on every patient: cross-validate its recipe over args.k folds.
        args.set = [*args.set, f"data.split.folds={args.k}", "data.split.val=0.0"]
    base = load_config(args.experiment, args.set)
    if not (base.data.mri_dir / "dataset.json").is_file() and not base.data.import_:
        print(f"{base.data.mri_dir}: no dataset; import it first:\n  {IMPORT_HINT}", file=sys.stderr)
        return 2
    k_all = range(base.data.split.folds)
    folds = [int(f) for f in args.folds.split(",")] if args.folds else list(k_all)
    out = Path(args.out)
    u = base.unet
    print(f"{args.experiment}: {base.data.split.folds}-fold patient CV, {u.iterations} iterations x batch {u.batch_size}, "
          f"{u.lr_schedule} lr {u.optim.lr} ({u.optim.name}), base {u.model.base_features}, {base.data.size}^2, "
          f"{base.precision}{' channels-last' if base.channels_last else ''}", flush=True)

    results = []
    for k in folds:
        cfg = load_config(args.experiment, [*args.set, f"data.split.fold={k}"])
        r = run_fold(cfg, out / f"fold{k}")
        results.append(r)
        for row in r["rows"]:
            print(f"fold {k}: patient {row['case_id']}: IoU {row['iou']:.4f} Dice {row['dice']:.4f} "
                  f"RAVD {row['ravd']:.1f} % ASSD {row['assd']:.2f} mm MSSD {row['mssd']:.1f} mm | "
                  f"train {r['train_wall_s']:.0f} s wall, {r['train_cpu_s']:.0f} s CPU ({r['threads']} threads)", flush=True)

    rows = [row for r in results for row in r["rows"]]
    iou, dice = t_interval([r["iou"] for r in rows]), t_interval([r["dice"] for r in rows])
    total_wall = sum(r["train_wall_s"] + r["eval_wall_s"] for r in results)
    summary = {
        "experiment": str(args.experiment),
        "overrides": args.set,
        "config": base.model_dump(mode="json"),
        "folds": results,
        "patients": len(rows),
        "iou": {"mean": iou[0], "ci95": [iou[1], iou[2]], "median": float(np.median([r["iou"] for r in rows])),
                "min": float(min(r["iou"] for r in rows))},
        "dice": {"mean": dice[0], "ci95": [dice[1], dice[2]]},
        "train_wall_s_per_fold": [r["train_wall_s"] for r in results],
        "train_cpu_s_per_fold": [r["train_cpu_s"] for r in results],
        "total_wall_s": total_wall,
    }
    path = Path(args.json) if args.json else out / "results.json"
    _write_json(path, summary)
    print(f"\n{len(rows)} test patients over folds {folds}: IoU mean {iou[0]:.4f} (95 % CI {iou[1]:.4f}-{iou[2]:.4f}, "
          f"min {summary['iou']['min']:.4f}), Dice mean {dice[0]:.4f} (95 % CI {dice[1]:.4f}-{dice[2]:.4f})")
    print(f"train per fold: {', '.join(f'{w:.0f}' for w in summary['train_wall_s_per_fold'])} s wall, "
          f"{', '.join(f'{c:.0f}' for c in summary['train_cpu_s_per_fold'])} s CPU; total {total_wall:.0f} s wall")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
