#!/usr/bin/env python
"""Compare two sweeps arm by arm: per-arm mean and 95 % t interval side by side, and B - A.

The difference between sweeps is unpaired (Welch's t interval and p-value):
two sweeps are separate experiments even when they use the same seed numbers.
IoU and Dice differences are in points (x100).

    python analysis/compare_sweeps.py sweeps/a sweeps/b
    python analysis/compare_sweeps.py exp_a exp_b --tracking-uri sqlite:///runs/mlflow.db --metric dice --format csv
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="SWEEP: a sweep folder "
                                 "(liverlab_sweep.json) or an MLflow experiment name with --tracking-uri")
    ap.add_argument("a", metavar="SWEEP_A")
    ap.add_argument("b", metavar="SWEEP_B")
    ap.add_argument("--tracking-uri", help="tracking URI for both (or for A when --tracking-uri-b is given)")
    ap.add_argument("--tracking-uri-b", help="tracking URI for B")
    ap.add_argument("--metric", default="iou", help="iou | dice | assd | mssd | ravd (default iou)")
    ap.add_argument("--format", choices=("markdown", "csv"), default="markdown")
    ap.add_argument("--out", help="write here instead of stdout")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import polars as pl

    from liverlab.data.atomic import write_bytes_atomic
    from liverlab.errors import LiverlabError
    from liverlab.report import stats
    from liverlab.report.source import load_units
    from liverlab.report.units import POINT_METRICS

    try:
        _, _, ua = load_units(args.a, args.tracking_uri)
        _, _, ub = load_units(args.b, args.tracking_uri_b or args.tracking_uri)
    except LiverlabError as err:
        print(f"compare_sweeps: error: {err}", file=sys.stderr)
        return 2
    col = f"value.{args.metric}"
    scale = 100.0 if args.metric in POINT_METRICS else 1.0
    rows = []
    for arm in sorted(set(ua["arm"].to_list()) | set(ub["arm"].to_list())):
        xa = ua.filter(pl.col("arm") == arm)[col].drop_nulls().to_numpy() if col in ua.columns else []
        xb = ub.filter(pl.col("arm") == arm)[col].drop_nulls().to_numpy() if col in ub.columns else []
        da, db = stats.describe(xa, n_boot=0), stats.describe(xb, n_boot=0)
        w = stats.welch_difference(xa, xb, scale)
        rows.append({"arm": arm, "n_a": da["n"], "mean_a": da["mean"], "t_lo_a": da["t_lo"], "t_hi_a": da["t_hi"],
                     "n_b": db["n"], "mean_b": db["mean"], "t_lo_b": db["t_lo"], "t_hi_b": db["t_hi"],
                     "diff_b_minus_a": w["diff"], "welch_lo": w["lo"], "welch_hi": w["hi"], "welch_p": w["p"]})
    table = pl.DataFrame(rows)
    if args.format == "csv":
        text = table.write_csv()
    else:
        unit = " (points)" if scale == 100 else ""
        f = lambda v, nd=4: "n/a" if v is None or v != v else f"{v:.{nd}f}"  # noqa: E731 - NaN-safe format
        lines = [f"{args.metric}: A = {args.a}, B = {args.b}", "",
                 f"| arm | n A | A mean [95 % t CI] | n B | B mean [95 % t CI] | B - A{unit} [Welch 95 % CI] | p |",
                 "|---|---|---|---|---|---|---|"]
        for r in table.iter_rows(named=True):
            lines.append(f"| {r['arm']} | {r['n_a']} | {f(r['mean_a'])} [{f(r['t_lo_a'])}, {f(r['t_hi_a'])}] | "
                         f"{r['n_b']} | {f(r['mean_b'])} [{f(r['t_lo_b'])}, {f(r['t_hi_b'])}] | "
                         f"{f(r['diff_b_minus_a'], 2)} [{f(r['welch_lo'], 2)}, {f(r['welch_hi'], 2)}] | "
                         f"{'n/a' if r['welch_p'] != r['welch_p'] else format(r['welch_p'], '.3g')} |")
        text = "\n".join(lines) + "\n"
    if args.out:
        write_bytes_atomic(args.out, text.encode())  # never a half-written table under the final name
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
