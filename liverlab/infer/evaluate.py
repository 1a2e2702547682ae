"""Segmentation evaluation: predict slices, regroup by case, CHAOS metrics in mm.

Two grids, one rule each:

- **Validation** (``val/*``, every ``unet.val_every`` steps) is computed on the
  training grid: the cached ``data.size`` x ``data.size`` slices and their
  resized labels, with the spacing rescaled to that grid
  (``case_metrics``). Fast, and only used to follow and select training.
- **Test** (``test/*``, ``per_patient.parquet``) and ``liverlab evaluate
  --checkpoint`` are computed on each case's own grid (``native_case_metrics``):
  predict at training resolution (with ``unet.tta``, the mean over rotated and
  zoomed copies: ``tta.py``), map the softmax probabilities back to the
  volume's in-plane grid (the inverse of the cache's resize or of its
  ``data.spacing_mm`` resampling and crop), argmax, post-process, and compare with the original
  label at the original spacing. The training loop and ``segment_dataset``
  call this one function, so the two numbers cannot drift apart.

Post-processing (``unet.postprocess``, ``liverlab/postprocess.py``) is applied
to every predicted volume before any metric, on both grids.
``evaluate_files`` (``liverlab evaluate --pred --label``) evaluates masks as
given: they are someone's predictions, and are not post-processed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from liverlab import postprocess as post
from liverlab.config import PostprocessConfig, TTAConfig
from liverlab.data.atomic import staging_dir, write_with
from liverlab.errors import LiverlabError
from liverlab.infer.tta import transforms, tta_probs
from liverlab.train import common

METRICS = ("iou", "dice", "ravd", "assd", "mssd")
DEFAULT_POSTPROCESS = PostprocessConfig()


@torch.no_grad()
def _batched(
    model: torch.nn.Module, images: np.ndarray, device: torch.device, batch_size: int,
    forward: Callable[[torch.Tensor], torch.Tensor],
) -> Iterator[tuple[slice, torch.Tensor]]:
    """``(rows, forward(x))`` per batch ``x`` of ``images[rows]`` as float32 (B, C, H, W), model in eval mode."""
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(images), batch_size):
            rows = slice(i, min(i + batch_size, len(images)))
            x = torch.from_numpy(np.array(images[rows], dtype=np.float32))
            yield rows, forward((x[:, None] if x.ndim == 3 else x).to(device))
    finally:
        model.train(was_training)


def predict_logits(
    model: torch.nn.Module, images: np.ndarray, device: torch.device, precision: str = "fp32", batch_size: int = 16
) -> Iterator[tuple[slice, torch.Tensor]]:
    """``(rows, logits)`` per batch: float32 (B, K, H, W) logits of ``images[rows]`` (in [-1, 1]), model in eval mode.

    ``images`` is (N, H, W) slices, or (N, C, H, W) model inputs (``model_inputs``, 2.5D context as channels).
    """

    def forward(x: torch.Tensor) -> torch.Tensor:
        with common.autocast(device, precision):
            return model(x).float()

    return _batched(model, images, device, batch_size, forward)


def predict_probs(
    model: torch.nn.Module,
    images: np.ndarray,
    device: torch.device,
    precision: str = "fp32",
    batch_size: int = 16,
    tta: TTAConfig | None = None,
) -> Iterator[tuple[slice, torch.Tensor]]:
    """``(rows, probs)`` per batch: float32 (B, K, H, W) class probabilities of ``images[rows]``.

    With ``tta`` (``unet.tta``) enabled, the mean over its copies (``tta.py``); otherwise the softmax of one pass.
    """
    if tta is None or not tta.enabled:
        for rows, logits in predict_logits(model, images, device, precision, batch_size):
            yield rows, torch.softmax(logits, dim=1)
        return
    thetas = transforms(tta.rotate_degrees, tta.scale)
    yield from _batched(model, images, device, batch_size, lambda x: tta_probs(model, x, device, precision, thetas))


def predict_slices(
    model: torch.nn.Module, images: np.ndarray, device: torch.device, precision: str = "fp32", batch_size: int = 16
) -> np.ndarray:
    """Argmax masks (N, H, W) uint8 for images (N, H, W) or inputs (N, C, H, W) in [-1, 1], on their own grid."""
    out = np.empty((images.shape[0], *images.shape[-2:]), dtype=np.uint8)
    for rows, logits in predict_logits(model, images, device, precision, batch_size):
        out[rows] = logits.argmax(1).cpu().numpy().astype(np.uint8)
    return out


def model_inputs(model: torch.nn.Module, slice_set: Any, rows: np.ndarray | None = None) -> np.ndarray:
    """What ``model`` takes for ``rows`` of ``slice_set`` (all when None).

    The slices themselves (N, H, W) for a 2D model; for a 2.5D model
    (``unet.model.context_slices``), each slice with its z-neighbours as
    channels (N, 2c+1, H, W), by the rule training used (``liverlab.data.context``).
    """
    from liverlab.data.context import context_images, context_of

    c = context_of(model)
    if c == 0:
        return np.asarray(slice_set.images if rows is None else slice_set.images[np.asarray(rows)])
    return context_images(slice_set, c, rows)


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


def _liver(label: np.ndarray) -> np.ndarray:
    """The liver of a label volume: any non-zero voxel of a binary mask, label 1 of a multi-organ one."""
    rounded = np.rint(label)
    values = np.unique(rounded)
    return rounded == 1 if len(values[values != 0]) > 1 else label > 0.5


def _row(
    case: str, patient: str, pred: np.ndarray, label: np.ndarray, spacing: Any, which: tuple[str, ...]
) -> dict[str, Any]:
    from liverlab.metrics import segmentation_metrics

    m = segmentation_metrics(pred == 1, label == 1, tuple(float(s) for s in spacing))  # the liver: label 1
    return {"case_id": case, "patient_id": patient, **{k: float(m[k]) for k in which}}


def case_metrics(
    slice_set: Any,
    preds: np.ndarray,
    which: tuple[str, ...] = METRICS,
    postprocess: PostprocessConfig | None = DEFAULT_POSTPROCESS,
) -> list[dict[str, Any]]:
    """Training-grid metrics: one row per case (3D, post-processed, rescaled spacing).

    ``preds`` are masks on the slice set's grid (``predict_slices``). Used for
    ``val/*``; test metrics come from ``native_case_metrics``.
    """
    pred_vols = group_by_case(slice_set, preds)
    label_vols = group_by_case(slice_set, slice_set.masks)
    patients = dict(zip(slice_set.case_ids, slice_set.patient_ids))
    return [
        _row(case, patients[case], post.apply(pred, postprocess), label_vols[case], slice_set.spacing[case], which)
        for case, pred in pred_vols.items()
    ]


def _manifest_rows(data_dir: Path) -> dict[str, dict[str, Any]]:
    from liverlab.data.manifest import build_manifest, read_manifest

    try:
        manifest = read_manifest(data_dir)
    except (LiverlabError, FileNotFoundError, OSError):
        manifest = build_manifest(data_dir)
    return {r["case_id"]: r for r in manifest.iter_rows(named=True)}


def slice_grid_spacing_mm(slice_set: Any, default: float | None = None) -> float | None:
    """The ``spacing_mm`` a cached slice set was built with (read from its ``meta.json`` on load);
    ``default`` for in-memory sets."""
    if getattr(slice_set, "path", None) is not None:
        mm = getattr(slice_set, "spacing_mm", None)
        return None if mm is None else float(mm)
    return default


def to_native(
    probs: np.ndarray, shape_xy: tuple[int, int], spacing_xy: tuple[float, float], spacing_mm: float | None
) -> np.ndarray:
    """(n, C, size, size) class probabilities on the training grid -> (n, C, X, Y) on the volume's grid.

    The inverse of the cache's in-plane preprocessing (``cache.from_spacing``):
    a bilinear resize, or with ``spacing_mm`` an un-crop / un-pad then resize.
    Pixels the training crop cut off are background (probability 1 for class 0).
    """
    from liverlab.data.cache import from_spacing

    return np.stack(
        [
            from_spacing(probs[:, c], shape_xy, spacing_xy, spacing_mm, fill=1.0 if c == 0 else 0.0)
            for c in range(probs.shape[1])
        ],
        axis=1,
    )


@torch.no_grad()
def native_predictions(
    model: torch.nn.Module,
    slice_set: Any,
    data_dir: str | Path,
    device: torch.device,
    precision: str = "fp32",
    postprocess: PostprocessConfig | None = DEFAULT_POSTPROCESS,
    batch_size: int = 16,
    spacing_mm: float | None = None,
    tta: TTAConfig | None = None,
) -> Iterator[tuple[str, str, np.ndarray, Any]]:
    """``(case_id, patient_id, mask, volume)`` per case of ``slice_set``, the mask on the case's own grid.

    ``slice_set`` holds every slice of its cases (``all_slices=True``) from the
    nnU-Net folder ``data_dir``. Softmax probabilities at training resolution
    are mapped back to the volume's in-plane grid (``to_native``: the inverse
    of the cache's resize, or of its ``data.spacing_mm`` resampling and crop,
    read from the slice set's cache metadata; ``spacing_mm`` is only used for a
    slice set without one), argmaxed and post-processed; ``volume`` is the
    case's ``nifti.Volume`` (image, label, spacing, affine). ``tta``
    (``unet.tta``) averages the probabilities over augmented copies first.
    """
    from liverlab.data.nifti import load_volume

    data_dir = Path(data_dir)
    rows = _manifest_rows(data_dir)
    mm = slice_grid_spacing_mm(slice_set, spacing_mm)
    for case in slice_set.cases:
        if case not in rows:
            raise LiverlabError(f"{data_dir}: case {case} of the slice set is not in the dataset's manifest")
        r = rows[case]
        vol = load_volume(data_dir / r["image_path"], data_dir / r["label_path"])
        idx = slice_set.case_indices(case)
        z = np.asarray(slice_set.slice_index)[idx]
        if len(idx) != vol.shape[2] or not np.array_equal(np.sort(z), np.arange(vol.shape[2])):
            raise LiverlabError(
                f"{data_dir}: case {case}: {len(idx)} cached slices for {vol.shape[2]} in the volume; "
                "native-grid evaluation needs every slice (load with all_slices=True)"
            )
        pred = np.zeros(vol.shape, dtype=np.uint8)
        images = model_inputs(model, slice_set, idx)
        for part, probs_t in predict_probs(model, images, device, precision, batch_size, tta):
            probs = probs_t.cpu().numpy()
            native = to_native(probs, vol.shape[:2], vol.spacing[:2], mm)
            pred[:, :, z[part]] = np.moveaxis(native.argmax(1).astype(np.uint8), 0, -1)
        yield case, slice_set.patient_ids[int(idx[0])], post.apply(pred, postprocess), vol


def native_case_metrics(
    model: torch.nn.Module,
    slice_set: Any,
    data_dir: str | Path,
    device: torch.device,
    precision: str = "fp32",
    postprocess: PostprocessConfig | None = DEFAULT_POSTPROCESS,
    which: tuple[str, ...] = METRICS,
    out: str | Path | None = None,
    tta: TTAConfig | None = None,
) -> list[dict[str, Any]]:
    """Test metrics on each case's own grid and spacing (see ``native_predictions``), one row per case.

    With ``out``, the post-processed masks are also written there as
    ``<case>.nii.gz`` in the image file's own voxel order and affine. They are staged in a hidden
    folder and moved into ``out`` only once every case has succeeded, so a
    failed run leaves no partial set of masks.
    """
    from liverlab.data.nifti import save_like

    if out is None:
        return [
            _row(case, patient, pred, vol.label, vol.spacing, which)
            for case, patient, pred, vol in native_predictions(
                model, slice_set, data_dir, device, precision, postprocess, tta=tta
            )
        ]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    with staging_dir(out) as stage:
        for case, patient, pred, vol in native_predictions(
            model, slice_set, data_dir, device, precision, postprocess, tta=tta
        ):
            save_like(stage / f"{case}.nii.gz", pred, vol)  # the image file's own voxel order and affine
            results.append(_row(case, patient, pred, vol.label, vol.spacing, which))
        for r in results:
            os.replace(stage / f"{r['case_id']}.nii.gz", out / f"{r['case_id']}.nii.gz")
    return results


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
    """CHAOS metrics for prediction/label NIfTI pairs (files or folders with matching cases).

    The predictions are evaluated exactly as given (no post-processing): they
    are someone's final masks, e.g. those ``segment_dataset`` wrote. A label
    holding one non-zero value is the liver mask; one holding several (a
    dataset imported with ``organs``) has the liver at 1.
    """
    from liverlab.data.nifti import load_volume
    from liverlab.metrics import segmentation_metrics

    rows = []
    for case, p, lab in _pairs(Path(pred), Path(label)):
        pv = load_volume(p)
        lv = load_volume(lab)
        if pv.image.shape != lv.image.shape or not np.allclose(pv.affine, lv.affine, atol=1e-3):
            raise LiverlabError(f"{p} and {lab}: prediction and label differ in shape or affine")
        m = segmentation_metrics(pv.image > 0.5, _liver(lv.image), tuple(lv.spacing))
        rows.append({"case_id": case, **{k: float(m[k]) for k in METRICS}})
    return rows
