"""EssNet parts (ResNet generator, PatchGAN, ResNet segmenter), the U-Net, and the registry.

Networks only: no training logic lives here. Build models by name through
``build_model`` (or from typed config sections with ``*_from_config``).
"""

from __future__ import annotations

from liverlab.models.patchgan import PatchDiscriminator
from liverlab.models.registry import (
    MODELS,
    build_model,
    count_parameters,
    discriminator_from_config,
    generator_from_config,
    model_flops,
    segmenter_from_config,
    unet_from_config,
)
from liverlab.models.resnet import ResnetBlock, ResnetGenerator, init_normal_, resnet_segmenter
from liverlab.models.unet import LiverOnly, UNet, liver_only

__all__ = [
    "MODELS",
    "build_model",
    "count_parameters",
    "model_flops",
    "generator_from_config",
    "discriminator_from_config",
    "segmenter_from_config",
    "unet_from_config",
    "ResnetBlock",
    "ResnetGenerator",
    "resnet_segmenter",
    "PatchDiscriminator",
    "UNet",
    "LiverOnly",
    "liver_only",
    "init_normal_",
]
