#!/usr/bin/env python
"""Plot a metric's history per logged step (EssNet epochs, U-Net iterations) (default val/iou)
for each arm of a sweep: mean and 95 % t band.

    python analysis/learning_curves.py sweeps/liver --out curves.png
    python analysis/learning_curves.py exp --tracking-uri sqlite:///runs/mlflow.db --key train/loss --all-runs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="SWEEP: a sweep folder "
                                 "(liverlab_sweep.json) or an MLflow experiment name with --tracking-uri")
    ap.add_argument("sweep", metavar="SWEEP")
    ap.add_argument("--tracking-uri")
    ap.add_argument("--key", default="val/iou", help="metric key (default val/iou)")
    ap.add_argument("--all-runs", action="store_true",
                    help="every finished run, not only the selected one per (arm, seed)")
    ap.add_argument("--out", default="learning_curves.png", help="PNG path (default learning_curves.png)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from liverlab.errors import LiverlabError
    from liverlab.report.figures import SkipFigure, learning_curves
    from liverlab.report.source import load_units
    from liverlab.tracking.reader import read_histories

    try:
        ref, finished, units = load_units(args.sweep, args.tracking_uri)
        runs = finished if args.all_runs else units
        hist = read_histories(ref.uri, runs, [args.key])
        out = learning_curves(hist, runs, Path(args.out), key=args.key)
    except (LiverlabError, SkipFigure) as err:
        print(f"learning_curves: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
