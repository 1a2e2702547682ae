"""Segmentation evaluation: predict slices, regroup by case, CHAOS metrics in mm.

Used by U-Net validation (per-patient 3D IoU/Dice each epoch), by the final
test evaluation (the per-patient table) and by ``liverlab evaluate``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from liverlab.data.atomic import write_with
from liverlab.errors import LiverlabError
from liverlab.train import common

METRICS = ("iou", "dice", "ravd", "assd", "mssd")


@torch.no_grad()
def predict_slices(
    model: torch.nn.Module, images: np.ndarray, device: torch.device, precision: str = "fp32", batch_size: int = 16
) -> np.ndarray:
    """Argmax masks (N, H, W) uint8 for images (N, H, W) in [-1, 1]."""
    was_training = model.training
    model.eval()
    out = np.empty(images.shape, dtype=np.uint8)
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(np.array(images[i : i + batch_size], dtype=np.float32))[:, None].to(device)
        with common.autocast(device, precision):
            logits = model(x)
        out[i : i + batch_size] = logits.float().argmax(1).cpu().numpy().astype(np.uint8)
    model.train(was_training)
    return out


def group_by_case(slice_set: Any, arrays: np.ndarray) -> dict[str, np.ndarray]:
    """Stack slices of each case back into a (X, Y, Z) volume in slice order."""
    case_ids = np.asarray(list(slice_set.case_ids))
    z = np.asarray(slice_set.slice_index)
    out = {}
    for case in dict.fromkeys(case_ids.tolist()):
        idx = np.flatnonzero(case_ids == case)
        idx = idx[np.argsort(z[idx])]
        out[case] = np.moveaxis(np.asarray(arrays[idx]), 0, -1)
    return out


def case_metrics(slice_set: Any, preds: np.ndarray, which: tuple[str, ...] = METRICS) -> list[dict[str, Any]]:
    """One row per case: patient id and the CHAOS metrics computed in 3D with spacing."""
    from liverlab.metrics import segmentation_metrics

    pred_vols = group_by_case(slice_set, preds)
    label_vols = group_by_case(slice_set, slice_set.masks)
    patients = dict(zip(slice_set.case_ids, slice_set.patient_ids))
    rows = []
    for case, pred in pred_vols.items():
        spacing = tuple(slice_set.spacing[case])
        m = segmentation_metrics(pred > 0, label_vols[case] > 0, spacing)
        rows.append({"case_id": case, "patient_id": patients[case], **{k: float(m[k]) for k in which}})
    return rows


def mean_metrics(rows: list[dict[str, Any]], prefix: str, which: tuple[str, ...] = METRICS) -> dict[str, float]:
    return {f"{prefix}/{k}": float(np.mean([r[k] for r in rows])) for k in which if rows}


def write_table(rows: list[dict[str, Any]], path: Path) -> Path:
    """The per-patient table as Parquet, written atomically."""
    import polars as pl

    write_with(path, lambda tmp: pl.DataFrame(rows).write_parquet(tmp), suffix=".parquet")
    return path


# ----------------------------------------------------------------------------- NIfTI files


def _pairs(pred: Path, label: Path) -> list[tuple[str, Path, Path]]:
    if pred.is_file() and label.is_file():
        return [(pred.name.split(".")[0], pred, label)]
    if pred.is_dir() and label.is_dir():

        def index(d: Path) -> dict[str, Path]:
            out = {}
            for f in sorted(d.glob("*.nii*")):
                case = f.name.split(".nii")[0]
                out[case[:-5] if case.endswith("_0000") else case] = f
            return out

        p, lab = index(pred), index(label)
        missing = sorted(set(lab) - set(p))
        if missing:
            raise LiverlabError(f"{pred}: no prediction for case(s) {', '.join(missing)} found in {label}")
        if not lab:
            raise LiverlabError(f"{label}: no NIfTI files")
        return [(c, p[c], lab[c]) for c in sorted(lab)]
    raise LiverlabError(f"--pred {pred} and --label {label} must be two NIfTI files or two folders")


def evaluate_files(pred: str | Path, label: str | Path) -> list[dict[str, Any]]:
    """CHAOS metrics for prediction/label NIfTI pairs (files or folders with matching cases)."""
    from liverlab.data.nifti import load_volume
    from liverlab.metrics import segmentation_metrics

    rows = []
    for case, p, lab in _pairs(Path(pred), Path(label)):
        pv = load_volume(p)
        lv = load_volume(lab)
        if pv.image.shape != lv.image.shape or not np.allclose(pv.affine, lv.affine, atol=1e-3):
            raise LiverlabError(f"{p} and {lab}: prediction and label differ in shape or affine")
        m = segmentation_metrics(pv.image > 0.5, lv.image > 0.5, tuple(lv.spacing))
        rows.append({"case_id": case, **{k: float(m[k]) for k in METRICS}})
    return rows
