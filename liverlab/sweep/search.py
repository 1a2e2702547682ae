"""Arms x seeds enumerated, Optuna within each arm.

Ray's ``OptunaSearch`` rejects grid search, and arms must be enumerated, not
sampled. ``ArmSearcher`` hands out the (arm, seed, sample) list in order and,
for the Optuna part of each suggestion, asks that arm's own ``OptunaSearch``
(seeded TPE over the arm's define-by-run space). Results go back to the study
of the arm they came from, so TPE never mixes arms. Its state pickles, so
``Tuner.restore`` continues the same enumeration and the same studies.

Each (arm, seed, sample) is a *slot* of the plan, carried in the trial's
config (``slot``). A killed driver can leave Tune's trial list and this
searcher's state from different saves (Tune uploads the files of one save in
parallel): the searcher may have handed out a slot to a trial Tune no longer
holds, or Tune may hold a trial the searcher never saw. So after a restore
the searcher takes the slots from the trials Tune restored, and hands out
exactly the others. It limits concurrency itself and ends the sweep itself
(``Searcher.FINISHED`` once every slot's trial is complete), so no Tune
wrapper (``ConcurrencyLimiter``, the sample counter) keeps a stale count.
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
    def __init__(self, loaded: LoadedSpace, sampler: Callable[[int], Any] | None = None,
                 max_concurrent: int | None = None) -> None:
        """``sampler(i)``: the Optuna sampler of the i-th arm (default: TPE seeded ``sampler_seed + i``);
        ``max_concurrent``: at most that many trials handed out and not complete (None: no limit)."""
        objectives = loaded.space.objectives
        metric: Any = [o.metric for o in objectives] if len(objectives) > 1 else objectives[0].metric
        mode: Any = [o.mode for o in objectives] if len(objectives) > 1 else objectives[0].mode
        super().__init__(metric=metric if isinstance(metric, str) else None, mode=mode if isinstance(mode, str) else None)
        self._plan = [(arm, seed) for arm, seed, _ in loaded.trials()]
        self._todo: list[int] = list(range(len(self._plan)))  # slots not handed out yet, in plan order
        self._live: dict[str, int] = {}  # trial id -> slot: handed out, not complete
        self._max_concurrent = max_concurrent
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
        if not self._todo:  # finished only when every slot's trial is complete (a lost one comes back)
            return None if self._live else Searcher.FINISHED
        if self._max_concurrent and len(self._live) >= self._max_concurrent:
            return None
        slot = self._todo.pop(0)
        arm, seed = self._plan[slot]
        self._live[trial_id] = slot
        name = arm_id(arm)
        self._trial_arm[trial_id] = name
        study = self._studies[name]
        params = study.suggest(trial_id) if study is not None else {}
        return {"arm": dict(arm), "arm_id": name, "seed": seed, "slot": slot, "params": params or {}}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        study = self._studies.get(self._trial_arm.get(trial_id, ""))
        if study is not None and self.metric and self.metric in result:
            study.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self._live.pop(trial_id, None)
        study = self._studies.get(self._trial_arm.get(trial_id, ""))
        if study is not None:
            study.on_trial_complete(trial_id, result=result, error=error)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        if "_next" in state:  # a sweep started before slots: the slots from _next on are still to do
            state = {**state, "_todo": list(range(state.pop("_next"), len(state["_plan"]))), "_live": {}}
        self.__dict__.update({"_max_concurrent": None, **state})

    def restore_from_dir(self, checkpoint_dir: str) -> None:
        """Tune's restore: our pickle, then the slots of the trials Tune restored (module docstring)."""
        super().restore_from_dir(checkpoint_dir)
        from ray.tune import ExperimentAnalysis

        try:  # Tune has just downloaded the experiment state it restores from into this folder
            trials = ExperimentAnalysis(checkpoint_dir).trials
        except Exception:  # noqa: BLE001 - no readable trial list: keep our own state
            return
        slots = {t.trial_id: t.config.get("slot") for t in trials}
        if not trials or any(slot is None for slot in slots.values()):
            return  # trials from before slots: nothing to match them by
        held = set(slots.values())
        self._todo = [k for k in range(len(self._plan)) if k not in held]
        self._live = {t.trial_id: slots[t.trial_id] for t in trials if t.status != "TERMINATED"}
        for t in trials:
            self._trial_arm.setdefault(t.trial_id, t.config["arm_id"])
