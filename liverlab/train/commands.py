"""``liverlab train``: one experiment, any stage (``synthesize``, ``evaluate``: ``liverlab.infer.commands``)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="run one experiment (stage essnet, unet or pipeline)",
        description="Run one experiment (stage `essnet`, `unet` or `pipeline`) with a progress bar and a final "
        "metrics table; the run folder holds the resolved config, checkpoints and, unless --no-track, an MLflow run.",
        epilog="The same command with the same --out resumes from the last checkpoint and continues its MLflow run; "
        "Ctrl-C / SIGTERM print that command, mark the run KILLED and exit 130 / 143. Before compute the disk-space "
        "estimate must fit (--force overrides; docs/reliability.md).",
    )
    p.add_argument("experiment", help="experiment YAML")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted override")
    p.add_argument("--out", help="run folder (default runs/<name>-<time>)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite file in the run folder)")
    p.add_argument("--no-track", action="store_true", help="do not record an MLflow run")
    p.add_argument("--force", action="store_true",
                   help="start even when the disk-space estimate does not fit (docs/reliability.md)")
    p.set_defaults(func=_train)


def _open_tracker(cfg: Any, out: Path, uri: str) -> Any:
    from liverlab.tracking.writer import git_tags, open_run

    tags = {"liverlab.stage": cfg.stage, "liverlab.seed": str(cfg.seed), **git_tags(Path.cwd())}
    return open_run(uri, cfg.tracking.experiment or cfg.name, run_name=out.name, tags=tags)


def _train(args: argparse.Namespace) -> int:
    from liverlab.config import dump_config, load_config
    from liverlab.data.atomic import write_bytes_atomic
    from liverlab.tracking.client import resolve_tracking_uri
    from liverlab.train.guard import TrainGuard

    cfg = load_config(args.experiment, args.set)
    out = Path(args.out or f"runs/{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    # Ctrl-C / SIGTERM / a full disk: run KILLED or FAILED, one line, resume command (liverlab.train.guard).
    guard = TrainGuard(args, cfg, out)
    uri = None if args.no_track else resolve_tracking_uri(args.tracking_uri or cfg.tracking.uri, out)
    guard.check_space(uri)  # before compute: refuses when the estimate does not fit (--force)
    tracker = None
    t0 = time.perf_counter()
    try:
        with guard:
            write_bytes_atomic(out / "config.yaml", dump_config(cfg).encode())
            tracker = None if uri is None else guard.open_tracker(uri, lambda: _open_tracker(cfg, out, uri))
            metrics = run_experiment(cfg, out, tracker)
    except BaseException as exc:
        code = guard.stopped(exc, tracker)
        if code is not None:
            return code
        if tracker is not None:
            tracker.finish("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED", error=f"{type(exc).__name__}: {exc}")
        raise
    if tracker is not None:
        tracker.finish("FINISHED")
    _print_metrics(metrics, f"{cfg.name} ({cfg.stage}) in {time.perf_counter() - t0:.0f} s")
    print(f"run folder: {out}")
    if uri:
        from liverlab.tracking.ui import tracker_experiment_id, ui_hint

        print(ui_hint(uri, tracker_experiment_id(tracker)))  # the runs view, not MLflow 3's GenAI landing page
    return 0


def run_experiment(cfg: Any, out: Path, tracker: Any = None) -> dict[str, float]:
    """Run ``cfg.stage`` in ``out`` with interactive progress bars (``liverlab train``)."""
    from liverlab.train.stages import run_stage

    return run_stage(cfg, None, tracker, out, cache_root=out / "cache", progress=True)


def _print_metrics(metrics: dict[str, float], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k in sorted(metrics):
        table.add_row(k, f"{metrics[k]:.4f}")
    Console().print(table)
