"""EssNet and U-Net losses: LSGAN, cycle / identity L1, soft Dice, Dice + cross-entropy.

The EssNet objective (DESIGN.md) is assembled by the training step from these
terms, each with its own weight::

    L_G = lambda_adv * lsgan(D(G(x)), real) + lambda_cycle * cycle(...)
        + lambda_idt * lambda_cycle * identity(...) + lambda_seg * dice_ce(S(G(a)), y)

Every loss returns a 0-dim tensor and is computed in float32 even under
bf16 autocast: the reductions (means over a 256 x 256 map, Dice sums) lose
too many digits in bf16's 8-bit mantissa.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["lsgan_loss", "cycle_loss", "identity_loss", "soft_dice_loss", "dice_ce_loss"]


def lsgan_loss(pred: torch.Tensor, target_is_real: bool) -> torch.Tensor:
    """Least-squares GAN loss (Mao et al. 2017): ``mean((pred - 1)^2)`` if real, else ``mean(pred^2)``.

    ``pred`` is the raw (no sigmoid) PatchGAN score map, any shape. The
    generator uses ``target_is_real=True`` on its fakes; the discriminator
    uses True on real images and False on (pooled) fakes.
    """
    if not isinstance(target_is_real, bool):
        raise ValueError(f"target_is_real must be a bool, got {target_is_real!r}")
    if pred.numel() == 0:
        raise ValueError("pred is empty")
    target = 1.0 if target_is_real else 0.0
    return ((pred.float() - target) ** 2).mean()


def _l1(a: torch.Tensor, b: torch.Tensor, names: tuple[str, str]) -> torch.Tensor:
    if a.shape != b.shape:
        raise ValueError(f"{names[0]} {tuple(a.shape)} and {names[1]} {tuple(b.shape)} differ in shape")
    return F.l1_loss(a.float(), b.float())


def cycle_loss(reconstructed: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Cycle consistency: mean absolute error ``mean(|G_ct(G_mri(a)) - a|)``."""
    return _l1(reconstructed, original, ("reconstructed", "original"))


def identity_loss(same: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Identity term: mean absolute error ``mean(|G_mri(b) - b|)`` (a generator fed its target domain)."""
    return _l1(same, original, ("same", "original"))


def _check_seg(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.ndim < 3:
        raise ValueError(f"logits must be (N, C, *spatial), got {tuple(logits.shape)}")
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(
            f"target {tuple(target.shape)} must be logits {tuple(logits.shape)} without the channel dim"
        )
    if target.dtype not in (torch.int64, torch.int32, torch.uint8, torch.int16, torch.int8):
        raise ValueError(f"target must hold integer class indices, got dtype {target.dtype}")


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Soft Dice loss of the liver (class 1) for logits of 2 or more classes.

    ``1 - (2 * sum(p1 * t) + eps) / (sum(p1) + sum(t) + eps)`` where
    ``p1 = softmax(logits, dim=1)[:, 1]`` and ``t = (target == 1)``. Classes
    2.. (other organs, ``unet.organs``) enter through the softmax only.

    The sums run over the **whole batch** (all images and pixels together),
    not per image and then averaged. On a liver-free slice a per-image Dice
    is ``1 - eps / (sum(p1) + eps)``: close to 1 for almost any prediction
    and decided by ``eps`` alone, an extreme and noisy term; the batch-level
    Dice stays meaningful as long as the batch holds some liver, and it
    weighs each liver pixel equally, like the volume IoU the experiments
    report.

    Args:
        logits: (N, C, *spatial) raw scores, C >= 2.
        target: (N, *spatial) integer labels in {0, ..., C - 1}.
        eps: smoothing in numerator and denominator; an all-background batch
            predicted all background gives loss 0.
    """
    _check_seg(logits, target)
    if logits.shape[1] < 2:
        raise ValueError(f"soft_dice_loss expects logits of >= 2 classes (N, C, ...), got {tuple(logits.shape)}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    p1 = torch.softmax(logits.float(), dim=1)[:, 1]
    t = (target == 1).float()
    intersection = (p1 * t).sum()
    return 1.0 - (2.0 * intersection + eps) / (p1.sum() + t.sum() + eps)


def dice_ce_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    dice_weight: float = 1.0,
    ce_weight: float = 1.0,
) -> torch.Tensor:
    """``dice_weight * soft_dice_loss + ce_weight * cross_entropy`` (mean over pixels).

    A weight of 0 turns its term off and the term is not computed at all
    (no wasted softmax, and no NaN from it can leak in). Both weights 0 is a
    ValueError: there would be nothing to optimise, and a silent constant
    loss would hide the configuration mistake.
    """
    _check_seg(logits, target)
    if dice_weight < 0:
        raise ValueError(f"dice_weight must be >= 0, got {dice_weight!r}")
    if ce_weight < 0:
        raise ValueError(f"ce_weight must be >= 0, got {ce_weight!r}")
    if dice_weight == 0 and ce_weight == 0:
        raise ValueError("dice_weight and ce_weight are both 0: the segmentation loss would be constant")
    loss: torch.Tensor | None = None
    if dice_weight > 0:
        loss = dice_weight * soft_dice_loss(logits, target)
    if ce_weight > 0:
        ce = ce_weight * F.cross_entropy(logits.float(), target.long())
        loss = ce if loss is None else loss + ce
    assert loss is not None  # at least one weight is > 0, checked above
    return loss
