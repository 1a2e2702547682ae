"""Slice preprocessing: intensities to [-1, 1], axial slices, in-plane resizing or resampling (and back).

Intensities: CT is clipped to a HU window, MRI to per-volume percentiles,
both scaled to [-1, 1] (``normalise``). Slices are resized in-plane to
``size`` x ``size`` (image bilinear with antialiasing, label by majority
class under the same filter, so both keep their pixel centres;
``resize_slices``), or, with ``spacing_mm``, resampled to that pixel size and
centre-cropped / padded to ``size`` (``to_spacing``; ``from_spacing`` undoes
either). ``select_slices`` chooses which z indices are kept. The slice cache
(``cache.py``) stores the result of these functions: a change here that changes
their output needs ``cache.CACHE_VERSION`` bumped.

Slice orientation: the volume is canonical RAS+ (X, Y, Z) and slice ``z`` is
stored as ``vol[:, :, z]`` resized, so image rows (H) run along x (towards the
patient's right) and columns (W) along y (towards anterior).
``np.moveaxis(stack, 0, -1)`` of one case's slices is an (X, Y, Z) volume in
the canonical axes, and a slice resized back to (X, Y) drops straight into
the NIfTI volume. For display (anterior up, patient right on the left) use
``display_slice``.
"""

from __future__ import annotations

import numpy as np


def normalise(
    image: np.ndarray,
    modality: str,
    ct_window: tuple[float, float] = (-160.0, 240.0),
    mri_percentiles: tuple[float, float] = (0.5, 99.5),
) -> np.ndarray:
    """Intensities -> [-1, 1]: CT clipped to the HU window; MRI to per-volume percentiles."""
    img = np.asarray(image, dtype=np.float32)
    if modality == "ct":
        lo, hi = float(ct_window[0]), float(ct_window[1])
    else:
        lo, hi = (float(v) for v in np.percentile(img, [mri_percentiles[0], mri_percentiles[1]]))
    if hi <= lo:  # a constant volume: map it to the middle rather than divide by zero
        return np.zeros_like(img)
    out = (np.clip(img, lo, hi) - np.float32(lo)) * np.float32(2.0 / (hi - lo)) - np.float32(1.0)
    return out.astype(np.float32, copy=False)


def axial_slices(volume: np.ndarray, z: np.ndarray) -> np.ndarray:
    """(X, Y, Z) canonical volume -> (len(z), X, Y) axial slices (``vol[:, :, z]``)."""
    return np.ascontiguousarray(np.moveaxis(volume[:, :, z], -1, 0))


def display_slice(slice_xy: np.ndarray) -> np.ndarray:
    """A stored (X, Y) slice in radiological display orientation: anterior up, patient right on the left."""
    return np.ascontiguousarray(np.asarray(slice_xy)[::-1, ::-1].T)


def resize_slices(slices: np.ndarray, size: int | tuple[int, int], label: bool, clamp: bool = True) -> np.ndarray:
    """(n, H, W) -> (n, size, size) (or (n, h, w) for a pair): images bilinear (antialiased), labels by majority.

    A label is resampled like its image, one channel per class (the share of
    each class around the output pixel, by the same antialiased bilinear
    filter), and each pixel takes its majority class, so label and image stay
    on the same pixel centres. Nearest-neighbour picking does not: 256 -> 128
    with ``nearest-exact`` takes pixel 2i+1 of the pair {2i, 2i+1}, a shift of
    half an input pixel against the image in both axes, which a U-Net learns
    and repeats in every prediction mapped back to the native grid.
    """
    import torch
    import torch.nn.functional as F

    hw = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if slices.shape[1:] == hw:
        return np.ascontiguousarray(slices)
    downsampling = hw[0] < slices.shape[1] or hw[1] < slices.shape[2]
    if label:
        return _resize_label(slices, hw, downsampling)
    t = torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32))[:, None]
    out = F.interpolate(t, size=hw, mode="bilinear", align_corners=False, antialias=downsampling)
    return (out[:, 0].clamp_(-1.0, 1.0) if clamp else out[:, 0]).numpy()


def _resize_label(slices: np.ndarray, hw: tuple[int, int], downsampling: bool) -> np.ndarray:
    """Majority class per output pixel of each class's resampled share (``resize_slices``), uint8.

    Exact ties (a boundary pixel half liver, common at 2x downsampling) go to
    the foreground on the even squares of a checkerboard and to the lower
    class on the odd ones, so neither class grows at the other's expense.
    """
    import torch
    import torch.nn.functional as F

    labels = np.asarray(slices)
    classes = np.unique(labels)
    onehot = torch.from_numpy(np.stack([labels == c for c in classes], axis=1).astype(np.float32))
    share = F.interpolate(onehot, size=hw, mode="bilinear", align_corners=False, antialias=downsampling)
    ii, jj = np.indices(hw)
    dither = torch.from_numpy(np.where((ii + jj) % 2 == 0, 1e-4, -1e-4).astype(np.float32))
    share[:, 1:] += dither  # foreground classes only: class 0 (background) is the reference
    return classes[share.argmax(1).numpy()].astype(np.uint8)


def spacing_shape(shape_xy: tuple[int, int], spacing_xy: tuple[float, float], spacing_mm: float) -> tuple[int, int]:
    """In-plane pixels of a (X, Y) slice of pixel size ``spacing_xy`` mm resampled to ``spacing_mm``."""
    return (
        max(1, int(round(shape_xy[0] * float(spacing_xy[0]) / spacing_mm))),
        max(1, int(round(shape_xy[1] * float(spacing_xy[1]) / spacing_mm))),
    )


def centre_fit(slices: np.ndarray, hw: tuple[int, int], fill: float) -> np.ndarray:
    """(n, H, W) -> (n, h, w): centre crop where larger, pad with ``fill`` where smaller.

    The offset is ``(H - h) // 2`` for a crop and ``(h - H) // 2`` for a pad,
    so ``centre_fit(centre_fit(x, hw), x.shape[1:])`` puts every kept pixel back where it was.
    """
    n, H, W = slices.shape
    h, w = hw
    out = np.full((n, h, w), fill, dtype=slices.dtype)
    sy, dy = ((H - h) // 2, 0) if H >= h else (0, (h - H) // 2)
    sx, dx = ((W - w) // 2, 0) if W >= w else (0, (w - W) // 2)
    ch, cw = min(H, h), min(W, w)
    out[:, dy : dy + ch, dx : dx + cw] = slices[:, sy : sy + ch, sx : sx + cw]
    return out


def to_spacing(
    slices: np.ndarray, spacing_xy: tuple[float, float], spacing_mm: float, size: int, label: bool
) -> np.ndarray:
    """(n, X, Y) slices of pixel size ``spacing_xy`` -> (n, size, size) at ``spacing_mm`` mm per pixel.

    Resampled so one pixel is ``spacing_mm`` in both axes, then centre-cropped
    or padded (images with -1, the bottom of the intensity range; labels with 0),
    so an object has the same size in pixels whatever the scanner's grid.
    """
    hw = spacing_shape(slices.shape[1:], spacing_xy, spacing_mm)
    fill = 0 if label else -1.0
    return centre_fit(resize_slices(slices, hw, label), (size, size), fill)


def from_spacing(
    slices: np.ndarray,
    shape_xy: tuple[int, int],
    spacing_xy: tuple[float, float],
    spacing_mm: float | None,
    fill: float = -1.0,
) -> np.ndarray:
    """The inverse of ``to_spacing`` (or of the plain resize when ``spacing_mm`` is None), float output.

    (n, size, size) images or logits -> (n, X, Y) on the native grid; pixels that
    the crop cut off get ``fill``.
    """
    x = np.asarray(slices, dtype=np.float32)
    if spacing_mm is not None:
        x = centre_fit(x, spacing_shape(tuple(shape_xy), spacing_xy, spacing_mm), fill)
    return resize_slices(x, (int(shape_xy[0]), int(shape_xy[1])), label=False, clamp=False)


def select_slices(label: np.ndarray, empty_slice_fraction: float) -> np.ndarray:
    """z indices to keep: every slice with liver + an evenly spread share of the others.

    Evenly spread (not random) so the choice is deterministic and covers the
    whole volume; with fraction 1.0 every slice is kept, in z order.
    """
    has_liver = label.reshape(-1, label.shape[-1]).any(axis=0)
    liver = np.flatnonzero(has_liver)
    empty = np.flatnonzero(~has_liver)
    k = int(round(empty_slice_fraction * empty.size))
    chosen = empty[np.round(np.linspace(0, empty.size - 1, k)).astype(int)] if k > 0 else empty[:0]
    return np.sort(np.concatenate([liver, chosen])).astype(np.int64)
