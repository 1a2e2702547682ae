"""The experiment schema: models, stages, tracking, ``ExperimentConfig`` (private; see liverlab.config).

Variants are config values, never subclasses: ``synthesis: cyclegan`` is the
same EssNet code with ``lambda_seg`` forced to 0. The data sections are in
``_data.py``, augmentation and post-processing in ``_augment.py``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from liverlab.config._augment import AugmentConfig, PostprocessConfig, TTAConfig
from liverlab.config._base import _Strict
from liverlab.config._data import DataConfig

# ----------------------------------------------------------------------------- models


class GeneratorConfig(_Strict):
    name: Literal["resnet"] = "resnet"
    ngf: int = Field(64, ge=1, le=512)
    n_blocks: int = Field(9, ge=0, le=32)
    n_downsampling: int = Field(2, ge=0, le=5)
    upsample: Literal["transpose", "nearest", "bilinear"] = Field(
        "transpose",
        description="decoder upsampling: transpose = stride-2 transposed conv (CycleGAN's; can print a "
        "checkerboard), nearest / bilinear = resize-convolution (2x resize, then a 3x3 conv)",
    )


class DiscriminatorConfig(_Strict):
    name: Literal["patchgan"] = "patchgan"
    ndf: int = Field(64, ge=1, le=512)
    n_layers: int = Field(3, ge=1, le=6)


class UNetModelConfig(_Strict):
    name: Literal["unet"] = "unet"
    depth: int = Field(4, ge=1, le=7)
    base_features: int = Field(32, ge=1, le=512)
    norm: Literal["batch", "instance", "none"] = "batch"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    context_slices: int = Field(
        0, ge=0, le=4,
        description="2.5D: c slices above and below as extra input channels (in_channels = 2c + 1); 0 = plain 2D",
    )


class SegmenterConfig(_Strict):
    """EssNet's S on the synthetic image: a generator-shaped net or a U-Net."""

    name: Literal["resnet", "unet"] = "resnet"
    ngf: int = Field(32, ge=1, le=512, description="resnet only")
    n_blocks: int = Field(9, ge=0, le=32, description="resnet only")
    depth: int = Field(4, ge=1, le=7, description="unet only")
    base_features: int = Field(32, ge=1, le=512, description="unet only")
    tanh: bool = Field(
        False,
        description="SynSeg-Net's Tanh on S's output: logits bounded to [-1, 1], so a 2-class softmax is at "
        "most e^2/(1+e^2) = 0.88 sure and the cross-entropy never vanishes",
    )


class OptimConfig(_Strict):
    lr: float = Field(2e-4, gt=0.0, le=1.0)
    beta1: float = Field(0.5, ge=0.0, lt=1.0)
    beta2: float = Field(0.999, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)


# ----------------------------------------------------------------------------- stages


class EssNetConfig(_Strict):
    """Stage 1: CycleGAN + segmenter on the synthetic MRI (DESIGN.md)."""

    generator: GeneratorConfig = GeneratorConfig()
    discriminator: DiscriminatorConfig = DiscriminatorConfig()
    segmenter: SegmenterConfig = SegmenterConfig()
    lambda_adv: float = Field(1.0, ge=0.0)
    lambda_cycle: float = Field(10.0, ge=0.0)
    lambda_idt: float = Field(0.0, ge=0.0)
    lambda_seg: float = Field(1.0, ge=0.0, description="0 = plain CycleGAN, S not run")
    pool_size: int = Field(50, ge=0, le=10000)
    optim: OptimConfig = OptimConfig()
    epochs: int = Field(10, ge=1, le=10000, description="epochs at constant learning rate")
    decay_epochs: int = Field(0, ge=0, le=10000, description="further epochs of linear decay to 0")
    batch_size: int = Field(4, ge=1, le=1024)
    steps_per_epoch: int | None = Field(None, ge=1, description="default: max(CT slices, MRI slices) / batch")
    load_scale: float = Field(
        1.0, ge=1.0, le=2.0,
        description="random resize-crop jitter (CycleGAN's load_size / crop_size, 286/256 = 1.12): each training "
        "slice is resized to round(size * load_scale) and a random size x size crop taken (CT mask with its image); "
        "1 = off",
    )
    val_slices: int = Field(32, ge=1, description="slices per validation (phantom SSIM / shape)")
    seed: int | None = Field(
        None, ge=0,
        description="the translator's own seed (weights, data order, jitter, image pool); null = the run's seed. "
        "Fixed, it lets pipeline trials of different seeds share one cached translator",
    )
    reference_steps: int | None = Field(
        None, ge=0, le=10_000_000,
        description="the judge of shape preservation (val/shape_dice) is the experiment's U-Net recipe trained "
        "on the real MRI training patients: null = unet.iterations, N = N iterations, "
        "0 = judge with EssNet's own S instead (no figure for the CycleGAN arm)",
    )


class UNetOptimConfig(OptimConfig):
    """The U-Net's optimiser: AdamW by default (decoupled weight decay)."""

    name: Literal["adamw", "adam"] = "adamw"


#: Keys of the epoch-based recipe and what replaced them (clear errors for old YAMLs).
_REMOVED_UNET_KEYS = {
    "epochs": "unet.iterations (total optimiser steps) and unet.val_every",
    "steps_per_epoch": "unet.iterations (total optimiser steps) and unet.val_every",
}


class UNetConfig(_Strict):
    """Stage 2: liver U-Net on real MRI (+ synthetic MRI at ``mixing_ratio``).

    Training length is ``iterations`` optimiser steps whatever the mixing
    ratio (r only changes what is in each batch), with the learning rate
    decayed by ``lr_schedule``; every ``val_every`` steps the run validates,
    reports and checkpoints.
    """

    model: UNetModelConfig = UNetModelConfig()
    optim: UNetOptimConfig = UNetOptimConfig(lr=1e-3, beta1=0.9, weight_decay=1e-4)
    dice_weight: float = Field(1.0, ge=0.0)
    ce_weight: float = Field(1.0, ge=0.0)
    augment: AugmentConfig = AugmentConfig()
    iterations: int = Field(
        2000, ge=1, le=10_000_000, description="total optimiser steps (equal for every mixing ratio)"
    )
    val_every: int = Field(100, ge=1, description="optimiser steps between validations / reports / checkpoints")
    lr_schedule: Literal["poly", "cosine", "constant"] = Field(
        "poly", description="poly: lr * (1 - it/iterations)^0.9 (nnU-Net); cosine: to 0; constant"
    )
    batch_size: int = Field(8, ge=1, le=1024)
    patch_size: int | None = Field(
        None, ge=16, le=1024,
        description="train on random patch_size x patch_size windows of the data.size slices (nnU-Net's patch "
        "training; drawn by the augmenter, rotation and zoom about the window's centre); validation, test and "
        "evaluate segment whole slices. The resolution of data.size at about the step cost of patch_size. "
        "Must be <= data.size and divisible by 2**(unet.model.depth - 1). null = whole slices",
    )
    num_workers: int = Field(
        0, ge=0, le=64,
        description="DataLoader worker processes that build the training batches (0: in the training process). "
        "On an H200, benchmarks/bench_gpu.py's augmented loader fed a 256^2 U-Net at 0.43x its speed with 0 "
        "workers, 0.97x with 4 (docs/benchmarks.md). With workers, the augmentation draws one seeded stream per "
        "worker: reproducible and resumable for a given value, but a different draw from num_workers 0",
    )
    empty_slice_fraction: float = Field(
        1.0, ge=0.0, le=1.0,
        description="share of liver-free training slices kept (data.empty_slice_fraction is EssNet's)",
    )
    keep: Literal["last", "best"] = Field(
        "last", description="weights kept for test and best.pt: last, or best val/iou"
    )
    early_stopping: bool = Field(False, description="stop after `patience` validations without a better val/iou")
    patience: int = Field(10, ge=1, description="validations without improvement before early stopping")
    synthetic: str | None = Field(None, description="nnU-Net folder of synthetic MRI (stage unet)")
    mixing_ratio: float = Field(0.0, ge=0.0, le=100.0, description="synthetic / real slices drawn")
    organs: bool = Field(
        False,
        description="also learn the other organs labelled in data.mri (its dataset.json labels 2.., from "
        "data.import's organs) as extra output classes: an auxiliary task that shows the U-Net what the liver "
        "is not. Cross-entropy over every class, soft Dice on the liver; validation, test, evaluate and the "
        "saved masks stay liver-only. Needs mixing_ratio 0 (synthetic MRI carries liver masks only)",
    )
    postprocess: PostprocessConfig = Field(
        PostprocessConfig(), description="applied to predicted masks before val/test/evaluate metrics"
    )
    tta: TTAConfig = Field(
        TTAConfig(), description="test-time augmentation for test metrics and evaluate (not val)"
    )

    @model_validator(mode="before")
    @classmethod
    def _removed_keys(cls, raw: Any) -> Any:
        if isinstance(raw, dict):
            for key, new in _REMOVED_UNET_KEYS.items():
                if key in raw:
                    raise ValueError(f"unet.{key} was removed: use {new}")
        return raw

    @model_validator(mode="after")
    def _some_loss(self) -> "UNetConfig":
        if self.dice_weight == 0 and self.ce_weight == 0:
            raise ValueError("dice_weight and ce_weight are both 0: there is nothing to train on")
        if self.organs and self.mixing_ratio > 0:
            raise ValueError("organs needs mixing_ratio 0: synthetic MRI has liver masks only, no other organs")
        return self

    @property
    def n_reports(self) -> int:
        """Validations / reports in a full run (the sweep scheduler's ``max_t``)."""
        return -(-self.iterations // self.val_every)

    @property
    def needs_val(self) -> bool:
        """Whether the run needs validation patients (best weights or early stopping)."""
        return self.keep == "best" or self.early_stopping


class CudaConfig(_Strict):
    """Speed settings applied when a run is on a CUDA GPU (ignored on CPU)."""

    tf32: bool = Field(True, description="TF32 for fp32 matmuls and convolutions (Ampere and newer)")
    cudnn_benchmark: bool = Field(True, description="cuDNN picks the fastest kernels for the fixed input size")


class TrackingConfig(_Strict):
    uri: str | None = Field(None, description="MLflow tracking URI; default sqlite in the run folder")
    experiment: str | None = None


class ExperimentConfig(_Strict):
    """One complete, standalone experiment."""

    name: str = "experiment"
    stage: Literal["essnet", "unet", "pipeline"] = "unet"
    synthesis: Literal["none", "cyclegan", "essnet", "intensity"] = Field(
        "essnet", description="pipeline only: which translator makes the synthetic MRI "
        "(intensity: the non-GAN control, CT remapped to the MRI histogram; liverlab/train/intensity_synth.py)"
    )
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "fp32", description="auto: bf16 where the device has it natively, else fp16 + GradScaler on GPUs "
        "with fast fp16, else fp32 (liverlab/train/precision.py)"
    )
    cuda: CudaConfig = CudaConfig()
    channels_last: bool = False
    data: DataConfig
    essnet: EssNetConfig = EssNetConfig()
    unet: UNetConfig = UNetConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _patch_fits(self) -> "ExperimentConfig":
        p = self.unet.patch_size
        if p is not None:
            if p > self.data.size:
                raise ValueError(f"unet.patch_size {p} is larger than data.size {self.data.size}")
            factor = 2 ** (self.unet.model.depth - 1)
            if p % factor:
                raise ValueError(
                    f"unet.patch_size {p} is not divisible by 2**(unet.model.depth - 1) = {factor}"
                )
        return self

    def effective_essnet(self) -> EssNetConfig:
        """EssNet settings after the synthesis arm: ``cyclegan`` forces lambda_seg = 0."""
        if self.synthesis == "cyclegan":
            return self.essnet.model_copy(update={"lambda_seg": 0.0})
        return self.essnet


# ----------------------------------------------------------------------------- introspection


def config_paths() -> set[str]:
    """Every valid dotted key of ``ExperimentConfig`` (for search-space checks)."""

    def walk(model: type[BaseModel], prefix: str) -> set[str]:
        keys: set[str] = set()
        for name, field in model.model_fields.items():
            ann = field.annotation
            sub = None
            for cand in getattr(ann, "__args__", ()) or (ann,):
                if isinstance(cand, type) and issubclass(cand, BaseModel):
                    sub = cand
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                sub = ann
            name = field.alias or name  # data.import (field import_)
            keys.add(prefix + name)
            if sub is not None:
                keys |= walk(sub, prefix + name + ".")
        return keys

    return walk(ExperimentConfig, "")
