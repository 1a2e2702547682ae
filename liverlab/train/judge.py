"""The judge: one frozen segmenter that scores shape preservation in every arm.

EssNet's own S is trained on the synthetic images it judges, and the CycleGAN
arm has no S at all, so neither can compare the arms fairly. The judge is the
experiment's own U-Net recipe (``train_unet`` with the ``unet`` settings:
iteration budget, LR schedule, AdamW, augmentation, all slices) trained on the
**real MRI** training patients only (seed 0, no synthetic data), then frozen:
``val/shape_dice`` is its Dice on G_mri(CT) against the carried CT mask, the
same judge for EssNet and CycleGAN. ``essnet.reference_steps`` overrides its
iteration budget (null = ``unet.iterations``; 0 = no judge); the key keeps
its first name because it is part of every recorded run's params and of the
translator cache key (``pipeline.essnet_key``).

It is trained once per content key (MRI manifest hash, preprocessing, U-Net
recipe, iterations) and cached under a file lock, so concurrent trials share
it. Its own held-out IoU on real MRI (the split's test patients, on each
case's own grid, else its validation patients) is stored beside it in
``judge.json`` and logged as ``val/judge_iou`` next to every ``val/shape_dice``:
a judge that segments real MRI at IoU 0.6 cannot tell a 0.9 translation from
a 0.8 one.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from filelock import FileLock

from liverlab.config import ExperimentConfig
from liverlab.data.atomic import sha256_json, write_json_atomic
from liverlab.train import common
from liverlab.train import data as tdata

RECIPE = 2  # bump when the judge's training changes what a key means
JUDGE_JSON = "judge.json"
WEIGHTS = "judge.pt"
# The judge's first name, kept on disk (cache folder, weights kind): judges cached before the rename are found.
DISK_NAME = "reference_segmenter"


def judge_iterations(config: ExperimentConfig) -> int:
    """The judge's training iterations: ``essnet.reference_steps``, else ``unet.iterations``."""
    steps = config.essnet.reference_steps
    return config.unet.iterations if steps is None else int(steps)


def judge_config(config: ExperimentConfig) -> ExperimentConfig:
    """The experiment as a real-only U-Net run of ``judge_iterations`` steps, seed 0.

    Always a 2D model (``context_slices`` 0): it judges single synthetic slices, which have no z-neighbours.
    Always every real training patient (``data.train_patients`` null): the judge is shared by
    translators that every data-scarcity trial reuses, so it must not depend on the trial's subset.
    """
    u = config.unet
    iterations = max(1, judge_iterations(config))
    unet = u.model_copy(update={
        "iterations": iterations, "val_every": min(u.val_every, iterations), "mixing_ratio": 0.0, "synthetic": None,
        "model": u.model.model_copy(update={"context_slices": 0}),
    })
    data = config.data.model_copy(update={"train_patients": None})
    return config.model_copy(update={"stage": "unet", "synthesis": "none", "seed": 0, "unet": unet, "data": data})


def judge_key(config: ExperimentConfig) -> str:
    """Content key: MRI data (manifest hash), preprocessing and split, U-Net recipe, iterations."""
    from liverlab.data.manifest import ensure_manifest, manifest_hash

    _, mri_dir = tdata.dataset_dirs(config)
    cfg = judge_config(config)
    payload = {
        "recipe": RECIPE,
        "mri": manifest_hash(ensure_manifest(mri_dir)),
        "data": cfg.data.model_dump(mode="json", exclude={"ct", "mri", "root", "phantom", "cache_dir"}),
        "unet": cfg.unet.model_dump(mode="json", exclude={"synthetic", "mixing_ratio"}),
        "precision": cfg.precision,
        "channels_last": cfg.channels_last,
    }
    return sha256_json(payload)


def _folder(config: ExperimentConfig) -> Path:
    _, mri_dir = tdata.dataset_dirs(config)
    root = Path(config.data.cache_dir) if config.data.cache_dir else mri_dir / ".cache"
    return root / DISK_NAME / judge_key(config)[:24]


def _held_out(metrics: dict[str, float]) -> dict[str, float]:
    """The judge's own held-out figures on real MRI: test patients, else validation patients."""
    for split in ("test", "val"):
        iou = metrics.get(f"{split}/iou")
        if iou is not None and math.isfinite(float(iou)):
            out = {"val/judge_iou": float(iou)}
            if f"{split}/dice" in metrics:
                out["val/judge_dice"] = float(metrics[f"{split}/dice"])
            return out
    return {}


def ensure_judge(config: ExperimentConfig) -> Path | None:
    """The judge's cache folder (``judge.pt``, ``judge.json``), trained on first use; None when disabled."""
    from liverlab.train.unet import train_unet

    if judge_iterations(config) == 0:
        return None
    folder = _folder(config)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if (folder / JUDGE_JSON).is_file():
            return folder
        rng = common.rng_state()  # the caller's random stream must not depend on a cache hit
        try:
            cfg = judge_config(config)
            t0 = time.perf_counter()
            metrics = train_unet(cfg, common.no_report, None, folder / "run")
            wall_s = time.perf_counter() - t0
            best = common.load_checkpoint(folder / "run" / "best.pt")
            common.atomic_torch_save({"kind": DISK_NAME, "model": best["model"]}, folder / WEIGHTS)
            write_json_atomic(folder / JUDGE_JSON, {
                "key": judge_key(config),
                "iterations": cfg.unet.iterations,
                "wall_s": wall_s,
                "held_out": _held_out(metrics),
                "metrics": {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
            })
        finally:
            common.set_rng_state(rng)
    return folder


def judge_scores(config: ExperimentConfig) -> dict[str, float]:
    """``{"val/judge_iou": ..., "val/judge_dice": ...}``: the judge's own held-out figures ({} if none)."""
    folder = ensure_judge(config)
    if folder is None:
        return {}
    return dict(json.loads((folder / JUDGE_JSON).read_text()).get("held_out", {}))


def load_judge(config: ExperimentConfig, device: torch.device) -> torch.nn.Module | None:
    """The judge (a frozen real-MRI U-Net) in eval mode, trained on first use; None when ``reference_steps`` is 0."""
    from liverlab.train.unet import build_unet

    folder = ensure_judge(config)
    if folder is None:
        return None
    model = build_unet(judge_config(config))
    model.load_state_dict(common.load_checkpoint(folder / WEIGHTS)["model"])
    return model.to(device).eval()
