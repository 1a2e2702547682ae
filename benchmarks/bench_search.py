"""Does the search pay for itself? Grid vs random vs TPE vs TPE + ASHA on one space (issue 22).

One U-Net space on phantoms, with a precomputed synthetic set (the CT phantoms
remapped to the MRI histogram, liverlab's ``intensity`` arm): learning rate x
Dice weight (CE weight 1) x mixing ratio, a discrete grid. Strategies:

- ``grid``: every configuration once (the reference; liverlab arms);
- ``random``: Optuna's RandomSampler through liverlab's ``ArmSearcher`` / ``OptunaSearch``;
- ``tpe``: liverlab's default sampler (TPE seeded by ``sampler_seed``);
- ``tpe_asha``: the same TPE with Tune's ASHA built from the space's
  ``scheduler`` block as ``liverlab sweep`` builds it (``--grace``, ``--rf``).

Every trial is a Ray Tune trial running liverlab's ``train_unet`` (1 CPU, 2 at
a time, actors reused). Budgets are fractions of the grid's compute, counted
in validation rounds (``unet.val_every`` steps + a validation; a trial runs
``max_t`` of them): a strategy launches a trial only while the rounds already
spent, plus the rounds running trials will reach at their next ASHA rung (or
at the end), plus the new trial's first stop fit in the budget. The compute
reported is the trial-seconds actually spent (each trial's wall time from
start to its last report, or to the end of its test evaluation), ASHA-stopped
trials included, beside the rounds.

Selection and test IoU: each strategy picks the trial with the best final
validation metric among the trials that ran all rounds; its test IoU is that
trial's own evaluation on the test patients (each trial trains with seed 0,
so a configuration trained twice gives the same numbers; the summary checks
this against the grid). Regret = the grid's pick's test IoU minus the
strategy's pick's (negative when a cheaper search lands on a configuration
that tests better than the grid's validation winner).

    python benchmarks/bench_search.py [--size smoke|medium|full] [--smoke] [--out DIR]
        [--strategies grid,random,tpe,tpe_asha] [--budgets 0.25,0.5,1] [--repeats 3]
        [--grace N] [--rf 2] [--tpe-startup N] [--metric val/iou] [--summary-only]

Resumable: every (strategy, budget, repeat) writes ``results/<run>.json`` when
it finishes; a rerun skips finished runs and repeats an interrupted one.
Outputs in ``--out``: ``results.csv``, ``summary.md``, ``regret.png``.
This file: sizes, spaces, the plan; ``search_runner.py``: the Ray side;
``search_summary.py``: table and figure. Method and sizing: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
STRATEGIES = ("grid", "random", "tpe", "tpe_asha")
LR, DICE, RATIO = "unet.optim.lr", "unet.dice_weight", "unet.mixing_ratio"
@dataclass(frozen=True)
class Size:
    """What a trial trains and which grid, strategies, budgets and repeats run."""

    patients: int
    image: int
    slices: int
    depth: int
    base_features: int
    iterations: int
    val_every: int
    batch_size: int
    grid: dict[str, list[float]] = field(default_factory=dict)
    strategies: tuple[str, ...] = STRATEGIES
    budgets: tuple[float, ...] = (0.25, 0.5, 1.0)
    repeats: int = 3


SIZES = {
    # The test's setting: 4 tiny configurations, 2 strategies, one budget.
    "smoke": Size(6, 32, 8, 3, 4, 24, 8, 4, {LR: [1e-3, 1e-2], DICE: [1.0], RATIO: [0.0, 1.0]},
                  ("grid", "tpe_asha"), (0.5,), 1),
    # Full-size trials on a 2 x 2 x 2 grid, every strategy once at half the grid.
    "medium": Size(16, 48, 16, 3, 8, 120, 20, 8, {LR: [1e-3, 1e-2], DICE: [0.5, 1.0], RATIO: [0.0, 1.0]},
                   STRATEGIES, (0.5,), 1),
    # The benchmark: 4 x 3 x 3 = 36 configurations (sizing in docs/benchmarks.md).
    "full": Size(16, 48, 16, 3, 8, 120, 20, 8,
                 {LR: [3e-4, 1e-3, 3e-3, 1e-2], DICE: [0.0, 0.5, 1.0], RATIO: [0.0, 1.0, 2.0]}),
}


def base_experiment(size: Size, out: Path) -> dict[str, Any]:
    return {
        "name": "bench-search", "stage": "unet", "seed": 0, "device": "cpu",
        "data": {
            "root": str(out / "phantoms"),
            "phantom": {"patients": size.patients, "size": size.image, "slices": size.slices, "seed": 0},
            "size": size.image,
            "split": {"val": 0.25, "test": 0.25, "seed": 0},
        },
        "unet": {
            "model": {"depth": size.depth, "base_features": size.base_features, "norm": "batch"},
            "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 1e-4},
            "iterations": size.iterations, "val_every": size.val_every, "batch_size": size.batch_size,
        },
    }


def grid_size(size: Size) -> int:
    return int(np.prod([len(v) for v in size.grid.values()]))


def param_spec(values: list[float]) -> dict[str, Any]:
    """Three or more evenly spaced values: an ordered Optuna float with a step; otherwise categorical.

    The step goes through ``Decimal`` because Optuna silently shrinks a range
    that is not a whole number of steps (0.01 - 0.001 = 0.009000000000000001).
    """
    if len(values) >= 3:
        exact = [Decimal(str(v)) for v in values]
        steps = {b - a for a, b in itertools.pairwise(exact)}
        if len(steps) == 1:
            return {"type": "float", "low": values[0], "high": values[-1], "step": float(steps.pop())}
    return {"type": "categorical", "choices": list(values)}


def space(size: Size, strategy: str, seed: int, synthetic: Path, opts: argparse.Namespace) -> dict[str, Any]:
    """A liverlab search-space file for one strategy (validated by ``load_space``)."""
    out: dict[str, Any] = {
        "name": f"bench-{strategy}", "base": "base.yaml", "stage": "unet", "seeds": [0],
        "set": {"unet.synthetic": str(synthetic)},
        "objective": {"metric": opts.metric, "mode": "max"},
        "scheduler": {"type": "none"},
        "budget": {"samples_per_arm": 1, "max_concurrent": opts.max_concurrent, "max_failures": 0},
        "resources": {"cpu": 1, "gpu": 0},
        "sampler_seed": seed,
    }
    if strategy == "grid":
        out["arms"] = {k: list(v) for k, v in size.grid.items()}
    else:
        out["params"] = {k: param_spec(v) for k, v in size.grid.items()}
        out["budget"]["samples_per_arm"] = 20 * grid_size(size)  # an upper bound: the compute budget stops the search
    if strategy == "tpe_asha":
        out["scheduler"] = {"type": "asha", "grace_period": opts.grace, "reduction_factor": opts.rf}
    return out


def run_name(strategy: str, budget: float, repeat: int, opts: argparse.Namespace) -> str:
    """Results file stem; ASHA and TPE settings are part of it, so variants sit side by side."""
    if strategy == "grid":
        return "grid"
    tag = strategy
    if strategy == "tpe_asha":
        tag += f"-g{opts.grace}-rf{opts.rf:g}"
    if strategy in ("tpe", "tpe_asha") and opts.tpe_startup is not None:
        tag += f"-s{opts.tpe_startup}"
    return f"{tag}-b{round(budget * 100):03d}-r{repeat}"


def run_one(size: Size, out: Path, opts: argparse.Namespace, synthetic: Path, strategy: str, budget: float,
            repeat: int) -> dict[str, Any]:
    """One strategy at one budget and search seed: its space file, its Tune run, its record."""
    from search_runner import run_tune

    from liverlab.sweep.space import load_space

    name = run_name(strategy, budget, repeat, opts)
    seed = 1000 * repeat  # the search seed; training is always seed 0
    space_path = out / "spaces" / f"{name}.yaml"
    space_path.parent.mkdir(parents=True, exist_ok=True)
    space_path.write_text(yaml.safe_dump(space(size, strategy, seed, synthetic, opts)))
    shutil.copy(out / "base.yaml", space_path.parent / "base.yaml")
    loaded = load_space(space_path)
    n_grid = grid_size(size)
    max_t = loaded.max_t(loaded.config(loaded.arms()[0], 0))
    rounds = n_grid * max_t if strategy == "grid" else max(1, round(budget * n_grid)) * max_t
    ran = run_tune(loaded, name, strategy, seed, rounds, out, opts)
    return {
        "run": name, "strategy": strategy, "label": name.rsplit("-b", 1)[0] if strategy != "grid" else "grid",
        "budget": 1.0 if strategy == "grid" else budget, "repeat": repeat, "search_seed": seed,
        "metric": opts.metric, "budget_rounds": rounds, "scheduler": loaded.space.scheduler.model_dump(),
        "tpe_startup": opts.tpe_startup, "n_grid": n_grid, **ran,
    }

def prepare(size: Size, out: Path) -> Path:
    """Phantoms, the synthetic set and the slice caches, once, before any trial."""
    from liverlab.config import config_from_dict
    from liverlab.train.pipeline import cached_intensity
    from liverlab.train.unet import UNetData

    base = base_experiment(size, out)
    (out / "base.yaml").write_text(yaml.safe_dump(base))
    cfg = config_from_dict(base, {}, source=str(out / "base.yaml"))
    from liverlab.train import data as tdata

    tdata.dataset_dirs(cfg)
    synthetic, _ = cached_intensity(cfg, out / "cache")
    UNetData(config_from_dict(base, {"unet.synthetic": str(synthetic), "unet.mixing_ratio": 1.0}))  # warm caches
    return synthetic


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="full")
    ap.add_argument("--smoke", action="store_true", help="same as --size smoke")
    ap.add_argument("--out", help="results folder (default runs/bench-search/<size>)")
    ap.add_argument("--strategies", help=f"comma list of {', '.join(STRATEGIES)} (default: the size's)")
    ap.add_argument("--budgets", help="comma list of fractions of the grid's compute (default: the size's)")
    ap.add_argument("--repeats", type=int, help="search seeds per strategy and budget (default: the size's)")
    ap.add_argument("--grace", type=int,
                    help="ASHA grace period, in rounds (default: liverlab's, a third of max_t: 2 at the full size)")
    ap.add_argument("--rf", type=float, default=2.0, help="ASHA reduction factor (liverlab's default 2)")
    ap.add_argument("--tpe-startup", type=int, help="TPE n_startup_trials (default: liverlab's, Optuna's 10)")
    ap.add_argument("--metric", default="val/iou", help="objective: ASHA, TPE and the final pick (default val/iou)")
    ap.add_argument("--max-concurrent", type=int, default=2)
    ap.add_argument("--summary-only", action="store_true", help="rebuild the table and figure from the results")
    args = ap.parse_args(argv)
    size_name = "smoke" if args.smoke else args.size
    size = SIZES[size_name]
    if args.grace is None:  # liverlab's default, named in the run's file stem (g2 at the full size)
        from liverlab.sweep.space import default_grace

        args.grace = default_grace(size.iterations // size.val_every)
    out = Path(args.out or REPO / "runs" / "bench-search" / size_name).resolve()
    strategies = args.strategies.split(",") if args.strategies else list(size.strategies)
    budgets = [float(b) for b in args.budgets.split(",")] if args.budgets else list(size.budgets)
    repeats = args.repeats or size.repeats
    bad = [s for s in strategies if s not in STRATEGIES]
    if bad or not all(0 < b <= 4 for b in budgets):
        print(f"bench_search: unknown strategy {bad} or budget outside (0, 4]: {budgets}", file=sys.stderr)
        return 2
    if "grid" not in strategies:
        strategies.insert(0, "grid")  # the reference every regret needs
    from search_summary import summarise

    from liverlab.data.atomic import write_json_atomic

    out.mkdir(parents=True, exist_ok=True)
    manifest = {"size": size_name, "settings": asdict(size) | {"strategies": None, "budgets": None, "repeats": None},
                "metric": args.metric}
    mpath = out / "bench.json"
    if mpath.exists() and json.loads(mpath.read_text()) != json.loads(json.dumps(manifest)):
        print(f"bench_search: {out} holds results of other settings ({mpath}); use another --out", file=sys.stderr)
        return 2
    write_json_atomic(mpath, manifest)
    # Repeat-major: an interrupted full run already holds whole repeats of every strategy and budget.
    plan = [("grid", 1.0, 0)] + [(s, b, r) for r in range(repeats) for b in budgets for s in strategies if s != "grid"]
    todo = [p for p in plan if not (out / "results" / f"{run_name(*p, args)}.json").exists()]
    print(f"bench_search {size_name}: {len(plan)} runs, {len(plan) - len(todo)} already done, results in {out}")
    if todo and not args.summary_only:
        import optuna
        import ray

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(REPO), str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]
        )
        synthetic = prepare(size, out)
        ray.init(address="local", num_cpus=args.max_concurrent, include_dashboard=False, log_to_driver=False)
        try:
            start = time.perf_counter()
            for k, (strategy, budget, repeat) in enumerate(todo, 1):
                t0 = time.perf_counter()
                record = run_one(size, out, args, synthetic, strategy, budget, repeat)
                write_json_atomic(out / "results" / f"{record['run']}.json", record)
                print(
                    f"  [{k}/{len(todo)}] {record['run']}: {len(record['trials'])} trials, "
                    f"{time.perf_counter() - t0:.0f} s wall ({(time.perf_counter() - start) / 60:.1f} min so far)",
                    flush=True,
                )
        finally:
            ray.shutdown()
    table = summarise(out, args.metric)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
