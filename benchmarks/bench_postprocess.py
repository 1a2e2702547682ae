"""Before/after table for mask post-processing (largest 3D component + per-slice hole filling).

For a trained U-Net checkpoint and an nnU-Net folder, predicts every case of
``--split`` once on the case's own grid (``evaluate.native_predictions``,
the function behind ``test/*`` and ``liverlab evaluate --checkpoint``) and
scores three masks against the label, in mm from the volume's spacing: the
raw argmax (``raw``), the largest 3D component only (``lcc``), and largest
component + per-slice hole filling (``post``, the default
``unet.postprocess``; ``post`` equals the checkpoint's logged ``test/*``
when its config has the default). Prints a Markdown table (per case and mean;
mean over finite values, with the count of infinite ones) ready for
docs/benchmarks.md.

    python benchmarks/bench_postprocess.py --checkpoint runs/x/best.pt --data data/chaos/mri [--split test|all]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from liverlab import postprocess as post  # noqa: E402
from liverlab.config import PostprocessConfig  # noqa: E402
from liverlab.metrics import segmentation_metrics  # noqa: E402

SHOWN = ("iou", "dice", "assd", "mssd")


def before_after(checkpoint: Path, data: Path, split: str | None) -> list[dict[str, object]]:
    """One row per case and stage ('raw' | 'lcc' | 'post'), with SHOWN metrics and the component count."""
    import numpy as np
    from scipy import ndimage

    from liverlab.train import common
    from liverlab.train import data as tdata
    from liverlab.infer.evaluate import native_predictions
    from liverlab.infer.segment import load_unet

    device = common.select_device("auto")
    model, config = load_unet(checkpoint, device)
    cases = tdata.cases_in(data, config, split) if split else None
    slices = tdata.load(config, data, "mri", None, all_slices=True, cases=cases)
    stages = {"raw": None, "lcc": PostprocessConfig(fill_holes=False), "post": PostprocessConfig()}
    rows: list[dict[str, object]] = []
    for case, _, raw, vol in native_predictions(model, slices, data, device, config.precision, postprocess=None):
        label = vol.label > 0
        # Voxels hole filling would add to the label itself (> 0: the label has holes, e.g. vessels left out).
        label_holes = int(post.fill_holes_per_slice(label).sum() - label.sum())
        for stage, settings in stages.items():
            mask = post.apply(raw, settings)
            m = segmentation_metrics(mask > 0, label, vol.spacing)
            n = ndimage.label(mask > 0, structure=np.ones((3, 3, 3)))[1]
            rows.append({"case": case, "stage": stage, "components": n, "label_holes": label_holes, **{k: float(m[k]) for k in SHOWN}})
    return rows


def markdown(rows: list[dict[str, object]]) -> str:
    stages = list(dict.fromkeys(str(r["stage"]) for r in rows))
    head = "| case | label hole voxels | components " + " / ".join(stages) + " | " + " | ".join(
        f"{k} {st}" for k in SHOWN for st in stages) + " |"
    lines = [head, "|" + "---|" * (3 + len(stages) * len(SHOWN))]
    cases = list(dict.fromkeys(r["case"] for r in rows))
    by = {(r["case"], r["stage"]): r for r in rows}
    for c in cases:
        comps = " / ".join(str(by[(c, st)]["components"]) for st in stages)
        cells = [f"{float(by[(c, st)][k]):.4f}" for k in SHOWN for st in stages]
        lines.append(f"| {c} | {by[(c, stages[0])]['label_holes']} | {comps} | " + " | ".join(cells) + " |")
    means = []
    for k in SHOWN:
        for st in stages:
            vals = [float(by[(c, st)][k]) for c in cases]
            finite = [v for v in vals if math.isfinite(v)]
            n_inf = len(vals) - len(finite)
            text = f"{sum(finite) / len(finite):.4f}" if finite else "inf"
            means.append(text + (f" ({n_inf} inf)" if n_inf else ""))
    lines.append(f"| **mean ({len(cases)} cases)** | | | " + " | ".join(means) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, type=Path, help="U-Net best.pt (or checkpoint folder)")
    p.add_argument("--data", required=True, type=Path, help="nnU-Net folder of MRI cases")
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"],
                   help="cases scored, with the checkpoint's split settings (default test)")
    args = p.parse_args(argv)
    rows = before_after(args.checkpoint, args.data, None if args.split == "all" else args.split)
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
