#!/usr/bin/env python
"""Per-arm results of a sweep as a LaTeX tabular (booktabs): mean [95 % interval] and n.

    python analysis/latex_table.py sweeps/liver --metrics iou,dice --interval bootstrap > table.tex

Needs ``\\usepackage{booktabs}`` in the document.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

_NAMES = {"iou": "IoU", "dice": "Dice", "assd": "ASSD (mm)", "mssd": "MSSD (mm)", "ravd": "RAVD"}


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
          "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters in a table cell (one character at a time, so no double escaping)."""
    return "".join(_LATEX.get(ch, ch) for ch in text)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="SWEEP: a sweep folder "
                                 "(liverlab_sweep.json) or an MLflow experiment name with --tracking-uri")
    ap.add_argument("sweep", metavar="SWEEP")
    ap.add_argument("--tracking-uri")
    ap.add_argument("--metrics", default="iou,dice", help="comma-separated (default iou,dice)")
    ap.add_argument("--interval", choices=("t", "bootstrap"), default="t")
    ap.add_argument("--digits", type=int, default=4)
    ap.add_argument("--raw-arms", action="store_true", help="print arm strings instead of plain-word labels")
    ap.add_argument("--out", help="write here instead of stdout")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from liverlab.data.atomic import write_bytes_atomic
    from liverlab.errors import LiverlabError
    from liverlab.report import stats
    from liverlab.report.arms import arm_label
    from liverlab.report.source import load_units

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    try:
        _, _, units = load_units(args.sweep, args.tracking_uri)
    except LiverlabError as err:
        print(f"latex_table: error: {err}", file=sys.stderr)
        return 2
    summary = stats.arm_summary(units, metrics=metrics, n_boot=10_000 if args.interval == "bootstrap" else 0)
    lo, hi = ("t_lo", "t_hi") if args.interval == "t" else ("boot_lo", "boot_hi")
    by = {(r["arm"], r["metric"]): r for r in summary.iter_rows(named=True)}
    d = args.digits
    fmt = lambda v: "--" if v is None or v != v else f"{v:.{d}f}"  # noqa: E731 - NaN-safe format
    lines = [r"\begin{tabular}{l r " + " ".join("l" for _ in metrics) + "}", r"\toprule",
             "Training data & $n$ & " + " & ".join(_NAMES.get(m, m) for m in metrics) + r" \\", r"\midrule"]
    for arm in sorted(units["arm"].unique().to_list()):
        cells = []
        n = units.filter(units["arm"] == arm).height
        for m in metrics:
            r = by.get((arm, m))
            cells.append("--" if r is None else f"{fmt(r['mean'])} [{fmt(r[lo])}, {fmt(r[hi])}]")
        label = arm if args.raw_arms else arm_label(arm)
        lines.append(f"{latex_escape(label)} & {n} & " + " & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}",
              f"% mean [95 % {'Student t' if args.interval == 't' else 'percentile bootstrap'} interval], n seeds"]
    text = "\n".join(lines) + "\n"
    if args.out:
        write_bytes_atomic(args.out, text.encode())  # never a half-written table under the final name
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
