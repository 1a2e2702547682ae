"""Post-processing of predicted liver masks: 3D largest component, per-slice hole filling.

The liver is one connected organ without holes, so a U-Net's stray islands
(spleen, stomach wall, a bright vessel) and pin-holes (a vessel inside the
liver) are errors that simple morphology removes. Both operations are
applied, when enabled by ``unet.postprocess``, to every mask a metric is
reported on (validation, test, ``liverlab evaluate --checkpoint`` and the
masks it writes); they never touch labels.

Rules (tested with known answers in ``tests/test_postprocess.py``):

- **Largest connected component** in 3D with **26-connectivity** (full
  connectivity: voxels touching by a face, an edge or a corner belong to one
  component; the convention of nnU-Net's post-processing). Thick MRI slices
  make a liver's cross-sections shift between neighbouring slices, and
  26-connectivity keeps such diagonally touching parts together. Ties between
  equally large components keep the one whose first voxel comes first in
  C (row-major) order of the array, i.e. the lowest ``scipy.ndimage.label``
  index, so the answer is deterministic.
- **Hole filling** per axial slice (``mask[..., z]``, the last axis of a
  canonical (X, Y, Z) volume) with ``scipy.ndimage.binary_fill_holes``: a
  background pixel becomes foreground when it cannot reach the slice border
  through 4-connected background. Per slice, not in 3D, because a hole open
  at the top or bottom slice of the liver would never be closed in 3D.
- Largest component first, then hole filling (filling cannot create a new
  component). An empty mask stays empty. 2D input is one slice.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
from scipy import ndimage

__all__ = ["PostprocessSettings", "largest_component", "fill_holes_per_slice", "postprocess_mask", "apply"]


class PostprocessSettings(Protocol):
    """What ``apply`` reads: ``liverlab.config.PostprocessConfig`` has these fields."""

    largest_component: bool
    fill_holes: bool


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Boolean mask of the largest 26-connected (full connectivity) component of ``mask``.

    Ties keep the lowest label index (first component met in C order).
    """
    m = np.asarray(mask) != 0
    if not m.any():
        return m
    structure = ndimage.generate_binary_structure(m.ndim, m.ndim)
    labels, n = ndimage.label(m, structure=structure)
    if n == 1:
        return m
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    return labels == int(np.argmax(sizes))  # argmax: first (lowest index) among ties


_largest = largest_component  # postprocess_mask's keyword argument shadows the name


def fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    """Boolean mask with the holes of every slice ``mask[..., z]`` filled (2D: the one slice)."""
    m = np.asarray(mask) != 0
    if m.ndim == 2:
        return ndimage.binary_fill_holes(m)
    if m.ndim != 3:
        raise ValueError(f"fill_holes_per_slice expects a 2-D or 3-D mask, got shape {m.shape}")
    out = m.copy()
    for z in np.flatnonzero(m.reshape(-1, m.shape[-1]).any(axis=0)):
        out[..., z] = ndimage.binary_fill_holes(m[..., z])
    return out


def postprocess_mask(mask: np.ndarray, largest_component: bool = True, fill_holes: bool = True) -> np.ndarray:
    """``mask`` after the enabled steps, as uint8 0/1 of the same shape."""
    m = np.asarray(mask) != 0
    if largest_component:
        m = _largest(m)
    if fill_holes:
        m = fill_holes_per_slice(m)
    return m.astype(np.uint8)



def apply(mask: np.ndarray, settings: Any | None) -> np.ndarray:
    """``postprocess_mask`` with a ``PostprocessConfig`` (None: no post-processing)."""
    if settings is None:
        return (np.asarray(mask) != 0).astype(np.uint8)
    return postprocess_mask(mask, bool(settings.largest_component), bool(settings.fill_holes))
