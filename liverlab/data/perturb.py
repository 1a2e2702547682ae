"""Raw MR intensities as another scanner or protocol might record them: robustness checks.

Each perturbation acts on the *raw* volume, before liverlab's percentile
normalisation, so it tests what the preprocessing and the augmentation
together leave of a scanner difference (``tests/test_robustness.py`` on a tiny
model, ``benchmarks/bench_robustness.py`` on cross-validated recipe models):

- ``gamma<g>`` (e.g. ``gamma0.6``, ``gamma1.6``): ``M * (max(x, 0) / M) ** g``
  with ``M`` the volume's maximum: a monotone contrast change that keeps 0 and
  ``M`` fixed; ``g < 1`` brightens mid-tones, ``g > 1`` darkens them.
- ``bias``: a smooth positive multiplicative field, ``exp(0.3 x - 0.2 y^2)``
  over x, y in [-1, 1] across the slice (0.6 to 1.35), the same in every slice.
- ``clean``: the volume unchanged.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PERTURBATIONS", "check_perturbation", "perturb"]

PERTURBATIONS: tuple[str, ...] = ("gamma0.6", "gamma1.6", "bias")


def check_perturbation(name: str) -> None:
    """Raise ``ValueError`` naming ``name`` unless it is ``clean``, ``bias`` or ``gamma<g>`` with a finite g > 0."""
    if name in ("clean", "bias"):
        return
    if name.startswith("gamma"):
        try:
            g = float(name.removeprefix("gamma"))
        except ValueError:
            g = float("nan")
        if 0 < g < float("inf"):
            return
    raise ValueError(f"unknown perturbation {name!r}: expected clean, bias or gamma<g> with g > 0 (e.g. gamma0.6)")


def perturb(name: str, raw: np.ndarray) -> np.ndarray:
    """A raw MR volume (X, Y, Z) as another scanner might record it (float32; ``clean`` returns ``raw``)."""
    check_perturbation(name)
    if name == "clean":
        return raw
    if name.startswith("gamma"):
        g, m = float(name.removeprefix("gamma")), float(raw.max())
        return (m * (np.clip(raw, 0.0, None) / m) ** g).astype(np.float32)
    x = np.linspace(-1.0, 1.0, raw.shape[0])[:, None, None]
    y = np.linspace(-1.0, 1.0, raw.shape[1])[None, :, None]
    return (raw * np.exp(0.3 * x - 0.2 * y**2)).astype(np.float32)
