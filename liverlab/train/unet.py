"""Stage 2: a liver U-Net on real MRI, optionally mixed with synthetic MRI.

Each epoch draws ``steps_per_epoch * batch_size`` slices: real training
slices and, when ``unet.mixing_ratio`` r > 0, synthetic ones so that
synthetic / real = r. Validation is per patient, in 3D; early stopping keeps
the best ``val/iou`` weights, and the final test evaluation writes one row per
test patient (IoU, Dice, RAVD %, ASSD mm, MSSD mm) to ``per_patient.parquet``.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any

import torch

from liverlab.config import ExperimentConfig, dump_config
from liverlab.errors import LiverlabError
from liverlab.losses import dice_ce_loss
from liverlab.models import unet_from_config
from liverlab.train import common
from liverlab.train import data as tdata
from liverlab.train import evaluate as ev
from liverlab.train.common import Report


def build_unet(config: ExperimentConfig) -> torch.nn.Module:
    return unet_from_config(config.unet.model)


class UNetData:
    """Real MRI splits by patient, plus the synthetic set when one is mixed in."""

    def __init__(self, config: ExperimentConfig) -> None:
        from liverlab.data.augment import Augment
        from liverlab.data.datasets import SegmentationSlices

        u = config.unet
        _, mri_dir = tdata.dataset_dirs(config)
        tdata.require_dataset(mri_dir, "data.mri")
        self.train = tdata.load(config, mri_dir, "mri", "train")
        if len(self.train) == 0:
            raise LiverlabError(f"data.mri: {mri_dir} has no training slices with the configured split")
        self.val = tdata.load(config, mri_dir, "mri", "val", all_slices=True)
        if len(self.val) == 0:
            raise LiverlabError(f"data.mri: {mri_dir} has no validation patients (data.split.val = {config.data.split.val})")
        self.test = tdata.load(config, mri_dir, "mri", "test", all_slices=True)
        a = u.augment
        augment = Augment(flip=a.flip, rotate_degrees=a.rotate_degrees, scale=a.scale, intensity=a.intensity, seed=config.seed)
        real = SegmentationSlices(self.train, augment=augment)
        self.n_real, self.n_synth = len(real), 0
        parts: list[Any] = [real]
        if u.mixing_ratio > 0:
            if u.synthetic is None:
                raise LiverlabError("unet.mixing_ratio > 0 needs unet.synthetic (a folder of synthetic MRI)")
            synth_dir = tdata.require_dataset(Path(u.synthetic), "unet.synthetic")
            synth = SegmentationSlices(tdata.load(config, synth_dir, "mri", None), augment=augment)
            self.n_synth = len(synth)
            parts.append(synth)
        self.dataset = torch.utils.data.ConcatDataset(parts)
        self.ratio = u.mixing_ratio
        self.batch_size = u.batch_size
        self.steps = u.steps_per_epoch or max(1, math.ceil(self.n_real * (1 + self.ratio) / u.batch_size))
        self.seed = config.seed

    def loader(self, epoch: int) -> torch.utils.data.DataLoader:
        from liverlab.data.datasets import MixingSampler

        n = self.steps * self.batch_size
        sampler = MixingSampler(self.n_real, self.n_synth, self.ratio, num_samples=n, seed=self.seed * 1000 + epoch)
        return torch.utils.data.DataLoader(self.dataset, batch_size=self.batch_size, sampler=sampler, num_workers=0)


def _validate(model: torch.nn.Module, slices: Any, device: torch.device, precision: str, split: str) -> tuple[list, dict]:
    preds = ev.predict_slices(model, slices.images, device, precision)
    which = ("iou", "dice") if split == "val" else ev.METRICS
    rows = ev.case_metrics(slices, preds, which)
    return rows, ev.mean_metrics(rows, split, which)


def train_unet(
    config: ExperimentConfig,
    report: Report = common.no_report,
    tracker: Any = None,
    workdir: str | Path = ".",
    progress: bool = False,
) -> dict[str, float]:
    """Train, early-stop on ``val/iou``, evaluate the best weights on the test patients."""
    from liverlab.tracking.writer import NullTracker
    from liverlab.train.progress import EpochProgress

    tracker = tracker or NullTracker()
    u = config.unet
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    common.seed_everything(config.seed)
    device = common.select_device(config.device)
    data = UNetData(config)

    model = build_unet(config).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    o = u.optim
    opt = torch.optim.Adam(model.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay)
    start_epoch, best_iou, bad_epochs = 0, -1.0, 0
    best_state = copy.deepcopy(model.state_dict())

    resume = common.find_resume(workdir)
    if resume is not None and resume.get("kind") == "unet":
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optim"])
        best_state = resume["best_model"]
        start_epoch, best_iou, bad_epochs = int(resume["epoch"]), float(resume["best_iou"]), int(resume["bad_epochs"])
        common.set_rng_state(resume["rng"])
    else:
        tracker.log_params(config.model_dump(mode="json"))
        tracker.log_text(dump_config(config), "config.yaml")
        tracker.log_metrics({"data/n_real": data.n_real, "data/n_synthetic": data.n_synth}, step=0)

    bar = EpochProgress("unet", u.epochs, data.steps, enabled=progress)
    metrics: dict[str, float] = {}
    for epoch in range(start_epoch, u.epochs):
        if bad_epochs >= u.patience:
            break
        model.train()
        total, t0 = 0.0, time.perf_counter()
        for i, batch in enumerate(data.loader(epoch)):
            x = batch["image"].to(device, non_blocking=True)
            y = batch["mask"].to(device, non_blocking=True)
            if config.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with common.autocast(device, config.precision):
                logits = model(x)
            loss = dice_ce_loss(logits.float(), y, dice_weight=u.dice_weight, ce_weight=u.ce_weight)
            value = float(loss.detach())
            common.check_finite({"train/loss": value}, f"unet epoch {epoch + 1} step {i + 1}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += value
            bar.step(epoch, i + 1, value)
        train_time = time.perf_counter() - t0
        t1 = time.perf_counter()
        _, val = _validate(model, data.val, device, config.precision, "val")
        val_time = time.perf_counter() - t1
        if val["val/iou"] > best_iou:
            best_iou, bad_epochs = val["val/iou"], 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad_epochs += 1
        metrics = {
            "train/loss": total / data.steps,
            **val,
            "val/best_iou": best_iou,
            "train/images_per_s": data.steps * data.batch_size / max(train_time, 1e-9),
            "time/train_s": train_time,
            "time/val_s": val_time,
            "epoch": epoch + 1,
        }
        tracker.log_metrics(metrics, step=epoch + 1)
        state = {
            "kind": "unet", "epoch": epoch + 1, "model": model.state_dict(), "optim": opt.state_dict(),
            "best_model": best_state, "best_iou": best_iou, "bad_epochs": bad_epochs,
            "config": config.model_dump(mode="json"), "rng": common.rng_state(),
        }
        ckpt = common.save_checkpoint(workdir, state)
        report(dict(metrics), checkpoint=ckpt)
        bar.epoch_done(epoch, metrics)
    bar.close()

    # Final evaluation with the best weights on patients never used for training or selection.
    model.load_state_dict(best_state)
    common.atomic_torch_save({"kind": "unet_weights", "model": best_state, "config": config.model_dump(mode="json")}, workdir / "best.pt")
    final = dict(metrics)
    if len(data.test):
        rows, test = _validate(model, data.test, device, config.precision, "test")
        table = ev.write_table(rows, workdir / "per_patient.parquet")
        tracker.log_metrics(test, step=u.epochs)
        tracker.log_artifact(table)
        final.update(test)
        _panel(model, data.test, device, config.precision, workdir, tracker)
    tracker.flush()
    return final


def _panel(model: torch.nn.Module, slices: Any, device: torch.device, precision: str, workdir: Path, tracker: Any) -> None:
    import numpy as np

    from liverlab.train.visual import segmentation_panel

    masks = np.asarray(slices.masks)
    liver = np.flatnonzero(masks.reshape(len(masks), -1).any(1))
    if not len(liver):
        return
    idx = liver[tdata.evenly(len(liver), 4)]
    images = np.asarray(slices.images[idx])
    preds = ev.predict_slices(model, images, device, precision)
    png = segmentation_panel(images, masks[idx], preds, workdir / "panels" / "unet_test.png")
    tracker.log_artifact(png, "panels")
