"""The classic U-Net (Ronneberger et al., MICCAI 2015) used as the stage-2 liver segmenter.

``depth`` counts resolution levels: ``depth=4`` with ``base_features=32`` has
levels of 32, 64, 128 and 256 features and three 2x poolings, so H and W must
be divisible by ``2 ** (depth - 1)``. Each level is two (3x3 conv -> norm ->
ReLU) with "same" padding (the original's valid convolutions and cropping are
replaced by padding, as every modern re-implementation does, so the output
has the input's size). Upsampling is a 2x2 stride-2 transposed conv, or
(``upsample="bilinear"``) a parameter-free interpolation followed by a 1x1
conv that halves the features, before concatenating the skip connection.

``spatial_dims`` 2 and 3 are both supported (3 uses Conv3d, trilinear
interpolation, and needs D, H and W divisible by ``2 ** (depth - 1)``).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from liverlab.models.resnet import _check_positive_int

__all__ = ["UNet", "ConvBlock"]

NormName = Literal["batch", "instance", "none"]


def _conv(spatial_dims: int) -> type[nn.Module]:
    return nn.Conv2d if spatial_dims == 2 else nn.Conv3d


def _norm(spatial_dims: int, norm: str, channels: int) -> nn.Module:
    if norm == "batch":
        return (nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d)(channels)
    if norm == "instance":
        # affine=True (MONAI's choice) so that instance-normed U-Nets can still learn scale and shift.
        return (nn.InstanceNorm2d if spatial_dims == 2 else nn.InstanceNorm3d)(channels, affine=True)
    return nn.Identity()


class ConvBlock(nn.Sequential):
    """Two (3x3 conv -> norm -> ReLU); dropout, if any, between the two convolutions.

    The convolutions have no bias when a norm follows them: the norm's mean
    subtraction would cancel it, leaving a parameter that never learns.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, norm: str, dropout: float) -> None:
        conv = _conv(spatial_dims)
        bias = norm == "none"
        layers: list[nn.Module] = [
            conv(in_channels, out_channels, kernel_size=3, padding=1, bias=bias),
            _norm(spatial_dims, norm, out_channels),
            nn.ReLU(inplace=True),
        ]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += [
            conv(out_channels, out_channels, kernel_size=3, padding=1, bias=bias),
            _norm(spatial_dims, norm, out_channels),
            nn.ReLU(inplace=True),
        ]
        super().__init__(*layers)


class _Up(nn.Module):
    """Upsample x2 to half the features, concatenate the skip, ConvBlock."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, norm: str, dropout: float,
                 upsample: str) -> None:
        super().__init__()
        if upsample == "transpose":
            tconv = nn.ConvTranspose2d if spatial_dims == 2 else nn.ConvTranspose3d
            self.up: nn.Module = tconv(in_channels, out_channels, kernel_size=2, stride=2)
        else:
            mode = "bilinear" if spatial_dims == 2 else "trilinear"
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode=mode, align_corners=False),
                _conv(spatial_dims)(in_channels, out_channels, kernel_size=1),
            )
        self.block = ConvBlock(spatial_dims, 2 * out_channels, out_channels, norm, dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    """U-Net returning ``out_channels`` logits at the input's size.

    Args:
        spatial_dims: 2 for slices (N, C, H, W), 3 for volumes (N, C, D, H, W).
        in_channels: input channels (1 for MRI slices).
        out_channels: output logits (2 for background / liver).
        depth: resolution levels (>= 1); ``depth - 1`` poolings.
        base_features: features at the first level, doubled per level.
        norm: ``"batch"``, ``"instance"`` or ``"none"``.
        dropout: dropout probability inside every conv block (0 disables).
        upsample: ``"transpose"`` (learned 2x2 stride-2 conv) or ``"bilinear"``.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        depth: int = 4,
        base_features: int = 32,
        norm: NormName = "batch",
        dropout: float = 0.0,
        upsample: Literal["transpose", "bilinear"] = "transpose",
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
        _check_positive_int("in_channels", in_channels)
        _check_positive_int("out_channels", out_channels)
        _check_positive_int("depth", depth)
        if depth > 8:
            raise ValueError(f"depth must be <= 8, got {depth}")
        _check_positive_int("base_features", base_features)
        if norm not in ("batch", "instance", "none"):
            raise ValueError(f"norm must be 'batch', 'instance' or 'none', got {norm!r}")
        if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if upsample not in ("transpose", "bilinear"):
            raise ValueError(f"upsample must be 'transpose' or 'bilinear', got {upsample!r}")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.depth = depth

        features = [base_features * 2**i for i in range(depth)]
        self.down = nn.ModuleList()
        c_in = in_channels
        for f in features:
            self.down.append(ConvBlock(spatial_dims, c_in, f, norm, dropout))
            c_in = f
        self.pool = (nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d)(kernel_size=2)
        self.up = nn.ModuleList(
            _Up(spatial_dims, features[i + 1], features[i], norm, dropout, upsample) for i in reversed(range(depth - 1))
        )
        self.head = _conv(spatial_dims)(features[0], out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            dims = "H, W" if self.spatial_dims == 2 else "D, H, W"
            raise ValueError(f"expected input (N, {self.in_channels}, {dims}), got {tuple(x.shape)}")
        factor = 2 ** (self.depth - 1)
        sides = tuple(x.shape[2:])
        if any(s % factor for s in sides):
            size = "x".join(str(s) for s in sides)
            raise ValueError(
                f"input size {size} is not divisible by 2**(depth-1) = {factor}; pad or resize the slices"
            )
        skips: list[torch.Tensor] = []
        for i, block in enumerate(self.down):
            if i > 0:
                x = self.pool(x)
            x = block(x)
            skips.append(x)
        skips.pop()  # the bottleneck output is x itself
        for up in self.up:
            x = up(x, skips.pop())
        return self.head(x)


class LiverOnly(nn.Module):
    """A K-class segmenter (liver 1, other organs 2..; ``unet.organs``) seen as liver / not liver.

    Returns ``(log(1 - p_liver), log p_liver)`` as 2-class logits, so softmax
    gives back the model's own liver probability exactly and argmax is liver
    where ``p_liver > 0.5``; every caller written for 2-class logits
    (validation, test, ``liverlab evaluate``, TTA, ensembles) works unchanged.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        out_channels = getattr(model, "out_channels", None)
        if not isinstance(out_channels, int) or out_channels < 3:
            raise ValueError(f"LiverOnly wraps a model with out_channels >= 3, got {out_channels!r}")
        self.model = model
        self.in_channels = getattr(model, "in_channels", None)
        self.out_channels = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(self.model(x).float(), dim=1)
        rest = torch.logsumexp(torch.cat([logp[:, :1], logp[:, 2:]], dim=1), dim=1, keepdim=True)
        return torch.cat([rest, logp[:, 1:2]], dim=1)


def liver_only(model: nn.Module) -> nn.Module:
    """``model`` itself when it has 2 outputs (background / liver), else ``LiverOnly(model)``."""
    return model if getattr(model, "out_channels", 2) == 2 else LiverOnly(model)
