"""``liverlab train``, ``liverlab synthesize``, ``liverlab evaluate``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from liverlab.errors import LiverlabError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="run one experiment (stage essnet, unet or pipeline)")
    p.add_argument("experiment", help="experiment YAML")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted override")
    p.add_argument("--out", help="run folder (default runs/<name>-<time>)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite file in the run folder)")
    p.add_argument("--no-track", action="store_true", help="do not record an MLflow run")
    p.set_defaults(func=_train)

    p = sub.add_parser("synthesize", help="CT -> synthetic MRI with a trained EssNet checkpoint")
    p.add_argument("--checkpoint", required=True, help="EssNet checkpoint (file or checkpoint folder)")
    p.add_argument("--data", required=True, help="nnU-Net folder of CT cases")
    p.add_argument("--out", required=True, help="output folder (reused when made from the same inputs)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=_synthesize)

    p = sub.add_parser("evaluate", help="CHAOS metrics: prediction vs label files, or a U-Net on a dataset")
    p.add_argument("--pred", help="predicted mask NIfTI (or a folder of them)")
    p.add_argument("--label", help="label NIfTI (or a folder with matching case names)")
    p.add_argument("--checkpoint", help="U-Net weights (best.pt or a checkpoint folder)")
    p.add_argument("--data", help="nnU-Net folder of MRI cases to segment")
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    p.add_argument("--out", help="where predicted masks are written (default <checkpoint dir>/predictions)")
    p.add_argument("--json", action="store_true", help="print JSON on stdout instead of a table")
    p.set_defaults(func=_evaluate)


def _open_tracker(cfg: Any, out: Path, uri: str | None) -> Any:
    from liverlab.tracking.writer import git_tags, open_run, resolve_tracking_uri

    uri = resolve_tracking_uri(uri or cfg.tracking.uri, out)
    tags = {"liverlab.stage": cfg.stage, "liverlab.seed": str(cfg.seed), **git_tags(Path.cwd())}
    return open_run(uri, cfg.tracking.experiment or cfg.name, run_name=out.name, tags=tags), uri


def _train(args: argparse.Namespace) -> int:
    from liverlab.config import dump_config, load_config

    cfg = load_config(args.experiment, args.set)
    out = Path(args.out or f"runs/{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(dump_config(cfg))
    tracker, uri = (None, None) if args.no_track else _open_tracker(cfg, out, args.tracking_uri)
    t0 = time.perf_counter()
    try:
        metrics = run_experiment(cfg, out, tracker)
    except BaseException as exc:
        if tracker is not None:
            tracker.finish("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED", error=f"{type(exc).__name__}: {exc}")
        raise
    if tracker is not None:
        tracker.finish("FINISHED")
    _print_metrics(metrics, f"{cfg.name} ({cfg.stage}) in {time.perf_counter() - t0:.0f} s")
    print(f"run folder: {out}")
    if uri:
        print(f"MLflow: mlflow ui --backend-store-uri {uri}")
    return 0


def run_experiment(cfg: Any, out: Path, tracker: Any = None) -> dict[str, float]:
    """Dispatch on ``cfg.stage``; used by ``liverlab train`` (interactive progress bars)."""
    if cfg.stage == "essnet":
        from liverlab.train.essnet import train_essnet

        return train_essnet(cfg, tracker=tracker, workdir=out, progress=True)
    if cfg.stage == "unet":
        from liverlab.train.unet import train_unet

        return train_unet(cfg, tracker=tracker, workdir=out, progress=True)
    from liverlab.train.pipeline import run_pipeline

    return run_pipeline(cfg, tracker=tracker, workdir=out, cache_root=out / "cache", progress=True)


def _print_metrics(metrics: dict[str, float], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k in sorted(metrics):
        table.add_row(k, f"{metrics[k]:.4f}")
    Console().print(table)


def _synthesize(args: argparse.Namespace) -> int:
    from liverlab.train.synthesize import synthesize

    out = synthesize(args.checkpoint, args.data, args.out, device=args.device, progress=sys.stderr.isatty())
    print(f"synthetic MRI dataset: {out}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from liverlab.train.evaluate import METRICS, evaluate_files

    if args.pred or args.label:
        if not (args.pred and args.label) or args.checkpoint:
            raise LiverlabError("give --pred and --label together (or --checkpoint and --data)")
        rows = evaluate_files(args.pred, args.label)
    elif args.checkpoint and args.data:
        from liverlab.train.segment import segment_dataset

        out = Path(args.out) if args.out else Path(args.checkpoint).resolve().parent / "predictions"
        rows = segment_dataset(args.checkpoint, args.data, out, None if args.split == "all" else args.split)
        print(f"predicted masks: {out}", file=sys.stderr)
    else:
        raise LiverlabError("give --pred and --label, or --checkpoint and --data")
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in METRICS}
    if args.json:
        print(json.dumps({"cases": rows, "mean": mean}, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="CHAOS metrics (ASSD, MSSD in mm; RAVD in %)")
    for col in ("case", *METRICS):
        table.add_column(col, justify="left" if col == "case" else "right")
    for r in rows:
        table.add_row(r["case_id"], *(f"{r[k]:.4f}" for k in METRICS))
    table.add_row("[bold]mean", *(f"[bold]{mean[k]:.4f}" for k in METRICS))
    Console().print(table)
    return 0
