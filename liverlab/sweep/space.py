"""Search-space files: typed, validated against the experiment config, enumerated.

A search space names a base experiment, the **arms** (enumerated factors and
their Cartesian product), the **seeds**, the ranges **Optuna** samples inside
each arm (optionally only in some arms, via ``when``), the objective(s), the
scheduler, the budget and the resources per trial. Arms x seeds are
enumerated, never sampled. Every key must be a real config path; an error
names the file and the key. This module does not import ray.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from liverlab.config import (
    ExperimentConfig,
    config_from_dict,
    config_paths,
    format_validation_error,
    parse_override,
    read_yaml,
)
from liverlab.errors import LiverlabError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ParamSpec(_Strict):
    """One Optuna dimension over a config key."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None
    when: dict[str, list[Any]] | None = Field(None, description="only in arms whose factor takes one of these values")

    @model_validator(mode="after")
    def _check(self) -> "ParamSpec":
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs a non-empty 'choices'")
        else:
            if self.low is None or self.high is None:
                raise ValueError(f"{self.type} needs 'low' and 'high'")
            if self.low >= self.high:
                raise ValueError(f"low ({self.low}) must be < high ({self.high})")
            if self.log and self.low <= 0:
                raise ValueError("log scale needs low > 0")
        return self


class Objective(_Strict):
    metric: str = "val/iou"
    mode: Literal["max", "min"] = "max"


class SchedulerSpec(_Strict):
    type: Literal["asha", "none"] = "asha"
    max_t: int | None = Field(
        None, ge=1, description="default: the stage's reports (EssNet epochs; U-Net iterations / val_every)"
    )
    grace_period: int | None = Field(
        None, ge=1,
        description="rounds every trial runs before ASHA's first cut; default: a third of max_t (at least 1), "
        "the setting benchmarks/bench_search.py supports (docs/benchmarks.md)",
    )
    reduction_factor: float = Field(2.0, gt=1.0)


class Budget(_Strict):
    samples_per_arm: int = Field(1, ge=1, description="Optuna samples per arm and seed")
    max_concurrent: int = Field(2, ge=1)
    time_limit_s: float | None = Field(None, gt=0)
    max_failures: int = Field(1, ge=0, description="retries of a failed trial from its last checkpoint")


class Resources(_Strict):
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)


class SearchSpace(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    base: str = Field(description="experiment YAML, relative to this file")
    set: dict[str, Any] = Field(default_factory=dict, description="dotted overrides of the base")
    stage: Literal["essnet", "unet", "pipeline"] | None = None
    arms: dict[str, list[Any]] = Field(default_factory=dict)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    params: dict[str, ParamSpec] = Field(default_factory=dict)
    objective: Objective | list[Objective] = Objective()
    scheduler: SchedulerSpec = SchedulerSpec()
    budget: Budget = Budget()
    resources: Resources = Resources()
    sampler_seed: int = 0
    baseline: str | None = Field(None, description="arm the report compares against (default: synthesis=none)")
    profiles: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="named variants of this space, chosen with `--set profile=NAME`: a profile's `set` entries "
        "update the space's, its other keys (arms, seeds, stage, budget, ...) replace them; the sweep is named "
        "<name>-<profile>",
    )

    @property
    def objectives(self) -> list[Objective]:
        return self.objective if isinstance(self.objective, list) else [self.objective]


class LoadedSpace:
    """A validated search space with its resolved base experiment."""

    def __init__(self, path: Path, space: SearchSpace, base_raw: dict[str, Any], base_path: Path) -> None:
        self.path = path
        self.space = space
        self.base_raw = base_raw
        self.base_path = base_path
        # Relative data paths (in the base experiment and in `set`) mean the directory
        # `liverlab sweep` ran from; a trial runs in Ray's own working directory, so the
        # driver's is recorded here and travels with the pickled space.
        self.base_dir = Path.cwd()

    @property
    def name(self) -> str:
        return self.space.name

    def overrides(self) -> dict[str, Any]:
        out = dict(self.space.set)
        if self.space.stage:
            out["stage"] = self.space.stage
        return out

    def arms(self) -> list[dict[str, Any]]:
        """The Cartesian product of the arm factors, each as ``{key: value}``."""
        keys = sorted(self.space.arms)
        return [dict(zip(keys, values)) for values in itertools.product(*(self.space.arms[k] for k in keys))]

    def trials(self) -> list[tuple[dict[str, Any], int, int]]:
        """Every (arm, seed, sample index), in the order trials are launched."""
        n = self.space.budget.samples_per_arm
        return [(arm, seed, k) for k in range(n) for seed in self.space.seeds for arm in self.arms()]

    def config(self, arm: dict[str, Any], seed: int, params: dict[str, Any] | None = None) -> ExperimentConfig:
        overrides = {**self.overrides(), **arm, "seed": seed, **(params or {})}
        return config_from_dict(
            self.base_raw, overrides, source=f"{self.path} (base {self.base_path})", base_dir=self.base_dir
        )

    def active_params(self, arm: dict[str, Any]) -> dict[str, ParamSpec]:
        return {k: p for k, p in self.space.params.items() if all(arm.get(f) in v for f, v in (p.when or {}).items())}

    def max_t(self, config: ExperimentConfig) -> int:
        if self.space.scheduler.max_t:
            return self.space.scheduler.max_t
        if config.stage == "essnet":
            return config.essnet.epochs + config.essnet.decay_epochs
        return config.unet.n_reports  # one report per unet.val_every steps

    def grace_period(self, config: ExperimentConfig) -> int:
        """ASHA's grace period: the space's, else :func:`default_grace` of ``max_t``."""
        return self.space.scheduler.grace_period or default_grace(self.max_t(config))


def default_grace(max_t: int) -> int:
    """A third of ``max_t`` rounds, at least 1. In benchmarks/bench_search.py (6 rounds) a cut after
    round 1 ranked trials by a val/iou whose rank correlation with the final one was 0.63 and missed
    the goal (0 of 3 repeats within 1 IoU point at 25 % of the grid's compute); a cut after round 2
    met it (2 of 3)."""
    return max(1, round(max_t / 3))


def arm_id(arm: dict[str, Any]) -> str:
    """Canonical arm name: ``synthesis=essnet,unet.mixing_ratio=0.5`` (factors sorted)."""
    return ",".join(f"{k}={arm[k]}" for k in sorted(arm)) or "default"


def _extreme_params(params: dict[str, ParamSpec], end: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, p in params.items():
        if p.type == "categorical":
            out[key] = p.choices[0] if end == "low" else p.choices[-1]  # type: ignore[index]
        else:
            v = p.low if end == "low" else p.high
            out[key] = int(v) if p.type == "int" else v  # type: ignore[arg-type]
    return out


PROFILE = "profile"  # `--set profile=NAME` picks one of the space's `profiles` (not a config key)


def apply_profile(raw: dict[str, Any], name: Any, path: Path) -> dict[str, Any]:
    """``raw`` with profile ``name`` applied: ``set`` updated, other keys replaced, the name suffixed."""
    profiles = raw.get("profiles") or {}
    if not isinstance(profiles, dict) or name not in profiles:
        have = ", ".join(map(str, profiles)) if isinstance(profiles, dict) and profiles else "none"
        raise LiverlabError(f"{path}: --set profile={name}: no such profile in profiles (defined: {have})")
    chosen = profiles[name]
    if not isinstance(chosen, dict):
        raise LiverlabError(f"{path}: profiles.{name}: must be a mapping of search-space keys")
    out = dict(raw)
    for key, value in chosen.items():
        if key == "profiles" or key not in SearchSpace.model_fields:
            raise LiverlabError(f"{path}: profiles.{name}.{key}: not a search-space key")
        if key == "set" and isinstance(value, dict):
            out[key] = {**(raw.get(key) or {}), **value}
        else:
            out[key] = value
    if "name" not in chosen:
        out["name"] = f"{raw.get('name', 'sweep')}-{name}"
    return out


def load_space(path: str | Path, extra_set: list[str] | None = None) -> LoadedSpace:
    """Read and validate a search-space YAML; every arm x sampled range must give a valid config.

    ``extra_set`` items are ``--set KEY=VALUE`` overrides of the base experiment, applied last;
    ``profile=NAME`` instead applies the space's profile NAME first (see ``apply_profile``).
    """
    path = Path(path)
    raw = read_yaml(path)
    items = [parse_override(item) for item in extra_set or []]
    for key, value in items:
        if key == PROFILE:
            raw = apply_profile(raw, value, path)
    for key, value in items:
        if key != PROFILE:
            raw["set"] = {**(raw.get("set") or {}), key: value}
    try:
        space = SearchSpace.model_validate(raw)
    except ValidationError as err:
        raise LiverlabError(format_validation_error(str(path), err)) from None

    known = config_paths()
    for name, profile in space.profiles.items():  # an unused profile's typos surface now, not when it is picked
        for key, value in profile.items():
            if key == "profiles" or key not in SearchSpace.model_fields:
                raise LiverlabError(f"{path}: profiles.{name}.{key}: not a search-space key")
            for sub in value if key in ("set", "arms") and isinstance(value, dict) else ():
                if sub not in known:
                    raise LiverlabError(f"{path}: profiles.{name}.{key}.{sub}: unknown config key")
    for section, keys in (("set", space.set), ("arms", space.arms), ("params", space.params)):
        for key in keys:
            if key not in known:
                raise LiverlabError(f"{path}: {section}.{key}: unknown config key")
            if key in ("seed", "stage") and section != "set":
                raise LiverlabError(f"{path}: {section}.{key}: use 'seeds' and 'stage' instead")
    for key, p in space.params.items():
        for factor, values in (p.when or {}).items():
            if factor not in space.arms:
                raise LiverlabError(
                    f"{path}: params.{key}.when.{factor}: not an arm factor ({', '.join(space.arms) or 'none'})"
                )
            bad = [v for v in values if v not in space.arms[factor]]
            if bad:
                raise LiverlabError(f"{path}: params.{key}.when.{factor}: {bad} not among the arm's values")
        if key in space.arms:
            raise LiverlabError(f"{path}: params.{key}: is also an arm factor")
    if len(space.objectives) > 1 and space.scheduler.type == "asha":
        raise LiverlabError(f"{path}: scheduler.type: asha needs a single objective (use 'none' for a Pareto search)")

    base_path = (path.parent / space.base).resolve()
    if not base_path.is_file():
        raise LiverlabError(f"{path}: base: {space.base}: no such file (looked at {base_path})")
    loaded = LoadedSpace(path.resolve(), space, read_yaml(base_path), base_path)
    # Every arm at both ends of every range must validate *now*, not in trial 37.
    for arm in loaded.arms():
        for end in ("low", "high"):
            cfg = loaded.config(arm, space.seeds[0], _extreme_params(loaded.active_params(arm), end))
    if space.scheduler.type == "asha":
        obj = space.objectives[0].metric
        if not (obj.startswith("val/") or obj.startswith("train/")):
            raise LiverlabError(
                f"{path}: objective.metric: {obj!r} is not reported per epoch (use val/... or train/...)"
            )
    del cfg
    return loaded


# ----------------------------------------------------------------------------- Optuna


def define_by_run(trial: Any, params: dict[str, dict[str, Any]]) -> None:
    """Optuna define-by-run space for one arm (module level, so it pickles).

    ``params`` maps config keys to ``ParamSpec`` dumps that are active in the
    arm; conditional parameters were filtered out before, so each arm's study
    has a fixed, valid space.
    """
    for key, p in params.items():
        if p["type"] == "float":
            trial.suggest_float(key, p["low"], p["high"], log=p["log"], step=p["step"])
        elif p["type"] == "int":
            trial.suggest_int(key, int(p["low"]), int(p["high"]), log=p["log"], step=int(p["step"] or 1))
        else:
            trial.suggest_categorical(key, p["choices"])
