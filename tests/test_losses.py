"""Losses on literal tensors, with the expected values worked out by hand in comments."""

from __future__ import annotations

import math

import pytest
import torch

from liverlab import losses
from liverlab.losses import cycle_loss, dice_ce_loss, identity_loss, lsgan_loss, soft_dice_loss

EPS = 1e-5


def test_lsgan_real_and_fake() -> None:
    pred = torch.tensor([[0.5, 1.5]])
    # real: ((0.5 - 1)^2 + (1.5 - 1)^2) / 2 = (0.25 + 0.25) / 2 = 0.25
    assert lsgan_loss(pred, True).item() == pytest.approx(0.25)
    # fake: (0.5^2 + 1.5^2) / 2 = (0.25 + 2.25) / 2 = 1.25
    assert lsgan_loss(pred, False).item() == pytest.approx(1.25)


def test_lsgan_patch_map_and_dtype() -> None:
    # A (1, 1, 2, 2) score map of ones: real -> 0, fake -> mean(1^2) = 1; bf16 in, float32 out.
    pred = torch.ones(1, 1, 2, 2, dtype=torch.bfloat16)
    assert lsgan_loss(pred, True).item() == 0.0
    out = lsgan_loss(pred, False)
    assert out.item() == 1.0 and out.dtype == torch.float32 and out.ndim == 0


def test_lsgan_rejects_non_bool_target() -> None:
    with pytest.raises(ValueError, match="target_is_real"):
        lsgan_loss(torch.zeros(2), 1)  # type: ignore[arg-type]


def test_cycle_and_identity_l1() -> None:
    rec = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    orig = torch.tensor([[1.0, 0.0], [3.0, 8.0]])
    # |1-1| + |2-0| + |3-3| + |4-8| = 0 + 2 + 0 + 4 = 6, over 4 elements = 1.5
    assert cycle_loss(rec, orig).item() == pytest.approx(1.5)
    assert identity_loss(rec, orig).item() == pytest.approx(1.5)
    assert cycle_loss(orig, orig).item() == 0.0


def test_l1_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="reconstructed"):
        cycle_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))
    with pytest.raises(ValueError, match="same"):
        identity_loss(torch.zeros(2), torch.zeros(3))


def _two_pixels() -> tuple[torch.Tensor, torch.Tensor]:
    """One image, 1 x 2 pixels.

    pixel A: logits (0, 0)      -> p1 = 1 / (1 + 1) = 0.5,              label 1
    pixel B: logits (0, ln 3)   -> p1 = 3 / (1 + 3) = 0.75,             label 0
    """
    logits = torch.tensor([[[[0.0, 0.0]], [[0.0, math.log(3.0)]]]])  # (N=1, C=2, H=1, W=2)
    target = torch.tensor([[[1, 0]]])  # (1, 1, 2)
    return logits, target


# sum(p1 * t) = 0.5 * 1 + 0.75 * 0 = 0.5;  sum(p1) = 1.25;  sum(t) = 1
# dice loss = 1 - (2 * 0.5 + eps) / (1.25 + 1 + eps) = 1 - (1 + eps) / (2.25 + eps) ~= 0.5556
DICE_TWO_PIXELS = 1.0 - (1.0 + EPS) / (2.25 + EPS)
# cross-entropy: A: -ln(0.5) = ln 2; B: -ln(1 - 0.75) = -ln(0.25) = 2 ln 2; mean = 1.5 ln 2 ~= 1.0397
CE_TWO_PIXELS = 1.5 * math.log(2.0)


def test_soft_dice_two_pixels() -> None:
    logits, target = _two_pixels()
    assert soft_dice_loss(logits, target).item() == pytest.approx(DICE_TWO_PIXELS, rel=1e-6)


def test_soft_dice_is_computed_over_the_batch() -> None:
    # The same two pixels as two 1x1 images: the batch-level sums are unchanged, so the loss is too.
    # (A per-image mean would be [1 - (1+eps)/(1.5+eps) + 1 - eps/(0.75+eps)] / 2 ~= 0.6667.)
    logits, target = _two_pixels()
    batched = logits.permute(3, 1, 2, 0)  # (2, 2, 1, 1)
    tb = target.permute(2, 1, 0).reshape(2, 1, 1)
    assert batched[1, :, 0, 0].tolist() == pytest.approx([0.0, math.log(3.0)])
    assert soft_dice_loss(batched, tb).item() == pytest.approx(DICE_TWO_PIXELS, rel=1e-6)


def test_soft_dice_perfect_and_empty() -> None:
    # Confident correct logits: p1 ~ t, so the loss is ~0. All-background target predicted
    # background: intersection 0, sums ~0 -> 1 - eps / (~0 + eps) ~= 0.
    target = torch.tensor([[[1, 0], [0, 1]]])
    logits = torch.stack([(1 - target) * 20.0, target * 20.0], dim=1).float()
    assert soft_dice_loss(logits, target).item() == pytest.approx(0.0, abs=1e-6)
    empty = torch.zeros_like(target)
    logits_bg = torch.stack([torch.full((1, 2, 2), 30.0), torch.zeros(1, 2, 2)], dim=1)
    assert soft_dice_loss(logits_bg, empty).item() == pytest.approx(0.0, abs=1e-3)


def test_soft_dice_argument_checks() -> None:
    logits, target = _two_pixels()
    with pytest.raises(ValueError, match=">= 2 classes"):
        soft_dice_loss(torch.zeros(1, 1, 1, 2), target)
    with pytest.raises(ValueError, match="target"):
        soft_dice_loss(logits, torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        soft_dice_loss(logits, target.float())
    with pytest.raises(ValueError, match="eps"):
        soft_dice_loss(logits, target, eps=0.0)


def test_dice_ce_weights() -> None:
    logits, target = _two_pixels()
    # default: 1 * dice + 1 * ce
    assert dice_ce_loss(logits, target).item() == pytest.approx(DICE_TWO_PIXELS + CE_TWO_PIXELS, rel=1e-6)
    # 0.5 * dice + 2 * ce
    got = dice_ce_loss(logits, target, dice_weight=0.5, ce_weight=2.0).item()
    assert got == pytest.approx(0.5 * DICE_TWO_PIXELS + 2.0 * CE_TWO_PIXELS, rel=1e-6)
    assert dice_ce_loss(logits, target, dice_weight=0.0).item() == pytest.approx(CE_TWO_PIXELS, rel=1e-6)
    assert dice_ce_loss(logits, target, ce_weight=0.0).item() == pytest.approx(DICE_TWO_PIXELS, rel=1e-6)


def test_zero_weight_skips_the_term(monkeypatch: pytest.MonkeyPatch) -> None:
    logits, target = _two_pixels()

    def boom(*args: object, **kwargs: object) -> torch.Tensor:
        raise AssertionError("a term with weight 0 was computed")

    monkeypatch.setattr(losses, "soft_dice_loss", boom)
    assert dice_ce_loss(logits, target, dice_weight=0.0).item() == pytest.approx(CE_TWO_PIXELS, rel=1e-6)
    monkeypatch.undo()
    monkeypatch.setattr(losses.F, "cross_entropy", boom)
    assert dice_ce_loss(logits, target, ce_weight=0.0).item() == pytest.approx(DICE_TWO_PIXELS, rel=1e-6)


def test_dice_ce_bad_weights() -> None:
    logits, target = _two_pixels()
    with pytest.raises(ValueError, match="dice_weight"):
        dice_ce_loss(logits, target, dice_weight=-1.0)
    with pytest.raises(ValueError, match="ce_weight"):
        dice_ce_loss(logits, target, ce_weight=-0.1)
    with pytest.raises(ValueError, match="both 0"):
        dice_ce_loss(logits, target, dice_weight=0.0, ce_weight=0.0)


def test_dice_ce_gradient_is_finite_and_descends() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 8, 8, requires_grad=True)
    target = (torch.rand(2, 8, 8) > 0.5).long()
    loss = dice_ce_loss(logits, target)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    with torch.no_grad():
        stepped = dice_ce_loss(logits - 0.5 * logits.grad, target)
    assert stepped < loss
