"""Patient-level cross-validation of experiments/chaos_unet.yaml on the shared CHAOS MR patients.

The experiment trains one model on every shared patient (12); this benchmark
measures what its recipe scores on patients it has not seen. When the
experiment sets no ``data.split.folds``, ``--k`` folds (default 6: 2 test
patients each with 12 patients) with no validation patient are added;
``--loo`` makes it leave-one-patient-out (as many folds as patients). For
every fold k (``data.split.fold = k``): train the experiment's U-Net on the
other patients (``unet.keep: last``), then score each test patient on its own
original grid and spacing with the checkpoint, exactly as ``liverlab evaluate
--checkpoint best.pt --data data/chaos/mri`` does
(``liverlab.infer.segment.segment_dataset``, post-processing included).

Prints IoU, Dice, RAVD, ASSD and MSSD per patient, and per metric the mean
with its 95 % t-interval over patients, the median and the worst patient;
the per-fold wall and process CPU time (on a shared machine, CPU seconds /
threads is the uncontended wall time). Writes ``OUT/results.json`` and the
markdown table ``OUT/results.md``.

Resumable: a finished fold keeps ``OUT/fold<k>/result.json`` and is skipped
on the next call; an interrupted fold continues from its last checkpoint
(every ``unet.val_every`` iterations). ``--jobs N`` runs N folds at once, each
in its own process with ``--threads`` torch threads (default 1: on 2 cores,
two 1-thread folds make about 1.2x the iterations per second of one 2-thread
fold, 2 / 0.195 s vs 1 / 0.115 s in docs/benchmarks.md), then pools.

Import the data first (README), or let ``data.import`` do it, then::

    python benchmarks/bench_chaos_unet.py --jobs 2              # 6-fold CV, 2 folds at a time
    python benchmarks/bench_chaos_unet.py --folds 0 --iterations 20 --out runs/smoke   # smoke run
    python benchmarks/bench_chaos_unet.py --out runs/cv --rescore-tta 10,0.1   # trained folds, scored with TTA
    python benchmarks/bench_chaos_unet.py --out runs/cv --ensemble runs/cv-seed1   # each fold with its seed-1 twin
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from liverlab.config import ExperimentConfig, load_config  # noqa: E402
from liverlab.data.atomic import write_with  # noqa: E402

METRICS = (("iou", "IoU", "{:.3f}"), ("dice", "Dice", "{:.3f}"), ("ravd", "RAVD %", "{:.1f}"),
           ("assd", "ASSD mm", "{:.2f}"), ("mssd", "MSSD mm", "{:.1f}"))
HIGHER_IS_BETTER = {"iou", "dice"}


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi): Student-t interval of the mean over ``values`` (patients)."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, mean - half, mean + half


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per metric: mean, 95 % t-interval, median, worst value and its patient (RAVD: worst |RAVD|)."""
    out: dict[str, dict[str, Any]] = {}
    for key, _, _ in METRICS:
        vals = [float(r[key]) for r in rows]
        mean, lo, hi = t_interval(vals)
        badness = [(-v if key in HIGHER_IS_BETTER else abs(v)) for v in vals]
        worst = int(np.argmax(badness))
        out[key] = {"mean": mean, "ci95": [lo, hi], "median": float(np.median(vals)),
                    "worst": vals[worst], "worst_patient": str(rows[worst]["case_id"])}
    return out


def markdown(rows: list[dict[str, Any]], stats: dict[str, dict[str, Any]], title: str) -> str:
    head = "| fold | test patient | " + " | ".join(name for _, name, _ in METRICS) + " |"
    lines = [f"{title}\n", head, "|---|---|" + "---:|" * len(METRICS)]
    for r in rows:
        lines.append(f"| {r['fold']} | {r['case_id']} | " + " | ".join(f.format(r[k]) for k, _, f in METRICS) + " |")
    ci = " | ".join(f"{f.format(stats[k]['mean'])} ({f.format(stats[k]['ci95'][0])} to {f.format(stats[k]['ci95'][1])})"
                    for k, _, f in METRICS)
    lines.append(f"| **mean (95 % t-interval over the {len(rows)} patients)** | | {ci} |")
    lines.append("| median | | " + " | ".join(f.format(stats[k]["median"]) for k, _, f in METRICS) + " |")
    lines.append("| worst (patient) | | " + " | ".join(
        f"{f.format(stats[k]['worst'])} ({stats[k]['worst_patient']})" for k, _, f in METRICS) + " |")
    return "\n".join(lines) + "\n"


def _write_json(path: Path, obj: Any) -> None:
    write_with(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2)), suffix=".json")


def run_fold(cfg: ExperimentConfig, workdir: Path) -> dict[str, Any]:
    """Train one fold, evaluate its test patient(s) on the native grid; times in seconds. Skipped when done."""
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
    for row in rows:
        row["fold"] = cfg.data.split.fold
    result = {
        "fold": cfg.data.split.fold,
        "rows": rows,
        "train_wall_s": train_wall,
        "train_cpu_s": train_cpu,
        "eval_wall_s": time.perf_counter() - wall1,
        "threads": torch.get_num_threads(),
        "iterations": cfg.unet.iterations,
        "in_loop_test_iou": in_loop.get("test/iou"),
        "final_train_loss": in_loop.get("train/loss"),
    }
    _write_json(done, result)
    return result


def rescore_fold(workdir: Path, data_dir: Path, tta: str | None, members: list[Path], tag: str) -> dict[str, Any]:
    """A trained fold's test patients scored again with test-time augmentation ``tta`` (``D,S``) and/or as an
    ensemble with the same fold of the CVs ``members`` (mean of the probabilities); cached under ``tag``."""
    from liverlab.infer.commands import _tta_option
    from liverlab.infer.segment import segment_dataset

    done = workdir / f"result_{tag}.json"
    if done.is_file():
        return json.loads(done.read_text())
    base = json.loads((workdir / "result.json").read_text())
    wall0 = time.perf_counter()
    checkpoints = [workdir / "best.pt", *(m / workdir.name / "best.pt" for m in members)]
    rows = segment_dataset(checkpoints, data_dir, workdir / f"predictions_{tag}", split="test",
                           tta=_tta_option(tta) if tta else None)
    for row in rows:
        row["fold"] = base["fold"]
    result = {"fold": base["fold"], "tta": tta, "members": [str(m) for m in members], "rows": rows,
              "eval_wall_s": time.perf_counter() - wall0, "plain_eval_wall_s": base["eval_wall_s"]}
    _write_json(done, result)
    return result


def rescore(args: argparse.Namespace, base: ExperimentConfig, folds: list[int], out: Path) -> int:
    """``--rescore-tta`` / ``--ensemble``: every trained fold scored again, paired per patient against its plain
    score. An ensemble member is another CV of the same folds (same experiment, data and split)."""
    members = [Path(m) for m in args.ensemble.split(",")] if args.ensemble else []
    missing = [f"{d}/fold{k}" for d in (out, *members) for k in folds
               if not (d / f"fold{k}" / ("result.json" if d == out else "best.pt")).is_file()]
    if missing:
        print(f"rescoring needs trained folds (result.json in OUT, best.pt in each --ensemble member): missing "
              f"{', '.join(missing)}", file=sys.stderr)
        return 2
    plain = {r["case_id"]: r for k in folds for r in json.loads((out / f"fold{k}" / "result.json").read_text())["rows"]}
    parts = ([f"tta_{args.rescore_tta.replace(',', '_')}"] if args.rescore_tta else []) + (
        [f"ens{len(members) + 1}_" + "_".join(m.name for m in members)] if members else [])
    tag = "_".join(parts)
    results = [rescore_fold(out / f"fold{k}", base.data.mri_dir, args.rescore_tta, members, tag) for k in folds]
    rows = [row for r in results for row in r["rows"]]
    stats = summarise(rows)
    diffs = [100 * (row["iou"] - plain[row["case_id"]]["iou"]) for row in rows]
    mean, lo, hi = t_interval(diffs)
    summary = {"tta": args.rescore_tta, "ensemble": [str(m) for m in members], "folds": results,
               "patients": len(rows), "metrics": stats,
               "iou_diff_points": {"per_patient": dict(zip([r["case_id"] for r in rows], diffs)),
                                   "mean": mean, "ci95": [lo, hi], "improved": sum(d > 0 for d in diffs)},
               "eval_wall_s": sum(r["eval_wall_s"] for r in results),
               "plain_eval_wall_s": sum(r["plain_eval_wall_s"] for r in results)}
    path = Path(args.json) if args.json else out / f"results_{tag}.json"
    _write_json(path, summary)
    how = " and ".join(([f"with test-time augmentation {args.rescore_tta} (rotation degrees, zoom)"] if args.rescore_tta
                        else []) + ([f"as an ensemble with {', '.join(map(str, members))}"] if members else []))
    table = markdown(rows, stats, f"The same folds scored {how}")
    print("\n" + table)
    print(f"IoU vs the plain score, paired per patient: {mean:+.2f} points (95 % CI {lo:+.2f} to {hi:+.2f}), "
          f"{summary['iou_diff_points']['improved']} of {len(diffs)} patients higher; evaluation "
          f"{summary['eval_wall_s']:.0f} s vs {summary['plain_eval_wall_s']:.0f} s plain")
    print(f"wrote {path}")
    return 0


def _fold_process(k: int, args: argparse.Namespace, sets: list[str], out: Path) -> int:
    """One fold in its own process (``--jobs``): same script, ``--folds k``, its log in OUT/fold<k>/log.txt."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--experiment", args.experiment, "--out", str(out),
           "--folds", str(k), "--threads", str(args.threads or 1), "--json", str(out / f"fold{k}" / "pooled.json")]
    for item in sets:
        cmd += ["--set", item]
    (out / f"fold{k}").mkdir(parents=True, exist_ok=True)
    with open(out / f"fold{k}" / "log.txt", "a") as log:
        return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False).returncode


def fold_overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` items that define the CV: the user's, ``--iterations``, and the folds when the experiment has none."""
    sets = list(args.set)
    if args.iterations:
        sets += [f"unet.iterations={args.iterations}", f"unet.val_every={args.iterations}"]
    first = load_config(args.experiment, sets)
    if first.data.split.folds is None or args.loo:
        k = args.k
        if args.loo:
            from liverlab.train import data as tdata

            tdata.dataset_dirs(first)  # import on first use, then count the patients
            k = tdata.split_table(first.data.mri_dir, first)["patient_id"].n_unique()
        # The experiment trains one model on every patient: cross-validate its recipe over k folds.
        sets += [f"data.split.folds={k}", "data.split.val=0.0"]
    return sets


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default=str(REPO / "experiments" / "chaos_unet.yaml"))
    ap.add_argument("--out", default=str(REPO / "runs" / "bench-chaos-unet"))
    ap.add_argument("--folds", help="comma-separated folds to run (default: all of data.split.folds)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted override of the experiment")
    ap.add_argument("--iterations", type=int, help="shortcut for --set unet.iterations=N (and val_every=N): smoke runs")
    ap.add_argument("--json", help="results JSON (default OUT/results.json)")
    ap.add_argument("--threads", type=int, help="torch threads per fold (default: torch's; with --jobs, 1)")
    ap.add_argument("--jobs", type=int, default=1, help="folds run at once, one process each (default 1)")
    ap.add_argument("--k", type=int, default=6,
                    help="folds when the experiment sets no data.split.folds (it trains on every patient); default 6")
    ap.add_argument("--loo", action="store_true", help="leave-one-patient-out: as many folds as patients")
    ap.add_argument("--rescore-tta", metavar="DEGREES,SCALE",
                    help="no training: score the trained folds of OUT again with test-time augmentation "
                    "(unet.tta: rotation degrees, zoom; e.g. 10,0.1) and pair each patient with its plain score")
    ap.add_argument("--ensemble", metavar="OUT2[,OUT3...]",
                    help="no training: score the trained folds of OUT as ensembles with the same folds of other CVs "
                    "(e.g. another seed: liverlab evaluate --checkpoint A --checkpoint B per fold) and pair each "
                    "patient with OUT's plain score; combines with --rescore-tta")
    args = ap.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    sets = fold_overrides(args)
    base = load_config(args.experiment, sets)
    from liverlab.train import data as tdata

    tdata.dataset_dirs(base)  # data.import on first use (once, before any fold process starts)
    folds = [int(f) for f in args.folds.split(",")] if args.folds else list(range(base.data.split.folds))
    out = Path(args.out)
    u = base.unet
    print(f"{args.experiment}: {base.data.split.folds}-fold patient CV (folds {folds}), {u.iterations} iterations x "
          f"batch {u.batch_size}, {u.lr_schedule} lr {u.optim.lr} ({u.optim.name}), depth {u.model.depth}, "
          f"base {u.model.base_features}, {base.data.size}^2"
          f"{f' (patches {u.patch_size}^2)' if u.patch_size else ''}, {base.precision}"
          f"{' channels-last' if base.channels_last else ''}", flush=True)

    if args.rescore_tta or args.ensemble:
        return rescore(args, base, folds, out)
    wall0 = time.perf_counter()
    if args.jobs > 1:
        todo = [k for k in folds if not (out / f"fold{k}" / "result.json").is_file()]
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            codes = dict(zip(todo, pool.map(lambda k: _fold_process(k, args, sets, out), todo)))
        failed = [k for k, rc in codes.items() if rc != 0]
        if failed:
            print(f"folds {failed} failed: see {out}/fold<k>/log.txt", file=sys.stderr)
            return 1
    results = []
    for k in folds:
        cfg = load_config(args.experiment, [*sets, f"data.split.fold={k}"])
        r = run_fold(cfg, out / f"fold{k}")
        results.append(r)
        for row in r["rows"]:
            print(
                f"fold {k}: patient {row['case_id']}: IoU {row['iou']:.4f} Dice {row['dice']:.4f} "
                f"RAVD {row['ravd']:.1f} % ASSD {row['assd']:.2f} mm MSSD {row['mssd']:.1f} mm | "
                f"train {r['train_wall_s']:.0f} s wall, {r['train_cpu_s']:.0f} s CPU ({r['threads']} threads)",
                flush=True,
            )

    rows = [{**row, "fold": r["fold"]} for r in results for row in r["rows"]]
    stats = summarise(rows)
    summary = {
        "experiment": str(args.experiment),
        "overrides": sets,
        "config": base.model_dump(mode="json"),
        "folds": results,
        "patients": len(rows),
        "metrics": stats,
        "train_wall_s_per_fold": [r["train_wall_s"] for r in results],
        "train_cpu_s_per_fold": [r["train_cpu_s"] for r in results],
        "total_train_eval_s": sum(r["train_wall_s"] + r["eval_wall_s"] for r in results),
        "this_call_wall_s": time.perf_counter() - wall0,
    }
    path = Path(args.json) if args.json else out / "results.json"
    _write_json(path, summary)
    title = (f"{base.data.split.folds}-fold patient CV of {Path(args.experiment).name} (folds {folds}; "
             f"{u.iterations} iterations; overrides: {' '.join(sets) or 'none'})")
    table = markdown(rows, stats, title)
    if not args.json:
        write_with(out / "results.md", lambda tmp: Path(tmp).write_text(table), suffix=".md")
    print("\n" + table)
    iou = stats["iou"]
    print(f"{len(rows)} test patients: IoU mean {iou['mean']:.4f} (95 % CI {iou['ci95'][0]:.4f}-{iou['ci95'][1]:.4f}), "
          f"median {iou['median']:.4f}, worst {iou['worst']:.4f} ({iou['worst_patient']})")
    print(
        f"train per fold: {', '.join(f'{w:.0f}' for w in summary['train_wall_s_per_fold'])} s wall, "
        f"{', '.join(f'{c:.0f}' for c in summary['train_cpu_s_per_fold'])} s CPU; "
        f"this call {summary['this_call_wall_s']:.0f} s wall"
    )
    print(f"wrote {path}" + ("" if args.json else f" and {out / 'results.md'}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
