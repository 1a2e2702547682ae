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
    p.add_argument("--force", action="store_true",
                   help="start even when the disk-space estimate does not fit (docs/reliability.md)")
    p.set_defaults(func=_train)

    p = sub.add_parser("synthesize", help="CT -> synthetic MRI with a trained EssNet checkpoint")
    p.add_argument("--checkpoint", required=True, help="EssNet checkpoint (file or checkpoint folder)")
    p.add_argument("--data", required=True, help="nnU-Net folder of CT cases")
    p.add_argument("--out", required=True, help="output folder (reused when made from the same inputs)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run G_mri (auto: CUDA when available)")
    p.set_defaults(func=_synthesize)

    p = sub.add_parser("evaluate", help="CHAOS metrics: prediction vs label files, or a U-Net on a dataset")
    p.add_argument("--pred", help="predicted mask NIfTI (or a folder of them); scored as given, without post-processing")
    p.add_argument("--label", help="label NIfTI (or a folder with matching case names)")
    p.add_argument("--checkpoint", help="U-Net weights (best.pt or a checkpoint folder)")
    p.add_argument("--data", help="nnU-Net folder of MRI cases to segment")
    p.add_argument(
        "--split", default="auto", choices=["auto", "train", "val", "test", "all"],
        help="auto (default): all cases when the checkpoint never saw this dataset's patients; on its own dataset "
        "the test split (checkpoint's split settings); on one sharing some patients the unseen ones. The choice, "
        "its reason and the case / patient counts are printed on every run",
    )
    p.add_argument("--out", help="where predicted masks are written (default <checkpoint dir>/predictions)")
    p.add_argument("--json", action="store_true", help="print JSON on stdout instead of a table")
    p.set_defaults(func=_evaluate)


def _open_tracker(cfg: Any, out: Path, uri: str) -> Any:
    from liverlab.tracking.writer import git_tags, open_run

    tags = {"liverlab.stage": cfg.stage, "liverlab.seed": str(cfg.seed), **git_tags(Path.cwd())}
    return open_run(uri, cfg.tracking.experiment or cfg.name, run_name=out.name, tags=tags)


def _train(args: argparse.Namespace) -> int:
    from liverlab.config import dump_config, load_config
    from liverlab.data.atomic import write_bytes_atomic
    from liverlab.tracking.writer import resolve_tracking_uri
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
    from liverlab.train.evaluate import evaluate_files

    info: dict[str, Any]
    if args.pred or args.label:
        if not (args.pred and args.label) or args.checkpoint:
            raise LiverlabError("give --pred and --label together (or --checkpoint and --data)")
        rows = evaluate_files(args.pred, args.label)
        info = {"split": "files", "split_requested": None, "split_notes": [],
                "n_cases": len(rows), "n_patients": len(rows)}
    elif args.checkpoint and args.data:
        rows, info = _evaluate_checkpoint(args)
    else:
        raise LiverlabError("give --pred and --label, or --checkpoint and --data")
    result = evaluation_result(rows, info)
    if args.json:
        print(json.dumps(result, indent=2))
        if info["split_requested"] is not None:
            print(_split_line(info), file=sys.stderr)
        _warn_outliers(result, sys.stderr)
        return 0
    print_evaluation(result)
    return 0


def _evaluate_checkpoint(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from liverlab.config import config_from_dict
    from liverlab.train import common
    from liverlab.train.segment import segment_dataset
    from liverlab.train.unseen import choose_split

    state = common.load_checkpoint(args.checkpoint, map_location="cpu")
    if "config" not in state:
        raise LiverlabError(f"{args.checkpoint}: not a U-Net checkpoint (no embedded config)")
    config = config_from_dict(state["config"], source=f"{args.checkpoint} (embedded config)")
    choice = choose_split(state, config, args.data, args.split)
    del state
    out = Path(args.out) if args.out else Path(args.checkpoint).resolve().parent / "predictions"
    # "unseen" (a dataset sharing some patients) is not a split of the manifest: segment all, keep the unseen.
    rows = segment_dataset(args.checkpoint, args.data, out, None if choice.split in ("all", "unseen") else choice.split)
    keep = set(choice.cases)
    rows = [{**r, "patient_id": choice.patients[r["case_id"]]} for r in rows if r["case_id"] in keep]
    print(f"predicted masks: {out}", file=sys.stderr)
    info = {"split": choice.split, "split_requested": choice.requested, "split_notes": choice.notes,
            "n_cases": len(rows), "n_patients": len({r["patient_id"] for r in rows}),
            "checkpoint_patients": choice.seen_source, "manifest_match": choice.manifest_match}
    return rows, info


def evaluation_result(rows: list[dict[str, Any]], info: dict[str, Any]) -> dict[str, Any]:
    """Rows with a ``flag`` column, mean / median / worst per patient, outlier list, split fields."""
    from liverlab import outliers
    from liverlab.train.evaluate import METRICS

    rows = [{**r, "flag": outliers.flag(r)} for r in rows]
    by_patient: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_patient.setdefault(str(r.get("patient_id", r["case_id"])), []).append(r)
    # One value per patient (cases of one patient averaged), so a patient with many cases weighs once.
    per_patient = [{k: sum(c[k] for c in cs) / len(cs) for k in METRICS} for cs in by_patient.values()]
    summary = outliers.summarize(per_patient, METRICS)
    flagged = [r["case_id"] for r in rows if r["flag"]]
    return {
        **info,
        "cases": rows,
        "mean": {k: summary[k]["mean"] for k in METRICS},
        "median": {k: summary[k]["median"] for k in METRICS},
        "worst": {k: summary[k]["worst"] for k in METRICS},
        "n_inf": {k: summary[k]["n_inf"] for k in METRICS},
        "outliers": flagged,
        "n_outliers": len(flagged),
        "outlier_rule": outliers.rule_text(),
    }


def _split_line(result: dict[str, Any]) -> str:
    if result["split_requested"] is None:
        return f"scored: {result['n_cases']} case(s) (prediction / label files)"
    how = f"{result['split']} (auto)" if result["split_requested"] == "auto" else result["split"]
    line = f"scored split {how}: {result['n_cases']} case(s), {result['n_patients']} patient(s)"
    return line + ("; " + " ".join(result["split_notes"]) if result["split_notes"] else "")


def _warn_outliers(result: dict[str, Any], stream: Any) -> None:
    if result["n_outliers"]:
        print(f"warning: {result['n_outliers']} of {result['n_cases']} case(s) are outliers "
              f"({result['outlier_rule']}): {', '.join(result['outliers'])}", file=stream)


def print_evaluation(result: dict[str, Any]) -> None:
    """The per-case table (outliers in red, marked with !), then mean, median and worst per patient."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from liverlab.train.evaluate import METRICS

    console = Console()
    if not console.is_terminal:  # piped / captured: wide enough that the flag column is not wrapped
        console = Console(width=160)
    table = Table(title="CHAOS metrics (ASSD, MSSD in mm; RAVD in %)",
                  caption=f"! = outlier ({result['outlier_rule']}); median and worst over patients "
                  "(worst: min IoU/Dice, max ASSD/MSSD/RAVD)")
    for col in ("case", *METRICS, "flag"):
        table.add_column(col, justify="right" if col in METRICS else "left")
    for r in result["cases"]:
        cells = [escape(r["case_id"]), *(f"{r[k]:.4f}" for k in METRICS), escape(r["flag"])]
        if r["flag"]:
            cells = [f"[bold red]{c}" for c in cells]
            cells[0] = f"[bold red]! {escape(r['case_id'])}"
        table.add_row(*cells)
    for name in ("mean", "median", "worst"):
        table.add_row(f"[bold]{name}", *(f"[bold]{result[name][k]:.4f}" for k in METRICS), "")
    console.print(_split_line(result))
    console.print(table)
    if any(result["n_inf"].values()):
        console.print("inf values (a surface distance or RAVD against an empty mask) are left out of mean and "
                      "median: " + ", ".join(f"{k} {n}" for k, n in result["n_inf"].items() if n))
    if result["n_outliers"]:
        console.print(f"[bold red]warning: {result['n_outliers']} of {result['n_cases']} case(s) are outliers "
                      f"({result['outlier_rule']}): {', '.join(result['outliers'])}")
