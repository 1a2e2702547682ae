"""Arms x seeds enumerated, Optuna within each arm.

Ray's ``OptunaSearch`` rejects grid search, and arms must be enumerated, not
sampled. ``ArmSearcher`` hands out the (arm, seed, sample) list in order and,
for the Optuna part of each suggestion, asks that arm's own ``OptunaSearch``
(seeded TPE over the arm's define-by-run space). Results go back to the study
of the arm they came from, so TPE never mixes arms. Its state pickles, so
``Tuner.restore`` continues the same enumeration and the same studies.
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Callable
from typing import Any

from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from liverlab.sweep.space import LoadedSpace, arm_id, define_by_run


class ArmSearcher(Searcher):
    """``only``: the (arm_id, seed, sample) slots to hand out (a resume re-creating lost trials); default all.
    ``sampler(i)``: the Optuna sampler of the i-th arm (default: TPE seeded ``sampler_seed + i``)."""

    def __init__(
        self,
        loaded: LoadedSpace,
        only: list[tuple[str, int, int]] | None = None,
        sampler: Callable[[int], Any] | None = None,
    ) -> None:
        objectives = loaded.space.objectives
        metric: Any = [o.metric for o in objectives] if len(objectives) > 1 else objectives[0].metric
        mode: Any = [o.mode for o in objectives] if len(objectives) > 1 else objectives[0].mode
        super().__init__(metric=metric if isinstance(metric, str) else None, mode=mode if isinstance(mode, str) else None)
        keep = None if only is None else set(only)
        # (arm, seed, sample): the sample index is the trial's slot, tagged on its MLflow run (liverlab.sample).
        self._plan = [(arm, seed, k) for arm, seed, k in loaded.trials() if keep is None or (arm_id(arm), seed, k) in keep]
        self._next = 0
        self._trial_arm: dict[str, str] = {}
        self._studies: dict[str, OptunaSearch | None] = {}
        import optuna

        for i, arm in enumerate(loaded.arms()):
            params = {k: p.model_dump() for k, p in loaded.active_params(arm).items()}
            if not params:
                self._studies[arm_id(arm)] = None  # nothing to sample in this arm
                continue
            self._studies[arm_id(arm)] = OptunaSearch(
                space=functools.partial(define_by_run, params=params), metric=metric, mode=mode,
                sampler=sampler(i) if sampler else optuna.samplers.TPESampler(seed=loaded.space.sampler_seed + i),
            )

    @property
    def total(self) -> int:
        return len(self._plan)

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True  # the space is ours; param_space only carries constants

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self._next >= len(self._plan):
            return Searcher.FINISHED
        arm, seed, *rest = self._plan[self._next]  # sweeps saved before slots had (arm, seed)
        self._next += 1
        name = arm_id(arm)
        self._trial_arm[trial_id] = name
        study = self._studies[name]
        params = study.suggest(trial_id) if study is not None else {}
        slot = {"sample": rest[0]} if rest else {}
        return {"arm": dict(arm), "arm_id": name, "seed": seed, **slot, "params": params or {}}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        study = self._studies.get(self._trial_arm.get(trial_id, ""))
        if study is not None and self.metric and self.metric in result:
            study.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        study = self._studies.get(self._trial_arm.get(trial_id, ""))
        if study is not None:
            study.on_trial_complete(trial_id, result=result, error=error)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
