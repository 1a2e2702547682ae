"""Segment a dataset with a trained U-Net; masks on each case's own grid, in NIfTI.

Logits are resized back to the volume's in-plane size before the argmax, so
predicted masks share the image's affine and the metrics are computed in the
volume's own physical spacing (not the training resolution).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from liverlab.config import config_from_dict
from liverlab.errors import LiverlabError
from liverlab.train import common
from liverlab.train import data as tdata
from liverlab.train.evaluate import METRICS


def load_unet(checkpoint: str | Path, device: torch.device) -> tuple[torch.nn.Module, Any]:
    from liverlab.train.unet import build_unet

    state = common.load_checkpoint(checkpoint, map_location="cpu")
    if state.get("kind") == "unet_weights":
        weights = state["model"]
    elif state.get("kind") == "unet":
        weights = state["best_model"]
    else:
        raise LiverlabError(f"{checkpoint}: not a U-Net checkpoint (kind={state.get('kind')!r})")
    config = config_from_dict(state["config"], source=f"{checkpoint} (embedded config)")
    model = build_unet(config)
    model.load_state_dict(weights)
    return model.to(device).eval(), config


@torch.no_grad()
def segment_dataset(checkpoint: str | Path, data_dir: str | Path, out: str | Path, split: str | None = "test") -> list[dict[str, Any]]:
    """Predict every case of ``split`` (None = all), write masks to ``out``, return CHAOS metrics."""
    from liverlab.data.manifest import read_manifest
    from liverlab.data.nifti import load_volume, save_volume
    from liverlab.metrics import segmentation_metrics

    data_dir, out = Path(data_dir), Path(out)
    tdata.require_dataset(data_dir, "--data")
    device = common.select_device("auto")
    model, config = load_unet(checkpoint, device)
    cases = tdata.cases_in(data_dir, config, split) if split else None
    if cases is not None and not cases:
        raise LiverlabError(f"{data_dir}: no cases in split {split!r} with the checkpoint's split settings")
    slices = tdata.load(config, data_dir, "mri", None, all_slices=True, cases=cases)
    rows_by_case = {r["case_id"]: r for r in read_manifest(data_dir).iter_rows(named=True)}
    case_ids = np.asarray(list(slices.case_ids))
    z_all = np.asarray(slices.slice_index)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for case in dict.fromkeys(case_ids.tolist()):
        row = rows_by_case[case]
        vol = load_volume(data_dir / row["image_path"], data_dir / row["label_path"])
        idx = np.flatnonzero(case_ids == case)
        idx = idx[np.argsort(z_all[idx])]
        pred = np.zeros(vol.image.shape, dtype=np.uint8)
        for i in range(0, len(idx), 16):
            part = idx[i : i + 16]
            x = torch.from_numpy(np.asarray(slices.images[part], dtype=np.float32))[:, None].to(device)
            with common.autocast(device, config.precision):
                logits = model(x).float()
            logits = torch.nn.functional.interpolate(logits, size=vol.image.shape[:2], mode="bilinear", align_corners=False)
            pred[:, :, z_all[part]] = np.moveaxis(logits.argmax(1).cpu().numpy().astype(np.uint8), 0, -1)
        save_volume(out / f"{case}.nii.gz", pred, vol.affine)
        m = segmentation_metrics(pred > 0, vol.label > 0, tuple(vol.spacing))
        results.append({"case_id": case, **{k: float(m[k]) for k in METRICS}})
    return results
