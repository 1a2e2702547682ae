"""U-Net augmentation and post-processing config sections (re-exported by liverlab.config)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from liverlab.config._base import _Strict


class RandomRangeConfig(_Strict):
    """One intensity augmentation: fires with probability ``p``, strength uniform in ``range``."""

    p: float = Field(ge=0.0, le=1.0, description="probability per slice (0 = off)")
    range: tuple[float, float] = Field(description="[lo, hi] the strength is drawn from")

    @model_validator(mode="after")
    def _ordered(self) -> "RandomRangeConfig":
        if self.range[0] > self.range[1]:
            raise ValueError(f"range must be [lo, hi] with lo <= hi (got {list(self.range)})")
        return self


#: Intensity ops: (smallest allowed lo, largest allowed hi, what the strength means).
_INTENSITY_LIMITS = {
    "liver_contrast": (0.0, 10.0, "factor on the liver alone (its mask), in (0, 10]"),
    "random_conv": (0.0, 1.0, "blend weight of a random shallow network's output (GIN), in [0, 1]"),
    "gamma": (0.0, 10.0, "exponent on [0, 1]-rescaled intensities, in (0, 10]"),
    "contrast": (0.0, 10.0, "factor about the slice mean, in (0, 10]"),
    "brightness": (0.0, 10.0, "multiplicative factor, in (0, 10]"),
    "bias_field": (0.0, 2.0, "log-amplitude of a smooth cubic field, in [0, 2]"),
    "noise": (0.0, 1.0, "Gaussian noise std in image units ([-1, 1] scale), in [0, 1]"),
    "blur": (0.0, 10.0, "Gaussian blur sigma in pixels, in [0, 10]"),
}


#: Geometric ops with a {p, range}: (smallest allowed lo, largest allowed hi, what the strength means).
_GEOMETRY_LIMITS = {
    "elastic": (0.0, 32.0, "largest displacement in pixels of the slice, in [0, 32]"),
}
_LIMITS = _GEOMETRY_LIMITS | _INTENSITY_LIMITS


class AugmentConfig(_Strict):
    """U-Net slice augmentation (``liverlab.data.augment``).

    ``flip`` lists anatomical axes (left_right, anterior_posterior), each
    flipped with probability 0.5; none for the liver by default (its side and
    the abdomen's orientation are real cues). The intensity ops are on by
    default: they make the segmenter robust to scanner and patient contrast.
    """

    flip: tuple[Literal["left_right", "anterior_posterior"], ...] = Field(
        (), description="anatomical flip axes: left_right, anterior_posterior"
    )
    rotate_degrees: float = Field(10.0, ge=0.0, le=180.0)
    scale: float = Field(0.1, ge=0.0, lt=1.0)
    # smooth random deformation (Ronneberger et al. 2015); off by default, docs/chaos.md measures it
    elastic: RandomRangeConfig = RandomRangeConfig(p=0.0, range=(0.0, 4.0))
    # gamma wider and more often than nnU-Net's (p 0.3, [0.7, 1.5]), measured on held-out CHAOS MR
    # (tests/test_robustness.py)
    # GIN (Ouyang et al. 2022): off by default; docs/chaos.md measures it on the dark-liver patient
    random_conv: RandomRangeConfig = RandomRangeConfig(p=0.0, range=(0.0, 1.0))
    # the liver alone darker or brighter than its neighbours (mask-guided); off by default, docs/chaos.md
    liver_contrast: RandomRangeConfig = RandomRangeConfig(p=0.0, range=(0.3, 1.6))
    gamma: RandomRangeConfig = RandomRangeConfig(p=0.5, range=(0.5, 2.0))
    contrast: RandomRangeConfig = RandomRangeConfig(p=0.15, range=(0.75, 1.25))
    brightness: RandomRangeConfig = RandomRangeConfig(p=0.15, range=(0.75, 1.25))
    bias_field: RandomRangeConfig = RandomRangeConfig(p=0.3, range=(0.0, 0.4))
    noise: RandomRangeConfig = RandomRangeConfig(p=0.15, range=(0.0, 0.05))
    blur: RandomRangeConfig = RandomRangeConfig(p=0.1, range=(0.5, 1.0))

    @model_validator(mode="before")
    @classmethod
    def _old_keys(cls, raw: Any) -> Any:
        if isinstance(raw, dict):
            if isinstance(raw.get("flip"), bool):
                raise ValueError(
                    "flip is a list of anatomical axes now: [left_right], [anterior_posterior] or [] "
                    f"(got {raw['flip']!r}; the old true flipped anterior-posterior)"
                )
            if "intensity" in raw:
                raise ValueError(
                    "intensity was removed: use contrast / brightness / gamma / bias_field / noise / blur / "
                    "random_conv / liver_contrast"
                )
            # `--set unet.augment.gamma.p=0` alone: the op's other field keeps its default
            raw = dict(raw)
            for name in _LIMITS:
                if isinstance(raw.get(name), dict):
                    raw[name] = {**cls.model_fields[name].default.model_dump(), **raw[name]}
        return raw

    @model_validator(mode="after")
    def _ranges(self) -> "AugmentConfig":
        for name, (lo, hi, what) in _LIMITS.items():
            r = getattr(self, name).range
            positive = name in ("liver_contrast", "gamma", "contrast", "brightness")
            if (r[0] <= lo if positive else r[0] < lo) or r[1] > hi:
                raise ValueError(f"{name}.range: {what} (got {list(r)})")
        if len(set(self.flip)) != len(self.flip):
            raise ValueError(f"flip lists an axis twice (got {self.flip})")
        return self


class PostprocessConfig(_Strict):
    """Post-processing of predicted liver masks before every reported metric (liverlab/postprocess.py)."""

    largest_component: bool = Field(True, description="keep the largest 3D component (26-connectivity)")
    fill_holes: bool = Field(True, description="fill holes in each axial slice")


class TTAConfig(_Strict):
    """Test-time augmentation: mean probabilities over rotated and zoomed copies (liverlab/infer/tta.py)."""

    rotate_degrees: float = Field(
        0.0, ge=0.0, le=45.0, description="copies rotated by -r, 0 and +r degrees (0: no rotation)"
    )
    scale: float = Field(0.0, ge=0.0, lt=0.5, description="copies zoomed by 1-s, 1 and 1+s (0: no zoom)")

    @property
    def enabled(self) -> bool:
        return self.rotate_degrees > 0 or self.scale > 0
