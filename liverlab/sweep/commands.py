"""``liverlab sweep`` and ``liverlab doctor``: argument parsing only.

The work is in ``liverlab.sweep.runner`` and ``liverlab.sweep.doctor``,
imported inside the handlers so that ``liverlab --help`` never imports ray.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep", help="run a search space (arms x seeds x Optuna) on Ray Tune",
        description="Run a search space on Ray Tune: every arm x seed, Optuna sampling inside each arm, one MLflow "
        "parent run with a child per trial, and the report (`liverlab report`) at the end. Storage is a shared "
        "folder or an object store such as `s3://bucket/sweeps` (see docs/cluster.md).",
        epilog="--dry-run prints arms, seeds, sampled ranges, resources and the trial count. --resume continues "
        "an interrupted sweep (after Ctrl-C, SIGTERM, `kill -9` of the driver or a full disk) without rerunning "
        "finished trials, with exactly one FINISHED MLflow run per planned trial, re-creating planned trials that "
        "Tune's state lost. `--set profile=NAME` runs the space's named variant (`profiles`). Before compute the "
        "disk-space estimate must fit (--force overrides). Ctrl-C / SIGTERM: open runs KILLED, no report, one line "
        "with the `--resume` command, exit 130 / 143; a full disk: one line naming the path, exit 1 "
        "(docs/reliability.md).",
    )
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
    p.add_argument("--force", action="store_true",
                   help="start even when the disk-space estimate does not fit (docs/reliability.md)")
    p.set_defaults(func=_sweep)

    p = sub.add_parser("doctor", help="check a Ray cluster: nodes, storage and data seen from every node, "
                                      "versions, tracking",
                       description="Check a Ray cluster: its nodes, the storage and data seen from every node, "
                       "library versions and the tracking server (see docs/cluster.md).")
    p.add_argument("--address", help="Ray cluster address (default $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--storage", help="sweep storage root to check (default ./sweeps or $LIVERLAB_STORAGE)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI to check (default $MLFLOW_TRACKING_URI)")
    p.add_argument("--data", help="dataset folder every node must see")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each node's answer (default 60)")
    p.set_defaults(func=_doctor)


def _sweep(args: argparse.Namespace) -> int:
    from liverlab.sweep.runner import SweepOptions, run_sweep

    return run_sweep(SweepOptions(
        space=args.space, set=args.set, num_samples=args.num_samples, max_concurrent=args.max_concurrent,
        dry_run=args.dry_run, resume=args.resume, address=args.address, storage=args.storage,
        tracking_uri=args.tracking_uri, name=args.name, report=not args.no_report, force=args.force,
    ))


def _doctor(args: argparse.Namespace) -> int:
    import os

    from liverlab.sweep.doctor import doctor_main

    storage = args.storage or os.environ.get("LIVERLAB_STORAGE") or "sweeps"  # what `liverlab sweep` would use
    return doctor_main(args.address, storage, args.tracking_uri, args.data, args.timeout)
