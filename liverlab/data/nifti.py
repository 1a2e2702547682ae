"""NIfTI volume I/O: one canonical orientation, validated, atomic writes.

Every volume is reoriented on load to the closest canonical orientation, RAS+
(``nibabel.as_closest_canonical``): array axis 0 runs towards the patient's
Right, axis 1 towards Anterior, axis 2 towards Superior. Code downstream can
therefore rely on ``volume.image[:, :, z]`` being an axial slice whatever the
file's own orientation (CHAOS MR is L,A,S; TotalSegmentator MR is L,P,S).

This module (and the rest of ``liverlab.data``) is the only place that imports
nibabel.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from liverlab.data.atomic import atomic_path
from liverlab.errors import LiverlabError

#: Image and label affines may differ by this much (mm) and still count as equal;
#: float32 headers round affines at about 1e-5 relative.
AFFINE_ATOL = 1e-3


@dataclass
class Volume:
    """One case, canonical (RAS+) orientation.

    ``image`` is float32 (X, Y, Z); ``label`` uint8 (X, Y, Z) or None;
    ``spacing`` is (sx, sy, sz) in mm along the array axes; ``affine`` maps
    voxel indices of the *canonical* arrays to RAS+ world mm.
    """

    image: np.ndarray
    label: np.ndarray | None
    spacing: tuple[float, float, float]
    affine: np.ndarray
    image_path: Path
    label_path: Path | None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.image.shape)  # type: ignore[return-value]


def spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along each array axis: the norms of the affine's columns."""
    norms = np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))
    return (float(norms[0]), float(norms[1]), float(norms[2]))


def orientation_codes(affine: np.ndarray) -> str:
    """Axis codes of an affine, e.g. ``'RAS'`` or ``'LPS'``."""
    return "".join(str(c) for c in nib.aff2axcodes(affine))


def _open(path: Path) -> nib.Nifti1Image:
    """``nib.load`` with every failure turned into a one-line LiverlabError."""
    if not path.is_file():
        raise LiverlabError(f"{path}: no such file")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for bad headers
        raise LiverlabError(f"{path}: not a readable NIfTI file ({_reason(exc)})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise LiverlabError(f"{path}: not a NIfTI image (got {type(img).__name__})")
    return img


def file_orientation(path: str | Path) -> str:
    """Orientation codes of a file as stored (header only, no voxel data read)."""
    return orientation_codes(_open(Path(path)).affine)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _squeeze3d(img: nib.Nifti1Image, path: Path) -> nib.Nifti1Image:
    """Accept (X, Y, Z) and (X, Y, Z, 1); anything else is not a volume we handle."""
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        return img.slicer[..., 0]
    if len(shape) != 3:
        raise LiverlabError(f"{path}: expected a 3-D volume, got shape {tuple(shape)}")
    return img


def _read(img: nib.Nifti1Image, path: Path) -> np.ndarray:
    """Voxel data as float32, with truncated/corrupt data reported against the file."""
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as exc:  # EOFError, zlib.error, OSError, ValueError ...
        raise LiverlabError(f"{path}: corrupt or truncated NIfTI data ({_reason(exc)})") from None
    finite = np.isfinite(data)
    if not finite.all():
        bad = int(data.size - np.count_nonzero(finite))
        raise LiverlabError(f"{path}: {bad} voxel(s) are NaN or infinite")
    return data


def _to_label(data: np.ndarray, path: Path) -> np.ndarray:
    """Float label data -> uint8, refusing non-integer or out-of-range values."""
    rounded = np.rint(data)
    if not np.allclose(rounded, data, atol=1e-3):
        raise LiverlabError(
            f"{path}: label values must be integers (found e.g. {float(data[rounded != data].flat[0])})"
        )
    lo, hi = float(rounded.min(initial=0)), float(rounded.max(initial=0))
    if lo < 0 or hi > 255:
        raise LiverlabError(f"{path}: label values must lie in 0..255 (found {lo:g}..{hi:g})")
    return rounded.astype(np.uint8)


def load_volume(image_path: str | Path, label_path: str | Path | None = None) -> Volume:
    """Load an image (and optionally its label) in canonical RAS+ orientation.

    Raises ``LiverlabError`` (naming the file) for a missing, corrupt or
    truncated file, NaN/inf voxels, a label with non-integer values, and
    (naming both files) an image/label pair whose shape or affine differ.
    Labels are returned as stored (uint8, all values); keeping only the liver
    is the importers' job.
    """
    ipath = Path(image_path)
    img = _squeeze3d(_open(ipath), ipath)
    lab_img = None
    lpath = Path(label_path) if label_path is not None else None
    if lpath is not None:
        lab_img = _squeeze3d(_open(lpath), lpath)
        if tuple(lab_img.shape) != tuple(img.shape):
            raise LiverlabError(
                f"{lpath}: label shape {tuple(lab_img.shape)} differs from image {ipath} shape {tuple(img.shape)}"
            )
        if not np.allclose(lab_img.affine, img.affine, atol=AFFINE_ATOL):
            diff = float(np.abs(np.asarray(lab_img.affine) - np.asarray(img.affine)).max())
            raise LiverlabError(
                f"{lpath}: label affine differs from image {ipath} affine (max difference {diff:.4g})"
            )
    canon = nib.as_closest_canonical(img)
    image = _read(canon, ipath)
    label = None
    if lab_img is not None and lpath is not None:
        # Reorient the label with the *image's* transform: the affines agree
        # within tolerance, so both map to the same canonical axes.
        label = _to_label(_read(nib.as_closest_canonical(lab_img), lpath), lpath)
    affine = np.asarray(canon.affine, dtype=np.float64)
    return Volume(
        image=image,
        label=label,
        spacing=spacing_from_affine(affine),
        affine=affine,
        image_path=ipath,
        label_path=lpath,
    )


def compact_dtype(array: np.ndarray) -> np.dtype:
    """The smallest faithful on-disk dtype: int16 for integer-valued data in range, else float32.

    CT in HU and most MR data are integers; storing them as int16 halves the
    files and the gzip time against float32 without losing anything.
    """
    if array.dtype == np.uint8:
        return np.dtype(np.uint8)
    if array.size and np.issubdtype(array.dtype, np.number):
        lo, hi = float(array.min()), float(array.max())
        if -32768 <= lo and hi <= 32767 and np.array_equal(array, np.rint(array)):
            return np.dtype(np.int16)
    return np.dtype(np.float32)


def save_volume(path: str | Path, array: np.ndarray, affine: np.ndarray, dtype: np.dtype | str | None = None) -> Path:
    """Write ``array`` with ``affine`` to ``path`` (``.nii.gz``) atomically.

    ``dtype`` defaults to the array's own dtype (bool is stored as uint8).
    Written under a temporary name in the same folder, then ``os.replace``-d.
    """
    final = Path(path)
    arr = np.asarray(array)
    if arr.ndim != 3:
        raise ValueError(f"save_volume expects a 3-D array, got shape {arr.shape}")
    out_dtype = np.dtype(dtype) if dtype is not None else (np.dtype(np.uint8) if arr.dtype == bool else arr.dtype)
    aff = np.asarray(affine, dtype=np.float64)
    img = nib.Nifti1Image(arr.astype(out_dtype, copy=False), aff)
    img.header.set_data_dtype(out_dtype)
    # Scanner-anatomical codes for both forms, so every reader agrees on the affine.
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    suffix = ".nii.gz" if final.name.endswith(".gz") else ".nii"
    with atomic_path(final, suffix=suffix) as tmp:
        nib.save(img, str(tmp))
    return final


def save_like(path: str | Path, array: np.ndarray, volume: Volume, dtype: np.dtype | str | None = None) -> Path:
    """Write a canonical (RAS+) ``array`` in the array order and affine of ``volume``'s image file.

    ``load_volume`` reorients everything to RAS+; a predicted mask written
    back with this function has the same voxel order, shape and affine as the
    image it was predicted from (as nnU-Net writes its predictions), so it can
    be compared with the case's label array as stored, voxel by voxel.
    """
    source = _squeeze3d(_open(volume.image_path), volume.image_path)
    arr = np.asarray(array)
    if arr.shape != tuple(source.shape):
        raise ValueError(
            f"save_like: array shape {arr.shape} differs from {volume.image_path} shape {tuple(source.shape)}"
        )
    ras = nib.orientations.io_orientation(np.asarray(volume.affine))
    back = nib.orientations.ornt_transform(ras, nib.orientations.io_orientation(source.affine))
    return save_volume(path, nib.orientations.apply_orientation(arr, back), source.affine, dtype)
