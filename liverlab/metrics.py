"""Segmentation metrics (IoU, Dice, RAVD, ASSD, MSSD) and image metrics (SSIM, PSNR, MAE).

NumPy in, Python float out; nothing here imports torch, so evaluation code
can run without it. Masks are any array whose non-zero elements are the
foreground (2D slices or 3D volumes); distances are in millimetres, from the
voxel ``spacing`` given in the same axis order as the array.

Empty masks follow one explicit rule (tested in ``tests/test_metrics.py``):

=======================  =====  =====  =====  =====  =====
case                     iou    dice   ravd   assd   mssd
=======================  =====  =====  =====  =====  =====
both empty               1      1      0      0      0
label empty, pred not    0      0      inf    inf    inf
pred empty, label not    0      0      100    inf    inf
=======================  =====  =====  =====  =====  =====

Both empty is a perfect answer (nothing to find, nothing found). A surface
distance to a mask that has no surface is unbounded, hence ``inf``, never a
silent 0 or NaN: aggregations over cases then show that a case failed
(``mean`` becomes inf; use a median, or count the infinite cases). RAVD is
100 % when the prediction misses all of a non-empty label and inf when the
label is empty, as a relative error against a zero volume is.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "iou",
    "dice",
    "ravd",
    "assd",
    "mssd",
    "surface_distances",
    "segmentation_metrics",
    "ssim",
    "psnr",
    "mae",
]


# ----------------------------------------------------------------------------- segmentation


def _masks(pred: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, lab = np.asarray(pred), np.asarray(label)
    if p.shape != lab.shape:
        raise ValueError(f"pred {p.shape} and label {lab.shape} differ in shape")
    if p.ndim == 0:
        raise ValueError("pred and label must be arrays with at least one dimension")
    return p != 0, lab != 0


def iou(pred: np.ndarray, label: np.ndarray) -> float:
    """Intersection over union (Jaccard) ``|P & L| / |P | L|``; 1.0 when both are empty."""
    p, lab = _masks(pred, label)
    union = np.count_nonzero(p | lab)
    if union == 0:
        return 1.0
    return np.count_nonzero(p & lab) / union


def dice(pred: np.ndarray, label: np.ndarray) -> float:
    """Dice ``2 |P & L| / (|P| + |L|)``; 1.0 when both are empty."""
    p, lab = _masks(pred, label)
    total = np.count_nonzero(p) + np.count_nonzero(lab)
    if total == 0:
        return 1.0
    return 2.0 * np.count_nonzero(p & lab) / total


def ravd(pred: np.ndarray, label: np.ndarray) -> float:
    """Relative absolute volume difference in percent: ``100 * |V_p - V_l| / V_l``.

    Volumes are voxel counts (the spacing cancels in the ratio). Both empty:
    0; label empty and prediction not: inf.
    """
    p, lab = _masks(pred, label)
    vp, vl = np.count_nonzero(p), np.count_nonzero(lab)
    if vl == 0:
        return 0.0 if vp == 0 else float("inf")
    return 100.0 * abs(vp - vl) / vl


def _spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    sp = tuple(float(s) for s in spacing)
    if len(sp) != ndim:
        raise ValueError(f"spacing {tuple(spacing)} must have one value per mask axis ({ndim})")
    if not all(np.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing values must be finite and > 0, got {tuple(spacing)}")
    return sp


def _surface(mask: np.ndarray) -> np.ndarray:
    # Face connectivity (6-neighbourhood in 3D, 4 in 2D): a voxel is on the surface when
    # one of its face neighbours is background. This is the medpy / CHAOS-evaluation
    # convention; full connectivity would also count voxels touching the background only
    # by an edge or corner, i.e. a thicker surface. Outside the array counts as
    # background (border_value=0), so a mask touching the array edge has a surface there.
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def surface_distances(
    pred: np.ndarray, label: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Distances in mm from each surface voxel of one mask to the other mask's surface.

    Returns ``(pred_to_label, label_to_pred)``. The surface of a mask is the
    mask minus its binary erosion with face connectivity (see ``_surface``);
    distances are Euclidean between voxel centres, from
    ``scipy.ndimage.distance_transform_edt(..., sampling=spacing)``.
    Both masks must be non-empty.
    """
    p, lab = _masks(pred, label)
    sp = _spacing(spacing, p.ndim)
    if not p.any() or not lab.any():
        raise ValueError("surface_distances needs two non-empty masks")
    surf_p, surf_l = _surface(p), _surface(lab)
    # edt gives each element's distance to the nearest zero: zeros placed on the other surface.
    to_label = ndimage.distance_transform_edt(~surf_l, sampling=sp)
    to_pred = ndimage.distance_transform_edt(~surf_p, sampling=sp)
    return to_label[surf_p], to_pred[surf_l]


def _empty_distance(p: np.ndarray, lab: np.ndarray) -> float | None:
    has_p, has_l = bool(p.any()), bool(lab.any())
    if not has_p and not has_l:
        return 0.0
    if has_p != has_l:
        return float("inf")
    return None


def assd(pred: np.ndarray, label: np.ndarray, spacing: Sequence[float]) -> float:
    """Average symmetric surface distance in mm.

    The mean over the pooled distances of both surfaces,
    ``(sum_{s in S_P} d(s, S_L) + sum_{s in S_L} d(s, S_P)) / (|S_P| + |S_L|)``
    (Heimann et al. 2009; CHAOS). medpy's ``assd`` instead averages the two
    directed means; the two agree when both surfaces have the same voxel count.
    Both empty: 0; exactly one empty: inf.
    """
    p, lab = _masks(pred, label)
    _spacing(spacing, p.ndim)
    special = _empty_distance(p, lab)
    if special is not None:
        return special
    a, b = surface_distances(p, lab, spacing)
    return float((a.sum() + b.sum()) / (a.size + b.size))


def mssd(pred: np.ndarray, label: np.ndarray, spacing: Sequence[float]) -> float:
    """Maximum symmetric surface distance (symmetric Hausdorff distance of the surfaces) in mm.

    Both empty: 0; exactly one empty: inf.
    """
    p, lab = _masks(pred, label)
    _spacing(spacing, p.ndim)
    special = _empty_distance(p, lab)
    if special is not None:
        return special
    a, b = surface_distances(p, lab, spacing)
    return float(max(a.max(), b.max()))


def segmentation_metrics(pred: np.ndarray, label: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """All five segmentation metrics: keys ``iou``, ``dice``, ``ravd``, ``assd``, ``mssd``.

    Computes the surface distances once for both ASSD and MSSD.
    """
    p, lab = _masks(pred, label)
    _spacing(spacing, p.ndim)
    out = {"iou": float(iou(p, lab)), "dice": float(dice(p, lab)), "ravd": float(ravd(p, lab))}
    special = _empty_distance(p, lab)
    if special is not None:
        out["assd"] = out["mssd"] = special
    else:
        a, b = surface_distances(p, lab, spacing)
        out["assd"] = float((a.sum() + b.sum()) / (a.size + b.size))
        out["mssd"] = float(max(a.max(), b.max()))
    return out


# ----------------------------------------------------------------------------- images

_SSIM_SIGMA = 1.5
_SSIM_TRUNCATE = 3.5  # radius int(3.5 * 1.5 + 0.5) = 5: the 11 x 11 window, as skimage
_SSIM_WIN = 11
_SSIM_K1, _SSIM_K2 = 0.01, 0.03


def _images(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"x {a.shape} and y {b.shape} differ in shape")
    if a.size == 0:
        raise ValueError("x and y are empty")
    return a, b


def _check_range(data_range: float) -> float:
    if not (np.isfinite(data_range) and data_range > 0):
        raise ValueError(f"data_range must be finite and > 0, got {data_range!r}")
    return float(data_range)


def _ssim_2d(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
    def blur(img: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(img, sigma=_SSIM_SIGMA, truncate=_SSIM_TRUNCATE, mode="reflect")

    ux, uy = blur(x), blur(y)
    # Population (not sample) covariances: skimage's choice with gaussian_weights=True.
    vx = blur(x * x) - ux * ux
    vy = blur(y * y) - uy * uy
    vxy = blur(x * y) - ux * uy
    c1 = (_SSIM_K1 * data_range) ** 2
    c2 = (_SSIM_K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    # Average only where the whole window lies inside the image (skimage crops (win-1)/2 per side),
    # so the padding mode never influences the result.
    pad = (_SSIM_WIN - 1) // 2
    return float(s[pad:-pad, pad:-pad].mean())


def ssim(x: np.ndarray, y: np.ndarray, data_range: float = 2.0) -> float:
    """Structural similarity (Wang et al. 2004), matching ``skimage.metrics.structural_similarity``
    with ``gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=data_range``.

    Gaussian window sigma 1.5 truncated to 11 x 11, K1 = 0.01, K2 = 0.03,
    mean of the SSIM map over pixels whose window lies fully inside the image.

    Args:
        x, y: (H, W) images, or (N, H, W) batches (the mean of per-image SSIMs);
            H and W must be >= 11.
        data_range: max - min of the intensity scale (2.0 for images in [-1, 1]).
    """
    a, b = _images(x, y)
    r = _check_range(data_range)
    if a.ndim not in (2, 3):
        raise ValueError(f"ssim expects (H, W) or (N, H, W) arrays, got shape {a.shape}")
    if min(a.shape[-2:]) < _SSIM_WIN:
        raise ValueError(f"ssim needs H and W >= {_SSIM_WIN}, got shape {a.shape}")
    if a.ndim == 2:
        return _ssim_2d(a, b, r)
    return float(np.mean([_ssim_2d(ai, bi, r) for ai, bi in zip(a, b)]))


def psnr(x: np.ndarray, y: np.ndarray, data_range: float = 2.0) -> float:
    """Peak signal-to-noise ratio ``10 log10(data_range^2 / MSE)`` in dB; inf when x == y.

    Over all elements together (a batch gives the PSNR of its pooled MSE).
    """
    a, b = _images(x, y)
    r = _check_range(data_range)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(r * r / mse))


def mae(x: np.ndarray, y: np.ndarray) -> float:
    """Mean absolute error over all elements."""
    a, b = _images(x, y)
    return float(np.mean(np.abs(a - b)))
