"""Stage 2: a liver U-Net on real MRI, optionally mixed with synthetic MRI.

Training length is ``unet.iterations`` optimiser steps of ``batch_size``
slices, whatever the mixing ratio: with r > 0 each batch draws synthetic
slices so that synthetic / real = r, but every arm takes the same number of
steps with the same learning-rate schedule (``unet.lr_schedule``, poly by
default, AdamW by default). Every ``unet.val_every`` steps the run validates
per patient in 3D (when it has validation patients), reports and
checkpoints. ``unet.keep`` chooses the weights tested and written to
``best.pt``: the last (default) or the best ``val/iou``; early stopping is
optional. The final test evaluation writes one row per test patient (IoU,
Dice, RAVD %, ASSD mm, MSSD mm) to ``per_patient.parquet``.
"""

from __future__ import annotations

import copy
import functools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from liverlab.config import ExperimentConfig, UNetConfig
from liverlab.data import layout
from liverlab.errors import LiverlabError
from liverlab.infer import evaluate as ev
from liverlab.losses import dice_ce_loss
from liverlab.models import liver_only, unet_from_config
from liverlab.train import common, precision
from liverlab.train import data as tdata
from liverlab.train.common import Report


def build_unet(config: ExperimentConfig, out_channels: int = 2) -> torch.nn.Module:
    """The U-Net of ``unet.model``; ``out_channels`` > 2 with ``unet.organs`` (one per dataset.json label)."""
    return unet_from_config(config.unet.model, out_channels=out_channels)


def make_optimizer(model: torch.nn.Module, u: UNetConfig) -> torch.optim.Optimizer:
    o = u.optim
    cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay)


# Augmentation seeds of loader workers lie in [2^31, 2^32), in-process rounds' (seed * 1000 + r) below:
# torch's CPU generator keeps only a seed's low 32 bits, so an offset of 2^40 would replay round 0.
WORKER_SEEDS = 2**31


def seed_worker_augment(base: int, worker_id: int) -> None:
    """``worker_init_fn``: reseed the worker's copies of the augmenters with ``base + worker_id``."""
    info = torch.utils.data.get_worker_info()
    parts = getattr(info.dataset, "datasets", [info.dataset])
    for part in parts:
        augment = getattr(part, "augment", None)
        if augment is not None and augment.generator is not None:
            augment.generator.manual_seed(base + worker_id)


class UNetData:
    """Real MRI splits by patient, plus the synthetic set when one is mixed in."""

    def __init__(self, config: ExperimentConfig) -> None:
        from liverlab.data.augment import Augment
        from liverlab.data.datasets import SegmentationSlices

        u = config.unet
        _, mri_dir = tdata.dataset_dirs(config)
        tdata.require_dataset(mri_dir, "data.mri")
        self.mri_dir = mri_dir
        # unet.organs: the training masks keep every organ of dataset.json (one output class each);
        # validation and test masks stay liver-only, as every metric is of the liver.
        self.n_classes = 2
        if u.organs:
            self.n_classes = len(layout.dataset_labels(mri_dir))
            if self.n_classes < 3:
                raise LiverlabError(
                    f"unet.organs: {mri_dir / layout.DATASET_JSON} labels the liver only; import data.mri with "
                    "organs (data.import's organs, or liverlab data import-nifti --organ), or set unet.organs false"
                )
        self.train = tdata.load(
            config, mri_dir, "mri", "train", empty_slice_fraction=u.empty_slice_fraction, organs=u.organs
        )
        if len(self.train) == 0:
            raise LiverlabError(f"data.mri: {mri_dir} has no training slices with the configured split")
        self.val = self._split(config, "val")
        if self.val is None and u.needs_val:
            raise LiverlabError(
                f"data.split.val: {mri_dir} has no validation patients (val = {config.data.split.val}), "
                f"but unet.keep = {u.keep} / unet.early_stopping = {u.early_stopping} need them"
            )
        self.test = self._split(config, "test")
        augment = Augment.from_config(u.augment, seed=config.seed, patch_size=u.patch_size)
        self.augment = augment
        context = u.model.context_slices
        real = SegmentationSlices(self.train, augment=augment, context=context)
        self.n_real, self.n_synth = len(real), 0
        parts: list[Any] = [real]
        if u.mixing_ratio > 0:
            if u.synthetic is None:
                raise LiverlabError("unet.mixing_ratio > 0 needs unet.synthetic (a folder of synthetic MRI)")
            synth_dir = tdata.require_dataset(Path(u.synthetic), "unet.synthetic")
            synth = SegmentationSlices(tdata.load(config, synth_dir, "mri", None), augment=augment, context=context)
            self.n_synth = len(synth)
            parts.append(synth)
        self.dataset = torch.utils.data.ConcatDataset(parts)
        self.ratio = u.mixing_ratio
        self.batch_size = u.batch_size
        self.num_workers = u.num_workers
        self.seed = config.seed

    @staticmethod
    def _split(config: ExperimentConfig, split: str) -> Any:
        """Every slice of the split's patients, or None when the split has none."""
        mri_dir = config.data.mri_dir
        if not tdata.cases_in(mri_dir, config, split):
            return None
        return tdata.load(config, mri_dir, "mri", split, all_slices=True)

    @property
    def train_patients(self) -> list[str]:
        """Every patient the model saw: training and validation patients."""
        seen = set(self.train.patient_ids) | (set(self.val.patient_ids) if self.val is not None else set())
        return sorted(str(p) for p in seen)

    def loader(self, round_: int, steps: int) -> torch.utils.data.DataLoader:
        """``steps`` batches for validation round ``round_`` (seeded by it, so resumes repeat it)."""
        from liverlab.data.datasets import MixingSampler

        n = steps * self.batch_size
        if self.augment.generator is not None:  # the augmentation's draws too, or a resumed round would differ
            self.augment.generator.manual_seed(self.seed * 1000 + round_)
        sampler = MixingSampler(self.n_real, self.n_synth, self.ratio, num_samples=n, seed=self.seed * 1000 + round_)
        if not self.num_workers:
            return torch.utils.data.DataLoader(self.dataset, batch_size=self.batch_size, sampler=sampler, num_workers=0)
        # Workers: each gets a copy of the augmenter, and a copied generator would repeat one stream in
        # every worker, so each worker reseeds its copy by (seed, round, worker), in a range of its own.
        # The loader's own generator seeds the workers' global RNGs without drawing from the training
        # process's RNG.
        round_seed = self.seed * 1000 + round_
        return torch.utils.data.DataLoader(
            self.dataset, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
            worker_init_fn=functools.partial(seed_worker_augment, WORKER_SEEDS + round_seed * 1024 % WORKER_SEEDS),
            generator=torch.Generator().manual_seed(round_seed),
        )

    def batches(self, start: int, iterations: int, val_every: int) -> Iterator[dict[str, torch.Tensor]]:
        """The batches of steps ``start`` .. ``iterations - 1``: one seeded loader per validation round.

        Why a loader per round rather than one sampler for the whole run: round
        ``r`` (steps ``r * val_every`` onwards) draws from a sampler seeded by
        ``(seed, r)``, so a run resumed at a round's first step draws the slices
        the uninterrupted run draws there, without replaying the rounds before
        it; and every run recorded so far drew its slices this way. The
        augmentation's generator is reseeded by ``(seed, r)`` too, so a resumed
        run also augments them the same way (tests/test_resume_exact.py); with
        ``unet.num_workers`` each worker's stream is seeded by ``(seed, r, worker)``.
        """
        it = start
        while it < iterations:
            steps = min(val_every - it % val_every, iterations - it)
            yield from self.loader(it // val_every, steps)
            it += steps


def _validate(
    model: torch.nn.Module, slices: Any, device: torch.device, precision: str, split: str,
    postprocess: Any = ev.DEFAULT_POSTPROCESS,
) -> tuple[list, dict]:
    """Training-grid metrics (``val/*``); test metrics are on the native grid (``ev.native_case_metrics``)."""
    preds = ev.predict_slices(model, ev.model_inputs(model, slices), device, precision)
    which = ("iou", "dice") if split == "val" else ev.METRICS
    rows = ev.case_metrics(slices, preds, which, postprocess)
    return rows, ev.mean_metrics(rows, split, which)


def _manifest_hash(mri_dir: Path) -> str:
    from liverlab.data.manifest import ensure_manifest, manifest_hash

    return manifest_hash(ensure_manifest(mri_dir))


def train_unet(
    config: ExperimentConfig,
    report: Report = common.no_report,
    tracker: Any = None,
    workdir: str | Path = ".",
    progress: bool = False,
) -> dict[str, float]:
    """Train ``unet.iterations`` steps, validate every ``val_every``, test the kept weights."""
    from liverlab.train.progress import IterationProgress

    u = config.unet
    run = common.start_run(config, tracker, workdir, kind="unet")
    tracker, workdir, device = run.tracker, run.workdir, run.device
    amp = precision.prepare(config, device)  # resolved precision; TF32 / cudnn.benchmark on CUDA
    data = UNetData(config)
    model = build_unet(config, data.n_classes).to(device)
    seg = liver_only(model)  # liver / not liver, for validation and test (the model itself with 2 classes)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(model, u)
    scaler = amp.scaler()  # fp16 only; otherwise scale/step/update pass straight through
    start, best_iou, bad_rounds = 0, -1.0, 0
    best_state: dict[str, Any] | None = None
    if (resumed := run.resume) is not None:
        model.load_state_dict(resumed["model"])
        opt.load_state_dict(resumed["optim"])
        if resumed.get("scaler"):
            scaler.load_state_dict(resumed["scaler"])
        best_state = resumed["best_model"] if u.keep == "best" else None
        start = int(resumed["iteration"])
        best_iou, bad_rounds = float(resumed["best_iou"]), int(resumed["bad_rounds"])
        common.set_rng_state(resumed["rng"])
    else:
        tracker.log_metrics({"data/n_real": data.n_real, "data/n_synthetic": data.n_synth}, step=0)
    tracker.log_params(amp.params())

    bar = IterationProgress("unet", u.iterations, enabled=progress)
    batches = data.batches(start, u.iterations, u.val_every)
    metrics: dict[str, float] = {}
    stop = u.early_stopping and bad_rounds >= u.patience  # a resumed run that had stopped early stays stopped
    it, total, n, t0 = start, 0.0, 0, time.perf_counter()
    model.train()
    while it < u.iterations and not stop:
        common.set_lr([opt], u.optim.lr * common.lr_factor(u.lr_schedule, it, u.iterations))
        batch = next(batches)
        x = batch["image"].to(device, non_blocking=True)
        y = batch["mask"].to(device, non_blocking=True)
        if config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with amp.autocast():
            logits = model(x)
        loss = dice_ce_loss(logits.float(), y, dice_weight=u.dice_weight, ce_weight=u.ce_weight)
        value = float(loss.detach())
        common.check_finite({"train/loss": value}, f"unet iteration {it + 1}")
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)  # skipped (and the scale lowered) when fp16 gradients overflowed
        scaler.update()
        it, total, n = it + 1, total + value, n + 1
        bar.step(it, value)

        if it % u.val_every == 0 or it == u.iterations:  # validate, keep the best, checkpoint, report
            train_time = time.perf_counter() - t0
            metrics = {
                "train/loss": total / n,
                "train/lr": float(opt.param_groups[0]["lr"]),
                "train/images_per_s": n * data.batch_size / max(train_time, 1e-9),
                "time/train_s": train_time,
                "iteration": it,
            }
            if data.val is not None:
                t1 = time.perf_counter()
                _, val = _validate(seg, data.val, device, amp.precision, "val", u.postprocess)
                metrics["time/val_s"] = time.perf_counter() - t1
                if val["val/iou"] > best_iou:
                    best_iou, bad_rounds = val["val/iou"], 0
                    if u.keep == "best":
                        best_state = copy.deepcopy(model.state_dict())
                else:
                    bad_rounds += 1
                metrics.update({**val, "val/best_iou": best_iou})
            tracker.log_metrics(metrics, step=it)
            state = {
                "kind": "unet", "iteration": it, "model": model.state_dict(), "optim": opt.state_dict(),
                "scaler": scaler.state_dict(),
                "best_model": best_state if best_state is not None else model.state_dict(),
                "best_iou": best_iou, "bad_rounds": bad_rounds, "out_channels": data.n_classes,
                "config": config.model_dump(mode="json"), "rng": common.rng_state(),
            }
            report(dict(metrics), checkpoint=common.save_checkpoint(workdir, state))
            bar.report(it, metrics)
            stop = u.early_stopping and bad_rounds >= u.patience
            total, n, t0 = 0.0, 0, time.perf_counter()
    bar.close()

    # Test the kept weights on patients never used for training or selection.
    kept = best_state if (u.keep == "best" and best_state is not None) else model.state_dict()
    model.load_state_dict(kept)
    common.atomic_torch_save(
        {
            "kind": "unet_weights", "model": kept, "config": config.model_dump(mode="json"),
            "out_channels": data.n_classes,
            "iteration": it, "train_patients": data.train_patients, "manifest_hash": _manifest_hash(data.mri_dir),
        },
        workdir / "best.pt",
    )
    final = dict(metrics)
    if data.test is not None:
        # Each test case on its own grid and spacing, by the function `liverlab evaluate --checkpoint` uses.
        rows = ev.native_case_metrics(seg, data.test, data.mri_dir, device, amp.precision, u.postprocess, tta=u.tta)
        test = ev.mean_metrics(rows, "test")
        table = ev.write_table(rows, workdir / "per_patient.parquet")
        tracker.log_metrics(test, step=it)
        tracker.log_artifact(table)
        final.update(test)
        _panel(seg, data.test, device, amp.precision, workdir, tracker)
    tracker.flush()
    return final


def _panel(
    model: torch.nn.Module, slices: Any, device: torch.device, precision: str, workdir: Path, tracker: Any
) -> None:
    import numpy as np

    from liverlab.train.visual import segmentation_panel

    masks = np.asarray(slices.masks)
    liver = np.flatnonzero(masks.reshape(len(masks), -1).any(1))
    if not len(liver):
        return
    idx = liver[tdata.evenly(len(liver), 4)]
    images = np.asarray(slices.images[idx])
    preds = ev.predict_slices(model, ev.model_inputs(model, slices, idx), device, precision)
    png = segmentation_panel(images, masks[idx], preds, workdir / "panels" / "unet_test.png")
    tracker.log_artifact(png, "panels")
