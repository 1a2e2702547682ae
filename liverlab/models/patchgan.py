"""The 70 x 70 PatchGAN discriminator of pix2pix / CycleGAN (``D_mri``, ``D_ct``).

Architecture after Isola et al. (pix2pix, CVPR 2017) as used by CycleGAN's
``basic`` discriminator with ``n_layers=3``::

    Conv4x4 s2 (in -> ndf) -> LeakyReLU(0.2)                      (no norm on the first layer)
    (n_layers - 1) x [Conv4x4 s2 (x2 channels, capped at 8 ndf) -> IN -> LeakyReLU(0.2)]
    Conv4x4 s1 (x2 channels, capped at 8 ndf) -> IN -> LeakyReLU(0.2)
    Conv4x4 s1 (-> 1)                                             (a score map, no sigmoid)

There is no sigmoid because EssNet trains with the least-squares GAN loss
(``liverlab.losses.lsgan_loss``), which regresses raw scores to 1 / 0. Each
output element sees a ``receptive_field`` x ``receptive_field`` input patch
(70 for ``n_layers=3``). Convolutions followed by InstanceNorm carry no bias
(the norm removes it; see ``liverlab.models.resnet``).
"""

from __future__ import annotations

import torch
from torch import nn

from liverlab.models.resnet import _check_positive_int, init_normal_

__all__ = ["PatchDiscriminator"]


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator returning an (N, 1, h, w) map of real/fake scores.

    Args:
        in_channels: channels of the judged image (1 for CT / MRI slices).
        ndf: features of the first convolution; doubled per layer up to 8 * ndf.
        n_layers: stride-2 convolutions (3 gives the 70 x 70 PatchGAN).
        init_gain: std of the N(0, gain) weight init; ``None`` keeps PyTorch's default init.
    """

    def __init__(
        self,
        in_channels: int = 1,
        ndf: int = 64,
        n_layers: int = 3,
        init_gain: float | None = 0.02,
    ) -> None:
        super().__init__()
        _check_positive_int("in_channels", in_channels)
        _check_positive_int("ndf", ndf)
        _check_positive_int("n_layers", n_layers)
        if n_layers > 8:
            raise ValueError(f"n_layers must be <= 8, got {n_layers}")
        if init_gain is not None and not init_gain > 0:
            raise ValueError(f"init_gain must be > 0 or None, got {init_gain!r}")
        self.in_channels = in_channels
        self.n_layers = n_layers

        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, ndf, kernel_size=4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2**n, 8)
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, kernel_size=4, stride=2, padding=1, bias=False),
                nn.InstanceNorm2d(ndf * mult),
                nn.LeakyReLU(0.2, inplace=True),
            ]
        prev, mult = mult, min(2**n_layers, 8)
        layers += [
            nn.Conv2d(ndf * prev, ndf * mult, kernel_size=4, stride=1, padding=1, bias=False),
            nn.InstanceNorm2d(ndf * mult),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * mult, 1, kernel_size=4, stride=1, padding=1),
        ]
        self.model = nn.Sequential(*layers)
        if init_gain is not None:
            init_normal_(self, init_gain)

    @property
    def receptive_field(self) -> int:
        """Side of the input patch that one output score sees (70 for ``n_layers=3``)."""
        # Walk back from one output pixel: two stride-1 4x4 convs, then n_layers stride-2 4x4 convs.
        rf = 1
        for stride in [1, 1] + [2] * self.n_layers:
            rf = (rf - 1) * stride + 4
        return rf

    def output_size(self, size: int) -> int:
        """Side of the score map for an input side ``size`` (0 if too small)."""
        for _ in range(self.n_layers):
            size //= 2  # 4x4, stride 2, padding 1: floor(size / 2)
        return max(size - 2, 0)  # two 4x4 stride-1 convs with padding 1: -1 each

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if self.output_size(h) < 1 or self.output_size(w) < 1:
            raise ValueError(
                f"input size {h}x{w} is too small for a PatchGAN with n_layers={self.n_layers} "
                f"(each side needs >= {3 * 2**self.n_layers})"
            )
        return self.model(x)
