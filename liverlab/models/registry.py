"""The explicit model registry (a plain dict, timm-style) and model utilities.

Every network liverlab trains is reachable by name::

    build_model("resnet_generator", ngf=32, n_blocks=6)

There is no decorator magic: adding a model means adding one line to
``MODELS``, and the registry tests iterate over that dict, so a new entry
without a test entry fails the suite. ``*_from_config`` helpers turn the typed
config sections (``liverlab.config``) into modules, so training code never
spells out constructor arguments itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from liverlab.models.patchgan import PatchDiscriminator
from liverlab.models.resnet import ResnetGenerator, resnet_segmenter
from liverlab.models.unet import UNet

if TYPE_CHECKING:  # config imports pydantic / yaml; models do not need them at runtime
    from liverlab.config import DiscriminatorConfig, GeneratorConfig, SegmenterConfig, UNetModelConfig

__all__ = [
    "MODELS",
    "build_model",
    "model_flops",
    "count_parameters",
    "generator_from_config",
    "discriminator_from_config",
    "segmenter_from_config",
    "unet_from_config",
]

MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet_generator": ResnetGenerator,
    "resnet_segmenter": resnet_segmenter,
    "patchgan": PatchDiscriminator,
    "unet": UNet,
}


def build_model(name: str, **kwargs: object) -> nn.Module:
    """Build the registered model ``name`` with constructor ``kwargs``.

    Raises:
        ValueError: ``name`` is not registered (the message lists the known
            names), or a constructor argument is invalid (named in the message).
    """
    try:
        factory = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}") from None
    try:
        return factory(**kwargs)
    except TypeError as exc:
        # An unexpected keyword is a user error (a config typo), not a bug: make it a ValueError.
        # Any other TypeError comes from inside the constructor and propagates unchanged.
        if "unexpected keyword argument" not in str(exc):
            raise
        raise ValueError(f"model {name!r}: {exc}") from None


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameter elements."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def model_flops(model: nn.Module, input_shape: Sequence[int], dtype: torch.dtype = torch.float32) -> float:
    """Forward FLOPs of ``model`` on one zero input of ``input_shape`` (batch dim included).

    Counted with ``torch.utils.flop_counter.FlopCounterMode``, which counts
    matmuls and convolutions (2 FLOPs per multiply-add) and ignores
    element-wise ops, norms and activations, i.e. the usual "model FLOPs".
    The model runs in eval mode under ``no_grad`` (so BatchNorm running
    statistics are left untouched) and its training flag is restored.
    A training step (forward + backward) costs about 3x this.
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros(tuple(input_shape), dtype=dtype, device=device)
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
    return float(counter.get_total_flops())


# ----------------------------------------------------------------------------- from typed configs


def generator_from_config(cfg: GeneratorConfig, in_channels: int = 1, out_channels: int = 1) -> nn.Module:
    """``G_mri`` / ``G_ct`` from ``essnet.generator``."""
    return build_model(
        "resnet_generator",
        in_channels=in_channels,
        out_channels=out_channels,
        ngf=cfg.ngf,
        n_blocks=cfg.n_blocks,
        n_downsampling=cfg.n_downsampling,
        upsample=cfg.upsample,
    )


def discriminator_from_config(cfg: DiscriminatorConfig, in_channels: int = 1) -> nn.Module:
    """``D_mri`` / ``D_ct`` from ``essnet.discriminator``."""
    return build_model("patchgan", in_channels=in_channels, ndf=cfg.ndf, n_layers=cfg.n_layers)


def segmenter_from_config(
    cfg: SegmenterConfig, in_channels: int = 1, out_channels: int = 2, n_downsampling: int = 2
) -> nn.Module:
    """EssNet's S from ``essnet.segmenter``: the ResNet body, or a U-Net (batch norm).

    ``n_downsampling`` is not in ``SegmenterConfig``; pass the generator's so
    that S accepts exactly the slice sizes the generators accept.
    """
    if cfg.name == "resnet":
        return build_model(
            "resnet_segmenter",
            in_channels=in_channels,
            out_channels=out_channels,
            ngf=cfg.ngf,
            n_blocks=cfg.n_blocks,
            n_downsampling=n_downsampling,
        )
    return build_model(
        "unet",
        in_channels=in_channels,
        out_channels=out_channels,
        depth=cfg.depth,
        base_features=cfg.base_features,
    )


def unet_from_config(cfg: UNetModelConfig, out_channels: int = 2) -> nn.Module:
    """The stage-2 U-Net from ``unet.model``: ``2 * context_slices + 1`` input channels (one MRI slice and its neighbours)."""
    return build_model(
        "unet",
        spatial_dims=2,
        in_channels=2 * cfg.context_slices + 1,
        out_channels=out_channels,
        depth=cfg.depth,
        base_features=cfg.base_features,
        norm=cfg.norm,
        dropout=cfg.dropout,
    )
