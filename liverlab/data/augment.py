"""Slice augmentation on tensors: flips, small rotations and scaling, intensity jitter.

Geometry is applied identically to image and mask (one sampling grid; the
image bilinear, the mask nearest, so labels stay labels). Every part can be
switched off with a zero (or ``flip=False``); when rotation and scaling are
both off, no resampling happens at all, so the image is not blurred.

Randomness: with ``seed`` the augmenter owns a ``torch.Generator`` (exactly
reproducible in one process). With ``seed=None`` it draws from torch's global
RNG, which is what a multi-worker ``DataLoader`` seeds differently per
worker; a seeded generator would be copied into every worker and repeat
the same stream there.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: Intensity of background (air) after normalisation; areas rotated in from
#: outside the image are filled with it rather than with mid-grey.
FILL = -1.0


class Augment:
    """Random flips, rotations, scaling and intensity jitter for (image, mask).

    ``image``: (1, H, W) or (B, 1, H, W) float in [-1, 1]; ``mask``: (H, W) or
    (B, H, W) integer, or None. Returns ``(image, mask)`` with the same shapes
    and dtypes. Parameters: ``flip`` left-right flip with probability 0.5;
    ``rotate_degrees`` uniform in +-degrees; ``scale`` zoom factor uniform in
    1 +- scale; ``intensity`` contrast and brightness jitter, each uniform in
    +- intensity (result clamped to [-1, 1]).
    """

    def __init__(
        self,
        flip: bool = True,
        rotate_degrees: float = 10.0,
        scale: float = 0.1,
        intensity: float = 0.1,
        seed: int | None = None,
    ) -> None:
        if rotate_degrees < 0 or not 0 <= scale < 1 or intensity < 0:
            raise ValueError("rotate_degrees >= 0, 0 <= scale < 1 and intensity >= 0 are required")
        self.flip = bool(flip)
        self.rotate_degrees = float(rotate_degrees)
        self.scale = float(scale)
        self.intensity = float(intensity)
        self.generator: torch.Generator | None = None
        if seed is not None:
            self.generator = torch.Generator().manual_seed(int(seed))

    @classmethod
    def from_config(cls, cfg: object, seed: int | None = None) -> Augment:
        """Build from an ``AugmentConfig`` (anything with flip/rotate_degrees/scale/intensity)."""
        return cls(
            flip=bool(getattr(cfg, "flip")),
            rotate_degrees=float(getattr(cfg, "rotate_degrees")),
            scale=float(getattr(cfg, "scale")),
            intensity=float(getattr(cfg, "intensity")),
            seed=seed,
        )

    def _uniform(self, n: int, lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, generator=self.generator) * (hi - lo) + lo

    def __call__(self, image: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        single = image.dim() == 3
        img = image[None] if single else image
        msk = None if mask is None else (mask[None] if single else mask)
        b = img.shape[0]
        img = img.float()

        if self.flip:
            flip = torch.rand(b, generator=self.generator) < 0.5
            if flip.any():
                img = img.clone()
                img[flip] = img[flip].flip(-1)
                if msk is not None:
                    msk = msk.clone()
                    msk[flip] = msk[flip].flip(-1)

        if self.rotate_degrees > 0 or self.scale > 0:
            angle = self._uniform(b, -self.rotate_degrees, self.rotate_degrees) * (math.pi / 180.0)
            zoom = self._uniform(b, 1.0 - self.scale, 1.0 + self.scale)
            cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
            # theta maps output to input coordinates: dividing by zoom magnifies.
            theta = torch.zeros(b, 2, 3)
            theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
            grid = F.affine_grid(theta, list(img.shape), align_corners=False)
            img = F.grid_sample(img - FILL, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + FILL
            if msk is not None:
                m = F.grid_sample(msk[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
                msk = m[:, 0].round().to(msk.dtype)

        if self.intensity > 0:
            contrast = 1.0 + self._uniform(b, -self.intensity, self.intensity).view(b, 1, 1, 1)
            shift = self._uniform(b, -self.intensity, self.intensity).view(b, 1, 1, 1)
            # Contrast about the background value so air stays near -1.
            img = ((img - FILL) * contrast + FILL + shift).clamp(-1.0, 1.0)

        if single:
            return img[0], (None if msk is None else msk[0])
        return img, msk
