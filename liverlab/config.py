"""Typed, frozen experiment configs: load YAML, apply dotted overrides, validate.

Every experiment is one ``ExperimentConfig``. Unknown keys and out-of-range
values are errors *before* any compute starts, and the error names the file,
the dotted key and what was expected. ``--set a.b=c`` overrides go through the
same validation as the file itself.

Variants are config values, never subclasses: ``synthesis: cyclegan`` is the
same EssNet code with ``lambda_seg`` forced to 0.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from liverlab.errors import LiverlabError


class _Strict(BaseModel):
    """Frozen, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# ----------------------------------------------------------------------------- data


class PhantomConfig(_Strict):
    """Generate phantoms into ``data.root`` on first use (when it does not exist)."""

    patients: int = Field(8, ge=2, le=1000)
    size: int = Field(64, ge=16, le=1024, description="in-plane voxels of the generated volumes")
    slices: int = Field(16, ge=2, le=512)
    seed: int = 0


class SplitConfig(_Strict):
    """Patient-level split fractions, fixed by a seed."""

    val: float = Field(0.2, ge=0.0, lt=1.0)
    test: float = Field(0.2, ge=0.0, lt=1.0)
    seed: int = 0

    @model_validator(mode="after")
    def _fractions(self) -> "SplitConfig":
        if self.val + self.test >= 1.0:
            raise ValueError(f"val + test must be < 1 (got {self.val} + {self.test})")
        return self


class DataConfig(_Strict):
    """Where the data is and how slices are preprocessed.

    ``ct`` and ``mri`` are nnU-Net-layout folders (``imagesTr``, ``labelsTr``,
    ``dataset.json``). Relative paths are resolved against the current
    directory when the config is loaded, so Ray workers see absolute paths.
    """

    root: str | None = Field(None, description="dataset root holding ct/ and mri/ (phantoms)")
    ct: str | None = Field(None, description="nnU-Net folder of CT cases; default <root>/ct")
    mri: str | None = Field(None, description="nnU-Net folder of MRI cases; default <root>/mri")
    phantom: PhantomConfig | None = Field(None, description="generate phantoms into root if absent")
    size: int = Field(64, ge=16, le=1024, description="in-plane size slices are resized to")
    ct_window: tuple[float, float] = (-160.0, 240.0)
    mri_percentiles: tuple[float, float] = (0.5, 99.5)
    empty_slice_fraction: float = Field(0.1, ge=0.0, le=1.0, description="share of liver-free slices kept")
    split: SplitConfig = SplitConfig()
    cache_dir: str | None = Field(None, description="slice cache; default <root or mri>/.cache")

    @model_validator(mode="after")
    def _paths(self) -> "DataConfig":
        if self.root is None and (self.ct is None and self.mri is None):
            raise ValueError("set data.root, or data.ct / data.mri")
        if self.ct_window[0] >= self.ct_window[1]:
            raise ValueError(f"ct_window must be increasing, got {list(self.ct_window)}")
        lo, hi = self.mri_percentiles
        if not (0.0 <= lo < hi <= 100.0):
            raise ValueError(f"mri_percentiles must satisfy 0 <= lo < hi <= 100, got {[lo, hi]}")
        return self

    @property
    def ct_dir(self) -> Path:
        return Path(self.ct) if self.ct else Path(self.root or ".") / "ct"

    @property
    def mri_dir(self) -> Path:
        return Path(self.mri) if self.mri else Path(self.root or ".") / "mri"


# ----------------------------------------------------------------------------- models


class GeneratorConfig(_Strict):
    name: Literal["resnet"] = "resnet"
    ngf: int = Field(64, ge=1, le=512)
    n_blocks: int = Field(9, ge=0, le=32)
    n_downsampling: int = Field(2, ge=0, le=5)


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


class SegmenterConfig(_Strict):
    """EssNet's S on the synthetic image: a generator-shaped net or a U-Net."""

    name: Literal["resnet", "unet"] = "resnet"
    ngf: int = Field(32, ge=1, le=512, description="resnet only")
    n_blocks: int = Field(9, ge=0, le=32, description="resnet only")
    depth: int = Field(4, ge=1, le=7, description="unet only")
    base_features: int = Field(32, ge=1, le=512, description="unet only")


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
    steps_per_epoch: int | None = Field(None, ge=1, description="default: CT slices / batch")
    val_slices: int = Field(32, ge=1, description="slices per validation (phantom SSIM / shape)")
    reference_steps: int = Field(
        150, ge=0, le=100000,
        description="training steps of the frozen real-MRI U-Net that judges shape preservation in every arm "
        "(val/shape_dice); 0 = judge with EssNet's own S instead (no figure for the CycleGAN arm)",
    )


class AugmentConfig(_Strict):
    flip: bool = True
    rotate_degrees: float = Field(10.0, ge=0.0, le=180.0)
    scale: float = Field(0.1, ge=0.0, lt=1.0)
    intensity: float = Field(0.1, ge=0.0, le=1.0)


class UNetConfig(_Strict):
    """Stage 2: liver U-Net on real MRI (+ synthetic MRI at ``mixing_ratio``)."""

    model: UNetModelConfig = UNetModelConfig()
    optim: OptimConfig = OptimConfig(lr=1e-3, beta1=0.9)
    dice_weight: float = Field(1.0, ge=0.0)
    ce_weight: float = Field(1.0, ge=0.0)
    augment: AugmentConfig = AugmentConfig()
    epochs: int = Field(20, ge=1, le=10000)
    batch_size: int = Field(8, ge=1, le=1024)
    steps_per_epoch: int | None = Field(None, ge=1, description="default: real slices / batch")
    patience: int = Field(10, ge=1, description="early stopping on val/iou")
    synthetic: str | None = Field(None, description="nnU-Net folder of synthetic MRI (stage unet)")
    mixing_ratio: float = Field(0.0, ge=0.0, le=100.0, description="synthetic / real slices drawn")

    @model_validator(mode="after")
    def _some_loss(self) -> "UNetConfig":
        if self.dice_weight == 0 and self.ce_weight == 0:
            raise ValueError("dice_weight and ce_weight are both 0: there is nothing to train on")
        return self


class TrackingConfig(_Strict):
    uri: str | None = Field(None, description="MLflow tracking URI; default sqlite in the run folder")
    experiment: str | None = None


class ExperimentConfig(_Strict):
    """One complete, standalone experiment."""

    name: str = "experiment"
    stage: Literal["essnet", "unet", "pipeline"] = "unet"
    synthesis: Literal["none", "cyclegan", "essnet"] = Field(
        "essnet", description="pipeline only: which translator makes the synthetic MRI"
    )
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"
    channels_last: bool = False
    data: DataConfig
    essnet: EssNetConfig = EssNetConfig()
    unet: UNetConfig = UNetConfig()
    tracking: TrackingConfig = TrackingConfig()

    def effective_essnet(self) -> EssNetConfig:
        """EssNet settings after the synthesis arm: ``cyclegan`` forces lambda_seg = 0."""
        if self.synthesis == "cyclegan":
            return self.essnet.model_copy(update={"lambda_seg": 0.0})
        return self.essnet


# ----------------------------------------------------------------------------- loading


def _format_error(source: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        got = e.get("input")
        got_s = "" if e["type"] in ("extra_forbidden", "missing") else f" (got {got!r})"
        lines.append(f"{source}: {key}: {msg}{got_s}")
    return "; ".join(lines)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """``yaml.safe_load`` a mapping, with errors that name the file."""
    p = Path(path)
    if not p.is_file():
        raise LiverlabError(f"{p}: no such file")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise LiverlabError(f"{p}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise LiverlabError(f"{p}: top level must be a mapping, got {type(raw).__name__}")
    return raw


def parse_override(item: str) -> tuple[str, Any]:
    """``'a.b=3'`` -> ``('a.b', 3)``; the value is parsed as YAML (numbers, lists, null)."""
    if "=" not in item:
        raise LiverlabError(f"--set {item!r}: expected KEY=VALUE, e.g. data.size=128")
    key, value = item.split("=", 1)
    key = key.strip()
    if not key:
        raise LiverlabError(f"--set {item!r}: empty key")
    try:
        return key, yaml.safe_load(value)
    except yaml.YAMLError:
        return key, value


def set_dotted(raw: dict[str, Any], key: str, value: Any, source: str = "--set") -> None:
    """Set ``raw[a][b] = value`` for ``key='a.b'``, creating mappings on the way."""
    node = raw
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            where = ".".join(parts[: i + 1])
            raise LiverlabError(f"{source}: {key}: {where} is a value, not a section")
        node = nxt
    node[parts[-1]] = value


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    """Make data paths absolute (Ray trials run in another working directory)."""
    data = raw.get("data")
    if isinstance(data, dict):
        for key in ("root", "ct", "mri", "cache_dir"):
            v = data.get(key)
            if isinstance(v, str) and "://" not in v:
                data[key] = str((base / Path(v).expanduser()).resolve())
    unet = raw.get("unet")
    if isinstance(unet, dict) and isinstance(unet.get("synthetic"), str):
        unet["synthetic"] = str((base / Path(unet["synthetic"]).expanduser()).resolve())


def config_from_dict(
    raw: dict[str, Any],
    overrides: list[str] | dict[str, Any] | None = None,
    source: str = "<config>",
    base_dir: str | Path | None = None,
) -> ExperimentConfig:
    """Validate a raw mapping (+ overrides) into an ``ExperimentConfig``."""
    raw = copy.deepcopy(raw)
    items = overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides or [])
    for key, value in items:
        set_dotted(raw, key, value)
    _resolve_paths(raw, Path(base_dir) if base_dir else Path.cwd())
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        src = source + (" (with --set overrides)" if overrides else "")
        raise LiverlabError(_format_error(src, err)) from None


def load_config(path: str | Path, overrides: list[str] | dict[str, Any] | None = None) -> ExperimentConfig:
    """Load an experiment YAML, apply ``--set`` overrides, validate.

    Relative data paths are resolved against the current directory (the
    directory you run ``liverlab`` from), not the YAML's folder, so that the
    shipped experiments work from the repository root.
    """
    return config_from_dict(read_yaml(path), overrides, source=str(path))


def dump_config(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML (what ``show-config`` prints and runs save)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{'a': {'b': 1}}`` -> ``{'a.b': 1}`` (MLflow params, sweep keys)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


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
            keys.add(prefix + name)
            if sub is not None:
                keys |= walk(sub, prefix + name + ".")
        return keys

    return walk(ExperimentConfig, "")
