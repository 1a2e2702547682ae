"""CycleGAN's ResNet generator, and EssNet's segmenter built from the same body.

Architecture after Zhu et al., "Unpaired Image-to-Image Translation using
Cycle-Consistent Adversarial Networks" (ICCV 2017), ``resnet_9blocks``::

    ReflectionPad(3) -> Conv7x7(in, ngf) -> IN -> ReLU
    n_downsampling x [Conv3x3 stride 2 (channels x2) -> IN -> ReLU]
    n_blocks       x ResnetBlock(reflection padding, two Conv3x3 + IN)
    n_downsampling x [ConvTranspose3x3 stride 2 (channels /2) -> IN -> ReLU]
    ReflectionPad(3) -> Conv7x7(ngf, out) -> tanh   (no tanh for the segmenter)

``upsample`` chooses the decoder's 2x upsampling: ``"transpose"`` (the
reference, above) or a resize-convolution, ``"nearest"`` / ``"bilinear"``:
Upsample(x2) -> ReflectionPad(1) -> Conv3x3 (channels /2). A stride-2
transposed convolution with a 3x3 kernel overlaps unevenly (alternate output
pixels receive 4, 2 or 1 kernel taps), which prints a checkerboard into the
image until training evens it out; resizing first, then convolving at the new
resolution, gives every output pixel the same number of taps (Odena et al.,
"Deconvolution and Checkerboard Artifacts", Distill 2016).

Two deliberate differences from the reference code, both without effect on
what the network can represent:

* Convolutions followed by an (affine-free) InstanceNorm have no bias. The
  reference keeps one, but InstanceNorm subtracts the per-channel mean, so
  that bias never changes the output and always receives a zero gradient: it
  is a dead parameter (and would break "every parameter learns" checks).
* Weights are initialised N(0, ``init_gain``) as the reference's
  ``init_type='normal'`` does, inside the constructor, so that
  ``torch.manual_seed`` + construction is fully reproducible.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["UPSAMPLE_MODES", "ResnetBlock", "ResnetGenerator", "init_normal_", "resnet_segmenter", "up_block"]

#: The decoder's upsampling: the reference transposed convolution, or a resize-convolution.
UPSAMPLE_MODES = ("transpose", "nearest", "bilinear")


def init_normal_(module: nn.Module, gain: float = 0.02) -> None:
    """CycleGAN's ``init_type='normal'``: conv weights N(0, gain), biases 0, norm weights N(1, gain)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)


def _check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    # bool is an int subclass; ``ngf=True`` is a bug, not a size.
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


class ResnetBlock(nn.Module):
    """Residual block: x + (ReflPad1 -> Conv3x3 -> IN -> ReLU -> ReflPad1 -> Conv3x3 -> IN)(x)."""

    def __init__(self, channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        _check_positive_int("channels", channels)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, kernel_size=3, bias=False),
            nn.InstanceNorm2d(channels),
            nn.ReLU(inplace=True),
        ]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += [
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, kernel_size=3, bias=False),
            nn.InstanceNorm2d(channels),
        ]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def up_block(channels: int, out_channels: int, upsample: str = "transpose") -> list[nn.Module]:
    """One 2x upsampling of the decoder, without its norm and activation (see the module docstring)."""
    if upsample == "transpose":
        # output_padding=1 makes the transposed conv exactly invert the stride-2 conv's size.
        return [nn.ConvTranspose2d(channels, out_channels, kernel_size=3, stride=2, padding=1, output_padding=1, bias=False)]
    if upsample not in UPSAMPLE_MODES:
        raise ValueError(f"upsample must be one of {', '.join(UPSAMPLE_MODES)}, got {upsample!r}")
    # align_corners=False: the pixel-centre convention (F.interpolate's default for bilinear).
    corners = {"align_corners": False} if upsample == "bilinear" else {}
    resize = nn.Upsample(scale_factor=2, mode=upsample, **corners)
    return [resize, nn.ReflectionPad2d(1), nn.Conv2d(channels, out_channels, kernel_size=3, bias=False)]


class ResnetGenerator(nn.Module):
    """CycleGAN ResNet generator (``G_mri``, ``G_ct``); output has the input's H x W.

    Args:
        in_channels: channels of the input image (1 for CT / MRI slices).
        out_channels: channels of the output (1 for an image, 2 for segmenter logits).
        ngf: features of the first convolution; doubled at each downsampling.
        n_blocks: residual blocks at the bottleneck (9 in the 256 x 256 original).
        n_downsampling: stride-2 convolutions; H and W must be divisible by
            ``2 ** n_downsampling``.
        output_activation: ``"tanh"`` for images in [-1, 1], ``None`` for logits.
        dropout: dropout inside residual blocks (CycleGAN's ``--no_dropout`` is 0).
        init_gain: std of the N(0, gain) weight init; ``None`` keeps PyTorch's default init.
        upsample: the decoder's upsampling, ``"transpose"`` (reference), ``"nearest"`` or
            ``"bilinear"`` (resize-convolution).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        ngf: int = 64,
        n_blocks: int = 9,
        n_downsampling: int = 2,
        output_activation: str | None = "tanh",
        dropout: float = 0.0,
        init_gain: float | None = 0.02,
        upsample: str = "transpose",
    ) -> None:
        super().__init__()
        _check_positive_int("in_channels", in_channels)
        _check_positive_int("out_channels", out_channels)
        _check_positive_int("ngf", ngf)
        _check_positive_int("n_blocks", n_blocks, minimum=0)
        _check_positive_int("n_downsampling", n_downsampling, minimum=0)
        if n_downsampling > 6:
            raise ValueError(f"n_downsampling must be <= 6, got {n_downsampling}")
        if output_activation not in ("tanh", None):
            raise ValueError(f"output_activation must be 'tanh' or None, got {output_activation!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if init_gain is not None and not init_gain > 0:
            raise ValueError(f"init_gain must be > 0 or None, got {init_gain!r}")
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {', '.join(UPSAMPLE_MODES)}, got {upsample!r}")

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.n_downsampling = n_downsampling

        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_channels, ngf, kernel_size=7, bias=False),
            nn.InstanceNorm2d(ngf),
            nn.ReLU(inplace=True),
        ]
        for i in range(n_downsampling):
            c = ngf * 2**i
            layers += [
                nn.Conv2d(c, 2 * c, kernel_size=3, stride=2, padding=1, bias=False),
                nn.InstanceNorm2d(2 * c),
                nn.ReLU(inplace=True),
            ]
        c = ngf * 2**n_downsampling
        layers += [ResnetBlock(c, dropout) for _ in range(n_blocks)]
        for i in range(n_downsampling):
            c = ngf * 2 ** (n_downsampling - i)
            layers += [
                *up_block(c, c // 2, upsample),
                nn.InstanceNorm2d(c // 2),
                nn.ReLU(inplace=True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, kernel_size=7)]
        if output_activation == "tanh":
            layers.append(nn.Tanh())
        self.model = nn.Sequential(*layers)
        if init_gain is not None:
            init_normal_(self, init_gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        factor = 2**self.n_downsampling
        h, w = x.shape[-2:]
        if h % factor or w % factor:
            raise ValueError(
                f"input size {h}x{w} is not divisible by 2**n_downsampling = {factor}; "
                "pad or resize the slices"
            )
        # The bottleneck is reflection-padded by 1, which needs at least 2 pixels per side;
        # the first layer's reflection pad of 3 needs at least 4.
        if h // factor < 2 or w // factor < 2 or min(h, w) < 4:
            raise ValueError(f"input size {h}x{w} is too small for n_downsampling={self.n_downsampling}")
        return self.model(x)


def resnet_segmenter(
    in_channels: int = 1,
    out_channels: int = 2,
    ngf: int = 64,
    n_blocks: int = 9,
    n_downsampling: int = 2,
    dropout: float = 0.0,
    init_gain: float | None = 0.02,
    upsample: str = "transpose",
) -> ResnetGenerator:
    """EssNet's segmenter S: the generator body with ``out_channels`` logits and no tanh.

    A factory, not a subclass: the segmenter is the generator with two
    different constructor values (Huo et al. use the same ResNet body for S).
    """
    return ResnetGenerator(
        in_channels=in_channels,
        out_channels=out_channels,
        ngf=ngf,
        n_blocks=n_blocks,
        n_downsampling=n_downsampling,
        output_activation=None,
        dropout=dropout,
        init_gain=init_gain,
        upsample=upsample,
    )
