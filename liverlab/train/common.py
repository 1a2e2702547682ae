"""What both training loops share: devices, seeding, checkpoints, LR schedule.

A training function never sees Ray. It receives a ``report(metrics,
checkpoint=None)`` callback (tests pass a list's ``append``-like function, the
sweep passes a wrapper around ``ray.tune.report``) and a ``Tracker``.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

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


def linear_decay(epochs: int, decay_epochs: int) -> Callable[[int], float]:
    """CycleGAN's schedule: constant for ``epochs``, then linear to 0 over ``decay_epochs``."""

    def factor(epoch: int) -> float:
        if epoch < epochs or decay_epochs == 0:
            return 1.0
        return max(0.0, 1.0 - (epoch - epochs + 1) / (decay_epochs + 1))

    return factor


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
