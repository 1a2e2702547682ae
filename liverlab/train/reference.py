"""The reference segmenter: one judge of shape preservation for every arm.

EssNet's own S is trained on the synthetic images it judges, and the CycleGAN
arm has no S at all, so neither can compare the arms fairly. The reference
is a U-Net (the experiment's ``unet.model``) trained on **real MRI** training
patients only, then frozen: ``val/shape_dice`` is its Dice on G_mri(CT)
against the carried CT mask, the same judge for EssNet and CycleGAN. It is
trained once per (MRI data, preprocessing, model, steps) and cached, under a
lock, so concurrent trials share it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from filelock import FileLock

from liverlab.config import ExperimentConfig
from liverlab.data.atomic import sha256_json
from liverlab.losses import dice_ce_loss
from liverlab.train import common
from liverlab.train import data as tdata

BATCH = 8


def reference_key(config: ExperimentConfig) -> str:
    payload = {
        "data": config.data.model_dump(mode="json", exclude={"ct", "phantom"}),
        "model": config.unet.model.model_dump(mode="json"),
        "steps": config.essnet.reference_steps,
    }
    return sha256_json(payload)


def reference_segmenter(config: ExperimentConfig, device: torch.device) -> torch.nn.Module | None:
    """The frozen real-MRI U-Net, trained on first use; None when ``reference_steps`` is 0."""
    from liverlab.data.datasets import SegmentationSlices
    from liverlab.train.unet import build_unet

    steps = config.essnet.reference_steps
    if steps == 0:
        return None
    _, mri_dir = tdata.dataset_dirs(config)
    root = Path(config.data.cache_dir) if config.data.cache_dir else mri_dir / ".cache"
    path = root / "reference_segmenter" / f"{reference_key(config)[:24]}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    model = build_unet(config)
    with FileLock(str(path) + ".lock"):
        if path.is_file():
            model.load_state_dict(common.load_checkpoint(path)["model"])
            return model.to(device).eval()
        # Fixed seed: the judge must not change with the trial's seed.
        torch.manual_seed(0)
        slices = tdata.load(config, mri_dir, "mri", "train")
        loader = tdata.seeded_loader(SegmentationSlices(slices), BATCH, steps * BATCH, seed=0)
        model = model.to(device).train()
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        for batch in loader:
            loss = dice_ce_loss(model(batch["image"].to(device)), batch["mask"].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        common.atomic_torch_save({"kind": "reference_segmenter", "model": model.state_dict()}, path)
    return model.eval()
