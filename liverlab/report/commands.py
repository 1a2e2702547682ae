"""``liverlab report SWEEP``: the evidence report of a sweep.

Imports nothing heavy at import time (polars, matplotlib, mlflow load when
the command runs) so that ``liverlab --help`` stays instant.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _report(args: argparse.Namespace) -> int:
    from liverlab.report.markdown import make_report
    from liverlab.report.source import resolve_sweep

    ref = resolve_sweep(args.sweep, args.tracking_uri)
    out = Path(args.out) if args.out else ref.default_out
    path = make_report(
        ref.uri,
        experiment=ref.experiment,
        parent_run_id=ref.parent_run_id,
        baseline=args.baseline,
        out=out,
        n_boot=args.bootstrap,
        seed=args.seed,
        log_to_parent=not args.no_log,
        name=ref.name,
    )
    print(f"report written to {path}")
    if not args.no_log:
        print("and logged to the sweep's parent MLflow run under report/ (when it has one)")
    return 0


def register(subparsers: Any) -> None:
    """Add ``report`` to the ``liverlab`` command."""
    p = subparsers.add_parser(
        "report",
        help="write the evidence report of a sweep (tables, intervals, paired tests, figures)",
        description=(
            "Per-arm means with 95 % t and bootstrap intervals, paired comparisons against the "
            "real-only baseline (t-test, Wilcoxon, Cohen's d_z), figures, results.parquet/csv. "
            "Written atomically to OUT and logged to the sweep's parent run under report/."
        ),
    )
    p.add_argument("sweep", metavar="SWEEP",
                   help="a sweep folder (with liverlab_sweep.json) or an MLflow experiment name (with --tracking-uri)")
    p.add_argument("--baseline", metavar="ARM", default=None,
                   help="arm to compare against, e.g. 'synthesis=none' (default: the arm with synthesis none)")
    p.add_argument("--out", metavar="DIR", default=None, help="report folder (default: SWEEP/report)")
    p.add_argument("--tracking-uri", metavar="URI", default=None,
                   help="MLflow tracking URI (default: the sweep file's, else $MLFLOW_TRACKING_URI)")
    p.add_argument("--bootstrap", type=int, default=10_000, metavar="N", help="bootstrap resamples (default 10000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--no-log", action="store_true", help="do not log the report to the parent MLflow run")
    p.set_defaults(func=_report)
