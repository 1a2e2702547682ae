"""Helpers and fixtures shared by the data-layer tests (this module holds no tests).

Other ``test_data_*`` modules import from it (pytest puts ``tests/`` on the
path); it is named ``test_data_*`` only to stay within the data layer's files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from liverlab.data.nifti import save_volume

AFFINE = np.diag([1.5, 1.5, 4.0, 1.0])


def write_pair(
    folder: Path,
    name: str = "1",
    shape: tuple[int, int, int] = (12, 10, 6),
    label_shape: tuple[int, int, int] | None = None,
    label_affine: np.ndarray | None = None,
    liver_value: int = 1,
    liver: bool = True,
    image_value: float | None = None,
) -> tuple[Path, Path]:
    """Write ``image_<name>.nii.gz`` / ``label_<name>.nii.gz`` into ``folder``.

    The label holds the liver (``liver_value``) in a block and another organ
    (value 7) elsewhere; ``image_value`` plants one special voxel (NaN, inf).
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    image = rng.normal(100, 10, size=shape).astype(np.float32)
    if image_value is not None:
        image.flat[3] = image_value
    label = np.zeros(label_shape or shape, dtype=np.uint8)
    if liver:
        label[2:6, 2:6, 1:4] = liver_value
    label[8:10, 1:3, 1:3] = 7
    img_path = save_volume(folder / f"image_{name}.nii.gz", image, AFFINE)
    lab_path = save_volume(folder / f"label_{name}.nii.gz", label, AFFINE if label_affine is None else label_affine)
    return img_path, lab_path


def tiny_phantoms(root: Path, patients: int = 3, size: int = 32, slices: int = 8, seed: int = 0) -> Path:
    """Generate tiny phantoms into ``root`` (the session fixtures call this once)."""
    from liverlab.data.phantoms import generate_phantoms

    return generate_phantoms(root, patients=patients, size=size, slices=slices, seed=seed, progress=False)
