"""Picture panels a person can look at (logged as tracker artifacts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from liverlab.data.atomic import write_with
from liverlab.data.cache import display_slice  # stored (X, Y) slices -> radiological view


def _save_atomic(fig: Any, path: Path) -> Path:
    write_with(path, lambda tmp: fig.savefig(tmp, dpi=100), suffix=".png")
    return path


@torch.no_grad()
def essnet_panel(net: Any, batch: dict[str, torch.Tensor], device: torch.device, path: Path) -> Path:
    """Rows of CT | synthetic MRI | reconstructed CT | (true MRI) | mask outline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    was_training = net.training
    net.eval()
    ct = batch["ct"].to(device)
    fake = net.g_mri(ct).float().clamp(-1, 1)
    rec = net.g_ct(fake).float().clamp(-1, 1)
    net.train(was_training)
    cols = [("CT", ct), ("synthetic MRI", fake), ("reconstructed CT", rec)]
    if "mri" in batch:
        cols.append(("true MRI", batch["mri"]))
    cols.append(("CT mask on synthetic MRI", fake))
    n = ct.shape[0]
    fig, axes = plt.subplots(n, len(cols), figsize=(2.2 * len(cols), 2.2 * n), squeeze=False)
    for r in range(n):
        for c, (title, img) in enumerate(cols):
            ax = axes[r][c]
            ax.imshow(display_slice(img[r, 0].cpu().numpy()), cmap="gray", vmin=-1, vmax=1)
            if c == len(cols) - 1:
                mask = display_slice(batch["mask"][r].cpu().numpy())
                if mask.any():
                    ax.contour(mask, levels=[0.5], colors="r", linewidths=0.8)
            ax.set_axis_off()
            if r == 0:
                ax.set_title(title, fontsize=8)
    fig.tight_layout()
    out = _save_atomic(fig, path)
    plt.close(fig)
    return out


def segmentation_panel(images: np.ndarray, labels: np.ndarray, preds: np.ndarray, path: Path) -> Path:
    """Rows of MRI with the label (green) and the prediction (red) outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(2.2 * n, 2.4), squeeze=False)
    for i in range(n):
        ax = axes[0][i]
        image, label, pred = (display_slice(a[i]) for a in (images, labels, preds))
        ax.imshow(image, cmap="gray", vmin=-1, vmax=1)
        if label.any():
            ax.contour(label, levels=[0.5], colors="g", linewidths=0.8)
        if pred.any():
            ax.contour(pred, levels=[0.5], colors="r", linewidths=0.8)
        ax.set_axis_off()
    fig.suptitle("MRI: label (green), prediction (red)", fontsize=8)
    fig.tight_layout()
    out = _save_atomic(fig, path)
    plt.close(fig)
    return out
