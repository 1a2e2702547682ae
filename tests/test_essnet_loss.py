"""EssNet's generator loss on literal tensors: every term of L_G worked out by hand (DESIGN.md).

Stub networks make each term computable on paper: G_mri is a fixed affine
map, G_ct the identity, each discriminator a constant score map, S a fixed
pair of logits. ``generator_losses`` is the function the training step
calls, so these are the numbers training optimises.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from liverlab.config import EssNetConfig
from liverlab.train.essnet import EssNet, generator_losses

EPS = 1e-5  # soft Dice smoothing (liverlab.losses.soft_dice_loss)


class Affine(nn.Module):
    """x -> scale * x + shift; scale 1, shift 0 is the identity generator."""

    def __init__(self, scale: float = 1.0, shift: float = 0.0) -> None:
        super().__init__()
        self.scale, self.shift = scale, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x + self.shift


class Constant(nn.Module):
    """A discriminator that scores every 2 x 2 patch map ``value``, whatever it sees; keeps its inputs."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x)
        return torch.full((x.shape[0], 1, 2, 2), self.value)


class FixedSegmenter(nn.Module):
    """Logits (0, ln 3) at every pixel: softmax p(liver) = 3 / (1 + 3) = 0.75 everywhere; keeps its inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x)
        logits = torch.zeros(x.shape[0], 2, *x.shape[2:])
        logits[:, 1] = math.log(3.0)
        return logits


def _stub_net(cfg: EssNetConfig) -> EssNet:
    net = EssNet(cfg)  # the real container, its five networks replaced by the stubs
    net.g_mri, net.g_ct = Affine(0.5, 0.25), Affine()
    net.d_mri, net.d_ct = Constant(0.25), Constant(-0.5)
    if cfg.lambda_seg > 0:  # EssNet builds no S for lambda_seg = 0 (the CycleGAN arm)
        net.seg = FixedSegmenter()
    return net


# One 2 x 2 CT slice a, its liver mask y, one unpaired MRI slice b.
CT = torch.tensor([[[[-1.0, 0.0], [0.5, 1.0]]]])
MASK = torch.tensor([[[0, 1], [1, 1]]])
MRI = torch.tensor([[[[0.5, -0.5], [0.25, 0.0]]]])

# G_mri(a) = 0.5 a + 0.25 = [[-0.25, 0.25], [0.5, 0.75]];  G_ct(b) = b.
# adversarial: LSGAN(D_mri(G_mri(a)), real) + LSGAN(D_ct(G_ct(b)), real)
#   = (0.25 - 1)^2 + (-0.5 - 1)^2 = 0.5625 + 2.25
ADV = 2.8125
# cycle: mean|G_ct(G_mri(a)) - a| + mean|G_mri(G_ct(b)) - b|, both differences are -0.5 x + 0.25:
#   a: |0.75| + |0.25| + |0| + |-0.25| = 1.25, / 4 = 0.3125;  b: |0| + |0.5| + |0.125| + |0.25| = 0.875, / 4 = 0.21875
CYCLE = 0.3125 + 0.21875
# identity: mean|G_mri(b) - b| + mean|G_ct(a) - a| = 0.21875 + 0 (G_ct is the identity)
IDT = 0.21875
# segmentation (Dice + CE) of p(liver) = 0.75 everywhere against y = [0, 1, 1, 1]:
#   Dice: 1 - (2 * (3 * 0.75) + eps) / (4 * 0.75 + 3 + eps) = 1 - (4.5 + eps) / (6 + eps)
#   CE: (-ln 0.25 - 3 ln 0.75) / 4 = (ln 4 + 3 ln(4/3)) / 4
SEG = 1 - (4.5 + EPS) / (6 + EPS) + (math.log(4) + 3 * math.log(4 / 3)) / 4


def test_each_term_of_the_generator_loss_and_the_weighted_total() -> None:
    cfg = EssNetConfig(lambda_adv=1.5, lambda_cycle=10.0, lambda_idt=0.5, lambda_seg=2.0,
                       generator={"ngf": 4, "n_blocks": 0}, discriminator={"ndf": 4, "n_layers": 1},
                       segmenter={"ngf": 4, "n_blocks": 0})
    net = _stub_net(cfg)
    terms, fake_mri, fake_ct = generator_losses(net, cfg, CT, MASK, MRI)

    got = {k: v.item() for k, v in terms.items()}
    assert got["loss_adv"] == pytest.approx(ADV, rel=1e-6)
    assert got["loss_cycle"] == pytest.approx(CYCLE, rel=1e-6)
    assert got["loss_idt"] == pytest.approx(IDT, rel=1e-6)
    assert got["loss_seg"] == pytest.approx(SEG, rel=1e-6)
    # 1.5 * 2.8125 + 10 * 0.53125 + 0.5 * 10 * 0.21875 + 2 * SEG = 4.21875 + 5.3125 + 1.09375 + 2 * SEG
    assert got["loss_g"] == pytest.approx(10.625 + 2 * SEG, rel=1e-6)
    assert all(v.ndim == 0 and v.dtype == torch.float32 for v in terms.values())

    # The networks saw what DESIGN.md says: D_mri and S the synthetic MRI, D_ct the synthetic CT.
    assert torch.equal(fake_mri, torch.tensor([[[[-0.25, 0.25], [0.5, 0.75]]]])) and torch.equal(fake_ct, MRI)
    assert torch.equal(net.d_mri.seen[0], fake_mri) and torch.equal(net.d_ct.seen[0], fake_ct)
    assert len(net.seg.seen) == 1 and torch.equal(net.seg.seen[0], fake_mri)


def test_zero_weights_leave_their_terms_out_of_the_total() -> None:
    """lambda_idt 0 and the CycleGAN arm (lambda_seg 0, no S): only adversarial and cycle remain."""
    cfg = EssNetConfig(lambda_adv=1.0, lambda_cycle=10.0, lambda_idt=0.0, lambda_seg=0.0,
                       generator={"ngf": 4, "n_blocks": 0}, discriminator={"ndf": 4, "n_layers": 1})
    net = _stub_net(cfg)
    assert net.seg is None
    terms, _, _ = generator_losses(net, cfg, CT, MASK, MRI)
    assert terms["loss_idt"].item() == 0.0 and terms["loss_seg"].item() == 0.0
    assert terms["loss_g"].item() == pytest.approx(ADV + 10 * CYCLE, rel=1e-6)  # 2.8125 + 5.3125 = 8.125
