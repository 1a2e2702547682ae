"""Exact resume on CPU: a U-Net interrupted at a checkpoint and resumed logs what the undisturbed run logs.

Every source of randomness of a round is either in the checkpoint (weights,
optimiser, BatchNorm statistics, torch's global RNG) or seeded by the round
(the mixing sampler and the augmentation's generator), so a resumed round
repeats the undisturbed run's round. The default augmentation (rotation,
scaling and intensity ops) is on: before its generator was seeded per round,
a resumed run drew other augmentations and drifted (train/loss 1.3243 instead
of 1.3332 four iterations after the restore point, in this very setting).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import tiny_config

from liverlab.train.unet import train_unet

VOLATILE = ("time/", "train/images_per_s")  # wall-clock figures, not results


class Interrupt(Exception):
    pass


def _train(root: Path, workdir: Path, stop_at: int | None = None) -> dict[int, dict[str, float]]:
    """Metrics reported per iteration; raise at the report of ``stop_at`` (after its checkpoint is written)."""
    logged: dict[int, dict[str, float]] = {}

    def report(metrics: dict, checkpoint: str | None = None) -> None:
        step = int(metrics["iteration"])
        logged[step] = {k: float(v) for k, v in metrics.items() if not k.startswith(VOLATILE)}
        if step == stop_at:
            assert checkpoint is not None
            raise Interrupt

    config = tiny_config(root, **{"unet.iterations": 24, "unet.val_every": 4, "unet.mixing_ratio": 0.0})
    try:
        train_unet(config, report, None, workdir)
    except Interrupt:
        pass
    return logged


def test_resumed_unet_repeats_the_undisturbed_run(tmp_path: Path, phantom_root: Path) -> None:
    undisturbed = _train(phantom_root, tmp_path / "a")
    first = _train(phantom_root, tmp_path / "b", stop_at=8)
    assert sorted(first) == [4, 8]
    resumed = _train(phantom_root, tmp_path / "b")  # same folder: picks up checkpoint/state.pt of iteration 8
    assert sorted(resumed) == [12, 16, 20, 24]
    for step, metrics in resumed.items():
        expected = undisturbed[step]
        assert metrics.keys() == expected.keys()
        for key, value in metrics.items():
            assert value == pytest.approx(expected[key], rel=1e-6, abs=1e-7), (step, key)
    assert any(undisturbed[s]["train/loss"] != undisturbed[4]["train/loss"] for s in resumed)  # it did train
