"""What both training loops share: the start of a run, devices, seeding, the LR schedule, checkpoints.

A training function never sees Ray. It receives a ``report(metrics,
checkpoint=None)`` callback (tests pass a list's ``append``-like function, the
sweep passes a wrapper around ``ray.tune.report``) and a ``Tracker``.

Both loops have one shape: ``start_run`` (tracker, work folder, seed, device,
the checkpoint to resume from), one iteration counter ``it`` (optimiser steps
done), the learning rate of step ``it`` from ``lr_factor``, and every
``val_every`` steps a validation, a checkpoint and a report.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from liverlab.config import ExperimentConfig, dump_config
from liverlab.data.atomic import write_with
from liverlab.errors import LiverlabError


class Report(Protocol):
    """``report(metrics, checkpoint=None)``: checkpoint is a directory path."""

    def __call__(self, metrics: dict[str, Any], checkpoint: str | None = None) -> None: ...


def no_report(metrics: dict[str, Any], checkpoint: str | None = None) -> None:
    """A ``report`` that drops everything (plain CLI runs show a progress bar instead)."""


class NonFiniteLoss(RuntimeError):
    """A loss became NaN or infinite: the trial stops with this reason."""


def check_finite(losses: Mapping[str, float], where: str) -> None:
    bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
    if bad:
        raise NonFiniteLoss(f"non-finite loss at {where}: " + ", ".join(f"{k}={v}" for k, v in bad.items()))


def select_device(preference: str = "auto") -> torch.device:
    """``auto``: CUDA when a GPU is visible, else CPU. ``cuda`` without a GPU is an error."""
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise LiverlabError("device: cuda was requested but no CUDA GPU is available")
        return torch.device("cuda")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """bf16 / fp16 autocast where asked (``auto`` resolved for ``device``), else a no-op.

    Inference paths (validation, synthesis, evaluation) use this directly; the
    training loops use ``liverlab.train.precision.prepare`` (autocast + GradScaler).
    """
    from liverlab.train.precision import autocast as _autocast

    return _autocast(device, precision)


def lr_factor(schedule: str, it: int, iterations: int, hold: int = 0, every: int = 1) -> float:
    """Learning-rate multiplier for step ``it`` (0-based) of ``iterations``; both stages use it.

    The rate stays at 1 for the first ``hold`` steps, then decays over the
    remaining ones, changing once every ``every`` steps: in the ``k``-th of
    ``n`` decay periods (``k = (it - hold) // every``),

    * ``poly``: ``(1 - k/n) ** 0.9`` (nnU-Net; the U-Net's default, every step);
    * ``cosine``: ``0.5 (1 + cos(pi k/n))``;
    * ``linear``: ``1 - (k + 1) / (n + 1)``, CycleGAN's decay (EssNet: ``hold``
      = ``essnet.epochs`` epochs, then one change per epoch over ``decay_epochs``);
    * ``constant``: 1.
    """
    k, n = (it - hold) // every, (iterations - hold) // every
    if schedule == "constant" or k < 0:
        return 1.0
    if schedule == "linear":  # the last period runs at 1/(n+1), never at 0
        return max(0.0, 1.0 - (k + 1) / (n + 1))
    t = min(max(k / max(n, 1), 0.0), 1.0)
    if schedule == "poly":
        return (1.0 - t) ** 0.9
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    raise ValueError(f"unknown learning-rate schedule {schedule!r}")


def set_lr(optimizers: Iterable[torch.optim.Optimizer], lr: float) -> None:
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = lr


# ----------------------------------------------------------------------------- the start of a run


@dataclass
class Run:
    """What a training loop starts from (``start_run``)."""

    tracker: Any
    workdir: Path
    device: torch.device
    resume: dict[str, Any] | None  #: this stage's checkpoint left in ``workdir`` by a previous attempt, else None


def start_run(config: ExperimentConfig, tracker: Any, workdir: str | Path, kind: str) -> Run:
    """The setup both stages share: tracker, work folder, seed, device, and the checkpoint to resume from.

    ``kind`` is the stage's checkpoint kind (``unet``, ``essnet``): a checkpoint
    of another kind in ``workdir`` is not resumed. A fresh run logs the
    resolved config (params and ``config.yaml``); a resumed one logged it
    already. The caller restores the weights, optimiser state and random
    state from ``resume`` after building its networks (building draws
    initial weights from the seeded stream, which the restore then replaces).
    """
    from liverlab.tracking.writer import NullTracker

    tracker = tracker or NullTracker()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)
    device = select_device(config.device)
    resume = find_resume(workdir)
    if resume is not None and resume.get("kind") != kind:
        resume = None
    if resume is None:
        tracker.log_params(config.model_dump(mode="json"))
        tracker.log_text(dump_config(config), "config.yaml")
    return Run(tracker, workdir, device, resume)


# ----------------------------------------------------------------------------- checkpoints

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.pt"


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary name, then rename: no half-written file ever looks complete."""
    write_with(path, lambda tmp: torch.save(obj, tmp))
    return Path(path)


def save_checkpoint(workdir: str | Path, state: dict[str, Any]) -> str:
    """Write ``workdir/checkpoint/state.pt`` atomically; return the checkpoint folder.

    Only tensors, numbers, strings, lists and dicts go in, so the file loads
    with ``torch.load(..., weights_only=True)``.
    """
    ckpt_dir = Path(workdir) / CHECKPOINT_DIR
    atomic_torch_save(state, ckpt_dir / STATE_FILE)
    return str(ckpt_dir)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint file or folder with ``weights_only=True`` (no pickle code runs)."""
    p = Path(path)
    if p.is_dir():
        p = p / STATE_FILE
    if not p.is_file():
        raise LiverlabError(f"{path}: no checkpoint found")
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt, truncated or not a liverlab checkpoint
        raise LiverlabError(f"{p}: cannot load checkpoint: {exc}") from None


def find_resume(workdir: str | Path) -> dict[str, Any] | None:
    """The last checkpoint in ``workdir`` if a previous attempt left one."""
    p = Path(workdir) / CHECKPOINT_DIR / STATE_FILE
    return load_checkpoint(p) if p.is_file() else None


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
