"""``liverlab sweep``: argument parsing only; the work is in ``liverlab.sweep.runner``."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="run a search space (arms x seeds x Optuna) on Ray Tune")
    p.add_argument("space", help="search-space YAML (search_spaces/*.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override of the base experiment")
    p.add_argument("--num-samples", type=int, help="Optuna samples per arm and seed")
    p.add_argument("--max-concurrent", type=int, help="trials running at once")
    p.add_argument("--dry-run", action="store_true", help="print arms, seeds, space, resources, trial count; run nothing")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep (also after kill -9)")
    p.add_argument("--address", help="Ray cluster address (default $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--storage", help="sweep storage root (default ./sweeps or $LIVERLAB_STORAGE)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite in the sweep folder)")
    p.add_argument("--name", help="sweep name (default: the space's name)")
    p.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    p.set_defaults(func=_sweep)


def _sweep(args: argparse.Namespace) -> int:
    from liverlab.sweep.runner import SweepOptions, run_sweep

    return run_sweep(SweepOptions(
        space=args.space, set=args.set, num_samples=args.num_samples, max_concurrent=args.max_concurrent,
        dry_run=args.dry_run, resume=args.resume, address=args.address, storage=args.storage,
        tracking_uri=args.tracking_uri, name=args.name, report=not args.no_report,
    ))
