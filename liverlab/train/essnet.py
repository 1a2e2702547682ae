"""Stage 1: EssNet (CycleGAN + a segmenter S on the synthetic MRI), CT -> MRI.

The step order is DESIGN.md's: generators and S are updated together with
both discriminators frozen, then each discriminator is updated on a pool of
past fakes. ``lambda_seg = 0`` is the plain CycleGAN arm: S is not built and
never runs. Read ``essnet_train_step`` top to bottom for the losses.
"""

from __future__ import annotations

import contextlib
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from liverlab.config import EssNetConfig, ExperimentConfig
from liverlab.losses import cycle_loss, dice_ce_loss, identity_loss, lsgan_loss
from liverlab.models import discriminator_from_config, generator_from_config, segmenter_from_config
from liverlab.train import common, precision
from liverlab.train.common import Report


class ImagePool:
    """Shrivastava et al.'s history of fakes: D sees old fakes too, which steadies GANs."""

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size = size
        self.images: list[torch.Tensor] = []
        self.rng = random.Random(seed)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        out = []
        for img in images.detach():
            img = img.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(img)
                out.append(img)
            elif self.rng.random() < 0.5:  # swap in: return an old fake, keep the new one
                i = self.rng.randrange(self.size)
                out.append(self.images[i].clone())
                self.images[i] = img
            else:
                out.append(img)
        return torch.cat(out, 0)


class EssNet(nn.Module):
    """The five networks of EssNet; ``seg`` is None for the CycleGAN arm."""

    def __init__(self, cfg: EssNetConfig) -> None:
        super().__init__()
        self.g_mri = generator_from_config(cfg.generator)  # CT -> MRI
        self.g_ct = generator_from_config(cfg.generator)  # MRI -> CT
        self.d_mri = discriminator_from_config(cfg.discriminator)
        self.d_ct = discriminator_from_config(cfg.discriminator)
        self.seg: nn.Module | None = None
        if cfg.lambda_seg > 0:  # S sees G_mri's output, so it takes the sizes the generator takes
            self.seg = segmenter_from_config(cfg.segmenter, n_downsampling=cfg.generator.n_downsampling)
            if cfg.segmenter.tanh:  # SynSeg-Net: logits squashed to [-1, 1] before the loss
                self.seg = nn.Sequential(self.seg, nn.Tanh())

    def generator_parameters(self) -> list[nn.Parameter]:
        params = list(self.g_mri.parameters()) + list(self.g_ct.parameters())
        return params + (list(self.seg.parameters()) if self.seg is not None else [])


def build_optimizers(net: EssNet, cfg: EssNetConfig) -> dict[str, torch.optim.Optimizer]:
    o = cfg.optim
    kw = dict(lr=o.lr, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay)
    return {
        "g": torch.optim.Adam(net.generator_parameters(), **kw),  # G_mri, G_ct and S share one
        "d_mri": torch.optim.Adam(net.d_mri.parameters(), **kw),
        "d_ct": torch.optim.Adam(net.d_ct.parameters(), **kw),
    }


def _requires_grad(modules: list[nn.Module], flag: bool) -> None:
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(flag)


def generator_losses(
    net: EssNet, cfg: EssNetConfig, ct: torch.Tensor, ct_mask: torch.Tensor, mri: torch.Tensor
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """L_G of DESIGN.md and its four terms for one batch (tensors with gradient), and the fakes.

    ``loss_g = lambda_adv * loss_adv + lambda_cycle * loss_cycle
    + lambda_idt * lambda_cycle * loss_idt + lambda_seg * loss_seg``. A term
    whose weight is 0 is not computed at all (it is 0). Only ``net``'s five
    networks are used, so a test can put stub networks in them.
    """
    zero = ct.new_zeros(())
    fake_mri = net.g_mri(ct)
    fake_ct = net.g_ct(mri)
    loss_adv = zero
    if cfg.lambda_adv > 0:
        loss_adv = lsgan_loss(net.d_mri(fake_mri), True) + lsgan_loss(net.d_ct(fake_ct), True)
    loss_cycle = zero
    if cfg.lambda_cycle > 0:
        loss_cycle = cycle_loss(net.g_ct(fake_mri), ct) + cycle_loss(net.g_mri(fake_ct), mri)
    loss_idt = zero
    if cfg.lambda_idt > 0 and cfg.lambda_cycle > 0:
        loss_idt = identity_loss(net.g_mri(mri), mri) + identity_loss(net.g_ct(ct), ct)
    loss_seg = zero
    if net.seg is not None:  # lambda_seg > 0; the CycleGAN arm never runs S
        loss_seg = dice_ce_loss(net.seg(fake_mri).float(), ct_mask)
    loss_g = (
        cfg.lambda_adv * loss_adv
        + cfg.lambda_cycle * loss_cycle
        + cfg.lambda_idt * cfg.lambda_cycle * loss_idt
        + cfg.lambda_seg * loss_seg
    )
    terms = {
        "loss_g": loss_g, "loss_adv": loss_adv, "loss_cycle": loss_cycle, "loss_idt": loss_idt, "loss_seg": loss_seg,
    }
    return terms, fake_mri, fake_ct


def generator_step(
    net: EssNet,
    opt_g: torch.optim.Optimizer,
    cfg: EssNetConfig,
    ct: torch.Tensor,
    ct_mask: torch.Tensor,
    mri: torch.Tensor,
    amp: Any = None,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """G_mri, G_ct and S together, both discriminators frozen (no gradient reaches them).

    Returns the loss terms (``train/loss_g`` and its four terms) and the fakes
    (for the discriminators' pools). ``scaler``: the G+S optimiser's own
    GradScaler under fp16 (None: no scaling).
    """
    amp = amp or contextlib.nullcontext()
    scaler = scaler if scaler is not None else precision.grad_scaler(ct.device, "fp32")
    _requires_grad([net.d_mri, net.d_ct], False)
    with amp:
        terms, fake_mri, fake_ct = generator_losses(net, cfg, ct, ct_mask, mri)
    opt_g.zero_grad(set_to_none=True)
    scaler.scale(terms["loss_g"].float()).backward()  # the loss terms are fp32 (liverlab.losses)
    scaler.step(opt_g)
    scaler.update()
    _requires_grad([net.d_mri, net.d_ct], True)
    losses = {f"train/{k}": float(v.detach()) for k, v in terms.items()}
    return losses, fake_mri.detach(), fake_ct.detach()


def discriminator_step(
    net: EssNet,
    opt: dict[str, torch.optim.Optimizer],
    pools: dict[str, ImagePool],
    ct: torch.Tensor,
    mri: torch.Tensor,
    fake_mri: torch.Tensor,
    fake_ct: torch.Tensor,
    amp: Any = None,
    scaler: torch.amp.GradScaler | None = None,
) -> dict[str, float]:
    """Each D on real images and on a pool of past fakes: 0.5 * (real + fake) LSGAN.

    ``scaler``: the discriminators' GradScaler under fp16, separate from G+S's
    (GAN losses of the two sides differ in scale); it steps both D optimisers.
    """
    amp = amp or contextlib.nullcontext()
    scaler = scaler if scaler is not None else precision.grad_scaler(ct.device, "fp32")
    with amp:
        pool_mri = pools["mri"].query(fake_mri)
        loss_d_mri = 0.5 * (lsgan_loss(net.d_mri(mri), True) + lsgan_loss(net.d_mri(pool_mri), False))
        pool_ct = pools["ct"].query(fake_ct)
        loss_d_ct = 0.5 * (lsgan_loss(net.d_ct(ct), True) + lsgan_loss(net.d_ct(pool_ct), False))
    for name, loss in (("d_mri", loss_d_mri), ("d_ct", loss_d_ct)):
        opt[name].zero_grad(set_to_none=True)
        scaler.scale(loss.float()).backward()
        scaler.step(opt[name])  # each optimiser skips its own step on overflowed gradients
    scaler.update()  # once per iteration, after every optimiser it scales (torch's multi-optimiser rule)
    return {"train/loss_d_mri": float(loss_d_mri.detach()), "train/loss_d_ct": float(loss_d_ct.detach())}


def essnet_train_step(
    net: EssNet,
    opt: dict[str, torch.optim.Optimizer],
    pools: dict[str, ImagePool],
    cfg: EssNetConfig,
    ct: torch.Tensor,
    ct_mask: torch.Tensor,
    mri: torch.Tensor,
    amp: Any = None,
    scalers: dict[str, torch.amp.GradScaler] | None = None,
) -> dict[str, float]:
    """One EssNet step in DESIGN.md's order; returns every loss term by name.

    ``scalers``: ``{"g": ..., "d": ...}`` GradScalers for fp16 (None: no scaling).
    """
    scalers = scalers or {}
    losses, fake_mri, fake_ct = generator_step(net, opt["g"], cfg, ct, ct_mask, mri, amp, scalers.get("g"))
    losses.update(discriminator_step(net, opt, pools, ct, mri, fake_mri, fake_ct, amp, scalers.get("d")))
    return losses


def _state(
    net: EssNet, opt: dict[str, torch.optim.Optimizer], epoch: int, it: int, cfg: ExperimentConfig
) -> dict[str, Any]:
    return {
        "kind": "essnet",
        "epoch": epoch,  # what a resume reads: training restarts at the first step of the next epoch
        "iteration": it,
        "model": net.state_dict(),
        "optim": {k: o.state_dict() for k, o in opt.items()},
        "config": cfg.model_dump(mode="json"),
        "rng": common.rng_state(),
    }


def translator_config(config: ExperimentConfig) -> ExperimentConfig:
    """The config a translator trains with: ``essnet.seed`` in place of the run's seed when it is set."""
    if config.essnet.seed is None or config.essnet.seed == config.seed:
        return config
    return config.model_copy(update={"seed": config.essnet.seed})


def train_essnet(
    config: ExperimentConfig,
    report: Report = common.no_report,
    tracker: Any = None,
    workdir: str | Path = ".",
    progress: bool = False,
) -> dict[str, float]:
    """Train EssNet (or CycleGAN when ``lambda_seg = 0``); return the last epoch's metrics.

    An epoch is ``steps`` iterations (``essnet.steps_per_epoch``, else
    max(|CT|, |MRI|) / batch) and is the validation round: validation, panel,
    checkpoint and report every ``steps`` iterations. Resumes from
    ``workdir/checkpoint`` when a previous attempt left one.
    """
    from liverlab.train.essnet_data import EssNetData
    from liverlab.train.judge import judge_scores, load_judge
    from liverlab.train.progress import IterationProgress
    from liverlab.train.visual import essnet_panel

    config = translator_config(config)  # essnet.seed: one translator for U-Net trials of any seed
    cfg = config.effective_essnet()
    run = common.start_run(config, tracker, workdir, kind="essnet")
    tracker, workdir, device = run.tracker, run.workdir, run.device
    amp = precision.prepare(config, device)  # resolved precision; TF32 / cudnn.benchmark on CUDA
    data = EssNetData(config)
    judge = load_judge(config, device)  # same judge of shape preservation in every arm
    judge_metrics = judge_scores(config) if judge is not None else {}
    net = EssNet(cfg).to(device)
    if config.channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = build_optimizers(net, cfg)
    pools = {"mri": ImagePool(cfg.pool_size, config.seed), "ct": ImagePool(cfg.pool_size, config.seed + 1)}
    steps = data.steps_per_epoch(cfg.batch_size, cfg.steps_per_epoch)  # iterations per epoch
    iterations = (cfg.epochs + cfg.decay_epochs) * steps
    scalers = {"g": amp.scaler(), "d": amp.scaler()}  # fp16 only: one for G+S, one for both Ds
    start = 0
    if (resumed := run.resume) is not None:
        net.load_state_dict(resumed["model"])
        for k, o in opt.items():
            o.load_state_dict(resumed["optim"][k])
        start = int(resumed["epoch"]) * steps
        common.set_rng_state(resumed["rng"])
        for k, sd in resumed.get("scalers", {}).items():
            if sd:
                scalers[k].load_state_dict(sd)
    tracker.log_params(amp.params())

    bar = IterationProgress("essnet", iterations, enabled=progress, per_epoch=steps)
    batches = data.batches(start // steps, steps, cfg.batch_size)
    metrics: dict[str, float] = {}
    sums: dict[str, float] = {}  # loss terms summed over the epoch
    it, t0 = start, time.perf_counter()
    net.train()
    while it < iterations:
        # CycleGAN's schedule: constant for `epochs`, then linear decay over `decay_epochs`, once per epoch.
        lr = cfg.optim.lr * common.lr_factor("linear", it, iterations, hold=cfg.epochs * steps, every=steps)
        common.set_lr(opt.values(), lr)
        batch = next(batches)
        ct, ct_mask, mri = (batch[k].to(device, non_blocking=True) for k in ("ct", "ct_mask", "mri"))
        losses = essnet_train_step(net, opt, pools, cfg, ct, ct_mask, mri, amp.autocast(), scalers)
        common.check_finite(losses, f"essnet epoch {it // steps + 1} step {it % steps + 1}")
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + v
        it += 1
        bar.step(it, losses.get("train/loss_g", 0.0))

        if it % steps == 0:  # the end of an epoch: validate, draw the panel, checkpoint, report
            epoch = it // steps
            train_time = time.perf_counter() - t0
            metrics = {k: v / steps for k, v in sums.items()}
            t1 = time.perf_counter()
            metrics.update(validate_essnet(net, data, device, amp.precision, judge))
            if "val/shape_dice" in metrics:
                metrics.update(judge_metrics)  # how far to trust the judge, beside every shape_dice
            metrics["train/images_per_s"] = steps * cfg.batch_size / max(train_time, 1e-9)
            metrics["time/train_s"] = train_time
            metrics["time/val_s"] = time.perf_counter() - t1
            metrics["epoch"] = epoch
            tracker.log_metrics(metrics, step=epoch)
            if data.panel_batch is not None:
                png = essnet_panel(net, data.panel_batch, device, workdir / "panels" / f"essnet_epoch_{epoch:03d}.png")
                tracker.log_artifact(png, "panels")
            state = _state(net, opt, epoch, it, config)
            state["scalers"] = {k: sc.state_dict() for k, sc in scalers.items()}
            report(dict(metrics), checkpoint=common.save_checkpoint(workdir, state))
            bar.report(it, metrics)
            sums, t0 = {}, time.perf_counter()
    bar.close()
    tracker.flush()
    return metrics


@torch.no_grad()
def validate_essnet(
    net: EssNet, data: Any, device: torch.device, precision: str = "fp32", judge: nn.Module | None = None
) -> dict[str, float]:
    """Synthesis fidelity against the true MRI (phantoms) and shape preservation.

    ``val/ssim``, ``val/psnr``, ``val/mae`` exist only when the CT and MRI
    validation slices are of the same patients (phantoms). ``val/shape_dice``
    is the Dice, on liver-bearing slices, of the judge (a frozen segmenter
    trained on real MRI, ``liverlab.train.judge``) on G_mri(CT) against the carried CT mask:
    one judge for every arm (``train_essnet`` logs the judge's own held-out
    IoU on real MRI beside it as ``val/judge_iou``). ``val/seg_dice`` is EssNet's
    own S on the same images; without a judge, ``val/shape_dice`` falls back to it.
    """
    from liverlab.metrics import dice, mae, psnr, ssim

    net.eval()
    out: dict[str, float] = {}
    fakes, masks, seg_preds, judge_preds = [], [], [], []
    for ct, mask in data.val_batches():
        with common.autocast(device, precision):
            fake = net.g_mri(ct.to(device)).float().clamp(-1, 1)
            if net.seg is not None:
                seg_preds.append(net.seg(fake).float().argmax(1).cpu().numpy())
            if judge is not None:
                judge_preds.append(judge(fake).float().argmax(1).cpu().numpy())
        fakes.append(fake[:, 0].cpu().numpy())
        masks.append(mask.numpy())
    fake_np = np.concatenate(fakes)
    mask_np = np.concatenate(masks)
    if data.val_true_mri is not None:
        true = data.val_true_mri
        out["val/ssim"] = float(ssim(fake_np, true, data_range=2.0))
        out["val/psnr"] = float(psnr(fake_np, true, data_range=2.0))
        out["val/mae"] = float(mae(fake_np, true))
    has_liver = mask_np.reshape(len(mask_np), -1).any(1)
    if has_liver.any():
        truth = mask_np[has_liver] > 0
        if seg_preds:
            out["val/seg_dice"] = float(dice(np.concatenate(seg_preds)[has_liver] > 0, truth))
        if judge_preds:
            out["val/shape_dice"] = float(dice(np.concatenate(judge_preds)[has_liver] > 0, truth))
        elif "val/seg_dice" in out:
            out["val/shape_dice"] = out["val/seg_dice"]
    net.train()
    return out
