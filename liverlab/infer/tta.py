"""Test-time augmentation (``unet.tta``): mean class probabilities over rotated and zoomed copies.

Every slice is predicted as it is and as copies rotated by -r and +r degrees
and zoomed by 1-s and 1+s about its centre (the grid {-r, 0, r} x {1-s, 1,
1+s}, 9 passes with both set). Each copy's softmax probabilities are warped
back by the inverse transform onto the slice's own pixels and averaged. A
zoomed-in copy sees only the middle of the slice, so each pixel averages only
the copies whose view covered it (a coverage weight warped back alongside the
probabilities); the untransformed copy covers every pixel. Keep the copies
within the training augmentation's range (``unet.augment.rotate_degrees`` and
``scale``), where the U-Net has seen such views (not enforced); mirroring, nnU-Net's default,
is not used because liverlab's recipes train without flips (the liver is on
one side).

Geometry: ``affine_grid`` with ``align_corners=False`` maps an output pixel
to the input location ``A @ p`` in normalised coordinates; the copy uses
``A`` and the way back its inverse, so an identity transform returns the
probabilities unchanged. A copy continues the slice's edge pixels (air,
-1, on the scans; no artificial edge is made), the way back pads the
probabilities and the coverage with 0, so a pixel's mean is the
coverage-weighted mean of the copies that saw it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from liverlab.train import common

__all__ = ["transforms", "tta_probs"]


def transforms(rotate_degrees: float, scale: float) -> list[torch.Tensor]:
    """(2, 3) affine matrices of the copies: identity first, then the rest of {-r, 0, r} x {1-s, 1, 1+s}."""
    angles = (0.0, -rotate_degrees, rotate_degrees) if rotate_degrees > 0 else (0.0,)
    zooms = (1.0, 1.0 - scale, 1.0 + scale) if scale > 0 else (1.0,)
    out = []
    for deg in angles:
        for zoom in zooms:
            a = math.radians(deg)
            # sampling at A p with A = R(a) / zoom: zoom > 1 magnifies, a rotates the content by -a
            c, s = math.cos(a) / zoom, math.sin(a) / zoom
            out.append(torch.tensor([[c, -s, 0.0], [s, c, 0.0]], dtype=torch.float32))
    return out


def _inverse(theta: torch.Tensor) -> torch.Tensor:
    full = torch.eye(3, dtype=theta.dtype)
    full[:2] = theta
    return torch.linalg.inv(full)[:2]


def _warp(x: torch.Tensor, theta: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    grid = F.affine_grid(theta.to(x.device).expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)


@torch.no_grad()
def tta_probs(
    model: torch.nn.Module, x: torch.Tensor, device: torch.device, precision: str, thetas: list[torch.Tensor]
) -> torch.Tensor:
    """(B, K, H, W) mean softmax of the copies of the batch ``x`` (B, C, H, W in [-1, 1]), on x's own pixels."""
    total = torch.zeros(())
    weight = torch.zeros(())
    for theta in thetas:
        identity = torch.equal(theta, torch.eye(2, 3))
        view = x if identity else _warp(x, theta, "border")  # the slice's edge (air) continued, no new edge
        with common.autocast(device, precision):
            probs = torch.softmax(model(view).float(), dim=1)
        if identity:
            back, cover = probs, torch.ones_like(probs[:, :1])
        else:
            inv = _inverse(theta)
            back = _warp(probs, inv)  # zero padding: already weighted by the share of the copy's view
            cover = _warp(torch.ones_like(probs[:, :1]), inv)  # that share
        total = total + back
        weight = weight + cover
    return total / weight.clamp_min(1e-6)
