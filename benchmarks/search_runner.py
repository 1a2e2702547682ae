"""The Ray side of ``bench_search.py``: the trial, the compute budget, one strategy's Tune run.

Trials run liverlab's ``train_unet`` and keep their reports, seconds and test
metrics in a side file per trial (written before each ``tune.report``, so an
ASHA stop inside it loses nothing). The searcher is liverlab's
``ArmSearcher`` (random: Optuna's RandomSampler inside it), wrapped by
``BudgetSearcher``; the scheduler is the one ``liverlab sweep`` builds.
"""

from __future__ import annotations

import functools
import json
import pickle
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from ray import tune
from ray.tune.search import Searcher

# What train_unet imports lazily (the optimiser pulls in torch._dynamo; test panel, parquet table,
# post-processing, NIfTI, metrics).
WARM_IMPORTS = (
    "torch._dynamo", "matplotlib.pyplot", "polars", "scipy.ndimage", "liverlab.data.augment", "liverlab.data.datasets",
    "liverlab.data.manifest", "liverlab.data.nifti", "liverlab.data.cache", "liverlab.data.context", "liverlab.metrics",
    "liverlab.postprocess", "liverlab.tracking.writer", "liverlab.train.progress", "liverlab.train.visual",
    "liverlab.infer.evaluate",
)

def asha_rungs(max_t: int, grace: int, rf: float) -> list[float]:
    """The milestones of Ray's ASHA bracket (``_Bracket.__init__``), ascending."""
    n = int(np.log(max_t / grace) / np.log(rf) + 1)
    return sorted(grace * rf**k for k in range(n))


def bench_trial(config: dict[str, Any]) -> None:
    """One Tune trial: liverlab's ``train_unet``, its rounds and seconds kept in a side file."""
    # Imports a process pays once (reused actors keep them) are not trial time: without this
    # the first two trials of every run would carry seconds that a long sweep pays once.
    import importlib

    import torch
    from ray import tune

    from liverlab.config import config_from_dict
    from liverlab.data.atomic import write_json_atomic
    from liverlab.train.unet import train_unet

    for module in WARM_IMPORTS:
        importlib.import_module(module)

    t0, c0, started = time.perf_counter(), time.process_time(), time.time()
    torch.set_num_threads(1)
    meta = config["bench"]
    params = {**config["arm"], **config["params"]}
    cfg = config_from_dict(
        meta["base"], {**meta["overrides"], **params, "seed": config["seed"]}, source=meta["space_file"]
    )
    ctx = tune.get_context()
    record: dict[str, Any] = {"trial_id": ctx.get_trial_id(), "params": params, "started": started, "reports": [],
                              "completed": False, "test": {}}
    path = Path(meta["trials_dir"]) / f"{record['trial_id']}.json"

    def save() -> None:
        record.update(trial_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0)
        write_json_atomic(path, record)

    def report(metrics: dict[str, Any], checkpoint: str | None = None) -> None:
        record["reports"].append({k: float(v) for k, v in metrics.items() if k.startswith(("val/", "train/loss"))})
        save()  # before tune.report: ASHA may stop the trial inside it
        tune.report(dict(metrics))

    workdir = Path(meta["work_dir"]) / record["trial_id"]  # outside Ray's trial folder, which Tune syncs
    final = train_unet(cfg, report, None, workdir)
    record["test"] = {k: float(v) for k, v in final.items() if k.startswith("test/")}
    record["completed"] = True
    save()
    shutil.rmtree(workdir, ignore_errors=True)  # checkpoints of finished trials are not needed


class BudgetSearcher(Searcher):
    """Hands out ``inner``'s trials while the committed rounds fit in ``budget``.

    Committed: the rounds of ended trials, plus, for each running trial, the
    round of its next possible stop (its next ASHA rung, else the end), plus
    the new trial's first possible stop.
    """

    def __init__(self, inner: Searcher, budget: float, max_t: int, rungs: list[float]) -> None:
        super().__init__(metric=inner.metric, mode=inner.mode)
        self.inner, self.budget, self.max_t = inner, budget, max_t
        self.rungs = [m for m in rungs if m < max_t]
        self.running: dict[str, int] = {}  # trial -> rounds reported so far
        self.spent = 0  # rounds of ended trials

    def _next_stop(self, t: int) -> float:
        return next((m for m in self.rungs if m > t), self.max_t)

    def suggest(self, trial_id: str) -> Any:
        committed = self.spent + sum(self._next_stop(t) for t in self.running.values())
        if committed + self._next_stop(0) > self.budget + 1e-9:
            return Searcher.FINISHED if not self.running else None  # None: asked again when a trial ends
        cfg = self.inner.suggest(trial_id)
        if isinstance(cfg, dict):
            self.running[trial_id] = 0
        return cfg

    def set_search_properties(self, metric: Any, mode: Any, config: dict, **spec: Any) -> bool:
        return True  # the space is the inner searcher's

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.running[trial_id] = int(result.get("training_iteration", 0))
        self.inner.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.spent += max(self.running.pop(trial_id, 0), int((result or {}).get("training_iteration", 0)))
        self.inner.on_trial_complete(trial_id, result=result, error=error)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


def _random_sampler(seed: int, i: int) -> Any:
    import optuna

    return optuna.samplers.RandomSampler(seed=seed + i)


def _tpe_sampler(seed: int, startup: int, i: int) -> Any:
    import optuna

    return optuna.samplers.TPESampler(seed=seed + i, n_startup_trials=startup)


def make_search(loaded: Any, strategy: str, seed: int, tpe_startup: int | None) -> tuple[Any, Any, list[float]]:
    """liverlab's ArmSearcher (random: Optuna's RandomSampler in it) and the scheduler ``liverlab sweep`` builds."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from liverlab.sweep.search import ArmSearcher

    sampler: Any = None
    if strategy == "random":
        sampler = functools.partial(_random_sampler, seed)
    elif strategy != "grid" and tpe_startup is not None:
        sampler = functools.partial(_tpe_sampler, seed, tpe_startup)
    inner = ArmSearcher(loaded, sampler=sampler)
    sch = loaded.space.scheduler
    if sch.type != "asha":
        return inner, FIFOScheduler(), []
    max_t = loaded.max_t(loaded.config(loaded.arms()[0], 0))
    # As liverlab/sweep/runner.py builds it (stop_last_trials=False: a trial at max_t finishes its test).
    grace = loaded.grace_period(loaded.config(loaded.arms()[0], 0))
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=max_t, grace_period=grace,
                              reduction_factor=sch.reduction_factor, stop_last_trials=False)
    return inner, scheduler, asha_rungs(max_t, grace, sch.reduction_factor)


def run_tune(loaded: Any, name: str, strategy: str, seed: int, rounds: float, out: Path, opts: Any) -> dict[str, Any]:
    """One strategy's Tune run within ``rounds``; its trials (by start time), wall time and rungs."""
    inner, scheduler, rungs = make_search(loaded, strategy, seed, opts.tpe_startup)
    max_t = loaded.max_t(loaded.config(loaded.arms()[0], 0))
    trials_dir, work_dir, ray_dir = out / "trials" / name, out / "work" / name, out / "ray"
    for folder in (trials_dir, work_dir, ray_dir / name):  # an interrupted earlier attempt starts again
        shutil.rmtree(folder, ignore_errors=True)
    trials_dir.mkdir(parents=True)
    meta = {"base": loaded.base_raw, "overrides": loaded.overrides(), "space_file": str(loaded.path),
            "trials_dir": str(trials_dir), "work_dir": str(work_dir)}
    tuner = tune.Tuner(
        tune.with_resources(bench_trial, {"cpu": 1, "gpu": 0}),
        param_space={"bench": meta},
        tune_config=tune.TuneConfig(
            search_alg=BudgetSearcher(inner, rounds, max_t, rungs), scheduler=scheduler,
            metric=opts.metric, mode="max", num_samples=inner.total,
            max_concurrent_trials=opts.max_concurrent, reuse_actors=True,
        ),
        run_config=tune.RunConfig(name=name, storage_path=str(ray_dir), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )
    t0 = time.perf_counter()
    results = tuner.fit()
    wall = time.perf_counter() - t0
    if results.num_errors:
        raise RuntimeError(f"{name}: {results.num_errors} trial(s) failed; first: {results.errors[0]}")
    trials = sorted((json.loads(p.read_text()) for p in trials_dir.glob("*.json")), key=lambda t: t["started"])
    for folder in (work_dir, ray_dir / name):  # checkpoints of stopped trials, Tune's own copies
        shutil.rmtree(folder, ignore_errors=True)
    return {"max_t": max_t, "rungs": rungs, "wall_s": wall, "trials": trials}
