"""The 2-D slice cache the training code reads.

``load_slices`` turns an nnU-Net folder into a ``SliceSet``: axial slices,
intensity-normalised to [-1, 1] (CT: a HU window; MRI: per-volume
percentiles), resized in-plane to ``size`` x ``size`` (image bilinear with
antialiasing, label by majority class under the same filter; or, with
``spacing_mm``, resampled to that pixel size and centre-cropped / padded to
``size``; the functions are in
``preprocess.py``), stored as memory-mappable ``.npy`` arrays under
``cache_dir/<key>/``. The key is the sha256 of the selected cases' content
hashes (from the manifest) and every preprocessing setting, so a changed
setting or file makes a new cache and an unchanged one is reused, by every
epoch and every trial, at memory speed.

Slice orientation (``preprocess.py``): image rows (H) run along x and columns
(W) along y of the canonical RAS+ volume, so ``np.moveaxis(stack, 0, -1)`` of
one case's slices is an (X, Y, Z) volume with voxel size ``spacing[case]``.

Concurrency: builds happen in a temporary folder renamed into place, under a
file lock per key, so parallel trials build a cache once and readers never
see a half-written one.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from liverlab.data import layout
from liverlab.data.atomic import sha256_json
from liverlab.data.manifest import assign_splits, ensure_manifest
from liverlab.data.nifti import load_volume
from liverlab.data.preprocess import (
    axial_slices,
    centre_fit,
    display_slice,
    from_spacing,
    normalise,
    resize_slices,
    select_slices,
    spacing_shape,
    to_spacing,
)
from liverlab.errors import LiverlabError

# The preprocessing functions are re-exported: callers written before they moved to
# liverlab.data.preprocess (liverlab/train/*) import them from here; new code imports preprocess.
__all__ = [
    "CACHE_VERSION", "META", "CaseStack", "SliceSet", "load_slices",
    "axial_slices", "centre_fit", "display_slice", "from_spacing", "normalise", "resize_slices",
    "select_slices", "spacing_shape", "to_spacing",
]

CACHE_VERSION = 3  # bump when preprocessing code changes what a key means (3: labels by majority, centred)
META = "meta.json"


@dataclass
class CaseStack:
    """The slices of one case in z order, as a 3-D stack.

    ``images``/``masks`` are (n, H, W) with H along x and W along y;
    ``spacing`` is (sx, sy, sz) mm, so ``image_volume()``/``mask_volume()``
    ((H, W, n) = (X, Y, Z) order) go straight into 3-D metrics with it.
    ``contiguous`` is False when liver-free slices were subsampled
    (``empty_slice_fraction`` < 1): such a stack has gaps in z.
    """

    case_id: str
    patient_id: str
    images: np.ndarray
    masks: np.ndarray
    slice_index: np.ndarray
    spacing: tuple[float, float, float]

    @property
    def contiguous(self) -> bool:
        return bool(np.all(np.diff(self.slice_index) == 1))

    def image_volume(self) -> np.ndarray:
        """(X, Y, n) float32 image volume (canonical axes)."""
        return np.moveaxis(self.images, 0, -1)

    def mask_volume(self) -> np.ndarray:
        """(X, Y, n) uint8 mask volume (canonical axes)."""
        return np.moveaxis(self.masks, 0, -1)


@dataclass
class SliceSet:
    """Preprocessed 2-D slices of some cases of one modality.

    ``images`` (N, H, W) float32 in [-1, 1] and ``masks`` (N, H, W) uint8 are
    read-only memmaps; ``case_ids``/``patient_ids`` name each slice's case and
    patient; ``slice_index`` is its z index in the canonical volume;
    ``spacing`` maps case id -> (sx, sy, sz) mm of the canonical volume axes
    *after* the in-plane resize (image rows H are x, columns W are y). Slices are
    grouped by case (sorted case ids) and in increasing z within a case.
    """

    images: np.ndarray
    masks: np.ndarray
    case_ids: list[str]
    patient_ids: list[str]
    slice_index: np.ndarray
    spacing: dict[str, tuple[float, float, float]]
    modality: str = ""
    key: str = ""
    path: Path | None = None
    build_id: str = ""
    spacing_mm: float | None = None  # data.spacing_mm the slices were resampled to (None: plain resize)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickle a cached set as its location, not its arrays: DataLoader
        # workers (spawn) and Ray tasks then re-open the memmaps instead of
        # copying every slice through a pipe.
        if self.path is not None and (self.path / META).is_file():
            return (_open, (self.path, self.key))
        return super().__reduce__()

    @property
    def cases(self) -> list[str]:
        """Case ids in slice order, each once."""
        return list(dict.fromkeys(self.case_ids))

    def case_indices(self, case_id: str) -> np.ndarray:
        """Indices (into this set) of the slices of ``case_id``, in z order."""
        idx = np.flatnonzero(np.asarray(self.case_ids) == case_id)
        if idx.size == 0:
            raise KeyError(case_id)
        return idx

    def case_stack(self, case_id: str) -> CaseStack:
        """The slices of one case as a (n, H, W) stack, for per-patient 3-D metrics."""
        idx = self.case_indices(case_id)
        return CaseStack(
            case_id=case_id,
            patient_id=self.patient_ids[int(idx[0])],
            images=np.asarray(self.images[idx]),
            masks=np.asarray(self.masks[idx]),
            slice_index=np.asarray(self.slice_index[idx]),
            spacing=self.spacing[case_id],
        )

    def by_case(self) -> dict[str, CaseStack]:
        """Every case as a ``CaseStack``, keyed by case id."""
        return {c: self.case_stack(c) for c in self.cases}


# ----------------------------------------------------------------------------- the cache


def _split_args(split_cfg: Any) -> tuple[float, float, int]:
    if hasattr(split_cfg, "val"):
        return float(split_cfg.val), float(split_cfg.test), int(split_cfg.seed)
    val, test, seed = split_cfg
    return float(val), float(test), int(seed)


def _build(
    root: Path, target: Path, rows: list[dict[str, Any]], modality: str, settings: dict[str, Any]
) -> None:
    """Preprocess ``rows`` into ``target`` (a fresh temp folder), one case at a time."""
    size = settings["size"]
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    case_ids: list[str] = []
    patient_ids: list[str] = []
    slice_index: list[np.ndarray] = []
    spacing: dict[str, list[float]] = {}
    for r in rows:
        vol = load_volume(root / r["image_path"], root / r["label_path"])
        assert vol.label is not None
        liver = (vol.label == 1).astype(np.uint8)
        z = select_slices(liver, settings["empty_slice_fraction"])
        if settings.get("organs"):  # every class of dataset.json (liver 1, other organs 2..), for unet.organs
            liver = np.rint(vol.label).astype(np.uint8)
        if modality == "ct":
            img = normalise(vol.image, "ct", ct_window=tuple(settings["ct_window"]))
        else:
            img = normalise(vol.image, "mri", mri_percentiles=tuple(settings["mri_percentiles"]))
        X, Y, _ = vol.shape
        sx, sy, sz = vol.spacing
        mm = settings.get("spacing_mm")
        if mm is None:
            parts.append(
                (resize_slices(axial_slices(img, z), size, False), resize_slices(axial_slices(liver, z), size, True))
            )
            spacing[r["case_id"]] = [sx * X / size, sy * Y / size, sz]
        else:  # one physical pixel size for every case and modality
            parts.append((
                to_spacing(axial_slices(img, z), (sx, sy), mm, size, False),
                to_spacing(axial_slices(liver, z), (sx, sy), mm, size, True),
            ))
            spacing[r["case_id"]] = [mm, mm, sz]
        case_ids += [r["case_id"]] * len(z)
        patient_ids += [r["patient_id"]] * len(z)
        slice_index.append(z)
    n = sum(p[0].shape[0] for p in parts)
    if n == 0:
        raise LiverlabError(f"{root}: no slices selected (no liver and empty_slice_fraction = 0)")
    images = np.lib.format.open_memmap(target / "images.npy", mode="w+", dtype=np.float32, shape=(n, size, size))
    masks = np.lib.format.open_memmap(target / "masks.npy", mode="w+", dtype=np.uint8, shape=(n, size, size))
    at = 0
    for im, mk in parts:
        images[at : at + len(im)] = im
        masks[at : at + len(im)] = mk
        at += len(im)
    images.flush()
    masks.flush()
    del images, masks
    np.save(target / "slice_index.npy", np.concatenate(slice_index))
    meta = {
        "settings": settings,
        "modality": modality,
        "source": str(root),
        "case_ids": case_ids,
        "patient_ids": patient_ids,
        "spacing": spacing,
        "build_id": uuid.uuid4().hex,
    }
    (target / META).write_text(json.dumps(meta))


def _open(path: Path, key: str) -> SliceSet:
    meta = json.loads((path / META).read_text())
    return SliceSet(
        images=np.load(path / "images.npy", mmap_mode="r"),
        masks=np.load(path / "masks.npy", mmap_mode="r"),
        case_ids=list(meta["case_ids"]),
        patient_ids=list(meta["patient_ids"]),
        slice_index=np.load(path / "slice_index.npy"),
        spacing={k: (float(v[0]), float(v[1]), float(v[2])) for k, v in meta["spacing"].items()},
        modality=meta["modality"],
        key=key,
        path=path,
        build_id=meta["build_id"],
        spacing_mm=meta["settings"].get("spacing_mm"),
    )


def load_slices(
    dataset_dir: str | Path,
    modality: str,
    *,
    size: int,
    ct_window: tuple[float, float] = (-160.0, 240.0),
    mri_percentiles: tuple[float, float] = (0.5, 99.5),
    empty_slice_fraction: float = 0.1,
    split: str | None = None,
    split_cfg: Any = (0.2, 0.2, 0),
    cache_dir: str | Path | None = None,
    cases: Sequence[str] | None = None,
    spacing_mm: float | None = None,
    organs: bool = False,
) -> SliceSet:
    """Preprocessed slices of ``dataset_dir`` (built once, then read from the cache).

    ``split`` is None (all cases) or ``train``/``val``/``test`` as computed by
    ``assign_splits`` with ``split_cfg`` = (val, test, seed) or a
    ``SplitConfig``; ``cases`` further restricts to the given case ids.
    ``cache_dir`` defaults to ``dataset_dir/.cache``. With
    ``empty_slice_fraction=1.0`` every slice of every case is kept in z order,
    so phantom CT and MRI sets of the same patients align slice for slice.
    ``spacing_mm`` resamples every slice to that in-plane pixel size before
    centre-cropping or padding it to ``size`` (``to_spacing``); None resizes
    the whole slice to ``size``. ``organs`` keeps every label of the dataset
    (liver 1, other organs 2..; ``unet.organs``) in the masks; by default
    they hold the liver alone.
    """
    from filelock import FileLock

    root = Path(dataset_dir).resolve()
    layout.check_modality(modality)
    if not 16 <= int(size) <= 1024:
        raise LiverlabError(f"size must be in 16..1024, got {size}")
    if not 0.0 <= empty_slice_fraction <= 1.0:
        raise LiverlabError(f"empty_slice_fraction must be in [0, 1], got {empty_slice_fraction}")
    df = ensure_manifest(root)
    have = df["modality"][0]
    if have != modality:
        raise LiverlabError(f"{root}: is a {have} dataset, but {modality} slices were asked for")
    if split is not None:
        if split not in ("train", "val", "test"):
            raise LiverlabError(f"split must be train, val, test or None, got {split!r}")
        df = assign_splits(df, *_split_args(split_cfg))
        df = df.filter(df["split"] == split)
    if cases is not None:
        unknown = sorted(set(cases) - set(df["case_id"].to_list()))
        if unknown:
            where = f" (split {split})" if split else ""
            raise LiverlabError(f"{root}: unknown case id(s){where}: {', '.join(unknown)}")
        df = df.filter(df["case_id"].is_in(list(cases)))
    if df.height == 0:
        raise LiverlabError(f"{root}: no cases selected (split={split}, split_cfg={_split_args(split_cfg)})")
    rows = sorted(df.iter_rows(named=True), key=lambda r: r["case_id"])
    settings = {
        "version": CACHE_VERSION,
        "modality": modality,
        "size": int(size),
        # Only the setting that applies to this modality enters the key.
        "ct_window": [float(v) for v in ct_window] if modality == "ct" else None,
        "mri_percentiles": [float(v) for v in mri_percentiles] if modality == "mri" else None,
        "empty_slice_fraction": float(empty_slice_fraction),
    }
    if spacing_mm is not None:  # only when set, so caches built without it keep their keys
        if not spacing_mm > 0:
            raise LiverlabError(f"spacing_mm must be > 0, got {spacing_mm}")
        settings["spacing_mm"] = float(spacing_mm)
    if organs:  # only when set, so liver-only caches keep their keys
        settings["organs"] = True
    sources = [[r["case_id"], r["patient_id"], r["image_sha256"], r["label_sha256"]] for r in rows]
    key = sha256_json({"settings": settings, "cases": sources})[:32]
    cdir = Path(cache_dir) if cache_dir is not None else root / ".cache"
    path = cdir / key
    if (path / META).is_file():
        return _open(path, key)
    cdir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cdir / f"{key}.lock")):
        if not (path / META).is_file():
            tmp = cdir / f".{key}.tmp-{uuid.uuid4().hex[:8]}"
            tmp.mkdir()
            try:
                _build(root, tmp, rows, modality, settings)
                os.rename(tmp, path)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return _open(path, key)
