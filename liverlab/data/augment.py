"""Slice augmentation on tensors: anatomical flips, rotation, scaling, elastic deformation, intensity.

Geometry is applied identically to image and mask (one sampling grid; the
image bilinear, the mask nearest, so labels stay labels). Intensity
operations change the image only, never the mask.

Flips are named by anatomical axis, in the cache layout of
``liverlab.data.cache`` (rows, dim -2, run along x = patient left-right;
columns, dim -1, along y = anterior-posterior): ``left_right`` mirrors the
rows, ``anterior_posterior`` the columns; each listed axis is flipped with
probability 0.5. The default is no flip: the liver is on the patient's
right and the abdomen is never upside down, and both are cues a segmenter
should keep. When rotation, scaling and elastic deformation are all off, no
resampling happens, so the image is not blurred.

Elastic deformation (``elastic``, Ronneberger et al. 2015: the U-Net's answer
to few annotated images): with probability ``p`` a slice's sampling grid is
displaced by a smooth random field, N(0, 1) values on a coarse
``ELASTIC_KNOTS`` x ``ELASTIC_KNOTS`` lattice upsampled bicubically to the
output and scaled so that each component's largest displacement is the drawn
strength, in pixels of the slice. It bends organ outlines (a longer left
lobe, a rounder dome) where rotation and zoom only move them; image and mask
share the displaced grid, as they share the affine one.

Intensity augmentation (nnU-Net style) covers the contrast differences
between scanners and patients that per-volume percentile normalisation does
not remove. Each operation fires per slice with probability ``p`` and draws
its strength uniformly from ``(lo, hi)`` (a ``RandomRange``). They work on
``u = (image + 1) / 2`` in [0, 1], where air (image -1) is u = 0, in this
order:

- ``liver_contrast``: multiply the liver alone by the drawn factor (its mask,
  blurred by 1 px so the edge stays an edge of tissue, not of a stencil), the
  rest of the slice unchanged. The global ops below keep the order of tissue
  intensities; this one changes the liver's brightness relative to its
  neighbours, as between CHAOS patients (liver / 5-px surrounding ring 1.2 to
  1.8 in 11 of the 12 shared, 0.54 in the dark-liver patient mri_15). It
  needs the mask: an unlabelled slice (``mask`` None) is left to the other
  ops. In a 2.5D stack every channel is scaled by the centre slice's mask.
- ``random_conv``: GIN, global intensity non-linear augmentation (Ouyang et
  al., IEEE TMI 2022, proposed for cross-modality abdominal segmentation on
  CHAOS): the slice goes through a fresh random shallow network (4 conv
  layers of width 2, kernels 1 or 3 px drawn per layer, N(0, 1) weights and
  biases, LeakyReLU 0.2 between), its output is rescaled to [0, 1] and
  blended with the slice, the drawn value the blend weight (0 = unchanged).
  Unlike the ops below it can reorder tissue intensities (a dark liver next
  to a bright one), so the segmenter must lean on shape and context. The
  paper renormalises by the Frobenius norm of z-scored input; liverlab's
  inputs have a fixed range, so min-max rescaling takes its place. Every
  channel of a 2.5D stack goes through the same network.
- ``blur``: Gaussian blur, sigma in pixels.
- ``bias_field``: multiply by a smooth positive field ``exp(s * g)``, ``g``
  a random cubic polynomial in (row, column) scaled to max ``|g|`` = 1, ``s``
  the drawn strength (so the field lies in [exp(-s), exp(s)]); air stays 0.
- ``brightness``: multiply by the drawn factor; air stays 0.
- ``contrast``: scale about the slice mean by the drawn factor, clipped to
  the slice's own [min, max] (air stays the darkest value).
- ``gamma``: ``u ** g``; 0 (air) and 1 stay fixed, like a different scanner's
  monotone intensity response after percentile normalisation.
- ``noise``: add Gaussian noise, the drawn value its standard deviation in
  image units ([-1, 1] scale).

The result is clipped to [0, 1] and mapped back to [-1, 1]. A slice that no
operation fires on is returned unchanged (not even rounded).

Patches (``patch_size`` p, nnU-Net style): every slice becomes a random
p x p window of itself, its top-left corner uniform over the positions that
keep the window inside the slice, drawn after the flips and before the
intensity ops. With rotation or scaling on, the sampling grid is built for
the window alone (rotation and zoom about the window's centre), so a patch
costs what a p x p slice costs; with both off the window is cut out exactly.
A model trained on patches of the ``size`` x ``size`` cache segments whole
slices at that size (the U-Net is fully convolutional): the resolution of
``size`` at about the training cost of ``p``.

Randomness: with ``seed`` the augmenter owns a ``torch.Generator`` (exactly
reproducible in one process). With ``seed=None`` it draws from torch's global
RNG, which is what a multi-worker ``DataLoader`` seeds differently per
worker; a seeded generator would be copied into every worker and repeat
the same stream there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: Intensity of background (air) after normalisation; areas rotated in from
#: outside the image are filled with it rather than with mid-grey.
FILL = -1.0

#: Anatomical flip axis -> tensor dim of a (..., H, W) slice in the cache layout.
FLIP_AXES: dict[str, int] = {"left_right": -2, "anterior_posterior": -1}

#: Control lattice of the elastic field per axis: knots about a third of the slice apart (an organ's scale).
ELASTIC_KNOTS = 4

#: Intensity operations in the order they are applied.
INTENSITY_OPS = ("liver_contrast", "random_conv", "blur", "bias_field", "brightness", "contrast", "gamma", "noise")


@dataclass(frozen=True)
class RandomRange:
    """Apply with probability ``p``; draw the strength uniformly from [lo, hi]."""

    p: float
    lo: float
    hi: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0 or self.lo > self.hi:
            raise ValueError(f"RandomRange needs 0 <= p <= 1 and lo <= hi, got {self}")


def elastic_field(n: int, h: int, w: int, generator: torch.Generator | None = None,
                  knots: int = ELASTIC_KNOTS) -> torch.Tensor:
    """(n, h, w, 2) smooth random displacements (x, y), each component's largest ``|value|`` exactly 1 per slice."""
    g = torch.randn(n, 2, knots, knots, generator=generator)
    f = F.interpolate(g, size=(h, w), mode="bicubic", align_corners=True)
    f = f / f.abs().amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)
    return f.permute(0, 2, 3, 1)


def displace(grid: torch.Tensor, field: torch.Tensor, pixels: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``grid`` (n, ph, pw, 2) of ``grid_sample`` moved by ``field`` (n, ph, pw, 2, x then y) times ``pixels`` (n,)
    pixels of the (h, w) input: output pixel p samples the input at (its affine position) + displacement."""
    per_pixel = torch.tensor([2.0 / w, 2.0 / h])  # normalised units (align_corners=False) per input pixel
    return grid + field * pixels.view(-1, 1, 1, 1) * per_pixel


def bias_field(
    n: int, height: int, width: int, strength: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``n`` smooth positive fields (n, 1, H, W): ``exp(strength * g)``, g a cubic with max |g| = 1.

    ``strength`` is (n,) (log-amplitude); a strength of 0 gives exactly 1.
    """
    coef = torch.rand(n, 10, generator=generator) * 2.0 - 1.0
    x = torch.linspace(-1.0, 1.0, height).view(height, 1)
    y = torch.linspace(-1.0, 1.0, width).view(1, width)
    terms = [x**i * y**j for i in range(4) for j in range(4 - i)]  # 10 monomials of degree <= 3
    basis = torch.stack([t.expand(height, width) for t in terms])  # (10, H, W)
    g = torch.einsum("nk,khw->nhw", coef, basis)
    g = g / g.abs().amax(dim=(1, 2), keepdim=True).clamp_min(1e-6)
    return torch.exp(strength.view(n, 1, 1) * g)[:, None]


def gaussian_blur(u: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (n, C, H, W) with ``sigma`` pixels (reflect padding), each channel alone."""
    if sigma <= 0:
        return u
    if u.shape[1] != 1:
        n, c, h, w = u.shape
        return gaussian_blur(u.reshape(n * c, 1, h, w), sigma).reshape(n, c, h, w)
    radius = max(1, int(math.ceil(3.0 * sigma)))
    radius = min(radius, u.shape[-1] - 1, u.shape[-2] - 1)
    t = torch.arange(-radius, radius + 1, dtype=u.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    out = F.conv2d(F.pad(u, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(out, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1))


def random_conv(u: torch.Tensor, alpha: torch.Tensor, generator: torch.Generator | None = None,
                layers: int = 4, width: int = 2) -> torch.Tensor:
    """GIN on (n, C, H, W) in [0, 1]: ``alpha * net(u) + (1 - alpha) * u``, one random net per slice.

    ``net(u)`` is rescaled to [0, 1] over the slice (all channels together); a
    constant output counts as 0. ``alpha`` is (n,); 0 returns ``u`` exactly.
    """
    n, c, h, w = u.shape
    out = []
    for i in range(n):
        x = u[i].reshape(c, 1, h, w)  # channels as a batch: the same net for every channel
        for layer in range(layers):
            cin = 1 if layer == 0 else width
            cout = 1 if layer == layers - 1 else width
            k = 3 if bool(torch.rand(1, generator=generator) < 0.5) else 1
            weight = torch.randn(cout, cin, k, k, generator=generator)
            bias = torch.randn(cout, generator=generator)
            x = F.conv2d(F.pad(x, (k // 2,) * 4, mode="replicate") if k > 1 else x, weight, bias)
            if layer < layers - 1:
                x = F.leaky_relu(x, 0.2)
        lo, hi = x.amin(), x.amax()
        x = (x - lo) / (hi - lo) if float(hi - lo) > 1e-6 else torch.zeros_like(x)
        a = float(alpha[i])
        out.append(u[i] if a == 0.0 else (a * x.reshape(c, h, w) + (1.0 - a) * u[i]).clamp(0.0, 1.0))
    return torch.stack(out)


class Augment:
    """Random anatomical flips, rotation, scaling and intensity ops for (image, mask).

    ``image``: (1, H, W) or (B, 1, H, W) float in [-1, 1]; ``mask``: (H, W) or
    (B, H, W) integer, or None. Returns ``(image, mask)`` with the same shapes
    and dtypes. ``flip``: anatomical axes (``FLIP_AXES``), each flipped with
    probability 0.5; ``rotate_degrees`` uniform in +-degrees; ``scale`` zoom
    uniform in 1 +- scale; ``elastic`` a ``RandomRange`` of displacements in pixels (module docstring); the
    intensity ops are ``RandomRange`` or None (off).
    Every default is off: ``Augment()`` is the identity; the training
    defaults live in ``AugmentConfig`` (``Augment.from_config``).
    """

    def __init__(
        self,
        flip: Sequence[str] = (),
        rotate_degrees: float = 0.0,
        scale: float = 0.0,
        *,
        elastic: RandomRange | None = None,
        liver_contrast: RandomRange | None = None,
        random_conv: RandomRange | None = None,
        blur: RandomRange | None = None,
        bias_field: RandomRange | None = None,
        brightness: RandomRange | None = None,
        contrast: RandomRange | None = None,
        gamma: RandomRange | None = None,
        noise: RandomRange | None = None,
        patch_size: int | None = None,
        seed: int | None = None,
    ) -> None:
        if isinstance(flip, (str, bool)):
            raise ValueError(f"flip must be a list of anatomical axes {sorted(FLIP_AXES)}, got {flip!r}")
        unknown = [a for a in flip if a not in FLIP_AXES]
        if unknown:
            raise ValueError(f"unknown flip axis {unknown[0]!r}: use any of {sorted(FLIP_AXES)}")
        if rotate_degrees < 0 or not 0 <= scale < 1:
            raise ValueError("rotate_degrees >= 0 and 0 <= scale < 1 are required")
        if patch_size is not None and (isinstance(patch_size, bool) or int(patch_size) != patch_size or patch_size < 1):
            raise ValueError(f"patch_size must be a positive integer or None, got {patch_size!r}")
        if elastic is not None and elastic.lo < 0:
            raise ValueError(f"elastic displacements must be >= 0 pixels, got {elastic}")
        self.elastic = elastic if elastic is not None and elastic.p > 0 else None
        self.patch_size = None if patch_size is None else int(patch_size)
        self.flip = tuple(dict.fromkeys(flip))
        self.rotate_degrees = float(rotate_degrees)
        self.scale = float(scale)
        ops = {"liver_contrast": liver_contrast, "random_conv": random_conv, "blur": blur}
        ops |= {"bias_field": bias_field, "brightness": brightness}
        ops |= {"contrast": contrast, "gamma": gamma, "noise": noise}
        for name, op in ops.items():
            if op is not None and name in ("liver_contrast", "brightness", "contrast", "gamma") and op.lo <= 0:
                raise ValueError(f"{name} factors must be > 0, got {op}")
            if op is not None and op.lo < 0:
                raise ValueError(f"{name} strengths must be >= 0, got {op}")
        self.intensity: dict[str, RandomRange] = {k: v for k, v in ops.items() if v is not None and v.p > 0}
        self.generator: torch.Generator | None = None
        if seed is not None:
            self.generator = torch.Generator().manual_seed(int(seed))

    @classmethod
    def from_config(cls, cfg: object, seed: int | None = None, patch_size: int | None = None) -> Augment:
        """Build from an ``AugmentConfig`` (flip, rotate_degrees, scale and one ``{p, range}`` per op)."""
        ops: dict[str, RandomRange | None] = {}
        for name in INTENSITY_OPS:
            op = getattr(cfg, name)
            ops[name] = None if op is None else RandomRange(float(op.p), float(op.range[0]), float(op.range[1]))
        el = getattr(cfg, "elastic", None)
        return cls(
            flip=list(getattr(cfg, "flip")),
            elastic=None if el is None else RandomRange(float(el.p), float(el.range[0]), float(el.range[1])),
            rotate_degrees=float(getattr(cfg, "rotate_degrees")),
            scale=float(getattr(cfg, "scale")),
            patch_size=patch_size,
            seed=seed,
            **ops,
        )

    def _uniform(self, n: int, lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, generator=self.generator) * (hi - lo) + lo

    def _fires(self, n: int, p: float) -> torch.Tensor:
        return torch.rand(n, generator=self.generator) < p

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        single = image.dim() == 3
        img = image[None] if single else image
        msk = None if mask is None else (mask[None] if single else mask)
        b = img.shape[0]
        img = img.float()

        for axis in self.flip:
            dim = FLIP_AXES[axis]
            flip = self._fires(b, 0.5)
            if flip.any():
                img = img.clone()
                img[flip] = img[flip].flip(dim)
                if msk is not None:
                    msk = msk.clone()
                    msk[flip] = msk[flip].flip(dim)

        h, w = img.shape[-2:]
        ph, pw = h, w  # output size: the slice, or the patch
        top = left = None
        if self.patch_size is not None:
            ph, pw = self.patch_size, self.patch_size
            if ph > h or pw > w:
                raise ValueError(f"patch_size {self.patch_size} is larger than the {h} x {w} slice")
            top = torch.randint(0, h - ph + 1, (b,), generator=self.generator)
            left = torch.randint(0, w - pw + 1, (b,), generator=self.generator)

        if self.rotate_degrees > 0 or self.scale > 0 or self.elastic is not None:
            angle = self._uniform(b, -self.rotate_degrees, self.rotate_degrees) * (math.pi / 180.0)
            zoom = self._uniform(b, 1.0 - self.scale, 1.0 + self.scale)
            cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
            # theta maps output to input coordinates (normalised, align_corners=False): dividing by zoom
            # magnifies. For a patch, output offsets (p/2 pixels per unit) are rotated about the window's
            # centre (top + p/2 in continuous pixel coordinates) and the result expressed in input units.
            theta = torch.zeros(b, 2, 3)
            sx, sy = pw / w, ph / h
            theta[:, 0, 0], theta[:, 0, 1] = cos * sx, -sin * sy * (h / w)
            theta[:, 1, 0], theta[:, 1, 1] = sin * sx * (w / h), cos * sy
            if top is not None and left is not None:
                theta[:, 0, 2] = 2.0 * (left.float() + pw / 2.0) / w - 1.0
                theta[:, 1, 2] = 2.0 * (top.float() + ph / 2.0) / h - 1.0
            grid = F.affine_grid(theta, [b, img.shape[1], ph, pw], align_corners=False)
            if self.elastic is not None:  # drawn after the affine draws: streams without it are unchanged
                on = self._fires(b, self.elastic.p)
                pixels = torch.where(on, self._uniform(b, self.elastic.lo, self.elastic.hi), torch.zeros(b))
                grid = displace(grid, elastic_field(b, ph, pw, self.generator), pixels, h, w)
            img = F.grid_sample(img - FILL, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + FILL
            if msk is not None:
                m = F.grid_sample(msk[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
                msk = m[:, 0].round().to(msk.dtype)
        elif top is not None and left is not None:  # no resampling: cut the windows out exactly
            corners = list(enumerate(zip(top.tolist(), left.tolist(), strict=True)))
            img = torch.stack([img[i, :, t : t + ph, lf : lf + pw] for i, (t, lf) in corners])
            if msk is not None:
                msk = torch.stack([msk[i, t : t + ph, lf : lf + pw] for i, (t, lf) in corners])

        if self.intensity:
            img = self._intensity(img, msk)

        if single:
            return img[0], (None if msk is None else msk[0])
        return img, msk

    def _intensity(self, img: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The intensity ops on (B, C, H, W); slices no op fires on are left bit-identical."""
        b = img.shape[0]
        draws = {}
        for name, op in self.intensity.items():  # draw everything first: a fixed stream per call
            draws[name] = (self._fires(b, op.p), self._uniform(b, op.lo, op.hi))
        if mask is None:
            draws.pop("liver_contrast", None)  # needs the liver; drawn anyway so the stream stays fixed
        touched = torch.zeros(b, dtype=torch.bool)
        for on, _ in draws.values():
            touched |= on
        if not touched.any():
            return img
        idx = torch.nonzero(touched).flatten()
        u = ((img[idx] - FILL) / 2.0).clamp(0.0, 1.0)
        n, _, h, w = u.shape
        for name in INTENSITY_OPS:
            if name not in draws:
                continue
            on, value = draws[name][0][idx], draws[name][1][idx]
            if not on.any():
                continue
            v = value.view(n, 1, 1, 1)
            sel = on.view(n, 1, 1, 1)
            if name == "liver_contrast":
                assert mask is not None
                liver = gaussian_blur((mask[idx] == 1).to(u.dtype)[:, None], 1.0)  # (n, 1, H, W) in [0, 1]
                u = torch.where(sel, (u * (1.0 + (v - 1.0) * liver)).clamp(0.0, 1.0), u)
            elif name == "random_conv":
                u = random_conv(u, torch.where(on, value, torch.zeros_like(value)), self.generator)
            elif name == "blur":
                u = torch.stack([gaussian_blur(u[i : i + 1], float(value[i]))[0] if on[i] else u[i] for i in range(n)])
            elif name == "bias_field":
                field = bias_field(n, h, w, torch.where(on, value, torch.zeros_like(value)), self.generator)
                u = (u * field).clamp(0.0, 1.0)
            elif name == "brightness":
                u = torch.where(sel, (u * v).clamp(0.0, 1.0), u)
            elif name == "contrast":
                mean = u.mean(dim=(1, 2, 3), keepdim=True)
                lo, hi = u.amin(dim=(1, 2, 3), keepdim=True), u.amax(dim=(1, 2, 3), keepdim=True)
                u = torch.where(sel, torch.minimum(torch.maximum((u - mean) * v + mean, lo), hi), u)
            elif name == "gamma":
                u = torch.where(sel, u.pow(v), u)
            elif name == "noise":
                noise = torch.randn(u.shape, generator=self.generator) * (v / 2.0)  # image units -> u units
                u = torch.where(sel, (u + noise).clamp(0.0, 1.0), u)
        out = img.clone()
        out[idx] = u * 2.0 + FILL
        return out
